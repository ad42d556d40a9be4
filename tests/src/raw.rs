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

/// A client frame with FIN as given, masked (`mask`) or not, announcing `payload.len()` bytes.
pub fn client_frame_with(fin: bool, opcode: u8, mask: bool, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    wsrpc_core::ws::frame::encode_frame(
        &mut wire,
        fin,
        wsrpc_core::ws::frame::OpCode::from_bits(opcode).expect("valid opcode"),
        mask.then_some([1, 2, 3, 4]),
        payload,
    );
    wire
}

/// A masked client frame header announcing `len` payload bytes with the 64-bit length form,
/// whatever `len` is (hostile peers do not encode minimally); the mask key is all zeros, so
/// payload bytes that follow go on the wire as they are.
pub fn frame_header_64(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![u8::from(fin) << 7 | opcode, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// A masked client frame header announcing `len` bytes in the shortest length form, with an
/// all-zero mask key.
pub fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![u8::from(fin) << 7 | opcode];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xFFFF => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => return frame_header_64(fin, opcode, len),
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// A whole frame from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The status code of a close frame (1005 when it has none), or `None` for other frames.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8).then(|| match self.payload.get(..2) {
            Some(c) => u16::from_be_bytes([c[0], c[1]]),
            None => 1005,
        })
    }

    /// The payload as JSON, for text frames.
    pub fn json(&self) -> Option<serde_json::Value> {
        (self.opcode == 1).then(|| serde_json::from_slice(&self.payload).ok()).flatten()
    }
}

/// Parses one unmasked server frame at the start of `buf`: the frame and its length.
pub fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "a server frame is never masked");
    let (len, at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let end = at + usize::try_from(len).ok()?;
    let payload = buf.get(at..end)?.to_vec();
    Some((ServerFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload }, end))
}

/// A WebSocket driven by hand after a real handshake: hostile frames out, server frames in.
#[derive(Debug)]
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades with `extra` header lines; panics unless the answer is 101.
    pub fn open(addr: SocketAddr, extra: &str) -> Self {
        Self::open_with_head(addr, extra).0
    }

    /// [`open`](Self::open), also returning the server's response head.
    pub fn open_with_head(addr: SocketAddr, extra: &str) -> (Self, String) {
        let mut stream = connect(addr);
        stream.write_all(upgrade_request("/", extra).as_bytes()).unwrap();
        let mut buf = read_until(&mut stream, Duration::from_secs(10), |b| {
            b.windows(4).any(|w| w == b"\r\n\r\n")
        });
        assert_eq!(status_of(&buf), 101, "{}", String::from_utf8_lossy(&buf));
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        (Self { stream, buf }, head)
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one masked text frame.
    pub fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send(&client_frame(1, text.as_bytes()))
    }

    /// The next whole frame within `timeout`; `None` at EOF, on a reset or at the timeout.
    pub fn next_frame(&mut self, timeout: Duration) -> Option<ServerFrame> {
        let end = Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Skips frames until a close frame arrives within `timeout`; its code, or `None` when
    /// the connection ended or went quiet without one.
    pub fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        let end = Instant::now() + timeout;
        loop {
            let frame = self.next_frame(end.saturating_duration_since(Instant::now()))?;
            if let Some(code) = frame.close_code() {
                return Some(code);
            }
        }
    }

    /// Sends a ping and reads until its pong; the frames seen before it, or `None` when
    /// no pong came (the connection closed or went quiet).
    pub fn ping_pong(&mut self, timeout: Duration) -> Option<Vec<ServerFrame>> {
        self.send(&client_frame(9, b"sync")).ok()?;
        let end = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let frame = self.next_frame(end.saturating_duration_since(Instant::now()))?;
            if frame.opcode == 0xA && frame.payload == b"sync" {
                return Some(before);
            }
            before.push(frame);
        }
    }
}

/// Resident memory of process `pid` (this one when `None`), in KiB, from /proc.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = pid.map_or("/proc/self/status".to_owned(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).expect("/proc is mounted");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// File descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc is mounted").count()
}
