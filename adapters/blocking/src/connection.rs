//! One accepted connection: a thread that waits on its nonblocking socket with `poll`, reads,
//! runs the [`ServerConnection`] and writes, all itself, so a request costs one wake-up of one
//! thread. Work that starts on other threads (a publish, a finished async call, a shutdown)
//! reaches the connection through the [`Notifier`], which locks the same state and writes.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use wsrpc_core::engine::ServerConnection;
use wsrpc_core::rpc::RpcError;
use wsrpc_core::service::Service;

use crate::notifier::Notifier;
use crate::pool::{Completion, Job};
use crate::registry::Registry;
use crate::sys::{self, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, PollFd};
use crate::transport::{self, Flushed, Stall, WRITE_SLICE};

/// Stack of a connection thread. Synchronous handlers run on it, inside the core's dispatch:
/// a handler taking `serde_json::Value` params nested to serde_json's limit (128) needs about
/// 300 KiB in a debug build, and a remote peer chooses the nesting. Only the pages touched
/// count towards memory.
const CONN_STACK: usize = 512 * 1024;
/// Size of a read buffer. A connection thread takes one from [`ReadBuffers`] when its socket
/// is readable and gives it back before it sleeps: an idle connection holds none.
const READ_BUF: usize = 16 * 1024;
/// Read buffers kept for reuse; about as many as threads run at once.
const KEPT_BUFFERS: usize = 32;
/// Reads per round before timers and output get their turn.
const READS_PER_ROUND: usize = 4;
/// How long the notifier writes to one connection before serving the others.
const NOTIFIER_SLICE: Duration = Duration::from_millis(10);
/// Connections per CPU beyond which a thread woken by input yields once before its round.
///
/// With many connection threads woken at once, Linux (EEVDF) does not run them in the order
/// they woke: at 1024 connections × 32 calls in flight the slowest connection got a tenth of
/// the fastest one's rate, and at 256 × 32 under half. Yielding right after the wake-up puts
/// the thread behind those already waiting: fairness 0.98 and half the p99 at 1024 × 32, for
/// about 6% of throughput. With few connections the order is fair anyway and the yield would
/// cost a context switch per call (18% at 16 × 1), so it is only done in a crowd.
pub(crate) const CROWD_PER_CPU: usize = 64;

/// What the connections of one server share.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) service: Arc<Service>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) notifier: Arc<Notifier>,
    /// A peer that takes no bytes for this long while output waits is dropped.
    pub(crate) stall_limit: Duration,
    pub(crate) buffers: ReadBuffers,
    /// Beyond this many live connections, threads woken by input yield first
    /// ([`CROWD_PER_CPU`]).
    pub(crate) crowd: usize,
}

/// Read buffers shared by the connection threads of a server, most recently used first (still
/// in cache). Reusing them spares an allocation and the zeroing of 16 KiB per wake-up.
#[derive(Debug, Default)]
pub(crate) struct ReadBuffers(Mutex<Vec<Box<[u8]>>>);

impl ReadBuffers {
    fn take(&self) -> Box<[u8]> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        kept.unwrap_or_else(|| vec![0; READ_BUF].into_boxed_slice())
    }

    fn give(&self, buf: Box<[u8]>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_BUFFERS {
            kept.push(buf);
        }
    }
}

/// A connection, shared by its thread, the notifier, the registry and the worker pool.
pub(crate) struct Conn {
    /// The registry's key.
    id: u64,
    /// Nonblocking. Only the thread holding `state` writes.
    stream: TcpStream,
    ctx: Arc<Context>,
    /// `None` once the connection thread has ended.
    state: Mutex<Option<State>>,
    /// In the notifier's queue (wakes coalesce).
    queued: AtomicBool,
    /// Raised by the notifier before it tries the lock: if the connection thread holds it,
    /// the thread looks again before sleeping (see [`Conn::serve`]).
    missed: AtomicBool,
    /// Finished async calls, for whoever locks `state` next.
    done: Mutex<Vec<Completion>>,
    /// The connection thread, to unpark it when it waits without a socket event to wait for.
    thread: OnceLock<Thread>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the context: it leads back here through the registry.
        f.debug_struct("Conn").field("id", &self.id).field("fd", &self.fd()).finish_non_exhaustive()
    }
}

/// What the connection thread waits for while it does not hold the state.
#[derive(Clone, Copy, Debug)]
enum Sleep {
    /// Running, or about to lock the state again.
    Awake,
    /// In `poll` on the socket for `events`, until `until`.
    Poll { events: i16, until: Option<Instant> },
    /// Parked until `until` (nothing to wait for on the socket): only an unpark wakes it.
    Park { until: Option<Instant> },
}

impl Sleep {
    fn is_asleep(self) -> bool {
        !matches!(self, Self::Awake)
    }
}

/// What the notifier should keep an eye on for a connection whose thread sleeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Watch {
    /// Wait for the socket to take output (the connection thread waits for input only).
    pub(crate) writable: bool,
    /// Serve it again then: a timer earlier than the connection thread's wake-up.
    pub(crate) until: Option<Instant>,
}

#[derive(Debug)]
struct State {
    conn: ServerConnection,
    /// The worker pool's queue; dropped with the state, so the pool can stop.
    jobs: Sender<Job>,
    /// Input read and not yet taken by the connection (kept while it does not want to read:
    /// backpressure).
    leftover: Vec<u8>,
    /// End of file (or a read error).
    eof: bool,
    /// `handle_eof` was called: only after the output queued before it was written.
    eof_reported: bool,
    write_closed: bool,
    shutdown_begun: bool,
    /// Output is left that the socket has not taken.
    pending: bool,
    /// The last write would have blocked: write again once `poll` says the socket is
    /// writable.
    blocked: bool,
    stall: Stall,
    /// Cut from another thread (stalled peer, or finished there): the thread ends.
    cut: bool,
    /// This round the kept input was offered and not taken although the core wants input.
    stuck: bool,
    sleep: Sleep,
}

/// Serves an accepted `stream` on a new thread. Failures are logged and drop the connection.
pub(crate) fn start(stream: TcpStream, ctx: &Arc<Context>, jobs: &Sender<Job>) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_nonblocking(true) {
        log::debug!(target: "wsrpc::http", "cannot configure an accepted socket: {e}");
        return;
    }
    let mut core = ServerConnection::new(ctx.service.clone(), Instant::now());
    let name = format!("wsrpc-conn-{}", core.id().0);
    let conn = Arc::new(Conn {
        id: ctx.registry.next_id(),
        stream,
        ctx: ctx.clone(),
        state: Mutex::new(None),
        queued: AtomicBool::new(false),
        missed: AtomicBool::new(false),
        done: Mutex::new(Vec::new()),
        thread: OnceLock::new(),
    });
    core.register_waker(&Waker::from(Arc::new(ConnWaker(Arc::downgrade(&conn)))));
    *conn.lock() = Some(State {
        conn: core,
        jobs: jobs.clone(),
        leftover: Vec::new(),
        eof: false,
        eof_reported: false,
        write_closed: false,
        shutdown_begun: false,
        pending: false,
        blocked: false,
        stall: Stall::default(),
        cut: false,
        stuck: false,
        sleep: Sleep::Awake,
    });
    ctx.registry.enter(conn.id, conn.clone());
    let guard = Ending(conn);
    // On failure the closure, and with it the guard, is dropped: the state is released, the
    // socket shut down and the registry entry removed.
    let spawned = thread::Builder::new().name(name).stack_size(CONN_STACK).spawn(move || {
        let conn = &guard.0;
        let _ = conn.thread.set(thread::current());
        conn.run();
    });
    if let Err(e) = spawned {
        log::warn!(target: "wsrpc::http", "cannot start a connection thread: {e}");
    }
}

/// Ends a connection when its thread ends, also by a panic: releases the core connection (and
/// its slot in the service) and the worker queue, shuts the socket down and leaves the
/// registry, in that order.
struct Ending(Arc<Conn>);

impl Drop for Ending {
    fn drop(&mut self) {
        let state = self.0.lock().take();
        drop(state);
        let _ = self.0.stream.shutdown(Shutdown::Both);
        self.0.ctx.registry.leave(self.0.id);
    }
}

/// The waker registered with the core: hands the connection to the notifier.
struct ConnWaker(Weak<Conn>);

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(conn) = self.0.upgrade() {
            conn.notify();
        }
    }
}

impl Conn {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        // A panicking handler leaves the connection in a state the core can still drive.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the notifier to serve this connection (a publish, a finished call, a shutdown).
    pub(crate) fn notify(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ctx.notifier.push(self.clone());
        }
    }

    /// The notifier took it from its queue.
    pub(crate) fn dequeued(&self) {
        self.queued.store(false, Ordering::Release);
    }

    /// Reports a finished async call (from a worker).
    pub(crate) fn complete_later(self: &Arc<Self>, completion: Completion) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(completion);
        self.notify();
    }

    /// Cuts the connection after the shutdown deadline: wakes its thread wherever it waits.
    pub(crate) fn cut(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// The connection thread: rounds of work under the lock, waits without it.
    fn run(self: &Arc<Self>) {
        let log_id = self.lock().as_ref().map(|s| s.conn.id());
        let Some(log_id) = log_id else { return };
        log::trace!(target: "wsrpc::http", "serving conn={log_id}");
        // The first round tries both directions: the request may already be there, and a
        // refused connection has its 503 queued.
        let mut ready = POLLIN | POLLOUT;
        let mut buf: Option<Box<[u8]>> = None;
        loop {
            let sleep = {
                let mut guard = self.lock();
                let Some(st) = guard.as_mut() else { return };
                st.sleep = Sleep::Awake;
                if st.cut {
                    return;
                }
                if self.ctx.registry.is_forced() {
                    log::debug!(target: "wsrpc::http", "dropped at the shutdown deadline conn={log_id}");
                    return;
                }
                let Some(sleep) = st.round(self, ready, &mut buf) else { return };
                st.sleep = sleep;
                sleep
            };
            ready = 0;
            // Pairs with the fence in `serve`: either the notifier got the lock after this
            // round, or this sees its flag and goes round again.
            fence(Ordering::SeqCst);
            if self.missed.swap(false, Ordering::Relaxed) {
                continue;
            }
            if sleep.is_asleep() {
                if let Some(b) = buf.take() {
                    self.ctx.buffers.give(b);
                }
            }
            match sleep {
                Sleep::Awake => {}
                Sleep::Poll { events, until } => {
                    let mut fds = [PollFd::new(self.fd(), events)];
                    match sys::poll(&mut fds, until) {
                        Ok(_) => {
                            ready = fds[0].revents();
                            if ready & POLLIN != 0 && self.ctx.registry.live() > self.ctx.crowd {
                                thread::yield_now();
                            }
                        }
                        Err(e) => {
                            log::warn!(target: "wsrpc::http", "poll failed conn={log_id}: {e}");
                            return;
                        }
                    }
                }
                Sleep::Park { until } => match until {
                    Some(t) => thread::park_timeout(t.saturating_duration_since(Instant::now())),
                    None => thread::park(),
                },
            }
        }
    }

    /// Serves the connection from the notifier: shutdown, finished calls, timers, output.
    /// `writable`: `poll` reported that the socket takes output. Returns what to watch for
    /// while its thread sleeps, or `None`.
    ///
    /// The notifier never waits for the lock (one busy connection would hold up all the
    /// others): it raises `missed`, then tries. If the connection thread holds the lock, that
    /// thread checks `missed` after unlocking and goes round again, doing this work itself.
    /// The fences make this a Dekker handshake: if the try fails, the thread's check sees
    /// the flag.
    pub(crate) fn serve(self: &Arc<Self>, writable: bool) -> Option<Watch> {
        self.missed.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut guard = match self.state.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        // Holding the lock, this call does what the flag asked for.
        self.missed.store(false, Ordering::Relaxed);
        let st = guard.as_mut()?;
        if st.cut {
            return None;
        }
        let now = Instant::now();
        st.outside_input(self, now);
        // Also brings the core's clock forward before it pumps notifications.
        st.conn.handle_timeout(now);
        st.spawn_calls(self, now);
        if writable {
            st.blocked = false;
        }
        let flushed = match st.flush(&self.stream, NOTIFIER_SLICE) {
            Ok(f) => f,
            Err(e) => {
                log::debug!(target: "wsrpc::http", "write failed conn={}: {e}", st.conn.id());
                return self.cut_from_outside(st);
            }
        };
        st.spawn_calls(self, now);
        st.half_close(&self.stream);
        if st.conn.is_finished() {
            return self.cut_from_outside(st);
        }
        if st.stall.exceeded(Instant::now(), flushed, self.ctx.stall_limit) {
            log::debug!(target: "wsrpc::http", "peer stopped reading; dropping conn={}", st.conn.id());
            return self.cut_from_outside(st);
        }
        match st.sleep {
            Sleep::Awake => None,
            Sleep::Park { .. } => {
                // Whatever changed, its thread decides again.
                if let Some(t) = self.thread.get() {
                    t.unpark();
                }
                None
            }
            Sleep::Poll { events, until } => {
                let writable = st.output_waits() && events & POLLOUT == 0;
                let next = st.next_deadline(self.ctx.stall_limit);
                let early = next.filter(|n| until.is_none_or(|u| *n < u));
                (writable || early.is_some()).then_some(Watch { writable, until: early })
            }
        }
    }

    /// Ends the connection from the notifier: its thread wakes (the socket is shut down, or
    /// it is unparked) and ends.
    fn cut_from_outside(&self, st: &mut State) -> Option<Watch> {
        st.cut = true;
        self.cut();
        None
    }
}

impl State {
    /// One round of the connection thread: everything that is ready, then what to wait for
    /// (`None`: close the connection). `ready` is what `poll` reported.
    fn round(&mut self, io: &Arc<Conn>, ready: i16, buf: &mut Option<Box<[u8]>>) -> Option<Sleep> {
        let id = self.conn.id();
        let now = Instant::now();
        self.stuck = false;
        self.outside_input(io, now);
        if ready & (POLLIN | POLLHUP | POLLERR | POLLNVAL) != 0 {
            self.read(io, now, buf);
        } else if !self.leftover.is_empty() && self.conn.wants_read() {
            self.feed_leftover(now);
        }
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        self.spawn_calls(io, now);
        if ready & (POLLOUT | POLLHUP | POLLERR | POLLNVAL) != 0 {
            self.blocked = false;
        }
        let flushed = match self.flush(&io.stream, WRITE_SLICE) {
            Ok(f) => f,
            Err(e) => {
                log::debug!(target: "wsrpc::http", "write failed conn={id}: {e}");
                return None;
            }
        };
        if self.eof && !self.eof_reported && self.leftover.is_empty() && !self.pending {
            self.eof_reported = true;
            self.conn.handle_eof(Instant::now());
        }
        // Writing pumps the connection, which may hand out more async calls.
        self.spawn_calls(io, now);
        self.half_close(&io.stream);
        if self.conn.is_finished() {
            log::trace!(target: "wsrpc::http", "finished conn={id}");
            return None;
        }
        if self.stall.exceeded(Instant::now(), flushed, io.ctx.stall_limit) {
            log::debug!(target: "wsrpc::http", "peer stopped reading; dropping conn={id}");
            return None;
        }
        let wants_read = !self.eof && self.conn.wants_read();
        if wants_read && !self.leftover.is_empty() && !self.stuck {
            // Writing made room (or a call finished): offer the kept input again at once.
            return Some(Sleep::Awake);
        }
        let mut events = 0;
        if wants_read && self.leftover.is_empty() {
            events |= POLLIN;
        }
        if self.output_waits() {
            events |= POLLOUT;
        }
        let until = self.next_deadline(io.ctx.stall_limit);
        Some(if events == 0 { Sleep::Park { until } } else { Sleep::Poll { events, until } })
    }

    /// Shutdown and finished async calls: what other threads bring.
    fn outside_input(&mut self, io: &Arc<Conn>, now: Instant) {
        if !self.shutdown_begun && io.ctx.registry.is_shutting_down() {
            self.shutdown_begun = true;
            self.conn.begin_shutdown(now);
        }
        let done = std::mem::take(&mut *io.done.lock().unwrap_or_else(|p| p.into_inner()));
        for (call, result) in done {
            self.conn.complete(call, result, now);
        }
    }

    /// Reads what the socket has (up to a few buffers) while the connection wants it.
    fn read(&mut self, io: &Conn, now: Instant, buf: &mut Option<Box<[u8]>>) {
        if !self.leftover.is_empty() {
            if !self.conn.wants_read() {
                return;
            }
            self.feed_leftover(now);
            if !self.leftover.is_empty() {
                return;
            }
        }
        if self.eof {
            return;
        }
        let buf = buf.get_or_insert_with(|| io.ctx.buffers.take());
        for _ in 0..READS_PER_ROUND {
            if !self.conn.wants_read() {
                return;
            }
            match (&mut &io.stream).read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => {
                    let used = feed(&mut self.conn, now, &buf[..n]);
                    if used < n {
                        self.leftover = buf[used..n].to_vec();
                        return;
                    }
                    // A short read emptied the socket; `poll` tells when more arrives.
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::trace!(target: "wsrpc::ws", "read failed conn={}: {e}", self.conn.id());
                    self.eof = true;
                    return;
                }
            }
        }
    }

    fn feed_leftover(&mut self, now: Instant) {
        let used = feed(&mut self.conn, now, &self.leftover);
        // The core takes nothing only while it does not want to read; if it ever did, waiting
        // beats spinning.
        self.stuck = used == 0 && self.conn.wants_read();
        if self.stuck {
            log::warn!(target: "wsrpc::http", "the connection took no input while wanting it conn={}", self.conn.id());
        }
        if used == self.leftover.len() {
            self.leftover = Vec::new();
        } else {
            self.leftover.drain(..used);
        }
    }

    /// Hands the connection's async calls to the worker pool.
    fn spawn_calls(&mut self, io: &Arc<Conn>, now: Instant) {
        while let Some((call, future)) = self.conn.poll_spawn() {
            let job = Job { call, future, conn: Arc::downgrade(io) };
            if let Err(e) = self.jobs.send(job) {
                // The pool is gone: the server is being dropped.
                self.conn.complete(e.0.call, Err(RpcError::internal("server stopping")), now);
            }
        }
    }

    /// Writes queued output without blocking, for at most `slice`.
    fn flush(&mut self, stream: &TcpStream, slice: Duration) -> io::Result<Flushed> {
        if self.write_closed {
            self.pending = false;
            return Ok(Flushed::default());
        }
        if self.blocked {
            // The socket took nothing last time and `poll` has not said otherwise.
            self.pending = true;
            return Ok(Flushed { wrote: false, pending: true, blocked: true });
        }
        let flushed = transport::flush_for(stream, &mut self.conn, slice)?;
        self.pending = flushed.pending;
        self.blocked = flushed.blocked;
        Ok(flushed)
    }

    fn half_close(&mut self, stream: &TcpStream) {
        if self.conn.wants_shutdown_write() && !self.write_closed {
            self.write_closed = true;
            self.pending = false;
            let _ = stream.shutdown(Shutdown::Write);
        }
    }

    fn output_waits(&self) -> bool {
        self.pending && !self.write_closed
    }

    /// The core's next timer, or when waiting output would count as a stall.
    fn next_deadline(&self, stall_limit: Duration) -> Option<Instant> {
        let stall = if self.output_waits() { self.stall.deadline(stall_limit) } else { None };
        [self.conn.poll_timeout(), stall].into_iter().flatten().min()
    }
}

/// Offers `data` until the connection takes it all or stops taking; returns bytes taken.
fn feed(conn: &mut ServerConnection, now: Instant, data: &[u8]) -> usize {
    let mut used = 0;
    while used < data.len() {
        let n = conn.handle_input(now, &data[used..]);
        if n == 0 {
            break;
        }
        used += n;
    }
    used
}
