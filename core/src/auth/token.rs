//! Static bearer tokens, each mapped to a principal id.

use std::fmt;

use hmac::digest::CtOutput;
use sha2::{Digest, Sha256};

use super::Authenticator;
use super::credentials::Credentials;
use super::error::AuthError;
use super::principal::Principal;

/// An [`Authenticator`] that accepts a fixed set of bearer tokens.
///
/// Only the SHA-256 digest of each token is kept, and a presented token is compared with every
/// digest in constant time, so neither timing nor a memory dump reveals the tokens. Tokens
/// should be long random strings (at least 128 bits of entropy); `Debug` shows only the
/// principal ids.
///
/// ```
/// # use wsrpc_core::auth::{Authenticator, Credentials, StaticToken};
/// let auth = StaticToken::new("deployer", "tok-1").with_token("monitor", "tok-2");
/// let creds = Credentials { authorization: Some("Bearer tok-2"), ..Credentials::none(0) };
/// assert_eq!(auth.authenticate(&creds).unwrap().unwrap().id, "monitor");
/// ```
#[derive(Clone)]
pub struct StaticToken {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    digest: CtOutput<Sha256>,
    principal_id: String,
}

impl StaticToken {
    /// Accepts `token` as the principal `principal_id`.
    pub fn new(principal_id: impl Into<String>, token: impl AsRef<[u8]>) -> Self {
        Self { entries: Vec::new() }.with_token(principal_id, token)
    }

    /// Also accepts `token` as the principal `principal_id`.
    #[must_use]
    pub fn with_token(mut self, principal_id: impl Into<String>, token: impl AsRef<[u8]>) -> Self {
        let digest = CtOutput::new(Sha256::digest(token.as_ref()));
        self.entries.push(Entry { digest, principal_id: principal_id.into() });
        self
    }

    /// The principal of a presented token, or [`AuthError::UnknownToken`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let presented = CtOutput::new(Sha256::digest(token.as_bytes()));
        // Every entry is compared, no early exit, so timing does not tell which one matched.
        let matched = self.entries.iter().fold(None, |found, entry| {
            let equal = entry.digest == presented;
            if equal && found.is_none() { Some(entry) } else { found }
        });
        matched.map(|entry| Principal::authenticated(&entry.principal_id)).ok_or_else(|| {
            log::debug!(target: "wsrpc::auth", "token refused error=unknown_token");
            AuthError::UnknownToken
        })
    }
}

impl Authenticator for StaticToken {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Option<Principal>, AuthError> {
        match creds.bearer()? {
            Some(token) => self.verify(&token).map(Some),
            None => Ok(None),
        }
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.entries.iter().map(|e| &e.principal_id);
        f.debug_struct("StaticToken").field("principals", &ids.collect::<Vec<_>>()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> StaticToken {
        StaticToken::new("deployer", "tok-deploy-1").with_token("monitor", "tok+monitor/2")
    }

    fn header(value: &str) -> Credentials<'_> {
        Credentials { authorization: Some(value), ..Credentials::none(0) }
    }

    #[test]
    fn right_tokens_map_to_their_principals() {
        let auth = auth();
        let p = auth.authenticate(&header("Bearer tok-deploy-1")).unwrap().unwrap();
        assert_eq!(p, Principal::authenticated("deployer"));
        let p = auth.authenticate(&header("bearer tok+monitor/2")).unwrap().unwrap();
        assert_eq!(p.id, "monitor");
    }

    #[test]
    fn wrong_tokens_are_unknown() {
        let auth = auth();
        for value in [
            "Bearer tok-deploy-2",
            "Bearer tok-deploy-1x",
            "Bearer tok-deploy-",
            "Bearer TOK-DEPLOY-1",
        ] {
            assert_eq!(auth.authenticate(&header(value)), Err(AuthError::UnknownToken), "{value}");
        }
    }

    #[test]
    fn missing_token_is_anonymous_and_empty_is_malformed() {
        let auth = auth();
        assert_eq!(auth.authenticate(&Credentials::none(0)), Ok(None));
        assert_eq!(auth.authenticate(&header("Basic dXNlcjpwYXNz")), Ok(None));
        assert_eq!(auth.authenticate(&header("Bearer ")), Err(AuthError::MalformedToken));
    }

    #[test]
    fn query_token_is_decoded_before_comparison() {
        let auth = auth();
        let creds = Credentials { query_token: Some("tok%2Bmonitor%2F2"), ..Credentials::none(0) };
        assert_eq!(auth.authenticate(&creds).unwrap().unwrap().id, "monitor");
        let creds = Credentials { query_token: Some("tok%2Bmonitor%2F3"), ..Credentials::none(0) };
        assert_eq!(auth.authenticate(&creds), Err(AuthError::UnknownToken));
        let creds = Credentials { query_token: Some("tok%2"), ..Credentials::none(0) };
        assert_eq!(auth.authenticate(&creds), Err(AuthError::MalformedToken));
    }

    #[test]
    fn debug_shows_ids_not_tokens() {
        let shown = format!("{:?}", auth());
        assert!(shown.contains("deployer") && shown.contains("monitor"), "{shown}");
        assert!(!shown.contains("tok"), "{shown}");
    }
}
