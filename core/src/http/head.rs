//! HTTP/1.1 message heads: found incrementally in a byte stream, parsed with `httparse`, kept
//! as one owned buffer plus offsets so a parsed head costs one allocation.

use std::ops::Range;

use crate::ws::HandshakeError;

/// Limits on a message head (defaults: 8 KiB, 64 header lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head in bytes, request line and blank line included.
    pub max_size: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self { max_size: 8 * 1024, max_headers: 64 }
    }
}

/// Collects the bytes of one head until its blank line, whatever the chunking of the input.
///
/// Each input byte is scanned once, so a head that arrives one byte at a time costs the same
/// as one that arrives whole.
#[derive(Debug, Default)]
pub struct HeadBuffer {
    buf: Vec<u8>,
    /// 0: inside a line; 1: just after a LF; 2: after a LF and a CR.
    line_state: u8,
    /// The first line (request or status line) has ended.
    first_line_done: bool,
}

impl HeadBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes from `data` up to the end of the head.
    ///
    /// Returns `Ok(Some(n))` when the head is complete after taking `n` bytes of `data` (the
    /// rest belongs to what follows the head), `Ok(None)` when all of `data` was taken and more
    /// is needed, and an error once the head outgrows `max_size`.
    pub fn push(&mut self, data: &[u8], max_size: usize) -> Result<Option<usize>, HandshakeError> {
        // Bytes at or after this index would take the head over `max_size`.
        let limit = max_size.saturating_sub(self.buf.len());
        let scan = &data[..data.len().min(limit)];
        let mut i = 0;
        while i < scan.len() {
            if self.line_state == 0 {
                // Inside a line only its LF matters: skip to it.
                match scan[i..].iter().position(|&b| b == b'\n') {
                    Some(at) => i += at,
                    None => break,
                }
            }
            if self.step(scan[i]) {
                self.buf.extend_from_slice(&data[..=i]);
                return Ok(Some(i + 1));
            }
            i += 1;
        }
        if data.len() > limit {
            // The first byte over the limit; over it before the request line ended, the
            // target is too long (414).
            self.step(data[limit]);
            return Err(if self.first_line_done {
                HandshakeError::HeadersTooLarge
            } else {
                HandshakeError::RequestLineTooLong
            });
        }
        self.buf.extend_from_slice(data);
        Ok(None)
    }

    /// Moves the line state over one byte; true at the blank line that ends the head.
    fn step(&mut self, b: u8) -> bool {
        match (b, self.line_state) {
            (b'\n', 1 | 2) => true,
            (b'\n', _) => {
                self.line_state = 1;
                self.first_line_done = true;
                false
            }
            (b'\r', 1) => {
                self.line_state = 2;
                false
            }
            _ => {
                self.line_state = 0;
                false
            }
        }
    }

    /// Bytes collected so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails early when the bytes so far cannot begin a request head (binary garbage, a TLS
    /// hello on a plain port), instead of waiting for a blank line that never comes. Only the
    /// first bytes are checked, so byte-at-a-time input costs little.
    pub fn check_request_prefix(&self) -> Result<(), HandshakeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Only the prefix: a TLS hello arrives in one chunk far longer than it, and must
        // still be refused at once.
        let prefix = &self.buf[..self.buf.len().min(PREFIX_CHECKED)];
        let mut headers = [httparse::EMPTY_HEADER; 0];
        match httparse::Request::new(&mut headers).parse(prefix) {
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
            Err(e) => Err(HandshakeError::Malformed(e.to_string())),
        }
    }

    /// Hands over the complete head's bytes, leaving the buffer empty.
    pub fn take(&mut self) -> Vec<u8> {
        self.line_state = 0;
        self.first_line_done = false;
        std::mem::take(&mut self.buf)
    }
}

/// How many leading bytes of a head [`HeadBuffer::check_request_prefix`] looks at.
const PREFIX_CHECKED: usize = 256;

/// Header lines of a parsed head: the raw bytes and the offsets of each name and value.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    raw: Vec<u8>,
    entries: Vec<(Range<u32>, Range<u32>)>,
}

impl Headers {
    /// Offsets of each parsed name and value inside `raw`, which they borrow from.
    fn offsets(raw: &[u8], parsed: &[httparse::Header<'_>]) -> Vec<(Range<u32>, Range<u32>)> {
        parsed
            .iter()
            .map(|h| (offset_in(raw, h.name.as_bytes()), offset_in(raw, h.value)))
            .collect()
    }

    fn slice(&self, r: &Range<u32>) -> &[u8] {
        &self.raw[r.start as usize..r.end as usize]
    }

    /// Every header line as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        // Names were validated as tokens by httparse, so they are ASCII.
        self.entries
            .iter()
            .map(|(n, v)| (std::str::from_utf8(self.slice(n)).unwrap_or(""), self.slice(v)))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the head had no header lines.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Values of every line named `name` (ASCII case-insensitive).
    pub fn get_all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        // Names compared as bytes: a handshake makes a few dozen lookups, and checking each
        // name as UTF-8 first cost more than the rest of the lookup.
        self.entries
            .iter()
            .filter(move |(n, _)| self.slice(n).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| self.slice(v))
    }

    /// The first value named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// The first value named `name`, when it is valid UTF-8, trimmed.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
    }

    /// How many lines are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// Comma-separated elements of every line named `name`, trimmed, empty ones skipped.
    pub fn tokens<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.get_all(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// Whether the comma-separated lists named `name` contain `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        let wanted = token.as_bytes();
        self.get_all(name).any(|v| {
            if !v.is_ascii() {
                let v = std::str::from_utf8(v).unwrap_or("");
                return v
                    .split(',')
                    .map(str::trim)
                    .any(|t| !t.is_empty() && t.eq_ignore_ascii_case(token));
            }
            // The usual ASCII value, on its bytes (the same as above: httparse admits no
            // whitespace in a value but space and tab).
            !wanted.is_empty()
                && v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(wanted))
        })
    }
}

/// A parsed request head.
#[derive(Clone, Debug)]
pub struct RequestHead {
    method: Range<u32>,
    target: Range<u32>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The header lines.
    pub headers: Headers,
}

impl RequestHead {
    /// Parses a complete head as returned by [`HeadBuffer::take`].
    pub fn parse(raw: Vec<u8>, limits: HeadLimits) -> Result<Self, HandshakeError> {
        let parsed = with_header_slots(limits.max_headers, |slots| {
            let mut req = httparse::Request::new(slots);
            match req.parse(&raw) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => {
                    return Err(HandshakeError::Malformed("incomplete head".into()));
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HandshakeError::HeadersTooLarge);
                }
                Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
            }
            // Complete parses always carry method, path and version.
            let method = offset_in(&raw, req.method.unwrap_or_default().as_bytes());
            let target = offset_in(&raw, req.path.unwrap_or_default().as_bytes());
            Ok((method, target, req.version.unwrap_or(1), Headers::offsets(&raw, req.headers)))
        });
        let (method, target, version, entries) = parsed?;
        Ok(Self { method, target, version, headers: Headers { raw, entries } })
    }

    fn text(&self, r: &Range<u32>) -> &str {
        // httparse only yields method and target made of visible ASCII.
        std::str::from_utf8(self.headers.slice(r)).unwrap_or("")
    }

    /// The request method, such as `GET`.
    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The request target as sent: path and query.
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// The target's path, without the query; for an absolute-form target
    /// (`http://host/path?q`, RFC 9112 §3.2.2) the part after the authority (`/` when empty).
    pub fn path(&self) -> &str {
        let t = self.origin_form();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The target as origin-form (`/path?query`): an absolute-form target without its scheme
    /// and authority.
    fn origin_form(&self) -> &str {
        let t = self.target();
        let scheme_len = ["http://", "https://", "ws://", "wss://"]
            .into_iter()
            .find(|s| t.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))
            .map(str::len);
        let Some(n) = scheme_len else { return t };
        let rest = &t[n..];
        match rest.find(['/', '?']) {
            Some(at) if rest.as_bytes()[at] == b'/' => &rest[at..],
            // `http://host?q` or `http://host`: the path is `/`.
            _ => "/",
        }
    }

    /// The target's query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The raw value of a query parameter (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

/// A parsed response head.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The header lines.
    pub headers: Headers,
}

impl ResponseHead {
    /// Parses a complete head as returned by [`HeadBuffer::take`].
    pub fn parse(raw: Vec<u8>, limits: HeadLimits) -> Result<Self, HandshakeError> {
        let parsed = with_header_slots(limits.max_headers, |slots| {
            let mut resp = httparse::Response::new(slots);
            match resp.parse(&raw) {
                Ok(httparse::Status::Complete(_)) => {}
                Ok(httparse::Status::Partial) => {
                    return Err(HandshakeError::Malformed("incomplete head".into()));
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HandshakeError::HeadersTooLarge);
                }
                Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
            }
            Ok((
                resp.code.unwrap_or(0),
                resp.version.unwrap_or(1),
                Headers::offsets(&raw, resp.headers),
            ))
        });
        let (status, version, entries) = parsed?;
        Ok(Self { status, version, headers: Headers { raw, entries } })
    }
}

/// Where `part`, a subslice of `whole`, sits in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Range<u32> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    debug_assert!(start + part.len() <= whole.len(), "part must borrow from whole");
    start as u32..(start + part.len()) as u32
}

fn with_header_slots<'b, T>(max: usize, f: impl FnOnce(&mut [httparse::Header<'b>]) -> T) -> T {
    let mut stack = [httparse::EMPTY_HEADER; 64];
    if max <= stack.len() {
        f(&mut stack[..max])
    } else {
        f(&mut vec![httparse::EMPTY_HEADER; max])
    }
}

/// The reason phrase for the statuses this crate sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET /chat?token=abc&x=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v3\r\n\r\nTAIL";

    #[test]
    fn head_found_with_any_chunking() {
        let head_len = REQ.len() - 4;
        for chunk in [1, 2, 3, 7, 64, REQ.len()] {
            let mut hb = HeadBuffer::new();
            let mut fed = 0;
            let mut done = None;
            for piece in REQ.chunks(chunk) {
                if let Some(n) = hb.push(piece, 8192).unwrap() {
                    done = Some(fed + n);
                    break;
                }
                fed += piece.len();
            }
            assert_eq!(done, Some(head_len), "chunk {chunk}");
            let req = RequestHead::parse(hb.take(), HeadLimits::default()).unwrap();
            assert_eq!(req.method(), "GET");
            assert_eq!(req.path(), "/chat");
            assert_eq!(req.query_param("token"), Some("abc"));
            assert_eq!(req.headers.get_str("host"), Some("server.example.com"));
            assert!(req.headers.has_token("connection", "upgrade"));
            let protos: Vec<_> = req.headers.tokens("sec-websocket-protocol").collect();
            assert_eq!(protos, ["chat", "superchat", "v3"]);
        }
    }

    /// The head scan byte by byte, as the specification of [`HeadBuffer::push`] (which
    /// skips through lines).
    fn push_bytewise(
        state: &mut (usize, u8, bool),
        data: &[u8],
        max: usize,
    ) -> Result<Option<usize>, HandshakeError> {
        let (len, line, first_done) = state;
        for (i, &b) in data.iter().enumerate() {
            let end = match (b, *line) {
                (b'\n', 1 | 2) => true,
                (b'\n', _) => {
                    *line = 1;
                    *first_done = true;
                    false
                }
                (b'\r', 1) => {
                    *line = 2;
                    false
                }
                _ => {
                    *line = 0;
                    false
                }
            };
            if *len + i + 1 > max {
                return Err(if *first_done {
                    HandshakeError::HeadersTooLarge
                } else {
                    HandshakeError::RequestLineTooLong
                });
            }
            if end {
                *len += i + 1;
                return Ok(Some(i + 1));
            }
        }
        *len += data.len();
        Ok(None)
    }

    proptest::proptest! {
        #[test]
        fn push_matches_the_bytewise_scan(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a', b':', b' ']), 0..120),
            cuts in proptest::collection::vec(1usize..20, 1..20),
            max in 0usize..140,
        ) {
            let mut hb = HeadBuffer::new();
            let mut spec = (0, 0, false);
            let mut rest = &bytes[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*cut).min(rest.len()));
                let got = hb.push(piece, max);
                let want = push_bytewise(&mut spec, piece, max);
                proptest::prop_assert_eq!(&got, &want);
                if !matches!(got, Ok(None)) {
                    break;
                }
                proptest::prop_assert_eq!(hb.len(), spec.0);
                rest = tail;
            }
        }
    }

    #[test]
    fn tokens_are_found_in_every_line_of_a_list() {
        // Tab and space around tokens, empty elements, a UTF-8 token, and a value that is not
        // UTF-8 (its tokens are not matched).
        let raw =
            b"GET / HTTP/1.1\r\nConnection: keep-alive,\tUPGRADE ,x\r\nConnection: ,,close\r\n\
                    Upgrade: h2c, caf\xc3\xa9, websocket\r\nX: a, \xff\r\n\r\n";
        let req = RequestHead::parse(raw.to_vec(), HeadLimits::default()).unwrap();
        let h = &req.headers;
        assert!(h.has_token("connection", "upgrade"));
        assert!(h.has_token("CONNECTION", "Close"));
        assert!(h.has_token("connection", "x"));
        assert!(!h.has_token("connection", ""));
        assert!(!h.has_token("connection", "keep"));
        assert!(h.has_token("upgrade", "websocket"));
        assert!(h.has_token("upgrade", "caf\u{e9}"));
        assert!(!h.has_token("upgrade", "cafe"));
        assert!(!h.has_token("x", "a"));
        assert!(!h.has_token("host", "a"));
    }

    #[test]
    fn bare_lf_line_endings_end_the_head() {
        let mut hb = HeadBuffer::new();
        assert_eq!(hb.push(b"GET / HTTP/1.1\nHost: a\n\nrest", 100).unwrap(), Some(24));
    }

    #[test]
    fn oversized_head_fails_at_the_limit() {
        let mut hb = HeadBuffer::new();
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(200, b'a');
        assert_eq!(hb.push(&big, 100), Err(HandshakeError::HeadersTooLarge));
        // A head of exactly the limit is accepted.
        let exact = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(HeadBuffer::new().push(exact, exact.len()).unwrap(), Some(exact.len()));
        // Over the limit inside the request line is 414, also for a buffer used before.
        let mut reused = HeadBuffer::new();
        assert_eq!(reused.push(exact, 100).unwrap(), Some(exact.len()));
        reused.take();
        assert_eq!(reused.push(&[b'a'; 200], 100), Err(HandshakeError::RequestLineTooLong));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..65 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let err = RequestHead::parse(raw, HeadLimits::default()).unwrap_err();
        assert_eq!((err.clone(), err.status()), (HandshakeError::HeadersTooLarge, 431));
    }

    #[test]
    fn garbage_fails_before_the_blank_line() {
        let mut hb = HeadBuffer::new();
        hb.push(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 8192).unwrap();
        assert!(hb.check_request_prefix().is_err(), "a TLS hello is refused at once");
        let mut ok = HeadBuffer::new();
        for b in b"GET /chat HTTP/1.1\r\nHost: exa" {
            ok.push(std::slice::from_ref(b), 8192).unwrap();
            assert!(ok.check_request_prefix().is_ok(), "a valid prefix is never refused");
        }
    }

    #[test]
    fn garbage_is_400() {
        let err =
            RequestHead::parse(b"\x16\x03\x01garbage\r\n\r\n".to_vec(), HeadLimits::default())
                .unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn response_head() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let r = ResponseHead::parse(raw, HeadLimits::default()).unwrap();
        assert_eq!(r.status, 101);
        assert_eq!(r.headers.get_str("upgrade"), Some("websocket"));
    }
}
