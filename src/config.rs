//! proxy.toml -> raw serde structs (`config/raw.rs`, unknown keys denied) -> a validated
//! [`Config`] with every default applied. Parse, don't validate: after `Config::load` nothing in
//! the server checks a config value again.
//!
//! Semantic errors are collected, not returned at the first one, so `usher check` shows them all.

mod acme;
mod check;
mod raw;
mod units;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;

pub use units::{parse_duration, parse_size};

use crate::error::{ConfigError, ConfigIssue};
pub use check::parse_upstream;
use check::Checker;
use raw::RawConfig;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (relative paths in it resolve against its folder).
    pub file: PathBuf,
    /// Plain HTTP listener, `None` when `http = "off"`.
    pub http: Option<SocketAddr>,
    /// TLS listener, `None` when `https = "off"`.
    pub https: Option<SocketAddr>,
    /// Certificate storage folder (local CA, certificates, later ACME state).
    pub certs_dir: PathBuf,
    /// Access log format on stdout.
    pub access_log: AccessLogFormat,
    /// How long in-flight requests may run after SIGTERM.
    pub grace_period: Duration,
    /// Compress responses (gzip, brotli, zstd) for clients that accept it.
    pub compression: bool,
    /// When started as root: the user to run as once the listeners are bound.
    pub user: Option<RunAs>,
    /// Client and upstream timeouts.
    pub timeouts: Timeouts,
    /// Request limits.
    pub limits: Limits,
    /// Body buffering.
    pub buffering: Buffering,
    /// The response cache's storage (used by routes with `cache`).
    pub cache: CacheSettings,
    /// The admin listener's address, when on.
    pub admin: Option<SocketAddr>,
    /// Automatic certificates (used by `tls = "acme"` sites).
    pub acme: Acme,
    /// The sites, in file order.
    pub sites: Vec<Site>,
    /// Named upstream pools.
    pub upstreams: std::collections::BTreeMap<String, UpstreamPool>,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One human-readable line per request (the default).
    Text,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

/// Timeouts, each with a default chosen to match what nginx operators expect.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Time for a client to send a complete request head.
    pub client_header: Duration,
    /// Longest pause while a request head arrives.
    pub client_header_idle: Duration,
    /// Longest wait for the next piece of a request body.
    pub client_body: Duration,
    /// Most time for a whole request body.
    pub client_body_max: Duration,
    /// Most time to deliver a whole response body to the client.
    pub client_send_max: Duration,
    /// Slowest transfer allowed after the grace period, bytes per second (0: no minimum).
    pub client_min_rate: u64,
    /// Time before the minimum rate applies to a body.
    pub client_min_rate_grace: Duration,
    /// A client connection with no request in flight and no traffic for this long is closed.
    pub client_idle: Duration,
    /// Time for a client to complete the TLS handshake.
    pub tls_handshake: Duration,
    /// Time to open a connection to an upstream member.
    pub upstream_connect: Duration,
    /// Time from sending a request upstream to receiving its response head.
    pub upstream_response: Duration,
    /// A pooled upstream connection idle for this long is closed instead of reused.
    pub upstream_idle: Duration,
}

/// Limits on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head in bytes (431 beyond it).
    pub max_header_size: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request body a proxied route accepts, unless the route says otherwise (413).
    pub max_body_size: u64,
    /// Longest request target (414).
    pub max_uri_length: usize,
    /// Most client connections at once (0: no cap).
    pub max_connections: usize,
    /// Most client connections at once from one IP address (0: no cap).
    pub max_connections_per_ip: usize,
    /// Requests a second allowed per client IP address (0: no limit).
    pub rate_per_ip: u32,
    /// Requests one address may send in a burst above the rate.
    pub rate_burst: u32,
}

/// Where request and response bodies wait while a slow client or app catches up.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffering {
    /// A request body larger than this goes to a temporary file.
    pub request_memory: usize,
    /// A response body larger than this goes to a temporary file.
    pub response_memory: usize,
    /// Memory all buffers together may use; beyond it, bodies go to disk.
    pub max_memory: usize,
    /// Most of one response waiting on disk for its client; past it, the app is read only
    /// as fast as the client reads.
    pub max_file_size: u64,
    /// Where temporary files go (created already unlinked: nothing is left behind).
    pub temp_dir: PathBuf,
}

/// A user to run as: its name and ids, looked up when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The response cache's storage.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Bytes the memory tier may hold.
    pub memory: u64,
    /// Largest response body stored; larger ones pass through.
    pub max_entry: usize,
    /// The disk tier, when configured.
    pub disk: Option<CacheDisk>,
}

/// The cache's disk tier.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheDisk {
    /// The folder entries are kept in (created at startup if missing).
    pub dir: PathBuf,
    /// Bytes the folder's entries may take.
    pub size: u64,
}

/// A proxy route's response caching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteCache {
    /// Leave the query out of the cache key.
    pub ignore_query: bool,
    /// Request headers added to the cache key.
    pub key_headers: Vec<http::HeaderName>,
    /// How long a stale entry may still be served when the app fails (0: never).
    pub stale_if_error: Duration,
    /// How long after going stale an entry is still served while one request refreshes it.
    pub stale_while_revalidate: Duration,
}

/// How a proxy route treats bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPolicy {
    /// Read the whole request body before choosing an upstream member.
    pub buffer_requests: bool,
    /// Read the upstream response as fast as it comes, whatever the client's pace.
    pub buffer_responses: bool,
    /// Largest request body (413 beyond it).
    pub max_body_size: u64,
}

/// One site: a set of host names sharing TLS settings and routes.
#[derive(Debug, Clone)]
pub struct Site {
    /// Lower-case host names; `*.example.com` matches one label.
    pub names: Vec<String>,
    /// Answers handshakes without SNI and requests for unknown hosts.
    pub default: bool,
    /// Where the certificate comes from.
    pub tls: TlsMode,
    /// For a TLS site: answer plain HTTP with a 308 to https (true, the default) or serve it.
    pub http_redirect: bool,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
}

/// How a site gets its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Issued by usher's local CA in `certs_dir` (like Caddy's `tls internal`).
    Internal,
    /// PEM files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP only: no certificate, no redirect.
    Off,
    /// Obtained and renewed from an ACME CA (`[acme]`).
    Acme,
}

/// Let's Encrypt's production directory: the default issuer.
pub const LETSENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "staging"`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// `[acme]`, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// Contact address given to the CA.
    pub email: Option<String>,
    /// Extra roots trusted for the directories' HTTPS (private CAs, tests).
    pub ca_roots: Vec<PathBuf>,
    /// Challenge types in order of preference.
    pub challenges: Vec<ChallengeKind>,
    /// CAs in order: when one keeps failing for a site, the next is tried.
    pub issuers: Vec<Issuer>,
    /// First delay after a failed attempt; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
}

/// An ACME challenge type usher can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token served on the plain listener at `/.well-known/acme-challenge/`.
    Http01,
    /// A special certificate served on the TLS listener to ALPN `acme-tls/1`.
    TlsAlpn01,
}

/// One ACME CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// The directory URL.
    pub directory: String,
    /// External Account Binding, for CAs that require it.
    pub eab: Option<Eab>,
    /// An ACME profile name to ask for.
    pub profile: Option<String>,
}

/// External Account Binding credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    /// The key identifier from the CA.
    pub kid: String,
    /// The decoded HMAC key.
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print key material
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Names that no public CA will certify: they default to `tls = "internal"`.
pub fn is_local_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || [
            ".localhost",
            ".test",
            ".local",
            ".internal",
            ".home.arpa",
            ".example",
            ".invalid",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// One route inside a site.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path prefix that selects this route.
    pub path: String,
    /// Remove `path` from the request path before serving or forwarding.
    pub strip_prefix: bool,
    /// Body buffering and size (proxy routes).
    pub body: BodyPolicy,
    /// Response caching (proxy routes), when on.
    pub cache: Option<RouteCache>,
    /// What to do with the request.
    pub action: Action,
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Serve files from a folder.
    Static(StaticRoute),
    /// Forward to an upstream pool.
    Proxy(ProxyTarget),
    /// Answer with a redirect; `{uri}` in `to` is replaced by the request's path and query.
    Redirect { status: StatusCode, to: String },
}

/// Where a proxy route forwards.
#[derive(Debug, Clone)]
pub enum ProxyTarget {
    /// A named `[upstream.NAME]` pool (shared by every route that names it).
    Pool(String),
    /// Addresses listed in the route itself, balanced round robin.
    Inline(UpstreamPool),
}

/// An upstream pool.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPool {
    /// Its members, in file order.
    pub members: Vec<PoolMember>,
    /// How a member is chosen.
    pub balance: Balance,
    /// Most further attempts on other members for one request.
    pub retries: u32,
    /// Consecutive failures (connect errors, 5xx) that eject a member; 0 never ejects.
    pub eject_after: u32,
    /// First ejection period; doubles with each ejection in a row.
    pub eject_for: Duration,
    /// Most members ejected at once, as a percentage of the pool (never the last one).
    pub max_ejected_percent: u32,
    /// The HTTP version spoken to members.
    pub protocol: UpstreamProtocol,
    /// Active health checks, when configured.
    pub health: Option<HealthCheck>,
    /// Most requests in flight to one member at once (`None`: no cap).
    pub max_conns: Option<u32>,
    /// Idle limit of this pool's connections (`None`: `timeouts.upstream_idle`).
    pub idle_timeout: Option<Duration>,
    /// Most requests waiting for a member below its cap.
    pub queue: u32,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
}

/// The HTTP version spoken to a pool's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a pool of keep-alive connections per member (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, one multiplexed connection per member
    /// (gRPC-style apps; trailers pass through).
    H2c,
}

/// Active health checks of a pool's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path requested (GET) on each member.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Statuses that count as healthy, inclusive.
    pub status: (u16, u16),
    /// Consecutive passes that re-admit a member.
    pub healthy_after: u32,
    /// Consecutive failures that take a member out.
    pub unhealthy_after: u32,
}

/// A pool member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMember {
    /// Where it listens.
    pub addr: UpstreamAddr,
    /// Its share of the traffic relative to the others (1..=1000).
    pub weight: u32,
}

/// Balancing policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// In turn, by weight.
    RoundRobin,
    /// The less busy of two random members (by in-flight requests per weight).
    LeastRequests,
    /// The cheaper of two random members by peak-EWMA latency times load (the default).
    PeakEwma,
    /// Consistent hashing on the client address.
    IpHash,
    /// Consistent hashing on a request header.
    HeaderHash(http::HeaderName),
    /// Consistent hashing on a cookie.
    Cookie(String),
}

/// A static route's settings.
#[derive(Debug, Clone)]
pub struct StaticRoute {
    /// The folder served.
    pub root: PathBuf,
    /// File served for a directory.
    pub index: String,
    /// Served (with 200) when a path is not found: for single-page apps.
    pub fallback: Option<String>,
    /// How long a small file kept in memory is served before its path is resolved and
    /// the file looked at again (zero: at every request).
    pub file_cache_valid: Duration,
}

/// An upstream member's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    /// `host:port`; the host is resolved when connecting.
    Tcp { host: String, port: u16 },
    /// `unix:/path.sock`.
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            issues: vec![ConfigIssue {
                line_col: None,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut ck = Checker {
            text,
            base: path.parent().map(Path::to_owned).unwrap_or_default(),
            issues: Vec::new(),
            pool_names: Vec::new(),
            max_body_size: 0,
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let line_col = e.span().map(|s| ck.line_col(s.start));
                return Err(ConfigError {
                    file: path.to_owned(),
                    issues: vec![ConfigIssue {
                        line_col,
                        key: String::new(),
                        message: e.message().trim().to_owned(),
                    }],
                });
            }
        };
        let config = ck.config(raw, path);
        if ck.issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: path.to_owned(),
                issues: ck.issues,
            })
        }
    }

    /// A one-line summary for `usher check` and the startup log.
    pub fn summary(&self) -> String {
        let routes: usize = self.sites.iter().map(|s| s.routes.len()).sum();
        let fmt = |a: Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
        format!(
            "{} site{}, {} route{}, http {}, https {}",
            self.sites.len(),
            if self.sites.len() == 1 { "" } else { "s" },
            routes,
            if routes == 1 { "" } else { "s" },
            fmt(self.http),
            fmt(self.https)
        )
    }
}

#[cfg(test)]
mod tests;
