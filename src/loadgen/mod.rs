//! `paygate loadgen`: an open-model load generator for `POST /payments`, the instrument behind
//! the sub-millisecond latency figures in perf.md.
//!
//! Open model: request `i` is due at `t0 + i / rate`, whatever the server does. Its latency
//! runs from that *intended* time to the end of the response, so a stall cannot hide by
//! delaying the requests behind it (no coordinated omission): waiting for a free connection,
//! and the generator's own lateness, count against the request.
//!
//! The schedule runs on its own OS thread, which sleeps with `nanosleep` (tens of microseconds
//! of slack) rather than on tokio's timer (millisecond ticks, which alone would add up to a
//! millisecond to every latency). When it wakes it hands every request that is due to the
//! runtime as a task; the task takes a connection from a bounded keep-alive pool ([`pool`])
//! and records into an HdrHistogram ([`report`]). Memory stays bounded: at most
//! `connections` requests in flight plus `max_backlog` waiting for a connection; beyond that a
//! due request is counted as `dropped` instead of queued.
//!
//! With `--window-s`, the report also gives every consecutive window of intended send time its
//! own counts and percentiles (`windows` in the JSON), for long runs where a drift or a
//! periodic stall would vanish in one overall histogram (`scripts/soak.py`).

pub mod pool;
pub mod report;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use tokio::sync::mpsc;

use crate::domain::{Cents, CorrelationId};
use pool::{ExchangeError, Pool};
use report::{HISTOGRAM_MAX_US, StepPlan};
pub use report::{Latency, MAX_WINDOWS, Outcome, Recorder, StepReport, SweepReport, WindowReport, window_count};

/// Highest accepted `--rate`, requests per second.
pub const MAX_RATE_PER_S: u64 = 1_000_000;
/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 4_096;
/// Longest accepted `--duration` and `--warmup`, seconds.
pub const MAX_DURATION_S: f64 = 24.0 * 3600.0;
/// Largest accepted `--max-backlog`: each waiting request is a task of about a kilobyte.
pub const MAX_BACKLOG: usize = 1_000_000;
/// How far ahead of the first request the schedule starts, so that the first request is not
/// already late by the time the scheduler thread is running.
const SCHEDULE_LEAD_MS: u64 = 5;
/// Request body capacity: `{"correlationId":"<36>","amount":<up to 15>}` is under 80 bytes.
const BODY_CAPACITY_BYTES: usize = 96;

/// Options of `paygate loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Gateway base URL (plain HTTP); payments go to `<url>/payments`.
    #[arg(long, default_value = "http://127.0.0.1:9999")]
    pub url: String,
    /// Arrival rate, payments per second, independent of how fast the gateway answers.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Measured time, seconds (fractions allowed); with --sweep, the length of each step.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Time sent at the same rate before measuring, seconds: connections, caches and the
    /// gateway's own pools warm up outside the figures.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Keep-alive HTTP/1.1 connections, each carrying one request at a time; this also bounds
    /// the requests in flight.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Amount of every payment, a plain decimal with at most 2 decimals.
    #[arg(long, default_value = "19.90")]
    pub amount: String,
    /// A request with no response this long after its intended send time is a timeout error.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// Most requests that may wait for a free connection; a due request beyond that is counted
    /// as `dropped` (the client is overloaded). Default: one second of traffic.
    #[arg(long)]
    pub max_backlog: Option<usize>,
    /// Write the results JSON here (the summary still goes to stderr); default: stdout.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Raise the rate step by step until p99 exceeds --p99-bound-ms or any error appears.
    #[arg(long)]
    pub sweep: bool,
    /// First rate of a sweep, payments per second.
    #[arg(long, default_value_t = 1_000)]
    pub sweep_start: u64,
    /// Rate added at each sweep step.
    #[arg(long, default_value_t = 1_000)]
    pub sweep_step: u64,
    /// Multiply the rate by this at each sweep step instead of adding --sweep-step.
    #[arg(long, conflicts_with = "sweep_step")]
    pub sweep_factor: Option<f64>,
    /// Highest rate a sweep tries.
    #[arg(long, default_value_t = 20_000)]
    pub sweep_max: u64,
    /// The p99 a sweep step must stay within, milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub p99_bound_ms: f64,
    /// Also report the measured part by consecutive windows of this many seconds of intended
    /// send time (`windows` in the JSON: counts, errors and percentiles of each); 0: off.
    #[arg(long, default_value_t = 0.0)]
    pub window_s: f64,
}

/// Why a load run could not run or report.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid loadgen option: {0}")]
    InvalidOption(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot reach the gateway: {0}")]
    Unreachable(#[source] ExchangeError),
    #[error("the scheduler thread failed: {0}")]
    Scheduler(String),
    #[error("cannot write {path}: {source}")]
    WriteJson { path: String, source: std::io::Error },
}

/// Where payments go.
#[derive(Clone, Debug)]
pub struct Target {
    /// Host name or address, without IPv6 brackets, for resolution.
    host: String,
    port: u16,
    /// `Host` header value.
    authority: HeaderValue,
    /// Origin-form request target, e.g. `/payments`.
    path: Uri,
}

impl Target {
    /// Parses a base URL such as `http://127.0.0.1:9999` or `http://gw:9999/prefix`.
    pub fn parse(url: &str) -> Result<Target, LoadgenError> {
        let bad = |why: &str| LoadgenError::InvalidOption(format!("--url {url}: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let path = format!("{}/payments", uri.path().trim_end_matches('/'));
        Ok(Target {
            host,
            port,
            authority: HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&format!("{e}")))?,
            path: path.parse().map_err(|e| bad(&format!("{e}")))?,
        })
    }

    async fn resolve(&self) -> Result<SocketAddr, LoadgenError> {
        let resolve_err = |source| LoadgenError::Resolve { host: self.host.clone(), source };
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port)).await.map_err(resolve_err)?;
        addrs.next().ok_or_else(|| resolve_err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority.to_str().unwrap_or("?"), self.path)
    }
}

/// One load step, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub rate_per_s: u64,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it, at the same rate.
    pub warmup: Duration,
    pub connections: usize,
    pub amount: Cents,
    /// From the intended send time to the end of the response.
    pub timeout: Duration,
    /// Most requests waiting for a connection; `None`: one second of traffic.
    pub max_backlog: Option<usize>,
    /// Width of the report's windows of intended send time; `None`: no windows.
    pub window: Option<Duration>,
}

impl Config {
    /// The CLI defaults, aimed at `url`.
    pub fn new(url: &str) -> Result<Config, LoadgenError> {
        Ok(Config {
            target: Target::parse(url)?,
            rate_per_s: 2_000,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            connections: 64,
            amount: Cents::new(1990).expect("positive"),
            timeout: Duration::from_millis(5_000),
            max_backlog: None,
            window: None,
        })
    }

    /// Validates the command line into a step configuration and, with `--sweep`, a sweep.
    pub fn from_args(args: &LoadgenArgs) -> Result<(Config, Option<SweepConfig>), LoadgenError> {
        let seconds = |name: &str, s: f64, allow_zero: bool| {
            let ok = s.is_finite() && s <= MAX_DURATION_S && if allow_zero { s >= 0.0 } else { s > 0.0 };
            if !ok {
                let low = if allow_zero { "[0" } else { "(0" };
                return Err(LoadgenError::InvalidOption(format!("--{name} {s}: expected seconds in {low}, {MAX_DURATION_S}]")));
            }
            Ok(Duration::from_secs_f64(s))
        };
        let amount = Cents::parse_json_number(args.amount.as_bytes())
            .map_err(|e| LoadgenError::InvalidOption(format!("--amount {}: {e}", args.amount)))?;
        let config = Config {
            target: Target::parse(&args.url)?,
            rate_per_s: args.rate,
            duration: seconds("duration", args.duration, false)?,
            warmup: seconds("warmup", args.warmup, true)?,
            connections: args.connections,
            amount,
            timeout: Duration::from_millis(args.timeout_ms),
            max_backlog: args.max_backlog,
            window: match seconds("window-s", args.window_s, true)? {
                w if w.is_zero() => None,
                w => Some(w),
            },
        };
        config.validate()?;
        let sweep = if args.sweep {
            let growth = match args.sweep_factor {
                Some(f) if f.is_finite() && f > 1.0 => Growth::Factor(f),
                Some(f) => return Err(LoadgenError::InvalidOption(format!("--sweep-factor {f}: must be above 1"))),
                None => Growth::Step(args.sweep_step),
            };
            let sweep = SweepConfig { start_per_s: args.sweep_start, growth, max_per_s: args.sweep_max, p99_bound_ms: args.p99_bound_ms };
            sweep.validate()?;
            Some(sweep)
        } else {
            None
        };
        Ok((config, sweep))
    }

    /// Checks every limit; [`run_once`] calls it too, for configurations built in code.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let invalid = |m: String| Err(LoadgenError::InvalidOption(m));
        if !(1..=MAX_RATE_PER_S).contains(&self.rate_per_s) {
            return invalid(format!("--rate {}: expected 1..={MAX_RATE_PER_S}", self.rate_per_s));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return invalid(format!("--connections {}: expected 1..={MAX_CONNECTIONS}", self.connections));
        }
        let timeout_ms_max = HISTOGRAM_MAX_US / 1000;
        if self.timeout.is_zero() || self.timeout > Duration::from_micros(HISTOGRAM_MAX_US) {
            return invalid(format!("--timeout-ms {}: expected 1..={timeout_ms_max}", self.timeout.as_millis()));
        }
        if self.duration.is_zero() || self.duration.as_secs_f64() > MAX_DURATION_S || self.warmup.as_secs_f64() > MAX_DURATION_S {
            return invalid(format!("--duration and --warmup: at most {MAX_DURATION_S} s, duration above 0"));
        }
        if let Some(b) = self.max_backlog
            && !(1..=MAX_BACKLOG).contains(&b)
        {
            return invalid(format!("--max-backlog {b}: expected 1..={MAX_BACKLOG}"));
        }
        if let Some(w) = self.window {
            let n = window_count(w, self.duration);
            if w.is_zero() || n > MAX_WINDOWS {
                return invalid(format!(
                    "--window-s {}: {n} windows of a {} s duration, expected a positive width and at most {MAX_WINDOWS} windows",
                    w.as_secs_f64(),
                    self.duration.as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    fn backlog_bound(&self) -> usize {
        self.max_backlog.unwrap_or_else(|| usize::try_from(self.rate_per_s).unwrap_or(MAX_BACKLOG).clamp(1, MAX_BACKLOG))
    }
}

/// How a sweep raises the rate.
#[derive(Clone, Copy, Debug)]
pub enum Growth {
    /// Add this many requests per second.
    Step(u64),
    /// Multiply by this (above 1).
    Factor(f64),
}

/// A rate sweep: steps of the [`Config`]'s duration, rising until the bound breaks.
#[derive(Clone, Copy, Debug)]
pub struct SweepConfig {
    pub start_per_s: u64,
    pub growth: Growth,
    pub max_per_s: u64,
    pub p99_bound_ms: f64,
}

impl SweepConfig {
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let invalid = |m: String| Err(LoadgenError::InvalidOption(m));
        if !(1..=MAX_RATE_PER_S).contains(&self.start_per_s) || !(self.start_per_s..=MAX_RATE_PER_S).contains(&self.max_per_s) {
            return invalid(format!(
                "--sweep-start {} / --sweep-max {}: expected 1 <= start <= max <= {MAX_RATE_PER_S}",
                self.start_per_s, self.max_per_s
            ));
        }
        if let Growth::Step(0) = self.growth {
            return invalid("--sweep-step 0: the rate would never rise".to_owned());
        }
        if !(self.p99_bound_ms.is_finite() && self.p99_bound_ms > 0.0) {
            return invalid(format!("--p99-bound-ms {}: expected a positive number", self.p99_bound_ms));
        }
        Ok(())
    }

    fn next(&self, rate: u64) -> u64 {
        match self.growth {
            Growth::Step(s) => rate.saturating_add(s),
            Growth::Factor(f) => ((rate as f64 * f).round() as u64).max(rate + 1),
        }
    }
}

/// Runs `paygate loadgen`: one step or a sweep, a summary on stderr, the JSON to `--json` or
/// stdout.
pub async fn run(args: LoadgenArgs) -> Result<(), String> {
    let (config, sweep) = Config::from_args(&args).map_err(|e| e.to_string())?;
    let json = match sweep {
        None => {
            eprintln!(
                "loadgen: POST {} at {}/s for {} s after {} s warm-up, {} connections",
                config.target,
                config.rate_per_s,
                config.duration.as_secs_f64(),
                config.warmup.as_secs_f64(),
                config.connections
            );
            let report = run_once(&config).await.map_err(|e| e.to_string())?;
            eprintln!("{report}");
            serde_json::to_string_pretty(&report)
        }
        Some(sweep) => {
            eprintln!(
                "loadgen: sweep from {}/s to at most {}/s, {} s per step, p99 bound {} ms",
                sweep.start_per_s,
                sweep.max_per_s,
                config.duration.as_secs_f64(),
                sweep.p99_bound_ms
            );
            let report = run_sweep(&config, &sweep, |step| eprintln!("{step}")).await.map_err(|e| e.to_string())?;
            match report.best_rate_within_bound {
                Some(r) => eprintln!("best rate with p99 <= {} ms and no errors: {r}/s ({})", report.p99_bound_ms, report.stopped_because),
                None => eprintln!("no rate met p99 <= {} ms with no errors ({})", report.p99_bound_ms, report.stopped_because),
            }
            serde_json::to_string_pretty(&report)
        }
    }
    .map_err(|e| e.to_string())?;
    match &args.json {
        Some(path) => std::fs::write(path, json + "\n")
            .map_err(|source| LoadgenError::WriteJson { path: path.display().to_string(), source }.to_string()),
        None => {
            println!("{json}");
            Ok(())
        }
    }
}

/// Raises the rate from `sweep.start_per_s` until a step's p99 exceeds the bound, a step has
/// any error, or the next rate would pass `sweep.max_per_s`. `on_step` sees each step as it
/// ends (the CLI prints it).
pub async fn run_sweep(config: &Config, sweep: &SweepConfig, mut on_step: impl FnMut(&StepReport)) -> Result<SweepReport, LoadgenError> {
    sweep.validate()?;
    let mut steps = Vec::new();
    let mut best = None;
    let mut rate = sweep.start_per_s;
    let stopped_because = loop {
        let step = Config { rate_per_s: rate, ..config.clone() };
        let report = run_once(&step).await?;
        on_step(&report);
        let errors = report.error_count() > 0;
        let over = report.latency_ms.p99 > sweep.p99_bound_ms;
        steps.push(report);
        if errors {
            break "errors";
        }
        if over {
            break "p99_over_bound";
        }
        best = Some(rate);
        let next = sweep.next(rate);
        if next > sweep.max_per_s {
            break "max_rate_reached";
        }
        rate = next;
    };
    Ok(SweepReport { sweep: steps, best_rate_within_bound: best, p99_bound_ms: sweep.p99_bound_ms, stopped_because })
}

/// Runs one step: warm-up, then `duration` at `rate_per_s`, then waits for every request to
/// end (each ends by its intended time plus the timeout).
pub async fn run_once(config: &Config) -> Result<StepReport, LoadgenError> {
    config.validate()?;
    let addr = config.target.resolve().await?;
    let pool = Pool::new(addr, config.connections);
    pool.prefill().await.map_err(LoadgenError::Unreachable)?;

    let warmup_n = request_count(config.rate_per_s, config.warmup);
    let measured_n = request_count(config.rate_per_s, config.duration);
    let t0 = Instant::now() + Duration::from_millis(SCHEDULE_LEAD_MS);
    let shared = Arc::new(Shared {
        pool,
        recorder: Mutex::new(match config.window {
            Some(width) => Recorder::with_windows(width, config.duration),
            None => Recorder::new(),
        }),
        backlog: AtomicUsize::new(0),
        target: config.target.clone(),
        amount: config.amount,
        timeout: config.timeout,
        measure_start: t0 + offset(warmup_n, config.rate_per_s),
    });
    let schedule =
        Schedule { t0, rate_per_s: config.rate_per_s, warmup_n, total_n: warmup_n + measured_n, backlog_bound: config.backlog_bound() };
    // Every request task holds a clone of `done`; the channel closes when the last one ends.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let runtime = tokio::runtime::Handle::current();
    let scheduler_shared = Arc::clone(&shared);
    // A blocking-pool thread: it sleeps between requests, which no runtime worker may do.
    let sent = tokio::task::spawn_blocking(move || schedule.run(&scheduler_shared, &runtime, done))
        .await
        .map_err(|e| LoadgenError::Scheduler(e.to_string()))?;
    assert_eq!(sent, measured_n, "the scheduler issues or drops every measured request");
    let _ = all_done.recv().await;

    let plan = StepPlan {
        rate_per_s: config.rate_per_s,
        duration_s: config.duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        connections: config.connections,
        sent,
        connects: shared.pool.connects(),
    };
    let report = shared.recorder.lock().expect("recorder poisoned").finish(plan);
    assert_eq!(report.ok + report.error_count(), report.sent, "every measured request ends exactly once");
    Ok(report)
}

/// What the scheduler and the request tasks share.
struct Shared {
    pool: Arc<Pool>,
    recorder: Mutex<Recorder>,
    /// Requests issued that do not hold a connection yet.
    backlog: AtomicUsize,
    target: Target,
    amount: Cents,
    timeout: Duration,
    /// Intended time of the first measured request.
    measure_start: Instant,
}

/// The arrival schedule of one step.
struct Schedule {
    t0: Instant,
    rate_per_s: u64,
    warmup_n: u64,
    total_n: u64,
    backlog_bound: usize,
}

impl Schedule {
    /// Issues every request at its intended time (blocking: sleeps between them); returns the
    /// number of measured requests issued or dropped.
    fn run(self, shared: &Arc<Shared>, runtime: &tokio::runtime::Handle, done: mpsc::Sender<()>) -> u64 {
        let mut i = 0;
        let mut measured = 0;
        let mut wake = WakeEstimate::new();
        // The due time the last sleep was cut short for, on purpose (see `WakeEstimate`).
        let mut woke_early_for = None;
        while i < self.total_n {
            let next = self.t0 + offset(i, self.rate_per_s);
            let now = Instant::now();
            if next > now {
                let remaining = next - now;
                if woke_early_for == Some(next) {
                    // The last few microseconds are cheaper to spin than to oversleep.
                    while Instant::now() < next {
                        std::hint::spin_loop();
                    }
                } else if remaining > wake.early() {
                    let target = next - wake.early();
                    std::thread::sleep(target - now);
                    wake.observe(Instant::now().saturating_duration_since(target));
                    woke_early_for = Some(next);
                    continue;
                } else {
                    // Due sooner than a sleep ends precisely (high rates): oversleep and batch
                    // what is due on waking, rather than spin a core away from the server.
                    std::thread::sleep(remaining);
                    wake.observe(Instant::now().saturating_duration_since(next));
                    continue;
                }
            }
            let now = Instant::now();
            // Everything due now goes out in one batch: a late wake-up (the OS ran something
            // else) catches up at once, and each request still counts from its own due time.
            while i < self.total_n {
                let intended = self.t0 + offset(i, self.rate_per_s);
                if intended > now {
                    break;
                }
                let is_measured = i >= self.warmup_n;
                measured += u64::from(is_measured);
                // Only this thread increments, so a load then an add cannot overshoot.
                if shared.backlog.load(Ordering::Relaxed) >= self.backlog_bound {
                    if is_measured {
                        let end = now.saturating_duration_since(shared.measure_start);
                        let due = intended.saturating_duration_since(shared.measure_start);
                        shared.recorder.lock().expect("recorder poisoned").record(Outcome::Dropped, Duration::ZERO, end, due);
                    }
                } else {
                    shared.backlog.fetch_add(1, Ordering::Relaxed);
                    runtime.spawn(one_request(Arc::clone(shared), intended, is_measured, done.clone()));
                }
                i += 1;
            }
        }
        measured
    }
}

/// How late `std::thread::sleep` wakes up, learned as the run goes.
///
/// A sleep ends tens of microseconds after its target (timer slack, 50 µs by default on Linux,
/// plus the wake-up itself; about 90 µs at the median on a 2-vCPU VM). That lateness would be
/// added to every measured latency, so the scheduler sleeps until the due time minus this
/// estimate and spins the rest. Measured there: lateness at the median drops from ~90 µs to
/// ~0 for under 1 % of a core at 2,000 requests/s.
struct WakeEstimate {
    early_ns: u64,
}

impl WakeEstimate {
    /// Starting guess: Linux's default timer slack.
    const INITIAL_NS: u64 = 50_000;
    /// Cap on the estimate, which bounds each spin: a descheduled wake-up (milliseconds) must
    /// not teach the scheduler to spin for milliseconds.
    const MAX_NS: u64 = 250_000;

    fn new() -> WakeEstimate {
        WakeEstimate { early_ns: Self::INITIAL_NS }
    }

    fn early(&self) -> Duration {
        Duration::from_nanos(self.early_ns)
    }

    /// Folds in one wake-up's lateness (moving average, weight 1/8).
    fn observe(&mut self, late: Duration) {
        let sample = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX).min(Self::MAX_NS);
        self.early_ns = (self.early_ns * 7 + sample) / 8;
    }
}

/// Sends one payment due at `intended` and records how it ended (if measured).
async fn one_request(shared: Arc<Shared>, intended: Instant, measured: bool, _done: mpsc::Sender<()>) {
    let started = Instant::now();
    let waiting = BacklogEntry(&shared.backlog);
    let request = payment_request(&shared.target, shared.amount);
    let deadline = tokio::time::Instant::from_std(intended + shared.timeout);
    let pool = &shared.pool;
    let result = tokio::time::timeout_at(deadline, async move {
        let mut lease = pool.checkout().await;
        drop(waiting);
        lease.exchange(request).await
    })
    .await;
    if !measured {
        return;
    }
    let end = Instant::now();
    let mut recorder = shared.recorder.lock().expect("recorder poisoned");
    recorder.record_start_lag(started.saturating_duration_since(intended));
    let outcome = match result {
        Ok(Ok(status)) => Outcome::Response(status),
        Ok(Err(e)) => {
            recorder.note_transport_error(&e);
            Outcome::Transport
        }
        Err(_elapsed) => Outcome::Timeout,
    };
    let since_start = |t: Instant| t.saturating_duration_since(shared.measure_start);
    recorder.record(outcome, end.saturating_duration_since(intended), since_start(end), since_start(intended));
}

/// A request counted in the backlog until it gets a connection or gives up; the count drops
/// either way, also when the timeout cancels the wait.
struct BacklogEntry<'a>(&'a AtomicUsize);

impl Drop for BacklogEntry<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `POST /payments` with a fresh correlation id.
fn payment_request(target: &Target, amount: Cents) -> Request<Full<Bytes>> {
    let mut body = Vec::with_capacity(BODY_CAPACITY_BYTES);
    body.extend_from_slice(br#"{"correlationId":""#);
    CorrelationId::random().write_to(&mut body);
    body.extend_from_slice(br#"","amount":"#);
    amount.write_decimal(&mut body);
    body.push(b'}');
    let mut request = Request::new(Full::new(Bytes::from(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.path.clone();
    request.headers_mut().insert(HOST, target.authority.clone());
    request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request
}

/// Requests in `d` at `rate_per_s`, rounded to the nearest whole request.
fn request_count(rate_per_s: u64, d: Duration) -> u64 {
    (rate_per_s as f64 * d.as_secs_f64()).round() as u64
}

/// Intended time of request `i` after `t0`, exact to the nanosecond (no accumulated drift).
fn offset(i: u64, rate_per_s: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate_per_s);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_exact_and_drift_free() {
        assert_eq!(offset(0, 2000), Duration::ZERO);
        assert_eq!(offset(1, 2000), Duration::from_micros(500));
        assert_eq!(offset(2_000 * 3600, 2000), Duration::from_secs(3600));
        assert_eq!(offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(offset(3, 3), Duration::from_secs(1));
        assert_eq!(request_count(2000, Duration::from_secs_f64(1.5)), 3000);
    }

    #[test]
    fn body_is_a_payment_with_fresh_id() {
        let target = Target::parse("http://127.0.0.1:9999/").unwrap();
        let amount = Cents::parse_json_number(b"19.9").unwrap();
        let a = payment_request(&target, amount);
        let b = payment_request(&target, amount);
        assert_eq!(a.uri().path(), "/payments");
        assert_eq!(a.headers()[HOST], "127.0.0.1:9999");
        assert_eq!(a.headers()[CONTENT_TYPE], "application/json");
        let body = |r: &Request<Full<Bytes>>| format!("{:?}", r.body());
        assert_ne!(body(&a), body(&b));
        assert!(body(&a).contains(r#"\"amount\":19.90}"#), "{}", body(&a));
    }

    #[test]
    fn url_forms() {
        let t = Target::parse("http://[::1]:8080/gw/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.path()), ("::1", 8080, "/gw/payments"));
        let t = Target::parse("http://gateway").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.to_str().unwrap()), ("gateway", 80, "gateway"));
        assert!(Target::parse("https://gateway").is_err());
        assert!(Target::parse("127.0.0.1:9999").is_err());
    }

    fn parse(argv: &[&str]) -> Result<Config, LoadgenError> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(std::iter::once("loadgen").chain(argv.iter().copied())).unwrap();
        Config::from_args(&cli.args).map(|(config, _)| config)
    }

    #[test]
    fn window_option() {
        assert_eq!(parse(&[]).unwrap().window, None);
        assert_eq!(parse(&["--window-s", "0"]).unwrap().window, None);
        assert_eq!(parse(&["--window-s", "10", "--duration", "600"]).unwrap().window, Some(Duration::from_secs(10)));
        assert_eq!(parse(&["--window-s", "0.5"]).unwrap().window, Some(Duration::from_millis(500)));
        for bad in ["-1", "NaN", "inf"] {
            assert!(matches!(parse(&[&format!("--window-s={bad}")]), Err(LoadgenError::InvalidOption(_))), "{bad}");
        }
        // 3,601 windows of 1 s: one more than a step may have.
        let too_many = parse(&["--window-s", "1", "--duration", "3601"]);
        assert!(matches!(too_many, Err(LoadgenError::InvalidOption(ref m)) if m.contains("3601 windows")), "{too_many:?}");
        assert!(parse(&["--window-s", "1", "--duration", "3600"]).is_ok());
    }

    #[test]
    fn sweep_growth() {
        let s = SweepConfig { start_per_s: 100, growth: Growth::Factor(1.5), max_per_s: 1000, p99_bound_ms: 1.0 };
        assert_eq!(s.next(100), 150);
        assert_eq!(s.next(1), 2);
        let s = SweepConfig { growth: Growth::Step(250), ..s };
        assert_eq!(s.next(100), 350);
    }
}
