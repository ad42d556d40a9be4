//! One connection's buckets, the combined per-call check and abuse tracking.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::LOG_TARGET;
use super::bucket::{TieredBucket, TokenBucket};
use super::classes::MethodClass;
use super::config::LimitConfig;
use super::error::{AbuseVerdict, LimitExceeded, Scope};
use super::origin::OriginLimiter;

/// The rate limits of one connection, owned by it (not shared).
///
/// Create it with the server's `Arc<LimitConfig>` when the connection opens. Call
/// [`check_message`](Self::check_message) once per incoming message, then
/// [`check_call`](Self::check_call) once per JSON-RPC call in it (each entry of a batch). A
/// rejection is answered with -32005; when its [`verdict`](LimitExceeded::verdict) is
/// [`AbuseVerdict::Close`], close with 1008.
///
/// Rejections in a row are counted across messages and calls; only an accepted call resets the
/// count (an accepted message does not, or a peer could alternate). Buckets are created on
/// first use, so an idle connection holds only a few words.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Instant;
/// use wsrpc_core::limit::{AbuseVerdict, ConnectionLimiter, LimitConfig, OriginLimiter};
///
/// let config = Arc::new(LimitConfig::default());
/// let origins = OriginLimiter::new(config.clone()); // one per server
/// let mut conn = ConnectionLimiter::new(config); // one per connection
/// # #[allow(clippy::disallowed_methods)]
/// let now = Instant::now(); // from the caller's clock
/// match conn.check_message(now).and_then(|()| {
///     conn.check_call(&origins, Some("http://localhost:3000"), "eth_call", now)
/// }) {
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
    /// Indexed by [`MethodClass::index`]; `None` until the class is first called.
    calls: [Option<TieredBucket>; 4],
    messages: Option<TokenBucket>,
    consecutive_rejections: u32,
}

impl ConnectionLimiter {
    /// A connection with no bucket used yet.
    pub fn new(config: Arc<LimitConfig>) -> Self {
        Self { config, calls: Default::default(), messages: None, consecutive_rejections: 0 }
    }

    /// Takes a token from the message rate, if [`LimitConfig::message_rate`] is set.
    pub fn check_message(&mut self, now: Instant) -> Result<(), LimitExceeded> {
        let Some(rate) = self.config.message_rate else {
            return Ok(());
        };
        let bucket = self.messages.get_or_insert_with(|| TokenBucket::new(rate, now));
        match bucket.try_take(now) {
            Ok(()) => Ok(()),
            Err(wait) => Err(self.reject(Scope::Message, None, wait, None)),
        }
    }

    /// Classifies `method` and takes a token for its class from the origin's shared bucket and
    /// from this connection's bucket, from both or from neither.
    ///
    /// `origin` is the request's Origin header. Without one (non-browser clients) only the
    /// connection's bucket is used: a single bucket keyed by the empty origin would let one
    /// script starve every other local client. [`LimitConfig::per_origin`] and
    /// [`LimitConfig::per_connection`] switch either half off. When both run out, the error
    /// names the one with the longer wait.
    pub fn check_call(
        &mut self,
        origins: &OriginLimiter,
        origin: Option<&str>,
        method: &str,
        now: Instant,
    ) -> Result<MethodClass, LimitExceeded> {
        let config = &*self.config;
        let class = config.classes.class_of(method);
        let own = config.per_connection.then(|| {
            self.calls[class.index()]
                .get_or_insert_with(|| TieredBucket::new(config.classes.tiers(class), now))
        });
        let outcome = match origin.filter(|_| config.per_origin) {
            Some(key) => origins.with_bucket(key, class, now, |shared| take_both(shared, own, now)),
            None => own.map_or(Ok(()), |own| own.try_take(now).map_err(|w| (Scope::Connection, w))),
        };
        match outcome {
            Ok(()) => {
                self.consecutive_rejections = 0;
                Ok(class)
            }
            Err((scope, wait)) => Err(self.reject(scope, Some(class), wait, origin)),
        }
    }

    /// Takes a token for `class` from this connection's bucket only, for transports without an
    /// Origin (stdin, IPC) or when the caller classified the call itself.
    pub fn check_class(&mut self, class: MethodClass, now: Instant) -> Result<(), LimitExceeded> {
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
            Err(wait) => Err(self.reject(Scope::Connection, Some(class), wait, None)),
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
        origin: Option<&str>,
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
        log::debug!(
            target: LOG_TARGET,
            "rate limited scope={} origin={origin:?} class={class} retry_after_ms={} \
             consecutive={rejections}",
            scope.as_str(),
            error.retry_after_ms()
        );
        if threshold.is_some_and(|threshold| rejections == threshold.max(1)) {
            log::warn!(
                target: LOG_TARGET,
                "abuse threshold reached, closing origin={origin:?} consecutive={rejections}"
            );
        }
        error
    }
}

/// Takes from the origin's bucket and the connection's (if any) together: both or neither.
fn take_both(
    shared: &mut TieredBucket,
    own: Option<&mut TieredBucket>,
    now: Instant,
) -> Result<(), (Scope, Duration)> {
    let shared_wait = shared.retry_after(now).map(|wait| (Scope::Origin, wait));
    let own_wait = own.as_deref().and_then(|own| own.retry_after(now));
    let own_wait = own_wait.map(|wait| (Scope::Connection, wait));
    if let Some(longest) = shared_wait.into_iter().chain(own_wait).max_by_key(|&(_, wait)| wait) {
        return Err(longest);
    }
    let taken = shared.try_take(now);
    debug_assert!(taken.is_ok(), "peeked at the same `now` under the lock");
    if let Some(own) = own {
        let taken = own.try_take(now);
        debug_assert!(taken.is_ok(), "peeked at the same `now`");
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

    /// Sensitive: 2 per second. Default: 3 per second.
    fn config() -> LimitConfig {
        let classes = MethodClasses::eth_wallet()
            .with_tiers(MethodClass::Sensitive, &[Rate::per_second(2)])
            .with_tiers(MethodClass::Default, &[Rate::per_second(3)]);
        LimitConfig { classes, ..LimitConfig::default() }
    }

    fn pair(config: LimitConfig) -> (Arc<LimitConfig>, OriginLimiter) {
        let config = Arc::new(config);
        let origins = OriginLimiter::new(config.clone());
        (config, origins)
    }

    const SITE: Option<&str> = Some("https://app.example");

    #[test]
    fn calls_are_classified_and_limited_per_class() {
        let t0 = origin();
        let (config, origins) = pair(config());
        let mut conn = ConnectionLimiter::new(config);
        assert_eq!(conn.check_call(&origins, SITE, "eth_sign", t0), Ok(MethodClass::Sensitive));
        assert_eq!(
            conn.check_call(&origins, SITE, "personal_sign", t0),
            Ok(MethodClass::Sensitive)
        );
        let err = conn.check_call(&origins, SITE, "eth_sendTransaction", t0).unwrap_err();
        assert_eq!(err.class, Some(MethodClass::Sensitive));
        assert_eq!(err.retry_after, ms(500));
        assert_eq!(err.retry_after_ms(), 500);
        // Other classes still pass.
        assert_eq!(conn.check_call(&origins, SITE, "eth_call", t0), Ok(MethodClass::ReadOnly));
        assert_eq!(conn.check_call(&origins, SITE, "foo", t0), Ok(MethodClass::Default));
        assert_eq!(
            conn.check_call(&origins, SITE, "eth_sign", t0 + ms(500)),
            Ok(MethodClass::Sensitive)
        );
    }

    #[test]
    fn one_origin_exhausting_its_tokens_leaves_others_alone() {
        let t0 = origin();
        let (config, origins) = pair(config());
        let mut evil = ConnectionLimiter::new(config.clone());
        let mut evil_again = ConnectionLimiter::new(config.clone());
        let mut good = ConnectionLimiter::new(config);
        let evil_site = Some("https://evil.example");
        for _ in 0..2 {
            evil.check_call(&origins, evil_site, "eth_sign", t0).unwrap();
        }
        // A second connection from the same origin shares the origin's budget.
        let err = evil_again.check_call(&origins, evil_site, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(500)));
        for _ in 0..2 {
            good.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        }
    }

    #[test]
    fn connections_are_isolated_from_each_other() {
        let t0 = origin();
        let mut config = config();
        config.per_origin = false;
        let (config, origins) = pair(config);
        let mut a = ConnectionLimiter::new(config.clone());
        let mut b = ConnectionLimiter::new(config);
        for _ in 0..3 {
            a.check_call(&origins, SITE, "foo", t0).unwrap();
        }
        let err = a.check_call(&origins, SITE, "foo", t0).unwrap_err();
        assert_eq!(
            (err.scope, err.retry_after),
            (Scope::Connection, Duration::from_nanos(333_333_334))
        );
        for _ in 0..3 {
            b.check_call(&origins, SITE, "foo", t0).unwrap();
        }
        assert!(origins.is_empty());
    }

    #[test]
    fn origin_and_connection_take_together_or_not_at_all() {
        let t0 = origin();
        let (config, origins) = pair(config());
        let mut without_origin = (*config).clone();
        without_origin.per_origin = false;
        // `a` spends its own budget while its origin half is switched off.
        let mut a = ConnectionLimiter::new(Arc::new(without_origin));
        for _ in 0..2 {
            a.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        }
        let mut a = ConnectionLimiter { config: config.clone(), ..a };
        for _ in 0..5 {
            let err = a.check_call(&origins, SITE, "eth_sign", t0).unwrap_err();
            assert_eq!((err.scope, err.retry_after), (Scope::Connection, ms(500)));
        }
        // The origin was not charged for those rejections: it still has both tokens.
        let mut b = ConnectionLimiter::new(config.clone());
        for _ in 0..2 {
            b.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        }
        // Now the origin is empty: `c` is refused and its own bucket is not charged.
        let mut c = ConnectionLimiter::new(config);
        for _ in 0..5 {
            let err = c.check_call(&origins, SITE, "eth_sign", t0).unwrap_err();
            assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(500)));
        }
        c.check_class(MethodClass::Sensitive, t0).unwrap();
        c.check_class(MethodClass::Sensitive, t0).unwrap();
        assert!(c.check_class(MethodClass::Sensitive, t0).is_err());
    }

    #[test]
    fn when_both_run_out_the_longer_wait_is_reported() {
        let t0 = origin();
        // Connections: 2 sensitive calls per second.
        let config = Arc::new(config());
        let shared = |rate| {
            let mut shared = (*config).clone();
            shared.classes = shared.classes.with_tiers(MethodClass::Sensitive, &[rate]);
            OriginLimiter::new(Arc::new(shared))
        };
        // Origin 4/s, emptied by two connections: it waits 250 ms, each connection 500 ms.
        let fast = shared(Rate::per_second(4));
        let mut a = ConnectionLimiter::new(config.clone());
        let mut b = ConnectionLimiter::new(config.clone());
        for _ in 0..2 {
            a.check_call(&fast, SITE, "eth_sign", t0).unwrap();
            b.check_call(&fast, SITE, "eth_sign", t0).unwrap();
        }
        let err = a.check_call(&fast, SITE, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Connection, ms(500)));
        // Origin 2 per 4 s: after two calls it waits 2 s, the connection 500 ms.
        let slow = shared(Rate::new(2, Duration::from_secs(4)));
        let mut c = ConnectionLimiter::new(config);
        for _ in 0..2 {
            c.check_call(&slow, SITE, "eth_sign", t0).unwrap();
        }
        let err = c.check_call(&slow, SITE, "eth_sign", t0 + ms(100)).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(1900)));
    }

    #[test]
    fn per_origin_only_shares_one_budget_across_connections() {
        let t0 = origin();
        let config = LimitConfig { per_connection: false, ..config() };
        let (config, origins) = pair(config);
        let mut a = ConnectionLimiter::new(config.clone());
        let mut b = ConnectionLimiter::new(config);
        a.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        b.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        let err = a.check_call(&origins, SITE, "eth_sign", t0).unwrap_err();
        assert_eq!((err.scope, err.retry_after), (Scope::Origin, ms(500)));
        // Without an Origin header nothing limits this connection.
        for _ in 0..100 {
            a.check_call(&origins, None, "eth_sign", t0).unwrap();
        }
    }

    #[test]
    fn calls_without_origin_use_only_the_connection() {
        let t0 = origin();
        let (config, origins) = pair(config());
        let mut a = ConnectionLimiter::new(config.clone());
        let mut b = ConnectionLimiter::new(config);
        for _ in 0..2 {
            a.check_call(&origins, None, "eth_sign", t0).unwrap();
            b.check_call(&origins, None, "eth_sign", t0).unwrap();
        }
        assert_eq!(
            a.check_call(&origins, None, "eth_sign", t0).unwrap_err().scope,
            Scope::Connection
        );
        assert!(origins.is_empty());
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
        let (config, origins) = pair(config);
        let mut conn = ConnectionLimiter::new(config);
        let secs = |n: u64| t0 + Duration::from_secs(n);
        conn.check_message(t0).unwrap();
        conn.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        conn.check_call(&origins, SITE, "eth_sign", t0).unwrap();
        for n in 1..=98 {
            let err = conn.check_call(&origins, SITE, "eth_sign", t0).unwrap_err();
            assert_eq!(err.verdict, AbuseVerdict::Tolerate, "rejection {n}");
            // An accepted message does not reset the count.
            conn.check_message(secs(n)).unwrap();
        }
        assert_eq!(conn.consecutive_rejections(), 98);
        // Rejected messages count too.
        assert_eq!(conn.check_message(secs(98)).unwrap_err().verdict, AbuseVerdict::Tolerate);
        let err = conn.check_call(&origins, SITE, "eth_sign", t0).unwrap_err();
        assert_eq!(err.verdict, AbuseVerdict::Close);
        assert_eq!(conn.check_message(secs(98)).unwrap_err().verdict, AbuseVerdict::Close);
        assert_eq!(conn.consecutive_rejections(), 101);
        // An accepted call resets the count.
        conn.check_call(&origins, SITE, "foo", t0).unwrap();
        assert_eq!(conn.consecutive_rejections(), 0);
        assert_eq!(conn.check_message(secs(98)).unwrap_err().verdict, AbuseVerdict::Tolerate);
        // Without a threshold nothing closes.
        let mut lenient = ConnectionLimiter::new(Arc::new(LimitConfig {
            abuse_threshold: None,
            ..(*conn.config).clone()
        }));
        lenient.consecutive_rejections = u32::MAX - 1;
        for _ in 0..3 {
            let err = lenient.check_call(&origins, SITE, "eth_sign", t0).unwrap_err();
            assert_eq!(err.verdict, AbuseVerdict::Tolerate);
        }
        assert_eq!(lenient.consecutive_rejections(), u32::MAX);
    }

    #[test]
    fn disabled_config_limits_nothing() {
        let t0 = origin();
        let (config, origins) = pair(LimitConfig::disabled());
        let mut conn = ConnectionLimiter::new(config);
        for _ in 0..10_000 {
            conn.check_message(t0).unwrap();
            assert_eq!(
                conn.check_call(&origins, SITE, "eth_sendTransaction", t0),
                Ok(MethodClass::Default)
            );
            conn.check_class(MethodClass::Sensitive, t0).unwrap();
        }
        assert!(origins.is_empty());
    }
}
