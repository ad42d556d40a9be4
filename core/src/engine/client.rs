//! The reconnecting client connection: one [`ClientSession`] whose WebSocket transports come
//! and go. Link states, backoff, resubscription with `since`, stall detection and the order
//! of end of file and queued output are decided here, once, for every adapter.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::{Attempt, ConnEvent, Endpoint, Input, Now, Outgoing, Output, Stall, Transmit};
use crate::Xoshiro256;
use crate::entropy::Entropy;
use crate::rpc::client::{
    Backoff, ClientError, ClientOptions, ClientSession, ConnectError, SubscriptionToken,
};
use crate::rpc::dispatch::{Channels, ClientDispatch, Command, OneShot};
use crate::ws::{self, CloseCode, Event, HandshakeError, MessageKind};

/// Connect timeout when the WebSocket configuration has no handshake timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client connects: a parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    url: Arc<str>,
    host: String,
    port: u16,
    tls: bool,
    authority: String,
    path: String,
}

impl Target {
    /// Parses `ws://host[:port][/path][?query]` or the same with `wss://` (RFC 6455 §3: no
    /// fragment, no user info; the port defaults to 80 or 443).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::InvalidUrl(format!("{why}: {url}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = if scheme.eq_ignore_ascii_case("ws") {
            false
        } else if scheme.eq_ignore_ascii_case("wss") {
            true
        } else {
            return Err(bad("the scheme must be ws or wss"));
        };
        if rest.contains('#') {
            return Err(bad("WebSocket URLs have no fragment"));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(bad("user info is not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad("invalid port")),
            },
        };
        let authority =
            if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self { url: url.into(), host: host.to_owned(), port, tls, authority, path })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host name or address, without brackets (for name resolution and TLS SNI).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the transport must be TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `host:port` as the `Host` header and a socket address lookup write it.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target: path and query.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// What [`Output::Connect`] asks for: open a transport to `target` (TCP, then TLS when
/// [`Target::is_tls`]) and report back with [`Input::Connected`]`(attempt)` once it is up or
/// [`Input::ConnectFailed`]`(attempt, error)`; an answer after `deadline` is ignored.
#[derive(Clone, Copy, Debug)]
pub struct ConnectRequest<'a> {
    /// Name it when reporting the result.
    pub attempt: Attempt,
    /// Where to connect.
    pub target: &'a Target,
    /// Give up at this instant (the connection reports a timeout itself then).
    pub deadline: Instant,
}

enum Link {
    /// Not connected: connect at `at`.
    Idle { at: Instant },
    /// The adapter is opening a transport to `targets[target]`.
    Connecting { attempt: Attempt, target: usize, deadline: Instant },
    /// A transport is up: WebSocket handshake in progress (`open` false) or open.
    Up { ws: Box<ws::Connection>, target: usize, open: bool, eof: bool },
    /// Done for good.
    Closed,
}

/// A reconnecting JSON-RPC client over WebSocket, as a sans-IO [`Endpoint`].
///
/// Commands from the client's handles go in with [`handle_command`](Self::handle_command);
/// answers and subscription events leave through the adapter's [`Channels`]. The transport
/// is the adapter's: [`Output::Connect`] asks for one, [`Output::CloseTransport`] drops it.
///
/// - The first connection: every URL is tried once; when all fail, [`ConnEvent::Failed`]
///   and [`Output::Finished`] (the adapter's `connect` returns that error).
/// - Later losses: calls in flight fail with [`ClientError::Disconnected`] (never re-sent),
///   queued calls wait for the next connection, subscriptions are renewed with the last
///   sequence number seen. The next attempt goes to the next URL after a delay of
///   `min(1 s · 2ⁿ, 30 s)`, a random half of it jitter ([`ConnEvent::Reconnecting`]).
/// - A refusal that retrying cannot fix (401, 403, a bad handshake) ends the client with
///   [`ConnEvent::Failed`], as does a loss with reconnecting turned off.
/// - A server that takes no bytes for the longer of the pong and close timeouts while output
///   waits is given up like a lost connection.
pub struct ClientConnection<C: Channels> {
    targets: Vec<Target>,
    next: usize,
    options: ClientOptions,
    ws_config: Arc<ws::Config>,
    entropy: Xoshiro256,
    backoff: Option<Backoff>,
    dispatch: ClientDispatch<C>,
    link: Link,
    attempt: Attempt,
    /// A connection was up at least once.
    up_once: bool,
    /// Failed attempts since the last success, for the first connection's round of URLs.
    failures: usize,
    closing: bool,
    /// Told once the client has closed.
    done: Vec<C::Reply<()>>,
    events: VecDeque<ConnEvent>,
    /// The adapter must drop its transport before anything else.
    close_transport: bool,
    /// `Transmit` was offered in this drain (see the module docs).
    offered: bool,
    stall: Stall,
    stall_limit: Duration,
    connect_timeout: Duration,
    /// How the server closed, for the error of the loss.
    last_close: Option<(CloseCode, String)>,
}

impl<C: Channels> std::fmt::Debug for ClientConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = match &self.link {
            Link::Idle { .. } => "idle",
            Link::Connecting { .. } => "connecting",
            Link::Up { open: false, .. } => "handshaking",
            Link::Up { .. } => "open",
            Link::Closed => "closed",
        };
        f.debug_struct("ClientConnection")
            .field("url", &self.targets[self.next].url)
            .field("link", &link)
            .field("dispatch", &self.dispatch)
            .finish_non_exhaustive()
    }
}

impl<C: Channels> ClientConnection<C> {
    /// A client of `url` (and the options' fallbacks) that connects at once. `entropy`
    /// seeds mask keys and jitter (from the OS in adapters, a constant in tests).
    pub fn new(
        url: &str,
        options: ClientOptions,
        mut entropy: Box<dyn Entropy>,
        now: Now,
    ) -> Result<Self, ClientError> {
        let mut targets = vec![Target::parse(url)?];
        for u in options.fallbacks() {
            targets.push(Target::parse(u)?);
        }
        let mut seed = [0u8; 8];
        entropy.fill(&mut seed);
        let ws_config = Arc::new(options.ws_config().clone());
        Ok(Self {
            targets,
            next: 0,
            backoff: options.client_config().reconnect.map(Backoff::new),
            dispatch: ClientDispatch::new(ClientSession::new(options.client_config().clone())),
            stall_limit: super::stall_limit(&ws_config),
            connect_timeout: ws_config.handshake_timeout.unwrap_or(CONNECT_TIMEOUT),
            ws_config,
            options,
            entropy: Xoshiro256::from_seed(u64::from_le_bytes(seed)),
            link: Link::Idle { at: now.mono },
            attempt: Attempt(0),
            up_once: false,
            failures: 0,
            closing: false,
            done: Vec::new(),
            events: VecDeque::new(),
            close_transport: false,
            offered: false,
            stall: Stall::default(),
            last_close: None,
        })
    }

    /// Whether a WebSocket is open now.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up { open: true, .. })
    }

    /// Whether the client has closed for good.
    pub fn is_closed(&self) -> bool {
        matches!(self.link, Link::Closed)
    }

    /// The targets, in the order they are tried.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Calls waiting for an answer or for a slot.
    pub fn pending_calls(&self) -> usize {
        self.dispatch.session().pending_calls()
    }

    /// Carries out a command from a client handle. Once the client is closing, commands are
    /// answered with [`ClientError::Closed`].
    pub fn handle_command(&mut self, now: Now, command: Command<C>) {
        self.offered = false;
        if self.closing || self.is_closed() {
            return command.refuse(ClientError::Closed);
        }
        let t = now.mono;
        match command {
            Command::Call { method, params, timeout, reply } => {
                self.dispatch.call(t, &method, params.as_deref(), timeout, reply);
            }
            Command::Batch { calls, reply } => {
                let refs: Vec<(&str, Option<&serde_json::value::RawValue>)> =
                    calls.iter().map(|(m, p)| (m.as_str(), p.as_deref())).collect();
                self.dispatch.batch(t, &refs, reply);
            }
            Command::Notify { method, params } => self.dispatch.notify(&method, params.as_deref()),
            Command::Subscribe { topic, filter, events, reply } => {
                self.dispatch.subscribe(t, &topic, filter, events, reply);
            }
            Command::Unsubscribe(token) => self.unsubscribe(now, token),
            Command::Close(done) => {
                self.done.push(done);
                self.begin_close(now);
            }
        }
    }

    fn unsubscribe(&mut self, now: Now, token: SubscriptionToken) {
        self.dispatch.unsubscribe(now.mono, token);
    }

    fn begin_close(&mut self, now: Now) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.backoff = None;
        match &mut self.link {
            Link::Up { ws, open: true, .. } if ws.is_open() => {
                let _ = ws.close(now.mono, CloseCode::NORMAL, "client closing");
            }
            Link::Up { .. } | Link::Connecting { .. } => {
                self.close_transport = true;
                self.link = Link::Closed;
            }
            Link::Idle { .. } => self.link = Link::Closed,
            Link::Closed => {}
        }
    }

    /// The transport is gone (or never came): fail calls in flight, then wait and connect
    /// again, or stop.
    fn lost(&mut self, now: Now, error: ClientError) {
        self.dispatch.session_mut().handle_disconnected(now.mono);
        if matches!(self.link, Link::Up { .. } | Link::Connecting { .. }) {
            self.close_transport = true;
        }
        self.stall.clear();
        self.offered = false;
        self.last_close = None;
        if self.closing {
            self.link = Link::Closed;
            return;
        }
        log::debug!(target: "wsrpc::rpc", "connection to {} lost: {error}", self.targets[self.next].url);
        self.failures += 1;
        let n = self.targets.len();
        self.next = (self.next + 1) % n;
        if !self.up_once {
            // The first connection: try every URL once before giving up (another server may
            // take what this one refused).
            if self.failures < n {
                self.link = Link::Idle { at: now.mono };
                return;
            }
            return self.give_up(error);
        }
        let Some(backoff) = self.backoff.as_mut().filter(|_| error.is_transient()) else {
            return self.give_up(error);
        };
        let after = backoff.next_delay(&mut self.entropy);
        let attempt = backoff.attempts();
        log::info!(target: "wsrpc::rpc", "reconnecting to {} in {after:?} (attempt {attempt}): {error}", self.targets[self.next].url);
        self.events.push_back(ConnEvent::Reconnecting { attempt, after, error });
        self.link = Link::Idle { at: crate::later(now.mono, after) };
    }

    fn give_up(&mut self, error: ClientError) {
        log::info!(target: "wsrpc::rpc", "client gives up: {error}");
        self.events.push_back(ConnEvent::Failed(error));
        self.link = Link::Closed;
    }

    /// After input: if the WebSocket ended, the transport is lost.
    fn check_finished(&mut self, now: Now) {
        let Link::Up { ws, open, .. } = &self.link else { return };
        if !ws.is_finished() {
            return;
        }
        let was_open = *open;
        let error = match ws.error() {
            Some(ws::Error::Handshake(HandshakeError::Rejected { status })) => {
                ClientError::Rejected { status: *status }
            }
            Some(ws::Error::Handshake(h)) => ClientError::Handshake(h.clone()),
            Some(ws::Error::Protocol(p)) => {
                ClientError::Protocol { code: p.close_code(), reason: p.to_string() }
            }
            // The transport just ended: a lost connection, not a violation.
            Some(ws::Error::Eof) => ClientError::Disconnected,
            Some(other) => {
                ClientError::Protocol { code: CloseCode::ABNORMAL, reason: other.to_string() }
            }
            None => match self.last_close.take() {
                Some((code, reason)) => ClientError::Protocol { code, reason },
                None => ClientError::Disconnected,
            },
        };
        let _ = was_open;
        self.lost(now, error);
    }

    fn on_ws_event(&mut self, now: Now, event: Event) {
        let Link::Up { target, open, .. } = &mut self.link else { return };
        match event {
            Event::Connected(_) => {
                *open = true;
                let url = self.targets[*target].url.clone();
                self.up_once = true;
                self.failures = 0;
                if let Some(b) = self.backoff.as_mut() {
                    b.reset();
                }
                self.dispatch.session_mut().handle_connected(now.mono);
                log::debug!(target: "wsrpc::rpc", "connected to {url}");
                self.events.push_back(ConnEvent::Connected { url });
            }
            Event::Message(m) if m.kind == MessageKind::Text => {
                self.dispatch.session_mut().handle_message(now.mono, &m.data);
            }
            Event::Message(_) => {
                if let Link::Up { ws, .. } = &mut self.link {
                    let _ = ws.close(
                        now.mono,
                        CloseCode::UNSUPPORTED_DATA,
                        "binary messages are not accepted",
                    );
                }
            }
            Event::Closed(c) => {
                self.last_close = Some((c.code, c.reason.clone()));
                self.events.push_back(ConnEvent::Closed {
                    code: c.code,
                    reason: c.reason,
                    clean: c.clean,
                    initiator: c.initiator,
                });
            }
        }
    }

    fn read(&mut self, now: Now, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let Link::Up { ws, eof: false, .. } = &mut self.link else { return };
            let used = ws.handle_input(now.mono, rest);
            rest = &rest[used..];
            loop {
                let Link::Up { ws, .. } = &mut self.link else { return };
                let Some(event) = ws.poll_event() else { break };
                self.on_ws_event(now, event);
            }
            if used == 0 {
                break;
            }
        }
    }

    fn drain_ws_events(&mut self, now: Now) {
        loop {
            let Link::Up { ws, .. } = &mut self.link else { return };
            let Some(event) = ws.poll_event() else { return };
            self.on_ws_event(now, event);
        }
    }

    fn timeout(&mut self, now: Now) {
        self.dispatch.session_mut().handle_timeout(now.mono);
        match &mut self.link {
            Link::Connecting { deadline, .. } if *deadline <= now.mono => {
                self.lost(now, ClientError::Connect(ConnectError::TimedOut));
            }
            Link::Up { ws, .. } => {
                ws.handle_timeout(now.mono);
                let stalled = ws.transmit_len() > 0
                    && self.stall.deadline(self.stall_limit).is_some_and(|d| d <= now.mono);
                self.drain_ws_events(now);
                if stalled {
                    log::debug!(target: "wsrpc::rpc", "server stopped reading; dropping the connection");
                    let reason = "server stopped reading".to_owned();
                    self.lost(now, ClientError::Protocol { code: CloseCode::ABNORMAL, reason });
                } else {
                    self.check_finished(now);
                }
            }
            _ => {}
        }
    }

    /// Moves the session's messages onto the open WebSocket.
    fn pump(&mut self, now: Now) {
        let Link::Up { ws, open: true, .. } = &mut self.link else { return };
        while let Some(msg) = self.dispatch.session_mut().poll_message() {
            if ws.send(now.mono, ws::Message { kind: MessageKind::Text, data: msg }).is_err() {
                break;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let link = match &self.link {
            Link::Idle { at } => Some(*at),
            Link::Connecting { deadline, .. } => Some(*deadline),
            Link::Up { ws, .. } => [ws.poll_timeout(), self.stall.deadline(self.stall_limit)]
                .into_iter()
                .flatten()
                .min(),
            Link::Closed => None,
        };
        [link, self.dispatch.session().poll_timeout()].into_iter().flatten().min()
    }

    fn finish(&mut self) {
        self.dispatch.fail_all(ClientError::Closed);
        for done in self.done.drain(..) {
            done.send(());
        }
    }
}

impl<C: Channels> Outgoing for ClientConnection<C> {
    fn slices<'s>(&'s mut self, dst: &mut [IoSlice<'s>]) -> usize {
        match &mut self.link {
            Link::Up { ws, .. } => ws.poll_transmit_vectored(dst),
            _ => 0,
        }
    }

    fn front(&mut self) -> &[u8] {
        match &mut self.link {
            Link::Up { ws, .. } => ws.poll_transmit().unwrap_or(&[]),
            _ => &[],
        }
    }

    fn pending(&self) -> usize {
        match &self.link {
            Link::Up { ws, .. } => ws.transmit_len(),
            _ => 0,
        }
    }

    fn advance(&mut self, n: usize, now: Instant) {
        let Link::Up { ws, .. } = &mut self.link else { return };
        ws.advance_transmit(n);
        if n > 0 {
            self.offered = false;
            self.stall.progress(now, ws.transmit_len() > 0);
        }
    }
}

impl<C: Channels> Endpoint for ClientConnection<C> {
    fn handle(&mut self, now: Now, input: Input<'_>) -> usize {
        self.offered = false;
        let mut used = 0;
        match input {
            Input::Bytes(data) => {
                used = data.len();
                self.read(now, data);
                self.check_finished(now);
            }
            Input::Eof | Input::Broken => {
                if let Link::Up { ws, eof, .. } = &mut self.link {
                    *eof = true;
                    ws.handle_eof(now.mono);
                }
                self.drain_ws_events(now);
                self.check_finished(now);
            }
            Input::Timeout => self.timeout(now),
            Input::Shutdown => self.begin_close(now),
            Input::Connected(attempt) => {
                let Link::Connecting { attempt: a, target, .. } = self.link else { return 0 };
                if a != attempt {
                    return 0;
                }
                let t = &self.targets[target];
                let request = self.options.request(t.authority(), t.path());
                let entropy = Box::new(Xoshiro256::from_seed(self.entropy.next_u64()));
                let ws =
                    ws::Connection::client(self.ws_config.clone(), &request, entropy, now.mono);
                self.link = Link::Up { ws: Box::new(ws), target, open: false, eof: false };
            }
            Input::ConnectFailed(attempt, error) => {
                if matches!(self.link, Link::Connecting { attempt: a, .. } if a == attempt) {
                    self.lost(now, ClientError::Connect(error));
                }
            }
            Input::Wakeup | Input::Completed(..) => {}
        }
        used
    }

    fn poll_output(&mut self, now: Now) -> Output<'_> {
        if std::mem::take(&mut self.close_transport) {
            return Output::CloseTransport;
        }
        self.dispatch.dispatch();
        if let Some(event) = self.events.pop_front() {
            return Output::Event(event);
        }
        match &self.link {
            Link::Idle { at } if *at <= now.mono => {
                self.attempt = Attempt(self.attempt.0 + 1);
                let deadline = crate::later(now.mono, self.connect_timeout);
                self.link = Link::Connecting { attempt: self.attempt, target: self.next, deadline };
                return Output::Connect(ConnectRequest {
                    attempt: self.attempt,
                    target: &self.targets[self.next],
                    deadline,
                });
            }
            Link::Up { .. } => {
                self.pump(now);
                if self.pending() > 0 {
                    self.stall.waiting(now.mono);
                    if !std::mem::replace(&mut self.offered, true) {
                        return Output::Transmit(Transmit { out: self, now: now.mono });
                    }
                } else {
                    self.stall.clear();
                }
            }
            Link::Closed => {
                self.finish();
                return Output::Finished;
            }
            _ => {}
        }
        // A drain ends here: the next call starts another, which offers `Transmit` again.
        self.offered = false;
        Output::Wait(self.next_deadline())
    }

    fn wants_read(&self) -> bool {
        matches!(self.link, Link::Up { eof: false, .. })
    }

    fn set_waker(&mut self, _: &Waker) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_targets() {
        let t = Target::parse("ws://127.0.0.1:9/rpc?x=1").unwrap();
        assert_eq!((t.host(), t.port(), t.is_tls()), ("127.0.0.1", 9, false));
        assert_eq!((t.authority(), t.path()), ("127.0.0.1:9", "/rpc?x=1"));
        let t = Target::parse("ws://host?token=a").unwrap();
        assert_eq!((t.authority(), t.path()), ("host:80", "/?token=a"));
        let t = Target::parse("WSS://[::1]").unwrap();
        assert_eq!(
            (t.host(), t.port(), t.is_tls(), t.authority()),
            ("::1", 443, true, "[::1]:443")
        );
        let t = Target::parse("wss://node.example.org:8443/v1/abc").unwrap();
        assert_eq!((t.host(), t.port(), t.path()), ("node.example.org", 8443, "/v1/abc"));
        for bad in [
            "http://x",
            "ws:///path",
            "ws://x:0",
            "ws://x:99999",
            "ws://x:8a",
            "ws://u@x",
            "ws://x/#f",
            "ws://[::1",
            "ws://[::1]x",
            "x",
        ] {
            assert!(matches!(Target::parse(bad), Err(ClientError::InvalidUrl(_))), "{bad}");
        }
    }
}
