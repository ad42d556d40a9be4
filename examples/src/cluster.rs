//! The parts of the `cluster` example: a server instance whose topics all go through Redis,
//! with a `publish(topic, value)` method open to clients, and a small blocking WebSocket
//! JSON-RPC client that resumes subscriptions with `since` and `epoch` on whichever instance
//! it reaches (what the tests and outside checkers do too).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::hub::Sequenced;
use wsrpc_core::limit::LimitConfig;
use wsrpc_core::metrics::BrokerState;
use wsrpc_core::rpc::{Router, RpcError};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::ws::frame::{OpCode, encode_frame};
use wsrpc_redis::RedisExt;

/// The instance's methods: `publish(topic, value)` → `{"seq": N, "epoch": E}`, the position
/// Redis gave the message (answered once Redis has; -32002 while it is unavailable).
pub fn router(service: Arc<OnceLock<Weak<Service>>>) -> Router {
    #[derive(serde::Deserialize)]
    struct Publish {
        topic: String,
        value: Value,
    }
    let mut r = Router::new();
    r.async_method("publish", move |p: Publish, _| {
        let published = match service.get().and_then(Weak::upgrade) {
            Some(s) => s.publish(&p.topic, &p.value).map_err(|e| e.to_rpc_error()),
            None => Err(RpcError::internal("the server is not started")),
        };
        async move {
            let published = published?;
            let at = match published.pending {
                Some(ticket) => ticket.await.map_err(|e| e.to_rpc_error())?,
                None => Sequenced { seq: published.seq, epoch: published.epoch },
            };
            Ok(json!({ "seq": at.seq, "epoch": at.epoch }))
        }
    });
    r
}

/// Starts one instance on smol at `addr`: every topic shared through the Redis at
/// `redis_url`, rate tokens off (it is a demo and test target: publishers send thousands per
/// second over one connection).
pub fn start_instance(redis_url: &str, addr: SocketAddr) -> std::io::Result<wsrpc_smol::Server> {
    start_instance_with(redis_url, addr, instance_config())
}

/// The configuration of an instance: defaults, without rate tokens.
pub fn instance_config() -> ServiceConfig {
    let mut config = ServiceConfig::default();
    config.limits = LimitConfig::disabled();
    config
}

/// [`start_instance`] with a configuration of the caller's.
pub fn start_instance_with(
    redis_url: &str,
    addr: SocketAddr,
    config: ServiceConfig,
) -> std::io::Result<wsrpc_smol::Server> {
    let cell = Arc::new(OnceLock::new());
    let server = wsrpc_smol::Server::builder()
        .config(config)
        .router(router(cell.clone()))
        .redis(redis_url)
        .bind(addr)
        .start()?;
    // A weak reference: the router lives in the service, which must not keep itself alive.
    let _ = cell.set(Arc::downgrade(server.service()));
    Ok(server)
}

/// Waits until the service's broker is up; false after `timeout`.
pub fn wait_until_up(service: &Service, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if service.broker_state() == Some(BrokerState::Up) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs one instance until the process is killed: `cluster --redis URL --port P`, keeping
/// `replay` messages per topic here and in Redis (the hub's default, 256, when `None`).
/// Prints `listening on ADDR` (flushed) once Redis is reachable, or after 10 s without it.
pub fn run_instance(redis_url: &str, port: u16, replay: Option<usize>) -> std::io::Result<()> {
    let mut config = instance_config();
    if let Some(n) = replay {
        config.hub.replay_capacity = n;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = start_instance_with(redis_url, addr, config)?;
    if !wait_until_up(server.service(), Duration::from_secs(10)) {
        eprintln!("Redis at {redis_url} is not reachable yet; publishes fail until it is");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.local_addr())?;
    out.flush()?;
    drop(out);
    smol::block_on(smol::future::pending::<()>());
    Ok(())
}

/// What a [`RawClient`] reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A published value.
    Notification {
        /// Its topic.
        topic: String,
        /// Its sequence number.
        seq: u64,
        /// The value.
        value: Value,
    },
    /// `from..=to` will not arrive.
    Gap {
        /// The topic.
        topic: String,
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
    },
    /// Dropped for a slow reader (`to` set), or stalled from `from` on while the broker is
    /// down (`to` absent).
    Lagged {
        /// The topic.
        topic: String,
        /// First missing or late.
        from: u64,
        /// Last missing, for a drop.
        to: Option<u64>,
    },
    /// The topic's numbering started over in `epoch`.
    Reset {
        /// The topic.
        topic: String,
        /// The new epoch.
        epoch: u64,
    },
    /// The answer to a call: its result, or its error object.
    Response {
        /// The call's id.
        id: u64,
        /// Result or error.
        result: Result<Value, Value>,
    },
}

/// A minimal blocking WebSocket JSON-RPC client over `std::net`, for the example and for
/// tests that must control every byte of a resumption.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    message: Vec<u8>,
    next_id: u64,
    queued: VecDeque<Event>,
}

impl RawClient {
    /// Connects and upgrades.
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        Self::connect_to(addr, "/")
    }

    /// Connects and upgrades at `target` (a path, with a `?token=` query for instance).
    pub fn connect_to(addr: SocketAddr, target: &str) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(
            format!(
                "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 || buf.len() > 16 * 1024 {
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, head));
        }
        buf.drain(..end);
        Ok(Self { stream, buf, message: Vec::new(), next_id: 1, queued: VecDeque::new() })
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, method: &str, params: Value) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.send_frame(OpCode::Text, text.to_string().as_bytes())?;
        Ok(id)
    }

    /// Calls `method` and waits for its answer; notifications meanwhile are kept for
    /// [`next`](Self::next).
    pub fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> std::io::Result<Result<Value, Value>> {
        let id = self.send(method, params)?;
        let end = Instant::now() + timeout;
        let mut kept = VecDeque::new();
        let answer = loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.read_event(left)? {
                Some(Event::Response { id: got, result }) if got == id => break Ok(result),
                Some(other) => kept.push_back(other),
                None => break Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            }
        };
        kept.append(&mut self.queued);
        self.queued = kept;
        answer
    }

    /// The next event within `timeout` (`None` when none came); an error when the
    /// connection ended.
    pub fn next(&mut self, timeout: Duration) -> std::io::Result<Option<Event>> {
        if let Some(e) = self.queued.pop_front() {
            return Ok(Some(e));
        }
        self.read_event(timeout)
    }

    fn read_event(&mut self, timeout: Duration) -> std::io::Result<Option<Event>> {
        let end = Instant::now() + timeout;
        loop {
            while let Some(text) = self.take_message()? {
                if let Some(e) = parse_event(&text) {
                    return Ok(Some(e));
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(std::io::ErrorKind::ConnectionAborted.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A whole text message from the buffered bytes, answering pings on the way.
    fn take_message(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let Some((fin, opcode, payload, used)) = parse_frame(&self.buf) else {
                return Ok(None);
            };
            self.buf.drain(..used);
            match opcode {
                0x1 | 0x0 => {
                    self.message.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(std::mem::take(&mut self.message)));
                    }
                }
                0x9 => self.send_frame(OpCode::Pong, &payload)?,
                0x8 => {
                    // Answer the close (its code, if any) before giving up the connection.
                    let _ = self.send_frame(OpCode::Close, &payload[..payload.len().min(2)]);
                    return Err(std::io::ErrorKind::ConnectionAborted.into());
                }
                _ => {}
            }
        }
    }

    fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mut wire = Vec::with_capacity(payload.len() + 14);
        encode_frame(&mut wire, true, opcode, Some([0x5a, 0x17, 0xc3, 0x9e]), payload);
        self.stream.write_all(&wire)
    }
}

/// One unmasked server frame at the start of `buf`: FIN, opcode, payload, bytes used.
fn parse_frame(buf: &[u8]) -> Option<(bool, u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4usize),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    Some((b0 & 0x80 != 0, b0 & 0x0F, buf.get(at..end)?.to_vec(), end))
}

fn parse_event(text: &[u8]) -> Option<Event> {
    let v: Value = serde_json::from_slice(text).ok()?;
    if let Some(id) = v.get("id").and_then(Value::as_u64) {
        let result = match v.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        };
        return Some(Event::Response { id, result });
    }
    let p = v.get("params")?;
    let topic = p.get("topic")?.as_str()?.to_owned();
    let u = |k: &str| p.get(k).and_then(Value::as_u64);
    Some(match v.get("method")?.as_str()? {
        "subscription" => {
            Event::Notification { topic, seq: u("seq")?, value: p.get("result")?.clone() }
        }
        "gap" => Event::Gap { topic, from: u("missed_from")?, to: u("missed_to")? },
        "lagged" => Event::Lagged { topic, from: u("missed_from")?, to: u("missed_to") },
        "reset" => Event::Reset { topic, epoch: u("epoch")? },
        _ => return None,
    })
}
