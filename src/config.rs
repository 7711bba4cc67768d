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
    /// Config file of `flag-name = value` lines (`processor` may repeat; `#` starts a comment).
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
    /// Tokio worker threads (default: one per CPU core).
    #[arg(long, env = "PAYGATE_WORKER_THREADS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub worker_threads: Option<usize>,
    /// Where Prometheus scrapes `/metrics` (a listener of its own); `off` for none, which also
    /// stops timing requests.
    #[arg(long, env = "PAYGATE_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    pub metrics_listen: String,
    /// Interval between calls to each processor's health endpoint (the processors allow one
    /// per 5 s; with N gateway instances use N × 5000).
    #[arg(long, env = "PAYGATE_HEALTH_INTERVAL_MS", default_value_t = 5_000)]
    pub health_interval_ms: u64,
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
    pub health_interval: Duration,
    /// Address of the metrics listener; `None` for none.
    pub metrics_listen: Option<String>,
}

/// The most processors a gateway can route between.
pub const MAX_PROCESSORS: usize = 16;
/// The processors' health endpoint allows one call per this many ms.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 5_000;

impl GatewayConfig {
    /// Defaults with the given processors, for tests and embedding.
    pub fn with_processors(processors: Vec<(String, String)>) -> GatewayConfig {
        let args = ServeArgs::try_parse_from(["serve"]).expect("defaults parse");
        let mut c = GatewayConfig::try_from(args).expect("defaults are valid");
        c.processors = processors;
        // Many embedded gateways may run at once: none binds the fixed metrics port.
        c.metrics_listen = None;
        c
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
        Ok(GatewayConfig {
            listen: a.listen,
            processors,
            data_dir: a.data_dir,
            fsync: a.fsync == "on",
            segment_max_bytes: crate::journal::SEGMENT_MAX_BYTES,
            prealloc_bytes: a.journal_prealloc_kib * 1024,
            faults: None,
            admin_token: a.admin_token.filter(|t| !t.is_empty()),
            max_defer: Duration::from_millis(a.max_defer_ms),
            upstream_timeout: Duration::from_millis(a.upstream_timeout_ms),
            dispatch_workers: a.dispatch_workers,
            pending_max: a.pending_max,
            health_interval: Duration::from_millis(a.health_interval_ms),
            metrics_listen: (a.metrics_listen != "off").then_some(a.metrics_listen),
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
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            let msg = format!("config file {} line {}: expected `name = value`\n", path.display(), n + 1);
            return Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, msg));
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
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

    #[test]
    fn config_file_fills_only_unset_options() {
        let dir = std::env::temp_dir().join(format!("paygate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("paygate.conf");
        std::fs::write(&file, "# test\nlisten = 127.0.0.1:1\nmax-defer-ms = 7\nprocessor = default=http://c:1\n").unwrap();
        let c = serve(&["--config", file.to_str().unwrap(), "--listen", "127.0.0.1:2"]);
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.max_defer, Duration::from_millis(7));
        assert_eq!(c.processors, vec![("default".into(), "http://c:1".into())]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_processor_is_refused() {
        for p in ["nourl", "=http://a", "x=ftp://a", "x=http://"] {
            let args = ServeArgs::try_parse_from(["serve", "--processor", p]).unwrap();
            assert!(GatewayConfig::try_from(args).is_err(), "{p}");
        }
    }
}
