//! `rpc.discover`: the OpenRPC document a session answers, checked against the OpenRPC
//! meta-schema (vendored in `tests/fixtures/openrpc`, sources in its README) and read for
//! what it says about typed and untyped methods, notifications, topics and errors.
#![allow(clippy::disallowed_methods)] // one real Instant as the virtual clock's origin

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wsrpc_core::auth::Principal;
use wsrpc_core::hub::SubscriptionMethods;
use wsrpc_core::rpc::{
    ConnectionId, Method, Notification, Params, Router, RpcError, RpcSession, SessionOutput,
    SubscriptionTarget, Topic, Transport,
};
use wsrpc_core::service::{Service, ServiceConfig};

const META_SCHEMA: &str = include_str!("fixtures/openrpc/openrpc-meta-schema-1.14.9.json");
const JSON_SCHEMA_META: &str =
    include_str!("fixtures/openrpc/json-schema-tools-meta-schema-1.8.0.json");

/// A validator of OpenRPC documents that resolves the meta-schema's one external reference
/// from the fixture, never from the network.
fn validator() -> jsonschema::Validator {
    let meta: Value = serde_json::from_str(META_SCHEMA).unwrap();
    let json_schema: Value = serde_json::from_str(JSON_SCHEMA_META).unwrap();
    let resource = jsonschema::Resource::from_contents(without_schema_keyword(json_schema));
    let registry = jsonschema::Registry::new()
        .add("https://meta.json-schema.tools", resource)
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_registry(&registry)
        .build(&without_schema_keyword(meta))
        .unwrap()
}

/// Both meta-schemas name `https://meta.json-schema.tools/` as their own meta-schema, a
/// draft-07 dialect; the validator is told draft 7 instead of chasing that loop.
fn without_schema_keyword(mut schema: Value) -> Value {
    schema.as_object_mut().unwrap().remove("$schema");
    schema
}

fn assert_valid(doc: &Value) {
    let validator = validator();
    let errors: Vec<String> =
        validator.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
}

fn discover<S: Send + Sync + 'static>(router: Router<S>, config: ServiceConfig) -> Value {
    let now = Instant::now();
    let wall = wsrpc_core::UnixTime(Duration::from_secs(1_700_000_000));
    let service = Service::new(config, router, wsrpc_core::Now::new(now, wall));
    let mut s = RpcSession::new(
        service,
        ConnectionId(1),
        None,
        Arc::new(Principal::anonymous()),
        Transport::WebSocket,
        now,
    );
    s.handle_message(now, br#"{"jsonrpc":"2.0","method":"rpc.discover","id":1}"#);
    match s.poll_output() {
        Some(SessionOutput::Message(m)) => {
            let mut answer: Value = serde_json::from_slice(&m).unwrap();
            answer["result"].take()
        }
        other => panic!("{other:?}"),
    }
}

fn method<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} is described"))
}

fn param_names(method: &Value) -> Vec<&str> {
    method["params"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Transfer {
    to: String,
    amount: u64,
}

const ADD: Method<(i64, i64), i64> = Method::new("add").params(&["a", "b"]).summary("Adds");
const SCALE: Method<(f64, f64), f64> = Method::new("scale");
const TRANSFER: Method<Transfer, String> = Method::new("transfer")
    .result("receipt")
    .errors(&[(-32010, "Insufficient funds")])
    .deprecated();
const LOG: Notification<(String,)> = Notification::new("log").params(&["line"]);
const TICKS: Topic<u64> = Topic::new("ticks").summary("A counter");

fn full_router() -> Router {
    let mut r = Router::new();
    r.register(ADD, |(a, b), _| Ok(a + b))
        .register_async(SCALE, |(x, k), _| async move { Ok(x * k) })
        .register_blocking(TRANSFER, |t, _| Ok(format!("{}:{}", t.to, t.amount)))
        .register_notification(LOG, |_, _| Ok(()))
        .method("sum", |p: Vec<i64>, _| Ok(p.iter().sum::<i64>()))
        .method("echo", |v: Value, _| Ok(v))
        .method("nothing", |(): (), _| Ok(()))
        .method_raw("raw", |p: Params<'_>, _| Ok(p.raw().is_some()))
        .topic(TICKS)
        .subscription("trades", |call| Ok(SubscriptionTarget::topic(call.name())))
        .info("Calculator", "2.1.0")
        .description("Arithmetic over WebSocket");
    r
}

#[test]
fn the_document_is_valid_openrpc_and_says_what_the_router_serves() {
    let doc = discover(full_router(), ServiceConfig::default());
    assert_valid(&doc);
    if std::env::var_os("PRINT_OPENRPC").is_some() {
        println!("{doc}");
    }
    assert_eq!(doc["openrpc"], "1.3.2");
    assert_eq!(
        doc["info"],
        json!({"title": "Calculator", "version": "2.1.0", "description": "Arithmetic over WebSocket"})
    );

    let add = method(&doc, "add");
    assert_eq!(param_names(add), ["a", "b"], "names given on the descriptor");
    assert_eq!(add["paramStructure"], "by-position");
    assert!(add["params"].as_array().unwrap().iter().all(|p| p["required"] == true));
    assert_eq!(add["summary"], "Adds");
    assert_eq!(add["result"]["name"], "result");
    assert_eq!(param_names(method(&doc, "scale")), ["p0", "p1"], "tuple params by default");

    let transfer = method(&doc, "transfer");
    assert_eq!(param_names(transfer), ["to", "amount"], "a struct's fields");
    assert_eq!(transfer["paramStructure"], "either");
    assert_eq!(transfer["result"]["name"], "receipt");
    assert_eq!(transfer["deprecated"], true);
    let codes: Vec<i64> = transfer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [-32010, -32602, -32603, -32005], "its own errors, then the common ones");

    let log = method(&doc, "log");
    assert_eq!(param_names(log), ["line"]);
    assert!(log.get("result").is_none(), "a notification has no result");

    let sum = method(&doc, "sum");
    assert_eq!(sum["params"][0]["x-variadic"], true);
    assert_eq!(sum["x-typed"], false, "registered by name: its result is not known");
    assert_eq!(method(&doc, "echo")["x-params"], "any");
    assert_eq!(method(&doc, "raw")["x-params"], "any");
    assert_eq!(method(&doc, "nothing")["params"], json!([]));

    let subscribe = method(&doc, "subscribe");
    assert_eq!(param_names(subscribe), ["topic", "since", "epoch", "filter"]);
    assert_eq!(
        subscribe["x-subscription"]["handled"],
        json!([{"name": "trades", "handler": true, "filter": true}]),
        "names served by a subscription handler"
    );
    assert_eq!(subscribe["x-subscription"]["notification"]["method"], "subscription");
    assert_eq!(
        subscribe["x-subscription"]["topics"],
        json!([{"name": "ticks", "summary": "A counter", "schema": {}}])
    );
    assert_eq!(method(&doc, "unsubscribe")["result"]["schema"], json!({"type": "boolean"}));
    method(&doc, "rpc.health");
    method(&doc, "rpc.metrics");
    let names: Vec<&str> =
        doc["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "add",
            "scale",
            "transfer",
            "log",
            "sum",
            "echo",
            "nothing",
            "raw",
            "subscribe",
            "unsubscribe",
            "rpc.health",
            "rpc.metrics"
        ],
        "registration order, then the hub's and the built-ins"
    );
}

#[test]
fn defaults_and_the_eth_style_validate_too() {
    let mut config = ServiceConfig::default();
    config.name = "bridge".into();
    config.hub.methods = SubscriptionMethods::eth();
    let doc = discover(Router::new(), config);
    assert_valid(&doc);
    assert_eq!(doc["info"], json!({"title": "bridge", "version": "0.0.0"}), "the server's name");
    let subscribe = method(&doc, "eth_subscribe");
    assert_eq!(param_names(subscribe), ["name", "options"]);
    assert_eq!(subscribe["result"]["schema"], json!({"type": "string"}));
    method(&doc, "eth_unsubscribe");
}

#[test]
fn the_validator_rejects_what_the_meta_schema_forbids() {
    // The check above is only worth something if the validator bites.
    let good = discover(full_router(), ServiceConfig::default());
    let validator = validator();
    assert!(validator.is_valid(&good));
    let mut no_version = good.clone();
    no_version["info"].as_object_mut().unwrap().remove("version");
    assert!(!validator.is_valid(&no_version), "info.version is required");
    let mut no_schema = good.clone();
    no_schema["methods"][0]["params"][0].as_object_mut().unwrap().remove("schema");
    assert!(!validator.is_valid(&no_schema), "a param needs a schema");
    let mut bad_schema = good.clone();
    bad_schema["methods"][0]["result"]["schema"] = json!({"type": 7});
    assert!(!validator.is_valid(&bad_schema), "schemas are JSON Schemas");
    let mut unknown = good;
    unknown["methods"][0]["surprise"] = json!(1);
    assert!(!validator.is_valid(&unknown), "only x- extensions may be added");
}

#[test]
fn rpc_discover_is_reserved_and_a_refused_name_keeps_its_first_description() {
    let mut r = Router::new();
    r.method("rpc.discover", |(): (), _| Ok(1));
    assert!(r.check().is_err(), "built-in names are refused");
    // A router whose registration was refused still describes only what it serves.
    let mut r = Router::new();
    r.register(ADD, |(a, b), _| Ok(a + b)).method("add", |(): (), _| Ok::<_, RpcError>(0));
    assert!(r.check().is_err(), "the second `add` is refused");
    let doc = discover(r, ServiceConfig::default());
    assert_eq!(
        param_names(method(&doc, "add")),
        ["a", "b"],
        "the first registration's description"
    );
}

#[cfg(feature = "schemars")]
mod with_schemas {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    struct Order {
        /// Who receives it.
        to: String,
        amount: u64,
        #[serde(default)]
        memo: Option<String>,
    }

    #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    struct Receipt {
        id: String,
        order: Order,
    }

    const PLACE: Method<Order, Receipt> = Method::new("place").with_schemas();
    const ADD: Method<(i64, i64), i64> = Method::new("add").params(&["a", "b"]).with_schemas();
    const LOG: Notification<(String,)> = Notification::new("log").with_schemas();
    const PRICES: Topic<Receipt> = Topic::new("receipts").with_schema();

    #[test]
    fn typed_methods_carry_their_json_schemas() {
        let mut r = Router::new();
        r.register(PLACE, |o, _| Ok(Receipt { id: "r1".into(), order: o }))
            .register(ADD, |(a, b), _| Ok(a + b))
            .register_notification(LOG, |_, _| Ok(()))
            .topic(PRICES);
        let doc = discover(r, ServiceConfig::default());
        if std::env::var_os("PRINT_OPENRPC").is_some() {
            println!("{doc}");
        }
        assert_valid(&doc);
        let add = method(&doc, "add");
        assert_eq!(add["params"][0]["schema"]["type"], "integer");
        assert_eq!(add["params"][1]["schema"]["format"], "int64");
        assert_eq!(add["result"]["schema"]["type"], "integer");
        let place = method(&doc, "place");
        assert_eq!(param_names(place), ["to", "amount", "memo"]);
        let required: Vec<&Value> =
            place["params"].as_array().unwrap().iter().map(|p| &p["required"]).collect();
        assert_eq!(required, [&json!(true), &json!(true), &Value::Null], "memo may be left out");
        assert_eq!(place["params"][0]["schema"]["description"], "Who receives it.");
        assert_eq!(place["result"]["schema"], json!({"$ref": "#/components/schemas/Receipt"}));
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["Receipt"]["properties"]["order"],
            json!({"$ref": "#/components/schemas/Order"})
        );
        assert!(schemas["Order"]["properties"]["amount"].is_object());
        assert_eq!(method(&doc, "log")["params"][0]["schema"]["type"], "string");
        let topics = &method(&doc, "subscribe")["x-subscription"]["topics"];
        assert_eq!(topics[0]["schema"], json!({"$ref": "#/components/schemas/Receipt"}));
    }
}
