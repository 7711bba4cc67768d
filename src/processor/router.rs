//! Routing: the cheapest processor whose breaker admits a request. A payment waits for a
//! cheaper processor that is failing until `max_defer` after its acceptance, and only then
//! may go to the next one (SPEC §3.4).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::breaker::{Admit, Breaker, OPEN_COOLDOWN_MS, Permit, Phase};
use super::client::ProcessorClient;
use super::{Outcome, ProcessorIdx};
use crate::domain::UtcMillis;

/// One configured processor and what we know of its health.
pub struct Upstream {
    pub name: String,
    pub client: ProcessorClient,
    breaker: Mutex<Breaker>,
    /// The last `minResponseTime` its health endpoint reported, in ms.
    pub min_response_ms: AtomicU64,
    /// Payments whose outcome here is unknown, held by the resolver until it learns it.
    pub pinned: AtomicUsize,
}

pub struct Router {
    upstreams: Vec<Upstream>,
    max_defer: Duration,
    /// Woken whenever a breaker changes state, so deferred payments move at once.
    changed: Notify,
}

/// The router's answer for one payment now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Go(ProcessorIdx, Permit),
    /// Nothing admits the payment yet; ask again at this instant or on a change.
    Wait(Instant),
}

impl Router {
    /// `probe_timeout`: how long a probe may stay out before it counts as failed (longer than
    /// the upstream timeout).
    pub fn new(upstreams: Vec<(String, ProcessorClient)>, max_defer: Duration, probe_timeout: Duration) -> Router {
        assert!(!upstreams.is_empty() && upstreams.len() <= usize::from(ProcessorIdx::MAX));
        let upstreams = upstreams
            .into_iter()
            .map(|(name, client)| Upstream {
                name,
                client,
                breaker: Mutex::new(Breaker::new(probe_timeout)),
                min_response_ms: AtomicU64::new(0),
                pinned: AtomicUsize::new(0),
            })
            .collect();
        Router { upstreams, max_defer, changed: Notify::new() }
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    pub fn upstream(&self, idx: ProcessorIdx) -> &Upstream {
        &self.upstreams[usize::from(idx)]
    }

    fn breaker(&self, idx: ProcessorIdx) -> std::sync::MutexGuard<'_, Breaker> {
        self.upstream(idx).breaker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Within its defer a payment waits for the cheapest processor. Past it, the payment goes
    /// to the cheapest processor whose breaker is closed, and only when none is closed to the
    /// cheapest that admits a probe: otherwise a processor that rejects every payment while its
    /// health endpoint says healthy would hand its probe slot back to the same lone payment on
    /// every retry, and that payment would never reach the processor that works.
    fn route(&self, accepted_at: UtcMillis) -> Route {
        let now = Instant::now();
        let defer_left_ms = accepted_at.0 + self.max_defer.as_millis() as i64 - UtcMillis::now().0;
        if defer_left_ms > 0 {
            return match self.breaker(0).admit(now) {
                Admit::Yes(permit) => Route::Go(0, permit),
                Admit::NotBefore(t) => Route::Wait(t.min(now + Duration::from_millis(defer_left_ms as u64))),
            };
        }
        let all = 0..self.upstreams.len() as ProcessorIdx;
        if let Some((idx, permit)) = all.clone().find_map(|idx| self.breaker(idx).admit_closed().map(|p| (idx, p))) {
            return Route::Go(idx, permit);
        }
        let mut wake: Option<Instant> = None;
        for idx in all {
            match self.breaker(idx).admit(now) {
                Admit::Yes(permit) => return Route::Go(idx, permit),
                Admit::NotBefore(t) => wake = Some(wake.map_or(t, |w| w.min(t))),
            }
        }
        // `Router::new` asserts at least one processor, and each that does not admit names a time.
        Route::Wait(wake.expect("a router has processors"))
    }

    /// Waits until some processor admits a payment accepted at `accepted_at`. The permit must
    /// end in exactly one of [`Router::report`] or [`Router::abandon`].
    pub async fn wait_route(&self, accepted_at: UtcMillis) -> (ProcessorIdx, Permit) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.route(accepted_at) {
                Route::Go(idx, permit) => return (idx, permit),
                Route::Wait(t) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
            }
        }
    }

    /// Feeds the outcome of a request to the processor's breaker; `permit` is the one
    /// [`Router::wait_route`] gave, or [`Permit::UNADMITTED`] for a re-send.
    pub fn report(&self, idx: ProcessorIdx, permit: Permit, outcome: Outcome) {
        let mut b = self.breaker(idx);
        let was_closed = b.is_closed();
        let changed = match outcome {
            Outcome::Recorded | Outcome::Duplicate => b.success(permit),
            Outcome::NotRecorded | Outcome::Unknown => b.failure(permit, Instant::now()),
        };
        let closed = b.is_closed();
        drop(b);
        if changed {
            // Opening and closing matter to operators; each failed probe in between does not.
            if was_closed != closed {
                let state = if closed { "closed: sending again" } else { "open: payments wait or go elsewhere" };
                tracing::info!(processor = %self.upstream(idx).name, ?outcome, "processor breaker {state}");
            } else {
                tracing::debug!(processor = %self.upstream(idx).name, ?outcome, "probe failed; breaker stays open");
            }
            self.changed.notify_waiters();
        }
    }

    /// A request admitted by [`Router::wait_route`] was never sent; frees its probe slot.
    pub fn abandon(&self, idx: ProcessorIdx, permit: Permit) {
        if self.breaker(idx).abandon(permit) {
            self.changed.notify_waiters();
        }
    }

    /// Feeds a health-endpoint report.
    pub fn health_report(&self, idx: ProcessorIdx, failing: bool, min_response_ms: u64) {
        let u = self.upstream(idx);
        u.min_response_ms.store(min_response_ms, Ordering::Relaxed);
        let mut b = self.breaker(idx);
        let changed = if failing { b.health_failing(Instant::now()) } else { b.health_ok() };
        drop(b);
        if changed {
            tracing::info!(processor = %u.name, failing, min_response_ms, "processor health changed");
            self.changed.notify_waiters();
        }
    }

    /// Whether the processor's breaker is closed (requests flow freely).
    pub fn is_healthy(&self, idx: ProcessorIdx) -> bool {
        self.breaker(idx).is_closed()
    }

    /// The breaker's state, for `/health` and logs.
    pub fn phase(&self, idx: ProcessorIdx) -> Phase {
        self.breaker(idx).phase()
    }

    /// The prober of one processor: while its breaker is open, once per cool-down, asks the
    /// processor for a payment that does not exist (`GET /payments/{nil id}`), which records
    /// nothing. Any answer lets one real payment probe; no answer keeps the breaker open, so a
    /// processor that hangs gets no new payment pinned to it.
    pub async fn probe_forever(&self, idx: ProcessorIdx) {
        let probe_id = crate::domain::CorrelationId(0);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.breaker(idx).start_check(Instant::now());
            match next {
                Some(t) if t <= Instant::now() => {
                    let answered = !matches!(self.upstream(idx).client.lookup(probe_id).await, super::client::Lookup::Unavailable);
                    let mut b = self.breaker(idx);
                    let changed = answered && b.check_ok();
                    if !answered {
                        b.check_failed(Instant::now());
                    }
                    drop(b);
                    if changed {
                        tracing::debug!(processor = %self.upstream(idx).name, "processor answers a check; one payment may probe");
                        self.changed.notify_waiters();
                    }
                }
                // A probe that expires changes the state without a notification: look again
                // at least once per cool-down.
                later => {
                    let t = later.unwrap_or_else(|| Instant::now() + Duration::from_millis(OPEN_COOLDOWN_MS));
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::breaker::FAILURES_TO_OPEN;

    const MAX_DEFER_MS: i64 = 10_000;

    fn router() -> Router {
        let client = || ProcessorClient::new("http://127.0.0.1:9", Duration::from_millis(100));
        let upstreams = vec![("default".to_string(), client()), ("fallback".to_string(), client())];
        Router::new(upstreams, Duration::from_millis(MAX_DEFER_MS as u64), Duration::from_secs(1))
    }

    fn fail(r: &Router, idx: ProcessorIdx) {
        for _ in 0..FAILURES_TO_OPEN {
            r.report(idx, Permit::UNADMITTED, Outcome::NotRecorded);
        }
    }

    #[test]
    fn past_its_defer_a_payment_takes_a_closed_processor_before_a_cheaper_ones_probe() {
        let r = router();
        // `default` rejects payments while its health endpoint says healthy: half-open, its
        // probe slot free.
        fail(&r, 0);
        r.health_report(0, false, 0);
        assert_eq!(r.phase(0), Phase::HalfOpen);
        let new = UtcMillis::now();
        let overdue = UtcMillis(new.0 - 2 * MAX_DEFER_MS);
        // Past its defer: the closed `fallback`, leaving the probe slot alone.
        assert!(matches!(r.route(overdue), Route::Go(1, _)));
        // Within its defer: the probe of `default`, once.
        assert!(matches!(r.route(new), Route::Go(0, p) if p != Permit::UNADMITTED));
        assert!(matches!(r.route(new), Route::Wait(_)));
        // With nothing closed, a payment past its defer waits for the probe's outcome.
        fail(&r, 1);
        assert!(matches!(r.route(overdue), Route::Wait(_)));
        // Then, `fallback` half-open too: the cheapest probe slot that is free.
        r.health_report(1, false, 0);
        assert!(matches!(r.route(overdue), Route::Go(1, p) if p != Permit::UNADMITTED));
    }
}
