//! Cross-site WebSocket hijacking, with a real browser: Debian's `chromium`, headless.
//!
//! Browsers let any page open `ws://127.0.0.1`, so the Origin check is what protects a local
//! wallet bridge. A page served from an allowed origin (`http://127.0.0.1:P`) opens a WebSocket
//! to the server and completes a call; the same page served as `http://evil.example:P` (the
//! browser resolves that name to 127.0.0.1) is refused at the handshake with 403, which the
//! page observes as a connection that never opens, and the server counts as an auth refusal.
//!
//! Chromium's default permessage-deflate offer is accepted by a server with compression on,
//! and a call and a subscription run compressed.
//!
//! Over TLS, a page served by the server itself as `https://localhost:P/page` (Chromium trusts
//! the test leaf through `--ignore-certificate-errors-spki-list`) opens `wss://` to the same
//! server, completes a call and reports the answer with another call.
//!
//! Without chromium the test says so loudly and passes, unless `CI` is set: then it fails
//! (`.ci/run` installs chromium with `scripts/install-chromium.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::rpc::Router;
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_tests::{Adapter, TestServer};

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| name.to_string())
    })
}

/// Serves the test page on `listener` and returns what the page reports to `/report`.
fn serve_page(
    listener: TcpListener,
    page: &'static str,
    ws_url: String,
    reports: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
            if let Some(q) = target.strip_prefix("/report?") {
                let _ = reports.send(percent_decode(q));
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                continue;
            }
            let body = page.replace("WS_URL", &ws_url);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.read(&mut [0u8; 1]);
        }
    });
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const PAGE: &str = r#"<!doctype html><html><body><script>
const report = (r) => fetch('/report?' + encodeURIComponent(JSON.stringify(r)));
let opened = false;
const ws = new WebSocket('WS_URL');
ws.onopen = () => { opened = true; ws.send(JSON.stringify({jsonrpc: '2.0', method: 'add', params: [20, 22], id: 1})); };
ws.onmessage = (e) => { report({opened, reply: JSON.parse(e.data)}); ws.close(); };
ws.onclose = (e) => { if (!opened) report({opened, closed: e.code}); };
</script></body></html>"#;

/// Chromium's own permessage-deflate offer: a large call answered, a subscription whose large
/// notifications arrive; reports what the browser negotiated.
const COMPRESSED_PAGE: &str = r#"<!doctype html><html><body><script>
const report = (r) => fetch('/report?' + encodeURIComponent(JSON.stringify(r)));
const big = {rows: Array.from({length: 200}, (_, i) => ({price: 40000 + i, qty: 1.5, side: 'buy'}))};
const call = (method, params, id) => ws.send(JSON.stringify({jsonrpc: '2.0', method, params, id}));
const notes = [];
let echoOk = false, done = false;
const ws = new WebSocket('WS_URL');
ws.onopen = () => call('echo', big, 1);
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.id === 1) { echoOk = JSON.stringify(m.result) === JSON.stringify(big); call('subscribe', ['browser'], 2); }
  else if (m.id === 2) call('publish', ['browser', 2, 100], 3);
  else if (m.method === 'subscription') {
    notes.push(m.params);
    if (notes.length === 2) {
      done = true;
      report({extensions: ws.extensions, echoOk, seqs: notes.map((n) => n.seq), rows: notes.map((n) => n.result.rows.length)});
      ws.close();
    }
  }
};
ws.onclose = (e) => { if (!done) report({closed: e.code, extensions: ws.extensions}); };
</script></body></html>"#;

struct Browser(Child, std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn visit(chromium: &str, url: &str) -> Browser {
    visit_with(chromium, url, &[])
}

fn visit_with(chromium: &str, url: &str, extra: &[String]) -> Browser {
    // A profile of its own: two instances sharing one would hand the page to the first.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("wsrpc-chromium-{}-{n}", std::process::id()));
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--host-resolver-rules=MAP evil.example 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    Browser(child, profile)
}

fn page_result(chromium: &str, page: SocketAddr, host: &str, ws_url: &str) -> Value {
    page_result_of(chromium, PAGE, page, host, ws_url)
}

fn page_result_of(
    chromium: &str,
    html: &'static str,
    page: SocketAddr,
    host: &str,
    ws_url: &str,
) -> Value {
    let listener = TcpListener::bind(page).expect("page port");
    let (tx, rx) = mpsc::channel();
    serve_page(listener, html, ws_url.to_owned(), tx);
    let _browser = visit(chromium, &format!("http://{host}:{}/", page.port()));
    let report = rx.recv_timeout(Duration::from_secs(60)).expect("the page reports within 60 s");
    serde_json::from_str(&report).expect("the page reports JSON")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn cross_site_hijacking_is_refused<A: Adapter>() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is missing: run scripts/install-chromium.sh"
        );
        eprintln!(
            "\n*** SKIPPED browser test for {}: chromium not found (scripts/install-chromium.sh installs it) ***\n",
            A::NAME
        );
        return;
    };
    let mut router = Router::new();
    router.method("add", |(a, b): (i64, i64), _| Ok(a + b));
    let server =
        A::start(ServiceConfig::default(), router, Bind::Addr("127.0.0.1:0".parse().unwrap()))
            .unwrap();
    let ws_url = format!("ws://127.0.0.1:{}/", server.addr().port());

    let allowed = page_result(&chromium, free_port(), "127.0.0.1", &ws_url);
    assert_eq!(allowed["opened"], true, "{allowed}");
    assert_eq!(allowed["reply"]["result"], 42, "{allowed}");

    let auth_before = server.metrics().errors.get("auth").copied().unwrap_or(0);
    let started = Instant::now();
    let refused = page_result(&chromium, free_port(), "evil.example", &ws_url);
    assert_eq!(refused["opened"], false, "{refused}");
    assert_eq!(refused["closed"], 1006, "the browser hides the 403 behind 1006: {refused}");
    assert!(
        server.metrics().errors.get("auth").copied().unwrap_or(0) > auth_before,
        "the server refused it with 403"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    drop::<Box<dyn TestServer>>(server);
}

/// Chromium offers permessage-deflate by default: a large call and a subscription go
/// compressed both ways, and a publish is compressed once.
fn compressed_calls_and_subscription<A: Adapter>() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is missing: run scripts/install-chromium.sh"
        );
        eprintln!(
            "\n*** SKIPPED compressed browser test for {}: chromium not found ***\n",
            A::NAME
        );
        return;
    };
    type Publish = Box<dyn Fn(&str, u64, usize) + Send + Sync>;
    let publisher: Arc<OnceLock<Publish>> = Arc::new(OnceLock::new());
    let p = publisher.clone();
    let mut router = Router::new();
    router.method("echo", |v: Value, _| Ok(v)).method(
        "publish",
        move |(topic, n, rows): (String, u64, usize), _| {
            let publish = p.get().expect("set after start");
            for i in 1..=n {
                publish(&topic, i, rows);
            }
            Ok(n)
        },
    );
    let mut config = ServiceConfig::default();
    config.ws.enable_compression();
    let server: Arc<dyn TestServer> =
        Arc::from(A::start(config, router, Bind::Addr("127.0.0.1:0".parse().unwrap())).unwrap());
    let s = server.clone();
    let _ = publisher.set(Box::new(move |topic: &str, i: u64, rows: usize| {
        let rows: Vec<Value> =
            (0..rows).map(|r| json!({"price": 40000 + r, "qty": 1.5, "side": "sell"})).collect();
        s.publish(topic, &json!({"n": i, "rows": rows}));
    }));
    let ws_url = format!("ws://127.0.0.1:{}/", server.addr().port());
    let got = page_result_of(&chromium, COMPRESSED_PAGE, free_port(), "127.0.0.1", &ws_url);
    let extensions = got["extensions"].as_str().unwrap_or_default();
    assert!(extensions.starts_with("permessage-deflate"), "{got}");
    assert!(extensions.contains("server_no_context_takeover"), "{got}");
    assert_eq!(got["echoOk"], true, "{got}");
    assert_eq!(got["seqs"], json!([1, 2]), "{got}");
    assert_eq!(got["rows"], json!([100, 100]), "{got}");
    let c = server.metrics().compression;
    assert!(c.messages_received >= 1, "the browser compressed its call: {c:?}");
    assert!(c.messages_sent >= 3, "{c:?}");
    assert!(c.received_inflated_bytes > 3 * c.received_compressed_bytes, "{c:?}");
    assert!(c.sent_uncompressed_bytes > 3 * c.sent_compressed_bytes, "{c:?}");
}

#[test]
fn smol_compressed_calls_and_subscription() {
    compressed_calls_and_subscription::<wsrpc_tests::Smol>();
}

#[test]
fn async_std_compressed_calls_and_subscription() {
    compressed_calls_and_subscription::<wsrpc_tests::AsyncStd>();
}

#[test]
fn blocking_compressed_calls_and_subscription() {
    compressed_calls_and_subscription::<wsrpc_tests::Blocking>();
}

const TLS_PAGE: &str = r#"<!doctype html><html><body><script>
const ws = new WebSocket('wss://' + location.host + '/');
ws.onopen = () => ws.send(JSON.stringify({jsonrpc: '2.0', method: 'add', params: [20, 22], id: 1}));
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.id === 1) ws.send(JSON.stringify({jsonrpc: '2.0', method: 'report', params: [{origin: location.origin, reply: m}], id: 2}));
  else ws.close();
};
ws.onerror = () => fetch('/failed');
</script></body></html>"#;

fn a_page_over_https_calls_over_wss<A: Adapter>() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is missing: run scripts/install-chromium.sh"
        );
        eprintln!("\n*** SKIPPED browser TLS test for {}: chromium not found ***\n", A::NAME);
        return;
    };
    let (tx, rx) = mpsc::channel::<Value>();
    let tx = std::sync::Mutex::new(tx);
    let mut router = Router::new();
    router.method("add", |(a, b): (i64, i64), _| Ok(a + b)).method(
        "report",
        move |(report,): (Value,), _| {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(report);
            Ok(true)
        },
    );
    let mut config = ServiceConfig::default();
    config.http.routes.push(wsrpc_core::http::StaticRoute::new(
        "/page",
        "text/html; charset=utf-8",
        TLS_PAGE.as_bytes(),
    ));
    let pki = wsrpc_tests::tls::pki();
    let server = A::start_with(
        config,
        router,
        Bind::Addr("127.0.0.1:0".parse().unwrap()),
        Some(pki.server.clone()),
    )
    .unwrap();
    let trust = format!("--ignore-certificate-errors-spki-list={}", pki.leaf.spki_sha256);
    let url = format!("https://localhost:{}/page", server.addr().port());
    let _browser = visit_with(&chromium, &url, &[trust]);
    let report = rx.recv_timeout(Duration::from_secs(60)).expect("the page reports within 60 s");
    assert_eq!(report["origin"], format!("https://localhost:{}", server.addr().port()));
    assert_eq!(report["reply"]["result"], 42, "{report}");
    assert_eq!(server.metrics().errors.get("auth").copied().unwrap_or(0), 0);
}

#[test]
fn smol_page_over_https_calls_over_wss() {
    a_page_over_https_calls_over_wss::<wsrpc_tests::Smol>();
}

#[test]
fn async_std_page_over_https_calls_over_wss() {
    a_page_over_https_calls_over_wss::<wsrpc_tests::AsyncStd>();
}

#[test]
fn blocking_page_over_https_calls_over_wss() {
    a_page_over_https_calls_over_wss::<wsrpc_tests::Blocking>();
}

#[test]
fn smol_cross_site_hijacking_is_refused() {
    cross_site_hijacking_is_refused::<wsrpc_tests::Smol>();
}

#[test]
fn async_std_cross_site_hijacking_is_refused() {
    cross_site_hijacking_is_refused::<wsrpc_tests::AsyncStd>();
}

#[test]
fn blocking_cross_site_hijacking_is_refused() {
    cross_site_hijacking_is_refused::<wsrpc_tests::Blocking>();
}
