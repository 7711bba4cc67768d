//! Resolvers: one per processor, each the only owner of the payments whose outcome there is
//! unknown (SPEC §3.3). A resolver holds them in a timer queue, works on at most
//! [`RESOLVE_CONCURRENCY`] at a time, and never borrows a dispatch worker, so a processor
//! that hangs delays only the payments pinned to it. Their number is the upstream's `pinned`
//! count, shown by `/health`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{Shared, backoff};
use crate::ledger::{Settled, Work};
use crate::processor::breaker::Permit;
use crate::processor::{Outcome, ProcessorIdx};

/// Resolution attempts in flight per processor (each is a lookup and perhaps a re-send).
pub const RESOLVE_CONCURRENCY: usize = 16;

/// The way into the resolvers.
pub struct Resolvers {
    txs: Vec<mpsc::UnboundedSender<(Work, Duration)>>,
}

impl Resolvers {
    /// Hands over a payment pinned to a processor, to be looked at after `delay`.
    pub fn pin(&self, work: Work, delay: Duration) {
        let (processor, _) = work.pinned.expect("only pinned work is resolved");
        let _ = self.txs[usize::from(processor)].send((work, delay));
    }
}

pub fn spawn(shared: Arc<Shared>) -> (Resolvers, Vec<JoinHandle<()>>) {
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    for idx in 0..shared.router.upstreams().len() {
        let (tx, rx) = mpsc::unbounded_channel();
        txs.push(tx);
        handles.push(tokio::spawn(run(shared.clone(), idx as ProcessorIdx, rx)));
    }
    (Resolvers { txs }, handles)
}

/// A payment waiting for its next attempt; ordered by due time, then arrival.
struct Due {
    at: Instant,
    seq: u64,
    work: Work,
    attempt: u32,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

enum Attempt {
    /// Settled, or no longer this item's to settle.
    Ended,
    Retry(Work, u32),
}

async fn run(s: Arc<Shared>, idx: ProcessorIdx, mut rx: mpsc::UnboundedReceiver<(Work, Duration)>) {
    let pinned = &s.router.upstream(idx).pinned;
    let mut waiting: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut running: JoinSet<Attempt> = JoinSet::new();
    let mut seq = 0u64;
    loop {
        let next = (running.len() < RESOLVE_CONCURRENCY).then(|| waiting.peek().map(|Reverse(d)| d.at)).flatten();
        tokio::select! {
            msg = rx.recv() => {
                let Some((work, delay)) = msg else { return };
                pinned.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                waiting.push(Reverse(Due { at: Instant::now() + delay, seq, work, attempt: 0 }));
            }
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(Attempt::Retry(work, attempt)) => {
                    seq += 1;
                    waiting.push(Reverse(Due { at: Instant::now() + backoff(attempt), seq, work, attempt }));
                }
                Ok(Attempt::Ended) | Err(_) => {
                    pinned.fetch_sub(1, Ordering::Relaxed);
                    s.queue.ended();
                }
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let Reverse(due) = waiting.pop().expect("peeked");
                running.spawn(attempt(s.clone(), idx, due.work, due.attempt));
            }
        }
    }
}

/// One attempt to learn the fate of a payment whose outcome on `idx` is unknown: ask the
/// processor what it holds, and if nothing yet, re-send the identical request. A 200 or 422
/// means it is recorded there. Anything else leaves it pinned: an earlier request may still
/// be in flight, and only the processor's own answer proves it will never record it.
async fn attempt(s: Arc<Shared>, idx: ProcessorIdx, work: Work, attempt: u32) -> Attempt {
    let _gate = s.sends.0.read().await;
    if !s.ledger.is_current(work).await {
        return Attempt::Ended;
    }
    let (_, requested_at) = work.pinned.expect("pinned");
    let client = &s.router.upstream(idx).client;
    let recorded_at = match client.recorded_at(work.id).await {
        Some(at) => Some(at),
        None => {
            let outcome = s.pay(idx, work, requested_at).await;
            s.router.report(idx, Permit::UNADMITTED, outcome);
            match outcome {
                Outcome::Recorded => Some(requested_at),
                Outcome::Duplicate => client.recorded_at(work.id).await,
                Outcome::NotRecorded | Outcome::Unknown => None,
            }
        }
    };
    match recorded_at {
        Some(at) => {
            s.ledger.settle(work, Settled::Processed { requested_at: at }).await;
            Attempt::Ended
        }
        None => Attempt::Retry(work, attempt + 1),
    }
}
