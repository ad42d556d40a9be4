//! Shared bits of the examples: argument parsing, an OS-seeded entropy source, the demo
//! service and the JSON-RPC 2.0 specification's service (`spec_server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub mod cluster;
pub mod redis_server;
pub mod wallet;

use serde_json::json;
use wsrpc_core::Xoshiro256;
use wsrpc_core::limit::{LimitConfig, MethodClass};
use wsrpc_core::rpc::{Router, RpcError};

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

/// Whether `--name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().skip(1).any(|a| a == name)
}

/// A fast generator seeded from the operating system, for client mask keys.
pub fn os_seeded_entropy() -> Box<Xoshiro256> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).expect("the OS entropy source is available");
    Box::new(Xoshiro256::from_seed(u64::from_le_bytes(seed)))
}

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

/// The API of `spec_server`: the methods of the JSON-RPC 2.0 specification's examples
/// (section 7) as typed descriptors, with the JSON Schemas `rpc.discover` shows.
pub mod spec_api {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use wsrpc_core::rpc::{Method, Notification};

    /// `subtract`'s params, by name (`{"minuend": 42, "subtrahend": 23}`) or by position.
    #[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Subtract {
        /// What is subtracted from.
        pub minuend: i64,
        /// What is subtracted.
        pub subtrahend: i64,
    }

    /// `minuend - subtrahend` (-32602 on overflow).
    pub const SUBTRACT: Method<Subtract, i64> =
        Method::new("subtract").summary("Subtracts subtrahend from minuend").with_schemas();
    /// The sum of any number of integers (-32602 on overflow).
    pub const SUM: Method<Vec<i64>, i64> =
        Method::new("sum").params(&["terms"]).summary("Adds its params").with_schemas();
    /// A notification that takes any params.
    pub const UPDATE: Notification<Vec<Value>> =
        Notification::new("update").params(&["values"]).with_schemas();
    /// A notification that takes any params.
    pub const NOTIFY_HELLO: Notification<Vec<Value>> =
        Notification::new("notify_hello").params(&["values"]).with_schemas();
    /// A notification that takes any params.
    pub const NOTIFY_SUM: Notification<Vec<Value>> =
        Notification::new("notify_sum").params(&["values"]).with_schemas();
    /// `["hello", 5]`.
    pub const GET_DATA: Method<(), Value> =
        Method::new("get_data").summary("Answers [\"hello\", 5]").with_schemas();
}

/// The methods of the JSON-RPC 2.0 specification's examples (section 7), from [`spec_api`];
/// `rpc.discover` describes them.
pub fn spec_router() -> Router {
    use spec_api::*;
    let mut r = Router::new();
    r.register(SUBTRACT, |p, _| {
        p.minuend.checked_sub(p.subtrahend).ok_or_else(|| RpcError::invalid_params("overflow"))
    })
    .register(SUM, |p, _| {
        p.iter()
            .try_fold(0i64, |a, b| a.checked_add(*b))
            .ok_or_else(|| RpcError::invalid_params("overflow"))
    })
    .register_notification(UPDATE, |_, _| Ok(()))
    .register_notification(NOTIFY_HELLO, |_, _| Ok(()))
    .register_notification(NOTIFY_SUM, |_, _| Ok(()))
    .register(GET_DATA, |(), _| Ok(json!(["hello", 5])))
    .info("wsrpc spec_server", env!("CARGO_PKG_VERSION"))
    .description("The methods of the JSON-RPC 2.0 specification's examples (section 7)");
    r
}

/// The rate tokens of `spec_server`: the default tiers, with the specification's methods
/// (pure arithmetic and no-ops) in the read-only class (20/s, 200/min, 2,000/h per connection)
/// rather than the default one (10/s), so a conformance client running the section 7 examples
/// over one connection is not throttled, while a flood still is.
pub fn spec_limits() -> LimitConfig {
    let mut limits = LimitConfig::default();
    for m in ["subtract", "sum", "update", "notify_hello", "notify_sum", "get_data"] {
        limits.classes = limits.classes.with_method(m, MethodClass::ReadOnly);
    }
    limits
}

/// A running `spec_server` on one of the three adapters.
#[derive(Debug)]
pub enum SpecServer {
    /// On `wsrpc-smol`.
    Smol(wsrpc_smol::Server),
    /// On `wsrpc-async-std`.
    AsyncStd(wsrpc_async_std::Server),
    /// On `wsrpc-blocking`.
    Blocking(wsrpc_blocking::Server),
}

impl SpecServer {
    /// Starts the specification's methods (`spec_router`, `spec_limits`, every other option
    /// at its default) on `adapter` (`smol`, `async-std` or `blocking`) at `addr`.
    pub fn start(adapter: &str, addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(adapter, addr, wsrpc_core::ws::Config::default(), None)
    }

    /// [`start`](Self::start) with WebSocket settings `ws` (for example compression on),
    /// serving `https://` and `wss://` with `tls` when given.
    pub fn start_with(
        adapter: &str,
        addr: SocketAddr,
        ws: wsrpc_core::ws::Config,
        tls: Option<Arc<wsrpc_smol::tls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        macro_rules! build {
            ($server:ty) => {{
                let b = <$server>::builder()
                    .router(spec_router())
                    .limits(spec_limits())
                    .websocket(ws)
                    .bind(addr);
                match tls {
                    Some(tls) => b.tls(tls).start()?,
                    None => b.start()?,
                }
            }};
        }
        Ok(match adapter {
            "smol" => Self::Smol(build!(wsrpc_smol::Server)),
            "async-std" => Self::AsyncStd(build!(wsrpc_async_std::Server)),
            "blocking" => Self::Blocking(build!(wsrpc_blocking::Server)),
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("unknown adapter {other:?}: use smol, async-std or blocking"),
                ));
            }
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Smol(s) => s.local_addr(),
            Self::AsyncStd(s) => s.local_addr(),
            Self::Blocking(s) => s.local_addr(),
        }
    }

    /// The shared state: router, hub, metrics.
    pub fn service(&self) -> &std::sync::Arc<wsrpc_core::service::Service> {
        match self {
            Self::Smol(s) => s.service(),
            Self::AsyncStd(s) => s.service(),
            Self::Blocking(s) => s.service(),
        }
    }

    /// A handle for publishing from other threads.
    pub fn publisher(&self) -> wsrpc_core::service::Publisher {
        match self {
            Self::Smol(s) => s.publisher(),
            Self::AsyncStd(s) => s.publisher(),
            Self::Blocking(s) => s.publisher(),
        }
    }
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

/// The README's Rust snippets, compiled by `cargo test --doc` so they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct Readme;

/// A self-signed certificate for `localhost` and `127.0.0.1`, made now: its PEM is written to
/// a file in the temporary directory (for clients to trust), and the server configuration is
/// loaded back from PEM the way an application loads its own certificate and key.
pub fn self_signed_tls() -> std::io::Result<(Arc<wsrpc_smol::tls::ServerConfig>, PathBuf)> {
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| invalid(&e))?;
    let cert_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let path = std::env::temp_dir().join(format!("wsrpc-self-signed-{}.pem", std::process::id()));
    std::fs::write(&path, &cert_pem)?;
    let config = wsrpc_smol::tls::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
        .map_err(|e| invalid(&e))?;
    Ok((config, path))
}
