//! The test harness: start usher in-process with a config written by the test, real upstream
//! servers, and a client that speaks HTTP/1.1 or HTTP/2, plain or over TLS with real SNI.

pub mod client;
pub mod pebble;
pub mod process;
pub mod server;
pub mod upstream;

#[allow(unused_imports)]
pub use client::{Client, Proto, Resp};
#[allow(unused_imports)]
pub use server::TestServer;
#[allow(unused_imports)]
pub use upstream::{Seen, Upstream};

use std::future::Future;
use std::time::Duration;

/// Every network step in a test is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `fut` with the [`STEP`] time limit, failing the test with `what` if it runs out.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {STEP:?}"),
    }
}
