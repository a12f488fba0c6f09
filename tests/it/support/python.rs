//! Real Python app servers from PyPI (gunicorn, uvicorn) running `tests/apps/app.py`, and the
//! `websockets` client, from the virtualenv `./scripts/test` makes in `target/pyenv`
//! (`USHER_TEST_PYTHON` names another interpreter).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port};

/// The interpreter that has gunicorn, uvicorn and websockets installed.
pub fn python() -> PathBuf {
    let path = std::env::var_os("USHER_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: ./scripts/test installs gunicorn, uvicorn and websockets there",
        path.display()
    );
    path
}

/// `tests/apps`, where the app and the WebSocket client live.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A running Python app server on 127.0.0.1; stopped (by its PID) when dropped.
pub struct PyApp {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    port: u16,
    name: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Gunicorn,
    Uvicorn,
}

impl PyApp {
    /// gunicorn with 2 gthread workers and a 2 s keep-alive, as the issue prescribes.
    pub async fn gunicorn(name: &str) -> PyApp {
        PyApp::launch(Kind::Gunicorn, name, free_port()).await
    }

    /// uvicorn with its default 5 s keep-alive.
    pub async fn uvicorn(name: &str) -> PyApp {
        PyApp::launch(Kind::Uvicorn, name, free_port()).await
    }

    async fn launch(kind: Kind, name: &str, port: u16) -> PyApp {
        let mut cmd = Command::new(python());
        let bind = format!("127.0.0.1:{port}");
        match kind {
            Kind::Gunicorn => cmd
                .args(["-m", "gunicorn", "-k", "gthread", "-w", "2"])
                .args([
                    "--threads",
                    "4",
                    "--keep-alive",
                    "2",
                    "--graceful-timeout",
                    "1",
                    "--no-control-socket",
                    "-b",
                    &bind,
                    "app:wsgi",
                ]),
            Kind::Uvicorn => cmd.args(["-m", "uvicorn", "app:asgi"]).args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--timeout-keep-alive",
                "5",
                "--log-level",
                "warning",
            ]),
        };
        let verbose = std::env::var_os("USHER_TEST_LOG").is_some();
        let out = || {
            if verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        let child = cmd
            .current_dir(apps_dir())
            .env("APP_NAME", name)
            .stdin(Stdio::null())
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("start the Python app server");
        let mut app = PyApp {
            child: Some(child),
            addr: bind,
            port,
            name: name.to_owned(),
            kind,
        };
        app.wait_listening().await;
        app
    }

    async fn wait_listening(&mut self) {
        let addr = self.addr.clone();
        let child = self.child.as_mut().unwrap();
        eventually("the Python app server accepts connections", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the Python app server exited at start: {status}");
            }
            std::net::TcpStream::connect(&addr).is_ok()
        })
        .await;
    }

    /// Kills the server at once (SIGKILL, by its PID), as a crashed container.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        *self = PyApp::launch(self.kind, &self.name, self.port).await;
    }
}

impl Drop for PyApp {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // gunicorn stops its workers on SIGTERM (within --graceful-timeout); SIGKILL would
        // leave them running until they notice
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
