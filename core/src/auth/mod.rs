//! Who may connect, and as whom: origin policy, authenticators, principals, message signing.
//!
//! At the WebSocket handshake (and on every plain HTTP request) a server:
//!
//! 1. checks the `Origin` header with an [`OriginPolicy`] (default: no Origin or a loopback
//!    origin), answering 403 on refusal;
//! 2. builds [`Credentials`] from the `Authorization` header, the `token` query parameter
//!    ([`token_param`]) and the wall-clock time it was given;
//! 3. asks an [`Authenticator`] ([`StaticToken`], [`Hs256Jwt`] or its own) for the
//!    [`Principal`], answering 401 with [`AuthError::www_authenticate`] on refusal, and treats
//!    a request without credentials as [`Principal::anonymous`] unless authentication is
//!    required.
//!
//! [`AuthPolicy::admit`] does all three. The principal then feeds the topic policies. The
//! optional [`MessageSigner`] adds HMAC-SHA256 signatures to JSON-RPC messages.
//!
//! Nothing here reads a clock: the time is `unix_now`, seconds since the Unix epoch, which the
//! caller derives from its injected start time. Secrets and tokens are never logged; refusals
//! are logged at debug level under the target `wsrpc::auth`.

use std::fmt;
use std::sync::Arc;

pub mod credentials;
pub mod error;
pub mod jwt;
pub mod origin;
pub mod principal;
pub mod signing;
pub mod token;

pub use credentials::{Credentials, token_param};
pub use error::AuthError;
pub use jwt::Hs256Jwt;
pub use origin::{OriginAllowList, OriginPatternError, OriginPolicy};
pub use principal::Principal;
pub use signing::{MessageSigner, SignatureError};
pub use token::StaticToken;

/// Turns the credentials of a request into a [`Principal`].
///
/// Returns `Ok(None)` when no credentials were presented (the request is anonymous) and an
/// error when credentials were presented but are not valid (answer 401). Implementations must
/// not panic on any input and must take the time from [`Credentials::unix_now`].
pub trait Authenticator: Send + Sync + 'static {
    /// The principal the credentials prove, `None` if there are none.
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<Option<Principal>, AuthError>;
}

/// The admission rules of a server: origin policy, authenticator, and whether anonymous
/// requests are refused.
///
/// The default allows loopback origins and admits everyone as anonymous.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct AuthPolicy {
    /// Which `Origin`s may connect.
    pub origin: OriginPolicy,
    /// Who checks credentials; without one every request is anonymous.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// Refuse anonymous requests with 401 instead of admitting them.
    pub require_auth: bool,
}

impl AuthPolicy {
    /// Checks the `Origin` header, then the credentials; see [`principal_for`].
    pub fn admit(
        &self,
        origin: Option<&str>,
        creds: &Credentials<'_>,
    ) -> Result<Principal, AuthError> {
        self.origin.check(origin)?;
        principal_for(self.authenticator.as_deref(), self.require_auth, creds)
    }
}

impl fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthPolicy")
            .field("origin", &self.origin)
            .field("authenticator", &self.authenticator.is_some())
            .field("require_auth", &self.require_auth)
            .finish()
    }
}

/// The principal of a request: what `authenticator` proves, else anonymous, or
/// [`AuthError::MissingCredentials`] when `require_auth` is set and nothing was proven.
pub fn principal_for(
    authenticator: Option<&dyn Authenticator>,
    require_auth: bool,
    creds: &Credentials<'_>,
) -> Result<Principal, AuthError> {
    let proven = match authenticator {
        Some(authenticator) => authenticator.authenticate(creds),
        None => Ok(None),
    };
    match proven {
        Ok(Some(principal)) => {
            log::debug!(target: "wsrpc::auth", "authenticated principal={:?}", principal.id);
            Ok(principal)
        }
        Ok(None) if require_auth => {
            log::debug!(target: "wsrpc::auth", "refused error=MissingCredentials status=401");
            Err(AuthError::MissingCredentials)
        }
        Ok(None) => Ok(Principal::anonymous()),
        Err(err) => {
            log::debug!(target: "wsrpc::auth", "refused error={err:?} status={}", err.status());
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(require_auth: bool) -> AuthPolicy {
        AuthPolicy {
            authenticator: Some(Arc::new(StaticToken::new("svc", "s3cret-token"))),
            require_auth,
            ..AuthPolicy::default()
        }
    }

    fn bearer(value: &str) -> Credentials<'_> {
        Credentials { authorization: Some(value), ..Credentials::none(0) }
    }

    #[test]
    fn default_admits_loopback_and_no_origin_as_anonymous() {
        let policy = AuthPolicy::default();
        assert_eq!(policy.admit(None, &Credentials::none(0)), Ok(Principal::anonymous()));
        let creds = bearer("Bearer anything");
        assert_eq!(policy.admit(Some("http://localhost:3000"), &creds), Ok(Principal::anonymous()));
        assert_eq!(policy.admit(Some("https://evil.com"), &creds), Err(AuthError::OriginRefused));
    }

    #[test]
    fn origin_is_checked_before_credentials() {
        let err =
            policy(true).admit(Some("http://localhost.evil.com"), &bearer("Bearer s3cret-token"));
        assert_eq!(err, Err(AuthError::OriginRefused));
        assert_eq!(err.unwrap_err().status(), 403);
    }

    #[test]
    fn require_auth_refuses_anonymous_with_401() {
        let none = Credentials::none(0);
        assert_eq!(policy(false).admit(None, &none), Ok(Principal::anonymous()));
        let err = policy(true).admit(None, &none).unwrap_err();
        assert_eq!((err.clone(), err.status()), (AuthError::MissingCredentials, 401));
        let without_authenticator = AuthPolicy { require_auth: true, ..AuthPolicy::default() };
        assert_eq!(
            without_authenticator.admit(None, &bearer("Bearer s3cret-token")),
            Err(AuthError::MissingCredentials)
        );
    }

    #[test]
    fn presented_credentials_must_be_valid_even_when_not_required() {
        let principal = policy(false).admit(None, &bearer("Bearer s3cret-token")).unwrap();
        assert_eq!(principal, Principal::authenticated("svc"));
        assert_eq!(
            policy(false).admit(None, &bearer("Bearer wrong")),
            Err(AuthError::UnknownToken)
        );
    }

    #[test]
    fn debug_does_not_show_the_authenticator() {
        let shown = format!("{:?}", policy(true));
        assert!(shown.contains("require_auth: true") && !shown.contains("s3cret"), "{shown}");
    }
}
