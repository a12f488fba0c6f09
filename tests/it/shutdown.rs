//! SIGTERM drains in-flight responses; idle connections are closed; the grace period is a limit.

use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

use crate::support::process::Running;
use crate::support::{bounded, Client, Proto, TestServer, Upstream};

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

/// An idle keep-alive connection is closed after `client_idle`; a busy one is not.
#[tokio::test]
async fn idle_connections_are_closed() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nclient_idle = \"300ms\"\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
        up.addr
    ))
    .await;
    // A request slower than the idle timeout is not cut: the connection is busy, not idle.
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/slow?ms=700").await.status, 200);

    // A raw connection that sends nothing is closed by the server (read returns 0).
    let mut raw = tokio::net::TcpStream::connect(usher.http).await.unwrap();
    let mut buf = [0u8; 64];
    let n = bounded("idle close", raw.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the server should close an idle connection");
}

/// In-process drain: `shutdown` + `wait` returns promptly when connections are idle.
#[tokio::test]
async fn shutdown_closes_idle_keepalive_connections() {
    let up = Upstream::start("app").await;
    let usher = TestServer::start(&format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n",
        up.addr
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/").await.status, 200);
    // The grace period is 60 s and `stop` is bounded by 10 s: it returns only because the idle
    // keep-alive connection was closed at once.
    usher.stop().await;
}
