//! TCP on the async-io reactor, shared by `wsrpc-smol` and `wsrpc-async-std`: the listener
//! (an address, or the first free port of a range), the accept loop (plain or TLS, see
//! [`crate::tls`]), and the client connector.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::Duration;

use async_io::Async;
use atomic_waker::AtomicWaker;
use wsrpc_core::engine::Target;
use wsrpc_core::rpc::client::{ClientError, ClientOptions, ConnectError};
use wsrpc_core::service::{Bind, Launch, ServerBuilder, Service, StartError};
use wsrpc_tls::ServerConfig;

use crate::server::{Registry, ServerHandle, serve_connection};
use crate::tls::{ClientStream, TlsSwitch, connect_stream, serve_tls};
use crate::{BoxFuture, Runtime};

/// Binds per `bind` and serves `service` on `rt` until the handle shuts it down; TLS while
/// `tls` holds a configuration.
fn start<R: Runtime>(
    rt: R,
    service: Arc<Service>,
    bind: &Bind,
    tls: TlsSwitch,
) -> io::Result<ServerHandle> {
    let listener = bind.first_available(TcpListener::bind)?;
    let local_addr = listener.local_addr()?;
    let listener = Async::new(listener)?;
    let registry = Registry::new();
    let stop = Arc::new(AtomicBool::new(false));
    let waker = Arc::new(AtomicWaker::new());
    log::info!(target: "wsrpc::http", "listening addr={local_addr}");
    rt.spawn(Box::pin(accept_loop(
        rt.clone(),
        service.clone(),
        listener,
        registry.clone(),
        stop.clone(),
        waker.clone(),
        tls,
    )));
    Ok(ServerHandle::new(service, local_addr, registry, stop, waker))
}

async fn accept_loop(
    rt: impl Runtime,
    service: Arc<Service>,
    listener: Async<TcpListener>,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
    waker: Arc<AtomicWaker>,
    tls: TlsSwitch,
) {
    loop {
        let next = std::future::poll_fn(|cx| {
            waker.register(cx.waker());
            if stop.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            loop {
                match listener.get_ref().accept() {
                    Ok(accepted) => return Poll::Ready(Some(Ok(accepted))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                match listener.poll_readable(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        match next {
            None => break,
            Some(Ok((stream, peer))) => {
                let _ = stream.set_nodelay(true);
                // Read per connection, so a renewed certificate applies to the next one.
                let config = tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                match Async::new(stream) {
                    Ok(stream) => match config {
                        None => rt.spawn(Box::pin(serve_connection(
                            rt.clone(),
                            service.clone(),
                            TcpConn::new(stream),
                            registry.clone(),
                            rt.now(),
                            Some(peer),
                        ))),
                        Some(config) => rt.spawn(Box::pin(serve_tls(
                            rt.clone(),
                            service.clone(),
                            TcpConn::new(stream),
                            registry.clone(),
                            config,
                            Some(peer),
                        ))),
                    },
                    Err(e) => log::warn!(target: "wsrpc::http", "cannot register connection: {e}"),
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!(target: "wsrpc::http", "accept failed: {e}");
                rt.timer(rt.now().mono + Duration::from_millis(50)).await;
            }
        }
    }
    log::info!(target: "wsrpc::http", "stopped accepting");
}

/// Connects over TCP to `target`, trying each address its host resolves to (a name is
/// resolved on the blocking pool).
pub fn connect_tcp(target: &Target) -> BoxFuture<Result<TcpConn, ConnectError>> {
    let (host, port) = (target.host().to_owned(), target.port());
    Box::pin(async move {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => blocking::unblock(move || (host.as_str(), port).to_socket_addrs())
                .await
                .map_err(|e| ConnectError::Dns(e.to_string()))?
                .collect(),
        };
        let mut last = ConnectError::Dns("no address".into());
        for addr in addrs {
            match Async::<TcpStream>::connect(addr).await {
                Ok(s) => {
                    let _ = s.get_ref().set_nodelay(true);
                    return Ok(TcpConn::new(s));
                }
                Err(e) => last = ConnectError::from_io(&e),
            }
        }
        Err(last)
    })
}

/// A TCP stream on async-io whose `poll_close` half-closes (FIN after the last byte), which
/// the drive loop relies on for its lingering close. (`Async<TcpStream>` itself only
/// flushes on close.) Reads are gated by readiness: after a read that emptied the socket the
/// next one waits for the reactor instead of making a system call that would only fail.
#[derive(Debug)]
pub struct TcpConn {
    io: Async<TcpStream>,
    drained: bool,
}

impl TcpConn {
    /// Wraps a registered stream.
    pub fn new(io: Async<TcpStream>) -> Self {
        Self { io, drained: false }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &TcpStream {
        self.io.get_ref()
    }

    /// Reads without consuming (the TLS port's first-byte sniff).
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.peek(buf).await
    }
}

impl futures_io::AsyncRead for TcpConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        use std::io::Read as _;
        let this = self.get_mut();
        loop {
            if this.drained {
                match this.io.poll_readable(cx) {
                    Poll::Ready(Ok(())) => this.drained = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match (&mut this.io.get_ref()).read(buf) {
                Ok(n) => {
                    // A short read usually means the socket is empty now.
                    this.drained = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl futures_io::AsyncWrite for TcpConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

/// A running server on runtime `R` (what `wsrpc_smol::Server` and `wsrpc_async_std::Server`
/// are). Derefs to [`ServerHandle`] for `local_addr`, `publish`, `publisher`, `metrics`, `connections`.
#[derive(Debug)]
pub struct Server<R: Runtime> {
    handle: ServerHandle,
    rt: R,
    tls: TlsSwitch,
}

impl<R: Runtime + Default> Server<R> {
    /// A builder: router, configuration, where to listen; then `.start()`.
    pub fn builder() -> ServerBuilder<Launcher<R>> {
        ServerBuilder::new()
    }

    /// Graceful shutdown: stop accepting, answer in-flight calls, close every WebSocket with
    /// 1001, drop what is left after `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        self.handle.shutdown(&self.rt, deadline).await;
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
}

impl<R: Runtime> std::ops::Deref for Server<R> {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

/// Starts servers on runtime `R` with the async-io listener (the [`Launch`] of
/// [`Server::builder`]).
#[derive(Debug)]
pub struct Launcher<R>(std::marker::PhantomData<fn() -> R>);

impl<R: Runtime + Default> Launch for Launcher<R> {
    type Output = Result<Server<R>, StartError>;
    type Tls = Arc<ServerConfig>;

    fn launch(builder: ServerBuilder<Self>) -> Result<Server<R>, StartError> {
        let rt = R::default();
        let tls: TlsSwitch = Arc::new(RwLock::new(builder.tls_config().cloned()));
        let parts = builder.into_parts(rt.now(), Some(Box::new(crate::SystemClock)))?;
        let handle = start(rt.clone(), parts.service, &parts.bind, tls.clone())?;
        Ok(Server { handle, rt, tls })
    }
}

impl<R: Runtime> Server<R> {
    /// Serves a stream you accepted yourself (a Unix socket, say) as one more connection of
    /// this server: same limits, metrics and shutdown. Its `poll_close` should half-close.
    pub fn serve<S>(&self, stream: S)
    where
        S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
    {
        self.handle.serve(&self.rt, stream);
    }
}

/// Connects a client on runtime `R` over async-io TCP to `url` (`ws://host:port/path`, or
/// `wss://` over TLS with the options' `rustls::ClientConfig` or this build's default
/// trust).
pub async fn connect_client<R: Runtime + Default>(
    url: &str,
    options: ClientOptions,
) -> Result<crate::Client, ClientError> {
    let settings = options.clone();
    let connector: crate::Connector<ClientStream> =
        Arc::new(move |t: &Target| connect_stream(t, &settings));
    crate::Client::connect(R::default(), connector, url, options).await
}
