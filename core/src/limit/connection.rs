//! One connection's buckets and keys, the combined per-call check and abuse tracking.

use core::net::IpAddr;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::LOG_TARGET;
use super::bucket::{TieredBucket, TokenBucket};
use super::classes::MethodClass;
use super::config::LimitConfig;
use super::error::{AbuseVerdict, LimitExceeded, Scope};
use super::shared::{SharedBuckets, SharedLimits, address_key};

/// The rate limits of one connection, owned by it (not shared): its own buckets, and the keys
/// (principal, origin, client address) of the shared buckets its calls also draw from.
///
/// Create it with the server's `Arc<LimitConfig>` when the connection opens, and give it its
/// keys ([`set_principal`](Self::set_principal), [`set_origin`](Self::set_origin),
/// [`set_address`](Self::set_address); HTTP sets them again for each request). Call
/// [`check_message`](Self::check_message) once per incoming message, then
/// [`check_call`](Self::check_call) once per JSON-RPC call in it (each entry of a batch). A
/// rejection is answered with -32005; when its [`verdict`](LimitExceeded::verdict) is
/// [`AbuseVerdict::Close`], close with 1008.
///
/// Rejections in a row are counted across messages and calls; only an accepted call resets the
/// count (an accepted message does not, or a peer could alternate). Buckets are created on
/// first use, so an idle connection holds only a few words. The first rejection of a run is
/// logged at `info` under `wsrpc::limit` (with the connection id and client address), the
/// rest of the run at `debug`.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Instant;
/// use wsrpc_core::limit::{AbuseVerdict, ConnectionLimiter, LimitConfig, SharedLimits};
///
/// let config = Arc::new(LimitConfig::wallet());
/// let shared = SharedLimits::new(config.clone()); // one per server
/// let mut conn = ConnectionLimiter::new(config).with_connection(7); // one per connection
/// conn.set_origin(Some("http://localhost:3000".into()));
/// # #[allow(clippy::disallowed_methods)]
/// let now = Instant::now(); // from the caller's clock
/// match conn.check_message(now).and_then(|()| conn.check_call(&shared, "eth_call", now)) {
///     Ok(_class) => { /* dispatch */ }
///     Err(e) => {
///         let _answer = (e.retry_after_ms(), wsrpc_core::limit::LimitExceeded::JSONRPC_CODE);
///         if e.verdict == AbuseVerdict::Close { /* close with 1008 */ }
///     }
/// }
/// ```
#[derive(Debug)]
pub struct ConnectionLimiter {
    config: Arc<LimitConfig>,
    /// For logs.
    connection: Option<u64>,
    keys: Keys,
    /// Indexed by [`MethodClass::index`]; `None` until the class is first called.
    calls: [Option<TieredBucket>; 4],
    messages: Option<TokenBucket>,
    consecutive_rejections: u32,
}

/// What the connection's calls are keyed by in the shared tables.
#[derive(Debug, Default)]
struct Keys {
    principal: Option<Box<str>>,
    origin: Option<Arc<str>>,
    address: Option<IpAddr>,
    /// `address` as its table key, made once.
    address_key: Option<Box<str>>,
}

impl ConnectionLimiter {
    /// A connection with no key and no bucket used yet.
    pub fn new(config: Arc<LimitConfig>) -> Self {
        Self {
            config,
            connection: None,
            keys: Keys::default(),
            calls: Default::default(),
            messages: None,
            consecutive_rejections: 0,
        }
    }

    /// Names the connection in the logs of its rejections.
    #[must_use]
    pub fn with_connection(mut self, id: u64) -> Self {
        self.connection = Some(id);
        self
    }

    /// The authenticated principal's id, or `None` for an anonymous connection (no principal
    /// key). An id longer than [`SharedBuckets::MAX_KEY_LEN`] is keyed by its SHA-256, so a
    /// long subject still has a bucket of its own.
    pub fn set_principal(&mut self, id: Option<&str>) {
        self.keys.principal = id.map(|id| {
            if id.len() <= SharedBuckets::MAX_KEY_LEN {
                return id.into();
            }
            let digest = Sha256::digest(id.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}").into()
        });
    }

    /// The request's `Origin` header, if any.
    pub fn set_origin(&mut self, origin: Option<Arc<str>>) {
        self.keys.origin = origin;
    }

    /// The client's address (the TCP peer, or what trusted proxies forwarded), if known.
    pub fn set_address(&mut self, address: Option<IpAddr>) {
        if address != self.keys.address {
            // Formatted only when calls are keyed by address (off by default): a connection
            // that lives for one call should not pay for a string it never uses.
            self.keys.address_key = address.filter(|_| self.config.per_address).map(address_key);
            self.keys.address = address;
        }
    }

    /// Takes a token from the message rate, if [`LimitConfig::message_rate`] is set.
    pub fn check_message(&mut self, now: Instant) -> Result<(), LimitExceeded> {
        let Some(rate) = self.config.message_rate else {
            return Ok(());
        };
        let bucket = self.messages.get_or_insert_with(|| TokenBucket::new(rate, now));
        match bucket.try_take(now) {
            Ok(()) => Ok(()),
            Err(wait) => Err(self.reject(Scope::Message, None, wait)),
        }
    }

    /// Classifies `method` and takes a token for its class from every bucket the call is
    /// keyed by (this connection's, and in `shared` its principal's, origin's and client
    /// address's), from all of them or from none.
    ///
    /// A key the connection does not have (anonymous, no Origin header, address unknown) or
    /// the configuration does not use is skipped. When several buckets run out, the error
    /// names the one with the longest wait.
    pub fn check_call(
        &mut self,
        shared: &SharedLimits,
        method: &str,
        now: Instant,
    ) -> Result<MethodClass, LimitExceeded> {
        let config = &*self.config;
        let class = config.classes.class_of(method);
        let keys = &self.keys;
        let principal = keyed(config.per_principal, shared.principal(), &keys.principal);
        let origin = keyed(config.per_origin, shared.origin(), &keys.origin);
        let address = keyed(config.per_address, shared.address(), &keys.address_key);
        let own = config.per_connection.then(|| {
            self.calls[class.index()]
                .get_or_insert_with(|| TieredBucket::new(config.classes.tiers(class), now))
        });
        // Tables are locked in this fixed order by every caller, so no two calls deadlock.
        let outcome = with_shared(principal, class, now, |p| {
            with_shared(origin, class, now, |o| {
                with_shared(address, class, now, |a| {
                    take_all(
                        [
                            p.map(|b| (Scope::Principal, b)),
                            o.map(|b| (Scope::Origin, b)),
                            a.map(|b| (Scope::Address, b)),
                            own.map(|b| (Scope::Connection, b)),
                        ],
                        now,
                    )
                })
            })
        });
        match outcome {
            Ok(()) => {
                self.consecutive_rejections = 0;
                Ok(class)
            }
            Err((scope, wait)) => Err(self.reject(scope, Some(class), wait)),
        }
    }

    /// Takes a token for `class` from this connection's bucket only (the tests' way to drain
    /// a bucket; calls go through `check_call`, which takes from every keyed bucket or none).
    #[cfg(test)]
    pub(crate) fn check_class(
        &mut self,
        class: MethodClass,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        if !self.config.per_connection {
            self.consecutive_rejections = 0;
            return Ok(());
        }
        let tiers = self.config.classes.tiers(class);
        let bucket = self.calls[class.index()].get_or_insert_with(|| TieredBucket::new(tiers, now));
        match bucket.try_take(now) {
            Ok(()) => {
                self.consecutive_rejections = 0;
                Ok(())
            }
            Err(wait) => Err(self.reject(Scope::Connection, Some(class), wait)),
        }
    }

    /// Rejections in a row so far.
    pub fn consecutive_rejections(&self) -> u32 {
        self.consecutive_rejections
    }

    /// The configuration this limiter was built with.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// Counts a rejection, logs it and builds the error with its verdict.
    fn reject(
        &mut self,
        scope: Scope,
        class: Option<MethodClass>,
        retry_after: Duration,
    ) -> LimitExceeded {
        self.consecutive_rejections = self.consecutive_rejections.saturating_add(1);
        let rejections = self.consecutive_rejections;
        let threshold = self.config.abuse_threshold;
        let verdict = match threshold {
            Some(threshold) if rejections >= threshold => AbuseVerdict::Close,
            _ => AbuseVerdict::Tolerate,
        };
        let error = LimitExceeded { scope, class, retry_after, verdict };
        let class = class.map_or("none", MethodClass::as_str);
        // Written as connection ids are everywhere else (`c7`), without an allocation.
        let conn = Shown(self.connection.map(crate::rpc::ConnectionId));
        let client = Shown(self.keys.address);
        let origin = self.keys.origin.as_deref().unwrap_or("");
        // The first of a run says why; a flood of the same refusals stays at debug.
        let level = if rejections == 1 { log::Level::Info } else { log::Level::Debug };
        log::log!(
            target: LOG_TARGET,
            level,
            "refused conn={conn} client={client} code={} reason=\"rate limit\" scope={} \
             class={class} retry_after_ms={} origin={origin:?} consecutive={rejections}",
            LimitExceeded::JSONRPC_CODE,
            scope.as_str(),
            error.retry_after_ms()
        );
        if threshold.is_some_and(|threshold| rejections == threshold.max(1)) {
            log::warn!(
                target: LOG_TARGET,
                "abuse threshold reached, closing conn={conn} client={client} code={} \
                 origin={origin:?} consecutive={rejections}",
                AbuseVerdict::CLOSE_CODE
            );
        }
        error
    }
}

/// An optional value in a log line: the value, or `-`.
struct Shown<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// `table` and the connection's key in it, when the configuration keys calls by it (`on`)
/// and the connection has such a key.
fn keyed<'a, K: std::ops::Deref<Target = str>>(
    on: bool,
    table: &'a SharedBuckets,
    key: &'a Option<K>,
) -> Option<(&'a SharedBuckets, &'a str)> {
    key.as_deref().filter(|_| on).map(|k| (table, k))
}

/// Runs `f` with the bucket of (`key`, `class`) in `table` locked, or with `None` when the
/// call is not keyed by that table.
fn with_shared<R>(
    table: Option<(&SharedBuckets, &str)>,
    class: MethodClass,
    now: Instant,
    f: impl FnOnce(Option<&mut TieredBucket>) -> R,
) -> R {
    match table {
        Some((table, key)) => table.with_bucket(key, class, now, |bucket| f(Some(bucket))),
        None => f(None),
    }
}

/// Takes from every bucket given, or from none: the longest wait when one has no token.
fn take_all(
    buckets: [Option<(Scope, &mut TieredBucket)>; 4],
    now: Instant,
) -> Result<(), (Scope, Duration)> {
    let longest = buckets
        .iter()
        .flatten()
        .filter_map(|(scope, bucket)| bucket.retry_after(now).map(|wait| (*scope, wait)))
        .max_by_key(|&(_, wait)| wait);
    if let Some(longest) = longest {
        return Err(longest);
    }
    for (_, bucket) in buckets.into_iter().flatten() {
        let taken = bucket.try_take(now);
        debug_assert!(taken.is_ok(), "peeked at the same `now` under the same locks");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{MethodClasses, Rate};

    use crate::test_origin as origin;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sensitive: 2 per second. Default: 3 per second. Keyed per connection, principal and
    /// origin.
    fn config() -> LimitConfig {
        let classes = MethodClasses::eth_wallet()
            .with_tiers(MethodClass::Sensitive, &[Rate::per_second(2)])
            .with_tiers(MethodClass::Default, &[Rate::per_second(3)]);
        LimitConfig { classes, ..LimitConfig::wallet() }
    }

    fn pair(config: LimitConfig) -> (Arc<LimitConfig>, SharedLimits) {
        let config = Arc::new(config);
        let shared = SharedLimits::new(config.clone());
        (config, shared)
    }

    const SITE: &str = "https://app.example";

    /// A connection from `origin` (if any), anonymous, address unknown.
    fn from(config: &Arc<LimitConfig>, origin: Option<&str>) -> ConnectionLimiter {
        let mut conn = ConnectionLimiter::new(config.clone());
        conn.set_origin(origin.map(Arc::from));
        conn
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn calls_are_classified_and_limited_per_class() {
        let t0 = origin();
        let (config, shared) = pair(config());
        let mut conn = from(&config, Some(SITE));
        assert_eq!(conn.check_call(&shared, "eth_sign", t0), Ok(MethodClass::Sensitive));
        assert_eq!(conn.check_call(&shared, "personal_sign", t0), Ok(MethodClass::Sensitive));
        let err = conn.check_call(&shared, "eth_sendTransaction", t0).unwrap_err();
        assert_eq!(err.class, Some(MethodClass::Sensitive));
        assert_eq!(err.retry_after, ms(500));
        assert_eq!(err.retry_after_ms(), 500);
        // Other classes still pass.
        assert_eq!(conn.check_call(&shared, "eth_call", t0), Ok(MethodClass::ReadOnly));
        assert_eq!(conn.check_call(&shared, "foo", t0), Ok(MethodClass::Default));
        assert_eq!(conn.check_call(&shared, "eth_sign", t0 + ms(500)), Ok(MethodClass::Sensitive));
    }

    #[test]
    fn one_origin_exhausting_its_tokens_leaves_others_alone() {
        let t0 = origin();
        let (config, shared) = pair(config());
        let evil_site = Some("https://evil.example");
        let mut evil = from(&config, evil_site);
        let mut evil_again = from(&config, evil_site);
        let mut good = from(&config, Some(SITE));
        for _ in 0..2 {
            evil.check_call(&shared, "eth_sign", t0).unwrap();
        }
        // A second connection from the same origin shares the origin's budget.
        let err = evil_again.check_call(&shared, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(500)));
        for _ in 0..2 {
            good.check_call(&shared, "eth_sign", t0).unwrap();
        }
    }

    #[test]
    fn by_default_connections_of_one_origin_are_isolated() {
        let t0 = origin();
        let limits = LimitConfig { classes: config().classes, ..LimitConfig::default() };
        let (config, shared) = pair(limits);
        let mut a = from(&config, Some(SITE));
        let mut b = from(&config, Some(SITE));
        a.set_address(ip("198.51.100.7"));
        b.set_address(ip("198.51.100.7"));
        for _ in 0..3 {
            a.check_call(&shared, "foo", t0).unwrap();
        }
        let err = a.check_call(&shared, "foo", t0).unwrap_err();
        assert_eq!(
            (err.scope, err.retry_after),
            (Scope::Connection, Duration::from_nanos(333_333_334))
        );
        for _ in 0..3 {
            b.check_call(&shared, "foo", t0).unwrap();
        }
        assert!(shared.origin().is_empty() && shared.address().is_empty());
        assert!(shared.principal().is_empty(), "anonymous connections have no principal key");
    }

    #[test]
    fn one_principal_shares_its_budget_across_connections() {
        let t0 = origin();
        let limits = LimitConfig { classes: config().classes, ..LimitConfig::default() };
        let (config, shared) = pair(limits);
        let mut a = from(&config, None);
        let mut b = from(&config, Some(SITE));
        let mut other = from(&config, None);
        a.set_principal(Some("0xabc"));
        b.set_principal(Some("0xabc"));
        other.set_principal(Some("0xdef"));
        a.check_call(&shared, "eth_sign", t0).unwrap();
        b.check_call(&shared, "eth_sign", t0).unwrap();
        // Each connection has a token left; the principal has none.
        let err = a.check_call(&shared, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Principal, ms(500)));
        other.check_call(&shared, "eth_sign", t0).unwrap();
        // Logging out (anonymous again) leaves only the connection's own bucket.
        a.set_principal(None);
        a.check_call(&shared, "eth_sign", t0).unwrap();
        assert_eq!(shared.principal().len(), 2);
        // A very long subject is keyed by its digest: its own bucket, of bounded size.
        let long = "x".repeat(SharedBuckets::MAX_KEY_LEN + 1);
        let mut c = from(&config, None);
        c.set_principal(Some(&long));
        c.check_call(&shared, "eth_sign", t0).unwrap();
        assert_eq!(shared.principal().len(), 3);
        let mut d = from(&config, None);
        d.set_principal(Some(&format!("{long}y")));
        d.check_call(&shared, "eth_sign", t0).unwrap();
        assert_eq!(shared.principal().len(), 4);
    }

    #[test]
    fn one_address_shares_its_budget_when_keyed_by_address() {
        let t0 = origin();
        let limits = LimitConfig { per_address: true, per_origin: false, ..config() };
        let (config, shared) = pair(limits);
        let mut a = from(&config, Some(SITE));
        let mut b = from(&config, Some("https://other.example"));
        let mut elsewhere = from(&config, Some(SITE));
        let mut unknown = from(&config, Some(SITE));
        a.set_address(ip("198.51.100.7"));
        // The same IPv4 client seen through an IPv6 socket.
        b.set_address(ip("::ffff:198.51.100.7"));
        elsewhere.set_address(ip("2001:db8::1"));
        a.check_call(&shared, "eth_sign", t0).unwrap();
        b.check_call(&shared, "eth_sign", t0).unwrap();
        let err = a.check_call(&shared, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Address, ms(500)));
        elsewhere.check_call(&shared, "eth_sign", t0).unwrap();
        // Another address of the same IPv6 /64 is the same client.
        let mut neighbour = from(&config, None);
        neighbour.set_address(ip("2001:db8::ffff"));
        neighbour.check_call(&shared, "eth_sign", t0).unwrap();
        let err = neighbour.check_call(&shared, "eth_sign", t0).unwrap_err();
        assert_eq!(err.scope, Scope::Address);
        // Without a known address only the connection limits.
        for _ in 0..2 {
            unknown.check_call(&shared, "eth_sign", t0).unwrap();
        }
        assert_eq!(shared.address().len(), 2);
        assert!(shared.origin().is_empty());
    }

    #[test]
    fn shared_buckets_and_connection_take_together_or_not_at_all() {
        let t0 = origin();
        let (config, shared) = pair(config());
        let mut without_origin = (*config).clone();
        without_origin.per_origin = false;
        // `a` spends its own budget while its origin half is switched off.
        let mut a = from(&Arc::new(without_origin), Some(SITE));
        for _ in 0..2 {
            a.check_call(&shared, "eth_sign", t0).unwrap();
        }
        let mut a = ConnectionLimiter { config: config.clone(), ..a };
        for _ in 0..5 {
            let err = a.check_call(&shared, "eth_sign", t0).unwrap_err();
            assert_eq!((err.scope, err.retry_after), (Scope::Connection, ms(500)));
        }
        // The origin was not charged for those rejections: it still has both tokens.
        let mut b = from(&config, Some(SITE));
        for _ in 0..2 {
            b.check_call(&shared, "eth_sign", t0).unwrap();
        }
        // Now the origin is empty: `c` is refused and its own bucket is not charged.
        let mut c = from(&config, Some(SITE));
        for _ in 0..5 {
            let err = c.check_call(&shared, "eth_sign", t0).unwrap_err();
            assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(500)));
        }
        c.check_class(MethodClass::Sensitive, t0).unwrap();
        c.check_class(MethodClass::Sensitive, t0).unwrap();
        assert!(c.check_class(MethodClass::Sensitive, t0).is_err());
        // A principal refused by its origin is not charged either.
        let mut d = from(&config, Some(SITE));
        d.set_principal(Some("0xabc"));
        assert_eq!(d.check_call(&shared, "eth_sign", t0).unwrap_err().scope, Scope::Origin);
        let mut e = from(&config, None);
        e.set_principal(Some("0xabc"));
        for _ in 0..2 {
            e.check_call(&shared, "eth_sign", t0).unwrap();
        }
    }

    #[test]
    fn when_several_run_out_the_longest_wait_is_reported() {
        let t0 = origin();
        // Connections: 2 sensitive calls per second.
        let config = Arc::new(config());
        let shared = |rate| {
            let mut shared = (*config).clone();
            shared.classes = shared.classes.with_tiers(MethodClass::Sensitive, &[rate]);
            SharedLimits::new(Arc::new(shared))
        };
        // Origin 4/s, emptied by two connections: it waits 250 ms, each connection 500 ms.
        let fast = shared(Rate::per_second(4));
        let mut a = from(&config, Some(SITE));
        let mut b = from(&config, Some(SITE));
        for _ in 0..2 {
            a.check_call(&fast, "eth_sign", t0).unwrap();
            b.check_call(&fast, "eth_sign", t0).unwrap();
        }
        let err = a.check_call(&fast, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Connection, ms(500)));
        // Origin 2 per 4 s: after two calls it waits 2 s, the connection 500 ms.
        let slow = shared(Rate::new(2, Duration::from_secs(4)));
        let mut c = from(&config, Some(SITE));
        for _ in 0..2 {
            c.check_call(&slow, "eth_sign", t0).unwrap();
        }
        let err = c.check_call(&slow, "eth_sign", t0 + ms(100)).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(1900)));
    }

    #[test]
    fn per_origin_only_shares_one_budget_across_connections() {
        let t0 = origin();
        let config = LimitConfig { per_connection: false, ..config() };
        let (config, shared) = pair(config);
        let mut a = from(&config, Some(SITE));
        let mut b = from(&config, Some(SITE));
        a.check_call(&shared, "eth_sign", t0).unwrap();
        b.check_call(&shared, "eth_sign", t0).unwrap();
        let err = a.check_call(&shared, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(500)));
        // Without an Origin header nothing limits this connection.
        a.set_origin(None);
        for _ in 0..100 {
            a.check_call(&shared, "eth_sign", t0).unwrap();
        }
    }

    #[test]
    fn calls_without_origin_use_only_the_connection() {
        let t0 = origin();
        let (config, shared) = pair(config());
        let mut a = from(&config, None);
        let mut b = from(&config, None);
        for _ in 0..2 {
            a.check_call(&shared, "eth_sign", t0).unwrap();
            b.check_call(&shared, "eth_sign", t0).unwrap();
        }
        assert_eq!(a.check_call(&shared, "eth_sign", t0).unwrap_err().scope, Scope::Connection);
        assert!(shared.origin().is_empty());
    }

    #[test]
    fn message_rate_limits_every_message() {
        let t0 = origin();
        let mut config = config();
        config.message_rate = Some(Rate::per_minute(60));
        let (config, _) = pair(config);
        let mut conn = ConnectionLimiter::new(config);
        for _ in 0..60 {
            conn.check_message(t0).unwrap();
        }
        let err = conn.check_message(t0).unwrap_err();
        assert_eq!(
            err,
            LimitExceeded {
                scope: Scope::Message,
                class: None,
                retry_after: Duration::from_secs(1),
                verdict: AbuseVerdict::Tolerate,
            }
        );
        assert_eq!(conn.check_message(t0 + Duration::from_secs(1)), Ok(()));
        // Without a message rate nothing is limited.
        let mut unlimited = ConnectionLimiter::new(Arc::new(LimitConfig::default()));
        for _ in 0..1000 {
            unlimited.check_message(t0).unwrap();
        }
    }

    #[test]
    fn consecutive_rejections_close_at_the_threshold() {
        let t0 = origin();
        let mut config = config();
        config.message_rate = Some(Rate::per_second(1));
        let (config, shared) = pair(config);
        let mut conn = from(&config, Some(SITE)).with_connection(9);
        let secs = |n: u64| t0 + Duration::from_secs(n);
        conn.check_message(t0).unwrap();
        conn.check_call(&shared, "eth_sign", t0).unwrap();
        conn.check_call(&shared, "eth_sign", t0).unwrap();
        for n in 1..=98 {
            let err = conn.check_call(&shared, "eth_sign", t0).unwrap_err();
            assert_eq!(err.verdict, AbuseVerdict::Tolerate, "rejection {n}");
            // An accepted message does not reset the count.
            conn.check_message(secs(n)).unwrap();
        }
        assert_eq!(conn.consecutive_rejections(), 98);
        // Rejected messages count too.
        assert_eq!(conn.check_message(secs(98)).unwrap_err().verdict, AbuseVerdict::Tolerate);
        let err = conn.check_call(&shared, "eth_sign", t0).unwrap_err();
        assert_eq!(err.verdict, AbuseVerdict::Close);
        assert_eq!(conn.check_message(secs(98)).unwrap_err().verdict, AbuseVerdict::Close);
        assert_eq!(conn.consecutive_rejections(), 101);
        // An accepted call resets the count.
        conn.check_call(&shared, "foo", t0).unwrap();
        assert_eq!(conn.consecutive_rejections(), 0);
        assert_eq!(conn.check_message(secs(98)).unwrap_err().verdict, AbuseVerdict::Tolerate);
        // Without a threshold nothing closes.
        let mut lenient = ConnectionLimiter::new(Arc::new(LimitConfig {
            abuse_threshold: None,
            ..(*conn.config).clone()
        }));
        lenient.set_origin(Some(SITE.into()));
        lenient.consecutive_rejections = u32::MAX - 1;
        for _ in 0..3 {
            let err = lenient.check_call(&shared, "eth_sign", t0).unwrap_err();
            assert_eq!(err.verdict, AbuseVerdict::Tolerate);
        }
        assert_eq!(lenient.consecutive_rejections(), u32::MAX);
    }

    #[test]
    fn disabled_config_limits_nothing() {
        let t0 = origin();
        let (config, shared) = pair(LimitConfig::disabled());
        let mut conn = from(&config, Some(SITE));
        conn.set_principal(Some("0xabc"));
        conn.set_address(ip("198.51.100.7"));
        for _ in 0..10_000 {
            conn.check_message(t0).unwrap();
            assert_eq!(
                conn.check_call(&shared, "eth_sendTransaction", t0),
                Ok(MethodClass::Default)
            );
            conn.check_class(MethodClass::Sensitive, t0).unwrap();
        }
        assert!(shared.origin().is_empty() && shared.principal().is_empty());
        assert!(shared.address().is_empty());
    }
}
