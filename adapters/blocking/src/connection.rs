//! The drive loop of one accepted connection: a thread that owns the
//! [`ServerConnection`] and the socket's write side, fed by a reader thread.

use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, bounded, unbounded};
use wsrpc_core::engine::ServerConnection;
use wsrpc_core::rpc::RpcError;
use wsrpc_core::service::Service;

use crate::pool::{Completion, Job};
use crate::registry::Registry;
use crate::transport::{self, Flushed, INPUT_CHUNKS, Stall, WRITE_SLICE};

/// Stack of a driver thread. Synchronous handlers run on it, inside the core's dispatch: a
/// handler taking `serde_json::Value` params nested to serde_json's limit (128) needs about
/// 300 KiB in a debug build, and a remote peer chooses the nesting. Only the pages touched
/// count towards memory.
const DRIVER_STACK: usize = 512 * 1024;

/// Wakes a driver: a token in its bounded(1) wake channel (a full channel means a wake is
/// already pending).
struct WakeSignal(Sender<()>);

impl Wake for WakeSignal {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

/// Serves an accepted `stream` on two new threads (driver and reader). Failures to start them
/// are logged and drop the connection.
pub(crate) fn start(
    stream: TcpStream,
    service: &Arc<Service>,
    registry: &Arc<Registry>,
    jobs: &Sender<Job>,
) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_write_timeout(Some(WRITE_SLICE)) {
        log::debug!(target: "wsrpc::http", "cannot configure an accepted socket: {e}");
        return;
    }
    let stream = Arc::new(stream);
    let (wake_tx, wake) = bounded(1);
    let entry =
        Entry { id: registry.enter(stream.clone(), wake_tx.clone()), registry: registry.clone() };
    let mut conn = ServerConnection::new(service.clone(), Instant::now());
    conn.register_waker(&Waker::from(Arc::new(WakeSignal(wake_tx))));
    let name = format!("wsrpc-conn-{}", conn.id().0);
    let input = match transport::spawn_reader(stream.clone(), &format!("{name}-read")) {
        Ok(rx) => rx,
        Err(e) => {
            log::warn!(target: "wsrpc::http", "cannot start a reader thread: {e}; dropping conn={}", conn.id());
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    };
    let (done_tx, done) = unbounded();
    let driver = Driver {
        conn,
        stream,
        input,
        wake,
        done_tx,
        done,
        jobs: jobs.clone(),
        leftover: Vec::new(),
        eof: false,
        eof_reported: false,
        write_closed: false,
        shutdown_begun: false,
        stall: Stall::default(),
        stall_limit: transport::stall_limit(&service.config().ws),
        entry,
    };
    // On failure the closure, and with it the driver, is dropped: the socket is shut down
    // (ending the reader) and the registry entry removed.
    if let Err(e) =
        thread::Builder::new().name(name).stack_size(DRIVER_STACK).spawn(move || driver.run())
    {
        log::warn!(target: "wsrpc::http", "cannot start a connection thread: {e}");
    }
}

/// The connection's place in the registry; leaving it is the last thing a driver does.
struct Entry {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.leave(self.id);
    }
}

struct Driver {
    conn: ServerConnection,
    stream: Arc<TcpStream>,
    /// Chunks from the reader thread; disconnected at end of file.
    input: Receiver<Vec<u8>>,
    wake: Receiver<()>,
    done_tx: Sender<Completion>,
    done: Receiver<Completion>,
    jobs: Sender<Job>,
    /// Input received and not yet taken by the connection (kept while it does not want to
    /// read: backpressure).
    leftover: Vec<u8>,
    /// The reader reached end of file (or failed).
    eof: bool,
    /// `handle_eof` was called: only after the output queued before it was written.
    eof_reported: bool,
    write_closed: bool,
    shutdown_begun: bool,
    stall: Stall,
    stall_limit: Duration,
    /// Declared last: dropped after the connection (which releases its slot in the service).
    entry: Entry,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Also ends the reader thread, blocked in `read`.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Driver {
    fn run(mut self) {
        let id = self.conn.id();
        log::trace!(target: "wsrpc::http", "serving conn={id}");
        loop {
            if self.entry.registry.is_forced() {
                log::debug!(target: "wsrpc::http", "dropped at the shutdown deadline conn={id}");
                return;
            }
            let now = Instant::now();
            let mut progress = false;
            if !self.shutdown_begun && self.entry.registry.is_shutting_down() {
                self.shutdown_begun = true;
                self.conn.begin_shutdown(now);
                progress = true;
            }
            // The wake token only says "look again"; everything is re-read below.
            while self.wake.try_recv().is_ok() {}
            while let Ok((call, result)) = self.done.try_recv() {
                self.conn.complete(call, result, now);
                progress = true;
            }
            progress |= self.read(now);
            if self.conn.poll_timeout().is_some_and(|t| t <= now) {
                self.conn.handle_timeout(now);
                progress = true;
            }
            progress |= self.spawn_calls(now);
            let flushed = match self.flush() {
                Ok(f) => f,
                Err(e) => {
                    log::debug!(target: "wsrpc::http", "write failed conn={id}: {e}");
                    return;
                }
            };
            progress |= flushed.wrote;
            if self.eof && !self.eof_reported && self.leftover.is_empty() && !flushed.pending {
                self.eof_reported = true;
                self.conn.handle_eof(Instant::now());
                progress = true;
            }
            // Writing pumps the connection, which may hand out more async calls.
            progress |= self.spawn_calls(now);
            if self.conn.wants_shutdown_write() && !self.write_closed {
                self.write_closed = true;
                let _ = self.stream.shutdown(Shutdown::Write);
                progress = true;
            }
            if self.conn.is_finished() {
                log::trace!(target: "wsrpc::http", "finished conn={id}");
                return;
            }
            if self.stall.exceeded(Instant::now(), flushed, self.stall_limit) {
                log::debug!(target: "wsrpc::http", "peer stopped reading; dropping conn={id}");
                return;
            }
            // Output left is written in the next round: the write itself is the wait.
            if !progress && !flushed.pending {
                self.wait();
            }
        }
    }

    /// Feeds what the reader delivered while the connection wants it; true on progress.
    fn read(&mut self, now: Instant) -> bool {
        let mut progress = false;
        for _ in 0..=INPUT_CHUNKS {
            if !self.leftover.is_empty() {
                if !self.conn.wants_read() {
                    break;
                }
                progress |= self.feed(now);
                if !self.leftover.is_empty() {
                    break;
                }
            }
            if self.eof || !self.conn.wants_read() {
                break;
            }
            match self.input.try_recv() {
                Ok(chunk) => {
                    self.leftover = chunk;
                    progress = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.eof = true;
                    progress = true;
                    break;
                }
            }
        }
        progress
    }

    fn feed(&mut self, now: Instant) -> bool {
        let mut used = 0;
        while used < self.leftover.len() {
            let n = self.conn.handle_input(now, &self.leftover[used..]);
            if n == 0 {
                break;
            }
            used += n;
        }
        if used == self.leftover.len() {
            self.leftover = Vec::new();
        } else {
            self.leftover.drain(..used);
        }
        used > 0
    }

    /// Hands the connection's async calls to the worker pool.
    fn spawn_calls(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some((call, future)) = self.conn.poll_spawn() {
            any = true;
            let job = Job { call, future, done: self.done_tx.clone() };
            if let Err(e) = self.jobs.send(job) {
                // The pool is gone: the server is being dropped.
                self.conn.complete(e.0.call, Err(RpcError::internal("server stopping")), now);
            }
        }
        any
    }

    fn flush(&mut self) -> std::io::Result<Flushed> {
        if self.write_closed {
            return Ok(Flushed::default());
        }
        transport::flush(&self.stream, &mut self.conn)
    }

    /// Blocks until input, a wake (publish, shutdown), a finished async call or the next
    /// deadline.
    fn wait(&self) {
        let mut sel = Select::new();
        if !self.eof && self.leftover.is_empty() && self.conn.wants_read() {
            sel.recv(&self.input);
        }
        sel.recv(&self.wake);
        sel.recv(&self.done);
        match self.conn.poll_timeout() {
            Some(deadline) => {
                let _ = sel.ready_deadline(deadline);
            }
            None => {
                sel.ready();
            }
        }
    }
}
