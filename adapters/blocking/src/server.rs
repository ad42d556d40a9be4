//! The server: the [`Launch`] for [`ServerBuilder`], the accept thread and graceful shutdown.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use wsrpc_core::hub::{PublishError, Published};
use wsrpc_core::metrics::Snapshot;
use wsrpc_core::service::{Launch, ServerBuilder, Service};

use crate::SystemClock;
use crate::connection::{self, CROWD_PER_CPU, Context};
use crate::notifier::{Notifier, NotifierThread};
use crate::pool::{Job, WorkerPool};
use crate::registry::Registry;
use crate::transport;

/// Threads running async handlers, shared by all connections of a server.
const WORKERS: usize = 4;
/// Stack of the accept thread.
const ACCEPT_STACK: usize = 128 * 1024;
/// Pause after a failed `accept` (out of file descriptors, say) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long stopping the accept thread may take (it is woken by a connection to itself).
const ACCEPT_STOP_WAIT: Duration = Duration::from_secs(2);
/// After the deadline, how long cut connections get to notice.
const FORCE_WAIT: Duration = Duration::from_secs(1);
/// The least time idle workers get to exit before they are left behind.
const POOL_WAIT: Duration = Duration::from_millis(100);
/// The deadline of the shutdown a dropped [`Server`] performs.
const DROP_DEADLINE: Duration = Duration::from_millis(250);

/// Starts servers on plain threads (the [`Launch`] of [`Server::builder`]).
#[derive(Debug)]
pub struct Blocking;

impl Launch for Blocking {
    type Output = io::Result<Server>;

    fn launch(builder: ServerBuilder<Self>) -> io::Result<Server> {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (service, bind) =
            builder.into_service(Instant::now(), unix, Some(Box::new(SystemClock)));
        let listener = bind.first_available(TcpListener::bind)?;
        let local_addr = listener.local_addr()?;
        service.set_port(local_addr.port());
        let registry = Arc::new(Registry::default());
        let pool = WorkerPool::start(WORKERS)?;
        let (notifier, notifier_thread) = Notifier::start()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (exit_tx, exited) = bounded::<()>(0);
        let context = Arc::new(Context {
            stall_limit: transport::stall_limit(&service.config().ws),
            service: service.clone(),
            registry: registry.clone(),
            notifier,
            buffers: Default::default(),
            crowd: CROWD_PER_CPU * thread::available_parallelism().map_or(1, |n| n.get()),
        });
        let accept = AcceptLoop { listener, context, jobs: pool.jobs(), stop: stop.clone() };
        let thread = thread::Builder::new()
            .name("wsrpc-accept".into())
            .stack_size(ACCEPT_STACK)
            .spawn(move || {
                let _exit = exit_tx;
                accept.run();
            })?;
        log::info!(target: "wsrpc::http", "listening addr={local_addr}");
        Ok(Server {
            service,
            local_addr,
            registry,
            acceptor: Some(Acceptor { stop, exited, thread }),
            pool: Some(pool),
            notifier: Some(notifier_thread),
        })
    }
}

/// A running server: its address, publishing, metrics and graceful shutdown. `Send + Sync`,
/// so it can be shared (`&Server`, `Arc<Server>`) with the threads that publish.
///
/// Dropping it shuts it down like [`shutdown`](Self::shutdown) with a deadline of 250 ms.
pub struct Server {
    service: Arc<Service>,
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    acceptor: Option<Acceptor>,
    pool: Option<WorkerPool>,
    notifier: Option<NotifierThread>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder: router, configuration, where to listen; then `.start()`.
    pub fn builder() -> ServerBuilder<Blocking> {
        ServerBuilder::new()
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

    /// A metrics snapshot.
    pub fn metrics(&self) -> Snapshot {
        self.service.snapshot(Instant::now())
    }

    /// Connections being served (WebSocket and HTTP).
    pub fn connections(&self) -> usize {
        self.registry.live()
    }

    /// Graceful shutdown: stops accepting, lets in-flight calls finish and closes every
    /// WebSocket with 1001 (HTTP connections close after their response); connections still
    /// open after `deadline` are cut. Returns once they are gone and the threads are joined
    /// (a worker stuck in an async handler past the deadline is left behind).
    pub fn shutdown(mut self, deadline: Duration) {
        self.stop(deadline);
    }

    fn stop(&mut self, deadline: Duration) {
        let Some(acceptor) = self.acceptor.take() else { return };
        let end = Instant::now() + deadline;
        acceptor.stop(self.local_addr);
        self.registry.begin_shutdown();
        if !self.registry.wait_idle(end) {
            log::warn!(target: "wsrpc::ws", "shutdown deadline passed with {} connections left; dropping them", self.registry.live());
            self.registry.force_close();
            if !self.registry.wait_idle(Instant::now() + FORCE_WAIT) {
                log::warn!(target: "wsrpc::ws", "{} connection threads did not stop; leaving them", self.registry.live());
            }
        }
        // Before the pool: what it holds of ended connections keeps no worker queue alive.
        if let Some(notifier) = self.notifier.take() {
            notifier.stop();
        }
        if let Some(pool) = self.pool.take() {
            pool.stop(end.max(Instant::now() + POOL_WAIT));
        }
        self.service.stop_broker();
        log::info!(target: "wsrpc::http", "stopped addr={}", self.local_addr);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(DROP_DEADLINE);
    }
}

/// The accept thread's stop switch.
#[derive(Debug)]
struct Acceptor {
    stop: Arc<AtomicBool>,
    /// Disconnects when the accept thread exits.
    exited: Receiver<()>,
    thread: JoinHandle<()>,
}

impl Acceptor {
    /// Stops accepting and closes the listener. The thread is blocked in `accept`, so after
    /// raising the flag it is woken by a connection to the listener itself.
    fn stop(self, local_addr: SocketAddr) {
        self.stop.store(true, Ordering::Release);
        let mut target = local_addr;
        if target.ip().is_unspecified() {
            target.set_ip(match target.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        if let Err(e) = TcpStream::connect_timeout(&target, ACCEPT_STOP_WAIT) {
            log::debug!(target: "wsrpc::http", "cannot wake the accept thread at {target}: {e}");
        }
        match self.exited.recv_timeout(ACCEPT_STOP_WAIT) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => log::warn!(target: "wsrpc::http", "the accept thread did not stop; leaving it"),
        }
    }
}

struct AcceptLoop {
    listener: TcpListener,
    context: Arc<Context>,
    jobs: Sender<Job>,
    stop: Arc<AtomicBool>,
}

impl AcceptLoop {
    fn run(self) {
        for next in self.listener.incoming() {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            match next {
                Ok(stream) => connection::start(stream, &self.context, &self.jobs),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    log::warn!(target: "wsrpc::http", "accept failed: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
        log::info!(target: "wsrpc::http", "stopped accepting");
    }
}
