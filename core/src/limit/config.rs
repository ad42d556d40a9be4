//! What is limited, per what key, and when abuse closes a connection.

use super::bucket::Rate;
use super::classes::MethodClasses;

/// Rate limit settings shared by a server's [`OriginLimiter`](super::OriginLimiter) and its
/// [`ConnectionLimiter`](super::ConnectionLimiter)s (wrap it in an `Arc` to share one copy).
///
/// Start from [`default`](Self::default) or [`disabled`](Self::disabled) and set fields:
///
/// ```
/// # use wsrpc_core::limit::{LimitConfig, MethodClasses, Rate};
/// let mut config = LimitConfig::default();
/// config.classes = MethodClasses::eth_wallet();
/// config.message_rate = Some(Rate::per_minute(60));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitConfig {
    /// Method classes and their tiers.
    pub classes: MethodClasses,
    /// Limit calls per (Origin header, class), across all connections with that origin.
    /// Connections without an Origin header are limited per connection only.
    pub per_origin: bool,
    /// Limit calls per (connection, class).
    pub per_connection: bool,
    /// Limit every incoming message of a connection, whatever it contains.
    pub message_rate: Option<Rate>,
    /// Most (origin, class) buckets kept; beyond it new origins share one bucket per class.
    pub max_origin_keys: usize,
    /// Close the connection with 1008 after this many rejections in a row.
    pub abuse_threshold: Option<u32>,
}

impl Default for LimitConfig {
    /// Defaults: per origin and per connection, no message rate, 10,000 origin
    /// keys, close after 100 consecutive rejections.
    fn default() -> Self {
        Self {
            classes: MethodClasses::default(),
            per_origin: true,
            per_connection: true,
            message_rate: None,
            max_origin_keys: 10_000,
            abuse_threshold: Some(100),
        }
    }
}

impl LimitConfig {
    /// Limits nothing and never closes a connection.
    pub fn disabled() -> Self {
        Self {
            per_origin: false,
            per_connection: false,
            message_rate: None,
            abuse_threshold: None,
            ..Self::default()
        }
    }
}
