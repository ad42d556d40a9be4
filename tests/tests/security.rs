//! Security over real loopback sockets, for every adapter: owner-only topics refuse other
//! principals, expired and forged JWTs are refused at the handshake, and rate-limit buckets are
//! kept per origin. (Cross-site WebSocket hijacking, with a real browser, is `browser.rs`.)

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wsrpc_core::auth::Hs256Jwt;
use wsrpc_core::hub::{TopicPattern, TopicPolicy};
use wsrpc_core::limit::{LimitConfig, MethodClass, MethodClasses, Rate};
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::{ClientError, ClientOptions, SubscriptionEvent};
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_tests::LONG;
use wsrpc_tests::raw;
use wsrpc_tests::{Adapter, TestServer};

const SECRET: &[u8] = b"a test secret of at least 32 random bytes";

fn start<A: Adapter>(config: ServiceConfig) -> Box<dyn TestServer> {
    let mut r = Router::new();
    r.method("whoami", |(): (), ctx| Ok(ctx.principal.id.clone()))
        .method("eth_sendTransaction", |(): (), _| Ok("0xfeed"));
    A::start(config, r, Bind::Addr("127.0.0.1:0".parse().unwrap())).expect("server starts")
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(secret: &[u8], sub: &str, exp: i64) -> String {
    Hs256Jwt::new(secret).sign(&json!({"sub": sub, "exp": exp}))
}

fn rpc_code(e: &ClientError) -> Option<i64> {
    match e {
        ClientError::Rpc(r) => Some(r.code),
        _ => None,
    }
}

fn jwt_config(require_auth: bool) -> ServiceConfig {
    let mut c = ServiceConfig::default();
    c.limits = LimitConfig::disabled();
    c.auth.authenticator = Some(Arc::new(Hs256Jwt::new(SECRET)));
    c.auth.require_auth = require_auth;
    c.hub.policies = vec![(TopicPattern::new("user:*"), TopicPolicy::OwnerOnly)];
    c
}

pub fn owner_only_topics_refuse_other_principals<A: Adapter>() {
    let server = start::<A>(jwt_config(false));
    let alice = ClientOptions::default().token(token(SECRET, "0xabc", unix_now() + 3600));
    let alice = A::connect(&server.url(), alice).unwrap();
    assert_eq!(alice.call("whoami", json!([])).unwrap(), json!("0xabc"));
    let mut own = alice.subscribe("user:0xabc").expect("her own topic");
    // Another principal's topic, and an anonymous client asking for hers.
    let e = alice.subscribe("user:0xdef").err().expect("refused");
    assert_eq!(rpc_code(&e), Some(-32003), "{e:?}");
    let anonymous = A::connect(&server.url(), ClientOptions::default()).unwrap();
    let e = anonymous.subscribe("user:0xabc").err().expect("refused");
    assert_eq!(rpc_code(&e), Some(-32003), "{e:?}");
    // A principal whose id merely starts like hers owns nothing of hers.
    let mallory = ClientOptions::default().token(token(SECRET, "0xab", unix_now() + 3600));
    let mallory = A::connect(&server.url(), mallory).unwrap();
    assert_eq!(rpc_code(&mallory.subscribe("user:0xabc").err().unwrap()), Some(-32003));
    // Only she receives what is published there.
    assert_eq!(server.metrics().subscriptions.active, 1);
    server.publish("user:0xabc", &json!({"balance": 7}));
    match own.next(LONG) {
        Some(SubscriptionEvent::Notification { seq: 1, value }) => {
            assert_eq!(serde_json::from_str::<Value>(value.get()).unwrap(), json!({"balance": 7}))
        }
        other => panic!("{other:?}"),
    }
}

/// The status of a raw handshake carrying `authorization`, and the response head.
fn handshake_status(server: &dyn TestServer, authorization: &str) -> (u16, String) {
    let mut s = raw::connect(server.addr());
    let extra = format!("Authorization: Bearer {authorization}\r\n");
    s.write_all(raw::upgrade_request("/", &extra).as_bytes()).unwrap();
    let head = raw::read_until(&mut s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    (raw::status_of(&head), String::from_utf8_lossy(&head).into_owned())
}

pub fn expired_and_forged_jwts_get_401<A: Adapter>() {
    let server = start::<A>(jwt_config(true));
    let now = unix_now();
    let valid = token(SECRET, "0xabc", now + 3600);
    let (status, _) = handshake_status(&*server, &valid);
    assert_eq!(status, 101, "the valid token is accepted, so the refusals are about the token");
    let (header, _) = valid.split_once('.').unwrap();
    let (_, signature) = valid.rsplit_once('.').unwrap();
    let b64 = |v: Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let refused = [
        // Expired an hour ago, far beyond the 30 s leeway.
        ("expired", token(SECRET, "0xabc", now - 3600)),
        (
            "signed with another secret",
            token(b"not the server's secret, but 32+ bytes", "0xabc", now + 3600),
        ),
        // Her signature over a payload that now names someone else.
        (
            "tampered",
            format!("{header}.{}.{signature}", b64(json!({"sub": "0xdef", "exp": now + 3600}))),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none"})),
                b64(json!({"sub": "0xabc", "exp": now + 3600}))
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    let before = server.metrics().errors["auth"];
    for (name, token) in &refused {
        let (status, head) = handshake_status(&*server, token);
        assert_eq!(status, 401, "{name}: {head}");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{name}: {head}");
        let client = A::connect(&server.url(), ClientOptions::default().token(token));
        assert!(matches!(client, Err(ClientError::Rejected { status: 401 })), "{name}");
    }
    assert!(server.metrics().errors["auth"] - before >= 2 * refused.len() as u64);
    let alice = A::connect(&server.url(), ClientOptions::default().token(valid)).unwrap();
    assert_eq!(alice.call("whoami", json!([])).unwrap(), json!("0xabc"));
}

pub fn rate_buckets_are_kept_per_origin<A: Adapter>() {
    let mut c = ServiceConfig::default();
    // The wallet preset keys calls per origin too.
    c.limits = LimitConfig::wallet();
    // Sensitive calls: 3 a minute, so no token comes back during the test.
    c.limits.classes =
        MethodClasses::eth_wallet().with_tiers(MethodClass::Sensitive, &[Rate::per_minute(3)]);
    let server = start::<A>(c);
    let from = |origin: &str| {
        let options = ClientOptions::default().header("Origin", origin);
        A::connect(&server.url(), options).unwrap()
    };
    let send = |client: &dyn wsrpc_tests::TestClient| client.call("eth_sendTransaction", json!([]));
    let one = from("http://localhost:1");
    for _ in 0..3 {
        assert_eq!(send(&*one).unwrap(), json!("0xfeed"));
    }
    assert_eq!(rpc_code(&send(&*one).unwrap_err()), Some(-32005), "origin 1 exhausted");
    // Another connection from the same origin draws from the same, empty bucket...
    let one_again = from("http://localhost:1");
    assert_eq!(rpc_code(&send(&*one_again).unwrap_err()), Some(-32005));
    // ...while another origin has its own, full one.
    let two = from("http://localhost:2");
    for _ in 0..3 {
        assert_eq!(send(&*two).unwrap(), json!("0xfeed"));
    }
    assert_eq!(rpc_code(&send(&*two).unwrap_err()), Some(-32005));
    // Only the sensitive class ran out.
    assert_eq!(one.call("whoami", json!([])).unwrap(), json!(""));
    assert!(server.metrics().rate_limited >= 3);
}

macro_rules! security_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            #[test]
            fn owner_only_topics_refuse_other_principals() {
                super::owner_only_topics_refuse_other_principals::<$adapter>();
            }
            #[test]
            fn expired_and_forged_jwts_get_401() {
                super::expired_and_forged_jwts_get_401::<$adapter>();
            }
            #[test]
            fn rate_buckets_are_kept_per_origin() {
                super::rate_buckets_are_kept_per_origin::<$adapter>();
            }
        }
    };
}

security_tests!(smol, wsrpc_tests::Smol);
security_tests!(async_std, wsrpc_tests::AsyncStd);
security_tests!(blocking, wsrpc_tests::Blocking);
