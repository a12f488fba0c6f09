//! The test harness: start usher in-process with a config written by the test, real upstream
//! servers, and a client that speaks HTTP/1.1 or HTTP/2, plain or over TLS with real SNI.

pub mod client;
pub mod pebble;
pub mod process;
pub mod python;
pub mod server;
pub mod upstream;

#[allow(unused_imports)]
pub use client::{Client, Proto, Resp};
#[allow(unused_imports)]
pub use server::TestServer;
#[allow(unused_imports)]
pub use upstream::{Behaviour, Seen, Upstream};

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

/// The value of the metrics sample `name{labels}` (labels as they appear, in order), if
/// present in `text` (a /metrics page).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Polls `cond` every 50 ms until it holds, failing the test with `what` after [`STEP`]: for
/// behaviour that happens in the background (a retry, a log line), never as a fixed sleep.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + STEP;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {STEP:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on 127.0.0.1 (TCP and UDP) for a server the test starts later (Pebble's
/// validator needs usher's ports before usher runs). Drawn from below Linux's default
/// ephemeral range (32768-60999), so no socket bound to port 0 elsewhere in the suite can be
/// handed the same port in the meantime, and never the same port twice in one test run.
pub fn free_port() -> u16 {
    use std::collections::hash_map::RandomState;
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    for attempt in 0u64..10_000 {
        let port = 20_000 + (RandomState::new().hash_one(attempt) % 12_000) as u16;
        if given.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}
