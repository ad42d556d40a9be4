//! Helpers shared by the integration tests: a router, client options with fast reconnects,
//! gates that hold async handlers, and a raw WebSocket peer.
#![allow(dead_code)] // each test binary uses a different part

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use wsrpc_blocking::BackoffConfig;
use wsrpc_blocking::limit::LimitConfig;
use wsrpc_blocking::{ClientOptions, Server};
use wsrpc_blocking::{Router, RpcError};

/// Generous bound for anything a test waits on; only reached when something is broken.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

pub(crate) fn init() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Lets a test hold an async handler: the handler reports that it started, then waits for
/// the test to release it.
#[derive(Clone)]
pub(crate) struct Gate {
    started_tx: Sender<()>,
    started_rx: Receiver<()>,
    release_tx: Sender<()>,
    release_rx: Receiver<()>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        let (started_tx, started_rx) = unbounded();
        let (release_tx, release_rx) = unbounded();
        Self { started_tx, started_rx, release_tx, release_rx }
    }

    /// Waits until a held handler has started.
    pub(crate) fn wait_started(&self) {
        self.started_rx.recv_timeout(PATIENCE).expect("the handler did not start");
    }

    /// Lets one held handler finish.
    pub(crate) fn release(&self) {
        self.release_tx.send(()).expect("the gate is alive");
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// A future that is pending once and asks another thread to wake it, so `block_on` has to
/// park and be unparked.
#[derive(Default)]
pub(crate) struct WokenFromAnotherThread {
    polled: bool,
}

impl Future for WokenFromAnotherThread {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.polled {
            return Poll::Ready(());
        }
        self.polled = true;
        let waker = cx.waker().clone();
        std::thread::spawn(move || waker.wake());
        Poll::Pending
    }
}

/// `add` and `echo` (sync), `double` (async, really suspends), `hold` (async, waits on
/// `gate`).
pub(crate) fn router(gate: &Gate) -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b))
        .method("echo", |v: serde_json::Value, _| Ok::<_, RpcError>(v))
        .async_method("double", |(x,): (i64,), _| async move {
            WokenFromAnotherThread::default().await;
            Ok(x * 2)
        });
    let gate = gate.clone();
    r.async_method("hold", move |(): (), _| {
        let gate = gate.clone();
        async move {
            gate.started_tx.send(()).expect("the test is waiting");
            gate.release_rx.recv().map_err(|_| RpcError::internal("gate dropped"))?;
            Ok(42)
        }
    });
    r
}

pub(crate) fn start(router: Router) -> Server {
    Server::builder()
        .router(router)
        .bind("127.0.0.1:0".parse().unwrap())
        .limits(LimitConfig::disabled())
        .start()
        .unwrap()
}

pub(crate) fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}")
}

/// Options that reconnect quickly.
pub(crate) fn fast_reconnect() -> ClientOptions {
    ClientOptions::default().reconnect(Some(BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    }))
}

/// Options that do not reconnect.
pub(crate) fn no_reconnect() -> ClientOptions {
    ClientOptions::default().reconnect(None)
}

/// A raw TCP peer that has completed the WebSocket handshake and then does only what the
/// test says.
pub(crate) fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// Reads one unmasked frame from the server: (first byte, payload).
pub(crate) fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).unwrap();
    (h[0], payload)
}

/// Sends a masked text frame.
pub(crate) fn send_text(s: &mut TcpStream, text: &str) {
    let mask = [9u8, 8, 7, 6];
    let mut frame = vec![0x81];
    match text.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
}

/// Sends a masked close frame with `code`.
pub(crate) fn send_close(s: &mut TcpStream, code: u16) {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x88, 0x82];
    frame.extend_from_slice(&mask);
    for (i, b) in code.to_be_bytes().iter().enumerate() {
        frame.push(b ^ mask[i]);
    }
    s.write_all(&frame).unwrap();
}

/// Reads until the server closes the connection; what arrived on the way.
pub(crate) fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// Reads an HTTP response head, byte by byte so nothing after it is consumed.
pub(crate) fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}
