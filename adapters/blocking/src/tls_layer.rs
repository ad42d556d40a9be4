//! The TLS layer of a reactor slot: rustls's sans-IO `Connection` between the socket and
//! the endpoint. The reactor reads ciphertext into its buffer and hands it here; plaintext
//! comes out to the endpoint in order. Plaintext the endpoint transmits goes into rustls,
//! and whatever rustls wants written (handshake flights, records, alerts, close_notify) is
//! flushed to the socket, so the poller's interest includes TLS's own wants.

use std::io::{self, BufRead, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;

use rustls::ServerConfig;

/// What feeding ciphertext gave.
#[derive(Debug)]
pub(crate) enum Fed {
    /// Plaintext (if any) went to the sink.
    Ok,
    /// Server: plain text on the TLS port; the 400 is sent and input is discarded from now.
    Refused,
    /// The TLS layer failed (bad records, a refused handshake, an alert); an alert is queued
    /// for the peer when rustls has one.
    Failed(rustls::Error),
}

/// One connection's TLS state.
pub(crate) struct TlsLayer {
    conn: rustls::Connection,
    /// Server: the first byte has not been looked at yet.
    sniff: bool,
    /// Server: plain text arrived; input is discarded until the peer closes.
    refused: bool,
    /// Bytes arrived while the handshake was incomplete (a stalled handshake is an error).
    started: bool,
    /// A failure was already reported for this connection.
    failed: bool,
    /// close_notify is queued: half-close the socket once everything is written.
    shutdown_pending: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl TlsLayer {
    /// The server side of a freshly accepted connection.
    pub(crate) fn server(config: Arc<ServerConfig>) -> Result<Box<Self>, rustls::Error> {
        let conn = rustls::ServerConnection::new(config)?;
        Ok(Box::new(Self::new(conn.into(), true)))
    }

    /// The client side, after its handshake (done on the connect thread).
    pub(crate) fn client(conn: rustls::ClientConnection) -> Box<Self> {
        Box::new(Self::new(conn.into(), false))
    }

    fn new(conn: rustls::Connection, sniff: bool) -> Self {
        Self { conn, sniff, refused: false, started: false, failed: false, shutdown_pending: false }
    }

    /// Whether the TLS handshake has not completed yet.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the handshake started (bytes arrived) and never completed, with no failure
    /// reported yet: a stalled or abandoned handshake.
    pub(crate) fn stalled(&self) -> bool {
        self.started && self.conn.is_handshaking() && !self.failed && !self.refused
    }

    /// Feeds ciphertext read from the socket; each plaintext chunk goes to `sink` in order.
    pub(crate) fn input(
        &mut self,
        stream: &TcpStream,
        data: &[u8],
        mut sink: impl FnMut(&[u8]),
    ) -> Fed {
        if self.refused || self.failed || data.is_empty() {
            return Fed::Ok;
        }
        if std::mem::take(&mut self.sniff) && !wsrpc_tls::starts_tls(data[0]) {
            self.refuse(stream);
            return Fed::Refused;
        }
        self.started |= self.conn.is_handshaking();
        let mut src = data;
        while !src.is_empty() {
            // Plaintext is drained after every record batch, so rustls's buffers stay small.
            if let Err(e) = self.conn.read_tls(&mut src) {
                self.failed = true;
                return Fed::Failed(rustls::Error::General(e.to_string()));
            }
            if let Err(e) = self.conn.process_new_packets() {
                self.failed = true;
                return Fed::Failed(e);
            }
            let mut reader = self.conn.reader();
            while let Ok(chunk) = reader.fill_buf() {
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                sink(chunk);
                reader.consume(n);
            }
        }
        Fed::Ok
    }

    fn refuse(&mut self, mut stream: &TcpStream) {
        self.refused = true;
        // Small enough for an empty socket buffer; a peer that does not read loses it.
        let _ = stream.write(wsrpc_tls::PLAINTEXT_REFUSAL);
        let _ = stream.shutdown(Shutdown::Write);
    }

    /// Takes plaintext to send; how much was taken (none while rustls holds a full buffer).
    pub(crate) fn write(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.refused {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.conn.writer().write_vectored(slices)
    }

    /// Queues close_notify; the socket is half-closed once it is written.
    pub(crate) fn close(&mut self) {
        if !self.refused {
            self.conn.send_close_notify();
        }
        self.shutdown_pending = true;
    }

    /// Whether TLS records wait to be written.
    pub(crate) fn wants_write(&self) -> bool {
        !self.refused && self.conn.wants_write()
    }

    /// Writes the records rustls holds; `Ok(true)` when all went out (and, after
    /// [`close`](Self::close), the socket is half-closed), `Ok(false)` when the socket
    /// would block.
    pub(crate) fn flush(&mut self, mut stream: &TcpStream) -> io::Result<bool> {
        while self.wants_write() {
            match self.conn.write_tls(&mut stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if std::mem::take(&mut self.shutdown_pending) && !self.refused {
            let _ = stream.shutdown(Shutdown::Write);
        }
        Ok(true)
    }
}
