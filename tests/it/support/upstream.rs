//! A real upstream app server (hyper, HTTP/1.1) on an ephemeral port or a unix socket. It
//! records every request it sees and answers by path:
//! - `/slow?ms=N`: waits N ms, then answers (for upstream timeouts);
//! - `/stream?chunks=N&ms=M`: N chunks of 16 KiB, M ms apart (a long download);
//! - `/stall`: one chunk of body, then nothing for an hour;
//! - `/hop`: a response carrying hop-by-hop headers that must not reach the client;
//! - `/trailers`: a body followed by gRPC-style trailers (`grpc-status: 0`);
//! - `/cache/DIRECTIVES/...`: a response with `Cache-Control: DIRECTIVES` and an ETag (304 to
//!   a matching If-None-Match); with `vary` in the path, `Vary: Accept-Language`; with `aged`,
//!   its own `Age: 7` and `Cache-Status`; with `big`, a 300,000-byte body; with `nocond`,
//!   never a 304;
//! - anything else: 200 `NAME PATH`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running upstream. Dropping it stops it: the listener and every open connection close.
pub struct Upstream {
    /// `127.0.0.1:PORT`, or `unix:/path` for a socket.
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    health: Arc<AtomicU16>,
    concurrency: Arc<[AtomicUsize; 4]>,
    task: JoinHandle<()>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Upstream {
    /// Starts on an ephemeral loopback port.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_slow(name, Duration::ZERO).await
    }

    /// Starts on an ephemeral loopback port, taking `delay` before every answer.
    pub async fn start_slow(name: &str, delay: Duration) -> Upstream {
        Upstream::start_with(
            name,
            Behaviour {
                delay,
                ..Behaviour::default()
            },
        )
        .await
    }

    /// Starts on an ephemeral loopback port with the given behaviour.
    pub async fn start_with(name: &str, behaviour: Behaviour) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        Upstream::launch(name, addr, behaviour, Listener::Tcp(listener))
    }

    /// Starts on a unix socket at `path`.
    pub async fn start_unix(name: &str, path: &Path) -> Upstream {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let addr = format!("unix:{}", path.display());
        Upstream::launch(name, addr, Behaviour::default(), Listener::Unix(listener))
    }

    /// Accepts on `listener` until dropped, serving each connection with `behaviour`.
    fn launch(name: &str, addr: String, behaviour: Behaviour, listener: Listener) -> Upstream {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(AtomicU16::new(200));
        let concurrency: Arc<[AtomicUsize; 4]> = Arc::default();
        let (name, log, h, cc) = (
            Arc::<str>::from(name),
            seen.clone(),
            health.clone(),
            concurrency.clone(),
        );
        let task = tokio::spawn(async move {
            // the connections go down with the upstream, as with a killed app
            let mut conns = tokio::task::JoinSet::new();
            while let Some(io) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                cc[2].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                conns.spawn(serve(
                    TokioIo::new(io),
                    name.clone(),
                    log.clone(),
                    behaviour,
                    h.clone(),
                    cc.clone(),
                ));
            }
        });
        Upstream {
            addr,
            seen,
            health,
            concurrency,
            task,
        }
    }

    /// How many requests this upstream is handling now.
    pub fn in_progress(&self) -> usize {
        self.concurrency[0].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many TCP connections this upstream accepted.
    pub fn connections(&self) -> usize {
        self.concurrency[2].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests this upstream ever handled at the same time.
    pub fn peak_concurrency(&self) -> usize {
        self.concurrency[1].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many `/stream` responses were sent to their end.
    pub fn streams_done(&self) -> usize {
        self.concurrency[3].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sets the status `/healthz` answers with.
    pub fn set_health(&self, status: u16) {
        self.health
            .store(status, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on which nothing listens (see `free_port`: nothing else gets it).
pub fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port()))
}

/// How an upstream misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Wait before every answer.
    pub delay: Duration,
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// Close a keep-alive connection idle this long (as gunicorn does after 2 s).
    pub idle_close: Option<Duration>,
    /// Drop a connection, unanswered (after `delay`), when a second request arrives on it:
    /// what a proxy sees when the app closes a kept-alive connection just as the proxy
    /// reuses it (or, with a delay, when a worker dies mid-request).
    pub drop_reused: bool,
    /// Announce `Keep-Alive: timeout=N` on every response, as uvicorn and gunicorn do.
    pub keep_alive: Option<u64>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1, as gRPC servers do.
    pub h2: bool,
}

async fn serve<I>(
    io: TokioIo<I>,
    name: Arc<str>,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Behaviour,
    health: Arc<AtomicU16>,
    concurrency: Arc<[AtomicUsize; 4]>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let (name, seen) = (name.clone(), seen.clone());
        let nth = requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let health = health.clone();
        let cc = concurrency.clone();
        async move {
            // track how many requests this upstream handles at once, and the most ever
            let now = cc[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            cc[1].fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            let _done = Decrement(cc.clone());
            // an Upgrade request: 101, then echo every byte back until the client closes
            if let Some(proto) = req.headers().get("upgrade").cloned() {
                seen.lock().unwrap().push(Seen {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    version: req.version(),
                    headers: req.headers().clone(),
                    body: Bytes::new(),
                });
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(up) = on.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                let mut resp = Response::new(http_body_util::Full::new(Bytes::new()).boxed());
                *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut().insert("upgrade", proto);
                resp.headers_mut()
                    .insert("connection", http::HeaderValue::from_static("upgrade"));
                return Ok(resp);
            }
            // health checks: answered with the status the test set, not counted as traffic
            if req.uri().path() == "/healthz" {
                let status = health.load(std::sync::atomic::Ordering::Relaxed);
                let mut resp = Response::new(http_body_util::Full::new(Bytes::new()).boxed());
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                return Ok(resp);
            }
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            if behaviour.drop_reused && nth > 0 {
                return Err("dropping a reused connection unanswered");
            }
            let mut resp = answer(req, &name, &seen, &cc).await;
            if let Some(s) = behaviour.status {
                *resp.status_mut() = http::StatusCode::from_u16(s).unwrap();
            }
            if let Some(n) = behaviour.keep_alive {
                resp.headers_mut()
                    .insert("keep-alive", format!("timeout={n}").parse().unwrap());
            }
            Ok::<_, &str>(resp)
        }
    });
    if behaviour.h2 {
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
        return;
    }
    let mut builder = http1::Builder::new();
    if let Some(idle) = behaviour.idle_close {
        // hyper's header timeout also runs while a connection waits for its next request
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(idle);
    }
    let _ = builder.serve_connection(io, svc).with_upgrades().await;
}

fn query(uri: &Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn answer(
    req: Request<Incoming>,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    cc: &Arc<[AtomicUsize; 4]>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    let full = |s: String| http_body_util::Full::new(Bytes::from(s)).boxed();
    match parts.uri.path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(
                query(&parts.uri, "ms").unwrap_or(1000),
            ))
            .await;
            Response::new(full(format!("{name} slow")))
        }
        "/stream" => {
            let chunks = query(&parts.uri, "chunks").unwrap_or(10);
            let ms = query(&parts.uri, "ms").unwrap_or(50);
            let cc = cc.clone();
            let stream = futures_util::stream::unfold(0, move |i| {
                let cc = cc.clone();
                async move {
                    if i == chunks {
                        cc[3].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))),
                        i + 1,
                    ))
                }
            });
            Response::new(StreamBody::new(stream).boxed())
        }
        "/stall" => {
            // one chunk, then silence far longer than any test waits
            let stream = futures_util::stream::unfold(0, |i| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first"))),
                    i + 1,
                ))
            });
            Response::new(StreamBody::new(stream).boxed())
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            trailers.insert("grpc-message", http::HeaderValue::from_static("all good"));
            let frames = [
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{name} trailers")))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut resp =
                Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            resp.headers_mut().insert(
                "trailer",
                http::HeaderValue::from_static("grpc-status, grpc-message"),
            );
            resp
        }
        p if p.starts_with("/cache/") => {
            // /cache/DIRECTIVES/...: Cache-Control DIRECTIVES (`+` for spaces), an ETag, and
            // a 304 to a matching If-None-Match; `vary` adds Vary: Accept-Language
            let directives = p.split('/').nth(2).unwrap_or("").replace('+', " ");
            let etag = format!("\"{}\"", p.len());
            if !p.contains("nocond")
                && parts
                    .headers
                    .get("if-none-match")
                    .is_some_and(|v| v.to_str().unwrap_or("") == etag)
            {
                return Response::builder()
                    .status(304)
                    .header("etag", &etag)
                    .header("cache-control", &directives)
                    .body(full(String::new()))
                    .unwrap();
            }
            let lang = parts
                .headers
                .get("accept-language")
                .map_or("", |v| v.to_str().unwrap_or(""));
            let mut b = Response::builder()
                .header("cache-control", &directives)
                .header("etag", &etag);
            if p.contains("vary") {
                b = b.header("vary", "Accept-Language");
            }
            if p.contains("many-vary") {
                let names: Vec<String> = (0..200).map(|i| format!("x-v{i}")).collect();
                b = b.header("vary", names.join(", "));
            }
            if p.contains("cookie") {
                b = b.header("set-cookie", "session=secret");
            }
            if p.contains("aged") {
                b = b.header("age", "7").header("cache-status", "origin; hit");
            }
            if p.contains("big") {
                return b.body(full("b".repeat(300_000))).unwrap();
            }
            b.body(full(format!("{name} {p} {lang}"))).unwrap()
        }
        "/hop" => Response::builder()
            .header("connection", "x-hop-named")
            .header("x-hop-named", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-app", "kept")
            .body(full(format!("{name} hop")))
            .unwrap(),
        path => Response::new(full(format!("{name} {path}"))),
    }
}

/// Lowers the in-progress count when a request's handling ends.
struct Decrement(Arc<[AtomicUsize; 4]>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0[0].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A connection of either listener kind.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The upstream's listening socket.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> Option<Box<dyn Io>> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .await
                .ok()
                .map(|(s, _)| Box::new(s) as Box<dyn Io>),
            Listener::Unix(l) => l
                .accept()
                .await
                .ok()
                .map(|(s, _)| Box::new(s) as Box<dyn Io>),
        }
    }
}
