//! What rate limits are keyed by, who may read `/health` and `/metrics`, and how a client
//! says goodbye, over real loopback sockets for every adapter:
//!
//! - eight browser connections of one site (`Origin: http://localhost:3000`), each making ten
//!   `sum` calls at once against `spec_server`'s methods and limits: none refused by default
//!   (buckets per connection), the site's budget shared under `LimitConfig::wallet()`;
//! - buckets per client address behind a trusted proxy, which a forged `X-Forwarded-For`
//!   cannot escape;
//! - `/metrics` for a loopback client, not for a client the proxy forwarded;
//! - a client dropped without `close()` closes with 1000.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::limit::{ForwardedHeader, LimitConfig, MethodClass, Rate, TrustedProxies};
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::ClientOptions;
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_core::ws::{self, CloseCode, Event};
use wsrpc_tests::raw::{self, RawWs};
use wsrpc_tests::{Adapter, LONG, TestServer};

fn start<A: Adapter>(config: ServiceConfig, router: Router) -> Box<dyn TestServer> {
    let bind = Bind::Addr("127.0.0.1:0".parse().unwrap());
    A::start(config, router, bind).expect("server starts")
}

const SITE: &str = "Origin: http://localhost:3000\r\n";

/// What eight connections of one site got for ten `sum` calls each, sent at once.
struct Tabs {
    answered: usize,
    refused: usize,
    /// From the first call sent to the last answer read.
    took: Duration,
}

fn eight_tabs_of_one_site<A: Adapter>(limits: LimitConfig) -> Tabs {
    let mut config = ServiceConfig::default();
    config.limits = limits;
    let server = start::<A>(config, wsrpc_examples::spec_router());
    let mut tabs: Vec<RawWs> = (0..8).map(|_| RawWs::open(server.addr(), SITE)).collect();
    let started = Instant::now();
    for (tab, ws) in tabs.iter_mut().enumerate() {
        let calls: Vec<u8> = (0..10)
            .flat_map(|n| {
                let call = json!({"jsonrpc": "2.0", "method": "sum", "params": [tab, n], "id": n});
                raw::client_frame(1, call.to_string().as_bytes())
            })
            .collect();
        ws.send(&calls).unwrap();
    }
    let (mut answered, mut refused) = (0, 0);
    for (tab, ws) in tabs.iter_mut().enumerate() {
        for _ in 0..10 {
            let frame = ws.next_frame(LONG).expect("every call is answered");
            let answer = frame.json().expect("a JSON-RPC answer");
            let n = answer["id"].as_u64().expect("an answer to a call");
            if answer["result"] == json!(tab as u64 + n) {
                answered += 1;
            } else {
                assert_eq!(answer["error"]["code"], -32005, "{answer}");
                assert!(answer["error"]["data"]["retry_after_ms"].as_u64() > Some(0), "{answer}");
                refused += 1;
            }
        }
    }
    let took = started.elapsed();
    server.shutdown(Duration::from_secs(1));
    Tabs { answered, refused, took }
}

pub fn one_site_in_eight_tabs_is_not_refused_by_default<A: Adapter>() {
    // spec_server's limits: `sum` in the read-only class (20/s per bucket), default keys.
    let tabs = eight_tabs_of_one_site::<A>(wsrpc_examples::spec_limits());
    assert_eq!((tabs.answered, tabs.refused), (80, 0));
}

pub fn one_site_in_eight_tabs_shares_a_budget_under_the_wallet_preset<A: Adapter>() {
    let mut limits = LimitConfig::wallet();
    limits.classes = wsrpc_examples::spec_limits().classes;
    let tabs = eight_tabs_of_one_site::<A>(limits);
    assert_eq!(tabs.answered + tabs.refused, 80);
    // The site's read-only bucket holds 20 calls and refills 20 a second while the calls
    // arrive; each tab's own bucket (20) never runs out with 10 calls.
    let refilled = (20.0 * tabs.took.as_secs_f64()).ceil() as usize;
    assert!(tabs.answered >= 20, "{} answered", tabs.answered);
    assert!(tabs.answered <= 20 + refilled, "{} answered in {:?}", tabs.answered, tabs.took);
    assert!(tabs.refused > 0, "the site's tabs share one budget");
}

fn call(ws: &mut RawWs, id: u64) -> Value {
    let call = json!({"jsonrpc": "2.0", "method": "ping", "params": [], "id": id});
    ws.send_text(&call.to_string()).unwrap();
    ws.next_frame(LONG).and_then(|f| f.json()).expect("an answer")
}

fn refused(answer: &Value) -> bool {
    answer["error"]["code"] == -32005
}

pub fn buckets_per_address_behind_a_trusted_proxy<A: Adapter>() {
    let mut config = ServiceConfig::default();
    // Three calls a minute per bucket, so none comes back during the test.
    config.limits.classes =
        config.limits.classes.with_tiers(MethodClass::Default, &[Rate::per_minute(3)]);
    config.limits.per_address = true;
    // The test plays the proxy: its loopback address is trusted to say who the client is.
    config.limits.trusted_proxies =
        TrustedProxies::new(ForwardedHeader::XForwardedFor, ["127.0.0.0/8"]).unwrap();
    let mut router = Router::new();
    router.method("ping", |(): (), _| Ok("pong"));
    let server = start::<A>(config, router);
    let via = |header: &str| RawWs::open(server.addr(), &format!("X-Forwarded-For: {header}\r\n"));
    let mut a = via("198.51.100.7");
    let mut b = via("198.51.100.7");
    assert_eq!(call(&mut a, 1)["result"], "pong");
    assert_eq!(call(&mut a, 2)["result"], "pong");
    assert_eq!(call(&mut b, 3)["result"], "pong");
    // The address's budget is spent, though `b`'s own bucket has two calls left.
    assert!(refused(&call(&mut b, 4)));
    // A client naming another address first is still the one the proxy saw.
    let mut forged = via("203.0.113.1, 198.51.100.7");
    assert!(refused(&call(&mut forged, 5)));
    // Garbage is not believed either: the proxy itself is the key, with its own budget.
    let mut garbage = via("203.0.113.1, not-an-address");
    for id in 6..9 {
        assert_eq!(call(&mut garbage, id)["result"], "pong");
    }
    let mut proxy_itself = RawWs::open(server.addr(), "");
    assert!(refused(&call(&mut proxy_itself, 9)));
    // Another client behind the proxy has its own budget.
    let mut other = via("203.0.113.1");
    for id in 10..13 {
        assert_eq!(call(&mut other, id)["result"], "pong");
    }
    assert!(refused(&call(&mut other, 13)));
    server.shutdown(Duration::from_secs(1));
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut s = raw::connect(addr);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let response = raw::read_until(&mut s, LONG, |_| false);
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (raw::status_of(&response), body)
}

pub fn metrics_are_for_loopback_clients<A: Adapter>() {
    let mut config = ServiceConfig::default();
    config.limits.trusted_proxies =
        TrustedProxies::new(ForwardedHeader::Forwarded, ["127.0.0.1"]).unwrap();
    let server = start::<A>(config, Router::new());
    let addr = server.addr();
    // The test's own connections come from 127.0.0.1: a loopback client.
    let (status, body) = get(addr, "/metrics", "");
    assert_eq!(status, 200);
    assert!(body.contains("wsrpc_connections_active"), "{body}");
    let (status, body) = get(addr, "/health", "");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((health["status"].clone(), health["name"].clone()), (json!("ok"), json!("wsrpc")));
    // A client the proxy forwarded from elsewhere gets the bare status, and no metrics.
    let forwarded = "Forwarded: for=198.51.100.7\r\n";
    let (status, body) = get(addr, "/metrics", forwarded);
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(addr, "/health", forwarded);
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"status": "ok"}));
    server.shutdown(Duration::from_secs(1));
}

/// Holds a server's answer to the client's close frame: `seen` is signalled when the close
/// arrived, and the answer is written once `release` is.
struct Gate {
    seen: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

/// Accepts one WebSocket on `listener` and reads until it closes: its close code, and
/// whether both close frames were exchanged.
fn serve_one_until_closed(listener: TcpListener, mut gate: Option<Gate>) -> (CloseCode, bool) {
    let (mut sock, _) = listener.accept().unwrap();
    let mut conn = ws::Connection::server(ws::Config::default(), Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    let end = Instant::now() + LONG;
    let mut closed = None;
    loop {
        assert!(Instant::now() < end, "the client neither closed nor went away");
        while let Some(bytes) = conn.poll_transmit() {
            let n = sock.write(bytes).unwrap_or(bytes.len());
            conn.advance_transmit(n);
        }
        while let Some(event) = conn.poll_event() {
            if let Event::Closed(c) = event {
                closed = Some(c);
            }
        }
        if let Some(c) = closed {
            return (c.code, c.clean);
        }
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let now = Instant::now();
        let mut take = |_: &mut ws::Connection, event| {
            if let Event::Closed(c) = event {
                closed = Some(c);
            }
        };
        match sock.read(&mut buf) {
            Ok(0) => conn.handle_eof(now),
            Ok(n) => conn.handle_all_input(now, &buf[..n], &mut take),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => conn.handle_eof(now),
        }
        conn.handle_timeout(Instant::now());
        if !conn.is_open()
            && !conn.is_handshaking()
            && let Some(gate) = gate.take()
        {
            gate.seen.send(()).unwrap();
            gate.release.recv().unwrap();
        }
    }
}

pub fn a_client_dropped_without_close_closes_with_1000<A: Adapter>() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || serve_one_until_closed(listener, None));
    let client = A::connect(&url, ClientOptions::default()).expect("connects");
    drop(client);
    let (code, clean) = server.join().expect("the server side ends");
    assert_eq!((code, clean), (CloseCode::NORMAL, true));
}

/// A blocking client's last drop returns only once the close handshake is done, so a
/// program that drops it and exits still closes cleanly.
#[test]
fn a_dropped_blocking_client_waits_for_the_close_handshake() {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let ((seen, seen_rx), (release_tx, release)) = (channel(), channel());
    let gate = Gate { seen, release };
    let server = std::thread::spawn(move || serve_one_until_closed(listener, Some(gate)));
    let client = wsrpc_blocking::connect(&url, ClientOptions::default()).expect("connects");
    let (dropped_tx, dropped) = channel();
    let dropper = std::thread::spawn(move || {
        drop(client);
        dropped_tx.send(()).unwrap();
    });
    seen_rx.recv_timeout(LONG).expect("the close frame arrives");
    // The server holds its answer: the drop is still waiting for it (a drop that did not
    // wait would have returned well within this time).
    assert_eq!(dropped.recv_timeout(Duration::from_millis(300)), Err(RecvTimeoutError::Timeout));
    release_tx.send(()).unwrap();
    assert_ne!(dropped.recv_timeout(LONG), Err(RecvTimeoutError::Timeout));
    dropper.join().unwrap();
    assert_eq!(server.join().unwrap(), (CloseCode::NORMAL, true));
}

macro_rules! policy_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn one_site_in_eight_tabs_is_not_refused_by_default() {
                super::one_site_in_eight_tabs_is_not_refused_by_default::<$adapter>();
            }
            #[test]
            fn one_site_in_eight_tabs_shares_a_budget_under_the_wallet_preset() {
                super::one_site_in_eight_tabs_shares_a_budget_under_the_wallet_preset::<$adapter>();
            }
            #[test]
            fn buckets_per_address_behind_a_trusted_proxy() {
                super::buckets_per_address_behind_a_trusted_proxy::<$adapter>();
            }
            #[test]
            fn metrics_are_for_loopback_clients() {
                super::metrics_are_for_loopback_clients::<$adapter>();
            }
            #[test]
            fn a_client_dropped_without_close_closes_with_1000() {
                super::a_client_dropped_without_close_closes_with_1000::<$adapter>();
            }
        }
    };
}

policy_tests!(smol, wsrpc_tests::Smol);
policy_tests!(async_std, wsrpc_tests::AsyncStd);
policy_tests!(blocking, wsrpc_tests::Blocking);
