//! HTTP/1.1 on the wire, shared by the server's fast path (`server/h1.rs`) and the upstream
//! client (`upstream/h1.rs`): header values read from raw bytes, and gathered writes.

use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
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
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(digits.format(self.len).as_bytes());
        out.extend_from_slice(b"\r\n");
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
