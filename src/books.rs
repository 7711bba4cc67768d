//! The books behind the API and dispatch: the embedded ledger (journal and history on this
//! machine) or cluster mode's PostgreSQL. Both keep the same contract (SPEC §3, §6); this is
//! the one place that chooses between them.

use crate::cluster::ClusterHandle;
use crate::dispatch::SendGate;
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::ledger::{AcceptError, Backlog, IntentError, LedgerHandle, Payment, Settled, Stopped, Totals, Work};
use crate::processor::ProcessorIdx;

#[derive(Clone)]
pub enum Books {
    Embedded(LedgerHandle),
    Cluster(ClusterHandle),
}

impl Books {
    pub async fn accept(&self, id: CorrelationId, cents: Cents) -> Result<Result<(), AcceptError>, Stopped> {
        match self {
            Books::Embedded(l) => l.accept(id, cents).await,
            Books::Cluster(c) => c.accept(id, cents).await,
        }
    }

    pub async fn get(&self, id: CorrelationId) -> Result<Result<Option<Payment>, String>, Stopped> {
        match self {
            Books::Embedded(l) => l.get(id).await,
            Books::Cluster(c) => c.get(id).await,
        }
    }

    /// Totals per processor; `Err` when the books could not be read.
    pub async fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> Result<Result<Vec<Totals>, String>, Stopped> {
        match self {
            Books::Embedded(l) => l.summary(from, to).await.map(Ok),
            Books::Cluster(c) => c.summary(from, to).await,
        }
    }

    pub async fn backlog(&self) -> Result<Backlog, Stopped> {
        match self {
            Books::Embedded(l) => l.backlog().await,
            Books::Cluster(c) => c.backlog().await,
        }
    }

    pub async fn intent(&self, work: Work, processor: ProcessorIdx, requested_at: UtcMillis) -> Result<(), IntentError> {
        match self {
            Books::Embedded(l) => l.intent(work, processor, requested_at).await,
            Books::Cluster(c) => c.intent(work, processor, requested_at).await,
        }
    }

    pub async fn settle(&self, work: Work, settled: Settled) {
        match self {
            Books::Embedded(l) => l.settle(work, settled).await,
            Books::Cluster(c) => c.settle(work, settled).await,
        }
    }

    pub async fn is_current(&self, work: Work) -> bool {
        match self {
            Books::Embedded(l) => l.is_current(work).await,
            Books::Cluster(c) => c.is_current(work).await,
        }
    }

    pub fn generation(&self) -> u64 {
        match self {
            Books::Embedded(l) => l.generation(),
            Books::Cluster(c) => c.generation(),
        }
    }

    pub async fn purged_since(&self, generation: u64) {
        match self {
            Books::Embedded(l) => l.purged_since(generation).await,
            Books::Cluster(c) => c.purged_since(generation).await,
        }
    }

    /// False while payments cannot be made durable (`/health` answers 503).
    pub fn is_healthy(&self) -> bool {
        match self {
            Books::Embedded(l) => l.is_healthy(),
            Books::Cluster(c) => c.is_healthy(),
        }
    }

    /// Purges every payment. Embedded: the sends on the wire settle first and none start
    /// until the purge is durable. Cluster: every instance does that (see `cluster::lease`).
    pub async fn purge(&self, sends: &SendGate) -> Result<Result<(), String>, Stopped> {
        match self {
            Books::Embedded(l) => {
                let paused = sends.pause().await;
                let purged = l.purge().await;
                drop(paused);
                purged.map(|r| r.map_err(|e| e.to_string()))
            }
            Books::Cluster(c) => c.purge().await,
        }
    }

    /// Every event handed over so far is durable (the last step of a graceful shutdown).
    pub async fn flush(&self) -> Result<Result<(), String>, Stopped> {
        match self {
            Books::Embedded(l) => l.flush().await.map(|r| r.map_err(|e| e.to_string())),
            Books::Cluster(c) => c.flush().await.map(Ok),
        }
    }

    /// The embedded ledger, for what only it has (journal repairs, the history's cache).
    pub fn embedded(&self) -> Option<&LedgerHandle> {
        match self {
            Books::Embedded(l) => Some(l),
            Books::Cluster(_) => None,
        }
    }

    pub fn cluster(&self) -> Option<&ClusterHandle> {
        match self {
            Books::Cluster(c) => Some(c),
            Books::Embedded(_) => None,
        }
    }
}
