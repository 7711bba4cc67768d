//! The ledger: the one owner of payment state. A single task applies commands in arrival
//! order (no locks on the hot path), turns each change into an [`Event`], applies it and hands
//! it to the journal, whose completion sends the answer once the event is durable.

pub mod codec;
pub mod persist;
pub mod queue;
pub mod state;
pub mod summary;
pub mod table;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use state::{Event, Payment, State, Status};
pub use summary::Totals;

pub use queue::WorkQueue;

use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::history::filter::IdFilter;
use crate::history::{Entry, History};
use crate::journal::{Completion, Journal, JournalError};
use crate::logs::LogLimiter;
use crate::processor::ProcessorIdx;

/// Commands waiting for the ledger task; senders wait when it is full.
pub const COMMAND_QUEUE_LEN: usize = 16_384;

/// A payment handed to dispatch, once its acceptance is durable. It may act on the payment
/// only while it matches it exactly: same ticket, and the status it expects (pending, or sent
/// to `pinned`) — see [`Ledger`]'s handling of `Intent`, `Settle` and `IsCurrent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    pub id: CorrelationId,
    pub cents: Cents,
    pub accepted_at: UtcMillis,
    /// The payment's ticket when this item was made (see [`Payment::ticket`]).
    pub ticket: u64,
    /// The purge generation it belongs to: a purge ends every older item's wait for a route.
    pub generation: u64,
    /// Sent to this processor with this `requestedAt`, outcome unknown: it must be resolved
    /// there before it may go anywhere else (SPEC §3.3).
    pub pinned: Option<(ProcessorIdx, UtcMillis)>,
    /// Routed at acceptance: the intent for `pinned` became durable with the acceptance and
    /// nothing has been sent yet, so dispatch sends it as a first request.
    pub fresh: bool,
}

impl Work {
    fn new(id: CorrelationId, p: &Payment, generation: u64) -> Work {
        let pinned = match p.status {
            Status::Sent { processor, requested_at } => Some((processor, requested_at)),
            _ => None,
        };
        Work { id, cents: p.cents, accepted_at: p.accepted_at, ticket: p.ticket, generation, pinned, fresh: false }
    }

    /// Whether this item is the one that may act on `p` now.
    fn matches(&self, p: &Payment) -> bool {
        let expected = match self.pinned {
            None => Status::Pending,
            Some((processor, requested_at)) => Status::Sent { processor, requested_at },
        };
        p.ticket == self.ticket && p.status == expected
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("correlationId already used with a different amount")]
    AmountMismatch,
    #[error("pending backlog is full")]
    BacklogFull,
    #[error("the journal cannot make payments durable")]
    Unavailable,
    /// Not an answer: the id is not in memory and the filter says the history may hold it;
    /// [`LedgerHandle::accept`] reads the history and asks again (never returned to callers).
    #[error("the history must be read first")]
    CheckHistory { version: u64 },
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
    Accept {
        id: CorrelationId,
        cents: Cents,
        /// The history was read and does not hold `id`, as of this eviction version.
        checked: Option<u64>,
        reply: oneshot::Sender<Result<(), AcceptError>>,
    },
    Get {
        id: CorrelationId,
        reply: oneshot::Sender<Lookup>,
    },
    Summary {
        from: Option<UtcMillis>,
        to: Option<UtcMillis>,
        reply: oneshot::Sender<Vec<Totals>>,
    },
    Intent {
        work: Work,
        processor: ProcessorIdx,
        requested_at: UtcMillis,
        reply: oneshot::Sender<Result<(), IntentError>>,
    },
    /// `work.pinned` names the processor and `requestedAt` the outcome is for.
    Settle {
        work: Work,
        settled: Settled,
    },
    Purge {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// The history is empty: now the purge is applied and journaled.
    PurgeJournal {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
    /// The history could not be emptied: the purge is off.
    PurgeFailed,
    IsCurrent {
        work: Work,
        reply: oneshot::Sender<bool>,
    },
    Backlog {
        reply: oneshot::Sender<Backlog>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// Where a payment's record is, as the ledger knows it.
#[derive(Clone, Copy, Debug)]
pub enum Lookup {
    Hot(Payment),
    /// Not in memory; the history may hold it.
    MaybeInHistory,
    /// Neither in memory nor (by the filter) in the history.
    Unknown,
}

impl Command {
    fn kind(&self) -> &'static str {
        match self {
            Command::Accept { .. } => "accept",
            Command::Get { .. } => "get",
            Command::Summary { .. } => "summary",
            Command::Intent { .. } => "intent",
            Command::Settle { .. } => "settle",
            Command::Purge { .. } | Command::PurgeJournal { .. } | Command::PurgeFailed => "purge",
            Command::IsCurrent { .. } => "is_current",
            Command::Backlog { .. } => "backlog",
            Command::Flush { .. } => "flush",
        }
    }
}

/// The backlog as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Accepted payments not yet processed.
    pub pending: usize,
    /// When the oldest of them was accepted.
    pub oldest_accepted_at: Option<UtcMillis>,
    /// Payments in memory (pending and recently settled).
    pub hot: usize,
    /// How many the ledger's table holds before it would have to grow (sized at start).
    pub hot_capacity: usize,
    /// Memory of the id filter (0 while it is being built).
    pub filter_bytes: usize,
}

/// What happens once an event is durable.
pub enum Done {
    Accept { reply: oneshot::Sender<Result<(), AcceptError>>, work: Option<(Work, WorkQueue)> },
    Intent(oneshot::Sender<Result<(), IntentError>>),
    Purge(oneshot::Sender<Result<(), JournalError>>),
    Flush(oneshot::Sender<Result<(), JournalError>>),
}

impl Completion for Done {
    fn complete(self, result: Result<(), JournalError>) {
        match self {
            Done::Accept { reply, work } => {
                if result.is_ok()
                    && let Some((work, queue)) = work
                {
                    queue.push_accepted(work);
                }
                let _ = reply.send(result.map_err(|_| AcceptError::Unavailable));
            }
            Done::Intent(reply) => {
                let _ = reply.send(result.map_err(|_| IntentError::Unavailable));
            }
            Done::Purge(reply) | Done::Flush(reply) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// Limits the ledger enforces.
#[derive(Clone, Copy, Debug)]
pub struct LedgerLimits {
    /// Accepted payments not yet processed; beyond it new payments get 503.
    pub pending_max: usize,
    /// Settled payments kept in memory once the history holds them (the newest ones).
    pub hot_max: usize,
    /// A settled payment older than this leaves memory even below `hot_max`.
    pub hot_window: Duration,
}

/// Default for [`LedgerLimits::hot_max`] (`--hot-max`): 100 000 settled payments, about 50 s
/// at 2 000/s, in about 6 MiB of the hot table beside `--pending-max`'s share.
pub const HOT_MAX: usize = 100_000;
/// Default for [`LedgerLimits::hot_window`] (`--hot-window-ms`).
pub const HOT_WINDOW_MS: u64 = 60_000;
/// Most payments evicted after one command, so eviction never holds a command up for long.
pub const EVICT_BATCH: usize = 64;
/// A ledger command slower than this is logged.
pub const SLOW_COMMAND_MS: u64 = 2;

/// Evictions remembered by id, so that an `Accept` that read the history while others were
/// evicted need not read it again (at 2 000/s, half a minute of them).
pub const RECENT_EVICTIONS: usize = 65_536;
/// How often an idle ledger checks for payments past the hot window.
pub const EVICT_TICK_MS: u64 = 1_000;

impl LedgerLimits {
    /// Payments the hot set may hold at once: every pending one and `hot_max` settled ones.
    /// Past it (the history fell behind) new payments get 503 rather than growing the table.
    pub fn hot_capacity(&self) -> usize {
        self.pending_max.saturating_add(self.hot_max)
    }
}

/// The filter of ids in the history, once it is built (see `History::open`).
enum Filter {
    Building { rx: crate::history::PendingFilter, evicted: Vec<u128>, purged: bool },
    Ready(IdFilter),
}

impl Filter {
    /// Until the filter is built, every id may be in the history.
    fn may_contain(&self, id: u128) -> bool {
        match self {
            Filter::Ready(f) => f.may_contain(id),
            Filter::Building { .. } => true,
        }
    }

    fn insert(&mut self, id: u128) {
        match self {
            Filter::Ready(f) => f.insert(id),
            Filter::Building { evicted, .. } => evicted.push(id),
        }
    }

    fn clear(&mut self) {
        match self {
            Filter::Ready(f) => f.clear(),
            Filter::Building { evicted, purged, .. } => {
                evicted.clear();
                *purged = true;
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Filter::Ready(f) => f.bytes(),
            Filter::Building { .. } => 0,
        }
    }

    /// Takes the built filter when it has arrived.
    fn poll(&mut self) {
        let Filter::Building { rx, evicted, purged } = self else { return };
        if let Some(mut f) = rx.try_take() {
            if *purged {
                f.clear();
            }
            for id in evicted.drain(..) {
                f.insert(id);
            }
            *self = Filter::Ready(f);
        }
    }
}

/// A settled payment in the order it settled: it may leave memory once the history confirms
/// `seq`.
#[derive(Clone, Copy, Debug)]
struct Settling {
    seq: u64,
    id: CorrelationId,
    at: UtcMillis,
}

/// Rebuilds the state from disk, after a journal failure was repaired.
pub type Restore = Arc<dyn Fn() -> Result<State, String> + Send + Sync>;

/// How long the ledger waits between attempts to bring a failed journal back, and at least
/// between two rebuilds of its state from disk (a disk that fails every write would otherwise
/// make every refused payment replay the whole journal).
pub const JOURNAL_RETRY_MS: u64 = 1_000;
/// Longest a processor's answer waits in the ledger for an acceptance to carry it to the
/// journal writer before it is sent on its own (see [`Journal::submit_lazy`]).
pub const LAZY_WINDOW_MS: u64 = 5;
/// The ledger logs the state of a failing journal at most once per this period.
pub const JOURNAL_LOG_EVERY_MS: u64 = 30_000;

/// What the ledger did about journal failures, for `/health` and tests.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Attempts to repair the journal (cut back, and check it takes writes again).
    pub repairs: AtomicU64,
    /// Times the state was rebuilt from disk after a successful repair.
    pub rebuilds: AtomicU64,
    /// Work items made anew by rebuilds (payments whose state on disk differed).
    pub requeued: AtomicU64,
}

/// A cheap, cloneable way to talk to the ledger task.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Command>,
    healthy: Arc<AtomicBool>,
    generation: watch::Receiver<u64>,
    pub stats: Arc<JournalStats>,
    history: History,
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

    /// Accepts a payment; `Ok` once it is durable (a repeat with the same amount too, however
    /// old: an id the ledger no longer holds in memory is looked up in the history, off the
    /// ledger's task, and asked again with the version it was read at).
    pub async fn accept(&self, id: CorrelationId, cents: Cents) -> Result<Result<(), AcceptError>, Stopped> {
        let mut checked = None;
        loop {
            match self.ask(|reply| Command::Accept { id, cents, checked, reply }).await? {
                Err(AcceptError::CheckHistory { version }) => match self.read_history(id).await {
                    Ok(Some(e)) if e.cents == cents => return Ok(Ok(())),
                    Ok(Some(_)) => return Ok(Err(AcceptError::AmountMismatch)),
                    Ok(None) => checked = Some(version),
                    Err(e) => {
                        tracing::error!(error = %e, %id, "history read failed");
                        return Ok(Err(AcceptError::Unavailable));
                    }
                },
                other => return Ok(other),
            }
        }
    }

    /// The payment, from memory or, for one no longer there, from the history. `Err` when the
    /// history could not be read.
    pub async fn get(&self, id: CorrelationId) -> Result<Result<Option<Payment>, String>, Stopped> {
        Ok(match self.ask(|reply| Command::Get { id, reply }).await? {
            Lookup::Hot(p) => Ok(Some(p)),
            Lookup::Unknown => Ok(None),
            Lookup::MaybeInHistory => self.read_history(id).await.map(|e| e.map(|e| e.payment())),
        })
    }

    /// Bytes held by the history's page cache (for `/metrics`).
    pub fn history_cache_bytes(&self) -> usize {
        self.history.cache_bytes()
    }

    async fn read_history(&self, id: CorrelationId) -> Result<Option<Entry>, String> {
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || history.get(id)).await.map_err(|e| e.to_string())?
    }

    pub async fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> Result<Vec<Totals>, Stopped> {
        self.ask(|reply| Command::Summary { from, to, reply }).await
    }

    /// The backlog and its oldest payment. Scans every payment on the ledger's task: for
    /// scrapes (every few seconds), not for the request path.
    pub async fn backlog(&self) -> Result<Backlog, Stopped> {
        self.ask(|reply| Command::Backlog { reply }).await
    }

    /// Journals the intent to send `work` to `processor`; `Ok` once it is durable.
    pub async fn intent(&self, work: Work, processor: ProcessorIdx, requested_at: UtcMillis) -> Result<(), IntentError> {
        self.ask(|reply| Command::Intent { work, processor, requested_at, reply }).await.unwrap_or(Err(IntentError::Stale))
    }

    /// Records the outcome at `work.pinned` (which must be set).
    pub async fn settle(&self, work: Work, settled: Settled) {
        debug_assert!(work.pinned.is_some());
        let _ = self.tx.send(Command::Settle { work, settled }).await;
    }

    /// Whether `work` is still the item that may act on its payment, in the state it expects.
    pub async fn is_current(&self, work: Work) -> bool {
        self.ask(|reply| Command::IsCurrent { work, reply }).await.unwrap_or(false)
    }

    /// The purge generation now.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Resolves once a purge newer than `generation` happened (or the ledger stopped).
    pub async fn purged_since(&self, generation: u64) {
        let mut rx = self.generation.clone();
        let _ = rx.wait_for(|g| *g != generation).await;
    }

    /// False while the journal cannot make events durable.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub async fn purge(&self) -> Result<Result<(), JournalError>, Stopped> {
        self.ask(|reply| Command::Purge { reply }).await
    }

    /// Resolves once every command sent before it is applied and its events are durable
    /// (the last step of a graceful shutdown).
    pub async fn flush(&self) -> Result<Result<(), JournalError>, Stopped> {
        // The history commits what it holds when it is closed (`History::close`).
        self.ask(|reply| Command::Flush { reply }).await
    }
}

/// The ledger task's own data.
pub struct Ledger {
    state: State,
    journal: Journal<Event, Done>,
    dispatch: WorkQueue,
    generation: watch::Sender<u64>,
    limits: LedgerLimits,
    restore: Restore,
    healthy: Arc<AtomicBool>,
    /// The journal's failure count when the state last matched the disk.
    seen_failures: u64,
    stats: Arc<JournalStats>,
    /// Payments whose work item ended while the journal was failed (its outcome was dropped).
    orphans: Vec<CorrelationId>,
    last_rebuild: Option<tokio::time::Instant>,
    log: LogLimiter,
    slow_log: LogLimiter,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// With `--route-at-accept on`: the router whose cheapest breaker decides.
    route_at_accept: Option<Arc<crate::processor::router::Router>>,
    history: History,
    /// Every id evicted to the history (or found there at start).
    filter: Filter,
    /// Processed payments in memory, oldest first.
    settling: VecDeque<Settling>,
    /// The number the next processed payment gets (see [`History::settled`]).
    next_seq: u64,
    /// Counts evictions: an `Accept` that read the history at an older version must read it
    /// again only if its id is among those evicted since ([`Ledger::evicted_since`]).
    evict_version: u64,
    /// The ids of the last [`RECENT_EVICTIONS`] evictions, oldest first.
    recent_evictions: VecDeque<u128>,
    /// Payments with a ticket below this were recovered from disk (at start or by a journal
    /// repair), not accepted by this process since: only they may be in the history already.
    first_live_ticket: u64,
    /// A purge is emptying the history: nothing is evicted meanwhile.
    purging: bool,
    /// The ledger's own command queue, for the second step of a purge.
    self_tx: mpsc::WeakSender<Command>,
}

impl Ledger {
    /// Starts the ledger over a recovered `state`; every unfinished payment in it is handed
    /// to dispatch (pinned to its processor when its outcome there is unknown).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        mut state: State,
        journal: Journal<Event, Done>,
        dispatch: WorkQueue,
        limits: LedgerLimits,
        restore: Restore,
        metrics: Option<Arc<crate::metrics::Metrics>>,
        route_at_accept: Option<Arc<crate::processor::router::Router>>,
        history: History,
        filter: crate::history::PendingFilter,
    ) -> (LedgerHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_LEN);
        // Sized once: the table is never rehashed into a larger one while commands wait.
        state.reserve_total(limits.hot_capacity());
        let state_next_ticket = state.next_ticket();
        let healthy = Arc::new(AtomicBool::new(true));
        let seen_failures = journal.failures();
        let (generation, generation_rx) = watch::channel(0);
        let stats = Arc::new(JournalStats::default());
        let ledger = Ledger {
            state,
            journal,
            dispatch,
            generation,
            limits,
            restore,
            healthy: healthy.clone(),
            seen_failures,
            stats: stats.clone(),
            orphans: Vec::new(),
            last_rebuild: None,
            log: LogLimiter::new(Duration::from_millis(JOURNAL_LOG_EVERY_MS)),
            slow_log: LogLimiter::new(Duration::from_millis(JOURNAL_LOG_EVERY_MS)),
            metrics,
            route_at_accept,
            history: history.clone(),
            filter: Filter::Building { rx: filter, evicted: Vec::new(), purged: false },
            settling: VecDeque::with_capacity(limits.hot_capacity()),
            next_seq: 1,
            evict_version: 0,
            recent_evictions: VecDeque::with_capacity(RECENT_EVICTIONS),
            first_live_ticket: state_next_ticket,
            purging: false,
            self_tx: tx.downgrade(),
        };
        for (id, p) in ledger.state.payments().filter(|(_, p)| !matches!(p.status, Status::Processed { .. })) {
            ledger.dispatch.push(Work::new(id, p, 0));
        }
        let task = tokio::spawn(ledger.run(rx));
        (LedgerHandle { tx, healthy, generation: generation_rx, stats, history }, task)
    }

    /// Hands these payments to dispatch, each as it stands now (pinned to its processor when
    /// its outcome there is unknown, SPEC §3.3).
    fn dispatch_these(&self, ids: &[CorrelationId]) {
        let generation = *self.generation.borrow();
        for id in ids {
            if let Some(p) = self.state.get(*id) {
                self.dispatch.push(Work::new(*id, p, generation));
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut failed = Box::pin(self.journal.failed());
        // Sends held-back records (processors' answers) that no acceptance carried in time.
        let lazy_due = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(lazy_due);
        let mut lazy_armed = false;
        let mut confirmed = self.history.confirmed.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(EVICT_TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.timed(cmd),
                    None => {
                        self.journal.flush_lazy();
                        return;
                    }
                },
                () = &mut failed => failed = Box::pin(self.journal.failed()),
                () = &mut lazy_due, if lazy_armed => self.journal.flush_lazy(),
                Ok(()) = confirmed.changed() => {}
                _ = tick.tick() => {}
            }
            self.evict();
            // The deadline starts with the first record held, and is not pushed back by later ones.
            let held = self.journal.has_lazy();
            if held && !lazy_armed {
                lazy_due.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(LAZY_WINDOW_MS));
            }
            lazy_armed = held;
            if self.journal.failures() != self.seen_failures {
                self.recover_journal(&mut rx).await;
            }
        }
    }

    /// After a failed write the in-memory state holds events the disk does not. Refuse
    /// changes; have the journal cut its segment back to the durable length and prove it takes
    /// writes again; rebuild the state from disk; and carry on. One repair at a time (this
    /// task), at most one rebuild per [`JOURNAL_RETRY_MS`], retried every [`JOURNAL_RETRY_MS`]
    /// until the disk takes writes; only payments whose state on disk differs get a new work
    /// item, so a disk that stays full neither grows the queues nor floods the log.
    async fn recover_journal(&mut self, rx: &mut mpsc::Receiver<Command>) {
        self.healthy.store(false, Ordering::Relaxed);
        if let Some(last) = self.last_rebuild {
            let calm = last + Duration::from_millis(JOURNAL_RETRY_MS);
            self.degraded_until(rx, tokio::time::sleep_until(calm)).await;
        }
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            self.seen_failures = self.journal.failures();
            self.stats.repairs.fetch_add(1, Ordering::Relaxed);
            let repair = self.journal.repair();
            match self.degraded_until(rx, repair).await {
                Ok(Ok(())) => {
                    let restore = self.restore.clone();
                    let rebuilt = self.degraded_until(rx, tokio::task::spawn_blocking(move || restore())).await;
                    match rebuilt {
                        Ok(Ok(state)) if self.journal.failures() == self.seen_failures => {
                            self.adopt(state);
                            return;
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot rebuild the ledger from the journal"),
                        _ => {}
                    }
                }
                Ok(Err(e)) => {
                    if let Some(suppressed) = self.log.allow() {
                        tracing::error!(error = %e, attempts, suppressed, "journal still failing; payments are refused with 503 until the disk takes writes");
                    }
                }
                Err(_) => tracing::error!("journal writer stopped"),
            }
            self.degraded_until(rx, tokio::time::sleep(Duration::from_millis(JOURNAL_RETRY_MS))).await;
        }
    }

    /// Replaces the state with `rebuilt` (what the disk holds) and makes new work items only
    /// for payments that need one. Processed payments the hot set no longer held are in the
    /// history (or on their way there): they stay out of memory.
    fn adopt(&mut self, mut rebuilt: State) {
        let old = &self.state;
        rebuilt.retain_processed(|id| old.get(id).is_some_and(|p| matches!(p.status, Status::Processed { .. })));
        rebuilt.reserve_total(self.limits.hot_capacity());
        let orphans = std::mem::take(&mut self.orphans);
        let fresh = rebuilt.adopt_tickets(&self.state, &orphans);
        self.state = rebuilt;
        self.first_live_ticket = self.state.next_ticket();
        self.dispatch_these(&fresh);
        self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        self.stats.requeued.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        self.last_rebuild = Some(tokio::time::Instant::now());
        self.healthy.store(true, Ordering::Relaxed);
        tracing::warn!(payments = self.state.len(), requeued = fresh.len(), "ledger rebuilt from the journal; accepting payments again");
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
                    Command::Purge { reply } | Command::PurgeJournal { reply } => {
                        if self.purging {
                            self.purging = false;
                            self.history.resume();
                        }
                        let _ = reply.send(Err(JournalError::Io("journal is failed".into())));
                    }
                    // Not recorded, and its item has ended: the payment needs a new one after
                    // the rebuild (on disk it is still sent there, and is resolved there again).
                    Command::Settle { work, .. } => {
                        if self.state.get(work.id).is_some_and(|p| work.matches(p)) {
                            self.orphans.push(work.id);
                        }
                    }
                    read_only => self.handle(read_only),
                },
            }
        }
    }

    /// Applies `event` and journals it. An event that does not apply is a defect in the
    /// ledger itself: stop rather than corrupt the books.
    fn record(&mut self, event: Event, done: Done) {
        self.apply(&event);
        self.journal.submit(Some(event), done);
    }

    fn apply(&mut self, event: &Event) {
        if let Err(e) = self.state.apply(event) {
            panic!("ledger invariant broken: {e}");
        }
        if let Event::Processed { id, .. } = *event
            && let Some(p) = self.state.get(id)
            && let Some(mut entry) = Entry::of(id, p)
        {
            entry.maybe_known = p.ticket < self.first_live_ticket;
            let seq = self.next_seq;
            self.next_seq += 1;
            self.settling.push_back(Settling { seq, id, at: UtcMillis::now() });
            self.history.settled(seq, entry);
        }
    }

    /// Forgets the oldest settled payments the history holds durably, while more than
    /// `hot_max` are in memory or they are older than the hot window; at most
    /// [`EVICT_BATCH`] per call.
    fn evict(&mut self) {
        self.filter.poll();
        if self.purging {
            return;
        }
        let confirmed = *self.history.confirmed.borrow();
        let Some(front) = self.settling.front() else { return };
        if front.seq > confirmed {
            return;
        }
        let oldest_kept = UtcMillis::now().0 - self.limits.hot_window.as_millis() as i64;
        for _ in 0..EVICT_BATCH {
            let Some(&front) = self.settling.front() else { break };
            if front.seq > confirmed || (self.settling.len() <= self.limits.hot_max && front.at.0 > oldest_kept) {
                break;
            }
            self.settling.pop_front();
            if self.state.evict(front.id) {
                self.filter.insert(front.id.0);
                self.evict_version += 1;
                if self.recent_evictions.len() == RECENT_EVICTIONS {
                    self.recent_evictions.pop_front();
                }
                self.recent_evictions.push_back(front.id.0);
            }
        }
    }

    /// Whether `id` may have been evicted (so be in the history) after the history was read
    /// as of `version`, when that read found nothing.
    fn evicted_since(&self, id: CorrelationId, version: u64) -> bool {
        let since = self.evict_version.saturating_sub(version) as usize;
        since > self.recent_evictions.len() || self.recent_evictions.iter().rev().take(since).any(|&e| e == id.0)
    }

    /// Handles `cmd`, timing it for `/metrics` (the single writer's stalls show there); a
    /// command over [`SLOW_COMMAND_MS`] is logged with its kind (at most once per 30 s).
    fn timed(&mut self, cmd: Command) {
        if self.metrics.is_none() {
            return self.handle(cmd);
        }
        let kind = cmd.kind();
        let started = std::time::Instant::now();
        self.handle(cmd);
        let took = started.elapsed();
        if let Some(m) = &self.metrics {
            m.ledger_command(took);
        }
        if took >= Duration::from_millis(SLOW_COMMAND_MS)
            && let Some(suppressed) = self.slow_log.allow()
        {
            tracing::warn!(
                kind,
                us = took.as_micros() as u64,
                suppressed,
                "slow ledger command (its thread may also have been descheduled)"
            );
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Accept { id, cents, checked, reply } => match self.state.get(id) {
                Some(p) if p.cents == cents => self.journal.submit(None, Done::Accept { reply, work: None }),
                Some(_) => {
                    let _ = reply.send(Err(AcceptError::AmountMismatch));
                }
                None if checked.map_or(self.filter.may_contain(id.0), |v| self.evicted_since(id, v)) => {
                    let _ = reply.send(Err(AcceptError::CheckHistory { version: self.evict_version }));
                }
                None if self.state.unfinished() >= self.limits.pending_max || self.state.len() >= self.limits.hot_capacity() => {
                    let _ = reply.send(Err(AcceptError::BacklogFull));
                }
                None => {
                    let accepted_at = UtcMillis::now();
                    let ticket = self.state.next_ticket();
                    let generation = *self.generation.borrow();
                    // Routing at acceptance: while the cheapest processor's breaker is closed,
                    // its intent shares the acceptance's sync, and dispatch only sends.
                    let routed = self.route_at_accept.as_ref().is_some_and(|r| r.is_healthy(0));
                    let pinned = routed.then_some((0, accepted_at));
                    let work = Work { id, cents, accepted_at, ticket, generation, pinned, fresh: routed };
                    let done = Done::Accept { reply, work: Some((work, self.dispatch.clone())) };
                    if routed {
                        let (accepted, intent) =
                            (Event::Accepted { id, cents, accepted_at }, Event::Intent { id, processor: 0, requested_at: accepted_at });
                        self.apply(&accepted);
                        self.apply(&intent);
                        self.journal.submit_two(accepted, intent, done);
                    } else {
                        self.record(Event::Accepted { id, cents, accepted_at }, done);
                    }
                }
            },
            Command::Get { id, reply } => {
                let found = match self.state.get(id) {
                    Some(p) => Lookup::Hot(*p),
                    None if self.filter.may_contain(id.0) => Lookup::MaybeInHistory,
                    None => Lookup::Unknown,
                };
                let _ = reply.send(found);
            }
            // In order after every payment applied so far (see `history`).
            Command::Summary { from, to, reply } => self.history.summary(from, to, reply),
            Command::Backlog { reply } => {
                let _ = reply.send(Backlog {
                    pending: self.state.unfinished(),
                    oldest_accepted_at: self.state.oldest_unfinished(),
                    hot: self.state.len(),
                    hot_capacity: self.state.capacity(),
                    filter_bytes: self.filter.bytes(),
                });
            }
            Command::Intent { work, processor, requested_at, reply } => {
                let current = work.pinned.is_none() && self.state.get(work.id).is_some_and(|p| work.matches(p));
                if !current {
                    let _ = reply.send(Err(IntentError::Stale));
                    return;
                }
                self.record(Event::Intent { id: work.id, processor, requested_at }, Done::Intent(reply));
            }
            Command::Settle { work, settled } => {
                let Some((processor, _)) = work.pinned else { return };
                if !self.state.get(work.id).is_some_and(|p| work.matches(p)) {
                    tracing::debug!(id = %work.id, "outcome of a stale work item ignored (payment purged, settled or re-queued)");
                    return;
                }
                let event = match settled {
                    Settled::Processed { requested_at } => Event::Processed { id: work.id, processor, requested_at },
                    Settled::Rejected => Event::Rejected { id: work.id, processor },
                };
                if let Some(m) = &self.metrics {
                    m.settled(usize::from(processor), matches!(settled, Settled::Processed { .. }));
                }
                // Needs no sync (see `Event::needs_sync`): it travels to the writer with the next
                // acceptance, or after [`LAZY_WINDOW_MS`] — one wake-up of the writer fewer.
                self.apply(&event);
                self.journal.submit_lazy(event);
            }
            Command::IsCurrent { work, reply } => {
                let _ = reply.send(self.state.get(work.id).is_some_and(|p| work.matches(p)));
            }
            // First the history is emptied (durably); then the purge is applied and journaled.
            // A crash between the two leaves the purge unanswered with part of the books gone,
            // and a retried purge finishes it; the other order could bring purged history back.
            Command::Purge { reply } => {
                self.generation.send_modify(|g| *g += 1);
                self.purging = true;
                let (done, emptied) = oneshot::channel();
                self.history.purge(done);
                let me = self.self_tx.clone();
                tokio::spawn(async move {
                    let emptied = emptied.await;
                    // Upgraded only now: a purge waiting on the history must not keep the
                    // ledger's queue open at shutdown.
                    let Some(me) = me.upgrade() else { return };
                    match emptied {
                        Ok(Ok(())) => {
                            let _ = me.send(Command::PurgeJournal { reply }).await;
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "purge failed: the history could not be emptied; nothing was purged");
                            let _ = reply.send(Err(JournalError::Io(e)));
                            let _ = me.send(Command::PurgeFailed).await;
                        }
                        Err(_) => {
                            let _ = reply.send(Err(JournalError::Io("history writer stopped".into())));
                        }
                    }
                });
            }
            Command::PurgeFailed => self.purging = false,
            Command::PurgeJournal { reply } => {
                self.purging = false;
                self.settling.clear();
                self.filter.clear();
                self.record(Event::Purged, Done::Purge(reply));
                self.history.resume();
            }
            Command::Flush { reply } => self.journal.submit(None, Done::Flush(reply)),
        }
    }
}
