//! usher's own HTTP/1.1 client to the app (`upstream/h1.rs`), against a scripted app on a raw
//! socket: the response framings RFC 9112 allows, broken responses, connection reuse, and an
//! app that answers an upload before it has all of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::client::{get, Client, Proto};
use crate::support::{bounded, eventually, TestServer};

/// What the app does after an answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Waits for the next request on the connection.
    Keep,
    /// Closes the connection.
    Close,
    /// Shuts its side down, then reads (and drops) what still comes until the peer closes.
    Drain,
}

/// An app that answers every request head with fixed bytes, chosen by the request line.
struct RawApp {
    addr: String,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawApp {
    async fn start(answer: fn(&str) -> (&'static [u8], After)) -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    serve(s, answer).await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawApp {
            addr,
            accepted,
            closed,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: reads request heads (bodies are not read), answers each.
async fn serve(mut s: TcpStream, answer: fn(&str) -> (&'static [u8], After)) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let (bytes, after) = answer(head.lines().next().unwrap_or(""));
        if s.write_all(bytes).await.is_err() {
            return;
        }
        match after {
            After::Keep => {}
            After::Close => return,
            After::Drain => {
                let _ = s.shutdown().await;
                // (bounded, but beyond the tests' STEP: only usher's close counts as one)
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                    while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
        }
    }
}

fn config(app: &RawApp, route: &str) -> String {
    format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{}\"]\n{route}",
        app.addr
    )
}

/// Interim 1xx heads are skipped, a chunked body with extensions is decoded, its trailers
/// reach a client that asked for them, and the connection carries the next request.
#[tokio::test]
async fn chunked_bodies_interim_heads_and_trailers_on_a_reused_connection() {
    let app = RawApp::start(|_| {
        (
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
            After::Keep,
        )
    })
    .await;
    let usher = TestServer::start(&config(&app, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for _ in 0..3 {
        let mut req = get("app.test", "/c");
        req.headers_mut().insert("te", "trailers".parse().unwrap());
        let r = c.send(req).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "hello world".into()));
        assert!(
            r.headers.get("link").is_none(),
            "an interim head is not the answer"
        );
        assert_eq!(r.trailers.expect("trailers")["x-sum"], "1");
    }
    assert_eq!(app.accepted(), 1, "one connection carried every request");
}

/// Reads one response off `s` whose body is `body_len` bytes: its head's lines (without the
/// status line) and its body.
async fn read_raw(s: &mut TcpStream, body_len: usize) -> (Vec<String>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() >= end + 4 + body_len {
                let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                let lines = head.split("\r\n").skip(1).map(str::to_owned).collect();
                assert_eq!(buf.len(), end + 4 + body_len, "bytes after the response");
                return (lines, buf[end + 4..].to_vec());
            }
        }
        let got = bounded("a response", s.read(&mut chunk)).await.unwrap();
        assert!(got > 0, "closed within the response: {buf:?}");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// On usher's HTTP/1.1 path a response's header lines reach the client as the app wrote
/// them (no header map between): in order, repeated ones kept, names in their own case, the
/// hop-by-hop ones left out; the framing is usher's, and a HEAD keeps GET's length.
#[tokio::test]
async fn the_apps_header_lines_reach_the_client_as_written_without_hop_by_hop_ones() {
    let app = RawApp::start(|line| {
        let head = b"HTTP/1.1 200 OK\r\nServer: app\r\nSet-Cookie: a=1\r\n\
              Keep-Alive: timeout=5\r\nX-Mixed-Case: Yes\r\nProxy-Thing: x\r\nUpgrade: h2c\r\n\
              Connection: keep-alive\r\nSet-Cookie: b=2\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\
              Content-Length: 5\r\n\r\n";
        let answer: &'static [u8] = match line.starts_with("HEAD") {
            true => head,
            false => {
                b"HTTP/1.1 200 OK\r\nServer: app\r\nSet-Cookie: a=1\r\n\
              Keep-Alive: timeout=5\r\nX-Mixed-Case: Yes\r\nProxy-Thing: x\r\nUpgrade: h2c\r\n\
              Connection: keep-alive\r\nSet-Cookie: b=2\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n\
              Content-Length: 5\r\n\r\nhello"
            }
        };
        (answer, After::Keep)
    })
    .await;
    let usher = TestServer::start(&config(&app, "")).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    let expected = [
        "Server: app",
        "Set-Cookie: a=1",
        "X-Mixed-Case: Yes",
        "Set-Cookie: b=2",
        "Date: Mon, 07 Dec 2026 20:00:00 GMT",
        "content-length: 5",
    ];
    s.write_all(b"GET /lines HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (lines, body) = read_raw(&mut s, 5).await;
    assert_eq!(lines, expected);
    assert_eq!(body, b"hello");
    s.write_all(b"HEAD /lines HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (lines, body) = read_raw(&mut s, 0).await;
    assert_eq!(lines, expected, "a HEAD gets GET's head");
    assert!(body.is_empty());
    assert_eq!(app.accepted(), 1, "one connection carried both requests");
}

/// A body without a length runs to the close (an HTTP/1.0 app), and that connection is not
/// used again.
#[tokio::test]
async fn a_body_without_a_length_runs_to_the_close() {
    let app = RawApp::start(|_| {
        (
            b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the close",
            After::Close,
        )
    })
    .await;
    let usher = TestServer::start(&config(&app, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for _ in 0..2 {
        let r = c.get("app.test", "/").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "until the close".into())
        );
    }
    assert_eq!(app.accepted(), 2);
}

/// A connection the app closed while it sat in the pool is noticed before a request is
/// written on it: the request goes on a new connection (with one member and a connection
/// used moments ago, nothing would send it again).
#[tokio::test]
async fn a_pooled_connection_the_app_closed_is_not_used() {
    let app = RawApp::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            After::Close,
        )
    })
    .await;
    let usher = TestServer::start(&config(&app, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for i in 1..=3 {
        let r = c.get("app.test", "/").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "ok".into()));
        eventually("the app closed its side", || app.closed() == i).await;
    }
    assert_eq!(app.accepted(), 3);
}

/// The answer of the apps below.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// An app answering as `answer` says, behind usher with the pool's idle limit at `idle`, and
/// a client of usher's.
async fn app_behind_usher(
    answer: fn(&str) -> (&'static [u8], After),
    idle: &str,
) -> (RawApp, TestServer, Client) {
    let app = RawApp::start(answer).await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_idle = \"{idle}\"\n{}",
        config(&app, "")
    ))
    .await;
    let c = Client::plain(usher.http, Proto::H1).await;
    (app, usher, c)
}

/// A pooled connection is closed when its idle limit runs out, with no request to come upon
/// it: once traffic stops, the pool does not keep the app's sockets open.
#[tokio::test]
async fn an_idle_pooled_connection_is_closed_on_time_without_traffic() {
    let (app, _usher, mut c) = app_behind_usher(|_| (OK, After::Keep), "1s").await;
    for _ in 0..2 {
        let r = c.get("app.test", "/").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "ok".into()));
    }
    assert_eq!(app.accepted(), 1, "the pool kept and reused the connection");
    // (the app keeps its side open: only usher's close ends it)
    eventually("usher closed the idle connection", || app.closed() == 1).await;
    assert_eq!(app.accepted(), 1);
}

/// The idle limit an app announces (`Keep-Alive: timeout=1`, less usher's half-second margin)
/// is learned from a response passed on as it came, and the connection closed on it, long
/// before the pool's own limit.
#[tokio::test]
async fn an_apps_keep_alive_timeout_is_learned_from_a_passed_response() {
    const ANNOUNCED: &[u8] =
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\ncontent-length: 2\r\n\r\nok";
    let (app, _usher, mut c) = app_behind_usher(|_| (ANNOUNCED, After::Keep), "60s").await;
    let r = c.get("app.test", "/").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "ok".into()));
    assert!(r.headers.get("keep-alive").is_none(), "hop-by-hop");
    eventually("usher closed the connection on the app's limit", || {
        app.closed() == 1
    })
    .await;
    assert_eq!(app.accepted(), 1);
}

/// A pooled connection the app closed (its keep-alive timer, say) is let go within a sweep
/// (5 s at most), with no request to come upon it and long before the pool's own idle limit.
#[tokio::test]
async fn a_pooled_connection_the_app_closed_is_let_go_without_traffic() {
    let (app, _usher, mut c) = app_behind_usher(|_| (OK, After::Drain), "60s").await;
    let r = c.get("app.test", "/").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "ok".into()));
    // (the app shut its side down after answering and reads until usher closes: usher's
    // socket sits half-closed in the pool until then)
    eventually("usher let go of the connection the app closed", || {
        app.closed() == 1
    })
    .await;
}

/// A response that is not HTTP, has a status of four digits, frames its body two ways, or
/// switches protocols unasked is a 502 with a short body; usher goes on serving.
#[tokio::test]
async fn broken_responses_get_502() {
    let app = RawApp::start(|line| {
        let bytes: &'static [u8] = if line.contains("/garbage") {
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
        } else if line.contains("/lengths") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"
        } else if line.contains("/switch") {
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
        } else if line.contains("/status") {
            b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        (bytes, After::Close)
    })
    .await;
    let usher = TestServer::start(&config(&app, "")).await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for path in ["/garbage", "/lengths", "/switch", "/status"] {
        let r = c.get("app.test", path).await;
        assert_eq!(r.status.as_u16(), 502, "{path}");
        assert!(r.body.len() < 200, "{path}: a short body");
    }
    assert_eq!(c.get("app.test", "/fine").await.text(), "ok");
}

/// An app that refuses an upload as soon as it sees the head (a 413) gets its answer to the
/// client while the client is still sending: usher stops sending the body upstream.
#[tokio::test]
async fn an_early_answer_to_a_streamed_upload_reaches_the_client() {
    let app = RawApp::start(|_| {
        (
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!",
            After::Drain,
        )
    })
    .await;
    let usher = TestServer::start(&config(&app, "buffer_requests = false\n")).await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    // the head and a first chunk; the rest never comes
    s.write_all(
        b"POST /up HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"too big!") {
        let n = bounded("the early answer", s.read(&mut chunk))
            .await
            .unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 413 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

/// A streamed upload the app greets with `100 Continue` (as gunicorn and nginx do for a
/// request that asked for it) keeps flowing: an interim head is not the answer. The client's
/// `Expect` is answered by usher itself and not passed on.
#[tokio::test]
async fn an_interim_head_does_not_end_a_streamed_upload() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (first_chunk, mut got_first) = tokio::sync::mpsc::channel::<()>(1);
    let app = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut greeted = false;
        let mut told = false;
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "usher closed before the body ended");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !greeted {
                greeted = true;
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                assert!(!head.contains("expect:"), "{head}");
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            }
            let body = &buf[end + 4..];
            if !told && body.windows(4).any(|w| w == b"abcd") {
                told = true;
                first_chunk.send(()).await.unwrap();
            }
            if body.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nwhole one")
            .await
            .unwrap();
        // (held open until the test ends: usher may keep it)
        let _ = s.read(&mut chunk).await;
    });
    let usher = TestServer::start(&format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{addr}\"]\nbuffer_requests = false\n"
    ))
    .await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n4\r\nabcd\r\n",
    )
    .await
    .unwrap();
    bounded("the app got the first chunk", got_first.recv())
        .await
        .expect("the app saw the first chunk");
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"whole one") {
        let n = bounded("the answer", s.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("HTTP/1.1 200 "), "{text}");
    app.abort();
}

/// The bytes of a long body: position-dependent, so a lost or reordered piece shows.
fn long_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const LONG_LEN: usize = 2 << 20;

/// A long body is read in batches (`upstream/h1/batch.rs`), whole and in order, and the
/// connection it came on then carries a short answer: the batching mark is gone, or the next
/// head would wait for bytes that never come (a 504 after `upstream_response`).
#[tokio::test]
async fn a_long_body_arrives_whole_and_its_connection_carries_a_short_answer_next() {
    static LONG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {LONG_LEN}\r\n\r\n").into_bytes();
        raw.extend(long_body(LONG_LEN));
        raw
    });
    let app = RawApp::start(|line| {
        if line.contains("/long") {
            (&LONG[..], After::Keep)
        } else {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                After::Keep,
            )
        }
    })
    .await;
    let usher = TestServer::start(&format!(
        "[timeouts]\nupstream_response = \"5s\"\n{}",
        config(&app, "")
    ))
    .await;
    let mut c = Client::plain(usher.http, Proto::H1).await;
    for _ in 0..2 {
        let r = c.get("app.test", "/long").await;
        assert_eq!(r.status.as_u16(), 200);
        assert!(
            r.body[..] == long_body(LONG_LEN)[..],
            "the long body arrived changed"
        );
        let r = c.get("app.test", "/short").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "ok".into()));
    }
    assert_eq!(app.accepted(), 1, "one connection carried every request");
}

/// An app that sends a long body slowly is not held up by batching: what it has sent reaches
/// the client while the app waits (here, for the client to have it) before sending the rest.
#[tokio::test]
async fn a_long_body_sent_slowly_reaches_the_client_as_it_is_sent() {
    const FIRST: usize = 16 * 1024;
    const SECOND: usize = 48 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (go, mut told) = tokio::sync::mpsc::channel::<()>(1);
    let app = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "usher closed before its request head ended");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = long_body(LONG_LEN);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LONG_LEN}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        // each part once the client has everything before it
        for part in [
            &body[..FIRST],
            &body[FIRST..FIRST + SECOND],
            &body[FIRST + SECOND..],
        ] {
            s.write_all(part).await.unwrap();
            if told.recv().await.is_none() {
                return;
            }
        }
        let _ = s.read(&mut chunk).await;
    });
    let usher = TestServer::start(&format!(
        "[[site]]\nnames = [\"app.test\"]\ntls = \"off\"\n[[site.route]]\npath = \"/\"\nproxy = [\"{addr}\"]\n"
    ))
    .await;
    let mut s = TcpStream::connect(usher.http).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut body_at = None;
    for want in [FIRST, FIRST + SECOND, LONG_LEN] {
        while body_at.is_none_or(|at| got.len() - at < want) {
            let n = bounded("the body so far", s.read(&mut chunk))
                .await
                .unwrap();
            assert!(n > 0, "usher closed within the body");
            got.extend_from_slice(&chunk[..n]);
            if body_at.is_none() {
                body_at = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            }
        }
        go.send(()).await.unwrap();
    }
    let at = body_at.unwrap();
    assert!(
        got[at..] == long_body(LONG_LEN)[..],
        "the body arrived changed"
    );
    app.abort();
}
