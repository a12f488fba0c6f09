//! A real ACME server for tests: Let's Encrypt's Pebble (Debian package `pebble`) with
//! `pebble-challtestsrv` as its DNS, so every test name resolves to 127.0.0.1. Each test gets its
//! own instance on ephemeral ports; both processes are killed and reaped on drop.
//!
//! Pebble's validator connects to fixed ports for HTTP-01 and TLS-ALPN-01 (`httpPort`,
//! `tlsPort` in its config), so a test picks usher's ports first and hands them to Pebble.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{bounded, Client, Proto};

/// What a test wants from its Pebble.
#[derive(Default, Clone)]
pub struct PebbleOpts {
    /// The port usher's plain listener will use (Pebble's HTTP-01 validator dials it).
    pub http_port: u16,
    /// The port usher's TLS listener will use (Pebble's TLS-ALPN-01 validator dials it).
    pub tls_port: u16,
    /// Lifetime of issued certificates in seconds (Pebble's default is 5 years).
    pub validity_secs: Option<u64>,
    /// External Account Binding keys: (key id, base64url HMAC key).
    pub eab: Vec<(String, String)>,
    /// Names Pebble refuses to issue for.
    pub blocklist: Vec<String>,
    /// The directory port, when the test must know it before Pebble starts.
    pub acme_port: Option<u16>,
    /// A folder with the directory certificate made by [`write_directory_cert`].
    pub directory_cert_dir: Option<PathBuf>,
}

/// A running Pebble + challtestsrv pair.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The PEM file of the CA that signed Pebble's own HTTPS certificate.
    pub directory_ca: PathBuf,
    mgmt: SocketAddr,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

pub use super::free_port;

impl Pebble {
    /// Starts Pebble and its DNS, and waits (bounded) until the directory answers.
    pub async fn start(opts: &PebbleOpts) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let cert_dir = opts
            .directory_cert_dir
            .clone()
            .unwrap_or_else(|| dir.path().to_owned());
        let directory_ca = match &opts.directory_cert_dir {
            Some(d) => d.join("directory-ca.pem"),
            None => write_directory_cert(dir.path()),
        };
        let acme = opts.acme_port.unwrap_or_else(free_port);
        let (mgmt, dns, chall) = (free_port(), free_port(), free_port());
        let eab: Vec<String> = opts
            .eab
            .iter()
            .map(|(k, v)| format!("{k:?}: {v:?}"))
            .collect();
        let block: Vec<String> = opts.blocklist.iter().map(|b| format!("{b:?}")).collect();
        let config = format!(
            r#"{{"pebble": {{
                "listenAddress": "127.0.0.1:{acme}",
                "managementListenAddress": "127.0.0.1:{mgmt}",
                "certificate": "{c}/cert.pem",
                "privateKey": "{c}/key.pem",
                "httpPort": {http},
                "tlsPort": {tls},
                "ocspResponderURL": "",
                "externalAccountBindingRequired": {eab_required},
                "externalAccountMACKeys": {{ {eab} }},
                "domainBlocklist": [ {block} ],
                "certificateValidityPeriod": {validity}
            }}}}"#,
            c = cert_dir.display(),
            http = opts.http_port,
            tls = opts.tls_port,
            eab_required = !opts.eab.is_empty(),
            eab = eab.join(", "),
            block = block.join(", "),
            validity = opts.validity_secs.unwrap_or(0),
        );
        std::fs::write(dir.path().join("pebble.json"), config).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let chall_child = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{chall}")])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let pebble_child = Command::new("pebble")
            .args(["-config", dir.path().join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let pebble = Pebble {
            directory: format!("https://127.0.0.1:{acme}/dir"),
            directory_ca,
            mgmt: format!("127.0.0.1:{mgmt}").parse().unwrap(),
            dir,
            children: vec![chall_child, pebble_child],
        };
        let ca = std::fs::read_to_string(&pebble.directory_ca).unwrap();
        let acme_addr: SocketAddr = format!("127.0.0.1:{acme}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut pebble = pebble;
        loop {
            for child in &mut pebble.children {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "pebble or challtestsrv exited during startup ({status}):\n{}",
                        pebble.log()
                    );
                }
            }
            if let Ok(mut c) = Client::tls(acme_addr, "127.0.0.1", &ca, Proto::H1).await {
                let r = c.get("127.0.0.1", "/dir").await;
                if r.status == 200 && r.text().contains("newNonce") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pebble
    }

    /// The root that signs the certificates this Pebble issues (new on every start).
    pub async fn issuer_root(&self) -> String {
        let ca = std::fs::read_to_string(&self.directory_ca).unwrap();
        let mut c = bounded(
            "pebble management",
            Client::tls(self.mgmt, "127.0.0.1", &ca, Proto::H1),
        )
        .await
        .unwrap();
        let r = c.get("127.0.0.1", "/roots/0").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// Pebble's log so far, for failure messages and for counting orders.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// How many new orders Pebble has been asked for (accepted or refused).
    pub fn orders(&self) -> usize {
        self.log().matches("POST /order-plz").count()
    }

    /// Stops Pebble (the CA goes down); the instance cannot be restarted.
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes Pebble's HTTPS certificate (`cert.pem`, `key.pem`) and its CA
/// (`directory-ca.pem`, returned) into `dir`.
pub fn write_directory_cert(dir: &std::path::Path) -> PathBuf {
    let (ca_pem, cert_pem, key_pem) = directory_cert();
    std::fs::write(dir.join("directory-ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key_pem).unwrap();
    dir.join("directory-ca.pem")
}

/// A small CA and a leaf for 127.0.0.1 / localhost, for Pebble's own HTTPS (rustls refuses a
/// self-signed CA certificate used directly as a server certificate).
fn directory_cert() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble directory test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}
