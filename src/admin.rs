//! The admin listener: off unless `[admin] listen` is set (loopback is the sensible place).
//! The public listeners never answer any of this (they refuse `PURGE` with 405).
//!
//! - `GET /healthz`: usher is up;
//! - `GET /readyz`: a config is loaded and its listeners are bound (JSON: generation, file,
//!   addresses, the last failed reload if the last reload failed);
//! - `GET /metrics`: Prometheus (OpenMetrics) text;
//! - `GET /upstreams`: every pool, its members' health, in-flight requests and ejections;
//! - `GET /certs`: every TLS site's certificate (expiry), and for ACME sites the issuer,
//!   planned renewal, next attempt and last error;
//! - `POST /reload`: reads the config file again (as SIGHUP does): 200 with the new status,
//!   or 422 with every error while the running config stays;
//! - `PURGE /path` with `Host: example.com`, or `POST /cache/purge?host=H&path=P`: that
//!   URL's cached entries (every query and key header, both schemes); a path ending in `*`
//!   purges every entry under the prefix.

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::acme::stored::secs;
use crate::body::Body;
use crate::server::{Control, Status};

/// Serves the admin endpoints on `listener` until `stop`.
pub async fn serve(listener: TcpListener, control: Control, stop: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let control = control.clone();
        let svc = service_fn(move |req| {
            let control = control.clone();
            async move { Ok::<_, Infallible>(answer(req, &control).await) }
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(format!("{body}\n")));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(format!("{value:#}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A status as JSON.
fn status_json(s: &Status) -> serde_json::Value {
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    serde_json::json!({
        "generation": s.generation,
        "config": s.file.display().to_string(),
        "loaded_at": secs(s.loaded),
        "summary": s.summary,
        "listeners": {"http": addr(s.http), "https": addr(s.https), "admin": addr(s.admin)},
        "last_reload_error": s.failed.as_ref().map(|(at, e)| serde_json::json!({"at": secs(*at), "error": e})),
    })
}

async fn answer(req: Request<Incoming>, control: &Control) -> Response<Body> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok"),
        ("GET", "/metrics") => {
            let mut r = Response::new(Body::full(control.metrics()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        ("GET", "/upstreams") => json(StatusCode::OK, upstreams(control)),
        ("GET", "/certs") => json(StatusCode::OK, certs(control).await),
        ("GET", "/readyz") => match control.status() {
            Some(s) => json(StatusCode::OK, status_json(&s)),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
        },
        ("POST", "/reload") => match control.reload().await {
            Ok(s) => json(StatusCode::OK, status_json(&s)),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": e.to_string(), "running": control.status().map(|s| s.generation)}),
            ),
        },
        ("POST", "/cache/purge") => {
            let query = req.uri().query().unwrap_or("");
            let param = |name: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
            };
            match (param("host"), param("path")) {
                (Some(host), Some(path)) if path.starts_with('/') => purge(control, &host, &path),
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "give host and path: POST /cache/purge?host=example.com&path=/blog/*",
                ),
            }
        }
        ("PURGE", path) => {
            let host = req.uri().host().map(str::to_owned).or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| crate::headers::host_without_port(h).to_owned())
            });
            match host {
                Some(host) if path.starts_with('/') => purge(control, &host, path),
                Some(_) => text(StatusCode::BAD_REQUEST, "PURGE a path: /page or /prefix*"),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "name the site in Host or the target",
                ),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/upstreams" | "/certs") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET only")
        }
        (_, "/reload" | "/cache/purge") => text(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
        _ if req.method() == Method::GET => text(StatusCode::NOT_FOUND, "not found"),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "see the README's [admin] section",
        ),
    }
}

/// Every pool and member, as now.
fn upstreams(control: &Control) -> serde_json::Value {
    let pools: Vec<serde_json::Value> = control
        .pools()
        .iter()
        .map(|p| {
            let s = p.snapshot();
            let members: Vec<serde_json::Value> = s
                .members
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "addr": &*m.addr,
                        "healthy": m.healthy,
                        "ejected": m.ejected,
                        "in_flight": m.in_flight,
                        "idle_connections": m.idle,
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.name(),
                "members": members,
                "queued": s.queued,
                "retries": s.retried,
                "ejections": s.ejections,
            })
        })
        .collect();
    serde_json::json!({ "pools": pools })
}

/// Every TLS site's certificate; what the ACME manager recorded for ACME sites.
async fn certs(control: &Control) -> serde_json::Value {
    use crate::acme::stored;
    use crate::config::TlsMode;
    let Some(config) = control.config() else {
        return serde_json::json!({ "sites": [] });
    };
    let serving = control.certificates();
    let storage = crate::certs::FileStorage::at(&config.certs_dir);
    let mut sites = Vec::new();
    for site in config.sites.iter().filter(|s| s.tls != TlsMode::Off) {
        let primary = site.names.first().cloned().unwrap_or_default();
        let expires = serving
            .iter()
            .find(|(n, _)| *n == primary)
            .and_then(|(_, at)| *at)
            .map(secs);
        let mode = match &site.tls {
            TlsMode::Acme => "acme",
            TlsMode::Internal => "internal",
            _ => "files",
        };
        let mut v = serde_json::json!({
            "names": site.names,
            "tls": mode,
            "expires_at": expires,
        });
        if site.tls == TlsMode::Acme {
            let meta = stored::load_public(&storage, &primary)
                .await
                .ok()
                .flatten()
                .map(|(m, _)| m);
            let state = stored::load_state(&storage, &primary)
                .await
                .unwrap_or_default();
            v["issuer"] = meta.as_ref().map(|m| m.issuer.clone()).into();
            v["renew_at"] = meta.as_ref().map(|m| m.renew_at).into();
            v["next_attempt"] = state.next_attempt.into();
            v["failures"] = state.failures.into();
            v["last_error"] = state.last_error.into();
        }
        sites.push(v);
    }
    serde_json::json!({ "sites": sites })
}

/// Purges `path` (a prefix when it ends in `*`) of `host`.
fn purge(control: &Control, host: &str, path: &str) -> Response<Body> {
    let Some(cache) = control.cache() else {
        return text(StatusCode::NOT_FOUND, "no route uses the cache");
    };
    let (path, prefix) = match path.strip_suffix('*') {
        Some(p) => (p, true),
        None => (path, false),
    };
    cache.purge(host, path, prefix);
    tracing::info!(%host, path, prefix, "purged from the cache");
    text(StatusCode::OK, "purged")
}
