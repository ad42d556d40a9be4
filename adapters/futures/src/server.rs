//! Serving connections: the registry that tracks live connections for graceful shutdown,
//! what a server connection hears from outside its stream, and the handle users keep.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use futures_io::{AsyncRead, AsyncWrite};
use wsrpc_core::Now;
use wsrpc_core::engine::{Endpoint, Input, ServerConnection};
use wsrpc_core::service::{Running, Service};

use crate::Runtime;
use crate::drive::{Driver, Outside};

/// Live connections of a server, for graceful shutdown.
#[derive(Default)]
pub(crate) struct Registry {
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
    pub(crate) fn new() -> Arc<Self> {
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
    pub(crate) fn live(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a shutdown started.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn wake_all(&self) {
        for slot in self.slots.lock().unwrap_or_else(|p| p.into_inner()).values() {
            slot.waker.wake();
        }
    }

    /// Asks every connection to finish: in-flight calls are answered, WebSocket peers get
    /// close 1001, HTTP connections close after their response.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Drops every connection still open.
    pub(crate) fn force_close(&self) {
        self.force.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Completes when no connection is left.
    pub(crate) fn wait_idle(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let me = self.clone();
        std::future::poll_fn(move |cx| {
            me.idle.register(cx.waker());
            if me.live() == 0 { Poll::Ready(()) } else { Poll::Pending }
        })
    }
}

/// What a server connection hears from outside its stream: the registry's shutdown and
/// forced close.
struct ServerSide {
    registry: Arc<Registry>,
    id: u64,
    slot: Arc<Slot>,
    shutdown_begun: bool,
}

impl Drop for ServerSide {
    fn drop(&mut self) {
        self.registry.leave(self.id);
    }
}

impl Outside<ServerConnection> for ServerSide {
    fn feed(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut ServerConnection,
        now: Now,
    ) -> Result<bool, ()> {
        // An AtomicWaker gives its waker up when woken: register on every poll (cheap).
        self.slot.waker.register(cx.waker());
        if self.registry.force.load(Ordering::Acquire) {
            return Err(());
        }
        if self.registry.is_shutting_down() && !self.shutdown_begun {
            self.shutdown_begun = true;
            conn.handle(now, Input::Shutdown);
            return Ok(true);
        }
        Ok(false)
    }
}

/// Serves one transport connection of `service` from `peer` (when known), accepted at
/// `accepted` (its handshake deadline runs from then, so a TLS handshake before it counts),
/// until it is finished.
pub(crate) fn serve_connection<R, S>(
    rt: R,
    service: Arc<Service>,
    stream: S,
    registry: Arc<Registry>,
    accepted: Now,
    peer: Option<std::net::SocketAddr>,
) -> impl Future<Output = ()> + Send
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ServerConnection::with_peer(service, accepted, peer);
    let (id, slot) = registry.enter();
    let side = ServerSide { registry, id, slot, shutdown_begun: false };
    Driver::new(rt, conn, side, Some(stream), None)
}

/// A running server: graceful shutdown here; its address, service, `publish` and `metrics`
/// through [`Running`], which it dereferences to.
pub struct ServerHandle {
    running: Running,
    registry: Arc<Registry>,
    stop_accepting: Arc<AtomicBool>,
    accept_waker: Arc<AtomicWaker>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// A handle for a server on `rt` accepting on `local_addr`; the accept loop watches
    /// `stop_accepting` and is woken through `accept_waker`.
    pub(crate) fn new(
        service: Arc<Service>,
        local_addr: SocketAddr,
        registry: Arc<Registry>,
        stop_accepting: Arc<AtomicBool>,
        accept_waker: Arc<AtomicWaker>,
    ) -> Self {
        let running = Running::new(service, local_addr, std::time::Instant::now);
        Self { running, registry, stop_accepting, accept_waker }
    }

    /// Serves a stream you accepted yourself (a Unix socket, a TLS stream of your own
    /// acceptor) as one more connection of this server: same limits, metrics and shutdown.
    /// The stream's `poll_close` should half-close (send FIN) when it can. Its peer address is
    /// unknown to the server: no per-address rate limit applies, and it is not a loopback
    /// client for `/metrics` (see `MonitoringAccess`).
    pub fn serve<R: Runtime, S>(&self, rt: &R, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = self.service().clone();
        let fut =
            serve_connection(rt.clone(), service, stream, self.registry.clone(), rt.now(), None);
        rt.spawn(Box::pin(fut));
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
        let end = wsrpc_core::later(rt.now().mono, deadline);
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
        self.service().stop_broker();
    }
}

impl std::ops::Deref for ServerHandle {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.running
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
