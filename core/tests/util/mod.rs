//! Deterministic test harness: connections wired in memory, a virtual clock, chopped delivery.
//!
//! `Pair` holds a client and a server `Connection`; `drive()` moves bytes both ways (in pieces
//! of at most `chop` bytes) until nothing moves, and `step()` jumps the clock to the earliest
//! deadline. `RawClient` drives a server with hand-made frames, for protocol violations.
#![allow(dead_code, unreachable_pub)]
// The virtual clock needs one real Instant as its origin; nothing else reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use wsrpc_core::Xoshiro256;
use wsrpc_core::ws::frame::{FrameDecoder, OpCode};
use wsrpc_core::ws::{ClientRequest, CloseCode, Closed, Config, Connection, Event, Message, Role};

pub fn origin() -> Instant {
    Instant::now()
}

pub fn config() -> Config {
    Config::default()
}

pub struct Pair {
    pub client: Connection,
    pub server: Connection,
    pub now: Instant,
    /// Largest piece delivered at once.
    pub chop: usize,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
}

impl Pair {
    /// A pair with default configs, handshake completed.
    pub fn connected() -> Self {
        Self::with(config(), config(), usize::MAX)
    }

    /// A pair with the given configs and chop size, handshake completed and its events drained.
    pub fn with(client_cfg: Config, server_cfg: Config, chop: usize) -> Self {
        let mut pair = Self::new(client_cfg, server_cfg, chop);
        pair.drive();
        assert!(
            pair.client.is_open() && pair.server.is_open(),
            "handshake failed: {:?} {:?}",
            pair.client,
            pair.server
        );
        assert!(matches!(pair.client_events.remove(0), Event::Connected(_)));
        assert!(matches!(pair.server_events.remove(0), Event::Connected(_)));
        pair
    }

    /// A pair before the handshake.
    pub fn new(client_cfg: Config, server_cfg: Config, chop: usize) -> Self {
        let now = origin();
        let request = ClientRequest::new("localhost", "/");
        let client =
            Connection::client(client_cfg, &request, Box::new(Xoshiro256::from_seed(1)), now);
        let server = Connection::server(server_cfg, now);
        Self { client, server, now, chop, client_events: Vec::new(), server_events: Vec::new() }
    }

    /// Moves bytes both ways until neither side has anything to send.
    pub fn drive(&mut self) {
        loop {
            let a = transfer(&mut self.client, &mut self.server, self.now, self.chop);
            let b = transfer(&mut self.server, &mut self.client, self.now, self.chop);
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            if a == 0 && b == 0 {
                break;
            }
        }
    }

    /// Advances the clock to the earliest deadline, fires it on both sides, and drives.
    /// Returns false when neither side has a deadline.
    pub fn step(&mut self) -> bool {
        let next =
            [self.client.poll_timeout(), self.server.poll_timeout()].into_iter().flatten().min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
        true
    }

    /// Advances the clock by `d`, firing every deadline on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.client.handle_timeout(self.now);
                    self.server.handle_timeout(self.now);
                    self.drive();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    pub fn server_messages(&mut self) -> Vec<Message> {
        take_messages(&mut self.server_events)
    }

    pub fn client_messages(&mut self) -> Vec<Message> {
        take_messages(&mut self.client_events)
    }
}

pub fn take_messages(events: &mut Vec<Event>) -> Vec<Message> {
    let mut out = Vec::new();
    events.retain(|e| match e {
        Event::Message(m) => {
            out.push(m.clone());
            false
        }
        _ => true,
    });
    out
}

pub fn closed_event(events: &[Event]) -> Option<&Closed> {
    events.iter().find_map(|e| match e {
        Event::Closed(c) => Some(c),
        _ => None,
    })
}

/// Moves everything `from` wants to send into `to`, in pieces of at most `chop` bytes.
fn transfer(from: &mut Connection, to: &mut Connection, now: Instant, chop: usize) -> usize {
    let mut moved = 0;
    while let Some(bytes) = from.poll_transmit() {
        let n = bytes.len().min(chop);
        let piece = bytes[..n].to_vec();
        from.advance_transmit(n);
        let mut at = 0;
        while at < piece.len() {
            at += to.handle_input(now, &piece[at..]);
        }
        moved += n;
    }
    // A half-close or a close of the transport reaches the other side as end of file.
    if (from.wants_shutdown_write() || from.is_finished()) && !to.is_finished() {
        to.handle_eof(now);
    }
    moved
}

/// Builds a frame as given, valid or not. `len_bytes` forces a length encoding
/// (0 = minimal, 2 = 16-bit, 8 = 64-bit).
pub fn raw_frame(b0: u8, mask: Option<[u8; 4]>, payload: &[u8], len_bytes: usize) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    match len_bytes {
        0 if len < 126 => out.push(m | len as u8),
        0 if len <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        2 => {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(key) = mask {
        out.extend_from_slice(&key);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    out.extend_from_slice(&body);
    out
}

pub const KEY: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

/// A masked client frame: `fin`, opcode bits and payload.
pub fn cframe(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame((u8::from(fin) << 7) | opcode, Some(KEY), payload, 0)
}

pub fn text(payload: &[u8]) -> Vec<u8> {
    cframe(true, 0x1, payload)
}

pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    cframe(true, 0x8, &p)
}

/// A frame decoded from the server's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub fin: bool,
    /// RSV bits (RSV1 = 4: a compressed message's first frame).
    pub rsv: u8,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl Out {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OpCode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A hand-driven client for a server `Connection`: sends raw bytes, decodes what comes back.
pub struct RawClient {
    pub server: Connection,
    pub now: Instant,
    /// Server bytes not yet decoded into frames.
    pending: Vec<u8>,
    pub frames: Vec<Out>,
    pub events: Vec<Event>,
}

impl RawClient {
    /// A server with `config`, already through a valid handshake.
    pub fn new(config: Config) -> Self {
        Self::with_headers(config, "").0
    }

    /// A server with `config`, through a handshake whose request also has the header lines
    /// `extra` (each ending in CRLF); returns the server's response head too.
    pub fn with_headers(config: Config, extra: &str) -> (Self, String) {
        let now = origin();
        let mut rc = Self {
            server: Connection::server(config, now),
            now,
            pending: Vec::new(),
            frames: Vec::new(),
            events: Vec::new(),
        };
        rc.send(format!("GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").as_bytes());
        let head_end = rc
            .pending
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("server answered the handshake")
            + 4;
        assert!(
            rc.pending.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&rc.pending)
        );
        let head = String::from_utf8_lossy(&rc.pending[..head_end]).into_owned();
        rc.pending.drain(..head_end);
        assert!(matches!(rc.events.remove(0), Event::Connected(_)));
        (rc, head)
    }

    /// A server with `config` that was offered `Sec-WebSocket-Extensions: offer`.
    pub fn offering(config: Config, offer: &str) -> (Self, String) {
        Self::with_headers(config, &format!("Sec-WebSocket-Extensions: {offer}\r\n"))
    }

    pub fn default_config() -> Self {
        Self::new(config())
    }

    /// Delivers `bytes` in one read and collects the server's output, draining events
    /// between the pieces the server consumes (as a drive loop does).
    pub fn send(&mut self, bytes: &[u8]) {
        let mut at = 0;
        loop {
            let used = self.server.handle_input(self.now, &bytes[at..]);
            assert!(used > 0 || at == bytes.len(), "handle_input made no progress");
            at += used;
            self.collect();
            if at == bytes.len() {
                break;
            }
        }
    }

    /// Delivers `bytes` in pieces of `chop` bytes.
    pub fn send_chopped(&mut self, bytes: &[u8], chop: usize) {
        for piece in bytes.chunks(chop.max(1)) {
            self.send(piece);
        }
    }

    pub fn collect(&mut self) {
        while let Some(bytes) = self.server.poll_transmit() {
            let n = bytes.len();
            self.pending.extend_from_slice(bytes);
            self.server.advance_transmit(n);
        }
        while let Some(e) = self.server.poll_event() {
            // Echo every message, like the Autobahn echo server.
            if let Event::Message(m) = &e {
                let _ = self.server.send(self.now, m.clone());
            }
            self.events.push(e);
        }
        while let Some(bytes) = self.server.poll_transmit() {
            let n = bytes.len();
            self.pending.extend_from_slice(bytes);
            self.server.advance_transmit(n);
        }
        if self.server.is_handshaking() || self.pending.starts_with(b"HTTP/") {
            return;
        }
        // RSV1 is let through so tests can see which frames are compressed.
        let dec = FrameDecoder::new(Role::Client, u64::MAX >> 1).allowing_rsv(4);
        while let Ok(Some(f)) = dec.decode_in_place(&mut self.pending) {
            let out = Out {
                fin: f.header.fin,
                rsv: f.header.rsv,
                opcode: f.header.opcode,
                payload: f.payload.to_vec(),
            };
            let len = f.len;
            self.frames.push(out);
            self.pending.drain(..len);
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.collect();
    }

    /// The frames the server sent, consumed.
    pub fn take_frames(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.frames)
    }

    /// The close code the server sent, if it sent a close frame.
    pub fn sent_close(&self) -> Option<u16> {
        self.frames.iter().find(|f| f.opcode == OpCode::Close).and_then(Out::close_code)
    }

    pub fn echoed(&self) -> Vec<Vec<u8>> {
        self.frames
            .iter()
            .filter(|f| matches!(f.opcode, OpCode::Text | OpCode::Binary))
            .map(|f| f.payload.clone())
            .collect()
    }

    pub fn closed(&self) -> Option<&Closed> {
        closed_event(&self.events)
    }

    /// Asserts that the server failed the connection with `code`, stopped delivering, and
    /// half-closes; the peer's end of file then finishes it.
    pub fn assert_failed_with(&mut self, code: CloseCode) {
        assert_eq!(self.sent_close(), Some(code.0), "frames: {:?}", self.frames);
        assert!(!self.server.is_open());
        let closed = self.closed().expect("a Closed event").clone();
        assert_eq!((closed.code, closed.clean), (code, false));
        assert!(closed.error.is_some());
        // Whatever the peer still sends is discarded, its close frame included.
        let frames = self.frames.len();
        self.send(&close_frame(code.0, b""));
        self.send(&text(b"ignored"));
        assert_eq!(self.frames.len(), frames);
        assert!(self.server.wants_shutdown_write(), "{:?}", self.server);
        assert!(!self.server.is_finished());
        self.server.handle_eof(self.now);
        assert!(self.server.is_finished(), "{:?}", self.server);
    }
}
