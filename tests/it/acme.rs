//! Automatic HTTPS against a real ACME server (Pebble): issuance over HTTP-01 and over
//! TLS-ALPN-01, reuse after a restart, a CA that is down at start, a CA that refuses.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::pebble::{free_port, Pebble, PebbleOpts};
use crate::support::{eventually, Client, Proto, TestServer};

/// usher's config for one ACME site `name` (plus an internal site that must always serve),
/// pointed at `pebble`, on the ports Pebble validates against.
fn config(opts: &PebbleOpts, directory: &str, ca: &Path, name: &str, extra_acme: &str) -> String {
    let http = if opts.http_port == 0 {
        "off".to_owned()
    } else {
        format!("127.0.0.1:{}", opts.http_port)
    };
    format!(
        r#"
[server]
http = "{http}"
https = "127.0.0.1:{tls}"
access_log = "off"
grace_period = "60s"

[acme]
directory = "{directory}"
ca_roots = ["{ca}"]
email = "ops@example.com"
retry_initial = "200ms"
retry_max = "1s"
{extra_acme}

[[site]]
names = ["{name}"]
tls = "acme"
[[site.route]]
path = "/"
redirect = "/from-acme"

[[site]]
names = ["local.test"]
[[site.route]]
path = "/"
redirect = "/from-local"
"#,
        tls = opts.tls_port,
        ca = ca.display(),
    )
}

/// Waits (bounded) until `name` completes a TLS handshake verified against `root` and answers;
/// returns the leaf certificate it served.
async fn served_cert(usher: &TestServer, name: &str, root: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Client::tls(usher.https(), name, root, Proto::H1).await {
            let r = c.get(name, "/").await;
            assert_eq!(r.header("location"), "/from-acme");
            return c.peer_cert.unwrap().to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "{name} got no certificate in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The folder of the certificate version a site's `current` pointer names.
fn current_dir(dir: &Path, site: &str) -> std::path::PathBuf {
    let sites = dir.join("certs/acme/sites").join(site);
    let version = std::fs::read_to_string(sites.join("current")).unwrap();
    sites.join(version.trim())
}

/// Pebble started with `o`, and usher in a fresh folder with one ACME site `name` pointed at
/// it: the start of most tests here.
async fn scene(
    o: &PebbleOpts,
    name: &str,
    extra: &str,
) -> (Pebble, tempfile::TempDir, String, TestServer) {
    let pebble = Pebble::start(o).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(o, &pebble.directory, &pebble.directory_ca, name, extra);
    let usher = TestServer::start_in(dir.path(), &text).await;
    (pebble, dir, text, usher)
}

fn opts(http: bool) -> PebbleOpts {
    PebbleOpts {
        http_port: if http { free_port() } else { 0 },
        tls_port: free_port(),
        ..PebbleOpts::default()
    }
}

#[tokio::test]
async fn issues_over_http01() {
    let o = opts(true);
    let (pebble, dir, _, usher) = scene(&o, "http01.test", "challenges = [\"http-01\"]").await;
    // the internal site serves from the first second, whatever ACME is doing
    let mut local = Client::tls(usher.https(), "local.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(
        local.get("local.test", "/").await.header("location"),
        "/from-local"
    );
    served_cert(&usher, "http01.test", &pebble.issuer_root().await).await;
    // stored: chain, a private key readable by the owner only, metadata
    let site = current_dir(dir.path(), "http01.test");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(site.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["names"][0], "http01.test");
    assert!(meta["renew_at"].as_u64() < meta["not_after"].as_u64());
}

#[tokio::test]
async fn issues_over_tls_alpn01_with_the_plain_listener_off() {
    let o = opts(false);
    let (pebble, _dir, _, usher) = scene(&o, "alpn.test", "").await;
    served_cert(&usher, "alpn.test", &pebble.issuer_root().await).await;
}

#[tokio::test]
async fn a_restart_reuses_the_stored_certificate() {
    let o = opts(true);
    let (pebble, dir, text, first) = scene(&o, "reuse.test", "").await;
    let root = pebble.issuer_root().await;
    let cert1 = served_cert(&first, "reuse.test", &root).await;
    first.stop().await;
    let orders = pebble.orders();
    let second = TestServer::start_in(dir.path(), &text).await;
    // the very first handshake after the restart already gets it: no waiting
    let c = Client::tls(second.https(), "reuse.test", &root, Proto::H1).await;
    let cert2 = c
        .expect("the stored certificate is served from the start")
        .peer_cert
        .unwrap()
        .to_vec();
    assert_eq!(cert1, cert2, "a restart must serve the stored certificate");
    assert_eq!(
        pebble.orders(),
        orders,
        "a restart must not order a new certificate"
    );
}

#[tokio::test]
async fn a_ca_down_at_start_is_retried_until_it_comes_back() {
    let mut o = opts(true);
    o.acme_port = Some(free_port());
    let directory = format!("https://127.0.0.1:{}/dir", o.acme_port.unwrap());
    // Pebble's directory certificate must exist before Pebble does: make it now.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = crate::support::pebble::write_directory_cert(ca_dir.path());
    o.directory_cert_dir = Some(ca_dir.path().to_owned());
    let dir = tempfile::tempdir().unwrap();
    let usher =
        TestServer::start_in(dir.path(), &config(&o, &directory, &ca, "later.test", "")).await;
    // the other site serves while the CA is unreachable
    let mut local = Client::tls(usher.https(), "local.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(
        local.get("local.test", "/").await.header("location"),
        "/from-local"
    );
    let pebble = Pebble::start(&o).await;
    served_cert(&usher, "later.test", &pebble.issuer_root().await).await;
}

#[tokio::test]
async fn a_refused_order_keeps_the_site_pending_and_other_sites_serving() {
    let mut o = opts(true);
    o.blocklist = vec!["blocked.test".into()];
    let (pebble, dir, _, usher) = scene(&o, "blocked.test", "").await;
    let root = pebble.issuer_root().await;
    // wait until at least two orders were refused (back-off retries), bounded
    eventually("two refused orders", || pebble.orders() >= 2).await;
    assert!(Client::tls(usher.https(), "blocked.test", &root, Proto::H1)
        .await
        .is_err());
    let mut local = Client::tls(usher.https(), "local.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(
        local.get("local.test", "/").await.header("location"),
        "/from-local"
    );
    assert!(!dir
        .path()
        .join("certs/acme/sites/blocked.test/current")
        .exists());
}

/// A certificate close to expiry is renewed in the background: new handshakes get the new one,
/// a connection opened before keeps working.
#[tokio::test]
async fn renews_before_expiry_while_connections_stay_open() {
    let mut o = opts(true);
    // 20 s certificates: renewed when half the lifetime remains (under 10 days: half), ~10 s in
    o.validity_secs = Some(20);
    let (pebble, _dir, _, usher) = scene(&o, "renew.test", "").await;
    let root = pebble.issuer_root().await;
    let first = served_cert(&usher, "renew.test", &root).await;
    let mut open = Client::tls(usher.https(), "renew.test", &root, Proto::H1)
        .await
        .unwrap();
    assert_eq!(open.peer_cert.as_deref(), Some(&first[..]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = served_cert(&usher, "renew.test", &root).await;
        if now != first {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal within 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // the connection from before the renewal still works
    assert_eq!(
        open.get("renew.test", "/").await.header("location"),
        "/from-acme"
    );
    assert!(pebble.orders() >= 2);
}

/// When the first issuer keeps failing, the next one issues.
#[tokio::test]
async fn falls_back_to_the_second_issuer() {
    let o = opts(true);
    let pebble = Pebble::start(&o).await;
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    let dir = tempfile::tempdir().unwrap();
    // the issuers as [[acme.issuer]] tables: the dead one first
    let text = config(
        &o,
        &pebble.directory,
        &pebble.directory_ca,
        "fallback.test",
        "",
    )
    .replace(&format!("directory = \"{}\"\n", pebble.directory), "");
    let issuers = format!(
        "[[acme.issuer]]\ndirectory = \"{dead}\"\n\n[[acme.issuer]]\ndirectory = \"{}\"\n\n",
        pebble.directory
    );
    let text = text.replacen("[[site]]", &format!("{issuers}[[site]]"), 1);
    let usher = TestServer::start_in(dir.path(), &text).await;
    served_cert(&usher, "fallback.test", &pebble.issuer_root().await).await;
    let meta = std::fs::read_to_string(current_dir(dir.path(), "fallback.test").join("meta.json"))
        .unwrap();
    assert!(meta.contains(&pebble.directory), "{meta}");
}

/// A CA that requires External Account Binding issues with the configured key, and refuses
/// an account without one.
#[tokio::test]
async fn external_account_binding() {
    let mut o = opts(true);
    // base64url of 32 bytes, as a CA hands it out
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    o.eab = vec![("kid-1".into(), key.into())];
    let pebble = Pebble::start(&o).await;
    let root = pebble.issuer_root().await;
    let dir = tempfile::tempdir().unwrap();
    let eab = format!("eab_kid = \"kid-1\"\neab_hmac_key = \"{key}\"");
    let usher = TestServer::start_in(
        dir.path(),
        &config(
            &o,
            &pebble.directory,
            &pebble.directory_ca,
            "eab.test",
            &eab,
        ),
    )
    .await;
    served_cert(&usher, "eab.test", &root).await;
    // without the binding, no account and no certificate
    let dir2 = tempfile::tempdir().unwrap();
    let o2 = opts(true);
    let usher2 = TestServer::start_in(
        dir2.path(),
        &config(
            &o2,
            &pebble.directory,
            &pebble.directory_ca,
            "noeab.test",
            "",
        ),
    )
    .await;
    eventually("three refused accounts", || {
        pebble.log().matches("POST /sign-me-up").count() >= 3
    })
    .await;
    assert!(Client::tls(usher2.https(), "noeab.test", &root, Proto::H1)
        .await
        .is_err());
    assert!(!dir2.path().join("certs/acme/accounts").exists());
}

async fn usher_cli(
    args: Vec<String>,
    cwd: std::path::PathBuf,
) -> (std::process::ExitStatus, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::process::run(&args, &cwd)
    })
    .await
    .unwrap()
}

/// `usher certs` lists what the manager holds; `usher certs revoke NAME` revokes at the CA and
/// removes the stored certificate.
#[tokio::test]
async fn certs_command_lists_and_revokes() {
    let o = opts(true);
    let (pebble, dir, _, usher) = scene(&o, "listed.test", "").await;
    served_cert(&usher, "listed.test", &pebble.issuer_root().await).await;
    usher.stop().await;
    let cfg = dir.path().join("proxy.toml").display().to_string();
    let (status, out, err) = usher_cli(
        vec!["certs".into(), "--config".into(), cfg.clone()],
        dir.path().into(),
    )
    .await;
    assert!(status.success(), "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("listed.test"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(&pebble.directory), "{row}");
    assert!(out.starts_with("NAMES"), "{out}");
    let (status, out, err) = usher_cli(
        vec![
            "certs".into(),
            "revoke".into(),
            "listed.test".into(),
            "--config".into(),
            cfg.clone(),
        ],
        dir.path().into(),
    )
    .await;
    assert!(status.success(), "{out}{err}");
    assert!(
        pebble.log().contains("POST /revoke-cert"),
        "{}",
        pebble.log()
    );
    assert!(!dir
        .path()
        .join("certs/acme/sites/listed.test/current")
        .exists());
    let (_, out, _) = usher_cli(
        vec!["certs".into(), "--config".into(), cfg],
        dir.path().into(),
    )
    .await;
    assert!(out.contains("(none yet)"), "{out}");
}

/// A site whose orders fail shows its last error and next attempt in `usher certs`.
#[tokio::test]
async fn certs_command_shows_the_last_error() {
    let mut o = opts(true);
    o.blocklist = vec!["refused.test".into()];
    let (_pebble, dir, _, _usher) = scene(&o, "refused.test", "").await;
    let state = dir.path().join("certs/acme/sites/refused.test/state.json");
    eventually("state recorded", || state.exists()).await;
    let cfg = dir.path().join("proxy.toml").display().to_string();
    let (status, out, _) =
        usher_cli(vec!["certs".into(), "-c".into(), cfg], dir.path().into()).await;
    assert!(status.success());
    let row = out
        .lines()
        .find(|l| l.starts_with("refused.test"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("(none yet)"), "{row}");
    assert!(
        row.contains("CA problem urn:ietf:params:acme:error:rejectedIdentifier"),
        "{row}"
    );
}

/// A damaged stored certificate is reported, set aside (kept, renamed) and replaced by a new
/// order; nothing is silently overwritten.
#[tokio::test]
async fn a_damaged_stored_certificate_is_set_aside_and_reordered() {
    let o = opts(true);
    let (pebble, dir, text, first) = scene(&o, "damaged.test", "").await;
    let root = pebble.issuer_root().await;
    served_cert(&first, "damaged.test", &root).await;
    first.stop().await;
    let site = current_dir(dir.path(), "damaged.test");
    std::fs::write(
        site.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    let second = TestServer::start_in(dir.path(), &text).await;
    served_cert(&second, "damaged.test", &root).await;
    let aside: Vec<String> = std::fs::read_dir(&site)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert!(
        aside.iter().any(|n| n.starts_with("cert.pem.corrupt-")),
        "{aside:?}"
    );
    let kept = aside.iter().find(|n| n.starts_with("cert.pem")).unwrap();
    assert!(std::fs::read_to_string(site.join(kept))
        .unwrap()
        .contains("garbage"));
}

/// A directory URL that is not an ACME directory is an error that is retried, not a crash;
/// other sites serve meanwhile.
#[tokio::test]
async fn a_url_that_is_not_an_acme_directory_is_retried() {
    let o = opts(true);
    // an HTTPS server that is not an ACME CA: usher's own TLS listener on another instance
    let other = TestServer::start(
        "[[site]]\nnames = [\"127.0.0.1\"]\ndefault = true\n[[site.route]]\npath = \"/\"\nredirect = \"/nope\"\n",
    )
    .await;
    let ca = other.path("certs/local-ca/root.crt");
    let not_acme = format!("https://127.0.0.1:{}/dir", other.https().port());
    let dir = tempfile::tempdir().unwrap();
    let usher =
        TestServer::start_in(dir.path(), &config(&o, &not_acme, &ca, "notacme.test", "")).await;
    let state = dir.path().join("certs/acme/sites/notacme.test/state.json");
    eventually("two recorded failures", || {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["failures"].as_u64())
            .is_some_and(|f| f >= 2)
    })
    .await;
    let mut local = Client::tls(usher.https(), "local.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(
        local.get("local.test", "/").await.header("location"),
        "/from-local"
    );
}

/// A certs folder usher cannot write is a startup error naming it.
#[tokio::test]
async fn an_unwritable_certs_folder_is_a_startup_error() {
    // A path below a regular file cannot be created, even by root (CI runs as root, which
    // file modes would not stop).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "x").unwrap();
    let o = opts(true);
    let text = config(
        &o,
        "https://127.0.0.1:1/dir",
        Path::new("/dev/null"),
        "x.test",
        "",
    )
    .replace("ca_roots = [\"/dev/null\"]", "ca_roots = []")
    .replace("[server]", "[server]\ncerts_dir = \"not-a-dir/certs\"");
    std::fs::write(dir.path().join("proxy.toml"), text).unwrap();
    let config = usher::Config::load(&dir.path().join("proxy.toml")).unwrap();
    let err = usher::start(config).await.err().expect("must not start");
    assert!(err.to_string().contains("not-a-dir/certs"), "{err}");
}

/// The CA rejecting a renewal leaves the current certificate serving and its files untouched.
#[tokio::test]
async fn a_rejected_renewal_keeps_the_old_certificate() {
    let mut o = opts(true);
    o.acme_port = Some(free_port());
    // 12 s certificates: renewal due about 6 s after issuance
    o.validity_secs = Some(12);
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = crate::support::pebble::write_directory_cert(ca_dir.path());
    o.directory_cert_dir = Some(ca_dir.path().to_owned());
    let mut first_ca = Pebble::start(&o).await;
    let root = first_ca.issuer_root().await;
    let dir = tempfile::tempdir().unwrap();
    let usher = TestServer::start_in(
        dir.path(),
        &config(&o, &first_ca.directory, &ca, "keep.test", ""),
    )
    .await;
    let cert = served_cert(&usher, "keep.test", &root).await;
    let stored = std::fs::read(current_dir(dir.path(), "keep.test").join("cert.pem")).unwrap();
    // The same directory URL now answers with a CA that knows no account and refuses the name.
    first_ca.stop();
    let mut o2 = o.clone();
    o2.blocklist = vec!["keep.test".into()];
    let second_ca = Pebble::start(&o2).await;
    let deadline = Instant::now() + Duration::from_secs(25);
    while second_ca.orders() + second_ca.log().matches("POST /sign-me-up").count() == 0 {
        assert!(
            Instant::now() < deadline,
            "no renewal attempt reached the CA"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new CA does not know the stored account: usher sets it aside and makes a new one.
    eventually("a new account at the new CA", || {
        second_ca.log().contains("POST /sign-me-up")
    })
    .await;
    let accounts = dir.path().join("certs/acme/accounts");
    let aside = std::fs::read_dir(&accounts)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count();
    assert_eq!(aside, 1, "the unknown account was not set aside");
    // the failed renewal changed nothing: same certificate served, same file stored
    assert_eq!(served_cert(&usher, "keep.test", &root).await, cert);
    let after = std::fs::read(current_dir(dir.path(), "keep.test").join("cert.pem")).unwrap();
    assert_eq!(after, stored);
}
