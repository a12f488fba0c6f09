//! The response cache (RFC 9111 through http-cache-semantics) with a real upstream.

use std::time::Duration;

use crate::support::{Behaviour, Client, Proto, TestServer, Upstream};

pub(crate) fn config(up: &str, route_extra: &str) -> String {
    format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{up}\"]\ncache = {{ {route_extra} }}\n"
    )
}

fn with_header(
    path: &str,
    name: &str,
    value: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = crate::support::client::get("app.test", path);
    r.headers_mut().insert(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    r
}

/// A response with max-age is stored and served without the app; no-store never is.
#[tokio::test]
async fn fresh_responses_are_served_from_the_cache() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("app.test", "/cache/max-age=60/a").await;
    assert_eq!(first.status, 200);
    assert!(
        first.header("cache-status").contains("fwd=miss; stored"),
        "{:?}",
        first.headers
    );
    let second = c.get("app.test", "/cache/max-age=60/a").await;
    assert_eq!(second.text(), first.text());
    assert!(
        second.header("cache-status").contains("hit"),
        "{:?}",
        second.headers
    );
    assert!(second.headers.contains_key("age"));
    assert_eq!(app.seen().len(), 1);
    // HEAD is answered from the entry too
    let head = c
        .send(
            http::Request::head("/cache/max-age=60/a")
                .header("host", "app.test")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!((head.status, head.body.len()), (http::StatusCode::OK, 0));
    assert_eq!(app.seen().len(), 1);
    // no-store and private are not stored by a shared cache
    for path in ["/cache/no-store/b", "/cache/private,max-age=60/c"] {
        c.get("app.test", path).await;
        c.get("app.test", path).await;
    }
    assert_eq!(app.seen().len(), 5);
}

/// A client's If-None-Match that names the stored ETag gets a 304 from the cache.
#[tokio::test]
async fn the_cache_answers_conditional_requests() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("app.test", "/cache/max-age=60/etag").await;
    let etag = first.header("etag").to_owned();
    let r = c
        .send(with_header(
            "/cache/max-age=60/etag",
            "if-none-match",
            &etag,
        ))
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(app.seen().len(), 1);
}

/// Vary: the stored variant is used only for a request with the same selecting header.
#[tokio::test]
async fn vary_selects_the_stored_variant() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let path = "/cache/max-age=60/vary";
    let en = c.send(with_header(path, "accept-language", "en")).await;
    assert!(en.text().ends_with(" en"));
    let en2 = c.send(with_header(path, "accept-language", "en")).await;
    assert!(en2.header("cache-status").contains("hit"));
    let fr = c.send(with_header(path, "accept-language", "fr")).await;
    assert!(
        fr.text().ends_with(" fr"),
        "a French client got {}",
        fr.text()
    );
    assert_eq!(app.seen().len(), 2);
}

/// 200 concurrent requests for one uncached key make exactly one upstream request.
#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let app = Upstream::start_slow("app", Duration::from_millis(300)).await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = usher.http;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::plain(addr, Proto::H1).await;
            c.get("app.test", "/cache/max-age=60/popular").await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(app.seen().len(), 1);
}

/// A stale entry with a validator is revalidated with If-None-Match; the app's 304
/// refreshes it.
#[tokio::test]
async fn a_stale_entry_is_revalidated() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("app.test", "/cache/max-age=1/reval").await;
    // the entry's lifetime passing is the behaviour under test
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = c.get("app.test", "/cache/max-age=1/reval").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.text(), first.text());
    assert!(
        again
            .header("cache-status")
            .contains("fwd=stale; fwd-status=304"),
        "{:?}",
        again.headers
    );
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["if-none-match"], first.header("etag"));
    // refreshed: fresh again without the app
    assert!(c
        .get("app.test", "/cache/max-age=1/reval")
        .await
        .header("cache-status")
        .contains("hit"));
    assert_eq!(app.seen().len(), 2);
}

/// With the app down: a fresh entry is served without contacting it, a stale one within
/// stale_if_error is served stale, and an unknown key gets 502.
#[tokio::test]
async fn entries_outlive_the_app() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "stale_if_error = \"1h\"")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let fresh = c.get("app.test", "/cache/max-age=60/fresh").await;
    let stale = c.get("app.test", "/cache/max-age=1/stale").await;
    drop(app);
    // let the second entry go stale (the lifetime passing is the behaviour under test)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("app.test", "/cache/max-age=60/fresh").await;
    assert_eq!((r.status, r.text()), (http::StatusCode::OK, fresh.text()));
    let r = c.get("app.test", "/cache/max-age=1/stale").await;
    assert_eq!((r.status, r.text()), (http::StatusCode::OK, stale.text()));
    assert!(
        r.header("cache-status").contains("stale-if-error"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        c.get("app.test", "/cache/max-age=60/never").await.status,
        502
    );
}

/// A successful POST to a URL drops what the cache holds for it.
#[tokio::test]
async fn an_unsafe_method_invalidates_the_target() {
    let app = Upstream::start_with("app", Behaviour::default()).await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    c.get("app.test", "/cache/max-age=60/doc").await;
    c.get("app.test", "/cache/max-age=60/doc").await;
    assert_eq!(app.seen().len(), 1);
    let post = http::Request::post("/cache/max-age=60/doc")
        .header("host", "app.test")
        .body(http_body_util::Full::new(bytes::Bytes::from("edit")))
        .unwrap();
    assert_eq!(c.send(post).await.status, 200);
    let r = c.get("app.test", "/cache/max-age=60/doc").await;
    assert!(r.header("cache-status").contains("fwd=miss"));
    assert_eq!(app.seen().len(), 3);
}

/// PURGE works on the admin listener only: the public one answers 405 and purges nothing;
/// the admin one drops a URL's entries, or every entry under a prefix.
#[tokio::test]
async fn purge_is_for_the_admin_listener_only() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        config(&app.addr, "")
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for p in [
        "/cache/max-age=60/x?a=1",
        "/cache/max-age=60/y",
        "/cache/max-age=60/z",
    ] {
        c.get("app.test", p).await;
    }
    let purge = |path: &str| {
        http::Request::builder()
            .method("PURGE")
            .uri(path)
            .header("host", "app.test")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let r = c.send(purge("/cache/max-age=60/x")).await;
    assert_eq!(r.status, 405);
    assert!(c
        .get("app.test", "/cache/max-age=60/x?a=1")
        .await
        .header("cache-status")
        .contains("hit"));
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    assert_eq!(admin.send(purge("/cache/max-age=60/x")).await.status, 200);
    let r = c.get("app.test", "/cache/max-age=60/x?a=1").await;
    assert!(
        r.header("cache-status").contains("fwd=miss"),
        "{:?}",
        r.headers
    );
    assert!(c
        .get("app.test", "/cache/max-age=60/y")
        .await
        .header("cache-status")
        .contains("hit"));
    assert_eq!(admin.send(purge("/cache/*")).await.status, 200);
    for p in ["/cache/max-age=60/y", "/cache/max-age=60/z"] {
        assert!(c
            .get("app.test", p)
            .await
            .header("cache-status")
            .contains("fwd=miss"));
    }
    assert_eq!(admin.get("app.test", "/healthz").await.status, 200);
}

/// What a shared cache must not keep, or cannot: a Set-Cookie response without public or
/// s-maxage, a response to an Authorization request, a body over max_entry (passed through
/// whole) and malformed Cache-Control (never fresh). A Vary of 200 headers still works.
#[tokio::test]
async fn what_is_not_stored_passes_through() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[cache]\nmax_entry = \"100KiB\"\n{}",
        config(&app.addr, "")
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let mut expected_upstream = 0;
    for path in ["/cache/max-age=60/cookie", "/cache/max-age=60/big"] {
        for _ in 0..2 {
            let r = c.get("app.test", path).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(
                r.header("cache-status").contains("fwd=miss"),
                "{path}: {:?}",
                r.headers
            );
            expected_upstream += 1;
        }
    }
    assert_eq!(
        c.get("app.test", "/cache/max-age=60/big").await.body.len(),
        300_000
    );
    expected_upstream += 1;
    // a malformed max-age never makes an entry fresh: the second request revalidates
    for _ in 0..2 {
        let r = c.get("app.test", "/cache/max-age=banana/malformed").await;
        assert_eq!(r.status, 200);
        assert!(!r.header("cache-status").contains("hit"), "{:?}", r.headers);
        expected_upstream += 1;
    }
    // an Authorization request's response is not shared (no public or s-maxage)
    for _ in 0..2 {
        c.send(with_header(
            "/cache/max-age=60/auth",
            "authorization",
            "Bearer x",
        ))
        .await;
        expected_upstream += 1;
    }
    // but a cookie set with public is, and a huge Vary list is handled
    for path in [
        "/cache/public,max-age=60/cookie",
        "/cache/max-age=60/many-vary",
    ] {
        c.get("app.test", path).await;
        let r = c.get("app.test", path).await;
        assert!(
            r.header("cache-status").contains("hit"),
            "{path}: {:?}",
            r.headers
        );
        expected_upstream += 1;
    }
    assert_eq!(app.seen().len(), expected_upstream);
}

/// The first hit for `path` within about a second, asked every 20 ms: a background refresh
/// stores its entry just after the app answers.
async fn refreshed_hit(c: &mut Client, path: &str) -> Option<crate::support::client::Resp> {
    for _ in 0..50 {
        let r = c.get("app.test", path).await;
        if r.header("cache-status").contains("hit") {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// `r` was served stale under stale-while-revalidate, and its background refresh (the app's
/// second request) reaches the app.
async fn served_stale_and_refreshing(r: &crate::support::client::Resp, app: &Upstream) {
    assert!(
        r.header("cache-status").contains("stale-while-revalidate"),
        "{:?}",
        r.headers
    );
    crate::support::eventually("the background refresh reaches the app", || {
        app.seen().len() == 2
    })
    .await;
}

/// stale-while-revalidate: a stale entry is served at once and refreshed by one request in
/// the background; then it is fresh again.
#[tokio::test]
async fn stale_while_revalidate_serves_then_refreshes() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "stale_while_revalidate = \"1h\"")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("app.test", "/cache/max-age=1/swr").await;
    // the entry's lifetime passing is the behaviour under test
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = c.get("app.test", "/cache/max-age=1/swr").await;
    assert_eq!(stale.text(), first.text());
    served_stale_and_refreshing(&stale, &app).await;
    assert_eq!(app.seen()[1].headers["if-none-match"], first.header("etag"));
    // the refreshed entry is stored just after the app answers: poll for the hit
    let fresh = refreshed_hit(&mut c, "/cache/max-age=1/swr").await;
    assert!(fresh.is_some(), "the entry was not refreshed");
    assert_eq!(app.seen().len(), 2);
}

/// A HEAD answered from a stale entry (stale-while-revalidate) refreshes it with a GET, so
/// an app that answers in full (no 304) still renews the entry.
#[tokio::test]
async fn a_stale_head_refreshes_its_entry_with_a_get() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "stale_while_revalidate = \"1h\"")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let path = "/cache/max-age=1/nocond";
    let first = c.get("app.test", path).await;
    // the entry's lifetime passing is the behaviour under test
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let head = c
        .send(
            http::Request::head(path)
                .header("host", "app.test")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    served_stale_and_refreshing(&head, &app).await;
    assert_eq!(app.seen()[1].method, http::Method::GET);
    // the app answered in full: stored just after, so poll for the hit
    let fresh = refreshed_hit(&mut c, path)
        .await
        .expect("the entry was not refreshed");
    assert_eq!(fresh.text(), first.text());
    assert_eq!(app.seen().len(), 2);
}

/// The quick answer for fresh entries never skips what the full rules weigh: a request's own
/// `Cache-Control: no-cache` or `max-age=0` goes to the app, `max-stale` and Age are honoured,
/// and an entry with Vary is matched by the rules (an Accept-Language the entry was not
/// stored for is a miss).
#[tokio::test]
async fn request_directives_are_honoured_on_fresh_entries() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    c.get("app.test", "/cache/max-age=60/d").await;
    let hit = c.get("app.test", "/cache/max-age=60/d").await;
    assert!(
        hit.header("cache-status").contains("hit"),
        "{:?}",
        hit.headers
    );
    assert!(hit.headers.contains_key("age"));
    assert_eq!(app.seen().len(), 1);
    for directive in ["no-cache", "max-age=0"] {
        let r = c
            .send(with_header(
                "/cache/max-age=60/d",
                "cache-control",
                directive,
            ))
            .await;
        assert!(
            !r.header("cache-status").contains("hit"),
            "{directive}: {:?}",
            r.headers
        );
    }
    assert_eq!(app.seen().len(), 3);
    let r = c
        .send(with_header("/cache/max-age=60/d", "pragma", "no-cache"))
        .await;
    assert!(
        !r.header("cache-status").contains("; hit"),
        "{:?}",
        r.headers
    );
    // Vary: the stored variant answers only its own Accept-Language
    c.send(with_header(
        "/cache/max-age=60,vary/v",
        "accept-language",
        "de",
    ))
    .await;
    let same = c
        .send(with_header(
            "/cache/max-age=60,vary/v",
            "accept-language",
            "de",
        ))
        .await;
    assert!(same.header("cache-status").contains("hit"));
    let other = c
        .send(with_header(
            "/cache/max-age=60,vary/v",
            "accept-language",
            "fr",
        ))
        .await;
    assert!(!other.header("cache-status").contains("hit"));
    assert!(other.text().ends_with("fr"), "{}", other.text());
}

/// On a route that strips its prefix, an entry is keyed by the target sent to the app
/// (query included), and a hit carries exactly one Age and one Cache-Status.
#[tokio::test]
async fn a_stripping_route_caches_by_the_forwarded_target() {
    let app = Upstream::start("app").await;
    let config = format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/api/\"\nstrip_prefix = true\nproxy = [\"{}\"]\ncache = {{}}\n",
        app.addr
    );
    let usher = TestServer::start(&config).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let first = c.get("app.test", "/api/cache/max-age=60/a").await;
    assert!(first.header("cache-status").contains("fwd=miss; stored"));
    assert_eq!(app.seen()[0].uri, "/cache/max-age=60/a");
    let hit = c.get("app.test", "/api/cache/max-age=60/a").await;
    assert_eq!((hit.status, hit.text()), (first.status, first.text()));
    assert_eq!(app.seen().len(), 1, "the second request was a hit");
    for name in ["age", "cache-status"] {
        assert_eq!(
            hit.headers.get_all(name).iter().count(),
            1,
            "{name}: {:?}",
            hit.headers
        );
    }
    assert!(hit.header("cache-status").starts_with("usher; hit; ttl="));
    // another query is another entry
    let other = c.get("app.test", "/api/cache/max-age=60/a?x=1").await;
    assert!(other.header("cache-status").contains("fwd=miss"));
    assert_eq!(app.seen()[1].uri, "/cache/max-age=60/a?x=1");
}

/// A hit for a client that accepts compression is compressed and keeps the entry's headers:
/// the head encoded for usher's HTTP/1.1 path (see `tests/it/http1.rs`) is not for it.
#[tokio::test]
async fn a_hit_is_compressed_for_a_client_that_accepts_it() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app.addr, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let path = "/cache/max-age=60/big";
    assert_eq!(c.get("app.test", path).await.body.len(), 300_000);
    let plain = c.get("app.test", path).await;
    assert_eq!(
        (plain.header("content-encoding"), plain.body.len()),
        ("", 300_000)
    );
    let r = c.send(with_header(path, "accept-encoding", "gzip")).await;
    assert_eq!(r.header("content-encoding"), "gzip");
    assert!(r.body.len() < 10_000, "{} bytes", r.body.len());
    assert_eq!(r.header("cache-control"), "max-age=60");
    assert!(
        r.header("cache-status").starts_with("usher; hit"),
        "{:?}",
        r.headers
    );
    assert!(r.headers.contains_key("age") && r.headers.contains_key("etag"));
    assert_eq!(app.seen().len(), 1);
}
