//! The reconnecting JSON-RPC client as blocking handles: calls with timeouts, notifications,
//! batches and subscriptions as iterators.
//!
//! One I/O thread per client runs the same reactor as the server over the core's
//! [`ClientConnection`], which decides everything (link states, backoff, resubscription,
//! stalls); [`Client`] handles send it commands and wait on per-call channels. Transports are
//! opened by a short-lived thread per attempt (name resolution blocks).

use std::marker::PhantomData;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use wsrpc_core::Now;
use wsrpc_core::engine::{ClientConnection, ConnEvent, Endpoint, Input};
use wsrpc_core::rpc::client::{
    ClientError, ClientOptions, ConnectError, SubscriptionEvent, SubscriptionToken, TlsError,
    decode,
};
use wsrpc_core::rpc::dispatch::{CallResult, Channels, Command, EventSink, OneShot, SinkError};
use wsrpc_core::rpc::{Method, NotifyTo, SubscribeTo, SubscriptionItem};

use crate::reactor::{ConnectTo, Core, Mailbox, Message, Reactor, Role};
use crate::tls_layer::TlsLayer;

/// Events a subscription buffers before the slowest reader starts losing values (reported
/// as a gap).
const SUBSCRIPTION_BUFFER: usize = 1024;
/// Stack of the client's I/O thread.
const IO_STACK: usize = 256 * 1024;
/// Stack of a connect attempt (name resolution may go through the system resolver).
const CONNECTOR_STACK: usize = 256 * 1024;

/// crossbeam-channel as the client connection's channels.
#[derive(Debug)]
struct CrossbeamChannels;

/// A bounded(1) sender as a reply.
struct Reply<T>(Sender<T>);

impl<T> OneShot<T> for Reply<T> {
    fn send(self, value: T) {
        let _ = self.0.try_send(value);
    }
}

/// A bounded sender as a subscription's event sink.
struct Events(Sender<SubscriptionEvent>);

impl EventSink for Events {
    fn try_send(&mut self, event: SubscriptionEvent) -> Result<(), SinkError> {
        self.0.try_send(event).map_err(|e| match e {
            TrySendError::Full(_) => SinkError::Full,
            TrySendError::Disconnected(_) => SinkError::Gone,
        })
    }
}

impl Channels for CrossbeamChannels {
    type Reply<T: Send + 'static> = Reply<T>;
    type Events = Events;
}

/// What the client's I/O thread is sent.
enum ClientMessage {
    Command(Command<CrossbeamChannels>),
    /// The last handle is gone.
    Dropped,
}

/// Shared by the handles of one client; when the last one goes, the client closes.
struct Handle {
    mailbox: Mailbox<ClientMessage>,
    /// Disconnected when the I/O thread has finished.
    finished: Receiver<()>,
    /// Longest wait for the close handshake when the last handle drops.
    linger: Duration,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closes with 1000, and waits (at most the close timeout) for the close handshake,
        // so a program that drops its client and exits still says goodbye.
        if self.mailbox.send(Message::Role(ClientMessage::Dropped)) {
            let _ = self.finished.recv_timeout(self.linger);
        }
    }
}

impl Handle {
    fn send(&self, command: Command<CrossbeamChannels>) -> Result<(), ClientError> {
        if self.mailbox.send(Message::Role(ClientMessage::Command(command))) {
            Ok(())
        } else {
            Err(ClientError::Closed)
        }
    }
}

/// The events of one subscription, in order: a blocking receiver and an iterator. It ends
/// (`recv` returns `None`) when the client closes or the server refuses the subscription
/// after a reconnect (an [`SubscriptionEvent::Ended`] comes first). Dropping it unsubscribes.
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
    events: Receiver<SubscriptionEvent>,
    handle: Arc<Handle>,
    items: PhantomData<fn() -> I>,
}

impl<I: SubscriptionItem> std::fmt::Debug for Subscription<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("token", &self.token).finish_non_exhaustive()
    }
}

impl<I: SubscriptionItem> Subscription<I> {
    /// Waits for the next event; `None` once the subscription has ended.
    pub fn recv(&self) -> Option<I> {
        self.events.recv().ok().map(I::from_event)
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<I, RecvTimeoutError> {
        self.events.recv_timeout(timeout).map(I::from_event)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Result<I, TryRecvError> {
        self.events.try_recv().map(I::from_event)
    }

    /// Ends the subscription (also done on drop).
    pub fn unsubscribe(self) {}
}

impl<I: SubscriptionItem> Iterator for Subscription<I> {
    type Item = I;

    /// Like [`recv`](Subscription::recv): blocks for the next event.
    fn next(&mut self) -> Option<I> {
        self.recv()
    }
}

impl<I: SubscriptionItem> Drop for Subscription<I> {
    fn drop(&mut self) {
        let _ = self.handle.send(Command::Unsubscribe(self.token));
    }
}

/// A reconnecting JSON-RPC client. `Send + Sync` and cheap to clone; every method blocks the
/// calling thread only. The connection closes when [`close`](Self::close) is called, or when
/// the last clone and the last [`Subscription`] are dropped: that drop sends close 1000 and
/// waits for the server's answer (at most the WebSocket close timeout, 5 s by default), so
/// the server sees a clean close even when the program exits right after.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// The client role of an I/O thread: one connection.
struct Connecting {
    /// For the transport settings (a TLS configuration).
    options: ClientOptions,
    ready: Option<Sender<Result<(), ClientError>>>,
    finished: bool,
}

impl Role for Connecting {
    type Conn = ClientConnection<CrossbeamChannels>;
    type Command = ClientMessage;

    fn command(&mut self, core: &mut Core<Self>, message: ClientMessage, now: Now) {
        core.with(0, |conn| match message {
            ClientMessage::Command(command) => conn.handle_command(now, command),
            ClientMessage::Dropped => {
                conn.handle(now, Input::Shutdown);
            }
        });
    }

    fn event(&mut self, _key: usize, event: ConnEvent) {
        let outcome = match event {
            ConnEvent::Connected { .. } => Ok(()),
            ConnEvent::Failed(error) => Err(error),
            other => return log::trace!(target: "wsrpc::rpc", "{other:?}"),
        };
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(outcome);
        }
    }

    fn connect(&mut self, to: ConnectTo<'_, ClientMessage>) {
        let tls = match to.target.is_tls() {
            true => match wsrpc_tls::client_connection(&self.options, to.target) {
                Ok(tls) => Some(tls),
                Err(e) => return to.fail(e),
            },
            false => None,
        };
        let (host, port, deadline) = (to.target.host().to_owned(), to.target.port(), to.deadline);
        let (mailbox, key, generation, attempt) =
            (to.mailbox.clone(), to.key, to.generation, to.attempt);
        let spawned = thread::Builder::new()
            .name("wsrpc-connect".into())
            .stack_size(CONNECTOR_STACK)
            .spawn(move || {
                let result = connect_tcp(&host, port, deadline).and_then(|stream| match tls {
                    None => Ok((stream, None)),
                    Some(tls) => tls_handshake(&stream, tls, deadline)
                        .map(|tls| (stream, Some(TlsLayer::client(tls)))),
                });
                mailbox.send(Message::Connected { key, generation, attempt, result });
            });
        if let Err(e) = spawned {
            to.fail(ConnectError::from_io(&e));
        }
    }

    fn finished(&mut self, _key: usize) {
        self.finished = true;
    }

    fn done(&self, _core: &Core<Self>) -> bool {
        self.finished
    }
}

/// Resolves `host` and connects to the first address that answers before `deadline`.
pub(crate) fn connect_tcp(
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| ConnectError::Dns(e.to_string()))?.collect();
    let mut last = ConnectError::Dns(format!("{host} has no address"));
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectError::TimedOut);
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = ConnectError::from_io(&e),
        }
    }
    Err(last)
}

/// Completes a client TLS handshake on the connect thread's blocking socket before
/// `deadline`; the reactor then carries the connection on.
fn tls_handshake(
    mut stream: &TcpStream,
    mut tls: rustls::ClientConnection,
    deadline: Instant,
) -> Result<rustls::ClientConnection, ConnectError> {
    while tls.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectError::TimedOut);
        }
        let timeouts =
            stream.set_read_timeout(Some(left)).and(stream.set_write_timeout(Some(left)));
        timeouts.map_err(|e| ConnectError::from_io(&e))?;
        match tls.complete_io(&mut stream) {
            Ok((0, 0)) if tls.is_handshaking() => {
                return Err(ConnectError::Tls(TlsError::Handshake(
                    "the server closed the connection during the handshake".into(),
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(wsrpc_tls::connect_error(&e)),
        }
    }
    Ok(tls)
}

/// Connects to `url` (`ws://host:port/path`, or `wss://` over TLS with the options'
/// `rustls::ClientConfig` from [`TlsOptions::tls`](crate::TlsOptions::tls) or this build's
/// default trust; and the options' fallbacks) and returns once
/// the first WebSocket handshake succeeded, or why none did. Afterwards the client
/// reconnects on its own when the connection drops (unless reconnecting is off), renewing
/// its subscriptions.
pub fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    let settings = options.clone();
    let linger = options.ws_config().close_timeout.saturating_add(Duration::from_secs(1));
    let conn =
        ClientConnection::new(url, options, Box::new(crate::os_entropy()), crate::system_now())?;
    let (ready_tx, ready) = bounded(1);
    let role = Connecting { options: settings, ready: Some(ready_tx), finished: false };
    let mut reactor = Reactor::new(role, None, None)
        .map_err(|e| ClientError::Connect(ConnectError::from_io(&e)))?;
    let key = reactor.core_mut().insert(conn, None, None);
    debug_assert_eq!(key, 0, "the client is its reactor's only connection");
    let mailbox = reactor.core_mut().mailbox().clone();
    let (finishing, finished) = bounded::<()>(0);
    thread::Builder::new()
        .name("wsrpc-client".into())
        .stack_size(IO_STACK)
        .spawn(move || {
            reactor.run();
            drop(finishing);
        })
        .map_err(|e| ClientError::Connect(ConnectError::from_io(&e)))?;
    let handle = Arc::new(Handle { mailbox, finished, linger });
    match ready.recv() {
        Ok(Ok(())) => Ok(Client { handle }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Closed),
    }
}

impl Client {
    /// Calls `method` with `params` (anything serializable; `()` sends none) and
    /// deserializes the result. Waits at most the configured call timeout.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, ClientError> {
        decode(&self.call_raw(method, params, None)?)
    }

    /// [`call`](Self::call) with its own timeout instead of the configured one.
    pub fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        decode(&self.call_raw(method, params, Some(timeout))?)
    }

    /// Calls a typed [`Method`]: `params` must be its `P`, and the result is its `R`.
    ///
    /// ```no_run
    /// # fn demo(client: wsrpc_blocking::Client) -> Result<(), wsrpc_blocking::ClientError> {
    /// use wsrpc_blocking::Method;
    /// const ADD: Method<(i64, i64), i64> = Method::new("add");
    /// let sum = client.request(ADD, (2, 3))?;
    /// assert_eq!(sum, 5);
    /// # Ok(()) }
    /// ```
    pub fn request<P: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<P, R>,
        params: P,
    ) -> Result<R, ClientError> {
        self.request_with(method, params, None)
    }

    /// [`request`](Self::request) with its own timeout instead of the configured one.
    pub fn request_with_timeout<P: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<P, R>,
        params: P,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        self.request_with(method, params, Some(timeout))
    }

    fn request_with<P: Serialize, R: DeserializeOwned>(
        &self,
        method: Method<P, R>,
        params: P,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        let (reply, rx) = bounded(1);
        self.handle.send(Command::request(method, params, timeout, Reply(reply))?)?;
        decode(&rx.recv().unwrap_or(Err(ClientError::Closed))?)
    }

    /// A call whose result stays raw JSON; `timeout` replaces the configured one.
    pub fn call_raw(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, ClientError> {
        let (reply, rx) = bounded(1);
        self.handle.send(Command::call(method, params, timeout, Reply(reply))?)?;
        rx.recv().unwrap_or(Err(ClientError::Closed))
    }

    /// Sends a notification (no answer; dropped while disconnected): a typed
    /// [`Notification<P>`](wsrpc_core::rpc::Notification) with its `P`, or a method name with
    /// any params.
    pub fn notify<P: Serialize>(
        &self,
        method: impl NotifyTo<P>,
        params: P,
    ) -> Result<(), ClientError> {
        self.handle.send(Command::notify(method, params)?)
    }

    /// Sends several calls as one batch message; the results come back in the same order.
    pub fn batch<P: Serialize>(
        &self,
        calls: Vec<(&str, P)>,
    ) -> Result<Vec<CallResult>, ClientError> {
        let (reply, rx) = bounded(1);
        self.handle.send(Command::batch(calls, Reply(reply))?)?;
        rx.recv().map_err(|_| ClientError::Closed)
    }

    /// Subscribes to `topic`: a typed [`Topic<T>`](wsrpc_core::rpc::Topic) (the subscription
    /// yields `TopicEvent<T>`) or a topic name (raw `SubscriptionEvent`s). The subscription
    /// survives reconnects: it is renewed with the last sequence number seen, so values still
    /// in the server's replay window arrive exactly once, in order, and older ones are
    /// reported as a gap.
    pub fn subscribe<T: SubscribeTo>(
        &self,
        topic: T,
    ) -> Result<Subscription<T::Item>, ClientError> {
        self.subscribe_filtered(topic, ())
    }

    /// Subscribes to `topic` with a filter param, which the server's subscription handler
    /// for it reads and applies to every publish (`eth_subscribe("logs", {address, topics})`
    /// style; sent as `{"topic", "filter"}`, or `[topic, filter]` with Ethereum-style method
    /// names). The filter goes with every renewal after a reconnect. `()` subscribes
    /// unfiltered, like [`subscribe`](Self::subscribe).
    pub fn subscribe_filtered<T: SubscribeTo, F: Serialize>(
        &self,
        topic: T,
        filter: F,
    ) -> Result<Subscription<T::Item>, ClientError> {
        let (events_tx, events) = bounded(SUBSCRIPTION_BUFFER);
        let (reply, rx) = bounded(1);
        let topic = topic.topic_name();
        self.handle.send(Command::subscribe(topic, filter, Events(events_tx), Reply(reply))?)?;
        let token = rx.recv().map_err(|_| ClientError::Closed)??;
        Ok(Subscription { token, events, handle: self.handle.clone(), items: PhantomData })
    }

    /// Closes the connection (1000) for every clone, fails what is pending with
    /// [`ClientError::Closed`] and waits until the client is done.
    pub fn close(self) {
        let (done, rx) = bounded(1);
        if self.handle.send(Command::Close(Reply(done))).is_ok() {
            let _ = rx.recv();
        }
    }
}
