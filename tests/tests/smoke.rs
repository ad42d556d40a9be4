use std::time::Duration;

use serde_json::json;
use wsrpc_core::rpc::Router;

fn router() -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b)).async_method(
        "slow",
        |(x,): (u64,), _| async move {
            smol::Timer::after(Duration::from_millis(x)).await;
            Ok(x)
        },
    );
    r
}

#[test]
fn smol_call_subscribe_shutdown() {
    let _ = env_logger::builder().is_test(true).try_init();
    smol::block_on(async {
        let server = wsrpc_smol::Server::builder()
            .router(router())
            .bind("127.0.0.1:0".parse().unwrap())
            .start()
            .unwrap();
        let url = format!("ws://{}", server.local_addr());
        let client = wsrpc_smol::connect(&url, Default::default()).await.unwrap();
        let sum: i64 = client.call("add", (2, 3)).await.unwrap();
        assert_eq!(sum, 5);
        let slow: u64 = client.call("slow", (20,)).await.unwrap();
        assert_eq!(slow, 20);
        let mut sub = client.subscribe("news").await.unwrap();
        server.publish("news", &json!({"n": 1})).unwrap();
        let ev = sub.next().await.unwrap();
        assert!(matches!(ev, wsrpc_smol::SubscriptionEvent::Notification { seq: 1, .. }), "{ev:?}");
        server.shutdown(Duration::from_secs(5)).await;
    });
}
