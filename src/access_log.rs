//! The access log: one line per request on stdout, text or JSON, written by a dedicated thread
//! so a slow terminal or pipe never stalls a request. Lines are batched while requests arrive
//! faster than they can be written and flushed as soon as the queue is empty.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method, StatusCode, Uri};

use crate::config::AccessLogFormat;
use crate::server::ConnInfo;

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

/// A handle for queueing log lines; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    json: bool,
}

impl AccessLog {
    /// Starts the writer thread on `sink`; `None` when the log is off.
    pub fn start(format: AccessLogFormat, sink: Box<dyn Write + Send>) -> Option<AccessLog> {
        if format == AccessLogFormat::Off {
            return None;
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, sink))
            .ok()?;
        Some(AccessLog {
            tx,
            json: format == AccessLogFormat::Json,
        })
    }

    /// Waits until every line queued so far has been written.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn writer(rx: mpsc::Receiver<Msg>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(mut msg) = rx.recv() {
        loop {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(line.as_bytes());
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
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
    pub fn new(
        log: Option<AccessLog>,
        conn: Arc<ConnInfo>,
        start: Instant,
        method: Method,
        uri: Uri,
        host: Option<HeaderValue>,
    ) -> LogTail {
        conn.request_started();
        LogTail {
            bytes: 0,
            upstream: None,
            status: StatusCode::OK,
            start,
            method,
            uri,
            host,
            conn,
            log,
        }
    }

    /// Records the response status.
    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    fn line(&self, log: &AccessLog) -> String {
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
        let upstream = self.upstream.as_deref().unwrap_or("-");
        if log.json {
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
            let mut s = serde_json::to_string(&rec).unwrap_or_default();
            s.push('\n');
            s
        } else {
            let mut s = String::with_capacity(128 + path.len());
            let _ = writeln!(
                s,
                "{time} {client} \"{} {host} {}\" {} {} {ms:.3}ms upstream={upstream}",
                self.method,
                escape(path),
                self.status.as_u16(),
                self.bytes,
            );
            s
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
        if let Some(log) = &self.log {
            let line = self.line(log);
            let _ = log.tx.send(Msg::Line(line));
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
