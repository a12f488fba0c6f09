//! The admin listener: off unless `[admin] listen` is set (loopback is the sensible place).
//! It answers `GET /healthz`, and `PURGE` of cached URLs, which the public listeners refuse
//! with 405:
//!
//! - `PURGE /path` with `Host: example.com`: that URL's entries (every query and key
//!   header, both schemes);
//! - `PURGE /prefix*`: every entry whose path starts with the prefix.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::cache::Cache;

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, cache: Option<Arc<Cache>>, shutdown: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let cache = cache.clone();
        let svc = service_fn(move |req| {
            let cache = cache.clone();
            async move { Ok::<_, Infallible>(answer(req, cache.as_deref())) }
        });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn answer(req: Request<Incoming>, cache: Option<&Cache>) -> Response<Body> {
    let text = |status: StatusCode, body: &str| {
        let mut r = Response::new(Body::full(format!("{body}\n")));
        *r.status_mut() = status;
        r
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok"),
        ("PURGE", path) => {
            let Some(cache) = cache else {
                return text(StatusCode::NOT_FOUND, "no route uses the cache");
            };
            let host = req.uri().host().map(str::to_owned).or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| crate::headers::host_without_port(h).to_owned())
            });
            let Some(host) = host else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "name the site in Host or the target",
                );
            };
            let (path, prefix) = match path.strip_suffix('*') {
                Some(p) => (p, true),
                None => (path, false),
            };
            cache.purge(&host, path, prefix);
            tracing::info!(%host, path, prefix, "purged from the cache");
            text(StatusCode::OK, "purged")
        }
        (_, "/healthz") => text(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
        _ if req.method() == Method::GET => text(StatusCode::NOT_FOUND, "not found"),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET /healthz or PURGE"),
    }
}
