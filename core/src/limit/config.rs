//! What is limited, per what key, and when abuse closes a connection.

use super::bucket::Rate;
use super::classes::MethodClasses;
use super::proxy::TrustedProxies;

/// Rate limit settings shared by a server's [`SharedLimits`](super::SharedLimits) and its
/// [`ConnectionLimiter`](super::ConnectionLimiter)s (wrap it in an `Arc` to share one copy).
///
/// Every call takes a token of its method class from each bucket it is keyed by, from all of
/// them or from none:
///
/// | key | default | bucket shared by |
/// |---|---|---|
/// | [`per_connection`](Self::per_connection) | on | nothing: one connection's calls |
/// | [`per_principal`](Self::per_principal) | on | every connection authenticated as the same subject |
/// | [`per_origin`](Self::per_origin) | off ([`wallet`](Self::wallet): on) | every connection with the same `Origin` header |
/// | [`per_address`](Self::per_address) | off | every connection from the same client address (behind [`trusted_proxies`](Self::trusted_proxies)) |
///
/// Per origin is right for a wallet bridge, where each dApp site is one origin, and wrong for
/// a public backend, where every browser user of a site sends the same `Origin`. Start from
/// [`default`](Self::default), [`wallet`](Self::wallet) or [`disabled`](Self::disabled) and
/// set fields:
///
/// ```
/// # use wsrpc_core::limit::{ForwardedHeader, LimitConfig, Rate, TrustedProxies};
/// let mut config = LimitConfig::default();
/// config.per_address = true;
/// config.trusted_proxies = TrustedProxies::new(ForwardedHeader::Forwarded, ["10.0.0.0/8"])?;
/// config.message_rate = Some(Rate::per_minute(60));
/// # Ok::<_, wsrpc_core::limit::InvalidProxy>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitConfig {
    /// Method classes and their tiers.
    pub classes: MethodClasses,
    /// Limit calls per (connection, class).
    pub per_connection: bool,
    /// Limit calls per (authenticated principal, class), across all connections of that
    /// principal. Anonymous connections have no principal key.
    pub per_principal: bool,
    /// Limit calls per (Origin header, class), across all connections with that origin.
    /// Connections without an Origin header have no origin key.
    pub per_origin: bool,
    /// Limit calls per (client address, class), across all connections from that address:
    /// the TCP peer, or the address [`trusted_proxies`](Self::trusted_proxies) forwarded. IPv6
    /// clients are keyed by their /64.
    pub per_address: bool,
    /// Reverse proxies whose `Forwarded` or `X-Forwarded-For` header names the client (none
    /// by default: the TCP peer is the client). The client address this gives is also what the
    /// loopback check of `/metrics` and the refusal logs use.
    pub trusted_proxies: TrustedProxies,
    /// Limit every incoming message of a connection, whatever it contains.
    pub message_rate: Option<Rate>,
    /// Most (key, class) buckets each shared table (principals, origins, addresses) keeps;
    /// beyond it new keys share one bucket per class until idle buckets are swept.
    pub max_shared_keys: usize,
    /// Close the connection with 1008 after this many rejections in a row.
    pub abuse_threshold: Option<u32>,
}

impl Default for LimitConfig {
    /// Defaults: per connection and per principal, default method classes, no message rate,
    /// no trusted proxy, 10,000 keys per shared table, close after 100 consecutive
    /// rejections.
    fn default() -> Self {
        Self {
            classes: MethodClasses::default(),
            per_connection: true,
            per_principal: true,
            per_origin: false,
            per_address: false,
            trusted_proxies: TrustedProxies::none(),
            message_rate: None,
            max_shared_keys: 10_000,
            abuse_threshold: Some(100),
        }
    }
}

impl LimitConfig {
    /// Limits nothing and never closes a connection.
    pub fn disabled() -> Self {
        Self {
            per_connection: false,
            per_principal: false,
            per_origin: false,
            per_address: false,
            message_rate: None,
            abuse_threshold: None,
            ..Self::default()
        }
    }

    /// The preset for a wallet bridge: the [`MethodClasses::eth_wallet`] classes, and buckets
    /// per origin besides the defaults' per connection and per principal, so each dApp site
    /// has one budget however many tabs or connections it opens.
    pub fn wallet() -> Self {
        Self { classes: MethodClasses::eth_wallet(), per_origin: true, ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_choose_their_keys() {
        let default = LimitConfig::default();
        assert!(default.per_connection && default.per_principal);
        assert!(!default.per_origin && !default.per_address);
        assert!(default.trusted_proxies.is_empty());
        let wallet = LimitConfig::wallet();
        assert!(wallet.per_connection && wallet.per_principal && wallet.per_origin);
        assert!(!wallet.per_address);
        assert_eq!(wallet.classes, MethodClasses::eth_wallet());
        let off = LimitConfig::disabled();
        assert!(!(off.per_connection || off.per_principal || off.per_origin || off.per_address));
        assert_eq!(off.abuse_threshold, None);
    }
}
