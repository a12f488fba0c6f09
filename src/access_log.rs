//! The access log: one line per request on stdout, text or JSON. Requests append their line
//! to a shared in-memory buffer (a short uncontended lock, no allocation once warm); a writer
//! thread writes the buffer out every `FLUSH_EVERY`, or at once when `WAKE_AT` bytes piled up,
//! as nginx's `access_log ... buffer=64k flush=1s` does. A request never waits for stdout:
//! if stdout blocks and the buffer reaches `MAX_PENDING`, lines are dropped and counted.

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, StatusCode, Uri, Version};

use crate::config::AccessLogFormat;
use crate::metrics::RouteMetrics;
use crate::server::ConnInfo;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Pending bytes that wake the writer early.
const WAKE_AT: usize = 64 * 1024;
/// Pending bytes beyond which lines are dropped (stdout is stuck).
const MAX_PENDING: usize = 8 * 1024 * 1024;

struct Inner {
    pending: Mutex<Pending>,
    wake: Condvar,
    sink: Mutex<Box<dyn Write + Send>>,
    json: bool,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    dropped: u64,
    closed: bool,
}

/// A handle for appending log lines; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("json", &self.inner.json)
            .finish()
    }
}

impl AccessLog {
    /// Starts the writer thread on `sink`; `None` when the log is off.
    pub fn start(format: AccessLogFormat, sink: Box<dyn Write + Send>) -> Option<AccessLog> {
        if format == AccessLogFormat::Off {
            return None;
        }
        let inner = Arc::new(Inner {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
            json: format == AccessLogFormat::Json,
        });
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
            .ok()?;
        Some(AccessLog { inner })
    }

    /// Writes out every line appended so far.
    pub fn flush(&self) {
        self.inner.write_out();
    }

    /// Writes what is pending and stops the writer thread.
    pub fn close(&self) {
        self.inner.write_out();
        lock(&self.inner.pending).closed = true;
        self.inner.wake.notify_one();
    }

    fn append(&self, tail: &LogTail) {
        let mut p = lock(&self.inner.pending);
        if p.buf.len() >= MAX_PENDING {
            p.dropped += 1;
            return;
        }
        let before = p.buf.len();
        tail.write_line(&mut p.buf, self.inner.json);
        if before < WAKE_AT && p.buf.len() >= WAKE_AT {
            self.inner.wake.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn run(&self) {
        loop {
            let closed = {
                let p = lock(&self.pending);
                let (p, _) = self
                    .wake
                    .wait_timeout_while(p, FLUSH_EVERY, |p| p.buf.len() < WAKE_AT && !p.closed)
                    .unwrap_or_else(|e| e.into_inner());
                p.closed
            };
            self.write_out();
            if closed {
                return;
            }
        }
    }

    /// Swaps the pending buffer out and writes it; the sink lock keeps lines in order.
    fn write_out(&self) {
        let mut sink = lock(&self.sink);
        let (buf, dropped) = {
            let mut p = lock(&self.pending);
            let cap = p.buf.capacity().clamp(4096, WAKE_AT * 2);
            (
                std::mem::replace(&mut p.buf, Vec::with_capacity(cap)),
                std::mem::take(&mut p.dropped),
            )
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "stdout is not keeping up: access log lines dropped"
            );
        }
        if !buf.is_empty() {
            let _ = sink.write_all(&buf);
        }
        let _ = sink.flush();
    }
}

/// Everything the log line needs, carried by the response body and written when it is dropped
/// (the response fully sent, or the client gone). Dropping it also ends the request for the
/// connection's idle watcher.
#[derive(Debug)]
pub struct LogTail {
    /// Response body bytes sent so far.
    pub bytes: u64,
    /// The upstream member that answered, if any.
    pub upstream: Option<Arc<str>>,
    /// The counters of the route that took the request, or of requests no route took.
    pub metrics: Option<Arc<RouteMetrics>>,
    version: Version,
    status: StatusCode,
    start: Instant,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    conn: Arc<ConnInfo>,
    log: Option<AccessLog>,
}

impl LogTail {
    /// Starts the record of a request; marks it in flight on its connection.
    pub fn new<B>(
        log: Option<AccessLog>,
        conn: Arc<ConnInfo>,
        start: Instant,
        head: &http::Request<B>,
    ) -> LogTail {
        conn.request_started();
        LogTail {
            bytes: 0,
            upstream: None,
            metrics: None,
            version: head.version(),
            status: StatusCode::OK,
            start,
            method: head.method().clone(),
            uri: head.uri().clone(),
            host: head.headers().get(http::header::HOST).cloned(),
            conn,
            log,
        }
    }

    /// Records the response status.
    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    fn write_line(&self, out: &mut Vec<u8>, json: bool) {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let client: IpAddr = self.conn.peer.ip();
        let host = self
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
            .unwrap_or("-");
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if json {
            let rec = JsonLine {
                time: &time.to_string(),
                client,
                method: self.method.as_str(),
                host,
                path,
                status: self.status.as_u16(),
                bytes: self.bytes,
                duration_ms: (ms * 1000.0).round() / 1000.0,
                upstream: self.upstream.as_deref(),
            };
            let _ = serde_json::to_writer(&mut *out, &rec);
            out.push(b'\n');
        } else {
            let _ = writeln!(
                out,
                "{time} {client} \"{} {} {}\" {} {} {ms:.3}ms upstream={}",
                self.method,
                escape(host),
                escape(path),
                self.status.as_u16(),
                self.bytes,
                self.upstream.as_deref().unwrap_or("-"),
            );
        }
    }
}

/// Paths are logged as received, but a quote or control byte could forge a log line; hyper
/// never passes such bytes in a path, this is belt and braces.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b == b'"' || b < 0x20 || b == 0x7f) {
        s.bytes()
            .map(|b| match b {
                b'"' | 0..0x20 | 0x7f => format!("\\x{b:02x}"),
                _ => (b as char).to_string(),
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: IpAddr,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    upstream: Option<&'a str>,
}

impl Drop for LogTail {
    fn drop(&mut self) {
        self.conn.request_finished();
        if let Some(m) = &self.metrics {
            m.record(self.status, self.version, self.start.elapsed(), self.bytes);
        }
        if let Some(log) = &self.log {
            log.append(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_quotes_and_controls() {
        assert_eq!(escape("/a b"), "/a b");
        assert_eq!(escape("/a\"b\n"), "/a\\x22b\\x0a");
    }
}
