//! The reconnecting JSON-RPC client: typed calls with timeouts, notifications, batches and
//! subscriptions as streams, over one WebSocket that comes back after it drops.
//!
//! One background task per client owns the socket, a [`ws::Connection`] and a
//! [`ClientSession`]; the [`Client`] handle talks to it through a channel.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_channel::{mpsc, oneshot};
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use wsrpc_core::Entropy;
use wsrpc_core::rpc::client::{
    Backoff, ClientError, ClientOptions, ClientSession, SubscriptionEvent, SubscriptionToken,
};
use wsrpc_core::rpc::dispatch::{
    CallResult, Channels, ClientDispatch, EventSink, OneShot, SinkError,
};
use wsrpc_core::ws::{self, ClientRequest, CloseCode, Event, MessageKind};

use crate::{BoxFuture, Runtime};

/// Connects a transport to `authority` (`host:port`).
pub type Connector<S> = Arc<dyn Fn(String) -> BoxFuture<io::Result<S>> + Send + Sync>;

/// Events of one subscription. Ends when the client closes.
pub struct Subscription {
    token: SubscriptionToken,
    events: mpsc::Receiver<SubscriptionEvent>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("token", &self.token).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event, or `None` once the client is gone.
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut self.events).poll_next(cx)).await
    }

    /// Ends the subscription (also done on drop).
    pub fn unsubscribe(self) {}
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<SubscriptionEvent>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.unbounded_send(Command::Unsubscribe(self.token));
    }
}

enum Command {
    Call {
        method: String,
        params: Option<Box<RawValue>>,
        timeout: Option<Duration>,
        reply: oneshot::Sender<CallResult>,
    },
    Batch {
        calls: Vec<(String, Option<Box<RawValue>>)>,
        reply: oneshot::Sender<Vec<Result<Box<RawValue>, ClientError>>>,
    },
    Notify {
        method: String,
        params: Option<Box<RawValue>>,
    },
    Subscribe {
        topic: String,
        events: mpsc::Sender<SubscriptionEvent>,
        reply: oneshot::Sender<Result<SubscriptionToken, ClientError>>,
    },
    Unsubscribe(SubscriptionToken),
    Close(oneshot::Sender<()>),
}

/// A reconnecting JSON-RPC client. Cheap to clone; the connection closes when the last
/// clone is dropped or [`close`](Self::close) is called.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`ws://host:port/path`) and returns once the first WebSocket
    /// handshake succeeded; the client then reconnects on its own when the connection drops
    /// (unless `options.config.reconnect` is `None`).
    pub async fn connect<R, S>(
        rt: R,
        connector: Connector<S>,
        url: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError>
    where
        R: Runtime,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (authority, request) = options.request(url)?;
        let (commands, rx) = mpsc::unbounded();
        let (ready_tx, ready_rx) = oneshot::channel();
        let driver = ClientDriver {
            rt: rt.clone(),
            connector,
            authority,
            request,
            ws_config: Arc::new(options.ws),
            backoff: options.config.reconnect.map(Backoff::new),
            dispatch: ClientDispatch::new(ClientSession::new(options.config)),
            entropy: crate::os_entropy(),
            commands: rx,
            link: Link::Idle,
            ready: Some(ready_tx),
            timer: None,
            closing: None,
            close_started: false,
        };
        rt.spawn(Box::pin(driver));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Self { commands }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands.unbounded_send(command).map_err(|_| ClientError::Closed)
    }

    /// Calls `method` with `params` (anything serializable; `()` sends none) and
    /// deserializes the result.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, ClientError> {
        let raw = self.call_raw(method, params, None).await?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// [`call`](Self::call) with its own timeout instead of the configured one.
    pub async fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let raw = self.call_raw(method, params, Some(timeout)).await?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A call whose result stays raw JSON.
    pub async fn call_raw(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Call {
            method: method.to_owned(),
            params: to_params(params)?,
            timeout,
            reply,
        })?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends a notification (no answer; dropped while disconnected).
    pub fn notify(&self, method: &str, params: impl Serialize) -> Result<(), ClientError> {
        self.send(Command::Notify { method: method.to_owned(), params: to_params(params)? })
    }

    /// Sends several calls as one batch; results come back in the same order.
    pub async fn batch<P: Serialize>(
        &self,
        calls: Vec<(&str, P)>,
    ) -> Result<Vec<Result<Box<RawValue>, ClientError>>, ClientError> {
        let calls = calls
            .into_iter()
            .map(|(m, p)| Ok((m.to_owned(), to_params(p)?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Batch { calls, reply })?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Subscribes to `topic`. The subscription survives reconnects: it is renewed with the
    /// last sequence number seen, so values still in the server's replay window arrive
    /// exactly once, in order, and older ones are reported as a gap.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, ClientError> {
        let (events_tx, events) = mpsc::channel(1024);
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe { topic: topic.to_owned(), events: events_tx, reply })?;
        let token = rx.await.map_err(|_| ClientError::Closed)??;
        Ok(Subscription { token, events, commands: self.commands.clone() })
    }

    /// Closes the connection (1000) and fails what is pending with [`ClientError::Closed`].
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn to_params(params: impl Serialize) -> Result<Option<Box<RawValue>>, ClientError> {
    let raw =
        serde_json::value::to_raw_value(&params).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(if raw.get() == "null" { None } else { Some(raw) })
}

// One per client, and `Up` is where it spends its life: boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Link<S> {
    /// Not connected; the next attempt starts now.
    Idle,
    Connecting(BoxFuture<io::Result<S>>),
    /// Transport up; WebSocket handshake in progress or open.
    Up {
        stream: S,
        ws: Box<ws::Connection>,
        open: bool,
        eof: bool,
    },
    /// Waiting before the next attempt.
    Waiting(BoxFuture<()>),
    /// Done for good.
    Closed,
}

struct ClientDriver<R: Runtime, S> {
    rt: R,
    connector: Connector<S>,
    authority: String,
    request: ClientRequest,
    ws_config: Arc<ws::Config>,
    backoff: Option<Backoff>,
    dispatch: ClientDispatch<FuturesChannels>,
    entropy: Box<wsrpc_core::Xoshiro256>,
    commands: mpsc::UnboundedReceiver<Command>,
    link: Link<S>,
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
    timer: Option<(Instant, BoxFuture<()>)>,
    closing: Option<oneshot::Sender<()>>,
    close_started: bool,
}

/// futures-channel as the dispatcher's channels.
struct FuturesChannels;

/// A oneshot sender as the dispatcher's reply.
struct Reply<T>(oneshot::Sender<T>);

impl<T> OneShot<T> for Reply<T> {
    fn send(self, value: T) {
        let _ = self.0.send(value);
    }
}

/// A bounded mpsc sender as a subscription's event sink.
struct Events(mpsc::Sender<SubscriptionEvent>);

impl EventSink for Events {
    fn try_send(&mut self, event: SubscriptionEvent) -> Result<(), SinkError> {
        self.0
            .try_send(event)
            .map_err(|e| if e.is_full() { SinkError::Full } else { SinkError::Gone })
    }
}

impl Channels for FuturesChannels {
    type Call = Reply<CallResult>;
    type Batch = Reply<Vec<CallResult>>;
    type Subscribe = Reply<Result<SubscriptionToken, ClientError>>;
    type Events = Events;
}

impl<R: Runtime, S> Future for ClientDriver<R, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..64 {
            let progress = this.round(cx);
            if matches!(this.link, Link::Closed) {
                this.fail_everything();
                if let Some(tx) = this.closing.take() {
                    let _ = tx.send(());
                }
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<R: Runtime, S> ClientDriver<R, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn round(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.rt.now();
        let mut progress = self.commands(cx, now);
        progress |= self.link(cx, now);
        if let Some(deadline) = self.next_deadline() {
            if deadline <= now {
                self.fire_timers(now);
                progress = true;
            } else {
                if self.timer.as_ref().is_none_or(|(at, _)| *at != deadline) {
                    self.timer = Some((deadline, self.rt.timer(deadline)));
                }
                if let Some((_, t)) = self.timer.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        self.timer = None;
                        self.fire_timers(self.rt.now());
                        progress = true;
                    }
                }
            }
        }
        progress |= self.dispatch.dispatch();
        progress
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ws = match &self.link {
            Link::Up { ws, .. } => ws.poll_timeout(),
            _ => None,
        };
        [self.dispatch.session().poll_timeout(), ws].into_iter().flatten().min()
    }

    fn fire_timers(&mut self, now: Instant) {
        self.dispatch.session_mut().handle_timeout(now);
        if let Link::Up { ws, .. } = &mut self.link {
            ws.handle_timeout(now);
        }
    }

    fn commands(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        loop {
            match Pin::new(&mut self.commands).poll_next(cx) {
                Poll::Ready(Some(cmd)) => {
                    progress = true;
                    self.command(cmd, now);
                }
                Poll::Ready(None) => {
                    // Every handle is gone.
                    if self.closing.is_none() {
                        self.begin_close(now);
                    }
                    return progress;
                }
                Poll::Pending => return progress,
            }
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Call { method, params, timeout, reply } => {
                self.dispatch.call(now, &method, params.as_deref(), timeout, Reply(reply));
            }
            Command::Batch { calls, reply } => {
                let refs: Vec<(&str, Option<&RawValue>)> =
                    calls.iter().map(|(m, p)| (m.as_str(), p.as_deref())).collect();
                self.dispatch.batch(now, &refs, Reply(reply));
            }
            Command::Notify { method, params } => self.dispatch.notify(&method, params.as_deref()),
            Command::Subscribe { topic, events, reply } => {
                self.dispatch.subscribe(now, &topic, Events(events), Reply(reply));
            }
            Command::Unsubscribe(token) => self.dispatch.unsubscribe(now, token),
            Command::Close(done) => {
                self.closing = Some(done);
                self.begin_close(now);
            }
        }
    }

    fn begin_close(&mut self, now: Instant) {
        if self.close_started {
            return;
        }
        self.close_started = true;
        self.backoff = None;
        match &mut self.link {
            Link::Up { ws, open: true, .. } => {
                let _ = ws.close(now, CloseCode::NORMAL, "client closing");
            }
            _ => self.link = Link::Closed,
        }
        self.dispatch.session_mut().close();
    }

    /// Advances the connection; true when something happened.
    fn link(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        match &mut self.link {
            Link::Closed => false,
            Link::Idle => {
                self.link = Link::Connecting((self.connector)(self.authority.clone()));
                true
            }
            Link::Connecting(fut) => match fut.as_mut().poll(cx) {
                Poll::Pending => false,
                Poll::Ready(Ok(stream)) => {
                    let ws = Box::new(ws::Connection::client(
                        self.ws_config.clone(),
                        &self.request,
                        crate::os_entropy(),
                        now,
                    ));
                    self.link = Link::Up { stream, ws, open: false, eof: false };
                    true
                }
                Poll::Ready(Err(e)) => {
                    log::debug!(target: "wsrpc::rpc", "connect to {} failed: {e}", self.authority);
                    self.lost(now, ClientError::Connect(e.to_string()));
                    true
                }
            },
            Link::Waiting(timer) => {
                if timer.as_mut().poll(cx).is_ready() {
                    self.link = Link::Idle;
                    true
                } else {
                    false
                }
            }
            Link::Up { .. } => self.drive_up(cx, now),
        }
    }

    fn drive_up(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Link::Up { stream, ws, open, eof } = &mut self.link else { return false };
        let mut progress = false;
        // Session output onto the WebSocket.
        if *open {
            while let Some(msg) = self.dispatch.session_mut().poll_message() {
                let _ = ws.send(now, ws::Message { kind: MessageKind::Text, data: msg });
                progress = true;
            }
        }
        // Read.
        if !*eof {
            let session = self.dispatch.session_mut();
            let mut became_open = false;
            let read =
                crate::with_read_buffer(|buf| match Pin::new(&mut *stream).poll_read(cx, buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        *eof = true;
                        ws.handle_eof(now);
                        true
                    }
                    Poll::Ready(Ok(n)) => {
                        ws.handle_all_input(now, &buf[..n], |_, event| match event {
                            Event::Connected(_) => became_open = true,
                            Event::Message(m) if m.kind == MessageKind::Text => {
                                session.handle_message(now, &m.data);
                            }
                            _ => {}
                        });
                        true
                    }
                    Poll::Pending => false,
                });
            progress |= read;
            if became_open {
                *open = true;
                session.handle_connected(now);
                if let Some(b) = self.backoff.as_mut() {
                    b.reset();
                }
                if let Some(tx) = self.ready.take() {
                    let _ = tx.send(Ok(()));
                }
            }
        }
        while let Some(event) = ws.poll_event() {
            let _ = event;
        }
        // Write.
        loop {
            let mut slices = [IoSlice::new(&[]); 32];
            let n = ws.poll_transmit_vectored(&mut slices);
            if n == 0 {
                break;
            }
            match Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    ws.handle_eof(now);
                    *eof = true;
                    break;
                }
                Poll::Ready(Ok(w)) => {
                    ws.advance_transmit(w);
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        let _ = Pin::new(&mut *stream).poll_flush(cx);
        if ws.is_finished() {
            let error = ws.error().cloned();
            log::debug!(target: "wsrpc::rpc", "connection to {} ended: {error:?}", self.authority);
            let err = match error {
                Some(ws::Error::Handshake(h)) => ClientError::Connect(h.to_string()),
                _ => ClientError::Disconnected,
            };
            self.lost(now, err);
            progress = true;
        }
        progress
    }

    /// The connection is gone: fail calls in flight, then wait and reconnect (or stop).
    fn lost(&mut self, now: Instant, error: ClientError) {
        self.dispatch.session_mut().handle_disconnected(now);
        if self.closing.is_some() {
            self.link = Link::Closed;
            return;
        }
        if let Some(tx) = self.ready.take() {
            // The first connection failed: report it instead of retrying in the background.
            let _ = tx.send(Err(error));
            self.link = Link::Closed;
            return;
        }
        match self.backoff.as_mut() {
            Some(backoff) => {
                let delay = backoff.next_delay(&mut *self.entropy as &mut dyn Entropy);
                log::info!(target: "wsrpc::rpc", "reconnecting to {} in {delay:?}", self.authority);
                self.link = Link::Waiting(self.rt.timer(now + delay));
            }
            None => self.link = Link::Closed,
        }
    }

    fn fail_everything(&mut self) {
        self.dispatch.fail_all(ClientError::Closed);
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(Err(ClientError::Closed));
        }
    }
}
