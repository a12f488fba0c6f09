//! HTTP/1.1 on the wire, shared by the server's fast path (`server/h1.rs`) and the upstream
//! client (`upstream/h1.rs`): header values read from raw bytes, and gathered writes.

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};

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
