//! The queue between the ledger and dispatch. The ledger owns it (it makes every work item);
//! dispatch only takes from it, so the modules' imports run one way: dispatch → ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::Work;
use crate::metrics::Metrics;

/// The way into dispatch: every work item made anywhere goes through [`WorkQueue::push`],
/// which counts it until it ends, so `/health` can show that nothing piles up.
#[derive(Clone)]
pub struct WorkQueue {
    tx: mpsc::UnboundedSender<Work>,
    live: Arc<AtomicUsize>,
    metrics: Option<Arc<Metrics>>,
}

/// The workers' end of the queue.
pub struct WorkReceiver(mpsc::UnboundedReceiver<Work>);

impl WorkQueue {
    pub fn new(metrics: Option<Arc<Metrics>>) -> (WorkQueue, WorkReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (WorkQueue { tx, live: Arc::default(), metrics }, WorkReceiver(rx))
    }

    /// Hands over a payment whose acceptance just became durable.
    pub fn push_accepted(&self, work: Work) {
        if let Some(m) = &self.metrics {
            m.accepted.inc();
        }
        self.push(work);
    }

    pub fn push(&self, work: Work) {
        self.live.fetch_add(1, Ordering::Relaxed);
        // The receiver closes only at shutdown; the journal brings the payment back on restart.
        if self.tx.send(work).is_err() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Work items queued, being forwarded, or being resolved.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A work item ended (its payment settled, or it was replaced).
    pub fn ended(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WorkReceiver {
    pub fn into_inner(self) -> mpsc::UnboundedReceiver<Work> {
        self.0
    }
}
