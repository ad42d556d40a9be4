//! `rpc.discover` over the wire: `spec_server` (as the example binary starts it) answers on
//! every adapter, over a WebSocket and over HTTP POST, with an OpenRPC document that the
//! OpenRPC meta-schema (the core's vendored fixture) accepts and that describes its typed
//! methods with their schemas.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use wsrpc_examples::SpecServer;
use wsrpc_tests::raw::{RawWs, read_until, status_of};

const ADAPTERS: [&str; 3] = ["smol", "async-std", "blocking"];
const WAIT: Duration = Duration::from_secs(10);
const DISCOVER: &str = r#"{"jsonrpc":"2.0","method":"rpc.discover","id":1}"#;

fn validator() -> jsonschema::Validator {
    let strip = |text: &str| {
        let mut schema: Value = serde_json::from_str(text).unwrap();
        // Both name their own dialect as `$schema`; it is draft-07, said below.
        schema.as_object_mut().unwrap().remove("$schema");
        schema
    };
    let meta =
        strip(include_str!("../../core/tests/fixtures/openrpc/openrpc-meta-schema-1.14.9.json"));
    let json_schema = strip(include_str!(
        "../../core/tests/fixtures/openrpc/json-schema-tools-meta-schema-1.8.0.json"
    ));
    let registry = jsonschema::Registry::new()
        .add("https://meta.json-schema.tools", jsonschema::Resource::from_contents(json_schema))
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_registry(&registry)
        .build(&meta)
        .unwrap()
}

fn method<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["methods"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()
}

fn check(adapter: &str, doc: &Value) {
    let errors: Vec<String> = validator().iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{adapter}: {errors:#?}");
    assert_eq!(doc["openrpc"], "1.3.2");
    assert_eq!(doc["info"]["title"], "wsrpc spec_server");
    assert!(doc["info"]["version"].is_string());
    let subtract = method(doc, "subtract");
    let params: Vec<&Value> = subtract["params"].as_array().unwrap().iter().collect();
    assert_eq!(params.len(), 2);
    assert_eq!(params[0]["name"], "minuend");
    assert_eq!(params[0]["schema"]["type"], "integer");
    assert_eq!(params[1]["name"], "subtrahend");
    assert_eq!(subtract["result"]["schema"]["type"], "integer");
    assert_eq!(
        method(doc, "sum")["params"][0]["schema"],
        json!({"type": "integer", "format": "int64"})
    );
    assert!(method(doc, "update").get("result").is_none(), "a notification");
    for m in doc["methods"].as_array().unwrap() {
        for p in m["params"].as_array().unwrap() {
            assert!(p["name"].is_string() && p.get("schema").is_some(), "{adapter}: {m}");
        }
    }
}

#[test]
fn spec_server_describes_itself_on_every_adapter() {
    for adapter in ADAPTERS {
        let server = SpecServer::start(adapter, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let mut ws = RawWs::open(server.local_addr(), "");
        ws.send_text(DISCOVER).unwrap();
        let answer = ws.next_frame(WAIT).expect("an answer").json().expect("JSON");
        assert_eq!(answer["id"], 1);
        check(adapter, &answer["result"]);

        let mut http = TcpStream::connect(server.local_addr()).unwrap();
        http.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            http,
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{DISCOVER}",
            DISCOVER.len()
        )
        .unwrap();
        let response = read_until(&mut http, WAIT, |_| false);
        assert_eq!(status_of(&response), 200, "{adapter}");
        let body = &response[response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let answer: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(answer["result"], ws_document(&server), "{adapter}: the same document");
        check(adapter, &answer["result"]);
    }
}

fn ws_document(server: &SpecServer) -> Value {
    let mut ws = RawWs::open(server.local_addr(), "");
    ws.send_text(DISCOVER).unwrap();
    ws.next_frame(WAIT).unwrap().json().unwrap()["result"].take()
}
