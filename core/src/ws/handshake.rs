//! The RFC 6455 §4 opening handshake, for both roles.
//!
//! Server: [`validate_upgrade`] checks a parsed request and [`write_accept`] or
//! [`write_reject`] produce the answer. Client: [`write_request`] and [`validate_response`].
//! [`Connection`](super::Connection) drives these itself; callers that want their own policy
//! (origin checks, auth, subprotocol choice) call them directly and then build the connection
//! with [`Connection::accepted`](super::Connection::accepted).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::deflate::{self, DeflateConfig, Negotiated};
use super::error::HandshakeError;
use crate::http::head::{RequestHead, ResponseHead, reason_phrase};

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Computes `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (as sent, base64 text).
pub fn accept_key(key: &[u8]) -> String {
    String::from_utf8_lossy(&accept_key_bytes(key)).into_owned()
}

/// `Sec-WebSocket-Accept` as base64 text in a fixed buffer (no allocation per handshake).
fn accept_key_bytes(key: &[u8]) -> [u8; 28] {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let mut out = [0u8; 28];
    // 20 bytes are 28 characters of padded base64, so the buffer always fits.
    let _ = BASE64.encode_slice(sha.digest().bytes(), &mut out);
    out
}

/// A request that passed every check of RFC 6455 §4.2.1.
#[derive(Clone, Debug)]
pub struct Upgrade {
    /// The parsed request head, for origin checks, auth and routing.
    pub request: RequestHead,
    key: String,
}

impl Upgrade {
    /// The client's `Sec-WebSocket-Key`, trimmed.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &str> + '_ {
        self.request.headers.tokens("sec-websocket-protocol")
    }

    /// The values of every `Sec-WebSocket-Extensions` line, in order, for
    /// [`deflate::accept`](super::deflate::accept).
    pub fn offered_extensions(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.request.headers.get_all("sec-websocket-extensions")
    }

    /// The first protocol of `supported` (the server's order of preference) that the client
    /// offered.
    pub fn select_protocol<'a>(&self, supported: &'a [String]) -> Option<&'a str> {
        supported.iter().map(String::as_str).find(|s| self.offered_protocols().any(|o| o == *s))
    }
}

/// Checks that `request` is a valid WebSocket upgrade (RFC 6455 §4.2.1).
pub fn validate_upgrade(request: RequestHead) -> Result<Upgrade, HandshakeError> {
    let h = &request.headers;
    if !h.has_token("upgrade", "websocket") {
        return Err(if h.get("upgrade").is_none() && h.get("sec-websocket-key").is_none() {
            HandshakeError::NotAnUpgrade
        } else {
            HandshakeError::BadHeader("Upgrade")
        });
    }
    if request.method() != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if request.version < 1 {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    if !h.has_token("connection", "upgrade") {
        return Err(HandshakeError::BadHeader("Connection"));
    }
    if h.count("sec-websocket-version") != 1 || h.get_str("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match (h.count("sec-websocket-key"), h.get_str("sec-websocket-key")) {
        (1, Some(key)) if decodes_to_16_bytes(key) => key.to_owned(),
        _ => return Err(HandshakeError::BadHeader("Sec-WebSocket-Key")),
    };
    if h.count("host") != 1 {
        return Err(HandshakeError::BadHeader("Host"));
    }
    // The switch happens after the request is complete (RFC 9110 §7.8); a body would be read
    // as frames, so an upgrade with one is refused.
    if h.get("transfer-encoding").is_some() || h.get("content-length").is_some_and(|v| v != b"0") {
        return Err(HandshakeError::Malformed("a WebSocket upgrade request has no body".into()));
    }
    Ok(Upgrade { request, key })
}

/// Whether `key` is base64 for 16 bytes (RFC 6455 §4.1), decoded on the stack.
fn decodes_to_16_bytes(key: &str) -> bool {
    // Larger than any estimate for a 16-byte key: longer input fails as too long for it.
    let mut buf = [0u8; 64];
    BASE64.decode_slice(key, &mut buf).is_ok_and(|n| n == 16)
}

/// Appends the `101 Switching Protocols` answer to `out`.
///
/// `extra` lines are written as given (each `name: value`); names must be tokens and values
/// must not contain CR or LF.
pub fn write_accept(out: &mut Vec<u8>, key: &str, protocol: Option<&str>, extra: &[(&str, &str)]) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(&accept_key_bytes(key.as_bytes()));
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete error response for `error` to `out`, with a short plain-text body and
/// `Connection: close`.
pub fn write_reject(out: &mut Vec<u8>, error: &HandshakeError) {
    let status = error.status();
    let mut extra: Vec<(&str, &str)> = Vec::new();
    match error {
        HandshakeError::UnsupportedVersion | HandshakeError::NotAnUpgrade => {
            extra.push(("Upgrade", "websocket"));
            extra.push(("Sec-WebSocket-Version", "13"));
        }
        HandshakeError::MethodNotAllowed => extra.push(("Allow", "GET")),
        _ => {}
    }
    write_simple_response(out, status, &extra, &format!("{error}\n"));
}

/// Appends a response with a plain-text `body` and `Connection: close`.
pub fn write_simple_response(out: &mut Vec<u8>, status: u16, extra: &[(&str, &str)], body: &str) {
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(
        format!("Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What a client asks for in its opening handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRequest {
    /// The `Host` header value (`host` or `host:port`).
    pub host: String,
    /// The request target: path and optional query.
    pub target: String,
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    /// Extra header lines, such as `Origin` or `Authorization`.
    pub headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// A request for `target` (for example `/rpc`) on `host`.
    pub fn new(host: impl Into<String>, target: impl Into<String>) -> Self {
        Self { host: host.into(), target: target.into(), ..Self::default() }
    }

    /// Adds a header line.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers a subprotocol.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }
}

/// Appends the client's upgrade request to `out`. `nonce` is 16 random bytes from the
/// caller's entropy source; returns the base64 key that was sent.
pub fn write_request(out: &mut Vec<u8>, req: &ClientRequest, nonce: [u8; 16]) -> String {
    let key = BASE64.encode(nonce);
    let target = if req.target.is_empty() { "/" } else { req.target.as_str() };
    out.extend_from_slice(format!("GET {target} HTTP/1.1\r\n").as_bytes());
    push_header(out, "Host", &req.host);
    out.extend_from_slice(
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    );
    push_header(out, "Sec-WebSocket-Key", &key);
    if !req.protocols.is_empty() {
        push_header(out, "Sec-WebSocket-Protocol", &req.protocols.join(", "));
    }
    for (name, value) in &req.headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    key
}

/// Checks the server's answer (RFC 6455 §4.1) to a request that offered no extension;
/// returns the selected subprotocol.
pub fn validate_response(
    resp: &ResponseHead,
    key: &str,
    offered: &[String],
) -> Result<Option<String>, HandshakeError> {
    validate_response_with(resp, key, offered, None).map(|(protocol, _)| protocol)
}

/// [`validate_response`] for a request that offered permessage-deflate from `compression`
/// (when set); also returns what the server accepted of it.
pub fn validate_response_with(
    resp: &ResponseHead,
    key: &str,
    offered: &[String],
    compression: Option<&DeflateConfig>,
) -> Result<(Option<String>, Option<Negotiated>), HandshakeError> {
    if resp.status != 101 {
        return Err(HandshakeError::Rejected { status: resp.status });
    }
    let h = &resp.headers;
    if !h.has_token("upgrade", "websocket") {
        return Err(HandshakeError::BadHeader("Upgrade"));
    }
    if !h.has_token("connection", "upgrade") {
        return Err(HandshakeError::BadHeader("Connection"));
    }
    if h.count("sec-websocket-accept") != 1
        || h.get_str("sec-websocket-accept") != Some(accept_key(key.as_bytes()).as_str())
    {
        return Err(HandshakeError::BadAccept);
    }
    let deflate = match compression {
        None if h.tokens("sec-websocket-extensions").next().is_some() => {
            return Err(HandshakeError::UnexpectedExtension);
        }
        None => None,
        Some(config) => {
            deflate::validate_response(Some(config), h.get_all("sec-websocket-extensions"))
                .map_err(HandshakeError::BadExtensionResponse)?
        }
    };
    let mut selected = h.tokens("sec-websocket-protocol");
    let protocol = match (selected.next(), selected.next()) {
        (None, _) => None,
        (Some(p), None) if offered.iter().any(|o| o == p) => Some(p.to_owned()),
        (Some(p), _) => return Err(HandshakeError::UnexpectedProtocol(p.to_owned())),
    };
    Ok((protocol, deflate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{HeadBuffer, HeadLimits};

    fn parse(raw: &str) -> RequestHead {
        let mut hb = HeadBuffer::new();
        assert!(hb.push(raw.as_bytes(), 8192).unwrap().is_some());
        RequestHead::parse(hb.take(), HeadLimits::default()).unwrap()
    }

    const GOOD: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_sample_accept_value() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_the_rfc_request_and_negotiates() {
        let up = validate_upgrade(parse(GOOD)).unwrap();
        assert_eq!(up.select_protocol(&["superchat".into(), "chat".into()]), Some("superchat"));
        assert_eq!(up.select_protocol(&["mqtt".into()]), None);
        let mut out = Vec::new();
        write_accept(&mut out, up.key(), Some("chat"), &[]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn each_bad_request_gets_its_status() {
        let cases: &[(&str, &str, u16)] = &[
            ("GET /chat", "POST /chat", 405),
            ("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost", 505),
            ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", 426),
            ("Sec-WebSocket-Version: 13\r\n", "", 426),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==", 400),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 400),
            ("Connection: Upgrade", "Connection: keep-alive", 400),
            ("Upgrade: websocket", "Upgrade: h2c", 400),
            ("Host: server.example.com\r\n", "", 400),
        ];
        for (from, to, status) in cases {
            let raw = GOOD.replacen(from, to, 1);
            let err = validate_upgrade(parse(&raw)).unwrap_err();
            assert_eq!(err.status(), *status, "{from} -> {to}: {err}");
            let mut out = Vec::new();
            write_reject(&mut out, &err);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
            if *status == 426 {
                assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
            }
        }
    }

    #[test]
    fn the_key_must_be_base64_for_exactly_16_bytes() {
        let ok = |key: &str| decodes_to_16_bytes(key);
        assert!(ok("dGhlIHNhbXBsZSBub25jZQ=="));
        // 15 and 17 bytes, unpadded, bad characters, a long key, empty.
        assert!(!ok("dGhlIHNhbXBsZSBub25j"));
        assert!(!ok("dGhlIHNhbXBsZSBub25jZQ=="[..22].trim_end_matches('=')));
        assert!(!ok("dGhlIHNhbXBsZSBub25jZSE="));
        assert!(!ok("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!ok("dGhlIHNhbXBsZSBub25jZ!=="));
        assert!(!ok(&"QUFB".repeat(40)));
        assert!(!ok(""));
    }

    #[test]
    fn plain_http_is_not_an_upgrade() {
        let err = validate_upgrade(parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n")).unwrap_err();
        assert_eq!(err, HandshakeError::NotAnUpgrade);
    }

    #[test]
    fn client_request_and_response_validation() {
        let req = ClientRequest::new("localhost:9001", "/rpc")
            .protocol("jsonrpc")
            .header("Origin", "http://localhost");
        let mut out = Vec::new();
        let key = write_request(&mut out, &req, *b"the sample nonce");
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        // The request we write passes our own server validation.
        let up = validate_upgrade(parse(std::str::from_utf8(&out).unwrap())).unwrap();
        let mut resp = Vec::new();
        write_accept(&mut resp, up.key(), Some("jsonrpc"), &[]);
        let head = ResponseHead::parse(resp, HeadLimits::default()).unwrap();
        assert_eq!(validate_response(&head, &key, &req.protocols), Ok(Some("jsonrpc".into())));
        assert_eq!(
            validate_response(&head, "AAAAAAAAAAAAAAAAAAAAAA==", &req.protocols),
            Err(HandshakeError::BadAccept)
        );
        assert!(matches!(
            validate_response(&head, &key, &[]),
            Err(HandshakeError::UnexpectedProtocol(_))
        ));
        let rejected =
            ResponseHead::parse(b"HTTP/1.1 403 Forbidden\r\n\r\n".to_vec(), HeadLimits::default())
                .unwrap();
        assert_eq!(
            validate_response(&rejected, &key, &[]),
            Err(HandshakeError::Rejected { status: 403 })
        );
    }
}
