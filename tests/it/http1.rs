//! HTTP/1.1 on the wire, from a raw socket: requests without a body take usher's own fast path
//! (`server/h1.rs`), the rest hyper's; a connection moves between the two as its requests do.

use std::collections::HashMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{bounded, eventually, Client, Proto, TestServer, Upstream};

fn config(up: &Upstream) -> String {
    format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
        up.addr
    )
}

/// One response as read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: HashMap<String, String>,
    /// Header lines, repeated names included.
    lines: usize,
    body: String,
}

/// Reads `heads.len()` responses (a HEAD one has no body, whatever its Content-Length says),
/// bounded in time; fails on a response without a Content-Length.
async fn read_responses(s: &mut TcpStream, heads: &[bool]) -> Vec<Raw> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for &is_head in heads {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&buf).expect("a valid response head") {
                let headers: HashMap<String, String> = r
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                let len: usize = headers["content-length"].parse().unwrap();
                let len = if is_head { 0 } else { len };
                if buf.len() >= n + len {
                    out.push(Raw {
                        status: r.code.unwrap(),
                        lines: r.headers.len(),
                        body: String::from_utf8_lossy(&buf[n..n + len]).into_owned(),
                        headers,
                    });
                    buf.drain(..n + len);
                    break;
                }
            }
            let mut chunk = [0u8; 4096];
            let got = bounded("a response", s.read(&mut chunk)).await.unwrap();
            assert!(got > 0, "closed before the responses were whole: {out:?}");
            buf.extend_from_slice(&chunk[..got]);
        }
    }
    assert!(buf.is_empty(), "bytes after the responses: {buf:?}");
    out
}

/// Requests sent back to back in one write are answered in order: bodyless ones on the fast
/// path, a POST with a body (hyper's) between them, a HEAD with GET's headers and no body.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_both_paths() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app)).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /three HTTP/1.1\r\nHost: app.test\r\n\r\n\
          HEAD /four HTTP/1.1\r\nHost: app.test\r\n\r\n\
          GET /five HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_responses(&mut s, &[false, false, false, true, false]).await;
    let bodies: Vec<&str> = r.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["app /one", "app /two", "app /three", "", "app /five"]
    );
    assert!(r
        .iter()
        .all(|r| r.status == 200 && r.headers.contains_key("date")));
    assert_eq!(r[3].headers["content-length"], "9");
    let seen = app.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.uri.path()).collect();
    assert_eq!(paths, ["/one", "/two", "/three", "/four", "/five"]);
    assert_eq!(seen[1].body.as_ref(), b"abc");
}

/// `Connection: close` gets its answer, saying so, and then the close.
#[tokio::test]
async fn connection_close_is_answered_then_closed() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app)).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET /bye HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_responses(&mut s, &[false]).await;
    assert_eq!(r[0].body, "app /bye");
    assert_eq!(r[0].headers["connection"], "close");
    let mut rest = [0u8; 16];
    assert_eq!(bounded("the close", s.read(&mut rest)).await.unwrap(), 0);
}

/// A client that goes away while the app works on its request cancels it: the app's
/// connection is closed (its handler dropped) long before it would have answered, the line is
/// logged, and usher serves on.
#[tokio::test]
async fn a_client_that_leaves_before_its_answer_cancels_the_request() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app)).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET /slow?ms=600000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    eventually("the app works on it", || app.in_progress() == 1).await;
    drop(s);
    eventually("the app's handler is dropped", || app.in_progress() == 0).await;
    eventually("the request is logged", || {
        usher.access_log().contains("/slow")
    })
    .await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET /after HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_responses(&mut s, &[false]).await[0].body, "app /after");
}

/// A head larger than `max_header_size` is refused with 431 (by hyper, which the fast path
/// hands it to), and a malformed one with 400: a bad header name, or a target httparse takes
/// and `http` does not.
#[tokio::test]
async fn oversized_and_malformed_heads_get_431_and_400() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[limits]\nmax_header_size = \"8KiB\"\n{}",
        config(&app)
    ))
    .await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    let big = "x".repeat(9000);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = Vec::new();
    bounded("the 431", s.read_to_end(&mut text)).await.unwrap();
    assert!(
        text.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&text)
    );

    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header: 1\r\n\r\n")
        .await
        .unwrap();
    let mut text = Vec::new();
    bounded("the 400", s.read_to_end(&mut text)).await.unwrap();
    assert!(
        text.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&text)
    );

    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(
        b"GET /a<b HTTP/1.1\r\nHost: app.test\r\n\r\nGET /next HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut text = Vec::new();
    bounded("the 400", s.read_to_end(&mut text)).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(!text.contains("app /next"), "{text}");
    assert!(app.seen().is_empty());
}

/// A client that goes away while its response waits on the app (a stream gone quiet) ends
/// it then, not when the app's read timeout would.
#[tokio::test]
async fn a_client_that_leaves_a_quiet_stream_ends_it() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_response = \"600s\"\n{}",
        config(&app)
    ))
    .await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("first") {
        let mut chunk = [0u8; 4096];
        let n = bounded("the first piece", s.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(!usher.access_log().contains("/stall"));
    drop(s);
    eventually("the response ends and is logged", || {
        usher.access_log().contains("/stall")
    })
    .await;
}

/// Cache hits and hot files are written from a head encoded once, when the entry was made:
/// the same headers as hyper sends from the header map (HTTP/2 here), with the hit's own Age
/// and ttl, the body's length for HEAD too, and `connection: close` (then the close) when the
/// client asks for it.
#[tokio::test]
async fn heads_encoded_ahead_say_what_the_header_map_says() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    std::fs::write(dir.path().join("www/a.txt"), "hello hot").unwrap();
    let usher = TestServer::start_in(
        dir.path(),
        &format!(
            "{}\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/files/\"\nstatic = \"www\"\nstrip_prefix = true\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\ncache = {{}}\n",
            crate::support::server::SERVER_SECTION,
            app.addr
        ),
    )
    .await;
    let mut h2 = Client::plain(usher.http, Proto::H2).await;
    // the number in an Age or a Cache-Status's ttl
    let number = |v: &str| -> u64 {
        let digits: String = v.chars().filter(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    // (the second app response brings its own Age and Cache-Status)
    for path in [
        "/cache/max-age=60/e",
        "/cache/max-age=60/aged",
        "/files/a.txt",
    ] {
        // the first answer makes the entry
        h2.get("app.test", path).await;
        let by_map = h2.get("app.test", path).await;
        assert_eq!(by_map.status, 200);
        let mut s = TcpStream::connect(usher.http).await.unwrap();
        let ask = |method: &str, last: &str| {
            format!("{method} {path} HTTP/1.1\r\nhost: app.test\r\n{last}\r\n")
        };
        let asks = [
            ask("GET", ""),
            ask("HEAD", ""),
            ask("GET", "connection: close\r\n"),
        ];
        s.write_all(asks.concat().as_bytes()).await.unwrap();
        let got = read_responses(&mut s, &[false, true, false]).await;
        let mut rest = Vec::new();
        let n = bounded("the close", s.read_to_end(&mut rest))
            .await
            .unwrap();
        assert_eq!(n, 0, "{path}: closed after the last answer");
        for (i, r) in got.iter().enumerate() {
            let expect_body = if i == 1 { String::new() } else { by_map.text() };
            assert_eq!((r.status, &r.body), (200, &expect_body), "{path} #{i}");
            for (name, value) in &by_map.headers {
                let (name, value) = (name.as_str(), value.to_str().unwrap());
                let got = r.headers.get(name).map_or("(none)", String::as_str);
                match name {
                    // (may be a second apart)
                    "date" => assert!(r.headers.contains_key(name), "{path} #{i}"),
                    "age" | "cache-status" => {
                        let (a, b) = (number(got), number(value));
                        assert!(a.abs_diff(b) <= 1, "{path} #{i}: {name}: {got} for {value}");
                        let words = |v: &str| v.replace(|c: char| c.is_ascii_digit(), "");
                        assert_eq!(words(got), words(value), "{path} #{i}: {name}");
                    }
                    _ => assert_eq!(got, value, "{path} #{i}: {name}"),
                }
            }
            let mut extra: Vec<&str> = r
                .headers
                .keys()
                .map(String::as_str)
                .filter(|k| !by_map.headers.contains_key(*k))
                .collect();
            extra.sort();
            let expect: &[&str] = match (i, by_map.headers.contains_key("date")) {
                (2, true) => &["connection"],
                (2, false) => &["connection", "date"],
                (_, true) => &[],
                (_, false) => &["date"],
            };
            assert_eq!(extra, expect, "{path} #{i}");
            assert_eq!(
                r.lines,
                r.headers.len(),
                "{path} #{i}: a header line repeated"
            );
        }
        assert_eq!(got[2].headers["connection"], "close");
        assert_eq!(
            got[1].headers["content-length"],
            by_map.body.len().to_string()
        );
    }
    // the cache answered all but the first request of each, from the app's one answer
    assert_eq!(app.seen().len(), 2);
}
