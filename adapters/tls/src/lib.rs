//! rustls for the wsrpc adapters: the crypto provider this build chose, client trust,
//! server configurations from PEM, the typed setter that puts a `rustls::ClientConfig` into
//! the core's `ClientOptions`, the mapping of rustls errors onto the core's typed
//! [`TlsError`], and the first-byte sniff that tells a TLS hello from plain HTTP.
//!
//! Applications reach it as `tls` in their adapter (`wsrpc_smol::tls`,
//! `wsrpc_blocking::tls`, …). A `wss://` server with a certificate loaded from PEM, and a
//! client that trusts that certificate only (a private CA is given the same way):
//!
//! ```
//! use std::time::Duration;
//! use wsrpc_blocking::tls::{self, RootCertStore};
//! use wsrpc_blocking::{ClientOptions, Router, Server, TlsOptions, connect};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Made here; an application loads its own with `tls::server_config_from_pem_files`.
//!     let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
//!     let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
//!     let server_tls = tls::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
//!
//!     let mut router = Router::new();
//!     router.method("add", |(a, b): (i64, i64), _ctx| Ok(a + b));
//!     let server =
//!         Server::builder().router(router).bind("127.0.0.1:0".parse()?).tls(server_tls).start()?;
//!
//!     let mut roots = RootCertStore::empty();
//!     roots.add(made.cert.der().clone())?;
//!     let options = ClientOptions::default().tls(tls::client_config_with_roots(roots)?);
//!     let client = connect(&format!("wss://{}", server.local_addr()), options)?;
//!     let sum: i64 = client.call("add", (2, 3))?;
//!     assert_eq!(sum, 5);
//!
//!     client.close();
//!     server.shutdown(Duration::from_secs(5));
//!     Ok(())
//! }
//! ```
//!
//! Without `.tls(..)` on the options, a client trusts what this build's feature says (the
//! operating system's verifier by default). A certificate the client refuses is a typed
//! `ClientError::Connect(ConnectError::Tls(TlsError::UnknownIssuer | Expired | ..))`, never
//! retried.
//!
//! The core has no TLS; `wsrpc-futures` (through `futures-rustls`) and `wsrpc-blocking`
//! (through rustls's own sans-IO `Connection`) use this crate, and each adapter forwards its
//! features here:
//!
//! - `tls-aws-lc-rs` (default) or `tls-ring`: the crypto provider passed to every config
//!   builder (`builder_with_provider`), so a graph with both never depends on a
//!   process-level default. With both on, aws-lc-rs is used; with neither, the process-level
//!   provider (`CryptoProvider::install_default`) if there is one.
//! - `tls-platform-verifier` (default) or `tls-webpki-roots`: where a client's trust comes
//!   from when the application gives no `ClientConfig` (the operating system's verifier, or
//!   Mozilla's roots compiled in). With both on, the platform verifier is used.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::sync::{Arc, OnceLock};

pub use rustls;
use rustls::crypto::CryptoProvider;
pub use rustls::{ClientConfig, RootCertStore, ServerConfig};
pub use rustls_pki_types as pki_types;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use wsrpc_core::engine::Target;
use wsrpc_core::rpc::client::{ClientOptions, ConnectError, TlsError};

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1): every
/// ClientHello starts with it, and no HTTP method does.
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-text HTTP request on a TLS port is answered with before the port closes.
pub const PLAINTEXT_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 45\r\n\
Connection: close\r\n\
\r\n\
this port speaks TLS: use https:// or wss://\n";

/// Whether a connection whose first byte is `first` starts a TLS handshake.
pub fn starts_tls(first: u8) -> bool {
    first == HANDSHAKE_RECORD
}

/// The crypto provider of this build (see the crate docs); `None` when no provider feature
/// is on and the process installed no default.
pub fn provider() -> Option<Arc<CryptoProvider>> {
    static CHOSEN: OnceLock<Option<Arc<CryptoProvider>>> = OnceLock::new();
    CHOSEN.get_or_init(chosen_provider).clone()
}

#[cfg(feature = "tls-aws-lc-rs")]
fn chosen_provider() -> Option<Arc<CryptoProvider>> {
    Some(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

#[cfg(all(feature = "tls-ring", not(feature = "tls-aws-lc-rs")))]
fn chosen_provider() -> Option<Arc<CryptoProvider>> {
    // Chosen by the application for its smaller build; rustls deprecates it only for lacking
    // post-quantum key exchange.
    #[allow(deprecated)]
    Some(Arc::new(rustls::crypto::ring::default_provider()))
}

#[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc-rs")))]
fn chosen_provider() -> Option<Arc<CryptoProvider>> {
    CryptoProvider::get_default().cloned()
}

fn no_provider() -> rustls::Error {
    rustls::Error::General(
        "no crypto provider: enable the tls-ring or tls-aws-lc-rs feature of the adapter".into(),
    )
}

/// Why a TLS configuration could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The PEM text held no certificate, no private key, or could not be read.
    Pem(String),
    /// rustls refused the configuration (a key that does not fit the certificate, no
    /// crypto provider, no platform roots).
    Rustls(rustls::Error),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pem(why) => write!(f, "cannot read the PEM: {why}"),
            Self::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rustls(e) => Some(e),
            Self::Pem(_) => None,
        }
    }
}

impl From<rustls::Error> for ConfigError {
    fn from(e: rustls::Error) -> Self {
        Self::Rustls(e)
    }
}

/// A server configuration with this build's provider, the safe default protocol versions,
/// no client certificates, the certificate chain (leaf first) and its key, and ALPN
/// `http/1.1` (browsers then never pick HTTP/2, which this server does not speak).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = provider().ok_or_else(no_provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from PEM text: a certificate chain (leaf first) and a private key
/// (PKCS#8, PKCS#1 or SEC1), as `certbot` or `rcgen` write them.
pub fn server_config_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, ConfigError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(ConfigError::Pem("no CERTIFICATE block".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| ConfigError::Pem(e.to_string()))?;
    server_config(chain, key)
}

/// [`server_config_from_pem`] from files (read again on every call, so a renewed
/// certificate on disk is picked up by calling it again and handing the result to the
/// server's `set_tls`).
pub fn server_config_from_pem_files(
    chain: impl AsRef<std::path::Path>,
    key: impl AsRef<std::path::Path>,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ConfigError::Pem(format!("{}: {e}", path.display())))
    };
    server_config_from_pem(&read(chain.as_ref())?, &read(key.as_ref())?)
}

/// A client configuration with this build's provider that trusts exactly `roots` (a private
/// CA, a test CA).
pub fn client_config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = provider().ok_or_else(no_provider)?;
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The client configuration used when the application gives none: this build's provider
/// and the trust of its feature (the platform verifier, or Mozilla's roots). Built once.
pub fn default_client_config() -> Result<Arc<ClientConfig>, ConnectError> {
    static DEFAULT: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| build_default_client_config().map_err(|e| e.to_string()))
        .clone()
        .map_err(ConnectError::Unsupported)
}

#[cfg(feature = "tls-platform-verifier")]
fn build_default_client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = provider().ok_or_else(no_provider)?;
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_platform_verifier()?
            .with_no_client_auth(),
    ))
}

#[cfg(all(feature = "tls-webpki-roots", not(feature = "tls-platform-verifier")))]
fn build_default_client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    client_config_with_roots(roots).map_err(|e| match e {
        ConfigError::Rustls(e) => e,
        other => rustls::Error::General(other.to_string()),
    })
}

#[cfg(not(any(feature = "tls-platform-verifier", feature = "tls-webpki-roots")))]
fn build_default_client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    Err(rustls::Error::General(
        "no trusted roots: give ClientOptions a rustls::ClientConfig, or enable the \
         tls-platform-verifier or tls-webpki-roots feature"
            .into(),
    ))
}

/// The client configuration the application gave (as `ClientOptions::tls`), stored in the
/// options under this private type so nothing else can fill the slot.
#[derive(Clone, Debug)]
struct ClientTls(Arc<ClientConfig>);

/// The typed setter for a client's TLS configuration (re-exported by each adapter).
pub trait TlsOptions {
    /// Connects `wss://` URLs with `config` (its roots, verifier, versions, client
    /// certificate) instead of the default of this build's features.
    fn tls(self, config: impl Into<Arc<ClientConfig>>) -> Self;
}

impl TlsOptions for ClientOptions {
    fn tls(self, config: impl Into<Arc<ClientConfig>>) -> Self {
        self.transport_setting(ClientTls(config.into()))
    }
}

/// The configuration a client with `options` connects `wss://` with.
pub fn client_config(options: &ClientOptions) -> Result<Arc<ClientConfig>, ConnectError> {
    match options.transport_settings().get::<ClientTls>() {
        Some(ClientTls(config)) => Ok(config.clone()),
        None => default_client_config(),
    }
}

/// The name the server's certificate must match (and SNI, for a DNS name).
pub fn server_name(target: &Target) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(target.host().to_owned()).map_err(|_| {
        ConnectError::Unsupported(format!("{} is not a valid TLS server name", target.host()))
    })
}

/// A client connection for `target` (SNI from its host name) with `options`' configuration.
pub fn client_connection(
    options: &ClientOptions,
    target: &Target,
) -> Result<rustls::ClientConnection, ConnectError> {
    let config = client_config(options)?;
    rustls::ClientConnection::new(config, server_name(target)?)
        .map_err(|e| ConnectError::Tls(tls_error(&e)))
}

/// The typed kind of a rustls failure.
pub fn tls_error(e: &rustls::Error) -> TlsError {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => TlsError::UnknownIssuer,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => TlsError::Expired,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsError::NameMismatch,
            C::Revoked => TlsError::Revoked,
            other => TlsError::BadCertificate(format!("{other:?}")),
        },
        other => TlsError::Handshake(other.to_string()),
    }
}

/// Classifies an I/O error from a TLS connect: rustls failures (which `futures-rustls`
/// carries inside `io::Error`) become [`ConnectError::Tls`], the rest as for TCP.
pub fn connect_error(e: &io::Error) -> ConnectError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => ConnectError::Tls(tls_error(tls)),
        None => ConnectError::from_io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_announces_its_body_length() {
        let text = std::str::from_utf8(PLAINTEXT_REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(!starts_tls(PLAINTEXT_REFUSAL[0]));
        assert!(starts_tls(0x16));
        for method in [&b"GET"[..], b"POST", b"OPTIONS", b"PRI"] {
            assert!(!starts_tls(method[0]));
        }
    }

    #[test]
    fn certificate_failures_map_to_their_kinds() {
        use rustls::CertificateError as C;
        let cert = |c| tls_error(&rustls::Error::InvalidCertificate(c));
        assert_eq!(cert(C::UnknownIssuer), TlsError::UnknownIssuer);
        assert_eq!(cert(C::Expired), TlsError::Expired);
        assert_eq!(cert(C::NotValidYet), TlsError::Expired);
        assert_eq!(cert(C::NotValidForName), TlsError::NameMismatch);
        assert_eq!(cert(C::Revoked), TlsError::Revoked);
        assert!(matches!(cert(C::BadSignature), TlsError::BadCertificate(_)));
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(matches!(tls_error(&alert), TlsError::Handshake(_)));
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(C::UnknownIssuer),
        );
        assert_eq!(connect_error(&wrapped), ConnectError::Tls(TlsError::UnknownIssuer));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_error(&refused), ConnectError::Refused);
    }

    #[test]
    fn the_setter_fills_the_options_and_a_default_exists() {
        let roots = RootCertStore::empty();
        let mine = client_config_with_roots(roots).unwrap();
        let options = ClientOptions::default().tls(mine.clone());
        assert!(Arc::ptr_eq(&client_config(&options).unwrap(), &mine));
        assert!(provider().is_some());
        let fallback = client_config(&ClientOptions::default()).unwrap();
        assert!(!Arc::ptr_eq(&fallback, &mine));
    }
}
