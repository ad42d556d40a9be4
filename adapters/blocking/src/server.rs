//! The server: the [`Launch`] for [`ServerBuilder`], its I/O threads and graceful shutdown.

use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use wsrpc_core::Now;
use wsrpc_core::engine::{Endpoint, Input, ServerConnection};
use wsrpc_core::metrics::ErrorKind;
use wsrpc_core::service::{Launch, Running, ServerBuilder, Service, StartError};
use wsrpc_tls::ServerConfig;

use crate::SystemClock;
use crate::pool::WorkerPool;
use crate::reactor::{Core, Mailbox, Message, Reactor, Role};
use crate::tls_layer::TlsLayer;

/// Stack of an I/O thread. Synchronous handlers run on it, inside the core's dispatch: a
/// handler taking `serde_json::Value` params nested to serde_json's limit (128) needs about
/// 300 KiB in a debug build, and a remote peer chooses the nesting.
const IO_STACK: usize = 4 << 20;
/// After the deadline, how long cut connections get to be dropped.
const FORCE_WAIT: Duration = Duration::from_secs(1);
/// The least time idle workers get to exit before they are left behind.
const POOL_WAIT: Duration = Duration::from_millis(100);
/// The deadline of the shutdown a dropped [`Server`] performs.
const DROP_DEADLINE: Duration = Duration::from_millis(250);

/// Starts servers on plain threads (the [`Launch`] of [`Server::builder`]).
#[derive(Debug)]
pub struct Blocking;

/// What the I/O threads of a server are told.
#[derive(Debug)]
enum Control {
    /// Stop accepting; every connection begins a graceful shutdown.
    Shutdown,
    /// Drop every connection now.
    Force,
    /// End the thread.
    Exit,
}

/// Connections open across the I/O threads, for waiting until none is left.
#[derive(Debug, Default)]
struct Live {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Live {
    fn enter(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn leave(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    fn get(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no connection is left or `deadline` passes; true when none is left.
    fn wait_idle(&self, deadline: Instant) -> bool {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            n = self.idle.wait_timeout(n, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

/// The TLS configuration new connections get; `None` serves plain TCP. Swapped by
/// [`Server::set_tls`] while the server runs.
type TlsSwitch = Arc<RwLock<Option<Arc<ServerConfig>>>>;

/// The server role of an I/O thread.
struct Serving {
    service: Arc<Service>,
    tls: TlsSwitch,
    live: Arc<Live>,
    shutting_down: bool,
    exit: bool,
}

impl Role for Serving {
    type Conn = ServerConnection;
    type Command = Control;

    fn command(&mut self, core: &mut Core<Self>, command: Control, now: Now) {
        match command {
            Control::Shutdown => {
                self.shutting_down = true;
                core.close_listener();
                core.for_each(|c| {
                    c.handle(now, Input::Shutdown);
                });
            }
            Control::Force => core.drop_all(self),
            Control::Exit => {
                core.drop_all(self);
                self.exit = true;
            }
        }
    }

    fn accept(
        &mut self,
        now: Now,
        peer: std::net::SocketAddr,
    ) -> Option<(ServerConnection, Option<Box<TlsLayer>>)> {
        if self.shutting_down {
            return None;
        }
        // Read per connection, so a renewed certificate applies to the next one.
        let config = self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let tls = match config.map(TlsLayer::server).transpose() {
            Ok(tls) => tls,
            Err(e) => {
                log::warn!(target: "wsrpc::http", "cannot start TLS for a connection: {e}");
                return None;
            }
        };
        self.live.enter();
        // The connection's handshake deadline runs from now: it covers the TLS handshake,
        // during which no request bytes reach it.
        Some((ServerConnection::with_peer(self.service.clone(), now, Some(peer)), tls))
    }

    fn tls_failed(&mut self) {
        self.service.metrics().record_error(ErrorKind::Handshake);
    }

    fn finished(&mut self, _key: usize) {
        self.live.leave();
    }

    fn done(&self, _core: &Core<Self>) -> bool {
        self.exit
    }
}

impl Launch for Blocking {
    type Output = Result<Server, StartError>;
    type Tls = Arc<ServerConfig>;

    fn launch(builder: ServerBuilder<Self>) -> Result<Server, StartError> {
        let tls: TlsSwitch = Arc::new(RwLock::new(builder.tls_config().cloned()));
        let parts = builder.into_parts(crate::system_now(), Some(Box::new(SystemClock)))?;
        let service = parts.service;
        let listener = parts.bind.first_available(TcpListener::bind)?;
        let local_addr = listener.local_addr()?;
        let pool = WorkerPool::start(parts.threads.workers, "wsrpc-worker")?;
        let live = Arc::new(Live::default());
        let mut mailboxes = Vec::new();
        let mut threads = Vec::new();
        for i in 0..parts.threads.io {
            let role = Serving {
                service: service.clone(),
                tls: tls.clone(),
                live: live.clone(),
                shutting_down: false,
                exit: false,
            };
            // Every I/O thread waits on the listener; whichever wakes first accepts.
            let reactor = Reactor::new(role, Some(listener.try_clone()?), Some(pool.jobs()))?;
            let mut reactor = reactor;
            mailboxes.push(reactor.core_mut().mailbox().clone());
            let thread = thread::Builder::new()
                .name(format!("wsrpc-io-{i}"))
                .stack_size(IO_STACK)
                .spawn(move || reactor.run())?;
            threads.push(thread);
        }
        log::info!(target: "wsrpc::http", "listening addr={local_addr}");
        let running = Running::new(service, local_addr, Instant::now);
        Ok(Server { running, live, mailboxes, threads, pool: Some(pool), tls })
    }
}

/// A running server: graceful shutdown here; its address, service, `publish`, `publisher`
/// and `metrics` through [`Running`], which it dereferences to. Give threads that publish a
/// `server.publisher()` (`Send + Sync + Clone`), or share the server itself (`&Server`,
/// `Arc<Server>`).
///
/// Dropping it shuts it down like [`shutdown`](Self::shutdown) with a deadline of 250 ms.
pub struct Server {
    running: Running,
    live: Arc<Live>,
    mailboxes: Vec<Mailbox<Control>>,
    threads: Vec<JoinHandle<()>>,
    pool: Option<WorkerPool>,
    tls: TlsSwitch,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder: router, configuration, where to listen; then `.start()`.
    pub fn builder() -> ServerBuilder<Blocking> {
        ServerBuilder::new()
    }

    /// Serves connections accepted from now on with `config` (a renewed certificate, say);
    /// connections already open keep theirs. False, and nothing changes, when the server
    /// was started without TLS.
    pub fn set_tls(&self, config: impl Into<Arc<ServerConfig>>) -> bool {
        let mut current = self.tls.write().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            return false;
        }
        *current = Some(config.into());
        true
    }

    /// Connections being served (WebSocket and HTTP).
    pub fn connections(&self) -> usize {
        self.live.get()
    }

    /// Graceful shutdown: stops accepting, lets in-flight calls finish and closes every
    /// WebSocket with 1001 (HTTP connections close after their response); connections still
    /// open after `deadline` are cut. Returns once they are gone and the threads are joined
    /// (a worker stuck in a handler past the deadline is left behind).
    pub fn shutdown(mut self, deadline: Duration) {
        self.stop(deadline);
    }

    fn tell(&self, make: impl Fn() -> Control) {
        for m in &self.mailboxes {
            m.send(Message::Role(make()));
        }
    }

    fn stop(&mut self, deadline: Duration) {
        if self.threads.is_empty() {
            return;
        }
        let end = wsrpc_core::later(Instant::now(), deadline);
        self.tell(|| Control::Shutdown);
        if !self.live.wait_idle(end) {
            log::warn!(target: "wsrpc::ws", "shutdown deadline passed with {} connections left; dropping them", self.live.get());
            self.tell(|| Control::Force);
            self.live.wait_idle(Instant::now() + FORCE_WAIT);
        }
        self.tell(|| Control::Exit);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(pool) = self.pool.take() {
            pool.stop(end.max(Instant::now() + POOL_WAIT));
        }
        self.service().stop_broker();
        log::info!(target: "wsrpc::http", "stopped addr={}", self.local_addr());
    }
}

impl std::ops::Deref for Server {
    type Target = Running;

    /// The address, service, `publish` and `metrics`.
    fn deref(&self) -> &Running {
        &self.running
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(DROP_DEADLINE);
    }
}
