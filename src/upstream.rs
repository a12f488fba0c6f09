//! Upstream pools: members, the balancing policy (`upstream/balance.rs`), and a keep-alive
//! connection pool per member: caps, a queue, idle timeouts learned from `Keep-Alive`, and
//! replay on a dead pooled connection. HTTP/1.1 connections speak usher's own client
//! (`upstream/h1.rs`); HTTP/2 (`protocol = "h2c"`) and Upgrade requests go through
//! `hyper::client::conn`.

use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::body::ClientBody;
use crate::buffer::SpooledBody;
use crate::config::{HealthCheck, Timeouts, UpstreamAddr, UpstreamPool, UpstreamProtocol};
use crate::error::ProxyError;
use crate::headers::Forwarding;
use crate::metrics::Histo;

pub mod balance;
pub mod h1;

use balance::{Balancer, Key, Load, Loads};

impl Loads for [Arc<Member>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn load(&self, i: usize) -> &Load {
        &self[i].load
    }
}

/// The request body sent upstream: the client's, streamed or buffered, or none.
#[derive(Debug)]
pub enum ReqBody {
    /// The client's body, streamed as it arrives (buffering off for the route).
    Client(ClientBody),
    /// The client's body, read whole first; it can be sent again.
    Buffered(SpooledBody),
    /// No body.
    Empty,
}

impl ReqBody {
    /// The same body from its start, for sending the request again; `None` for a streamed
    /// body that is not empty (what was sent of it is gone).
    fn again(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Client(b) if b.is_end_stream() => Some(ReqBody::Empty),
            ReqBody::Client(_) => None,
            ReqBody::Buffered(b) => Some(ReqBody::Buffered(b.again())),
            ReqBody::Empty => Some(ReqBody::Empty),
        }
    }
}

impl http_body::Body for ReqBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Client(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            ReqBody::Buffered(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            ReqBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Buffered(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Buffered(b) => b.size_hint(),
            ReqBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}

/// An upstream response body: off usher's own HTTP/1.1 connection, or hyper's (HTTP/2, and
/// an app that declined an upgrade).
#[derive(Debug)]
pub enum RespBody {
    Wire(h1::Body),
    Hyper(Incoming),
}

impl http_body::Body for RespBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RespBody::Wire(b) => std::pin::Pin::new(b).poll_frame(cx),
            RespBody::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Wire(b) => b.is_end_stream(),
            RespBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RespBody::Wire(b) => b.size_hint(),
            RespBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// One upstream connection, by protocol.
#[derive(Debug)]
enum Sender {
    /// usher's own HTTP/1.1 client.
    Wire(h1::Conn),
    /// hyper's HTTP/1.1 client, for an Upgrade request.
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
    /// A `Wire` connection lent to the response body it carries (see [`PooledConn::release`]).
    Lent,
}

/// Why a request failed on a connection, and whether the request is as it was before
/// (never sent: it can go again as it is).
type SendFailure = (bool, crate::body::BoxError);

impl Sender {
    /// Sends `req`: borrowed, so that it is not copied into each layer's future on the way
    /// (264 bytes a move). usher's own client consumes its body; hyper's take the request and
    /// hand it back, into `req`, when the connection never took it. `pass`: see [`Pool::send`].
    async fn try_send(
        &mut self,
        req: &mut Request<ReqBody>,
        pass: bool,
        forwarding: Option<&Forwarding>,
    ) -> Result<Response<RespBody>, SendFailure> {
        // (usher's own client writes them as lines; hyper's take them in the map)
        if !matches!(self, Sender::Wire(_)) {
            if let Some(f) = forwarding {
                f.apply(req.headers_mut());
            }
        }
        let owned =
            |req: &mut Request<ReqBody>| std::mem::replace(req, Request::new(ReqBody::Empty));
        let hyper =
            |req: &mut Request<ReqBody>, mut e: TrySendError<Request<ReqBody>>| -> SendFailure {
                let back = e.take_message().map(|back| *req = back).is_some();
                (back, e.into_error().into())
            };
        match self {
            Sender::Wire(_) => {
                let Sender::Wire(conn) = std::mem::replace(self, Sender::Lent) else {
                    unreachable!()
                };
                match conn.send(req, pass, forwarding).await {
                    Ok(r) => Ok(r.map(RespBody::Wire)),
                    Err(e) => Err((false, e.into())),
                }
            }
            Sender::H1(s) => match s.try_send_request(owned(req)).await {
                Ok(r) => Ok(r.map(RespBody::Hyper)),
                Err(e) => Err(hyper(req, e)),
            },
            Sender::H2(s) => match s.try_send_request(owned(req)).await {
                Ok(r) => Ok(r.map(RespBody::Hyper)),
                Err(e) => Err(hyper(req, e)),
            },
            Sender::Lent => Err((true, "connection already in use".into())),
        }
    }
}

/// Turns an origin-form HTTP/1.1 request into its HTTP/2 form: the Host header becomes the
/// `:authority` of an absolute URI (hyper's HTTP/2 client needs scheme and authority).
fn into_h2(req: &mut Request<ReqBody>, fallback_host: &str) {
    // Host stays too (it equals :authority, which RFC 9113 allows): a `header_hash` policy
    // on Host keeps working
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| fallback_host.to_owned());
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if let Ok(uri) = format!("http://{host}{pq}").parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
}

/// A pooled connection idle at least this long may be closing at the app: its failure
/// before a response is not held against the member. Apps close idle connections after seconds
/// (gunicorn 2 s, uvicorn 5 s), never within a quarter second of the last response.
const RACE_IDLE: Duration = Duration::from_millis(250);

/// A request written onto a connection the app had already closed fails within a round
/// trip; a failure later than this means the app may have worked on the request.
const RACE_FAILURE: Duration = Duration::from_millis(100);

/// A response body of known length up to this size, to a request that could be sent again,
/// is read whole before the response is handed on: an app that dies between the head and the
/// body (a worker killed mid-write) then costs a retry on another member, not a cut response.
/// Bodies this small come in the read that brought the head or the next one, and fit in the
/// client connection's write buffer anyway.
const READ_AHEAD: u64 = 16 * 1024;

/// Margin kept below the idle time an app announces: the request must reach the app before
/// it closes the connection, with room for a loaded machine.
const KEEP_ALIVE_MARGIN: Duration = Duration::from_millis(500);

/// How long the app keeps an idle connection open, from its `Keep-Alive: timeout=N`
/// (uvicorn and gunicorn send it), less a margin: usher drops the connection first.
fn app_keep_alive(response: &Response<RespBody>) -> Option<Duration> {
    // (a name, not a string: a string key is parsed into a name on every lookup)
    const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    if let RespBody::Wire(b) = response.body() {
        if let Some(p) = b.passed_head() {
            return p.keep_alive();
        }
    }
    keep_alive_timeout(response.headers().get(&KEEP_ALIVE)?.as_bytes())
}

/// The idle limit a Keep-Alive value gives (see [`app_keep_alive`]).
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    let v = std::str::from_utf8(value).ok()?;
    let secs: u64 = v
        .split(',')
        .find_map(|p| p.trim().strip_prefix("timeout=")?.trim().parse().ok())?;
    Some(Duration::from_secs(secs).saturating_sub(KEEP_ALIVE_MARGIN))
}

/// How many of `members` may be ejected at once: `percent` of them, rounded down but at least
/// one when the percentage allows any, and never all of them.
fn max_ejected(members: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    (members * percent as usize / 100)
        .max(1)
        .min(members.saturating_sub(1))
}

/// Methods a request of which may be sent twice (RFC 9110 section 9.2.2).
fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(m)
}

/// A copy of a request whose body can be sent again (none, or buffered), to send again.
fn replay_copy(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let mut copy = Request::new(req.body().again()?);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// A member's health: the active checks' verdict (up until checks say otherwise) and passive
/// ejection, in milliseconds of the pool's clock.
#[derive(Debug)]
struct Health {
    down: AtomicBool,
    passes: AtomicU32,
    fails: AtomicU32,
    consecutive: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Set by an ejection, cleared by the first success after it.
    ejected: AtomicBool,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            down: AtomicBool::new(false),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejected: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn available(&self, now: Duration) -> bool {
        !self.down.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now.as_millis() as u64
    }

    /// Counts one active check; returns the new state when it flips (true: up).
    fn checked(&self, ok: bool, hc: &HealthCheck) -> Option<bool> {
        let down = self.down.load(Ordering::Relaxed);
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let passes = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
            if down && passes >= hc.healthy_after {
                self.down.store(false, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.passes.store(0, Ordering::Relaxed);
            let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if !down && fails >= hc.unhealthy_after {
                self.down.store(true, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    fn failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    fn failure(&self) {
        self.consecutive.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a success; true when it is the first one after an ejection has ended, which
    /// ends the back-off (the next ejection starts again at the base period). A success of a
    /// request sent before or during the ejection proves nothing and is not counted so.
    fn succeeded(&self, clock: &Instant) -> bool {
        // loads first: the common case, a healthy member, writes nothing shared
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.ejected.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= clock.elapsed().as_millis() as u64
            && self.ejected.swap(false, Ordering::Relaxed)
        {
            self.ejections.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Ends a passive ejection early (an active check passed, as Envoy does); true if one
    /// was in force.
    fn lift_ejection(&self, now: Duration) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until <= now.as_millis() as u64 {
            return false;
        }
        // the back-off stands until real traffic succeeds: an app can pass its health
        // check and still fail requests
        self.ejected_until_ms.store(0, Ordering::Relaxed);
        true
    }

    /// Ejects until `now + base * 2^(ejections so far)` (at most 32x); returns the period.
    fn eject(&self, now: Duration, base: Duration) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let period = base * (1 << n);
        self.ejected_until_ms
            .store((now + period).as_millis() as u64, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.ejected.store(true, Ordering::Relaxed);
        period
    }
}

/// Most idle connections kept per member; more are closed when returned.
const MAX_IDLE_PER_MEMBER: usize = 256;

/// A route's upstream members.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Arc<Member>>,
    weights: Vec<u32>,
    balancer: Balancer,
    retries: u32,
    eject_after: u32,
    eject_for: Duration,
    health_clock: Instant,
    health_check: Option<HealthCheck>,
    /// With `max_conns`: one permit per slot of every member; waiting for one is the queue.
    capacity: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    queue: usize,
    queue_timeout: Duration,
    max_ejected_percent: u32,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
    /// What it was built from: a reload keeps a pool (its health, connections and load)
    /// whose definition did not change.
    spec: PoolSpec,
    /// Cancelled when a reload drops the pool: its health checks stop.
    retired: CancellationToken,
    /// Requests sent again (to another member, or on a new connection).
    retried: AtomicU64,
    /// Members ejected after consecutive failures.
    ejections: AtomicU64,
    /// Time to response head.
    latency: Histo,
}

/// A pool's definition: its config and the timeouts it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// Its name in metrics and the admin API: the `[upstream.NAME]`, or the route's site
    /// and path for a list of members in the route.
    name: Arc<str>,
    pool: UpstreamPool,
    timeouts: [Duration; 3],
}

impl PoolSpec {
    /// The definition of a pool built from `pool` under `timeouts`.
    pub fn new(name: &str, pool: &UpstreamPool, timeouts: &Timeouts) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            pool: pool.clone(),
            timeouts: [
                timeouts.upstream_connect,
                timeouts.upstream_response,
                timeouts.upstream_idle,
            ],
        }
    }
}

/// A pool's state at one moment.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub members: Vec<MemberSnapshot>,
    /// Requests waiting for a slot (`max_conns`).
    pub queued: usize,
    pub retried: u64,
    pub ejections: u64,
}

/// A member's state at one moment.
#[derive(Debug)]
pub struct MemberSnapshot {
    pub addr: Arc<str>,
    /// Passing its active checks (always, without checks).
    pub healthy: bool,
    /// Ejected after consecutive failures, for now.
    pub ejected: bool,
    pub in_flight: usize,
    /// Idle connections kept for reuse.
    pub idle: usize,
}

/// One upstream address and its idle connections.
#[derive(Debug)]
pub struct Member {
    addr: UpstreamAddr,
    /// `addr` as text, shared with every access-log line that names it.
    label: Arc<str>,
    idle: Mutex<Vec<IdleConn>>,
    /// With `protocol = "h2c"`: the one multiplexed connection, shared by every request.
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
    load: Load,
    health: Health,
    /// `max_conns` slots, when capped.
    slots: Option<Arc<Semaphore>>,
}

/// Counts a request as in flight on its member until dropped (when the response body is done
/// or abandoned, or the attempt failed), holding its `max_conns` slots until then.
#[derive(Debug)]
pub struct InFlight {
    member: Arc<Member>,
    _slot: Option<OwnedSemaphorePermit>,
    _pool_slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl InFlight {
    fn new(
        member: &Arc<Member>,
        slot: Option<OwnedSemaphorePermit>,
        pool_slot: Option<Arc<OwnedSemaphorePermit>>,
    ) -> InFlight {
        member.load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            member: member.clone(),
            _slot: slot,
            _pool_slot: pool_slot,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.member.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct IdleConn {
    conn: h1::Conn,
    /// When this connection is too old to reuse: its own idle limit after it was released.
    expires: Instant,
    released: Instant,
}

/// A connection checked out of a member's pool. Give it back with [`PooledConn::release`] once
/// the response body has been read to its end; dropping it closes the connection.
#[derive(Debug)]
pub struct PooledConn {
    sender: Sender,
    member: Arc<Member>,
    /// How long it may sit idle in the pool: the pool's limit, or less when the app said so.
    idle_limit: Duration,
    /// How long it sat idle before this checkout (zero for a new connection).
    idled: Duration,
}

impl PooledConn {
    /// Returns the connection to its member's idle list for reuse, taking it back from the
    /// response `body` it was lent to; one that cannot carry another request is closed.
    pub fn release(self, body: &mut RespBody) {
        // (an HTTP/2 connection stays shared in its member; this is just a handle)
        let conn = match (self.sender, body) {
            (Sender::Lent, RespBody::Wire(body)) => body.reclaim(),
            (Sender::Wire(conn), _) => Some(conn),
            _ => None,
        };
        let Some(conn) = conn else {
            return;
        };
        let now = crate::clock::coarse_now();
        let mut idle = self.member.idle.lock().unwrap_or_else(|e| e.into_inner());
        // the oldest first: ones past their time are closed here, not only when reached
        if idle.first().is_some_and(|c| c.expires <= now) {
            idle.retain(|c| c.expires > now);
        }
        if idle.len() < MAX_IDLE_PER_MEMBER {
            idle.push(IdleConn {
                conn,
                expires: now + self.idle_limit,
                released: now,
            });
        }
    }
}

/// Ticks every period (a late tick delays the next, no burst), until the server's shutdown
/// or the pool's retirement.
struct Beat<'a> {
    tick: tokio::time::Interval,
    shutdown: &'a CancellationToken,
    retired: &'a CancellationToken,
}

impl Beat<'_> {
    /// Waits for the next tick: false when the loop is to stop instead.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = self.shutdown.cancelled() => false,
            _ = self.retired.cancelled() => false,
        }
    }
}

/// What `Pool::send` returns: the response head and body, the connection to release when the
/// body is done, and the member's label for the access log.
pub struct Sent {
    /// The upstream's response.
    pub response: Response<RespBody>,
    /// The connection it came on.
    pub conn: PooledConn,
    /// Which member answered.
    pub upstream: Arc<str>,
    /// Keeps the request counted on its member until the body is done.
    pub in_flight: InFlight,
    /// The whole body, when it was read before the response was handed on (see
    /// `READ_AHEAD`); `response`'s own body is then at its end.
    pub read: Option<Bytes>,
}

impl Pool {
    /// The longest wait for the response head, and between two reads of the response body.
    pub fn read_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Whether members are spoken to over HTTP/2 (`protocol = "h2c"`).
    pub fn speaks_h2(&self) -> bool {
        self.protocol == UpstreamProtocol::H2c
    }

    /// A pool over `addrs` with the configured timeouts.
    pub fn new(name: &str, pool: &UpstreamPool, timeouts: &Timeouts) -> Pool {
        let weights: Vec<u32> = pool.members.iter().map(|m| m.weight).collect();
        let labels: Vec<String> = pool.members.iter().map(|m| m.addr.to_string()).collect();
        Pool {
            members: pool
                .members
                .iter()
                .zip(&labels)
                .map(|(m, label)| {
                    Arc::new(Member {
                        addr: m.addr.clone(),
                        label: label.as_str().into(),
                        idle: Mutex::new(Vec::new()),
                        h2: Mutex::new(None),
                        load: Load::default(),
                        health: Health::default(),
                        slots: pool.max_conns.map(|n| Arc::new(Semaphore::new(n as usize))),
                    })
                })
                .collect(),
            balancer: Balancer::new(&pool.balance, &weights, &labels),
            weights,
            retries: pool.retries,
            eject_after: pool.eject_after,
            eject_for: pool.eject_for,
            health_clock: Instant::now(),
            health_check: pool.health.clone(),
            capacity: pool
                .max_conns
                .map(|n| Arc::new(Semaphore::new(n as usize * pool.members.len()))),
            waiting: AtomicUsize::new(0),
            queue: pool.queue as usize,
            queue_timeout: pool.queue_timeout,
            max_ejected_percent: pool.max_ejected_percent,
            protocol: pool.protocol,
            connect_timeout: timeouts.upstream_connect,
            response_timeout: timeouts.upstream_response,
            idle_timeout: pool.idle_timeout.unwrap_or(timeouts.upstream_idle),
            spec: PoolSpec::new(name, pool, timeouts),
            retired: CancellationToken::new(),
            retried: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            latency: Histo::default(),
        }
    }

    /// Sends `req` to the member the pool's policy picks and waits for its response head.
    ///
    /// Retried on another member, at most `retries` times within the connect timeout's
    /// budget: a connect failure (the request never left, whatever its method), and a
    /// request hyper hands back unsent. When the connection fails before any response byte,
    /// a request whose body can be sent again (none, or buffered) is sent again if its method
    /// is idempotent, or, whatever its method, if the connection had sat idle in the pool
    /// (the keep-alive race: the app closed it, so it never saw the request). An idempotent
    /// request that could be sent again has a small response body read whole here
    /// (`READ_AHEAD`), so a failure between head and body is retried too.
    ///
    /// With `pass`, a response over HTTP/1.1 comes with its header lines kept as lines to pass
    /// on to the client ([`h1::Body::passed_head`]) and an empty header map: for usher's
    /// HTTP/1.1 writer only. `forwarding`: the X-Forwarded-* headers to add (see
    /// [`Forwarding`]), on whichever connection the request goes.
    ///
    /// `req` is borrowed (see [`Sender::try_send`]); what is left of it afterwards is for the
    /// caller to drop.
    // (not an async fn: see `Proxy::handle`)
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        &'a self,
        req: &'a mut Request<ReqBody>,
        client: IpAddr,
        pass: bool,
        forwarding: Option<&'a Forwarding>,
    ) -> impl Future<Output = Result<Sent, (ProxyError, Arc<str>)>> + Send + 'a {
        async move {
            let idempotent = idempotent(req.method());
            if self.protocol == UpstreamProtocol::H2c {
                into_h2(req, "localhost");
            }
            let mut tried: u64 = 0;
            let pool_slot = self
                .queue_slot()
                .await
                .map_err(|e| (e, Arc::from("-")))?
                .map(Arc::new);
            // (coarse readings for these: see `clock`)
            let deadline = crate::clock::coarse_now() + self.connect_timeout;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let retry_left = attempt <= self.retries && crate::clock::coarse_now() < deadline;
                let i = self.pick(req.headers(), client, tried);
                tried |= 1 << (i % 64);
                let member = &self.members[i];
                let fail = |e| (e, member.label.clone());
                let slot = self.member_slot(member).await.map_err(fail)?;
                let in_flight = InFlight::new(member, slot, pool_slot.clone());
                // (one reading for the latency, the idle checks and the response's deadline)
                let started = Instant::now();
                let (mut conn, reused) = match self.checkout(member, started) {
                    Some(c) => (c, true),
                    // boxed: a new connection is the rare case, and its future is large
                    None => match Box::pin(self.connect(member)).await {
                        Ok(c) => (c, false),
                        Err(e) => {
                            self.failed(member);
                            if retry_left {
                                tracing::debug!(upstream = %member.label, error = %e, "connect failed; trying another member");
                                self.retried.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            return Err(fail(e));
                        }
                    },
                };
                // Keep a copy of the request while a retry is left: if the connection dies before
                // any response byte (the app closed it as it sat in the pool, or the app's
                // process died mid-request), it is sent again, to another member when there is
                // one. The copy costs a header map per request; a buffered body is shared.
                let racy = reused && conn.idled >= RACE_IDLE;
                // An idempotent request on a hot connection is copied only when another member
                // could take the retry: with one member, a connection that fails mid-request
                // means the app itself failed, and a retry would meet the same fate.
                let copy = if (racy || idempotent && self.members.len() > 1) && retry_left {
                    replay_copy(req)
                } else {
                    None
                };
                // (a pooled connection is sent on at once; a new one only after its connect)
                let sent_at = if reused { started } else { Instant::now() };
                let sent = tokio::time::timeout_at(
                    sent_at + self.response_timeout,
                    conn.sender.try_send(req, pass, forwarding),
                )
                .await;
                match sent {
                    Ok(Ok(mut response)) => {
                        let took = started.elapsed();
                        member.load.observe(took);
                        self.latency.observe(took);
                        if let Some(app_limit) = app_keep_alive(&response) {
                            conn.idle_limit = conn.idle_limit.min(app_limit);
                        }
                        let mut read = None;
                        // the app saw the request, so only an idempotent one is sent again
                        // (`copy` is looked at in place: moved, it was copied whole)
                        if idempotent && copy.is_some() && self.reads_ahead(&response) {
                            let body = http_body_util::BodyExt::collect(response.body_mut());
                            match tokio::time::timeout(self.response_timeout, body).await {
                                Ok(Ok(whole)) => read = Some(whole.to_bytes()),
                                failed => {
                                    let error = match failed {
                                        Ok(Err(e)) => e.to_string(),
                                        _ => "timed out".to_owned(),
                                    };
                                    tracing::debug!(upstream = %member.label, %error, "upstream failed within the response body; sending again");
                                    self.failed(member);
                                    self.retried.fetch_add(1, Ordering::Relaxed);
                                    if let Some(copy) = copy {
                                        *req = copy;
                                    }
                                    continue;
                                }
                            }
                        }
                        if response.status().is_server_error() {
                            self.failed(member);
                        } else if member.health.succeeded(&self.health_clock) {
                            tracing::info!(upstream = %member.label, "ejected member answered again: back in rotation");
                        }
                        return Ok(Sent {
                            response,
                            conn,
                            upstream: member.label.clone(),
                            in_flight,
                            read,
                        });
                    }
                    Ok(Err((unsent, error))) => {
                        match (unsent, copy) {
                            // (`req` is as it was)
                            (true, _) if retry_left => {}
                            // a non-idempotent request is sent again only when the connection
                            // failed at once, as one the app had closed does: a failure after the
                            // app had time to work on it (a worker killed mid-request) may have
                            // left effects
                            (false, Some(copy))
                                if idempotent || sent_at.elapsed() < RACE_FAILURE =>
                            {
                                // a connection that sat idle was most likely closed by the app's
                                // keep-alive timer: no sign of a failing member
                                if !racy {
                                    self.failed(member);
                                }
                                *req = copy;
                            }
                            _ => {
                                self.failed(member);
                                return Err(fail(ProxyError::UpstreamProtocol {
                                    addr: member.label.to_string(),
                                    source: error,
                                }));
                            }
                        }
                        tracing::debug!(upstream = %member.label, %error, reused, "upstream connection failed before a response; sending again");
                        self.retried.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.failed(member);
                        return Err(fail(ProxyError::UpstreamTimeout {
                            addr: member.label.to_string(),
                        }));
                    }
                }
            }
        }
    }

    /// Whether `response`'s body is read whole before it is handed on (see `READ_AHEAD`):
    /// HTTP/1 only, where a body of known length carries no trailers.
    fn reads_ahead(&self, response: &Response<RespBody>) -> bool {
        let body = response.body();
        self.protocol != UpstreamProtocol::H2c
            && !body.is_end_stream()
            && body.size_hint().exact().is_some_and(|n| n <= READ_AHEAD)
    }

    /// With `max_conns`: a place among all members' slots, waiting in the bounded queue for
    /// one; `PoolBusy` when the queue is full or the wait runs out.
    async fn queue_slot(&self) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(cap) = &self.capacity else {
            return Ok(None);
        };
        if let Ok(p) = cap.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ProxyError::PoolBusy(
                "every member is at max_conns and the queue is full",
            ));
        }
        tracing::debug!("every member at max_conns: queued");
        let got = tokio::time::timeout(self.queue_timeout, cap.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(ProxyError::PoolBusy(
                "waited in the queue for queue_timeout",
            )),
        }
    }

    /// With `max_conns`: one of the chosen member's slots (a pool slot is held, so one frees
    /// up soon if it is busy; the wait is bounded by the queue timeout all the same).
    async fn member_slot(
        &self,
        member: &Member,
    ) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(slots) = &member.slots else {
            return Ok(None);
        };
        match tokio::time::timeout(self.queue_timeout, slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(ProxyError::PoolBusy(
                "waited for a member slot for queue_timeout",
            )),
        }
    }

    /// The member for the next attempt: the policy's choice among members not ejected and
    /// not yet tried for this request.
    fn pick(&self, headers: &http::HeaderMap, client: IpAddr, tried: u64) -> usize {
        if self.members.len() == 1 {
            return 0;
        }
        let now = self.health_clock.elapsed();
        let usable = |i: usize| {
            let m = &self.members[i];
            tried & (1 << (i % 64)) == 0
                && m.health.available(now)
                && m.slots.as_ref().is_none_or(|s| s.available_permits() > 0)
        };
        let i = self.balancer.pick(
            &self.weights,
            &self.members[..],
            &Key { client, headers },
            &usable,
        );
        tracing::debug!(upstream = %self.members[i].label, "member chosen");
        i
    }

    /// Records a failure; ejects the member after `eject_after` in a row, for a period that
    /// doubles with every ejection (capped at 32x), unless that would leave no member or
    /// eject more than `max_ejected_percent` of the pool.
    fn failed(&self, member: &Member) {
        let now = self.health_clock.elapsed();
        if self.eject_after == 0 || member.health.failures() + 1 < self.eject_after {
            member.health.failure();
            return;
        }
        member.health.failure();
        let ejected = self
            .members
            .iter()
            .filter(|m| !m.health.available(now))
            .count();
        let max = max_ejected(self.members.len(), self.max_ejected_percent);
        if !member.health.available(now) || ejected >= max {
            return;
        }
        let period = member.health.eject(now, self.eject_for);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(upstream = %member.label, ?period, "member ejected after consecutive failures");
    }

    /// Its name (see [`PoolSpec`]).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What it looks like now, for metrics and the admin API.
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = self.health_clock.elapsed();
        PoolSnapshot {
            members: self
                .members
                .iter()
                .map(|m| MemberSnapshot {
                    addr: m.label.clone(),
                    healthy: !m.health.down.load(Ordering::Relaxed),
                    ejected: m.health.ejected_until_ms.load(Ordering::Relaxed)
                        > now.as_millis() as u64,
                    in_flight: m.load.in_flight.load(Ordering::Relaxed),
                    idle: m.idle.lock().map_or(0, |v| v.len()),
                })
                .collect(),
            queued: self.waiting.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
        }
    }

    /// Time to response head, over its life.
    pub fn latency(&self) -> &Histo {
        &self.latency
    }

    /// Whether it was built from `spec`.
    pub fn built_from(&self, spec: &PoolSpec) -> bool {
        self.spec == *spec
    }

    /// Stops its health checks: a reload dropped it (requests in flight finish).
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// The clock of one of the pool's background loops (`sweep_idle`, `check_health`).
    fn beat<'a>(&'a self, every: Duration, shutdown: &'a CancellationToken) -> Beat<'a> {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Beat {
            tick,
            shutdown,
            retired: &self.retired,
        }
    }

    /// Closes the pooled connections past their idle limit, and those the app has closed,
    /// without waiting for a request to come upon them, as nginx closes its idle upstream
    /// connections on time: otherwise, once traffic stops, each would hold its socket (in
    /// CLOSE_WAIT, after the app's own keep-alive timer) until the next request to its
    /// member. A sweep every idle limit (at least 100 ms, at most 5 s), until `shutdown` or
    /// the pool's retirement.
    pub async fn sweep_idle(self: Arc<Self>, shutdown: CancellationToken) {
        // (an HTTP/2 member's one connection is watched by its own task)
        if self.protocol == UpstreamProtocol::H2c {
            return;
        }
        let every = self
            .idle_timeout
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut beat = self.beat(every, &shutdown);
        while beat.next().await {
            let now = crate::clock::coarse_now();
            for member in self.members.iter() {
                let mut idle = member.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.retain_mut(|c| c.expires > now && c.conn.is_usable());
            }
        }
    }

    /// Runs the pool's active health checks until `shutdown` or its retirement: every
    /// interval, each member is asked for the check path on a fresh connection; only flips
    /// are logged (at info).
    pub async fn check_health(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(hc) = self.health_check.clone() else {
            return;
        };
        let mut beat = self.beat(hc.interval, &shutdown);
        while beat.next().await {
            let probes = self.members.iter().map(|m| self.probe(m, &hc));
            let results = futures_util::future::join_all(probes).await;
            let now = self.health_clock.elapsed();
            for (m, ok) in self.members.iter().zip(results) {
                if ok && m.health.lift_ejection(now) {
                    tracing::info!(upstream = %m.label, "ejected member passed its health check: back in rotation");
                }
                match m.health.checked(ok, &hc) {
                    Some(true) => {
                        tracing::info!(upstream = %m.label, "member healthy again: back in rotation")
                    }
                    Some(false) => {
                        tracing::info!(upstream = %m.label, path = %hc.path, "member failed its health checks: out of rotation")
                    }
                    None => {}
                }
            }
        }
    }

    /// One health check: GET the path on a fresh connection within the check's timeout.
    async fn probe(&self, member: &Arc<Member>, hc: &HealthCheck) -> bool {
        let check = async {
            // a connection of its own, never the member's shared HTTP/2 one
            let mut conn = self.open(member, Open::Probe).await.ok()?;
            let mut req = Request::new(ReqBody::Empty);
            *req.uri_mut() = hc.path.parse().ok()?;
            let host = match &member.addr {
                UpstreamAddr::Tcp { .. } => member.label.to_string(),
                UpstreamAddr::Unix(_) => "localhost".to_owned(),
            };
            req.headers_mut()
                .insert(http::header::HOST, host.parse().ok()?);
            if self.protocol == UpstreamProtocol::H2c {
                into_h2(&mut req, &host);
            }
            let resp = conn.sender.try_send(&mut req, false, None).await.ok()?;
            let s = resp.status().as_u16();
            Some((hc.status.0..=hc.status.1).contains(&s))
        };
        matches!(
            tokio::time::timeout(hc.timeout, check).await,
            Ok(Some(true))
        )
    }

    /// The most recently used idle connection that is still open and fresh.
    fn checkout(&self, member: &Arc<Member>, now: Instant) -> Option<PooledConn> {
        if self.protocol == UpstreamProtocol::H2c {
            let mut shared = member.h2.lock().unwrap_or_else(|e| e.into_inner());
            return match shared.as_ref() {
                Some(s) if !s.is_closed() => Some(PooledConn {
                    sender: Sender::H2(s.clone()),
                    member: member.clone(),
                    idle_limit: self.idle_timeout,
                    idled: Duration::ZERO,
                }),
                _ => {
                    *shared = None;
                    None
                }
            };
        }
        loop {
            let mut candidate = {
                let mut idle = member.idle.lock().unwrap_or_else(|e| e.into_inner());
                // LIFO: the most recently used is the likeliest still open at the app
                match idle.pop() {
                    Some(c) if c.expires <= now => {
                        drop(idle);
                        continue;
                    }
                    other => other,
                }
            }?;
            // one the app has closed meanwhile is dropped here, not sent on
            if candidate.conn.is_usable() {
                return Some(PooledConn {
                    sender: Sender::Wire(candidate.conn),
                    member: member.clone(),
                    idle_limit: self.idle_timeout,
                    idled: now.saturating_duration_since(candidate.released),
                });
            }
        }
    }

    async fn connect(&self, member: &Arc<Member>) -> Result<PooledConn, ProxyError> {
        self.open(member, Open::Request).await
    }

    /// Sends an `Upgrade` request (WebSocket and the like) on a connection of its own, which
    /// is never pooled: after a 101 it belongs to the tunnel. Returns the response, the
    /// connection (keep it until the tunnel ends) and the member's label.
    pub async fn upgrade(
        &self,
        req: Request<ReqBody>,
        client: IpAddr,
    ) -> Result<(Response<Incoming>, PooledConn, Arc<str>), (ProxyError, Arc<str>)> {
        let i = self.pick(req.headers(), client, 0);
        let member = &self.members[i];
        let fail = |e| (e, member.label.clone());
        let mut conn = match self.open(member, Open::Upgrade).await {
            Ok(c) => c,
            Err(e) => {
                self.failed(member);
                return Err(fail(e));
            }
        };
        let Sender::H1(sender) = &mut conn.sender else {
            unreachable!("an upgrade's connection is hyper's HTTP/1.1")
        };
        let response = tokio::time::timeout(self.response_timeout, sender.send_request(req))
            .await
            .map_err(|_| {
                fail(ProxyError::UpstreamTimeout {
                    addr: member.label.to_string(),
                })
            })?
            .map_err(|source| {
                fail(ProxyError::UpstreamProtocol {
                    addr: member.label.to_string(),
                    source: source.into(),
                })
            })?;
        Ok((response, conn, member.label.clone()))
    }

    /// A new connection to `member`; for an upgrade always HTTP/1.1 (the Upgrade header is
    /// HTTP/1.1's), else in the pool's protocol, an HTTP/2 one becoming the member's shared
    /// connection.
    async fn open(&self, member: &Arc<Member>, why: Open) -> Result<PooledConn, ProxyError> {
        let label = || member.label.to_string();
        let upgrades = why == Open::Upgrade;
        let h2 = self.protocol == UpstreamProtocol::H2c && !upgrades;
        let connecting = async {
            let io = match &member.addr {
                UpstreamAddr::Tcp { host, port } => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    h1::Io::Tcp(tcp)
                }
                UpstreamAddr::Unix(path) => {
                    h1::Io::Unix(tokio::net::UnixStream::connect(path).await?)
                }
            };
            if !h2 && !upgrades {
                return Ok(Sender::Wire(h1::Conn::new(io)));
            }
            handshake(io, h2).await
        };
        let sender = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ProxyError::UpstreamConnectTimeout { addr: label() })?
            .map_err(|source| ProxyError::UpstreamConnect {
                addr: label(),
                source,
            })?;
        if let (Sender::H2(s), Open::Request) = (&sender, why) {
            // shared unless another request got there first with a connection still open
            let mut shared = member.h2.lock().unwrap_or_else(|e| e.into_inner());
            if shared.as_ref().is_none_or(|c| c.is_closed()) {
                *shared = Some(s.clone());
            }
        }
        Ok(PooledConn {
            sender,
            member: member.clone(),
            idle_limit: self.idle_timeout,
            idled: Duration::ZERO,
        })
    }
}

/// Why a connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// For requests: an HTTP/2 one becomes the member's shared connection.
    Request,
    /// For a health check: used once.
    Probe,
    /// For an Upgrade request: HTTP/1.1, and the tunnel's own.
    Upgrade,
}

/// A hyper client connection over `io`: HTTP/2, or HTTP/1.1 for an upgrade.
async fn handshake(io: h1::Io, h2: bool) -> std::io::Result<Sender> {
    if h2 {
        let (sender, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Sender::H1(sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_timeouts_are_learned_with_a_margin() {
        assert_eq!(keep_alive_timeout(b"max=100"), None);
        assert_eq!(
            keep_alive_timeout(b"timeout=5, max=100"),
            Some(Duration::from_millis(4500))
        );
        assert_eq!(
            keep_alive_timeout(b"max=100, timeout=2"),
            Some(Duration::from_millis(1500))
        );
        // a connection the app keeps less than the margin is not pooled at all
        assert_eq!(keep_alive_timeout(b"timeout=0"), Some(Duration::ZERO));
        assert_eq!(keep_alive_timeout(b"timeout=soon"), None);
    }

    #[test]
    fn ejection_caps_leave_a_member_and_respect_the_share() {
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(3, 100), 2);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(5, 0), 0);
    }

    #[test]
    fn back_off_restarts_after_a_success() {
        let h = Health::default();
        let base = Duration::from_secs(1);
        assert_eq!(h.eject(Duration::ZERO, base), base);
        assert_eq!(h.eject(Duration::ZERO, base), base * 2);
        // a clock started now: the ejection (until 2 s) has not ended
        let now = Instant::now();
        assert!(
            !h.succeeded(&now),
            "a success during the ejection counts for nothing"
        );
        // a clock started 10 s ago: it has
        let later = now - Duration::from_secs(10);
        assert!(
            h.succeeded(&later),
            "the first success after an ejection is reported"
        );
        assert!(!h.succeeded(&later));
        assert_eq!(h.eject(Duration::ZERO, base), base);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert!(idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH"] {
            assert!(!idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
