//! Who is on the other end of a connection, as far as authentication could tell.

use serde::Serialize;
use serde_json::{Map, Value};

/// The identity a connection was admitted with; it feeds the topic policies.
///
/// Topics keyed by an identity, like `user:0xabc`, are owned by the principal whose `id` is
/// `0xabc` (see [`owns`](Self::owns)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The identity: a JWT `sub`, or the name configured for a static token. Empty when
    /// anonymous.
    pub id: String,
    /// Whether credentials were presented and verified.
    pub authenticated: bool,
    /// The verified JWT claims, when the principal comes from a JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
}

impl Principal {
    /// A connection that presented no credentials.
    pub fn anonymous() -> Self {
        Self { id: String::new(), authenticated: false, claims: None }
    }

    /// A verified identity without claims.
    pub fn authenticated(id: impl Into<String>) -> Self {
        Self { id: id.into(), authenticated: true, claims: None }
    }

    /// Whether this principal owns the topic key `key` (the `0xabc` of `user:0xabc`): it is
    /// authenticated and its id equals `key`, ignoring ASCII case (hex addresses arrive both
    /// checksummed and lowercase). The anonymous principal owns nothing, not even the empty key.
    pub fn owns(&self, key: &str) -> bool {
        self.authenticated && !self.id.is_empty() && self.id.eq_ignore_ascii_case(key)
    }

    /// A verified claim by name, for example `"scope"`.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.as_ref()?.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_owns_nothing() {
        let anonymous = Principal::anonymous();
        assert!(!anonymous.authenticated);
        assert!(!anonymous.owns(""));
        assert!(!anonymous.owns("0xabc"));
        let forged = Principal { id: "0xabc".into(), authenticated: false, claims: None };
        assert!(!forged.owns("0xabc"));
    }

    #[test]
    fn authenticated_owns_its_id_in_any_ascii_case() {
        let alice = Principal::authenticated("0xabc");
        assert!(alice.owns("0xabc"));
        assert!(alice.owns("0xABC"));
        assert!(!alice.owns("0xab"));
        assert!(!alice.owns("0xabcd"));
        assert!(!Principal::authenticated("").owns(""));
    }

    #[test]
    fn serializes_without_absent_claims() {
        let json = serde_json::to_value(Principal::authenticated("svc")).unwrap();
        assert_eq!(json, serde_json::json!({ "id": "svc", "authenticated": true }));
        let mut claims = Map::new();
        claims.insert("scope".into(), "read".into());
        let p = Principal { claims: Some(claims), ..Principal::authenticated("u") };
        assert_eq!(p.claim("scope"), Some(&Value::from("read")));
        assert_eq!(p.claim("exp"), None);
        assert_eq!(serde_json::to_value(&p).unwrap()["claims"]["scope"], "read");
    }
}
