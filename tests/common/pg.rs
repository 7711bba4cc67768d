//! A real, private PostgreSQL server for integration tests: `initdb` into a temp dir of its own,
//! listening on a free loopback port; crashed (`-m immediate`), stopped and started again; a
//! synchronous streaming standby of it, and that standby's promotion.
//!
//! The server binaries come from `$PAYGATE_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`,
//! else `pg_config --bindir`. Without them a test fails, saying how to install them: it never
//! skips, since a skipped durability test reads as a passing one.
//!
//! PostgreSQL refuses to run as root. Under root, every server tool (initdb, pg_ctl,
//! pg_basebackup, and through pg_ctl the server) runs as the `postgres` system user, which owns
//! the temp dir; the `psql` client runs as we do.

use std::fs::Permissions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::procs::TempDir;

/// The database [`Pg::start`] creates and [`Pg::url`] names.
const DB: &str = "paygate";
/// The standby's `application_name`, which the primary's `synchronous_standby_names` lists.
const STANDBY_NAME: &str = "standby1";
/// The longest a server may take to start, stop, be promoted or become a synchronous standby.
const WAIT: Duration = Duration::from_secs(60);
/// Ports tried at start: another process may bind the free port we picked before the server does.
const PORT_TRIES: usize = 5;
/// The server's settings, rewritten for each port tried; `postgresql.conf` includes it. A
/// standby's base backup copies it, and the standby then writes its own.
const SETTINGS: &str = "paygate.conf";

/// One PostgreSQL server (a primary, or a standby from [`Pg::start_standby`]) with its data
/// directory, socket and log in a temp dir. Dropping it stops the server like a crash and removes
/// the temp dir, which is kept for inspection when the test fails.
pub struct Pg {
    /// Holds `data/` (the data directory), the unix socket and `postgres.log`.
    dir: TempDir,
    data: PathBuf,
    port: u16,
    /// Where initdb, pg_ctl, pg_basebackup (and usually psql) are.
    bin: PathBuf,
    /// Whether we started the server and have not stopped it since.
    running: bool,
}

impl Pg {
    /// A new server: `initdb` (trust authentication, superuser `postgres`, fsync left on: it is
    /// part of what the tests measure) in a fresh temp dir, listening on 127.0.0.1 only at a free
    /// port, with database `paygate` created.
    pub fn start() -> Pg {
        let mut pg = Pg::empty("pg");
        let data = path_str(&pg.data).to_string();
        // A fixed encoding and locale whatever the environment says: tests compare text.
        pg.tool_ok("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"]);
        // The port and socket differ per server, so they live in a file of their own.
        append(&pg.data.join("postgresql.conf"), &format!("\n# The test harness's settings (tests/common/pg.rs).\ninclude '{SETTINGS}'\n"));
        pg.start_on_free_port();
        pg.psql_in("postgres", &format!("CREATE DATABASE {DB}"));
        pg
    }

    /// libpq URL of database `paygate`: `postgres://postgres@127.0.0.1:PORT/paygate`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB}", self.port)
    }

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` (one or more statements; each is its own transaction unless it says `BEGIN`)
    /// through `psql` against database `paygate` and returns its output, trimmed: unaligned
    /// tuples only, `|` between columns. Panics with psql's stderr when a statement fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(DB, sql)
    }

    /// Stops the server with `pg_ctl stop -m immediate`: like a crash, no checkpoint, and the next
    /// start runs recovery. The server is down when this returns.
    pub fn kill(&mut self) {
        self.stop_with("immediate");
    }

    /// Stops the server with `pg_ctl stop -m fast`: sessions are cut, then a shutdown checkpoint.
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Starts the server again over the same data directory and port, and waits until it accepts
    /// connections (after recovery, if it was killed).
    pub fn start_again(&mut self) {
        assert!(!self.running, "start_again: the server on port {} is already running", self.port);
        if let Err(why) = self.pg_ctl_start() {
            panic!("PostgreSQL did not start again on port {}: {why}", self.port);
        }
    }

    /// A streaming standby of this server, started, and made this server's synchronous standby:
    /// a base backup (`pg_basebackup -R -X stream`) in a new temp dir, its own free port and
    /// `application_name=standby1`; then this server gets `synchronous_standby_names =
    /// 'standby1'` and `synchronous_commit = on` (ALTER SYSTEM, so they survive a restart), and
    /// this waits until `pg_stat_replication` says the standby is `sync`. From then on every
    /// commit here waits for the standby, and hangs while it is down. One standby per primary:
    /// a second would have the same name.
    pub fn start_standby(&self) -> Pg {
        let mut standby = Pg::empty("pg-standby");
        let port = self.port.to_string();
        let data = path_str(&standby.data).to_string();
        let backup = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", &data, "-R", "-X", "stream", "-c", "fast"];
        standby.tool_ok("pg_basebackup", &backup);
        // -R wrote standby.signal and a primary_conninfo; this later one names the standby.
        // The primary's synchronous_standby_names, if an earlier standby had it set, came along
        // in the backup: cleared, or a promoted standby would wait forever for a standby of its own.
        let conninfo = format!("host=127.0.0.1 port={port} user=postgres application_name={STANDBY_NAME}");
        append(&standby.data.join("postgresql.auto.conf"), &format!("primary_conninfo = '{conninfo}'\nsynchronous_standby_names = ''\n"));
        standby.start_on_free_port();

        // ALTER SYSTEM cannot run in a transaction block: psql sends each statement by itself.
        self.psql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}';\n\
             ALTER SYSTEM SET synchronous_commit = on;\n\
             SELECT pg_reload_conf();"
        ));
        let state = format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'");
        self.wait_for(&state, "sync", &format!("the standby on port {} to be synchronous", standby.port), Some(&standby));
        standby
    }

    /// Promotes a standby (`pg_ctl promote -w`) and waits until `pg_is_in_recovery()` is false,
    /// that is, until it takes writes.
    pub fn promote(&self) {
        let data = path_str(&self.data).to_string();
        let timeout = WAIT.as_secs().to_string();
        self.tool_ok("pg_ctl", &["promote", "-D", &data, "-w", "-t", &timeout]);
        self.wait_for("SELECT pg_is_in_recovery()", "f", &format!("the server on port {} to leave recovery", self.port), None);
    }

    /// The server's log (everything it wrote since its first start), for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.0.join("postgres.log")
    }
}

impl Pg {
    /// A `Pg` over an empty data directory in a fresh temp dir, not yet initialised or started.
    /// Made before anything runs, so that a panic half way still stops the server on drop.
    fn empty(tag: &str) -> Pg {
        // First: without binaries there is nothing to keep for inspection.
        let bin = bin_dir().to_path_buf();
        let dir = TempDir::new(tag);
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).unwrap();
        // PostgreSQL refuses a data directory others can read.
        std::fs::set_permissions(&data, Permissions::from_mode(0o700)).unwrap();
        if let Some((uid, gid)) = server_user() {
            // The server writes its socket and log next to the data directory, too.
            for path in [&dir.0, &data] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        Pg { dir, data, port: 0, bin, running: false }
    }

    /// Picks a free port, writes the settings for it and starts the server; on "address in use"
    /// (someone took the port between our probe and the server's bind) tries another one.
    fn start_on_free_port(&mut self) {
        for attempt in 1.. {
            self.port = free_port();
            self.write_settings();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(why) if attempt < PORT_TRIES && why.contains("Address already in use") => continue,
                Err(why) => panic!("PostgreSQL did not start on port {}: {why}", self.port),
            }
        }
    }

    /// Writes this server's own settings (see [`SETTINGS`]) for `self.port`.
    fn write_settings(&self) {
        let socket_dir = path_str(&self.dir.0).replace('\'', "''");
        let settings = format!(
            "# This server's settings, written by tests/common/pg.rs (a standby rewrites them).\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 100\n\
             # For standbys: WAL they can replay, and senders to stream it to them.\n\
             wal_level = replica\n\
             max_wal_senders = 5\n\
             # The default, said out loud: the tests measure durable commits.\n\
             fsync = on\n",
            self.port
        );
        let path = self.data.join(SETTINGS);
        std::fs::write(&path, settings).unwrap();
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// `pg_ctl start`, waiting until the server accepts connections. On failure, says why:
    /// pg_ctl's output and what the server logged during this attempt.
    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let logged_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let (data, log_arg, timeout) = (path_str(&self.data).to_string(), path_str(&log).to_string(), WAIT.as_secs().to_string());
        let out = self.tool("pg_ctl", &["start", "-w", "-t", &timeout, "-D", &data, "-l", &log_arg]);
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        // The server may still be starting after a timeout: drop stops it if its pid file is there.
        let mut logged = String::new();
        if let Ok(mut file) = std::fs::File::open(&log) {
            let _ = file.seek(SeekFrom::Start(logged_before));
            let _ = file.read_to_string(&mut logged);
        }
        Err(format!("{}\nserver log ({}):\n{logged}", describe(&out), log.display()))
    }

    /// `pg_ctl stop -m MODE`, waiting until the server is gone.
    fn stop_with(&mut self, mode: &str) {
        assert!(self.running, "stopping the server on port {}, which is not running", self.port);
        let (data, timeout) = (path_str(&self.data).to_string(), WAIT.as_secs().to_string());
        self.tool_ok("pg_ctl", &["stop", "-m", mode, "-w", "-t", &timeout, "-D", &data]);
        self.running = false;
    }

    /// Runs `psql` on database `db`, SQL on its stdin (so that each statement is sent by itself).
    fn psql_in(&self, db: &str, sql: &str) -> String {
        // psql is a client, so root may run it; Debian keeps it next to the server tools, other
        // layouts may not.
        let psql = self.bin.join("psql");
        let psql = if psql.is_file() { psql } else { PathBuf::from("psql") };
        let port = self.port.to_string();
        let mut child = Command::new(&psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db])
            // A server that does not answer fails the test rather than hanging it.
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", psql.display()));
        // Written from a thread: psql answers while it reads, and a big answer would otherwise
        // fill its stdout while we are still writing.
        let mut stdin = child.stdin.take().unwrap();
        let input = sql.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        assert!(
            out.status.success(),
            "psql on port {} failed ({}):\n{sql}\n{}",
            self.port,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Polls `query` until it answers `expected`; panics after [`WAIT`] with both servers' logs.
    fn wait_for(&self, query: &str, expected: &str, what: &str, other: Option<&Pg>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.psql(query);
            if got == expected {
                return;
            }
            if Instant::now() >= deadline {
                let mut logs = log_tail(&self.log_path());
                if let Some(other) = other {
                    logs.push_str(&log_tail(&other.log_path()));
                }
                panic!("gave up waiting for {what}: `{query}` still says {got:?}, not {expected:?}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a server tool from the bin dir (as `postgres` under root) in the temp dir, which that
    /// user can enter, unlike perhaps ours.
    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let program = self.bin.join(name);
        server_command(&program, args)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    /// As [`Pg::tool`]; panics with the tool's output if it fails.
    fn tool_ok(&self, name: &str, args: &[&str]) {
        let out = self.tool(name, args);
        assert!(out.status.success(), "`{name} {}` failed: {}\n{}", args.join(" "), describe(&out), log_tail(&self.log_path()));
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Also when a start timed out: the pid file says a server may be up.
        if self.running || self.data.join("postmaster.pid").exists() {
            // Not Pg::tool, which panics: a panic in a drop during a failing test aborts.
            let (data, timeout) = (path_str(&self.data).to_string(), WAIT.as_secs().to_string());
            let args = ["stop", "-m", "immediate", "-w", "-t", &timeout, "-D", &data];
            match server_command(&self.bin.join("pg_ctl"), &args).current_dir(&self.dir.0).stdin(Stdio::null()).output() {
                Ok(out) if out.status.success() => {}
                // Only a stale pid file (a start that failed) left: nothing to stop.
                Ok(_) if !self.running => {}
                Ok(out) => eprintln!("could not stop the PostgreSQL server on port {}: {}", self.port, describe(&out)),
                Err(e) => eprintln!("could not run pg_ctl to stop the PostgreSQL server on port {}: {e}", self.port),
            }
        }
        if std::thread::panicking() {
            eprintln!("PostgreSQL server log: {}", self.log_path().display());
        }
        // `dir` goes next: removed, or kept for inspection if the test is failing.
    }
}

/// The directory holding the server binaries, found once: `$PAYGATE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian and Ubuntu install major versions side by side), else
/// `pg_config --bindir`. Panics, saying how to install them, when there are none.
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        let mut looked = Vec::new();
        if let Some(dir) = std::env::var_os("PAYGATE_PG_BIN") {
            // Set on purpose: no falling back to some other installation.
            let dir = PathBuf::from(dir);
            if has_server(&dir) {
                return dir;
            }
            looked.push(format!("PAYGATE_PG_BIN={}", dir.display()));
        } else {
            let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| {
                    let version = entry.file_name().to_str()?.split('.').map(|n| n.parse().ok()).collect::<Option<Vec<u32>>>()?;
                    Some((version, entry.path().join("bin")))
                })
                .filter(|(_, bin)| has_server(bin))
                .collect();
            versions.sort();
            if let Some((_, bin)) = versions.pop() {
                return bin;
            }
            looked.push("/usr/lib/postgresql/*/bin".into());
            // Some distributions (and libpq-dev's pg_config) point elsewhere.
            match Command::new("pg_config").arg("--bindir").output() {
                Ok(out) if out.status.success() => {
                    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                    if has_server(&dir) {
                        return dir;
                    }
                    looked.push(format!("{} (pg_config --bindir)", dir.display()));
                }
                _ => looked.push("`pg_config --bindir` (no pg_config)".into()),
            }
        }
        panic!(
            "PostgreSQL server binaries not found (looked in {}): install them with `apt-get install postgresql` (Debian/Ubuntu) \
             or set PAYGATE_PG_BIN to the directory holding initdb and pg_ctl",
            looked.join(", ")
        );
    })
}

/// The uid and gid of the `postgres` system user when we run as root, whom PostgreSQL refuses;
/// `None` when we are someone else and run the server tools ourselves.
fn server_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
            assert!(
                out.status.success(),
                "running as root, the PostgreSQL tests need the `postgres` system user (`apt-get install postgresql` makes it): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap()
        };
        Some((id("-u"), id("-g")))
    })
}

/// `program args`, as the `postgres` user when we are root: through `runuser`, else `su`.
fn server_command(program: &Path, args: &[&str]) -> Command {
    if server_user().is_none() {
        let mut command = Command::new(program);
        command.args(args);
        return command;
    }
    if let Some(runuser) = find_program("runuser") {
        let mut command = Command::new(runuser);
        command.args(["-u", "postgres", "--"]).arg(program).args(args);
        command
    } else {
        // su takes one shell command line.
        let line = std::iter::once(path_str(program)).chain(args.iter().copied()).map(shell_quote).collect::<Vec<_>>().join(" ");
        let mut command = Command::new("su");
        command.args(["postgres", "-s", "/bin/sh", "-c", &line]);
        command
    }
}

/// `name` on PATH, or in the sbin directories root's PATH usually has but a test's may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from)).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// `word` quoted for `sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A loopback port free right now: bound to port 0, then released for the server to take.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.write_all(text.as_bytes()).unwrap();
}

/// The temp paths are ours and UTF-8.
fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A tool's exit status and output, for failure messages.
fn describe(out: &Output) -> String {
    format!("{}\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The last lines of a server log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("last lines of {}:\n{}\n", path.display(), lines[lines.len().saturating_sub(40)..].join("\n"))
}
