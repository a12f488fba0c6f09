//! Forwarding to upstreams: headers both ways, prefix stripping, unix sockets, 502 and 504.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::upstream::closed_port;
use crate::support::{Client, Proto, TestServer, Upstream};

fn plain_site(upstreams: &[&str], extra_route: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
[[site]]
names = ["app.test"]
tls = "off"
[[site.route]]
path = "/"
proxy = [{}]
{extra_route}
"#,
        list.join(", ")
    )
}

#[tokio::test]
async fn forwards_path_unchanged_with_forwarded_headers_and_no_hop_by_hop() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&plain_site(&[&up.addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let req = Request::get("/api/users?page=2")
        .header("host", "App.test:8080")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.test")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-t")
        .header("upgrade", "websocket")
        .header("proxy-authorization", "Basic Zm9v")
        .header("proxy-connection", "keep-alive")
        .header("x-custom", "kept")
        .body(Full::default())
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "app /api/users");
    let seen = &up.seen()[0];
    assert_eq!(seen.uri, "/api/users?page=2");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.headers["host"], "App.test:8080",
        "Host is kept as sent"
    );
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "App.test:8080");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["trailer"], "x-t", "Trailer is end to end");
    for hop in [
        "x-drop-me",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !seen.headers.contains_key(hop),
            "{hop} reached the upstream"
        );
    }
    // Connection may only be what usher's own client adds for its hop, never the client's.
    let conn = seen
        .headers
        .get("connection")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        conn.as_deref().is_none_or(|v| !v.contains("x-drop-me")),
        "{conn:?}"
    );
}

#[tokio::test]
async fn response_hop_by_hop_headers_are_removed() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&plain_site(&[&up.addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("app.test", "/hop").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-app"), "kept");
    for hop in ["x-hop-named", "keep-alive", "proxy-authenticate"] {
        assert!(!resp.headers.contains_key(hop), "{hop} reached the client");
    }
    assert!(!resp.header("connection").contains("x-hop-named"));
}

/// usher reuses header maps (`headers::recycle`): nothing of one request or response may
/// reach another, on the same connection, another one, or HTTP/2.
#[tokio::test]
async fn no_header_of_one_exchange_reaches_another() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&plain_site(&[&up.addr], "")).await;
    let mut a = Client::plain(usher.http, Proto::H1).await;
    let mut b = Client::plain(usher.http, Proto::H1).await;
    let mut h2 = Client::plain(usher.http, Proto::H2).await;
    for round in 0..3 {
        // headers of its own, answered with headers that go through a header map (`/hop`
        // names one in Connection)
        let req = Request::get("/hop")
            .header("host", "app.test")
            .header("authorization", "Bearer a-secret")
            .header("x-only-a", "1")
            .body(Full::default())
            .unwrap();
        let resp = a.send(req).await;
        assert_eq!(resp.header("x-app"), "kept");
        for c in [&mut b, &mut h2, &mut a] {
            let resp = c.get("app.test", "/plain").await;
            assert_eq!(resp.status, 200);
            assert!(
                !resp.headers.contains_key("x-app"),
                "round {round}: a header of another response"
            );
        }
    }
    let plain: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.uri.path() == "/plain")
        .collect();
    assert_eq!(plain.len(), 9);
    for seen in plain {
        for name in ["authorization", "x-only-a", "x-app"] {
            assert!(
                !seen.headers.contains_key(name),
                "{name} reached the app with another request"
            );
        }
    }
}

#[tokio::test]
async fn http2_over_tls_is_forwarded_as_http1_with_host_from_authority() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        r#"
[[site]]
names = ["app.test"]
[[site.route]]
path = "/"
proxy = ["{}"]
"#,
        up.addr
    ))
    .await;
    let mut c = Client::tls(usher.https(), "app.test", usher.ca(), Proto::H2)
        .await
        .unwrap();
    let resp = c.get("app.test", "/x").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, http::Version::HTTP_2);
    let seen = &up.seen()[0];
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], "app.test");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "app.test");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn strip_prefix_removes_the_route_path() {
    let up = Upstream::start("api").await;
    let usher = TestServer::start(&plain_site(
        &[&up.addr],
        &format!(
            "[[site.route]]\npath = \"/api/\"\nstrip_prefix = true\nproxy = [\"{}\"]\n",
            up.addr
        ),
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(
        c.get("app.test", "/api/users?x=1").await.text(),
        "api /users"
    );
    assert_eq!(c.get("app.test", "/other").await.text(), "api /other");
    let uris: Vec<String> = up.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(uris, ["/users?x=1", "/other"]);
}

#[tokio::test]
async fn unix_socket_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start_unix("sock", &dir.path().join("app.sock")).await;
    let usher = TestServer::start(&plain_site(&[&up.addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("app.test", "/hello").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "sock /hello");
}

#[tokio::test]
async fn round_robin_across_members_and_connections_are_reused() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let usher = TestServer::start(&plain_site(&[&a.addr, &b.addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(c.get("app.test", "/").await.text());
    }
    bodies.sort();
    assert_eq!(bodies, ["a /", "a /", "b /", "b /"]);
    assert_eq!(a.seen().len(), 2);
    assert_eq!(b.seen().len(), 2);
}

#[tokio::test]
async fn post_body_is_forwarded() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&plain_site(&[&up.addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let body = Bytes::from(vec![b'z'; 100_000]);
    let req = Request::post("/upload")
        .header("host", "app.test")
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(c.send(req).await.status, 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.body, body);
}

#[tokio::test]
async fn refused_upstream_is_502_with_a_short_body_and_a_log_line() {
    let dead = closed_port().to_string();
    let usher = TestServer::start(&plain_site(&[&dead], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("app.test", "/x").await;
    assert_eq!(resp.status, 502);
    assert!(resp.body.len() < 100, "{}", resp.text());
    assert!(
        !resp.text().contains(&dead),
        "the body must not leak internal addresses"
    );
    let log = usher.stop().await;
    assert!(log.contains("\"GET app.test /x\" 502"), "{log}");
    assert!(log.contains(&format!("upstream={dead}")), "{log}");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = Upstream::start("slow").await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_response = \"200ms\"\n{}",
        plain_site(&[&up.addr], "")
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("app.test", "/slow?ms=3000").await;
    assert_eq!(resp.status, 504);
    assert!(resp.text().starts_with("504"));
}

#[tokio::test]
async fn upstream_stalling_mid_body_is_cut_after_the_read_timeout() {
    let up = Upstream::start("stall").await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_response = \"300ms\"\n{}",
        plain_site(&[&up.addr], "")
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c
        .send_streaming(crate::support::client::get("app.test", "/stall"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = crate::support::bounded("first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    // The upstream sends nothing more for an hour; usher ends the response instead of waiting:
    // the client sees the body end with an error (a chunked body cut short).
    let end = crate::support::bounded("the cut", body.frame()).await;
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");
}

#[tokio::test]
async fn access_log_has_one_line_per_request_with_every_field() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&plain_site(&[&up.addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c.get("app.test", "/logged?q=1").await;
    let log = usher.stop().await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    // time client "METHOD host path" status bytes duration upstream
    let line = lines[0];
    assert!(line.starts_with("20"), "{line}");
    assert!(
        line.contains(" 127.0.0.1 \"GET app.test /logged?q=1\" 200 "),
        "{line}"
    );
    assert!(line.contains(&format!(" {} ", resp.body.len())), "{line}");
    assert!(line.contains("ms upstream="), "{line}");
    assert!(line.ends_with(&format!("upstream={}", up.addr)), "{line}");
}

#[tokio::test]
async fn json_access_log() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nhttp = \"127.0.0.1:0\"\nhttps = \"off\"\naccess_log = \"json\"\n{}",
        plain_site(&[&up.addr], "")
    );
    let usher = TestServer::start_in(dir.path(), &config).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    c.get("app.test", "/j").await;
    let log = usher.stop().await;
    let v: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "app.test");
    assert_eq!(v["path"], "/j");
    assert_eq!(v["status"], 200);
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["upstream"], up.addr.as_str());
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert!(v["duration_ms"].is_number());
    assert!(v["time"].as_str().unwrap().starts_with("20"));
}

/// An upstream that answers with something that is not HTTP: 502, no hang, no panic.
#[tokio::test]
async fn an_invalid_upstream_response_is_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let junk = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HELLO THIS IS NOT HTTP\r\n\r\n").await;
        }
    });
    let usher = TestServer::start(&plain_site(&[&addr], "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("app.test", "/x").await;
    assert_eq!(r.status, 502);
    // and the server keeps serving
    let r = c.get("app.test", "/y").await;
    assert_eq!(r.status, 502);
    junk.abort();
}
