//! TLS: SNI picks the certificate, 421 on mismatch, no-SNI handshakes, ALPN, PEM files, the
//! local CA's storage.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Client, Proto, TestServer, Upstream};

const TWO_SITES: &str = r#"
[[site]]
names = ["a.test"]
[[site.route]]
path = "/"
redirect = "/from-a"

[[site]]
names = ["b.test"]
[[site.route]]
path = "/"
redirect = "/from-b"
"#;

#[tokio::test]
async fn sni_picks_the_sites_certificate() {
    let usher = TestServer::start(TWO_SITES).await;
    // The client verifies the certificate against the name it asked for: success proves the
    // right certificate was chosen.
    let mut a = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    let mut b = Client::tls(usher.https(), "b.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_ne!(a.peer_cert, b.peer_cert);
    assert_eq!(a.get("a.test", "/").await.header("location"), "/from-a");
    assert_eq!(b.get("b.test", "/").await.header("location"), "/from-b");
}

#[tokio::test]
async fn unknown_sni_is_refused_without_a_default_site() {
    let usher = TestServer::start(TWO_SITES).await;
    let err = Client::tls(usher.https(), "c.test", usher.ca(), Proto::H1)
        .await
        .err();
    assert!(err.is_some(), "handshake for an unknown name must fail");
    // and a handshake without SNI too
    assert!(
        Client::tls(usher.https(), "127.0.0.1", usher.ca(), Proto::H1)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn default_site_answers_handshakes_without_sni() {
    let usher = TestServer::start(
        r#"
[[site]]
names = ["main.test", "127.0.0.1"]
default = true
[[site.route]]
path = "/"
redirect = "/main"
"#,
    )
    .await;
    // A client connecting by IP address sends no SNI.
    let mut c = Client::tls(usher.https(), "127.0.0.1", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(c.get("127.0.0.1", "/").await.header("location"), "/main");
}

#[tokio::test]
async fn host_different_from_sni_is_421() {
    let usher = TestServer::start(TWO_SITES).await;
    let mut a = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    let resp = a.get("b.test", "/").await;
    assert_eq!(resp.status, 421);
    // a host no site serves is 421 on TLS as well
    assert_eq!(a.get("nobody.test", "/").await.status, 421);
    // over HTTP/2 too
    let mut a2 = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H2)
        .await
        .unwrap();
    assert_eq!(a2.get("b.test", "/").await.status, 421);
}

#[tokio::test]
async fn alpn_negotiates_h2_or_http1() {
    let usher = TestServer::start(TWO_SITES).await;
    let mut h2 = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H2)
        .await
        .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.get("a.test", "/").await.version, http::Version::HTTP_2);
    let mut h1 = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.get("a.test", "/").await.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn tls12_clients_are_served() {
    let usher = TestServer::start(TWO_SITES).await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(usher.ca().as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(usher.https()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let tls = crate::support::bounded("tls1.2", connector.connect(name, tcp))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn certificate_and_key_files() {
    let dir = tempfile::tempdir().unwrap();
    // An operator's own CA and leaf, made with rcgen, written as PEM files.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["files.test".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path().join("site.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), leaf_key.serialize_pem()).unwrap();
    let up = Upstream::start("files").await;
    let config = format!(
        r#"{}
[[site]]
names = ["files.test"]
cert = "site.crt"
key = "site.key"
[[site.route]]
path = "/"
proxy = ["{}"]
"#,
        crate::support::server::SERVER_SECTION,
        up.addr
    );
    let usher = TestServer::start_in(dir.path(), &config).await;
    assert!(
        usher.ca_pem.is_none(),
        "no local CA is needed for file certificates"
    );
    let mut c = Client::tls(usher.https(), "files.test", &ca.pem(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(c.get("files.test", "/f").await.text(), "files /f");
}

#[tokio::test]
async fn local_ca_key_is_private_and_the_ca_is_reused_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}\n{TWO_SITES}", crate::support::server::SERVER_SECTION);
    let first = TestServer::start_in(dir.path(), &config).await;
    let key = first.path("certs/local-ca/root.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let ca1 = first.ca().to_owned();
    first.stop().await;
    let second = TestServer::start_in(dir.path(), &config).await;
    assert_eq!(second.ca(), ca1, "a restart must reuse the stored local CA");
    Client::tls(second.https(), "a.test", &ca1, Proto::H1)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_damaged_local_ca_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs/local-ca")).unwrap();
    std::fs::write(
        dir.path().join("certs/local-ca/root.crt"),
        "not a certificate",
    )
    .unwrap();
    std::fs::write(dir.path().join("certs/local-ca/root.key"), "not a key").unwrap();
    let text = format!("{}\n{TWO_SITES}", crate::support::server::SERVER_SECTION);
    std::fs::write(dir.path().join("proxy.toml"), &text).unwrap();
    let config = usher::Config::load(&dir.path().join("proxy.toml")).unwrap();
    let err = usher::start(config)
        .await
        .err()
        .expect("a damaged CA must stop the start");
    let msg = err.to_string();
    assert!(msg.contains("local-ca/root.key"), "{msg}");
    // nothing was overwritten
    let kept = std::fs::read_to_string(dir.path().join("certs/local-ca/root.crt")).unwrap();
    assert_eq!(kept, "not a certificate");
}

#[tokio::test]
async fn a_local_ca_key_from_another_ca_is_refused() {
    let config = format!("{}\n{TWO_SITES}", crate::support::server::SERVER_SECTION);
    // two CAs, then the first one's certificate with the second one's key
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    TestServer::start_in(a.path(), &config).await.stop().await;
    TestServer::start_in(b.path(), &config).await.stop().await;
    std::fs::copy(
        b.path().join("certs/local-ca/root.key"),
        a.path().join("certs/local-ca/root.key"),
    )
    .unwrap();
    let config = usher::Config::load(&a.path().join("proxy.toml")).unwrap();
    let err = usher::start(config)
        .await
        .err()
        .expect("a mismatched CA key must stop the start");
    assert!(
        err.to_string()
            .contains("does not belong to local-ca/root.crt"),
        "{err}"
    );
}

/// A client's session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// One TLS connection to `usher` as a.test with `config` (its session store shared across
/// calls), one request and its answer read to the close (the tickets come before it, so they
/// are all taken in); returns how the handshake went.
async fn one_connection(
    usher: &TestServer,
    config: rustls::ClientConfig,
) -> Option<rustls::HandshakeKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(usher.https()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = crate::support::bounded("handshake", connector.connect(name, tcp))
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    crate::support::bounded("the answer", tls.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 30"), "{answer:?}");
    kind
}

/// Each TLS 1.3 handshake, full or resumed, leaves the client one ticket (as Caddy does, and
/// nginx after a resumption), and the next connection resumes with it; a client that asks
/// for more (RFC 9149) gets up to four.
#[tokio::test]
async fn each_handshake_leaves_one_ticket_unless_more_are_asked_for() {
    use rustls::HandshakeKind::{Full, Resumed};
    use std::sync::atomic::Ordering::SeqCst;
    let usher = TestServer::start(TWO_SITES).await;
    let store = std::sync::Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: std::sync::atomic::AtomicUsize::new(0),
    });
    let mut config = (*crate::support::client::tls_config(usher.ca(), Proto::H1)).clone();
    config.resumption = rustls::client::Resumption::store(store.clone());
    assert_eq!(one_connection(&usher, config.clone()).await, Some(Full));
    assert_eq!(store.tickets.load(SeqCst), 1, "one ticket per handshake");
    assert_eq!(one_connection(&usher, config.clone()).await, Some(Resumed));
    assert_eq!(store.tickets.load(SeqCst), 2, "one ticket per handshake");

    // a client that asks for more (RFC 9149) gets what it asks for, up to four
    config.send_ticket_request = Some(rustls::client::TicketRequest {
        new_session_count: 6,
        resumption_count: 6,
    });
    one_connection(&usher, config).await;
    assert_eq!(
        store.tickets.load(SeqCst),
        6,
        "a client asking for six gets four"
    );
}
