//! The health monitor: asks each processor's health endpoint no more than once per interval
//! (the processors allow one call per 5 s), honours `Retry-After` on a 429, and feeds the
//! router. A 429 or an unreachable endpoint is "no news", never a failure.

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
    let interval = interval + Duration::from_millis(HEALTH_MARGIN_MS);
    loop {
        let started = Instant::now();
        let mut next = started + interval;
        match router.upstream(idx).client.health().await {
            Health::Report { failing, min_response_ms } => router.health_report(idx, failing, min_response_ms),
            Health::RateLimited { retry_after_s } => {
                tracing::debug!(processor = %router.upstream(idx).name, retry_after_s, "health endpoint rate-limited us");
                next = next.max(Instant::now() + Duration::from_secs(retry_after_s) + Duration::from_millis(HEALTH_MARGIN_MS));
            }
            Health::Unavailable => {}
        }
        tokio::time::sleep_until(next).await;
    }
}
