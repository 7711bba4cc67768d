//! The ledger: the one owner of payment state. A single task applies commands in arrival
//! order (no locks on the hot path), turns each change into an [`Event`], applies it and hands
//! it to the journal, whose completion sends the answer once the event is durable.

pub mod codec;
pub mod persist;
pub mod state;
pub mod summary;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use state::{Event, Payment, State, Status};
pub use summary::Totals;

use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::journal::{Completion, Journal, JournalError};
use crate::processor::ProcessorIdx;

/// Commands waiting for the ledger task; senders wait when it is full.
pub const COMMAND_QUEUE_LEN: usize = 16_384;

/// A payment handed to dispatch, once its acceptance is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    pub id: CorrelationId,
    pub cents: Cents,
    pub accepted_at: UtcMillis,
    /// The purge generation it belongs to; a purge makes older work stale.
    pub generation: u64,
    /// Sent to this processor with this `requestedAt`, outcome unknown: it must be resolved
    /// there before it may go anywhere else (SPEC §3.3).
    pub pinned: Option<(ProcessorIdx, UtcMillis)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("correlationId already used with a different amount")]
    AmountMismatch,
    #[error("pending backlog is full")]
    BacklogFull,
    #[error("the journal cannot make payments durable")]
    Unavailable,
}

/// Why dispatch may not send a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("payment was purged or is no longer pending")]
    Stale,
    #[error("the journal cannot record the intent")]
    Unavailable,
}

/// The result of a request to a processor, as the ledger records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Processed { requested_at: UtcMillis },
    Rejected,
}

enum Command {
    Accept { id: CorrelationId, cents: Cents, reply: oneshot::Sender<Result<(), AcceptError>> },
    Get { id: CorrelationId, reply: oneshot::Sender<Option<Payment>> },
    Summary { from: Option<UtcMillis>, to: Option<UtcMillis>, reply: oneshot::Sender<Vec<Totals>> },
    Intent { work: Work, processor: ProcessorIdx, requested_at: UtcMillis, reply: oneshot::Sender<Result<(), IntentError>> },
    Settle { work: Work, processor: ProcessorIdx, settled: Settled },
    Purge { reply: oneshot::Sender<Result<(), JournalError>> },
    IsCurrent { work: Work, reply: oneshot::Sender<bool> },
}

/// What happens once an event is durable.
pub enum Done {
    Accept { reply: oneshot::Sender<Result<(), AcceptError>>, work: Option<(Work, mpsc::UnboundedSender<Work>)> },
    Intent(oneshot::Sender<Result<(), IntentError>>),
    Purge(oneshot::Sender<Result<(), JournalError>>),
    Nothing,
}

impl Completion for Done {
    fn complete(self, result: Result<(), JournalError>) {
        match self {
            Done::Accept { reply, work } => {
                if result.is_ok()
                    && let Some((work, tx)) = work
                {
                    // The receiver only closes at shutdown, when the journal replays it.
                    let _ = tx.send(work);
                }
                let _ = reply.send(result.map_err(|_| AcceptError::Unavailable));
            }
            Done::Intent(reply) => {
                let _ = reply.send(result.map_err(|_| IntentError::Unavailable));
            }
            Done::Purge(reply) => {
                let _ = reply.send(result);
            }
            Done::Nothing => {}
        }
    }
}

/// Limits the ledger enforces.
#[derive(Clone, Copy, Debug)]
pub struct LedgerLimits {
    /// Accepted payments not yet processed; beyond it new payments get 503.
    pub pending_max: usize,
}

/// Rebuilds the state from disk, after a journal failure was repaired.
pub type Restore = Arc<dyn Fn() -> Result<State, String> + Send + Sync>;

/// How long the ledger waits between attempts to bring a failed journal back.
pub const JOURNAL_RETRY_MS: u64 = 1_000;

/// A cheap, cloneable way to talk to the ledger task.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Command>,
    healthy: Arc<AtomicBool>,
}

/// The ledger task stopped: the gateway is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the ledger has stopped")]
pub struct Stopped;

impl LedgerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Accepts a payment; `Ok` once it is durable (a repeat with the same amount too).
    pub async fn accept(&self, id: CorrelationId, cents: Cents) -> Result<Result<(), AcceptError>, Stopped> {
        self.ask(|reply| Command::Accept { id, cents, reply }).await
    }

    pub async fn get(&self, id: CorrelationId) -> Result<Option<Payment>, Stopped> {
        self.ask(|reply| Command::Get { id, reply }).await
    }

    pub async fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> Result<Vec<Totals>, Stopped> {
        self.ask(|reply| Command::Summary { from, to, reply }).await
    }

    /// Journals the intent to send `work` to `processor`; `Ok` once it is durable.
    pub async fn intent(&self, work: Work, processor: ProcessorIdx, requested_at: UtcMillis) -> Result<(), IntentError> {
        self.ask(|reply| Command::Intent { work, processor, requested_at, reply }).await.unwrap_or(Err(IntentError::Stale))
    }

    pub async fn settle(&self, work: Work, processor: ProcessorIdx, settled: Settled) {
        let _ = self.tx.send(Command::Settle { work, processor, settled }).await;
    }

    /// Whether `work` still stands for an unprocessed payment (not purged, not settled).
    pub async fn is_current(&self, work: Work) -> bool {
        self.ask(|reply| Command::IsCurrent { work, reply }).await.unwrap_or(false)
    }

    /// False while the journal cannot make events durable.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub async fn purge(&self) -> Result<Result<(), JournalError>, Stopped> {
        self.ask(|reply| Command::Purge { reply }).await
    }
}

/// The ledger task's own data.
pub struct Ledger {
    state: State,
    journal: Journal<Event, Done>,
    dispatch: mpsc::UnboundedSender<Work>,
    generation: u64,
    limits: LedgerLimits,
    restore: Restore,
    healthy: Arc<AtomicBool>,
    /// The journal's failure count when the state last matched the disk.
    seen_failures: u64,
}

impl Ledger {
    /// Starts the ledger over a recovered `state`; every unfinished payment in it is handed
    /// to dispatch (pinned to its processor when its outcome there is unknown).
    pub fn spawn(
        state: State,
        journal: Journal<Event, Done>,
        dispatch: mpsc::UnboundedSender<Work>,
        limits: LedgerLimits,
        restore: Restore,
    ) -> (LedgerHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_LEN);
        let healthy = Arc::new(AtomicBool::new(true));
        let seen_failures = journal.failures();
        let ledger = Ledger { state, journal, dispatch, generation: 0, limits, restore, healthy: healthy.clone(), seen_failures };
        ledger.dispatch_unfinished();
        let task = tokio::spawn(ledger.run(rx));
        (LedgerHandle { tx, healthy }, task)
    }

    /// Hands every unfinished payment to dispatch; one whose outcome is unknown goes pinned
    /// to the processor it was sent to (SPEC §3.3).
    fn dispatch_unfinished(&self) {
        for (id, p) in self.state.payments() {
            let pinned = match p.status {
                Status::Processed { .. } => continue,
                Status::Pending => None,
                Status::Sent { processor, requested_at } => Some((processor, requested_at)),
            };
            let _ = self.dispatch.send(Work { id, cents: p.cents, accepted_at: p.accepted_at, generation: self.generation, pinned });
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
            if self.journal.failures() != self.seen_failures {
                self.recover_journal(&mut rx).await;
            }
        }
    }

    /// After a failed write the in-memory state holds events the disk does not. Refuse
    /// changes, have the journal cut its segment back to the durable length, rebuild the
    /// state from disk, and carry on; until then, retry every [`JOURNAL_RETRY_MS`].
    async fn recover_journal(&mut self, rx: &mut mpsc::Receiver<Command>) {
        self.healthy.store(false, Ordering::Relaxed);
        loop {
            self.seen_failures = self.journal.failures();
            let repair = self.journal.repair();
            if let Ok(Ok(())) = self.degraded_until(rx, repair).await {
                let restore = self.restore.clone();
                let rebuilt = self.degraded_until(rx, tokio::task::spawn_blocking(move || restore())).await;
                match rebuilt {
                    Ok(Ok(state)) if self.journal.failures() == self.seen_failures => {
                        self.state = state;
                        self.dispatch_unfinished();
                        self.healthy.store(true, Ordering::Relaxed);
                        tracing::warn!(payments = self.state.len(), "ledger rebuilt from the journal; accepting payments again");
                        return;
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot rebuild the ledger from the journal"),
                    _ => {}
                }
            }
            self.degraded_until(rx, tokio::time::sleep(Duration::from_millis(JOURNAL_RETRY_MS))).await;
        }
    }

    /// Answers commands without changing anything until `fut` completes.
    async fn degraded_until<F: Future>(&mut self, rx: &mut mpsc::Receiver<Command>, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                Some(cmd) = rx.recv() => match cmd {
                    Command::Accept { reply, .. } => {
                        let _ = reply.send(Err(AcceptError::Unavailable));
                    }
                    Command::Intent { reply, .. } => {
                        let _ = reply.send(Err(IntentError::Unavailable));
                    }
                    Command::Purge { reply } => {
                        let _ = reply.send(Err(JournalError::Io("journal is failed".into())));
                    }
                    // Dropped: the payment is still Sent on disk and is resolved again after recovery.
                    Command::Settle { .. } => {}
                    read_only => self.handle(read_only),
                },
            }
        }
    }

    /// Applies `event` and journals it. An event that does not apply is a defect in the
    /// ledger itself: stop rather than corrupt the books.
    fn record(&mut self, event: Event, done: Done) {
        if let Err(e) = self.state.apply(&event) {
            panic!("ledger invariant broken: {e}");
        }
        self.journal.submit(Some(event), done);
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Accept { id, cents, reply } => match self.state.get(id) {
                Some(p) if p.cents == cents => self.journal.submit(None, Done::Accept { reply, work: None }),
                Some(_) => {
                    let _ = reply.send(Err(AcceptError::AmountMismatch));
                }
                None if self.state.unfinished() >= self.limits.pending_max => {
                    let _ = reply.send(Err(AcceptError::BacklogFull));
                }
                None => {
                    let accepted_at = UtcMillis::now();
                    let work = Work { id, cents, accepted_at, generation: self.generation, pinned: None };
                    let done = Done::Accept { reply, work: Some((work, self.dispatch.clone())) };
                    self.record(Event::Accepted { id, cents, accepted_at }, done);
                }
            },
            Command::Get { id, reply } => {
                let _ = reply.send(self.state.get(id).copied());
            }
            Command::Summary { from, to, reply } => {
                let _ = reply.send(self.state.summary(from, to));
            }
            Command::Intent { work, processor, requested_at, reply } => {
                let pending = self.state.get(work.id).is_some_and(|p| p.status == Status::Pending);
                if work.generation != self.generation || !pending {
                    let _ = reply.send(Err(IntentError::Stale));
                    return;
                }
                self.record(Event::Intent { id: work.id, processor, requested_at }, Done::Intent(reply));
            }
            Command::Settle { work, processor, settled } => {
                let sent_here =
                    self.state.get(work.id).is_some_and(|p| matches!(p.status, Status::Sent { processor: s, .. } if s == processor));
                if work.generation != self.generation || !sent_here {
                    tracing::debug!(id = %work.id, "outcome for a purged payment ignored");
                    return;
                }
                let event = match settled {
                    Settled::Processed { requested_at } => Event::Processed { id: work.id, processor, requested_at },
                    Settled::Rejected => Event::Rejected { id: work.id, processor },
                };
                self.record(event, Done::Nothing);
            }
            Command::IsCurrent { work, reply } => {
                let unfinished = self.state.get(work.id).is_some_and(|p| !matches!(p.status, Status::Processed { .. }));
                let _ = reply.send(work.generation == self.generation && unfinished);
            }
            Command::Purge { reply } => {
                self.generation += 1;
                self.record(Event::Purged, Done::Purge(reply));
            }
        }
    }
}
