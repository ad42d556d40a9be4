//! Serving connections: the drive loop of one [`ServerConnection`], the registry that
//! tracks live connections for graceful shutdown, and the handle users keep.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use futures_io::{AsyncRead, AsyncWrite};
use wsrpc_core::engine::ServerConnection;
use wsrpc_core::hub::{PublishError, Published};
use wsrpc_core::metrics::Snapshot;
use wsrpc_core::service::Service;

use crate::completions::Completions;
use crate::{BoxFuture, Runtime};

/// Rounds of read/write per poll before yielding, so one busy connection cannot starve the
/// others on the same executor thread.
const ROUNDS_PER_POLL: usize = 16;

/// Live connections of a server, for graceful shutdown.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    shutting_down: AtomicBool,
    force: AtomicBool,
    idle: AtomicWaker,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("live", &self.live()).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Slot {
    waker: AtomicWaker,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn enter(&self) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).insert(id, slot.clone());
        (id, slot)
    }

    fn leave(&self, id: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(&id);
        if slots.is_empty() {
            self.idle.wake();
        }
    }

    /// Connections being served.
    pub fn live(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a shutdown started.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn wake_all(&self) {
        for slot in self.slots.lock().unwrap_or_else(|p| p.into_inner()).values() {
            slot.waker.wake();
        }
    }

    /// Asks every connection to finish: in-flight calls are answered, WebSocket peers get
    /// close 1001, HTTP connections close after their response.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Drops every connection still open.
    pub fn force_close(&self) {
        self.force.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Completes when no connection is left.
    pub fn wait_idle(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let me = self.clone();
        std::future::poll_fn(move |cx| {
            me.idle.register(cx.waker());
            if me.live() == 0 { Poll::Ready(()) } else { Poll::Pending }
        })
    }
}

/// Serves one accepted transport connection until it is finished.
///
/// Use it directly to serve streams from your own listener (a TLS acceptor, a Unix socket).
/// The stream's `poll_close` should half-close (send FIN) when possible: the loop calls it
/// once its last bytes are written, then reads until end of file.
pub fn serve_connection<R, S>(
    rt: R,
    service: Arc<Service>,
    stream: S,
    registry: Arc<Registry>,
) -> impl Future<Output = ()> + Send
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let now = rt.now();
    let conn = ServerConnection::new(service, now);
    let (id, slot) = registry.enter();
    Driver {
        rt,
        conn,
        stream,
        registry,
        id,
        slot,
        completions: Arc::new(Completions::default()),
        leftover: Vec::new(),
        timer: None,
        eof: false,
        write_closed: false,
        shutdown_begun: false,
        registered: None,
    }
}

struct Driver<R: Runtime, S> {
    rt: R,
    conn: ServerConnection,
    stream: S,
    registry: Arc<Registry>,
    id: u64,
    slot: Arc<Slot>,
    completions: Arc<Completions>,
    /// Input the connection could not take yet (backpressure); usually empty.
    leftover: Vec<u8>,
    timer: Option<(Instant, BoxFuture<()>)>,
    eof: bool,
    write_closed: bool,
    shutdown_begun: bool,
    registered: Option<std::task::Waker>,
}

impl<R: Runtime, S> Drop for Driver<R, S> {
    fn drop(&mut self) {
        self.registry.leave(self.id);
    }
}

impl<R, S> Future for Driver<R, S>
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // An AtomicWaker gives its waker up when woken: register on every poll (cheap).
        this.completions.waker.register(cx.waker());
        this.slot.waker.register(cx.waker());
        if this.registered.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
            // The outbox keeps its waker until replaced; it takes a lock, so only on change.
            this.conn.register_waker(cx.waker());
            this.registered = Some(cx.waker().clone());
        }
        for _ in 0..ROUNDS_PER_POLL {
            if this.registry.force.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            match this.round(cx) {
                Round::Finished => return Poll::Ready(()),
                Round::Idle => return Poll::Pending,
                Round::Progress => {}
            }
        }
        // Still busy: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

enum Round {
    Progress,
    Idle,
    Finished,
}

impl<R, S> Driver<R, S>
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn round(&mut self, cx: &mut Context<'_>) -> Round {
        let mut progress = false;
        let now = self.rt.now();
        // Whatever woke us, notifications queued meanwhile go out stamped with `now`.
        self.conn.handle_wakeup(now);
        if self.registry.is_shutting_down() && !self.shutdown_begun {
            self.shutdown_begun = true;
            self.conn.begin_shutdown(now);
            progress = true;
        }
        for (id, result) in self.completions.take() {
            self.conn.complete(id, result, now);
            progress = true;
        }
        while let Some((id, fut)) = self.conn.poll_spawn() {
            self.completions.spawn(&self.rt, id, fut);
        }
        progress |= self.read(cx, now);
        progress |= self.timers(cx, now);
        match self.write(cx) {
            Err(()) => return Round::Finished,
            Ok(p) => progress |= p,
        }
        if self.conn.wants_shutdown_write() && !self.write_closed {
            match Pin::new(&mut self.stream).poll_close(cx) {
                Poll::Ready(_) => {
                    self.write_closed = true;
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        if self.conn.is_finished() {
            return Round::Finished;
        }
        if progress { Round::Progress } else { Round::Idle }
    }

    fn feed(&mut self, now: Instant, mut data: &[u8]) -> bool {
        let mut progress = false;
        while !data.is_empty() {
            let used = self.conn.handle_input(now, data);
            if used == 0 {
                break;
            }
            progress = true;
            data = &data[used..];
        }
        if !data.is_empty() {
            self.leftover.extend_from_slice(data);
        }
        progress
    }

    fn read(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if !self.leftover.is_empty() {
            if !self.conn.wants_read() {
                return false;
            }
            let pending = std::mem::take(&mut self.leftover);
            return self.feed(now, &pending);
        }
        if self.eof || !self.conn.wants_read() {
            return false;
        }
        crate::with_read_buffer(|buf| match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                self.eof = true;
                self.conn.handle_eof(now);
                true
            }
            Poll::Ready(Ok(n)) => {
                self.feed(now, &buf[..n]);
                true
            }
            Poll::Pending => false,
        })
    }

    fn timers(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Some(deadline) = self.conn.poll_timeout() else {
            self.timer = None;
            return false;
        };
        if deadline <= now {
            self.timer = None;
            self.conn.handle_timeout(now);
            return true;
        }
        if self.timer.as_ref().is_none_or(|(at, _)| *at != deadline) {
            self.timer = Some((deadline, self.rt.timer(deadline)));
        }
        let (_, timer) = self.timer.as_mut().expect("just set");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                self.conn.handle_timeout(self.rt.now());
                true
            }
            Poll::Pending => false,
        }
    }

    /// Writes until the connection has nothing more or the socket would block.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        loop {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = self.conn.poll_transmit_vectored(&mut slices);
            if n == 0 || self.write_closed {
                return Ok(progress);
            }
            match Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(written)) => {
                    self.conn.advance_transmit(written);
                    progress = true;
                }
                Poll::Pending => return Ok(progress),
            }
        }
    }
}

/// A running server: its address, its service (publish, metrics) and graceful shutdown.
pub struct ServerHandle {
    service: Arc<Service>,
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    stop_accepting: Arc<AtomicBool>,
    accept_waker: Arc<AtomicWaker>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// A handle for a server accepting on `local_addr`; the accept loop watches
    /// `stop_accepting` and is woken through `accept_waker`.
    pub fn new(
        service: Arc<Service>,
        local_addr: SocketAddr,
        registry: Arc<Registry>,
        stop_accepting: Arc<AtomicBool>,
        accept_waker: Arc<AtomicWaker>,
    ) -> Self {
        Self { service, local_addr, registry, stop_accepting, accept_waker }
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared service: router, hub, metrics.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Publishes `value` to `topic`; callable from any thread.
    pub fn publish<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Published, PublishError> {
        self.service.publish(topic, value)
    }

    /// A metrics snapshot; callable from any thread.
    pub fn metrics(&self) -> Snapshot {
        self.service.snapshot(Instant::now())
    }

    /// Connections being served.
    pub fn connections(&self) -> usize {
        self.registry.live()
    }

    /// Graceful shutdown: stops accepting, lets in-flight calls finish and closes every
    /// WebSocket with 1001; connections still open after `deadline` are dropped. Completes
    /// when every connection is gone.
    pub async fn shutdown<R: Runtime>(self, rt: &R, deadline: Duration) {
        self.stop_accepting.store(true, Ordering::Release);
        self.accept_waker.wake();
        self.registry.begin_shutdown();
        let end = rt.now() + deadline;
        let mut timer = rt.timer(end);
        let mut idle = Box::pin(self.registry.wait_idle());
        let timed_out = std::future::poll_fn(|cx| {
            if idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            timer.as_mut().poll(cx).map(|()| true)
        })
        .await;
        if timed_out {
            log::warn!(target: "wsrpc::ws", "shutdown deadline passed with {} connections left; dropping them", self.registry.live());
            self.registry.force_close();
            self.registry.wait_idle().await;
        }
        self.service.stop_broker();
    }
}

impl Drop for ServerHandle {
    /// A dropped server stops accepting and closes its connections gracefully in the
    /// background (call [`shutdown`](Self::shutdown) to wait for it).
    fn drop(&mut self) {
        self.stop_accepting.store(true, Ordering::Release);
        self.accept_waker.wake();
        self.registry.begin_shutdown();
    }
}
