//! The simulated wallet behind `wallet_bridge`: its `eth_*` methods, its subscriptions
//! (`newHeads`, `logs` with a filter, the wallet's own events) and its audit hook, shared with
//! the tests that check them over real sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use wsrpc_core::hub::{HubConfig, LogFilter, SubscriptionMethods};
use wsrpc_core::rpc::hooks::{CallEnd, Hook, Outcome, after_call};
use wsrpc_core::rpc::{Router, RpcError, SubscriptionTarget};
use wsrpc_core::service::Publisher;

/// The wallet's only account.
pub const ACCOUNT: &str = "0x9f2c4b1e6d0a7c3b5e8f1a2d4c6b8e0f1a3c5d7e";
/// Chains this wallet knows: Ethereum mainnet and Sepolia.
pub const CHAINS: [u64; 2] = [1, 11_155_111];
/// The token contract whose `Transfer` logs every block carries (USDC's address).
pub const TOKEN: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
/// A second contract, whose `Approval` logs every block carries too (DAI's address).
pub const OTHER_TOKEN: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";
/// `keccak256("Transfer(address,address,uint256)")`, the ERC-20 transfer event's topic.
pub const TRANSFER: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
/// `keccak256("Approval(address,address,uint256)")`, the ERC-20 approval event's topic.
pub const APPROVAL: &str = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925";

/// What the user decided in the wallet's confirmation dialog (simulated).
fn confirm(reject: bool) -> Result<(), RpcError> {
    if reject { Err(RpcError::new(4001, "User rejected the request.")) } else { Ok(()) }
}

/// The wallet state the page sees: the selected chain and whether the page may see the
/// account.
#[derive(Debug)]
pub struct Wallet {
    chain: AtomicU64,
    connected: AtomicBool,
    block: AtomicU64,
    /// A user who rejects every signing request (4001).
    reject: bool,
    /// Set once the server runs; events are published through it.
    publisher: OnceLock<Publisher>,
}

impl Wallet {
    /// A connected wallet on mainnet at block 19,000,000.
    pub fn new(reject: bool) -> Arc<Self> {
        Arc::new(Self {
            chain: AtomicU64::new(CHAINS[0]),
            connected: AtomicBool::new(true),
            block: AtomicU64::new(19_000_000),
            reject,
            publisher: OnceLock::new(),
        })
    }

    /// Publishes the wallet's events through `publisher` (`server.publisher()`) from now on.
    pub fn attach(&self, publisher: Publisher) {
        let _ = self.publisher.set(publisher);
    }

    fn accounts(&self) -> Vec<&'static str> {
        if self.connected.load(Ordering::Relaxed) { vec![ACCOUNT] } else { Vec::new() }
    }

    fn publish(&self, topic: &str, value: &Value) {
        if let Some(publisher) = self.publisher.get() {
            let _ = publisher.publish(topic, value);
        }
    }

    fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::Relaxed) != connected {
            self.publish("accountsChanged", &json!(self.accounts()));
        }
    }

    /// A new block: `newHeads`, then each of its logs on `logs` (one notification per log,
    /// as Ethereum nodes send them; each subscriber's filter picks its own).
    pub fn next_block(&self) -> u64 {
        let n = self.block.fetch_add(1, Ordering::Relaxed) + 1;
        self.publish("newHeads", &json!({ "number": format!("{n:#x}") }));
        for log in block_logs(n) {
            self.publish("logs", &log);
        }
        n
    }
}

/// A 32-byte topic holding `address` (an indexed address argument of an event).
fn address_topic(address: &str) -> String {
    format!("0x{:0>64}", address.trim_start_matches("0x"))
}

/// The logs of block `n`: a `Transfer` of [`TOKEN`] to [`ACCOUNT`] and an `Approval` on
/// [`OTHER_TOKEN`] by it.
pub fn block_logs(n: u64) -> [Value; 2] {
    let block_hash = format!("{n:#066x}");
    let log = |index: u64, address: &str, topics: [String; 3], amount: u64| {
        json!({
            "address": address,
            "topics": topics,
            "data": format!("{amount:#066x}"),
            "blockNumber": format!("{n:#x}"),
            "blockHash": block_hash,
            "transactionHash": format!("{:#066x}", n * 16 + index),
            "transactionIndex": format!("{index:#x}"),
            "logIndex": format!("{index:#x}"),
            "removed": false,
        })
    };
    let sender = "0x28c6c06298d514db089934071355e5743bf21d60";
    [
        log(0, TOKEN, [TRANSFER.into(), address_topic(sender), address_topic(ACCOUNT)], n % 1000),
        log(1, OTHER_TOKEN, [APPROVAL.into(), address_topic(ACCOUNT), address_topic(sender)], 1),
    ]
}

/// The wallet's methods and its `logs` subscription.
pub fn router(wallet: &Arc<Wallet>) -> Router {
    let mut router = Router::new();
    let (w1, w2, w3, w4, w5, w6, w7) = (
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
        wallet.clone(),
    );
    let reject = wallet.reject;
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
            Ok(format!("{:#x}", w7.block.load(Ordering::Relaxed)))
        })
        .method("eth_getBalance", |(address, _block): (String, Value), _| {
            if address.eq_ignore_ascii_case(ACCOUNT) { Ok("0xde0b6b3a7640000") } else { Ok("0x0") }
        })
        .method("eth_call", |(_tx, _block): (Value, Value), _| Ok("0x"))
        .async_method("eth_sendTransaction", move |(tx,): (Value,), _| async move {
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
            Ok("0x5e1ec7ed00000000000000000000000000000000000000000000000000000001")
        })
        .method("personal_sign", move |(message, _address): (String, String), _| {
            confirm(reject)?;
            Ok(format!("0x{}", "ab".repeat(65 - message.len().min(1))))
        })
        // eth_subscribe("logs", {address, topics}): one topic for every log, and each
        // subscription's filter decides which of them it gets. A bad filter is -32602.
        .subscription("logs", |call| {
            let filter: LogFilter = call.filter()?.unwrap_or_default();
            Ok(SubscriptionTarget::topic("logs").with_filter(filter))
        });
    router
}

/// The pub/sub settings of an Ethereum provider: `eth_subscribe` and its notices.
pub fn hub_config() -> HubConfig {
    let mut hub = HubConfig::default();
    hub.methods = SubscriptionMethods::eth();
    hub
}

/// The audit trail of a wallet: every `eth_sendTransaction`, approved, rejected or refused
/// before it ran, with the site that asked (`Origin`), who was connected, and how long the
/// user took, at `info` on the `wallet::audit` target.
pub fn audit_hook() -> impl Hook {
    after_call(|call: &CallEnd<'_>| {
        if call.method != "eth_sendTransaction" {
            return;
        }
        let outcome = match call.outcome {
            Outcome::Ok => "approved".to_owned(),
            Outcome::Error(e) => format!("error {} ({})", e.code, e.message),
            _ => "ended".to_owned(),
        };
        log::info!(
            target: "wallet::audit",
            "eth_sendTransaction conn={} origin={} principal={} id={} params_bytes={} {outcome} after {:?}{}",
            call.context.connection,
            call.context.origin.as_deref().unwrap_or("-"),
            call.context.principal.id,
            call.context.id.as_ref().map_or("-", |id| id.as_json()),
            call.params_len,
            call.duration,
            call.refused.map_or(String::new(), |r| format!(" refused by {r:?}")),
        );
    })
}
