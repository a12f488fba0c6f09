//! SIGTERM drains in-flight responses; idle connections are closed; the grace period is a limit.

use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use crate::support::process::Running;
use crate::support::{bounded, eventually, Client, Proto, TestServer, Upstream};

fn config(upstream: &str, grace: &str) -> String {
    format!(
        r#"
[server]
http = "127.0.0.1:0"
https = "off"
grace_period = "{grace}"

[[site]]
names = ["app.test"]
tls = "off"
[[site.route]]
path = "/"
proxy = ["{upstream}"]
"#
    )
}

/// A download in flight when SIGTERM arrives completes; new connections are refused; the
/// process exits 0.
#[tokio::test]
async fn sigterm_drains_an_in_flight_download() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.toml"), config(&up.addr, "10s")).unwrap();
    let (mut usher, at) = Running::start(&dir.path().join("proxy.toml"), dir.path());
    let addr = at.http.unwrap();
    let mut c = Client::plain(addr, Proto::H1).await;
    // 40 chunks of 16 KiB, 25 ms apart: about a second of download.
    let req = crate::support::client::get("app.test", "/stream?chunks=40&ms=25");
    let resp = c.send_streaming(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = bounded("first chunk", body.frame()).await.unwrap().unwrap();
    let mut got = first.into_data().unwrap().len();

    usher.signal("TERM");
    assert!(usher.wait_for_line("listeners closed").is_some());
    // new connections are refused once draining started
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "usher still accepts after SIGTERM"
    );

    while let Some(frame) = bounded("next chunk", body.frame()).await {
        got += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(got, 40 * 16 * 1024, "the in-flight download was cut short");
    let status = usher
        .wait_exit(crate::support::STEP)
        .expect("usher did not exit after draining");
    assert!(status.success(), "{status:?}");
}

/// A response still running when the grace period ends is cut, and the process exits 0.
#[tokio::test]
async fn grace_period_limits_the_drain() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("proxy.toml"), config(&up.addr, "300ms")).unwrap();
    let (mut usher, at) = Running::start(&dir.path().join("proxy.toml"), dir.path());
    let mut c = Client::plain(at.http.unwrap(), Proto::H1).await;
    // about 20 s of download: far longer than the grace period
    let req = crate::support::client::get("app.test", "/stream?chunks=200&ms=100");
    let mut body = c.send_streaming(req).await.unwrap().into_body();
    bounded("first chunk", body.frame()).await.unwrap().unwrap();
    usher.signal("TERM");
    assert!(usher.wait_for_line("grace period over").is_some());
    let status = usher
        .wait_exit(crate::support::STEP)
        .expect("usher did not exit after the grace period");
    assert!(status.success(), "{status:?}");
    // the download ended early, with an error or a short body
    let mut rest = 0usize;
    while let Some(Ok(frame)) = bounded("after the cut", body.frame()).await {
        rest += frame.into_data().map_or(0, |d| d.len());
    }
    assert!(rest < 199 * 16 * 1024, "the download was not cut");
}

fn app_site(up: &Upstream, timeouts: &str) -> String {
    format!(
        "[timeouts]\n{timeouts}\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
        up.addr
    )
}

/// Reads from a raw connection until `needle` has arrived (bounded).
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = bounded("response", s.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the server closes (bounded); returns how many bytes came.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match bounded("server close", s.read(&mut buf)).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

/// A connection that sends nothing, or only part of a request head, is closed after
/// `client_header`; one that is busy with a slow upstream is not.
#[tokio::test]
async fn silent_and_slow_request_heads_are_closed() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(&up, "client_header = \"300ms\"")).await;
    let mut silent = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, 0);
    let mut slow = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    use tokio::io::AsyncWriteExt;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut slow).await, 0);
    // a request slower than client_header is not cut: the head arrived, the wait is upstream
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/slow?ms=700").await.status, 200);
}

/// A keep-alive connection outlives `client_header` and is closed after `client_idle`.
#[tokio::test]
async fn keep_alive_lasts_client_idle_then_closes() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(
        &up,
        "client_header = \"200ms\"\nclient_idle = \"1s\"",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, "app /one").await;
    // Longer than client_header, shorter than client_idle: the passing of time is the point.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut s, "app /two").await;
    // then, with nothing sent, the server closes it
    assert_eq!(read_to_close(&mut s).await, 0);
}

/// A burst of pipelined requests that spends the connection task's budget (tokio's, of I/O
/// operations per poll) on its first poll does not cost the connection its watch: once the
/// client falls silent, `client_idle` still closes it.
#[tokio::test]
async fn a_pipelined_burst_leaves_the_idle_limit_in_force() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(&up, "client_idle = \"1s\"")).await;
    const BURST: usize = 400;
    let mut s = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    // (a host no site serves is answered at once, without an await: 404)
    s.write_all(&b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n".repeat(BURST))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let answered = |got: &[u8]| String::from_utf8_lossy(got).matches("HTTP/1.1 404").count();
    while answered(&got) < BURST {
        let n = bounded("the burst's answers", s.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed before the last answer");
        got.extend_from_slice(&buf[..n]);
    }
    // then, with nothing sent, the server closes it
    assert_eq!(read_to_close(&mut s).await, 0);
}

/// A client that stops reading a response is dropped once nothing moves for the stall limit
/// (the larger of client_idle and upstream_response).
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(
        &up,
        "client_idle = \"300ms\"\nupstream_response = \"300ms\"",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    // 2000 x 16 KiB = 32 MiB: far more than loopback socket buffers hold
    s.write_all(b"GET /stream?chunks=2000&ms=0 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    // Read nothing; the response ends (its log line is written) only when usher gives up.
    crate::support::eventually("usher dropping the stalled connection", || {
        usher.access_log().contains("/stream")
    })
    .await;
    let got = read_to_close(&mut s).await;
    assert!(got < 2000 * 16 * 1024, "the whole response arrived: {got}");
}

/// In-process drain: `shutdown` + `wait` returns promptly when connections are idle.
#[tokio::test]
async fn shutdown_closes_idle_keepalive_connections() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(&up, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/").await.status, 200);
    // The grace period is 60 s and `stop` is bounded by 10 s: it returns only because the idle
    // keep-alive connection was closed at once.
    usher.stop().await;
}

/// A drain reaches an HTTP/1.1 session while it waits on the app: the answer still comes,
/// and says the connection closes after it.
#[tokio::test]
async fn a_drain_during_a_request_answers_it_with_connection_close() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(&up, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    // (a first request: the connection's session is usher's own HTTP/1.1 path)
    assert_eq!(c.get("app.test", "/").await.header("connection"), "");
    let slow = tokio::spawn(async move { c.get("app.test", "/slow?ms=500").await });
    eventually("the app has the request", || up.in_progress() == 1).await;
    let stopped = tokio::spawn(usher.stop());
    let resp = bounded("the slow answer", slow).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), "close");
    bounded("the drain", stopped).await.unwrap();
}

/// A drain reaches an idle HTTP/2 connection (never parked) at once: `shutdown` + `wait`
/// returns without waiting out the 60 s grace period.
#[tokio::test]
async fn shutdown_closes_idle_http2_connections() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&app_site(&up, "")).await;
    let mut c = Client::plain(usher.http, Proto::H2).await;
    assert_eq!(c.get("app.test", "/").await.status, 200);
    usher.stop().await;
}

/// Waits (bounded) until /metrics counts `n` parked connections.
async fn until_parked(admin: &mut Client, n: f64, what: &str) {
    let deadline = tokio::time::Instant::now() + crate::support::STEP;
    loop {
        let text = admin.get("admin", "/metrics").await.text();
        let parked = crate::support::sample(&text, "usher_connections_parked", "");
        if parked == Some(n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {parked:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An idle HTTP/1.1 connection, plain or TLS, is parked: it lets its HTTP session go and
/// keeps only its socket and TLS session (the gauge counts it), and its next request is
/// answered as before. An HTTP/2 connection is not parked. A drain closes parked
/// connections at once.
#[tokio::test]
async fn idle_http1_connections_are_parked_and_serve_again() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{0}\"]\n[[site]]\nnames = [\"tls.test\"]\n[[site.route]]\npath = \"/\"\nproxy = [\"{0}\"]\n",
        up.addr
    ))
    .await;
    let mut plain = Client::plain(usher.http, Proto::H1).await;
    let mut tls = Client::tls(usher.https(), "tls.test", usher.ca(), Proto::H1)
        .await
        .unwrap();
    let mut h2 = Client::tls(usher.https(), "tls.test", usher.ca(), Proto::H2)
        .await
        .unwrap();
    assert_eq!(plain.get("app.test", "/a").await.text(), "app /a");
    assert_eq!(tls.get("tls.test", "/b").await.text(), "app /b");
    assert_eq!(h2.get("tls.test", "/c").await.text(), "app /c");
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    until_parked(&mut admin, 2.0, "never parked").await;
    // parked, they answer as before: the gauge said 2 while the HTTP/2 connection was open
    assert_eq!(plain.get("app.test", "/d").await.text(), "app /d");
    assert_eq!(tls.get("tls.test", "/e").await.text(), "app /e");
    assert_eq!(h2.get("tls.test", "/f").await.text(), "app /f");
    until_parked(&mut admin, 2.0, "not parked again").await;
    drop(admin);
    // The grace period is 60 s and `stop` is bounded by 10 s: it returns only because the
    // parked connections (and the idle HTTP/2 one) were closed at once.
    usher.stop().await;
}
