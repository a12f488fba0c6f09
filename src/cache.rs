//! The response cache: a shared cache after RFC 9111 for routes with `cache = { ... }`.
//!
//! The rules (storability, freshness, Vary, validation, Age) are the http-cache-semantics
//! crate's; this module keeps entries in a memory tier bounded in bytes (moka, TinyLFU
//! admission and LRU eviction), makes concurrent misses for one key share one upstream
//! request, and reports what happened in a `Cache-Status` header (RFC 9211). With
//! `[cache] disk_dir`, entries are also written to a disk tier ([`disk`]) that outlives
//! restarts; a memory miss looks there before going upstream.

mod disk;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest, CachePolicy};

use crate::body::Body;
use crate::config::{CacheSettings, RouteCache};
use crate::error::StartupError;
use crate::headers::list_items;
use crate::wire::EncodedHead;

/// The longest a request waits for another one fetching the same key; then it goes
/// upstream itself.
const COALESCE_WAIT: Duration = Duration::from_secs(5);

/// Bytes counted for an entry's headers (the policy keeps the request's and the response's,
/// the entry the response's): an estimate is enough for the memory bound.
const HEADER_ESTIMATE: usize = 768;

/// The `Cache-Status` cache name.
const NAME: &str = "usher";

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    policy: CachePolicy,
    status: StatusCode,
    /// The response headers as stored (hop-by-hop removed).
    headers: HeaderMap,
    body: Bytes,
    stored: SystemTime,
    /// For an entry whose freshness is its lifetime alone (see [`Cache::fresh_hit`]).
    simple: Option<Simple>,
}

/// An entry without Vary, `no-cache` or `must-revalidate`: fresh until `fresh_until` for any
/// request that brings no directives of its own.
#[derive(Debug)]
struct Simple {
    fresh_until: SystemTime,
    /// Its age when stored (the app's Age header, and time in transit).
    age_at_store: Duration,
    /// The headers a hit sends: the stored ones with an Age and a Cache-Status already in
    /// place, so a hit fills those in on a clone of this map instead of growing the clone.
    head: HeaderMap,
    /// The same encoded, for usher's HTTP/1.1 path; a hit numbers its [`HIT_LINES`].
    encoded: Option<Arc<EncodedHead>>,
}

/// The lines of an encoded hit's head that each hit numbers: its Age, and the seconds it
/// stays fresh (`Cache-Status: usher; hit; ttl=N`, as [`status_value`] makes it).
const HIT_LINES: &[&str] = &["age: ", "cache-status: usher; hit; ttl="];

/// The cache shared by every caching route.
pub struct Cache {
    store: moka::sync::Cache<Arc<str>, Arc<Entry>, crate::routing::FastHash>,
    /// The disk tier, when configured.
    disk: Option<Arc<disk::Disk>>,
    /// What it was made with.
    settings: CacheSettings,
    /// Lookups that were hits, misses, and stale entries served.
    counts: [std::sync::atomic::AtomicU64; 3],
    /// Keys being fetched now, with the signal their waiters wait on.
    fetching: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Notify>>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.store.entry_count())
            .field("bytes", &self.store.weighted_size())
            .finish()
    }
}

const HIT: usize = 0;
const MISS: usize = 1;
const STALE: usize = 2;

/// A cache's figures.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub entries: u64,
    /// Weighed bytes in memory.
    pub bytes: u64,
    /// Bytes of the disk tier's files.
    pub disk_bytes: Option<u64>,
}

/// What a lookup found.
pub enum Lookup {
    /// A fresh entry: the response to send.
    Hit(http::Response<Bytes>),
    /// Nothing usable: go upstream (with these revalidation headers added, when a stale
    /// entry has a validator), then call [`Cache::after`].
    Miss(Box<Pending>),
    /// A stale entry within stale-while-revalidate: send this now, and refresh the entry in
    /// the background through the pending request (`None` when another refresh is under
    /// way).
    Stale(http::Response<Bytes>, Option<Box<Pending>>),
}

/// A request going upstream on behalf of the cache.
pub struct Pending {
    key: Arc<str>,
    /// The request's head, as the cache policy needs it.
    request: http::request::Parts,
    /// A stale entry for this key, if any.
    stale: Option<Arc<Entry>>,
    /// Headers to add to the upstream request (If-None-Match, If-Modified-Since).
    pub revalidate: HeaderMap,
    /// Set while this request fetches the key for others waiting.
    _leader: Option<Leader>,
}

impl Pending {
    /// The method to send the request with.
    pub fn method(&self) -> &Method {
        &self.request.method
    }
}

/// Wakes the requests waiting for this key when the fetch ends, however it ends.
struct Leader {
    cache: Arc<Cache>,
    key: Arc<str>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        let n = self
            .cache
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }
}

/// Whether the cache applies to a request at all (GET and HEAD, no Upgrade).
pub fn applies(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Whether a request's method makes a successful response invalidate the target.
pub fn invalidates(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

impl Cache {
    /// A cache with the configured memory tier, and the disk tier if configured (its
    /// folder created if need be, and indexed). Fails when that folder is not usable.
    pub fn new(settings: &CacheSettings) -> Result<Arc<Cache>, StartupError> {
        let disk = match &settings.disk {
            Some(d) => Some(disk::Disk::open(&d.dir, d.size).map_err(|reason| {
                StartupError::CacheFolder {
                    path: d.dir.clone(),
                    reason,
                }
            })?),
            None => None,
        };
        let store = moka::sync::Cache::builder()
            .max_capacity(settings.memory)
            .weigher(|k: &Arc<str>, e: &Arc<Entry>| {
                // (an entry answered by the fast path keeps its headers twice, and encoded)
                let copies = 1 + usize::from(e.simple.is_some());
                let encoded = e.simple.as_ref().and_then(|s| s.encoded.as_ref());
                let headers = (HEADER_ESTIMATE * copies)
                    .saturating_add(encoded.map_or(0, |h| h.size()))
                    .saturating_add(k.len());
                u32::try_from(e.body.len().saturating_add(headers)).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .build_with_hasher(Default::default());
        Ok(Arc::new(Cache {
            store,
            disk,
            settings: settings.clone(),
            counts: Default::default(),
            fetching: Mutex::new(HashMap::new()),
        }))
    }

    /// The entry for `key` in memory, or else on disk (then kept in memory too), and
    /// whether it came from disk.
    async fn get(&self, key: &Arc<str>) -> (Option<Arc<Entry>>, bool) {
        if let Some(e) = self.store.get(key) {
            return (Some(e), false);
        }
        let Some(disk) = &self.disk else {
            return (None, false);
        };
        let ticket = disk.ticket(key);
        let found = disk.read(key).await.map(Arc::new);
        if let Some(e) = &found {
            // not if a purge came meanwhile: this request may have it, later ones not
            if !ticket.removed() {
                self.store.insert(key.clone(), e.clone());
            }
        }
        disk.release(ticket);
        let from_disk = found.is_some();
        (found, from_disk)
    }

    /// Keeps `entry` for `key` in memory, and on disk when there is a disk tier.
    fn put(&self, key: &Arc<str>, entry: &Arc<Entry>) {
        // the ticket first: a purge from now on undoes the disk write
        let ticket = self.disk.as_ref().map(|d| d.ticket(key));
        self.store.insert(key.clone(), entry.clone());
        if let (Some(disk), Some(ticket)) = (&self.disk, ticket) {
            disk.write(key.clone(), entry.clone(), ticket);
        }
    }

    /// What it was made with.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Lookups so far (hits, misses, stale served) and what it holds now.
    pub fn stats(&self) -> CacheStats {
        let n = |i: usize| self.counts[i].load(std::sync::atomic::Ordering::Relaxed);
        CacheStats {
            hits: n(HIT),
            misses: n(MISS),
            stale: n(STALE),
            entries: self.store.entry_count(),
            bytes: self.store.weighted_size(),
            disk_bytes: self.disk.as_ref().map(|d| d.bytes()),
        }
    }

    fn count(&self, what: usize) {
        self.counts[what].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers from memory a fresh entry whose freshness is its lifetime alone (no Vary, no
    /// revalidation directive) for a request that brings no directives of its own (no
    /// Cache-Control, Pragma or Authorization): the result the full rules give, without
    /// evaluating them. `None` sends the request the full way.
    /// With `encoded`, the answer may come with an encoded head (see [`Body::encoded`]).
    pub fn fresh_hit(
        &self,
        key: &str,
        method: &Method,
        req_headers: &HeaderMap,
        encoded: bool,
    ) -> Option<http::Response<Body>> {
        const DIRECTIVES: [HeaderName; 3] =
            [header::CACHE_CONTROL, header::PRAGMA, header::AUTHORIZATION];
        // one look at each name (standard names compare as numbers) instead of three lookups
        if req_headers.keys().any(|k| DIRECTIVES.contains(k)) {
            return None;
        }
        let e = self.store.get(key)?;
        let simple = e.simple.as_ref()?;
        // (HTTP counts ages in seconds: a coarse reading, see `clock`. It may say fresh for a
        // tick or two past the expiry, which the full path, reading the precise clock, would
        // not.)
        let now = crate::clock::coarse_wall();
        let left = simple.fresh_until.duration_since(now).ok()?;
        let age = simple.age_at_store + now.duration_since(e.stored).unwrap_or_default();
        self.count(HIT);
        if let (true, Some(head)) = (encoded, &simple.encoded) {
            // (a 304 for the client's own validator takes the path below)
            if !client_validator_matches(req_headers, &e.headers) {
                let data = (method != Method::HEAD).then(|| e.body.clone());
                let numbers = [age.as_secs(), left.as_secs()];
                let mut resp = http::Response::new(Body::encoded(data, head.clone(), numbers));
                *resp.status_mut() = e.status;
                return Some(resp);
            }
        }
        let mut headers = simple.head.clone();
        if let Some(v) = headers.get_mut(header::AGE) {
            *v = HeaderValue::from(age.as_secs());
        }
        let status = status_value("hit; ttl=", Some(left.as_secs()), "");
        if let (Some(v), Some(status)) = (headers.get_mut(CACHE_STATUS), status) {
            *v = status;
        }
        Some(e.build(headers, method, req_headers).map(Body::full))
    }

    /// Waits for the disk writes under way.
    pub async fn flush(&self) {
        if let Some(disk) = &self.disk {
            disk.flush().await;
        }
    }

    /// The cache key: scheme, host, path and query (unless the route ignores it), and the
    /// route's key headers.
    pub fn key(
        route: &RouteCache,
        tls: bool,
        host: &str,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> String {
        let mut k = String::with_capacity(64);
        k.push_str(if tls { "https://" } else { "http://" });
        let at = k.len();
        k.push_str(host);
        k[at..].make_ascii_lowercase();
        k.push_str(uri.path());
        if let (Some(q), false) = (uri.query(), route.ignore_query) {
            k.push('?');
            k.push_str(q);
        }
        for h in &route.key_headers {
            k.push('\n');
            k.push_str(h.as_str());
            k.push(':');
            for v in headers.get_all(h) {
                if CREDENTIALS.contains(h) {
                    k.push_str(&format!("{:x}", credential_hash(v.as_bytes())));
                } else {
                    k.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                k.push(',');
            }
        }
        k
    }

    /// Looks `key` up for the request `parts`: a fresh entry is a hit; otherwise the caller
    /// goes upstream, after waiting (bounded) for another request fetching the same key.
    pub async fn lookup(
        self: &Arc<Self>,
        key: Arc<str>,
        parts: &http::request::Parts,
        route: &RouteCache,
    ) -> Lookup {
        let mut waited = false;
        // a HEAD is answered from a GET's entry: judge it as that GET
        let as_get;
        let judged = if parts.method == Method::HEAD || has_credentials(&parts.headers) {
            as_get = policy_view(parts, Method::GET);
            &as_get
        } else {
            parts
        };
        loop {
            let (entry, from_disk) = self.get(&key).await;
            if let Some(e) = &entry {
                match e.policy.before_request(judged, SystemTime::now()) {
                    BeforeRequest::Fresh(head) => {
                        self.count(HIT);
                        return Lookup::Hit(e.respond(head, parts, from_disk));
                    }
                    BeforeRequest::Stale { request, matches } if matches && e.within_swr(route) => {
                        // serve it now; one background request refreshes it
                        let mut resp = e.respond_stale(parts);
                        set_status(
                            resp.headers_mut(),
                            "fwd=stale; detail=stale-while-revalidate",
                        );
                        let leader = {
                            let mut fetching =
                                self.fetching.lock().unwrap_or_else(|e| e.into_inner());
                            let free = !fetching.contains_key(&key);
                            if free {
                                fetching.insert(key.clone(), Arc::new(tokio::sync::Notify::new()));
                            }
                            free
                        };
                        let pending = leader.then(|| {
                            // (a HEAD's refresh fetches the GET it was answered from, as
                            // nginx's proxy_cache_convert_head does: a HEAD's answer stores
                            // nothing)
                            let mut p = self.pending_as(
                                key.clone(),
                                parts,
                                Method::GET,
                                entry.clone(),
                                request.headers,
                            );
                            p._leader = Some(Leader {
                                cache: self.clone(),
                                key: key.clone(),
                            });
                            Box::new(p)
                        });
                        self.count(STALE);
                        return Lookup::Stale(resp, pending);
                    }
                    BeforeRequest::Stale { request, matches } if matches => {
                        // revalidate (or refetch) through this request
                        self.count(MISS);
                        return Lookup::Miss(Box::new(self.pending(
                            key,
                            parts,
                            entry,
                            request.headers,
                        )));
                    }
                    BeforeRequest::Stale { .. } => {}
                }
            }
            // join a fetch of this key already under way, once and for a bounded time
            let notify = {
                let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
                match fetching.get(&key) {
                    Some(n) if !waited => Some(n.clone()),
                    Some(_) => None,
                    None => {
                        fetching.insert(key.clone(), Arc::new(tokio::sync::Notify::new()));
                        drop(fetching);
                        let mut p = self.pending(key.clone(), parts, entry, HeaderMap::new());
                        p._leader = Some(Leader {
                            cache: self.clone(),
                            key,
                        });
                        self.count(MISS);
                        return Lookup::Miss(Box::new(p));
                    }
                }
            };
            match notify {
                Some(n) => {
                    let notified = n.notified();
                    tokio::pin!(notified);
                    // registered before the check, so a fetch ending meanwhile is not missed
                    notified.as_mut().enable();
                    if self
                        .fetching
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(&key)
                    {
                        let _ = tokio::time::timeout(COALESCE_WAIT, notified).await;
                    }
                    waited = true;
                }
                None => {
                    self.count(MISS);
                    return Lookup::Miss(Box::new(self.pending(
                        key,
                        parts,
                        entry,
                        HeaderMap::new(),
                    )));
                }
            }
        }
    }

    fn pending(
        &self,
        key: Arc<str>,
        parts: &http::request::Parts,
        stale: Option<Arc<Entry>>,
        revalidation_headers: HeaderMap,
    ) -> Pending {
        let method = parts.method.clone();
        self.pending_as(key, parts, method, stale, revalidation_headers)
    }

    /// [`Cache::pending`] for `parts` sent as `method`.
    fn pending_as(
        &self,
        key: Arc<str>,
        parts: &http::request::Parts,
        method: Method,
        stale: Option<Arc<Entry>>,
        revalidation_headers: HeaderMap,
    ) -> Pending {
        let request = policy_view(parts, method);
        // only the validators the policy added, not the client's own conditionals
        let mut revalidate = HeaderMap::new();
        if stale.is_some() {
            for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                if let Some(v) = revalidation_headers.get(&name) {
                    revalidate.insert(name, v.clone());
                }
            }
        }
        Pending {
            key,
            request,
            stale,
            revalidate,
            _leader: None,
        }
    }

    /// A stale entry to serve when the app failed, if the route's `stale_if_error` (or the
    /// entry's own `stale-if-error`) still covers it.
    pub fn stale_on_error(
        &self,
        pending: &Pending,
        route: &RouteCache,
    ) -> Option<http::Response<Bytes>> {
        let e = pending.stale.as_ref()?;
        let allowed = route.stale_if_error.max(e.stale_if_error());
        let age = SystemTime::now()
            .duration_since(e.stored)
            .unwrap_or_default();
        let ttl = e.policy.time_to_live(e.stored);
        if allowed.is_zero() || age > ttl + allowed {
            return None;
        }
        let mut resp = e.respond_stale(&pending.request);
        set_status(resp.headers_mut(), "fwd=stale; detail=stale-if-error");
        self.count(STALE);
        Some(resp)
    }

    /// What to make of the upstream's response head: a 304 to a revalidation refreshes the
    /// stale entry and answers from it; a storable response is to be stored once its body is
    /// read ([`Cache::store`]); anything else passes through.
    pub fn after(&self, pending: &Pending, head: &http::response::Parts) -> After {
        let now = SystemTime::now();
        if let (Some(e), StatusCode::NOT_MODIFIED) = (&pending.stale, head.status) {
            if let AfterResponse::NotModified(policy, parts) =
                e.policy.after_response(&pending.request, head, now)
            {
                let entry = Arc::new(Entry::new(
                    policy,
                    e.status,
                    parts.headers.clone(),
                    e.body.clone(),
                    now,
                ));
                self.put(&pending.key, &entry);
                let mut resp = entry.build(
                    parts.headers,
                    &pending.request.method,
                    &pending.request.headers,
                );
                set_status(resp.headers_mut(), "fwd=stale; fwd-status=304; stored");
                return After::Refreshed(resp);
            }
        }
        if sets_cookie_privately(&head.headers) {
            return After::Pass;
        }
        let policy = CachePolicy::new(&pending.request, head);
        if policy.is_storable() && pending.request.method == Method::GET {
            return After::Store(Box::new(policy));
        }
        After::Pass
    }

    /// The most a stored body may hold.
    pub fn max_entry(&self) -> usize {
        self.settings.max_entry
    }

    /// Stores a complete response read for `pending` and answers the request from it (a
    /// 304 when the client's own validator matches).
    pub fn store(
        &self,
        pending: &Pending,
        policy: CachePolicy,
        head: &http::response::Parts,
        body: Bytes,
    ) -> http::Response<Bytes> {
        let entry = Arc::new(Entry::new(
            policy,
            head.status,
            head.headers.clone(),
            body,
            SystemTime::now(),
        ));
        if entry.body.len() <= self.settings.max_entry {
            self.put(&pending.key, &entry);
        }
        let mut resp = entry.respond_stale(&pending.request);
        let ttl = entry.policy.time_to_live(SystemTime::now()).as_secs();
        set_status_ttl(resp.headers_mut(), "fwd=miss; stored; ttl=", ttl, "");
        resp
    }

    /// Whether a stale entry was found for `pending` (for Cache-Status).
    pub fn had_stale(pending: &Pending) -> bool {
        pending.stale.is_some()
    }

    /// Drops the entries for `host` and `path` (any scheme, query and key headers), or with
    /// `prefix` every entry whose path starts with `path`.
    pub fn purge(&self, host: &str, path: &str, prefix: bool) {
        let (host, path) = (host.to_ascii_lowercase(), path.to_owned());
        // memory first, then disk (see disk::Disk::ticket)
        let (h, p) = (host.clone(), path.clone());
        let _ = self
            .store
            .invalidate_entries_if(move |k, _| purge_matches(k, &h, &p, prefix));
        if let Some(disk) = &self.disk {
            disk.remove_if(|k| purge_matches(k, &host, &path, prefix));
        }
    }

    /// Drops every entry for the target of an unsafe request that succeeded (RFC 9111
    /// section 4.4), whatever its key headers (`key_headers`: whether the route adds any,
    /// so the disk tier's index must be searched for them).
    pub fn invalidate(&self, key: &str, key_headers: bool) {
        let base: Arc<str> = key.split('\n').next().unwrap_or(key).into();
        // memory first, then disk (see disk::Disk::ticket)
        let b = base.clone();
        let _ = self
            .store
            .invalidate_entries_if(move |k, _| k.split('\n').next() == Some(&*b));
        if let Some(disk) = &self.disk {
            disk.remove(&base);
            if key_headers {
                disk.remove_if(|k| k.split('\n').next() == Some(&*base));
            }
        }
    }
}

/// The cache's verdict on an upstream response.
pub enum After {
    /// The stale entry was still good (304): answer with this.
    Refreshed(http::Response<Bytes>),
    /// Storable: read the body, then [`Cache::store`] it with this policy.
    Store(Box<CachePolicy>),
    /// Not storable: pass it through.
    Pass,
}

impl Entry {
    fn new(
        policy: CachePolicy,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        stored: SystemTime,
    ) -> Entry {
        let mut e = Entry {
            policy,
            status,
            headers,
            body,
            stored,
            simple: None,
        };
        let ttl = e.policy.time_to_live(stored);
        let plain = !e.headers.contains_key(header::VARY)
            && !e.directive_present("no-cache")
            && !e.directive_present("must-revalidate")
            && !e.directive_present("proxy-revalidate");
        if plain && !ttl.is_zero() {
            let mut head = e.headers.clone();
            head.insert(header::AGE, HeaderValue::from_static("0"));
            head.insert(CACHE_STATUS, HeaderValue::from_static(NAME));
            let len = e.body.len() as u64;
            e.simple = Some(Simple {
                fresh_until: stored + ttl,
                age_at_store: e.policy.age(stored),
                head,
                encoded: EncodedHead::new(e.status, &e.headers, len, HIT_LINES).map(Arc::new),
            });
        }
        e
    }

    /// `stale-if-error=N` from the stored response's Cache-Control.
    fn stale_if_error(&self) -> Duration {
        self.directive("stale-if-error=")
    }

    /// `NAME=N` seconds from the stored response's Cache-Control (zero when absent).
    fn directive(&self, name: &str) -> Duration {
        list_items(&self.headers, header::CACHE_CONTROL)
            .find_map(|d| d.strip_prefix(name)?.trim().parse().ok())
            .map_or(Duration::ZERO, Duration::from_secs)
    }

    /// Whether it went stale less than stale-while-revalidate ago (the route's default or
    /// the response's own directive), and may be served while it is refreshed. Never for
    /// responses that must be revalidated first.
    fn within_swr(&self, route: &RouteCache) -> bool {
        let allowed = route
            .stale_while_revalidate
            .max(self.directive("stale-while-revalidate="));
        if allowed.is_zero()
            || self.directive_present("must-revalidate")
            || self.directive_present("no-cache")
        {
            return false;
        }
        let age = SystemTime::now()
            .duration_since(self.stored)
            .unwrap_or_default();
        age <= self.policy.time_to_live(self.stored) + allowed
    }

    fn directive_present(&self, name: &str) -> bool {
        list_items(&self.headers, header::CACHE_CONTROL).any(|d| d.eq_ignore_ascii_case(name))
    }

    /// A hit: the stored response with the policy's current headers (Age), or a 304 when
    /// the client's own validator matches.
    fn respond(
        &self,
        head: http::response::Parts,
        req: &http::request::Parts,
        from_disk: bool,
    ) -> http::Response<Bytes> {
        let ttl = self.policy.time_to_live(SystemTime::now()).as_secs();
        let mut resp = self.build(head.headers, &req.method, &req.headers);
        let detail = if from_disk { "; detail=disk" } else { "" };
        set_status_ttl(resp.headers_mut(), "hit; ttl=", ttl, detail);
        resp
    }

    /// The stored response, with its current Age, without asking whether it is fresh.
    fn respond_stale(&self, req: &http::request::Parts) -> http::Response<Bytes> {
        let mut headers = self.headers.clone();
        headers.insert(
            header::AGE,
            HeaderValue::from(self.policy.age(SystemTime::now()).as_secs()),
        );
        self.build(headers, &req.method, &req.headers)
    }

    fn build(
        &self,
        headers: HeaderMap,
        method: &Method,
        req_headers: &HeaderMap,
    ) -> http::Response<Bytes> {
        let not_modified = client_validator_matches(req_headers, &headers);
        let body = if method == Method::HEAD || not_modified {
            Bytes::new()
        } else {
            self.body.clone()
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            self.status
        };
        *resp.headers_mut() = headers;
        if not_modified {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        resp
    }
}

/// Whether the key `k` is for `host` and `path` (any scheme, query and key headers), or
/// with `prefix` for a path starting with `path`.
fn purge_matches(k: &str, host: &str, path: &str, prefix: bool) -> bool {
    let rest = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let Some(p) = rest.strip_prefix(host) else {
        return false;
    };
    let p = p.split('\n').next().unwrap_or(p);
    if prefix {
        p.starts_with(path)
    } else {
        p.split('?').next() == Some(path)
    }
}

/// Request headers that carry credentials: the policy keeps the request's headers (to
/// match Vary), and entries go to disk, so these are kept only as keyed hashes.
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
];

fn has_credentials(headers: &HeaderMap) -> bool {
    CREDENTIALS.iter().any(|h| headers.contains_key(h))
}

/// The request as the cache policy sees it: `method`, and the headers with credentials
/// replaced by a hash keyed per process (equal values still match for Vary; nothing a
/// reader of the disk tier could use; after a restart such variants simply miss).
fn policy_view(parts: &http::request::Parts, method: Method) -> http::request::Parts {
    let mut r = http::Request::new(());
    *r.method_mut() = method;
    *r.uri_mut() = parts.uri.clone();
    let mut headers = parts.headers.clone();
    for name in &CREDENTIALS {
        if let http::header::Entry::Occupied(mut e) = headers.entry(name) {
            for v in e.iter_mut() {
                *v = HeaderValue::from(credential_hash(v.as_bytes()));
            }
        }
    }
    *r.headers_mut() = headers;
    r.into_parts().0
}

/// A hash of a credential, keyed per process.
fn credential_hash(value: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEY.get_or_init(std::hash::RandomState::new).hash_one(value)
}

/// A response that sets a cookie is someone's own unless it says it may be shared
/// (`public` or `s-maxage`): a shared cache must not hand one client's cookie to another.
fn sets_cookie_privately(headers: &HeaderMap) -> bool {
    if !headers.contains_key(header::SET_COOKIE) {
        return false;
    }
    let shared = list_items(headers, header::CACHE_CONTROL).any(|d| {
        d.eq_ignore_ascii_case("public")
            || d.get(..8)
                .is_some_and(|p| p.eq_ignore_ascii_case("s-maxage"))
    });
    !shared
}

/// Whether the client's If-None-Match names the stored ETag (weak comparison, RFC 9110
/// section 13.1.2), so a 304 answers it.
fn client_validator_matches(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    list_items(req, header::IF_NONE_MATCH).any(|t| t == "*" || opaque(t) == opaque(etag))
}

/// Sets `Cache-Status: usher; DETAIL`.
pub fn set_status(headers: &mut HeaderMap, detail: &str) {
    set_status_ttl(headers, detail, None, "");
}

/// Sets `Cache-Status: usher; BEFORE[TTL]AFTER`.
fn set_status_ttl(headers: &mut HeaderMap, before: &str, ttl: impl Into<Option<u64>>, after: &str) {
    if let Some(v) = status_value(before, ttl.into(), after) {
        headers.insert(CACHE_STATUS, v);
    }
}

/// `usher; BEFORE[TTL]AFTER`, pieced together without the formatting machinery, in one
/// allocation of the exact size (it is on every cache hit).
fn status_value(before: &str, ttl: Option<u64>, after: &str) -> Option<HeaderValue> {
    let mut digits = itoa::Buffer::new();
    let ttl = ttl.map_or("", |t| digits.format(t));
    let mut value = Vec::with_capacity(NAME.len() + 2 + before.len() + ttl.len() + after.len());
    for piece in [NAME, "; ", before, ttl, after] {
        value.extend_from_slice(piece.as_bytes());
    }
    // (a vector filled to its capacity becomes Bytes without another allocation)
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache holding one fresh entry (an hour, with an ETag) for GET `/a`, stored through
    /// the real path: a miss, then the app's response.
    async fn one_entry() -> (Arc<Cache>, Arc<str>) {
        let settings = CacheSettings {
            memory: 1 << 20,
            max_entry: 1 << 20,
            disk: None,
        };
        let cache = Cache::new(&settings).unwrap();
        let route = RouteCache::default();
        let parts = http::Request::get("/a").body(()).unwrap().into_parts().0;
        let key: Arc<str> = Cache::key(&route, false, "h", &parts.uri, &parts.headers).into();
        let Lookup::Miss(pending) = cache.lookup(key.clone(), &parts, &route).await else {
            panic!("a miss first")
        };
        let head = http::Response::builder()
            .header("cache-control", "max-age=3600")
            .header("etag", "\"v1\"")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let After::Store(policy) = cache.after(&pending, &head) else {
            panic!("storable")
        };
        cache.store(&pending, *policy, &head, Bytes::from_static(b"hello"));
        (cache, key)
    }

    #[tokio::test]
    async fn a_fresh_hit_comes_encoded_only_where_asked_and_never_as_a_304() {
        let (cache, key) = one_entry().await;
        let none = HeaderMap::new();
        let hit = cache.fresh_hit(&key, &Method::GET, &none, true).unwrap();
        let (head, numbers) = hit.body().encoded_head().expect("an encoded head");
        assert!(hit.headers().is_empty());
        assert_eq!((hit.status(), head.body_len()), (StatusCode::OK, 5));
        assert!(
            numbers[0] <= 1 && (3599..=3600).contains(&numbers[1]),
            "{numbers:?}"
        );
        let head_req = cache.fresh_hit(&key, &Method::HEAD, &none, true).unwrap();
        assert!(head_req.body().encoded_head().is_some());
        assert!(http_body::Body::is_end_stream(head_req.body()));
        // not asked: the header map
        let plain = cache.fresh_hit(&key, &Method::GET, &none, false).unwrap();
        assert!(plain.body().encoded_head().is_none());
        assert!(plain.headers()[CACHE_STATUS]
            .to_str()
            .unwrap()
            .starts_with("usher; hit"));
        // the client's own validator: a 304 from the header map
        let mut inm = HeaderMap::new();
        inm.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v1\""));
        let not_modified = cache.fresh_hit(&key, &Method::GET, &inm, true).unwrap();
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert!(not_modified.body().encoded_head().is_none());
    }
}
