//! Lock-free event counters, and the kinds of error they are split by.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What went wrong, for counting errors by kind.
///
/// JSON-RPC errors map from the code they answer with ([`ErrorKind::from_rpc_code`]);
/// WebSocket and HTTP failures from their close code or status ([`ErrorKind::from_close_code`],
/// [`ErrorKind::from_http_status`]). [`ErrorKind::as_str`] is the name used in snapshots and
/// as the Prometheus `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// -32700: the message is not valid JSON.
    Parse,
    /// -32600: the JSON is not a valid request object.
    InvalidRequest,
    /// -32601: no such method.
    MethodNotFound,
    /// -32602: the params do not fit the method.
    InvalidParams,
    /// -32603: the handler failed.
    Internal,
    /// -32000..=-32099 other than -32005: an error the server defines.
    Server,
    /// -32005: a rate or size limit rejected the call.
    LimitExceeded,
    /// The peer broke the WebSocket protocol (close 1002, 1003, 1007, 1009 or 1010).
    Protocol,
    /// The upgrade or HTTP request was refused with a 4xx other than 401 and 403.
    Handshake,
    /// The peer was not authenticated (401) or not allowed (403), e.g. by the Origin policy.
    Auth,
    /// Any other JSON-RPC code: chosen by a handler (EIP-1193's 4001, say), or reserved by the
    /// spec without a meaning.
    Application,
}

impl ErrorKind {
    /// How many kinds there are.
    pub const COUNT: usize = 11;

    /// Every kind, in the order of their counters (and of snapshots and exposition).
    pub const ALL: [ErrorKind; Self::COUNT] = [
        Self::Parse,
        Self::InvalidRequest,
        Self::MethodNotFound,
        Self::InvalidParams,
        Self::Internal,
        Self::Server,
        Self::LimitExceeded,
        Self::Protocol,
        Self::Handshake,
        Self::Auth,
        Self::Application,
    ];

    /// The kind of a JSON-RPC error code; every code has one.
    pub const fn from_rpc_code(code: i64) -> Self {
        match code {
            -32700 => Self::Parse,
            -32600 => Self::InvalidRequest,
            -32601 => Self::MethodNotFound,
            -32602 => Self::InvalidParams,
            -32603 => Self::Internal,
            -32005 => Self::LimitExceeded,
            -32099..=-32000 => Self::Server,
            _ => Self::Application,
        }
    }

    /// The kind of a WebSocket close code that blames the peer's protocol, if it does.
    ///
    /// Normal closes (1000, 1001), policy closes (1008) and server failures (1011) are not
    /// protocol errors and give `None`.
    pub const fn from_close_code(code: u16) -> Option<Self> {
        match code {
            1002 | 1003 | 1007 | 1009 | 1010 => Some(Self::Protocol),
            _ => None,
        }
    }

    /// The kind of an HTTP status refusing an upgrade or request, if it is a client error.
    pub const fn from_http_status(status: u16) -> Option<Self> {
        match status {
            401 | 403 => Some(Self::Auth),
            400..=499 | 501 => Some(Self::Handshake),
            _ => None,
        }
    }

    /// The kind's snake_case name, e.g. `"invalid_request"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::InvalidRequest => "invalid_request",
            Self::MethodNotFound => "method_not_found",
            Self::InvalidParams => "invalid_params",
            Self::Internal => "internal",
            Self::Server => "server",
            Self::LimitExceeded => "limit_exceeded",
            Self::Protocol => "protocol",
            Self::Handshake => "handshake",
            Self::Auth => "auth",
            Self::Application => "application",
        }
    }

    /// Position of the kind's counter; `ALL[kind.index()] == kind`.
    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The registry's counters and gauges; each update is one atomic read-modify-write.
///
/// Gauges pair with a total: the total is bumped before the gauge with `Release`, and read
/// after it with `Acquire`, so a reader never sees more active than total.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) connections_total: AtomicU64,
    pub(super) connections_active: AtomicU64,
    pub(super) http_requests: AtomicU64,
    pub(super) messages_in: AtomicU64,
    pub(super) messages_out: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) subscriptions_total: AtomicU64,
    pub(super) subscriptions_active: AtomicU64,
    pub(super) lagged_drops: AtomicU64,
    errors: [AtomicU64; ErrorKind::COUNT],
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        // Relaxed: each counter is a statistic on its own, ordered with nothing else.
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Bumps `total`, then `active` (see the type's doc for the ordering).
    pub(super) fn open(total: &AtomicU64, active: &AtomicU64) {
        total.fetch_add(1, Ordering::Relaxed);
        active.fetch_add(1, Ordering::Release);
    }

    /// Lowers `active` by `n`, stopping at zero: a surplus close must not wrap to 2^64.
    pub(super) fn close(active: &AtomicU64, n: u64) {
        let _ = active
            .fetch_update(Ordering::Release, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    /// Reads `(active, total)` so that `active <= total` (see the type's doc).
    pub(super) fn read_open(total: &AtomicU64, active: &AtomicU64) -> (u64, u64) {
        let active = active.load(Ordering::Acquire);
        (active, total.load(Ordering::Relaxed))
    }

    pub(super) fn error(&self, kind: ErrorKind) -> &AtomicU64 {
        &self.errors[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_codes_map_to_their_kind() {
        assert_eq!(ErrorKind::from_rpc_code(-32700), ErrorKind::Parse);
        assert_eq!(ErrorKind::from_rpc_code(-32600), ErrorKind::InvalidRequest);
        assert_eq!(ErrorKind::from_rpc_code(-32601), ErrorKind::MethodNotFound);
        assert_eq!(ErrorKind::from_rpc_code(-32602), ErrorKind::InvalidParams);
        assert_eq!(ErrorKind::from_rpc_code(-32603), ErrorKind::Internal);
        assert_eq!(ErrorKind::from_rpc_code(-32005), ErrorKind::LimitExceeded);
        assert_eq!(ErrorKind::from_rpc_code(-32000), ErrorKind::Server);
        assert_eq!(ErrorKind::from_rpc_code(-32004), ErrorKind::Server);
        assert_eq!(ErrorKind::from_rpc_code(-32006), ErrorKind::Server);
        assert_eq!(ErrorKind::from_rpc_code(-32099), ErrorKind::Server);
        assert_eq!(ErrorKind::from_rpc_code(-32100), ErrorKind::Application);
        assert_eq!(ErrorKind::from_rpc_code(-31999), ErrorKind::Application);
        assert_eq!(ErrorKind::from_rpc_code(-32604), ErrorKind::Application);
        assert_eq!(ErrorKind::from_rpc_code(4001), ErrorKind::Application);
        assert_eq!(ErrorKind::from_rpc_code(i64::MIN), ErrorKind::Application);
    }

    #[test]
    fn close_codes_and_statuses_map_to_their_kind() {
        for code in [1002, 1003, 1007, 1009, 1010] {
            assert_eq!(ErrorKind::from_close_code(code), Some(ErrorKind::Protocol), "{code}");
        }
        for code in [1000, 1001, 1008, 1011, 3000, 4000] {
            assert_eq!(ErrorKind::from_close_code(code), None, "{code}");
        }
        assert_eq!(ErrorKind::from_http_status(401), Some(ErrorKind::Auth));
        assert_eq!(ErrorKind::from_http_status(403), Some(ErrorKind::Auth));
        for status in [400, 404, 426, 431, 499] {
            assert_eq!(ErrorKind::from_http_status(status), Some(ErrorKind::Handshake));
        }
        for status in [101, 200, 399, 500, 503] {
            assert_eq!(ErrorKind::from_http_status(status), None, "{status}");
        }
    }

    #[test]
    fn all_lists_every_kind_at_its_index_with_a_unique_name() {
        for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
            assert_eq!(kind.to_string(), kind.as_str());
            assert!(kind.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::COUNT);
    }

    #[test]
    fn close_saturates_at_zero_and_reads_keep_active_below_total() {
        let c = Counters::default();
        Counters::open(&c.connections_total, &c.connections_active);
        Counters::open(&c.connections_total, &c.connections_active);
        Counters::close(&c.connections_active, 1);
        assert_eq!(Counters::read_open(&c.connections_total, &c.connections_active), (1, 2));
        Counters::close(&c.connections_active, 5);
        assert_eq!(Counters::read_open(&c.connections_total, &c.connections_active), (0, 2));
    }
}
