//! HTTP/1.1 requests without a body, served without hyper: the head parsed with httparse (as
//! hyper does), the response head written here, the body written as it comes.
//!
//! Most requests a proxy in front of a web app sees are such: GETs for pages, static files and
//! cached answers. hyper's connection machinery costs about as much CPU as the rest of usher's
//! work on each of them. Anything this path does not take (a body, Upgrade, Expect, `TE:
//! trailers`, HTTP/1.0, a head hyper would refuse with 400 or 431) ends the fast session and goes to a hyper session
//! with the bytes read so far, which answers exactly as it always has.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::conn::{drive, ClientIo, Watched};
use super::{ConnInfo, Shared, WatchLimits};
use crate::body::{BoxError, ClientBody};
use crate::proxy::Writer;
use crate::wire::{
    content_length, has_token, header_name, parse_length, status_line, write_two, EncodedHead,
    Framer, Kind, PassedHead, GATHER,
};

/// Most header lines the fast path parses (on the stack); a request with more goes to hyper,
/// which allows `max_headers`. Browsers send about 15.
const HEADERS: usize = 32;

/// Free room below which the read buffer grows before a read, and by how much.
const READ_ROOM: usize = 1024;
const READ_GROW: usize = 4096;

/// The answer in place of a response HTTP/1.1 cannot carry (a 1xx status as the final answer,
/// a malformed Content-Length).
const UNSENDABLE: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// How a fast session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// The connection is done (closed, or dropped by the watcher).
    Closed,
    /// Idle, parked by the watcher: the socket stays open for the next request.
    Parked,
    /// The buffered request is not for this path: hyper takes the connection over.
    Handoff,
}

/// Limits on a request head, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadLimits {
    pub max_size: usize,
    pub max_headers: usize,
}

/// Serves requests without a body on `io` until the connection closes, the watcher parks
/// it, or a request needs hyper. Returns how it ended and the bytes read but not served
/// (for the hyper session that takes over).
pub(super) async fn serve<I: ClientIo>(
    io: &mut I,
    prefix: Bytes,
    info: &Arc<ConnInfo>,
    shared: &Shared,
    head: HeadLimits,
    limits: WatchLimits,
) -> (Ended, Bytes) {
    let stop = AtomicBool::new(false);
    let mut ended = Ended::Closed;
    let mut buf = BytesMut::new();
    // (the socket by reference: the connection's task holds it once, parked or not)
    let mut watched = Watched::new(io, info.clone(), prefix);
    {
        // (in place: the caller boxes this whole future for as long as the session runs)
        let mut session = std::pin::pin!(async {
            let r = session(&mut watched, &mut buf, &stop, info, shared, head).await;
            r.map(|e| ended = e)
        });
        drive(
            session.as_mut(),
            |_| stop.store(true, Ordering::Relaxed),
            info,
            shared,
            limits,
        )
        .await;
    }
    (ended, watched.into_parts(&buf).1)
}

/// What the bytes read so far hold.
// (the request is moved once, into the handler: boxing it would cost an allocation)
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request this path serves, and whether the client asked to close after it.
    Request(Request<ClientBody>, bool),
    /// Not a whole head yet.
    Partial,
    /// A request for hyper (or a head it answers with an error).
    Hyper,
}

async fn session<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Watched<I>,
    buf: &mut BytesMut,
    stop: &AtomicBool,
    info: &Arc<ConnInfo>,
    shared: &Shared,
    limits: HeadLimits,
) -> io::Result<Ended> {
    let mut out = Vec::new();
    loop {
        // 1. a request head: what is buffered, then what the client sends
        let (req, mut close) = loop {
            if !buf.is_empty() {
                match parse(buf, limits) {
                    Parsed::Request(req, close) => break (req, close),
                    Parsed::Partial if buf.len() < limits.max_size => {}
                    _ => return Ok(Ended::Handoff),
                }
            }
            // asked to stop (a drain, the idle limit, parking): a head begun meanwhile goes to
            // the next session when parking (its deadline runs from there), else is dropped
            let read = poll_fn(|cx| {
                if stop.load(Ordering::Relaxed) {
                    return Poll::Ready(None);
                }
                poll_read(io, buf, cx).map(Some)
            })
            .await;
            match read {
                None if info.parking.load(Ordering::Relaxed) => return Ok(Ended::Parked),
                None => {
                    io.shutdown().await?;
                    return Ok(Ended::Closed);
                }
                // the client closed (mid-head or not, hyper would only log it)
                Some(Ok(0)) => return Ok(Ended::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        };

        // 2. the answer, on the config current now; a client that goes away meanwhile
        // cancels it (as hyper does)
        let is_head = req.method() == Method::HEAD;
        let live = shared.live.load_full();
        let resp = {
            let mut handling = pin!(live.proxy.handle(req, info.clone(), Writer::OwnH1));
            poll_fn(|cx| {
                if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(resp));
                }
                match read_ahead(io, buf, cx) {
                    true => Poll::Ready(None),
                    false => Poll::Pending,
                }
            })
            .await
        };
        let Some(mut resp) = resp else {
            return Ok(Ended::Closed);
        };

        // 3. the response (whole, not taken apart: each move of its parts was a copy)
        close |= stop.load(Ordering::Relaxed);
        out.clear();
        let body = resp.body();
        let framing = match body.encoded_head() {
            Some((head, numbers)) => Some(encode_prepared(&mut out, head, numbers, is_head, close)),
            None => encode_head(&mut out, &resp, body.passed_head(), is_head, close),
        };
        let framing = match framing {
            Some(f) => f,
            None => {
                // (hyper answers 500 here; the response came from upstream: 502)
                tracing::error!(peer = %info.peer, status = %resp.status(), "unsendable response head");
                out.clear();
                out.extend_from_slice(UNSENDABLE);
                write_two(io, &mut out, &[]).await?;
                io.shutdown().await?;
                return Ok(Ended::Closed);
            }
        };
        // (its map is written out: kept for a next head)
        crate::headers::recycle(std::mem::take(resp.headers_mut()));
        close |= framing.close;
        if let Err(e) = write_body(io, buf, &mut out, Pin::new(resp.body_mut()), framing.kind).await
        {
            tracing::debug!(peer = %info.peer, error = %e, "response cut short");
            return Ok(Ended::Closed);
        }
        io.flush().await?;
        if close {
            io.shutdown().await?;
            return Ok(Ended::Closed);
        }
    }
}

/// While a request is answered: watches for the client going away, reading what it sends
/// ahead (a pipelined request) into `buf`. True when it closed or the read failed. Reads only
/// while nothing is buffered, as hyper does: a client that sent its requests and closed gets
/// the answers to those already read.
fn read_ahead<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Watched<I>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> bool {
    buf.is_empty() && matches!(poll_read(io, buf, cx), Poll::Ready(Ok(0) | Err(_)))
}

/// Reads from the client into `buf`, growing it first when little room is left.
fn poll_read<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Watched<I>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_GROW);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Parses the head at the start of `buf`; a request this path serves is split off it.
fn parse(buf: &mut BytesMut, limits: HeadLimits) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // (too many headers for this path: hyper counts them against `max_headers`)
        Err(_) => return Parsed::Hyper,
    };
    if len > limits.max_size
        || parsed.headers.len() > limits.max_headers
        || parsed.version != Some(1)
    {
        return Parsed::Hyper;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parsed::Hyper;
    };
    // origin-form only (absolute-form and `*` go to hyper); CONNECT tunnels
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    // the names are checked and copied now; the values and the target are shared with the
    // head's bytes, split off once the parse lets go of them
    let mut names = Names::new();
    let mut close = false;
    let mut has_length = false;
    for h in parsed.headers.iter() {
        let Ok(name) = header_name(h.name.as_bytes()) else {
            return Parsed::Hyper;
        };
        match name {
            header::CONTENT_LENGTH if h.value != b"0" => return Parsed::Hyper,
            // (one is enough, as hyper keeps it: some apps refuse two)
            header::CONTENT_LENGTH if has_length => continue,
            header::CONTENT_LENGTH => has_length = true,
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => return Parsed::Hyper,
            header::CONNECTION => close |= has_token(h.value, b"close"),
            // (a client that takes trailers: hyper sends them after a chunked body)
            header::TE if has_token(h.value, b"trailers") => return Parsed::Hyper,
            _ => {}
        }
        names.push((name, offset(buf, h.value), h.value.len()));
    }
    let target = (offset(buf, path.as_bytes()), path.len());
    let head = buf.split_to(len).freeze();
    match request(&head, method, target, &mut names) {
        Some(req) => Parsed::Request(req, close),
        None => {
            // (a target `http` refuses, such as `/a<b`, that httparse let through: the head goes
            // back in front for hyper, which answers 400)
            let rest = std::mem::take(buf);
            buf.reserve(head.len() + rest.len());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&rest);
            Parsed::Hyper
        }
    }
}

/// Headers a proxied request may gain in its map (`X-Forwarded-For`, `-Proto`, `-Host`, on a
/// caching route or to an HTTP/2 app; usher's HTTP/1.1 client writes them as lines).
const FORWARDING_ROOM: usize = 4;

/// A head's header names and where their values are, on the stack for the usual head (a
/// browser sends about 15): no allocation per request.
type Names = smallvec::SmallVec<[(HeaderName, usize, usize); 16]>;

/// The request of a parsed head: its target and header values share `head`'s bytes.
fn request(
    head: &Bytes,
    method: Method,
    (at, len): (usize, usize),
    names: &mut Names,
) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(head.slice(at..at + len)).ok()?;
    // (room for the forwarding headers a proxied request may get: no regrowth on the way)
    let mut map = crate::headers::empty_map(names.len() + FORWARDING_ROOM);
    for (name, at, len) in names.drain(..) {
        map.append(
            name,
            HeaderValue::from_maybe_shared(head.slice(at..at + len)).ok()?,
        );
    }
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Some(req)
}

/// Where `part` (a slice of `whole`) starts in it.
fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

#[derive(Debug, Clone, Copy)]
struct Framing {
    kind: Kind,
    /// The connection closes after this response.
    close: bool,
}

/// Writes the status line and headers into `out` with hyper's rules (lowercase names, a
/// Content-Length or chunked framing where the body allows, a cached Date, `connection:
/// close` when closing). `None` for a head HTTP/1.1 cannot carry as is (a 1xx, a bad
/// Content-Length). With `passed`, the app's header lines go as they came in place of the
/// (empty) header map: hop-by-hop lines and the framing are already left out of them.
fn encode_head<B: http_body::Body>(
    out: &mut Vec<u8>,
    resp: &Response<B>,
    passed: Option<&PassedHead>,
    is_head: bool,
    close: bool,
) -> Option<Framing> {
    let (status, body) = (resp.status(), resp.body());
    if status.is_informational() {
        return None;
    }
    status_line(out, status);
    let no_length = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_chunk = !is_head && !no_length;
    // None: nothing to send; Some(None): a length not known ahead
    let body_len = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    let mut kind = None;
    let mut said_close = false;
    let mut wrote_date = false;
    if let Some(p) = passed {
        out.extend_from_slice(p.lines());
        wrote_date = p.has_date();
        // (HEAD keeps the length of what GET would send)
        if let Some(n) = p.length().filter(|_| is_head) {
            content_length(out, n);
            kind = Some(Kind::Length(0));
        }
    }
    for (name, value) in resp.headers() {
        match *name {
            header::CONTENT_LENGTH => {
                if kind.is_some() {
                    continue;
                }
                match body_len {
                    Some(Some(n)) => kind = Some(Kind::Length(n)),
                    Some(None) => kind = Some(Kind::Length(parse_length(value.as_bytes())?)),
                    // (HEAD keeps the length of what GET would send)
                    None if is_head => kind = Some(Kind::Length(0)),
                    None => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if !can_chunk || kind.is_some() {
                    continue;
                }
                kind = Some(Kind::Chunked);
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(value.as_bytes());
                if !value.as_bytes().ends_with(b"chunked") {
                    out.extend_from_slice(b", chunked");
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            header::CONNECTION if has_token(value.as_bytes(), b"close") => said_close = true,
            header::DATE => wrote_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut kind = match kind {
        Some(k) => k,
        None => match body_len {
            // (HTTP/1.1 always can, unless there is no body to send)
            Some(None) if can_chunk => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Kind::Chunked
            }
            Some(None) => Kind::Length(0),
            None | Some(Some(0)) => {
                if can_chunk {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Kind::Length(0)
            }
            Some(Some(n)) => {
                if !no_length {
                    content_length(out, n);
                }
                Kind::Length(n)
            }
        },
    };
    if !can_chunk {
        kind = Kind::Length(0);
    }
    end_head(out, close && !said_close, !wrote_date);
    Some(Framing {
        close: close || said_close,
        kind,
    })
}

/// Writes a head encoded ahead ([`EncodedHead`]) into `out`, with `numbers` for its numbered
/// lines: one copy instead of a header map's clone and encoding.
fn encode_prepared(
    out: &mut Vec<u8>,
    head: &EncodedHead,
    numbers: &[u64],
    is_head: bool,
    close: bool,
) -> Framing {
    head.write(out, numbers);
    end_head(out, close, !head.has_date());
    Framing {
        close,
        kind: Kind::Length(if is_head { 0 } else { head.body_len() }),
    }
}

/// Ends a head: `connection: close` and a Date if asked, then the blank line.
fn end_head(out: &mut Vec<u8>, close: bool, date: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the body after the head in `out`, gathering small pieces, and everything gathered
/// before waiting for more of the body. An error: the connection must close (the client
/// cannot tell where this response ends).
async fn write_body<I, B>(
    io: &mut Watched<I>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    mut body: Pin<&mut B>,
    kind: Kind,
) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    let mut framer = Framer::new(kind);
    while framer.wants_more() {
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                write_two(io, out, &[]).await?;
                io.flush().await?;
                // (a client that goes away meanwhile ends the response, and with it the
                // upstream request: a stream or a long poll is not held for nobody)
                let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                    Poll::Ready(frame) => Poll::Ready(Some(frame)),
                    Poll::Pending if read_ahead(io, buf, cx) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                })
                .await;
                next.ok_or(io::ErrorKind::ConnectionAborted)?
            }
        };
        let Some(frame) = frame else { break };
        // (none for trailers: only a client that asked with `TE: trailers` gets them, from hyper)
        let Some(data) = framer.data(out, frame)? else {
            continue;
        };
        if out.len() + data.len() <= GATHER {
            out.extend_from_slice(&data);
        } else {
            write_two(io, out, &data).await?;
        }
        framer.after(out);
    }
    framer.end(out)?;
    write_two(io, out, &[]).await
}

/// The Date header's value, formatted once a second per thread (as hyper does).
mod date {
    use std::cell::RefCell;
    use std::time::UNIX_EPOCH;

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub(super) fn extend(out: &mut Vec<u8>) {
        let now = crate::clock::coarse_wall();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != secs || text.is_empty() {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::wire::Line;
    use http::Response;

    const LIMITS: HeadLimits = HeadLimits {
        max_size: 8192,
        max_headers: 100,
    };

    fn parsed(raw: &[u8]) -> Parsed {
        parse(&mut BytesMut::from(raw), LIMITS)
    }

    #[test]
    fn a_get_is_parsed_and_split_off_its_pipelined_successor() {
        let mut buf = BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next"[..],
        );
        let Parsed::Request(req, close) = parse(&mut buf, LIMITS) else {
            panic!("not parsed");
        };
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x.test");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(&buf[..], b"GET /next");
        assert!(matches!(parse(&mut buf, LIMITS), Parsed::Partial));
    }

    #[test]
    fn requests_this_path_does_not_serve_go_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://x.test/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT x.test:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parsed(raw), Parsed::Hyper),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let many: Vec<u8> = (0..40)
            .flat_map(|i| format!("X-{i}: 1\r\n").into_bytes())
            .collect();
        let raw = [&b"GET / HTTP/1.1\r\n"[..], &many, b"\r\n"].concat();
        assert!(matches!(parsed(&raw), Parsed::Hyper));
    }

    #[test]
    fn connection_close_is_noticed_and_a_zero_length_is_no_body() {
        let Parsed::Request(req, close) = parsed(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
        ) else {
            panic!("not parsed");
        };
        assert!(close);
        // (one Content-Length goes on, as hyper keeps one)
        let lengths = req.headers().get_all(header::CONTENT_LENGTH);
        assert_eq!(lengths.iter().count(), 1);
    }

    #[test]
    fn a_target_http_refuses_goes_to_hyper_with_its_head_in_place() {
        let raw = &b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n"[..];
        let mut buf = BytesMut::from(raw);
        assert!(matches!(parse(&mut buf, LIMITS), Parsed::Hyper));
        assert_eq!(&buf[..], raw);
    }

    fn head(resp: Response<Body>, is_head: bool, close: bool) -> (String, Framing) {
        let mut out = Vec::new();
        let framing = encode_head(&mut out, &resp, None, is_head, close).unwrap();
        let text = String::from_utf8(out).unwrap();
        // (the date changes)
        let text = text
            .lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n");
        (text, framing)
    }

    #[test]
    fn passed_lines_go_as_they_are_with_usher_s_framing() {
        let mut p = PassedHead::with_capacity(64);
        p.push(Line::Other, b"Server", b"app");
        let resp = Response::new(Body::full("hello"));
        let mut out = Vec::new();
        let f = encode_head(&mut out, &resp, Some(&p), false, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nServer: app\r\ncontent-length: 5\r\ndate: "),
            "{text}"
        );
        assert_eq!(f.kind, Kind::Length(5));

        // a HEAD: the app's length, no body; the app's Date, none of usher's
        p.push(Line::Date, b"Date", b"x");
        p.set_length(42);
        let resp = Response::new(Body::empty());
        let mut out = Vec::new();
        let f = encode_head(&mut out, &resp, Some(&p), true, true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: app\r\nDate: x\r\ncontent-length: 42\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(f.kind, Kind::Length(0));
        assert!(f.close);
    }

    #[test]
    fn response_heads_follow_hyper() {
        let full = |s: &'static str| Body::full(s);
        let (text, f) = head(Response::new(full("hello")), false, false);
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 5\n");
        assert_eq!(f.kind, Kind::Length(5));
        assert!(!f.close);

        let mut resp = Response::new(full("hello"));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (text, f) = head(resp, true, true);
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\ncontent-length: 5\nconnection: close\n"
        );
        assert_eq!(f.kind, Kind::Length(0));
        assert!(f.close);

        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let (text, f) = head(resp, false, false);
        assert_eq!(text, "HTTP/1.1 304 Not Modified\n");
        assert_eq!(f.kind, Kind::Length(0));

        let (text, f) = head(Response::new(Body::empty()), false, false);
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 0\n");
        assert_eq!(f.kind, Kind::Length(0));
    }
}
