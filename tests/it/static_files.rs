//! Static files: index, types, Range, 304, precompressed siblings, single-page-app fallback, and
//! every way out of the root we know of.

use std::path::Path;

use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{bounded, Client, Proto, TestServer};

const SECRET: &str = "TOPSECRET-outside-the-root";

/// A folder with `www/` (the root) and a secret file beside it.
fn make_site(dir: &Path) {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    std::fs::create_dir_all(www.join("app")).unwrap();
    std::fs::write(www.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(www.join("a.txt"), "hello static").unwrap();
    std::fs::write(www.join("style.css"), "body{}").unwrap();
    std::fs::write(www.join("app.js"), "console.log('plain')").unwrap();
    std::fs::write(www.join("app.js.gz"), b"\x1f\x8bGZIPPED").unwrap();
    std::fs::write(www.join("app.js.br"), b"BROTLIED").unwrap();
    std::fs::write(www.join("sub/index.html"), "<h1>sub</h1>").unwrap();
    std::fs::write(www.join("app/shell.html"), "<div id=app></div>").unwrap();
    std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), www.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(dir, www.join("linkdir")).unwrap();
    // a precompressed sibling that is a symlink out of the root must not be used
    std::fs::write(www.join("trap.css"), "trap{}").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), www.join("trap.css.gz")).unwrap();
}

async fn start() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    make_site(dir.path());
    let config = format!(
        r#"{}
[[site]]
names = ["s.test"]
tls = "off"
[[site.route]]
path = "/"
static = "www"
[[site.route]]
path = "/spa/"
strip_prefix = true
static = "www/app"
index = "shell.html"
fallback = "shell.html"
"#,
        crate::support::server::SERVER_SECTION
    );
    let usher = TestServer::start_in(dir.path(), &config).await;
    (dir, usher)
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<bytes::Bytes>> {
    let mut b = Request::get(path).header("host", "s.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

#[tokio::test]
async fn serves_files_and_index_with_content_types() {
    let (_dir, usher) = start().await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("s.test", "/").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "<h1>home</h1>")
    );
    assert!(r.header("content-type").starts_with("text/html"));
    let r = c.get("s.test", "/style.css").await;
    assert!(r.header("content-type").starts_with("text/css"));
    let r = c.get("s.test", "/sub/").await;
    assert_eq!(r.text(), "<h1>sub</h1>");
    // a folder without its slash redirects, keeping the query
    let r = c.get("s.test", "/sub?x=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), "/sub/?x=1");
    assert_eq!(c.get("s.test", "/missing.txt").await.status, 404);
    // HEAD: headers, no body
    let head = Request::head("/a.txt")
        .header("host", "s.test")
        .body(Full::default())
        .unwrap();
    let r = c.send(head).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), "12");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn range_requests() {
    let (_dir, usher) = start().await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.send(get("/a.txt", &[("range", "bytes=0-4")])).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-range"), "bytes 0-4/12");
    let r = c.send(get("/a.txt", &[("range", "bytes=6-")])).await;
    assert_eq!(r.text(), "static");
    let r = c.send(get("/a.txt", &[("range", "bytes=100-200")])).await;
    assert_eq!(r.status, 416);
}

#[tokio::test]
async fn if_modified_since_gives_304() {
    let (_dir, usher) = start().await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("s.test", "/a.txt").await;
    let lm = r.header("last-modified").to_owned();
    assert!(!lm.is_empty());
    let r = c.send(get("/a.txt", &[("if-modified-since", &lm)])).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = c
        .send(get(
            "/a.txt",
            &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        ))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn precompressed_siblings_when_accepted() {
    let (_dir, usher) = start().await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.send(get("/app.js", &[("accept-encoding", "gzip")])).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_eq!(&r.body[..], b"\x1f\x8bGZIPPED");
    assert!(r.header("content-type").contains("javascript"));
    let r = c
        .send(get("/app.js", &[("accept-encoding", "br, gzip")]))
        .await;
    assert_eq!(r.header("content-encoding"), "br");
    assert_eq!(&r.body[..], b"BROTLIED");
    let r = c.get("s.test", "/app.js").await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.text(), "console.log('plain')");
    // a sibling that leads out of the root is ignored
    let r = c
        .send(get("/trap.css", &[("accept-encoding", "gzip")]))
        .await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.text(), "trap{}");
}

#[tokio::test]
async fn single_page_app_fallback_and_custom_index() {
    let (_dir, usher) = start().await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("s.test", "/spa/").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "<div id=app></div>")
    );
    let r = c.get("s.test", "/spa/users/42").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "<div id=app></div>")
    );
}

/// Sends a request line exactly as given (no client-side normalisation) and returns the status
/// and body.
async fn raw_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: s.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    bounded("raw response", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn no_request_reads_outside_the_root() {
    let (_dir, usher) = start().await;
    let attempts = [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/..%2fsecret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/a.txt%00.html",
        "/%00",
        "/link.txt",
        "/linkdir/secret.txt",
        "/spa/../../secret.txt",
        "/spa/%2e%2e/%2e%2e/secret.txt",
        "/./a.txt",
        "//etc/passwd",
    ];
    for target in attempts {
        let (status, text) = raw_get(usher.http, target).await;
        assert!(
            matches!(status, 400 | 403 | 404),
            "{target}: expected 400/403/404, got {status}: {text}"
        );
        assert!(!text.contains(SECRET), "{target} leaked the secret");
        assert!(!text.contains("root:"), "{target} leaked /etc/passwd");
    }
    // the server is still healthy afterwards
    let (status, _) = raw_get(usher.http, "/a.txt").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stripped_routes_root_without_slash_redirects_and_long_names_are_404() {
    let (_dir, usher) = start().await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    // the /spa/ route strips its prefix; "/spa" alone is its folder without the slash
    let usher2 = {
        let dir = tempfile::tempdir().unwrap();
        make_site(dir.path());
        let config = format!(
            "{}\n[[site]]\nnames = [\"s.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/static\"\nstrip_prefix = true\nstatic = \"www\"\n",
            crate::support::server::SERVER_SECTION
        );
        (TestServer::start_in(dir.path(), &config).await, dir)
    };
    let mut c2 = Client::plain(usher2.0.http, Proto::H1).await;
    let r = c2.get("s.test", "/static").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), "/static/");
    assert_eq!(c2.get("s.test", "/static/").await.text(), "<h1>home</h1>");
    // a path segment longer than the file system allows is a plain 404, not a 500
    let long = format!("/{}", "a".repeat(300));
    assert_eq!(c.get("s.test", &long).await.status, 404);
}

/// A static site for the memory tests: `file_cache_valid` as given, and `page.txt` a symlink
/// to one of two versions (as deploy tools switch them).
async fn start_hot(valid: &str) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("v1.txt"), "version one").unwrap();
    std::fs::write(www.join("v2.txt"), "version two").unwrap();
    std::fs::write(www.join("a.txt"), "first").unwrap();
    std::os::unix::fs::symlink("v1.txt", www.join("page.txt")).unwrap();
    let config = format!(
        "{}\n[[site]]\nnames = [\"s.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nstatic = \"www\"\nfile_cache_valid = \"{valid}\"\n",
        crate::support::server::SERVER_SECTION
    );
    let usher = TestServer::start_in(dir.path(), &config).await;
    (dir, usher)
}

/// Served from memory, a small file still answers exactly as from disk: type, length,
/// validators, 304 for If-None-Match and If-Modified-Since, HEAD without a body; a Range
/// request takes the full path.
#[tokio::test]
async fn a_hot_file_answers_as_from_disk() {
    let (_dir, usher) = start_hot("1h").await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("s.test", "/a.txt").await;
    let second = c.get("s.test", "/a.txt").await;
    for r in [&first, &second] {
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "first"));
        assert_eq!(r.header("content-type"), "text/plain");
        assert_eq!(r.header("content-length"), "5");
        assert_eq!(r.header("accept-ranges"), "bytes");
    }
    assert_eq!(first.header("etag"), second.header("etag"));
    assert_eq!(
        first.header("last-modified"),
        second.header("last-modified")
    );
    let etag = second.header("etag").to_owned();
    let r = c.send(get("/a.txt", &[("if-none-match", &etag)])).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (304, 0));
    assert_eq!(r.header("etag"), etag);
    let lm = second.header("last-modified").to_owned();
    let r = c.send(get("/a.txt", &[("if-modified-since", &lm)])).await;
    assert_eq!(r.status, 304);
    // If-None-Match decides when both are sent
    let r = c
        .send(get(
            "/a.txt",
            &[("if-none-match", "\"other\""), ("if-modified-since", &lm)],
        ))
        .await;
    assert_eq!(r.status, 200);
    let head = c
        .send(
            Request::head("/a.txt")
                .header("host", "s.test")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), "5");
    let r = c.send(get("/a.txt", &[("range", "bytes=1-2")])).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (206, "ir"));
}

/// Within `file_cache_valid` a hot file is answered from memory without looking at the
/// disk: even once it is gone (as nginx's open_file_cache does).
#[tokio::test]
async fn within_its_validity_a_hot_file_comes_from_memory() {
    let (dir, usher) = start_hot("1h").await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("s.test", "/a.txt").await.text(), "first");
    std::fs::remove_file(dir.path().join("www/a.txt")).unwrap();
    let r = c.get("s.test", "/a.txt").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "first"));
}

/// With `file_cache_valid = "0s"` every request looks again: an edited file, a deleted one
/// and a switched symlink are all seen at once.
#[tokio::test]
async fn hot_files_follow_edits_deletions_and_symlink_switches() {
    let (dir, usher) = start_hot("0s").await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("s.test", "/page.txt").await.text(), "version one");
    assert_eq!(c.get("s.test", "/a.txt").await.text(), "first");
    // edited in place (another size)
    std::fs::write(dir.path().join("www/a.txt"), "edited!").unwrap();
    assert_eq!(c.get("s.test", "/a.txt").await.text(), "edited!");
    // deleted
    std::fs::remove_file(dir.path().join("www/a.txt")).unwrap();
    assert_eq!(c.get("s.test", "/a.txt").await.status, 404);
    // the symlink switched atomically (renamed over)
    std::os::unix::fs::symlink("v2.txt", dir.path().join("www/next")).unwrap();
    std::fs::rename(dir.path().join("www/next"), dir.path().join("www/page.txt")).unwrap();
    assert_eq!(c.get("s.test", "/page.txt").await.text(), "version two");
}
