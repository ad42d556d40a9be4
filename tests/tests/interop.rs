//! Interop with independent peers against every adapter's server: async-tungstenite (a Rust
//! client that shares no code with wsrpc), Python `websockets` and Node `ws` (installed on first
//! use by `tests/interop/setup.sh`), the last two also with permessage-deflate negotiated. Also the JSON-RPC session driven over an async-tungstenite
//! server stream the application owns (`wsrpc_futures::serve_messages`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::rpc::Router;
use wsrpc_core::service::{Bind, Service, ServiceConfig};
use wsrpc_tests::{Adapter, TestServer};

type Publisher = Arc<OnceLock<Box<dyn Fn(&str, u64, usize) + Send + Sync>>>;

/// `add`, `echo`, and `publish(topic, n[, rows])` which publishes 1..=n to `topic` (so a
/// client can trigger it), each with `rows` JSON rows (compressible bulk).
fn router(publisher: &Publisher) -> Router {
    let p = publisher.clone();
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b)).method("echo", |v: Value, _| Ok(v)).method(
        "publish",
        move |args: Vec<Value>, _| {
            let topic = args.first().and_then(Value::as_str).unwrap_or("interop").to_owned();
            let n = args.get(1).and_then(Value::as_u64).unwrap_or(1);
            let rows = args.get(2).and_then(Value::as_u64).unwrap_or(0) as usize;
            let publish = p.get().expect("publisher set after start");
            for i in 1..=n {
                publish(&topic, i, rows);
            }
            Ok(n)
        },
    );
    r
}

fn start_with_publisher<A: Adapter>() -> (Arc<dyn TestServer>, Publisher) {
    start_configured::<A>(ServiceConfig::default())
}

fn start_configured<A: Adapter>(config: ServiceConfig) -> (Arc<dyn TestServer>, Publisher) {
    let publisher: Publisher = Arc::new(OnceLock::new());
    let server: Arc<dyn TestServer> = Arc::from(
        A::start(config, router(&publisher), Bind::Addr("127.0.0.1:0".parse().unwrap())).unwrap(),
    );
    let s = server.clone();
    let _ = publisher.set(Box::new(move |topic: &str, i: u64, rows: usize| {
        if rows == 0 {
            s.publish(topic, &json!({ "n": i }));
        } else {
            let rows: Vec<Value> =
                (0..rows).map(|r| json!({"price": 40000 + r, "qty": 1.5, "side": "buy"})).collect();
            s.publish(topic, &json!({ "n": i, "rows": rows }));
        }
    }));
    (server, publisher)
}

/// A server with permessage-deflate on (its defaults).
fn start_compressed<A: Adapter>() -> (Arc<dyn TestServer>, Publisher) {
    let mut config = ServiceConfig::default();
    config.ws.enable_compression();
    start_configured::<A>(config)
}

/// The peer's compressed traffic reached the server's counters both ways, and the published
/// notifications were compressed once each, not once per delivery.
fn assert_compressed(server: &dyn TestServer, out: &str) {
    let c = server.metrics().compression;
    assert!(c.messages_received >= 1, "the peer compressed nothing: {c:?}\n{out}");
    assert!(c.messages_sent >= 3, "we compressed too little: {c:?}\n{out}");
    assert!(c.sent_uncompressed_bytes > 3 * c.sent_compressed_bytes, "{c:?}");
    assert!(c.received_inflated_bytes > 3 * c.received_compressed_bytes, "{c:?}");
}

fn peers_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/setup.sh");
        let out = Command::new("bash").arg(&script).output().expect("run interop/setup.sh");
        assert!(
            out.status.success(),
            "interop setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn run_peer(program: PathBuf, script: &str, url: &str, env_node_path: bool) -> String {
    run_peer_args(program, script, &[url], env_node_path)
}

fn run_peer_args(program: PathBuf, script: &str, args: &[&str], env_node_path: bool) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop").join(script);
    let mut cmd = Command::new(program);
    cmd.arg(script).args(args);
    if args.first().is_some_and(|url| url.starts_with("wss://")) {
        cmd.env("WSRPC_CA", ca_file());
    }
    if env_node_path {
        cmd.env("NODE_PATH", peers_dir().join("node/node_modules"));
    }
    let out = cmd.output().expect("peer runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "peer failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The test CA's certificate as a PEM file, for peers that trust it.
fn ca_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("wsrpc-test-ca-{}.pem", std::process::id()));
        std::fs::write(&path, &wsrpc_tests::tls::pki().ca.pem).expect("write the CA");
        path
    })
}

/// `wss://localhost:PORT/`: the peer sends SNI and verifies the leaf's DNS name.
fn by_name(server: &dyn TestServer) -> String {
    format!("wss://localhost:{}/", server.addr().port())
}

pub fn python_websockets_over_tls<A: Adapter>() {
    let (server, _p) = start_with_publisher::<wsrpc_tests::Tls<A>>();
    let out = run_peer(peers_dir().join("venv/bin/python"), "client.py", &by_name(&*server), false);
    for check in ["python: call ok", "python: batch ok", "python: subscription ok"] {
        assert!(out.contains(check), "{out}");
    }
}

pub fn node_ws_over_tls<A: Adapter>() {
    let (server, _p) = start_with_publisher::<wsrpc_tests::Tls<A>>();
    let out = run_peer("node".into(), "client.js", &by_name(&*server), true);
    for check in ["node: call ok", "node: batch ok", "node: subscription ok"] {
        assert!(out.contains(check), "{out}");
    }
}

pub fn python_websockets<A: Adapter>() {
    let (server, _p) = start_with_publisher::<A>();
    let out = run_peer(peers_dir().join("venv/bin/python"), "client.py", &server.url(), false);
    for check in ["python: call ok", "python: batch ok", "python: subscription ok"] {
        assert!(out.contains(check), "{out}");
    }
}

pub fn python_websockets_compressed<A: Adapter>() {
    let (server, _p) = start_compressed::<A>();
    let out = run_peer_args(
        peers_dir().join("venv/bin/python"),
        "client.py",
        &[&server.url(), "compressed"],
        false,
    );
    for check in [
        "python: call ok",
        "python: subscription ok",
        "python: compressed call ok",
        "python: compressed subscription ok",
    ] {
        assert!(out.contains(check), "{out}");
    }
    assert_compressed(&*server, &out);
}

pub fn node_ws_compressed<A: Adapter>() {
    let (server, _p) = start_compressed::<A>();
    let out = run_peer_args("node".into(), "client.js", &[&server.url(), "compressed"], true);
    for check in [
        "node: call ok",
        "node: subscription ok",
        "node: compressed call ok",
        "node: compressed subscription ok",
    ] {
        assert!(out.contains(check), "{out}");
    }
    assert_compressed(&*server, &out);
}

/// Our compressing client (each adapter's) against a Python `websockets` server, which
/// negotiates permessage-deflate by default: a large call answered, compressed both ways.
pub fn client_against_python_websockets_server<A: Adapter>() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/server.py");
    let mut child = Command::new(peers_dir().join("venv/bin/python"))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python server starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    let port: u16 = first.strip_prefix("listening ").expect("listening PORT").parse().unwrap();
    let options = wsrpc_core::rpc::client::ClientOptions::default().compression();
    let client = A::connect(&format!("ws://127.0.0.1:{port}/"), options).expect("connects");
    let big = json!({"rows": vec![json!({"price": 40000.5, "qty": 1.5, "side": "buy"}); 200]});
    assert_eq!(client.call("echo", big.clone()).unwrap(), big);
    let negotiated = lines.next().expect("a line").unwrap();
    assert_eq!(negotiated, "extensions permessage-deflate", "the server's view");
    client.close();
    drop(child.stdin.take());
    let _ = child.wait();
}

pub fn node_ws<A: Adapter>() {
    let (server, _p) = start_with_publisher::<A>();
    let out = run_peer("node".into(), "client.js", &server.url(), true);
    for check in ["node: call ok", "node: batch ok", "node: subscription ok"] {
        assert!(out.contains(check), "{out}");
    }
}

pub fn async_tungstenite_client<A: Adapter>() {
    let (server, _p) = start_with_publisher::<A>();
    let addr = server.addr();
    smol::block_on(async move {
        let tcp = smol::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, resp) =
            async_tungstenite::client_async(format!("ws://{addr}/"), tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text(r#"{"jsonrpc":"2.0","method":"add","params":[20,22],"id":1}"#))
            .await
            .unwrap();
        let reply = read_json(&mut ws).await;
        assert_eq!(reply, json!({"jsonrpc":"2.0","result":42,"id":1}));
        ws.send(Message::text(r#"[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":2},{"jsonrpc":"2.0","method":"subscribe","params":["t"],"id":3}]"#))
            .await
            .unwrap();
        let batch = read_json(&mut ws).await;
        assert_eq!(batch[0]["result"], 3);
        assert!(batch[1]["result"]["subscription"].is_string());
        ws.send(Message::text(r#"{"jsonrpc":"2.0","method":"publish","params":["t",2],"id":4}"#))
            .await
            .unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < 2 {
            let m = read_json(&mut ws).await;
            if m["method"] == "subscription" {
                seqs.push(m["params"]["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(seqs, [1, 2]);
        // A binary message is refused with 1003.
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 1003);
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    });
}

async fn read_json<S>(ws: &mut async_tungstenite::WebSocketStream<S>) -> Value
where
    S: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await.expect("open").expect("valid frames") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

macro_rules! interop_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn python_websockets() {
                super::python_websockets::<$adapter>();
            }
            #[test]
            fn node_ws() {
                super::node_ws::<$adapter>();
            }
            #[test]
            fn python_websockets_over_tls() {
                super::python_websockets_over_tls::<$adapter>();
            }
            #[test]
            fn node_ws_over_tls() {
                super::node_ws_over_tls::<$adapter>();
            }
            #[test]
            fn python_websockets_compressed() {
                super::python_websockets_compressed::<$adapter>();
            }
            #[test]
            fn node_ws_compressed() {
                super::node_ws_compressed::<$adapter>();
            }
            #[test]
            fn client_against_python_websockets_server() {
                super::client_against_python_websockets_server::<$adapter>();
            }
            #[test]
            fn async_tungstenite_client() {
                super::async_tungstenite_client::<$adapter>();
            }
        }
    };
}

interop_tests!(with_smol, wsrpc_tests::Smol);
interop_tests!(with_async_std, wsrpc_tests::AsyncStd);
interop_tests!(with_blocking, wsrpc_tests::Blocking);

#[test]
fn rpc_session_over_an_async_tungstenite_server_stream() {
    smol::block_on(async {
        let publisher: Publisher = Arc::new(OnceLock::new());
        let service = Service::new(
            ServiceConfig::default(),
            router(&publisher),
            wsrpc_core::Now::new(std::time::Instant::now(), wsrpc_core::UnixTime(Duration::ZERO)),
        );
        let svc = service.clone();
        let _ = publisher.set(Box::new(move |topic: &str, i: u64, _rows: usize| {
            let _ = svc.publish(topic, &json!({ "n": i }));
        }));
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = smol::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = async_tungstenite::accept_async(tcp).await.unwrap();
            let (sink, stream) = ws.split();
            let incoming = stream.filter_map(|m| async move {
                match m {
                    Ok(Message::Text(t)) => Some(Ok::<_, String>(t.as_str().as_bytes().to_vec())),
                    Ok(Message::Close(_)) | Err(_) => Some(Err("closed".to_owned())),
                    Ok(_) => None,
                }
            });
            let outgoing = sink.with(|bytes: Vec<u8>| async move {
                Ok::<_, async_tungstenite::tungstenite::Error>(Message::text(
                    String::from_utf8(bytes).expect("JSON is UTF-8"),
                ))
            });
            wsrpc_futures::serve_messages(
                wsrpc_smol::SmolRuntime,
                service,
                None,
                Arc::new(Principal::anonymous()),
                Box::pin(incoming),
                Box::pin(outgoing),
            )
            .await;
        });
        let client =
            wsrpc_smol::connect(&format!("ws://{addr}"), Default::default()).await.unwrap();
        assert_eq!(client.call::<i64>("add", (1, 2)).await.unwrap(), 3);
        let mut sub = client.subscribe("own").await.unwrap();
        assert_eq!(client.call::<u64>("publish", ("own", 2)).await.unwrap(), 2);
        for seq in 1..=2 {
            match sub.next().await {
                Some(wsrpc_smol::SubscriptionEvent::Notification { seq: s, .. }) => {
                    assert_eq!(s, seq)
                }
                other => panic!("{other:?}"),
            }
        }
        client.close().await;
        server.await;
    });
}
