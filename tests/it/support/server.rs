//! usher started in-process from a config the test writes.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use usher::{Config, ServerHandle};

/// A running usher with its own temporary folder (config, certs/, static files).
pub struct TestServer {
    /// The folder holding config, certs/ and files; `{dir}` in the config text stands for it.
    root: PathBuf,
    /// Owned temporary folder, when the harness made it.
    _tmp: Option<tempfile::TempDir>,
    /// Plain listener.
    pub http: SocketAddr,
    /// TLS listener (when a site uses TLS).
    pub https: Option<SocketAddr>,
    /// The local CA certificate PEM, when a site uses `tls = "internal"`.
    pub ca_pem: Option<String>,
    log: LogBuf,
    handle: Option<ServerHandle>,
}

/// Where the access log of an in-process server goes: a buffer the test can read.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `[server]` section every test config starts with: ephemeral ports, text access log.
pub const SERVER_SECTION: &str = r#"
[server]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
certs_dir = "certs"
access_log = "text"
grace_period = "60s"
"#;

impl TestServer {
    /// Starts usher with `SERVER_SECTION` followed by `rest` (sites, timeouts).
    pub async fn start(rest: &str) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = TestServer::start_in(tmp.path(), &format!("{SERVER_SECTION}\n{rest}")).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts usher in `dir` with exactly `config` (`{dir}` replaced by the folder).
    pub async fn start_in(dir: &Path, config: &str) -> TestServer {
        // USHER_TEST_LOG=debug (any tracing filter) shows usher's diagnostics in test output.
        if let Ok(filter) = std::env::var("USHER_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let text = config.replace("{dir}", dir.to_str().unwrap());
        let file = dir.join("proxy.toml");
        std::fs::write(&file, &text).unwrap();
        let config = Config::load(&file).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        let log = LogBuf::default();
        let handle = usher::server::start_with_log(config, Box::new(log.clone()))
            .await
            .unwrap_or_else(|e| panic!("usher did not start: {e}"));
        let ca_pem = handle
            .local_ca
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap());
        TestServer {
            http: handle
                .http_addr
                // a TLS-only config has no plain listener; its tests never use `http`
                .unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()),
            https: handle.https_addr,
            ca_pem,
            root: dir.to_owned(),
            _tmp: None,
            log,
            handle: Some(handle),
        }
    }

    /// The TLS listener's address.
    pub fn https(&self) -> SocketAddr {
        self.https.expect("no TLS listener: no site uses TLS")
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.handle
            .as_ref()
            .and_then(|h| h.admin_addr)
            .expect("no [admin] listen in the config")
    }

    /// Replaces the config file with `SERVER_SECTION` followed by `rest` (for a reload).
    pub fn write_config(&self, rest: &str) {
        let text =
            format!("{SERVER_SECTION}\n{rest}").replace("{dir}", self.root.to_str().unwrap());
        std::fs::write(self.root.join("proxy.toml"), text).unwrap();
    }

    /// Reloads the config file, as SIGHUP does.
    pub async fn reload(&self) -> Result<usher::server::Status, usher::error::ReloadError> {
        super::bounded("reload", self.handle.as_ref().unwrap().reload()).await
    }

    /// The running config's status, as the admin API reports it.
    pub fn status(&self) -> usher::server::Status {
        self.handle.as_ref().unwrap().control().status().unwrap()
    }

    /// The local CA PEM.
    pub fn ca(&self) -> &str {
        self.ca_pem
            .as_deref()
            .expect("no site uses tls = \"internal\"")
    }

    /// A path inside the server's folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Drains and stops the server, then returns the access log written so far.
    pub async fn stop(mut self) -> String {
        let handle = self.handle.take().unwrap();
        handle.shutdown();
        super::bounded("server drain", handle.wait()).await;
        self.access_log()
    }

    /// The access log as written so far (lines are written when each response completes).
    pub fn access_log(&self) -> String {
        String::from_utf8_lossy(&self.log.0.lock().unwrap()).into_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.shutdown();
        }
    }
}
