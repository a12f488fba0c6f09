//! The command line: `check` on good and bad configs, exit codes, and the shipped proxy.toml
//! serving out of the box.

use std::path::Path;

use crate::support::process::{run, Running};
use crate::support::{Client, Proto};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn write(dir: &Path, text: &str) -> String {
    let p = dir.join("proxy.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn shipped_proxy_toml_passes_check() {
    let (status, out, err) = run(&["check"], repo());
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("proxy.toml: ok: 1 site, 2 routes"), "{out}");
    assert_eq!(out.lines().count(), 1, "one-line summary: {out}");
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[server]\nhttp = \"127.0.0.1:80\"\nhttps = 127.0.0.1:443\n",
    );
    let (status, _, err) = run(&["check", "--config", &file], dir.path());
    assert_eq!(status.code(), Some(2));
    assert!(err.contains(&format!("{file}:3:")), "{err}");
}

#[test]
fn unknown_key_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"127.0.0.1:9\"]\nstrip_prefixx = true\n",
    );
    let (status, _, err) = run(&["check", "-c", &file], dir.path());
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("unknown field `strip_prefixx`"), "{err}");
    assert!(err.contains(&format!("{file}:7:")), "{err}");
    assert!(
        err.contains("strip_prefix"),
        "the error lists the allowed keys: {err}"
    );
}

#[test]
fn every_semantic_error_is_reported_at_once_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        r#"[timeouts]
client_idle = "forever"

[[site]]
names = ["a.test"]
tls = "magic"
[[site.route]]
path = "api"
proxy = ["127.0.0.1"]

[[site]]
names = ["a.test"]
tls = "off"
[[site.route]]
path = "/"
redirect = "/x"
status = 200
"#,
    );
    let (status, _, err) = run(&["check", "--config", &file], dir.path());
    assert_eq!(status.code(), Some(2));
    for expected in [
        format!("{file}:2:15: timeouts.client_idle"),
        format!("{file}:6:7: site[0].tls: \"magic\" is not a TLS mode"),
        format!("{file}:8:8: site[0].route[0].path"),
        format!("{file}:9:9: site[0].route[0].proxy"),
        format!("{file}:12:9: site[1].names: \"a.test\" is already a name of site[0]"),
        format!("{file}:17:10: site[1].route[0].status: 200 is not a redirect status"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.contains("6 errors"), "{err}");
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "[[site]]\nnames = []\n");
    let (status, _, err) = run(&["run", "--config", &file], dir.path());
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("site[0].names"), "{err}");
    let (status, _, err) = run(&["--config", "/nonexistent/proxy.toml"], dir.path());
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("cannot read the config file"), "{err}");
}

#[test]
fn version_and_help() {
    let (status, out, _) = run(&["--version"], repo());
    assert!(status.success());
    assert!(
        out.starts_with(&format!("usher {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let (status, out, _) = run(&["--help"], repo());
    assert!(status.success());
    for word in ["run", "check", "--config"] {
        assert!(out.contains(word), "{out}");
    }
}

/// The shipped proxy.toml and public/ folder, with only the ports changed to ephemeral ones,
/// serve the demo: the page over https with the local CA, 308 from http, 502 for /api/.
#[tokio::test]
async fn shipped_config_serves_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("proxy.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        // nothing may listen on the demo app port during tests: point /api/ at a closed one
        .replace(
            "127.0.0.1:8000",
            &crate::support::upstream::closed_port().to_string(),
        );
    std::fs::write(dir.path().join("proxy.toml"), text).unwrap();
    std::fs::create_dir(dir.path().join("public")).unwrap();
    for f in std::fs::read_dir(repo().join("public")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("public").join(f.file_name())).unwrap();
    }
    let (mut usher, at) = Running::start(&dir.path().join("proxy.toml"), dir.path());
    let ca_line = usher.wait_for_line("local CA certificate:").unwrap();
    assert!(ca_line.contains("curl --cacert"), "{ca_line}");
    let ca = std::fs::read_to_string(dir.path().join("certs/local-ca/root.crt")).unwrap();
    let https = at.https.unwrap();
    let mut c = Client::tls(https, "localhost", &ca, Proto::H1)
        .await
        .unwrap();
    let page = c.get("localhost", "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("usher is running"));
    assert_eq!(c.get("localhost", "/api/health").await.status, 502);
    let mut plain = Client::plain(at.http.unwrap(), Proto::H1).await;
    let r = plain.get("localhost:8080", "/x?y=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        format!("https://localhost:{}/x?y=1", https.port())
    );
    drop((c, plain));
    usher.signal("TERM");
    let status = usher
        .wait_exit(crate::support::STEP)
        .expect("usher did not stop");
    assert!(status.success(), "{status:?}");
    let log = usher.stdout();
    assert!(log.contains("\"GET localhost /\" 200"), "{log}");
}

/// Started as root with `server.user`, usher binds, hands the certificates it wrote as
/// root to that user, then runs as that user: it keeps serving, and reloads (which read the
/// local CA again). Not started as root, the key is ignored with a note.
#[tokio::test]
async fn started_as_root_it_drops_to_the_configured_user() {
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "[server]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\ncerts_dir = \"certs\"\naccess_log = \"off\"\nuser = \"nobody\"\n[[site]]\nnames = [\"a.test\"]\ntls = \"internal\"\n[[site.route]]\npath = \"/\"\nredirect = \"/x\"\n",
    )
    .unwrap();
    let (mut usher, at) = Running::start(&file, dir.path());
    let root = crate::support::process::running_as_root();
    let uid_line = usher.uid_line();
    if root {
        // real, effective, saved and filesystem ids all changed
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        assert!(
            uid_line
                .split_whitespace()
                .skip(1)
                .all(|u| u == nobody.to_string()),
            "{uid_line}"
        );
        let key = dir.path().join("certs/local-ca/root.key");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(key).unwrap()),
            nobody
        );
        usher.signal("HUP");
        usher.wait_for_line("reloaded").expect("a reload as nobody");
    } else {
        usher.wait_for_line("ignored: not started as root").unwrap();
    }
    let mut c = Client::plain(at.http.unwrap(), Proto::H1).await;
    assert_eq!(c.get("a.test", "/").await.status, 308);
    drop(c);
    usher.signal("TERM");
    assert!(usher.wait_exit(crate::support::STEP).unwrap().success());
}

/// A non-root user with CAP_NET_BIND_SERVICE (as the systemd unit grants it) binds port
/// 80; without the capability, startup fails naming the address. Needs root to set the
/// scene (setpriv); skipped otherwise.
#[tokio::test]
async fn cap_net_bind_service_lets_a_non_root_user_bind_port_80() {
    use crate::support::process::{run_as, runnable_by_others, running_as_root};
    if !running_as_root() || !runnable_by_others() {
        eprintln!("skipped: needs root to start usher as another user with a capability");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // an address of the loopback range nothing else uses
    let file = write(
        dir.path(),
        "[server]\nhttp = \"127.77.0.80:80\"\naccess_log = \"off\"\n[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nredirect = \"/x\"\n",
    );
    let (status, _, err) = run_as(&["run", "--config", &file], dir.path(), Some(65534));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot listen on 127.77.0.80:80") && err.contains("Permission denied"),
        "{err}"
    );
    let (mut usher, at) = Running::start_wrapped(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
            "--",
        ],
        Path::new(&file),
        dir.path(),
    );
    assert_eq!(at.http.map(|a| a.port()), Some(80));
    let uid = usher.uid_line();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid}"
    );
    let mut c = Client::plain(at.http.unwrap(), Proto::H1).await;
    assert_eq!(c.get("a.test", "/").await.status, 308);
    drop(c);
    usher.signal("TERM");
    assert!(usher.wait_exit(crate::support::STEP).unwrap().success());
}

/// Given one CPU (here through TOKIO_WORKER_THREADS=1, as the benchmark's pinning does),
/// usher runs on a current-thread runtime: it proxies, reloads on SIGHUP and drains on
/// SIGTERM there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_the_current_thread_runtime_proxies_reloads_and_drains() {
    let app = crate::support::Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        &format!(
            "[server]\nhttp = \"127.0.0.1:0\"\naccess_log = \"off\"\n[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
            app.addr
        ),
    );
    let (mut usher, at) = tokio::task::spawn_blocking({
        let (file, dir) = (file.clone(), dir.path().to_owned());
        move || Running::start_wrapped(&["env", "TOKIO_WORKER_THREADS=1"], Path::new(&file), &dir)
    })
    .await
    .unwrap();
    assert!(
        usher
            .seen()
            .iter()
            .any(|l| l.contains("runtime: current-thread")),
        "{:?}",
        usher.seen()
    );
    let mut c = Client::plain(at.http.unwrap(), Proto::H1).await;
    let r = c.get("a.test", "/x").await;
    assert_eq!(
        (r.status.as_u16(), r.text().starts_with("app ")),
        (200, true)
    );
    usher.signal("HUP");
    let mut usher = tokio::task::spawn_blocking(move || {
        usher.wait_for_line("reloaded").expect("a reload");
        usher
    })
    .await
    .unwrap();
    assert_eq!(c.get("a.test", "/y").await.status, 200);
    drop(c);
    usher.signal("TERM");
    let status = tokio::task::spawn_blocking(move || usher.wait_exit(crate::support::STEP))
        .await
        .unwrap();
    assert!(status.unwrap().success());
}

/// A client that sends an IP address as SNI (wrk does on every handshake, and anyone can)
/// costs no log line: rustls's warnings about what a peer sent are kept to errors.
#[test]
fn an_ip_address_as_sni_is_not_logged_per_handshake() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[server]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\naccess_log = \"off\"\ncerts_dir = \"certs\"\n[[site]]\nnames = [\"a.test\"]\ndefault = true\n[[site.route]]\npath = \"/\"\nredirect = \"/x\"\n",
    );
    let (mut usher, at) = Running::start(Path::new(&file), dir.path());
    // A ClientHello naming "127.0.0.1" in its server_name extension. It offers no key share,
    // so the handshake fails after the hello is read; the SNI is what matters here.
    let name = b"127.0.0.1";
    let mut sni = vec![0x00, 0x00]; // extension type server_name
    let list_len = 3 + name.len();
    sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    sni.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni.push(0x00); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let versions = [0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]; // supported_versions: TLS 1.3
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    hello.extend_from_slice(&((sni.len() + versions.len()) as u16).to_be_bytes());
    hello.extend_from_slice(&sni);
    hello.extend_from_slice(&versions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(at.https.unwrap()).unwrap();
        s.set_read_timeout(Some(crate::support::STEP)).unwrap();
        s.write_all(&record).unwrap();
        // usher answers with an alert and closes: the hello has been read and judged
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert_eq!(answer.first(), Some(&0x15), "expected an alert: {answer:?}");
    }
    // a reload logs a line after anything the handshakes logged
    usher.signal("HUP");
    usher.wait_for_line("reloaded").expect("a reload");
    assert!(
        !usher.seen().iter().any(|l| l.contains("SNI")),
        "{:?}",
        usher.seen()
    );
    usher.signal("TERM");
    assert!(usher.wait_exit(crate::support::STEP).unwrap().success());
}
