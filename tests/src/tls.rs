//! Certificates made at test time with rcgen: a CA and leaves signed by it (valid for
//! `localhost` and `127.0.0.1`, expired, or for another name), the server and client
//! configurations built from them, and a blocking TLS client for raw requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use wsrpc_tls::{ClientConfig, RootCertStore, ServerConfig};

/// A test certificate authority.
pub struct TestCa {
    /// Its certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its certificate, PEM (for Python, Node and Chromium).
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its key.
#[derive(Debug)]
pub struct Leaf {
    /// The chain (leaf first; the CA is the trust anchor, not sent).
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: String,
    /// Base64 of the SHA-256 of the leaf's SubjectPublicKeyInfo (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

impl TestCa {
    /// A fresh CA.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = cert.pem();
        Self { cert: cert.der().clone(), pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now unless `expired`.
    pub fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, "wsrpc test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let spki = key.subject_public_key_info();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: base64_sha256(&spki),
        }
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).expect("CA certificate parses");
        wsrpc_tls::client_config_with_roots(roots).expect("client config")
    }
}

impl Leaf {
    /// A server configuration serving this leaf.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(self.key.clone_key());
        wsrpc_tls::server_config(self.chain.clone(), key).expect("server config")
    }
}

fn base64_sha256(data: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

/// The CA and leaf most tests share (made once per test process).
pub struct Pki {
    /// The CA.
    pub ca: TestCa,
    /// A leaf for `localhost` and `127.0.0.1`.
    pub leaf: Leaf,
    /// The server configuration of `leaf`.
    pub server: Arc<ServerConfig>,
    /// A client configuration trusting `ca`.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// The shared test PKI.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::new("wsrpc test CA");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
        let server = leaf.server_config();
        let client = ca.client_config();
        Pki { ca, leaf, server, client }
    })
}

/// A blocking TLS client stream to `addr` trusting the shared CA (SNI `localhost`).
pub type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects a raw TLS client and completes its handshake.
pub fn connect(addr: SocketAddr) -> RawTls {
    let tcp = crate::raw::connect(addr);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(pki().client.clone(), name).expect("client");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// Reads until `done`, EOF, an error or `timeout`.
pub fn read_until(s: &mut RawTls, timeout: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while !done(&out) && Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.sock.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Whether the server ended the TLS stream (close_notify, EOF or reset) within `timeout`.
pub fn closed_within(s: &mut RawTls, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.sock.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Sends `request` over TLS and returns the whole response until the server closes or the
/// head and `Content-Length` body arrived.
pub fn request(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    s.flush().unwrap();
    let resp = read_until(&mut s, crate::LONG, complete_response);
    String::from_utf8_lossy(&resp).into_owned()
}

fn complete_response(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    b.len() >= end + 4 + len
}
