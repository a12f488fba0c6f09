//! The request path. `handle` never fails: it calls `try_handle` and turns an error into a
//! response through the status table in `error.rs`. `try_handle` reads like the spec:
//!
//! 1. ACME HTTP-01 challenge? answer it (plain listener only).
//! 2. Load the current routes snapshot, find the site (by Host) and route (by path prefix).
//! 3. Plain HTTP on a TLS site? 308 to https.
//! 4. Dispatch on the route's action: static files, redirect, or `forward`.
//! 5. `forward`: rewrite request headers -> `pool.send` -> rewrite response headers -> respond.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;

use crate::access_log::{AccessLog, LogTail};
use crate::acme::Challenges;
use crate::body::{Body, ClientBody, Logged, UpstreamBody};
use crate::buffer::{self, Buffers};
use crate::cache::{self, After, Cache, Lookup};
use crate::config::{BodyPolicy, Config, Timeouts};
use crate::error::{ProxyError, Side, StartupError};
use crate::headers::{host_without_port, list_items, strip_hop_by_hop, Forwarding};
use crate::limits::RateLimiter;
use crate::routing::{normalize_path, RouteAction, RouteEntry, Routes};
use crate::server::ConnInfo;
use crate::upstream::{Pool, PooledConn, ReqBody, RespBody};
use crate::wire::PassedHead;

/// Responses up to this size (of known length) are read whole before their head goes out:
/// small enough that the wait is a single read.
const HOLD_LIMIT: usize = 64 * 1024;

/// Responses up to this size (of known length) pass straight through: they fit in the
/// connection's buffers, so the app's connection is free as soon as they are read.
const PASS_LIMIT: u64 = 16 * 1024;

/// The path prefix reserved for ACME HTTP-01 challenges: never redirected or proxied.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Shared request-path state, built from one config; a reload builds another and swaps it
/// in (requests in flight finish with the one they started with).
#[derive(Debug)]
pub struct Proxy {
    routes: Arc<Routes>,
    /// Port used in redirects to https (`None`: the default 443, omitted from URLs).
    https_port: Option<u16>,
    log: Option<AccessLog>,
    challenges: Arc<Challenges>,
    /// A WebSocket (or other upgraded) tunnel with no traffic for this long is closed.
    tunnel_idle: Duration,
    /// Request and response buffering.
    buffers: Arc<Buffers>,
    /// Client body-phase limits among them.
    timeouts: Timeouts,
    max_uri_length: usize,
    /// `rate_per_ip`, when set.
    rate: Option<Arc<RateLimiter>>,
    /// The response cache, when a route uses it.
    cache: Option<Arc<Cache>>,
    /// `server.compression`.
    compression: bool,
}

impl Proxy {
    /// A proxy over `routes`. With `previous` (a reload), what holds state carries over
    /// when its settings did not change: the cache (always: its storage settings take
    /// effect at the next start), the buffer budget and the rate limiter's buckets.
    pub fn new(
        routes: Routes,
        https_port: Option<u16>,
        log: Option<AccessLog>,
        challenges: Arc<Challenges>,
        config: &Config,
        previous: Option<&Proxy>,
    ) -> Result<Proxy, StartupError> {
        let cached = config
            .sites
            .iter()
            .flat_map(|s| &s.routes)
            .any(|r| r.cache.is_some());
        let cache = match (cached, previous.and_then(|p| p.cache.clone())) {
            (false, _) => None,
            (true, Some(c)) => {
                if *c.settings() != config.cache {
                    tracing::warn!("[cache] storage changes take effect at the next start");
                }
                Some(c)
            }
            (true, None) => Some(Cache::new(&config.cache)?),
        };
        let buffers = match previous {
            Some(p) if p.buffers.settings() == &config.buffering => p.buffers.clone(),
            _ => Buffers::new(config.buffering.clone()),
        };
        let (rate, burst) = (config.limits.rate_per_ip, config.limits.rate_burst);
        let rate = match previous.and_then(|p| p.rate.as_ref()) {
            Some(r) if r.is(rate, burst) => Some(r.clone()),
            _ => RateLimiter::new(rate, burst).map(Arc::new),
        };
        Ok(Proxy {
            routes: Arc::new(routes),
            https_port: https_port.filter(|p| *p != 443),
            log,
            challenges,
            tunnel_idle: config.timeouts.client_idle,
            buffers,
            timeouts: config.timeouts.clone(),
            max_uri_length: config.limits.max_uri_length,
            rate,
            cache,
            compression: config.compression,
        })
    }

    /// A proxy with no sites (every request gets 421), holding the place of the first
    /// config until it is in.
    pub fn empty(log: Option<AccessLog>, config: &Config) -> Proxy {
        Proxy {
            routes: Arc::new(Routes::default()),
            https_port: None,
            log,
            challenges: Arc::new(Challenges::default()),
            tunnel_idle: Duration::from_secs(60),
            buffers: Buffers::new(config.buffering.clone()),
            timeouts: config.timeouts.clone(),
            max_uri_length: 0,
            rate: None,
            cache: None,
            compression: false,
        }
    }

    /// The buffer budget.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// The compiled routes (and through them the pools).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The response cache, when a route uses it.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.cache.as_ref()
    }

    /// Answers one request; every outcome, error or not, is a response and one log line.
    /// `writer`: what will send the response (see [`Writer`]).
    // (not an async fn: an async block uses `req` in place, where an async fn's body copies
    // it into a local and holds both)
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        &self,
        req: Request<ClientBody>,
        conn: Arc<ConnInfo>,
        writer: Writer,
    ) -> impl Future<Output = Response<Logged>> + Send + '_ {
        async move {
            let mut tail = LogTail::new(self.log.clone(), conn.clone(), Instant::now(), &req);
            let accept = self
                .compression
                .then(|| req.headers().get(header::ACCEPT_ENCODING).cloned())
                .flatten();
            // responses served many times over (cache hits, hot files) may come with their head
            // encoded once, where usher's HTTP/1.1 path sends them as they are
            let encoded = writer == Writer::OwnH1 && accept.is_none();
            let resp = match self.try_handle(req, &conn, &mut tail, encoded).await {
                Ok(resp) => resp,
                Err(e) => {
                    match e.side() {
                        Side::Client => {
                            tracing::debug!(peer = %conn.peer, error = %e, "request refused")
                        }
                        Side::Upstream => {
                            tracing::error!(peer = %conn.peer, error = %e, "upstream failed")
                        }
                        Side::Usher => {
                            tracing::error!(peer = %conn.peer, error = %e, "request failed")
                        }
                    }
                    error_response(&e)
                }
            };
            // (its header map is empty: only usher's HTTP/1.1 writer can send it, uncompressed)
            debug_assert!(
                encoded || resp.body().encoded_head().is_none(),
                "an encoded head where it cannot be sent"
            );
            debug_assert!(
                encoded || resp.body().passed_head().is_none(),
                "passed header lines where they cannot be sent"
            );
            tail.set_status(resp.status());
            if tail.metrics.is_none() {
                tail.metrics = Some(self.routes.unrouted.clone());
            }
            // compressed after the cache and the buffers: they keep the identity body
            let resp = match accept {
                Some(a) if crate::compress::worth_a_look(&resp) => {
                    // boxed: rare enough, and large (every request's future would be; see `Writer`)
                    Box::pin(crate::compress::compress(&a, resp)).await
                }
                _ => resp,
            };
            resp.map(|b| Logged::new(b, tail))
        }
    }

    // (not an async fn: see `handle`)
    #[allow(clippy::manual_async_fn)]
    fn try_handle<'a>(
        &'a self,
        req: Request<ClientBody>,
        conn: &'a Arc<ConnInfo>,
        tail: &'a mut LogTail,
        encoded: bool,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
        async move {
            // 1. ACME HTTP-01 challenges: answered before any routing, redirect or proxying
            if !conn.tls {
                if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX) {
                    let answer = self
                        .challenges
                        .http_answer(token)
                        .ok_or(ProxyError::NotFound)?;
                    let mut resp = Response::new(Body::full(answer));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    return Ok(resp);
                }
            }
            if req.method().as_str() == "PURGE" {
                // cache purges belong on the admin listener only
                return Err(ProxyError::MethodNotAllowed(
                    "PURGE is for the admin listener",
                ));
            }
            if let Some(rate) = &self.rate {
                rate.check(conn.peer.ip())
                    .map_err(|retry_after| ProxyError::RateLimited { retry_after })?;
            }
            // 2. site and route
            let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
            if target_len > self.max_uri_length {
                return Err(ProxyError::UriTooLong {
                    limit: self.max_uri_length,
                });
            }
            let routes = &self.routes;
            let host = request_host(&req)?;
            let site_id = routes
                .site_for(host)
                .ok_or_else(|| ProxyError::UnknownHost {
                    host: host.to_owned(),
                    tls: conn.tls,
                })?;
            if let Some(sni) = &conn.sni {
                if routes.site_for(sni) != Some(site_id) {
                    return Err(ProxyError::Misdirected {
                        host: host.to_owned(),
                        sni: sni.to_string(),
                    });
                }
            }
            let site = routes.site(site_id);
            // 3. plain HTTP on a TLS site
            if site.redirect_http && !conn.tls {
                return Ok(self.https_redirect(host, req.uri()));
            }
            // Routes match the normalised path, so `//admin` or `/%61dmin` cannot slip past a
            // more specific `/admin/` route into a broader one.
            let path = normalize_path(req.uri().path())?;
            let route = site.route_for(&path).ok_or(ProxyError::NoRoute)?;
            tail.metrics = Some(route.metrics.clone());
            // 4. dispatch
            match &route.action {
                RouteAction::Static(files) => {
                    let due = match files.hot_hit(&req, tail.started(), encoded) {
                        Ok(resp) => return Ok(resp),
                        Err(due) => due,
                    };
                    let rel = rest_of_path(route, &path).to_owned();
                    // boxed: the path to disk is the rarer one, and its future (824 bytes) in
                    // place made every request's future larger (see `Writer`)
                    Box::pin(files.serve(req, &rel, due)).await
                }
                RouteAction::Redirect { status, to } => {
                    let uri = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
                    Ok(redirect(*status, &to.replace("{uri}", uri)))
                }
                RouteAction::Proxy(pool) => {
                    // Forwarded unchanged, unless the route strips its prefix from the normalised path.
                    let stripped = route.strip_prefix.then(|| rest_of_path(route, &path));
                    let uri = upstream_uri(req.uri(), stripped)?;
                    let key = match self.fresh_hit(route, &req, &uri, conn.tls, encoded) {
                        Ok(resp) => return Ok(resp),
                        Err(key) => key,
                    };
                    forward(self, pool, route, req, uri, key, conn, tail, encoded).await
                }
            }
        }
    }

    /// A fresh cache hit (see [`Cache::fresh_hit`] for which entries and requests qualify),
    /// answered before anything is taken apart for forwarding; otherwise the request's cache
    /// key when it could be taken here. That is on caching routes without key headers
    /// (theirs would read the rewritten headers), and not for an Upgrade request, which
    /// bypasses the cache.
    fn fresh_hit(
        &self,
        route: &RouteEntry,
        req: &Request<ClientBody>,
        uri: &Uri,
        tls: bool,
        encoded: bool,
    ) -> Result<Response<Body>, Option<Arc<str>>> {
        let (Some(rc), Some(cache)) = (&route.cache, &self.cache) else {
            return Err(None);
        };
        if !rc.key_headers.is_empty() || upgrade_protocol(req).is_some() {
            return Err(None);
        }
        let key = Cache::key(rc, tls, key_host(req), uri, req.headers());
        if cache::applies(req.method()) {
            if let Some(resp) = cache.fresh_hit(&key, req.method(), req.headers(), encoded) {
                return Ok(resp);
            }
        }
        Err(Some(key.into()))
    }

    fn https_redirect(&self, host: &str, uri: &Uri) -> Response<Body> {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let location = match self.https_port {
            Some(port) => format!("https://{host}:{port}{pq}"),
            None => format!("https://{host}{pq}"),
        };
        redirect(StatusCode::PERMANENT_REDIRECT, &location)
    }
}

/// The host part of a request's cache key: `:authority` (HTTP/2, absolute form), else the
/// Host header as sent.
fn key_host<B>(req: &Request<B>) -> &str {
    match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    }
}

/// What sends a response: usher's own HTTP/1.1 writer (`server/h1.rs`), which takes bodies
/// with an encoded head ([`Body::encoded`]), or hyper (HTTP/2, and HTTP/1.1 requests the
/// fast path leaves to it).
///
/// Either way a request's future holds its forwarding (a 4.6 KiB future: the cache, the
/// upstream pool, the send) in place. usher's HTTP/1.1 path keeps that future in the
/// session's, allocated once per session; hyper's service boxes it once per request
/// (`server/conn.rs`), since hyper moves each request's future by value and spawns each
/// HTTP/2 stream as a task. The rarer paths of a request (a file from disk, compression,
/// an upgrade, a request body to buffer) box their own large futures, so that every
/// request's future is not as large as theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    OwnH1,
    Hyper,
}

/// Step 5, forward to the route's pool (`uri` is the target to send, and `key` the cache key
/// when [`Proxy::fresh_hit`] took it): buffer the request body, rewrite headers,
/// `pool.send`, buffer the response, rewrite headers, respond. `encoded`: the response goes
/// to usher's HTTP/1.1 writer uncompressed, so an uncached one may keep the app's header
/// lines as they came, without a header map ([`PassedHead`]).
// Not an async fn: an async block uses its arguments in place, where an async fn's body
// copies them into locals (the request, 264 bytes, would be copied and held twice).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn forward<'a>(
    proxy: &'a Proxy,
    pool: &'a Arc<Pool>,
    route: &'a RouteEntry,
    mut req: Request<ClientBody>,
    uri: Uri,
    key: Option<Arc<str>>,
    conn: &'a Arc<ConnInfo>,
    tail: &'a mut LogTail,
    encoded: bool,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
    async move {
        let tunnel_idle = proxy.tunnel_idle;
        let policy = route.body;
        // An Upgrade request (WebSocket and the like, HTTP/1.1 only) keeps its upgrade headers
        // and, once the app answers 101, becomes a tunnel between the two connections.
        let upgrade = upgrade_protocol(&req);
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // The host the request was routed by: :authority on HTTP/2 and absolute-form targets
        // (request_host made sure a Host header agrees or is ignored), else Host as the client sent it.
        let from_authority = parts.uri.authority().is_some();
        let host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => parts.headers.get(header::HOST).cloned(),
        };
        parts.uri = uri;
        // gRPC clients send `TE: trailers` and gRPC servers insist on it; it is hop-by-hop, so
        // it is passed on only to an HTTP/2 upstream, where it is the one TE value allowed.
        let te_trailers = pool.speaks_h2() && te_trailers(&parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // X-Forwarded-*: kept aside for the upstream client to add (usher's HTTP/1.1 client
        // writes them as lines), set in the map here where it is read before the send: an
        // upgrade goes through hyper's client, and cache keys may name them
        let forwarding =
            Forwarding::take(&mut parts.headers, conn.peer.ip(), conn.tls, host.clone());
        let forwarding = if upgrade.is_some() || route.cache.is_some() {
            forwarding.apply(&mut parts.headers);
            None
        } else {
            Some(forwarding)
        };
        // (Host as the client sent it is there already)
        if let Some(h) = host.as_ref().filter(|_| from_authority) {
            parts.headers.insert(header::HOST, h.clone());
        }
        parts.version = Version::HTTP_11;
        if let (Some(protocol), Some(client_side)) = (upgrade, client_side) {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
            let req = Request::from_parts(parts, ReqBody::Client(body));
            // boxed: rare, and its future is large (every request's would be; see `Writer`)
            let (mut resp, upstream_conn, upstream) = Box::pin(pool.upgrade(req, conn.peer.ip()))
                .await
                .map_err(noted(tail))?;
            tail.upstream = Some(upstream);
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream_side = hyper::upgrade::on(&mut resp);
                let (mut parts, _) = resp.into_parts();
                let protocol = parts.headers.get(header::UPGRADE).cloned();
                strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(p) = protocol {
                    parts.headers.insert(header::UPGRADE, p);
                }
                tokio::spawn(tunnel(
                    client_side,
                    upstream_side,
                    upstream_conn,
                    tunnel_idle,
                    conn.clone(),
                ));
                return Ok(Response::from_parts(parts, Body::empty()));
            }
            // the app declined the upgrade: an ordinary response
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            return Ok(Response::from_parts(
                parts,
                Body::Upstream {
                    body: Box::new(UpstreamBody::new(
                        RespBody::Hyper(body),
                        upstream_conn,
                        pool.read_timeout(),
                        None,
                        None,
                    )),
                },
            ));
        }
        // The cache: a fresh entry answers here; a miss goes upstream (with validators when a
        // stale entry can be revalidated) and may be stored below.
        let mut pending = None;
        let mut invalidate = None;
        if let (Some(rc), Some(cache)) = (&route.cache, &proxy.cache) {
            // (with key headers, the key reads the headers as rewritten for the app)
            let key = match key {
                Some(k) => k,
                None => {
                    let host = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
                    Cache::key(rc, conn.tls, host, &parts.uri, &parts.headers).into()
                }
            };
            if cache::applies(&parts.method) {
                match cache.lookup(key, &parts, rc).await {
                    Lookup::Hit(resp) => return Ok(resp.map(Body::full)),
                    Lookup::Stale(resp, refresh) => {
                        if let Some(p) = refresh {
                            tokio::spawn(refresh_entry(
                                pool.clone(),
                                cache.clone(),
                                p,
                                parts,
                                conn.peer.ip(),
                            ));
                        }
                        return Ok(resp.map(Body::full));
                    }
                    Lookup::Miss(p) => {
                        // the cache fetches whole responses: the client's own conditionals
                        // are answered from what comes back
                        parts.headers.remove(header::IF_NONE_MATCH);
                        parts.headers.remove(header::IF_MODIFIED_SINCE);
                        parts.headers.extend(p.revalidate.clone());
                        pending = Some(p);
                    }
                }
            } else if cache::invalidates(&parts.method) {
                invalidate = Some(key);
            }
        }
        let body = request_body(proxy, policy, &mut parts, body).await?;
        // (the cache and its validators read the response's headers)
        let pass = encoded && pending.is_none() && invalidate.is_none();
        let mut upstream_req = Request::from_parts(parts, body);
        let sent = match pool
            .send(&mut upstream_req, conn.peer.ip(), pass, forwarding.as_ref())
            .await
        {
            Ok(sent) => sent,
            Err((e, upstream)) => {
                tail.upstream = Some(upstream);
                let stale = pending
                    .as_ref()
                    .zip(route.cache.as_ref())
                    .zip(proxy.cache.as_ref())
                    .and_then(|((p, rc), c)| c.stale_on_error(p, rc));
                return match stale {
                    Some(resp) => {
                        tracing::warn!(error = %e, "upstream failed; serving a stale cached response");
                        Ok(resp.map(Body::full))
                    }
                    None => Err(e),
                };
            }
        };
        // The request's map is kept for a next request's head. (The rest of the request, with
        // its body spent, goes with this future: a `drop` here would move, so copy, it first.)
        crate::headers::recycle(std::mem::take(upstream_req.headers_mut()));
        tail.upstream = Some(sent.upstream);
        let (mut parts, body) = sent.response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let (Some(key), Some(cache)) = (invalidate, &proxy.cache) {
            if parts.status.is_success() || parts.status.is_redirection() {
                let key_headers = route
                    .cache
                    .as_ref()
                    .is_some_and(|c| !c.key_headers.is_empty());
                cache.invalidate(&key, key_headers);
            }
        }
        // (boxed at once: it is large, and a box moves as a pointer from here on)
        let mut body = Box::new(UpstreamBody::new(
            body,
            sent.conn,
            pool.read_timeout(),
            Some(sent.in_flight),
            sent.read,
        ));
        if let (Some(p), Some(rc), Some(cache)) = (&pending, &route.cache, &proxy.cache) {
            if parts.status.is_server_error() {
                if let Some(resp) = cache.stale_on_error(p, rc) {
                    return Ok(resp.map(Body::full));
                }
            }
            match cache.after(p, &parts) {
                After::Refreshed(resp) => return Ok(resp.map(Body::full)),
                After::Store(cache_policy) => {
                    let len = http_body::Body::size_hint(&body).exact();
                    if let Some(len) = len.filter(|n| *n <= cache.max_entry() as u64) {
                        let data = http_body_util::BodyExt::collect(body)
                            .await
                            .map_err(|e| {
                                tracing::debug!(error = %e, "upstream body failed while caching");
                                ProxyError::UpstreamBody
                            })?
                            .to_bytes();
                        debug_assert_eq!(data.len() as u64, len);
                        return Ok(cache.store(p, *cache_policy, &parts, data).map(Body::full));
                    }
                    cache::set_status(&mut parts.headers, "fwd=miss; detail=too-large");
                }
                After::Pass => {
                    let fwd = if Cache::had_stale(p) {
                        "fwd=stale"
                    } else {
                        "fwd=miss"
                    };
                    cache::set_status(&mut parts.headers, fwd);
                }
            }
        }
        // Response buffering: read the app's response as fast as it comes, so its connection
        // and worker are free while a slow client downloads. Never for event streams and gRPC
        // (each message must go out as it comes) or bodies already complete.
        let declared = http_body::Body::size_hint(&body).exact();
        // A body that fits the connection's own buffers (hyper's HTTP/1 write buffer, an HTTP/2
        // stream's initial window) is drained from the app at once whatever the client's pace:
        // buffering it would only add work (measured: 2 us a request on HTTP/2).
        let fits_in_flight = declared.is_some_and(|n| n <= PASS_LIMIT);
        let stream = body
            .passed_head()
            .map_or_else(|| is_stream(&parts), PassedHead::is_stream);
        if !policy.buffer_responses || body.is_end_stream() || fits_in_flight || stream {
            return Ok(Response::from_parts(parts, Body::Upstream { body }));
        }
        // (the bodies below carry no lines of their own: back to a header map)
        if let Some(passed) = body.take_passed_head() {
            parts.headers = passed.into_headers();
        }
        // A small body of known length is read whole right here (the common API response:
        // no task, no lock); anything else is read ahead on a task of its own, and flows on to
        // the client as it comes.
        let small =
            declared.filter(|n| *n <= HOLD_LIMIT.min(proxy.buffers.response_memory()) as u64);
        let body = match small {
            Some(len) => match buffer::hold_response(*body, len, &proxy.buffers).await {
                Ok(Ok(held)) => Body::Held {
                    body: Box::new(held),
                },
                Ok(Err(body)) => Body::Spooled {
                    body: Box::new(buffer::spool_response(
                        body,
                        &proxy.buffers,
                        &proxy.timeouts,
                    )),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "upstream response body failed");
                    return Err(ProxyError::UpstreamBody);
                }
            },
            None => Body::Spooled {
                body: Box::new(buffer::spool_response(
                    *body,
                    &proxy.buffers,
                    &proxy.timeouts,
                )),
            },
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// Refreshes a cache entry served stale (stale-while-revalidate) with one request of its
/// own: a 304 renews it, a new storable response replaces it.
async fn refresh_entry(
    pool: Arc<Pool>,
    cache: Arc<Cache>,
    pending: Box<cache::Pending>,
    mut parts: http::request::Parts,
    client: std::net::IpAddr,
) {
    parts.headers.remove(header::IF_NONE_MATCH);
    parts.headers.remove(header::IF_MODIFIED_SINCE);
    parts.headers.extend(pending.revalidate.clone());
    // (the method the cache asks for: a GET where a HEAD was answered stale)
    parts.method = pending.method().clone();
    let mut req = Request::from_parts(parts, ReqBody::Empty);
    let sent = match pool.send(&mut req, client, false, None).await {
        Ok(sent) => sent,
        Err((e, _)) => {
            tracing::debug!(error = %e, "background refresh of a cache entry failed");
            return;
        }
    };
    let (mut head, body) = sent.response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let body = UpstreamBody::new(
        body,
        sent.conn,
        pool.read_timeout(),
        Some(sent.in_flight),
        sent.read,
    );
    if let After::Store(policy) = cache.after(&pending, &head) {
        let len = http_body::Body::size_hint(&body).exact();
        if len.is_some_and(|n| n <= cache.max_entry() as u64) {
            if let Ok(data) = http_body_util::BodyExt::collect(body).await {
                cache.store(&pending, *policy, &head, data.to_bytes());
            }
        }
    }
}

/// The request body to send upstream. With request buffering (the route's default), the
/// whole body is read first, under the body-phase timeouts and the size limit, and sent
/// with a Content-Length (a chunked upload is de-chunked). gRPC requests stream: their
/// messages may depend on the answers.
async fn request_body(
    proxy: &Proxy,
    policy: BodyPolicy,
    parts: &mut http::request::Parts,
    body: ClientBody,
) -> Result<ReqBody, ProxyError> {
    if body.is_end_stream() {
        return Ok(ReqBody::Empty);
    }
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > policy.max_body_size)
    {
        return Err(ProxyError::BodyTooLarge {
            limit: policy.max_body_size,
        });
    }
    let grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !policy.buffer_requests || grpc {
        return Ok(ReqBody::Client(body));
    }
    let spooled =
        // boxed: only requests with a body pay for its large future (see `Writer`)
        Box::pin(buffer::read_request(
            body,
            policy.max_body_size,
            &proxy.buffers,
            &proxy.timeouts,
        ))
        .await?;
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(spooled.size()));
    Ok(ReqBody::Buffered(spooled.body()))
}

/// Whether a response is a stream by nature, whose pieces must go out as they come:
/// server-sent events and gRPC (server streaming).
fn is_stream(parts: &http::response::Parts) -> bool {
    parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"text/event-stream") || v.starts_with(b"application/grpc")
    })
}

/// Records which upstream a failed attempt was for, then passes the error on.
fn noted(tail: &mut LogTail) -> impl FnOnce((ProxyError, Arc<str>)) -> ProxyError + '_ {
    move |(e, upstream)| {
        tail.upstream = Some(upstream);
        e
    }
}

/// Whether the client's `TE` lists `trailers`.
fn te_trailers(headers: &http::HeaderMap) -> bool {
    list_items(headers, header::TE).any(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("trailers")
    })
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks =
        list_items(req.headers(), header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes
/// or nothing moves for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    conn: PooledConn,
    idle: Duration,
    // keeps the client connection counted under the connection caps until the tunnel ends
    _conn_info: Arc<ConnInfo>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut c, mut u) = (
        hyper_util::rt::TokioIo::new(c),
        hyper_util::rt::TokioIo::new(u),
    );
    let (mut from_client, mut from_upstream) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let idle_for = tokio::time::sleep(idle);
    tokio::pin!(idle_for);
    loop {
        tokio::select! {
            r = c.read(&mut from_client) => match r {
                Ok(n) if n > 0 && u.write_all(&from_client[..n]).await.is_ok() => {}
                _ => break,
            },
            r = u.read(&mut from_upstream) => match r {
                Ok(n) if n > 0 && c.write_all(&from_upstream[..n]).await.is_ok() => {}
                _ => break,
            },
            _ = idle_for.as_mut() => {
                tracing::debug!(?idle, "closing an idle tunnel");
                break;
            }
        }
        idle_for.as_mut().reset(tokio::time::Instant::now() + idle);
    }
    let _ = c.shutdown().await;
    let _ = u.shutdown().await;
    drop(conn);
}

/// The origin-form URI sent upstream: the path (minus the route prefix if it strips) and query.
fn upstream_uri(uri: &Uri, stripped: Option<&str>) -> Result<Uri, ProxyError> {
    let bad = |_| ProxyError::BadRequest("path cannot be forwarded");
    let Some(rest) = stripped else {
        return match uri.path_and_query() {
            Some(pq) => Ok(Uri::from(pq.clone())),
            None => Ok(Uri::from_static("/")),
        };
    };
    let mut s = String::with_capacity(rest.len() + 1 + uri.query().map_or(0, |q| q.len() + 1));
    if !rest.starts_with('/') {
        s.push('/');
    }
    s.push_str(rest);
    if let Some(q) = uri.query() {
        s.push('?');
        s.push_str(q);
    }
    Uri::try_from(s).map_err(bad)
}

/// The request path below the route's prefix when the route strips it, else the whole path.
fn rest_of_path<'a>(route: &RouteEntry, path: &'a str) -> &'a str {
    if route.strip_prefix {
        path.strip_prefix(route.path.as_str()).unwrap_or(path)
    } else {
        path
    }
}

/// The host a request names, without port: `:authority` on HTTP/2 (and absolute-form
/// HTTP/1.1), else the Host header. HTTP/1.1 without Host is a 400 (RFC 9112 section 3.2).
///
/// With an authority, a Host header is ignored on HTTP/1.1 (RFC 9112 section 3.2.2: `forward`
/// replaces it) and must agree on HTTP/2 (RFC 9113 section 8.3.1), so routing, the SNI check
/// and the upstream all see one host.
fn request_host<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(a) = req.uri().authority() {
        if req.version() == Version::HTTP_2
            && first.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()))
        {
            return Err(ProxyError::BadRequest("Host differs from :authority"));
        }
        return Ok(host_without_port(a.as_str()));
    }
    match first {
        Some(h) => h
            .to_str()
            .map(host_without_port)
            .map_err(|_| ProxyError::BadRequest("Host is not valid text")),
        None if req.version() == Version::HTTP_10 => Ok(""),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

fn error_response(e: &ProxyError) -> Response<Body> {
    let mut resp = Response::new(Body::full(e.body()));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        // the pool is full right now; a moment later it may not be
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let ProxyError::RateLimited { retry_after } = e {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    if matches!(
        e,
        ProxyError::BodyTooLarge { .. } | ProxyError::ClientTimeout(_)
    ) {
        // the rest of the request body may still be on its way: close rather than read it
        // (HTTP/2 drops the header and resets just the stream)
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RouteAction;

    fn route(path: &str, strip: bool) -> RouteEntry {
        RouteEntry {
            path: path.into(),
            strip_prefix: strip,
            body: BodyPolicy {
                buffer_requests: true,
                buffer_responses: true,
                max_body_size: 1 << 20,
            },
            cache: None,
            metrics: crate::metrics::Metrics::new().unrouted.clone(),
            action: RouteAction::Redirect {
                status: StatusCode::FOUND,
                to: "/".into(),
            },
        }
    }

    #[test]
    fn upstream_uri_keeps_or_strips_the_prefix() {
        let uri: Uri = "https://h/api/users?x=1".parse().unwrap();
        let strip = |r: &RouteEntry| Some(rest_of_path(r, uri.path()).to_owned());
        assert_eq!(upstream_uri(&uri, None).unwrap(), "/api/users?x=1");
        let s = strip(&route("/api/", true));
        assert_eq!(upstream_uri(&uri, s.as_deref()).unwrap(), "/users?x=1");
        let s = strip(&route("/api", true));
        assert_eq!(upstream_uri(&uri, s.as_deref()).unwrap(), "/users?x=1");
        let root: Uri = "/api/".parse().unwrap();
        assert_eq!(upstream_uri(&root, Some("")).unwrap(), "/");
    }

    #[test]
    fn host_comes_from_authority_then_header() {
        let get = |uri: &str| Request::get(uri);
        let req = get("https://Example.com:8443/x").body(()).unwrap();
        assert_eq!(request_host(&req).unwrap(), "Example.com");
        let req = get("/x").header("host", "a.test:80").body(()).unwrap();
        assert_eq!(request_host(&req).unwrap(), "a.test");
        let req = get("/x").body(()).unwrap();
        assert!(request_host(&req).is_err());
        let req = get("/x")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert!(
            request_host(&req).is_err(),
            "two Host headers: 400 (RFC 9112 3.2)"
        );
        // absolute form: the authority wins on HTTP/1.1, and must agree on HTTP/2
        let req = get("https://a.test/x")
            .header("host", "b.test")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).unwrap(), "a.test");
        let h2 = |host: &str| {
            get("https://a.test/x")
                .version(Version::HTTP_2)
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert!(request_host(&h2("b.test")).is_err());
        assert_eq!(request_host(&h2("A.test")).unwrap(), "a.test");
    }
}
