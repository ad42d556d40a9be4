//! Typed methods, notifications and topics shared by server and client, the router's state
//! and the call's context, over real sockets on every adapter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wsrpc_core::auth::StaticToken;
use wsrpc_core::limit::LimitConfig;
use wsrpc_core::rpc::client::{ClientError, ClientOptions};
use wsrpc_core::rpc::{Method, Notification, Router, RpcError, Topic, TopicEvent};

/// The API both sides are compiled against.
mod api {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Deposit {
        pub(crate) account: String,
        pub(crate) amount: u64,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Tick {
        pub(crate) n: u64,
        pub(crate) label: String,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Caller {
        pub(crate) id: Option<String>,
        pub(crate) connection: u64,
        pub(crate) origin: Option<String>,
        pub(crate) principal: String,
    }

    pub(crate) const ADD: Method<(i64, i64), i64> = Method::new("add").params(&["a", "b"]);
    pub(crate) const DEPOSIT: Method<Deposit, u64> = Method::new("deposit");
    pub(crate) const SLOW_DOUBLE: Method<(u64,), u64> = Method::new("slow_double");
    pub(crate) const BALANCE: Method<(), u64> = Method::new("balance");
    pub(crate) const WHOAMI: Method<(), Caller> = Method::new("whoami");
    pub(crate) const FAIL: Method<(), ()> = Method::new("fail");
    pub(crate) const RESET: Notification<(u64,)> = Notification::new("reset");
    pub(crate) const TICKS: Topic<Tick> = Topic::new("ticks");
}

use api::*;

/// The application state the router shares with every handler.
#[derive(Default)]
struct Bank {
    balance: AtomicU64,
    log: Mutex<Vec<String>>,
}

fn router(bank: Arc<Bank>) -> Router<Bank> {
    let mut r = Router::with_shared_state(bank);
    r.register(ADD, |(a, b), _| Ok(a + b))
        .register(DEPOSIT, |d, ctx| {
            ctx.state().log.lock().unwrap().push(d.account);
            Ok(ctx.state().balance.fetch_add(d.amount, Ordering::SeqCst) + d.amount)
        })
        .register_async(SLOW_DOUBLE, |(x,), ctx| async move {
            ctx.state().log.lock().unwrap().push(format!("double {x}"));
            Ok(x * 2)
        })
        .register_blocking(BALANCE, |(), ctx| Ok(ctx.state().balance.load(Ordering::SeqCst)))
        .register(WHOAMI, |(), ctx| {
            Ok(Caller {
                id: ctx.id.as_ref().map(|id| id.as_json().to_owned()),
                connection: ctx.connection.0,
                origin: ctx.origin.as_deref().map(str::to_owned),
                principal: ctx.principal.id.clone(),
            })
        })
        .register(FAIL, |(), _| Err(RpcError::new(-32010, "refused on purpose")))
        .register_notification(RESET, |(to,), ctx| {
            ctx.state().balance.store(to, Ordering::SeqCst);
            Ok(())
        })
        .topic(TICKS);
    r
}

const TOKEN: &str = "s3cret-token";

fn options() -> ClientOptions {
    ClientOptions::default().token(TOKEN).header("Origin", "http://localhost:3000")
}

macro_rules! async_adapter_tests {
    ($module:ident, $krate:ident, $block_on:path) => {
        mod $module {
            use super::*;
            use $krate::{Server, connect};

            fn start(bank: Arc<Bank>) -> Server {
                Server::builder()
                    .router(router(bank))
                    .authenticator(StaticToken::new("alice", TOKEN))
                    .limits(LimitConfig::disabled())
                    .bind("127.0.0.1:0".parse().unwrap())
                    .start()
                    .unwrap()
            }

            #[test]
            fn typed_calls_round_trip_with_state_and_context() {
                $block_on(async {
                    let bank = Arc::new(Bank::default());
                    let server = start(bank.clone());
                    let url = format!("ws://{}", server.local_addr());
                    let client = connect(&url, options()).await.unwrap();
                    assert_eq!(client.request(ADD, (2, 3)).await.unwrap(), 5);
                    let deposit = Deposit { account: "acc-1".into(), amount: 40 };
                    assert_eq!(client.request(DEPOSIT, deposit.clone()).await.unwrap(), 40);
                    assert_eq!(client.request(DEPOSIT, deposit).await.unwrap(), 80);
                    assert_eq!(client.request(SLOW_DOUBLE, (21,)).await.unwrap(), 42);
                    assert_eq!(client.request(BALANCE, ()).await.unwrap(), 80);
                    client.notify(RESET, (7,)).unwrap();
                    // A call after the notification is answered after it ran (one connection,
                    // in order).
                    assert_eq!(client.request(BALANCE, ()).await.unwrap(), 7);
                    match client.request(FAIL, ()).await {
                        Err(ClientError::Rpc(e)) => assert_eq!(e.code, -32010),
                        other => panic!("{other:?}"),
                    }
                    let me = client.request(WHOAMI, ()).await.unwrap();
                    assert_eq!(me.origin.as_deref(), Some("http://localhost:3000"));
                    assert_eq!(me.principal, "alice");
                    assert!(me.id.as_deref().is_some_and(|id| id.parse::<u64>().is_ok()), "{me:?}");
                    let other = connect(&url, options()).await.unwrap();
                    let them = other.request(WHOAMI, ()).await.unwrap();
                    assert_ne!(them.connection, me.connection, "each connection has its id");
                    let strings: i64 = client.call("add", (4, 5)).await.unwrap();
                    assert_eq!(strings, 9, "the string API stays");
                    other.close().await;
                    client.close().await;
                    assert_eq!(*bank.log.lock().unwrap(), ["acc-1", "acc-1", "double 21"]);
                    server.shutdown(Duration::from_secs(5)).await;
                });
            }

            #[test]
            fn typed_subscriptions_decode_values_and_report_the_rest() {
                $block_on(async {
                    let bank = Arc::new(Bank::default());
                    let server = start(bank.clone());
                    let url = format!("ws://{}", server.local_addr());
                    let client = connect(&url, options()).await.unwrap();
                    let mut ticks = client.subscribe(TICKS).await.unwrap();
                    let tick = Tick { n: 1, label: "one".into() };
                    server.publish(TICKS, &tick).unwrap();
                    // The string API can publish anything to the same topic.
                    server.publish("ticks", &serde_json::json!({"n": "not a number"})).unwrap();
                    server.publish(TICKS, &Tick { n: 2, label: "two".into() }).unwrap();
                    match ticks.next().await {
                        Some(TopicEvent::Value { seq: 1, value }) => assert_eq!(value, tick),
                        other => panic!("{other:?}"),
                    }
                    match ticks.next().await {
                        Some(TopicEvent::Malformed { seq: 2, error: ClientError::Decode(_), raw }) => {
                            assert!(raw.get().contains("not a number"));
                        }
                        other => panic!("{other:?}"),
                    }
                    match ticks.next().await {
                        Some(TopicEvent::Value { seq: 3, value }) => assert_eq!(value.n, 2),
                        other => panic!("{other:?}"),
                    }
                    drop(ticks);
                    client.close().await;
                    server.shutdown(Duration::from_secs(5)).await;
                });
            }
        }
    };
}

async_adapter_tests!(smol, wsrpc_smol, ::smol::block_on);
async_adapter_tests!(async_std, wsrpc_async_std, ::async_std::task::block_on);

mod blocking {
    use super::*;
    use wsrpc_blocking::{Server, connect};

    fn start(bank: Arc<Bank>) -> Server {
        Server::builder()
            .router(router(bank))
            .authenticator(StaticToken::new("alice", TOKEN))
            .limits(LimitConfig::disabled())
            .bind("127.0.0.1:0".parse().unwrap())
            .start()
            .unwrap()
    }

    #[test]
    fn typed_calls_round_trip_with_state_and_context() {
        let bank = Arc::new(Bank::default());
        let server = start(bank.clone());
        let url = format!("ws://{}", server.local_addr());
        let client = connect(&url, options()).unwrap();
        assert_eq!(client.request(ADD, (2, 3)).unwrap(), 5);
        assert_eq!(client.request(DEPOSIT, Deposit { account: "b".into(), amount: 5 }).unwrap(), 5);
        assert_eq!(client.request(SLOW_DOUBLE, (8,)).unwrap(), 16);
        assert_eq!(client.request(BALANCE, ()).unwrap(), 5);
        client.notify(RESET, (11,)).unwrap();
        assert_eq!(client.request(BALANCE, ()).unwrap(), 11);
        assert_eq!(client.request_with_timeout(ADD, (1, 1), Duration::from_secs(10)).unwrap(), 2);
        match client.request(FAIL, ()) {
            Err(ClientError::Rpc(e)) => assert_eq!(e.code, -32010),
            other => panic!("{other:?}"),
        }
        let me = client.request(WHOAMI, ()).unwrap();
        assert_eq!(me.origin.as_deref(), Some("http://localhost:3000"));
        assert_eq!(me.principal, "alice");
        assert!(me.id.as_deref().is_some_and(|id| id.parse::<u64>().is_ok()), "{me:?}");
        let other = connect(&url, options()).unwrap();
        let them = other.request(WHOAMI, ()).unwrap();
        assert_ne!(them.connection, me.connection, "each connection has its id");
        other.close();
        client.close();
        assert_eq!(*bank.log.lock().unwrap(), ["b", "double 8"]);
        server.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn typed_subscriptions_decode_values_and_report_the_rest() {
        let bank = Arc::new(Bank::default());
        let server = start(bank.clone());
        let url = format!("ws://{}", server.local_addr());
        let client = connect(&url, options()).unwrap();
        let ticks = client.subscribe(TICKS).unwrap();
        server.publish(TICKS, &Tick { n: 1, label: "one".into() }).unwrap();
        server.publish("ticks", &[1, 2, 3]).unwrap();
        let wait = Duration::from_secs(10);
        match ticks.recv_timeout(wait) {
            Ok(TopicEvent::Value { seq: 1, value }) => assert_eq!(value.label, "one"),
            other => panic!("{other:?}"),
        }
        match ticks.recv_timeout(wait) {
            Ok(TopicEvent::Malformed { seq: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        // The raw API still sees the same topic.
        let other = connect(&url, options()).unwrap();
        let raw = other.subscribe("ticks").unwrap();
        server.publish(TICKS, &Tick { n: 3, label: "three".into() }).unwrap();
        assert_eq!(ticks.recv_timeout(wait).ok().and_then(TopicEvent::value).map(|t| t.n), Some(3));
        let event = raw.recv_timeout(wait).unwrap();
        assert_eq!(event.value::<Tick>().unwrap().unwrap().n, 3);
        other.close();
        client.close();
        server.shutdown(Duration::from_secs(5));
    }
}
