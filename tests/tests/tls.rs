//! TLS on every adapter, with a CA made at test time: `wss://` by IP and by name, HTTPS on the
//! same port, each certificate failure refused with its typed error, plain text on the TLS
//! port and a TLS hello on the plain port refused and counted, close_notify at the end, a
//! certificate swapped while the server runs, and the hostile cases of the handshake over
//! TLS (a stalled TLS handshake, a request dripped after it, oversized headers).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wsrpc_core::rpc::Router;
use wsrpc_core::rpc::client::{ClientError, ClientOptions, ConnectError, TlsError};
use wsrpc_core::service::{Bind, ServiceConfig};
use wsrpc_tests::tls::{self, TestCa, pki};
use wsrpc_tests::{Adapter, LONG, TestServer, errors, raw, serial, unlimited_config};
use wsrpc_tls::{ServerConfig, TlsOptions};

fn router() -> Router {
    let mut r = Router::new();
    r.method("add", |(a, b): (i64, i64), _| Ok(a + b));
    r
}

fn start<A: Adapter>(config: ServiceConfig, tls: Arc<ServerConfig>) -> Box<dyn TestServer> {
    A::start_with(config, router(), Bind::Addr("127.0.0.1:0".parse().unwrap()), Some(tls))
        .expect("server starts")
}

fn no_reconnect() -> ClientOptions {
    ClientOptions::default().reconnect(None)
}

pub fn wss_by_name_and_https_on_the_same_port<A: Adapter>() {
    let server = start::<A>(unlimited_config(), pki().server.clone());
    // By name: SNI `localhost`, verified against the leaf's DNS name.
    let url = format!("wss://localhost:{}/", server.addr().port());
    let client = A::connect(&url, no_reconnect().tls(pki().client.clone())).unwrap();
    assert_eq!(client.call("add", json!([40, 2])).unwrap(), json!(42));
    client.close();
    // JSON-RPC over an HTTPS POST, /health and /metrics, all on the TLS port.
    let body = r#"{"jsonrpc":"2.0","method":"add","params":[1,2],"id":7}"#;
    let post = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = tls::request(server.addr(), post.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.ends_with(r#"{"jsonrpc":"2.0","result":3,"id":7}"#), "{resp}");
    let health = tls::request(server.addr(), b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200 ") && health.contains("\"status\""), "{health}");
    let metrics = tls::request(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(metrics.starts_with("HTTP/1.1 200 ") && metrics.contains("wsrpc_"), "{metrics}");
    assert_eq!(errors(&*server, "handshake"), 0);
}

pub fn the_server_ends_tls_with_close_notify<A: Adapter>() {
    let server = start::<A>(unlimited_config(), pki().server.clone());
    let mut s = tls::connect(server.addr());
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.sock.set_read_timeout(Some(LONG)).unwrap();
    // rustls reports a TCP end without close_notify as an UnexpectedEof error, and a clean
    // TLS end as Ok(0) after the data.
    let end = s.read_to_end(&mut all);
    assert!(end.is_ok(), "{end:?}");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200 "));
}

/// Connects to `host` on the server's port and returns why it failed.
fn refused_with<A: Adapter>(
    server: &dyn TestServer,
    options: ClientOptions,
    host: &str,
) -> ClientError {
    let url = format!("wss://{host}:{}/", server.addr().port());
    match A::connect(&url, options) {
        Ok(_) => panic!("connected to {url} though the certificate is bad"),
        Err(e) => e,
    }
}

pub fn certificate_failures_are_typed_and_final<A: Adapter>() {
    let trusted = || no_reconnect().tls(pki().client.clone());
    // A CA the client does not trust.
    let server = start::<A>(unlimited_config(), pki().server.clone());
    let stranger = TestCa::new("another CA").client_config();
    let e = refused_with::<A>(&*server, no_reconnect().tls(stranger), "127.0.0.1");
    assert_eq!(e, ClientError::Connect(ConnectError::Tls(TlsError::UnknownIssuer)), "{e}");
    assert!(!e.is_transient());
    assert_eq!(e.tls(), Some(&TlsError::UnknownIssuer));
    // The default trust (the platform's, or Mozilla's roots) does not know the test CA.
    let e = refused_with::<A>(&*server, no_reconnect(), "localhost");
    assert!(
        matches!(
            e,
            ClientError::Connect(ConnectError::Tls(
                TlsError::UnknownIssuer | TlsError::BadCertificate(_)
            ))
        ),
        "{e:?}"
    );
    // Each refusal is counted by the server: the client's alert ends the handshake.
    wsrpc_tests::wait_for("the refused handshakes to be counted", || {
        errors(&*server, "handshake") >= 2
    });
    // An expired leaf of the trusted CA.
    let expired = pki().ca.leaf(&["localhost", "127.0.0.1"], true).server_config();
    let server = start::<A>(unlimited_config(), expired);
    let e = refused_with::<A>(&*server, trusted(), "127.0.0.1");
    assert_eq!(e, ClientError::Connect(ConnectError::Tls(TlsError::Expired)), "{e}");
    assert!(!e.is_transient());
    // A valid leaf of the trusted CA, for another name.
    let elsewhere = pki().ca.leaf(&["wallet.example"], false).server_config();
    let server = start::<A>(unlimited_config(), elsewhere);
    let e = refused_with::<A>(&*server, trusted(), "127.0.0.1");
    assert_eq!(e, ClientError::Connect(ConnectError::Tls(TlsError::NameMismatch)), "{e}");
    let e = refused_with::<A>(&*server, trusted(), "localhost");
    assert_eq!(e, ClientError::Connect(ConnectError::Tls(TlsError::NameMismatch)), "{e}");
    // A plain port: the client's hello is answered with a plain 400, not TLS.
    let plain =
        A::start(unlimited_config(), router(), Bind::Addr("127.0.0.1:0".parse().unwrap())).unwrap();
    let e = refused_with::<A>(&*plain, trusted(), "127.0.0.1");
    assert!(matches!(e, ClientError::Connect(ConnectError::Tls(TlsError::Handshake(_)))), "{e:?}");
}

pub fn plain_text_on_the_tls_port_gets_400<A: Adapter>() {
    let server = start::<A>(unlimited_config(), pki().server.clone());
    let mut s = raw::connect(server.addr());
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let resp = raw::read_until(&mut s, LONG, |b| b.ends_with(b"wss://\n"));
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("this port speaks TLS"), "{text}");
    assert!(raw::closed_within(&mut s, LONG), "closed after the 400");
    // A WebSocket client with a ws:// URL is refused the same way, with the status.
    let e = A::connect(&format!("ws://{}", server.addr()), no_reconnect()).err().expect("refused");
    assert_eq!(e, ClientError::Rejected { status: 400 }, "{e}");
    wsrpc_tests::wait_for("both refusals counted", || errors(&*server, "handshake") >= 2);
    // And the port still serves TLS.
    let client = A::connect(&server.url(), no_reconnect().tls(pki().client.clone())).unwrap();
    assert_eq!(client.call("add", json!([1, 1])).unwrap(), json!(2));
}

pub fn a_tls_hello_on_the_plain_port_gets_400_and_is_counted<A: Adapter>() {
    let server =
        A::start(unlimited_config(), router(), Bind::Addr("127.0.0.1:0".parse().unwrap())).unwrap();
    let mut s = raw::connect(server.addr());
    // The start of a real ClientHello, as a TLS client sends it.
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut hello = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
    let mut bytes = Vec::new();
    hello.write_tls(&mut bytes).unwrap();
    assert_eq!(bytes[0], 0x16);
    s.write_all(&bytes).unwrap();
    let head = raw::read_until(&mut s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    assert_eq!(raw::status_of(&head), 400, "{}", String::from_utf8_lossy(&head));
    assert!(raw::closed_within(&mut s, LONG));
    assert!(errors(&*server, "handshake") >= 1);
}

pub fn a_new_certificate_serves_new_connections<A: Adapter>() {
    let server = start::<A>(unlimited_config(), pki().server.clone());
    let old =
        A::connect(&server.url(), ClientOptions::default().tls(pki().client.clone())).unwrap();
    // A renewed certificate, from a new CA so the change is visible.
    let renewed_ca = TestCa::new("renewed CA");
    let renewed = renewed_ca.leaf(&["localhost", "127.0.0.1"], false).server_config();
    assert!(server.set_tls(renewed));
    let fresh = A::connect(&server.url(), no_reconnect().tls(renewed_ca.client_config())).unwrap();
    assert_eq!(fresh.call("add", json!([2, 2])).unwrap(), json!(4));
    let e =
        A::connect(&server.url(), no_reconnect().tls(pki().client.clone())).err().expect("refused");
    assert_eq!(e, ClientError::Connect(ConnectError::Tls(TlsError::UnknownIssuer)));
    // The connection made before keeps working.
    assert_eq!(old.call("add", json!([3, 3])).unwrap(), json!(6));
    // A plain server has no certificate to swap.
    let plain =
        A::start(unlimited_config(), router(), Bind::Addr("127.0.0.1:0".parse().unwrap())).unwrap();
    assert!(!plain.set_tls(pki().server.clone()));
}

pub fn a_stalled_tls_handshake_is_cut_and_counted<A: Adapter>() {
    let _serial = serial();
    let timeout = Duration::from_millis(1500);
    let mut c = unlimited_config();
    c.ws.handshake_timeout = Some(timeout);
    let server = start::<A>(c, pki().server.clone());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut hello = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
    let mut bytes = Vec::new();
    hello.write_tls(&mut bytes).unwrap();
    // Ten peers send half a ClientHello and then nothing.
    let mut stalled: Vec<_> = (0..10).map(|_| raw::connect(server.addr())).collect();
    let started = Instant::now();
    for s in &mut stalled {
        s.write_all(&bytes[..bytes.len() / 2]).unwrap();
    }
    for s in &mut stalled {
        assert!(raw::closed_within(s, LONG), "a stalled TLS handshake is cut");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout - Duration::from_millis(100), "cut early: {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(3), "cut late: {elapsed:?}");
    wsrpc_tests::wait_for("the stalled handshakes to be counted", || {
        errors(&*server, "handshake") >= 10
    });
    let client = A::connect(&server.url(), no_reconnect().tls(pki().client.clone())).unwrap();
    assert_eq!(client.call("add", json!([1, 2])).unwrap(), json!(3));
}

pub fn slowloris_over_tls_is_cut_at_the_handshake_timeout<A: Adapter>() {
    let _serial = serial();
    let timeout = Duration::from_millis(1500);
    let mut c = unlimited_config();
    c.ws.handshake_timeout = Some(timeout);
    let server = start::<A>(c, pki().server.clone());
    // The TLS handshake completes, then the upgrade request drips a byte every 200 ms; the
    // deadline runs from the TCP accept, so TLS time counts too.
    let started = Instant::now();
    let mut slow: Vec<_> = (0..10).map(|_| tls::connect(server.addr())).collect();
    let request = raw::upgrade_request("/", "X-Slow: yes\r\n").into_bytes();
    let mut cut = vec![false; slow.len()];
    'drip: for b in request {
        for (i, s) in slow.iter_mut().enumerate() {
            if !cut[i] && (s.write_all(&[b]).is_err() || s.flush().is_err()) {
                cut[i] = true;
            }
        }
        if started.elapsed() > timeout + Duration::from_millis(500) {
            break 'drip;
        }
        // Pacing, not synchronisation: this is the attack.
        std::thread::sleep(Duration::from_millis(200));
    }
    for s in &mut slow {
        let head = tls::read_until(s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
        assert_eq!(raw::status_of(&head), 408, "{}", String::from_utf8_lossy(&head));
        assert!(tls::closed_within(s, LONG), "closed after the 408");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout - Duration::from_millis(100), "cut early: {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(3), "cut late: {elapsed:?}");
    assert!(errors(&*server, "handshake") >= 10);
}

pub fn oversized_headers_over_tls_get_431<A: Adapter>() {
    let server = start::<A>(unlimited_config(), pki().server.clone());
    let pad = format!("X-Pad: {}\r\n", "a".repeat(100 * 1024));
    let mut s = tls::connect(server.addr());
    // The server may refuse before it has read all of it.
    let _ = s.write_all(raw::upgrade_request("/", &pad).as_bytes());
    let _ = s.flush();
    let head = tls::read_until(&mut s, LONG, |b| b.windows(4).any(|w| w == b"\r\n\r\n"));
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(tls::closed_within(&mut s, LONG));
    assert!(errors(&*server, "handshake") >= 1);
}

macro_rules! tls_tests {
    ($module:ident, $adapter:ty) => {
        mod $module {
            type A = $adapter;
            #[test]
            fn wss_by_name_and_https_on_the_same_port() {
                super::wss_by_name_and_https_on_the_same_port::<A>();
            }
            #[test]
            fn the_server_ends_tls_with_close_notify() {
                super::the_server_ends_tls_with_close_notify::<A>();
            }
            #[test]
            fn certificate_failures_are_typed_and_final() {
                super::certificate_failures_are_typed_and_final::<A>();
            }
            #[test]
            fn plain_text_on_the_tls_port_gets_400() {
                super::plain_text_on_the_tls_port_gets_400::<A>();
            }
            #[test]
            fn a_tls_hello_on_the_plain_port_gets_400_and_is_counted() {
                super::a_tls_hello_on_the_plain_port_gets_400_and_is_counted::<A>();
            }
            #[test]
            fn a_new_certificate_serves_new_connections() {
                super::a_new_certificate_serves_new_connections::<A>();
            }
            #[test]
            fn a_stalled_tls_handshake_is_cut_and_counted() {
                super::a_stalled_tls_handshake_is_cut_and_counted::<A>();
            }
            #[test]
            fn slowloris_over_tls_is_cut_at_the_handshake_timeout() {
                super::slowloris_over_tls_is_cut_at_the_handshake_timeout::<A>();
            }
            #[test]
            fn oversized_headers_over_tls_get_431() {
                super::oversized_headers_over_tls_get_431::<A>();
            }
        }
    };
}

tls_tests!(smol, wsrpc_tests::Smol);
tls_tests!(async_std, wsrpc_tests::AsyncStd);
tls_tests!(blocking, wsrpc_tests::Blocking);
