//! The load client: one thread driving every connection over nonblocking sockets and epoll
//! (edge-triggered), with sync tungstenite for the WebSocket protocol. It depends on nothing
//! of wsrpc, so ours and the peers face the same client.
//!
//! It counts only correct answers: call results are checked against the arguments and the
//! id, echoes byte for byte, notifications for sequence continuity per subscriber.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use serde::{Deserialize, Serialize};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::servers::unix_nanos;
use crate::sys;
use crate::wire::{DeflateWs, Wire};

/// What one client run does; built by the orchestrator, passed on the command line as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub(crate) scenario: String,
    pub(crate) addr: SocketAddr,
    pub(crate) server_pid: u32,
    pub(crate) conns: usize,
    /// Requests (calls) or messages (echo) in flight per connection.
    pub(crate) depth: usize,
    /// Echo payload size in bytes.
    pub(crate) payload: usize,
    pub(crate) warmup_s: f64,
    pub(crate) window_s: f64,
    /// The fan-out publisher's ack port.
    pub(crate) udp_port: u16,
    /// Over TLS (`wss://`), the scenario name without its `tls-` prefix.
    #[serde(default)]
    pub(crate) tls: bool,
    /// Offer permessage-deflate (the `*-deflate` scenarios): echo then sends JSON-like text.
    #[serde(default)]
    pub(crate) deflate: bool,
    /// Churn: the server echoes (its "call" is one echoed message).
    #[serde(default)]
    pub(crate) echo: bool,
    /// Cluster: the second instance (every odd connection goes there).
    #[serde(default)]
    pub(crate) addr2: Option<SocketAddr>,
    /// Cluster: connection `i` subscribes to `t{(i / 2) % topics}`, so each topic has
    /// subscribers on both instances (0: all on `t`).
    #[serde(default)]
    pub(crate) topics: usize,
    /// Cluster: the publisher keeps its own pace (the client only says when to start), and
    /// continuity is checked on each topic's own sequence numbers.
    #[serde(default)]
    pub(crate) paced: bool,
    /// Cluster: the other instance processes, whose CPU counts as the server's.
    #[serde(default)]
    pub(crate) extra_pids: Vec<u32>,
    /// Cluster: Redis, for its CPU and publish count from `INFO`.
    #[serde(default)]
    pub(crate) redis_addr: Option<SocketAddr>,
}

/// What one client run measured; printed as one JSON line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Correct operations completed in the window (calls, echoes, deliveries).
    pub(crate) ops: u64,
    pub(crate) window_s: f64,
    pub(crate) server_cpu_s: f64,
    /// The user-space part of `server_cpu_s` (the rest is the kernel's).
    #[serde(default)]
    pub(crate) server_user_s: f64,
    pub(crate) client_cpu_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// Slowest and fastest connection's rate over the window, per second.
    pub(crate) min_conn_rate: f64,
    pub(crate) max_conn_rate: f64,
    /// Wrong answers, broken connections, failed handshakes.
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Fan-out: notifications missing from a subscriber's sequence, and lag notices.
    pub(crate) gaps: u64,
    pub(crate) lagged: u64,
    /// Server RSS before connecting, and after (idle) or at the end of the window.
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) conns_ok: usize,
    /// Compressed scenarios: bytes the client read and wrote on the wire in the window, and
    /// how many connections had permessage-deflate accepted.
    #[serde(default)]
    pub(crate) wire_in: u64,
    #[serde(default)]
    pub(crate) wire_out: u64,
    #[serde(default)]
    pub(crate) compressed_conns: usize,
    /// Churn: cycles completed over the whole run, warm-up included (for profiles that count
    /// the server's work over its whole life).
    #[serde(default)]
    pub(crate) ops_total: u64,
    /// Cluster: Redis CPU seconds (`used_cpu_user` + `used_cpu_sys`) and publish scripts run
    /// (`cmdstat_evalsha` calls) over the window.
    #[serde(default)]
    pub(crate) redis_cpu_s: f64,
    #[serde(default)]
    pub(crate) publishes: u64,
    /// The round of the run (set by the orchestrator), to pair ours and a peer's per round.
    #[serde(default)]
    pub(crate) round: usize,
}

impl Report {
    pub(crate) fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// Runs the spec; the caller prints the report.
pub(crate) fn run(spec: &Spec) -> io::Result<Report> {
    sys::raise_nofile();
    match spec.scenario.as_str() {
        "idle" => idle(spec),
        "calls" | "echo" | "fanout" | "cluster" => Load::new(spec)?.run(),
        // Plain churn speaks the protocol itself (one client thread); over TLS, tungstenite.
        "churn" if spec.tls => churn_tls(spec),
        "churn" => crate::churn::run(spec),
        other => Err(io::Error::other(format!("unknown scenario {other}"))),
    }
}

fn connect_wire(
    addr: SocketAddr,
    read_buffer: usize,
    deflate: bool,
    tls: bool,
) -> io::Result<Wire> {
    if deflate {
        Ok(Wire::Deflate(Box::new(DeflateWs::connect(addr, read_buffer)?)))
    } else {
        Ok(Wire::Plain(Box::new(connect(addr, read_buffer, tls)?)))
    }
}

/// A connection's transport: TCP, or rustls over TCP (through rustls's blocking stream
/// adapter, which passes `WouldBlock` through on a nonblocking socket).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// Accepts any certificate (the servers' are made at start) but checks the handshake's
/// signature with the provider's algorithms, so a server does all of its TLS work.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            // Every churn cycle is a full handshake (key exchange and certificate signature),
            // not a cheaper resumption of the previous session.
            config.resumption = rustls::client::Resumption::disabled();
            Arc::new(config)
        })
        .clone()
}

fn connect(addr: SocketAddr, read_buffer: usize, tls: bool) -> io::Result<WebSocket<Stream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let (stream, scheme) = if tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
        let conn = rustls::ClientConnection::new(tls_client(), name).map_err(io::Error::other)?;
        (Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))), "wss")
    } else {
        (Stream::Plain(tcp), "ws")
    };
    // Sized to the messages: tungstenite zero-fills the whole read buffer before each read.
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let url = format!("{scheme}://localhost:{}/", addr.port());
    let (ws, _) = tungstenite::client::client_with_config(url, stream, Some(config))
        .map_err(|e| io::Error::other(format!("handshake: {e}")))?;
    Ok(ws)
}

/// Connection churn: `spec.conns` workers (threads on the client's one CPU) each connect,
/// complete the TLS and WebSocket handshakes, make one call (an echo server echoes it), do
/// the close handshake and start over. Counts completed cycles.
/// The churn scenario over TLS: a thread per worker, each a tungstenite client.
fn churn_tls(spec: &Spec) -> io::Result<Report> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Report::default()));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..spec.conns.max(1))
        .map(|w| {
            let (stop, done, errors, latencies, measuring) =
                (stop.clone(), done.clone(), errors.clone(), latencies.clone(), measuring.clone());
            let (addr, tls) = (spec.addr, spec.tls);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    n += 1;
                    match churn_cycle(addr, tls, w as u64, n) {
                        Ok(()) => {
                            if measuring.load(Ordering::Relaxed) {
                                done.fetch_add(1, Ordering::Relaxed);
                                mine.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                        Err(e) => {
                            errors.lock().unwrap_or_else(|p| p.into_inner()).error(e);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                latencies.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(spec.warmup_s));
    let cpu0 = sys::cpu_seconds(spec.server_pid)?;
    let own0 = sys::own_cpu_seconds();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(spec.window_s));
    measuring.store(false, Ordering::Relaxed);
    let cpu1 = sys::cpu_seconds(spec.server_pid)?;
    let mut report = Report {
        window_s: t0.elapsed().as_secs_f64(),
        server_cpu_s: cpu1 - cpu0,
        client_cpu_s: sys::own_cpu_seconds() - own0,
        ops: done.load(Ordering::Relaxed),
        ..Report::default()
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let failed = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    report.errors = failed.errors;
    report.first_error = failed.first_error;
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let q = |p: f64| match lat.len() {
        0 => f64::NAN,
        n => lat[((n - 1) as f64 * p).round() as usize] as f64 / 1000.0,
    };
    report.p50_us = q(0.5);
    report.p99_us = q(0.99);
    report.p999_us = q(0.999);
    report.conns_ok = spec.conns;
    Ok(report)
}

fn churn_cycle(addr: SocketAddr, tls: bool, worker: u64, n: u64) -> Result<(), String> {
    let mut ws = connect(addr, 4096, tls).map_err(|e| e.to_string())?;
    let _ = ws.get_ref().tcp().set_read_timeout(Some(Duration::from_secs(10)));
    let call = format!(r#"{{"jsonrpc":"2.0","method":"add","params":[{worker},{n}],"id":{n}}}"#);
    ws.send(Message::text(call.clone())).map_err(|e| e.to_string())?;
    let answer = loop {
        match ws.read().map_err(|e| e.to_string())? {
            Message::Text(t) => break t,
            Message::Ping(_) | Message::Pong(_) => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    };
    let expected = format!(r#""result":{}"#, worker + n);
    // An echo server returns the call itself.
    if answer.as_str() != call && !answer.as_str().contains(&expected) {
        return Err(format!("wrong answer {answer}"));
    }
    ws.close(None).map_err(|e| e.to_string())?;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            // Peers that drop TCP right after their close frame (or skip close_notify).
            Err(tungstenite::Error::Io(_) | tungstenite::Error::AlreadyClosed) => return Ok(()),
            Err(tungstenite::Error::Protocol(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn idle(spec: &Spec) -> io::Result<Report> {
    let mut report = Report::default();
    std::thread::sleep(Duration::from_millis(300));
    report.rss_before_kib = sys::rss_kib(spec.server_pid)?;
    let mut conns = Vec::with_capacity(spec.conns);
    // With a payload, each connection first makes one `echo` call that large (compressed
    // both ways when the server accepts), then stays idle.
    let call = (spec.payload > 0).then(|| {
        let body = String::from_utf8(json_like(spec.payload, 7)).expect("ASCII");
        serde_json::json!({"jsonrpc": "2.0", "method": "echo", "params": [body], "id": 1})
            .to_string()
    });
    for _ in 0..spec.conns {
        match connect_wire(spec.addr, 4096, spec.deflate, spec.tls) {
            Ok(mut ws) => {
                if let Some(call) = &call {
                    let answered = ws
                        .write(Message::text(call.clone()))
                        .and_then(|()| ws.flush())
                        .and_then(|()| ws.read());
                    match answered {
                        Ok(Message::Text(t)) if t.len() >= spec.payload => {}
                        Ok(other) => report.error(format!("unexpected answer {other:?}")),
                        Err(e) => report.error(e),
                    }
                }
                if ws.compressed() {
                    report.compressed_conns += 1;
                }
                conns.push(ws);
            }
            Err(e) => {
                report.error(e);
                break;
            }
        }
    }
    // Let the server finish whatever follows a handshake, then measure.
    std::thread::sleep(Duration::from_millis(700));
    report.rss_after_kib = sys::rss_kib(spec.server_pid)?;
    // Every connection must still be open: a close would be readable now.
    for ws in &mut conns {
        ws.get_ref().set_nonblocking(true)?;
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                report.conns_ok += 1
            }
            Ok(m) => report.error(format!("unexpected message on an idle connection: {m:?}")),
            Err(e) => report.error(e),
        }
    }
    report.ops = report.conns_ok as u64;
    Ok(report)
}

/// Per-connection state of the active scenarios.
struct Conn {
    ws: Wire,
    broken: bool,
    /// Correct operations in the window.
    done: u64,
    /// Calls: (id, sent) per pipeline slot; echo: the in-flight (seq, sent) in order.
    slots: Vec<(u64, Instant)>,
    in_flight: VecDeque<(u64, Instant)>,
    next_seq: u64,
    /// Echo: the payload whose first 8 bytes are replaced by the sequence number.
    template: Vec<u8>,
    /// Fan-out: subscribed, and the last sequence number received.
    subscribed: bool,
    last_seq: u64,
}

#[derive(Deserialize)]
struct CallResponse {
    id: u64,
    result: Option<i64>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    method: Option<&'a str>,
    params: Option<NotificationParams>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct NotificationParams {
    /// The topic's sequence number.
    seq: Option<u64>,
    result: Option<TickIn>,
}

#[derive(Deserialize)]
struct TickIn {
    seq: u64,
    ts: u64,
}

/// Hex digits of the sequence number at the start of a compressed echo's text.
const SEQ_TEXT: usize = 16;

/// `len` bytes of JSON-like text (price rows), different per connection `i`.
fn json_like(len: usize, i: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 96);
    s.push_str(&"0".repeat(SEQ_TEXT));
    s.push_str(",[");
    let mut k = i as u64;
    while s.len() < len {
        k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(&format!(
            "{{\"id\":{},\"price\":\"{}.{:02}\",\"qty\":{},\"side\":\"{}\"}},",
            k >> 44,
            40000 + (k >> 20) % 2000,
            (k >> 8) % 100,
            (k >> 32) % 50,
            if k & 1 == 0 { "buy" } else { "sell" }
        ));
    }
    s.truncate(len);
    s.into_bytes()
}

/// Whether the scenario subscribes every connection and counts notifications.
fn is_fanout(spec: &Spec) -> bool {
    matches!(spec.scenario.as_str(), "fanout" | "cluster")
}

/// Slots are numbered in the low bits of a call id.
const SLOT_BITS: u32 = 6;
/// Fan-out ack ring (far larger than the publish window).
const RING: usize = 4096;

struct Load<'s> {
    spec: &'s Spec,
    epoll: rustix::fd::OwnedFd,
    conns: Vec<Conn>,
    report: Report,
    in_window: bool,
    latencies_ns: Vec<u64>,
    // Fan-out.
    udp: Option<UdpSocket>,
    subscribed: usize,
    reached: Vec<u32>,
    acked: u64,
    last_ack_sent: Instant,
}

impl<'s> Load<'s> {
    fn new(spec: &'s Spec) -> io::Result<Self> {
        let read_buffer = match spec.scenario.as_str() {
            "echo" => (spec.payload * 2).clamp(4096, 64 * 1024),
            "fanout" | "cluster" => 16 * 1024,
            _ => 4096,
        };
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let mut report = Report::default();
        if spec.deflate {
            std::thread::sleep(Duration::from_millis(300));
            report.rss_before_kib = sys::rss_kib(spec.server_pid)?;
        }
        let mut conns = Vec::with_capacity(spec.conns);
        for i in 0..spec.conns {
            let addr = match spec.addr2 {
                Some(other) if i % 2 == 1 => other,
                _ => spec.addr,
            };
            let ws = connect_wire(addr, read_buffer, spec.deflate, spec.tls)?;
            ws.get_ref().set_nonblocking(true)?;
            epoll::add(
                &epoll,
                ws.get_ref(),
                epoll::EventData::new_u64(i as u64),
                epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::ET,
            )?;
            let template = if spec.deflate {
                json_like(spec.payload.max(SEQ_TEXT), i)
            } else {
                let mut template = vec![0u8; spec.payload.max(8)];
                for (k, b) in template.iter_mut().enumerate() {
                    *b = (k as u8).wrapping_mul(31).wrapping_add(i as u8);
                }
                template
            };
            conns.push(Conn {
                ws,
                broken: false,
                done: 0,
                slots: vec![(u64::MAX, Instant::now()); spec.depth.max(1)],
                in_flight: VecDeque::new(),
                next_seq: 1,
                template,
                subscribed: false,
                last_seq: 0,
            });
        }
        let udp = if is_fanout(spec) {
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            udp.connect(("127.0.0.1", spec.udp_port))?;
            Some(udp)
        } else {
            None
        };
        Ok(Self {
            spec,
            epoll,
            conns,
            report,
            in_window: false,
            latencies_ns: Vec::new(),
            udp,
            subscribed: 0,
            reached: vec![0; RING],
            acked: 0,
            last_ack_sent: Instant::now(),
        })
    }

    fn run(mut self) -> io::Result<Report> {
        let depth = self.spec.depth.max(1);
        let now = Instant::now();
        for i in 0..self.conns.len() {
            match self.spec.scenario.as_str() {
                "calls" => {
                    for slot in 0..depth {
                        self.send_call(i, slot, now);
                    }
                }
                "echo" => {
                    for _ in 0..depth {
                        self.send_echo(i, now);
                    }
                }
                _ => {
                    let topic = match self.spec.topics {
                        0 => "t".to_owned(),
                        n => format!("t{}", (i / 2) % n),
                    };
                    let sub = format!(
                        r#"{{"jsonrpc":"2.0","method":"subscribe","params":["{topic}"],"id":1}}"#
                    );
                    let _ = self.conns[i].ws.write(Message::text(sub));
                }
            }
            self.flush(i);
        }
        let fanout = is_fanout(self.spec);
        let mut redis0 = (0.0, 0);
        // Fan-out starts its clock when every subscriber is subscribed (bounded wait).
        let mut start = if fanout { None } else { Some(Instant::now()) };
        let setup_deadline = Instant::now() + Duration::from_secs(60);
        let warmup = Duration::from_secs_f64(self.spec.warmup_s);
        let window = Duration::from_secs_f64(self.spec.window_s);
        let (mut cpu0, mut own0, mut t0) = (0.0, 0.0, Instant::now());
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
        loop {
            sys::epoll_wait(&self.epoll, &mut events)?;
            for ev in &events {
                self.service(ev.data.u64() as usize);
            }
            let now = Instant::now();
            if fanout {
                // A paced publisher only waits for the start.
                if !self.spec.paced {
                    self.fanout_acks(now, start.is_some());
                }
                if start.is_none() {
                    if self.subscribed == self.conns.len() {
                        self.send_ack(0, now);
                        start = Some(now);
                    } else if now > setup_deadline {
                        return Err(io::Error::other(format!(
                            "only {} of {} subscribed",
                            self.subscribed,
                            self.conns.len()
                        )));
                    }
                }
            }
            let Some(s) = start else { continue };
            if !self.in_window && now >= s + warmup {
                cpu0 = self.server_cpu()?;
                redis0 = self.redis_counters();
                own0 = sys::own_cpu_seconds();
                t0 = Instant::now();
                self.in_window = true;
                let (wi, wo) = self.wire_bytes();
                self.report.wire_in = wi;
                self.report.wire_out = wo;
                self.latencies_ns.clear();
                for c in &mut self.conns {
                    c.done = 0;
                }
                self.report.ops = 0;
            } else if self.in_window && now >= t0 + window {
                let cpu1 = self.server_cpu()?;
                let redis1 = self.redis_counters();
                self.report.redis_cpu_s = redis1.0 - redis0.0;
                self.report.publishes = redis1.1.saturating_sub(redis0.1);
                let secs = t0.elapsed().as_secs_f64();
                self.report.client_cpu_s = sys::own_cpu_seconds() - own0;
                self.report.server_cpu_s = cpu1 - cpu0;
                self.report.window_s = secs;
                let (wi, wo) = self.wire_bytes();
                self.report.wire_in = wi - self.report.wire_in;
                self.report.wire_out = wo - self.report.wire_out;
                if self.spec.deflate {
                    self.report.rss_after_kib = sys::rss_kib(self.spec.server_pid)?;
                }
                break;
            }
        }
        let secs = self.report.window_s;
        self.report.ops = self.conns.iter().map(|c| c.done).sum();
        let rates = self.conns.iter().map(|c| c.done as f64 / secs);
        self.report.min_conn_rate = rates.clone().fold(f64::INFINITY, f64::min);
        self.report.max_conn_rate = rates.fold(0.0, f64::max);
        self.report.conns_ok = self.conns.iter().filter(|c| !c.broken).count();
        self.report.compressed_conns = self.conns.iter().filter(|c| c.ws.compressed()).count();
        let mut lat = std::mem::take(&mut self.latencies_ns);
        lat.sort_unstable();
        let q = |p: f64| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            let idx = ((lat.len() - 1) as f64 * p).round() as usize;
            lat[idx] as f64 / 1000.0
        };
        self.report.p50_us = q(0.50);
        self.report.p99_us = q(0.99);
        self.report.p999_us = q(0.999);
        Ok(self.report)
    }

    /// CPU seconds of the server process(es).
    fn server_cpu(&self) -> io::Result<f64> {
        let mut total = sys::cpu_seconds(self.spec.server_pid)?;
        for &pid in &self.spec.extra_pids {
            total += sys::cpu_seconds(pid)?;
        }
        Ok(total)
    }

    /// Redis's CPU seconds and publish scripts run so far, from `INFO` (zeros without Redis).
    fn redis_counters(&self) -> (f64, u64) {
        let Some(addr) = self.spec.redis_addr else { return (0.0, 0) };
        let Ok(info) = wsrpc_examples::redis_server::command(addr, &["INFO", "all"]) else {
            return (0.0, 0);
        };
        let field = |name| wsrpc_examples::redis_server::info_field(&info, name);
        let cpu = |name| field(name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // `cmdstat_evalsha:calls=N,usec=...`
        let calls = field("cmdstat_evalsha")
            .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")?.parse().ok()))
            .unwrap_or(0);
        (cpu("used_cpu_user") + cpu("used_cpu_sys"), calls)
    }

    /// Reads everything the connection has, answers it, then writes once.
    fn service(&mut self, i: usize) {
        if self.conns[i].broken {
            return;
        }
        loop {
            let msg = match self.conns[i].ws.read() {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.fail(i, format!("connection {i}: {e}"));
                    return;
                }
            };
            let now = Instant::now();
            let result = match msg {
                Message::Text(t) if self.spec.scenario != "echo" => {
                    match self.spec.scenario.as_str() {
                        "calls" => self.on_call_response(i, t.as_str(), now),
                        "fanout" | "cluster" => self.on_notification(i, t.as_str()),
                        _ => Err("unexpected text".into()),
                    }
                }
                Message::Binary(b) if self.spec.scenario == "echo" => self.on_echo(i, &b, now),
                Message::Text(t) if self.spec.scenario == "echo" && self.spec.deflate => {
                    self.on_echo(i, t.as_bytes(), now)
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
                other => Err(format!("unexpected message {other:?}")),
            };
            if let Err(e) = result {
                self.fail(i, format!("connection {i}: {e}"));
                return;
            }
        }
        self.flush(i);
    }

    fn fail(&mut self, i: usize, e: String) {
        self.conns[i].broken = true;
        self.report.error(e);
        let _ = epoll::delete(&self.epoll, self.conns[i].ws.get_ref());
    }

    fn flush(&mut self, i: usize) {
        match self.conns[i].ws.flush() {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => self.fail(i, format!("connection {i}: write: {e}")),
        }
    }

    fn write(&mut self, i: usize, msg: Message) {
        match self.conns[i].ws.write(msg) {
            Ok(()) => {}
            // Queued; the flush continues when the socket is writable again.
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => self.fail(i, format!("connection {i}: write: {e}")),
        }
    }

    fn send_call(&mut self, i: usize, slot: usize, now: Instant) {
        let c = &mut self.conns[i];
        let id = (c.next_seq << SLOT_BITS) | slot as u64;
        c.next_seq += 1;
        c.slots[slot] = (id, now);
        let text = format!(r#"{{"jsonrpc":"2.0","method":"add","params":[{id},{i}],"id":{id}}}"#);
        self.write(i, Message::text(text));
    }

    fn on_call_response(&mut self, i: usize, text: &str, now: Instant) -> Result<(), String> {
        let r: CallResponse =
            serde_json::from_str(text).map_err(|e| format!("bad response {text}: {e}"))?;
        let slot = (r.id & ((1 << SLOT_BITS) - 1)) as usize;
        let (id, sent) = *self.conns[i].slots.get(slot).ok_or("id out of range")?;
        if id != r.id || r.result != Some(r.id as i64 + i as i64) {
            return Err(format!("wrong answer {text} (expected id {id})"));
        }
        self.record(i, now - sent);
        self.send_call(i, slot, now);
        Ok(())
    }

    fn send_echo(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let seq = c.next_seq;
        c.next_seq += 1;
        let mut data = c.template.clone();
        if self.spec.deflate {
            data[..SEQ_TEXT].copy_from_slice(format!("{seq:0SEQ_TEXT$x}").as_bytes());
            c.in_flight.push_back((seq, now));
            let text = String::from_utf8(data).expect("the JSON-like template is ASCII");
            self.write(i, Message::text(text));
            return;
        }
        data[..8].copy_from_slice(&seq.to_le_bytes());
        c.in_flight.push_back((seq, now));
        self.write(i, Message::binary(data));
    }

    /// Bytes on the wire so far, over every connection.
    fn wire_bytes(&self) -> (u64, u64) {
        self.conns.iter().fold((0, 0), |(i, o), c| {
            let (ci, co) = c.ws.wire_bytes();
            (i + ci, o + co)
        })
    }

    fn on_echo(&mut self, i: usize, data: &[u8], now: Instant) -> Result<(), String> {
        let c = &mut self.conns[i];
        let (seq, sent) = c.in_flight.pop_front().ok_or("echo with nothing in flight")?;
        let head = if self.spec.deflate { SEQ_TEXT } else { 8 };
        let seq_ok = if self.spec.deflate {
            data.len() >= SEQ_TEXT && data[..SEQ_TEXT] == *format!("{seq:0SEQ_TEXT$x}").as_bytes()
        } else {
            data.len() >= 8 && data[..8] == seq.to_le_bytes()
        };
        if data.len() != c.template.len() || !seq_ok || data[head..] != c.template[head..] {
            return Err(format!("echo {seq} does not match what was sent"));
        }
        self.record(i, now - sent);
        self.send_echo(i, now);
        Ok(())
    }

    fn on_notification(&mut self, i: usize, text: &str) -> Result<(), String> {
        let m: Incoming<'_> =
            serde_json::from_str(text).map_err(|e| format!("bad message {text}: {e}"))?;
        if m.id.is_some() {
            if m.error.is_some() {
                return Err(format!("subscribe failed: {text}"));
            }
            if !self.conns[i].subscribed {
                self.conns[i].subscribed = true;
                self.subscribed += 1;
            }
            return Ok(());
        }
        if m.method != Some("subscription") {
            self.report.lagged += 1;
            return Ok(());
        }
        let params = m.params.ok_or_else(|| format!("no params in {text}"))?;
        let tick = params.result.ok_or_else(|| format!("no tick in {text}"))?;
        let delay = unix_nanos().saturating_sub(tick.ts);
        if self.spec.paced {
            // Many topics, no acks: continuity by the topic's own sequence numbers.
            let seq = params.seq.ok_or_else(|| format!("no seq in {text}"))?;
            let c = &mut self.conns[i];
            let last = c.last_seq;
            if seq <= last {
                return Err(format!("topic sequence went from {last} to {seq}"));
            }
            if last != 0 && seq != last + 1 {
                self.report.gaps += seq - last - 1;
            }
            c.last_seq = seq;
            self.record_ns(i, delay);
            return Ok(());
        }
        let c = &mut self.conns[i];
        let last = c.last_seq;
        if tick.seq <= last {
            return Err(format!("sequence went from {last} to {}", tick.seq));
        }
        if last != 0 && tick.seq != last + 1 {
            self.report.gaps += tick.seq - last - 1;
        }
        c.last_seq = tick.seq;
        // Every sequence number up to this one is now behind this subscriber.
        let from = last.max(self.acked) + 1;
        for s in from..=tick.seq.min(from + RING as u64 - 1) {
            self.reached[(s % RING as u64) as usize] += 1;
        }
        self.record_ns(i, delay);
        Ok(())
    }

    /// Advances the ack over every sequence number all live subscribers have passed.
    fn fanout_acks(&mut self, now: Instant, started: bool) {
        if !started {
            return;
        }
        let live = self.conns.iter().filter(|c| !c.broken).count() as u32;
        let before = self.acked;
        loop {
            let slot = ((self.acked + 1) % RING as u64) as usize;
            if self.reached[slot] < live || live == 0 {
                break;
            }
            self.reached[slot] = 0;
            self.acked += 1;
        }
        // Acks are datagrams: resend now and then in case one was lost.
        if self.acked != before || now - self.last_ack_sent > Duration::from_millis(5) {
            self.send_ack(self.acked, now);
        }
    }

    fn send_ack(&mut self, seq: u64, now: Instant) {
        if let Some(udp) = &self.udp {
            let _ = udp.send(&seq.to_le_bytes());
        }
        self.last_ack_sent = now;
    }

    fn record(&mut self, i: usize, latency: Duration) {
        self.record_ns(i, latency.as_nanos() as u64);
    }

    fn record_ns(&mut self, i: usize, ns: u64) {
        if self.in_window {
            self.conns[i].done += 1;
            self.latencies_ns.push(ns);
        }
    }
}
