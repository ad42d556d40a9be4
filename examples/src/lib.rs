//! Shared bits of the examples: argument parsing and an OS-seeded entropy source.

use wsrpc_core::Xoshiro256;

/// The value after `--name` on the command line, if any.
pub fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
    }
    None
}

/// A fast generator seeded from the operating system, for client mask keys.
pub fn os_seeded_entropy() -> Box<Xoshiro256> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).expect("the OS entropy source is available");
    Box::new(Xoshiro256::from_seed(u64::from_le_bytes(seed)))
}

use serde_json::json;
use wsrpc_core::rpc::{Router, RpcError};

/// The small service every `*_server` example runs: arithmetic, an echo, an async method,
/// and a `ticks` topic the example publishes to.
pub fn demo_router() -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| a.checked_add(b).ok_or_else(|| RpcError::invalid_params("overflow")))
        .method("echo", |v: serde_json::Value, _| Ok(v))
        .method("whoami", |(): (), ctx| Ok(json!({"connection": ctx.connection.0, "origin": ctx.origin.as_deref(), "principal": ctx.principal.id})))
        .async_method("sleep_ms", |(ms,): (u64,), _| async move {
            async_io::Timer::after(std::time::Duration::from_millis(ms.min(10_000))).await;
            Ok(ms)
        });
    r
}

/// The methods of the JSON-RPC 2.0 specification's examples (section 7).
pub fn spec_router() -> Router {
    #[derive(serde::Deserialize)]
    struct Subtract {
        minuend: i64,
        subtrahend: i64,
    }
    let mut r = Router::new();
    r.method("subtract", |p: Subtract, _| {
        p.minuend.checked_sub(p.subtrahend).ok_or_else(|| RpcError::invalid_params("overflow"))
    })
    .method("sum", |p: Vec<i64>, _| {
        p.iter()
            .try_fold(0i64, |a, b| a.checked_add(*b))
            .ok_or_else(|| RpcError::invalid_params("overflow"))
    })
    .method("update", |_: Vec<serde_json::Value>, _| Ok(()))
    .method("notify_hello", |_: Vec<serde_json::Value>, _| Ok(()))
    .method("notify_sum", |_: Vec<serde_json::Value>, _| Ok(()))
    .method("get_data", |(): (), _| Ok(json!(["hello", 5])));
    r
}

/// The port from `--port`, or 0 (any free port).
pub fn port_arg() -> u16 {
    arg("--port").and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Publishes a tick every `every` on `ticks` until the process ends.
pub fn spawn_ticker(publish: impl Fn(u64) + Send + 'static, every: std::time::Duration) {
    std::thread::spawn(move || {
        for n in 1.. {
            std::thread::sleep(every);
            publish(n);
        }
    });
}
