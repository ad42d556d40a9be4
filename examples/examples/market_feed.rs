//! A market data feed: public price topics, user-owned fill topics, authenticated order
//! books, HS256 JWT authentication, 60 messages per minute per connection, and a publisher
//! thread.
//!
//! `cargo run -p wsrpc-examples --example market_feed -- --port 8770`
//!
//! It prints a token for user `0xabc`; connect with `ws://127.0.0.1:8770/?token=…` and
//! subscribe to `prices:btc-usd` (anyone), `orders:btc-usd` (authenticated) or `user:0xabc`
//! (only that user). Set `WSRPC_JWT_SECRET` to use your own secret.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use wsrpc_smol::auth::Hs256Jwt;
use wsrpc_smol::hub::{HubConfig, TopicPattern, TopicPolicy};
use wsrpc_smol::limit::{LimitConfig, Rate};
use wsrpc_smol::{Router, Server};

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let secret =
        std::env::var("WSRPC_JWT_SECRET").unwrap_or_else(|_| "market-feed-demo-secret".into());
    let jwt = Hs256Jwt::new(secret.as_bytes());
    let mut hub = HubConfig::default();
    hub.policies = vec![
        (TopicPattern::new("prices:*"), TopicPolicy::Public),
        (TopicPattern::new("orders:*"), TopicPolicy::Authenticated),
        (TopicPattern::new("user:*"), TopicPolicy::OwnerOnly),
    ];
    hub.kind_limits = vec![("user".into(), 10), ("orders".into(), 20)];
    let mut limits = LimitConfig::default();
    limits.message_rate = Some(Rate::per_minute(60));

    let mut router = Router::new();
    router.method("whoami", |(): (), ctx| {
        Ok(json!({ "id": ctx.principal.id, "authenticated": ctx.principal.authenticated }))
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], wsrpc_examples::port_arg()));
    let server = Server::builder()
        .router(router)
        .authenticator(jwt.clone())
        .hub(hub)
        .limits(limits)
        .bind(addr)
        .start()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let token = jwt.sign(&json!({ "sub": "0xabc", "exp": now + 3600 }));
    println!("market feed listening on ws://{}", server.local_addr());
    println!("token for user 0xabc (1 hour): {token}");
    println!("e.g. ws://{}/?token={token}", server.local_addr());

    let publisher = server.publisher();
    std::thread::spawn(move || {
        let mut price = 64_000.0f64;
        for n in 1u64.. {
            std::thread::sleep(Duration::from_millis(250));
            price += ((n * 7919) % 200) as f64 - 99.5;
            let _ = publisher.publish("prices:btc-usd", &json!({ "price": price, "n": n }));
            if n % 4 == 0 {
                let _ = publisher
                    .publish("orders:btc-usd", &json!({ "bid": price - 5.0, "ask": price + 5.0 }));
            }
            if n % 20 == 0 {
                let _ = publisher.publish(
                    "user:0xabc",
                    &json!({ "fill": { "side": "buy", "qty": 0.01, "price": price } }),
                );
            }
        }
    });
    smol::block_on(std::future::pending::<()>());
    Ok(())
}
