//! The command line, its environment variables and the optional config file, in one place.
//! Precedence: flag > environment > config file > default. Validated once, at start-up.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "paygate", version, about = "A durable, exactly-once, low-latency payment gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of `Serve` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run a payment processor simulator (the Rinha de Backend 2025 processor API).
    ProcessorSim(crate::sim::SimArgs),
    /// Open-model load generator: fixed arrival rate, latency from the intended send time.
    Loadgen(crate::loadgen::LoadgenArgs),
    /// Exit 0 when the gateway's /health answers 200 (for container health checks).
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Config file of `flag-name = value` lines (`processor` may repeat). `#` starts a comment
    /// at the start of a line or after whitespace; a value may be double-quoted, with `\"`
    /// and `\\` escapes.
    #[arg(long, env = "PAYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "PAYGATE_LISTEN", default_value = "0.0.0.0:9999")]
    pub listen: String,
    /// Upstream processor as NAME=URL, cheapest first; repeat for each. None: two built-in
    /// simulated processors are started on loopback.
    #[arg(long = "processor", env = "PAYGATE_PROCESSORS", value_delimiter = ',')]
    pub processors: Vec<String>,
    /// Where the journal lives.
    #[arg(long, env = "PAYGATE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `on`: a 202 waits for fdatasync. `off`: for write() only, which survives a crash of
    /// paygate but not of the machine.
    #[arg(long, env = "PAYGATE_FSYNC", default_value = "on", value_parser = ["on", "off"])]
    pub fsync: String,
    /// How far ahead of the records journal segments are zero-filled, KiB; a sync of an
    /// overwrite skips the inode update an append needs. 0 appends instead.
    #[arg(long, env = "PAYGATE_JOURNAL_PREALLOC_KIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1024 * 1024))]
    pub journal_prealloc_kib: u64,
    /// Size at which a journal segment is closed and folded into a snapshot (the history
    /// takes its settled payments), KiB.
    #[arg(long, env = "PAYGATE_JOURNAL_SEGMENT_KIB", default_value_t = SEGMENT_KIB, value_parser = clap::value_parser!(u64).range(4..=4 * 1024 * 1024))]
    pub journal_segment_kib: u64,
    /// Enables admin endpoints; callers send `X-Admin-Token`.
    #[arg(long, env = "PAYGATE_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// How long after acceptance a payment waits for a failing cheaper processor before it
    /// may go to the next one.
    #[arg(long = "max-defer-ms", alias = "max-defer", env = "PAYGATE_MAX_DEFER_MS", default_value_t = 30_000)]
    pub max_defer_ms: u64,
    /// Time limit of one request to a processor; past it the outcome is unknown.
    #[arg(long, env = "PAYGATE_UPSTREAM_TIMEOUT_MS", default_value_t = 5_000)]
    pub upstream_timeout_ms: u64,
    /// Payments being forwarded at once (across all processors).
    #[arg(long, env = "PAYGATE_DISPATCH_WORKERS", default_value_t = 256)]
    pub dispatch_workers: usize,
    /// Accepted payments not yet processed; beyond it `POST /payments` answers 503.
    #[arg(long, env = "PAYGATE_PENDING_MAX", default_value_t = 200_000)]
    pub pending_max: usize,
    /// The most settled payments kept in memory (the newest); older ones are served from the
    /// on-disk history. With `--pending-max` it sizes the ledger's table once, at start.
    #[arg(long, env = "PAYGATE_HOT_MAX", default_value_t = crate::ledger::HOT_MAX)]
    pub hot_max: usize,
    /// A settled payment leaves memory this long after it settled, even below `--hot-max`.
    #[arg(long, env = "PAYGATE_HOT_WINDOW_MS", default_value_t = crate::ledger::HOT_WINDOW_MS)]
    pub hot_window_ms: u64,
    /// Tokio worker threads (default: one per CPU core).
    #[arg(long, env = "PAYGATE_WORKER_THREADS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub worker_threads: Option<usize>,
    /// The tokio scheduler: `multi-thread` (work-stealing, `--worker-threads` workers),
    /// `current-thread` (everything async on one thread; `--worker-threads` is then ignored),
    /// or `auto`: `current-thread` when the process may use two CPUs or fewer and
    /// `--worker-threads` is not given, `multi-thread` otherwise (see perf.md).
    #[arg(long, env = "PAYGATE_RUNTIME", default_value = "auto", value_parser = ["auto", "multi-thread", "current-thread"])]
    pub runtime: String,
    /// `on`: while the cheapest processor's breaker is closed, a payment is routed when it is
    /// accepted, so its intent shares the acceptance's sync (one sync per payment, not two).
    #[arg(long, env = "PAYGATE_ROUTE_AT_ACCEPT", default_value = "on", value_parser = ["on", "off"])]
    pub route_at_accept: String,
    /// Where Prometheus scrapes `/metrics` (a listener of its own); `off` for none, which also
    /// stops timing requests.
    #[arg(long, env = "PAYGATE_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    pub metrics_listen: String,
    /// Interval between calls to each processor's health endpoint (the processors allow one
    /// per 5 s). In cluster mode the instances share one caller per processor; N embedded
    /// gateways in front of the same processors need N × 5000.
    #[arg(long, env = "PAYGATE_HEALTH_INTERVAL_MS", default_value_t = 5_000)]
    pub health_interval_ms: u64,
    /// Longest a client may take to send a request head, from connecting (or from the first
    /// byte of a later request on a kept-alive connection); past it the connection is closed.
    #[arg(long, env = "PAYGATE_HEADER_TIMEOUT_MS", default_value_t = crate::http::HEADER_TIMEOUT_MS)]
    pub header_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed.
    #[arg(long, env = "PAYGATE_IDLE_TIMEOUT_MS", default_value_t = crate::http::IDLE_TIMEOUT_MS)]
    pub idle_timeout_ms: u64,
    /// Longest a request body may take to arrive after its head; past it the request gets a
    /// 400 `body_unreadable` and the connection is closed.
    #[arg(long, env = "PAYGATE_BODY_TIMEOUT_MS", default_value_t = crate::http::BODY_TIMEOUT_MS)]
    pub body_timeout_ms: u64,
    /// Client connections served at once; past it a new connection gets a 503 at once. Lowered
    /// at start to fit the open-files limit.
    #[arg(long, env = "PAYGATE_MAX_CONNECTIONS", default_value_t = crate::http::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// After SIGTERM or SIGINT, how long `/health` answers 503 while payments are still served,
    /// so that load balancers take the gateway out of rotation before it stops.
    #[arg(long, env = "PAYGATE_DRAIN_MS", default_value_t = DRAIN_MS)]
    pub drain_ms: u64,
    /// PostgreSQL connection string (libpq URL or key=value form; several hosts allowed, with
    /// `target_session_attrs=read-write` to follow a failover). Set: cluster mode, the books
    /// live in the database and `--data-dir` is unused. Unset: the embedded journal.
    #[arg(long, env = "PAYGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// This instance's name in the cluster (default: hostname:port).
    #[arg(long, env = "PAYGATE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// How long an instance may go without renewing its lease before the others take over its
    /// payments, ms (default: the upstream timeout plus 2 000).
    #[arg(long, env = "PAYGATE_LEASE_MS", value_parser = clap::value_parser!(u64).range(MIN_LEASE_MS..=3_600_000))]
    pub lease_ms: Option<u64>,
    /// Log lines as plain `text` or `json` (one object per line).
    #[arg(long, env = "PAYGATE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// The validated gateway configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: String,
    /// (name, base URL), cheapest first; empty means "start built-in simulators".
    pub processors: Vec<(String, String)>,
    pub data_dir: PathBuf,
    pub fsync: bool,
    /// Journal segment size; a closed segment is folded into a snapshot.
    pub segment_max_bytes: u64,
    /// How far ahead of the records segments are zero-filled; 0 appends.
    pub prealloc_bytes: u64,
    /// Injected journal disk faults (tests only; `None` in the binary).
    pub faults: Option<std::sync::Arc<crate::journal::FaultSwitch>>,
    pub admin_token: Option<String>,
    pub max_defer: Duration,
    pub upstream_timeout: Duration,
    pub dispatch_workers: usize,
    pub pending_max: usize,
    pub hot_max: usize,
    pub hot_window: Duration,
    pub health_interval: Duration,
    /// Address of the metrics listener; `None` for none.
    pub metrics_listen: Option<String>,
    /// Route at acceptance while the cheapest breaker is closed.
    pub route_at_accept: bool,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Client connections served at once (see [`GatewayConfig::fit_to_open_files`]).
    pub max_connections: usize,
    /// Between the shutdown signal and the end of accepting: `/health` answers 503 while
    /// payments are still served. Zero in [`GatewayConfig::with_processors`].
    pub drain: Duration,
    /// Cluster mode's database; `None`: the embedded journal.
    pub database_url: Option<String>,
    /// `None`: hostname and listen port.
    pub instance_id: Option<String>,
    pub lease: Duration,
}

/// Shortest `--lease-ms`: heartbeats go four times per lease.
pub const MIN_LEASE_MS: u64 = 200;
/// What `--lease-ms` adds to the upstream timeout by default: a paused instance's last request
/// has timed out before anyone takes its payment over.
pub const LEASE_MARGIN_MS: u64 = 2_000;

/// The most processors a gateway can route between.
pub const MAX_PROCESSORS: usize = 16;
/// Longest processor name, in bytes.
pub const MAX_PROCESSOR_NAME_BYTES: usize = 64;
/// The processors' health endpoint allows one call per this many ms.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 5_000;
/// Default of `--drain-ms`: long enough for a load balancer polling `/health` every second or
/// two to see the 503 a few times.
pub const DRAIN_MS: u64 = 5_000;
/// Most payments the ledger's table may be sized for (`--pending-max` + `--hot-max`): about
/// 2.3 GiB of table.
pub const MAX_HOT_CAPACITY: usize = 32_000_000;
/// Default of `--journal-segment-kib`: 4 MiB. A closed segment is folded into a snapshot by
/// replaying it, so the segment size bounds that work, its memory and what a restart replays;
/// 64 MiB segments (615 k payments each at the contest's record mix) cost 4.2 s of compactor
/// CPU and a 200 MB jump in RSS at once in the soak (perf.md).
pub const SEGMENT_KIB: u64 = 4 * 1024;
/// Most client connections `--max-connections` may ask for.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// File descriptors kept apart from client connections besides those counted per worker and
/// per processor in [`GatewayConfig::fd_reserve`]: stdio, the runtime's epoll and wakers, the
/// journal's open segment, snapshot and directory, health checks.
pub const FD_RESERVE_BASE: u64 = 128;
/// Fewest client connections the gateway starts with; an open-files limit that leaves fewer
/// is a deployment error.
pub const MIN_CONNECTIONS: usize = 16;

impl GatewayConfig {
    /// Defaults with the given processors, for tests and embedding. Unlike the command line
    /// (`--drain-ms` 5 000), there is no drain: the shutdown future stops the gateway at once.
    pub fn with_processors(processors: Vec<(String, String)>) -> GatewayConfig {
        let args = ServeArgs::try_parse_from(["serve"]).expect("defaults parse");
        let mut c = GatewayConfig::try_from(args).expect("defaults are valid");
        c.processors = processors;
        // Many embedded gateways may run at once: none binds the fixed metrics port.
        c.metrics_listen = None;
        c.drain = Duration::ZERO;
        c
    }

    /// What the HTTP server allows its clients.
    pub fn server_limits(&self) -> crate::http::ServerLimits {
        crate::http::ServerLimits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
        }
    }

    /// Descriptors the gateway needs besides client connections: [`FD_RESERVE_BASE`], one
    /// upstream socket per dispatch worker, the resolvers' requests and a health check per
    /// processor, and the refusals in flight past the connection limit.
    pub fn fd_reserve(&self) -> u64 {
        let per_processor = (crate::dispatch::resolver::RESOLVE_CONCURRENCY + 1) as u64;
        FD_RESERVE_BASE
            + self.dispatch_workers as u64
            + per_processor * self.processors.len().max(2) as u64
            + crate::http::MAX_REFUSING as u64
    }

    /// Lowers `max_connections` so that connections plus [`GatewayConfig::fd_reserve`] fit in
    /// `open_files` (the soft RLIMIT_NOFILE); running out of descriptors would fail accepts and
    /// journal writes instead of answering a clean 503. Returns the value now in force.
    pub fn fit_to_open_files(&mut self, open_files: u64) -> Result<usize, String> {
        let reserve = self.fd_reserve();
        let room = usize::try_from(open_files.saturating_sub(reserve)).unwrap_or(usize::MAX);
        if room < MIN_CONNECTIONS {
            return Err(format!(
                "the open-files limit ({open_files}) leaves room for {room} client connections after {reserve} reserved \
                 descriptors; raise it (ulimit -n) to at least {}",
                reserve + MIN_CONNECTIONS as u64
            ));
        }
        self.max_connections = self.max_connections.min(room);
        Ok(self.max_connections)
    }
}

#[derive(Parser)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    fn try_parse_from<I: IntoIterator<Item = T>, T: Into<OsString> + Clone>(it: I) -> Result<ServeArgs, clap::Error> {
        ServeOnly::try_parse_from(it).map(|s| s.args)
    }
}

impl TryFrom<ServeArgs> for GatewayConfig {
    type Error = String;

    fn try_from(a: ServeArgs) -> Result<GatewayConfig, String> {
        let mut processors = Vec::new();
        for p in a.processors.iter().filter(|p| !p.trim().is_empty()) {
            let (name, url) = p.split_once('=').ok_or_else(|| format!("processor `{p}` must be NAME=URL"))?;
            let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
            if name.is_empty() || processors.iter().any(|(n, _)| n == name) {
                return Err(format!("processor name `{name}` is empty or repeated"));
            }
            // Names are the processors' identity in the journal, the summary's keys and metric
            // labels: short and plain.
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if name.len() > MAX_PROCESSOR_NAME_BYTES || !name.chars().all(plain) {
                return Err(format!("processor name `{name}` must be 1 to {MAX_PROCESSOR_NAME_BYTES} letters, digits, `_`, `-` or `.`"));
            }
            let uri: hyper::Uri = url.parse().map_err(|e| format!("processor `{name}` URL `{url}`: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!("processor `{name}` URL `{url}` must be http://host[:port]"));
            }
            processors.push((name.to_string(), url.to_string()));
        }
        if processors.len() > MAX_PROCESSORS {
            return Err(format!("at most {MAX_PROCESSORS} processors"));
        }
        if a.health_interval_ms < MIN_HEALTH_INTERVAL_MS {
            return Err(format!("--health-interval-ms must be at least {MIN_HEALTH_INTERVAL_MS} (the processors' rate limit)"));
        }
        if a.dispatch_workers == 0 || a.pending_max == 0 || a.upstream_timeout_ms == 0 {
            return Err("--dispatch-workers, --pending-max and --upstream-timeout-ms must be positive".into());
        }
        if a.pending_max.saturating_add(a.hot_max) > MAX_HOT_CAPACITY {
            return Err(format!("--pending-max plus --hot-max must be at most {MAX_HOT_CAPACITY}"));
        }
        if a.header_timeout_ms == 0 || a.idle_timeout_ms == 0 || a.body_timeout_ms == 0 {
            return Err("--header-timeout-ms, --idle-timeout-ms and --body-timeout-ms must be positive".into());
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&a.max_connections) {
            return Err(format!("--max-connections must be between 1 and {MAX_CONNECTIONS_LIMIT}"));
        }
        Ok(GatewayConfig {
            listen: a.listen,
            processors,
            data_dir: a.data_dir,
            fsync: a.fsync == "on",
            segment_max_bytes: a.journal_segment_kib * 1024,
            prealloc_bytes: a.journal_prealloc_kib * 1024,
            faults: None,
            admin_token: a.admin_token.filter(|t| !t.is_empty()),
            max_defer: Duration::from_millis(a.max_defer_ms),
            upstream_timeout: Duration::from_millis(a.upstream_timeout_ms),
            dispatch_workers: a.dispatch_workers,
            pending_max: a.pending_max,
            hot_max: a.hot_max,
            hot_window: Duration::from_millis(a.hot_window_ms),
            health_interval: Duration::from_millis(a.health_interval_ms),
            metrics_listen: (a.metrics_listen != "off").then_some(a.metrics_listen),
            route_at_accept: a.route_at_accept == "on",
            header_timeout: Duration::from_millis(a.header_timeout_ms),
            idle_timeout: Duration::from_millis(a.idle_timeout_ms),
            body_timeout: Duration::from_millis(a.body_timeout_ms),
            max_connections: a.max_connections,
            drain: Duration::from_millis(a.drain_ms),
            database_url: a.database_url.filter(|u| !u.trim().is_empty()),
            instance_id: a.instance_id.filter(|i| !i.trim().is_empty()),
            lease: Duration::from_millis(a.lease_ms.unwrap_or(a.upstream_timeout_ms.saturating_add(LEASE_MARGIN_MS))),
        })
    }
}

/// Parses the command line, filling options that neither a flag nor the environment set
/// from the config file named by `--config` / `PAYGATE_CONFIG`.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches_from(&args)?;
    let Some(("serve", serve)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches);
    };
    let Some(path) = serve.get_one::<PathBuf>("config") else {
        return Cli::from_arg_matches(&matches);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::Io, format!("config file {}: {e}\n", path.display())))?;
    let mut extra: Vec<OsString> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let (key, value) = match config_line(line) {
            Ok(None) => continue,
            Ok(Some(kv)) => kv,
            Err(e) => {
                let msg = format!("config file {} line {}: {e}\n", path.display(), n + 1);
                return Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, msg));
            }
        };
        let id = if key == "processor" { "processors" } else { &key.replace('-', "_") };
        let unset = matches!(serve.value_source(id), None | Some(ValueSource::DefaultValue));
        if unset {
            extra.push(format!("--{key}").into());
            extra.push(value.into());
        }
    }
    let mut all = args;
    all.extend(extra);
    Cli::try_parse_from(all)
}

/// One line of a config file: `None` for a blank or comment line, else `(name, value)`.
///
/// The rule: `#` starts a comment at the start of a line or after whitespace, so `abc#123` is
/// one value; a value may be double-quoted (then `#` and surrounding spaces are part of it),
/// with `\"` for a quote and `\\` for a backslash, and only a comment may follow it.
fn config_line(line: &str) -> Result<Option<(&str, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (key, rest) = line.split_once('=').ok_or("expected `name = value`")?;
    let key = key.trim();
    if key.is_empty() {
        return Err("expected `name = value`".into());
    }
    let rest = rest.trim_start();
    let Some(quoted) = rest.strip_prefix('"') else {
        let mut end = rest.len();
        let mut prev_blank = true;
        for (i, c) in rest.char_indices() {
            if c == '#' && prev_blank {
                end = i;
                break;
            }
            prev_blank = c.is_whitespace();
        }
        return Ok(Some((key, rest[..end].trim_end().to_string())));
    };
    let mut value = String::with_capacity(quoted.len());
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let after = quoted[i + 1..].trim_start();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err(format!("unexpected `{after}` after the quoted value"));
                }
                return Ok(Some((key, value)));
            }
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => value.push(e),
                Some((_, e)) => return Err(format!("unknown escape `\\{e}` in a quoted value (only `\\\"` and `\\\\`)")),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("quoted value has no closing `\"`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> GatewayConfig {
        let mut all = vec!["paygate", "serve"];
        all.extend_from_slice(args);
        match parse(all.into_iter().map(OsString::from).collect()).unwrap().command {
            Command::Serve(a) => GatewayConfig::try_from(a).unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn processors_keep_their_order() {
        let c = serve(&["--processor", "default=http://a:8080/", "--processor", "fallback=http://b:8080"]);
        assert_eq!(c.processors, vec![("default".into(), "http://a:8080".into()), ("fallback".into(), "http://b:8080".into())]);
    }

    /// Parses `serve --config FILE ARGS` where FILE holds `text`.
    fn serve_with_file(tag: &str, text: &str, args: &[&str]) -> GatewayConfig {
        let dir = std::env::temp_dir().join(format!("paygate-cfg-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("paygate.conf");
        std::fs::write(&file, text).unwrap();
        let mut all = vec!["--config", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let c = serve(&all);
        std::fs::remove_dir_all(dir).unwrap();
        c
    }

    #[test]
    fn config_file_fills_only_unset_options() {
        let text = "# test\nlisten = 127.0.0.1:1\nmax-defer-ms = 7\nprocessor = default=http://c:1\n";
        let c = serve_with_file("unset", text, &["--listen", "127.0.0.1:2"]);
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.max_defer, Duration::from_millis(7));
        assert_eq!(c.processors, vec![("default".into(), "http://c:1".into())]);
    }

    #[test]
    fn config_hash_starts_a_comment_only_at_line_start_or_after_whitespace() {
        assert_eq!(config_line("# all comment").unwrap(), None);
        assert_eq!(config_line("   ").unwrap(), None);
        assert_eq!(config_line("  # indented comment").unwrap(), None);
        assert_eq!(config_line("admin-token = abc#123").unwrap(), Some(("admin-token", "abc#123".to_string())));
        assert_eq!(config_line("admin-token = abc#123 # the token").unwrap(), Some(("admin-token", "abc#123".to_string())));
        assert_eq!(config_line("admin-token = abc\t# tab too").unwrap(), Some(("admin-token", "abc".to_string())));
        assert_eq!(config_line("admin-token = # nothing").unwrap(), Some(("admin-token", String::new())));
        assert_eq!(config_line("processor = default=http://c:1").unwrap(), Some(("processor", "default=http://c:1".to_string())));
    }

    #[test]
    fn config_quoted_values_keep_hashes_and_spaces_and_unescape() {
        assert_eq!(config_line(r#"admin-token = " a # b ""#).unwrap(), Some(("admin-token", " a # b ".to_string())));
        assert_eq!(config_line(r#"admin-token = "q\"uote\\back" # c"#).unwrap(), Some(("admin-token", r#"q"uote\back"#.to_string())));
        assert_eq!(config_line(r#"admin-token = """#).unwrap(), Some(("admin-token", String::new())));
    }

    #[test]
    fn config_malformed_lines_are_refused() {
        for line in ["no equals sign", " = value", r#"admin-token = "open"#, r#"admin-token = "a\nb""#, r#"admin-token = "a" b"#] {
            assert!(config_line(line).is_err(), "{line}");
        }
    }

    #[test]
    fn config_file_token_with_hash_reaches_the_config() {
        let c = serve_with_file("hash", "admin-token = abc#123   # comment\nlisten = \"127.0.0.1:3\"\n", &[]);
        assert_eq!(c.admin_token.as_deref(), Some("abc#123"));
        assert_eq!(c.listen, "127.0.0.1:3");
    }

    #[test]
    fn edge_flags_have_defaults_and_zero_timeouts_are_refused() {
        let c = serve(&[]);
        assert_eq!(c.server_limits(), crate::http::ServerLimits::default());
        assert_eq!(c.drain, Duration::from_millis(DRAIN_MS));
        assert_eq!(GatewayConfig::with_processors(vec![]).drain, Duration::ZERO);
        for flag in ["--header-timeout-ms", "--idle-timeout-ms", "--body-timeout-ms", "--max-connections"] {
            let args = ServeArgs::try_parse_from(["serve", flag, "0"]).unwrap();
            assert!(GatewayConfig::try_from(args).is_err(), "{flag} 0");
        }
        let c = serve(&["--header-timeout-ms", "1", "--idle-timeout-ms", "2", "--body-timeout-ms", "3", "--drain-ms", "0"]);
        assert_eq!(
            (c.header_timeout, c.idle_timeout, c.body_timeout),
            (Duration::from_millis(1), Duration::from_millis(2), Duration::from_millis(3))
        );
        assert_eq!(c.drain, Duration::ZERO);
    }

    #[test]
    fn max_connections_is_lowered_to_fit_the_open_files_limit() {
        let mut c = serve(&["--max-connections", "1000"]);
        let reserve = c.fd_reserve();
        assert_eq!(c.fit_to_open_files(1_000_000).unwrap(), 1000);
        assert_eq!(c.fit_to_open_files(reserve + 600).unwrap(), 600);
        assert!(c.fit_to_open_files(reserve + MIN_CONNECTIONS as u64 - 1).is_err());
    }

    #[test]
    fn bad_processor_is_refused() {
        let long = format!("{}=http://a", "n".repeat(MAX_PROCESSOR_NAME_BYTES + 1));
        for p in ["nourl", "=http://a", "x=ftp://a", "x=http://", "a b=http://a", "dé=http://a", &long] {
            let args = ServeArgs::try_parse_from(["serve", "--processor", p]).unwrap();
            assert!(GatewayConfig::try_from(args).is_err(), "{p}");
        }
    }
}
