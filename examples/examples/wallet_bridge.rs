//! A local dApp bridge, the way a desktop wallet exposes itself to web pages: 127.0.0.1 only,
//! the first free port of 8766..=8800, `eth_*` methods rate limited by class (signing 1/s,
//! reads 20/s, account access 5/s) per connection and per dApp site (`LimitConfig::wallet()`:
//! one budget per origin however many tabs it opens), an origin allowlist,
//! `eth_subscribe("newHeads")`, `eth_subscribe("logs", {address, topics})` filtered per
//! subscription (each block carries a token `Transfer` and an `Approval` log), the wallet's
//! own events as subscriptions: `eth_subscribe("chainChanged")` after
//! `wallet_switchEthereumChain`, `eth_subscribe("accountsChanged")` after
//! `wallet_revokePermissions` or a new `eth_requestAccounts`, and an audit hook that logs
//! every `eth_sendTransaction` (target `wallet::audit`) with the origin that asked and the
//! outcome.
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
use std::time::Duration;

use wsrpc_core::auth::{OriginAllowList, OriginPolicy};
use wsrpc_core::limit::LimitConfig;
use wsrpc_examples::wallet::{self, Wallet};

const DEMO_PAGE: &str = include_str!("../../clients/js/demo/index.html");
const CLIENT_BUNDLE: &str = include_str!("../../clients/js/dist/index.js");

fn allowed_origins() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|w| w[0] == "--allow").map(|w| w[1].clone()).collect()
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let name = wsrpc_examples::arg("--name").unwrap_or_else(|| "wsrpc-wallet-bridge".into());
    let block_ms = wsrpc_examples::arg("--block-ms").and_then(|v| v.parse().ok()).unwrap_or(12_000);
    let wallet = Wallet::new(flag("--reject"));
    let router = wallet::router(&wallet);

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

    // Default bind: 127.0.0.1, the first free port of 8766..=8800.
    let mut builder = wsrpc_smol::Server::builder()
        .name(name.clone())
        .router(router)
        .origin_policy(origin)
        // `eth_*` classes, with buckets per dApp site (origin) besides per connection.
        .limits(LimitConfig::wallet())
        .hub(wallet::hub_config())
        // Every eth_sendTransaction, with the site that asked and what the user decided.
        .hook(wallet::audit_hook());
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
    wallet.attach(server.publisher());
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(block_ms));
            wallet.next_block();
        }
    });
    smol::block_on(std::future::pending::<()>());
    Ok(())
}
