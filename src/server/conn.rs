//! One client connection: the TLS handshake, then its HTTP sessions under the idle watcher.
//!
//! HTTP/2 (ALPN `h2`, or the h2c preface on the plain listener) runs on hyper-util's auto
//! builder. HTTP/1.1 runs on usher's own path for requests without a body (h1.rs) and on
//! hyper's builder for the rest. An HTTP/1.1 connection idle for `PARK_AFTER` is parked: its
//! session state and buffers (about 30 KiB with hyper) are let go, only the socket and the
//! TLS session stay, and a new session starts when the client sends again. nginx does the
//! same when a connection goes into keep-alive.

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{self, Ended};
use super::{CapSlot, ConnCaps, ConnInfo, ConnSettings, Live, Shared, Watch, WatchLimits};
use crate::acme::ACME_TLS_ALPN;
use crate::body::{ClientBody, Logged};
use crate::proxy::Writer;

/// How long an HTTP/1.1 connection sits idle before it is parked: long enough that a client
/// sending request after request keeps its session, short enough that thousands of idle
/// keep-alive connections cost little.
const PARK_AFTER: Duration = Duration::from_millis(50);

/// The longest wait for a parked connection's close (TLS close_notify, then FIN) to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection's transport: TCP, or TLS over it.
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the socket has something to read, or the client closed it.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether a read would return at once without the socket: TLS records already
    /// received and decrypted ahead, or the client's close_notify.
    fn has_pending(&mut self) -> bool;
}

impl ClientIo for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn has_pending(&mut self) -> bool {
        false
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TlsSocket> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0 .0.poll_read_ready(cx)
    }

    fn has_pending(&mut self) -> bool {
        match self.get_mut().1.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            // the next read reports it
            Err(_) => true,
        }
    }
}

/// The TCP socket under TLS. rustls hands its records to the socket as a vectored write,
/// nearly always of one buffer (a response's record), which goes out as a plain send
/// ([`crate::wire::poll_write_lean`]).
pub(super) struct TlsSocket(TcpStream);

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        crate::wire::poll_write_lean(Pin::new(&mut self.0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A connection's HTTP sessions, boxed: a parked connection's task then holds little
/// more than its socket.
type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(super) async fn serve_tcp(
    tcp: TcpStream,
    peer: SocketAddr,
    is_tls: bool,
    shared: Arc<Shared>,
    slot: CapSlot,
) {
    // Two steps, each in a box of its own: a task is as large as its largest state, and the
    // handshake's is larger than a parked connection's.
    let serving = Box::pin(start(tcp, peer, is_tls, shared, slot)).await;
    if let Some(serving) = serving {
        serving.await;
    }
}

/// A connection's start: the TLS handshake, or on the plain listener a look at its first
/// bytes. `None` when it ends there.
async fn start(
    tcp: TcpStream,
    peer: SocketAddr,
    is_tls: bool,
    shared: Arc<Shared>,
    slot: CapSlot,
) -> Option<Serving> {
    let received = shared.metrics.received.clone();
    let info = move |tls, sni| {
        let mut info = ConnInfo::new(peer, tls, sni);
        info.cap = Some(slot);
        info.received_into = Some(received);
        Arc::new(info)
    };
    let live = shared.live.load().conn.clone();
    match (&live.tls, is_tls) {
        (Some(acceptor), true) => {
            let handshake =
                tokio::time::timeout(live.handshake_timeout, acceptor.accept(TlsSocket(tcp)));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => {
                        shared.metrics.handshakes.ok.inc();
                        s
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        shared.metrics.handshakes.failed.inc();
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        shared.metrics.handshakes.timed_out.inc();
                        return None;
                    }
                },
                _ = shared.drain.cancelled() => return None,
            };
            Some(after_handshake(stream, info, shared, live))
        }
        _ => {
            let info = info(false, None);
            match may_be_h2c(&tcp, live.watch, &shared).await? {
                true => Some(Box::pin(serve_auto(tcp, info, shared, live))),
                false => Some(Box::pin(serve_h1(tcp, info, shared, live))),
            }
        }
    }
}

/// What follows a TLS handshake: the HTTP sessions, HTTP/2 or HTTP/1.1 as ALPN says; for a CA
/// validating TLS-ALPN-01, only the close (the handshake was the whole answer).
fn after_handshake(
    stream: tokio_rustls::server::TlsStream<TlsSocket>,
    info: impl FnOnce(bool, Option<Box<str>>) -> Arc<ConnInfo>,
    shared: Arc<Shared>,
    live: Arc<ConnSettings>,
) -> Serving {
    let alpn = stream.get_ref().1.alpn_protocol();
    if alpn == Some(ACME_TLS_ALPN) {
        let mut stream = stream;
        return Box::pin(async move {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        });
    }
    let h2 = alpn == Some(b"h2");
    let sni = stream.get_ref().1.server_name().map(Box::from);
    let info = info(true, sni);
    if h2 {
        Box::pin(serve_auto(stream, info, shared, live))
    } else {
        Box::pin(serve_h1(stream, info, shared, live))
    }
}

/// Whether a plain connection may speak HTTP/2 with prior knowledge: its first bytes (due
/// within `client_header`) begin the h2c preface. `None` when the client closed or stayed
/// silent, or a drain began.
async fn may_be_h2c(tcp: &TcpStream, limits: WatchLimits, shared: &Shared) -> Option<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    let peek = tokio::time::timeout(limits.header, tcp.peek(&mut first));
    let n = tokio::select! {
        r = peek => match r {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        },
        _ = shared.drain.cancelled() => return None,
    };
    Some(H2_PREFACE.starts_with(&first[..n]))
}

/// A connection's service: each request on the config current when it starts.
fn service(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Logged>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + Unpin
       + 'static {
    let (shared, info) = (shared.clone(), info.clone());
    // boxed: hyper moves a request's future by value, and spawns each HTTP/2 stream's as a
    // task; a box of its own is one copy of it, where in place it was copied at each move
    service_fn(move |req| Box::pin(respond(shared.live.load_full(), info.clone(), req)))
}

/// Answers a request on the config current when it starts.
async fn respond(
    live: Arc<Live>,
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Logged>, std::convert::Infallible> {
    Ok(live
        .proxy
        .handle(req.map(ClientBody::Hyper), info, Writer::Hyper)
        .await)
}

/// HTTP/2, or HTTP/1.1 that began like the h2c preface: hyper-util's auto builder, one
/// session for the whole connection.
async fn serve_auto<I: ClientIo>(
    io: I,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    live: Arc<ConnSettings>,
) {
    let io = TokioIo::new(Watched::new(io, info.clone(), Bytes::new()));
    let svc = service(&shared, &info);
    // with upgrades: WebSocket and other Upgrade requests become tunnels (proxy.rs)
    let conn = live.builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    drive(conn, |c| c.graceful_shutdown(), &info, &shared, live.watch).await;
}

/// HTTP/1.1: sessions of the fast path (h1.rs), or on hyper's builder for what it does not
/// take, parked in between when the client pauses.
// Not an async fn: an async block uses its captures in place, where an async fn's body
// copies its arguments into locals, and the socket (1.2 KiB with TLS) would be held twice.
#[allow(clippy::manual_async_fn)]
fn serve_h1<I: ClientIo>(
    mut io: I,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    live: Arc<ConnSettings>,
) -> impl Future<Output = ()> + Send {
    async move {
        let svc = service(&shared, &info);
        let limits = WatchLimits {
            park: Some(PARK_AFTER),
            ..live.watch
        };
        let mut prefix = Bytes::new();
        loop {
            info.parking.store(false, Ordering::Relaxed);
            // requests without a body first, without hyper (h1.rs)
            // (boxed, like the sessions below: the task holds no room for them while parked)
            let (ended, rest) = Box::pin(h1::serve(
                &mut io, prefix, &info, &shared, live.head, limits,
            ))
            .await;
            prefix = rest;
            match ended {
                Ended::Closed => return,
                Ended::Parked => {}
                // a request for hyper: its session, until it is parked in turn
                Ended::Handoff => {
                    let mut session =
                        H1Session::start(&live.h1, io, info.clone(), prefix, svc.clone());
                    // (the watcher boxed too, for the same reason)
                    let parked = Box::pin(drive(
                        Pin::new(&mut *session.0),
                        |c| c.graceful_shutdown(),
                        &info,
                        &shared,
                        limits,
                    ))
                    .await;
                    // (none when the connection was upgraded: it has become a tunnel)
                    match parked.then(|| session.take_back()).flatten() {
                        Some((back, ahead)) => (io, prefix) = (back, ahead),
                        None => {
                            // a tunnel may hold the socket now: its shutdown must be a real one
                            info.parking.store(false, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
            if prefix.is_empty()
                && !io.has_pending()
                && !park(&mut io, &info, &shared, limits.idle).await
            {
                return;
            }
        }
    }
}

/// An HTTP/1.1 session on a client connection (boxed: while parked, the connection's task
/// holds only the socket).
struct H1Session<I: ClientIo, S: hyper::service::HttpService<Incoming>>(
    Box<http1::UpgradeableConnection<TokioIo<Watched<I>>, S>>,
);

impl<I, S, B> H1Session<I, S>
where
    I: ClientIo,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A new session on `io`, `prefix` read first. (Not async: a temporary here would
    /// otherwise take room in the task.)
    fn start(builder: &http1::Builder, io: I, info: Arc<ConnInfo>, prefix: Bytes, svc: S) -> Self {
        let io = TokioIo::new(Watched::new(io, info, prefix));
        H1Session(Box::new(builder.serve_connection(io, svc).with_upgrades()))
    }

    /// The socket back from a parked session, with what hyper had read of a next request
    /// after anything it had not read yet (copied: hyper's read buffer, 8 KiB or more, is
    /// let go even when it holds a few bytes); `None` when the connection was upgraded.
    fn take_back(self) -> Option<(I, Bytes)> {
        let parts = self.0.into_parts()?;
        Some(parts.io.into_inner().into_parts(&parts.read_buf))
    }
}

/// A parked connection: waits, holding only the socket, for the client to send again.
/// Closes it (as hyper would, with TLS close_notify) when it stays idle for `idle` or a drain
/// begins. Returns whether to serve it again.
async fn park<I: ClientIo>(io: &mut I, info: &ConnInfo, shared: &Shared, idle: Duration) -> bool {
    let idle_until = info.last_active_at() + idle;
    let _counted = Parked::count(&shared.caps);
    // (the socket's own read readiness rather than a `readable()` future, which would take
    // 150 bytes more in every parked connection's task)
    let socket = &mut *io;
    let readable = std::future::poll_fn(move |cx| socket.poll_read_ready(cx));
    tokio::select! {
        r = readable => return r.is_ok(),
        _ = tokio::time::sleep_until(idle_until) => {}
        _ = shared.drain.cancelled() => {}
        _ = shared.hard_stop.cancelled() => return false,
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, tokio::io::AsyncWriteExt::shutdown(io)).await;
    false
}

/// Whether a session ended cleanly (an error is logged).
fn ended<E: Display>(r: Result<(), E>, info: &ConnInfo) -> bool {
    if let Err(e) = &r {
        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
    }
    r.is_ok()
}

/// Counts a connection as parked while it lives.
struct Parked<'a>(&'a ConnCaps);

impl Parked<'_> {
    fn count(caps: &ConnCaps) -> Parked<'_> {
        caps.parked.fetch_add(1, Ordering::Relaxed);
        Parked(caps)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drives one HTTP session under the idle watcher until it ends. Returns true when it ended
/// because the watcher parked it: `shutdown` was called with `info.parking` set and the
/// session ended on the very next poll, so hyper finished without closing the socket.
pub(super) async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    info: &ConnInfo,
    shared: &Shared,
    limits: WatchLimits,
) -> bool
where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    // The connection's state (and with it the rule that applies) changes between wake-ups, so
    // the watcher never sleeps longer than the shortest limit.
    let busy_nap = limits
        .header
        .min(limits.header_idle)
        .min(limits.idle)
        .min(limits.stall);
    // (between requests, often enough to park on time; a long request in flight, a download
    // or a long poll, is not woken for it)
    let nap = busy_nap.min(limits.park.unwrap_or(Duration::MAX));
    let watch = tokio::time::sleep(nap);
    let drain = shared.drain.cancelled();
    let hard_stop = shared.hard_stop.cancelled();
    tokio::pin!(watch, drain, hard_stop);
    let mut closing = false;
    // The session is polled on every wake-up; the others only when they may be ready, which
    // halves the cost of a wake-up. The stop signals are registered by their first poll, and
    // a wake-up from one comes after its flag is set; the watch when it is new or reset (a
    // poll registers it) and once it has elapsed. (The watch is polled outside the task's
    // budget: with the budget spent, as a busy session leaves it, a timer's poll would
    // neither register it nor see it fire, and it would not be looked at again.)
    let mut first = true;
    let mut watch_new = true;
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(r));
            }
            if (first || shared.hard_stop.fired()) && hard_stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::HardStop);
            }
            if !closing && (first || shared.drain.fired()) && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            first = false;
            if !closing && (watch_new || watch.is_elapsed()) {
                watch_new = false;
                let mut watching = tokio::task::coop::unconstrained(watch.as_mut());
                if Pin::new(&mut watching).poll(cx).is_ready() {
                    return Poll::Ready(Event::Watch);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(r) => {
                ended(r, info);
                return false;
            }
            Event::HardStop => return false,
            Event::Drain => {
                closing = true;
                shutdown(conn.as_mut());
            }
            Event::Watch => match info.watch(limits, Instant::now()) {
                Watch::Until(deadline) => {
                    let cap = if info.in_flight.load(Ordering::Relaxed) > 0 {
                        busy_nap
                    } else {
                        nap
                    };
                    watch.as_mut().reset(deadline.min(Instant::now() + cap));
                    watch_new = true;
                }
                Watch::Idle => {
                    closing = true;
                    shutdown(conn.as_mut());
                }
                // hyper not between requests (a response still flushing to a slow reader, or a
                // close it decided on): look again later
                Watch::Park if !info.session_idle() => {
                    watch.as_mut().reset(Instant::now() + nap);
                    watch_new = true;
                }
                Watch::Park => {
                    closing = true;
                    info.parking.store(true, Ordering::Relaxed);
                    shutdown(conn.as_mut());
                    // an idle session ends on this very poll; one that does not was busy after
                    // all, and closes as hyper decided
                    match std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await {
                        Poll::Ready(r) => return ended(r, info),
                        Poll::Pending => info.parking.store(false, Ordering::Relaxed),
                    }
                }
                verdict => {
                    tracing::debug!(peer = %info.peer, ?verdict, "closing connection");
                    return false;
                }
            },
        }
    }
}

/// What woke [`drive`].
enum Event<E> {
    Ended(Result<(), E>),
    HardStop,
    Drain,
    Watch,
}

/// The transport as hyper sees it: records the time of every read and write for the idle
/// watcher, first returns `prefix` (bytes an earlier session had read ahead), and leaves the
/// socket open when a session is parked.
pub(super) struct Watched<I> {
    io: I,
    info: Arc<ConnInfo>,
    prefix: Bytes,
}

impl<I> Watched<I> {
    pub(super) fn new(io: I, info: Arc<ConnInfo>, prefix: Bytes) -> Watched<I> {
        Watched { io, info, prefix }
    }

    /// The socket back, and what is left to read: `unread` (what a session read from it and
    /// did not use; it read the prefix first), then the rest of the prefix. Copied: a
    /// session's read buffer (4 KiB or more) is let go even when it holds a few bytes, so a
    /// parked connection keeps little more than its socket.
    pub(super) fn into_parts(self, unread: &[u8]) -> (I, Bytes) {
        let rest = match (unread.is_empty(), self.prefix.is_empty()) {
            (true, _) => self.prefix,
            (false, true) => Bytes::copy_from_slice(unread),
            (false, false) => Bytes::from([unread, &self.prefix[..]].concat()),
        };
        (self.io, rest)
    }

    /// Notes a write: progress for the watcher, and (written or waiting) not yet flushed.
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.info.write_progress();
                self.info.unflushed.store(true, Ordering::Relaxed);
            }
            Poll::Pending => self.info.unflushed.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            // (counted as received when first read)
            self.info.head_progress(n as u64);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.info
            .read_waiting
            .store(r.is_pending(), Ordering::Relaxed);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.info
                .read_progress((buf.filled().len() - before) as u64);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.info.unflushed.store(false, Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.info.parking.load(Ordering::Relaxed) {
            // a parked session ends here; the connection goes on
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Both ends of a loopback connection, the writing one under a `TlsSocket`.
    async fn pair() -> (TlsSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (TlsSocket(ours.unwrap()), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn a_vectored_write_around_one_buffer_sends_that_buffer_whole() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let (mut ours, mut theirs) = pair().await;
            let bufs = [
                io::IoSlice::new(b""),
                io::IoSlice::new(b"record"),
                io::IoSlice::new(b""),
            ];
            let n = ours.write_vectored(&bufs).await.unwrap();
            assert_eq!(n, 6);
            // two buffers still go out together, in order
            let two = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
            assert_eq!(ours.write_vectored(&two).await.unwrap(), 4);
            ours.shutdown().await.unwrap();
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"recordabcd");
        })
        .await
        .expect("timed out");
    }
}
