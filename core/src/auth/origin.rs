//! Which browser origins may open a WebSocket or send an HTTP request.
//!
//! Browsers let any web page open `ws://127.0.0.1:PORT`, and they always send the page's
//! `Origin` with the upgrade request. Checking it is what stops a random web site from driving a
//! local wallet bridge. Clients that are not browsers send no `Origin` and can forge any, so the
//! check does not authenticate anyone; it only closes the browser hole.
//!
//! Origins are parsed strictly as `scheme://host[:port]` (RFC 6454 serialization): no path, no
//! user info, no fragment, a port of digits only, an IPv6 host in brackets. Scheme and host are
//! compared case-insensitively; a port equal to the scheme's default (80 for http and ws, 443
//! for https and wss) is the same as no port. Anything that does not parse is refused, which
//! covers look-alikes such as `http://localhost.evil.com` or `http://localhost:80@evil.com`.

use std::fmt;

use super::error::AuthError;

/// Which `Origin` header values are allowed.
///
/// Call [`check`](Self::check) with the request's `Origin` header at the WebSocket handshake and
/// on plain HTTP requests; refuse with [`AuthError::status`] (403) on error. For CORS answers,
/// [`allowed_origin_header`](Self::allowed_origin_header) gives the value to echo.
#[derive(Clone, Debug, Default)]
pub enum OriginPolicy {
    /// Requests without `Origin`, and `http`/`https` origins whose host is `localhost`,
    /// `127.0.0.1` or `[::1]`, on any port. The `null` origin (sandboxed frames, `file://`) is
    /// refused.
    #[default]
    Loopback,
    /// Requests without `Origin` and the listed origins (optionally loopback too).
    AllowList(OriginAllowList),
    /// Every request, whatever its `Origin`; for servers that authenticate every call.
    Any,
}

impl OriginPolicy {
    /// An allow-list policy from origins like `https://app.example.com` or
    /// `https://*.example.com`; see [`OriginAllowList::new`].
    pub fn allow_list<I, S>(origins: I) -> Result<Self, OriginPatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        OriginAllowList::new(origins).map(Self::AllowList)
    }

    /// Whether a request with this `Origin` header (`None` when absent) is allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            // Only browsers are held to the Origin check, and browsers always send one.
            return true;
        };
        match self {
            Self::Any => true,
            Self::Loopback => parse_origin(origin).is_some_and(|o| o.is_loopback()),
            Self::AllowList(list) => parse_origin(origin).is_some_and(|o| list.matches(&o)),
        }
    }

    /// `Ok` when the `Origin` header (`None` when absent) is allowed, else
    /// [`AuthError::OriginRefused`] (answer 403).
    pub fn check(&self, origin: Option<&str>) -> Result<(), AuthError> {
        if self.allows(origin) {
            return Ok(());
        }
        // Debug, not warn: any web page the user visits can trigger this.
        log::debug!(target: "wsrpc::auth", "origin refused origin={:?}", origin.unwrap_or(""));
        Err(AuthError::OriginRefused)
    }

    /// The value for `Access-Control-Allow-Origin`: the request's origin when it is present and
    /// allowed, else `None` (send no CORS header). Answers that use it should also send
    /// `Vary: Origin`.
    ///
    /// Under [`Any`](Self::Any) only well-formed origins and `null` are echoed, so a garbled
    /// header value is never copied into the response.
    pub fn allowed_origin_header<'o>(&self, origin: Option<&'o str>) -> Option<&'o str> {
        let trimmed = origin?.trim_matches([' ', '\t']);
        let echo = match self {
            Self::Any => trimmed == "null" || parse_origin(trimmed).is_some(),
            _ => self.allows(Some(trimmed)),
        };
        echo.then_some(trimmed)
    }

    /// The value for `Access-Control-Allow-Origin` on a refusal (403, 401): the request's
    /// origin when it is well-formed, so the page can read why it was refused and stop
    /// retrying (a browser hides the status of a refused WebSocket handshake). The answer
    /// carries nothing but the refusal.
    pub fn refusal_origin_header<'o>(&self, origin: Option<&'o str>) -> Option<&'o str> {
        let trimmed = origin?.trim_matches([' ', '\t']);
        parse_origin(trimmed).is_some().then_some(trimmed)
    }
}

/// The origins an [`OriginPolicy::AllowList`] allows.
///
/// Build it with [`new`](Self::new); add loopback origins with
/// [`with_loopback`](Self::with_loopback).
#[derive(Clone, Debug)]
pub struct OriginAllowList {
    patterns: Vec<OriginPattern>,
    loopback: bool,
}

impl OriginAllowList {
    /// Parses each origin: an exact `scheme://host[:port]` (any scheme, so
    /// `chrome-extension://ID` works), or `scheme://*.domain[:port]`, which allows every
    /// subdomain of `domain` at any depth but not `domain` itself.
    ///
    /// Fails on the first entry that is not such an origin (a trailing `/` included), so a
    /// typo cannot silently allow nothing.
    pub fn new<I, S>(origins: I) -> Result<Self, OriginPatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let patterns = origins
            .into_iter()
            .map(|s| {
                OriginPattern::parse(s.as_ref())
                    .ok_or_else(|| OriginPatternError { pattern: s.as_ref().to_owned() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns, loopback: false })
    }

    /// Also allows what [`OriginPolicy::Loopback`] allows.
    #[must_use]
    pub fn with_loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }

    fn matches(&self, origin: &Origin<'_>) -> bool {
        (self.loopback && origin.is_loopback()) || self.patterns.iter().any(|p| p.matches(origin))
    }
}

/// An allow-list entry that is not `scheme://host[:port]` or `scheme://*.domain[:port]`.
///
/// A local configuration error; nothing goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OriginPatternError {
    /// The entry as given.
    pub pattern: String,
}

impl fmt::Display for OriginPatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pattern = &self.pattern;
        write!(f, "invalid allowed origin {pattern:?}: expected scheme://host[:port]")?;
        f.write_str(" or scheme://*.domain[:port]")
    }
}

impl std::error::Error for OriginPatternError {}

/// A parsed origin; scheme and host keep the case they arrived in.
#[derive(Debug)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl Origin<'_> {
    fn is_loopback(&self) -> bool {
        let web =
            self.scheme.eq_ignore_ascii_case("http") || self.scheme.eq_ignore_ascii_case("https");
        // Browsers serialize IPv6 hosts in the RFC 5952 short form, so `[::1]` is the only one.
        web && ["localhost", "127.0.0.1", "[::1]"].iter().any(|h| self.host.eq_ignore_ascii_case(h))
    }
}

/// Parses `scheme://host[:port]`, surrounding spaces or tabs (header whitespace) aside.
fn parse_origin(origin: &str) -> Option<Origin<'_>> {
    let (scheme, rest) = origin.trim_matches([' ', '\t']).split_once("://")?;
    if !is_scheme(scheme) {
        return None;
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        let (host, after) = rest.split_at(end + 1);
        let inner = &host[1..end];
        let ipv6 = inner.contains(':')
            && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (ipv6.then_some(host)?, after)
    } else {
        let (host, after) = rest.find(':').map_or((rest, ""), |i| rest.split_at(i));
        (is_hostname(host).then_some(host)?, after)
    };
    let port = match port {
        "" => None,
        // Digits checked first: u16::from_str would also accept a leading `+`.
        p => Some(p.strip_prefix(':').filter(|d| is_digits(d, 5))?.parse::<u16>().ok()?),
    };
    let port = port.filter(|&p| Some(p) != default_port(scheme));
    Some(Origin { scheme, host, port })
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A DNS name or IPv4 address: non-empty dot-separated labels of letters, digits, `-`, `_`.
fn is_hostname(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn is_digits(s: &str, max_len: usize) -> bool {
    (1..=max_len).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// An allow-list entry, lowercased.
#[derive(Clone, Debug)]
struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot, e.g. `.example.com`.
    Subdomains(String),
}

impl OriginPattern {
    fn parse(pattern: &str) -> Option<Self> {
        // Parse the wildcard as a label so the rest goes through the same strict parser.
        let substituted =
            pattern.split_once("://*.").map(|(scheme, rest)| format!("{scheme}://x.{rest}"));
        let origin = parse_origin(substituted.as_deref().unwrap_or(pattern))?;
        let host = origin.host.to_ascii_lowercase();
        let host = if substituted.is_some() {
            // Drop the `x` label put in place of `*`, keep the dot.
            HostPattern::Subdomains(host[1..].to_owned())
        } else {
            HostPattern::Exact(host)
        };
        Some(Self { scheme: origin.scheme.to_ascii_lowercase(), host, port: origin.port })
    }

    fn matches(&self, origin: &Origin<'_>) -> bool {
        let host = match &self.host {
            HostPattern::Exact(host) => origin.host.eq_ignore_ascii_case(host),
            HostPattern::Subdomains(suffix) => {
                // Hosts are ASCII (parse_origin checked), so byte slicing is at a char boundary.
                origin.host.len() > suffix.len()
                    && origin.host[origin.host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        };
        host && origin.scheme.eq_ignore_ascii_case(&self.scheme) && origin.port == self.port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOK_ALIKES: &[&str] = &[
        "http://localhost.evil.com",
        "http://127.0.0.1.evil.com",
        "http://evil.com#@localhost",
        "http://localhost:80@evil.com",
        "http://[::1].evil.com",
        "HTTP://LOCALHOST.EVIL.COM",
        "http://LOCALHOST:80@EVIL.COM",
        "http://127.0.0.1:8080.evil.com",
        "http://[::1]:80@evil.com",
        "http://user@localhost",
        "http://localhost@evil.com",
        "http://evil.com/localhost",
        "http://evil.com?localhost",
        "http://localhost%2eevil.com",
        "http://localhost\\.evil.com",
        "http://xn--localhost",
        "http://localhost.",
        "http://sub.localhost",
        "http://evillocalhost",
        "http://127.0.0.2",
        "http://127.1",
        "http://2130706433",
        "http://[::2]",
        "http://[::1",
        "http://[0:0:0:0:0:0:0:1]",
        "http://\u{ff4c}ocalhost",
        "http://localhost\u{0}",
        "http://evil.com",
        "https://example.com",
    ];

    const MALFORMED: &[&str] = &[
        "null",
        "",
        " ",
        "localhost",
        "//localhost",
        "http:/localhost",
        "http://",
        "http://:80",
        "http://localhost/",
        "http://localhost/path",
        "http://localhost:",
        "http://localhost:abc",
        "http://localhost:+80",
        "http://localhost:-1",
        "http://localhost:65536",
        "http://localhost:123456",
        "http://localhost:80:80",
        "http://local host",
        "http://[::1]x",
        "http://[]",
        "http://[::1]:",
        "1http://localhost",
        "ht tp://localhost",
    ];

    #[test]
    fn loopback_allows_every_loopback_form() {
        let policy = OriginPolicy::Loopback;
        assert!(policy.check(None).is_ok());
        for scheme in ["http", "https", "HTTP", "Https"] {
            for host in ["localhost", "LOCALHOST", "LocalHost", "127.0.0.1", "[::1]"] {
                for port in ["", ":1", ":80", ":443", ":8766", ":65535"] {
                    let origin = format!("{scheme}://{host}{port}");
                    assert!(policy.check(Some(&origin)).is_ok(), "{origin}");
                }
            }
        }
        assert!(policy.check(Some(" http://localhost:3000\t")).is_ok(), "header whitespace");
    }

    #[test]
    fn loopback_refuses_look_alikes_null_and_malformed_origins() {
        let policy = OriginPolicy::default();
        for origin in LOOK_ALIKES.iter().chain(MALFORMED) {
            assert_eq!(policy.check(Some(origin)), Err(AuthError::OriginRefused), "{origin:?}");
        }
        for origin in ["ws://localhost", "file://localhost", "chrome-extension://localhost"] {
            assert!(!policy.allows(Some(origin)), "{origin} is not a web page origin");
        }
    }

    #[test]
    fn allow_list_matches_exact_origins_and_default_ports() {
        let policy = OriginPolicy::allow_list([
            "https://app.example.com",
            "http://dev.example.com:8080",
            "chrome-extension://abcdefghijklmnop",
        ])
        .unwrap();
        for origin in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "http://dev.example.com:8080",
            "chrome-extension://abcdefghijklmnop",
        ] {
            assert!(policy.allows(Some(origin)), "{origin}");
        }
        assert!(policy.allows(None));
        for origin in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com/",
            "https://app.example.com.evil.com",
            "https://evil.app.example.com",
            "https://example.com",
            "http://dev.example.com",
            "http://dev.example.com:8081",
            "chrome-extension://abcdefghijklmnoq",
            "http://localhost",
            "null",
        ] {
            assert!(!policy.allows(Some(origin)), "{origin}");
        }
    }

    #[test]
    fn allow_list_wildcard_matches_subdomains_only() {
        let policy = OriginPolicy::allow_list(["https://*.example.org"]).unwrap();
        for origin in ["https://a.example.org", "https://a.b.example.org", "https://A.EXAMPLE.ORG"]
        {
            assert!(policy.allows(Some(origin)), "{origin}");
        }
        for origin in [
            "https://example.org",
            "https://.example.org",
            "https://evilexample.org",
            "https://a.example.org.evil.com",
            "https://a.example.org:8443",
            "http://a.example.org",
            "https://a@b.example.org",
            "https://[::1].example.org",
        ] {
            assert!(!policy.allows(Some(origin)), "{origin}");
        }
    }

    #[test]
    fn allow_list_adds_loopback_only_when_asked() {
        let list = OriginAllowList::new(["https://app.example.com"]).unwrap();
        let without = OriginPolicy::AllowList(list.clone());
        let with = OriginPolicy::AllowList(list.with_loopback(true));
        assert!(!without.allows(Some("http://localhost:3000")));
        assert!(with.allows(Some("http://localhost:3000")));
        assert!(with.allows(Some("https://app.example.com")));
        assert!(!with.allows(Some("http://localhost.evil.com")));
    }

    #[test]
    fn allow_list_rejects_entries_that_are_not_origins() {
        for pattern in [
            "",
            "*",
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://*",
            "https://*.",
            "https://a.*.com",
            "https://*example.com",
            "https://**.example.com",
            "https://*.[::1]",
            "https://x:99999",
            "https://user@x",
        ] {
            let err = OriginAllowList::new([pattern]).unwrap_err();
            assert_eq!(err.pattern, pattern);
        }
    }

    #[test]
    fn any_allows_everything_but_echoes_only_origins() {
        let policy = OriginPolicy::Any;
        for origin in LOOK_ALIKES.iter().chain(MALFORMED) {
            assert!(policy.check(Some(origin)).is_ok(), "{origin:?}");
        }
        assert_eq!(
            policy.allowed_origin_header(Some("https://evil.com")),
            Some("https://evil.com")
        );
        assert_eq!(policy.allowed_origin_header(Some("null")), Some("null"));
        assert_eq!(policy.allowed_origin_header(Some("a\"b")), None);
        assert_eq!(policy.allowed_origin_header(None), None);
    }

    #[test]
    fn cors_header_echoes_allowed_origins_only() {
        let policy = OriginPolicy::Loopback;
        assert_eq!(
            policy.allowed_origin_header(Some("http://localhost:3000")),
            Some("http://localhost:3000")
        );
        assert_eq!(policy.allowed_origin_header(Some(" http://[::1] ")), Some("http://[::1]"));
        assert_eq!(policy.allowed_origin_header(Some("http://localhost.evil.com")), None);
        assert_eq!(policy.allowed_origin_header(Some("null")), None);
        assert_eq!(policy.allowed_origin_header(None), None);
    }
}
