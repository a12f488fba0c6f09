//! Listeners, the accept loop, TLS handshakes, HTTP/1.1 + HTTP/2 connections, the idle watcher
//! and the graceful drain.
//!
//! Per connection (`server/conn.rs`): accept (TCP_NODELAY) -> TLS handshake under
//! `tls_handshake` with the SNI resolver -> HTTP/2 on hyper-util's auto builder, or HTTP/1.1
//! on hyper's, parked while idle -> served until the client closes, the idle watcher closes
//! it, or shutdown drains it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::certs::{self, LocalCa};
use crate::config::{Config, TlsMode};
use crate::error::{ReloadError, StartupError};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::sockopt;
use crate::tls::SiteCerts;

mod conn;
mod h1;
mod reload;
mod scrape;

use conn::serve_tcp;

use reload::Core;
pub use reload::Status;

/// What a drain allows, after the connections are done, for cache writes and a
/// certificate being saved to finish.
const FINISHING: Duration = Duration::from_secs(5);

/// Listen backlog: enough for a burst of new connections (nginx's benchmark config uses 4096).
const BACKLOG: u32 = 4096;

/// Facts about one client connection, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether it arrived on the TLS listener.
    pub tls: bool,
    /// The SNI name the client asked for, if any.
    pub sni: Option<Box<str>>,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` at the last read or write.
    last_active: AtomicU64,
    /// 1 + milliseconds since `epoch` when a request head started to arrive (bytes read while
    /// no request is in flight), 0 when none is arriving. Any write clears it: on HTTP/2 the
    /// server answers pings and settings, on HTTP/1 it writes nothing before a request.
    head_since: AtomicU64,
    /// Bytes read since `head_since`.
    head_bytes: AtomicU64,
    epoch: Instant,
    /// The connection's place under the connection caps: held as long as anything holds
    /// this (an upgraded tunnel outlives the HTTP connection).
    cap: Option<CapSlot>,
    /// Bytes read from the client, added to `received_into` when it closes.
    received: AtomicU64,
    received_into: Option<prometheus_client::metrics::counter::Counter>,
    /// Set while an idle HTTP/1.1 session is being parked: its end leaves the socket open.
    parking: AtomicBool,
    /// hyper's last read found nothing (it waits for the client)...
    read_waiting: AtomicBool,
    /// ...and everything it wrote is flushed: together, an HTTP/1.1 session between requests.
    unflushed: AtomicBool,
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        if let Some(c) = &self.received_into {
            c.inc_by(self.received.load(Ordering::Relaxed));
        }
    }
}

/// What the connection watcher decides.
#[derive(Debug, PartialEq, Eq)]
enum Watch {
    /// Look again at this instant.
    Until(Instant),
    /// Idle for `client_idle`: close gracefully.
    Idle,
    /// Idle for the park delay (HTTP/1.1): end the session, keep the connection.
    Park,
    /// A request head took longer than `client_header`: drop the connection.
    SlowHead,
    /// A request is in flight but nothing moved for the stall limit: drop the connection.
    Stalled,
}

/// The watcher's limits.
#[derive(Debug, Clone, Copy)]
struct WatchLimits {
    header: Duration,
    /// Longest pause while a request head arrives.
    header_idle: Duration,
    /// Slowest a head may arrive after `grace` (bytes a second; 0: no minimum).
    min_rate: u64,
    grace: Duration,
    idle: Duration,
    stall: Duration,
    /// Idle this long, a session is parked (HTTP/1.1 only; shorter than `idle`).
    park: Option<Duration>,
}

impl ConnInfo {
    fn new(peer: SocketAddr, tls: bool, sni: Option<Box<str>>) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            sni,
            cap: None,
            in_flight: AtomicU32::new(0),
            last_active: AtomicU64::new(0),
            // The first request head is due from the start.
            head_since: AtomicU64::new(1),
            head_bytes: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_into: None,
            parking: AtomicBool::new(false),
            read_waiting: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            epoch: crate::clock::coarse_now(),
        }
    }

    /// Whether hyper waits for the client's next request with nothing left to write: the
    /// only state in which its session may be parked (not one it is closing, nor one still
    /// flushing a response or reading a body nobody wanted).
    fn session_idle(&self) -> bool {
        self.read_waiting.load(Ordering::Relaxed) && !self.unflushed.load(Ordering::Relaxed)
    }

    /// When the connection last read or wrote.
    fn last_active_at(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_active.load(Ordering::Relaxed))
    }

    /// A request on this connection began.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// A request on this connection ended (response sent or abandoned).
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) -> u64 {
        // (three times a request: a coarse reading, see `clock`)
        let ms = crate::clock::coarse_now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
        ms
    }

    fn read_progress(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        self.head_progress(n);
    }

    /// Bytes of a request head handed to hyper (read now, or read ahead by an earlier
    /// session and handed over again).
    fn head_progress(&self, n: u64) {
        let ms = self.touch();
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            if self.head_since.load(Ordering::Relaxed) == 0 {
                self.head_since.store(ms + 1, Ordering::Relaxed);
                self.head_bytes.store(n, Ordering::Relaxed);
            } else {
                self.head_bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn write_progress(&self) {
        self.touch();
        if self.head_since.load(Ordering::Relaxed) != 0 {
            self.head_since.store(0, Ordering::Relaxed);
        }
    }

    fn watch(&self, limits: WatchLimits, now: Instant) -> Watch {
        let ms = |v: u64| self.epoch + Duration::from_millis(v);
        let last = self.last_active_at();
        let (deadline, verdict) = if self.in_flight.load(Ordering::Relaxed) > 0 {
            (last + limits.stall, Watch::Stalled)
        } else {
            match self.head_since.load(Ordering::Relaxed) {
                // (parked, or not parkable for client_idle: closed)
                0 => match limits.park.filter(|p| *p < limits.idle) {
                    Some(park) if now < last + limits.idle => (last + park, Watch::Park),
                    _ => (last + limits.idle, Watch::Idle),
                },
                since => {
                    // a head: a ceiling; once it has begun to arrive, also a longest pause
                    // and a minimum rate after the grace (a connection opened ahead of use,
                    // as browsers do, is silent and has only the ceiling)
                    let since = ms(since - 1);
                    let elapsed = now.saturating_duration_since(since);
                    let bytes = self.head_bytes.load(Ordering::Relaxed);
                    if bytes == 0 {
                        (since + limits.header, Watch::SlowHead)
                    } else if limits.min_rate > 0
                        && elapsed > limits.grace
                        && (bytes as f64) < limits.min_rate as f64 * elapsed.as_secs_f64()
                    {
                        return Watch::SlowHead;
                    } else {
                        let deadline = (since + limits.header).min(last + limits.header_idle);
                        (deadline, Watch::SlowHead)
                    }
                }
            }
        };
        if deadline <= now {
            verdict
        } else {
            Watch::Until(deadline)
        }
    }
}

/// A running server.
pub struct ServerHandle {
    /// The plain HTTP listener's address (useful when the config asked for port 0).
    pub http_addr: Option<SocketAddr>,
    /// The TLS listener's address.
    pub https_addr: Option<SocketAddr>,
    /// The admin listener's address, when on.
    pub admin_addr: Option<SocketAddr>,
    /// Where the local CA certificate is, when a site uses `tls = "internal"`.
    pub local_ca: Option<String>,
    control: Control,
    shared: Arc<Shared>,
    done: tokio::task::JoinHandle<()>,
    log: Option<AccessLog>,
}

impl ServerHandle {
    /// Stops accepting and drains: in-flight requests finish within the grace period.
    pub fn shutdown(&self) {
        self.shared.drain.fire();
    }

    /// Reloads the config file (as SIGHUP does); see [`Control::reload`].
    pub async fn reload(&self) -> Result<Status, ReloadError> {
        self.control.reload().await
    }

    /// What the admin API offers.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Waits until the server has stopped (after `shutdown`) and the access log is written.
    pub async fn wait(self) {
        let _ = self.done.await;
        if let Some(log) = self.log {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
    }
}

/// What every connection shares for the server's whole life.
struct Shared {
    /// The current config's request path and connection settings; a reload swaps it.
    live: ArcSwap<Live>,
    /// Fired when draining starts.
    drain: Stop,
    /// Fired when the grace period is over: remaining connections are dropped.
    hard_stop: Stop,
    /// `max_connections` and `max_connections_per_ip`.
    caps: Arc<ConnCaps>,
    metrics: Arc<Metrics>,
}

/// A signal to every connection (the drain, the hard stop): a cancellation token, and a flag
/// the connection watcher reads on each wake-up without a lock. Looking at the token itself
/// there (tokio-util's `is_cancelled` takes a mutex, and polling a registered `cancelled()`
/// future takes the Notify's) was 1.5% of usher's CPU for a static file from memory.
#[derive(Debug, Default)]
struct Stop {
    token: CancellationToken,
    fired: AtomicBool,
}

impl Stop {
    /// Fires it: the flag first, so that a task the token wakes sees it set. (Only here: what
    /// else waits on the token gets a child of it.)
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether it fired: once a connection has polled [`Stop::cancelled`], its next wake-up
    /// from the signal comes after this is true.
    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// What one config makes of the request path and of new connections. Each request takes
/// the current one when it starts, and finishes with it; a connection keeps only the
/// connection settings current when it was accepted (not the routes and pools of an old
/// config, which a reload then lets go).
struct Live {
    proxy: Proxy,
    conn: Arc<ConnSettings>,
}

/// TLS, HTTP settings and watcher limits of connections.
struct ConnSettings {
    /// HTTP/2 (and HTTP/1.1 that began like the h2c preface).
    builder: auto::Builder<TokioExecutor>,
    /// HTTP/1.1.
    h1: http1::Builder,
    /// Request head limits of the HTTP/1.1 fast path (hyper's are in `h1`).
    head: h1::HeadLimits,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    watch: WatchLimits,
}

impl ConnSettings {
    fn new(config: &Config, tls: Option<TlsAcceptor>) -> Arc<ConnSettings> {
        Arc::new(ConnSettings {
            builder: http_builder(config),
            h1: http1_builder(config),
            head: h1::HeadLimits {
                max_size: config.limits.max_header_size,
                max_headers: config.limits.max_headers,
            },
            tls,
            handshake_timeout: config.timeouts.tls_handshake,
            watch: WatchLimits::new(config),
        })
    }
}

/// Caps on client connections: in all, and per client IP address (0: no cap). Checked once
/// per connection at accept, never per request.
#[derive(Debug, Default)]
struct ConnCaps {
    total: AtomicUsize,
    per_ip: AtomicUsize,
    /// Open client connections (counted whatever the caps).
    open: AtomicUsize,
    /// Of those, idle HTTP/1.1 connections parked (holding no HTTP session).
    parked: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection counted against the caps until dropped.
#[derive(Debug)]
struct CapSlot {
    caps: Arc<ConnCaps>,
    ip: Option<IpAddr>,
}

impl ConnCaps {
    /// A slot for a new connection from `ip`, or `None` when a cap is reached.
    fn admit(caps: &Arc<ConnCaps>, ip: IpAddr) -> Option<CapSlot> {
        let total = caps.total.load(Ordering::Relaxed);
        if caps.open.fetch_add(1, Ordering::Relaxed) >= total && total > 0 {
            caps.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let mut slot = CapSlot {
            caps: caps.clone(),
            ip: None,
        };
        let per_ip = caps.per_ip.load(Ordering::Relaxed);
        if per_ip > 0 {
            let mut by_ip = caps.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= per_ip {
                return None; // dropping `slot` gives back the total count
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        Some(slot)
    }
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        let caps = &self.caps;
        caps.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut by_ip = caps.by_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
    }
}

/// Starts the server described by `config`, writing the access log to stdout.
pub async fn start(config: Config) -> Result<ServerHandle, StartupError> {
    start_with_log(config, Box::new(io::stdout())).await
}

/// Starts the server with the access log going to `log_sink`.
pub async fn start_with_log(
    config: Config,
    log_sink: Box<dyn io::Write + Send>,
) -> Result<ServerHandle, StartupError> {
    let log = AccessLog::start(config.access_log, log_sink);
    let grace = config.grace_period;
    // a placeholder until the first config is in; no connection is accepted before
    let placeholder = Live {
        proxy: Proxy::empty(log.clone(), &config),
        conn: ConnSettings::new(&config, None),
    };
    let slot = Arc::new(std::sync::OnceLock::new());
    let mut metrics = Metrics::new();
    metrics.register_collector(Box::new(scrape::Scrape(slot.clone())));
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(placeholder),
        drain: Stop::default(),
        hard_stop: Stop::default(),
        caps: Arc::new(ConnCaps::default()),
        metrics: Arc::new(metrics),
    });
    let core = Core::new(log.clone(), shared.clone());
    let _ = slot.set(Arc::downgrade(&core));
    core.apply(config).await?;
    let status = core.status();
    let status = status
        .as_ref()
        .as_ref()
        .expect("status after the first config");
    let (http_addr, https_addr, admin_addr) = (status.http, status.https, status.admin);
    let local_ca = status.local_ca.clone();
    let c = core.clone();
    let done = tokio::spawn(async move {
        c.shutdown.cancelled().await;
        // The listeners are dropped (closed) when their accept loops end.
        c.accepting.close();
        c.accepting.wait().await;
        tracing::info!(connections = c.tracker.len(), "listeners closed; draining");
        c.tracker.close();
        // ACME loops stop at once, except one saving a new certificate, which finishes it.
        c.acme_tasks.close();
        if tokio::time::timeout(grace, c.tracker.wait()).await.is_err() {
            tracing::warn!(grace = ?grace, "grace period over; closing the remaining connections");
            c.shared.hard_stop.fire();
            c.tracker.wait().await;
        }
        // After the connections, a short allowance (not another grace period: process
        // managers stop waiting soon after it) for responses being written to the cache's
        // disk tier, kept for the next run, and a certificate being saved.
        let allowance = tokio::time::Instant::now() + FINISHING;
        if let Some(cache) = c.shared.live.load().proxy.cache() {
            let _ = tokio::time::timeout_at(allowance, cache.flush()).await;
        }
        let _ = tokio::time::timeout_at(allowance, c.acme_tasks.wait()).await;
    });
    Ok(ServerHandle {
        http_addr,
        https_addr,
        admin_addr,
        local_ca,
        control: Control(core),
        shared,
        done,
        log,
    })
}

/// The HTTP/1.1 server settings of `config` (no header_read_timeout: hyper's also runs while
/// a keep-alive connection waits for its next request, which would cap client_idle at
/// client_header; the connection watcher enforces both).
fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(config.limits.max_header_size)
        .max_headers(config.limits.max_headers);
    builder
}

/// The HTTP/1.1 and HTTP/2 server settings of `config`.
fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // (no header_read_timeout: see http1_builder)
        .max_buf_size(config.limits.max_header_size)
        .max_headers(config.limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.limits.max_header_size as u32);
    builder
}

impl WatchLimits {
    fn new(config: &Config) -> WatchLimits {
        WatchLimits {
            header: config.timeouts.client_header,
            header_idle: config.timeouts.client_header_idle,
            min_rate: config.timeouts.client_min_rate,
            grace: config.timeouts.client_min_rate_grace,
            idle: config.timeouts.client_idle,
            // Long enough for a slow upstream to be answered with a 504 first.
            stall: config
                .timeouts
                .client_idle
                .max(config.timeouts.upstream_response),
            park: None,
        }
    }
}

/// What the admin listener and the process (SIGHUP) may do with a running server.
#[derive(Clone)]
pub struct Control(Arc<Core>);

impl Control {
    /// Reads the config file again and, when it is valid and can be applied, swaps it in.
    /// Otherwise the running config stays, and the error (every message `usher check`
    /// would print, or why it could not be applied) is logged, kept for the admin API, and
    /// returned.
    // Boxed: the admin listener (which reload may start) calls this, and the future types
    // would otherwise contain themselves.
    pub fn reload(&self) -> Pin<Box<dyn Future<Output = Result<Status, ReloadError>> + Send + '_>> {
        Box::pin(self.reload_now())
    }

    async fn reload_now(&self) -> Result<Status, ReloadError> {
        match self.0.reload().await {
            Ok(()) => {
                let status = self.status().expect("status after a reload");
                tracing::info!(
                    generation = status.generation,
                    "reloaded: {}",
                    status.summary
                );
                Ok(status)
            }
            Err(e) => {
                tracing::error!("reload failed; the running config stays:\n{e}");
                Err(e)
            }
        }
    }

    /// The running config's status.
    pub fn status(&self) -> Option<Status> {
        self.0.status().as_ref().clone()
    }

    /// The response cache, when a route uses it.
    pub fn cache(&self) -> Option<Arc<crate::cache::Cache>> {
        self.0.shared.live.load().proxy.cache().cloned()
    }

    /// The current pools.
    pub fn pools(&self) -> Vec<Arc<crate::upstream::Pool>> {
        self.0.shared.live.load().proxy.routes().pools().to_vec()
    }

    /// The running config.
    pub fn config(&self) -> Option<Arc<Config>> {
        self.0.config.load_full()
    }

    /// Each TLS site's first name and its certificate's expiry.
    pub fn certificates(&self) -> Vec<(String, Option<std::time::SystemTime>)> {
        self.0
            .certs
            .load_full()
            .map(|c| c.expiries())
            .unwrap_or_default()
    }

    /// Every metric, in the text format.
    pub fn metrics(&self) -> String {
        self.0.shared.metrics.encode()
    }
}

/// Installs the certificates usher makes or reads itself (local CA, PEM files); ACME sites stay
/// pending until the manager installs theirs. `internal_only` re-issues local-CA leaves alone.
fn install_certs(
    config: &Config,
    ca: Option<&LocalCa>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    certs: &SiteCerts,
    internal_only: bool,
) -> Result<(), StartupError> {
    for (i, site) in config.sites.iter().enumerate() {
        let cert = match (&site.tls, ca) {
            (TlsMode::Internal, Some(ca)) => ca.issue(&site.names, provider)?,
            (TlsMode::Files { cert, key }, _) if !internal_only => {
                certs::load_pem_files(cert, key, provider)?
            }
            _ => continue,
        };
        certs.set(i, cert);
    }
    Ok(())
}

/// Re-issues internal leaf certificates when a third of their lifetime remains.
async fn renew_internal(
    config: Config,
    ca: Arc<LocalCa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    certs: Arc<SiteCerts>,
    shutdown: CancellationToken,
) {
    let every = certs::INTERNAL_LEAF_LIFETIME * 2 / 3;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match install_certs(&config, Some(&ca), &provider, &certs, true) {
            Ok(()) => tracing::info!("re-issued internal certificates"),
            Err(e) => {
                tracing::error!(error = %e, "re-issuing internal certificates failed; keeping the current ones")
            }
        }
    }
}

/// How long the kernel holds a new connection for its first bytes before handing it over
/// anyway (see [`sockopt::set_defer_accept`]). Clients send theirs at once; one that sends
/// nothing comes to usher (and its caps and `client_header`) after about a second.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// A listener on `addr`. Its connections are handed over with their first bytes.
fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    let err = |source| StartupError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(BACKLOG).map_err(err)?;
    if let Err(e) = sockopt::set_defer_accept(&listener, FIRST_BYTES_WAIT) {
        // (only a cost: each connection then wakes usher once more)
        tracing::warn!(%addr, error = %e, "TCP_DEFER_ACCEPT not set");
    }
    Ok(listener)
}

/// Accepts connections until `stop` (a drain, or a reload that closes this listener).
async fn accept_loop(
    listener: TcpListener,
    is_tls: bool,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning; the error is not
                // the listener's fault and will pass.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = ConnCaps::admit(&shared.caps, peer.ip()) else {
            // closed at once, as HAProxy's connection rejects: nothing is read
            tracing::debug!(%peer, "connection cap reached: closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(serve_tcp(tcp, peer, is_tls, shared, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WatchLimits = WatchLimits {
        header: Duration::from_secs(10),
        header_idle: Duration::from_secs(10),
        min_rate: 0,
        grace: Duration::from_secs(10),
        idle: Duration::from_secs(75),
        stall: Duration::from_secs(90),
        park: None,
    };

    fn conn() -> ConnInfo {
        ConnInfo::new("127.0.0.1:1".parse().unwrap(), false, None)
    }

    fn at(c: &ConnInfo, secs: u64) -> Instant {
        c.epoch + Duration::from_secs(secs)
    }

    #[test]
    fn a_new_connection_owes_a_request_head() {
        let c = conn();
        assert_eq!(
            c.watch(LIMITS, at(&c, 9)),
            Watch::Until(c.epoch + LIMITS.header)
        );
        assert_eq!(c.watch(LIMITS, at(&c, 10)), Watch::SlowHead);
    }

    #[test]
    fn keep_alive_waits_for_client_idle_not_client_header() {
        let c = conn();
        c.request_started();
        c.write_progress();
        c.request_finished();
        // no byte of a next request yet: the idle rule (75 s), not the head rule (10 s)
        assert!(matches!(c.watch(LIMITS, at(&c, 30)), Watch::Until(_)));
        assert_eq!(c.watch(LIMITS, at(&c, 80)), Watch::Idle);
        // the first byte of a head starts the head timer
        c.read_progress(1);
        assert_eq!(c.watch(LIMITS, at(&c, 11)), Watch::SlowHead);
        // a write (an HTTP/2 ping answer, say) clears it
        c.write_progress();
        assert!(matches!(c.watch(LIMITS, at(&c, 11)), Watch::Until(_)));
    }

    #[test]
    fn a_head_may_not_pause_long_nor_trickle() {
        let limits = WatchLimits {
            header: Duration::from_secs(60),
            header_idle: Duration::from_secs(5),
            min_rate: 100,
            grace: Duration::from_secs(2),
            ..LIMITS
        };
        let c = conn();
        // a new connection that sends nothing has only the ceiling
        assert!(matches!(c.watch(limits, at(&c, 30)), Watch::Until(_)));
        assert_eq!(c.watch(limits, at(&c, 61)), Watch::SlowHead);
        // a head that began and paused 5 s
        let c = conn();
        c.read_progress(500);
        assert_eq!(c.watch(limits, at(&c, 6)), Watch::SlowHead);
        // 50 bytes in the first second, then nothing new: the rate (100 B/s) is missed once
        // the grace (2 s) is over, before the pause limit
        let c = conn();
        c.read_progress(50);
        assert!(matches!(c.watch(limits, at(&c, 1)), Watch::Until(_)));
        assert_eq!(c.watch(limits, at(&c, 3)), Watch::SlowHead);
        // with no minimum rate the same head may go on until the pause limit
        let c = conn();
        c.read_progress(50);
        let no_rate = WatchLimits {
            min_rate: 0,
            ..limits
        };
        assert!(matches!(c.watch(no_rate, at(&c, 3)), Watch::Until(_)));
    }

    #[test]
    fn an_idle_connection_is_parked_before_it_is_closed() {
        let parking = WatchLimits {
            park: Some(Duration::from_millis(50)),
            ..LIMITS
        };
        let c = conn();
        // a new connection owes its first head: never parked
        assert!(matches!(c.watch(parking, at(&c, 9)), Watch::Until(_)));
        c.request_started();
        assert!(matches!(c.watch(parking, at(&c, 1)), Watch::Until(_)));
        c.request_finished();
        assert_eq!(c.watch(parking, at(&c, 1)), Watch::Park);
        // a session that never became parkable (a response flushing to a client that does not
        // read) is still closed after client_idle
        assert_eq!(c.watch(parking, at(&c, 80)), Watch::Idle);
        // without parking (HTTP/2), or with a park delay past client_idle, only the idle rule
        assert!(matches!(c.watch(LIMITS, at(&c, 1)), Watch::Until(_)));
        let late = WatchLimits {
            park: Some(Duration::from_secs(100)),
            ..LIMITS
        };
        assert_eq!(c.watch(late, at(&c, 80)), Watch::Idle);
    }

    #[test]
    fn a_busy_connection_with_no_progress_is_stalled() {
        let c = conn();
        c.request_started();
        assert!(matches!(c.watch(LIMITS, at(&c, 89)), Watch::Until(_)));
        assert_eq!(c.watch(LIMITS, at(&c, 91)), Watch::Stalled);
    }
}
