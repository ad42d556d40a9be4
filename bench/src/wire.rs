//! The load client's compressing WebSocket for the `*-deflate` scenarios: tungstenite has no
//! permessage-deflate, so these connections run `wsrpc_core::ws::Connection` in the client
//! role over the same nonblocking socket, behind tungstenite's read/write/flush shape. The
//! same client faces every server of a compressed scenario (ours, soketto, ours uncompressed,
//! which declines the offer), and it counts the bytes on the wire.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use tungstenite::{Message, WebSocket};
use wsrpc_core::ws::{self, ClientRequest, Connection, Event, MessageKind};

/// A client connection: plain tungstenite (over TCP or TLS), or ours with compression offered.
pub(crate) enum Wire {
    Plain(Box<WebSocket<crate::client::Stream>>),
    Deflate(Box<DeflateWs>),
}

impl Wire {
    pub(crate) fn get_ref(&self) -> &TcpStream {
        match self {
            Self::Plain(ws) => ws.get_ref().tcp(),
            Self::Deflate(d) => &d.sock,
        }
    }

    pub(crate) fn read(&mut self) -> Result<Message, tungstenite::Error> {
        match self {
            Self::Plain(ws) => ws.read(),
            Self::Deflate(d) => d.read(),
        }
    }

    pub(crate) fn write(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        match self {
            Self::Plain(ws) => ws.write(msg),
            Self::Deflate(d) => d.write(msg),
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), tungstenite::Error> {
        match self {
            Self::Plain(ws) => ws.flush(),
            Self::Deflate(d) => d.flush(),
        }
    }

    /// Bytes read from and written to the socket (compressed connections only).
    pub(crate) fn wire_bytes(&self) -> (u64, u64) {
        match self {
            Self::Plain(_) => (0, 0),
            Self::Deflate(d) => (d.conn.stats().bytes_in, d.conn.stats().bytes_out),
        }
    }

    /// Whether the server accepted permessage-deflate.
    pub(crate) fn compressed(&self) -> bool {
        matches!(self, Self::Deflate(d) if d.conn.compression().is_some())
    }
}

pub(crate) struct DeflateWs {
    sock: TcpStream,
    conn: Connection,
    inbox: VecDeque<ws::Message>,
    buf: Vec<u8>,
}

fn io_err(e: impl std::fmt::Display) -> tungstenite::Error {
    tungstenite::Error::Io(io::Error::other(e.to_string()))
}

impl DeflateWs {
    /// Connects and completes the handshake (blocking), offering permessage-deflate with
    /// its defaults; leaves the socket blocking.
    pub(crate) fn connect(addr: SocketAddr, read_buffer: usize) -> io::Result<Self> {
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let mut config = ws::Config::default();
        config.ping_interval = None;
        config.handshake_timeout = None;
        config.enable_compression();
        let entropy = Box::new(wsrpc_core::Xoshiro256::from_seed(u64::from(addr.port())));
        let conn = Connection::client(
            config,
            &ClientRequest::new(addr.to_string(), "/"),
            entropy,
            Instant::now(),
        );
        let mut me = Self { sock, conn, inbox: VecDeque::new(), buf: vec![0; read_buffer] };
        me.flush().map_err(|e| io::Error::other(e.to_string()))?;
        while me.conn.is_handshaking() {
            let n = me.sock.read(&mut me.buf)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let now = Instant::now();
            let (conn, inbox) = (&mut me.conn, &mut me.inbox);
            conn.handle_all_input(now, &me.buf[..n], |_, e| {
                if let Event::Message(m) = e {
                    inbox.push_back(m);
                }
            });
        }
        if !me.conn.is_open() {
            return Err(io::Error::other(format!("handshake failed: {:?}", me.conn.error())));
        }
        Ok(me)
    }

    fn read(&mut self) -> Result<Message, tungstenite::Error> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(match m.kind {
                    MessageKind::Text => Message::text(String::from_utf8(m.data).map_err(io_err)?),
                    MessageKind::Binary => Message::binary(m.data),
                });
            }
            if !self.conn.is_open() {
                return Err(tungstenite::Error::ConnectionClosed);
            }
            let n = match self.sock.read(&mut self.buf) {
                Ok(0) => return Err(tungstenite::Error::ConnectionClosed),
                Ok(n) => n,
                Err(e) => return Err(tungstenite::Error::Io(e)),
            };
            let now = Instant::now();
            let (conn, inbox) = (&mut self.conn, &mut self.inbox);
            conn.handle_all_input(now, &self.buf[..n], |_, e| {
                if let Event::Message(m) = e {
                    inbox.push_back(m);
                }
            });
            // Answers (pongs, a close) go out with the next flush.
            let _ = self.flush();
        }
    }

    fn write(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        let now = Instant::now();
        let sent = match msg {
            Message::Text(t) => self.conn.send_text(now, t.as_str()),
            Message::Binary(b) => self.conn.send_binary(now, &b),
            _ => return Ok(()),
        };
        sent.map_err(io_err)?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), tungstenite::Error> {
        while let Some(bytes) = self.conn.poll_transmit() {
            match self.sock.write(bytes) {
                Ok(n) => self.conn.advance_transmit(n),
                Err(e) => return Err(tungstenite::Error::Io(e)),
            }
        }
        Ok(())
    }
}
