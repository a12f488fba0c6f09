//! Slow-client buffering and limits: request bodies read whole before the app is asked,
//! responses read ahead of slow clients, body-phase timeouts, size limits and bad bodies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{bounded, eventually, Client, Proto, TestServer, Upstream};

fn config(up: &Upstream, extra: &str, route_extra: &str) -> String {
    format!(
        "{extra}\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n{route_extra}\n",
        up.addr
    )
}

/// Reads from `s` until the peer closes (or 64 KiB), bounded; returns the text.
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match bounded("read until close", s.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.len() > 65536 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A chunked upload that arrives in pieces reaches the app only once complete, de-chunked
/// with a Content-Length; meanwhile the app serves others.
#[tokio::test]
async fn a_request_body_is_read_whole_before_the_app_sees_it() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "", "")).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    // the app answers another client in the meantime, and has seen nothing of the upload
    let mut other = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(other.get("app.test", "/other").await.status, 200);
    assert_eq!(app.seen().len(), 1, "the app saw part of an upload");
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    bounded("response", s.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let seen = app.seen();
    let upload = seen.iter().find(|r| r.uri == "/upload").unwrap();
    assert_eq!(&upload.body[..], b"hello world");
    assert_eq!(upload.headers["content-length"], "11");
    assert!(!upload.headers.contains_key("transfer-encoding"));
}

/// Past `request_memory` (and with no memory budget at all) a body goes to a temporary file
/// and still arrives whole; nothing is left in the temp folder.
#[tokio::test]
async fn a_large_body_spills_to_disk_and_arrives_whole() {
    let app = Upstream::start("app").await;
    let tmp = tempfile::tempdir().unwrap();
    for budget in ["1KiB", "0"] {
        let extra = format!(
            "[buffering]\nrequest_memory = \"1KiB\"\nresponse_memory = \"1KiB\"\nmax_memory = \"{budget}\"\ntemp_dir = \"{}\"\n",
            tmp.path().display()
        );
        let usher = TestServer::start(&config(&app, &extra, "")).await;
        let mut c = Client::plain(usher.http, Proto::H1).await;
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let req = http::Request::post("/big")
            .header("host", "app.test")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        assert_eq!(c.send(req).await.status, 200);
        assert_eq!(app.seen().last().unwrap().body, body, "budget {budget}");
        // a 1 MiB response through a 1 KiB memory buffer
        let r = c.get("app.test", "/stream?chunks=64&ms=0").await;
        assert_eq!(r.body.len(), 64 * 16 * 1024);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}

/// A body over `max_body_size` gets 413 before the app sees anything, whether declared
/// (Content-Length) or only found out while reading (chunked); a route may allow more.
#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_never_reaches_the_app() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "[limits]\nmax_body_size = \"1KiB\"\n", "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let big = || {
        http::Request::post("/declared")
            .header("host", "app.test")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'x';
                2000
            ])))
            .unwrap()
    };
    let r = c.send(big()).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "413 content too large\n");
    // chunked: the size shows only while reading
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(
        b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n",
    )
    .await
    .unwrap();
    s.write_all(&[b'y'; 1024]).await.unwrap();
    s.write_all(b"\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut s).await.starts_with("HTTP/1.1 413"));
    assert!(app.seen().is_empty(), "the app saw an oversized body");
    // a route that allows more
    let usher = TestServer::start(&config(
        &app,
        "[limits]\nmax_body_size = \"1KiB\"\n",
        "max_body_size = \"1MiB\"",
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.send(big()).await.status, 200);
}

/// A client that goes away mid-upload: the app never sees any of it, and usher serves on.
#[tokio::test]
async fn a_client_that_disconnects_mid_upload_never_reaches_the_app() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "", "")).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"POST /cut HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'z'; 100]).await.unwrap();
    drop(s);
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/after").await.status, 200);
    eventually("the cut upload is logged", || {
        usher.access_log().contains("/cut")
    })
    .await;
    assert_eq!(app.seen().len(), 1);
    assert_eq!(app.seen()[0].uri, "/after");
}

/// A trickling upload (about 50 B/s) is cut with 408 once the grace period is over; an
/// honest slow one (20 KiB/s, several seconds) is not, nor an idle gap shorter than
/// `client_body`.
#[tokio::test]
async fn a_trickling_upload_gets_408_and_an_honest_slow_one_does_not() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(
        &app,
        "[timeouts]\nclient_body = \"5s\"\nclient_min_rate = \"1KiB/s\"\nclient_min_rate_grace = \"1s\"\n",
        "",
    ))
    .await;
    let trickle = async {
        let mut s = TcpStream::connect(usher.http).await.unwrap();
        s.write_all(b"POST /trickle HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        for _ in 0..50 {
            ticker.tick().await;
            if s.write_all(&[b't'; 10]).await.is_err() {
                break;
            }
            // stop as soon as usher answered
            let mut b = [0u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.peek(&mut b)).await
            {
                if n > 0 {
                    break;
                }
            }
        }
        read_all(&mut s).await
    };
    let honest = async {
        let mut s = TcpStream::connect(usher.http).await.unwrap();
        let total = 15 * 4096;
        s.write_all(format!("POST /honest HTTP/1.1\r\nHost: app.test\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        for _ in 0..15 {
            ticker.tick().await;
            s.write_all(&[b'h'; 4096]).await.unwrap();
        }
        read_all(&mut s).await
    };
    let (trickle, honest) = tokio::join!(trickle, honest);
    assert!(trickle.starts_with("HTTP/1.1 408"), "{trickle}");
    assert!(honest.starts_with("HTTP/1.1 200"), "{honest}");
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), 15 * 4096);
}

/// Bad bodies get 400 and reach no app: invalid chunk sizes, conflicting Content-Length.
#[tokio::test]
async fn malformed_bodies_get_400() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "", "")).await;
    for raw in [
        &b"POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        b"POST /b HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ] {
        let mut s = TcpStream::connect(usher.http).await.unwrap();
        s.write_all(raw).await.unwrap();
        let answer = read_all(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert!(app.seen().is_empty());
}

/// With response buffering, the app sends a 16 MiB response to its end while the client
/// has not read a byte of it; the client then gets all of it.
#[tokio::test]
async fn a_slow_reader_does_not_hold_the_app() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "", "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let resp = c
        .send_streaming(crate::support::client::get(
            "app.test",
            "/stream?chunks=1024&ms=0",
        ))
        .await
        .unwrap();
    eventually("the app finished sending", || app.streams_done() == 1).await;
    let body = bounded("body", http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 1024 * 16 * 1024);
}

/// A request target longer than `max_uri_length` gets 414.
#[tokio::test]
async fn a_long_uri_gets_414() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "[limits]\nmax_uri_length = \"1KiB\"\n", "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let long = format!("/{}", "a".repeat(2000));
    assert_eq!(c.get("app.test", &long).await.status, 414);
    assert_eq!(c.get("app.test", "/short").await.status, 200);
    assert_eq!(app.seen().len(), 1);
}

/// A temp folder that cannot take the spill (gone): 507 for that request, others served.
#[tokio::test]
async fn a_failing_spill_gets_507_and_usher_serves_on() {
    let app = Upstream::start("app").await;
    let tmp = tempfile::tempdir().unwrap();
    let spill = tmp.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let usher = TestServer::start(&config(
        &app,
        &format!(
            "[buffering]\nrequest_memory = \"1KiB\"\ntemp_dir = \"{}\"\n",
            spill.display()
        ),
        "",
    ))
    .await;
    std::fs::remove_dir(&spill).unwrap();
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let req = http::Request::post("/big")
        .header("host", "app.test")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            5000
        ])))
        .unwrap();
    assert_eq!(c.send(req).await.status, 507);
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/fine").await.status, 200);
    assert_eq!(app.seen().len(), 1);
}

/// `max_connections_per_ip`: connections past the cap from one address are closed at once;
/// when one closes, a new one is taken again.
#[tokio::test]
async fn connections_past_the_per_ip_cap_are_closed() {
    let app = Upstream::start("app").await;
    let usher =
        TestServer::start(&config(&app, "[limits]\nmax_connections_per_ip = 2\n", "")).await;
    let mut a = Client::plain(usher.http, Proto::H1).await;
    let mut b = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(a.get("app.test", "/a").await.status, 200);
    assert_eq!(b.get("app.test", "/b").await.status, 200);
    let mut third = TcpStream::connect(usher.http).await.unwrap();
    let _ = third
        .write_all(b"GET /c HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(
        read_all(&mut third).await,
        "",
        "a third connection was served"
    );
    drop(a);
    let mut again = None;
    for _ in 0..100 {
        // the closed connection's slot comes back once usher has seen it close
        let mut s = TcpStream::connect(usher.http).await.unwrap();
        let _ = s
            .write_all(b"GET /d HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await;
        let answer = read_all(&mut s).await;
        if !answer.is_empty() {
            again = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again
        .expect("no slot came back")
        .starts_with("HTTP/1.1 200"));
    assert_eq!(b.get("app.test", "/b2").await.status, 200);
}

/// A client reading a buffered response far below `client_min_rate`, after the app has
/// sent all of it and the grace period has passed, has the response cut.
#[tokio::test]
async fn a_response_read_too_slowly_is_cut() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(
        &app,
        "[timeouts]\nclient_min_rate = \"4MiB/s\"\nclient_min_rate_grace = \"1s\"\n",
        "",
    ))
    .await;
    // A small, fixed receive buffer: a kernel that lets it grow large (tcp_rmem's maximum is
    // 32 MiB on some machines) would otherwise take the whole response off usher at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = socket.connect(usher.http).await.unwrap();
    s.write_all(
        b"GET /stream?chunks=2048&ms=0 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let total = 2048 * 16 * 1024;
    let mut got = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    // 5 s at about 320 KiB/s, well past the grace period
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..100 {
        ticker.tick().await;
        match bounded("slow read", s.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    // then drain what the kernel's socket buffers still hold: the connection ends short
    let cut = bounded("the slow reader is cut", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(cut < total, "the whole response arrived at 320 KiB/s");
    assert_eq!(app.streams_done(), 1, "the app sent all of it");
}

/// `rate_per_ip`: past the burst, 429 with Retry-After; other limits unaffected.
#[tokio::test]
async fn requests_past_the_rate_get_429_with_retry_after() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(
        &app,
        "[limits]\nrate_per_ip = 1\nrate_burst = 3\n",
        "",
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..3 {
        assert_eq!(c.get("app.test", "/ok").await.status, 200, "request {i}");
    }
    let r = c.get("app.test", "/over").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(app.seen().len(), 3);
}

/// With `max_file_size` far below the response, the app is read only as fast as the
/// client reads; the client still gets every byte.
#[tokio::test]
async fn a_response_past_max_file_size_arrives_whole_at_the_clients_pace() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(
        &app,
        "[buffering]\nresponse_memory = \"64KiB\"\nmax_file_size = \"256KiB\"\n",
        "",
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let r = c.get("app.test", "/stream?chunks=512&ms=0").await;
    assert_eq!(r.body.len(), 512 * 16 * 1024);
    assert!(r.body.iter().all(|b| *b == b'x'));
}

/// A request head that pauses longer than `client_header_idle` once begun, or trickles
/// below `client_min_rate` after the grace, is cut; nothing reaches the app.
#[tokio::test]
async fn a_paused_or_trickled_head_is_cut() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(
        &app,
        "[timeouts]\nclient_header = \"30s\"\nclient_header_idle = \"1s\"\nclient_min_rate = \"200B/s\"\nclient_min_rate_grace = \"1s\"\n",
        "",
    ))
    .await;
    // a pause: the first line, then silence (the pause is the behaviour under test)
    let mut paused = TcpStream::connect(usher.http).await.unwrap();
    paused.write_all(b"GET /paused HTTP/1.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_all(&mut paused).await, "");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut by the pause limit, not the ceiling"
    );
    // a trickle: 10 bytes every 200 ms (50 B/s), never pausing a whole second
    let mut trickle = TcpStream::connect(usher.http).await.unwrap();
    trickle
        .write_all(b"GET /trickled HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut cut = false;
    for i in 0..100 {
        ticker.tick().await;
        if trickle
            .write_all(format!("X-{i:07}\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut b)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a 50 B/s head was never cut");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(app.seen().is_empty());
}

/// A connection is handed to usher with its first bytes (TCP_DEFER_ACCEPT): one opened
/// earlier that has sent nothing is not yet usher's, so it is not counted among the open
/// connections while a later one is served. Once it sends a request it is answered.
#[tokio::test]
async fn a_connection_is_taken_up_with_its_first_bytes() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "[admin]\nlisten = \"127.0.0.1:0\"\n", "")).await;
    let mut silent = TcpStream::connect(usher.http).await.unwrap();
    // (connected after `silent`: without the deferral usher would have accepted that first)
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/").await.status, 200);
    let mut admin = Client::plain(usher.admin(), Proto::H1).await;
    let metrics = admin.get("admin", "/metrics").await.text();
    assert_eq!(
        crate::support::sample(&metrics, "usher_connections_open", ""),
        Some(1.0),
        "only the connection that sent a request is usher's"
    );
    silent
        .write_all(b"GET /late HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut silent).await.starts_with("HTTP/1.1 200 "));
}

/// A connection that never sends anything is still closed: the kernel hands it over after
/// about `client_header`, and usher closes it when `client_header` has passed again.
#[tokio::test]
async fn a_connection_that_never_sends_is_closed() {
    let app = Upstream::start("app").await;
    let usher = TestServer::start(&config(&app, "[timeouts]\nclient_header = \"1s\"\n", "")).await;
    let mut silent = TcpStream::connect(usher.http).await.unwrap();
    assert_eq!(read_all(&mut silent).await, "", "closed without an answer");
}
