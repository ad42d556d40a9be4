//! JSON-RPC 2.0 error objects and the codes this crate answers with.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use serde::Serialize;
use serde_json::value::RawValue;

/// -32700: the message is not valid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// -32600: valid JSON but not a valid request object (or an empty batch).
pub const INVALID_REQUEST: i64 = -32600;
/// -32601: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// -32602: the params do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// -32603: the server failed while handling a valid call.
pub const INTERNAL_ERROR: i64 = -32603;
/// -32005: a rate, size or count limit was exceeded; `data.retry_after_ms` says when to retry
/// when waiting helps.
pub const LIMIT_EXCEEDED: i64 = -32005;
/// -32003: the principal may not do this (topic policy, missing authentication).
pub const FORBIDDEN: i64 = -32003;
/// -32002: a resource the call needs is unavailable now, such as the broker that a topic
/// shared between server instances goes through (EIP-1474's "resource unavailable").
pub const UNAVAILABLE: i64 = -32002;
/// -32004: the message signature is missing or wrong (when signing is enabled).
pub const BAD_SIGNATURE: i64 = -32004;
/// First code of the range reserved for implementation-defined server errors.
pub const SERVER_ERROR_FIRST: i64 = -32099;
/// Last code of the range reserved for implementation-defined server errors.
pub const SERVER_ERROR_LAST: i64 = -32000;

/// A JSON-RPC error object: what a handler returns to fail a call, and what goes on the wire.
#[derive(Clone, Debug)]
pub struct RpcError {
    /// The error code.
    pub code: i64,
    /// A short description.
    pub message: Cow<'static, str>,
    /// Optional structured detail, already serialized.
    pub data: Option<Box<RawValue>>,
}

impl RpcError {
    /// An error with any code.
    pub fn new(code: i64, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    /// -32700 parse error, exactly as the specification shows it (the detail goes to the log,
    /// target `wsrpc::rpc`).
    pub fn parse_error(detail: impl fmt::Display) -> Self {
        log::debug!(target: "wsrpc::rpc", "parse error: {detail}");
        Self::new(PARSE_ERROR, "Parse error")
    }

    /// -32600 invalid request, exactly as the specification shows it (the detail goes to the
    /// log, target `wsrpc::rpc`).
    pub fn invalid_request(detail: impl fmt::Display) -> Self {
        log::debug!(target: "wsrpc::rpc", "invalid request: {detail}");
        Self::new(INVALID_REQUEST, "Invalid Request")
    }

    /// -32601 method not found.
    pub fn method_not_found() -> Self {
        Self::new(METHOD_NOT_FOUND, "Method not found")
    }

    /// -32602 invalid params; the message names what was wrong.
    pub fn invalid_params(detail: impl fmt::Display) -> Self {
        Self::new(INVALID_PARAMS, format!("Invalid params: {detail}"))
    }

    /// -32603 internal error. The detail goes to the log (target `wsrpc::rpc`), never to the
    /// peer: it may describe the server's insides.
    pub fn internal(detail: impl fmt::Display) -> Self {
        log::error!(target: "wsrpc::rpc", "internal error: {detail}");
        Self::new(INTERNAL_ERROR, "Internal error")
    }

    /// A server error in -32000..=-32099.
    ///
    /// # Panics
    /// If `code` is outside that range (a bug in the caller).
    pub fn server(code: i64, message: impl Into<Cow<'static, str>>) -> Self {
        assert!(
            (SERVER_ERROR_FIRST..=SERVER_ERROR_LAST).contains(&code),
            "server error codes are -32099..=-32000, got {code}"
        );
        Self::new(code, message)
    }

    /// -32005 limit exceeded, with `{"retry_after_ms": N}` in `data`.
    pub fn limit_exceeded(what: &str, retry_after_ms: u64) -> Self {
        Self::new(LIMIT_EXCEEDED, format!("Limit exceeded: {what}"))
            .with_raw_data(format!("{{\"retry_after_ms\":{retry_after_ms}}}"))
    }

    /// -32005 for a count limit (no waiting helps): `{"limit": what, "max": N}` in `data`.
    pub fn count_limit(what: &'static str, max: usize) -> Self {
        let data = serde_json::json!({ "limit": what, "max": max });
        Self::new(LIMIT_EXCEEDED, format!("Limit exceeded: {what}")).with_data(data)
    }

    /// -32003 forbidden.
    pub fn forbidden(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(FORBIDDEN, detail)
    }

    /// Attaches serializable `data`.
    pub fn with_data(mut self, data: impl Serialize) -> Self {
        self.data = serde_json::value::to_raw_value(&data).ok();
        self
    }

    /// Attaches `data` that is already JSON text; invalid JSON is dropped.
    pub fn with_raw_data(mut self, json: String) -> Self {
        self.data = RawValue::from_string(json).ok();
        self
    }

    /// Writes the error object (`{"code":…,"message":…[,"data":…]}`) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{{\"code\":{}", self.code);
        out.extend_from_slice(b",\"message\":");
        // Serializing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self.message.as_ref());
        if let Some(data) = &self.data {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.get().as_bytes());
        }
        out.push(b'}');
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(d) = &self.data {
            write!(f, ": {}", d.get())?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

impl PartialEq for RpcError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
            && self.message == other.message
            && self.data.as_ref().map(|d| d.get()) == other.data.as_ref().map(|d| d.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_objects_serialize_with_optional_data() {
        let mut out = Vec::new();
        RpcError::method_not_found().write_json(&mut out);
        assert_eq!(out, br#"{"code":-32601,"message":"Method not found"}"#);
        out.clear();
        RpcError::limit_exceeded("calls", 250).write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["code"], -32005);
        assert_eq!(v["data"]["retry_after_ms"], 250);
        out.clear();
        RpcError::new(1, "quote \" and \\ and \n").write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], "quote \" and \\ and \n");
    }

    #[test]
    fn internal_errors_keep_their_detail_off_the_wire() {
        let mut out = Vec::new();
        RpcError::internal("connection to 10.0.0.7:5432 refused").write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"code":-32603,"message":"Internal error"}"#
        );
    }

    #[test]
    #[should_panic(expected = "server error codes")]
    fn server_errors_stay_in_their_range() {
        let _ = RpcError::server(-31999, "no");
    }
}
