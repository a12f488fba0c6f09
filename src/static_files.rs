//! Static files: usher's own path check in front of tower-http's `ServeFile`, which does the
//! HTTP part (Content-Type, Range, Last-Modified / If-Modified-Since, precompressed siblings).
//!
//! ServeDir alone is not enough: it follows symlinks out of the root and turns a NUL byte into
//! a 500. Here a request path is decoded once, refused if it holds NUL, an encoded separator, a
//! backslash or a dot segment, then resolved with `canonicalize` and required to stay under the
//! canonical root. The same check applies to the index file, the fallback file and any
//! precompressed sibling. Small files are answered from memory ([`hot`]).

mod hot;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::body::Body;
use crate::config::StaticRoute;
use crate::error::ProxyError;

/// One static route's folder.
#[derive(Debug)]
pub struct StaticFiles {
    root: PathBuf,
    index: String,
    fallback: Option<String>,
    hot: hot::HotFiles,
}

/// Outcome of resolving a request path.
enum Resolved {
    File(PathBuf),
    /// A folder requested without its trailing slash: redirect so relative links work.
    AddSlash,
}

impl StaticFiles {
    /// Resolves the root once; it must exist.
    pub fn new(route: &StaticRoute) -> io::Result<StaticFiles> {
        Ok(StaticFiles {
            root: std::fs::canonicalize(&route.root)?,
            index: route.index.clone(),
            fallback: route.fallback.clone(),
            hot: hot::HotFiles::new(route.file_cache_valid),
        })
    }

    /// The answer from memory to a request for a file held there and looked at recently
    /// enough, without taking the request; otherwise the entry held for it that is due for
    /// a look, if any, to hand to [`StaticFiles::serve`]. `now`: the request's start;
    /// `encoded`: the answer may come with an encoded head (see [`Body::encoded`]).
    pub fn hot_hit<B>(
        &self,
        req: &Request<B>,
        now: Instant,
        encoded: bool,
    ) -> Result<Response<Body>, Option<Arc<hot::Hot>>> {
        if !hot::answerable(req) {
            return Err(None);
        }
        match self.hot.get(req.uri().path(), now) {
            Some((entry, false)) => Ok(entry.respond(req, encoded)),
            Some((entry, true)) => Err(Some(entry)),
            None => Err(None),
        }
    }

    /// Serves `rel` (the request path, with the route prefix already removed if it strips),
    /// after [`StaticFiles::hot_hit`] found no answer: `due` is the entry it found due for a
    /// look.
    pub async fn serve<B>(
        &self,
        req: Request<B>,
        rel: &str,
        due: Option<Arc<hot::Hot>>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: Send + 'static,
    {
        // A folder asked for without its trailing slash is redirected, so its relative links
        // work; judged on the request path, since a stripped route's root has an empty `rel`.
        let slashed = req.uri().path().ends_with('/');
        let from_memory = hot::answerable(&req);
        if let Some(entry) = due {
            // look again: the path may lead elsewhere now, or the file have changed
            if let Ok(Resolved::File(f)) = self.resolve(rel, slashed).await {
                let same =
                    std::fs::metadata(&f).is_ok_and(|m| hot::Identity::of(&m) == entry.identity);
                if f == entry.path && same {
                    self.hot.checked(&entry);
                    return Ok(entry.respond(&req, false));
                }
            }
            self.hot.forget(req.uri().path());
        }
        let (file, fell_back) = match self.resolve(rel, slashed).await {
            Ok(Resolved::File(f)) => (f, false),
            Ok(Resolved::AddSlash) => return Ok(add_slash(&req)),
            Err(ProxyError::NotFound) => match &self.fallback {
                Some(fb) => match self.resolve(fb, true).await? {
                    Resolved::File(f) => (f, true),
                    Resolved::AddSlash => return Err(ProxyError::NotFound),
                },
                None => return Err(ProxyError::NotFound),
            },
            Err(e) => return Err(e),
        };
        // (a fallback answer is not kept: any unknown path would take an entry)
        if from_memory && !fell_back {
            // boxed: once per file (see below)
            if let Some(entry) = Box::pin(self.load_hot(req.uri().path(), &file)).await {
                return Ok(entry.respond(&req, false));
            }
        }
        // boxed: the file path's future is large, and every request's future would be
        // that large with it inline (see `proxy::Writer`)
        Box::pin(self.serve_file(req, &file)).await
    }

    /// Serves `file` from disk (tower-http's `ServeFile`): ranges, preconditions,
    /// precompressed siblings, and a strong ETag per encoding.
    async fn serve_file<B>(
        &self,
        req: Request<B>,
        file: &Path,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: Send + 'static,
    {
        let accepts = |enc: &str| {
            req.headers()
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.contains(enc)))
        };
        let mut svc = ServeFile::new(file);
        if accepts("br") && self.sibling_ok(file, "br").await {
            svc = svc.precompressed_br();
        }
        if accepts("gzip") && self.sibling_ok(file, "gz").await {
            svc = svc.precompressed_gzip();
        }
        let client_tags = req
            .headers()
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .cloned()
            .collect::<Vec<_>>();
        let resp = svc.oneshot(req).await.unwrap_or_else(|e| match e {});
        let mut resp = resp.map(|body| Body::Static { body });
        // A strong ETag from the file's size and modification time (as nginx makes it), one
        // per encoding served, and a 304 when the client already has it.
        if let (Some(etag), true) = (etag(resp.headers()), resp.status().is_success()) {
            if resp.status() == StatusCode::OK && client_tags.iter().any(|v| etag_listed(v, &etag))
            {
                let mut not_modified = Response::new(Body::empty());
                *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
                for name in [
                    header::LAST_MODIFIED,
                    header::CONTENT_ENCODING,
                    header::VARY,
                ] {
                    if let Some(v) = resp.headers().get(&name) {
                        not_modified.headers_mut().insert(name, v.clone());
                    }
                }
                resp = not_modified;
            }
            resp.headers_mut().insert(header::ETAG, etag);
        }
        Ok(resp)
    }

    async fn resolve(&self, rel: &str, slashed: bool) -> Result<Resolved, ProxyError> {
        let rel_path = sanitize(rel)?;
        let found = self.inside(&self.root.join(&rel_path)).await?;
        if !found.is_dir() {
            return Ok(Resolved::File(found));
        }
        if !slashed {
            return Ok(Resolved::AddSlash);
        }
        let index = self.inside(&found.join(&self.index)).await?;
        if index.is_dir() {
            return Err(ProxyError::NotFound);
        }
        Ok(Resolved::File(index))
    }

    /// Resolves symlinks and requires the result to stay under the root.
    ///
    /// Called directly on the runtime thread, not through `tokio::fs`: realpath on a local disk
    /// costs a few microseconds of metadata syscalls (nginx makes the same calls in its event
    /// loop), while a hop through the blocking pool costs two context switches; the profile of
    /// the static benchmark was dominated by those switches.
    async fn inside(&self, path: &Path) -> Result<PathBuf, ProxyError> {
        match std::fs::canonicalize(path) {
            Ok(real) if real.starts_with(&self.root) => Ok(real),
            Ok(_) => Err(ProxyError::Forbidden(
                "symlink leads outside the static root",
            )),
            Err(e) => match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Err(ProxyError::NotFound),
                io::ErrorKind::PermissionDenied => Err(ProxyError::Forbidden("permission denied")),
                // ENAMETOOLONG (36) and ELOOP (40) in Linux's errno.h: the client's path, not
                // usher, is at fault, so no 500 and no error-level log line.
                _ if e.raw_os_error() == Some(36) => Err(ProxyError::NotFound),
                _ if e.raw_os_error() == Some(40) => Err(ProxyError::Forbidden("symlink loop")),
                _ => Err(ProxyError::Static(e)),
            },
        }
    }

    /// Keeps `file` in memory for `key` if it is small and has no precompressed sibling
    /// (those are chosen per request by the full path).
    async fn load_hot(&self, key: &str, file: &Path) -> Option<std::sync::Arc<hot::Hot>> {
        let meta = std::fs::metadata(file).ok()?;
        if !meta.is_file() || meta.len() > hot::MAX_FILE {
            return None;
        }
        if self.sibling_ok(file, "br").await || self.sibling_ok(file, "gz").await {
            return None;
        }
        self.hot.load(key, file.to_owned(), &meta).await
    }

    /// A precompressed sibling is used only if it exists and stays under the root too.
    async fn sibling_ok(&self, file: &Path, ext: &str) -> bool {
        let mut s = file.as_os_str().to_owned();
        s.push(".");
        s.push(ext);
        self.inside(Path::new(&s)).await.is_ok()
    }
}

/// Decodes a URL path into a relative file path, refusing anything that could step outside.
pub fn sanitize(raw: &str) -> Result<PathBuf, ProxyError> {
    // Encoded separators and NUL are refused before decoding, so decoding cannot create them.
    let lower_has = |pat: &str| {
        raw.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(pat.as_bytes()))
    };
    if raw.contains('\\') || lower_has("%2f") || lower_has("%5c") || lower_has("%00") {
        return Err(ProxyError::Forbidden(
            "encoded separator, backslash or NUL in path",
        ));
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ProxyError::NotFound)?;
    let mut out = PathBuf::new();
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            "." | ".." => return Err(ProxyError::Forbidden("dot segment in path")),
            s if s.contains('\0') => return Err(ProxyError::Forbidden("NUL in path")),
            s => out.push(s),
        }
    }
    Ok(out)
}

/// `"MTIME-SIZE"` in hex, with the encoding's name when a precompressed sibling was served
/// (each representation has its own strong validator). Taken from the Last-Modified and
/// length the file service already set, so the file is not looked at twice.
fn etag(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let mtime = httpdate::parse_http_date(text(header::LAST_MODIFIED)?)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    // a range's Content-Range names the whole file's size
    let size: u64 = match text(header::CONTENT_RANGE) {
        Some(range) => range.rsplit('/').next()?.parse().ok()?,
        None => text(header::CONTENT_LENGTH)?.parse().ok()?,
    };
    strong_etag(mtime, size, text(header::CONTENT_ENCODING))
}

/// The ETag of a file (or of its `encoding` sibling) modified at `mtime` seconds of `size`
/// bytes, whether served from disk or from memory.
fn strong_etag(mtime: u64, size: u64, encoding: Option<&str>) -> Option<HeaderValue> {
    let encoding = encoding.map(|e| format!("-{e}")).unwrap_or_default();
    HeaderValue::from_str(&format!("\"{mtime:x}-{size:x}{encoding}\"")).ok()
}

/// Whether an If-None-Match value lists `etag` (weak comparison, RFC 9110 section 13.1.2).
fn etag_listed(value: &HeaderValue, etag: &HeaderValue) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag.to_str().unwrap_or(""));
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim() == "*" || opaque(t) == ours))
}

fn add_slash<B>(req: &Request<B>) -> Response<Body> {
    let mut location = format!("{}/", req.uri().path());
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_refuses_escapes() {
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fx",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/./x",
        ] {
            assert!(sanitize(bad).is_err(), "{bad}");
        }
        assert_eq!(sanitize("/a//b/c.txt").unwrap(), PathBuf::from("a/b/c.txt"));
        assert_eq!(sanitize("/a%20b").unwrap(), PathBuf::from("a b"));
        assert_eq!(sanitize("/").unwrap(), PathBuf::new());
    }
}
