//! The reconnecting JSON-RPC client: blocking calls with timeouts, notifications, batches and
//! subscriptions as iterators, over one WebSocket that comes back after it drops.
//!
//! One driver thread per client owns the socket's write side, a [`ws::Connection`] and the
//! [`ClientSession`]; [`Client`] handles send it commands and wait on per-call channels.

use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, Select, Sender, TryRecvError, TrySendError, bounded, unbounded,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use wsrpc_core::Xoshiro256;
use wsrpc_core::rpc::client::{
    Backoff, ClientError, ClientOptions, ClientSession, SubscriptionEvent, SubscriptionToken,
};
use wsrpc_core::rpc::dispatch::{
    CallResult, Channels, ClientDispatch, EventSink, OneShot, SinkError,
};
use wsrpc_core::ws::{self, ClientRequest, CloseCode, Event, MessageKind};

use crate::transport::{self, INPUT_CHUNKS, Stall, WRITE_SLICE};

/// Events a subscription buffers before the slowest reader starts losing values (reported
/// as a gap).
const SUBSCRIPTION_BUFFER: usize = 1024;
/// Commands taken per round, so a flood of calls cannot starve the socket.
const COMMANDS_PER_ROUND: usize = 256;
/// Stack of the client's driver thread.
const DRIVER_STACK: usize = 256 * 1024;
/// Stack of a connection attempt (name resolution may go through the system resolver).
const CONNECTOR_STACK: usize = 256 * 1024;
/// Connect timeout when the WebSocket configuration has no handshake timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The events of one subscription, in order: a blocking receiver and an iterator. It ends
/// (`recv` returns `None`) when the client closes or the server refuses the subscription
/// after a reconnect (an [`SubscriptionEvent::Ended`] comes first). Dropping it unsubscribes.
///
/// Up to 1024 events wait here; beyond that, values are dropped and reported as one
/// [`SubscriptionEvent::Gap`] with `lagged: true` instead of growing memory without bound.
pub struct Subscription {
    token: SubscriptionToken,
    events: Receiver<SubscriptionEvent>,
    commands: Sender<Command>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("token", &self.token).finish_non_exhaustive()
    }
}

impl Subscription {
    /// Waits for the next event; `None` once the subscription has ended.
    pub fn recv(&self) -> Option<SubscriptionEvent> {
        self.events.recv().ok()
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<SubscriptionEvent, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Result<SubscriptionEvent, TryRecvError> {
        self.events.try_recv()
    }

    /// Ends the subscription (also done on drop).
    pub fn unsubscribe(self) {}
}

impl Iterator for Subscription {
    type Item = SubscriptionEvent;

    /// Like [`recv`](Subscription::recv): blocks for the next event.
    fn next(&mut self) -> Option<SubscriptionEvent> {
        self.recv()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe(self.token));
    }
}

enum Command {
    Call {
        method: String,
        params: Option<Box<RawValue>>,
        timeout: Option<Duration>,
        reply: Sender<CallResult>,
    },
    Batch {
        calls: Vec<(String, Option<Box<RawValue>>)>,
        reply: Sender<Vec<CallResult>>,
    },
    Notify {
        method: String,
        params: Option<Box<RawValue>>,
    },
    Subscribe {
        topic: String,
        events: Sender<SubscriptionEvent>,
        reply: Sender<Result<SubscriptionToken, ClientError>>,
    },
    Unsubscribe(SubscriptionToken),
    /// Close; the sender is dropped when the driver thread ends.
    Close(Sender<()>),
}

/// A reconnecting JSON-RPC client. `Send + Sync` and cheap to clone; every method blocks the
/// calling thread only. The connection closes when [`close`](Self::close) is called, or when
/// the last clone and the last [`Subscription`] are dropped.
#[derive(Clone)]
pub struct Client {
    commands: Sender<Command>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// Connects to `url` (`ws://host:port/path`) and returns once the first WebSocket handshake
/// succeeded, or why it did not. Afterwards the client reconnects on its own when the
/// connection drops (unless `options.config.reconnect` is `None`), renewing its
/// subscriptions.
pub fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    let (authority, request) = options.request(url)?;
    let (commands, rx) = unbounded();
    let (ready_tx, ready) = bounded(1);
    let driver = ClientDriver {
        authority,
        request,
        connect_timeout: options.ws.handshake_timeout.unwrap_or(CONNECT_TIMEOUT),
        stall_limit: transport::stall_limit(&options.ws),
        ws_config: Arc::new(options.ws),
        backoff: options.config.reconnect.map(Backoff::new),
        dispatch: ClientDispatch::new(ClientSession::new(options.config)),
        entropy: crate::os_entropy(),
        commands: rx,
        commands_open: true,
        closing: false,
        link: Link::Idle,
        ready: Some(ready_tx),
        close_waiters: Vec::new(),
    };
    thread::Builder::new()
        .name("wsrpc-client".into())
        .stack_size(DRIVER_STACK)
        .spawn(move || driver.run())
        .map_err(|e| ClientError::Connect(format!("cannot start the client thread: {e}")))?;
    match ready.recv() {
        Ok(Ok(())) => Ok(Client { commands }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Closed),
    }
}

impl Client {
    fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands.send(command).map_err(|_| ClientError::Closed)
    }

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

    /// A call whose result stays raw JSON; `timeout` replaces the configured one.
    pub fn call_raw(
        &self,
        method: &str,
        params: impl Serialize,
        timeout: Option<Duration>,
    ) -> Result<Box<RawValue>, ClientError> {
        let (reply, rx) = bounded(1);
        self.send(Command::Call {
            method: method.to_owned(),
            params: to_params(params)?,
            timeout,
            reply,
        })?;
        rx.recv().unwrap_or(Err(ClientError::Closed))
    }

    /// Sends a notification (no answer; dropped while disconnected).
    pub fn notify(&self, method: &str, params: impl Serialize) -> Result<(), ClientError> {
        self.send(Command::Notify { method: method.to_owned(), params: to_params(params)? })
    }

    /// Sends several calls as one batch message; the results come back in the same order.
    /// An empty batch is answered at once without sending anything.
    pub fn batch<P: Serialize>(
        &self,
        calls: Vec<(&str, P)>,
    ) -> Result<Vec<Result<Box<RawValue>, ClientError>>, ClientError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let calls = calls
            .into_iter()
            .map(|(m, p)| Ok((m.to_owned(), to_params(p)?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        let (reply, rx) = bounded(1);
        self.send(Command::Batch { calls, reply })?;
        rx.recv().map_err(|_| ClientError::Closed)
    }

    /// Subscribes to `topic`. The subscription survives reconnects: it is renewed with the
    /// last sequence number seen, so values still in the server's replay window arrive
    /// exactly once, in order, and older ones are reported as a gap.
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, ClientError> {
        let (events_tx, events) = bounded(SUBSCRIPTION_BUFFER);
        let (reply, rx) = bounded(1);
        self.send(Command::Subscribe { topic: topic.to_owned(), events: events_tx, reply })?;
        let token = rx.recv().map_err(|_| ClientError::Closed)??;
        Ok(Subscription { token, events, commands: self.commands.clone() })
    }

    /// Closes the connection (1000) for every clone, fails what is pending with
    /// [`ClientError::Closed`] and waits until the client's threads are done with it.
    pub fn close(self) {
        let (done, rx) = bounded(1);
        if self.send(Command::Close(done)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn decode<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ClientError> {
    serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Serializes params; `null` (from `()`) means none.
fn to_params(params: impl Serialize) -> Result<Option<Box<RawValue>>, ClientError> {
    let raw =
        serde_json::value::to_raw_value(&params).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(if raw.get() == "null" { None } else { Some(raw) })
}

enum Link {
    /// Not connected; the next attempt starts now.
    Idle,
    /// A connector thread is opening the TCP connection.
    Connecting(Receiver<io::Result<TcpStream>>),
    /// Transport up; WebSocket handshake in progress or open.
    Up(Box<Up>),
    /// Waiting before the next attempt.
    Waiting(Instant),
    /// Done for good.
    Closed,
}

struct Up {
    stream: Arc<TcpStream>,
    input: Receiver<Vec<u8>>,
    ws: ws::Connection,
    open: bool,
    eof: bool,
    stall: Stall,
}

impl Drop for Up {
    fn drop(&mut self) {
        // Also ends the reader thread, blocked in `read`.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

struct ClientDriver {
    authority: String,
    request: ClientRequest,
    ws_config: Arc<ws::Config>,
    connect_timeout: Duration,
    stall_limit: Duration,
    backoff: Option<Backoff>,
    dispatch: ClientDispatch<CrossbeamChannels>,
    entropy: Xoshiro256,
    commands: Receiver<Command>,
    /// False once every handle is gone.
    commands_open: bool,
    closing: bool,
    link: Link,
    ready: Option<Sender<Result<(), ClientError>>>,
    /// `close()` callers, released when the thread ends.
    close_waiters: Vec<Sender<()>>,
}

impl ClientDriver {
    fn run(mut self) {
        loop {
            let now = Instant::now();
            let mut progress = self.take_commands(now);
            progress |= self.step(now);
            if self.next_deadline().is_some_and(|d| d <= now) {
                self.fire_timers(now);
                progress = true;
            }
            progress |= self.dispatch.dispatch();
            if matches!(self.link, Link::Closed) {
                break;
            }
            if !progress {
                self.wait();
            }
        }
        self.fail_everything();
        log::debug!(target: "wsrpc::rpc", "client for {} stopped", self.authority);
    }

    fn take_commands(&mut self, now: Instant) -> bool {
        let mut progress = false;
        for _ in 0..COMMANDS_PER_ROUND {
            if !self.commands_open {
                break;
            }
            match self.commands.try_recv() {
                Ok(cmd) => {
                    self.command(cmd, now);
                    progress = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // Every handle is gone.
                    self.commands_open = false;
                    if !self.closing {
                        self.begin_close(now);
                    }
                    progress = true;
                }
            }
        }
        progress
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        if self.closing {
            // Refuse new work; `Close` waiters are released when the thread ends.
            match cmd {
                Command::Call { reply, .. } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
                Command::Subscribe { reply, .. } => {
                    let _ = reply.send(Err(ClientError::Closed));
                }
                Command::Close(done) => self.close_waiters.push(done),
                Command::Batch { .. } | Command::Notify { .. } | Command::Unsubscribe(_) => {}
            }
            return;
        }
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
                self.close_waiters.push(done);
                self.begin_close(now);
            }
        }
    }

    fn begin_close(&mut self, now: Instant) {
        self.closing = true;
        self.backoff = None;
        match &mut self.link {
            Link::Up(up) if up.ws.is_open() => {
                let _ = up.ws.close(now, CloseCode::NORMAL, "client closing");
            }
            // Already closing: let the close handshake finish.
            Link::Up(up) if !up.ws.is_handshaking() => {}
            _ => self.link = Link::Closed,
        }
        self.dispatch.session_mut().close();
    }

    /// Advances the connection; true when something happened.
    fn step(&mut self, now: Instant) -> bool {
        match &mut self.link {
            Link::Closed => false,
            Link::Idle => {
                match self.spawn_connector() {
                    Ok(rx) => self.link = Link::Connecting(rx),
                    Err(e) => self.lost(now, ClientError::Connect(e.to_string())),
                }
                true
            }
            Link::Connecting(rx) => match rx.try_recv() {
                Err(TryRecvError::Empty) => false,
                Ok(Ok(stream)) => {
                    if let Err(e) = self.start_up(stream, now) {
                        log::debug!(target: "wsrpc::rpc", "cannot use the connection to {}: {e}", self.authority);
                        self.lost(now, ClientError::Connect(e.to_string()));
                    }
                    true
                }
                Ok(Err(e)) => {
                    log::debug!(target: "wsrpc::rpc", "connect to {} failed: {e}", self.authority);
                    self.lost(now, ClientError::Connect(e.to_string()));
                    true
                }
                Err(TryRecvError::Disconnected) => {
                    self.lost(now, ClientError::Connect("the connector thread failed".into()));
                    true
                }
            },
            Link::Waiting(until) => {
                if *until <= now {
                    self.link = Link::Idle;
                    true
                } else {
                    false
                }
            }
            Link::Up(_) => self.drive_up(now),
        }
    }

    /// Opens the TCP connection on a short-lived thread, so commands keep flowing meanwhile.
    fn spawn_connector(&self) -> io::Result<Receiver<io::Result<TcpStream>>> {
        let (tx, rx) = bounded(1);
        let authority = self.authority.clone();
        let timeout = self.connect_timeout;
        thread::Builder::new().name("wsrpc-connect".into()).stack_size(CONNECTOR_STACK).spawn(
            move || {
                let _ = tx.send(connect_tcp(&authority, timeout));
            },
        )?;
        Ok(rx)
    }

    fn start_up(&mut self, stream: TcpStream, now: Instant) -> io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(WRITE_SLICE))?;
        let stream = Arc::new(stream);
        let input = match transport::spawn_reader(stream.clone(), "wsrpc-client-read") {
            Ok(rx) => rx,
            Err(e) => {
                let _ = stream.shutdown(Shutdown::Both);
                return Err(e);
            }
        };
        let ws = ws::Connection::client(
            self.ws_config.clone(),
            &self.request,
            Box::new(crate::os_entropy()),
            now,
        );
        self.link = Link::Up(Box::new(Up {
            stream,
            input,
            ws,
            open: false,
            eof: false,
            stall: Stall::default(),
        }));
        Ok(())
    }

    fn drive_up(&mut self, now: Instant) -> bool {
        let Link::Up(up) = &mut self.link else { return false };
        let session = self.dispatch.session_mut();
        let mut progress = false;
        let mut became_open = false;
        for _ in 0..INPUT_CHUNKS {
            if up.eof {
                break;
            }
            match up.input.try_recv() {
                Ok(chunk) => {
                    progress = true;
                    up.ws.handle_all_input(now, &chunk, |_, event| {
                        on_event(session, event, now, &mut became_open)
                    });
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    progress = true;
                    up.eof = true;
                    up.ws.handle_eof(now);
                }
            }
        }
        while let Some(event) = up.ws.poll_event() {
            on_event(session, event, now, &mut became_open);
        }
        if became_open {
            up.open = true;
            log::debug!(target: "wsrpc::rpc", "connected to {}", self.authority);
            session.handle_connected(now);
            if let Some(b) = self.backoff.as_mut() {
                b.reset();
            }
            if let Some(tx) = self.ready.take() {
                let _ = tx.send(Ok(()));
            }
        }
        if up.open {
            while let Some(data) = session.poll_message() {
                let _ = up.ws.send(now, ws::Message { kind: MessageKind::Text, data });
                progress = true;
            }
        }
        match transport::flush(&up.stream, &mut up.ws) {
            Ok(flushed) => {
                progress |= flushed.wrote || flushed.pending;
                if up.stall.exceeded(Instant::now(), flushed, self.stall_limit) {
                    log::debug!(target: "wsrpc::rpc", "{} stopped reading; dropping the connection", self.authority);
                    self.lost(now, ClientError::Disconnected);
                    return true;
                }
            }
            Err(e) => {
                log::debug!(target: "wsrpc::rpc", "write to {} failed: {e}", self.authority);
                up.ws.handle_eof(now);
                progress = true;
            }
        }
        if up.ws.is_finished() {
            let err = match up.ws.error() {
                Some(ws::Error::Handshake(h)) => ClientError::Connect(h.to_string()),
                _ => ClientError::Disconnected,
            };
            log::debug!(target: "wsrpc::rpc", "connection to {} ended: {:?}", self.authority, up.ws.error());
            self.lost(now, err);
            return true;
        }
        progress
    }

    /// The connection is gone: fail calls in flight, then wait and reconnect (or stop).
    fn lost(&mut self, now: Instant, error: ClientError) {
        // Dropping the link shuts the socket down.
        self.link = Link::Idle;
        self.dispatch.session_mut().handle_disconnected(now);
        if self.closing {
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
                let delay = backoff.next_delay(&mut self.entropy);
                log::info!(target: "wsrpc::rpc", "reconnecting to {} in {delay:?}", self.authority);
                self.link = Link::Waiting(now + delay);
            }
            None => self.link = Link::Closed,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ws = match &self.link {
            Link::Up(up) => up.ws.poll_timeout(),
            _ => None,
        };
        [self.dispatch.session().poll_timeout(), ws].into_iter().flatten().min()
    }

    fn fire_timers(&mut self, now: Instant) {
        self.dispatch.session_mut().handle_timeout(now);
        if let Link::Up(up) = &mut self.link {
            up.ws.handle_timeout(now);
        }
    }

    /// Blocks until a command, input, a connection attempt's outcome or the next deadline.
    fn wait(&self) {
        let mut sel = Select::new();
        let mut operations = 0;
        if self.commands_open {
            sel.recv(&self.commands);
            operations += 1;
        }
        let mut deadline = self.next_deadline();
        match &self.link {
            Link::Connecting(rx) => {
                sel.recv(rx);
                operations += 1;
            }
            Link::Up(up) if !up.eof => {
                sel.recv(&up.input);
                operations += 1;
            }
            Link::Waiting(until) => deadline = Some(deadline.map_or(*until, |d| d.min(*until))),
            _ => {}
        }
        match deadline {
            Some(d) => {
                let _ = sel.ready_deadline(d);
            }
            None if operations > 0 => {
                sel.ready();
            }
            // Nothing can happen: not reachable, but never spin.
            None => thread::sleep(WRITE_SLICE),
        }
    }

    fn fail_everything(&mut self) {
        self.dispatch.fail_all(ClientError::Closed);
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(Err(ClientError::Closed));
        }
    }
}

/// crossbeam-channel as the dispatcher's channels.
struct CrossbeamChannels;

/// A bounded(1) sender as the dispatcher's reply.
struct Reply<T>(Sender<T>);

impl<T> OneShot<T> for Reply<T> {
    fn send(self, value: T) {
        let _ = self.0.send(value);
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
    type Call = Reply<CallResult>;
    type Batch = Reply<Vec<CallResult>>;
    type Subscribe = Reply<Result<SubscriptionToken, ClientError>>;
    type Events = Events;
}

/// Routes one WebSocket event of the client connection.
fn on_event(session: &mut ClientSession, event: Event, now: Instant, became_open: &mut bool) {
    match event {
        Event::Connected(_) => *became_open = true,
        Event::Message(m) if m.kind == MessageKind::Text => {
            let understood = session.handle_message(now, &m.data);
            if !understood {
                log::debug!(target: "wsrpc::rpc", "ignored a message that is not JSON-RPC");
            }
        }
        Event::Closed(c) => {
            log::debug!(target: "wsrpc::ws", "client connection closed code={} clean={}", c.code, c.clean);
        }
        _ => {}
    }
}

/// Connects over TCP to `authority` (`host:port`), trying each resolved address.
fn connect_tcp(authority: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("no address for {authority}"));
    for addr in authority.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
