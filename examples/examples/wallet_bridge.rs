//! A local dApp bridge, the way a desktop wallet exposes itself to web pages: 127.0.0.1 only,
//! the first free port of 8766..=8800, `eth_*` methods rate limited by class (signing 1/s,
//! reads 20/s, account access 5/s) per connection and per dApp site (`LimitConfig::wallet()`:
//! one budget per origin however many tabs it opens), an origin allowlist, `eth_subscribe("newHeads")`, and
//! the wallet's own events as subscriptions: `eth_subscribe("chainChanged")` after
//! `wallet_switchEthereumChain`, `eth_subscribe("accountsChanged")` after
//! `wallet_revokePermissions` or a new `eth_requestAccounts`.
//!
//! `cargo run -p wsrpc-examples --example wallet_bridge -- [--allow https://app.example.org]...
//!  [--port P] [--name NAME] [--block-ms MS] [--reject] [--demo]`
//!
//! `rpc.health` names the server (`wsrpc-wallet-bridge` unless `--name`), which is what a
//! page scanning the port range checks. `--demo` serves a small dApp page at `GET /demo` that
//! uses the browser client of `clients/js`. `--reject` plays a user who rejects every signing
//! request (4001). A new block is published every `--block-ms` [12000].
//!
//! Browsers let any page open ws://127.0.0.1, so the Origin check is what keeps other sites
//! out: only loopback origins and the `--allow`ed ones get past the handshake (403 otherwise).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use wsrpc_core::auth::{OriginAllowList, OriginPolicy};
use wsrpc_core::hub::{HubConfig, SubscriptionMethods};
use wsrpc_core::limit::LimitConfig;
use wsrpc_core::rpc::{Router, RpcError};
use wsrpc_core::service::Service;

const ACCOUNT: &str = "0x9f2c4b1e6d0a7c3b5e8f1a2d4c6b8e0f1a3c5d7e";
/// Chains this wallet knows: Ethereum mainnet and Sepolia.
const CHAINS: [u64; 2] = [1, 11_155_111];
const DEMO_PAGE: &str = include_str!("../../clients/js/demo/index.html");
const CLIENT_BUNDLE: &str = include_str!("../../clients/js/dist/index.js");

fn allowed_origins() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|w| w[0] == "--allow").map(|w| w[1].clone()).collect()
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// What the user decided in the wallet's confirmation dialog (simulated).
fn confirm(reject: bool) -> Result<(), RpcError> {
    if reject { Err(RpcError::new(4001, "User rejected the request.")) } else { Ok(()) }
}

/// The wallet state the page sees: the selected chain and whether the page may see the account.
struct Wallet {
    chain: AtomicU64,
    connected: AtomicBool,
    /// Set once the server runs; events are published through it.
    service: OnceLock<Arc<Service>>,
}

impl Wallet {
    fn accounts(&self) -> Vec<&'static str> {
        if self.connected.load(Ordering::Relaxed) { vec![ACCOUNT] } else { Vec::new() }
    }

    fn publish(&self, topic: &str, value: &Value) {
        if let Some(service) = self.service.get() {
            let _ = service.publish(topic, value);
        }
    }

    fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::Relaxed) != connected {
            self.publish("accountsChanged", &json!(self.accounts()));
        }
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let reject = flag("--reject");
    let name = wsrpc_examples::arg("--name").unwrap_or_else(|| "wsrpc-wallet-bridge".into());
    let block_ms = wsrpc_examples::arg("--block-ms").and_then(|v| v.parse().ok()).unwrap_or(12_000);
    let block = Arc::new(AtomicU64::new(19_000_000));
    let wallet = Arc::new(Wallet {
        chain: AtomicU64::new(CHAINS[0]),
        connected: AtomicBool::new(true),
        service: OnceLock::new(),
    });
    let mut router = Router::new();
    let head = block.clone();
    let (w1, w2, w3, w4, w5, w6) = (
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
    );
    router
        .method("eth_chainId", move |(): (), _| {
            Ok(format!("{:#x}", w1.chain.load(Ordering::Relaxed)))
        })
        .method("net_version", move |(): (), _| Ok(w2.chain.load(Ordering::Relaxed).to_string()))
        .method("eth_accounts", move |(): (), _| Ok(w3.accounts()))
        .method("eth_requestAccounts", move |(): (), ctx| {
            log::info!("account access requested by origin {:?}", ctx.origin);
            w4.set_connected(true);
            Ok(w4.accounts())
        })
        .method("wallet_revokePermissions", move |_: Value, ctx| {
            log::info!("permissions revoked by origin {:?}", ctx.origin);
            w5.set_connected(false);
            Ok(Value::Null)
        })
        .method("wallet_switchEthereumChain", move |(target,): (Value,), _| {
            // EIP-3326: `[{"chainId": "0x…"}]`; 4902 for a chain the wallet does not know.
            let id = target
                .get("chainId")
                .and_then(Value::as_str)
                .and_then(|s| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok())
                .ok_or_else(|| RpcError::invalid_params("expected [{\"chainId\": \"0x…\"}]"))?;
            if !CHAINS.contains(&id) {
                return Err(RpcError::new(4902, "Unrecognized chain ID."));
            }
            confirm(reject)?;
            if w6.chain.swap(id, Ordering::Relaxed) != id {
                w6.publish("chainChanged", &json!(format!("{id:#x}")));
            }
            Ok(Value::Null)
        })
        .method("eth_blockNumber", move |(): (), _| {
            Ok(format!("{:#x}", head.load(Ordering::Relaxed)))
        })
        .method("eth_getBalance", |(address, _block): (String, Value), _| {
            if address.eq_ignore_ascii_case(ACCOUNT) { Ok("0xde0b6b3a7640000") } else { Ok("0x0") }
        })
        .method("eth_call", |(_tx, _block): (Value, Value), _| Ok("0x"))
        .async_method("eth_sendTransaction", move |(tx,): (Value,), ctx| async move {
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
            confirm(reject)?;
            log::info!("transaction approved for origin {:?}", ctx.origin);
            Ok("0x5e1ec7ed00000000000000000000000000000000000000000000000000000001")
        })
        .method("personal_sign", move |(message, _address): (String, String), _| {
            confirm(reject)?;
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
    let mut hub = HubConfig::default();
    hub.methods = SubscriptionMethods::eth();

    // Default bind: 127.0.0.1, the first free port of 8766..=8800.
    let mut builder = wsrpc_smol::Server::builder()
        .name(name.clone())
        .router(router)
        .origin_policy(origin)
        // `eth_*` classes, with buckets per dApp site (origin) besides per connection.
        .limits(LimitConfig::wallet())
        .hub(hub);
    if let Some(port) = wsrpc_examples::arg("--port").and_then(|p| p.parse::<u16>().ok()) {
        builder = builder.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if flag("--demo") {
        builder = builder
            .static_route("/demo", "text/html; charset=utf-8", DEMO_PAGE.as_bytes())
            .static_route(
                "/demo/wsrpc-client.js",
                "text/javascript; charset=utf-8",
                CLIENT_BUNDLE.as_bytes(),
            );
    }
    let server = builder.start()?;
    println!(
        "wallet bridge {name:?} listening on ws://{} (allowed origins: loopback{})",
        server.local_addr(),
        if allow.is_empty() { String::new() } else { format!(", {}", allow.join(", ")) }
    );
    if flag("--demo") {
        println!("demo dApp: http://{}/demo", server.local_addr());
    }
    println!("port {}", server.local_addr().port());
    let service = server.service().clone();
    let _ = wallet.service.set(service.clone());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(block_ms));
            let n = block.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = service.publish("newHeads", &json!({ "number": format!("{n:#x}") }));
        }
    });
    smol::block_on(std::future::pending::<()>());
    Ok(())
}
