//! Dispatch: a fixed pool of workers takes durable payments off the queue, asks the router
//! for a processor, journals the intent, sends, and reports the outcome to the ledger. A
//! payment whose outcome is unknown goes to its processor's [`resolver`] and the worker moves
//! on: a processor that hangs holds only the payments pinned to it, never the workers.
//!
//! Every send happens under the [`SendGate`]'s read side, from before its intent until its
//! outcome is settled, so that a purge (which takes the write side) answers only once no
//! request of the purged books is on the wire.

pub mod resolver;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, RwLock, RwLockWriteGuard};
use tokio::task::JoinHandle;

use crate::books::Books;
use crate::domain::UtcMillis;
pub use crate::ledger::queue::{WorkQueue, WorkReceiver};
use crate::ledger::{IntentError, Settled, Work};
use crate::metrics::Metrics;
use crate::processor::breaker::Permit;
use crate::processor::router::Router;
use crate::processor::{Outcome, ProcessorIdx};

/// First retry delay after a failed attempt; doubles per attempt up to the cap.
pub const BACKOFF_BASE_MS: u64 = 20;
/// Longest wait between attempts for one payment.
pub const BACKOFF_CAP_MS: u64 = 1_000;

/// Held (read side) by every send from its intent to its settled outcome; a purge takes the
/// write side, which waits for those sends to end and holds new ones back.
#[derive(Default)]
pub struct SendGate(RwLock<()>);

impl SendGate {
    /// Waits until no request is on the wire and keeps new ones from starting.
    pub async fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().await
    }
}

/// What workers and resolvers share.
pub struct Shared {
    pub router: Arc<Router>,
    pub ledger: Books,
    pub sends: Arc<SendGate>,
    pub queue: WorkQueue,
    pub metrics: Option<Arc<Metrics>>,
}

impl Shared {
    /// `POST /payments` to `processor`, timed by outcome.
    async fn pay(&self, processor: ProcessorIdx, work: Work, requested_at: UtcMillis) -> Outcome {
        let started = std::time::Instant::now();
        let outcome = self.router.upstream(processor).client.pay(work.id, work.cents, requested_at).await;
        if let Some(m) = &self.metrics {
            m.upstream(usize::from(processor), outcome, started.elapsed());
        }
        outcome
    }
}

/// Starts `workers` dispatch workers and one resolver per processor; they stop when the queue
/// closes or their handles are aborted.
pub fn spawn(workers: usize, queue: WorkReceiver, shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    let (resolvers, mut handles) = resolver::spawn(shared.clone());
    let resolvers = Arc::new(resolvers);
    let queue = Arc::new(Mutex::new(queue.into_inner()));
    handles.extend((0..workers).map(|_| {
        let (queue, shared, resolvers) = (queue.clone(), shared.clone(), resolvers.clone());
        tokio::spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some(work) = next else { return };
                match work.pinned {
                    Some(_) if !work.fresh => resolvers.pin(work, Duration::ZERO),
                    _ => {
                        if !forward(work, &shared, &resolvers).await {
                            shared.queue.ended();
                        }
                    }
                }
            }
        })
    }));
    handles
}

/// Exponential backoff with full jitter, so that retries of many payments spread out.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE_MS.saturating_mul(1 << attempt.min(16)).min(BACKOFF_CAP_MS);
    Duration::from_millis(ceiling / 2 + fastrand::u64(0..=ceiling / 2))
}

/// Takes one pending payment to a processor; returns true when it handed the payment to a
/// resolver (the item lives on there), false when the item has ended.
async fn forward(mut work: Work, s: &Shared, resolvers: &resolver::Resolvers) -> bool {
    let mut attempt = 0u32;
    loop {
        let (processor, permit, requested_at, gate) = match (work.fresh, work.pinned) {
            // Routed at acceptance: the intent is durable; send unless a purge came since.
            (true, Some((processor, requested_at))) => {
                work.fresh = false;
                let gate = s.sends.0.read().await;
                if s.ledger.generation() != work.generation {
                    return false;
                }
                (processor, Permit::UNADMITTED, requested_at, gate)
            }
            _ => {
                let (processor, permit) = tokio::select! {
                    r = s.router.wait_route(work.accepted_at) => r,
                    _ = s.ledger.purged_since(work.generation) => return false,
                };
                let gate = s.sends.0.read().await;
                let requested_at = UtcMillis::now();
                match s.ledger.intent(work, processor, requested_at).await {
                    Ok(()) => {}
                    Err(IntentError::Stale) => {
                        s.router.abandon(processor, permit);
                        return false;
                    }
                    Err(IntentError::Unavailable) => {
                        s.router.abandon(processor, permit);
                        drop(gate);
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                }
                (processor, permit, requested_at, gate)
            }
        };
        work.pinned = Some((processor, requested_at));
        let client = &s.router.upstream(processor).client;
        let outcome = s.pay(processor, work, requested_at).await;
        s.router.report(processor, permit, outcome);
        match outcome {
            Outcome::Recorded => {
                s.ledger.settle(work, Settled::Processed { requested_at }).await;
                return false;
            }
            // Recorded by an earlier request: count it at the requestedAt the processor holds,
            // which only its record tells.
            Outcome::Duplicate => match client.recorded_at(work.id).await {
                Some(requested_at) => {
                    s.ledger.settle(work, Settled::Processed { requested_at }).await;
                    return false;
                }
                None => {
                    drop(gate);
                    resolvers.pin(work, backoff(1));
                    return true;
                }
            },
            Outcome::NotRecorded => {
                s.ledger.settle(work, Settled::Rejected).await;
                work.pinned = None;
                drop(gate);
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Outcome::Unknown => {
                tracing::debug!(id = %work.id, processor = %s.router.upstream(processor).name, "outcome unknown; resolving on the same processor");
                drop(gate);
                resolvers.pin(work, backoff(1));
                return true;
            }
        }
    }
}
