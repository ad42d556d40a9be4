//! TLS on the async-io transports with `futures-rustls`: the client's stream (TCP or TLS
//! after a `wss://` connect) and the server's TLS accept path, which sniffs the first byte,
//! refuses plain HTTP with a plain 400, and completes the handshake within the handshake
//! timeout before the connection is served. The drive loop only ever sees a stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::{TlsAcceptor, TlsConnector};
use wsrpc_core::engine::Target;
use wsrpc_core::metrics::ErrorKind;
use wsrpc_core::rpc::client::{ClientOptions, ConnectError};
use wsrpc_core::service::Service;
use wsrpc_tls::ServerConfig;

use crate::net::{TcpConn, connect_tcp};
use crate::server::{Registry, serve_connection};
use crate::{BoxFuture, Runtime};

/// How long a refused plain-text peer is read from (so it receives the 400 instead of a
/// reset) when the server has no handshake timeout.
const REFUSAL_LINGER: Duration = Duration::from_secs(10);

/// The TLS configuration new connections of a server get; `None` serves plain TCP.
/// Swapped by `Server::set_tls` while the server runs.
pub(crate) type TlsSwitch = Arc<RwLock<Option<Arc<ServerConfig>>>>;

/// A client transport: TCP for `ws://`, TLS over TCP for `wss://`.
#[derive(Debug)]
pub enum ClientStream {
    /// `ws://`.
    Tcp(TcpConn),
    /// `wss://`.
    Tls(Box<futures_rustls::client::TlsStream<TcpConn>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// TLS: close_notify, then half-close the TCP stream.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_close(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// Opens a transport to `target`: TCP, then for `wss://` a TLS handshake with `options`'
/// configuration (or the default of this build's features), SNI from the host name. TLS
/// failures come back typed ([`ConnectError::Tls`]); the connection's connect deadline
/// bounds the whole of it.
pub fn connect_stream(
    target: &Target,
    options: &ClientOptions,
) -> BoxFuture<Result<ClientStream, ConnectError>> {
    let tcp = connect_tcp(target);
    if !target.is_tls() {
        return Box::pin(async move { tcp.await.map(ClientStream::Tcp) });
    }
    let prepared = wsrpc_tls::client_config(options)
        .and_then(|config| Ok((config, wsrpc_tls::server_name(target)?)));
    Box::pin(async move {
        let (config, name) = prepared?;
        let tcp = tcp.await?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| wsrpc_tls::connect_error(&e))?;
        Ok(ClientStream::Tls(Box::new(tls)))
    })
}

enum Race<T> {
    Done(T),
    Late,
}

/// Runs `work` until `deadline` (never, without one).
async fn within<R: Runtime, T>(
    rt: &R,
    deadline: Option<std::time::Instant>,
    work: impl Future<Output = T>,
) -> Race<T> {
    let mut work = std::pin::pin!(work);
    let mut timer = deadline.map(|d| rt.timer(d));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = work.as_mut().poll(cx) {
            return Poll::Ready(Race::Done(v));
        }
        match timer.as_mut() {
            Some(t) => t.as_mut().poll(cx).map(|()| Race::Late),
            None => Poll::Pending,
        }
    })
    .await
}

/// Serves one accepted TCP connection of a TLS port: the first byte decides (a TLS hello,
/// or plain text that is refused), the handshake runs within the handshake timeout (which
/// then also covers the HTTP request that follows), and the TLS stream is served like any
/// other connection. Failures are counted as `handshake` errors.
pub(crate) async fn serve_tls<R: Runtime>(
    rt: R,
    service: Arc<Service>,
    tcp: TcpConn,
    registry: Arc<Registry>,
    config: Arc<ServerConfig>,
    peer: Option<std::net::SocketAddr>,
) {
    let accepted = rt.now();
    let deadline =
        service.config().ws.handshake_timeout.map(|t| wsrpc_core::later(accepted.mono, t));
    let mut first = [0u8; 1];
    match within(&rt, deadline, tcp.peek(&mut first)).await {
        Race::Done(Ok(1)) => {}
        // Closed, failed or silent before sending anything: like a plain connection that
        // never sent a request, it just ends.
        Race::Done(_) | Race::Late => return,
    }
    if !wsrpc_tls::starts_tls(first[0]) {
        service.metrics().record_error(ErrorKind::Handshake);
        log::debug!(target: "wsrpc::http", "plain text on the TLS port; answering 400");
        let linger = deadline.unwrap_or_else(|| wsrpc_core::later(accepted.mono, REFUSAL_LINGER));
        let _ = within(&rt, Some(linger), refuse_plaintext(tcp)).await;
        return;
    }
    let handshake = TlsAcceptor::from(config).accept(tcp);
    match within(&rt, deadline, handshake).await {
        Race::Done(Ok(tls)) => {
            if registry.is_shutting_down() {
                return;
            }
            serve_connection(rt, service, tls, registry, accepted, peer).await;
        }
        Race::Done(Err(e)) => {
            service.metrics().record_error(ErrorKind::Handshake);
            log::debug!(target: "wsrpc::http", "TLS handshake failed: {e}");
        }
        Race::Late => {
            service.metrics().record_error(ErrorKind::Handshake);
            log::debug!(target: "wsrpc::http", "TLS handshake timed out");
        }
    }
}

/// Answers a plain-text request on the TLS port with a plain 400, half-closes, and reads
/// until the peer closes (so it gets the answer rather than a reset).
async fn refuse_plaintext(mut tcp: TcpConn) {
    use futures_io::AsyncWrite as _;
    let mut sent = 0;
    while sent < wsrpc_tls::PLAINTEXT_REFUSAL.len() {
        let rest = &wsrpc_tls::PLAINTEXT_REFUSAL[sent..];
        match std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_write(cx, rest)).await {
            Ok(n) if n > 0 => sent += n,
            _ => return,
        }
    }
    if std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_close(cx)).await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while let Ok(n) = std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_read(cx, &mut sink)).await {
        if n == 0 {
            break;
        }
    }
}
