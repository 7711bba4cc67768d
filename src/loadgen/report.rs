//! What one load step measured: the recorder the requests write into while it runs, and the
//! report (JSON for tools, a short text for people) it becomes at the end.
//!
//! The JSON shape is parsed by `scripts/perf_report.py`; keep existing keys and their meaning,
//! add new ones only.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::StatusCode;
use serde::Serialize;

/// Largest latency the histograms hold; longer ones are recorded as this. The per-request
/// timeout is validated to be at most this, so only timeouts could exceed it, and those are
/// counted as errors, not latencies.
pub const HISTOGRAM_MAX_US: u64 = 60_000_000;
/// Significant decimal digits the histograms keep: 0.1 % relative error at every magnitude.
const HISTOGRAM_SIGFIG: u8 = 3;

/// How one scheduled request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response arrived; 2xx counts as ok, anything else as an error of that status.
    Response(StatusCode),
    /// No response: connect, handshake or the exchange failed.
    Transport,
    /// No response within the timeout, counted from the intended send time.
    Timeout,
    /// Never sent: the backlog of scheduled-but-unsent requests was at its bound.
    Dropped,
}

/// Accumulates one step's measurements. Requests record into it under a mutex held for a few
/// hundred nanoseconds, far below the latencies it measures.
pub struct Recorder {
    /// Intended send time to end of response body, of every request that got a response.
    latency_us: Histogram<u64>,
    /// Intended send time to the moment the request's task first ran: the generator's own
    /// lateness (scheduler wake-up plus runtime hand-off). If this is large, the client, not
    /// the server, is the bottleneck.
    start_lag_us: Histogram<u64>,
    ok: u64,
    by_status: BTreeMap<u16, u64>,
    transport: u64,
    timeout: u64,
    dropped: u64,
    /// Latest end of a measured response, from the measurement start.
    last_response_end: Duration,
    /// One transport error's text, so a failing run says why.
    first_transport_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        let hist = || Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIG).expect("valid histogram bounds");
        Recorder {
            latency_us: hist(),
            start_lag_us: hist(),
            ok: 0,
            by_status: BTreeMap::new(),
            transport: 0,
            timeout: 0,
            dropped: 0,
            last_response_end: Duration::ZERO,
            first_transport_error: None,
        }
    }

    /// Records how a measured request ended. `latency` runs from its intended send time;
    /// `end` is when it ended, from the measurement start.
    pub fn record(&mut self, outcome: Outcome, latency: Duration, end: Duration) {
        match outcome {
            Outcome::Response(status) => {
                self.latency_us.saturating_record(micros(latency));
                self.last_response_end = self.last_response_end.max(end);
                if status.is_success() {
                    self.ok += 1;
                } else {
                    *self.by_status.entry(status.as_u16()).or_insert(0) += 1;
                }
            }
            Outcome::Transport => self.transport += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Dropped => self.dropped += 1,
        }
    }

    /// Keeps the first transport error's text for the summary.
    pub fn note_transport_error(&mut self, error: &dyn fmt::Display) {
        if self.first_transport_error.is_none() {
            self.first_transport_error = Some(error.to_string());
        }
    }

    /// Records how late a measured request's task started.
    pub fn record_start_lag(&mut self, lag: Duration) {
        self.start_lag_us.saturating_record(micros(lag));
    }

    /// Turns the measurements into the step's report.
    pub fn finish(&self, plan: StepPlan) -> StepReport {
        let mut errors = BTreeMap::new();
        for (status, n) in &self.by_status {
            errors.insert(status.to_string(), *n);
        }
        errors.insert("transport".to_owned(), self.transport);
        errors.insert("timeout".to_owned(), self.timeout);
        errors.insert("dropped".to_owned(), self.dropped);
        let responses = self.latency_us.len();
        let window_s = self.last_response_end.as_secs_f64();
        StepReport {
            rate: plan.rate_per_s,
            duration_s: plan.duration_s,
            warmup_s: plan.warmup_s,
            connections: plan.connections,
            sent: plan.sent,
            ok: self.ok,
            errors,
            latency_ms: Latency::of(&self.latency_us),
            achieved_rate: if window_s > 0.0 { round3(responses as f64 / window_s) } else { 0.0 },
            client_start_lag_ms: LagSummary {
                p50: ms(self.start_lag_us.value_at_quantile(0.5)),
                p99: ms(self.start_lag_us.value_at_quantile(0.99)),
                max: ms(self.start_lag_us.max()),
            },
            connects: plan.connects,
            first_transport_error: self.first_transport_error.clone(),
        }
    }
}

/// What the runner knows about a step beyond the recorder's counts.
#[derive(Clone, Copy, Debug)]
pub struct StepPlan {
    pub rate_per_s: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    /// Measured requests scheduled (dropped ones included).
    pub sent: u64,
    /// Connections opened during the step, prefill included.
    pub connects: u64,
}

/// One step's results, in the JSON shape other tools parse.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Scheduled arrival rate, requests per second.
    pub rate: u64,
    /// Measured time, warm-up excluded.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    /// Measured requests scheduled; always `ok` plus the sum of `errors`.
    pub sent: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Non-2xx responses by status code, plus `transport` (no response), `timeout` (none within
    /// the timeout) and `dropped` (never sent: client backlog full); these three always present.
    pub errors: BTreeMap<String, u64>,
    /// Intended send time to end of response, of every response (any status).
    pub latency_ms: Latency,
    /// Responses per second between the measurement start and the last measured response.
    pub achieved_rate: f64,
    /// How late the generator itself started requests (see [`Recorder`]).
    pub client_start_lag_ms: LagSummary,
    pub connects: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_transport_error: Option<String>,
}

impl StepReport {
    /// All errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency percentiles in milliseconds (microsecond resolution); zeros when nothing answered.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency { p50: 0.0, p90: 0.0, p99: 0.0, p999: 0.0, p9999: 0.0, max: 0.0, mean: 0.0 };
        }
        Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            p9999: ms(h.value_at_quantile(0.9999)),
            max: ms(h.max()),
            mean: round3(h.mean() / 1000.0),
        }
    }
}

/// The tail of the generator's own lateness, milliseconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LagSummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// A sweep's results.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// Every step run, in order; the last one is the one that stopped the sweep (if any did).
    pub sweep: Vec<StepReport>,
    /// Highest rate whose p99 was within the bound with no errors; `null` when none was.
    pub best_rate_within_bound: Option<u64>,
    pub p99_bound_ms: f64,
    /// `p99_over_bound`, `errors` or `max_rate_reached`.
    pub stopped_because: &'static str,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "rate {}/s for {} s (+{} s warm-up), {} connections: sent {}, ok {}, achieved {:.1}/s",
            self.rate, self.duration_s, self.warmup_s, self.connections, self.sent, self.ok, self.achieved_rate
        )?;
        let errors: Vec<String> = self.errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  errors: {}", if errors.is_empty() { "none".to_owned() } else { errors.join(", ") })?;
        writeln!(
            f,
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.p9999, l.max, l.mean
        )?;
        write!(
            f,
            "  client start lag ms: p50 {:.3}  p99 {:.3}  max {:.3}; connections opened {}",
            self.client_start_lag_ms.p50, self.client_start_lag_ms.p99, self.client_start_lag_ms.max, self.connects
        )?;
        if let Some(e) = &self.first_transport_error {
            write!(f, "\n  first transport error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sent: u64) -> StepPlan {
        StepPlan { rate_per_s: 100, duration_s: 1.0, warmup_s: 0.0, connections: 4, sent, connects: 4 }
    }

    #[test]
    fn counts_every_outcome_once() {
        let mut r = Recorder::new();
        let ms1 = Duration::from_millis(1);
        r.record(Outcome::Response(StatusCode::ACCEPTED), ms1, Duration::from_millis(500));
        r.record(Outcome::Response(StatusCode::SERVICE_UNAVAILABLE), ms1, Duration::from_millis(1000));
        r.record(Outcome::Transport, ms1, ms1);
        r.record(Outcome::Timeout, ms1, ms1);
        r.record(Outcome::Dropped, ms1, ms1);
        let report = r.finish(plan(5));
        assert_eq!(report.ok, 1);
        assert_eq!(report.error_count(), 4);
        assert_eq!(report.errors["503"], 1);
        assert_eq!(report.achieved_rate, 2.0);
        assert_eq!(report.latency_ms.max, 1.0);
    }

    #[test]
    fn empty_step_reports_zeros_and_the_three_error_kinds() {
        let report = Recorder::new().finish(plan(0));
        assert_eq!(report.latency_ms.p99, 0.0);
        assert_eq!(report.achieved_rate, 0.0);
        let keys: Vec<&str> = report.errors.keys().map(String::as_str).collect();
        assert_eq!(keys, ["dropped", "timeout", "transport"]);
    }
}
