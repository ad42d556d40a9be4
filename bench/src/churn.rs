//! The `churn` scenario's client: C workers in one thread, each looping over a whole
//! connection's life: a nonblocking connect on a new TCP socket, the WebSocket opening
//! handshake, one call (for an echo server: one echoed message), the close handshake (the
//! client sends close 1000, then waits for the server's close frame and the end of the TCP
//! stream), then the next connection.
//!
//! The protocol is written out here rather than taken from tungstenite: a cycle is a few
//! hundred bytes, and tungstenite's request building and per-connection buffers would make
//! the one client thread the bottleneck sooner. Every answer is checked all the same: the
//! status line and `Sec-WebSocket-Accept` of the 101, the frame header (final, unmasked,
//! opcode), the call's result and id (or the echo byte for byte), the close code, and that
//! nothing follows the close frame but the end of the stream.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustix::event::epoll;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::client::{Report, Spec};
use crate::sys;

/// A cycle that takes longer than this is an error (a server that never ends the stream).
const CYCLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames larger than this are not expected from any server here.
const MAX_FRAME: usize = 64 * 1024;
/// Worker index in the low bits of the epoll data, its cycle number above: an event left
/// over from a previous connection of the same worker is recognised and skipped.
const WORKER_BITS: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the nonblocking connect to complete.
    Connecting,
    /// Upgrade request sent; reading the 101 response.
    Handshake,
    /// The call (or echo) sent; reading the answer.
    Call,
    /// Close 1000 sent; reading the server's close frame.
    Closing,
    /// The close frames are exchanged; waiting for the server to end the TCP stream.
    AwaitEof,
}

struct Worker {
    index: usize,
    stream: Option<TcpStream>,
    phase: Phase,
    cycle: u64,
    started: Instant,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    /// This cycle's `Sec-WebSocket-Key` and the `Sec-WebSocket-Accept` it expects.
    key: String,
    accept: String,
    /// The text sent in the call frame (an echo must return it unchanged).
    sent: String,
    call_id: u64,
    /// Cycles completed in the window.
    done: u64,
}

/// A small xorshift generator for keys and masks (their quality does not matter here, only
/// that they vary).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Churn<'s> {
    spec: &'s Spec,
    epoll: rustix::fd::OwnedFd,
    workers: Vec<Worker>,
    report: Report,
    in_window: bool,
    latencies_ns: Vec<u64>,
    rng: Rng,
    request_prefix: String,
}

/// Runs the churn scenario described by `spec` (`conns` is the number of workers).
pub(crate) fn run(spec: &Spec) -> io::Result<Report> {
    let seed = crate::servers::unix_nanos() | 1;
    let mut churn = Churn {
        spec,
        epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        workers: Vec::with_capacity(spec.conns),
        report: Report::default(),
        in_window: false,
        latencies_ns: Vec::new(),
        rng: Rng(seed),
        request_prefix: format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
            spec.addr
        ),
    };
    for index in 0..spec.conns {
        churn.workers.push(Worker {
            index,
            stream: None,
            phase: Phase::Connecting,
            cycle: 0,
            started: Instant::now(),
            input: Vec::with_capacity(1024),
            key: String::new(),
            accept: String::new(),
            sent: String::new(),
            call_id: 0,
            done: 0,
        });
        churn.start(index)?;
    }
    churn.run()
}

impl Churn<'_> {
    fn run(mut self) -> io::Result<Report> {
        let start = Instant::now();
        let warmup = Duration::from_secs_f64(self.spec.warmup_s);
        let window = Duration::from_secs_f64(self.spec.window_s);
        let (mut cpu0, mut own0, mut t0) = ((0.0, 0.0), 0.0, Instant::now());
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            sys::epoll_wait(&self.epoll, &mut events)?;
            for ev in &events {
                let data = ev.data.u64();
                let index = (data & ((1 << WORKER_BITS) - 1)) as usize;
                if self.workers.get(index).is_some_and(|w| w.cycle == data >> WORKER_BITS) {
                    self.service(index)?;
                }
            }
            let now = Instant::now();
            for index in 0..self.workers.len() {
                let w = &self.workers[index];
                if now - w.started > CYCLE_TIMEOUT {
                    let phase = w.phase;
                    self.fail(index, format!("cycle timed out in phase {phase:?}"))?;
                }
            }
            if !self.in_window && now >= start + warmup {
                cpu0 = sys::cpu_times(self.spec.server_pid)?;
                own0 = sys::own_cpu_seconds();
                t0 = Instant::now();
                self.in_window = true;
                self.latencies_ns.clear();
                for w in &mut self.workers {
                    w.done = 0;
                }
            } else if self.in_window && now >= t0 + window {
                let cpu1 = sys::cpu_times(self.spec.server_pid)?;
                self.report.window_s = t0.elapsed().as_secs_f64();
                self.report.client_cpu_s = sys::own_cpu_seconds() - own0;
                self.report.server_user_s = cpu1.0 - cpu0.0;
                self.report.server_cpu_s = (cpu1.0 + cpu1.1) - (cpu0.0 + cpu0.1);
                break;
            }
        }
        let secs = self.report.window_s;
        self.report.ops = self.workers.iter().map(|w| w.done).sum();
        let rates = self.workers.iter().map(|w| w.done as f64 / secs);
        self.report.min_conn_rate = rates.clone().fold(f64::INFINITY, f64::min);
        self.report.max_conn_rate = rates.fold(0.0, f64::max);
        self.report.conns_ok = self.workers.len();
        let mut lat = std::mem::take(&mut self.latencies_ns);
        lat.sort_unstable();
        let q = |p: f64| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
        };
        self.report.p50_us = q(0.50);
        self.report.p99_us = q(0.99);
        self.report.p999_us = q(0.999);
        Ok(self.report)
    }

    /// Opens worker `index`'s next connection (a nonblocking connect) and prepares its
    /// handshake.
    fn start(&mut self, index: usize) -> io::Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        key[8..].copy_from_slice(&self.rng.next().to_le_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let w = &mut self.workers[index];
        w.cycle += 1;
        w.started = Instant::now();
        w.phase = Phase::Connecting;
        w.input.clear();
        w.accept = crate::servers::accept_key(key.as_bytes());
        w.key = key;
        let fd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::sockopt::set_tcp_nodelay(&fd, true)?;
        let data = (w.cycle << WORKER_BITS) | index as u64;
        epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(data),
            epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::ET,
        )?;
        let connected = match rustix::net::connect(&fd, &self.spec.addr) {
            Ok(()) => true,
            Err(rustix::io::Errno::INPROGRESS) => false,
            Err(e) => return Err(io::Error::other(format!("connect: {e}"))),
        };
        w.stream = Some(TcpStream::from(fd));
        if connected {
            self.service(index)?;
        }
        Ok(())
    }

    /// Moves worker `index` on as far as its socket allows.
    fn service(&mut self, index: usize) -> io::Result<()> {
        loop {
            match self.step(index) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return self.fail(index, e),
            }
        }
    }

    /// One step; `Ok(false)` when the socket would block.
    fn step(&mut self, index: usize) -> Result<bool, String> {
        let w = &mut self.workers[index];
        let Some(stream) = w.stream.as_mut() else { return Ok(false) };
        if w.phase == Phase::Connecting {
            match rustix::net::sockopt::socket_error(&*stream) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("connect: {e}")),
                Err(e) => return Err(format!("connect: {e}")),
            }
            let request = format!("{}{}\r\n\r\n", self.request_prefix, w.key);
            return match stream.write(request.as_bytes()) {
                Ok(n) if n == request.len() => {
                    w.phase = Phase::Handshake;
                    Ok(true)
                }
                Ok(n) => Err(format!("short write of the request ({n} bytes)")),
                // Not connected yet: the next writable event says when.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {
                    Ok(false)
                }
                Err(e) => Err(format!("write: {e}")),
            };
        }
        // Parse what is buffered before reading more.
        if let Some(progress) = self.parse(index)? {
            return Ok(progress);
        }
        let w = &mut self.workers[index];
        let Some(stream) = w.stream.as_mut() else { return Ok(false) };
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) if w.phase == Phase::AwaitEof && w.input.is_empty() => {
                self.finish(index);
                Ok(true)
            }
            Ok(0) => Err(format!("end of stream in phase {:?}", w.phase)),
            Ok(n) => {
                w.input.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(format!("read in phase {:?}: {e}", w.phase)),
        }
    }

    /// Acts on buffered input: `Some(true)` when something moved, `None` to read more.
    fn parse(&mut self, index: usize) -> Result<Option<bool>, String> {
        let w = &mut self.workers[index];
        match w.phase {
            Phase::Connecting => Ok(None),
            Phase::Handshake => {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut response = httparse::Response::new(&mut headers);
                let used = match response.parse(&w.input) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) if w.input.len() < 8192 => return Ok(None),
                    Ok(httparse::Status::Partial) => return Err("response head too long".into()),
                    Err(e) => return Err(format!("bad response head: {e}")),
                };
                if response.code != Some(101) {
                    return Err(format!("handshake answered {:?}", response.code));
                }
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                let token = |name: &str, want: &str| {
                    header(name).is_some_and(|v| {
                        v.split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
                    })
                };
                if !token("upgrade", "websocket") || !token("connection", "upgrade") {
                    return Err("101 without Upgrade: websocket / Connection: Upgrade".into());
                }
                if header("sec-websocket-accept") != Some(w.accept.as_bytes()) {
                    return Err("wrong Sec-WebSocket-Accept".into());
                }
                w.input.drain(..used);
                w.call_id = w.cycle;
                w.sent = if self.spec.echo {
                    format!("echo {} {}", w.index, w.cycle)
                } else {
                    let (id, i) = (w.call_id, w.index);
                    format!(r#"{{"jsonrpc":"2.0","method":"add","params":[{id},{i}],"id":{id}}}"#)
                };
                let mask = self.rng.next() as u32;
                let frame = masked_frame(0x1, w.sent.as_bytes(), mask.to_le_bytes());
                write_all(w, &frame)?;
                w.phase = Phase::Call;
                Ok(Some(true))
            }
            Phase::Call => {
                let Some((opcode, payload, used)) = parse_frame(&w.input)? else {
                    return Ok(None);
                };
                match opcode {
                    // A ping or pong in between is allowed (and not answered: the cycle is
                    // short).
                    0x9 | 0xA => {}
                    0x1 => {
                        let text = std::str::from_utf8(&w.input[payload])
                            .map_err(|_| "answer is not UTF-8".to_string())?;
                        check_answer(self.spec.echo, w, text)?;
                        let mask = self.rng.next() as u32;
                        let frame = masked_frame(0x8, &1000u16.to_be_bytes(), mask.to_le_bytes());
                        write_all(w, &frame)?;
                        w.phase = Phase::Closing;
                    }
                    other => return Err(format!("unexpected opcode {other:#x} for the answer")),
                }
                w.input.drain(..used);
                Ok(Some(true))
            }
            Phase::Closing => {
                let Some((opcode, payload, used)) = parse_frame(&w.input)? else {
                    return Ok(None);
                };
                match opcode {
                    0x9 | 0xA => {}
                    0x8 => {
                        let body = &w.input[payload];
                        if body.len() < 2 || u16::from_be_bytes([body[0], body[1]]) != 1000 {
                            return Err(format!("close answered with {body:?}, not 1000"));
                        }
                        w.phase = Phase::AwaitEof;
                    }
                    other => return Err(format!("unexpected opcode {other:#x} while closing")),
                }
                w.input.drain(..used);
                Ok(Some(true))
            }
            Phase::AwaitEof if !w.input.is_empty() => {
                Err(format!("{} bytes after the close frame", w.input.len()))
            }
            Phase::AwaitEof => Ok(None),
        }
    }

    /// The cycle of worker `index` completed: count it and start the next.
    fn finish(&mut self, index: usize) {
        let w = &mut self.workers[index];
        // Dropping the stream closes it (and takes it out of the epoll set).
        w.stream = None;
        self.report.ops_total += 1;
        if self.in_window {
            w.done += 1;
            self.latencies_ns.push(w.started.elapsed().as_nanos() as u64);
        }
        if let Err(e) = self.start(index) {
            self.report.error(format!("worker {index}: {e}"));
        }
    }

    /// Records a failure of worker `index` and starts it over on a new connection.
    fn fail(&mut self, index: usize, e: String) -> io::Result<()> {
        self.report.error(format!("worker {index}: {e}"));
        self.workers[index].stream = None;
        self.start(index)
    }
}

fn write_all(w: &mut Worker, bytes: &[u8]) -> Result<(), String> {
    let stream = w.stream.as_mut().ok_or("no stream")?;
    // A few dozen bytes into an empty socket buffer: a partial write would be a fault.
    match stream.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(format!("short write ({n} of {} bytes)", bytes.len())),
        Err(e) => Err(format!("write: {e}")),
    }
}

/// Checks the answer to worker `w`'s call (or its echo).
fn check_answer(echo: bool, w: &Worker, text: &str) -> Result<(), String> {
    if echo {
        return if text == w.sent { Ok(()) } else { Err(format!("echo {text:?} differs")) };
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        id: u64,
        result: Option<i64>,
    }
    let a: Answer = serde_json::from_str(text).map_err(|e| format!("bad answer {text}: {e}"))?;
    if a.id != w.call_id || a.result != Some(w.call_id as i64 + w.index as i64) {
        return Err(format!("wrong answer {text}"));
    }
    Ok(())
}

/// A final client frame with `opcode`, masked with `mask`.
fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One complete server frame at the start of `buf`: its opcode, the payload's range and the
/// bytes it spans; `None` when incomplete. Server frames must be final and unmasked here.
type Frame = (u8, std::ops::Range<usize>, usize);

fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, String> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(format!("reserved bits set in {b0:#x}"));
    }
    if b0 & 0x80 == 0 {
        return Err("fragmented answer".into());
    }
    if b1 & 0x80 != 0 {
        return Err("masked frame from the server".into());
    }
    let (len, header) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u16::from_be_bytes([b[0], b[1]]) as usize, 4)
        }
        127 => return Err("64-bit length for a small answer".into()),
        n => (n as usize, 2),
    };
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes"));
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some((b0 & 0x0f, header..header + len, header + len)))
}
