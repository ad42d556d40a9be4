//! What a request presents to authenticate: the bearer token and the current wall-clock time.

use std::borrow::Cow;
use std::fmt;

use super::error::{AuthError, malformed};

/// Longest bearer token accepted, in bytes as received, checked before any decoding.
pub const MAX_BEARER_LEN: usize = 8 * 1024;

/// The parts of a request an [`Authenticator`](super::Authenticator) looks at.
///
/// The transport layer fills it from the upgrade request (or a plain HTTP request);
/// [`bearer`](Self::bearer) then extracts the token. Its `Debug` output hides the credentials,
/// so it can be logged.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header value, if present.
    pub authorization: Option<&'a str>,
    /// The raw `token` query parameter, still percent-encoded; see [`token_param`].
    pub query_token: Option<&'a str>,
    /// Seconds since the Unix epoch, computed by the caller from its injected start time.
    pub unix_now: u64,
}

impl<'a> Credentials<'a> {
    /// Credentials with neither header nor query token (an anonymous request).
    pub fn none(unix_now: u64) -> Self {
        Self { authorization: None, query_token: None, unix_now }
    }

    /// The bearer token: from `Authorization: Bearer <token>` if present, else from the query
    /// token, percent-decoded. `Ok(None)` when neither is presented.
    ///
    /// The scheme is matched case-insensitively and may be followed by one or more spaces. An
    /// `Authorization` header with another scheme (such as `Basic`, which may be meant for a
    /// proxy) is not a bearer token and is passed over. The query token is decoded per
    /// RFC 3986: `%XX` escapes only, `+` stays a plus. Fails with
    /// [`AuthError::MalformedToken`] when the token is empty, longer than [`MAX_BEARER_LEN`],
    /// contains whitespace or control characters, or has a bad escape or non-UTF-8 bytes.
    pub fn bearer(&self) -> Result<Option<Cow<'a, str>>, AuthError> {
        if let Some(token) = self.authorization.and_then(bearer_from_header) {
            return check_token(token).map(|()| Some(Cow::Borrowed(token)));
        }
        let Some(raw) = self.query_token else {
            return Ok(None);
        };
        if raw.len() > MAX_BEARER_LEN {
            return Err(malformed("token too long"));
        }
        let token = percent_decode(raw)?;
        check_token(&token)?;
        Ok(Some(token))
    }
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are secrets: show only whether they are there.
        let redact = |v: Option<&str>| v.map(|_| "<redacted>");
        f.debug_struct("Credentials")
            .field("authorization", &redact(self.authorization))
            .field("query_token", &redact(self.query_token))
            .field("unix_now", &self.unix_now)
            .finish()
    }
}

/// The token after `Bearer ` (any case, one or more spaces), or `None` for another scheme.
fn bearer_from_header(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_start_matches(' '))
}

fn check_token(token: &str) -> Result<(), AuthError> {
    if token.is_empty() {
        return Err(malformed("empty token"));
    }
    if token.len() > MAX_BEARER_LEN {
        return Err(malformed("token too long"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed("whitespace or control character in token"));
    }
    Ok(())
}

/// The raw (still percent-encoded) value of the first `token` parameter of a request target
/// such as `/ws?token=abc&x=1`, for [`Credentials::query_token`].
pub fn token_param(request_target: &str) -> Option<&str> {
    let (_, query) = request_target.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some(("token", value)) => Some(value),
        _ => None,
    })
}

/// Decodes `%XX` escapes (RFC 3986); borrows when there are none.
///
/// Fails with [`AuthError::MalformedToken`] on a `%` not followed by two hex digits or when
/// the decoded bytes are not UTF-8.
pub fn percent_decode(raw: &str) -> Result<Cow<'_, str>, AuthError> {
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let [hi, lo, tail @ ..] = tail else {
                return Err(malformed("truncated percent escape"));
            };
            let (Some(hi), Some(lo)) = (hex_value(*hi), hex_value(*lo)) else {
                return Err(malformed("invalid percent escape"));
            };
            bytes.push(hi << 4 | lo);
            rest = tail;
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map(Cow::Owned).map_err(|_| malformed("token is not UTF-8"))
}

/// Exactly `2 * N` hex digits as `N` bytes, without allocating.
pub(crate) fn hex_array<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
    }
    Some(out)
}

pub(crate) fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> Result<Option<String>, AuthError> {
        let creds = Credentials { authorization: Some(value), ..Credentials::none(0) };
        creds.bearer().map(|t| t.map(Cow::into_owned))
    }

    fn query(raw: &str) -> Result<Option<String>, AuthError> {
        let creds = Credentials { query_token: Some(raw), ..Credentials::none(0) };
        creds.bearer().map(|t| t.map(Cow::into_owned))
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_with_one_or_more_spaces() {
        for value in ["Bearer abc.def", "bearer abc.def", "BEARER   abc.def", " Bearer abc.def "] {
            assert_eq!(header(value), Ok(Some("abc.def".into())), "{value:?}");
        }
    }

    #[test]
    fn bad_bearer_headers_are_malformed() {
        for value in ["Bearer", "Bearer ", "Bearer a b", "Bearer a\u{1}b", "Bearer é\u{a0}"] {
            assert_eq!(header(value), Err(AuthError::MalformedToken), "{value:?}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_BEARER_LEN + 1));
        assert_eq!(header(&long), Err(AuthError::MalformedToken));
    }

    #[test]
    fn other_schemes_fall_back_to_the_query_token() {
        assert_eq!(header("Basic dXNlcjpwYXNz"), Ok(None));
        assert_eq!(header("Bearerabc"), Ok(None));
        assert_eq!(header("Bearer\tabc"), Ok(None), "RFC 7235 allows only spaces after it");
        let creds = Credentials {
            authorization: Some("Basic dXNlcjpwYXNz"),
            query_token: Some("q"),
            unix_now: 0,
        };
        assert_eq!(creds.bearer().unwrap().as_deref(), Some("q"));
    }

    #[test]
    fn header_wins_over_query_token() {
        let creds =
            Credentials { authorization: Some("Bearer h"), query_token: Some("q"), unix_now: 0 };
        assert_eq!(creds.bearer().unwrap().as_deref(), Some("h"));
        assert_eq!(Credentials::none(0).bearer(), Ok(None));
    }

    #[test]
    fn query_token_is_percent_decoded() {
        assert_eq!(query("abc.def_-~"), Ok(Some("abc.def_-~".into())));
        assert_eq!(query("a%2Bb%2fc%3D%3d"), Ok(Some("a+b/c==".into())));
        assert_eq!(query("a+b"), Ok(Some("a+b".into())), "+ is not a space in RFC 3986");
        assert_eq!(query("%C3%A9t%C3%A9"), Ok(Some("été".into())));
        assert!(matches!(percent_decode("plain"), Ok(Cow::Borrowed("plain"))));
    }

    #[test]
    fn bad_query_tokens_are_malformed() {
        for raw in ["", "%", "%2", "a%zz", "%g0", "%C3", "%FF", "a%20b", "%00", "%0A"] {
            assert_eq!(query(raw), Err(AuthError::MalformedToken), "{raw:?}");
        }
        assert_eq!(query(&"a".repeat(MAX_BEARER_LEN + 1)), Err(AuthError::MalformedToken));
    }

    #[test]
    fn token_param_finds_the_first_token_parameter() {
        assert_eq!(token_param("/ws?token=abc"), Some("abc"));
        assert_eq!(token_param("/ws?x=1&token=a%2Bb&token=other"), Some("a%2Bb"));
        assert_eq!(token_param("/ws?token=abc#frag"), Some("abc"));
        assert_eq!(token_param("/ws?token="), Some(""));
        assert_eq!(token_param("/ws?xtoken=abc&tokens=1"), None);
        assert_eq!(token_param("/ws"), None);
        assert_eq!(token_param("/token=abc"), None);
    }

    #[test]
    fn debug_hides_tokens() {
        let creds = Credentials {
            authorization: Some("Bearer s3cret"),
            query_token: Some("q5ecret"),
            unix_now: 7,
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("q5ecret"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("unix_now: 7"), "{shown}");
    }
}
