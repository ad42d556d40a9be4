//! The outcome of a rejected check: what to answer and whether to close.

use std::fmt;
use std::time::Duration;

use super::classes::MethodClass;

/// Which budget ran out: the key of the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// The bucket shared by every connection authenticated as the same principal.
    Principal,
    /// The bucket shared by every connection with the same Origin header.
    Origin,
    /// The bucket shared by every connection from the same client address.
    Address,
    /// The connection's own bucket for the method's class.
    Connection,
    /// The connection's rate on all incoming messages.
    Message,
}

impl Scope {
    /// A stable lowercase name for logs, metric labels and error data.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Principal => "principal",
            Scope::Origin => "origin",
            Scope::Address => "address",
            Scope::Connection => "connection",
            Scope::Message => "message",
        }
    }
}

/// What the connection should do after a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbuseVerdict {
    /// Answer the rejected call and carry on.
    Tolerate,
    /// The peer reached [`LimitConfig::abuse_threshold`](super::LimitConfig::abuse_threshold)
    /// rejections in a row: close with [`CLOSE_CODE`](Self::CLOSE_CODE) (policy violation).
    Close,
}

impl AbuseVerdict {
    /// WebSocket close code for [`Close`](Self::Close): 1008, policy violation.
    pub const CLOSE_CODE: u16 = 1008;
}

/// A call or message was rejected by a rate limit.
///
/// Answer a call with JSON-RPC error [`JSONRPC_CODE`](Self::JSONRPC_CODE) and
/// `{"retry_after_ms": …}` ([`retry_after_ms`](Self::retry_after_ms)) in `data`; then, if
/// `verdict` is [`AbuseVerdict::Close`], close the connection with 1008.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitExceeded {
    /// Which budget ran out (the one with the longest wait when several did).
    pub scope: Scope,
    /// Class of the rejected call; `None` for [`Scope::Message`].
    pub class: Option<MethodClass>,
    /// Time until the call would pass, from the `now` of the check.
    pub retry_after: Duration,
    /// Whether the peer has now been rejected too often in a row.
    pub verdict: AbuseVerdict,
}

impl LimitExceeded {
    /// JSON-RPC error code for "limit exceeded".
    pub const JSONRPC_CODE: i32 = -32005;

    /// [`retry_after`](Self::retry_after) in whole milliseconds, rounded up and at least 1, so
    /// a client that waits that long finds a token.
    pub fn retry_after_ms(&self) -> u64 {
        let ms = self.retry_after.as_nanos().div_ceil(1_000_000).max(1);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limit exceeded ({}", self.scope.as_str())?;
        if let Some(class) = self.class {
            write!(f, ", {class}")?;
        }
        write!(f, "), retry after {} ms", self.retry_after_ms())
    }
}

impl std::error::Error for LimitExceeded {}

#[cfg(test)]
mod tests {
    use super::*;

    fn exceeded(retry_after: Duration) -> LimitExceeded {
        LimitExceeded {
            scope: Scope::Origin,
            class: Some(MethodClass::Sensitive),
            retry_after,
            verdict: AbuseVerdict::Tolerate,
        }
    }

    #[test]
    fn retry_after_ms_rounds_up_and_is_at_least_one() {
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_nanos(1_000_001), 2),
            (Duration::from_millis(1500), 1500),
            (Duration::from_secs(3600), 3_600_000),
            (Duration::MAX, u64::MAX),
        ];
        for (wait, ms) in cases {
            assert_eq!(exceeded(wait).retry_after_ms(), ms, "{wait:?}");
        }
    }

    #[test]
    fn display_names_scope_class_and_wait() {
        assert_eq!(
            exceeded(Duration::from_micros(2500)).to_string(),
            "rate limit exceeded (origin, sensitive), retry after 3 ms"
        );
        let message =
            LimitExceeded { scope: Scope::Message, class: None, ..exceeded(Duration::ZERO) };
        assert_eq!(message.to_string(), "rate limit exceeded (message), retry after 1 ms");
    }
}
