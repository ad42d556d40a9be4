//! Rate tokens: multi-tier token buckets per method class, keyed per connection, per
//! principal, per origin and per client address, with time passed in.
//!
//! - [`TokenBucket`] and [`TieredBucket`]: exact integer refills at one or several [`Rate`]s.
//! - [`MethodClasses`]: which methods are [`MethodClass::Sensitive`], read-only, connection or
//!   default, and the tiers of each class ([`MethodClasses::eth_wallet`] for a wallet bridge).
//! - [`LimitConfig`]: what is limited, per what key ([`LimitConfig::wallet`] adds per-origin
//!   buckets for a wallet bridge), and the abuse threshold.
//! - [`TrustedProxies`]: whose `Forwarded` / `X-Forwarded-For` names the client address.
//! - [`SharedLimits`]: one per server, the [`SharedBuckets`] of each shared key; bounded
//!   whatever keys peers invent.
//! - [`ConnectionLimiter`]: one per connection; its [`check_call`](ConnectionLimiter::check_call)
//!   is the per-call entry point and returns a [`LimitExceeded`] to answer with -32005.
//!
//! This module depends on nothing else in the crate. It logs under the target `wsrpc::limit`.

pub mod bucket;
pub mod classes;
pub mod config;
pub mod connection;
pub mod error;
pub mod proxy;
pub mod shared;

pub use bucket::{Rate, TieredBucket, TokenBucket};
pub use classes::{MethodClass, MethodClasses};
pub use config::LimitConfig;
pub use connection::ConnectionLimiter;
pub use error::{AbuseVerdict, LimitExceeded, Scope};
pub use proxy::{ForwardedHeader, InvalidProxy, TrustedProxies};
pub use shared::{SharedBuckets, SharedLimits};

/// The `log` target of this layer.
const LOG_TARGET: &str = "wsrpc::limit";
