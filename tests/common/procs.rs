//! Real `paygate` processes for end-to-end tests: start one and wait for its listening line,
//! signal it, kill it; and a temporary directory kept for inspection when a test fails.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// One child process that printed `... listening on ADDR`; killed with SIGKILL on drop.
pub struct Proc {
    child: Child,
    pub url: String,
}

impl Proc {
    /// Starts `paygate ARGS` and waits for the line `<ready> ADDR` on its stdout. Everything it
    /// writes goes to `log` (its tracing output shares stdout with the listening line).
    pub fn start(args: &[String], ready: &str, log: &Path) -> Proc {
        Proc::start_with_env(args, &[], ready, log)
    }

    /// kill -9, then reap.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Proc {
    /// Sends `signal` (a name `kill` knows, e.g. `STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The temp dir of one test run: data dir and process logs. Kept when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("paygate-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} (data dir and process logs) for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts `paygate processor-sim` at `fee` on a loopback port, logging to `dir/NAME.log`.
pub fn start_sim(dir: &Path, fee: &str, name: &str) -> Proc {
    let args = ["processor-sim", "--listen", "127.0.0.1:0", "--fee", fee].map(String::from);
    Proc::start(&args, "processor-sim listening on", &dir.join(format!("{name}.log")))
}

/// Starts `paygate serve` on a loopback port over `default` and `fallback` with the given
/// upstream timeout and defer deadline, its journal in `data`, logging to `log`.
pub fn start_gateway(data: &Path, default: &Proc, fallback: &Proc, upstream_timeout_ms: u64, max_defer_ms: u64, log: &Path) -> Proc {
    start_gateway_with(data, default, fallback, upstream_timeout_ms, max_defer_ms, &[], log)
}

/// As [`start_gateway`], with more flags.
pub fn start_gateway_with(
    data: &Path,
    default: &Proc,
    fallback: &Proc,
    upstream_timeout_ms: u64,
    max_defer_ms: u64,
    extra: &[&str],
    log: &Path,
) -> Proc {
    let (timeout, defer) = (upstream_timeout_ms.to_string(), max_defer_ms.to_string());
    let mut flags = vec!["--upstream-timeout-ms", &timeout, "--max-defer-ms", &defer];
    flags.extend_from_slice(extra);
    let args = gateway_args(data, default, fallback, &flags);
    Proc::start(&args, "paygate listening on", log)
}

impl Proc {
    /// As [`Proc::start`], with extra environment variables for the child.
    pub fn start_with_env(args: &[String], env: &[(&str, &str)], ready: &str, log: &Path) -> Proc {
        let file = std::fs::File::create(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_paygate"))
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file.try_clone().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = format!("{ready} ");
        std::thread::spawn(move || {
            let (mut lines, mut file) = (BufReader::new(stdout), file);
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                let _ = file.write_all(line.as_bytes());
                if let Some(addr) = line.trim_end().strip_prefix(&prefix) {
                    let _ = tx.send(addr.to_string());
                    break;
                }
                line.clear();
            }
            let _ = std::io::copy(&mut lines, &mut file);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Proc { child, url: format!("http://{addr}") },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`paygate {}` never said `{ready} ADDR`; log:\n{}",
                    args.join(" "),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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
}

/// `paygate serve` arguments for a loopback gateway over `default` and `fallback` with its
/// journal in `data`, followed by `extra`.
pub fn gateway_args(data: &Path, default: &Proc, fallback: &Proc, extra: &[&str]) -> Vec<String> {
    // Several gateways may run at once: none takes the fixed metrics port.
    let mut args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]
            .map(String::from)
            .to_vec();
    args.extend(["--processor".into(), format!("default={}", default.url), "--processor".into(), format!("fallback={}", fallback.url)]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}
