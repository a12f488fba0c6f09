//! usher's own HTTP/1.1 client connection, for the pool's keep-alive connections to the app.
//!
//! hyper's client runs every connection as a task of its own, and a request, its response head
//! and every body chunk cross between that task and the request's through channels: on a small
//! proxied request that was a third of usher's work. Here the request's own task writes the
//! head and body and reads the response; the response body owns the connection while it is
//! read, and hands it back ([`Body::reclaim`]) once it ended where the next response begins.
//!
//! The rules are RFC 9112's, as hyper applies them: a body to HEAD or a 1xx/204/304 is empty;
//! chunked wins over Content-Length (and such a connection is not reused); a body without
//! either runs to the close; 1xx interim heads are skipped. Upgrades stay on hyper (`Pool::
//! upgrade`), as does HTTP/2.

use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::ReqBody;
use crate::body::BoxError;
use crate::headers::Forwarding;
use crate::wire::{
    header_name, parse_length, poll_write_lean, Framer, Kind, Line, PassedHead, GATHER,
};

mod batch;
use batch::Batch;

/// Most headers a response head may have (hyper's default).
const MAX_HEADERS: usize = 100;
/// Longest response head, status line and headers (a head this long is a broken app).
const MAX_HEAD: usize = 64 * 1024;
/// Longest trailer section of a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 1024;
/// A read gets at least this much room...
const READ_ROOM: usize = 1024;
/// ...and the buffer grows by this much when less is left (a small response fits at once).
const READ_SIZE: usize = 8 * 1024;
/// The most it grows by for a long body of known length: fewer, larger reads.
const BIG_READ: usize = 256 * 1024;

/// A connection's transport: TCP, or a Unix socket.
#[derive(Debug)]
pub enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection to a member, between requests.
#[derive(Debug)]
pub struct Conn {
    io: Io,
    /// What was read and not yet used.
    buf: BytesMut,
    /// The request head (and small body data) being written; kept for the next request.
    out: Vec<u8>,
    /// The socket's receive low-water mark (1, the kernel's default, unless a long body is
    /// being read in batches).
    lowat: u32,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Conn {
    /// A connection over `io`, nothing sent yet.
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            lowat: 1,
        }
    }

    /// Sets the socket's receive low-water mark (see `batch`); false when that failed.
    fn set_lowat(&mut self, bytes: u32) -> bool {
        if self.lowat == bytes {
            return true;
        }
        let Io::Tcp(tcp) = &self.io else {
            return false;
        };
        match crate::sockopt::set_rcvlowat(tcp, bytes) {
            Ok(()) => {
                self.lowat = bytes;
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "setting SO_RCVLOWAT on an upstream connection");
                false
            }
        }
    }

    /// Whether an idle connection can take a request: still open at the app, with nothing
    /// unasked-for waiting to be read. (A look without waiting: the read, if any, would block.)
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.make_room(READ_SIZE);
        // (not a poll: tokio's cooperative budget could make that say "pending" unlooked)
        let read = match &self.io {
            Io::Tcp(s) => s.try_read_buf(&mut self.buf),
            Io::Unix(s) => s.try_read_buf(&mut self.buf),
        };
        matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// While the request is still being sent: whether the app has answered (a final head, or
    /// bytes that are none) or closed. Interim 1xx heads (a `100 Continue`) are dropped as
    /// they come: the app is still reading.
    fn answered(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match self.poll_read(cx, READ_SIZE) {
                Poll::Pending => return false,
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
            }
            while !self.buf.is_empty() {
                match interim(&self.buf) {
                    Interim::Head(len) => self.buf.advance(len),
                    Interim::Partial => break,
                    Interim::Final => return true,
                }
            }
        }
    }

    /// Writes `out` (then empties it) and `data` in as few writes as the transport allows,
    /// watching for the app's answer while a write waits: false when the answer (or the
    /// close, or a failed write) came first and the rest is not sent.
    async fn write_out(&mut self, data: &[u8]) -> bool {
        let total = self.out.len() + data.len();
        let mut sent = 0;
        let whole = poll_fn(|cx| {
            while sent < total {
                let first = self.out.get(sent..).unwrap_or_default();
                let second = &data[sent.saturating_sub(self.out.len())..];
                let bufs = [IoSlice::new(first), IoSlice::new(second)];
                match poll_write_lean(Pin::new(&mut self.io), cx, &bufs) {
                    Poll::Ready(Ok(n)) if n > 0 => sent += n,
                    // (an app that closed: what it said, if anything, is read next)
                    Poll::Ready(_) => return Poll::Ready(false),
                    Poll::Pending if self.answered(cx) => return Poll::Ready(false),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Poll::Ready(true)
        })
        .await;
        self.out.clear();
        whole
    }

    /// Grows the read buffer by `grow` when less than `READ_ROOM` is left.
    fn make_room(&mut self, grow: usize) {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(grow);
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, grow: usize) -> Poll<io::Result<usize>> {
        self.make_room(grow);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Sends `req` and reads the response head. The connection goes on with the response
    /// body; an error leaves it closed. With `pass`, the response's header map is empty and
    /// its body holds the lines to pass on instead ([`Body::passed_head`]).
    ///
    /// `req` is borrowed, not taken: a request moved into each layer's future on its way
    /// here was copied at each (264 bytes). Its body is consumed (left empty) once sent.
    pub async fn send(
        mut self,
        req: &mut Request<ReqBody>,
        pass: bool,
        forwarding: Option<&Forwarding>,
    ) -> io::Result<Response<Body>> {
        let sending = encode_head(&mut self.out, req, forwarding)?;
        let whole = match sending {
            Kind::Length(0) => self.write_out(&[]).await,
            _ => self.write_body(req.body_mut(), sending).await?,
        };
        // (the client's body is let go of before the wait for the answer, as when it was owned)
        *req.body_mut() = ReqBody::Empty;
        let is_head = req.method() == Method::HEAD;
        loop {
            if !self.buf.is_empty() {
                if let Some((head, mut decode, keep)) = parse_head(&mut self.buf, is_head, pass)? {
                    settle(&mut decode, &mut self.buf);
                    let left = match decode {
                        Decode::Length(n) => Some(n - self.buf.len().min(n as usize) as u64),
                        _ => None,
                    };
                    let batch = Batch::new(left, matches!(self.io, Io::Tcp(_)));
                    let mut response = Response::new(Body {
                        conn: Some(self),
                        decode,
                        keep: keep && whole,
                        batch,
                        passed: head.3,
                    });
                    *response.status_mut() = head.0;
                    *response.version_mut() = head.1;
                    *response.headers_mut() = head.2;
                    return Ok(response);
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(invalid("response head too long"));
                }
            }
            if poll_fn(|cx| self.poll_read(cx, READ_SIZE)).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if self.buf.is_empty() {
                        "the app closed the connection before a response"
                    } else {
                        "the app closed the connection within the response head"
                    },
                ));
            }
        }
    }

    /// Writes the body after the head in `out`, gathering small pieces. False when the app
    /// answered (or closed) before the body was all sent: the rest is not sent, and the
    /// connection is not reused.
    async fn write_body(&mut self, body: &mut ReqBody, sending: Kind) -> io::Result<bool> {
        let mut framer = Framer::new(sending);
        while framer.wants_more() {
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // what is gathered goes out while the client sends more; an app that
                    // answers meanwhile (a 413, a redirect) ends the upload
                    if !self.write_out(&[]).await {
                        return Ok(false);
                    }
                    let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(frame) => Poll::Ready(Some(frame)),
                        Poll::Pending if self.answered(cx) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    })
                    .await;
                    match next {
                        Some(frame) => frame,
                        None => return Ok(false),
                    }
                }
            };
            let Some(frame) = frame else { break };
            // (none for trailers: request trailers are not passed on)
            let Some(data) = framer.data(&mut self.out, frame)? else {
                continue;
            };
            if self.out.len() + data.len() <= GATHER {
                self.out.extend_from_slice(&data);
            } else if !self.write_out(&data).await {
                return Ok(false);
            }
            framer.after(&mut self.out);
        }
        framer.end(&mut self.out)?;
        Ok(self.write_out(&[]).await)
    }
}

/// Writes the request line and headers into `out`, with hyper's client rules for framing:
/// an empty body adds nothing, a Content-Length already set is kept, a body of known size
/// gets one, GET/HEAD/CONNECT send none of an unknown one, anything else goes chunked.
fn encode_head(
    out: &mut Vec<u8>,
    req: &mut Request<ReqBody>,
    forwarding: Option<&Forwarding>,
) -> io::Result<Kind> {
    // (what the body and method tell is read before the header map is changed)
    let body = req.body();
    let (end_stream, exact) = (body.is_end_stream(), body.size_hint().exact());
    let bodiless = matches!(*req.method(), Method::GET | Method::HEAD | Method::CONNECT);
    let headers = req.headers_mut();
    // framing is this connection's to choose
    headers.remove(header::TRANSFER_ENCODING);
    if !end_stream {
        // (usher answered the client's `Expect: 100-continue` itself: the body comes at once)
        headers.remove(header::EXPECT);
    }
    let sending = if end_stream {
        Kind::Length(0)
    } else if let Some(v) = headers.get(header::CONTENT_LENGTH) {
        Kind::Length(
            parse_length(v.as_bytes()).ok_or_else(|| invalid("bad request Content-Length"))?,
        )
    } else if let Some(n) = exact {
        headers.insert(header::CONTENT_LENGTH, n.into());
        Kind::Length(n)
    } else if bodiless {
        Kind::Length(0)
    } else {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Kind::Chunked
    };
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let uri = req.uri();
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => {
            let _ = write!(out, "{uri}");
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = forwarding {
        f.write(out);
    }
    out.extend_from_slice(b"\r\n");
    Ok(sending)
}

/// What the start of the buffer is, while a request is still being sent.
enum Interim {
    /// A complete interim head (1xx, not 101) of this length.
    Head(usize),
    /// Too little to tell.
    Partial,
    /// The final answer, or bytes that are not a head.
    Final,
}

fn interim(buf: &[u8]) -> Interim {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let done = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    );
    let interim = |code: Option<u16>| code.is_some_and(|c| (100..200).contains(&c) && c != 101);
    match done {
        Ok(httparse::Status::Complete(len)) if interim(parsed.code) => Interim::Head(len),
        Ok(httparse::Status::Partial) if parsed.code.is_none() || interim(parsed.code) => {
            Interim::Partial
        }
        _ => Interim::Final,
    }
}

/// A chunk-size line at the start of `buf` (RFC 9112 section 7.1): hex digits, then
/// extensions, then CRLF. The line's length and the size; `None` while it is incomplete.
/// Stricter than httparse's: a digit must come first and a bare CR or LF is refused, as
/// hyper does (a lenient reading here is how bodies get split differently by two parties).
fn chunk_size(buf: &[u8]) -> io::Result<Option<(usize, u64)>> {
    let bad = || invalid("malformed chunk size line");
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Err(bad())
        } else {
            Ok(None)
        };
    };
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(bad());
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return Err(bad());
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| bad())?;
    let size = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
    Ok(Some((lf + 1, size)))
}

/// A response head: status, version, headers, and in place of the headers the lines passed
/// on as they are, when asked for (see [`PassedHead`]).
type Head = (StatusCode, Version, HeaderMap, Option<PassedHead>);

/// Parses the response head at the start of `buf` and splits it off: `None` while it is
/// incomplete. A 1xx interim head is dropped and the next one parsed. Also returns how the
/// body is framed and whether the connection may be reused after it. With `pass`, the header
/// lines are kept as lines for the client, hop-by-hop ones left out, instead of in a map
/// (unless Connection names a header: the map and the proxy's strip take those).
fn parse_head(
    buf: &mut BytesMut,
    is_head: bool,
    mut pass: bool,
) -> io::Result<Option<(Head, Decode, bool)>> {
    loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("response head with more than 100 headers"))
            }
            Err(_) => return Err(invalid("malformed response head")),
        };
        if len > MAX_HEAD {
            return Err(invalid("response head too long"));
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
            .map_err(|_| invalid("response status out of range"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(invalid(
                    "101 Switching Protocols to a request without Upgrade",
                ));
            }
            // (100 Continue, 103 Early Hints: interim, not passed on)
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        // a Connection that names a header: the map takes them, and the proxy's strip
        pass &= !parsed.headers.iter().any(|h| {
            h.name.len() == 10
                && Line::of(h.name.as_bytes()) == Line::Connection
                && connection_options(h.value).names_other
        });
        let mut framing = Framing::default();
        let (mut map, mut passed) = if pass {
            // the lines are copied as they are read: the head's bytes are let go at once
            let mut p = PassedHead::with_capacity(len);
            for h in parsed.headers.iter() {
                let (name, raw) = (h.name.as_bytes(), h.value);
                let line = Line::of(name);
                if !framing.read(line, raw)? {
                    continue;
                }
                match line {
                    // (kept below: the writer sets the framing)
                    Line::ContentLength | Line::HopByHop => {}
                    Line::KeepAlive => p.set_keep_alive(super::keep_alive_timeout(raw)),
                    _ => p.push(line, name, raw),
                }
            }
            buf.advance(len);
            (HeaderMap::new(), Some(p))
        } else {
            // the values share the head's bytes: where each line is, then the head split off
            let count = parsed.headers.len();
            let mut offsets = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
            let base = buf.as_ptr() as usize;
            for (o, h) in offsets.iter_mut().zip(parsed.headers.iter()) {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                *o = (
                    name as u32,
                    h.name.len() as u32,
                    value as u32,
                    h.value.len() as u32,
                );
            }
            let head = buf.split_to(len).freeze();
            let mut map = crate::headers::empty_map(count);
            for &(n, nl, v, vl) in &offsets[..count] {
                let (n, v) = (n as usize, v as usize);
                let name = &head[n..n + nl as usize];
                if !framing.read(Line::of(name), &head[v..v + vl as usize])? {
                    continue;
                }
                let name =
                    header_name(name).map_err(|_| invalid("malformed response header name"))?;
                let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl as usize))
                    .map_err(|_| invalid("malformed response header value"))?;
                map.append(name, value);
            }
            (map, None)
        };
        let Framing {
            length,
            chunked,
            close,
            keep_alive,
        } = framing;
        let mut keep = !close && (version == Version::HTTP_11 || keep_alive);
        let decode =
            if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Decode::Length(0)
            } else if let Some(chunked) = chunked {
                // both framings at once is how responses get smuggled, and HTTP/1.0 has no
                // Transfer-Encoding: the connection ends here, and the length is not passed on
                keep &= chunked && length.is_none() && version == Version::HTTP_11;
                if length.is_some() {
                    map.remove(header::CONTENT_LENGTH);
                }
                if chunked {
                    Decode::Chunked(Chunk::Size)
                } else {
                    keep = false;
                    Decode::Close
                }
            } else if let Some(n) = length {
                Decode::Length(n)
            } else {
                keep = false;
                Decode::Close
            };
        if let (Some(p), Some(n)) = (&mut passed, length) {
            // (as the map keeps it: not beside chunked)
            if is_head || chunked.is_none() {
                p.set_length(n);
            }
        }
        return Ok(Some(((status, version, map, passed), decode, keep)));
    }
}

/// What a response head's lines say of its framing and its connection.
#[derive(Debug, Default)]
struct Framing {
    length: Option<u64>,
    /// Transfer-Encoding, and whether its last coding is chunked.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl Framing {
    /// Takes in one line; false for a line that goes no further: this hop's framing and
    /// connection options, a repeated Content-Length.
    fn read(&mut self, line: Line, raw: &[u8]) -> io::Result<bool> {
        match line {
            Line::ContentLength => {
                let n = parse_length(raw).ok_or_else(|| invalid("bad Content-Length"))?;
                if self.length.is_some_and(|l| l != n) {
                    return Err(invalid("conflicting Content-Length headers"));
                }
                Ok(self.length.replace(n).is_none())
            }
            Line::TransferEncoding => {
                // (only the last coding counts: chunked must be the final one)
                let last = raw.rsplit(|b| *b == b',').next().unwrap_or_default();
                self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                // the body is decoded here: its framing is not passed on
                Ok(false)
            }
            Line::Connection => {
                let o = connection_options(raw);
                self.close |= o.close;
                self.keep_alive |= o.keep_alive;
                // hop-by-hop: dropped here when it names no other header, so the proxy's
                // strip finds nothing to do on the usual response
                Ok(o.names_other)
            }
            _ => Ok(true),
        }
    }
}

/// What a Connection value says: `close`, `keep-alive`, and whether it names anything else
/// (a header, hop-by-hop for this response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    names_other: bool,
}

fn connection_options(value: &[u8]) -> ConnectionOptions {
    let mut o = ConnectionOptions::default();
    // (the usual values, in one comparison)
    if value.eq_ignore_ascii_case(b"keep-alive") {
        o.keep_alive = true;
        return o;
    }
    for t in value.split(|b| *b == b',') {
        let t = t.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            o.close = true;
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            o.keep_alive = true;
        } else if !t.is_empty() {
            o.names_other = true;
        }
    }
    o
}

/// Where a response body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the app closes the connection.
    Close,
    Done,
    /// Ended with an error.
    Failed,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Within a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, before the trailer section's end.
    Trailers,
}

/// What one step of decoding gave.
enum Step {
    Frame(Frame<Bytes>),
    /// Nothing yet: read more.
    More,
    End,
}

/// A response body read off its connection.
#[derive(Debug)]
pub struct Body {
    /// `None` once reclaimed.
    conn: Option<Conn>,
    decode: Decode,
    /// The connection may carry another request once this body ends.
    keep: bool,
    /// Whether a long body is read in batches.
    batch: Batch,
    /// The response's header lines, when they are passed on as they are.
    passed: Option<PassedHead>,
}

impl Body {
    /// The header lines passed on in place of the response's header map (see [`Conn::send`]).
    pub fn passed_head(&self) -> Option<&PassedHead> {
        self.passed.as_ref()
    }

    /// The same, taken out: for a response that needs its header map after all.
    pub fn take_passed_head(&mut self) -> Option<PassedHead> {
        self.passed.take()
    }

    /// The connection back, when the body ended exactly where the next response would begin
    /// and both sides meant to keep it.
    pub fn reclaim(&mut self) -> Option<Conn> {
        if !self.keep || !self.is_end_stream() {
            return None;
        }
        let mut conn = self.conn.take().filter(|c| c.buf.is_empty())?;
        // (the socket wakes on every arrival again, as the next response head needs)
        conn.set_lowat(1).then_some(conn)
    }
}

/// Moves past what carries no data (a chunk's CRLF, its size line, the empty trailer section)
/// as far as `buf` allows, so the end of a body shows in `is_end_stream` with its last data.
/// (Errors are left for [`step`] to find.)
fn settle(decode: &mut Decode, buf: &mut BytesMut) {
    loop {
        match *decode {
            Decode::Chunked(Chunk::DataEnd) if buf.starts_with(b"\r\n") => {
                buf.advance(2);
                *decode = Decode::Chunked(Chunk::Size);
            }
            Decode::Chunked(Chunk::Size) => match chunk_size(buf) {
                Ok(Some((at, n))) => {
                    buf.advance(at);
                    *decode = Decode::Chunked(match n {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    });
                }
                _ => return,
            },
            Decode::Chunked(Chunk::Trailers) if buf.starts_with(b"\r\n") => {
                buf.advance(2);
                *decode = Decode::Done;
            }
            _ => return,
        }
    }
}

/// One step of decoding from what is buffered.
fn step(decode: &mut Decode, buf: &mut BytesMut) -> io::Result<Step> {
    loop {
        let (state, step) = match *decode {
            Decode::Done | Decode::Failed | Decode::Length(0) => return Ok(Step::End),
            _ if buf.is_empty() => return Ok(Step::More),
            Decode::Length(n) => {
                let take = n.min(buf.len() as u64);
                (Decode::Length(n - take), data(buf, take as usize))
            }
            Decode::Close => (Decode::Close, data(buf, buf.len())),
            Decode::Chunked(Chunk::Data(n)) => {
                let take = n.min(buf.len() as u64);
                let next = match n - take {
                    0 => Chunk::DataEnd,
                    rest => Chunk::Data(rest),
                };
                (Decode::Chunked(next), data(buf, take as usize))
            }
            Decode::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                (Decode::Chunked(Chunk::Size), Step::More)
            }
            Decode::Chunked(Chunk::Size) => match chunk_size(buf)? {
                Some((at, n)) => {
                    buf.advance(at);
                    let next = match n {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    };
                    (Decode::Chunked(next), Step::More)
                }
                None => return Ok(Step::More),
            },
            Decode::Chunked(Chunk::Trailers) => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    (Decode::Done, Step::End)
                } else {
                    match trailers(buf)? {
                        Some(map) => (Decode::Done, Step::Frame(Frame::trailers(map))),
                        None => return Ok(Step::More),
                    }
                }
            }
        };
        *decode = state;
        match step {
            Step::More => continue,
            done => return Ok(done),
        }
    }
}

/// The next `n` buffered bytes as a data frame.
fn data(buf: &mut BytesMut, n: usize) -> Step {
    Step::Frame(Frame::data(buf.split_to(n).freeze()))
}

/// The trailer section at the start of `buf`, split off; `None` while it is incomplete.
fn trailers(buf: &mut BytesMut) -> io::Result<Option<HeaderMap>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => return Ok(None),
        _ => return Err(invalid("malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(name, value);
        }
    }
    buf.advance(len);
    Ok(Some(map))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match step(&mut this.decode, &mut conn.buf) {
                Ok(Step::Frame(frame)) => {
                    settle(&mut this.decode, &mut conn.buf);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.decode = Decode::Done;
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
            }
            let grow = match this.decode {
                Decode::Length(n) => (n as usize).clamp(READ_SIZE, BIG_READ),
                _ => 2 * READ_SIZE,
            };
            // (a socket whose mark could not be set is not reused: it closes after the body)
            if let Some(mark) = this.batch.mark(this.decode) {
                if !conn.set_lowat(mark) {
                    this.keep = false;
                }
            }
            let read = match conn.poll_read(cx, grow) {
                Poll::Pending if this.batch.out_of_patience(cx) => {
                    // (an app sending slowly: what has come is read now, the rest as it comes)
                    if !conn.set_lowat(1) {
                        this.keep = false;
                    }
                    continue;
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(read) => read,
            };
            this.batch.read();
            match read {
                Ok(0) if this.decode == Decode::Close => {
                    this.decode = Decode::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the app closed the connection within the response body",
                    );
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done | Decode::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Body {
    /// Ends the body with `e`; the connection closes.
    fn fail(&mut self, e: io::Error) -> BoxError {
        self.decode = Decode::Failed;
        self.conn = None;
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes what `raw` holds: the frames, where decoding stopped, what is left over.
    fn decode(raw: &[u8], mut decode: Decode) -> (Vec<Frame<Bytes>>, Decode, BytesMut) {
        let mut buf = BytesMut::from(raw);
        settle(&mut decode, &mut buf);
        let mut frames = Vec::new();
        loop {
            match step(&mut decode, &mut buf).unwrap() {
                Step::Frame(f) => {
                    frames.push(f);
                    settle(&mut decode, &mut buf);
                }
                Step::End => break (frames, Decode::Done, buf),
                Step::More => break (frames, decode, buf),
            }
        }
    }

    fn text(frames: &[Frame<Bytes>]) -> String {
        frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    #[test]
    fn a_chunked_body_is_decoded_and_its_end_seen_with_the_last_data() {
        let mut buf = BytesMut::from(&b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..]);
        let mut d = Decode::Chunked(Chunk::Size);
        settle(&mut d, &mut buf);
        let mut got = String::new();
        while let Step::Frame(f) = step(&mut d, &mut buf).unwrap() {
            got.push_str(std::str::from_utf8(f.data_ref().unwrap()).unwrap());
            settle(&mut d, &mut buf);
            if got == "hello world" {
                // the end is known with the last data, before anyone asks for more
                assert_eq!(d, Decode::Done);
            }
        }
        assert_eq!(got, "hello world");
        assert!(buf.is_empty());
    }

    #[test]
    fn chunked_trailers_become_a_frame() {
        let (frames, d, rest) = decode(
            b"2\r\nok\r\n0\r\nx-checksum: abc\r\n\r\n",
            Decode::Chunked(Chunk::Size),
        );
        assert_eq!(d, Decode::Done);
        assert!(rest.is_empty());
        let t = frames.last().and_then(|f| f.trailers_ref()).unwrap();
        assert_eq!(t["x-checksum"], "abc");
    }

    #[test]
    fn a_partial_chunk_waits_and_bad_framing_fails() {
        let (frames, d, _) = decode(b"a\r\nhel", Decode::Chunked(Chunk::Size));
        assert_eq!(text(&frames), "hel");
        assert_eq!(d, Decode::Chunked(Chunk::Data(7)));
        for bad in [&b"zz\r\n"[..], b"2\r\nokX\r\n"] {
            let mut buf = BytesMut::from(bad);
            let mut d = Decode::Chunked(Chunk::Size);
            let failed = loop {
                match step(&mut d, &mut buf) {
                    Ok(Step::Frame(_)) => continue,
                    Ok(_) => break false,
                    Err(_) => break true,
                }
            };
            assert!(failed, "{bad:?}");
        }
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (frames, d, rest) = decode(b"abcEXTRA", Decode::Length(3));
        assert_eq!(text(&frames), "abc");
        assert_eq!(d, Decode::Done);
        // (left over: `Body::reclaim` refuses such a connection)
        assert_eq!(&rest[..], b"EXTRA");
    }

    fn head(raw: &[u8], is_head: bool) -> io::Result<Option<(Head, Decode, bool)>> {
        parse_head(&mut BytesMut::from(raw), is_head, false)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |raw: &[u8], is_head| {
            let (_, d, keep) = head(raw, is_head).unwrap().unwrap();
            (d, keep)
        };
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            (Decode::Length(5), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            (Decode::Length(0), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            (Decode::Length(0), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            ),
            (Decode::Chunked(Chunk::Size), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                false
            ),
            (Decode::Chunked(Chunk::Size), false)
        );
        let ((_, _, map, _), ..) = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(
            map.get("content-length").is_none(),
            "the length is not passed on"
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            (Decode::Chunked(Chunk::Size), false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            (Decode::Close, false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (Decode::Length(1), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false),
            (Decode::Length(1), false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (Decode::Length(1), true)
        );
    }

    #[test]
    fn connection_values_are_read_in_one_pass() {
        let o = |close, keep_alive, names_other| ConnectionOptions {
            close,
            keep_alive,
            names_other,
        };
        assert_eq!(connection_options(b"Keep-Alive"), o(false, true, false));
        assert_eq!(connection_options(b"close"), o(true, false, false));
        assert_eq!(
            connection_options(b" close ,, KEEP-ALIVE"),
            o(true, true, false)
        );
        assert_eq!(
            connection_options(b"keep-alive, x-secret"),
            o(false, true, true)
        );
        assert_eq!(connection_options(b"closed"), o(false, false, true));
        assert_eq!(connection_options(b""), o(false, false, false));
    }

    #[test]
    fn passed_heads_keep_end_to_end_lines_and_leave_the_rest_out() {
        let passed = |raw: &[u8], is_head| {
            let ((status, _, map, passed), decode, keep) =
                parse_head(&mut BytesMut::from(raw), is_head, true)
                    .unwrap()
                    .unwrap();
            assert_eq!(status, StatusCode::OK);
            (map, passed, decode, keep)
        };
        let raw = b"HTTP/1.1 200 OK\r\nServer: app\r\nConnection: keep-alive\r\n\
            Keep-Alive: timeout=5, max=9\r\nSet-Cookie: a=1\r\nTE: trailers\r\nUpgrade: h2c\r\n\
            Proxy-Authenticate: Basic\r\nContent-Type: application/grpc\r\n\
            Transfer-Encoding: chunked\r\nSet-Cookie: b=2\r\n\r\n";
        let (map, p, decode, keep) = passed(raw, false);
        assert!(map.is_empty(), "{map:?}");
        let p = p.expect("lines passed");
        assert_eq!(
            p.lines(),
            b"Server: app\r\nSet-Cookie: a=1\r\nContent-Type: application/grpc\r\nSet-Cookie: b=2\r\n"
        );
        assert!(p.is_stream() && !p.has_date());
        assert_eq!(p.keep_alive(), Some(std::time::Duration::from_millis(4500)));
        assert_eq!(p.length(), None);
        assert_eq!((decode, keep), (Decode::Chunked(Chunk::Size), true));

        // the length is kept aside: the writer sets the framing
        let raw = b"HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 42\r\n\r\n";
        let (_, p, decode, _) = passed(raw, false);
        let p = p.unwrap();
        assert_eq!((p.lines(), p.length()), (&b"Date: x\r\n"[..], Some(42)));
        assert!(p.has_date());
        assert_eq!(decode, Decode::Length(42));
        let (_, p, decode, _) = passed(raw, true);
        assert_eq!(p.unwrap().length(), Some(42));
        assert_eq!(decode, Decode::Length(0));

        // a Connection that names a header: the map, and the proxy's strip
        let raw =
            b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n";
        let (map, p, ..) = passed(raw, false);
        assert!(p.is_none());
        assert_eq!(map["connection"], "x-secret");
        assert_eq!(map["x-secret"], "1");
    }

    #[test]
    fn interim_heads_are_skipped_and_bad_heads_refused() {
        let ((status, _, map, _), ..) = head(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nx: 1\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(map["x"], "1");
        assert_eq!(map.get_all("content-length").iter().count(), 1);
        // framing and connection options are this hop's, and consumed here; a Connection
        // that names a header stays for the proxy's strip
        let ((_, _, map, _), ..) = head(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(map.is_empty(), "{map:?}");
        let ((_, _, map, _), ..) = head(
            b"HTTP/1.1 200 OK\r\nconnection: close, x-secret\r\nx-secret: 1\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(map["connection"], "close, x-secret");
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length", false)
            .unwrap()
            .is_none());
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunk_size_lines_are_read_strictly() {
        assert_eq!(chunk_size(b"5\r\nhello").unwrap(), Some((3, 5)));
        assert_eq!(chunk_size(b"A ;name=v\r\n").unwrap(), Some((11, 10)));
        assert_eq!(chunk_size(b"1f").unwrap(), None);
        for bad in [
            &b"\r\n"[..],
            b" \r\n",
            b";x\r\n",
            b"5;a\nb\r\n",
            b"5\n",
            b"5x\r\n",
            b"5;a\rb\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
        assert!(chunk_size(&[b'1'; MAX_CHUNK_LINE]).is_err());
    }

    #[test]
    fn interim_heads_are_told_from_the_answer() {
        assert!(matches!(
            interim(b"HTTP/1.1 100 Continue\r\n\r\nHTTP"),
            Interim::Head(25)
        ));
        assert!(matches!(interim(b"HTTP/1.1 1"), Interim::Partial));
        assert!(matches!(
            interim(b"HTTP/1.1 103 Early\r\nlink: <"),
            Interim::Partial
        ));
        assert!(matches!(interim(b"HTTP/1.1 413 Too\r\n"), Interim::Final));
        assert!(matches!(
            interim(b"HTTP/1.1 101 Switching\r\n\r\n"),
            Interim::Final
        ));
        assert!(matches!(interim(b"garbage\r\n"), Interim::Final));
    }

    #[test]
    fn request_heads_follow_hyper_framing() {
        let encode = |method: Method, headers: &[(&str, &str)], body: ReqBody| {
            let mut req = Request::new(body);
            *req.method_mut() = method;
            *req.uri_mut() = "/p?q=1".parse().unwrap();
            for (n, v) in headers {
                req.headers_mut().append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let mut out = Vec::new();
            let sending = encode_head(&mut out, &mut req, None).unwrap();
            (String::from_utf8(out).unwrap(), sending)
        };
        let (text, sending) = encode(
            Method::GET,
            &[("host", "a"), ("transfer-encoding", "chunked")],
            ReqBody::Empty,
        );
        assert_eq!(text, "GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        assert_eq!(sending, Kind::Length(0));
        let (text, sending) = encode(Method::POST, &[("content-length", "0")], ReqBody::Empty);
        assert_eq!(text, "POST /p?q=1 HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(sending, Kind::Length(0));

        // the X-Forwarded-* lines come last
        let mut req = Request::new(ReqBody::Empty);
        req.headers_mut().insert("host", "a".parse().unwrap());
        let f = Forwarding::take(req.headers_mut(), "192.0.2.7".parse().unwrap(), false, None);
        let mut out = Vec::new();
        encode_head(&mut out, &mut req, Some(&f)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }
}
