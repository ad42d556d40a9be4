//! The reconnecting JSON-RPC client as async handles: typed calls with timeouts,
//! notifications, batches and subscriptions as streams.
//!
//! One task per client runs the drive loop over the core's
//! [`ClientConnection`](wsrpc_core::engine::ClientConnection), which decides everything
//! (link states, backoff, resubscription, stalls); the [`Client`] handle sends it commands
//! through a channel.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use wsrpc_core::Now;
use wsrpc_core::engine::{ClientConnection, ConnEvent, Endpoint, Input};
use wsrpc_core::rpc::client::{
    ClientError, ClientOptions, SubscriptionEvent, SubscriptionToken, decode,
};
use wsrpc_core::rpc::dispatch::{CallResult, Channels, Command, EventSink, OneShot, SinkError};
use wsrpc_core::rpc::{Method, NotifyTo, SubscribeTo, SubscriptionItem};

use crate::Runtime;
use crate::drive::{Connector, Driver, Outside};

/// Events a subscription buffers before the slowest reader starts losing values (reported
/// as a gap).
const SUBSCRIPTION_BUFFER: usize = 1024;

/// futures-channel as the client connection's channels.
#[derive(Debug)]
struct FuturesChannels;

/// A oneshot sender as a reply.
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
    type Reply<T: Send + 'static> = Reply<T>;
    type Events = Events;
}

type Commands = mpsc::UnboundedSender<Command<FuturesChannels>>;

/// Events of one subscription, in order; it ends when the client closes or the server
/// refuses the subscription after a reconnect. Dropping it unsubscribes.
///
/// A subscription by topic name yields raw [`SubscriptionEvent`]s; one by a typed
/// [`Topic<T>`](wsrpc_core::rpc::Topic) yields [`TopicEvent<T>`](wsrpc_core::rpc::TopicEvent)s,
/// values decoded as they are taken (a value that is not a `T` comes as
/// `TopicEvent::Malformed`, and the subscription goes on).
///
/// Up to 1024 events wait here; beyond that, values are dropped and reported as one
/// [`SubscriptionEvent::Gap`] with `lagged: true` instead of growing memory without bound.
pub struct Subscription<I: SubscriptionItem = SubscriptionEvent> {
    token: SubscriptionToken,
    events: mpsc::Receiver<SubscriptionEvent>,
    commands: Commands,
    items: PhantomData<fn() -> I>,
}

impl<I: SubscriptionItem> std::fmt::Debug for Subscription<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("token", &self.token).finish_non_exhaustive()
    }
}

impl<I: SubscriptionItem> Subscription<I> {
    /// The next event, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<I> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Ends the subscription (also done on drop).
    pub fn unsubscribe(self) {}
}

impl<I: SubscriptionItem> Stream for Subscription<I> {
    type Item = I;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<I>> {
        Pin::new(&mut self.events).poll_next(cx).map(|e| e.map(I::from_event))
    }
}

impl<I: SubscriptionItem> Drop for Subscription<I> {
    fn drop(&mut self) {
        let _ = self.commands.unbounded_send(Command::Unsubscribe(self.token));
    }
}

/// A reconnecting JSON-RPC client. Cheap to clone; the connection closes when
/// [`close`](Self::close) is called, or when the last clone and the last [`Subscription`] are
/// dropped.
///
/// Dropping the last handle tells the client's task to close with 1000 and finish the close
/// handshake; the task does that on the runtime after the drop returns. It cannot when the
/// runtime stops first: a program that drops its client and returns from `main` at once may
/// exit before the close is written, and the server then sees the connection end without one
/// (1006). Await [`close`](Self::close) before exiting to be sure.
#[derive(Clone)]
pub struct Client {
    commands: Commands,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// What the client's task hears from outside its transport: the handles' commands.
struct ClientSide {
    commands: mpsc::UnboundedReceiver<Command<FuturesChannels>>,
    open: bool,
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
}

impl Outside<ClientConnection<FuturesChannels>> for ClientSide {
    fn feed(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut ClientConnection<FuturesChannels>,
        now: Now,
    ) -> Result<bool, ()> {
        let mut progress = false;
        while self.open {
            match Pin::new(&mut self.commands).poll_next(cx) {
                Poll::Ready(Some(command)) => conn.handle_command(now, command),
                Poll::Ready(None) => {
                    // Every handle is gone.
                    self.open = false;
                    conn.handle(now, Input::Shutdown);
                }
                Poll::Pending => break,
            }
            progress = true;
        }
        Ok(progress)
    }

    fn event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Connected { .. } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            ConnEvent::Failed(error) => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(error));
                }
            }
            other => log::trace!(target: "wsrpc::rpc", "{other:?}"),
        }
    }
}

impl Client {
    /// Connects to `url` (`ws://` or `wss://`, and the options' fallbacks) with
    /// `connector`, and returns once the first WebSocket handshake succeeded, or why none
    /// did. The client then reconnects on its own when the connection drops (unless
    /// reconnecting is off), renewing its subscriptions.
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
        let conn = ClientConnection::new(url, options, crate::os_entropy(), rt.now())?;
        let (commands, rx) = mpsc::unbounded();
        let (ready, ready_rx) = oneshot::channel();
        let side = ClientSide { commands: rx, open: true, ready: Some(ready) };
        rt.spawn(Box::pin(Driver::new(rt.clone(), conn, side, None, Some(connector))));
        ready_rx.await.map_err(|_| ClientError::Closed)??;
        Ok(Self { commands })
    }

    fn send(&self, command: Command<FuturesChannels>) -> Result<(), ClientError> {
        self.commands.unbounded_send(command).map_err(|_| ClientError::Closed)
    }

    /// Calls `method` with `params` (anything serializable; `()` sends none) and
    /// deserializes the result. Waits at most the configured call timeout.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, ClientError> {
        decode(&self.call_raw(method, params, None).await?)
    }

    /// [`call`](Self::call) with its own timeout instead of the configured one.
    pub async fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        decode(&self.call_raw(method, params, Some(timeout)).await?)
    }

    /// Calls a typed [`Method`]: `params` must be its `P`, and the result is its `R`.
    ///
    /// ```no_run
    /// # async fn demo(client: wsrpc_futures::Client) -> Result<(), wsrpc_core::prelude::ClientError> {
    /// use wsrpc_core::rpc::Method;
    /// const ADD: Method<(i64, i64), i64> = Method::new("add");
    /// let sum = client.request(ADD, (2, 3)).await?;
    /// assert_eq!(sum, 5);
    /// # Ok(()) }
    /// ```
    pub async fn request<P: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<P, R>,
        params: P,
    ) -> Result<R, ClientError> {
        self.request_with_timeout_opt(method, params, None).await
    }

    /// [`request`](Self::request) with its own timeout instead of the configured one.
    pub async fn request_with_timeout<P: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<P, R>,
        params: P,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        self.request_with_timeout_opt(method, params, Some(timeout)).await
    }

    async fn request_with_timeout_opt<P: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<P, R>,
        params: P,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::request(method, params, timeout, Reply(reply))?)?;
        decode(&rx.await.map_err(|_| ClientError::Closed)??)
    }

    /// A call whose result stays raw JSON; `timeout` replaces the configured one.
    pub async fn call_raw(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::call(method, params, timeout, Reply(reply))?)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends a notification (no answer; dropped while disconnected): a typed
    /// [`Notification<P>`](wsrpc_core::rpc::Notification) with its `P`, or a method name with
    /// any params.
    pub fn notify<P: Serialize>(
        &self,
        method: impl NotifyTo<P>,
        params: P,
    ) -> Result<(), ClientError> {
        self.send(Command::notify(method, params)?)
    }

    /// Sends several calls as one batch message; the results come back in the same order.
    pub async fn batch<P: Serialize>(
        &self,
        calls: Vec<(&str, P)>,
    ) -> Result<Vec<CallResult>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::batch(calls, Reply(reply))?)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Subscribes to `topic`: a typed [`Topic<T>`](wsrpc_core::rpc::Topic) (the subscription
    /// yields `TopicEvent<T>`) or a topic name (raw `SubscriptionEvent`s). The subscription
    /// survives reconnects: it is renewed with the last sequence number seen, so values still
    /// in the server's replay window arrive exactly once, in order, and older ones are
    /// reported as a gap.
    pub async fn subscribe<T: SubscribeTo>(
        &self,
        topic: T,
    ) -> Result<Subscription<T::Item>, ClientError> {
        self.subscribe_filtered(topic, ()).await
    }

    /// Subscribes to `topic` with a filter param, which the server's subscription handler
    /// for it reads and applies to every publish (`eth_subscribe("logs", {address, topics})`
    /// style; sent as `{"topic", "filter"}`, or `[topic, filter]` with Ethereum-style method
    /// names). The filter goes with every renewal after a reconnect. `()` subscribes
    /// unfiltered, like [`subscribe`](Self::subscribe).
    pub async fn subscribe_filtered<T: SubscribeTo, F: Serialize>(
        &self,
        topic: T,
        filter: F,
    ) -> Result<Subscription<T::Item>, ClientError> {
        let (events_tx, events) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let (reply, rx) = oneshot::channel();
        let topic = topic.topic_name();
        self.send(Command::subscribe(topic, filter, Events(events_tx), Reply(reply))?)?;
        let token = rx.await.map_err(|_| ClientError::Closed)??;
        Ok(Subscription { token, events, commands: self.commands.clone(), items: PhantomData })
    }

    /// Closes the connection (1000) for every clone and fails what is pending with
    /// [`ClientError::Closed`]; completes once the client is done.
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Close(Reply(done))).is_ok() {
            let _ = rx.await;
        }
    }
}
