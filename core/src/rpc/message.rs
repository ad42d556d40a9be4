//! Parsing incoming JSON-RPC 2.0 messages (single or batch) and writing responses.
//!
//! Requests borrow from the message: method names without escapes, params and ids are slices
//! of the original text (`RawValue`), so ids are echoed byte for byte.

use std::borrow::Cow;
use std::io::Write as _;

use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::error::RpcError;

/// A valid request or notification.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The method name.
    pub method: Cow<'a, str>,
    /// The params as sent: an array, an object, or absent.
    pub params: Option<&'a RawValue>,
    /// The id as sent (string, number or null); `None` for a notification.
    pub id: Option<&'a RawValue>,
    /// The `sig` member (HMAC signature), when message signing is in use.
    pub sig: Option<&'a RawValue>,
}

impl Request<'_> {
    /// A notification gets no response.
    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }
}

/// An entry that is not a valid request; answered with its error and the id when one could
/// be read (`null` otherwise).
#[derive(Clone, Debug)]
pub struct Invalid<'a> {
    /// The id, when it was present and valid.
    pub id: Option<&'a RawValue>,
    /// The error to answer with.
    pub error: RpcError,
}

/// One parsed message.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A single request object (or a single invalid one).
    Single(Result<Request<'a>, Invalid<'a>>),
    /// A non-empty batch, entries in order.
    Batch(Vec<Result<Request<'a>, Invalid<'a>>>),
    /// Not JSON, or an empty batch: answered with one error whose id is `null`.
    Unanswerable(RpcError),
}

/// The members of a request object, each kept raw so absent and `null` differ.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    sig: Option<&'a RawValue>,
}

/// Deserializes a member that is present (even as `null`) into `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A JSON array's first `max` elements, kept raw, and how many elements it has in all; the
/// elements past `max` are checked to be JSON but not kept, so a message of millions of tiny
/// entries costs no memory beyond its own bytes.
pub(crate) fn bounded_array(
    text: &[u8],
    max: usize,
) -> Result<(Vec<&RawValue>, usize), serde_json::Error> {
    struct Bounded(usize);
    impl<'de> DeserializeSeed<'de> for Bounded {
        type Value = (Vec<&'de RawValue>, usize);
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Bounded {
        type Value = (Vec<&'de RawValue>, usize);
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            while kept.len() < self.0 {
                match seq.next_element::<&RawValue>()? {
                    Some(entry) => kept.push(entry),
                    None => {
                        let n = kept.len();
                        return Ok((kept, n));
                    }
                }
            }
            let mut total = kept.len();
            while seq.next_element::<IgnoredAny>()?.is_some() {
                total += 1;
            }
            Ok((kept, total))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = Bounded(max).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Parses one message: a request object or a batch of at most `max_batch` entries (a longer
/// one is refused whole, -32600, before any entry is looked at).
pub fn parse(message: &[u8], max_batch: usize) -> Incoming<'_> {
    let first = message.iter().copied().find(|b| !b.is_ascii_whitespace());
    if first == Some(b'[') {
        return match bounded_array(message, max_batch) {
            Ok((_, 0)) => Incoming::Unanswerable(RpcError::invalid_request("empty batch")),
            Ok((_, total)) if total > max_batch => Incoming::Unanswerable(
                RpcError::invalid_request("batch too large").with_data(serde_json::json!({
                    "limit": "batch entries", "max": max_batch, "entries": total
                })),
            ),
            Ok((entries, _)) => {
                Incoming::Batch(entries.into_iter().map(|e| parse_entry(e.get())).collect())
            }
            Err(e) if e.is_data() => Incoming::Unanswerable(RpcError::invalid_request(e)),
            Err(e) => Incoming::Unanswerable(RpcError::parse_error(e)),
        };
    }
    match serde_json::from_slice::<Fields<'_>>(message) {
        Ok(fields) => Incoming::Single(validate(fields)),
        Err(e) if e.is_data() => {
            Incoming::Single(Err(Invalid { id: None, error: RpcError::invalid_request(&e) }))
        }
        Err(e) => Incoming::Unanswerable(RpcError::parse_error(e)),
    }
}

fn parse_entry(text: &str) -> Result<Request<'_>, Invalid<'_>> {
    match serde_json::from_str::<Fields<'_>>(text) {
        Ok(fields) => validate(fields),
        // The batch already parsed as JSON, so only shape errors are left.
        Err(e) => Err(Invalid { id: None, error: RpcError::invalid_request(&e) }),
    }
}

fn validate(f: Fields<'_>) -> Result<Request<'_>, Invalid<'_>> {
    let id = match f.id {
        Some(raw) if !is_valid_id(raw) => {
            return Err(Invalid {
                id: None,
                error: RpcError::invalid_request("id must be a string, a number or null"),
            });
        }
        id => id,
    };
    let fail = |why: &'static str| Err(Invalid { id, error: RpcError::invalid_request(why) });
    match f.jsonrpc.map(|v| serde_json::from_str::<Cow<'_, str>>(v.get())) {
        Some(Ok(v)) if v == "2.0" => {}
        _ => return fail("jsonrpc must be \"2.0\""),
    }
    let method = match f.method.map(|v| serde_json::from_str::<Cow<'_, str>>(v.get())) {
        Some(Ok(m)) => m,
        _ => return fail("method must be a string"),
    };
    if let Some(p) = f.params {
        if !matches!(p.get().as_bytes().first(), Some(b'[' | b'{')) {
            return fail("params must be an array or an object");
        }
    }
    Ok(Request { method, params: f.params, id, sig: f.sig })
}

fn is_valid_id(raw: &RawValue) -> bool {
    matches!(raw.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n'))
}

/// Writes `{"jsonrpc":"2.0","result":<result>,"id":<id>}` where `write_result` writes the
/// result's JSON.
pub fn write_response_with(
    out: &mut Vec<u8>,
    id: &RawValue,
    write_result: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
    write_result(out);
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.push(b'}');
}

/// Writes a success response with an already serialized result.
pub fn write_result(out: &mut Vec<u8>, id: &RawValue, result: &RawValue) {
    write_response_with(out, id, |o| o.extend_from_slice(result.get().as_bytes()));
}

/// Writes an error response; `id` is `None` when it could not be read.
pub fn write_error(out: &mut Vec<u8>, id: Option<&RawValue>, error: &RpcError) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"error\":");
    error.write_json(out);
    out.extend_from_slice(b",\"id\":");
    out.extend_from_slice(id.map_or("null", RawValue::get).as_bytes());
    out.push(b'}');
}

/// Writes a notification `{"jsonrpc":"2.0","method":<method>,"params":<params>}`.
pub fn write_notification(
    out: &mut Vec<u8>,
    method: &str,
    write_params: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":");
    let _ = serde_json::to_writer(&mut *out, method);
    out.extend_from_slice(b",\"params\":");
    write_params(out);
    out.push(b'}');
}

/// Writes a request `{"jsonrpc":"2.0","method":…,"params":…,"id":<id>}` (client side).
pub fn write_request(out: &mut Vec<u8>, method: &str, params: Option<&RawValue>, id: Option<u64>) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"method\":");
    let _ = serde_json::to_writer(&mut *out, method);
    if let Some(p) = params {
        out.extend_from_slice(b",\"params\":");
        out.extend_from_slice(p.get().as_bytes());
    }
    if let Some(id) = id {
        let _ = write!(out, ",\"id\":{id}");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(msg: &str) -> Result<Request<'_>, Invalid<'_>> {
        match parse(msg.as_bytes(), 100) {
            Incoming::Single(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_are_kept_exactly_and_null_differs_from_absent() {
        for id in
            ["1", "-7", "1.50", "1e3", "\"abc\"", "\"\\u0041\"", "null", "12345678901234567890123"]
        {
            let msg = format!(r#"{{"jsonrpc":"2.0","method":"m","id":{id}}}"#);
            let req = single(&msg).unwrap();
            assert_eq!(req.id.unwrap().get(), id);
        }
        assert!(single(r#"{"jsonrpc":"2.0","method":"m"}"#).unwrap().is_notification());
    }

    #[test]
    fn invalid_shapes_are_invalid_requests() {
        let cases = [
            r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#,
            r#"{"jsonrpc":"1.0","method":"m","id":1}"#,
            r#"{"method":"m","id":1}"#,
            r#"{"jsonrpc":"2.0","method":"m","params":3,"id":1}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":{"a":1}}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":[1]}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":true}"#,
            r#"{"jsonrpc":"2.0","method":"m","method":"n","id":1}"#,
            r#"1"#,
            r#""a string""#,
        ];
        for c in cases {
            let err = single(c).unwrap_err();
            assert_eq!(err.error.code, -32600, "{c}");
        }
        // A valid id is echoed even when the rest is invalid.
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","method":5,"id":"x"}"#).unwrap_err().id.unwrap().get(),
            "\"x\""
        );
    }

    #[test]
    fn parse_errors_and_batches() {
        assert!(
            matches!(parse(b"{\"jsonrpc\": \"2.0\", \"method\": \"foobar, \"params\": \"bar\", \"baz]", 100), Incoming::Unanswerable(e) if e.code == -32700)
        );
        assert!(matches!(parse(b"", 100), Incoming::Unanswerable(e) if e.code == -32700));
        assert!(matches!(parse(b"[]", 100), Incoming::Unanswerable(e) if e.code == -32600));
        assert!(matches!(parse(b" [ ] ", 100), Incoming::Unanswerable(e) if e.code == -32600));
        assert!(matches!(parse(b"[1", 100), Incoming::Unanswerable(e) if e.code == -32700));
        match parse(b"[1,2,3]", 100) {
            Incoming::Batch(v) => {
                assert!(v.iter().all(|e| e.as_ref().is_err_and(|i| i.error.code == -32600)))
            }
            other => panic!("{other:?}"),
        }
        // At the limit a batch is parsed; one entry more and it is refused whole, even when
        // the entries are not requests; a long batch that is not JSON is still a parse error.
        assert!(matches!(parse(b"[1,2,3]", 3), Incoming::Batch(v) if v.len() == 3));
        match parse(b"[1,2,3,4]", 3) {
            Incoming::Unanswerable(e) => {
                assert_eq!(e.code, -32600);
                assert_eq!(
                    e.data.unwrap().get(),
                    r#"{"entries":4,"limit":"batch entries","max":3}"#
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(b"[1,2,3,4,{]", 3), Incoming::Unanswerable(e) if e.code == -32700));
    }

    #[test]
    fn a_huge_batch_keeps_no_more_than_the_limit() {
        let mut text = b"[0".to_vec();
        for _ in 0..100_000 {
            text.extend_from_slice(b",0");
        }
        text.push(b']');
        let (kept, total) = bounded_array(&text, 100).unwrap();
        assert_eq!((kept.len(), total), (100, 100_001));
        assert!(kept.capacity() <= 128, "only the first entries are kept");
    }

    #[test]
    fn responses_are_written_compactly() {
        let mut out = Vec::new();
        let id: &RawValue = serde_json::from_str("\"a\"").unwrap();
        write_result(&mut out, id, serde_json::from_str::<&RawValue>("[1,2]").unwrap());
        assert_eq!(out, br#"{"jsonrpc":"2.0","result":[1,2],"id":"a"}"#);
        out.clear();
        write_error(&mut out, None, &RpcError::method_not_found());
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":null}"#
        );
    }
}
