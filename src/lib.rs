//! usher: a small, fast reverse proxy for web apps.
//!
//! ```text
//! connection: accept (TCP_NODELAY) -> TLS handshake (SNI -> CertResolver, timeout)
//!             -> HTTP/1.1 (bodyless: server/h1.rs; the rest: hyper) or h2 (hyper-util auto)
//!             -> idle watcher, drain
//! request:    Proxy::handle -> try_handle:
//!   1. ACME HTTP-01 challenge?            -> answer it
//!   2. rate limit, target length -> routes snapshot -> site by Host -> route by prefix
//!   3. plain HTTP on a TLS site?          -> 308 to https
//!   4. dispatch: static | redirect | forward
//!   5. forward: rewrite headers -> cache lookup (cache.rs; a hit answers)
//!               -> buffer the request body (buffer.rs)
//!               -> pool.send (policy, health, caps, retries, keep-alive pool)
//!               -> strip hop-by-hop -> cache store -> buffer the response
//! errors:     ProxyError -> one status table (error.rs) -> short text body + one log line
//! ```
//!
//! `server::start(config)` runs everything and returns a [`server::ServerHandle`].
// Two measured exceptions: `sockopt.rs` (socket options no safe crate offers) and `heap.rs`
// (glibc's `mallopt`).
#![deny(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod body;
pub mod buffer;
pub mod cache;
pub mod certs;
pub mod clock;
pub mod compress;
pub mod config;
pub mod error;
pub mod headers;
pub mod heap;
pub mod limits;
pub mod metrics;
pub mod privileges;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod signals;
mod sockopt;
pub mod static_files;
pub mod tls;
pub mod upstream;
pub mod wire;

pub use config::Config;
pub use server::{start, ServerHandle};
