//! Raw sockets for hostile or minimal peers: handshakes by hand, HTTP requests, frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A WebSocket handshake request for `path`, with extra header lines (each ending in CRLF).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Connects with generous timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("server reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until `done` says the bytes so far are enough, EOF, or `timeout`.
pub fn read_until(s: &mut TcpStream, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while !done(&out) && Instant::now() < end {
        s.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(_) => break,
        }
    }
    out
}

/// Sends a raw HTTP request and returns the status of the response.
pub fn http_status(addr: SocketAddr, request: &str) -> u16 {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    let resp =
        read_until(&mut s, Duration::from_secs(10), |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    status_of(&resp)
}

/// The status code of a response head.
pub fn status_of(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Whether the peer closed the connection (EOF or reset) within `timeout`.
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        s.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    wsrpc_core::ws::frame::encode_frame(
        &mut wire,
        true,
        wsrpc_core::ws::frame::OpCode::from_bits(opcode).expect("valid opcode"),
        Some([1, 2, 3, 4]),
        payload,
    );
    wire
}
