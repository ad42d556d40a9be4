//! HS256 JSON Web Tokens (RFC 7519 over an RFC 7515 compact JWS).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::Authenticator;
use super::credentials::Credentials;
use super::error::{AuthError, malformed};
use super::principal::Principal;

/// Default clock skew tolerated on `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Default longest token accepted, in bytes, checked before any decoding.
pub const DEFAULT_MAX_JWT_LEN: usize = 8 * 1024;

/// An [`Authenticator`] for HS256 JWTs signed with a shared secret.
///
/// A token is accepted when all of these hold, checked in this order:
/// - it is at most [`DEFAULT_MAX_JWT_LEN`] bytes (see [`with_max_len`](Self::with_max_len));
/// - it is exactly three unpadded base64url parts, `header.payload.signature`;
/// - the header is a JSON object whose `alg` is exactly `"HS256"` (so `none` and every other
///   algorithm are refused), whose `typ`, if present, is `JWT`, and that has no `crit`;
/// - the signature is the HMAC-SHA256 of the ASCII `header.payload`, compared in constant time;
/// - the payload is a JSON object; `exp`, `nbf` and `iat`, where present, are numbers;
/// - `exp` is present (unless [`with_exp_required(false)`](Self::with_exp_required)) and
///   `unix_now < exp + leeway`: a token is expired from the second `exp + leeway` on, as RFC
///   7519 §4.1.4 says the current time must be *before* `exp`;
/// - `nbf`, if present, satisfies `nbf <= unix_now + leeway` (RFC 7519 §4.1.5: on or after);
/// - `iss` equals the expected issuer, if one is set;
/// - `aud` (a string or an array of strings) contains the expected audience, if one is set;
///   a token that names an audience is refused when none is expected (RFC 7519 §4.1.3);
/// - `sub` is a non-empty string: it becomes the [`Principal`]'s id, and all claims become its
///   `claims`.
///
/// The secret should be at least 32 random bytes. `Debug` does not show it.
///
/// ```
/// # use wsrpc_core::auth::Hs256Jwt;
/// let jwt = Hs256Jwt::new(b"a secret of at least 32 random bytes!").with_audience("market-feed");
/// let token = jwt.sign(&serde_json::json!({ "sub": "0xabc", "aud": "market-feed", "exp": 2000 }));
/// assert_eq!(jwt.verify(&token, 1000).unwrap().id, "0xabc");
/// ```
#[derive(Clone)]
pub struct Hs256Jwt {
    mac: Hmac<Sha256>,
    exp_required: bool,
    leeway_secs: u64,
    issuer: Option<String>,
    audience: Option<String>,
    max_len: usize,
}

impl Hs256Jwt {
    /// Verifies and signs with `secret`; `exp` required, [`DEFAULT_LEEWAY_SECS`], any issuer,
    /// no audience.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self {
            mac: Hmac::new_from_slice(secret.as_ref()).expect("HMAC accepts keys of any length"),
            exp_required: true,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            issuer: None,
            audience: None,
            max_len: DEFAULT_MAX_JWT_LEN,
        }
    }

    /// Whether tokens without `exp` are refused (the default) or never expire.
    #[must_use]
    pub fn with_exp_required(mut self, required: bool) -> Self {
        self.exp_required = required;
        self
    }

    /// The clock skew tolerated on `exp` and `nbf`, in seconds.
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway_secs = secs;
        self
    }

    /// Only tokens whose `iss` is exactly `issuer` are accepted.
    #[must_use]
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Only tokens whose `aud` is or contains exactly `audience` are accepted.
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The longest token accepted, in bytes.
    #[must_use]
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Verifies `token` at `unix_now` (seconds since the epoch) and returns its principal.
    pub fn verify(&self, token: &str, unix_now: u64) -> Result<Principal, AuthError> {
        self.verify_token(token, unix_now).inspect_err(|err| {
            // Malformed tokens were logged with their reason already.
            if *err != AuthError::MalformedToken {
                log::debug!(target: "wsrpc::auth", "jwt refused error={err:?}");
            }
        })
    }

    /// A token for `claims` (which should be a JSON object), with the header
    /// `{"alg":"HS256","typ":"JWT"}`; for tests, examples and servers that issue their own.
    pub fn sign(&self, claims: &Value) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
        let tag = self.mac.clone().chain_update(token.as_bytes()).finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    fn verify_token(&self, token: &str, unix_now: u64) -> Result<Principal, AuthError> {
        if token.len() > self.max_len {
            return Err(malformed("jwt too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("jwt is not three dot-separated parts"));
        };
        check_header(&decode_object(header, "jwt header is not a base64url JSON object")?)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| malformed("jwt signature is not base64url"))?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        self.mac
            .clone()
            .chain_update(signing_input.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims = decode_object(payload, "jwt payload is not a base64url JSON object")?;
        self.check_claims(&claims, unix_now)?;
        let id = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            None | Some(Value::String(_)) => return Err(AuthError::MissingClaim("sub")),
            Some(_) => return Err(malformed("jwt sub is not a string")),
        };
        Ok(Principal { id, authenticated: true, claims: Some(claims) })
    }

    fn check_claims(&self, claims: &Map<String, Value>, unix_now: u64) -> Result<(), AuthError> {
        // f64 holds every integer time up to 2^53 exactly, and RFC 7519 allows fractional times.
        let (now, leeway) = (unix_now as f64, self.leeway_secs as f64);
        match numeric_claim(claims, "exp")? {
            Some(exp) if now >= exp + leeway => return Err(AuthError::Expired),
            None if self.exp_required => return Err(AuthError::MissingClaim("exp")),
            _ => {}
        }
        if numeric_claim(claims, "nbf")?.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthError::NotYetValid);
        }
        numeric_claim(claims, "iat")?;
        let iss = claims.get("iss").and_then(Value::as_str);
        if self.issuer.as_deref().is_some_and(|issuer| iss != Some(issuer)) {
            return Err(AuthError::WrongIssuer);
        }
        let audience_ok = match (&self.audience, claims.get("aud")) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(expected), Some(Value::String(aud))) => aud == expected,
            (Some(expected), Some(Value::Array(auds))) => {
                auds.iter().any(|aud| aud.as_str() == Some(expected.as_str()))
            }
            (Some(_), _) => false,
        };
        if !audience_ok {
            return Err(AuthError::WrongAudience);
        }
        Ok(())
    }
}

impl Authenticator for Hs256Jwt {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Option<Principal>, AuthError> {
        match creds.bearer()? {
            Some(token) => self.verify(&token, creds.unix_now).map(Some),
            None => Ok(None),
        }
    }
}

impl fmt::Debug for Hs256Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hs256Jwt")
            .field("exp_required", &self.exp_required)
            .field("leeway_secs", &self.leeway_secs)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

fn decode_object(part: &str, reason: &'static str) -> Result<Map<String, Value>, AuthError> {
    let json = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed(reason))?;
    serde_json::from_slice(&json).map_err(|_| malformed(reason))
}

fn check_header(header: &Map<String, Value>) -> Result<(), AuthError> {
    // Exactly "HS256": the algorithm is pinned by configuration, never chosen by the token.
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(AuthError::WrongAlgorithm);
    }
    let typ_ok = match header.get("typ") {
        None => true,
        Some(Value::String(typ)) => typ.eq_ignore_ascii_case("JWT"),
        Some(_) => false,
    };
    if !typ_ok {
        return Err(malformed("jwt typ is not JWT"));
    }
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: extensions we do not understand must be refused.
        return Err(malformed("jwt crit header not supported"));
    }
    Ok(())
}

fn numeric_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64().map(Some).ok_or_else(|| malformed("jwt time out of range"))
        }
        Some(_) => Err(malformed("jwt time claim is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn jwt() -> Hs256Jwt {
        Hs256Jwt::new(SECRET)
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with an arbitrary header, signed with `key`.
    fn token_with_header(key: &[u8], header: &str, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims.to_string()));
        let mac = Hmac::<Sha256>::new_from_slice(key).unwrap().chain_update(input.as_bytes());
        format!("{input}.{}", b64(mac.finalize().into_bytes()))
    }

    fn claims() -> Value {
        json!({ "sub": "0xabc", "exp": NOW + 60, "scope": "trade" })
    }

    #[test]
    fn valid_token_verifies_into_a_principal_with_claims() {
        let token = jwt().sign(&claims());
        let p = jwt().verify(&token, NOW).unwrap();
        assert_eq!(p.id, "0xabc");
        assert!(p.authenticated);
        assert_eq!(p.claim("scope"), Some(&json!("trade")));
        assert_eq!(Value::Object(p.claims.unwrap()), claims());
    }

    #[test]
    fn jwt_io_example_verifies_with_exp_not_required() {
        const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
            eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
            SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let jwt = Hs256Jwt::new("your-256-bit-secret");
        assert_eq!(jwt.verify(TOKEN, NOW), Err(AuthError::MissingClaim("exp")));
        let p = jwt.clone().with_exp_required(false).verify(TOKEN, NOW).unwrap();
        assert_eq!(p.id, "1234567890");
        assert_eq!(p.claim("name"), Some(&json!("John Doe")));
        let other = Hs256Jwt::new("your-256-bit-secreT").with_exp_required(false);
        assert_eq!(other.verify(TOKEN, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn rfc7515_a1_signature_verifies() {
        // RFC 7515 appendix A.1: its header has a CRLF inside, its payload no `sub`.
        const TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
            eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl\
            LmNvbS9pc19yb290Ijp0cnVlfQ.\
            dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        const KEY: &str = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-\
            1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let key = URL_SAFE_NO_PAD.decode(KEY).unwrap();
        let jwt = Hs256Jwt::new(&key).with_leeway(0);
        // Reaching the `sub` check means the signature and `exp` passed.
        assert_eq!(jwt.verify(TOKEN, 1_300_819_379), Err(AuthError::MissingClaim("sub")));
        assert_eq!(jwt.verify(TOKEN, 1_300_819_380), Err(AuthError::Expired));
        assert_eq!(Hs256Jwt::new(SECRET).verify(TOKEN, 0), Err(AuthError::BadSignature));
    }

    #[test]
    fn expiry_boundary_is_exp_plus_leeway() {
        let token = jwt().sign(&json!({ "sub": "a", "exp": NOW }));
        assert!(jwt().verify(&token, NOW + DEFAULT_LEEWAY_SECS - 1).is_ok());
        assert_eq!(jwt().verify(&token, NOW + DEFAULT_LEEWAY_SECS), Err(AuthError::Expired));
        let strict = jwt().with_leeway(0);
        assert!(strict.verify(&token, NOW - 1).is_ok());
        assert_eq!(strict.verify(&token, NOW), Err(AuthError::Expired));
        let fractional = jwt().sign(&json!({ "sub": "a", "exp": 1000.5 }));
        assert!(strict.verify(&fractional, 1000).is_ok());
        assert_eq!(strict.verify(&fractional, 1001), Err(AuthError::Expired));
    }

    #[test]
    fn not_before_boundary_is_nbf_minus_leeway() {
        let token = jwt().sign(&json!({ "sub": "a", "exp": NOW + 1000, "nbf": NOW + 100 }));
        assert_eq!(jwt().verify(&token, NOW + 69), Err(AuthError::NotYetValid));
        assert!(jwt().verify(&token, NOW + 70).is_ok());
        assert_eq!(jwt().with_leeway(0).verify(&token, NOW + 99), Err(AuthError::NotYetValid));
        assert!(jwt().with_leeway(0).verify(&token, NOW + 100).is_ok());
    }

    #[test]
    fn time_claims_must_be_numbers() {
        for claims in [
            json!({ "sub": "a", "exp": "1800000000" }),
            json!({ "sub": "a", "exp": null }),
            json!({ "sub": "a", "exp": NOW + 60, "nbf": "0" }),
            json!({ "sub": "a", "exp": NOW + 60, "iat": [1] }),
        ] {
            assert_eq!(jwt().verify(&jwt().sign(&claims), NOW), Err(AuthError::MalformedToken));
        }
        let with_iat = jwt().sign(&json!({ "sub": "a", "exp": NOW + 60, "iat": NOW }));
        assert!(jwt().verify(&with_iat, NOW).is_ok());
    }

    #[test]
    fn token_signed_with_another_key_is_refused() {
        let token = Hs256Jwt::new(b"another key").sign(&claims());
        assert_eq!(jwt().verify(&token, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn algorithms_other_than_hs256_are_refused() {
        let unsigned =
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(claims().to_string()));
        assert_eq!(jwt().verify(&unsigned, NOW), Err(AuthError::WrongAlgorithm));
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"HS256 "}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":null}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            let token = token_with_header(SECRET, header, &claims());
            assert_eq!(jwt().verify(&token, NOW), Err(AuthError::WrongAlgorithm), "{header}");
        }
    }

    #[test]
    fn header_typ_and_crit_are_checked() {
        for header in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"jwt"}"#,
            r#"{"alg":"HS256","kid":"k1"}"#,
        ] {
            let token = token_with_header(SECRET, header, &claims());
            assert!(jwt().verify(&token, NOW).is_ok(), "{header}");
        }
        for header in [
            r#"{"alg":"HS256","typ":"JWS"}"#,
            r#"{"alg":"HS256","typ":1}"#,
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"["HS256"]"#,
        ] {
            let token = token_with_header(SECRET, header, &claims());
            assert_eq!(jwt().verify(&token, NOW), Err(AuthError::MalformedToken), "{header}");
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let token = jwt().sign(&claims());
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for (i, c) in token.char_indices().filter(|&(_, c)| c != '.') {
            let replacement = alphabet.chars().find(|&r| r != c).unwrap();
            let mut tampered = token.clone();
            tampered.replace_range(i..=i, replacement.encode_utf8(&mut [0; 4]));
            assert!(jwt().verify(&tampered, NOW).is_err(), "change at {i}");
        }
    }

    #[test]
    fn swapped_payload_is_a_bad_signature() {
        let token = jwt().sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = json!({ "sub": "0xdef", "exp": NOW + 60, "scope": "trade" });
        let tampered = format!("{}.{}.{}", parts[0], b64(forged.to_string()), parts[2]);
        assert_eq!(jwt().verify(&tampered, NOW), Err(AuthError::BadSignature));
        let header = b64(r#"{"alg":"HS256","typ":"JWT","kid":"x"}"#);
        let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
        assert_eq!(jwt().verify(&tampered, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn structure_padding_and_alphabet_errors_are_malformed() {
        let token = jwt().sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let (h, p, s) = (parts[0], parts[1], parts[2]);
        for bad in [
            String::new(),
            "..".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.{s}."),
            format!("{h}.{p}.{s}.{s}"),
            format!("{h}={p}.{s}"),
            format!("{h}=.{p}.{s}"),
            format!("{h}.{p}.{s}="),
            format!("{h}.{p}.{s}=="),
            format!("{h}+.{p}.{s}"),
            format!("{h}.{p}.{}", s.replacen(|c: char| c.is_ascii_alphabetic(), "/", 1)),
            format!("{h}.{p}.{}*", &s[..s.len() - 1]),
            format!("{h}.{p}.{s} "),
            format!("{}.{p}.{s}", b64([0xff, 0xfe])),
            format!("{}.{p}.{s}", b64("not json")),
        ] {
            assert_eq!(jwt().verify(&bad, NOW), Err(AuthError::MalformedToken), "{bad:?}");
        }
    }

    #[test]
    fn changes_to_the_signed_text_fail_the_signature_before_the_payload_is_read() {
        let token = jwt().sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let (h, p, s) = (parts[0], parts[1], parts[2]);
        for bad in [
            format!("{h}.{p}=.{s}"),
            format!("{h}.{}.{s}", p.replacen('e', "+", 1)),
            format!("{h}.{p} .{s}"),
            format!("{h}.{}.{s}", b64("not json")),
            format!("{h}.{}.{s}", &p[..p.len() - 1]),
        ] {
            assert_eq!(jwt().verify(&bad, NOW), Err(AuthError::BadSignature), "{bad:?}");
        }
    }

    #[test]
    fn signed_payload_that_is_not_a_json_object_is_malformed() {
        for payload in [json!([1, 2]), json!("sub"), json!(null)] {
            let token = token_with_header(SECRET, r#"{"alg":"HS256"}"#, &payload);
            assert_eq!(jwt().verify(&token, NOW), Err(AuthError::MalformedToken), "{payload}");
        }
    }

    #[test]
    fn huge_token_is_refused_before_decoding() {
        let big = json!({ "sub": "a", "exp": NOW + 60, "pad": "x".repeat(DEFAULT_MAX_JWT_LEN) });
        let token = jwt().sign(&big);
        assert!(token.len() > DEFAULT_MAX_JWT_LEN);
        assert_eq!(jwt().verify(&token, NOW), Err(AuthError::MalformedToken));
        assert!(jwt().with_max_len(token.len()).verify(&token, NOW).is_ok());
        let garbage = "a".repeat(1 << 20);
        assert_eq!(jwt().verify(&garbage, NOW), Err(AuthError::MalformedToken));
    }

    #[test]
    fn subject_is_required() {
        for claims in [json!({ "exp": NOW + 60 }), json!({ "sub": "", "exp": NOW + 60 })] {
            assert_eq!(
                jwt().verify(&jwt().sign(&claims), NOW),
                Err(AuthError::MissingClaim("sub"))
            );
        }
        let numeric = jwt().sign(&json!({ "sub": 42, "exp": NOW + 60 }));
        assert_eq!(jwt().verify(&numeric, NOW), Err(AuthError::MalformedToken));
    }

    #[test]
    fn issuer_must_match_when_expected() {
        let jwt = jwt().with_issuer("https://issuer.example");
        let sign = |iss: Value| jwt.sign(&json!({ "sub": "a", "exp": NOW + 60, "iss": iss }));
        assert!(jwt.verify(&sign(json!("https://issuer.example")), NOW).is_ok());
        for iss in [
            json!("https://issuer.example/"),
            json!("other"),
            json!(null),
            json!(["https://issuer.example"]),
        ] {
            assert_eq!(jwt.verify(&sign(iss.clone()), NOW), Err(AuthError::WrongIssuer), "{iss}");
        }
        let without = jwt.sign(&json!({ "sub": "a", "exp": NOW + 60 }));
        assert_eq!(jwt.verify(&without, NOW), Err(AuthError::WrongIssuer));
    }

    #[test]
    fn audience_must_be_or_contain_the_expected_one() {
        let jwt = jwt().with_audience("wsrpc");
        let sign = |aud: Value| jwt.sign(&json!({ "sub": "a", "exp": NOW + 60, "aud": aud }));
        assert!(jwt.verify(&sign(json!("wsrpc")), NOW).is_ok());
        assert!(jwt.verify(&sign(json!(["other", "wsrpc"])), NOW).is_ok());
        for aud in
            [json!("other"), json!("WSRPC"), json!(["other"]), json!([]), json!(5), json!(null)]
        {
            assert_eq!(jwt.verify(&sign(aud.clone()), NOW), Err(AuthError::WrongAudience), "{aud}");
        }
        let without = jwt.sign(&json!({ "sub": "a", "exp": NOW + 60 }));
        assert_eq!(jwt.verify(&without, NOW), Err(AuthError::WrongAudience));
    }

    #[test]
    fn audience_is_refused_when_none_is_expected() {
        let token = jwt().sign(&json!({ "sub": "a", "exp": NOW + 60, "aud": "someone-else" }));
        assert_eq!(jwt().verify(&token, NOW), Err(AuthError::WrongAudience));
    }

    #[test]
    fn authenticator_reads_header_or_query_with_the_given_time() {
        let token = jwt().sign(&claims());
        let header = format!("Bearer {token}");
        let creds = Credentials { authorization: Some(&header), ..Credentials::none(NOW) };
        assert_eq!(jwt().authenticate(&creds).unwrap().unwrap().id, "0xabc");
        let creds = Credentials { query_token: Some(&token), ..Credentials::none(NOW + 1000) };
        assert_eq!(jwt().authenticate(&creds), Err(AuthError::Expired));
        assert_eq!(jwt().authenticate(&Credentials::none(NOW)), Ok(None));
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", Hs256Jwt::new("hunter2-secret").with_issuer("iss"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("iss"), "{shown}");
    }
}
