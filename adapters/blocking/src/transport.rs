//! What the server and client share about a TCP stream: writing queued output with a bounded
//! wait, and the stall rule. The client also uses the reader thread that turns blocking reads
//! into channel messages (the server's connection threads read nonblocking sockets
//! themselves).

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use wsrpc_core::engine::ServerConnection;
use wsrpc_core::ws;

/// Bytes per read, into a buffer that is handed to the driver (no copy).
const READ_CHUNK: usize = 8 * 1024;
/// Chunks read ahead of the driver; when they are not taken the reader blocks, the kernel
/// buffers fill and TCP pushes back on the peer.
pub(crate) const INPUT_CHUNKS: usize = 4;
/// Longest a single write blocks (a blocking socket's write timeout), and longest a driver
/// keeps writing in one round; it then services timers, completions and shutdown before
/// trying again.
pub(crate) const WRITE_SLICE: Duration = Duration::from_millis(200);
/// Slices per vectored write.
const MAX_SLICES: usize = 64;
/// Stack of a reader thread; it only reads and sends.
const READER_STACK: usize = 64 * 1024;

/// Starts a thread that reads `stream` until end of file or an error and sends what it reads.
/// The channel disconnects at end of file; the thread also ends when the receiver is dropped
/// (at its next chunk) or the socket is shut down.
pub(crate) fn spawn_reader(stream: Arc<TcpStream>, name: &str) -> io::Result<Receiver<Vec<u8>>> {
    let (tx, rx) = bounded(INPUT_CHUNKS);
    thread::Builder::new().name(name.into()).stack_size(READER_STACK).spawn(move || {
        let mut drained = true;
        loop {
            // While idle, wait with a one-byte peek: no read buffer is held. Right after a
            // full read more is likely waiting, so read at once.
            if drained {
                match stream.peek(&mut [0u8; 1]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::trace!(target: "wsrpc::ws", "read failed: {e}");
                        break;
                    }
                }
            }
            let mut chunk = vec![0u8; READ_CHUNK];
            match (&*stream).read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    drained = n < READ_CHUNK;
                    chunk.truncate(n);
                    if n < READ_CHUNK / 2 {
                        chunk.shrink_to_fit();
                    }
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::trace!(target: "wsrpc::ws", "read failed: {e}");
                    break;
                }
            }
        }
    })?;
    Ok(rx)
}

/// A state machine with bytes to transmit.
pub(crate) trait Transmit {
    /// Fills `dst` with pending chunks; returns how many.
    fn poll_slices<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize;
    /// Marks `n` bytes as written.
    fn advance(&mut self, n: usize);
}

impl Transmit for ServerConnection {
    fn poll_slices<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        self.poll_transmit_vectored(dst)
    }

    fn advance(&mut self, n: usize) {
        self.advance_transmit(n);
    }
}

impl Transmit for ws::Connection {
    fn poll_slices<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        self.poll_transmit_vectored(dst)
    }

    fn advance(&mut self, n: usize) {
        self.advance_transmit(n);
    }
}

/// What a [`flush`] did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flushed {
    /// Some bytes were written.
    pub(crate) wrote: bool,
    /// Output is left: the socket did not take it within the write timeout, or writing
    /// used up its time slice. The caller services its other work and flushes again.
    pub(crate) pending: bool,
    /// The socket took no more: the write would block (nonblocking) or timed out.
    pub(crate) blocked: bool,
}

/// Writes what `out` has queued until it has nothing left, a write times out, or
/// [`WRITE_SLICE`] has passed (a peer that reads slowly would otherwise keep the caller
/// writing, its timers and signals unserved). The socket's write timeout (also
/// [`WRITE_SLICE`]) bounds a single write.
pub(crate) fn flush(stream: &TcpStream, out: &mut impl Transmit) -> io::Result<Flushed> {
    flush_for(stream, out, WRITE_SLICE)
}

/// [`flush`] for at most `slice` (on a nonblocking socket: until it would block).
pub(crate) fn flush_for(
    stream: &TcpStream,
    out: &mut impl Transmit,
    slice: Duration,
) -> io::Result<Flushed> {
    let started = Instant::now();
    let mut flushed = Flushed::default();
    loop {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = out.poll_slices(&mut slices);
        if n == 0 {
            return Ok(flushed);
        }
        if flushed.wrote && started.elapsed() >= slice {
            flushed.pending = true;
            return Ok(flushed);
        }
        let mut writer = stream;
        match writer.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                out.advance(written);
                flushed.wrote = true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                flushed.pending = true;
                flushed.blocked = true;
                return Ok(flushed);
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long writes have made no progress.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    /// Output has been waiting since then with no byte taken.
    since: Option<Instant>,
}

impl Stall {
    /// Records a flush at `now`; true once the peer has taken nothing for `limit` while
    /// output was waiting. A flush that wrote some bytes but not all restarts the clock.
    pub(crate) fn exceeded(&mut self, now: Instant, flushed: Flushed, limit: Duration) -> bool {
        if !flushed.pending {
            self.since = None;
            return false;
        }
        if flushed.wrote {
            self.since = Some(now);
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since) >= limit
    }

    /// When the stall under way, if any, reaches `limit`.
    pub(crate) fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.since.map(|s| s + limit)
    }
}

/// How long a peer may take no bytes at all before it is given up: as long as it has to
/// answer a ping or a close, whichever is longer.
pub(crate) fn stall_limit(config: &ws::Config) -> Duration {
    config.pong_timeout.max(config.close_timeout)
}
