//! Dispatch: a fixed pool of workers takes durable payments off the queue, asks the router
//! for a processor, journals the intent, sends, and reports the outcome to the ledger.
//! An unknown outcome pins the payment to that processor until it is resolved there.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::domain::UtcMillis;
use crate::ledger::{IntentError, LedgerHandle, Settled, Work};
use crate::processor::client::Lookup;
use crate::processor::router::Router;
use crate::processor::{Outcome, ProcessorIdx};

/// First retry delay after a failed attempt; doubles per attempt up to the cap.
pub const BACKOFF_BASE_MS: u64 = 20;
/// Longest wait between attempts for one payment.
pub const BACKOFF_CAP_MS: u64 = 1_000;

/// Starts `workers` dispatch workers over the queue; they stop when the queue closes.
pub fn spawn(workers: usize, queue: mpsc::UnboundedReceiver<Work>, router: Arc<Router>, ledger: LedgerHandle) -> Vec<JoinHandle<()>> {
    let queue = Arc::new(Mutex::new(queue));
    (0..workers)
        .map(|_| {
            let (queue, router, ledger) = (queue.clone(), router.clone(), ledger.clone());
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().await.recv().await;
                    let Some(work) = next else { return };
                    deliver(work, &router, &ledger).await;
                }
            })
        })
        .collect()
}

/// Exponential backoff with full jitter, so that retries of many payments spread out.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE_MS.saturating_mul(1 << attempt.min(16)).min(BACKOFF_CAP_MS);
    Duration::from_millis(ceiling / 2 + fastrand::u64(0..=ceiling / 2))
}

/// Takes one payment to a final outcome on exactly one processor.
async fn deliver(mut work: Work, router: &Router, ledger: &LedgerHandle) {
    let mut attempt = 0u32;
    loop {
        if let Some((processor, requested_at)) = work.pinned {
            if !ledger.is_current(work).await {
                return;
            }
            if resolve(work, processor, requested_at, router, ledger).await {
                return;
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        let processor = router.wait_route(work.accepted_at).await;
        let requested_at = UtcMillis::now();
        match ledger.intent(work, processor, requested_at).await {
            Ok(()) => {}
            Err(IntentError::Stale) => {
                router.abandon(processor);
                return;
            }
            Err(IntentError::Unavailable) => {
                router.abandon(processor);
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        }
        let outcome = router.upstream(processor).client.pay(work.id, work.cents, requested_at).await;
        router.report(processor, outcome);
        match outcome {
            Outcome::Recorded => {
                ledger.settle(work, processor, Settled::Processed { requested_at }).await;
                return;
            }
            Outcome::Duplicate => {
                // Recorded by an earlier attempt we did not hear back from: count it at the
                // requestedAt the processor holds.
                let recorded_at = match router.upstream(processor).client.lookup(work.id).await {
                    Lookup::Found { requested_at } => requested_at,
                    _ => requested_at,
                };
                ledger.settle(work, processor, Settled::Processed { requested_at: recorded_at }).await;
                return;
            }
            Outcome::NotRecorded => {
                ledger.settle(work, processor, Settled::Rejected).await;
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            Outcome::Unknown => {
                tracing::debug!(id = %work.id, processor = %router.upstream(processor).name, "outcome unknown; resolving on the same processor");
                work.pinned = Some((processor, requested_at));
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// One attempt to learn the fate of a payment whose outcome on `processor` is unknown: ask the
/// processor what it holds, and if nothing yet, re-send the identical request. Any 200 or 422
/// means it is recorded there. A 500 only says that the re-send was not recorded; an earlier
/// request may still be in flight, so the payment stays pinned. Returns true once settled.
async fn resolve(work: Work, processor: ProcessorIdx, requested_at: UtcMillis, router: &Router, ledger: &LedgerHandle) -> bool {
    let client = &router.upstream(processor).client;
    let recorded_at = match client.lookup(work.id).await {
        Lookup::Found { requested_at: at } => Some(at),
        Lookup::NotFound | Lookup::Unavailable => {
            let outcome = client.pay(work.id, work.cents, requested_at).await;
            router.report(processor, outcome);
            match outcome {
                Outcome::Recorded => Some(requested_at),
                Outcome::Duplicate => match client.lookup(work.id).await {
                    Lookup::Found { requested_at: at } => Some(at),
                    _ => Some(requested_at),
                },
                Outcome::NotRecorded | Outcome::Unknown => None,
            }
        }
    };
    match recorded_at {
        Some(at) => {
            ledger.settle(work, processor, Settled::Processed { requested_at: at }).await;
            true
        }
        None => false,
    }
}
