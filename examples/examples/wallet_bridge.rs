//! A local dApp bridge, the way a desktop wallet exposes itself to web pages: 127.0.0.1 only,
//! the first free port of 8766..=8800, `eth_*` methods rate limited by class (signing 1/s,
//! reads 20/s, account access 5/s), an origin allowlist, and `eth_subscribe("newHeads")`.
//!
//! `cargo run -p wsrpc-examples --example wallet_bridge -- [--allow https://app.example.org]...`
//!
//! Browsers let any page open ws://127.0.0.1, so the Origin check is what keeps other sites
//! out: only loopback origins and the `--allow`ed ones get past the handshake (403 otherwise).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use wsrpc_core::auth::{OriginAllowList, OriginPolicy};
use wsrpc_core::hub::{HubConfig, SubscriptionMethods};
use wsrpc_core::limit::{LimitConfig, MethodClasses};
use wsrpc_core::rpc::{Router, RpcError};

const ACCOUNT: &str = "0x9f2c4b1e6d0a7c3b5e8f1a2d4c6b8e0f1a3c5d7e";

fn allowed_origins() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|w| w[0] == "--allow").map(|w| w[1].clone()).collect()
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let block = Arc::new(AtomicU64::new(19_000_000));
    let mut router = Router::new();
    let head = block.clone();
    router
        .method("eth_chainId", |(): (), _| Ok("0x1"))
        .method("net_version", |(): (), _| Ok("1"))
        .method("eth_accounts", |(): (), _| Ok(vec![ACCOUNT]))
        .method("eth_requestAccounts", |(): (), ctx| {
            log::info!("account access requested by origin {:?}", ctx.origin);
            Ok(vec![ACCOUNT])
        })
        .method("eth_blockNumber", move |(): (), _| {
            Ok(format!("{:#x}", head.load(Ordering::Relaxed)))
        })
        .method("eth_getBalance", |(address, _block): (String, Value), _| {
            if address.eq_ignore_ascii_case(ACCOUNT) { Ok("0xde0b6b3a7640000") } else { Ok("0x0") }
        })
        .method("eth_call", |(_tx, _block): (Value, Value), _| Ok("0x"))
        .async_method("eth_sendTransaction", |(tx,): (Value,), ctx| async move {
            // A real wallet shows a confirmation dialog here; the handler waits for the user
            // without blocking the connection.
            async_io::Timer::after(Duration::from_millis(300)).await;
            if tx
                .get("from")
                .and_then(Value::as_str)
                .is_some_and(|f| !f.eq_ignore_ascii_case(ACCOUNT))
            {
                return Err(RpcError::new(4100, "the requested account is not authorized"));
            }
            log::info!("transaction approved for origin {:?}", ctx.origin);
            Ok("0x5e1ec7ed00000000000000000000000000000000000000000000000000000001")
        })
        .method("personal_sign", |(message, _address): (String, String), _| {
            Ok(format!("0x{}", "ab".repeat(65 - message.len().min(1))))
        });

    let allow = allowed_origins();
    let origin = if allow.is_empty() {
        OriginPolicy::Loopback
    } else {
        match OriginAllowList::new(&allow) {
            Ok(list) => OriginPolicy::AllowList(list.with_loopback(true)),
            Err(e) => {
                eprintln!("bad --allow origin: {e}");
                std::process::exit(2);
            }
        }
    };
    let mut limits = LimitConfig::default();
    limits.classes = MethodClasses::eth_wallet();
    let mut hub = HubConfig::default();
    hub.methods = SubscriptionMethods::eth();

    // Default bind: 127.0.0.1, the first free port of 8766..=8800.
    let server = wsrpc_smol::Server::builder()
        .router(router)
        .origin_policy(origin)
        .limits(limits)
        .hub(hub)
        .start()?;
    println!(
        "wallet bridge listening on ws://{} (allowed origins: loopback{})",
        server.local_addr(),
        if allow.is_empty() { String::new() } else { format!(", {}", allow.join(", ")) }
    );
    println!("port {}", server.local_addr().port());
    let service = server.service().clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(12));
            let n = block.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = service.publish("newHeads", &json!({ "number": format!("{n:#x}") }));
        }
    });
    smol::block_on(std::future::pending::<()>());
    Ok(())
}
