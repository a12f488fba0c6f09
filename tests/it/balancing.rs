//! Named upstream pools and balancing policies, with real upstream servers.

use std::time::Duration;

use crate::support::{Behaviour, Client, Proto, TestServer, Upstream};

fn site(pool: &str) -> String {
    format!(
        "{pool}\n[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = \"app\"\n[[site.route]]\npath = \"/other/\"\nproxy = \"app\"\n"
    )
}

/// A named pool with weights, shared by two routes: round robin sends 3:1.
#[tokio::test]
async fn a_named_pool_with_weights() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let pool = format!(
        "[upstream.app]\nbalance = \"round_robin\"\nmembers = [{{ addr = \"{}\", weight = 3 }}, \"{}\"]\n",
        a.addr, b.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..40 {
        let path = if i % 2 == 0 { "/x" } else { "/other/y" };
        assert_eq!(c.get("app.test", path).await.status, 200);
    }
    // both routes draw on the one pool: 30 and 10 over the 40 requests
    assert_eq!((a.seen().len(), b.seen().len()), (30, 10));
}

/// least_requests: with one member slow (200 ms per request) and two fast, under concurrent
/// load the slow one gets clearly less than a third of the requests.
#[tokio::test]
async fn least_requests_sends_less_to_a_slow_member() {
    let slow = Upstream::start_slow("slow", Duration::from_millis(200)).await;
    let (f1, f2) = (Upstream::start("f1").await, Upstream::start("f2").await);
    let pool = format!(
        "[upstream.app]\nbalance = \"least_requests\"\nmembers = [\"{}\", \"{}\", \"{}\"]\n",
        slow.addr, f1.addr, f2.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    // 8 concurrent clients, 15 requests each
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = usher.http;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::plain(addr, Proto::H1).await;
            for _ in 0..15 {
                assert_eq!(c.get("app.test", "/member-speed").await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 8 * 15;
    let share = slow.seen().len();
    assert_eq!(share + f1.seen().len() + f2.seen().len(), total);
    println!("least_requests: the slow member got {share} of {total} requests");
    // a third would be 40; requests pile up on the slow member, so p2c steers away from it
    assert!(share < total / 6, "slow member got {share} of {total}");
}

fn two_member_pool(a: &str, b: &str, extra: &str) -> String {
    format!("[upstream.app]\nbalance = \"round_robin\"\nmembers = [\"{a}\", \"{b}\"]\n{extra}\n")
}

/// A member that refuses connections costs the client nothing: the request goes to another.
#[tokio::test]
async fn a_refused_connection_is_retried_on_another_member() {
    let live = Upstream::start("live").await;
    let dead = crate::support::upstream::closed_port().to_string();
    let usher = TestServer::start(&site(&two_member_pool(&dead, &live.addr, ""))).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for _ in 0..10 {
        assert_eq!(c.get("app.test", "/x").await.status, 200);
    }
    assert_eq!(live.seen().len(), 10);
}

/// A member answering 503 to everything is ejected and traffic shifts to the others.
#[tokio::test]
async fn a_failing_member_is_ejected() {
    let bad = Upstream::start_with(
        "bad",
        Behaviour {
            status: Some(503),
            ..Behaviour::default()
        },
    )
    .await;
    let good = Upstream::start("good").await;
    let usher = TestServer::start(&site(&two_member_pool(
        &bad.addr,
        &good.addr,
        "eject_after = 3\neject_for = \"1m\"",
    )))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    let mut failures = 0;
    for _ in 0..40 {
        if c.get("app.test", "/x").await.status == 503 {
            failures += 1;
        }
    }
    // three 503s eject it; everything after goes to the good member
    assert_eq!(
        bad.seen().len(),
        3,
        "the failing member kept getting traffic"
    );
    assert_eq!(failures, 3);
    assert_eq!(good.seen().len(), 37);
}

/// The keep-alive race: the app closes an idle connection (as gunicorn does after 2 s) while
/// usher still holds it in its pool; the next request is sent again on a fresh connection
/// instead of becoming a 502.
#[tokio::test]
async fn a_connection_the_app_closed_is_not_a_502() {
    let app = Upstream::start_with(
        "app",
        Behaviour {
            idle_close: Some(Duration::from_millis(100)),
            ..Behaviour::default()
        },
    )
    .await;
    // usher would keep idle connections for a minute: far longer than the app does
    let pool = format!("[upstream.app]\nmembers = [\"{}\"]\n", app.addr);
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_idle = \"60s\"\n{}",
        site(&pool)
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..4 {
        assert_eq!(
            c.get("app.test", &format!("/r{i}")).await.status,
            200,
            "request {i}"
        );
        // longer than the app's keep-alive: its side of the pooled connection is gone
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(app.seen().len(), 4);
}

/// The same race caught in the act: the app drops a reused connection unanswered just as
/// usher sends on it; a GET is sent again on a fresh connection, every time, and so is a
/// POST with a buffered body, but only on a connection that had sat idle.
#[tokio::test]
async fn a_request_lost_on_a_reused_connection_is_sent_again() {
    let app = Upstream::start_with(
        "app",
        Behaviour {
            drop_reused: true,
            ..Behaviour::default()
        },
    )
    .await;
    let pool = format!("[upstream.app]\nmembers = [\"{}\"]\n", app.addr);
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_idle = \"60s\"\n{}",
        site(&pool)
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..6 {
        assert_eq!(
            c.get("app.test", &format!("/r{i}")).await.status,
            200,
            "request {i}"
        );
        // idle as long as it takes an app to start closing a kept-alive connection
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // every request after the first met a dropped connection first and was answered anyway
    assert_eq!(app.seen().len(), 6);
    let post = || {
        http::Request::post("/p")
            .header("host", "app.test")
            .body(http_body_util::Full::new(bytes::Bytes::from("x")))
            .unwrap()
    };
    // a POST whose buffered body met a connection that sat idle (the keep-alive race: the
    // app closed it, so never saw the request) is sent again too
    assert_eq!(c.send(post()).await.status, 200);
    let seen = app.seen();
    assert_eq!((seen.len(), &seen[6].body[..]), (7, &b"x"[..]));
    // but on a connection in use a moment ago, the app may have seen it: never sent twice
    assert_eq!(c.send(post()).await.status, 502);
    assert_eq!(app.seen().len(), 7);
}

/// Sends `n` requests and returns how many reached `member`.
async fn share(c: &mut Client, member: &Upstream, n: usize) -> usize {
    let before = member.seen().len();
    for _ in 0..n {
        assert_eq!(c.get("app.test", "/x").await.status, 200);
    }
    member.seen().len() - before
}

/// Active health checks: a member failing its check path leaves rotation after
/// `unhealthy_after` checks and comes back after `healthy_after` passes.
#[tokio::test]
async fn health_checks_take_members_out_and_back() {
    let (a, b, c3) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let pool = format!(
        "[upstream.app]\nbalance = \"round_robin\"\nmembers = [\"{}\", \"{}\", \"{}\"]\n[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nunhealthy_after = 2\nhealthy_after = 2\n",
        a.addr, b.addr, c3.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert!(share(&mut c, &b, 6).await > 0, "b serves while healthy");
    b.set_health(503);
    let deadline = std::time::Instant::now() + crate::support::STEP;
    while share(&mut c, &b, 6).await > 0 {
        assert!(std::time::Instant::now() < deadline, "b stayed in rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // out of rotation: no traffic at all, and no client saw an error
    assert_eq!(share(&mut c, &b, 12).await, 0);
    b.set_health(200);
    let deadline = std::time::Instant::now() + crate::support::STEP;
    while share(&mut c, &b, 6).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "b was not re-admitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `n` concurrent GETs; returns (status, Retry-After) of each, sorted.
async fn concurrent(addr: std::net::SocketAddr, n: usize) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::plain(addr, Proto::H1).await;
                let r = c.get("app.test", "/x").await;
                (r.status.as_u16(), r.header("retry-after").to_owned())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results.sort();
    results
}

/// max_conns: a member never has more requests at once than its cap; extra requests wait in
/// the bounded queue, and beyond it get 503 with Retry-After.
#[tokio::test]
async fn max_conns_queues_and_then_refuses() {
    // slow enough that all three requests certainly overlap
    let app = Upstream::start_slow("app", Duration::from_millis(1000)).await;
    let pool = format!(
        "[upstream.app]\nmembers = [\"{}\"]\nmax_conns = 1\nqueue = 1\nqueue_timeout = \"5s\"\n",
        app.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    let results = concurrent(usher.http, 3).await;
    // one served at once, one served after waiting in the queue, one refused
    assert_eq!(
        results,
        [
            (200, String::new()),
            (200, String::new()),
            (503, "1".to_owned())
        ]
    );
    assert_eq!(
        app.peak_concurrency(),
        1,
        "the app never had two requests at once"
    );
}

/// A queued request that waits longer than queue_timeout gets 503.
#[tokio::test]
async fn the_queue_wait_is_bounded() {
    let app = Upstream::start_slow("app", Duration::from_millis(1500)).await;
    let pool = format!(
        "[upstream.app]\nmembers = [\"{}\"]\nmax_conns = 1\nqueue_timeout = \"200ms\"\n",
        app.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    // whichever gets the slot is served; the other gives up after 200 ms in the queue
    let results = concurrent(usher.http, 2).await;
    assert_eq!(results, [(200, String::new()), (503, "1".to_owned())]);
}

/// An app announcing `Keep-Alive: timeout=1` gets its idle connections dropped by usher
/// before it drops them (half a second earlier), however long usher's own limit is.
#[tokio::test]
async fn the_apps_keep_alive_timeout_is_learned() {
    let short = Upstream::start_with(
        "short",
        Behaviour {
            keep_alive: Some(1),
            ..Behaviour::default()
        },
    )
    .await;
    let plain = Upstream::start("plain").await;
    let pools = format!(
        "[upstream.app]\nmembers = [\"{}\"]\n[upstream.other]\nmembers = [\"{}\"]\n",
        short.addr, plain.addr
    );
    let sites = "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = \"app\"\n[[site.route]]\npath = \"/other/\"\nproxy = \"other\"\n";
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_idle = \"60s\"\n{pools}{sites}"
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for path in ["/a", "/b", "/other/a", "/other/b"] {
        assert_eq!(c.get("app.test", path).await.status, 200);
        // idle longer than the learned limit (1 s - 0.5 s), far shorter than usher's 60 s
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(
        short.connections(),
        2,
        "the learned limit retired the idle connection"
    );
    assert_eq!(
        plain.connections(),
        1,
        "without the header the connection is kept"
    );
}

/// `protocol = "h2c"`: requests reach the app over HTTP/2 with the host as :authority and
/// `TE: trailers` kept; the app's trailers (gRPC status) reach an HTTP/2 client, and an
/// HTTP/1.1 client that asked for them with `TE: trailers` (they come after a chunked body).
#[tokio::test]
async fn an_h2c_pool_passes_trailers_through() {
    let app = Upstream::start_with(
        "grpc",
        Behaviour {
            h2: true,
            ..Behaviour::default()
        },
    )
    .await;
    let pool = format!(
        "[upstream.app]\nprotocol = \"h2c\"\nmembers = [\"{}\"]\n",
        app.addr
    );
    let usher = TestServer::start(&site(&pool)).await;
    let mut h2 = Client::plain(usher.http, Proto::H2).await;
    let mut req = crate::support::client::get("app.test", "/trailers");
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let r = h2.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "grpc trailers");
    let t = r.trailers.expect("trailers reach an HTTP/2 client");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "all good");
    let seen = &app.seen()[0];
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri.authority().unwrap().as_str(), "app.test");
    assert_eq!(seen.headers["te"], "trailers");

    let mut h1 = Client::plain(usher.http, Proto::H1).await;
    let mut req = crate::support::client::get("app.test", "/trailers");
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let r = h1.send(req).await;
    assert_eq!(r.text(), "grpc trailers");
    assert_eq!(
        r.trailers.expect("trailers over chunked HTTP/1.1")["grpc-status"],
        "0"
    );

    // many requests share one multiplexed connection
    for _ in 0..20 {
        assert_eq!(h1.get("app.test", "/x").await.status, 200);
    }
    assert_eq!(app.connections(), 1);
}

/// A connection that fails only after the app had time to work on the request (a worker
/// killed mid-request) is not the keep-alive race: a POST is not sent again (502), while a
/// GET still is.
#[tokio::test]
async fn a_post_that_failed_late_is_not_sent_again() {
    let app = Upstream::start_with(
        "app",
        Behaviour {
            drop_reused: true,
            delay: Duration::from_millis(300),
            ..Behaviour::default()
        },
    )
    .await;
    let pool = format!("[upstream.app]\nmembers = [\"{}\"]\n", app.addr);
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_idle = \"60s\"\n{}",
        site(&pool)
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    assert_eq!(c.get("app.test", "/first").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let post = http::Request::post("/p")
        .header("host", "app.test")
        .body(http_body_util::Full::new(bytes::Bytes::from("x")))
        .unwrap();
    assert_eq!(c.send(post).await.status, 502);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get("app.test", "/again").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // the same late failure for a GET: sent again on a fresh connection
    assert_eq!(c.get("app.test", "/late").await.status, 200);
    let seen: Vec<String> = app.seen().iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(seen, ["/first", "/again", "/late"]);
}

/// A member that dies between the response head and its body (a worker killed mid-write): a
/// GET is answered whole by another member, never cut; a POST, which the app has seen, is
/// never sent twice, so its response is cut.
#[tokio::test]
async fn a_member_dying_after_the_head_costs_a_get_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut_addr = listener.local_addr().unwrap().to_string();
    let cut_seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = cut_seen.clone();
    let cut = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                seen.lock()
                    .unwrap()
                    .push(line.lines().next().unwrap_or("").to_owned());
                // the head promises 100 bytes; 7 come, then the connection closes
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
            });
        }
    });
    let live = Upstream::start("live").await;
    let usher = TestServer::start(&site(&two_member_pool(
        &cut_addr,
        &live.addr,
        "eject_after = 0",
    )))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 0..10 {
        let r = c.get("app.test", &format!("/g{i}")).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, format!("live /g{i}")));
    }
    let gets = cut_seen.lock().unwrap().len();
    assert!(gets >= 3, "the dying member saw only {gets} of the GETs");
    assert_eq!(live.seen().len(), 10);
    // two POSTs in a row: round robin sends one to each member
    let mut cut_posts = 0;
    for _ in 0..2 {
        let post = http::Request::post("/p")
            .header("host", "app.test")
            .body(http_body_util::Full::new(bytes::Bytes::from("x")))
            .unwrap();
        let mut c = Client::plain(usher.http, Proto::H1).await;
        // a cut response: the head and part of the body, or (when the app's close is already
        // known as the head goes out) the connection closed before any of it
        let Ok(resp) = c.send_streaming(post).await else {
            cut_posts += 1;
            continue;
        };
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::collect(resp.into_body()),
        )
        .await
        .expect("body bounded");
        if body.is_err() {
            cut_posts += 1;
        }
    }
    let posts_at_cut = cut_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    let posts_at_live = live.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!((cut_posts, posts_at_cut, posts_at_live), (1, 1, 1));
    cut.abort();
}
