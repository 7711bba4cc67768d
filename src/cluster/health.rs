//! One health caller per processor for the whole cluster: whoever moves a processor's
//! `checked_at` forward (an atomic claim, by the database's clock, at most once per interval)
//! calls its health endpoint and publishes the answer; every instance reads the published
//! answers and feeds its router.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Inner;
use super::db::{Db, timed};
use crate::processor::ProcessorIdx;
use crate::processor::client::Health;
use crate::processor::health::HEALTH_MARGIN_MS;
use crate::processor::router::Router;

/// How often every instance reads the published health.
pub const READ_EVERY_MS: u64 = 1_000;
/// A claim older than this by the time the call would start (the process was paused, the
/// database slow) is given up: another instance may claim and call meanwhile.
pub const CLAIM_FRESH_MS: u64 = 100;

pub async fn run(inner: Arc<Inner>, db: Arc<Db>, router: Arc<Router>) {
    // Claims are the interval plus margins apart by the database's clock; a call goes out at
    // most CLAIM_FRESH_MS after its claim, so two calls are never closer than the interval.
    let interval_ms = (inner.config.health_interval.as_millis() as u64 + 3 * HEALTH_MARGIN_MS) as i64;
    let mut seen: Vec<Option<i64>> = vec![None; inner.names.len()];
    loop {
        tokio::time::sleep(Duration::from_millis(READ_EVERY_MS)).await;
        let Ok(s) = db.session().await else { continue };
        let rows = match timed(s.client.query(&s.st.health_read, &[&interval_ms, &inner.names])).await {
            Ok(rows) => rows,
            Err(e) => {
                if e.needs_new_session(&s) {
                    db.reset(&s).await;
                }
                continue;
            }
        };
        for row in rows {
            let name: String = row.get(0);
            let Some(idx) = inner.names.iter().position(|n| *n == name) else { continue };
            let (failing, min_ms, reported, due): (Option<bool>, Option<i64>, Option<i64>, bool) =
                (row.get(1), row.get(2), row.get(3), row.get(4));
            if let (Some(failing), Some(min_ms), Some(at)) = (failing, min_ms, reported)
                && seen[idx] != Some(at)
            {
                seen[idx] = Some(at);
                router.health_report(idx as ProcessorIdx, failing, min_ms.max(0) as u64);
            }
            if !due {
                continue;
            }
            let claimed_at = Instant::now();
            let claim = timed(s.client.query(&s.st.health_claim, &[&name, &inner.instance, &interval_ms])).await;
            if !claim.is_ok_and(|r| !r.is_empty()) || claimed_at.elapsed() > Duration::from_millis(CLAIM_FRESH_MS) {
                continue;
            }
            let health = router.upstream(idx as ProcessorIdx).client.health().await;
            let (failing, min_ms, later_ms): (Option<bool>, Option<i64>, i64) = match health {
                Health::Report { failing, min_response_ms } => {
                    router.health_report(idx as ProcessorIdx, failing, min_response_ms);
                    (Some(failing), Some(min_response_ms.min(i64::MAX as u64) as i64), 0)
                }
                // Nobody asks again before the processor's Retry-After has passed.
                Health::RateLimited { retry_after_s } => {
                    tracing::debug!(processor = %name, retry_after_s, "health endpoint rate-limited us");
                    (None, None, (retry_after_s as i64 * 1000 - interval_ms).max(0))
                }
                Health::Unavailable => (None, None, 0),
            };
            let _ = timed(s.client.execute(&s.st.health_report, &[&name, &inner.instance, &failing, &min_ms, &later_ms])).await;
        }
    }
}
