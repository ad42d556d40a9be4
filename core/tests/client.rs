//! The reconnecting client connection against the real server connection, over an in-memory
//! network on a virtual clock: first connect, losses mid-call, backoff with jitter,
//! resubscription with `since`, gaps, stalls, refusals, fallback URLs and closing.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::json;
use wsrpc_core::Xoshiro256;
use wsrpc_core::auth::{Hs256Jwt, OriginPolicy};
use wsrpc_core::engine::{
    Attempt, ClientConnection, ConnEvent, Endpoint, HandlerResult, Input, Output, ServerConnection,
};
use wsrpc_core::hub::HubConfig;
use wsrpc_core::rpc::client::{
    ClientError, ClientOptions, ConnectError, SubscriptionEvent, SubscriptionToken,
};
use wsrpc_core::rpc::dispatch::{CallResult, Channels, Command, EventSink, OneShot, SinkError};
use wsrpc_core::rpc::{Router, Work};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::ws::CloseCode;
use wsrpc_core::{Now, UnixTime};

// ---- channels that record what they are given --------------------------------------------

type Log<T> = Arc<Mutex<Vec<T>>>;

struct To<T>(Log<T>);
impl<T> OneShot<T> for To<T> {
    fn send(self, value: T) {
        self.0.lock().unwrap().push(value);
    }
}

struct Events(Log<SubscriptionEvent>);
impl EventSink for Events {
    fn try_send(&mut self, event: SubscriptionEvent) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

struct Test;
impl Channels for Test {
    type Reply<T: Send + 'static> = To<T>;
    type Events = Events;
}

fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

// ---- the network -------------------------------------------------------------------------

/// What the next connect attempt meets.
#[derive(Clone, Debug)]
enum Listener {
    /// A server of `Net::service` accepts.
    Accept,
    /// The connect fails.
    Fail(ConnectError),
    /// The connect never completes.
    Silent,
}

fn run(work: Work) -> HandlerResult {
    match work {
        Work::Future(mut fut) => {
            let Poll::Ready(r) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
                panic!("test handlers complete at once")
            };
            r
        }
        Work::Blocking(call) => call(),
    }
}

/// A client and the servers it reaches, wired in memory, on a virtual clock.
struct Net {
    client: ClientConnection<Test>,
    now: Now,
    service: Arc<Service>,
    /// The server side of the current transport.
    server: Option<ServerConnection>,
    /// By URL: what a connect meets (default `Accept`).
    listeners: Vec<(String, Listener)>,
    /// Whether the server reads what the client sends (false: its receive window is full).
    server_reads: bool,
    /// Connect attempts: when, and to which URL.
    connects: Vec<(Instant, String)>,
    events: Vec<(Instant, ConnEvent)>,
    finished: bool,
    client_deadline: Option<Instant>,
    server_deadline: Option<Instant>,
}

fn start() -> Now {
    Now::new(Instant::now(), UnixTime(Duration::from_secs(1_700_000_000)))
}

fn router() -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b))
        .method("whoami", |(): (), ctx| Ok(ctx.principal.id.clone()))
        // "prices" with an optional floor: only values at or above it are delivered.
        .subscription("prices", |call| {
            let min: Option<i64> = call.filter()?;
            let target = wsrpc_core::rpc::SubscriptionTarget::topic("prices");
            Ok(match min {
                Some(min) => target.with_filter(move |p: &wsrpc_core::hub::Payload<'_>| {
                    p.value().as_i64().is_some_and(|v| v >= min)
                }),
                None => target,
            })
        });
    r
}

fn unlimited() -> ServiceConfig {
    let mut c = ServiceConfig::default();
    c.limits = wsrpc_core::limit::LimitConfig::disabled();
    c
}

impl Net {
    fn new(options: ClientOptions) -> Self {
        Self::with(unlimited(), "ws://a.example:8766/", options)
    }

    fn with(config: ServiceConfig, url: &str, options: ClientOptions) -> Self {
        let now = start();
        let service = Service::new(config, router(), now);
        let client =
            ClientConnection::new(url, options, Box::new(Xoshiro256::from_seed(7)), now).unwrap();
        Self {
            client,
            now,
            service,
            server: None,
            listeners: Vec::new(),
            server_reads: true,
            connects: Vec::new(),
            events: Vec::new(),
            finished: false,
            client_deadline: None,
            server_deadline: None,
        }
    }

    fn listener(&mut self, url: &str, l: Listener) {
        self.listeners.retain(|(u, _)| u != url);
        self.listeners.push((url.to_owned(), l));
    }

    /// Moves everything that can move at the current time.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = self.drain_client();
            moved |= self.drain_server();
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn drain_client(&mut self) -> bool {
        let mut moved = false;
        let mut to_server = Vec::new();
        loop {
            match self.client.poll_output(self.now) {
                Output::Event(e) => self.events.push((self.now.mono, e)),
                Output::Connect(req) => {
                    let (attempt, url) = (req.attempt, req.target.url().to_owned());
                    self.connects.push((self.now.mono, url.clone()));
                    let l = self
                        .listeners
                        .iter()
                        .find(|(u, _)| *u == url)
                        .map_or(Listener::Accept, |(_, l)| l.clone());
                    self.connect(attempt, l);
                }
                Output::Transmit(mut tx) => {
                    if self.server.is_none() || !self.server_reads {
                        continue; // dropped without advancing: the transport took nothing
                    }
                    let mut slices = [IoSlice::new(&[]); 32];
                    let k = tx.slices(&mut slices);
                    let mut n = 0;
                    for s in &slices[..k] {
                        to_server.extend_from_slice(s);
                        n += s.len();
                    }
                    tx.advance(n);
                }
                Output::CloseTransport => {
                    if let Some(mut s) = self.server.take() {
                        // The server sees the transport end.
                        s.handle(self.now, Input::Broken);
                    }
                }
                Output::Finished => {
                    self.finished = true;
                    self.client_deadline = None;
                    break;
                }
                Output::Wait(d) => {
                    self.client_deadline = d;
                    break;
                }
                other => panic!("a client never asks for {other:?}"),
            }
            moved = true;
        }
        if let Some(server) = self.server.as_mut() {
            let mut at = 0;
            while at < to_server.len() {
                let n = server.handle(self.now, Input::Bytes(&to_server[at..]));
                assert!(n > 0, "the test server always reads");
                at += n;
            }
        }
        moved || !to_server.is_empty()
    }

    fn connect(&mut self, attempt: Attempt, l: Listener) {
        match l {
            Listener::Accept => {
                self.server = Some(ServerConnection::new(self.service.clone(), self.now));
                self.client.handle(self.now, Input::Connected(attempt));
            }
            Listener::Fail(e) => {
                self.client.handle(self.now, Input::ConnectFailed(attempt, e));
            }
            Listener::Silent => {}
        }
    }

    fn drain_server(&mut self) -> bool {
        let Some(server) = self.server.as_mut() else { return false };
        let mut to_client = Vec::new();
        let mut eof = false;
        let mut gone = false;
        let mut moved = false;
        loop {
            match server.poll_output(self.now) {
                Output::Event(_) => {}
                Output::Spawn(id, work) => {
                    let r = run(work);
                    server.handle(self.now, Input::Completed(id, r));
                }
                Output::Transmit(mut tx) => {
                    let mut slices = [IoSlice::new(&[]); 32];
                    let k = tx.slices(&mut slices);
                    let mut n = 0;
                    for s in &slices[..k] {
                        to_client.extend_from_slice(s);
                        n += s.len();
                    }
                    tx.advance(n);
                }
                Output::ShutdownWrite => eof = true,
                Output::Finished => {
                    gone = true;
                    break;
                }
                Output::Wait(d) => {
                    self.server_deadline = d;
                    break;
                }
                other => panic!("a server never asks for {other:?}"),
            }
            moved = true;
        }
        if !to_client.is_empty() {
            self.client.handle(self.now, Input::Bytes(&to_client));
        }
        if gone {
            self.server = None;
            self.server_deadline = None;
            self.client.handle(self.now, Input::Eof);
        } else if eof {
            self.client.handle(self.now, Input::Eof);
        }
        moved || !to_client.is_empty()
    }

    /// Runs the clock forward by `d`, firing every deadline on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now.mono + d;
        loop {
            self.settle();
            let next =
                [self.client_deadline, self.server_deadline.filter(|_| self.server.is_some())]
                    .into_iter()
                    .flatten()
                    .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.at(t);
                    self.client.handle(self.now, Input::Timeout);
                    if let Some(s) = self.server.as_mut() {
                        s.handle(self.now, Input::Timeout);
                    }
                }
                _ => break,
            }
        }
        self.now = self.now.at(end);
        self.settle();
    }

    /// The server side vanishes (its process died): the client's transport breaks.
    fn kill_server(&mut self) {
        self.server = None;
        self.client.handle(self.now, Input::Broken);
        self.settle();
    }

    fn call(&mut self, method: &str, params: serde_json::Value) -> Log<CallResult> {
        let out = log();
        let cmd = Command::call(method, params, None, To(out.clone())).unwrap();
        self.client.handle_command(self.now, cmd);
        self.settle();
        out
    }

    fn subscribe(
        &mut self,
        topic: &str,
    ) -> (Log<Result<SubscriptionToken, ClientError>>, Log<SubscriptionEvent>) {
        self.subscribe_filtered(topic, serde_json::Value::Null)
    }

    fn subscribe_filtered(
        &mut self,
        topic: &str,
        filter: serde_json::Value,
    ) -> (Log<Result<SubscriptionToken, ClientError>>, Log<SubscriptionEvent>) {
        let (reply, events) = (log(), log());
        let cmd =
            Command::subscribe(topic, filter, Events(events.clone()), To(reply.clone())).unwrap();
        self.client.handle_command(self.now, cmd);
        self.settle();
        (reply, events)
    }

    fn reconnect_delays(&self) -> Vec<Duration> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                ConnEvent::Reconnecting { after, .. } => Some(*after),
                _ => None,
            })
            .collect()
    }

    fn failed(&self) -> Option<&ClientError> {
        self.events.iter().find_map(|(_, e)| match e {
            ConnEvent::Failed(e) => Some(e),
            _ => None,
        })
    }

    fn seqs(events: &Log<SubscriptionEvent>) -> Vec<u64> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                SubscriptionEvent::Notification { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }
}

fn result(log: &Log<CallResult>) -> Option<CallResult> {
    log.lock().unwrap().first().cloned()
}

/// The error a call failed with (`None` while unanswered or when it succeeded).
fn error(log: &Log<CallResult>) -> Option<ClientError> {
    result(log).and_then(Result::err)
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn connects_calls_and_reports_the_connection() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    assert!(net.client.is_connected());
    assert!(
        matches!(&net.events[0].1, ConnEvent::Connected { url } if &**url == "ws://a.example:8766/")
    );
    let r = net.call("add", json!([2, 3]));
    assert_eq!(result(&r).unwrap().unwrap().get(), "5");
}

#[test]
fn a_refused_first_connect_fails_the_client_with_its_cause() {
    let mut net = Net::new(ClientOptions::default());
    net.listener("ws://a.example:8766/", Listener::Fail(ConnectError::Refused));
    // A call made before the connection is up waits for it, then fails with the client.
    let r = net.call("add", json!([1, 1]));
    net.settle();
    assert_eq!(net.failed(), Some(&ClientError::Connect(ConnectError::Refused)));
    assert!(net.finished && net.client.is_closed());
    assert_eq!(error(&r), Some(ClientError::Closed));
    assert_eq!(net.connects.len(), 1, "no retry in the background");
}

#[test]
fn a_silent_first_connect_times_out_at_the_handshake_timeout() {
    let mut net = Net::new(ClientOptions::default());
    net.listener("ws://a.example:8766/", Listener::Silent);
    net.advance(Duration::from_secs(9));
    assert!(net.failed().is_none());
    net.advance(Duration::from_secs(2));
    assert_eq!(net.failed(), Some(&ClientError::Connect(ConnectError::TimedOut)));
}

#[test]
fn refusals_are_typed_with_their_status() {
    let mut config = unlimited();
    config.auth.origin = OriginPolicy::Loopback;
    let options = ClientOptions::default().header("Origin", "https://evil.example");
    let mut net = Net::with(config, "ws://a.example:8766/", options);
    net.settle();
    assert_eq!(net.failed(), Some(&ClientError::Rejected { status: 403 }));
}

#[test]
fn a_server_gone_mid_call_fails_the_call_and_reconnects_with_jittered_backoff() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    // A call in flight when the server dies: the server never answers it.
    net.server_reads = false;
    let r = net.call("add", json!([1, 2]));
    net.kill_server();
    assert_eq!(error(&r), Some(ClientError::Disconnected));
    net.server_reads = true;
    // Every later attempt is refused: delays 1, 2, 4, 8, 16, 30, 30 s ceilings, each with a
    // random half of jitter.
    net.listener("ws://a.example:8766/", Listener::Fail(ConnectError::Refused));
    net.advance(Duration::from_secs(200));
    let delays = net.reconnect_delays();
    assert!(delays.len() >= 7, "{delays:?}");
    let ceiling = |i: usize| Duration::from_secs(1 << i.min(5)).min(Duration::from_secs(30));
    for (i, d) in delays.iter().enumerate() {
        assert!(*d >= ceiling(i) / 2 && *d <= ceiling(i), "delay {i}: {d:?} vs {:?}", ceiling(i));
    }
    // Jittered: the delays are not their ceilings, nor one fixed fraction of them.
    let fractions: Vec<f64> = delays
        .iter()
        .enumerate()
        .map(|(i, d)| d.as_secs_f64() / ceiling(i).as_secs_f64())
        .collect();
    assert!(fractions.iter().any(|f| *f < 1.0), "no jitter: {delays:?}");
    assert!(fractions.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3), "fixed fraction: {delays:?}");
    // Each attempt happens when its delay says.
    for (i, w) in net.connects.windows(2).enumerate() {
        assert_eq!(w[1].0 - w[0].0, delays[i], "attempt {}", i + 1);
    }
    // The server comes back: the next attempt succeeds and the backoff starts over.
    net.listener("ws://a.example:8766/", Listener::Accept);
    net.advance(Duration::from_secs(31));
    assert!(net.client.is_connected());
    let r = net.call("add", json!([2, 2]));
    assert_eq!(result(&r).unwrap().unwrap().get(), "4");
    net.kill_server();
    let last = *net.reconnect_delays().last().unwrap();
    assert!(last <= Duration::from_secs(1), "backoff reset after success: {last:?}");
}

#[test]
fn subscriptions_resume_with_since_and_no_duplicate() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    let (reply, events) = net.subscribe("prices");
    assert!(reply.lock().unwrap()[0].is_ok());
    for i in 1..=3 {
        net.service.publish("prices", &i).unwrap();
    }
    net.client.handle(net.now, Input::Wakeup);
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    assert_eq!(Net::seqs(&events), [1, 2, 3]);
    net.kill_server();
    // Published while the client is away, within the replay window.
    for i in 4..=5 {
        net.service.publish("prices", &i).unwrap();
    }
    net.advance(Duration::from_secs(1));
    assert!(net.client.is_connected());
    net.service.publish("prices", &6).unwrap();
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    assert_eq!(Net::seqs(&events), [1, 2, 3, 4, 5, 6], "replayed 4..=5, then live");
}

#[test]
fn a_filtered_subscription_sends_its_filter_again_when_it_resumes() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    let (reply, high) = net.subscribe_filtered("prices", json!(5));
    assert!(reply.lock().unwrap()[0].is_ok());
    // Unfiltered, to the same topic: not merged with the filtered one.
    let (_, all) = net.subscribe("prices");
    let values = |events: &Log<SubscriptionEvent>| -> Vec<i64> {
        let events = events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                SubscriptionEvent::Notification { value, .. } => value.get().parse().ok(),
                _ => None,
            })
            .collect()
    };
    let publish = |net: &mut Net, values: &[i64]| {
        for v in values {
            net.service.publish("prices", v).unwrap();
        }
    };
    publish(&mut net, &[3, 7]);
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    assert_eq!(values(&high), [7]);
    assert_eq!(values(&all), [3, 7]);
    net.kill_server();
    // Published while the client is away: the renewal carries the filter with `since`.
    publish(&mut net, &[9, 1]);
    net.advance(Duration::from_secs(1));
    assert!(net.client.is_connected());
    publish(&mut net, &[2, 8]);
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    assert_eq!(values(&high), [7, 9, 8], "replayed and live, still filtered, no duplicate");
    let gaps =
        high.lock().unwrap().iter().filter(|e| matches!(e, SubscriptionEvent::Gap { .. })).count();
    assert_eq!(gaps, 0, "holes in a filtered subscription's numbers are not gaps");
    assert_eq!(values(&all), [3, 7, 9, 1, 2, 8]);
}

#[test]
fn a_gap_beyond_the_replay_window_is_reported() {
    let mut config = unlimited();
    config.hub = HubConfig::default();
    config.hub.replay_capacity = 2;
    let mut net = Net::with(config, "ws://a.example:8766/", ClientOptions::default());
    net.settle();
    let (_, events) = net.subscribe("t");
    net.service.publish("t", &1).unwrap();
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    net.kill_server();
    for i in 2..=6 {
        net.service.publish("t", &i).unwrap();
    }
    net.advance(Duration::from_secs(1));
    let got = events.lock().unwrap().clone();
    assert!(
        got.iter().any(|e| matches!(e, SubscriptionEvent::Gap { from: 2, to: 4, lagged: false })),
        "{got:?}"
    );
    assert_eq!(Net::seqs(&events), [1, 5, 6]);
}

#[test]
fn a_server_that_stops_reading_is_dropped_after_the_stall_limit() {
    // The stall limit is the longer of the pong and close timeouts: 10 s here.
    let mut ws = wsrpc_core::ws::Config::default();
    ws.pong_timeout = Duration::from_secs(10);
    let mut net = Net::new(ClientOptions::default().websocket(ws));
    net.settle();
    net.server_reads = false;
    let r = net.call("add", json!([1, 1]));
    net.advance(Duration::from_secs(9));
    assert!(net.reconnect_delays().is_empty());
    net.advance(Duration::from_secs(2));
    assert_eq!(error(&r), Some(ClientError::Disconnected));
    let stalled = net.events.iter().any(|(_, e)| {
        matches!(e, ConnEvent::Reconnecting { error: ClientError::Protocol { code, .. }, .. } if *code == CloseCode::ABNORMAL)
    });
    assert!(stalled, "{:?}", net.events);
}

#[test]
fn closing_while_waiting_to_reconnect_ends_at_once() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    net.kill_server();
    assert_eq!(net.reconnect_delays().len(), 1);
    let done = log();
    net.client.handle_command(net.now, Command::Close(To(done.clone())));
    net.settle();
    assert!(net.finished);
    assert_eq!(done.lock().unwrap().len(), 1);
    // Commands after closing are refused, not queued.
    let r = net.call("add", json!([1, 1]));
    assert_eq!(error(&r), Some(ClientError::Closed));
    net.advance(Duration::from_secs(60));
    assert_eq!(net.connects.len(), 1, "no attempt after closing");
}

#[test]
fn closing_an_open_client_sends_1000_and_finishes() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    let done = log();
    net.client.handle_command(net.now, Command::Close(To(done.clone())));
    net.advance(Duration::from_secs(1));
    assert!(net.finished);
    assert!(net.events.iter().any(|(_, e)| matches!(e, ConnEvent::Closed { code, clean: true, .. } if *code == CloseCode::NORMAL)), "{:?}", net.events);
    assert_eq!(done.lock().unwrap().len(), 1);
}

#[test]
fn reconnects_rotate_through_fallback_urls() {
    let options = ClientOptions::default().fallback("ws://b.example:8766/");
    let mut net = Net::with(unlimited(), "ws://a.example:8766/", options);
    net.settle();
    net.kill_server();
    net.listener("ws://a.example:8766/", Listener::Fail(ConnectError::Refused));
    net.advance(Duration::from_secs(2));
    let urls: Vec<&str> = net.connects.iter().map(|(_, u)| u.as_str()).collect();
    assert_eq!(urls, ["ws://a.example:8766/", "ws://b.example:8766/"]);
    assert!(net.client.is_connected());
}

#[test]
fn a_first_connect_tries_every_url_before_failing() {
    let options = ClientOptions::default().fallback("ws://b.example:8766/");
    let mut net = Net::with(unlimited(), "ws://a.example:8766/", options);
    net.listener("ws://a.example:8766/", Listener::Fail(ConnectError::Refused));
    net.settle();
    assert!(net.client.is_connected(), "the fallback answered");
    let mut net = Net::with(
        unlimited(),
        "ws://a.example:8766/",
        ClientOptions::default().fallback("ws://b.example:8766/"),
    );
    net.listener("ws://a.example:8766/", Listener::Fail(ConnectError::Refused));
    net.listener("ws://b.example:8766/", Listener::Fail(ConnectError::TimedOut));
    net.settle();
    assert_eq!(net.connects.len(), 2);
    assert_eq!(net.failed(), Some(&ClientError::Connect(ConnectError::TimedOut)));
    // A refusal that retrying cannot fix is not the other server's answer.
    let mut net = Net::with(
        unlimited(),
        "ws://a.example:8766/",
        ClientOptions::default().fallback("ws://b.example:8766/"),
    );
    let bad = ConnectError::Unsupported("a transport this build lacks".into());
    net.listener("ws://a.example:8766/", Listener::Fail(bad));
    net.settle();
    assert!(net.client.is_connected(), "the fallback answered");
}

#[test]
fn a_refusal_after_a_restart_stops_reconnecting() {
    let mut config = unlimited();
    config.auth.origin = OriginPolicy::Loopback;
    let options = ClientOptions::default().header("Origin", "http://localhost:3000");
    let mut net = Net::with(config, "ws://a.example:8766/", options);
    net.settle();
    assert!(net.client.is_connected());
    // The server restarts with a stricter policy.
    let mut strict = unlimited();
    strict.auth.origin = OriginPolicy::AllowList(
        wsrpc_core::auth::OriginAllowList::new(["https://app.example.org"]).unwrap(),
    );
    net.service = Service::new(strict, router(), net.now);
    net.kill_server();
    net.advance(Duration::from_secs(2));
    assert_eq!(net.failed(), Some(&ClientError::Rejected { status: 403 }));
    net.advance(Duration::from_secs(120));
    assert_eq!(net.connects.len(), 2, "no reconnect storm after a refusal");
}

#[test]
fn reconnecting_off_fails_at_the_first_loss() {
    let mut net = Net::new(ClientOptions::default().reconnect(None));
    net.settle();
    net.kill_server();
    assert_eq!(net.failed(), Some(&ClientError::Disconnected));
    assert!(net.finished);
}

#[test]
fn tokens_are_checked_against_the_wall_clock_after_a_suspend() {
    // A laptop sleeps for three hours: the monotonic clock advances one second, the wall
    // clock three hours, and a token that expired meanwhile is refused.
    let jwt = Hs256Jwt::new("k3y");
    let mut config = unlimited();
    config.auth.authenticator = Some(Arc::new(jwt.clone()));
    let exp = start().wall.as_secs() + 3600;
    let token = jwt.sign(&json!({"sub": "0xabc", "exp": exp}));
    let options = ClientOptions::default().token(token);
    let mut net = Net::with(config, "ws://a.example:8766/", options);
    net.settle();
    let r = net.call("whoami", json!([]));
    assert_eq!(result(&r).unwrap().unwrap().get(), "\"0xabc\"");
    net.kill_server();
    net.now = Now::new(
        net.now.mono + Duration::from_secs(1),
        UnixTime(net.now.wall.0 + Duration::from_secs(3 * 3600)),
    );
    net.advance(Duration::from_secs(1));
    assert_eq!(net.failed(), Some(&ClientError::Rejected { status: 401 }));
}

#[test]
fn two_subscriptions_to_one_topic_share_the_server_subscription() {
    let mut net = Net::new(ClientOptions::default());
    net.settle();
    let (first_reply, first) = net.subscribe("prices");
    let (second_reply, second) = net.subscribe("prices");
    let first_token = first_reply.lock().unwrap()[0].clone().unwrap();
    assert!(second_reply.lock().unwrap()[0].is_ok());
    assert_eq!(net.service.hub().stats().subscriptions_active, 1, "one on the server");
    for i in 1..=2 {
        net.service.publish("prices", &i).unwrap();
    }
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    assert_eq!(Net::seqs(&first), [1, 2]);
    assert_eq!(Net::seqs(&second), [1, 2]);
    // Ending one keeps the other fed, and the server's subscription with it.
    net.client.handle_command(net.now, Command::Unsubscribe(first_token));
    net.settle();
    assert_eq!(net.service.hub().stats().subscriptions_active, 1);
    net.service.publish("prices", &3).unwrap();
    net.server.as_mut().unwrap().handle(net.now, Input::Wakeup);
    net.settle();
    assert_eq!(Net::seqs(&first), [1, 2]);
    assert_eq!(Net::seqs(&second), [1, 2, 3]);
}
