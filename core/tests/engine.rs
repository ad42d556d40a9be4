//! The engine's server connection: HTTP on the WebSocket port (routing, limits, keep-alive,
//! pipelining, CORS, auth) and JSON-RPC over an upgraded WebSocket, on a virtual clock.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use core::net::SocketAddr;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::Xoshiro256;
use wsrpc_core::auth::{Hs256Jwt, StaticToken};
use wsrpc_core::engine::{ConnEvent, Endpoint, HandlerResult, Input, Output, ServerConnection};
use wsrpc_core::rpc::{Router, Work};
use wsrpc_core::service::{Service, ServiceConfig};
use wsrpc_core::ws::{ClientRequest, CloseCode, Connection, Event};
use wsrpc_core::{Now, UnixTime};

fn router() -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b))
        .method("whoami", |(): (), ctx| {
            Ok(json!({"id": ctx.principal.id, "auth": ctx.principal.authenticated}))
        })
        .async_method("later", |(x,): (i64,), _| async move { Ok(x * 2) });
    r
}

/// The virtual clock's start: a real `Instant` and a fixed date in November 2023.
fn start() -> Now {
    Now::new(Instant::now(), UnixTime(Duration::from_secs(1_700_000_000)))
}

fn service(config: ServiceConfig) -> Arc<Service> {
    Service::new(config, router(), start())
}

/// Runs handler work at once (the test handlers never wait).
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

/// What draining a connection's output gave, as an adapter would see it.
#[derive(Debug, Default)]
struct Drained {
    out: Vec<u8>,
    shutdown_write: bool,
    finished: bool,
    deadline: Option<Instant>,
    events: Vec<ConnEvent>,
    /// Work held instead of run (`hold` set).
    held: Vec<(wsrpc_core::rpc::CallId, Work)>,
    hold: bool,
}

/// Drains `conn` at `now` with an always-writable transport: handler work runs at once
/// (unless `state.hold`), bytes are collected, flags and the deadline recorded.
fn drain(conn: &mut ServerConnection, now: Now, state: &mut Drained) {
    for _ in 0..100_000 {
        match conn.poll_output(now) {
            Output::Event(e) => state.events.push(e),
            Output::Spawn(id, work) if state.hold => state.held.push((id, work)),
            Output::Spawn(id, work) => {
                let result = run(work);
                conn.handle(now, Input::Completed(id, result));
            }
            Output::Transmit(mut tx) => {
                let mut slices = [IoSlice::new(&[]); 64];
                let k = tx.slices(&mut slices);
                let mut n = 0;
                for s in &slices[..k] {
                    state.out.extend_from_slice(s);
                    n += s.len();
                }
                tx.advance(n);
            }
            Output::ShutdownWrite => state.shutdown_write = true,
            Output::Finished => {
                state.finished = true;
                return;
            }
            Output::Wait(deadline) => {
                state.deadline = deadline;
                return;
            }
            other => panic!("a server never asks for {other:?}"),
        }
    }
    panic!("output never ends");
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Splits raw output into responses (bodies framed by Content-Length).
fn parse_responses(mut raw: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = resp.parse(raw).unwrap() else {
            panic!("partial response")
        };
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let status = resp.code.unwrap();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        out.push(Response { status, headers, body: raw[n..n + len].to_vec() });
        raw = &raw[n + len..];
    }
    out
}

struct Http {
    conn: ServerConnection,
    now: Now,
    state: Drained,
}

/// The peer address adapters report for a local client.
fn loopback_peer() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 50_000)))
}

impl Http {
    /// A connection from a loopback peer, as from a local client.
    fn new(service: &Arc<Service>) -> Self {
        Self::from_peer(service, loopback_peer())
    }

    /// A connection from `peer` (`None`: an address the adapter does not know).
    fn from_peer(service: &Arc<Service>, peer: Option<SocketAddr>) -> Self {
        let now = start();
        let conn = ServerConnection::with_peer(service.clone(), now, peer);
        Self { conn, now, state: Drained::default() }
    }

    /// Feeds `bytes` (consuming all, running handler work) and returns the output so far.
    fn exchange(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut at = 0;
        // Each round takes at least one request unless the connection is stuck.
        for _ in 0..1000 + bytes.len() {
            if at < bytes.len() {
                at += self.conn.handle(self.now, Input::Bytes(&bytes[at..]));
            }
            drain(&mut self.conn, self.now, &mut self.state);
            if at == bytes.len() {
                return std::mem::take(&mut self.state.out);
            }
        }
        panic!("no progress");
    }

    fn request(&mut self, bytes: &[u8]) -> Vec<Response> {
        parse_responses(&self.exchange(bytes))
    }

    /// Feeds `input` and drains.
    fn input(&mut self, input: Input<'_>) {
        self.conn.handle(self.now, input);
        drain(&mut self.conn, self.now, &mut self.state);
    }

    /// Moves the clock to the connection's deadline and fires it.
    fn fire_deadline(&mut self) -> Instant {
        let deadline = self.state.deadline.expect("a deadline");
        self.now = self.now.at(deadline);
        self.input(Input::Timeout);
        deadline
    }
}

fn post(body: &str, extra: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len())
        .into_bytes()
}

#[test]
fn post_single_batch_notification_and_async() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let r = h.request(&post(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#, ""));
    assert_eq!((r[0].status, r[0].header("content-type")), (200, Some("application/json")));
    assert_eq!(r[0].json(), json!({"jsonrpc":"2.0","result":5,"id":1}));
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
    let r = h.request(&post(r#"[{"jsonrpc":"2.0","method":"add","params":[1,1],"id":1},{"jsonrpc":"2.0","method":"later","params":[21],"id":2}]"#, ""));
    assert_eq!(
        r[0].json(),
        json!([{"jsonrpc":"2.0","result":2,"id":1},{"jsonrpc":"2.0","result":42,"id":2}])
    );
    let r = h.request(&post(r#"{"jsonrpc":"2.0","method":"add","params":[1,1]}"#, ""));
    assert_eq!((r[0].status, r[0].body.len()), (204, 0));
    let r = h.request(&post(r#"{"jsonrpc":"2.0","method":"later","params":[5],"id":"a"}"#, ""));
    assert_eq!(r[0].json(), json!({"jsonrpc":"2.0","result":10,"id":"a"}));
}

#[test]
fn a_peer_that_half_closes_after_its_request_still_gets_the_response() {
    let svc = service(ServiceConfig::default());
    for body in [
        r#"{"jsonrpc":"2.0","method":"later","params":[4],"id":1}"#,
        r#"{"jsonrpc":"2.0","method":"add","params":[4,4],"id":1}"#,
    ] {
        let mut h = Http::new(&svc);
        let wire = post(body, "");
        let mut at = 0;
        while at < wire.len() {
            at += h.conn.handle(h.now, Input::Bytes(&wire[at..]));
        }
        h.conn.handle(h.now, Input::Eof);
        let r = parse_responses(&h.exchange(b""));
        assert_eq!(r[0].json()["result"], 8, "{body}");
        assert!(h.state.finished, "closed once the response is written");
    }
}

#[test]
fn empty_body_is_answered_without_more_input() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let r = h.request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.len(), 1, "answered at once");
    assert_eq!(r[0].json()["error"]["code"], -32700);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let mut wire = post(r#"{"jsonrpc":"2.0","method":"later","params":[1],"id":1}"#, "");
    wire.extend(post(r#"{"jsonrpc":"2.0","method":"add","params":[1,1],"id":2}"#, ""));
    wire.extend(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.request(&wire);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].json()["id"], 1);
    assert_eq!(r[1].json()["id"], 2);
    assert_eq!(r[2].json()["status"], "ok");
}

#[test]
fn a_pipelining_peer_that_does_not_read_is_held_at_the_high_water_mark() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let n = 5_000;
    let wire = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
    // Feed without writing anything out, as when the peer's receive window is full.
    let mut at = 0;
    while at < wire.len() {
        let used = h.conn.handle(h.now, Input::Bytes(&wire[at..]));
        if used == 0 {
            break;
        }
        at += used;
    }
    assert!(at < wire.len(), "input stops being taken while responses pile up");
    assert!(!h.conn.wants_read());
    let first = h.exchange(b"");
    let held = parse_responses(&first).len();
    assert!(first.len() <= (1 << 20) + 64 * 1024, "{} bytes queued", first.len());
    assert!(held < n, "{held} of {n} answered before the peer read anything");
    // Once written out, the rest is answered: every request once, in order.
    let rest = parse_responses(&h.exchange(&wire[at..]));
    assert_eq!(held + rest.len(), n);
    assert!(rest.iter().all(|r| r.status == 200));
    assert_eq!(svc.snapshot(h.now.mono).http_requests, n as u64);
}

#[test]
fn health_and_metrics_endpoints() {
    let svc = service(ServiceConfig::default());
    svc.set_port(8766);
    let mut h = Http::new(&svc);
    h.request(&post(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#, ""));
    let r = h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].status, 200);
    let health = r[0].json();
    assert_eq!((health["status"].as_str(), health["port"].as_u64()), (Some("ok"), Some(8766)));
    let r = h.request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r[0].header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r[0].body.clone()).unwrap();
    assert!(text.contains("wsrpc_call_duration_seconds_count{method=\"add\"} 1"), "{text}");
    assert!(text.contains("wsrpc_connections_active 1"), "{text}");
}

/// Status, and the body as JSON or text, of `GET path` with `extra` header lines from `peer`.
fn get_from(svc: &Arc<Service>, peer: Option<SocketAddr>, path: &str, extra: &str) -> Response {
    let mut h = Http::from_peer(svc, peer);
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    h.request(request.as_bytes()).remove(0)
}

fn peer(addr: &str) -> Option<SocketAddr> {
    Some(addr.parse().unwrap())
}

fn is_detailed(health: &Response) -> bool {
    health.json()["uptime_seconds"].is_number()
}

#[test]
fn health_details_and_metrics_are_for_loopback_clients_by_default() {
    let svc = service(ServiceConfig::default());
    for local in ["127.0.0.1:5000", "127.8.9.10:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
        let health = get_from(&svc, peer(local), "/health", "");
        assert!(health.status == 200 && is_detailed(&health), "{local}");
        assert_eq!(get_from(&svc, peer(local), "/metrics", "").status, 200, "{local}");
    }
    for remote in [peer("198.51.100.7:5000"), peer("[2001:db8::1]:5000"), None] {
        // The bare status, for load balancers.
        let health = get_from(&svc, remote, "/health", "");
        assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})), "{remote:?}");
        let metrics = get_from(&svc, remote, "/metrics", "");
        assert_eq!(metrics.status, 403, "{remote:?}");
        assert!(!String::from_utf8_lossy(&metrics.body).contains("wsrpc_"), "{remote:?}");
        let mut h = Http::from_peer(&svc, remote);
        let head = h.exchange(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with(b"HTTP/1.1 403 "), "{remote:?}");
    }
}

#[test]
fn under_require_auth_health_details_and_metrics_want_credentials() {
    let mut config = ServiceConfig::default();
    config.auth.require_auth = true;
    config.auth.authenticator = Some(Arc::new(StaticToken::new("ops", "s3cret")));
    let svc = service(config);
    let token = "Authorization: Bearer s3cret\r\n";
    for at in [peer("127.0.0.1:5000"), peer("198.51.100.7:5000"), None] {
        let health = get_from(&svc, at, "/health", "");
        assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})), "{at:?}");
        let metrics = get_from(&svc, at, "/metrics", "");
        assert_eq!(metrics.status, 401, "{at:?}");
        assert_eq!(metrics.header("www-authenticate").map(|c| c.starts_with("Bearer")), Some(true));
        let bad = get_from(&svc, at, "/metrics", "Authorization: Bearer nope\r\n");
        assert_eq!(bad.status, 401, "{at:?}");
        assert!(is_detailed(&get_from(&svc, at, "/health", token)), "{at:?}");
        assert_eq!(get_from(&svc, at, "/metrics", token).status, 200, "{at:?}");
    }
}

#[test]
fn monitoring_can_be_public_or_off() {
    use wsrpc_core::service::MonitoringAccess;
    let mut config = ServiceConfig::default();
    config.http.monitoring = MonitoringAccess::Public;
    let svc = service(config);
    for at in [peer("198.51.100.7:5000"), None] {
        assert!(is_detailed(&get_from(&svc, at, "/health", "")));
        assert_eq!(get_from(&svc, at, "/metrics", "").status, 200);
    }
    let mut config = ServiceConfig::default();
    config.http.monitoring = MonitoringAccess::Off;
    let svc = service(config);
    for path in ["/health", "/metrics"] {
        assert_eq!(get_from(&svc, peer("127.0.0.1:5000"), path, "").status, 404, "{path}");
    }
}

#[test]
fn a_trusted_proxy_names_the_client_the_policy_judges() {
    use wsrpc_core::limit::{ForwardedHeader, TrustedProxies};
    let mut config = ServiceConfig::default();
    config.limits.trusted_proxies =
        TrustedProxies::new(ForwardedHeader::XForwardedFor, ["127.0.0.1", "10.0.0.0/8"]).unwrap();
    let svc = service(config);
    let proxy = peer("127.0.0.1:5000");
    // A local proxy forwarding a remote client: not loopback.
    assert_eq!(get_from(&svc, proxy, "/metrics", "X-Forwarded-For: 198.51.100.7\r\n").status, 403);
    // Whatever the client claims to the left of what the proxies saw.
    let forged = "X-Forwarded-For: 127.0.0.1, 198.51.100.7, 10.1.1.1\r\n";
    assert_eq!(get_from(&svc, proxy, "/metrics", forged).status, 403);
    // The proxy's own request, and a local client it forwards.
    assert_eq!(get_from(&svc, proxy, "/metrics", "").status, 200);
    assert_eq!(
        get_from(&svc, peer("10.0.0.2:80"), "/metrics", "X-Forwarded-For: ::1\r\n").status,
        200
    );
    // An untrusted peer's header is ignored: its own address is judged.
    let remote = peer("198.51.100.7:5000");
    assert_eq!(get_from(&svc, remote, "/metrics", "X-Forwarded-For: 127.0.0.1\r\n").status, 403);
}

#[test]
fn a_long_target_on_a_kept_alive_connection_is_still_414() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    assert_eq!(h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0].status, 200);
    let long = format!("GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    assert_eq!(h.request(long.as_bytes())[0].status, 414);
}

#[test]
fn head_gives_the_length_of_the_body_it_leaves_out() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let get = h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let raw = h.exchange(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(length > 0 && length.abs_diff(get[0].body.len()) < 8, "{length} vs GET's body");
    assert_eq!(body, "", "HEAD sends no body");
    // The connection is still usable: the next request is answered normally.
    assert_eq!(h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0].status, 200);
}

#[test]
fn absolute_form_targets_and_http_1_0_expectations() {
    let svc = service(ServiceConfig::default());
    let body = r#"{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}"#;
    // RFC 9112 §3.2.2: the absolute form is accepted like the origin form.
    let mut h = Http::new(&svc);
    let wire = post(body, "").strip_prefix(b"POST / ").unwrap().to_vec();
    let r = h.request(&[b"POST http://127.0.0.1:8766/ ".as_slice(), &wire].concat());
    assert_eq!((r[0].status, r[0].json()["result"].clone()), (200, json!(3)));
    let r = h.request(b"GET HTTP://localhost/health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].status, 200);
    let r = h.request(b"GET http://localhost/nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].status, 404);
    // No 1xx for an HTTP/1.0 client; its expectation is ignored (RFC 9110 §10.1.1, §15.2).
    let mut h = Http::new(&svc);
    let req = format!(
        "POST / HTTP/1.0\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = String::from_utf8(h.exchange(req.as_bytes())).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(!raw.contains("100 Continue"), "{raw}");
}

#[test]
fn http_errors_have_their_status() {
    let svc = service(ServiceConfig::default());
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404),
        (b"GET /health HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost\r\nOrigin: https://evil.example\r\n\r\n".to_vec(), 403),
        (b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 403),
        (b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 400),
        (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405),
        (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 426),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 415),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n".to_vec(), 411),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n".to_vec(), 413),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked, chunked\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(), 501),
        (format!("GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000)).into_bytes(), 414),
        (b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(), 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n".to_vec(), 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n".to_vec(), 400),
    ];
    for (req, status) in cases {
        let mut h = Http::new(&svc);
        let r = h.request(&req);
        assert_eq!(r[0].status, status, "{}", String::from_utf8_lossy(&req));
    }
    // A request with a body on any route but `POST /` is answered, then the connection
    // closes instead of reading the body as a request.
    let smuggled = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    for (head, status) in [
        ("OPTIONS / HTTP/1.1", 204),
        ("POST /health HTTP/1.1", 405),
        ("POST /nope HTTP/1.1", 404),
        ("GET /health HTTP/1.1", 400),
    ] {
        let mut h = Http::new(&svc);
        let req =
            format!("{head}\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
        let r = h.request(req.as_bytes());
        assert_eq!((r.len(), r[0].status), (1, status), "{head}");
        assert_eq!(r[0].header("connection"), Some("close"), "{head}");
    }
    // `POST /` reads its body and keeps the connection.
    let mut h = Http::new(&svc);
    let r = h.request(&post(r#"{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}"#, ""));
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
    let mut h = Http::new(&svc);
    let r = h.request(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].header("allow"), Some("GET, POST, OPTIONS"));
    assert_eq!(r[0].header("connection"), Some("close"));
    assert!(h.state.shutdown_write);
}

#[test]
fn a_tls_hello_on_the_plain_port_gets_400_at_once() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    // The start of a TLS ClientHello: no blank line will ever come.
    let r = h.request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x11");
    assert_eq!(r[0].status, 400);
    assert!(h.state.shutdown_write);
}

#[test]
fn a_whole_tls_hello_in_one_read_gets_400_at_once() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    // A ClientHello with a post-quantum key share is over a kilobyte, read in one go.
    let mut hello = b"\x16\x03\x01\x06\x00\x01\x00\x05\xfc\x03\x03".to_vec();
    hello.extend((0..1500u32).map(|i| (i * 7 % 251) as u8));
    let r = h.request(&hello);
    assert_eq!(r[0].status, 400);
    assert!(h.state.shutdown_write);
    assert_eq!(svc.metrics().snapshot(h.now.mono).errors.get("handshake"), Some(&1));
}

#[test]
fn chunked_bodies_and_expect_continue() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let body = r#"{"jsonrpc":"2.0","method":"add","params":[40,2],"id":7}"#;
    let wire = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        10,
        &body[..10],
        body.len() - 10,
        &body[10..]
    );
    let out = h.exchange(wire.as_bytes());
    assert!(out.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    let r = parse_responses(&out[25..]);
    assert_eq!(r[0].json()["result"], 42);
}

#[test]
fn http_1_0_closes_and_keep_alive_times_out() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    let r = h.request(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(r[0].header("connection"), Some("close"));
    assert!(h.state.shutdown_write);
    let mut h = Http::new(&svc);
    h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let before = h.now.mono;
    let deadline = h.fire_deadline();
    assert_eq!(deadline - before, Duration::from_secs(30));
    assert!(h.state.finished, "an idle keep-alive connection just closes");
}

#[test]
fn slow_request_gets_408() {
    let svc = service(ServiceConfig::default());
    let mut h = Http::new(&svc);
    h.request(b"POST / HTTP/1.1\r\nHost: sl");
    h.fire_deadline();
    let r = parse_responses(&std::mem::take(&mut h.state.out));
    assert_eq!(r[0].status, 408);
}

#[test]
fn origin_policy_and_cors() {
    let svc = service(ServiceConfig::default());
    let body = r#"{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}"#;
    let mut h = Http::new(&svc);
    let r = h.request(&post(body, "Origin: https://evil.example\r\n"));
    assert_eq!(r[0].status, 403);
    let mut h = Http::new(&svc);
    let r = h.request(&post(body, "Origin: http://localhost:5173\r\n"));
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].header("access-control-allow-origin"), Some("http://localhost:5173"));
    let r = h.request(b"OPTIONS / HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:5173\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Private-Network: true\r\n\r\n");
    assert_eq!(r[0].status, 204);
    assert_eq!(r[0].header("access-control-allow-private-network"), Some("true"));
    assert!(r[0].header("access-control-allow-headers").unwrap().contains("Content-Type"));
    // A WebSocket upgrade from a disallowed origin is refused before any upgrade.
    let mut h = Http::new(&svc);
    let r = h.request(b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(r[0].status, 403);
    assert!(!h.conn.is_websocket());
    assert!(svc.snapshot(h.now.mono).errors["auth"] >= 2);
}

#[test]
fn refusals_are_readable_by_the_refused_page_and_get_probes_the_upgrade() {
    let mut config = ServiceConfig::default();
    config.auth.authenticator = Some(Arc::new(StaticToken::new("svc", "s3cret")));
    config.auth.require_auth = true;
    let svc = service(config);
    // A refused origin learns it was refused (CORS echo on the 403), and nothing else.
    let mut h = Http::new(&svc);
    let r = h
        .request(b"GET /?token=s3cret HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n");
    assert_eq!(r[0].status, 403);
    assert_eq!(r[0].header("access-control-allow-origin"), Some("https://evil.example"));
    assert_eq!(r[0].header("vary"), Some("Origin"));
    assert_eq!(r[0].body, b"origin not allowed\n");
    // A garbled origin is never echoed.
    let mut h = Http::new(&svc);
    let r = h.request(b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example/path\r\n\r\n");
    assert_eq!((r[0].status, r[0].header("access-control-allow-origin")), (403, None));
    // GET of the WebSocket URL: 401 for a bad token, 426 when the upgrade would be admitted.
    let mut h = Http::new(&svc);
    let r = h
        .request(b"GET /?token=wrong HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:3000\r\n\r\n");
    assert_eq!(r[0].status, 401);
    assert_eq!(r[0].header("access-control-allow-origin"), Some("http://localhost:3000"));
    let mut h = Http::new(&svc);
    let r = h.request(
        b"GET /?token=s3cret HTTP/1.1\r\nHost: x\r\nOrigin: http://localhost:3000\r\n\r\n",
    );
    assert_eq!(r[0].status, 426);
    assert_eq!(r[0].header("access-control-allow-origin"), Some("http://localhost:3000"));
}

#[test]
fn static_routes_answer_get_and_head_only() {
    let mut config = ServiceConfig::default();
    config.http.routes.push(wsrpc_core::http::StaticRoute::new(
        "/demo",
        "text/html; charset=utf-8",
        &b"<!doctype html><p>demo</p>"[..],
    ));
    let svc = service(config);
    let mut h = Http::new(&svc);
    let r = h.request(b"GET /demo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r[0].body, b"<!doctype html><p>demo</p>");
    let r = h.request(b"POST /demo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!((r[0].status, r[0].header("allow")), (405, Some("GET, HEAD")));
    let mut h = Http::new(&svc);
    let r = h.request(b"GET /demo HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n");
    assert_eq!(r[0].status, 403, "the origin policy applies to static routes");
    let mut h = Http::new(&svc);
    let r = h.request(b"GET /demo/other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].status, 404);
}

#[test]
fn bearer_tokens_on_http_and_query_tokens_on_upgrade() {
    let mut config = ServiceConfig::default();
    config.auth.authenticator = Some(Arc::new(StaticToken::new("alice", "s3cret")));
    config.auth.require_auth = true;
    let svc = service(config);
    let body = r#"{"jsonrpc":"2.0","method":"whoami","id":1}"#;
    let mut h = Http::new(&svc);
    let r = h.request(&post(body, ""));
    assert_eq!(r[0].status, 401);
    assert!(r[0].header("www-authenticate").unwrap().starts_with("Bearer"));
    let mut h = Http::new(&svc);
    let r = h.request(&post(body, "Authorization: Bearer wrong\r\n"));
    assert_eq!(r[0].status, 401);
    let mut h = Http::new(&svc);
    let r = h.request(&post(body, "Authorization: Bearer s3cret\r\n"));
    assert_eq!(r[0].json()["result"], json!({"id": "alice", "auth": true}));
    let mut p = WsPair::connect(&svc, "/?token=s3cret", &[]);
    assert_eq!(p.call("whoami", json!([]))["result"]["id"], "alice");
}

#[test]
fn expired_and_forged_jwts_are_refused() {
    let jwt = Hs256Jwt::new("k3y");
    let mut config = ServiceConfig::default();
    config.auth.authenticator = Some(Arc::new(jwt.clone()));
    let svc = service(config);
    let now_unix = start().wall.as_secs();
    let good = jwt.sign(&json!({"sub": "0xabc", "exp": now_unix + 600}));
    let expired = jwt.sign(&json!({"sub": "0xabc", "exp": now_unix - 600}));
    let forged = Hs256Jwt::new("other").sign(&json!({"sub": "0xabc", "exp": now_unix + 600}));
    let body = r#"{"jsonrpc":"2.0","method":"whoami","id":1}"#;
    for (token, status) in [(good, 200), (expired, 401), (forged, 401)] {
        let mut h = Http::new(&svc);
        let r = h.request(&post(body, &format!("Authorization: Bearer {token}\r\n")));
        assert_eq!(r[0].status, status);
    }
}

#[test]
fn connection_limit_answers_503() {
    let mut config = ServiceConfig::default();
    config.max_connections = 2;
    let svc = service(config);
    let a = Http::new(&svc);
    let b = Http::new(&svc);
    let mut c = Http::new(&svc);
    let r = parse_responses(&c.exchange(b""));
    assert_eq!(r[0].status, 503);
    assert_eq!(svc.active_connections(), 2);
    drop((a, b));
    assert_eq!(svc.active_connections(), 0);
    let mut d = Http::new(&svc);
    assert_eq!(d.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0].status, 200);
}

#[test]
fn timeouts_configured_as_duration_max_mean_never_rather_than_panic() {
    let mut config = ServiceConfig::default();
    config.ws.handshake_timeout = Some(Duration::MAX);
    config.ws.ping_interval = Some(Duration::MAX);
    config.ws.pong_timeout = Duration::MAX;
    config.ws.idle_timeout = Some(Duration::MAX);
    config.ws.close_timeout = Duration::MAX;
    config.http.keep_alive_timeout = Duration::MAX;
    let svc = service(config.clone());
    let mut h = Http::new(&svc);
    assert_eq!(h.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0].status, 200);
    let deadline = h.state.deadline.expect("a keep-alive deadline");
    assert!(deadline > h.now.mono + Duration::from_secs(365 * 24 * 3600));
    let mut p = WsPair::connect(&svc, "/", &[]);
    assert_eq!(p.call("add", json!([2, 3]))["result"], 5);
    let far = p.state.deadline.expect("timers");
    p.now = p.now.at(far);
    p.server.handle(p.now, Input::Timeout);
    p.drive();
    // A client connection with the same timers starts too.
    let req = ClientRequest::new("localhost", "/");
    let c = Connection::client(config.ws, &req, Box::new(Xoshiro256::from_seed(1)), p.now.mono);
    assert!(c.poll_timeout().is_some());
}

/// A client `ws::Connection` talking to a `ServerConnection`.
struct WsPair {
    client: Connection,
    server: ServerConnection,
    now: Now,
    state: Drained,
    received: Vec<Value>,
    closed: Option<CloseCode>,
}

impl WsPair {
    fn connect(svc: &Arc<Service>, target: &str, headers: &[(&str, &str)]) -> Self {
        let now = start();
        let mut req = ClientRequest::new("localhost", target);
        for (k, v) in headers {
            req = if k.eq_ignore_ascii_case("sec-websocket-protocol") {
                req.protocol(*v)
            } else {
                req.header(*k, *v)
            };
        }
        let client = Connection::client(
            wsrpc_core::ws::Config::default(),
            &req,
            Box::new(Xoshiro256::from_seed(5)),
            now.mono,
        );
        let server = ServerConnection::new(svc.clone(), now);
        let mut p = Self {
            client,
            server,
            now,
            state: Drained::default(),
            received: Vec::new(),
            closed: None,
        };
        p.drive();
        assert!(p.client.is_open(), "{:?}", p.client.error());
        p
    }

    /// Hands the client's output to the server (all of it).
    fn deliver(&mut self) -> bool {
        let mut moved = false;
        while let Some(b) = self.client.poll_transmit() {
            let bytes = b.to_vec();
            self.client.advance_transmit(bytes.len());
            let mut at = 0;
            while at < bytes.len() {
                let n = self.server.handle(self.now, Input::Bytes(&bytes[at..]));
                if n == 0 {
                    drain(&mut self.server, self.now, &mut self.state);
                    assert!(self.server.wants_read(), "server stalled");
                }
                at += n;
            }
            moved = true;
        }
        moved
    }

    fn drive(&mut self) {
        for _ in 0..100 {
            let mut moved = self.deliver();
            drain(&mut self.server, self.now, &mut self.state);
            let bytes = std::mem::take(&mut self.state.out);
            if !bytes.is_empty() {
                let (received, closed) = (&mut self.received, &mut self.closed);
                self.client.handle_all_input(self.now.mono, &bytes, |_, e| match e {
                    Event::Message(m) => received.push(serde_json::from_slice(&m.data).unwrap()),
                    Event::Closed(c) => *closed = Some(c.code),
                    _ => {}
                });
                moved = true;
            }
            if self.state.shutdown_write && !self.client.is_finished() {
                self.client.handle_eof(self.now.mono);
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.received.len() as u64 + 1000;
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.client.send_text(self.now.mono, &req.to_string()).unwrap();
        self.drive();
        let pos = self.received.iter().position(|v| v["id"] == id).expect("answered");
        self.received.remove(pos)
    }
}

struct CountingWaker(AtomicUsize);
impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn websocket_calls_subscriptions_and_wakeups() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    assert!(p.server.is_websocket());
    assert!(
        matches!(&p.state.events[0], ConnEvent::Upgraded { path, origin: None, .. } if path == "/"),
        "{:?}",
        p.state.events
    );
    assert_eq!(p.call("add", json!([20, 22]))["result"], 42);
    assert_eq!(p.call("later", json!([4]))["result"], 8);
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    p.server.set_waker(&Waker::from(counter.clone()));
    let sub = p.call("subscribe", json!(["news"]));
    assert!(sub["result"]["subscription"].is_string());
    // Published from "another thread": the waker fires, and draining delivers.
    svc.publish("news", &json!({"headline": "hello"})).unwrap();
    svc.publish("news", &json!({"headline": "again"})).unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken once for a burst");
    p.drive();
    let notes: Vec<&Value> = p.received.iter().filter(|v| v["method"] == "subscription").collect();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[1]["params"]["result"]["headline"], "again");
    assert_eq!(notes[1]["params"]["seq"], 2);
}

#[test]
fn binary_messages_get_1003() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    p.client.send_binary(p.now.mono, b"\x00\x01").unwrap();
    p.drive();
    assert_eq!(p.closed, Some(CloseCode::UNSUPPORTED_DATA));
}

#[test]
fn graceful_shutdown_answers_in_flight_calls_then_closes_1001() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    let req = json!({"jsonrpc": "2.0", "method": "later", "params": [50], "id": 1});
    p.client.send_text(p.now.mono, &req.to_string()).unwrap();
    // Deliver the request but hold the async call.
    p.state.hold = true;
    p.deliver();
    drain(&mut p.server, p.now, &mut p.state);
    let (id, work) = p.state.held.pop().expect("the call was handed out");
    p.server.handle(p.now, Input::Shutdown);
    assert_eq!(p.server.pending_calls(), 1);
    p.server.handle(p.now, Input::Completed(id, run(work)));
    p.drive();
    assert_eq!(p.received[0]["result"], 100);
    assert_eq!(p.closed, Some(CloseCode::GOING_AWAY));
}

#[test]
fn websocket_handshake_on_any_path_with_subprotocol() {
    let mut config = ServiceConfig::default();
    config.ws.subprotocols = vec!["jsonrpc".into()];
    let svc = service(config);
    let mut p = WsPair::connect(&svc, "/rpc/v1", &[("Sec-WebSocket-Protocol", "jsonrpc")]);
    assert!(p.server.is_websocket());
    assert_eq!(p.call("add", json!([1, 1]))["result"], 2);
}

#[test]
fn notifications_delivered_on_wakeup_keep_an_idle_timer_away() {
    let mut config = ServiceConfig::default();
    config.ws.idle_timeout = Some(Duration::from_secs(60));
    config.ws.ping_interval = None;
    let svc = service(config);
    let mut p = WsPair::connect(&svc, "/", &[]);
    p.call("subscribe", json!(["ticks"]));
    // A publish every 40 s for four minutes, delivered on the waker alone (no other input):
    // the connection only receives, yet the notifications count as activity.
    for i in 0..6 {
        p.now = p.now.after(Duration::from_secs(40));
        svc.publish("ticks", &i).unwrap();
        p.server.handle(p.now, Input::Wakeup);
        p.drive();
    }
    p.server.handle(p.now, Input::Timeout);
    p.drive();
    assert!(p.closed.is_none(), "closed as idle: {:?}", p.closed);
    assert_eq!(p.received.iter().filter(|v| v["method"] == "subscription").count(), 6);
    // Then silence: the idle timer closes it with 1001.
    p.now = p.now.after(Duration::from_secs(61));
    p.server.handle(p.now, Input::Timeout);
    p.drive();
    assert_eq!(p.closed, Some(CloseCode::GOING_AWAY));
}

#[test]
fn a_websocket_peer_that_half_closes_still_gets_its_answers_then_the_end() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    let req = json!({"jsonrpc": "2.0", "method": "later", "params": [21], "id": 1});
    p.client.send_text(p.now.mono, &req.to_string()).unwrap();
    p.state.hold = true;
    p.deliver();
    p.server.handle(p.now, Input::Eof);
    drain(&mut p.server, p.now, &mut p.state);
    assert!(!p.state.finished, "an answer is still owed");
    let (id, work) = p.state.held.pop().expect("the call was handed out");
    p.server.handle(p.now, Input::Completed(id, run(work)));
    p.state.hold = false;
    drain(&mut p.server, p.now, &mut p.state);
    let out = std::mem::take(&mut p.state.out);
    let mut answers = Vec::new();
    p.client.handle_all_input(p.now.mono, &out, |_, e| {
        if let Event::Message(m) = e {
            answers.push(serde_json::from_slice::<Value>(&m.data).unwrap());
        }
    });
    assert_eq!(answers[0]["result"], 42);
    assert!(p.state.finished, "then it ends");
    assert!(
        p.state
            .events
            .iter()
            .any(|e| matches!(e, ConnEvent::Closed { code, .. } if *code == CloseCode::ABNORMAL))
    );
}

#[test]
fn a_clean_close_writes_the_close_frame_half_closes_and_finishes_without_waiting_for_eof() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    p.call("subscribe", json!(["news"]));
    p.client.close(p.now.mono, CloseCode::NORMAL, "bye").unwrap();
    p.deliver();
    let mut seen = Vec::new();
    for _ in 0..10 {
        match p.server.poll_output(p.now) {
            Output::Event(_) => seen.push("event"),
            Output::Transmit(mut tx) => {
                let mut slices = [IoSlice::new(&[]); 8];
                let k = tx.slices(&mut slices);
                let bytes: Vec<u8> = slices[..k].iter().flat_map(|s| s.iter().copied()).collect();
                tx.advance(bytes.len());
                p.client.handle_all_input(p.now.mono, &bytes, |_, _| {});
                seen.push("transmit");
            }
            Output::ShutdownWrite => seen.push("shutdown"),
            Output::Finished => {
                seen.push("finished");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // No end of file was given: the peer's close frame says it sends nothing more.
    assert_eq!(
        seen.iter().filter(|s| **s != "event").collect::<Vec<_>>(),
        [&"transmit", &"shutdown", &"finished"]
    );
    assert!(!p.client.is_finished(), "the client waits for the server's end of the stream");
    p.client.handle_eof(p.now.mono);
    assert!(p.client.is_finished());
    assert_eq!(svc.hub().stats().subscriptions_active, 0);
}

#[test]
fn a_broken_transport_ends_the_connection_at_once() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    p.call("subscribe", json!(["news"]));
    assert_eq!(svc.hub().stats().subscriptions_active, 1);
    p.server.handle(p.now, Input::Broken);
    drain(&mut p.server, p.now, &mut p.state);
    assert!(p.state.finished);
    assert_eq!(svc.hub().stats().subscriptions_active, 0, "its subscriptions are gone");
}

#[test]
fn transmit_is_offered_once_per_drain_and_a_peer_that_reads_nothing_is_dropped() {
    let svc = service(ServiceConfig::default());
    let mut p = WsPair::connect(&svc, "/", &[]);
    let req = json!({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1});
    p.client.send_text(p.now.mono, &req.to_string()).unwrap();
    p.deliver();
    // The transport takes nothing: the adapter drops the Transmit, and the next output is
    // the deadline, not the same bytes again.
    let mut transmits = 0;
    let deadline = loop {
        match p.server.poll_output(p.now) {
            Output::Transmit(_) => transmits += 1,
            Output::Wait(d) => break d,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(transmits, 1);
    // The stall limit: the longer of the pong (30 s) and close (5 s) timeouts.
    assert_eq!(deadline.unwrap() - p.now.mono, Duration::from_secs(30));
    p.now = p.now.after(Duration::from_secs(30));
    p.server.handle(p.now, Input::Timeout);
    drain(&mut p.server, p.now, &mut Drained::default());
    let mut state = Drained::default();
    drain(&mut p.server, p.now, &mut state);
    assert!(state.finished, "dropped for not reading");
}

#[test]
fn jwt_expiry_follows_the_wall_clock_not_the_monotonic_one() {
    // After a suspend, the monotonic clock has moved one second, the wall clock three hours.
    let jwt = Hs256Jwt::new("k3y");
    let mut config = ServiceConfig::default();
    config.auth.authenticator = Some(Arc::new(jwt.clone()));
    let svc = service(config);
    let token = jwt.sign(&json!({"sub": "0xabc", "exp": start().wall.as_secs() + 3600}));
    let body = r#"{"jsonrpc":"2.0","method":"whoami","id":1}"#;
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut h = Http::new(&svc);
    assert_eq!(h.request(&post(body, &auth))[0].status, 200);
    let mut h = Http::new(&svc);
    h.now = Now::new(
        h.now.mono + Duration::from_secs(1),
        UnixTime(h.now.wall.0 + Duration::from_secs(3 * 3600)),
    );
    assert_eq!(h.request(&post(body, &auth))[0].status, 401);
}

#[test]
fn blocking_methods_are_handed_out_as_blocking_work() {
    let mut r = router();
    r.blocking_method("slow", |(x,): (u64,), ctx| Ok(json!({"x": x, "conn": ctx.connection.0})));
    let svc = Service::new(ServiceConfig::default(), r, start());
    let mut h = Http::new(&svc);
    h.state.hold = true;
    h.exchange(&post(r#"{"jsonrpc":"2.0","method":"slow","params":[7],"id":1}"#, ""));
    let (id, work) = h.state.held.pop().expect("handed out");
    assert!(matches!(work, Work::Blocking(_)), "{work:?}");
    assert!(h.state.out.is_empty(), "the POST waits for it");
    h.state.hold = false;
    h.input(Input::Completed(id, run(work)));
    let r = parse_responses(&std::mem::take(&mut h.state.out));
    assert_eq!(r[0].json()["result"]["x"], 7);
}

/// Hooks: the order of their points, refusals, durations on the virtual clock, and the
/// closed hook's code.
mod hooks {
    use std::sync::Mutex;

    use wsrpc_core::rpc::RpcError;
    use wsrpc_core::rpc::hooks::{
        CallEnd, CallStart, ConnectionClosed, ConnectionOpened, Hook, after_call, before_call,
    };

    use super::*;

    /// What hooks and handlers saw, in order.
    #[derive(Default)]
    struct Trail(Mutex<Vec<String>>);

    impl Trail {
        fn push(&self, line: String) {
            self.0.lock().unwrap().push(line);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Writes every point it sees to the trail; refuses `add` of 13.
    struct Recorder(Arc<Trail>);

    impl Hook for Recorder {
        fn before_call(&self, call: &mut CallStart<'_>) -> Result<(), RpcError> {
            let id = call.context.id.as_ref().map_or("-", |i| i.as_json());
            self.0.push(format!("before {} {id}", call.method));
            if call.method == "add" && call.params.parse::<(i64, i64)>().is_ok_and(|p| p.0 == 13) {
                return Err(RpcError::new(4100, "unlucky"));
            }
            Ok(())
        }
        fn after_call(&self, call: &CallEnd<'_>) {
            let id = call.context.id.as_ref().map_or("-", |i| i.as_json());
            let (code, refused) = (call.outcome.code(), call.refused);
            let ms = call.duration.as_millis();
            self.0.push(format!("after {} {id} {code:?} {refused:?} {ms}ms", call.method));
        }
        fn connection_opened(&self, c: &ConnectionOpened<'_>) {
            let origin = c.origin.unwrap_or("-");
            let who = if c.principal.authenticated { &*c.principal.id } else { "anonymous" };
            self.0.push(format!("opened {} {origin} {who}", c.path));
        }
        fn connection_closed(&self, c: &ConnectionClosed<'_>) {
            let ms = c.duration.as_millis();
            self.0.push(format!("closed {} {:?} clean={} {ms}ms", c.code.0, c.reason, c.clean));
        }
    }

    fn hooked(trail: &Arc<Trail>, more: Vec<Arc<dyn Hook>>) -> Arc<Service> {
        let mut r = Router::new();
        let t = trail.clone();
        r.method("add", move |(a, b): (i64, i64), _| {
            t.push(format!("handler add {a} {b}"));
            Ok(a + b)
        })
        .async_method("later", |(x,): (i64,), _| async move { Ok(x * 2) })
        .method("boom", |(): (), _| -> Result<(), RpcError> { panic!("boom") });
        let mut hooks: Vec<Arc<dyn Hook>> = vec![Arc::new(Recorder(trail.clone()))];
        hooks.extend(more);
        Service::with_hooks(ServiceConfig::default(), r, start(), hooks)
    }

    fn send(p: &mut WsPair, text: &str) {
        p.client.send_text(p.now.mono, text).unwrap();
        p.drive();
    }

    #[test]
    fn every_point_in_order_from_open_to_close() {
        let trail = Arc::new(Trail::default());
        let svc = hooked(&trail, Vec::new());
        let mut p = WsPair::connect(&svc, "/rpc", &[("Origin", "http://127.0.0.1:3000")]);
        assert_eq!(trail.take(), ["opened /rpc http://127.0.0.1:3000 anonymous"]);
        assert_eq!(p.call("add", json!([2, 3]))["result"], 5);
        assert_eq!(
            trail.take(),
            ["before add 1000", "handler add 2 3", "after add 1000 None None 0ms"]
        );
        // A batch is observed call by call, refusals included; a notification too.
        send(
            &mut p,
            r#"[{"jsonrpc":"2.0","method":"add","params":[1,1],"id":"a"},
                {"jsonrpc":"2.0","method":"nope","id":"b"},
                {"jsonrpc":"2.0","method":"add","params":[4,4]}]"#,
        );
        assert_eq!(
            trail.take(),
            [
                "before add \"a\"",
                "handler add 1 1",
                "after add \"a\" None None 0ms",
                "after nope \"b\" Some(-32601) Some(NotFound) 0ms",
                "before add -",
                "handler add 4 4",
                "after add - None None 0ms",
            ]
        );
        // An async call is observed when its work completes, timed on the virtual clock.
        p.state.hold = true;
        p.client
            .send_text(p.now.mono, r#"{"jsonrpc":"2.0","method":"later","params":[21],"id":7}"#)
            .unwrap();
        p.drive();
        let (call, work) = p.state.held.pop().expect("handed out");
        assert_eq!(trail.take(), ["before later 7"], "not observed before it completes");
        p.now = p.now.at(p.now.mono + Duration::from_millis(250));
        p.server.handle(p.now, Input::Completed(call, run(work)));
        p.drive();
        assert_eq!(p.received.pop().unwrap()["result"], 42);
        assert_eq!(trail.take(), ["after later 7 None None 250ms"]);
        // The close, with the peer's code and reason, once.
        p.now = p.now.at(p.now.mono + Duration::from_millis(750));
        p.client.close(p.now.mono, CloseCode::NORMAL, "bye").unwrap();
        p.drive();
        drain(&mut p.server, p.now, &mut p.state);
        assert_eq!(trail.take(), ["closed 1000 \"bye\" clean=true 1000ms"]);
        drop(p);
        assert!(trail.take().is_empty(), "told once");
    }

    /// What a hook learned about the caller, for the handler.
    #[derive(Debug)]
    struct Tag(String);

    #[test]
    fn extensions_a_hook_inserts_reach_the_handler_and_end_with_the_call() {
        let trail = Arc::new(Trail::default());
        let t = trail.clone();
        let tagger = before_call(|call: &mut CallStart<'_>| {
            if call.method != "plain" {
                let id = call.context.id.as_ref().map_or("-", |i| i.as_json());
                call.extensions.insert(Tag(format!("{} {id}", call.method)));
            }
            Ok(())
        });
        let observer = after_call(move |call: &CallEnd<'_>| {
            let tag = call.context.extensions.get::<Tag>().map(|t| t.0.clone());
            t.push(format!("observed {tag:?}"));
        });
        let mut r = Router::new();
        let seen = |ctx: &wsrpc_core::rpc::CallContext| {
            json!(ctx.extensions.get::<Tag>().map(|t| t.0.clone()))
        };
        r.method("sync", move |(): (), ctx| Ok(seen(&ctx)))
            .method("plain", move |(): (), ctx| Ok(seen(&ctx)))
            .async_method("later", move |(): (), ctx| async move { Ok(seen(&ctx)) });
        let hooks: Vec<Arc<dyn Hook>> = vec![Arc::new(tagger), Arc::new(observer)];
        let svc = Service::with_hooks(ServiceConfig::default(), r, start(), hooks);
        let mut p = WsPair::connect(&svc, "/", &[]);
        assert_eq!(p.call("sync", json!([]))["result"], "sync 1000");
        assert_eq!(p.call("plain", json!([]))["result"], Value::Null, "nothing left over");
        // An async handler gets them in its own context; the observer at completion too.
        p.state.hold = true;
        p.client.send_text(p.now.mono, r#"{"jsonrpc":"2.0","method":"later","id":"x"}"#).unwrap();
        p.drive();
        let (call, work) = p.state.held.pop().expect("handed out");
        assert_eq!(p.call("plain", json!([]))["result"], Value::Null, "another call meanwhile");
        p.server.handle(p.now, Input::Completed(call, run(work)));
        p.drive();
        assert_eq!(p.received.pop().unwrap()["result"], "later \"x\"");
        assert_eq!(
            trail.take(),
            [
                "observed Some(\"sync 1000\")",
                "observed None",
                "observed None",
                "observed Some(\"later \\\"x\\\"\")",
            ]
        );
    }

    #[test]
    fn a_refusal_is_the_answer_and_the_handler_never_runs() {
        let trail = Arc::new(Trail::default());
        let svc = hooked(&trail, Vec::new());
        let mut p = WsPair::connect(&svc, "/", &[]);
        trail.take();
        let answer = p.call("add", json!([13, 1]));
        assert_eq!(answer["error"], json!({"code": 4100, "message": "unlucky"}));
        assert_eq!(trail.take(), ["before add 1000", "after add 1000 Some(4100) Some(Hook) 0ms"]);
        // Counted by the built-in observer like any error of its code.
        assert_eq!(svc.snapshot(p.now.mono).errors.get("application"), Some(&1));
        assert_eq!(p.call("add", json!([12, 1]))["result"], 13, "the next call runs");
    }

    #[test]
    fn limits_refuse_before_the_hooks_and_are_observed_as_limits() {
        let trail = Arc::new(Trail::default());
        let mut config = ServiceConfig::default();
        config.limits.classes = wsrpc_core::limit::MethodClasses::default().with_tiers(
            wsrpc_core::limit::MethodClass::Default,
            &[wsrpc_core::limit::Rate::per_second(1)],
        );
        let svc = {
            let mut r = Router::new();
            r.method("add", |(a, b): (i64, i64), _| Ok(a + b));
            Service::with_hooks(config, r, start(), vec![Arc::new(Recorder(trail.clone()))])
        };
        let mut p = WsPair::connect(&svc, "/", &[]);
        trail.take();
        p.call("add", json!([1, 1]));
        let refused = p.call("add", json!([1, 1]));
        assert_eq!(refused["error"]["code"], -32005);
        let seen = trail.take();
        assert_eq!(seen[2], "after add 1000 Some(-32005) Some(Limit) 0ms", "{seen:?}");
        assert_eq!(seen.len(), 3, "no before_call for a call the limits refused: {seen:?}");
        let snapshot = svc.snapshot(p.now.mono);
        assert_eq!((snapshot.rate_limited, snapshot.errors.get("limit_exceeded")), (1, Some(&1)));
    }

    #[test]
    fn a_broken_or_dropped_connection_closes_with_1006() {
        let trail = Arc::new(Trail::default());
        let svc = hooked(&trail, Vec::new());
        let mut p = WsPair::connect(&svc, "/", &[]);
        p.server.handle(p.now, Input::Broken);
        drain(&mut p.server, p.now, &mut p.state);
        assert_eq!(trail.take()[1..], ["closed 1006 \"\" clean=false 0ms"]);
        // Dropped by its adapter while open (a runtime going away).
        let p = WsPair::connect(&svc, "/", &[]);
        trail.take();
        drop(p);
        assert_eq!(trail.take(), ["closed 1006 \"connection dropped\" clean=false 0ms"]);
    }

    #[test]
    fn http_calls_are_observed_without_connection_hooks() {
        let trail = Arc::new(Trail::default());
        let svc = hooked(&trail, Vec::new());
        let mut h = Http::new(&svc);
        let r = h.request(&post(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#, ""));
        assert_eq!(r[0].json()["result"], 5);
        let r = h.request(&post(r#"{"jsonrpc":"2.0","method":"add","params":[13,3],"id":2}"#, ""));
        assert_eq!(r[0].json()["error"]["code"], 4100);
        drop(h);
        assert_eq!(
            trail.take(),
            [
                "before add 1",
                "handler add 2 3",
                "after add 1 None None 0ms",
                "before add 2",
                "after add 2 Some(4100) Some(Hook) 0ms",
            ]
        );
    }

    #[test]
    fn hooks_run_in_registration_order_and_a_panic_is_a_32603_refusal() {
        let trail = Arc::new(Trail::default());
        let (t1, t2) = (trail.clone(), trail.clone());
        let svc = hooked(
            &trail,
            vec![
                Arc::new(before_call(move |call: &mut CallStart<'_>| {
                    t1.push(format!("second before {}", call.method));
                    if call.method == "later" {
                        panic!("hook bug");
                    }
                    Ok(())
                })),
                Arc::new(after_call(move |call: &CallEnd<'_>| {
                    t2.push(format!("second after {}", call.method));
                })),
            ],
        );
        let mut p = WsPair::connect(&svc, "/", &[]);
        trail.take();
        p.call("add", json!([1, 2]));
        assert_eq!(
            trail.take(),
            [
                "before add 1000",
                "second before add",
                "handler add 1 2",
                "after add 1000 None None 0ms",
                "second after add",
            ]
        );
        let answer = p.call("later", json!([1]));
        assert_eq!(answer["error"]["code"], -32603, "{answer}");
        assert_eq!(trail.take()[2], "after later 1000 Some(-32603) Some(Hook) 0ms");
        // A panicking handler is the handler's failure, not a refusal.
        assert_eq!(p.call("boom", json!([]))["error"]["code"], -32603);
        assert_eq!(trail.take()[2], "after boom 1000 Some(-32603) None 0ms");
        assert_eq!(p.call("add", json!([2, 2]))["result"], 4, "the connection lives on");
    }

    #[test]
    fn the_built_in_metrics_count_what_the_observers_see() {
        let trail = Arc::new(Trail::default());
        let svc = hooked(&trail, Vec::new());
        let mut p = WsPair::connect(&svc, "/", &[]);
        for params in [json!([1, 2]), json!([13, 0]), json!(["x", 1]), json!([3, 4])] {
            p.call("add", params);
        }
        p.call("nope", json!([]));
        let seen = trail.take();
        // Each failed call's line carries its code where a successful one has `None None`.
        let observed_errors =
            seen.iter().filter(|l| l.starts_with("after") && !l.contains(" None None ")).count();
        assert_eq!(observed_errors, 3, "{seen:?}");
        let snapshot = svc.snapshot(p.now.mono);
        assert_eq!(snapshot.errors.values().sum::<u64>(), observed_errors as u64, "{seen:?}");
        assert_eq!(
            (snapshot.errors.get("invalid_params"), snapshot.errors.get("method_not_found")),
            (Some(&1), Some(&1))
        );
        // The handler ran for three of the four `add` calls (the hook refused one).
        assert_eq!(snapshot.methods["add"].count, 3);
    }
}
