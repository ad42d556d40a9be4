//! The orchestrator: starts a fresh server process per run, runs the client process against
//! it, alternates servers round by round, and hands the reports to [`crate::report`].

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use wsrpc_examples::redis_server::{self, RedisServer};

use crate::client::{Report, Spec};
use crate::servers::Publishing;
use crate::{report, sys};

/// Command-line options of a benchmark run.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) servers: Option<Vec<String>>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) rounds: usize,
    /// `--rounds` was given: it applies to every scenario.
    pub(crate) rounds_given: bool,
    pub(crate) warmup_s: f64,
    pub(crate) window_s: f64,
}

/// Churn keeps this many connection cycles in flight (the 16 workers).
pub(crate) const CHURN_WORKERS: usize = 16;
/// Churn is noisy (the kernel's TCP setup and teardown dominate): at least this many rounds,
/// so that the spread of the ratios is worth reporting.
const CHURN_ROUNDS: usize = 7;

impl Options {
    /// Rounds for `scenario`.
    pub(crate) fn rounds_for(&self, scenario: &str) -> usize {
        if scenario == "churn" && !self.rounds_given {
            self.rounds.max(CHURN_ROUNDS)
        } else {
            self.rounds
        }
    }

    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            let (rounds, warmup_s, window_s) = (3, 0.3, 1.0);
            Self {
                quick,
                servers: None,
                json: None,
                rounds,
                rounds_given: false,
                warmup_s,
                window_s,
            }
        } else {
            let (rounds, warmup_s, window_s) = (5, 1.0, 5.0);
            Self {
                quick,
                servers: None,
                json: None,
                rounds,
                rounds_given: false,
                warmup_s,
                window_s,
            }
        }
    }
}

/// One load shape of a scenario.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub(crate) scenario: &'static str,
    pub(crate) name: String,
    pub(crate) conns: usize,
    pub(crate) depth: usize,
    pub(crate) payload: usize,
    /// Cluster: topics the subscribers spread over (0: all on `t`), and the paced publish
    /// rate (0: as fast as acks allow).
    pub(crate) topics: usize,
    pub(crate) rate: u64,
}

/// Echo keeps this many messages in flight per connection (pipelining, so an efficient
/// server is not hidden behind the one-thread client).
pub(crate) const ECHO_DEPTH: usize = 4;

pub(crate) fn cases(scenario: &'static str) -> Vec<Case> {
    let case = |name: String, conns, depth, payload| Case {
        scenario,
        name,
        conns,
        depth,
        payload,
        topics: 0,
        rate: 0,
    };
    match scenario {
        "echo" => vec![
            case("100 x 20 B".into(), 100, ECHO_DEPTH, 20),
            case("200 x 16 KiB".into(), 200, ECHO_DEPTH, 16 << 10),
            case("10 x 1 KiB".into(), 10, ECHO_DEPTH, 1 << 10),
        ],
        "calls" => {
            let mut v = Vec::new();
            for conns in [1, 16, 256, 1024] {
                for depth in [1, 32] {
                    v.push(case(format!("{conns} conn x depth {depth}"), conns, depth, 0));
                }
            }
            v
        }
        "fanout" => vec![
            case("1,000 subscribers".into(), 1000, 0, 0),
            case("10,000 subscribers".into(), 10_000, 0, 0),
        ],
        "idle" => vec![case("10,000 idle".into(), 10_000, 0, 0)],
        "churn" => vec![case(format!("{CHURN_WORKERS} workers"), CHURN_WORKERS, 0, 0)],
        // Issue 13's loads: 5,000 publishes/s over 1,000 topics with 10,000 subscribers (the
        // delay), and 10,000 subscribers of one topic as fast as delivery allows (the rate).
        "cluster" => vec![
            Case {
                topics: 1000,
                rate: 5000,
                ..case("5,000/s, 1,000 topics, 10,000 subs".into(), 10_000, 0, 0)
            },
            case("hot topic, 10,000 subs".into(), 10_000, 0, 0),
        ],
        // The same loads over TLS (aws-lc-rs on both sides, an ECDSA P-256 certificate).
        "tls-echo" => vec![
            case("100 x 20 B".into(), 100, ECHO_DEPTH, 20),
            case("200 x 16 KiB".into(), 200, ECHO_DEPTH, 16 << 10),
        ],
        "tls-calls" => vec![case("256 conn x depth 32".into(), 256, 32, 0)],
        "tls-churn" => vec![case(format!("{TLS_CHURN_WORKERS} workers"), TLS_CHURN_WORKERS, 1, 0)],
        "tls-idle" => vec![case("10,000 idle".into(), 10_000, 0, 0)],
        // permessage-deflate: JSON-like text, compression offered by the client.
        "echo-deflate" => vec![case("100 x 1 KiB JSON".into(), 100, ECHO_DEPTH, 1 << 10)],
        "fanout-deflate" => {
            vec![case("10,000 subscribers, 1 KiB JSON".into(), 10_000, 0, 1 << 10)]
        }
        "idle-deflate" => vec![
            case("10,000 idle".into(), 10_000, 0, 0),
            case("10,000 after a 1 KiB call each".into(), 10_000, 0, 1 << 10),
        ],
        _ => Vec::new(),
    }
}

/// Workers of the TLS churn scenario (connect, handshakes, one call, close, again).
pub(crate) const TLS_CHURN_WORKERS: usize = 8;

/// How the server publishes for a case.
fn publishing(case: &Case) -> Publishing {
    match case.scenario {
        s if s.starts_with("fanout") => Publishing::Window,
        "cluster" if case.rate > 0 => {
            Publishing::Paced { rate: case.rate, topics: case.topics.max(1) as u64 }
        }
        "cluster" => Publishing::Window,
        _ => Publishing::None,
    }
}

/// Ours and the peers that a scenario compares.
pub(crate) fn servers_for(scenario: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    match scenario {
        "echo" => (vec!["wsrpc-echo"], vec!["tokio-tungstenite", "fastwebsockets"]),
        "calls" | "fanout" => {
            (vec!["wsrpc-smol", "wsrpc-async-std", "wsrpc-blocking"], vec!["jsonrpsee"])
        }
        "churn" => (
            vec!["wsrpc-smol", "wsrpc-async-std", "wsrpc-blocking"],
            vec!["jsonrpsee", "tokio-tungstenite"],
        ),
        "idle" => (
            vec!["wsrpc-smol", "wsrpc-async-std", "wsrpc-blocking", "wsrpc-echo"],
            vec!["jsonrpsee", "tokio-tungstenite", "fastwebsockets"],
        ),
        // TLS peers: tokio-tungstenite and jsonrpsee behind tokio-rustls.
        "tls-echo" => (vec!["wsrpc-echo"], vec!["tokio-tungstenite"]),
        "tls-calls" => (vec!["wsrpc-smol", "wsrpc-async-std", "wsrpc-blocking"], vec!["jsonrpsee"]),
        "tls-churn" | "tls-idle" => (
            vec!["wsrpc-smol", "wsrpc-async-std", "wsrpc-blocking"],
            vec!["jsonrpsee", "tokio-tungstenite"],
        ),
        // Against soketto with deflate, and against the same server uncompressed (it declines
        // the client's offer).
        "echo-deflate" => (vec!["wsrpc-echo-deflate"], vec!["soketto-deflate", "wsrpc-echo"]),
        "fanout-deflate" | "idle-deflate" => (vec!["wsrpc-smol-deflate"], vec!["wsrpc-smol"]),
        // Two instances through Redis next to one instance without it.
        "cluster" => (vec!["wsrpc-cluster"], vec!["wsrpc-smol"]),
        _ => (Vec::new(), Vec::new()),
    }
}

/// Reports of every run: (case name, server) → one report per successful round.
pub(crate) type Results = BTreeMap<(String, String), Vec<Report>>;

pub(crate) fn run(scenarios: &[&'static str], options: &Options) -> io::Result<()> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for &scenario in scenarios {
        let (ours, peers) = servers_for(scenario);
        let keep = |s: &&str| options.servers.as_ref().is_none_or(|l| l.iter().any(|n| n == s));
        let ours: Vec<&str> = ours.into_iter().filter(keep).collect();
        let peers: Vec<&str> = peers.into_iter().filter(keep).collect();
        let all: Vec<&str> = ours.iter().chain(&peers).copied().collect();
        if all.is_empty() {
            continue;
        }
        if scenario == "cluster" && !redis_server::available() {
            eprintln!(
                "cluster SKIPPED: redis-server is not installed (run scripts/install-redis.sh)"
            );
            continue;
        }
        let mut results = Results::new();
        for case in cases(scenario) {
            for round in 1..=options.rounds_for(scenario) {
                for &server in &all {
                    let t = Instant::now();
                    let outcome = run_one(server, &case, options).map(|mut r| {
                        r.round = round;
                        r
                    });
                    let took = t.elapsed().as_secs_f64();
                    let entry = results.entry((case.name.clone(), server.to_string())).or_default();
                    match outcome {
                        Ok(r) => {
                            eprintln!(
                                "[{:>5.0}s] {scenario:<6} {:<22} round {round} {server:<17} {} ({took:.1}s)",
                                started.elapsed().as_secs_f64(),
                                case.name,
                                report::brief(&case, &r)
                            );
                            entry.push(r);
                        }
                        Err(e) => eprintln!(
                            "[{:>5.0}s] {scenario:<6} {:<22} round {round} {server:<17} FAILED: {e}",
                            started.elapsed().as_secs_f64(),
                            case.name
                        ),
                    }
                }
            }
        }
        rows.extend(report::rows(scenario, &ours, &peers, &results));
        raw.extend(report::raw(scenario, &all, &results));
        if scenario == "cluster" && ours.contains(&"wsrpc-cluster") {
            match crate::cluster::recovery(options) {
                Ok(mut r) => rows.append(&mut r),
                Err(e) => eprintln!("cluster recovery FAILED: {e}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let text = report::table(&rows, &raw, options, elapsed);
    println!("{text}");
    if let Some(path) = &options.json {
        report::write_json(path, &rows)?;
        eprintln!("wrote {} rows to {}", rows.len(), path.display());
    }
    Ok(())
}

/// A child process that is killed and reaped when dropped, on every path including panics.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The soketto peer lives in a crate of its own (its `deflate` feature brings C zlib, which
/// must not be unified into wsrpc-core's flate2): built on first use, run pinned to CPU 0.
fn soketto_peer() -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("soketto-peer");
    let exe = dir.join("target/release/wsrpc-bench-soketto-peer");
    if !exe.exists() {
        eprintln!("building the soketto peer (bench/soketto-peer)");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .status()
            .map_err(|e| format!("cargo build for the soketto peer: {e}"))?;
        if !status.success() {
            return Err("building the soketto peer failed".into());
        }
    }
    Ok(exe)
}

/// A server process started by [`spawn_server`], once it said `READY`.
pub(crate) struct Server {
    proc: Proc,
    pub(crate) pid: u32,
    pub(crate) port: u16,
    pub(crate) udp_port: u16,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// The tail of its stderr, to explain a failure.
    fn tail(&self) -> String {
        // Give the reader a moment to collect the server's last words.
        std::thread::sleep(Duration::from_millis(50));
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.0.try_wait().ok().flatten()
    }

    /// Kills it now (SIGKILL).
    pub(crate) fn kill(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }
}

/// Starts `wsrpc-bench serve KIND ARGS…` (the soketto peer's own binary for
/// `soketto-deflate`) pinned to CPU 0, and waits for its `READY` line.
pub(crate) fn spawn_server(kind: &str, args: &[String]) -> Result<Server, String> {
    let mut cmd = if kind == "soketto-deflate" {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(soketto_peer()?);
        cmd
    } else {
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.arg("serve").arg(kind);
        cmd
    };
    cmd.args(args);
    // Executors on one thread, like the peers' current-thread tokio runtimes.
    cmd.env("SMOL_THREADS", "1").env("ASYNC_STD_THREAD_COUNT", "1");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Proc(cmd.spawn().map_err(|e| format!("spawn server: {e}"))?);
    let pid = child.0.id();
    // Keep the tail of the server's stderr to explain a crash.
    let stderr_tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    if let Some(err) = child.0.stderr.take() {
        let tail = stderr_tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == 3 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
    }
    let stdout = child.0.stdout.take().ok_or("no server stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let mut server = Server { proc: child, pid, port: 0, udp_port: 0, stderr_tail };
    let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
        return Err(with_tail("server did not report READY".into(), &server.tail()));
    };
    let mut parts = line.split_whitespace();
    let (Some("READY"), Some(port), Some(udp)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(with_tail(format!("server said {line:?}"), &server.tail()));
    };
    server.port = port.parse().map_err(|_| format!("bad port in {line:?}"))?;
    server.udp_port = udp.parse().map_err(|_| format!("bad port in {line:?}"))?;
    Ok(server)
}

fn with_tail(e: String, tail: &str) -> String {
    if tail.is_empty() { e } else { format!("{e}; server stderr: {tail}") }
}

/// A private Redis on a free port, pinned next to the servers (CPU 0).
pub(crate) fn start_redis() -> Result<RedisServer, String> {
    let redis = RedisServer::start().map_err(|e| format!("redis-server: {e}"))?;
    if let Some(pid) = redis.pid()
        && let Err(e) = sys::pin_process_to_cpu(pid, 0)
    {
        eprintln!("cannot pin redis-server to CPU 0: {e}");
    }
    Ok(redis)
}

fn run_one(server: &str, case: &Case, options: &Options) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let publishing = publishing(case);
    let mut args = publishing.args();
    if publishing != Publishing::None {
        args.extend(["--payload".into(), case.payload.to_string()]);
    }
    if case.scenario.starts_with("tls-") {
        args.push("--tls".into());
    }
    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut spec = Spec {
        scenario: case.scenario.trim_start_matches("tls-").trim_end_matches("-deflate").to_string(),
        tls: case.scenario.starts_with("tls-"),
        deflate: case.scenario.ends_with("-deflate"),
        addr: localhost(0),
        server_pid: 0,
        conns: case.conns,
        depth: case.depth,
        payload: case.payload,
        warmup_s: options.warmup_s,
        window_s: options.window_s,
        udp_port: 0,
        echo: crate::servers::is_echo(server),
        addr2: None,
        topics: case.topics,
        paced: case.rate > 0,
        extra_pids: Vec::new(),
        redis_addr: None,
    };
    // The Redis of a cluster lives as long as the run; the instance that publishes is first.
    let mut _redis = None;
    let mut servers = Vec::new();
    if server == "wsrpc-cluster" {
        let redis = start_redis()?;
        let with_redis = |mut a: Vec<String>| {
            a.extend(["--redis".into(), redis.url()]);
            a
        };
        servers.push(spawn_server(server, &with_redis(args))?);
        servers.push(spawn_server(server, &with_redis(Vec::new()))?);
        spec.addr2 = Some(localhost(servers[1].port));
        spec.extra_pids.push(servers[1].pid);
        spec.redis_addr = Some(redis.addr());
        _redis = Some(redis);
    } else {
        servers.push(spawn_server(server, &args)?);
    }
    spec.addr = localhost(servers[0].port);
    spec.server_pid = servers[0].pid;
    spec.udp_port = servers[0].udp_port;
    let result = drive(&exe, &mut servers, &spec);
    result.map_err(|e| {
        let tails: Vec<String> =
            servers.iter().map(Server::tail).filter(|t| !t.is_empty()).collect();
        with_tail(e, &tails.join(" | "))
    })
}

fn drive(exe: &std::path::Path, servers: &mut [Server], spec: &Spec) -> Result<Report, String> {
    let spec = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    let mut client = Proc(
        Command::new(exe)
            .arg("client")
            .arg(spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn client: {e}"))?,
    );
    // Bounded: setup of up to 10,000 connections plus the window.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = client.0.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if let Some(status) = servers.iter_mut().find_map(Server::exited) {
            return Err(format!("server exited during the run ({status})"));
        }
        if Instant::now() > deadline {
            return Err("client timed out".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = client.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = client.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if let Some(status) = servers.iter_mut().find_map(Server::exited) {
        return Err(format!("server exited during the run ({status})"));
    }
    if !status.success() {
        return Err(format!("client failed: {}", err.trim()));
    }
    let report: Report = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("client printed no report: {out:?}"))?;
    if report.errors > 0 {
        return Err(format!(
            "{} errors, first: {}",
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        ));
    }
    if report.ops == 0 {
        return Err("no operation completed".into());
    }
    Ok(report)
}
