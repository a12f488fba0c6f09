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
use crate::headers::push_ip;
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
    clock: Clock,
}

/// How long the wall clock is told from the monotonic one before it is read again.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

/// The timestamp text of the current second, made once a second rather than per line (the
/// line's formatting was 16% of the instructions of a request served from memory); and the
/// wall-clock time of a line, told from the monotonic clock the request's duration was read
/// from (one clock read per request, not two).
#[derive(Default)]
struct Clock {
    /// Seconds since the epoch `text` is for.
    sec: u64,
    /// RFC 3339 up to the seconds: `2026-11-24T01:45:00`.
    text: String,
    /// Both clocks, read together at most `ANCHOR_FOR` ago.
    anchor: Option<(Instant, SystemTime)>,
}

impl Clock {
    /// The wall-clock time at `at`. Read from the anchor within `ANCHOR_FOR` of it (either
    /// side: lines from several threads arrive a little out of order): a slewing wall clock
    /// drifts from the monotonic one by well under a millisecond in that time, and a step
    /// shows at the next anchor.
    fn wall(&mut self, at: Instant) -> SystemTime {
        if let Some((mono, wall)) = self.anchor {
            let told = match at.checked_duration_since(mono) {
                Some(after) if after < ANCHOR_FOR => Some(wall + after),
                Some(_) => None,
                None => Some(mono - at)
                    .filter(|before| *before < ANCHOR_FOR)
                    .and_then(|before| wall.checked_sub(before)),
            };
            if let Some(t) = told {
                return t;
            }
        }
        let (mono, wall) = (Instant::now(), SystemTime::now());
        self.anchor = Some((mono, wall));
        // (`at` is at most this lock's wait before `mono`)
        wall.checked_sub(mono.saturating_duration_since(at))
            .unwrap_or(wall)
    }

    /// Appends `now` in RFC 3339, UTC, with milliseconds: `2026-11-24T01:45:00.123Z`.
    fn write(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        let since = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let sec = since.as_secs();
        if sec != self.sec || self.text.is_empty() {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(sec);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            self.text = text.trim_end_matches('Z').to_owned();
            self.sec = sec;
        }
        out.extend_from_slice(self.text.as_bytes());
        out.push(b'.');
        push_padded(out, since.subsec_millis());
        out.push(b'Z');
    }
}

/// Appends `n` (below 1000) as three digits.
fn push_padded(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
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

    fn append(&self, tail: &LogTail, end: Instant, took: Duration) {
        let mut p = lock(&self.inner.pending);
        if p.buf.len() >= MAX_PENDING {
            p.dropped += 1;
            return;
        }
        let p = &mut *p;
        let before = p.buf.len();
        let now = p.clock.wall(end);
        tail.write_line(&mut p.buf, &mut p.clock, now, took, self.inner.json);
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

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Records the response status.
    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    fn write_line(
        &self,
        out: &mut Vec<u8>,
        clock: &mut Clock,
        now: SystemTime,
        took: Duration,
        json: bool,
    ) {
        let client: IpAddr = self.conn.peer.ip();
        let host = self
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
            .unwrap_or("-");
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let micros = took.as_micros();
        if json {
            let mut time = Vec::with_capacity(24);
            clock.write(now, &mut time);
            let ms = micros as f64 / 1000.0;
            let rec = JsonLine {
                time: std::str::from_utf8(&time).unwrap_or("-"),
                client,
                method: self.method.as_str(),
                host,
                path,
                status: self.status.as_u16(),
                bytes: self.bytes,
                duration_ms: ms,
                upstream: self.upstream.as_deref(),
            };
            let _ = serde_json::to_writer(&mut *out, &rec);
            out.push(b'\n');
        } else {
            // `TIME CLIENT "METHOD HOST PATH" STATUS BYTES 1.234ms upstream=ADDR`, pieced
            // together without the formatting machinery
            let mut digits = itoa::Buffer::new();
            clock.write(now, out);
            out.push(b' ');
            push_ip(out, client);
            out.extend_from_slice(b" \"");
            out.extend_from_slice(self.method.as_str().as_bytes());
            out.push(b' ');
            out.extend_from_slice(escape(host).as_bytes());
            out.push(b' ');
            out.extend_from_slice(escape(path).as_bytes());
            out.extend_from_slice(b"\" ");
            out.extend_from_slice(digits.format(self.status.as_u16()).as_bytes());
            out.push(b' ');
            out.extend_from_slice(digits.format(self.bytes).as_bytes());
            out.push(b' ');
            out.extend_from_slice(digits.format(micros / 1000).as_bytes());
            out.push(b'.');
            push_padded(out, (micros % 1000) as u32);
            out.extend_from_slice(b"ms upstream=");
            out.extend_from_slice(self.upstream.as_deref().unwrap_or("-").as_bytes());
            out.push(b'\n');
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
        // one clock read for the metrics and the line
        let end = Instant::now();
        let took = end.saturating_duration_since(self.start);
        if let Some(m) = &self.metrics {
            m.record(self.status, self.version, took, self.bytes);
        }
        if let Some(log) = &self.log {
            log.append(self, end, took);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_rfc3339_with_millis() {
        let mut clock = Clock::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_007);
        // across second boundaries, and back in time (a clock step)
        for step_ms in [0u64, 1, 992, 993, 1000, 86_400_000, 5, 0] {
            let t = start + Duration::from_millis(step_ms);
            let mut out = Vec::new();
            clock.write(t, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_millis(t).to_string()
            );
        }
    }

    #[test]
    fn wall_time_is_told_from_the_monotonic_clock_within_a_second_of_the_anchor() {
        let mut clock = Clock::default();
        let base = Instant::now();
        let at_base = clock.wall(base);
        let (mono, wall) = clock.anchor.expect("anchored on first use");
        assert!(mono >= base && at_base <= wall);
        let later = mono + Duration::from_millis(700);
        assert_eq!(clock.wall(later), wall + Duration::from_millis(700));
        // a line from another thread, a little older than the anchor
        let earlier = mono - Duration::from_millis(300);
        assert_eq!(clock.wall(earlier), wall - Duration::from_millis(300));
        assert_eq!(
            clock.anchor,
            Some((mono, wall)),
            "no new reading within the second"
        );
        // a second on: both clocks are read again
        clock.wall(mono + ANCHOR_FOR);
        assert_ne!(clock.anchor, Some((mono, wall)));
    }

    #[test]
    fn escape_neutralises_quotes_and_controls() {
        assert_eq!(escape("/a b"), "/a b");
        assert_eq!(escape("/a\"b\n"), "/a\\x22b\\x0a");
    }
}
