//! What one load step measured: the recorder the requests write into while it runs, and the
//! report (JSON for tools, a short text for people) it becomes at the end.
//!
//! The JSON shape is parsed by `scripts/perf_report.py` and `scripts/soak.py`; keep existing
//! keys and their meaning, add new ones only.
//!
//! With windows on (`--window-s`), the measured part is also cut into consecutive windows of
//! *intended* send time, each with its own counts and latency histogram: a request belongs to
//! the window it was due in, however late it ended, so a stall shows in the window whose
//! requests it delayed.

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
/// Most windows one step may be cut into. Each window that sees a response holds a histogram
/// of about 140 KB (allocated when its first response is recorded), so this bounds the
/// recorder at about 500 MB in the worst case; a 10-minute run in 10-s windows needs 8 MB.
pub const MAX_WINDOWS: u64 = 3_600;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, HISTOGRAM_SIGFIG).expect("valid histogram bounds")
}

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

/// How many requests ended which way: the whole step's, or one window's.
#[derive(Clone, Debug, Default)]
struct Counts {
    ok: u64,
    by_status: BTreeMap<u16, u64>,
    transport: u64,
    timeout: u64,
    dropped: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Response(status) if status.is_success() => self.ok += 1,
            Outcome::Response(status) => *self.by_status.entry(status.as_u16()).or_insert(0) += 1,
            Outcome::Transport => self.transport += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Dropped => self.dropped += 1,
        }
    }

    /// Non-2xx statuses by code, plus `transport`, `timeout` and `dropped`, always present.
    fn errors(&self) -> BTreeMap<String, u64> {
        let mut errors: BTreeMap<String, u64> = self.by_status.iter().map(|(status, n)| (status.to_string(), *n)).collect();
        errors.insert("transport".to_owned(), self.transport);
        errors.insert("timeout".to_owned(), self.timeout);
        errors.insert("dropped".to_owned(), self.dropped);
        errors
    }

    fn requests(&self) -> u64 {
        self.ok + self.by_status.values().sum::<u64>() + self.transport + self.timeout + self.dropped
    }
}

/// One window of intended send time while it is being recorded.
#[derive(Default)]
struct WindowSlot {
    counts: Counts,
    /// Created with the window's first response: windows nobody answered in cost nothing.
    latency_us: Option<Histogram<u64>>,
}

/// The measured part cut into windows of `width` (the last one shorter when `span` is not a
/// multiple of it).
struct Windows {
    width: Duration,
    span: Duration,
    slots: Vec<WindowSlot>,
}

impl Windows {
    fn new(width: Duration, span: Duration) -> Windows {
        let count = window_count(width, span);
        assert!((1..=MAX_WINDOWS).contains(&count), "{count} windows: expected 1..={MAX_WINDOWS}");
        Windows { width, span, slots: (0..count).map(|_| WindowSlot::default()).collect() }
    }

    /// The window a request due `intended` after the measurement start belongs to; anything
    /// due at or past the span's end (none is, by the schedule) goes to the last one.
    fn index(&self, intended: Duration) -> usize {
        let i = intended.as_nanos() / self.width.as_nanos();
        usize::try_from(i).unwrap_or(usize::MAX).min(self.slots.len() - 1)
    }

    fn reports(&self) -> Vec<WindowReport> {
        let mut start = Duration::ZERO;
        self.slots
            .iter()
            .map(|slot| {
                let end = (start + self.width).min(self.span);
                let report = WindowReport {
                    start_s: round6(start.as_secs_f64()),
                    duration_s: round6((end - start).as_secs_f64()),
                    requests: slot.counts.requests(),
                    ok: slot.counts.ok,
                    errors: slot.counts.errors(),
                    latency_ms: slot.latency_us.as_ref().map_or(Latency::ZERO, Latency::of),
                };
                start = end;
                report
            })
            .collect()
    }
}

/// Windows of `width` that cover `span`: the span divided by the width, rounded up.
pub fn window_count(width: Duration, span: Duration) -> u64 {
    let (w, s) = (width.as_nanos().max(1), span.as_nanos());
    u64::try_from(s.div_ceil(w)).unwrap_or(u64::MAX).max(1)
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
    counts: Counts,
    /// Per-window counts and latencies, when windows are on.
    windows: Option<Windows>,
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
        Recorder {
            latency_us: histogram(),
            start_lag_us: histogram(),
            counts: Counts::default(),
            windows: None,
            last_response_end: Duration::ZERO,
            first_transport_error: None,
        }
    }

    /// A recorder that also cuts the measured `span` into windows of `width` of intended send
    /// time. Panics unless that makes 1 to [`MAX_WINDOWS`] windows (the runner validates it).
    pub fn with_windows(width: Duration, span: Duration) -> Recorder {
        Recorder { windows: Some(Windows::new(width, span)), ..Recorder::new() }
    }

    /// Records how a measured request ended. `latency` runs from its intended send time;
    /// `end` is when it ended and `intended` when it was due, both from the measurement start
    /// (`intended` picks its window).
    pub fn record(&mut self, outcome: Outcome, latency: Duration, end: Duration, intended: Duration) {
        self.counts.add(outcome);
        let us = micros(latency);
        if let Outcome::Response(_) = outcome {
            self.latency_us.saturating_record(us);
            self.last_response_end = self.last_response_end.max(end);
        }
        if let Some(windows) = &mut self.windows {
            let i = windows.index(intended);
            let slot = &mut windows.slots[i];
            slot.counts.add(outcome);
            if let Outcome::Response(_) = outcome {
                slot.latency_us.get_or_insert_with(histogram).saturating_record(us);
            }
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
        let responses = self.latency_us.len();
        let window_s = self.last_response_end.as_secs_f64();
        StepReport {
            rate: plan.rate_per_s,
            duration_s: plan.duration_s,
            warmup_s: plan.warmup_s,
            connections: plan.connections,
            sent: plan.sent,
            ok: self.counts.ok,
            errors: self.counts.errors(),
            latency_ms: Latency::of(&self.latency_us),
            achieved_rate: if window_s > 0.0 { round3(responses as f64 / window_s) } else { 0.0 },
            client_start_lag_ms: LagSummary {
                p50: ms(self.start_lag_us.value_at_quantile(0.5)),
                p99: ms(self.start_lag_us.value_at_quantile(0.99)),
                max: ms(self.start_lag_us.max()),
            },
            connects: plan.connects,
            first_transport_error: self.first_transport_error.clone(),
            window_s: self.windows.as_ref().map(|w| w.width.as_secs_f64()),
            windows: self.windows.as_ref().map(Windows::reports),
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
    /// Width of each of `windows`, seconds; only with windows on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<f64>,
    /// The measured part by consecutive windows of intended send time (`--window-s`), in
    /// order; absent with windows off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<WindowReport>>,
}

/// One window of intended send time: the requests due in it and how they ended.
#[derive(Clone, Debug, Serialize)]
pub struct WindowReport {
    /// Offset of the window's start from the measurement start, seconds.
    pub start_s: f64,
    /// The window's length (the last window may be shorter), seconds.
    pub duration_s: f64,
    /// Measured requests due in the window; always `ok` plus the sum of `errors`.
    pub requests: u64,
    pub ok: u64,
    /// As [`StepReport::errors`], for this window's requests.
    pub errors: BTreeMap<String, u64>,
    /// As [`StepReport::latency_ms`], for this window's responses.
    pub latency_ms: Latency,
}

impl WindowReport {
    /// All errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
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
    /// Nothing answered.
    pub const ZERO: Latency = Latency { p50: 0.0, p90: 0.0, p99: 0.0, p999: 0.0, p9999: 0.0, max: 0.0, mean: 0.0 };

    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::ZERO;
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

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
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
        if let (Some(width), Some(windows)) = (self.window_s, &self.windows) {
            // Windows with a response (every latency is at least 1 µs).
            let answered: Vec<&WindowReport> = windows.iter().filter(|w| w.latency_ms.max > 0.0).collect();
            let mut p999: Vec<f64> = answered.iter().map(|w| w.latency_ms.p999).collect();
            p999.sort_by(f64::total_cmp);
            let worst = answered.iter().max_by(|a, b| a.latency_ms.p999.total_cmp(&b.latency_ms.p999));
            write!(f, "\n  windows: {} of {width} s", windows.len())?;
            if let Some(worst) = worst {
                write!(
                    f,
                    "; p99.9 median {:.3}, highest {:.3} (window at {} s); windows with errors {}",
                    p999[p999.len() / 2],
                    worst.latency_ms.p999,
                    worst.start_s,
                    windows.iter().filter(|w| w.error_count() > 0).count()
                )?;
            }
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
        r.record(Outcome::Response(StatusCode::ACCEPTED), ms1, Duration::from_millis(500), Duration::from_millis(499));
        r.record(Outcome::Response(StatusCode::SERVICE_UNAVAILABLE), ms1, Duration::from_millis(1000), Duration::from_millis(999));
        r.record(Outcome::Transport, ms1, ms1, Duration::ZERO);
        r.record(Outcome::Timeout, ms1, ms1, Duration::ZERO);
        r.record(Outcome::Dropped, ms1, ms1, ms1);
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

    #[test]
    fn without_windows_the_json_has_no_window_keys() {
        let json = serde_json::to_value(Recorder::new().finish(plan(0))).unwrap();
        assert!(json.get("windows").is_none() && json.get("window_s").is_none(), "{json}");
    }

    #[test]
    fn window_count_rounds_up() {
        let s = Duration::from_secs;
        assert_eq!(window_count(s(10), s(600)), 60);
        assert_eq!(window_count(s(10), s(25)), 3);
        assert_eq!(window_count(s(10), s(5)), 1);
        assert_eq!(window_count(Duration::from_millis(1), Duration::from_millis(1)), 1);
        assert_eq!(window_count(Duration::from_nanos(333_333_333), s(1)), 4);
    }

    #[test]
    fn requests_fall_in_the_window_of_their_intended_time() {
        let (us, ms, s) = (Duration::from_micros, Duration::from_millis, Duration::from_secs);
        // Latencies under 2,048 µs, which the histograms hold exactly.
        // 25 s in windows of 10 s: [0, 10), [10, 20), [20, 25).
        let mut r = Recorder::with_windows(s(10), s(25));
        let ok = Outcome::Response(StatusCode::ACCEPTED);
        r.record(ok, us(200), ms(2), Duration::ZERO);
        r.record(ok, us(400), ms(10_003), ms(9_999));
        // Due in the first window, answered in the second: it counts in the first, whose
        // worst latency it is.
        r.record(ok, us(1_500), ms(11_000), ms(9_500));
        r.record(ok, us(100), s(10) + ms(1), s(10));
        r.record(Outcome::Response(StatusCode::SERVICE_UNAVAILABLE), us(300), s(12), s(12) - ms(3));
        // A drop is recorded when the scheduler sees it (`end`), but belongs to its due time.
        r.record(Outcome::Dropped, Duration::ZERO, s(21), s(19));
        r.record(Outcome::Timeout, s(5), s(29), s(24));
        r.record(Outcome::Transport, ms(1), ms(24_999), ms(24_998));
        // Past the span (the schedule never does this): clamped into the last window.
        r.record(ok, us(700), s(31), s(30));
        let report = r.finish(plan(9));
        assert_eq!(report.window_s, Some(10.0));
        let w = report.windows.as_ref().unwrap();
        assert_eq!(w.len(), 3);
        let starts: Vec<(f64, f64)> = w.iter().map(|w| (w.start_s, w.duration_s)).collect();
        assert_eq!(starts, [(0.0, 10.0), (10.0, 10.0), (20.0, 5.0)]);
        assert_eq!(w.iter().map(|w| w.requests).collect::<Vec<_>>(), [3, 3, 3]);
        assert_eq!(w.iter().map(|w| w.requests).sum::<u64>(), report.ok + report.error_count());
        assert_eq!(w.iter().map(|w| w.ok).collect::<Vec<_>>(), [3, 1, 1]);
        assert_eq!(w.iter().map(|w| w.ok + w.error_count()).collect::<Vec<_>>(), [3, 3, 3]);
        assert_eq!((w[0].latency_ms.p50, w[0].latency_ms.max), (0.4, 1.5));
        assert_eq!(w[0].error_count(), 0);
        assert_eq!((w[1].errors["503"], w[1].errors["dropped"]), (1, 1));
        assert_eq!((w[1].latency_ms.p50, w[1].latency_ms.max), (0.1, 0.3));
        assert_eq!((w[2].errors["timeout"], w[2].errors["transport"]), (1, 1));
        // Only responses have latencies: the timeout's 5 s is nowhere.
        assert_eq!(w[2].latency_ms.max, 0.7);
        assert_eq!(report.latency_ms.max, 1.5);
        let keys: Vec<&str> = w[0].errors.keys().map(String::as_str).collect();
        assert_eq!(keys, ["dropped", "timeout", "transport"]);
    }

    #[test]
    fn windows_nobody_answered_in_report_zeros() {
        let mut r = Recorder::with_windows(Duration::from_secs(1), Duration::from_secs(3));
        r.record(Outcome::Dropped, Duration::ZERO, Duration::from_millis(1500), Duration::from_millis(1200));
        let report = r.finish(plan(1));
        let w = report.windows.unwrap();
        assert_eq!(w.iter().map(|w| w.requests).collect::<Vec<_>>(), [0, 1, 0]);
        assert!(w.iter().all(|w| w.latency_ms == Latency::ZERO));
        let json = serde_json::to_value(&w[1]).unwrap();
        assert_eq!(json["errors"]["dropped"], 1);
        assert_eq!(json["latency_ms"]["p999"], 0.0);
    }
}
