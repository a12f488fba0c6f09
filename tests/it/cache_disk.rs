//! The cache's disk tier: entries that outlive a restart, damaged files dropped, the
//! folder kept within its size, and a folder that cannot be written refused at startup.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::caching::config;
use crate::support::server::SERVER_SECTION;
use crate::support::{Client, Proto, TestServer, Upstream};

/// A config for `up` whose cache has a disk tier in `{dir}/cache` (plus `extra` in
/// `[cache]`).
fn disk_config(up: &str, extra: &str) -> String {
    format!(
        "{SERVER_SECTION}\n[cache]\ndisk_dir = \"cache\"\n{extra}\n{}",
        config(up, "")
    )
}

/// The entry files in `dir/cache`.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "entry"))
        .collect();
    v.sort();
    v
}

/// The entry file holding `needle` (a path in its key).
fn entry_with(dir: &Path, needle: &str) -> PathBuf {
    entries(dir)
        .into_iter()
        .find(|p| {
            let bytes = std::fs::read(p).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .unwrap_or_else(|| panic!("no entry file for {needle}"))
}

/// Stored before a restart, served after it from disk with the app gone.
#[tokio::test]
async fn the_disk_tier_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start("app").await;
    let text = disk_config(&app.addr, "");
    let usher = TestServer::start_in(dir.path(), &text).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("app.test", "/cache/max-age=600/kept").await;
    assert!(first.header("cache-status").contains("stored"));
    drop(c);
    // the drain lets the disk write finish
    usher.stop().await;
    assert_eq!(entries(dir.path()).len(), 1);
    drop(app);

    let usher = TestServer::start_in(dir.path(), &text).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let again = c.get("app.test", "/cache/max-age=600/kept").await;
    assert_eq!(
        (again.status, again.text()),
        (http::StatusCode::OK, first.text())
    );
    assert!(
        again.header("cache-status").contains("hit")
            && again.header("cache-status").contains("detail=disk"),
        "{:?}",
        again.headers
    );
    assert_eq!(again.header("etag"), first.header("etag"));
    // now in memory too
    let third = c.get("app.test", "/cache/max-age=600/kept").await;
    assert!(
        !third.header("cache-status").contains("disk"),
        "{:?}",
        third.headers
    );
    // the app is down: anything not stored is a 502
    assert_eq!(
        c.get("app.test", "/cache/max-age=600/new").await.status,
        502
    );
    drop(c);
    usher.stop().await;
}

/// A truncated file is dropped when the folder is indexed, one with a flipped bit when it
/// is read; neither is served, and the app answers instead. Leftovers of interrupted
/// writes are removed; files that are not usher's are left alone.
#[tokio::test]
async fn damaged_disk_entries_are_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start("app").await;
    let usher = TestServer::start_in(dir.path(), &disk_config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    c.get("app.test", "/cache/max-age=600/cut").await;
    c.get("app.test", "/cache/max-age=600/flipped").await;
    drop(c);
    usher.stop().await;
    drop(app);

    let cut = entry_with(dir.path(), "/cut");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let flipped = entry_with(dir.path(), "/flipped");
    let mut bytes = std::fs::read(&flipped).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0x01; // in the body, before the CRC
    std::fs::write(&flipped, &bytes).unwrap();
    let leftover = dir.path().join("cache/.usher-tmpAbC123");
    std::fs::write(&leftover, b"half an entry").unwrap();
    let foreign = dir.path().join("cache/.tmp-not-usher");
    std::fs::write(&foreign, b"not usher's").unwrap();

    let app = Upstream::start("app2").await;
    let usher = TestServer::start_in(dir.path(), &disk_config(&app.addr, "")).await;
    assert!(!cut.exists(), "a truncated entry is deleted at startup");
    assert!(!leftover.exists(), "an interrupted write is cleaned up");
    assert!(foreign.exists(), "other files are left alone");
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for path in ["/cache/max-age=600/cut", "/cache/max-age=600/flipped"] {
        let r = c.get("app.test", path).await;
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("app2 "), "{path}: {}", r.text());
        assert!(
            r.header("cache-status").contains("fwd=miss"),
            "{path}: {:?}",
            r.headers
        );
    }
    assert_eq!(app.seen().len(), 2);
    assert!(!flipped.exists(), "a corrupt entry is deleted when read");
    drop(c);
    usher.stop().await;
    // and both are stored again, whole
    assert_eq!(entries(dir.path()).len(), 2);
}

/// Ten 300 KB responses fill a 4 MiB folder; a restart with a 1 MiB bound trims it to
/// that, keeping the most recent entries.
#[tokio::test]
async fn the_disk_tier_stays_within_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start("app").await;
    let usher =
        TestServer::start_in(dir.path(), &disk_config(&app.addr, "disk_size = \"4MiB\"")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..10 {
        let r = c
            .get("app.test", &format!("/cache/max-age=600/big-{i}"))
            .await;
        assert!(
            r.header("cache-status").contains("stored"),
            "{:?}",
            r.headers
        );
    }
    drop(c);
    usher.stop().await;
    let total = |dir: &Path| -> u64 {
        entries(dir)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    assert_eq!(entries(dir.path()).len(), 10);
    assert!(total(dir.path()) <= 4 << 20);

    let usher =
        TestServer::start_in(dir.path(), &disk_config(&app.addr, "disk_size = \"1MiB\"")).await;
    let files = entries(dir.path()).len();
    assert!(total(dir.path()) <= 1 << 20, "{} bytes", total(dir.path()));
    assert!((1..10).contains(&files), "{files} entries kept");
    entry_with(dir.path(), "/big-9");
    // what is left is served from disk
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("app.test", "/cache/max-age=600/big-9").await;
    assert!(
        r.header("cache-status").contains("detail=disk"),
        "{:?}",
        r.headers
    );
    drop(c);
    usher.stop().await;
}

/// The credentials of a request never reach the disk: the cache keeps them only as keyed
/// hashes (enough to match a `Vary: Cookie`).
#[tokio::test]
async fn credentials_are_not_written_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start("app").await;
    let usher = TestServer::start_in(dir.path(), &disk_config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let mut req = crate::support::client::get("app.test", "/cache/public,max-age=600/private");
    req.headers_mut()
        .insert("cookie", "session=SECRET-COOKIE-123".parse().unwrap());
    req.headers_mut()
        .insert("authorization", "Bearer SECRET-TOKEN-456".parse().unwrap());
    let r = c.send(req).await;
    assert!(
        r.header("cache-status").contains("stored"),
        "{:?}",
        r.headers
    );
    drop(c);
    usher.stop().await;
    let file = entry_with(dir.path(), "/private");
    let bytes = std::fs::read(file).unwrap();
    for secret in ["SECRET-COOKIE-123", "SECRET-TOKEN-456"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is on disk"
        );
    }
}

/// A disk folder usher cannot create or write stops startup with an error naming it; the
/// config check already refuses a path that is a file.
#[tokio::test]
async fn a_disk_folder_that_cannot_be_written_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    // a path under a file cannot be created, even by root
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let text = disk_config("127.0.0.1:9", "").replace("\"cache\"", "\"file/cache\"");
    std::fs::write(dir.path().join("proxy.toml"), &text).unwrap();
    let config = usher::Config::load(&dir.path().join("proxy.toml")).unwrap();
    let err = usher::server::start(config)
        .await
        .err()
        .expect("it started");
    let msg = err.to_string();
    assert!(
        msg.contains("cache.disk_dir")
            && msg.contains("file/cache")
            && msg.contains("cannot create it"),
        "{msg}"
    );

    // a read-only folder, for a user it is read-only to (root writes anyway: run as nobody)
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = disk_config("127.0.0.1:9", "").replace("\"cache\"", "\"ro\"");
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, &text).unwrap();
    let root = crate::support::process::running_as_root();
    if root && !crate::support::process::runnable_by_others() {
        eprintln!("skipped the read-only folder case: nobody cannot run the test binary here");
        return;
    }
    let (status, _, err) = crate::support::process::run_as(
        &["run", "--config", file.to_str().unwrap()],
        dir.path(),
        root.then_some(65534),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cache.disk_dir")
            && err.contains("cannot write in it")
            && err.contains("permission denied"),
        "{err}"
    );

    // `usher check` names a disk_dir that is a file
    let text = disk_config("127.0.0.1:9", "").replace("\"cache\"", "\"file\"");
    std::fs::write(&file, &text).unwrap();
    let (status, _, err) =
        crate::support::process::run(&["check", "--config", file.to_str().unwrap()], dir.path());
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("cache.disk_dir") && err.contains("not a folder"),
        "{err}"
    );
}

/// A PURGE on the admin listener and a successful POST delete the disk entries too: after
/// a restart with the app gone, only what was neither purged nor invalidated is served.
#[tokio::test]
async fn purges_and_unsafe_methods_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start("app").await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        disk_config(&app.addr, "")
    );
    let paths = [
        "/cache/max-age=600/kept",
        "/cache/max-age=600/posted",
        "/cache/max-age=600/old/a",
        "/cache/max-age=600/old/b",
    ];
    let usher = TestServer::start_in(dir.path(), &text).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for p in paths {
        c.get("app.test", p).await;
    }
    drop(c);
    usher.stop().await;
    assert_eq!(entries(dir.path()).len(), 4);

    let usher = TestServer::start_in(dir.path(), &text).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let post = http::Request::post(paths[1])
        .header("host", "app.test")
        .body(http_body_util::Full::new(bytes::Bytes::from("edit")))
        .unwrap();
    assert_eq!(c.send(post).await.status, 200);
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    let purge = http::Request::builder()
        .method("PURGE")
        .uri("/cache/max-age=600/old/*")
        .header("host", "app.test")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(admin.send(purge).await.status, 200);
    // deleted at once, not at the next restart
    assert_eq!(entries(dir.path()).len(), 1);
    entry_with(dir.path(), "/kept");
    drop((c, admin));
    usher.stop().await;
    drop(app);

    let usher = TestServer::start_in(dir.path(), &text).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert!(c
        .get("app.test", paths[0])
        .await
        .header("cache-status")
        .contains("hit"));
    for p in &paths[1..] {
        assert_eq!(c.get("app.test", p).await.status, 502, "{p}");
    }
    drop(c);
    usher.stop().await;
}
