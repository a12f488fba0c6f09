//! HTTP/1.1 on the wire, shared by the server's fast path (`server/h1.rs`) and the upstream
//! client (`upstream/h1.rs`): header values read from raw bytes, and gathered writes.

use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body::Frame;
use tokio::io::AsyncWrite;

use crate::body::BoxError;

/// Body data up to this size is gathered into the bytes waiting to be written (the head, or
/// earlier small pieces) rather than written on its own.
pub const GATHER: usize = 16 * 1024;

/// A Content-Length value: digits only (`u64`'s parser would also take a `+`).
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a comma-separated header value has `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The header names most requests and responses carry, spelled in lowercase, by length
/// (see [`header_name`]).
static COMMON: [&[(&[u8], HeaderName)]; 18] = [
    &[],
    &[],
    &[],
    &[(b"age", header::AGE)],
    &[
        (b"host", header::HOST),
        (b"date", header::DATE),
        (b"etag", header::ETAG),
        (b"vary", header::VARY),
    ],
    &[],
    &[
        (b"accept", header::ACCEPT),
        (b"cookie", header::COOKIE),
        (b"server", header::SERVER),
        (b"origin", header::ORIGIN),
    ],
    &[(b"expires", header::EXPIRES), (b"referer", header::REFERER)],
    &[(b"location", header::LOCATION)],
    &[],
    &[
        (b"connection", header::CONNECTION),
        (b"user-agent", header::USER_AGENT),
        (b"set-cookie", header::SET_COOKIE),
    ],
    &[],
    &[(b"content-type", header::CONTENT_TYPE)],
    &[
        (b"cache-control", header::CACHE_CONTROL),
        (b"last-modified", header::LAST_MODIFIED),
        (b"accept-ranges", header::ACCEPT_RANGES),
        (b"authorization", header::AUTHORIZATION),
        (b"if-none-match", header::IF_NONE_MATCH),
    ],
    &[(b"content-length", header::CONTENT_LENGTH)],
    &[
        (b"accept-encoding", header::ACCEPT_ENCODING),
        (b"accept-language", header::ACCEPT_LANGUAGE),
    ],
    &[(b"content-encoding", header::CONTENT_ENCODING)],
    &[
        (b"transfer-encoding", header::TRANSFER_ENCODING),
        (b"if-modified-since", header::IF_MODIFIED_SINCE),
    ],
];

/// The header name `raw` spells, as `HeaderName::from_bytes` gives it. The common names are
/// matched without case in place, where `from_bytes` lowercases a copy and then looks it up:
/// about a third of the instructions, on every header line of every request and response.
/// `raw` is a name httparse accepted: token characters only (see [`is_lower`]).
pub fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    if let Some(names) = COMMON.get(raw.len()) {
        if let Some((_, n)) = names.iter().find(|(s, _)| is_lower(raw, s)) {
            return Ok(n.clone());
        }
    }
    HeaderName::from_bytes(raw)
}

/// Whether the token `raw` is `lower` (lowercase letters, digits and `-`) in any case, eight
/// bytes at a time. Setting bit 5 lowercases a letter and leaves digits and `-` as they are;
/// the only other bytes it turns into one of those are controls, which no token has.
pub fn is_lower(raw: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    if raw.len() != lower.len() {
        return false;
    }
    let mut a = raw.chunks_exact(8);
    let mut b = lower.chunks_exact(8);
    for (x, y) in (&mut a).zip(&mut b) {
        let x = u64::from_le_bytes(x.try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(y.try_into().expect("8 bytes"));
        if x | CASE != y {
            return false;
        }
    }
    a.remainder()
        .iter()
        .zip(b.remainder())
        .all(|(x, y)| x | 0x20 == *y)
}

/// How a body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This many bytes.
    Length(u64),
    Chunked,
}

/// Appends a response's status line.
pub fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        let reason = status.canonical_reason().unwrap_or("<none>");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a `content-length` line (itoa's digits: `write!` goes through the formatting
/// machinery, about 350 instructions a line).
pub fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The head of a response given many times over (a cached response, a hot static file),
/// encoded once for usher's HTTP/1.1 path: a hit then writes it with one copy instead of
/// cloning a header map and encoding it line by line. It leaves out what differs per answer:
/// the framing (Content-Length, from the body's length), `connection: close`, a Date when the
/// response has none, and the numbered lines (see [`EncodedHead::new`]).
#[derive(Debug)]
pub struct EncodedHead {
    /// The status line and the header lines.
    lines: Box<[u8]>,
    /// The body's length: what Content-Length says, for HEAD too.
    len: u64,
    has_date: bool,
    /// How each numbered line starts (`age: `); each answer gives the numbers.
    numbered: &'static [&'static str],
}

impl EncodedHead {
    /// The head of `status` and `headers` for a body of `len` bytes, without the headers in
    /// `numbered`'s lines (their names are what precedes the first `:`), which each answer
    /// writes with its own numbers. `None` for a response whose framing is not just a length
    /// (1xx, 204, 304, Transfer-Encoding): those take the general path.
    pub fn new(
        status: StatusCode,
        headers: &HeaderMap,
        len: u64,
        numbered: &'static [&'static str],
    ) -> Option<EncodedHead> {
        if status.is_informational()
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
            || headers.contains_key(header::TRANSFER_ENCODING)
        {
            return None;
        }
        let own = |name: &HeaderName| {
            numbered.iter().any(|line| {
                line.split_once(':')
                    .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
            })
        };
        let mut lines = Vec::with_capacity(256);
        status_line(&mut lines, status);
        for (name, value) in headers {
            if matches!(*name, header::CONTENT_LENGTH | header::CONNECTION) || own(name) {
                continue;
            }
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Some(EncodedHead {
            lines: lines.into_boxed_slice(),
            len,
            has_date: headers.contains_key(header::DATE),
            numbered,
        })
    }

    /// Appends the lines, then the numbered lines with `numbers`, and the Content-Length:
    /// everything but `connection: close`, a Date, and the blank line.
    pub fn write(&self, out: &mut Vec<u8>, numbers: &[u64]) {
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(&self.lines);
        for (start, n) in self.numbered.iter().zip(numbers) {
            out.extend_from_slice(start.as_bytes());
            out.extend_from_slice(digits.format(*n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        content_length(out, self.len);
    }

    /// The body's length.
    pub fn body_len(&self) -> u64 {
        self.len
    }

    /// Whether the response has its own Date.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Bytes it keeps.
    pub fn size(&self) -> usize {
        self.lines.len() + std::mem::size_of::<Self>()
    }
}

/// An upstream HTTP/1.1 response's header lines as they go on to the client, kept as lines
/// instead of a header map: for a response usher's HTTP/1.1 path sends as it came (no cache,
/// no compression; see `proxy::forward`). Building the map and encoding it again cost about
/// a sixth of the instructions of a small proxied request.
#[derive(Debug, Default)]
pub struct PassedHead {
    /// `name: value\r\n` for each line passed on: every line but the hop-by-hop ones and the
    /// framing (Content-Length, Transfer-Encoding), which the writer sets from the body.
    lines: Vec<u8>,
    has_date: bool,
    /// The app's Content-Length, where it stands for the body (or a HEAD's GET): the writer
    /// sends a HEAD's as it is, and the body's own length otherwise.
    length: Option<u64>,
    /// Its Content-Type is an event stream or gRPC: each piece goes on as it comes.
    stream: bool,
    /// What its Keep-Alive says (hop-by-hop, not passed on): how long the pool may keep the
    /// connection.
    keep_alive: Option<Duration>,
}

/// What a response header line is to [`PassedHead`]: the names it acts on, told apart
/// without case and without parsing a header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    /// TE, Upgrade, Proxy-*: hop-by-hop, never passed on.
    HopByHop,
    Date,
    ContentType,
    Other,
}

impl Line {
    /// What the line named `name` (a token, as httparse accepted it) is.
    pub fn of(name: &[u8]) -> Line {
        let is = |n: &[u8]| is_lower(name, n);
        match name.len() {
            2 if is(b"te") => Line::HopByHop,
            4 if is(b"date") => Line::Date,
            7 if is(b"upgrade") => Line::HopByHop,
            10 if is(b"connection") => Line::Connection,
            10 if is(b"keep-alive") => Line::KeepAlive,
            12 if is(b"content-type") => Line::ContentType,
            14 if is(b"content-length") => Line::ContentLength,
            17 if is(b"transfer-encoding") => Line::TransferEncoding,
            n if n > 6 && is_lower(&name[..6], b"proxy-") => Line::HopByHop,
            _ => Line::Other,
        }
    }
}

impl PassedHead {
    pub fn with_capacity(bytes: usize) -> PassedHead {
        PassedHead {
            lines: Vec::with_capacity(bytes),
            ..PassedHead::default()
        }
    }

    /// Adds a line the response passes on (its name and value as httparse gave them: a valid
    /// token, a value without CR or LF).
    pub fn push(&mut self, line: Line, name: &[u8], value: &[u8]) {
        match line {
            Line::Date => self.has_date = true,
            // (any of them: a stream is never held back)
            Line::ContentType => {
                self.stream |= value.starts_with(b"text/event-stream")
                    || value.starts_with(b"application/grpc")
            }
            _ => {}
        }
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }

    /// Keeps the app's Content-Length.
    pub fn set_length(&mut self, n: u64) {
        self.length = Some(n);
    }

    /// Keeps the idle limit the app's Keep-Alive gives, for the pool.
    pub fn set_keep_alive(&mut self, limit: Option<Duration>) {
        self.keep_alive = limit;
    }

    pub fn keep_alive(&self) -> Option<Duration> {
        self.keep_alive
    }

    /// The lines, each ending in CRLF.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    pub fn has_date(&self) -> bool {
        self.has_date
    }

    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether the body is an event stream or gRPC (see `proxy::is_stream`).
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// The lines as a header map, for a response that turns out to need one after all (one
    /// read ahead and held): with the app's Content-Length.
    pub fn into_headers(self) -> HeaderMap {
        let mut map = crate::headers::empty_map(8);
        for line in self.lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 2..]);
            if let (Ok(n), Ok(v)) = (header_name(name), HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        if let Some(n) = self.length {
            map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        map
    }
}

/// Frames a body's data as it is written: a chunk-size line and CRLF around each piece of a
/// chunked body and the last chunk at its end; a body with a length held to it exactly.
#[derive(Debug)]
pub struct Framer {
    kind: Kind,
    /// Bytes still to come of a body with a length.
    left: u64,
}

impl Framer {
    pub fn new(kind: Kind) -> Framer {
        let left = match kind {
            Kind::Length(n) => n,
            Kind::Chunked => u64::MAX,
        };
        Framer { kind, left }
    }

    /// Whether more data may come (a body with a length has a last byte).
    pub fn wants_more(&self) -> bool {
        self.left > 0
    }

    /// The data of a body frame, once it is known to fit, with its chunk-size line added to
    /// `out`; `None` for a frame that carries none (trailers are not written here). Write it
    /// next, then call [`Framer::after`].
    pub fn data(
        &mut self,
        out: &mut Vec<u8>,
        frame: Result<Frame<Bytes>, BoxError>,
    ) -> io::Result<Option<Bytes>> {
        let data = match frame.map_err(io::Error::other)?.into_data() {
            Ok(data) if !data.is_empty() => data,
            _ => return Ok(None),
        };
        match self.kind {
            Kind::Length(_) if data.len() as u64 > self.left => {
                return Err(io::Error::other("body longer than its Content-Length"))
            }
            Kind::Length(_) => self.left -= data.len() as u64,
            Kind::Chunked => {
                let _ = write!(out, "{:x}\r\n", data.len());
            }
        }
        Ok(Some(data))
    }

    /// After a piece of data: the CRLF that closes a chunk.
    pub fn after(&self, out: &mut Vec<u8>) {
        if self.kind == Kind::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// At the body's end: the last chunk, or an error for a body shorter than its length.
    pub fn end(&self, out: &mut Vec<u8>) -> io::Result<()> {
        match self.kind {
            Kind::Length(_) if self.left > 0 => {
                Err(io::Error::other("body shorter than its Content-Length"))
            }
            Kind::Length(_) => Ok(()),
            Kind::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
        }
    }
}

/// Writes what `bufs` hold, as much as the socket takes now: one non-empty buffer with a
/// plain write (a `send`, which costs the kernel less than a `writev`: about 2% of the CPU
/// of a small proxied request), more in one vectored write.
pub fn poll_write_lean<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut full = bufs.iter().filter(|b| !b.is_empty());
    match (full.next(), full.next()) {
        (Some(one), None) => io.poll_write(cx, one),
        _ => io.poll_write_vectored(cx, bufs),
    }
}

/// Writes `first` (then empties it) and `second`, in as few writes as the transport allows.
pub async fn write_two<W: AsyncWrite + Unpin>(
    io: &mut W,
    first: &mut Vec<u8>,
    second: &[u8],
) -> io::Result<()> {
    let (mut a, mut b) = (&first[..], second);
    while !a.is_empty() || !b.is_empty() {
        let bufs = [IoSlice::new(a), IoSlice::new(b)];
        let n = poll_fn(|cx| poll_write_lean(Pin::new(&mut *io), cx, &bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    first.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_header_names_are_what_from_bytes_gives_in_any_case() {
        for names in COMMON {
            for (lower, name) in names {
                let upper = lower.to_ascii_uppercase();
                let mut mixed = lower.to_vec();
                mixed[0] = mixed[0].to_ascii_uppercase();
                for raw in [&lower[..], &upper, &mixed] {
                    assert_eq!(header_name(raw).unwrap(), *name);
                    assert_eq!(HeaderName::from_bytes(raw).unwrap(), *name);
                }
            }
        }
        // others are parsed
        assert_eq!(header_name(b"X-Request-Id").unwrap(), "x-request-id");
        assert_eq!(header_name(b"Hosts").unwrap(), "hosts");
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
        // a byte off in the last of eight, or in the tail
        assert!(!is_lower(b"content-lengtx", b"content-length"));
        assert!(!is_lower(b"contenT_length", b"content-length"));
        assert!(is_lower(b"CONTENT-LENGTH", b"content-length"));
        assert_eq!(Line::of(b"Proxy-Authenticate"), Line::HopByHop);
        assert_eq!(Line::of(b"proxy-"), Line::Other);
        assert_eq!(Line::of(b"KEEP-ALIVE"), Line::KeepAlive);
        assert_eq!(Line::of(b"Te"), Line::HopByHop);
        assert_eq!(Line::of(b"Trailer"), Line::Other);
    }

    #[test]
    fn passed_lines_turn_back_into_the_same_headers() {
        let mut p = PassedHead::with_capacity(64);
        p.push(Line::Other, b"Server", b"app");
        p.push(Line::Other, b"Set-Cookie", b"a=1");
        p.push(Line::ContentType, b"Content-Type", b"text/event-stream");
        p.push(Line::Other, b"Set-Cookie", b"b=2; Path=/");
        p.push(Line::Other, b"X-Empty", b"");
        assert!(p.is_stream() && !p.has_date());
        assert_eq!(
            p.lines(),
            b"Server: app\r\nSet-Cookie: a=1\r\nContent-Type: text/event-stream\r\n\
              Set-Cookie: b=2; Path=/\r\nX-Empty: \r\n"
        );
        p.push(Line::Date, b"date", b"Mon, 07 Dec 2026 20:00:00 GMT");
        p.set_length(42);
        assert!(p.has_date());
        let h = p.into_headers();
        assert_eq!(h["server"], "app");
        let cookies: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2; Path=/"]);
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["x-empty"], "");
        assert_eq!(h["date"], "Mon, 07 Dec 2026 20:00:00 GMT");
        assert_eq!(h["content-length"], "42");
        assert_eq!(h.len(), 7);
    }

    #[test]
    fn an_encoded_head_leaves_framing_and_numbered_lines_to_each_answer() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert(header::AGE, "7".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        h.insert(header::ETAG, "\"x\"".parse().unwrap());
        let head = EncodedHead::new(StatusCode::NOT_FOUND, &h, 5, &["age: "]).unwrap();
        let mut out = Vec::new();
        head.write(&mut out, &[3]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\netag: \"x\"\r\nage: 3\r\ncontent-length: 5\r\n"
        );
        assert!(!head.has_date());
        for status in [101, 204, 304] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(EncodedHead::new(status, &h, 5, &[]).is_none(), "{status}");
        }
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(EncodedHead::new(StatusCode::OK, &h, 5, &[]).is_none());
    }

    #[test]
    fn a_content_length_is_digits_only() {
        assert_eq!(parse_length(b"120"), Some(120));
        for bad in [
            &b"+5"[..],
            b"",
            b" 5",
            b"5 ",
            b"-1",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn has_token_reads_lists() {
        assert!(has_token(b"keep-alive, close", b"close"));
        assert!(has_token(b" CLOSE ", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
