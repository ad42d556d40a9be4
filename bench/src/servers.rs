//! The servers under test, each run in its own process by `wsrpc-bench serve KIND`.
//!
//! Every server prints `READY <tcp port> <udp port>` on stdout once it listens. The UDP port
//! belongs to the fan-out publisher (0 when there is none): the load client sends it the
//! highest sequence number every subscriber has received, and the publisher stays at most
//! [`PUBLISH_WINDOW`] messages ahead of that. So the publisher runs as fast as the server
//! can deliver, without flooding the per-connection queues (which would only measure the
//! drop path).

use std::io::{self, IoSlice, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Messages the publisher may be ahead of the slowest subscriber.
pub(crate) const PUBLISH_WINDOW: u64 = 8;

/// How a server process publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Publishing {
    /// It does not.
    None,
    /// On [`TOPIC`], as fast as the client's acks allow ([`PUBLISH_WINDOW`] ahead).
    Window,
    /// `rate` messages a second, round-robin over topics `t0`..`t{topics-1}`, from the
    /// client's start signal on.
    Paced { rate: u64, topics: u64 },
}

impl Publishing {
    /// The `serve` arguments that ask for it.
    pub(crate) fn args(self) -> Vec<String> {
        match self {
            Self::None => Vec::new(),
            Self::Window => vec!["--fanout".into()],
            Self::Paced { rate, topics } => {
                vec!["--rate".into(), rate.to_string(), "--topics".into(), topics.to_string()]
            }
        }
    }
}

/// The topic of the fan-out scenario.
pub(crate) const TOPIC: &str = "t";
/// Capacity of per-connection queues for notifications, the same for ours and the peer.
const QUEUE: usize = 1024;
/// Connection limit raised above every count tested.
const MAX_CONNECTIONS: usize = 20_000;

/// Every server the bench knows, by the name used in `--servers` and the tables.
pub(crate) const ALL: &[&str] = &[
    "wsrpc-smol",
    "wsrpc-async-std",
    "wsrpc-blocking",
    "wsrpc-cluster",
    "wsrpc-echo",
    "jsonrpsee",
    "tokio-tungstenite",
    "fastwebsockets",
    "wsrpc-smol-deflate",
    "wsrpc-echo-deflate",
    "soketto-deflate",
];

/// Whether `kind` is a WebSocket echo server (no JSON-RPC): for it a call is one echoed
/// message.
pub(crate) fn is_echo(kind: &str) -> bool {
    matches!(kind, "wsrpc-echo" | "tokio-tungstenite" | "fastwebsockets")
}

/// The value published in the fan-out scenario.
#[derive(Serialize)]
struct Tick<'a> {
    seq: u64,
    /// Nanoseconds since the Unix epoch at publish time: the client, on the same machine,
    /// subtracts it from its own clock for the publish→receipt delay.
    ts: u64,
    /// JSON-like rows that bring the notification to the scenario's size (`fanout-deflate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<&'a serde_json::Value>,
}

/// Price rows of about `bytes` bytes of JSON, made once per server.
fn rows_of(bytes: usize) -> Option<serde_json::Value> {
    if bytes == 0 {
        return None;
    }
    let mut rows = Vec::new();
    let mut len = 0;
    let mut k = 0u64;
    while len < bytes {
        k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let row = serde_json::json!({
            "price": format!("{}.{:02}", 40000 + (k >> 20) % 2000, (k >> 8) % 100),
            "qty": (k >> 32) % 50,
            "side": if k & 1 == 0 { "buy" } else { "sell" },
        });
        len += row.to_string().len() + 1;
        rows.push(row);
    }
    Some(serde_json::Value::Array(rows))
}

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn ready(port: u16, udp: Option<&UdpSocket>) {
    let udp_port = udp.and_then(|u| u.local_addr().ok()).map_or(0, |a| a.port());
    println!("READY {port} {udp_port}");
    let _ = io::stdout().flush();
}

/// A self-signed ECDSA P-256 certificate for `localhost` and `127.0.0.1` made at start, in a
/// server configuration with aws-lc-rs: the same certificate kind and provider for every
/// server of the TLS scenarios (the client accepts any certificate but checks the
/// handshake's signature).
fn tls_config() -> io::Result<Arc<rustls::ServerConfig>> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    wsrpc_tls::server_config(vec![cert.cert.der().clone()], key).map_err(io::Error::other)
}

/// Serves `kind` until killed; its publisher (if any) pads its notifications to `payload`
/// bytes; over TLS with `tls`; `wsrpc-cluster` is an instance sharing every topic through
/// the Redis at `redis`.
pub(crate) fn serve(
    kind: &str,
    publishing: Publishing,
    payload: usize,
    tls: bool,
    redis: Option<&str>,
) -> io::Result<()> {
    let udp = match publishing {
        Publishing::None => None,
        Publishing::Window | Publishing::Paced { .. } => Some(UdpSocket::bind("127.0.0.1:0")?),
    };
    let rows: &'static Option<serde_json::Value> = Box::leak(Box::new(rows_of(payload)));
    let tls = if tls { Some(tls_config()?) } else { None };
    macro_rules! ours {
        ($server:ty, $config:expr $(, $setter:ident($arg:expr))*) => {{
            let b = <$server>::builder()
                .router(router())
                .config($config)
                $(.$setter($arg))*
                .bind(localhost());
            let server = Arc::new(match tls {
                Some(tls) => b.tls(tls).start()?,
                None => b.start()?,
            });
            let s = server.clone();
            start_publisher(udp.as_ref(), publishing, rows, move |topic, t| {
                let _ = s.publish(topic, t);
            })?;
            ready(server.local_addr().port(), udp.as_ref());
            park_forever()
        }};
    }
    match kind {
        "wsrpc-smol" | "wsrpc-smol-deflate" => {
            let mut config = wsrpc_config();
            if kind.ends_with("-deflate") {
                config.ws.enable_compression();
            }
            ours!(wsrpc_smol::Server, config)
        }
        "wsrpc-async-std" => ours!(wsrpc_async_std::Server, wsrpc_config()),
        // The cluster example's instance (smol, every topic through Redis) with the bench's
        // limits; plain TCP only.
        "wsrpc-cluster" => {
            let url = redis.ok_or_else(|| io::Error::other("wsrpc-cluster needs --redis URL"))?;
            if tls.is_some() {
                return Err(io::Error::other("wsrpc-cluster is not served over TLS here"));
            }
            let server =
                wsrpc_examples::cluster::start_instance_with(url, localhost(), wsrpc_config())?;
            if !wsrpc_examples::cluster::wait_until_up(server.service(), Duration::from_secs(10)) {
                return Err(io::Error::other(format!("Redis at {url} is not reachable")));
            }
            let publisher = server.publisher();
            // Redis numbers each message and sends it back to both instances for delivery;
            // the publisher does not wait for that (its ticket is dropped).
            start_publisher(udp.as_ref(), publishing, rows, move |topic, t| {
                let _ = publisher.publish(topic, t);
            })?;
            ready(server.local_addr().port(), udp.as_ref());
            park_forever()
        }
        // One I/O thread for the one CPU the server is pinned to (the default, said here so
        // the bench does not depend on it); `add` is synchronous, so the worker pool (for
        // async and blocking handlers) stays idle and one worker is enough.
        "wsrpc-blocking" => {
            ours!(wsrpc_blocking::Server, wsrpc_config(), io_threads(1), worker_threads(1))
        }
        "wsrpc-echo" => core_echo::serve(false, tls),
        "wsrpc-echo-deflate" => core_echo::serve(true, tls),
        "jsonrpsee" => peers::jsonrpsee(udp, tls),
        "tokio-tungstenite" => peers::tokio_tungstenite(tls),
        "fastwebsockets" => peers::fastwebsockets(),
        other => Err(io::Error::other(format!("unknown server {other}"))),
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// `add(a, b)`, the trivial method of the `calls` scenario, and `echo` (`idle-deflate`).
fn router() -> wsrpc_core::rpc::Router {
    let mut router = wsrpc_core::rpc::Router::new();
    router.method("add", |(a, b): (i64, i64), _| Ok(a.wrapping_add(b)));
    router.method_raw("echo", |p, _| Ok(p.raw().map(ToOwned::to_owned)));
    router
}

/// Rate limits off, connection limit raised, notification queues as large as the peer's.
fn wsrpc_config() -> wsrpc_core::service::ServiceConfig {
    let mut config = wsrpc_core::service::ServiceConfig::default();
    config.limits = wsrpc_core::limit::LimitConfig::disabled();
    config.max_connections = MAX_CONNECTIONS;
    config.hub.outbox.max_messages = QUEUE;
    config.hub.outbox.max_bytes = 64 << 20;
    config
}

/// Spawns the publisher thread when there is an ack socket.
fn start_publisher(
    udp: Option<&UdpSocket>,
    publishing: Publishing,
    rows: &'static Option<serde_json::Value>,
    publish: impl Fn(&str, &Tick<'_>) + Send + 'static,
) -> io::Result<()> {
    let Some(udp) = udp else { return Ok(()) };
    let udp = udp.try_clone()?;
    std::thread::Builder::new().name("publisher".into()).spawn(move || match publishing {
        Publishing::Paced { rate, topics } => paced(&udp, rate, topics, rows.as_ref(), publish),
        Publishing::Window | Publishing::None => {
            publisher(&udp, rows.as_ref(), |t| publish(TOPIC, t))
        }
    })?;
    Ok(())
}

/// Waits for the client's start signal, then publishes `rate` a second, round-robin over
/// `topics` topics, each message on time (late ones are sent at once, never skipped).
fn paced(
    udp: &UdpSocket,
    rate: u64,
    topics: u64,
    rows: Option<&serde_json::Value>,
    publish: impl Fn(&str, &Tick<'_>),
) {
    let names: Vec<String> = (0..topics.max(1)).map(|k| format!("t{k}")).collect();
    let _ = udp.set_read_timeout(None);
    let _ = udp.recv(&mut [0u8; 16]);
    let start = Instant::now();
    for seq in 1u64.. {
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate.max(1));
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let topic = &names[(seq % names.len() as u64) as usize];
        publish(topic, &Tick { seq, ts: unix_nanos(), rows });
    }
}

/// Waits for the client's start signal, then publishes as fast as the window allows.
fn publisher(udp: &UdpSocket, rows: Option<&serde_json::Value>, publish: impl Fn(&Tick<'_>)) {
    let mut buf = [0u8; 16];
    let mut acked = 0u64;
    let mut recv = |acked: &mut u64| {
        if let Ok(n) = udp.recv(&mut buf) {
            if n >= 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[..8]);
                *acked = (*acked).max(u64::from_le_bytes(b));
            }
            true
        } else {
            false
        }
    };
    // The first datagram (ack 0) says every subscriber is subscribed.
    let _ = udp.set_read_timeout(None);
    recv(&mut acked);
    let _ = udp.set_read_timeout(Some(Duration::from_millis(20)));
    let mut seq = 0u64;
    loop {
        while seq >= acked + PUBLISH_WINDOW {
            recv(&mut acked);
        }
        seq += 1;
        publish(&Tick { seq, ts: unix_nanos(), rows });
    }
}

/// A WebSocket echo server on `wsrpc_core::ws::Connection`, one executor thread
/// (async-io's `block_on` drives the reactor on the same thread). Reads into a stack buffer
/// inside the poll, so an idle connection keeps no read buffer; writes vectored.
mod core_echo {
    use super::*;
    use async_io::Async;
    use futures_io::{AsyncRead, AsyncWrite};
    use wsrpc_core::ws::{Config, Connection, Event};

    const ROUNDS_PER_POLL: usize = 16;
    /// Stop reading while this much is queued for the peer.
    const WRITE_HIGH_WATER: usize = 1 << 20;

    pub(super) fn serve(
        compression: bool,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<()> {
        let acceptor = tls.map(futures_rustls::TlsAcceptor::from);
        let listener = Async::<TcpListener>::bind(super::localhost())?;
        let port = listener.get_ref().local_addr()?.port();
        let mut config = Config::default();
        // Like the peers: no heartbeat, no timers to drive.
        config.ping_interval = None;
        config.handshake_timeout = None;
        if compression {
            config.enable_compression();
        }
        let config = Arc::new(config);
        let ex = smol::LocalExecutor::new();
        ready(port, None);
        async_io::block_on(ex.run(async {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.get_ref().set_nodelay(true);
                let config = config.clone();
                let acceptor = acceptor.clone();
                ex.spawn(async move {
                    let mut conn = Connection::server(config, Instant::now());
                    let stream = wsrpc_futures::net::TcpConn::new(stream);
                    let mut write_closed = false;
                    match acceptor {
                        None => {
                            let mut stream = stream;
                            std::future::poll_fn(|cx| {
                                drive(&mut conn, &mut stream, &mut write_closed, cx)
                            })
                            .await;
                        }
                        Some(acceptor) => {
                            let Ok(mut stream) = acceptor.accept(stream).await else { return };
                            std::future::poll_fn(|cx| {
                                drive(&mut conn, &mut stream, &mut write_closed, cx)
                            })
                            .await;
                        }
                    }
                })
                .detach();
            }
        }))
    }

    fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        conn: &mut Connection,
        stream: &mut S,
        write_closed: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        for _ in 0..ROUNDS_PER_POLL {
            let mut progress = false;
            let now = Instant::now();
            if conn.transmit_len() <= WRITE_HIGH_WATER {
                // The executor thread's read buffer (not zeroed per read), and reads gated by
                // readiness: the same read path as wsrpc's adapters.
                wsrpc_futures::with_read_buffer(|buf| {
                    match Pin::new(&mut *stream).poll_read(cx, buf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            conn.handle_eof(now);
                            progress = true;
                        }
                        Poll::Ready(Ok(n)) => {
                            conn.handle_all_input(now, &buf[..n], |conn, event| {
                                if let Event::Message(msg) = event {
                                    let _ = conn.send(now, msg);
                                }
                            });
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                });
            }
            loop {
                let mut slices = [IoSlice::new(&[]); 32];
                let n = conn.poll_transmit_vectored(&mut slices);
                if n == 0 {
                    break;
                }
                match Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Ready(Ok(written)) => {
                        conn.advance_transmit(written);
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            // TLS holds records until flushed (a no-op for TCP).
            let _ = Pin::new(&mut *stream).poll_flush(cx);
            if conn.wants_shutdown_write() && !*write_closed {
                *write_closed = true;
                let _ = Pin::new(&mut *stream).poll_close(cx);
            }
            if conn.is_finished() {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The peers, all on a tokio current-thread runtime.
mod peers {
    use super::*;
    use futures_util::{StreamExt, TryStreamExt};
    use jsonrpsee::server::{RpcModule, Server, ServerConfig};
    use jsonrpsee::types::ErrorObjectOwned;
    use jsonrpsee::{PendingSubscriptionSink, SubscriptionMessage};
    use tokio::sync::broadcast;

    fn runtime() -> io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }

    /// jsonrpsee 0.26: `add(a, b)` and `subscribe`/`unsubscribe` with a broadcast fan-out,
    /// notifications as `subscription`. Connection limit raised (it is on `ServerConfig`).
    pub(super) fn jsonrpsee(
        udp: Option<UdpSocket>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<()> {
        let (tx, _) = broadcast::channel::<SubscriptionMessage>(QUEUE);
        let mut module = RpcModule::new(tx.clone());
        module
            .register_method("add", |params, _, _| {
                let (a, b): (i64, i64) = params.parse()?;
                Ok::<i64, ErrorObjectOwned>(a.wrapping_add(b))
            })
            .map_err(io::Error::other)?;
        module
            .register_subscription(
                "subscribe",
                "subscription",
                "unsubscribe",
                |_params, pending: PendingSubscriptionSink, ctx, _| async move {
                    let mut rx = ctx.subscribe();
                    let sink = pending.accept().await?;
                    loop {
                        match rx.recv().await {
                            Ok(msg) => {
                                if sink.send(msg).await.is_err() {
                                    break;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                    Ok(())
                },
            )
            .map_err(io::Error::other)?;
        let tx2 = tx.clone();
        start_publisher(udp.as_ref(), Publishing::Window, &None, move |_, t| {
            if let Ok(raw) = serde_json::value::to_raw_value(t) {
                let _ = tx2.send(SubscriptionMessage::from(raw));
            }
        })?;
        if let Some(tls) = tls {
            return jsonrpsee_tls(module, tls, udp);
        }
        runtime()?.block_on(async move {
            let config = ServerConfig::builder().max_connections(MAX_CONNECTIONS as u32).build();
            let server = Server::builder().set_config(config).build(localhost()).await?;
            let port = server.local_addr()?.port();
            let handle = server.start(module);
            ready(port, udp.as_ref());
            handle.stopped().await;
            Ok(())
        })
    }

    /// jsonrpsee has no TLS listener: its service, served on the TLS streams of our own
    /// tokio-rustls acceptor through its low-level `serve` (hyper under it), one task per
    /// connection as its own listener does.
    fn jsonrpsee_tls(
        module: RpcModule<broadcast::Sender<SubscriptionMessage>>,
        tls: Arc<rustls::ServerConfig>,
        udp: Option<UdpSocket>,
    ) -> io::Result<()> {
        runtime()?.block_on(async move {
            let listener = tokio::net::TcpListener::bind(localhost()).await?;
            ready(listener.local_addr()?.port(), udp.as_ref());
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            let (stop, _server_handle) = jsonrpsee::server::stop_channel();
            let config = ServerConfig::builder().max_connections(MAX_CONNECTIONS as u32).build();
            let methods: jsonrpsee::Methods = module.into();
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let service = Server::builder()
                    .set_config(config.clone())
                    .to_service_builder()
                    .build(methods.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let _ = jsonrpsee::server::serve(tls, service).await;
                });
            }
        })
    }

    /// tokio-tungstenite 0.30 echo with its default configuration, the echo-server example's
    /// shape: the read half forwarded into the write half (flushes when the reads pause);
    /// over tokio-rustls with `tls`.
    pub(super) fn tokio_tungstenite(tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<()> {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(localhost()).await?;
            ready(listener.local_addr()?.port(), None);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Some(acceptor) = acceptor {
                        let Ok(tls) = acceptor.accept(stream).await else { return };
                        let Ok(ws) = tokio_tungstenite::accept_async(tls).await else { return };
                        let (write, read) = ws.split();
                        let _ = read
                            .try_filter(|m| std::future::ready(m.is_text() || m.is_binary()))
                            .forward(write)
                            .await;
                        return;
                    }
                    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                    let (write, read) = ws.split();
                    let _ = read
                        .try_filter(|m| std::future::ready(m.is_text() || m.is_binary()))
                        .forward(write)
                        .await;
                });
            }
        })
    }

    /// fastwebsockets 0.10 echo as in its echo_server example (fragment collector,
    /// unconstrained task), answering with a fresh unmasked frame. The opening handshake is
    /// done here by hand (it is not measured), without hyper.
    pub(super) fn fastwebsockets() -> io::Result<()> {
        use fastwebsockets::{Frame, OpCode, Role, WebSocket};
        runtime()?.block_on(async {
            let listener = tokio::net::TcpListener::bind(localhost()).await?;
            ready(listener.local_addr()?.port(), None);
            loop {
                let (mut stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(tokio::task::unconstrained(async move {
                    if handshake(&mut stream).await.is_err() {
                        return;
                    }
                    let ws = WebSocket::after_handshake(stream, Role::Server);
                    let mut ws = fastwebsockets::FragmentCollector::new(ws);
                    loop {
                        let Ok(frame) = ws.read_frame().await else { break };
                        match frame.opcode {
                            OpCode::Close => break,
                            OpCode::Text | OpCode::Binary => {
                                let out = Frame::new(true, frame.opcode, None, frame.payload);
                                if ws.write_frame(out).await.is_err() {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                }));
            }
        })
    }

    async fn handshake(stream: &mut tokio::net::TcpStream) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let key = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(_)) => {
                    break req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                        .map(|h| h.value.to_vec())
                        .ok_or_else(|| io::Error::other("no key"))?;
                }
                Ok(httparse::Status::Partial) if buf.len() < 8192 => {}
                _ => return Err(io::Error::other("bad request")),
            }
        };
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&key)
        );
        stream.write_all(response.as_bytes()).await
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2), for the hand-written handshakes.
pub(crate) fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}
