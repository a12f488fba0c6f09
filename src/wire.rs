//! HTTP/1.1 on the wire, shared by the server's fast path (`server/h1.rs`) and the upstream
//! client (`upstream/h1.rs`): header values read from raw bytes, and gathered writes.

use std::io::{self, IoSlice, Write as _};

use bytes::Bytes;
use http_body::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

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

/// Writes `first` (then empties it) and `second`, in as few writes as the transport allows.
pub async fn write_two<W: AsyncWrite + Unpin>(
    io: &mut W,
    first: &mut Vec<u8>,
    second: &[u8],
) -> io::Result<()> {
    let (mut a, mut b) = (&first[..], second);
    while !a.is_empty() || !b.is_empty() {
        let n = if b.is_empty() {
            io.write(a).await?
        } else if a.is_empty() {
            io.write(b).await?
        } else {
            io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
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
