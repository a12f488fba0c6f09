//! Errors: `ProxyError` for one request (with the one status table), `ConfigError` for a bad
//! proxy.toml, `StartupError` for everything that stops the server from starting.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use http::StatusCode;

/// Who is at fault for a failed request: decides the status, the log level and (later) whether
/// a retry is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we will not serve.
    Client,
    /// The upstream app failed or was too slow.
    Upstream,
    /// usher itself failed (an I/O error reading a static file, say).
    Usher,
}

/// Everything that can go wrong while answering one request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No site answers this Host (and no default site is configured).
    #[error("no site for host {host:?}")]
    UnknownHost { host: String, tls: bool },
    /// The TLS connection was made for one site and the request names another.
    #[error("host {host:?} is not served on this TLS connection (SNI {sni:?})")]
    Misdirected { host: String, sni: String },
    /// The site has no route for this path.
    #[error("no route for path")]
    NoRoute,
    /// A request we refuse to parse further (bad path encoding, missing Host).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A static path that tries to leave its root.
    #[error("forbidden path: {0}")]
    Forbidden(&'static str),
    /// The static file does not exist.
    #[error("not found")]
    NotFound,
    /// Reading a static file failed for a reason other than absence.
    #[error("static file error: {0}")]
    Static(#[source] io::Error),
    /// The upstream could not be reached (refused, unreachable, DNS).
    #[error("connect to upstream {addr} failed: {source}")]
    UpstreamConnect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Connecting to the upstream took longer than `upstream_connect`.
    #[error("connect to upstream {addr} timed out")]
    UpstreamConnectTimeout { addr: String },
    /// The upstream broke the HTTP exchange (reset, malformed response).
    #[error("upstream {addr} failed: {source}")]
    UpstreamProtocol {
        addr: String,
        #[source]
        source: crate::body::BoxError,
    },
    /// Every member is at its `max_conns` and the queue is full, or the wait ran out.
    #[error("upstream pool busy: {0}")]
    PoolBusy(&'static str),
    /// The upstream sent no response head within `upstream_response`.
    #[error("upstream {addr} sent no response in time")]
    UpstreamTimeout { addr: String },
    /// The request body is larger than the route allows.
    #[error("request body over the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request target is longer than `max_uri_length`.
    #[error("request target longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The client was too slow sending its request.
    #[error("client too slow: {0}")]
    ClientTimeout(&'static str),
    /// The upstream's response body failed before its head was sent on (response buffering).
    #[error("upstream response body failed")]
    UpstreamBody,
    /// A method this listener refuses.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// The client's address sent more requests than `rate_per_ip` allows.
    #[error("rate limit reached; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A body could not be buffered on disk (disk full, temp folder gone).
    #[error("cannot buffer a body on disk: {0}")]
    Spool(#[source] io::Error),
}

impl ProxyError {
    /// The one status table: every error becomes exactly this status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost { tls: true, .. } | ProxyError::Misdirected { .. } => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ProxyError::UnknownHost { tls: false, .. } | ProxyError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::Static(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamBody => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::PoolBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Spool(_) => StatusCode::INSUFFICIENT_STORAGE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Whose fault it is.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::UnknownHost { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::Forbidden(_)
            | ProxyError::NotFound
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::ClientTimeout(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::MethodNotAllowed(_) => Side::Client,
            ProxyError::Static(_) | ProxyError::Spool(_) => Side::Usher,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamConnectTimeout { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamBody
            | ProxyError::PoolBusy(_) => Side::Upstream,
        }
    }

    /// The short plain-text body sent to the client. It names no internal address.
    pub fn body(&self) -> &'static str {
        match self.status() {
            StatusCode::MISDIRECTED_REQUEST => {
                "421 misdirected request: this host is not served on this connection\n"
            }
            StatusCode::NOT_FOUND => "404 not found\n",
            StatusCode::BAD_REQUEST => "400 bad request\n",
            StatusCode::FORBIDDEN => "403 forbidden\n",
            StatusCode::BAD_GATEWAY => "502 bad gateway: the app could not be reached\n",
            StatusCode::GATEWAY_TIMEOUT => "504 gateway timeout: the app did not answer in time\n",
            StatusCode::SERVICE_UNAVAILABLE => {
                "503 service unavailable: the app is busy, retry shortly\n"
            }
            StatusCode::PAYLOAD_TOO_LARGE => "413 content too large\n",
            StatusCode::URI_TOO_LONG => "414 URI too long\n",
            StatusCode::TOO_MANY_REQUESTS => "429 too many requests: slow down\n",
            StatusCode::METHOD_NOT_ALLOWED => "405 method not allowed\n",
            StatusCode::REQUEST_TIMEOUT => "408 request timeout: the request arrived too slowly\n",
            StatusCode::INSUFFICIENT_STORAGE => {
                "507 insufficient storage: the request could not be buffered\n"
            }
            _ => "500 internal server error\n",
        }
    }
}

/// One mistake in a config file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
    /// The key path, like `site[1].route[0].proxy`; empty for syntax errors.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// A config file that cannot be used; lists every issue found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// At least one issue.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "{}: {} error{} in config",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "  {}", self.file.display())?;
            if let Some((line, col)) = issue.line_col {
                write!(f, ":{line}:{col}")?;
            }
            if !issue.key.is_empty() {
                write!(f, ": {}", issue.key)?;
            }
            writeln!(f, ": {}", issue.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Why a reload did not take (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has errors: every one, as `usher check` prints them.
    #[error("{0}")]
    Config(ConfigError),
    /// The config is valid but could not be put in place (a port taken, a certificate
    /// file gone).
    #[error("{0}")]
    Apply(StartupError),
    /// No config was running yet.
    #[error("the server has not started")]
    NotStarted,
    /// The server is draining (SIGTERM): nothing more is started.
    #[error("the server is shutting down")]
    Draining,
}

/// Why `Server::start` failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// certs/ or a certificate file could not be read or written.
    #[error("certificate storage {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A certificate or key file exists but is not usable.
    #[error("certificate {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    /// The cache's disk folder cannot be created, written or read.
    #[error("cache.disk_dir {path}: {reason}")]
    CacheFolder { path: PathBuf, reason: String },
    /// Creating a certificate with rcgen failed.
    #[error("cannot create certificate for {what}: {source}")]
    CertGen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// The ACME setup is unusable (unreadable `ca_roots`, say).
    #[error("ACME: {0}")]
    Acme(String),
    /// rustls refused the TLS configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_maps_sides() {
        let e = ProxyError::UnknownHost {
            host: "x".into(),
            tls: true,
        };
        assert_eq!(e.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(e.side(), Side::Client);
        let e = ProxyError::UnknownHost {
            host: "x".into(),
            tls: false,
        };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = ProxyError::UpstreamTimeout { addr: "a".into() };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.side(), Side::Upstream);
        assert!(e.body().starts_with("504"));
    }

    #[test]
    fn config_error_lists_every_issue_with_location() {
        let e = ConfigError {
            file: "proxy.toml".into(),
            issues: vec![
                ConfigIssue {
                    line_col: Some((3, 7)),
                    key: "site[0].tls".into(),
                    message: "bad".into(),
                },
                ConfigIssue {
                    line_col: None,
                    key: String::new(),
                    message: "worse".into(),
                },
            ],
        };
        let s = e.to_string();
        assert!(s.contains("2 errors"));
        assert!(s.contains("proxy.toml:3:7: site[0].tls: bad"));
        assert!(s.contains("proxy.toml: worse"));
    }
}
