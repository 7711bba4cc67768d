//! Routing: the cheapest processor whose breaker admits a request. A payment waits for a
//! cheaper processor that is failing until `max_defer` after its acceptance, and only then
//! may go to the next one (SPEC §3.4).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::breaker::{Admit, Breaker};
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
    Go(ProcessorIdx),
    /// Nothing admits the payment yet; ask again at this instant or on a change.
    Wait(Option<Instant>),
}

impl Router {
    pub fn new(upstreams: Vec<(String, ProcessorClient)>, max_defer: Duration) -> Router {
        assert!(!upstreams.is_empty() && upstreams.len() <= usize::from(ProcessorIdx::MAX));
        let upstreams = upstreams
            .into_iter()
            .map(|(name, client)| Upstream { name, client, breaker: Mutex::default(), min_response_ms: AtomicU64::new(0) })
            .collect();
        Router { upstreams, max_defer, changed: Notify::new() }
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    pub fn upstream(&self, idx: ProcessorIdx) -> &Upstream {
        &self.upstreams[usize::from(idx)]
    }

    fn route(&self, accepted_at: UtcMillis) -> Route {
        let now = Instant::now();
        let defer_left_ms = accepted_at.0 + self.max_defer.as_millis() as i64 - UtcMillis::now().0;
        let mut wake: Option<Instant> = None;
        let mut earliest = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        for (idx, u) in self.upstreams.iter().enumerate() {
            match u.breaker.lock().expect("breaker lock").admit(now) {
                Admit::Yes => return Route::Go(idx as ProcessorIdx),
                Admit::NotBefore(t) => earliest(t),
                Admit::ProbeInFlight => {}
            }
            if defer_left_ms > 0 {
                earliest(now + Duration::from_millis(defer_left_ms as u64));
                break;
            }
        }
        Route::Wait(wake)
    }

    /// Waits until some processor admits a payment accepted at `accepted_at`.
    pub async fn wait_route(&self, accepted_at: UtcMillis) -> ProcessorIdx {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.route(accepted_at) {
                Route::Go(idx) => return idx,
                Route::Wait(Some(t)) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                Route::Wait(None) => notified.await,
            }
        }
    }

    /// Feeds the outcome of a real request to the processor's breaker.
    pub fn report(&self, idx: ProcessorIdx, outcome: Outcome) {
        let mut b = self.upstream(idx).breaker.lock().expect("breaker lock");
        let was_closed = b.is_closed();
        let changed = match outcome {
            Outcome::Recorded | Outcome::Duplicate => b.success(),
            Outcome::NotRecorded | Outcome::Unknown => b.failure(Instant::now()),
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

    /// A request admitted by [`Router::wait_route`] was never sent; free a probe slot.
    pub fn abandon(&self, idx: ProcessorIdx) {
        let mut b = self.upstream(idx).breaker.lock().expect("breaker lock");
        if !b.is_closed() {
            b.health_ok();
            // A half-open breaker whose probe was abandoned may probe again.
            drop(b);
            self.changed.notify_waiters();
        }
    }

    /// Feeds a health-endpoint report.
    pub fn health_report(&self, idx: ProcessorIdx, failing: bool, min_response_ms: u64) {
        let u = self.upstream(idx);
        u.min_response_ms.store(min_response_ms, Ordering::Relaxed);
        let mut b = u.breaker.lock().expect("breaker lock");
        let changed = if failing { b.health_failing(Instant::now()) } else { b.health_ok() };
        drop(b);
        if changed {
            tracing::info!(processor = %u.name, failing, min_response_ms, "processor health changed");
            self.changed.notify_waiters();
        }
    }

    /// Whether the processor's breaker is closed (requests flow freely).
    pub fn is_healthy(&self, idx: ProcessorIdx) -> bool {
        self.upstream(idx).breaker.lock().expect("breaker lock").is_closed()
    }
}
