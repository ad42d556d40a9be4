//! The JSON-RPC 2.0 specification's examples (section 7), sent in order over one WebSocket
//! and over one keep-alive HTTP connection to `spec_server` (as the example binary starts
//! it) on every adapter: every answer exactly as the specification gives it.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use wsrpc_examples::SpecServer;
use wsrpc_tests::raw::{RawWs, connect, read_until, status_of};

const ADAPTERS: [&str; 3] = ["smol", "async-std", "blocking"];
const WAIT: Duration = Duration::from_secs(10);

/// Each request of section 7 in the specification's order, with its response (`None`: none).
const EXAMPLES: &[(&str, Option<&str>)] = &[
    (
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
        Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 1}"#),
    ),
    (
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
        Some(r#"{"jsonrpc": "2.0", "result": -19, "id": 2}"#),
    ),
    (
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
        Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 3}"#),
    ),
    (
        r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
        Some(r#"{"jsonrpc": "2.0", "result": 19, "id": 4}"#),
    ),
    (r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#, None),
    (r#"{"jsonrpc": "2.0", "method": "foobar"}"#, None),
    (
        r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}"#,
        ),
    ),
    (
        r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
        ),
    ),
    (
        r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
        ),
    ),
    (
        r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#,
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}"#,
        ),
    ),
    (
        "[]",
        Some(
            r#"{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}"#,
        ),
    ),
    (
        "[1]",
        Some(
            r#"[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]"#,
        ),
    ),
    (
        "[1,2,3]",
        Some(
            r#"[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]"#,
        ),
    ),
    (
        r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
  {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
  {"foo": "boo"},
  {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
  {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
]"#,
        Some(
            r#"[
  {"jsonrpc": "2.0", "result": 7, "id": "1"},
  {"jsonrpc": "2.0", "result": 19, "id": "2"},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
  {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
]"#,
        ),
    ),
    (
        r#"[
  {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
  {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
]"#,
        None,
    ),
];

/// The specification lets a batch's responses come in any order: compare them as a set.
fn normalized(v: Value) -> Value {
    match v {
        Value::Array(mut items) => {
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        other => other,
    }
}

fn expected(text: &str) -> Value {
    normalized(serde_json::from_str(text).unwrap())
}

fn start(adapter: &str) -> SpecServer {
    SpecServer::start(adapter, SocketAddr::from(([127, 0, 0, 1], 0))).expect("spec server starts")
}

#[test]
fn spec_examples_over_one_websocket_on_every_adapter() {
    for adapter in ADAPTERS {
        let server = start(adapter);
        let mut ws = RawWs::open(server.local_addr(), "");
        for (request, response) in EXAMPLES {
            ws.send_text(request).unwrap();
            match response {
                Some(response) => {
                    let frame = ws.next_frame(WAIT).expect("an answer");
                    let got = frame.json().unwrap_or_else(|| panic!("{adapter}: {frame:?}"));
                    assert_eq!(normalized(got), expected(response), "{adapter}: {request}");
                }
                // The pong comes after whatever the server wrote for the message before it.
                None => assert_eq!(ws.ping_pong(WAIT), Some(vec![]), "{adapter}: {request}"),
            }
        }
        // The specification's methods are not throttled by one pass, but a flood still is.
        let flood: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"jsonrpc":"2.0","method":"sum","params":[{i}],"id":{i}}}"#))
            .collect();
        for request in &flood {
            ws.send_text(request).unwrap();
        }
        let codes: Vec<i64> = (0..flood.len())
            .map(|_| {
                let frame = ws.next_frame(WAIT).expect("an answer per call");
                frame.json().unwrap()["error"]["code"].as_i64().unwrap_or(0)
            })
            .collect();
        let limited = codes.iter().filter(|&&c| c == -32005).count();
        assert!(
            limited > 0 && codes.iter().all(|&c| c == 0 || c == -32005),
            "{adapter}: {codes:?}"
        );
    }
}

/// One HTTP/1.1 response on a keep-alive connection: its status and body.
fn http_exchange(s: &mut TcpStream, body: &str) -> (u16, Vec<u8>) {
    let head = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let whole = |b: &[u8]| {
        let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        let text = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        b.len() >= end + 4 + length
    };
    let raw = read_until(s, WAIT, whole);
    assert!(whole(&raw), "a whole response: {}", String::from_utf8_lossy(&raw));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let text = String::from_utf8_lossy(&raw[..end]);
    assert!(text.contains("Connection: keep-alive"), "{text}");
    (status_of(&raw), raw[end..].to_vec())
}

#[test]
fn spec_examples_over_one_keep_alive_http_connection_on_every_adapter() {
    for adapter in ADAPTERS {
        let server = start(adapter);
        let mut s = connect(server.local_addr());
        for (request, response) in EXAMPLES {
            let (status, body) = http_exchange(&mut s, request);
            match response {
                Some(response) => {
                    assert_eq!(status, 200, "{adapter}: {request}");
                    let got: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(normalized(got), expected(response), "{adapter}: {request}");
                }
                None => assert_eq!((status, body.len()), (204, 0), "{adapter}: {request}"),
            }
        }
    }
}

/// The `spec_server` program as an outside checker meets it: `--tls-self-signed` prints
/// `certificate PATH` and then `listening on ADDR`; a WebSocket client that shares no code
/// with wsrpc (async-tungstenite over futures-rustls) trusts that PEM, connects to
/// `wss://localhost:PORT` and gets every example's answer.
#[test]
fn spec_server_with_a_self_signed_certificate_answers_over_wss() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    use async_tungstenite::tungstenite::Message;
    use futures_util::StreamExt;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-q", "-p", "wsrpc-examples", "--example", "spec_server"])
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(built.success(), "spec_server builds");
    let binary = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join("debug/examples/spec_server");
    for adapter in ADAPTERS {
        let mut child = Command::new(&binary)
            .args(["--port", "0", "--adapter", adapter, "--tls-self-signed"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spec_server starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a line").unwrap();
        let pem_path = first.strip_prefix("certificate ").expect("certificate PATH first");
        let second = lines.next().expect("a line").unwrap();
        let addr: SocketAddr =
            second.strip_prefix("listening on ").expect("then listening on ADDR").parse().unwrap();
        let pem = std::fs::read(pem_path).expect("the certificate file");
        let mut roots = wsrpc_tls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject as _;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = wsrpc_tls::client_config_with_roots(roots).unwrap();
        smol::block_on(async {
            let tcp = smol::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = futures_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            let url = format!("wss://localhost:{}/", addr.port());
            let (mut ws, resp) = async_tungstenite::client_async(url, tls).await.unwrap();
            assert_eq!(resp.status(), 101, "{adapter}");
            for (request, response) in EXAMPLES {
                let Some(response) = response else { continue };
                ws.send(Message::text(*request)).await.unwrap();
                let got = loop {
                    match ws.next().await.expect("open").expect("valid frames") {
                        Message::Text(t) => {
                            break serde_json::from_str::<Value>(t.as_str()).unwrap();
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        other => panic!("{adapter}: {other:?}"),
                    }
                };
                assert_eq!(normalized(got), expected(response), "{adapter}: {request}");
            }
            ws.close(None).await.unwrap();
        });
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(pem_path);
    }
}
