//! Small hot files held in memory: nginx's `open_file_cache`, with the content too.
//!
//! A file of at most [`MAX_FILE`] without precompressed siblings is read once and then
//! answered from memory (GET and HEAD, with its validators, and 304s), with no open, read or
//! blocking-pool hop per request. After `file_cache_valid` an entry is looked at again: its
//! path is resolved anew (so a symlink switched by a deploy is followed) and the file's
//! identity (device, inode, size, modification time) compared; a change drops it. Range and
//! precondition requests take the full file path. The memory is bounded by [`CAPACITY`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::wire::EncodedHead;

/// Largest file kept in memory. 1 MiB: a file that size costs nginx a sendfile; read from
/// disk through `tokio::fs` it cost usher a copy more than nginx (measured: 1.2x nginx's
/// CPU per request), while from memory it is one write.
pub const MAX_FILE: u64 = 1 << 20;
/// Bytes all of one route's hot files may take.
pub const CAPACITY: u64 = 32 << 20;

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Identity {
    pub fn of(meta: &std::fs::Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A file in memory.
#[derive(Debug)]
pub struct Hot {
    /// Where the request path led.
    pub path: PathBuf,
    pub identity: Identity,
    body: Bytes,
    /// Content-Length, Content-Type, Last-Modified, ETag, Accept-Ranges.
    headers: HeaderMap,
    /// The same, encoded for usher's HTTP/1.1 path.
    encoded: Option<Arc<EncodedHead>>,
    etag: HeaderValue,
    /// Modification time in whole seconds (what Last-Modified says).
    mtime_secs: u64,
    /// When it was last looked at, in milliseconds since the cache's epoch.
    checked_ms: AtomicU64,
}

/// One static route's hot files, by request path.
pub struct HotFiles {
    entries: moka::sync::Cache<Box<str>, Arc<Hot>, crate::routing::FastHash>,
    valid: Duration,
    epoch: Instant,
}

impl std::fmt::Debug for HotFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotFiles")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

/// Bytes counted for an entry: its body, its key, its encoded head, and an estimate for the
/// rest.
#[allow(clippy::borrowed_box)] // the signature moka asks of a weigher for Box<str> keys
fn weigh(k: &Box<str>, h: &Arc<Hot>) -> u32 {
    let encoded = h.encoded.as_ref().map_or(0, |e| e.size());
    u32::try_from(h.body.len() + k.len() + encoded + 256).unwrap_or(u32::MAX)
}

impl HotFiles {
    pub fn new(valid: Duration) -> HotFiles {
        HotFiles {
            entries: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .weigher(weigh)
                .build_with_hasher(Default::default()),
            valid,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The entry for `key`, and whether it is due to be looked at again at `now` (the
    /// request's start: the clock is not read again for it).
    pub fn get(&self, key: &str, now: Instant) -> Option<(Arc<Hot>, bool)> {
        let hot = self.entries.get(key)?;
        let age = self
            .ms_at(now)
            .saturating_sub(hot.checked_ms.load(Ordering::Relaxed));
        let due = self.valid.is_zero() || u128::from(age) >= self.valid.as_millis();
        Some((hot, due))
    }

    /// Marks `hot` as looked at now.
    pub fn checked(&self, hot: &Hot) {
        hot.checked_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Drops `key`.
    pub fn forget(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Reads `path` (a regular file of at most [`MAX_FILE`] with metadata `meta`) on the
    /// blocking pool and keeps it for `key`. `None` when it cannot be read whole, or changed
    /// while read.
    pub async fn load(
        &self,
        key: &str,
        path: PathBuf,
        meta: &std::fs::Metadata,
    ) -> Option<Arc<Hot>> {
        let identity = Identity::of(meta);
        let (path, read) = tokio::task::spawn_blocking(move || {
            let read = std::fs::read(&path);
            (path, read)
        })
        .await
        .ok()?;
        let body = Bytes::from(read.ok()?);
        if body.len() as u64 != identity.len {
            return None;
        }
        let modified = meta.modified().ok()?;
        let mtime_secs = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let etag = super::strong_etag(mtime_secs, identity.len, None)?;
        let mime = mime_guess::from_path(&path).first_or_octet_stream();
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(mime.as_ref()).ok()?,
        );
        headers.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_str(&httpdate::fmt_http_date(modified)).ok()?,
        );
        headers.insert(header::ETAG, etag.clone());
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let encoded = EncodedHead::new(StatusCode::OK, &headers, identity.len, &[]).map(Arc::new);
        let hot = Arc::new(Hot {
            path,
            identity,
            body,
            headers,
            encoded,
            etag,
            mtime_secs,
            checked_ms: AtomicU64::new(self.now_ms()),
        });
        self.entries.insert(key.into(), hot.clone());
        Some(hot)
    }
}

/// Whether `req` may be answered from memory: GET or HEAD, no range, no precondition the
/// full path is there for.
pub fn answerable<B>(req: &Request<B>) -> bool {
    const FULL_PATH_ONLY: [header::HeaderName; 4] = [
        header::RANGE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ];
    // one look at each name (standard names compare as numbers) instead of four lookups
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && !req.headers().keys().any(|k| FULL_PATH_ONLY.contains(k))
}

impl Hot {
    /// The response to `req`: 304 when the client's validator matches (If-None-Match, or
    /// else If-Modified-Since), the file otherwise (without the body for HEAD); with its head
    /// encoded when `encoded` allows (see [`Body::encoded`]).
    pub fn respond<B>(&self, req: &Request<B>, encoded: bool) -> Response<Body> {
        let inm = req.headers().get(header::IF_NONE_MATCH);
        let not_modified = match inm {
            Some(v) => super::etag_listed(v, &self.etag),
            None => req
                .headers()
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .is_some_and(|since| self.mtime_secs <= since.as_secs()),
        };
        if not_modified {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [header::ETAG, header::LAST_MODIFIED] {
                if let Some(v) = self.headers.get(&name) {
                    resp.headers_mut().insert(name, v.clone());
                }
            }
            return resp;
        }
        let data = (req.method() != Method::HEAD).then(|| self.body.clone());
        if let (true, Some(head)) = (encoded, &self.encoded) {
            return Response::new(Body::encoded(data, head.clone(), [0; 2]));
        }
        let body = data.map_or_else(Body::empty, Body::full);
        let mut resp = Response::new(body);
        // (Content-Length is among them, for HEAD too)
        *resp.headers_mut() = self.headers.clone();
        resp
    }
}
