//! `paygate processor-sim`: an in-memory payment processor that imitates the upstream API of
//! SPEC §4 exactly (delay, failure mode, duplicate detection, rate-limited health, admin
//! summary). It stands in for the contest's processors in tests and load tests, so it is on the
//! hot path: state is atomics plus short, sharded locks, and nothing is held across `.await`.
//!
//! This module owns the command-line arguments, the validated configuration and the shared
//! state; `handlers` owns the HTTP surface, `store` the recorded payments, `codec` the wire text.

mod codec;
mod handlers;
mod store;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

pub use codec::parse_fee_ppm;
pub use store::MAX_STORED_PAYMENTS;

/// Longest delay an operator may configure. The contest uses at most 5 s; a minute leaves room
/// for timeout experiments while a typo cannot park requests for hours.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Longest accepted token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Command-line arguments of `paygate processor-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, env = "PAYGATE_SIM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Fee rate charged per payment, as a decimal (0.05 = 5 %).
    #[arg(long, env = "PAYGATE_SIM_FEE", default_value = "0.05")]
    pub fee: String,
    /// Initial admin token, sent by callers as `X-Rinha-Token`.
    #[arg(long, env = "PAYGATE_SIM_TOKEN", default_value = "123")]
    pub token: String,
    /// Health endpoint allows one call per this many seconds (0 = unlimited).
    #[arg(long, env = "PAYGATE_SIM_RATE_LIMIT_SECONDS", default_value_t = 5)]
    pub rate_limit_seconds: u64,
    /// Initial delay before each payment is processed, in milliseconds.
    #[arg(long, env = "PAYGATE_SIM_DELAY_MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Start in failure mode (payments answered 500 and not recorded).
    #[arg(long, env = "PAYGATE_SIM_FAILING")]
    pub failing: bool,
}

/// Validated simulator configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Fee rate in parts per million (50 000 = 5 %), so fees are computed with integers only.
    pub fee_ppm: u64,
    /// Initial admin token.
    pub token: String,
    /// Window of the health endpoint's rate limit; 0 disables it.
    pub rate_limit_seconds: u64,
    /// Initial processing delay per payment.
    pub delay_ms: u64,
    /// Initial failure mode.
    pub failing: bool,
}

impl SimConfig {
    /// The contest's defaults at the given fee: token `123`, 5 s health window, healthy, no delay.
    pub fn new(fee_ppm: u64) -> SimConfig {
        SimConfig { fee_ppm, token: "123".to_owned(), rate_limit_seconds: 5, delay_ms: 0, failing: false }
    }

    pub fn from_args(args: &SimArgs) -> Result<SimConfig, String> {
        let cfg = SimConfig {
            fee_ppm: parse_fee_ppm(&args.fee)?,
            token: args.token.clone(),
            rate_limit_seconds: args.rate_limit_seconds,
            delay_ms: args.delay_ms,
            failing: args.failing,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.fee_ppm > codec::PPM_PER_UNIT {
            return Err(format!("fee {} ppm is above 100 %", self.fee_ppm));
        }
        check_token(&self.token)?;
        check_delay(self.delay_ms)?;
        Ok(())
    }
}

/// A token must fit in an HTTP header, or no caller could ever present it.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("token must be 1 to {MAX_TOKEN_BYTES} visible ASCII characters"));
    }
    Ok(())
}

fn check_delay(delay_ms: u64) -> Result<(), String> {
    if delay_ms > MAX_DELAY_MS {
        return Err(format!("delay must be at most {MAX_DELAY_MS} ms"));
    }
    Ok(())
}

/// Health calls remembered for inspection by tests.
const HEALTH_LOG_MAX: usize = 4_096;

/// A running simulator's state. Cloning is cheap and every clone shares the same state.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

struct Shared {
    fee_ppm: u64,
    store: store::Store,
    /// Read on every admin request, replaced rarely; an `Arc` keeps the read to a pointer copy.
    token: Mutex<Arc<str>>,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    /// `POST /payments` requests between admission and the end of their processing (which
    /// outlives a caller that hung up), for the 429 limit.
    payments_in_flight: AtomicUsize,
    health_calls: AtomicU64,
    /// Every `POST /payments` received, whatever its answer.
    payment_requests: AtomicU64,
    /// Arrival of each health call and, when refused, the wait it was told.
    health_log: Mutex<Vec<(Instant, Option<Duration>)>>,
    health_limit: Mutex<HealthLimit>,
}

/// The health endpoint's limit: a call is allowed when no call was allowed during the last
/// `window`. Time is passed in so the rule is tested without waiting.
#[derive(Debug)]
struct HealthLimit {
    window: Duration,
    last_allowed: Option<Instant>,
}

impl HealthLimit {
    /// `Ok` when a call at `now` is allowed (and counts as the window's call), else the wait
    /// until the next allowed one.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        // Elapsed time rather than `at + window`, which would overflow for a huge window.
        let elapsed = self.last_allowed.map(|at| now.saturating_duration_since(at));
        match elapsed {
            Some(elapsed) if elapsed < self.window => Err(self.window - elapsed),
            _ => {
                self.last_allowed = Some(now);
                Ok(())
            }
        }
    }
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            shared: Arc::new(Shared {
                fee_ppm: cfg.fee_ppm,
                store: store::Store::default(),
                token: Mutex::new(Arc::from(cfg.token)),
                delay_ms: AtomicU64::new(cfg.delay_ms),
                failing: AtomicBool::new(cfg.failing),
                payments_in_flight: AtomicUsize::new(0),
                health_calls: AtomicU64::new(0),
                payment_requests: AtomicU64::new(0),
                health_log: Mutex::new(Vec::new()),
                health_limit: Mutex::new(HealthLimit { window: Duration::from_secs(cfg.rate_limit_seconds), last_allowed: None }),
            }),
        }
    }

    /// Serves the processor API on `listener` until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        crate::http::serve(listener, move |req| handlers::handle(self.clone(), req), shutdown).await;
    }

    /// Every `GET /payments/service-health` received, including those answered 429.
    pub fn health_calls(&self) -> u64 {
        self.shared.health_calls.load(Ordering::Relaxed)
    }

    /// Every `POST /payments` received, whatever its answer: how often a payment was forwarded.
    pub fn payment_requests(&self) -> u64 {
        self.shared.payment_requests.load(Ordering::Relaxed)
    }

    /// Each health call's arrival and, when it was refused with 429, the wait it was told.
    pub fn health_log(&self) -> Vec<(Instant, Option<Duration>)> {
        self.shared.health_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn count_payment_request(&self) {
        self.shared.payment_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Payments currently recorded.
    pub fn payment_count(&self) -> u64 {
        self.shared.store.len()
    }

    /// `POST /payments` requests admitted and not yet finished (those whose caller hung up
    /// included), the number the 429 limit applies to.
    pub fn payments_in_flight(&self) -> usize {
        self.shared.payments_in_flight.load(Ordering::Relaxed)
    }

    /// Sets the processing delay, as `PUT /admin/configurations/delay` does; returns the old one.
    pub fn set_delay_ms(&self, delay_ms: u64) -> u64 {
        self.shared.delay_ms.swap(delay_ms, Ordering::Relaxed)
    }

    /// Sets failure mode, as `PUT /admin/configurations/failure` does; returns the old one.
    pub fn set_failing(&self, failing: bool) -> bool {
        self.shared.failing.swap(failing, Ordering::Relaxed)
    }

    pub fn fee_ppm(&self) -> u64 {
        self.shared.fee_ppm
    }

    fn token(&self) -> Arc<str> {
        self.shared.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_token(&self, token: &str) {
        *self.shared.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(token);
    }

    /// Decides one health call: `Ok` when allowed now, else the wait until the next allowed one.
    fn admit_health_call(&self) -> Result<(), Duration> {
        self.shared.health_calls.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let verdict = self.shared.health_limit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(now);
        let mut log = self.shared.health_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: a long-running simulator keeps only the most recent calls.
        if log.len() >= HEALTH_LOG_MAX {
            log.drain(..HEALTH_LOG_MAX / 2);
        }
        log.push((now, verdict.err()));
        verdict
    }
}

/// Binds `args.listen` and serves until ctrl-c or SIGTERM.
pub async fn run(args: SimArgs) -> Result<(), String> {
    let cfg = SimConfig::from_args(&args)?;
    let listener = TcpListener::bind(&args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut fee = Vec::new();
    codec::write_fee_rate(cfg.fee_ppm, &mut fee);
    tracing::info!(
        "processor-sim listening on {addr} fee={} delay_ms={} failing={} rate_limit_seconds={}",
        String::from_utf8_lossy(&fee),
        cfg.delay_ms,
        cfg.failing,
        cfg.rate_limit_seconds
    );
    println!("processor-sim listening on {addr}");
    Sim::new(cfg).serve(listener, crate::http::shutdown_signal()).await;
    tracing::info!("processor-sim stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SimArgs {
        SimArgs {
            listen: "127.0.0.1:0".into(),
            fee: "0.05".into(),
            token: "123".into(),
            rate_limit_seconds: 5,
            delay_ms: 0,
            failing: false,
        }
    }

    #[test]
    fn defaults_become_the_contest_config() {
        assert_eq!(SimConfig::from_args(&args()), Ok(SimConfig::new(50_000)));
    }

    #[test]
    fn refuses_unusable_config() {
        assert!(SimConfig::from_args(&SimArgs { fee: "5%".into(), ..args() }).is_err());
        assert!(SimConfig::from_args(&SimArgs { token: String::new(), ..args() }).is_err());
        assert!(SimConfig::from_args(&SimArgs { token: "a b".into(), ..args() }).is_err());
        assert!(SimConfig::from_args(&SimArgs { delay_ms: MAX_DELAY_MS + 1, ..args() }).is_err());
    }

    #[test]
    fn health_allows_one_call_per_window() {
        let mut limit = HealthLimit { window: Duration::from_secs(5), last_allowed: None };
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(limit.admit(t0), Ok(()));
        assert_eq!(limit.admit(ms(4_999)), Err(Duration::from_millis(1)));
        assert_eq!(limit.admit(ms(5_000)), Ok(()));
        // Refused calls do not extend the window: it runs from the last allowed call.
        assert_eq!(limit.admit(ms(6_000)), Err(Duration::from_millis(4_000)));
        assert_eq!(limit.admit(ms(10_000)), Ok(()));
    }

    #[test]
    fn a_huge_window_does_not_overflow() {
        let mut limit = HealthLimit { window: Duration::from_secs(u64::MAX), last_allowed: None };
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Ok(()));
        assert_eq!(limit.admit(t0), Err(Duration::from_secs(u64::MAX)));
    }

    #[test]
    fn a_zero_window_allows_every_call() {
        let mut limit = HealthLimit { window: Duration::ZERO, last_allowed: None };
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Ok(()));
        assert_eq!(limit.admit(t0), Ok(()));
    }
}
