//! The wallet bridge's router on every adapter over real sockets: `eth_subscribe("logs",
//! filter)` validated and filtered per subscription, and hooks that see each call and each
//! connection's end.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wsrpc_core::rpc::hooks::{CallEnd, ConnectionClosed, ConnectionOpened, Hook};
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_examples::wallet::{
    self, ACCOUNT, APPROVAL, OTHER_TOKEN, TOKEN, TRANSFER, Wallet, block_logs,
};
use wsrpc_tests::raw::{RawWs, client_frame};
use wsrpc_tests::{Adapter, LONG, unlimited_config, wait_for};

fn any_port() -> Bind {
    Bind::Addr(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn wallet_config() -> ServiceConfig {
    let mut config = unlimited_config();
    config.hub = wallet::hub_config();
    config
}

/// Sends a request and returns its answer (notifications before it are kept in `notes`).
fn request(ws: &mut RawWs, notes: &mut Vec<Value>, id: u64, method: &str, params: Value) -> Value {
    let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send_text(&req.to_string()).unwrap();
    loop {
        let frame = ws.next_frame(LONG).expect("an answer");
        let v = frame.json().expect("a JSON text frame");
        if v["id"] == id {
            return v;
        }
        notes.push(v);
    }
}

/// Publishes a last `newHeads` and returns every notification before it: the hub queues a
/// connection's notifications in publish order, so that is all there was.
fn notes_until_sentinel(server: &dyn wsrpc_tests::TestServer, ws: &mut RawWs) -> Vec<Value> {
    server.publish("newHeads", &json!({"number": "sentinel"}));
    let mut notes = Vec::new();
    loop {
        let note = ws.next_frame(LONG).and_then(|f| f.json()).expect("a notification");
        if note["params"]["result"]["number"] == "sentinel" {
            return notes;
        }
        notes.push(note);
    }
}

/// A 32-byte topic holding an address, as an indexed event argument.
fn address_topic(address: &str) -> String {
    format!("0x{:0>64}", address.trim_start_matches("0x"))
}

fn eth_logs_are_validated_and_filtered_per_subscription<A: Adapter>() {
    let wallet = Wallet::new(false);
    let server = A::start(wallet_config(), wallet::router(&wallet), any_port()).unwrap();
    let mut ws = RawWs::open(server.addr(), "");
    let mut notes = Vec::new();
    // Bad filters: -32602 saying what is wrong, and nothing subscribed.
    let bad = [
        (json!({"address": "0x9f2c4b1e"}), "address: expected 20 bytes (40 hex digits), got 8"),
        (json!({"address": TOKEN.replace('a', "q")}), "address: not hex ('q')"),
        (
            json!({"topics": [TRANSFER, null, null, null, null]}),
            "topics: at most 4 positions, got 5",
        ),
    ];
    for (i, (filter, want)) in bad.into_iter().enumerate() {
        let r = request(&mut ws, &mut notes, i as u64, "eth_subscribe", json!(["logs", filter]));
        assert_eq!(r["error"]["code"], -32602, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message}");
    }
    // Three subscriptions on one connection, each with its own id.
    let token =
        request(&mut ws, &mut notes, 10, "eth_subscribe", json!(["logs", {"address": TOKEN}]));
    let mine = request(
        &mut ws,
        &mut notes,
        11,
        "eth_subscribe",
        json!(["logs", {"topics": [[TRANSFER, APPROVAL], address_topic(ACCOUNT)]}]),
    );
    let none = request(
        &mut ws,
        &mut notes,
        12,
        "eth_subscribe",
        json!(["logs", {"address": [OTHER_TOKEN], "topics": [TRANSFER]}]),
    );
    let heads = request(&mut ws, &mut notes, 13, "eth_subscribe", json!(["newHeads"]));
    let ids: Vec<&str> = [&token, &mine, &none, &heads]
        .iter()
        .map(|r| r["result"].as_str().expect("an id"))
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{ids:?}");
    // Two blocks, two logs each: the token's Transfer to the account, the other token's
    // Approval by it.
    for n in 1..=2 {
        server.publish("newHeads", &json!({"number": format!("{n:#x}")}));
        for log in block_logs(n) {
            server.publish("logs", &log);
        }
    }
    notes.extend(notes_until_sentinel(&*server, &mut ws));
    let got: Vec<(&str, &str, &str)> = notes
        .iter()
        .map(|n| {
            assert_eq!(n["method"], "eth_subscription", "{n}");
            let p = &n["params"];
            let id = p["subscription"].as_str().unwrap();
            let what = p["result"]["address"].as_str().or(p["result"]["number"].as_str()).unwrap();
            let block = p["result"]["blockNumber"].as_str().unwrap_or("");
            (id, what, block)
        })
        .collect();
    assert_eq!(
        got,
        [
            (ids[3], "0x1", ""),
            (ids[0], TOKEN, "0x1"),
            (ids[1], OTHER_TOKEN, "0x1"),
            (ids[3], "0x2", ""),
            (ids[0], TOKEN, "0x2"),
            (ids[1], OTHER_TOKEN, "0x2"),
        ],
        // The Transfer has the account at topic position 2, the Approval at position 1.
        "only matching logs, each under every subscription it matched"
    );
    // Unsubscribed, a filter stops; the others go on.
    let r = request(&mut ws, &mut Vec::new(), 20, "eth_unsubscribe", json!([ids[1]]));
    assert_eq!(r["result"], true);
    for log in block_logs(3) {
        server.publish("logs", &log);
    }
    let after = notes_until_sentinel(&*server, &mut ws);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["params"]["subscription"], ids[0]);
}

/// What the test's hook saw.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Hook for Seen {
    fn after_call(&self, call: &CallEnd<'_>) {
        if call.method == "eth_sendTransaction" {
            let code = call.outcome.code();
            let waited = call.duration >= Duration::from_millis(300);
            let origin = call.context.origin.as_deref().unwrap_or("-");
            self.0.lock().unwrap().push(format!("send {origin} {code:?} waited={waited}"));
        }
    }
    fn connection_opened(&self, c: &ConnectionOpened<'_>) {
        self.0.lock().unwrap().push(format!("opened {}", c.origin.unwrap_or("-")));
    }
    fn connection_closed(&self, c: &ConnectionClosed<'_>) {
        let line = format!("closed {} {:?} clean={}", c.code.0, c.reason, c.clean);
        self.0.lock().unwrap().push(line);
    }
}

fn hooks_see_calls_and_closes_over_real_sockets<A: Adapter>() {
    let wallet = Wallet::new(false);
    let seen = Arc::new(Seen::default());
    let hooks: Vec<Arc<dyn Hook>> = vec![Arc::new(wallet::audit_hook()), seen.clone()];
    let server =
        A::start_hooked(wallet_config(), wallet::router(&wallet), any_port(), None, hooks).unwrap();
    let origin = "http://127.0.0.1:5173";
    let mut ws = RawWs::open(server.addr(), &format!("Origin: {origin}\r\n"));
    let mut notes = Vec::new();
    let tx = json!([{"from": ACCOUNT, "to": TOKEN, "value": "0x1"}]);
    let r = request(&mut ws, &mut notes, 1, "eth_sendTransaction", tx);
    assert!(r["result"].is_string(), "{r}");
    let stranger = json!([{"from": OTHER_TOKEN, "to": TOKEN}]);
    let r = request(&mut ws, &mut notes, 2, "eth_sendTransaction", stranger);
    assert_eq!(r["error"]["code"], 4100);
    // A clean close, with its code and reason.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"done");
    ws.send(&client_frame(8, &close)).unwrap();
    assert_eq!(ws.close_code(LONG), Some(1000));
    wait_for("the closed hook", || seen.lines().len() == 4);
    assert_eq!(
        seen.lines(),
        [
            format!("opened {origin}"),
            format!("send {origin} None waited=true"),
            format!("send {origin} Some(4100) waited=true"),
            "closed 1000 \"done\" clean=true".to_owned(),
        ]
    );
    // A peer that vanishes without a close frame: 1006.
    let ws = RawWs::open(server.addr(), "");
    wait_for("the opened hook", || seen.lines().len() == 5);
    drop(ws);
    wait_for("the closed hook", || seen.lines().len() == 6);
    assert_eq!(seen.lines()[5], "closed 1006 \"\" clean=false");
}

macro_rules! wallet_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn eth_logs_are_validated_and_filtered_per_subscription() {
                super::eth_logs_are_validated_and_filtered_per_subscription::<$adapter>();
            }
            #[test]
            fn hooks_see_calls_and_closes_over_real_sockets() {
                super::hooks_see_calls_and_closes_over_real_sockets::<$adapter>();
            }
        }
    };
}

wallet_tests!(smol, wsrpc_tests::Smol);
wallet_tests!(async_std, wsrpc_tests::AsyncStd);
wallet_tests!(blocking, wsrpc_tests::Blocking);
