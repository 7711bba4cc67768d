//! The health monitor: asks each processor's health endpoint no more than once per interval
//! (the processors allow one call per 5 s), honours `Retry-After` on a 429, and feeds the
//! router. A 429 or an unreachable endpoint is "no news", never a failure.
//!
//! Everything a processor sends is untrusted: its `Retry-After` is clamped before it reaches
//! any clock arithmetic, and that arithmetic saturates, because one overflow panic aborts the
//! whole gateway (release builds use `panic = "abort"`).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ProcessorIdx;
use super::client::Health;
use super::router::Router;

/// The processors' own limit is one call per 5 s; this margin absorbs clock and scheduling
/// jitter so that our calls never land inside their window.
pub const HEALTH_MARGIN_MS: u64 = 100;
/// The longest `Retry-After` we honour. A processor asking for more is wrong or hostile; we
/// would rather ask again (and be refused again) than go blind on its health for hours.
pub const MAX_RETRY_AFTER_S: u64 = 60;
/// The wait assumed when a 429 carries no usable `Retry-After` (absent, negative, not a
/// number, or an HTTP date, which needs a trustworthy clock shared with the processor): the
/// processors' documented window.
pub const DEFAULT_RETRY_AFTER_S: u64 = 5;
/// Stand-in for "never" when a deadline would overflow the clock: far beyond any process's
/// life, yet small enough that adding it to now cannot overflow.
const FAR_FUTURE_S: u64 = 100 * 365 * 24 * 60 * 60;

/// The wait, in seconds, that a 429's `Retry-After` value asks for: non-negative integer
/// seconds, clamped to [`MAX_RETRY_AFTER_S`]; [`DEFAULT_RETRY_AFTER_S`] when the header is
/// absent or holds anything else.
pub fn retry_after_s(value: Option<&[u8]>) -> u64 {
    let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()).map(str::trim) else {
        return DEFAULT_RETRY_AFTER_S;
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return DEFAULT_RETRY_AFTER_S;
    }
    // All digits: the only way to fail parsing is a number past u64, which is "too long" too.
    text.parse::<u64>().unwrap_or(u64::MAX).min(MAX_RETRY_AFTER_S)
}

/// `at + d`, or a far-future instant where that would overflow the clock.
fn saturating_after(at: Instant, d: Duration) -> Instant {
    // The last `unwrap_or` is unreachable on any real clock; it only keeps this total.
    at.checked_add(d).or_else(|| at.checked_add(Duration::from_secs(FAR_FUTURE_S))).unwrap_or(at)
}

/// When to ask next: one interval (plus margin) after `started`, and no sooner than the
/// `Retry-After` of a 429 (plus margin) counted from `answered`.
fn next_ask(started: Instant, answered: Instant, interval: Duration, health: &Health) -> Instant {
    let margin = Duration::from_millis(HEALTH_MARGIN_MS);
    let next = saturating_after(started, interval.saturating_add(margin));
    match *health {
        Health::RateLimited { retry_after_s } => {
            let wait = Duration::from_secs(retry_after_s.min(MAX_RETRY_AFTER_S)).saturating_add(margin);
            next.max(saturating_after(answered, wait))
        }
        Health::Report { .. } | Health::Unavailable => next,
    }
}

/// Starts one monitor task per processor; abort the handles to stop them.
pub fn spawn(router: Arc<Router>, interval: Duration) -> Vec<JoinHandle<()>> {
    (0..router.upstreams().len())
        .map(|idx| {
            let router = router.clone();
            tokio::spawn(async move { monitor(router, idx as ProcessorIdx, interval).await })
        })
        .collect()
}

async fn monitor(router: Arc<Router>, idx: ProcessorIdx, interval: Duration) {
    loop {
        let started = Instant::now();
        let health = router.upstream(idx).client.health().await;
        match health {
            Health::Report { failing, min_response_ms } => router.health_report(idx, failing, min_response_ms),
            Health::RateLimited { retry_after_s } => {
                tracing::debug!(processor = %router.upstream(idx).name, retry_after_s, "health endpoint rate-limited us");
            }
            Health::Unavailable => {}
        }
        tokio::time::sleep_until(next_ask(started, Instant::now(), interval, &health)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_clamped_whole_seconds_with_a_default_for_anything_else() {
        let cases: [(Option<&[u8]>, u64); 14] = [
            (Some(b"7"), 7),
            (Some(b" 7 "), 7),
            (Some(b"0"), 0),
            (Some(b"60"), 60),
            (Some(b"61"), MAX_RETRY_AFTER_S),
            (Some(b"18446744073709551615"), MAX_RETRY_AFTER_S),
            (Some(b"99999999999999999999999999"), MAX_RETRY_AFTER_S),
            (Some(b"-5"), DEFAULT_RETRY_AFTER_S),
            (Some(b"+5"), DEFAULT_RETRY_AFTER_S),
            (Some(b"1.5"), DEFAULT_RETRY_AFTER_S),
            (Some(b"soon"), DEFAULT_RETRY_AFTER_S),
            (Some(b"Wed, 21 Oct 2015 07:28:00 GMT"), DEFAULT_RETRY_AFTER_S),
            (Some(b""), DEFAULT_RETRY_AFTER_S),
            (None, DEFAULT_RETRY_AFTER_S),
        ];
        for (value, want) in cases {
            assert_eq!(retry_after_s(value), want, "{:?}", value.map(String::from_utf8_lossy));
        }
        assert_eq!(retry_after_s(Some(b"\xff\xfe")), DEFAULT_RETRY_AFTER_S);
    }

    #[test]
    fn next_ask_honours_retry_after_and_never_overflows() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(5_000);
        let margin = Duration::from_millis(HEALTH_MARGIN_MS);
        let report = Health::Report { failing: false, min_response_ms: u64::MAX };
        assert_eq!(next_ask(t0, t0, interval, &report), t0 + interval + margin);
        assert_eq!(next_ask(t0, t0, interval, &Health::Unavailable), t0 + interval + margin);
        let short = Health::RateLimited { retry_after_s: 1 };
        assert_eq!(next_ask(t0, t0, interval, &short), t0 + interval + margin);
        let long = Health::RateLimited { retry_after_s: 30 };
        assert_eq!(next_ask(t0, t0, interval, &long), t0 + Duration::from_secs(30) + margin);
        // A value that bypassed `retry_after_s` is still clamped here.
        let huge = Health::RateLimited { retry_after_s: u64::MAX };
        assert_eq!(next_ask(t0, t0, interval, &huge), t0 + Duration::from_secs(MAX_RETRY_AFTER_S) + margin);
        // An absurd interval saturates instead of panicking.
        assert!(next_ask(t0, t0, Duration::MAX, &huge) > t0 + Duration::from_secs(MAX_RETRY_AFTER_S));
    }
}
