//! Site by Host, route by longest prefix, the https redirect, redirects, unknown hosts.

use crate::support::{Client, Proto, TestServer, Upstream};

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let (a, a2, b) = (
        Upstream::start("a").await,
        Upstream::start("a-v2").await,
        Upstream::start("b").await,
    );
    let usher = TestServer::start(&format!(
        r#"
[[site]]
names = ["a.test"]
tls = "off"
[[site.route]]
path = "/"
proxy = ["{}"]
[[site.route]]
path = "/api/v2/"
proxy = ["{}"]

[[site]]
names = ["b.test", "*.b.test"]
tls = "off"
[[site.route]]
path = "/"
proxy = ["{}"]
"#,
        a.addr, a2.addr, b.addr
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("a.test", "/x").await.text(), "a /x");
    assert_eq!(
        c.get("A.TEST:1234", "/api/v2/y").await.text(),
        "a-v2 /api/v2/y"
    );
    assert_eq!(c.get("a.test", "/api/v1").await.text(), "a /api/v1");
    assert_eq!(c.get("b.test", "/x").await.text(), "b /x");
    assert_eq!(c.get("www.b.test", "/w").await.text(), "b /w");
    // an unknown host with no default site: 404 on plain HTTP
    assert_eq!(c.get("c.test", "/").await.status, 404);
}

#[tokio::test]
async fn default_site_answers_unknown_hosts() {
    let up = Upstream::start("default").await;
    let usher = TestServer::start(&format!(
        r#"
[[site]]
names = ["a.test"]
tls = "off"
[[site.route]]
path = "/"
redirect = "https://elsewhere.test/"

[[site]]
names = ["fallback.test"]
default = true
tls = "off"
[[site.route]]
path = "/"
proxy = ["{}"]
"#,
        up.addr
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("whatever.test", "/q").await.text(), "default /q");
}

#[tokio::test]
async fn plain_http_to_a_tls_site_gets_308_to_the_https_port() {
    let usher = TestServer::start(
        r#"
[[site]]
names = ["secure.test"]
[[site.route]]
path = "/"
redirect = "/never"
"#,
    )
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("secure.test:80", "/a/b?c=d&e").await;
    assert_eq!(resp.status, 308);
    let port = usher.https().port();
    assert_eq!(
        resp.header("location"),
        format!("https://secure.test:{port}/a/b?c=d&e")
    );
    // the ACME challenge path is never redirected
    let resp = c
        .get("secure.test", "/.well-known/acme-challenge/token")
        .await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn tls_site_can_serve_plain_http_too() {
    let usher = TestServer::start(
        r#"
[[site]]
names = ["both.test"]
http_redirect = false
[[site.route]]
path = "/"
redirect = "/served"
"#,
    )
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("both.test", "/").await.header("location"), "/served");
    let mut t = Client::tls(usher.https(), "both.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    assert_eq!(t.get("both.test", "/").await.header("location"), "/served");
}

#[tokio::test]
async fn redirect_route_with_status_and_uri_placeholder() {
    let usher = TestServer::start(
        r#"
[[site]]
names = ["old.test"]
tls = "off"
[[site.route]]
path = "/"
redirect = "https://new.test{uri}"
status = 301
"#,
    )
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("old.test", "/p?q=1").await;
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), "https://new.test/p?q=1");
}

#[tokio::test]
async fn http1_request_without_or_with_two_hosts_is_400() {
    let usher = TestServer::start(
        r#"
[[site]]
names = ["a.test"]
default = true
tls = "off"
[[site.route]]
path = "/"
redirect = "/x"
"#,
    )
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let req = http::Request::get("/")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(c.send(req).await.status, 400);
    // two Host headers are as bad as none (RFC 9112 section 3.2)
    let req = http::Request::get("/")
        .header("host", "a.test")
        .header("host", "evil.test")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(c.send(req).await.status, 400);
}

#[tokio::test]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[[site]]\nnames = [\"a.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
        up.addr
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H2).await;
    let resp = c.get("a.test", "/h2c").await;
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.text(), "app /h2c");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let usher = TestServer::start(
        r#"
[limits]
max_header_size = "16KiB"
max_headers = 20
[[site]]
names = ["a.test"]
tls = "off"
[[site.route]]
path = "/"
redirect = "/x"
"#,
    )
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let big = "a".repeat(20 * 1024);
    let req = http::Request::get("/")
        .header("host", "a.test")
        .header("x-big", big)
        .body(Default::default())
        .unwrap();
    assert_eq!(c.send(req).await.status, 431);
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let mut b = http::Request::get("/").header("host", "a.test");
    for i in 0..30 {
        b = b.header(format!("x-h{i}"), "v");
    }
    assert_eq!(
        c.send(b.body(Default::default()).unwrap()).await.status,
        431
    );
    // within the limits, fine
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("a.test", "/").await.status, 308);
}

/// `//drafts/x` and `/%64rafts/x` are the same path as `/drafts/x`: they must reach the
/// `/drafts/` route, not slip into the broader `/` route.
#[tokio::test]
async fn encoded_or_doubled_paths_cannot_bypass_a_more_specific_route() {
    let (public, drafts) = (
        Upstream::start("public").await,
        Upstream::start("drafts").await,
    );
    let usher = TestServer::start(&format!(
        r#"
[[site]]
names = ["a.test"]
tls = "off"
[[site.route]]
path = "/"
proxy = ["{}"]
[[site.route]]
path = "/drafts/"
proxy = ["{}"]
"#,
        public.addr, drafts.addr
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for path in [
        "/drafts/x",
        "//drafts/x",
        "/%64rafts/x",
        "/dr%61fts/x",
        "///drafts//x",
    ] {
        let r = c.get("a.test", path).await;
        assert!(
            r.text().starts_with("drafts "),
            "{path} went to {}",
            r.text()
        );
    }
    assert_eq!(c.get("a.test", "/a/../drafts/x").await.status, 400);
    // a route that does not strip its prefix forwards the path exactly as the client sent it
    let seen: Vec<String> = drafts.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(seen[2], "/%64rafts/x");
}

/// The host that picked the site and passed the SNI check is the Host the upstream gets.
#[tokio::test]
async fn upstream_host_is_the_routed_host() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let usher = TestServer::start(&format!(
        r#"
[[site]]
names = ["a.test"]
[[site.route]]
path = "/"
proxy = ["{}"]
[[site]]
names = ["b.test"]
[[site.route]]
path = "/"
proxy = ["{}"]
"#,
        a.addr, b.addr
    ))
    .await;
    // HTTP/2: a host header that disagrees with :authority is malformed
    let mut h2 = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H2)
        .await
        .unwrap();
    let req = http::Request::get("https://a.test/x")
        .header("host", "b.test")
        .body(Default::default())
        .unwrap();
    assert_eq!(h2.send(req).await.status, 400);
    // HTTP/1.1 absolute form: the authority wins and becomes the upstream's Host
    let mut h1 = Client::tls(usher.https(), "a.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    let req = http::Request::get("https://a.test/y")
        .header("host", "b.test")
        .body(Default::default())
        .unwrap();
    let r = h1.send(req).await;
    assert_eq!(r.text(), "a /y");
    let seen = a.seen();
    assert_eq!(seen[0].headers["host"], "a.test");
    assert_eq!(seen[0].headers["x-forwarded-host"], "a.test");
    assert!(b.seen().is_empty());
}
