//! Errors of the auth layer. Each one says what goes on the wire.

use std::fmt;

/// Why a request was refused at the handshake or on a plain HTTP request.
///
/// [`status`](Self::status) is the HTTP status to answer with: 403 for a refused origin, 401 for
/// everything about credentials, in which case [`www_authenticate`](Self::www_authenticate) is
/// the `WWW-Authenticate` header value to send with it. The details stay in the server log; the
/// peer only learns the status and the RFC 6750 error code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The `Origin` header is not allowed by the [`OriginPolicy`](super::OriginPolicy) (403).
    OriginRefused,
    /// No credentials were presented and the policy requires them (401).
    MissingCredentials,
    /// The bearer token is not a well-formed token: bad encoding, bad JSON, too long (401).
    MalformedToken,
    /// The JWT signature does not match (401).
    BadSignature,
    /// The JWT `exp` has passed, leeway included (401).
    Expired,
    /// The JWT `nbf` is still in the future, leeway included (401).
    NotYetValid,
    /// The JWT header names an algorithm other than `HS256`, or none at all (401).
    WrongAlgorithm,
    /// The JWT `iss` is not the expected issuer (401).
    WrongIssuer,
    /// The JWT `aud` does not contain the expected audience (401).
    WrongAudience,
    /// A claim this authenticator requires is absent; names the claim (401).
    MissingClaim(&'static str),
    /// The static token matches none of the configured tokens (401).
    UnknownToken,
}

impl AuthError {
    /// The HTTP status a server answers this error with: 403 or 401.
    pub fn status(&self) -> u16 {
        match self {
            Self::OriginRefused => 403,
            _ => 401,
        }
    }

    /// The `WWW-Authenticate` value to send with a 401 (RFC 6750 §3), `None` for a 403.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::OriginRefused => None,
            // RFC 6750 §3.1: a request without credentials gets no error code.
            Self::MissingCredentials => Some("Bearer"),
            _ => Some("Bearer error=\"invalid_token\""),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OriginRefused => f.write_str("origin not allowed"),
            Self::MissingCredentials => f.write_str("credentials required"),
            Self::MalformedToken => f.write_str("malformed bearer token"),
            Self::BadSignature => f.write_str("token signature does not match"),
            Self::Expired => f.write_str("token expired"),
            Self::NotYetValid => f.write_str("token not yet valid"),
            Self::WrongAlgorithm => f.write_str("token algorithm is not HS256"),
            Self::WrongIssuer => f.write_str("token issuer not accepted"),
            Self::WrongAudience => f.write_str("token audience not accepted"),
            Self::MissingClaim(claim) => write!(f, "token lacks the {claim:?} claim"),
            Self::UnknownToken => f.write_str("unknown token"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Logs why a token is malformed (the variant alone does not say) and returns the error.
pub(crate) fn malformed(reason: &'static str) -> AuthError {
    log::debug!(target: "wsrpc::auth", "token refused error=malformed reason={reason:?}");
    AuthError::MalformedToken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_403_without_challenge_and_the_rest_401_with_one() {
        assert_eq!(AuthError::OriginRefused.status(), 403);
        assert_eq!(AuthError::OriginRefused.www_authenticate(), None);
        assert_eq!(AuthError::MissingCredentials.status(), 401);
        assert_eq!(AuthError::MissingCredentials.www_authenticate(), Some("Bearer"));
        for err in [
            AuthError::MalformedToken,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongAlgorithm,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingClaim("sub"),
            AuthError::UnknownToken,
        ] {
            assert_eq!(err.status(), 401, "{err}");
            assert_eq!(err.www_authenticate(), Some("Bearer error=\"invalid_token\""), "{err}");
        }
    }
}
