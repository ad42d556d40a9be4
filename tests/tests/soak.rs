//! The soak, opt-in: `WSRPC_SOAK=1 cargo test -p wsrpc-tests --release --test soak -- --nocapture`.
//!
//! 10,000 concurrent WebSocket connections to a smol server, each making a call every 3 s for
//! 2 minutes: no errors anywhere, and the server's resident memory flat after a 30 s warm-up.
//! The server runs in a child process (this test binary again, told so by an environment
//! variable), so 10,000 client sockets and 10,000 server sockets do not share one process's
//! descriptor limit, and its RSS is its own. Without `WSRPC_SOAK` the test says it is skipped
//! and passes, so CI stays fast.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::{ClientConfig, ClientOptions};
use wsrpc_core::service::ServiceConfig;
use wsrpc_tests::raw;

const CONNECTIONS: u64 = 10_000;
const CALL_EVERY: Duration = Duration::from_secs(3);
const RUN: Duration = Duration::from_secs(120);
const WARM_UP: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Connections opened at the same time while connecting (the listen backlog is finite).
const CONNECTING: usize = 200;
/// Set in the child process: be the server.
const SERVER_ROLE: &str = "WSRPC_SOAK_SERVER";
const LISTENING: &str = "soak server listening on ";

#[test]
fn soak_10k_connections_on_smol() {
    if std::env::var_os(SERVER_ROLE).is_some() {
        serve();
    }
    if std::env::var_os("WSRPC_SOAK").is_none() {
        println!(
            "soak skipped: set WSRPC_SOAK=1 to run 10,000 connections for 2 minutes \
             (WSRPC_SOAK=1 cargo test -p wsrpc-tests --release --test soak -- --nocapture)"
        );
        return;
    }
    soak();
}

/// The child: a smol server with room for every connection and default limits otherwise,
/// until its standard input closes (the parent is done or gone).
fn serve() -> ! {
    let mut config = ServiceConfig::default();
    config.max_connections = CONNECTIONS as usize + 100;
    let mut router = Router::new();
    router.method("add", |(a, b): (u64, u64), _| Ok(a + b));
    let server = wsrpc_smol::Server::builder()
        .config(config)
        .router(router)
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
        .expect("soak server starts");
    println!("{LISTENING}{}", server.local_addr());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// Kills the child server however the test ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server() -> (ServerProcess, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "soak_10k_connections_on_smol", "--nocapture", "--test-threads=1"])
        .env(SERVER_ROLE, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server process starts");
    let stdout = child.stdout.take().unwrap();
    let process = ServerProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may have printed the test's name first, on the same line.
            if let Some((_, addr)) = line.split_once(LISTENING) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server reports its address");
    (process, addr)
}

#[derive(Default)]
struct Tally {
    connected: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    /// Milliseconds after `origin` at which calls stop; 0 until every connection is up.
    stop_at_ms: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        self.first_error.lock().unwrap().get_or_insert_with(|| e.to_string());
    }
}

/// One connection: connect (a few at a time), then a call every `CALL_EVERY` from a random
/// phase until the run ends; returns the client, still connected.
async fn connection(
    n: u64,
    url: Arc<str>,
    origin: Instant,
    tally: Arc<Tally>,
    gate: Arc<smol::lock::Semaphore>,
) -> Option<wsrpc_smol::Client> {
    let mut config = ClientConfig::default();
    config.reconnect = None; // a reconnect would hide a dropped connection
    config.call_timeout = Duration::from_secs(30);
    let client = {
        let _permit = gate.acquire().await;
        match wsrpc_smol::connect(&url, ClientOptions::default().config(config)).await {
            Ok(c) => c,
            Err(e) => {
                tally.error(format!("connect: {e}"));
                return None;
            }
        }
    };
    tally.connected.fetch_add(1, Ordering::SeqCst);
    // Spread the calls evenly over the period.
    let phase = CALL_EVERY.mul_f64((n % 1000) as f64 / 1000.0);
    let mut next = Instant::now() + phase;
    for i in 0u64.. {
        smol::Timer::at(next).await;
        let stop = tally.stop_at_ms.load(Ordering::SeqCst);
        if stop != 0 && next >= origin + Duration::from_millis(stop) {
            break;
        }
        let started = Instant::now();
        match client.call::<u64>("add", (n, i)).await {
            Ok(sum) if sum == n + i => {
                let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.lock().unwrap().push(us);
                tally.calls.fetch_add(1, Ordering::SeqCst);
            }
            Ok(sum) => tally.error(format!("add({n}, {i}) = {sum}")),
            Err(e) => tally.error(format!("call: {e}")),
        }
        next += CALL_EVERY;
    }
    Some(client)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn soak() {
    let (server, addr) = spawn_server();
    let pid = server.0.id();
    let url: Arc<str> = format!("ws://{addr}").into();
    let idle_rss = raw::rss_kib(Some(pid));
    let origin = Instant::now();
    let tally = Arc::new(Tally::default());
    let gate = Arc::new(smol::lock::Semaphore::new(CONNECTING));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|n| smol::spawn(connection(n, url.clone(), origin, tally.clone(), gate.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while tally.connected.load(Ordering::SeqCst) + tally.errors.load(Ordering::SeqCst) < CONNECTIONS
    {
        assert!(Instant::now() < deadline, "connecting took over 3 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    let connect_time = origin.elapsed();
    assert_eq!(tally.errors.load(Ordering::SeqCst), 0, "{:?}", tally.first_error.lock().unwrap());
    let connected_rss = raw::rss_kib(Some(pid));
    let run_start = Instant::now();
    let stop_at = run_start + RUN;
    tally.stop_at_ms.store((stop_at - origin).as_millis() as u64, Ordering::SeqCst);
    // RSS every 10 s; calls and errors so far with each sample.
    let mut samples = vec![(Duration::ZERO, connected_rss)];
    let mut next_sample = run_start + SAMPLE_EVERY;
    while next_sample <= stop_at {
        std::thread::sleep(next_sample.saturating_duration_since(Instant::now()));
        samples.push((run_start.elapsed(), raw::rss_kib(Some(pid))));
        println!(
            "  t={:>3.0}s server RSS {:>7.1} MiB, calls {:>7}, errors {}",
            run_start.elapsed().as_secs_f64(),
            mib(samples.last().unwrap().1),
            tally.calls.load(Ordering::SeqCst),
            tally.errors.load(Ordering::SeqCst)
        );
        next_sample += SAMPLE_EVERY;
    }
    let clients: Vec<_> = smol::block_on(async {
        let mut clients = Vec::with_capacity(tasks.len());
        for t in tasks {
            clients.extend(t.await);
        }
        clients
    });
    // The server's own view, while every client is still connected.
    let metrics: serde_json::Value = smol::block_on(async {
        let c = wsrpc_smol::connect(&url, ClientOptions::default()).await.unwrap();
        c.call("rpc.metrics", ()).await.unwrap()
    });
    let client_rss = raw::rss_kib(None);
    let calls = tally.calls.load(Ordering::SeqCst);
    let errors = tally.errors.load(Ordering::SeqCst);
    let mut lat = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len() - 1)).map_or(0, |&us| us);
    let warm = samples.iter().find(|(t, _)| *t >= WARM_UP).expect("a sample after warm-up").1;
    let last = samples.last().unwrap().1;
    let server_errors: u64 = metrics["errors"]
        .as_object()
        .expect("errors by kind")
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    println!(
        "soak: {} connections in {:.1} s; {calls} calls in {:.0} s ({:.0}/s), {errors} client errors, \
         {server_errors} server errors, server reports {} active connections\n\
         latency p50 {} us, p99 {} us, max {} us\n\
         server RSS: idle {:.1} MiB, all connected {:.1} MiB ({:.1} KiB per connection), \
         after warm-up {:.1} MiB, last {:.1} MiB; client process RSS {:.1} MiB",
        clients.len(),
        connect_time.as_secs_f64(),
        RUN.as_secs_f64(),
        calls as f64 / RUN.as_secs_f64(),
        metrics["connections"]["active"],
        pct(0.5),
        pct(0.99),
        pct(1.0),
        mib(idle_rss),
        mib(connected_rss),
        (connected_rss.saturating_sub(idle_rss)) as f64 / CONNECTIONS as f64,
        mib(warm),
        mib(last),
        mib(client_rss),
    );
    assert_eq!(errors, 0, "{:?}", tally.first_error.lock().unwrap());
    assert_eq!(server_errors, 0, "{}", metrics["errors"]);
    assert_eq!(clients.len() as u64, CONNECTIONS);
    assert_eq!(metrics["connections"]["active"], CONNECTIONS + 1);
    // Each connection called about once per period for the whole run.
    let expected = CONNECTIONS * (RUN.as_secs() / CALL_EVERY.as_secs());
    assert!(calls >= expected * 9 / 10, "{calls} calls, expected about {expected}");
    // Flat: no sample after warm-up above the warm-up level by more than 10 % + 4 MiB.
    for &(t, rss) in samples.iter().filter(|(t, _)| *t >= WARM_UP) {
        assert!(
            rss <= warm + warm / 10 + 4 * 1024,
            "RSS {rss} KiB at {t:?}, {warm} KiB after warm-up"
        );
    }
    drop(clients);
    drop(server);
}
