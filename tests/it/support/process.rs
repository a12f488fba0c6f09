//! The real `usher` binary as a child process: for the CLI, signals and exit codes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::STEP;

/// The binary cargo built for these tests.
pub fn usher_bin() -> &'static str {
    env!("CARGO_BIN_EXE_usher")
}

/// Whether the tests run as root (who may write anywhere: permission tests then run the
/// binary as nobody).
pub fn running_as_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// Whether a user other than its owner can run the usher binary (every folder above it
/// searchable): not so when the checkout sits in a private home folder.
pub fn runnable_by_others() -> bool {
    use std::os::unix::fs::PermissionsExt;
    Path::new(usher_bin())
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Runs `usher ARGS` to completion (bounded) and returns its status, stdout and stderr.
pub fn run(args: &[&str], cwd: &Path) -> (ExitStatus, String, String) {
    run_as(args, cwd, None)
}

/// `run`, as the user `uid` when given (for what root would be allowed to do anyway).
pub fn run_as(args: &[&str], cwd: &Path, uid: Option<u32>) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(usher_bin());
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    }
    let child = cmd
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Running {
        child,
        stderr_lines: None,
        seen: Vec::new(),
        stdout: None,
    };
    let status = guard.wait_exit(STEP).expect("usher did not exit in time");
    let out = guard.child.wait_with_output_now();
    (status, out.0, out.1)
}

trait OutputNow {
    fn wait_with_output_now(&mut self) -> (String, String);
}

impl OutputNow for Child {
    fn wait_with_output_now(&mut self) -> (String, String) {
        use std::io::Read;
        let (mut o, mut e) = (String::new(), String::new());
        if let Some(s) = self.stdout.as_mut() {
            s.read_to_string(&mut o).unwrap();
        }
        if let Some(s) = self.stderr.as_mut() {
            s.read_to_string(&mut e).unwrap();
        }
        (o, e)
    }
}

/// A running usher; killed (and reaped) on drop if still running.
pub struct Running {
    pub child: Child,
    stderr_lines: Option<mpsc::Receiver<String>>,
    /// Every stderr line `wait_for_line` went through.
    seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// The addresses usher printed at startup.
pub struct Listening {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

impl Running {
    /// Starts `usher run --config FILE` in `cwd` and waits for its "listening" line.
    pub fn start(config: &Path, cwd: &Path) -> (Running, Listening) {
        Running::start_as(config, cwd, None)
    }

    /// `start`, as the user `uid` when given.
    pub fn start_as(config: &Path, cwd: &Path, uid: Option<u32>) -> (Running, Listening) {
        let mut cmd = Command::new(usher_bin());
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, uid);
        }
        Running::spawn(cmd, config, cwd)
    }

    /// `start` through `wrapper` (a program and its arguments, the usher command after
    /// them): `setpriv ...`, say.
    pub fn start_wrapped(wrapper: &[&str], config: &Path, cwd: &Path) -> (Running, Listening) {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(usher_bin());
        Running::spawn(cmd, config, cwd)
    }

    fn spawn(mut cmd: Command, config: &Path, cwd: &Path) -> (Running, Listening) {
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s);
            s
        });
        let mut running = Running {
            child,
            stderr_lines: Some(rx),
            seen: Vec::new(),
            stdout: Some(stdout),
        };
        let line = running
            .wait_for_line("listening:")
            .expect("usher printed no listening line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let listening = Listening {
            http: field("http="),
            https: field("https="),
        };
        (running, listening)
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> Option<String> {
        let rx = self.stderr_lines.as_ref()?;
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The `Uid:` line of its /proc status: real, effective, saved and filesystem user ids.
    pub fn uid_line(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_owned()
    }

    /// The stderr lines read so far (by `wait_for_line`, and so by `start`).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Sends a signal by PID with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything usher wrote to stdout (the access log); waits for the process to end.
    pub fn stdout(&mut self) -> String {
        self.stdout
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
