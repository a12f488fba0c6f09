//! Socket options that neither std, tokio, socket2 nor nix offer, each measured worth having:
//! one of the crate's two `unsafe` blocks (the other is `heap.rs`), a plain `setsockopt` of an
//! integer.
//!
//! - `SO_RCVLOWAT` on upstream connections reading a long body (`upstream/h1/batch.rs`):
//!   +20% requests/s on proxied 1 MiB responses.
//! - `TCP_DEFER_ACCEPT` on the listeners: a new connection is handed to usher with its first
//!   bytes (a TLS ClientHello, a request head) instead of on its own, one wake-up less per
//!   connection: +5% connections/s when each request comes on a new TLS connection.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::libc;
use tokio::net::{TcpListener, TcpStream};

/// Sets `SO_RCVLOWAT` on `tcp`: readiness (and wake-ups) only once `bytes` are buffered, or
/// the connection closed, or the receive window is nearly full (the kernel's own guard).
/// A read still returns what is there.
pub fn set_rcvlowat(tcp: &TcpStream, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int(tcp, libc::SOL_SOCKET, libc::SO_RCVLOWAT, value)
}

/// Sets `TCP_DEFER_ACCEPT` on `listener`: the kernel completes a connection's accept once it
/// has data, or, with none, after the first retransmission of its SYN-ACK (about a second
/// for a one-second wait: Linux counts the wait in retransmissions, so a longer one grows
/// in doubling steps), when it is accepted as usual. Linux only; elsewhere nothing is set.
pub fn set_defer_accept(listener: &TcpListener, wait: Duration) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let secs = wait.as_secs().clamp(1, libc::c_int::MAX as u64) as libc::c_int;
        set_int(listener, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (listener, wait);
        Ok(())
    }
}

#[allow(unsafe_code)]
fn set_int(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let fd = socket.as_fd();
    // SAFETY: `fd` is borrowed from an open socket for the whole call; the kernel reads a
    // c_int from the pointer, with that length, during the call only.
    let done = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
