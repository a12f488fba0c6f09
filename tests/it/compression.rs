//! Response compression (tower-http) by Accept-Encoding, for proxied and static responses.

use crate::support::{Client, Proto, TestServer, Upstream};

fn config(up: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/files/\"\nstatic = \"{{dir}}/public\"\nstrip_prefix = true\n[[site.route]]\npath = \"/\"\nproxy = [\"{up}\"]\n"
    )
}

fn accepting(path: &str, encodings: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = crate::support::client::get("app.test", path);
    r.headers_mut()
        .insert("accept-encoding", encodings.parse().unwrap());
    r
}

/// usher in a temp folder with `public/` holding a large page and a tiny file; keep the
/// folder until the test ends.
async fn start(extra: &str) -> (TestServer, Upstream, tempfile::TempDir) {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::write(public.join("page.html"), "<p>hello</p>\n".repeat(500)).unwrap();
    std::fs::write(public.join("tiny.txt"), "tiny").unwrap();
    let text = format!(
        "{}{}",
        crate::support::server::SERVER_SECTION,
        config(&app.addr, extra)
    );
    let usher = TestServer::start_in(dir.path(), &text).await;
    (usher, app, dir)
}

/// Each encoding the client prefers, for a 16 KiB proxied body: smaller, labelled, and
/// with Vary: Accept-Encoding; a client that does not ask gets the body as it is (an
/// identity body is right for everyone, so it needs no Vary).
#[tokio::test]
async fn proxied_responses_are_compressed_by_accept_encoding() {
    let (usher, _app, _dir) = start("").await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for (accept, expect) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br;q=1.0, zstd;q=0.5", "br"),
    ] {
        let r = c.send(accepting("/stream?chunks=1&ms=0", accept)).await;
        assert_eq!(r.header("content-encoding"), expect, "{accept}");
        assert!(r.body.len() < 1024, "{accept}: {} bytes", r.body.len());
        assert!(r
            .header("vary")
            .to_ascii_lowercase()
            .contains("accept-encoding"));
    }
    let plain = c.get("app.test", "/stream?chunks=1&ms=0").await;
    assert_eq!(plain.header("content-encoding"), "");
    assert_eq!(plain.body.len(), 16 * 1024);
}

/// Static files without a precompressed sibling are compressed; tiny bodies are not.
#[tokio::test]
async fn static_files_are_compressed_but_not_tiny_ones() {
    let (usher, _app, _dir) = start("").await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.send(accepting("/files/page.html", "gzip")).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert!(r.body.len() < 500);
    let r = c.send(accepting("/files/tiny.txt", "gzip")).await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.text(), "tiny");
    // held in memory by now, and still compressed for a client that accepts it
    let r = c.get("app.test", "/files/page.html").await;
    assert_eq!((r.header("content-encoding"), r.body.len()), ("", 6500));
    let r = c.send(accepting("/files/page.html", "gzip")).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert!(r.body.len() < 500);
    assert_eq!(r.header("content-type"), "text/html");
    assert!(r.header("etag").starts_with("W/"), "{:?}", r.headers);
}

/// `compression = false` (in `[server]`) turns it off.
#[tokio::test]
async fn compression_can_be_turned_off() {
    let (usher, _app, _dir) = start("compression = false").await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.send(accepting("/stream?chunks=1&ms=0", "gzip")).await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.body.len(), 16 * 1024);
}

/// Static files carry a strong ETag and answer If-None-Match with 304; compressing one on
/// the fly weakens its ETag (the bytes differ), and a precompressed sibling has its own.
#[tokio::test]
async fn static_files_have_etags_and_answer_if_none_match() {
    let (usher, _app, dir) = start("").await;
    std::fs::write(dir.path().join("public/pre.js"), "x".repeat(2000)).unwrap();
    std::fs::write(dir.path().join("public/pre.js.gz"), "gzipped bytes").unwrap();
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("app.test", "/files/page.html").await;
    let etag = r.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 4, "{etag:?}");
    let mut again = crate::support::client::get("app.test", "/files/page.html");
    again
        .headers_mut()
        .insert("if-none-match", etag.parse().unwrap());
    let r = c.send(again).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);
    // another ETag in the list, or none matching: the file
    let mut other = crate::support::client::get("app.test", "/files/page.html");
    other
        .headers_mut()
        .insert("if-none-match", "\"nope\"".parse().unwrap());
    assert_eq!(c.send(other).await.status, 200);
    // compressed on the fly: weak
    let r = c.send(accepting("/files/page.html", "gzip")).await;
    assert_eq!(r.header("etag"), format!("W/{etag}"));
    // the precompressed sibling: a strong ETag of its own
    let plain = c
        .get("app.test", "/files/pre.js")
        .await
        .header("etag")
        .to_owned();
    let gz = c.send(accepting("/files/pre.js", "gzip")).await;
    assert_eq!(gz.header("content-encoding"), "gzip");
    let gz_tag = gz.header("etag");
    assert!(
        !gz_tag.starts_with("W/") && gz_tag != plain,
        "{plain} {gz_tag}"
    );
}
