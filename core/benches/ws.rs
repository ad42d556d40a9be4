//! WebSocket codec throughput next to a `memcpy` baseline measured in the same run.
//!
//! `cargo bench -p wsrpc-core --bench ws` runs the criterion groups and then prints a table
//! of GB/s and ratios against memcpy (targets: decode+unmask of 64 KiB frames at ≥ 50% of
//! memcpy; small-frame decode ≥ 20 M frames/s). `-- --quick-ratios` prints only the table.
#![allow(clippy::disallowed_methods, missing_docs)] // benchmarks read the clock

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use wsrpc_core::ws::frame::{FrameDecoder, OpCode, encode_frame};
use wsrpc_core::ws::mask::apply_mask;
use wsrpc_core::ws::utf8::Utf8Validator;
use wsrpc_core::ws::{Config, Connection, Event, Role};

const SIZES: [(usize, &str); 4] =
    [(16, "16 B"), (1024, "1 KiB"), (64 * 1024, "64 KiB"), (1 << 20, "1 MiB")];
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn masked_frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut wire = Vec::new();
    encode_frame(&mut wire, true, OpCode::Binary, Some(MASK), &payload);
    wire
}

fn open_server() -> Connection {
    let now = Instant::now();
    let mut cfg = Config::default();
    cfg.ping_interval = None;
    let mut conn = Connection::server(cfg, now);
    conn.handle_input(now, b"GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    while conn.poll_event().is_some() {}
    let n = conn.poll_transmit().map_or(0, <[u8]>::len);
    conn.advance_transmit(n);
    conn
}

fn benches(c: &mut Criterion) {
    let decoder = FrameDecoder::new(Role::Server, u64::MAX >> 1);
    let mut g = c.benchmark_group("memcpy");
    for (len, name) in SIZES {
        let src = vec![7u8; len];
        let mut dst = vec![0u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
    }
    g.finish();

    let mut g = c.benchmark_group("decode_unmask_in_place");
    for (len, name) in SIZES {
        let mut wire = masked_frame(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let f = decoder.decode_in_place(black_box(&mut wire)).unwrap().unwrap();
                black_box(f.payload.len())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("connection_receive");
    for (len, name) in SIZES {
        let wire = masked_frame(len);
        let mut conn = open_server();
        let now = Instant::now();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                conn.handle_input(now, black_box(&wire));
                match conn.poll_event() {
                    Some(Event::Message(m)) => black_box(m.data.len()),
                    other => panic!("{other:?}"),
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    for (len, name) in SIZES {
        let payload = vec![b'x'; len];
        let mut out = Vec::with_capacity(len + 14);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("server", name), &payload, |b, p| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, true, OpCode::Binary, None, black_box(p));
            })
        });
        g.bench_with_input(BenchmarkId::new("client_masked", name), &payload, |b, p| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, true, OpCode::Binary, Some(MASK), black_box(p));
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("utf8");
    let ascii = "a".repeat(64 * 1024);
    let mixed = "κόσμε 𝄞 héllo ".repeat(64 * 1024 / 24);
    for (name, text) in [("ascii 64 KiB", &ascii), ("multibyte 64 KiB", &mixed)] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(text.as_bytes())).unwrap();
                v.is_complete()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("mask_in_place");
    let mut buf = vec![0u8; 64 * 1024];
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("64 KiB", |b| b.iter(|| apply_mask(black_box(&mut buf), MASK, 1)));
    g.finish();
}

/// Best-of-rounds nanoseconds per call of `f`.
fn time_per_call(mut f: impl FnMut()) -> f64 {
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() > Duration::from_millis(20) {
            break;
        }
        iters *= 2;
    }
    let mut best = f64::MAX;
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    best
}

fn ratio_table() {
    let decoder = FrameDecoder::new(Role::Server, u64::MAX >> 1);
    println!("\nsize      memcpy GB/s  decode+unmask GB/s  ratio   connection GB/s  ratio");
    for (len, name) in SIZES {
        let src = vec![7u8; len];
        let mut dst = vec![0u8; len];
        let memcpy = time_per_call(|| dst.copy_from_slice(black_box(&src)));
        let mut wire = masked_frame(len);
        let decode = time_per_call(|| {
            black_box(
                decoder.decode_in_place(black_box(&mut wire)).unwrap().unwrap().payload.len(),
            );
        });
        let wire = masked_frame(len);
        let mut conn = open_server();
        let now = Instant::now();
        let receive = time_per_call(|| {
            conn.handle_input(now, black_box(&wire));
            black_box(conn.poll_event());
        });
        let gbs = |ns: f64| len as f64 / ns;
        println!(
            "{name:<9} {:>11.2}  {:>18.2}  {:>5.0}%  {:>15.2}  {:>5.0}%",
            gbs(memcpy),
            gbs(decode),
            100.0 * memcpy / decode,
            gbs(receive),
            100.0 * memcpy / receive
        );
    }
    // Small frames back to back: 16-byte payloads, masked, 4096 of them per buffer.
    let one = masked_frame(16);
    let mut many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
    let per_buffer = time_per_call(|| {
        let mut at = 0;
        while let Ok(Some(f)) = decoder.decode_in_place(&mut many[at..]) {
            at += f.len;
        }
        black_box(at);
    });
    println!("small frames (16 B, masked) decoded: {:.1} M frames/s", 4096.0 / per_buffer * 1e3);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick-ratios");
    if !quick {
        let mut c = Criterion::default().configure_from_args();
        benches(&mut c);
        c.final_summary();
    }
    ratio_table();
}
