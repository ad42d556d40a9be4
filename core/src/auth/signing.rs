//! Optional HMAC-SHA256 signatures over JSON-RPC requests and responses (off by default).
//!
//! Both peers share a secret key. A signature is the lowercase hex of HMAC-SHA256 (RFC 2104,
//! FIPS 180-4) keyed with that secret, over UTF-8 text built from the message:
//!
//! - request: `method + "\n" + id_raw + "\n" + params_raw`
//! - response: `id_raw + "\n" + body_raw`
//!
//! where `method` is the decoded method name (`eth_call`, not `"eth_call"`), and the `*_raw`
//! parts are the exact JSON texts of the members as they appear in the message, byte for byte,
//! without surrounding whitespace: `1` for the id 1, `"a"` for the id "a", `null` when the id
//! or params member is absent (a notification, a call without params), and `body_raw` is the
//! text of the `result` or `error` member's value. Nothing is re-serialized, so both sides
//! must sign the text that actually goes on the wire. A verifier accepts upper- or lowercase
//! hex. The method name must not contain a newline, so the parts cannot be shifted; a request
//! with one fails verification.
//!
//! Requests and responses share the key without a domain prefix, so a request text could equal
//! a response text only if the response body were `id_raw \n params_raw`, two JSON values,
//! which no JSON parser accepts as a body.
//!
//! Where the signature travels (a member of the message, for example) is the RPC layer's
//! business; this module only computes and checks it. Test vector, key `wsrpc-test-key`:
//!
//! ```text
//! request  eth_call / 1 / [{"to":"0x00"},"latest"]
//!          b413c85a3182f36a40264fdf48e17984c7ae2ed095f16f1c8619274daa112747
//! response 1 / {"balance":"0x10"}
//!          3391ca414f5d98b0369db7c81843c8a6a7fbd098361b2c80b778270b5ffcf585
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::credentials::hex_array;

/// JSON-RPC error code for a request whose signature is missing, malformed or wrong (the
/// RPC layer's `BAD_SIGNATURE`; repeated here so this module stays a leaf).
pub const SIGNATURE_ERROR_CODE: i64 = -32004;

/// Signs and verifies JSON-RPC messages with a shared key; see the [module docs](self) for
/// the scheme.
///
/// `Debug` does not show the key.
#[derive(Clone)]
pub struct MessageSigner {
    mac: Hmac<Sha256>,
}

impl MessageSigner {
    /// A signer keyed with `key` (at least 32 random bytes recommended).
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self { mac: Hmac::new_from_slice(key.as_ref()).expect("HMAC accepts keys of any length") }
    }

    /// The signature of a request: lowercase hex of HMAC-SHA256 over
    /// `method \n id_raw \n params_raw`.
    pub fn sign_request(&self, method: &str, id_raw: &str, params_raw: &str) -> String {
        hex(&self.request_mac(method, id_raw, params_raw).finalize().into_bytes())
    }

    /// Checks a request signature in constant time.
    pub fn verify_request(
        &self,
        method: &str,
        id_raw: &str,
        params_raw: &str,
        signature_hex: &str,
    ) -> Result<(), SignatureError> {
        if method.contains('\n') || id_raw.contains('\n') {
            return Err(log_refusal(SignatureError::Malformed));
        }
        verify(self.request_mac(method, id_raw, params_raw), signature_hex)
    }

    /// The signature of a response: lowercase hex of HMAC-SHA256 over `id_raw \n body_raw`.
    pub fn sign_response(&self, id_raw: &str, body_raw: &str) -> String {
        hex(&self.response_mac(id_raw, body_raw).finalize().into_bytes())
    }

    /// Checks a response signature in constant time.
    pub fn verify_response(
        &self,
        id_raw: &str,
        body_raw: &str,
        signature_hex: &str,
    ) -> Result<(), SignatureError> {
        if id_raw.contains('\n') {
            return Err(log_refusal(SignatureError::Malformed));
        }
        verify(self.response_mac(id_raw, body_raw), signature_hex)
    }

    fn request_mac(&self, method: &str, id_raw: &str, params_raw: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [method, "\n", id_raw, "\n", params_raw] {
            mac.update(part.as_bytes());
        }
        mac
    }

    fn response_mac(&self, id_raw: &str, body_raw: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [id_raw, "\n", body_raw] {
            mac.update(part.as_bytes());
        }
        mac
    }
}

impl fmt::Debug for MessageSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSigner").finish_non_exhaustive()
    }
}

/// Why a message signature was refused.
///
/// A request is answered with a JSON-RPC error of code [`SIGNATURE_ERROR_CODE`]
/// ([`rpc_code`](Self::rpc_code)); a response is dropped by the client that checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature is not 64 hex digits, or the signed parts contain a forbidden newline.
    Malformed,
    /// The signature does not match the message.
    Mismatch,
}

impl SignatureError {
    /// The JSON-RPC error code a server answers a badly signed request with.
    pub fn rpc_code(&self) -> i64 {
        SIGNATURE_ERROR_CODE
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed message signature",
            Self::Mismatch => "message signature does not match",
        })
    }
}

impl std::error::Error for SignatureError {}

fn verify(mac: Hmac<Sha256>, signature_hex: &str) -> Result<(), SignatureError> {
    let Some(tag) = unhex(signature_hex) else {
        return Err(log_refusal(SignatureError::Malformed));
    };
    mac.verify_slice(&tag).map_err(|_| log_refusal(SignatureError::Mismatch))
}

fn log_refusal(err: SignatureError) -> SignatureError {
    log::debug!(target: "wsrpc::auth", "message signature refused error={err:?}");
    err
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// Decodes exactly 64 hex digits; the signature is public, so this need not be constant time.
fn unhex(text: &str) -> Option<[u8; 32]> {
    hex_array(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST_SIG: &str = "b413c85a3182f36a40264fdf48e17984c7ae2ed095f16f1c8619274daa112747";
    const RESPONSE_SIG: &str = "3391ca414f5d98b0369db7c81843c8a6a7fbd098361b2c80b778270b5ffcf585";
    const NOTIFICATION_SIG: &str =
        "e9c5a409f9c93d5d5300b397c8312d041ea99b32c925325e9336f8a9650c7a80";
    const PARAMS: &str = r#"[{"to":"0x00"},"latest"]"#;

    fn signer() -> MessageSigner {
        MessageSigner::new("wsrpc-test-key")
    }

    #[test]
    fn request_and_response_match_the_fixed_vectors() {
        // Computed independently with Python's hmac module.
        assert_eq!(signer().sign_request("eth_call", "1", PARAMS), REQUEST_SIG);
        assert_eq!(signer().sign_response("1", r#"{"balance":"0x10"}"#), RESPONSE_SIG);
        assert_eq!(signer().sign_request("rpc.health", r#""abc""#, "null"), NOTIFICATION_SIG);
    }

    #[test]
    fn vectors_verify_in_either_hex_case() {
        assert_eq!(signer().verify_request("eth_call", "1", PARAMS, REQUEST_SIG), Ok(()));
        let upper = REQUEST_SIG.to_ascii_uppercase();
        assert_eq!(signer().verify_request("eth_call", "1", PARAMS, &upper), Ok(()));
        assert_eq!(signer().verify_response("1", r#"{"balance":"0x10"}"#, RESPONSE_SIG), Ok(()));
    }

    #[test]
    fn any_change_to_the_signed_text_is_a_mismatch() {
        let mismatch = Err(SignatureError::Mismatch);
        let s = signer();
        assert_eq!(s.verify_request("eth_calL", "1", PARAMS, REQUEST_SIG), mismatch);
        assert_eq!(s.verify_request("eth_call", "2", PARAMS, REQUEST_SIG), mismatch);
        assert_eq!(s.verify_request("eth_call", r#""1""#, PARAMS, REQUEST_SIG), mismatch);
        assert_eq!(s.verify_request("eth_call", "1.0", PARAMS, REQUEST_SIG), mismatch);
        let spaced = r#"[{"to": "0x00"},"latest"]"#;
        assert_eq!(s.verify_request("eth_call", "1", spaced, REQUEST_SIG), mismatch);
        assert_eq!(s.verify_response("1", r#"{"balance":"0x11"}"#, RESPONSE_SIG), mismatch);
        let other = MessageSigner::new("wsrpc-test-keY");
        assert_eq!(other.verify_request("eth_call", "1", PARAMS, REQUEST_SIG), mismatch);
        let mut flipped = REQUEST_SIG.to_owned();
        flipped.replace_range(63.., "8");
        assert_eq!(s.verify_request("eth_call", "1", PARAMS, &flipped), mismatch);
    }

    #[test]
    fn request_texts_match_response_texts_only_with_a_body_that_is_not_json() {
        let sig = signer().sign_request("1", "2", "3");
        assert_eq!(signer().verify_response("1", "2\n3", &sig), Ok(()), "the documented overlap");
        assert!(serde_json::from_str::<serde_json::Value>("2\n3").is_err());
        assert_eq!(signer().verify_response("1", "2", &sig), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_signatures_and_newlines_are_refused() {
        let s = signer();
        for sig in [
            "",
            "00",
            &REQUEST_SIG[..63],
            &format!("{REQUEST_SIG}0"),
            &REQUEST_SIG.replace('b', "g"),
        ] {
            assert_eq!(
                s.verify_request("eth_call", "1", PARAMS, sig),
                Err(SignatureError::Malformed),
                "{sig}"
            );
        }
        let with_space = format!(" {}", &REQUEST_SIG[1..]);
        assert_eq!(
            s.verify_request("eth_call", "1", PARAMS, &with_space),
            Err(SignatureError::Malformed)
        );
        let sig = s.sign_request("a\nb", "1", "null");
        assert_eq!(s.verify_request("a\nb", "1", "null", &sig), Err(SignatureError::Malformed));
        let sig = s.sign_response("1\n", "null");
        assert_eq!(s.verify_response("1\n", "null", &sig), Err(SignatureError::Malformed));
        assert_eq!(SignatureError::Mismatch.rpc_code(), -32004);
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..32).map(|i| i * 8 + 1).collect();
        let text = hex(&bytes);
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(unhex(&text).map(Vec::from), Some(bytes));
    }
}
