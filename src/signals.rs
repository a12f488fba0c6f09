//! Process signals: SIGTERM and SIGINT start a graceful drain; SIGHUP reloads the config.

use std::io;

use tokio::signal::unix::{signal, SignalKind};

/// Waits for the first SIGTERM or SIGINT. Installing the handlers happens before this returns
/// its future, so a signal sent right after start is not lost.
pub fn shutdown_signal() -> io::Result<impl std::future::Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// SIGHUP, each time it comes (installed before this returns).
pub fn reload_signal() -> io::Result<tokio::signal::unix::Signal> {
    signal(SignalKind::hangup())
}
