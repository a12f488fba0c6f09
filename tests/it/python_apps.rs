//! usher in front of real Python app servers from PyPI (gunicorn, uvicorn): the keep-alive
//! race, a member killed and restarted under load, and a real WebSocket client. Each load
//! test prints its figures; `benches/python_apps.sh` runs them for 60 s
//! (`USHER_RACE_SECS`, default 12 here, to keep CI short).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::python::{apps_dir, python, PyApp};
use crate::support::{bounded, Client, Proto, TestServer, STEP};

/// How long the keep-alive race runs.
fn race_secs() -> u64 {
    std::env::var("USHER_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

fn site(pool: &str) -> String {
    format!(
        "{pool}\n[[site]]\nnames = [\"app.test\"]\ndefault = true\nhttp_redirect = false\n[[site.route]]\npath = \"/\"\nproxy = \"app\"\n"
    )
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    bad_gateway: usize,
    other: Vec<u16>,
}

/// Clients that each send a GET, then wait an interval that sweeps across `around` ± 0.6 s
/// in 100 ms steps (a different phase per client), for `secs`: requests keep arriving just
/// before, at and just after the moment the app closes an idle connection.
async fn race(usher: std::net::SocketAddr, around: Duration, clients: usize, secs: u64) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::plain(usher, Proto::H1).await;
            let mut step = k;
            while Instant::now() < end {
                let r = c.get("app.test", "/race").await;
                {
                    let mut t = tally.lock().unwrap();
                    match r.status.as_u16() {
                        200 => t.ok += 1,
                        502 => t.bad_gateway += 1,
                        s => t.other.push(s),
                    }
                }
                let offset = (step % 13) as u64 * 100;
                step += 1;
                tokio::time::sleep(
                    around + Duration::from_millis(offset) - Duration::from_millis(600),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        // the run itself, then the usual bound for the last request
        tokio::time::timeout(Duration::from_secs(secs) + STEP, t)
            .await
            .expect("a race client did not finish in time")
            .expect("race client panicked");
    }
    Arc::try_unwrap(tally).unwrap().into_inner().unwrap()
}

async fn no_502s_behind(app: PyApp, keep_alive: Duration, pool_extra: &str, what: &str) {
    let usher = TestServer::start(&site(&format!(
        "[upstream.app]\nmembers = [\"{}\"]\n{pool_extra}\n",
        app.addr
    )))
    .await;
    let secs = race_secs();
    let t = race(usher.http, keep_alive, 8, secs).await;
    println!(
        "{what}: {secs} s, {} requests: {} ok, {} x 502, other {:?}",
        t.ok + t.bad_gateway + t.other.len(),
        t.ok,
        t.bad_gateway,
        t.other
    );
    assert!(t.ok > 0);
    assert_eq!((t.bad_gateway, t.other.len()), (0, 0), "{what}: {t:?}");
}

/// gunicorn `-k gthread`, 2 workers, keep-alive 2 s, with usher's defaults: zero 502s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_gthread_keep_alive_race_has_no_502s() {
    let app = PyApp::gunicorn("gunicorn").await;
    no_502s_behind(
        app,
        Duration::from_secs(2),
        "",
        "gunicorn gthread, defaults",
    )
    .await;
}

/// The same, with the pool told to keep idle connections 30 s, far beyond gunicorn's 2 s:
/// only the replay of requests that met a connection the app had just closed stands between
/// the client and a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_race_is_covered_by_replay_alone() {
    let app = PyApp::gunicorn("gunicorn").await;
    no_502s_behind(
        app,
        Duration::from_secs(2),
        "idle_timeout = \"30s\"",
        "gunicorn gthread, idle_timeout 30s",
    )
    .await;
}

/// uvicorn, keep-alive 5 s: zero 502s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uvicorn_keep_alive_race_has_no_502s() {
    let app = PyApp::uvicorn("uvicorn").await;
    no_502s_behind(
        app,
        Duration::from_secs(5),
        "idle_timeout = \"30s\"",
        "uvicorn, idle_timeout 30s",
    )
    .await;
}

/// Three uvicorn members under a steady GET load for 10 s; one is killed (SIGKILL) after
/// 3 s and started again after 6 s. No client request fails, and the restarted member
/// serves again within two health-check intervals of listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_costs_no_requests_and_returns_after_restart() {
    let mut apps = Vec::new();
    for name in ["m0", "m1", "m2"] {
        apps.push(PyApp::uvicorn(name).await);
    }
    let interval = Duration::from_secs(1);
    let members: Vec<String> = apps.iter().map(|a| format!("\"{}\"", a.addr)).collect();
    let usher = TestServer::start(&site(&format!(
        "[upstream.app]\nbalance = \"round_robin\"\nmembers = [{}]\n[upstream.app.health]\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
        members.join(", ")
    )))
    .await;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    // (sent, answered) of every request m1 answered
    let served_by_m1: Arc<Mutex<Vec<(Duration, Duration)>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, m1) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            served_by_m1.clone(),
        );
        let addr = usher.http;
        load.push(tokio::spawn(async move {
            let mut c = Client::plain(addr, Proto::H1).await;
            while !stop.load(Ordering::Relaxed) {
                let sent = start.elapsed();
                let r = c.get("app.test", "/steady").await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                    if r.text().starts_with("m1 ") {
                        m1.lock().unwrap().push((sent, start.elapsed()));
                    }
                } else {
                    failed.lock().unwrap().push(format!(
                        "{:?} {} {}",
                        start.elapsed(),
                        r.status,
                        r.text()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep_until((start + Duration::from_secs(3)).into()).await;
    apps[1].kill();
    let killed_at = start.elapsed();
    tokio::time::sleep_until((start + Duration::from_secs(6)).into()).await;
    let restarting_at = start.elapsed();
    apps[1].restart().await;
    let listening_at = start.elapsed();
    tokio::time::sleep_until((start + Duration::from_secs(10)).into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        bounded("load client", t)
            .await
            .expect("load client panicked");
    }
    let served = served_by_m1.lock().unwrap().clone();
    let back_at = served
        .iter()
        .map(|(_, answered)| *answered)
        .find(|t| *t > listening_at)
        .expect("the restarted member never served again");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.lock().unwrap().clone());
    println!(
        "kill/restart: {ok} ok, {} failed; m1 killed at {killed_at:?}, listening again at {listening_at:?}, serving again {:?} later",
        failed.len(),
        back_at - listening_at
    );
    assert!(failed.is_empty(), "client requests failed: {failed:?}");
    assert!(
        !served
            .iter()
            .any(|(sent, answered)| *sent > killed_at && *answered < restarting_at),
        "the dead member was reported serving"
    );
    assert!(
        back_at - listening_at <= 2 * interval,
        "the restarted member took {:?} to get traffic",
        back_at - listening_at
    );
}

/// A real WebSocket client (Python's `websockets`) through usher to uvicorn's WebSocket
/// endpoint, over plain HTTP/1.1 and over TLS: text, binary and a 70 KB message echo back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_websocket_client_echoes_over_http_and_tls() {
    let app = PyApp::uvicorn("ws").await;
    let usher = TestServer::start(&site(&format!(
        "[upstream.app]\nmembers = [\"{}\"]\n",
        app.addr
    )))
    .await;
    let ca = usher.path("ca.pem");
    std::fs::write(&ca, usher.ca()).unwrap();
    let plain = format!("ws://{}/ws", usher.http);
    let tls = format!("wss://{}/ws", usher.https());
    for args in [
        vec![plain],
        vec![tls, ca.to_str().unwrap().to_owned(), "app.test".to_owned()],
    ] {
        let out = tokio::process::Command::new(python())
            .arg(apps_dir().join("ws_echo_client.py"))
            .args(&args)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(STEP, out)
            .await
            .expect("the WebSocket client did not finish in time")
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("echoed 3"),
            "{args:?}: {stdout}{stderr}"
        );
    }
}
