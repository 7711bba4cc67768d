//! Cluster mode (`--database-url`): the books live in PostgreSQL, shared by every instance
//! behind the load balancer (SPEC §6). An instance keeps in memory only the payments it is
//! forwarding; acceptance, idempotency, lookups and the summary are the database's.
//!
//! Ownership is fenced: each instance incarnation holds a lease row (`paygate_leases`, epoch
//! from a sequence, expiry by the database's clock) that it renews; every write of a payment
//! names the owner and epoch and joins that lease row, so once a lease has expired and been
//! deleted by a survivor, nothing the old incarnation sends can change a payment. Survivors
//! take over the unsettled payments of a dead epoch in chunks (`FOR UPDATE SKIP LOCKED`);
//! those already sent stay pinned to their processor and are resolved there (SPEC §3.3).

pub mod db;
pub mod health;
pub mod lease;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dispatch::SendGate;
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::ledger::{AcceptError, Backlog, IntentError, Payment, Settled, Status, Stopped, Totals, Work, WorkQueue};
use crate::metrics::Metrics;
use crate::processor::ProcessorIdx;
use crate::processor::router::Router;

use db::{Db, DbError, timed};
use writer::{Accepted, Op};

/// What cluster mode is configured with.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub database_url: String,
    pub instance_id: String,
    /// How long an instance may go without renewing its lease before others take over.
    pub lease: Duration,
    /// The health endpoint interval (the processors allow one call per 5 s in all).
    pub health_interval: Duration,
    /// Longest a purge waits for every live instance to settle its sends.
    pub purge_timeout: Duration,
}

/// A payment this instance owns and has not settled.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub cents: Cents,
    pub accepted_at: UtcMillis,
    pub status: Status,
    pub ticket: u64,
    /// The lease epoch it was adopted under: its intents and outcomes are written under that
    /// epoch only (a later incarnation of this instance that takes the row over again adopts
    /// it anew, with a new ticket).
    pub epoch: i64,
}

/// What every part of cluster mode shares.
pub struct Inner {
    pub instance: String,
    /// Configured processor names, by index.
    pub names: Vec<String>,
    /// This incarnation's lease epoch; 0 while it holds none (fenced, not yet registered).
    pub epoch: AtomicI64,
    local: std::sync::Mutex<FxHashMap<u128, Held>>,
    next_ticket: AtomicU64,
    queue: WorkQueue,
    generation: watch::Sender<u64>,
    /// The last statement of the writer succeeded (or nothing failed since the lease held).
    writer_ok: AtomicBool,
    /// The lease was renewed within its length (by this process's clock).
    lease_ok: AtomicBool,
    /// The lease task should register a new epoch.
    register: tokio::sync::Notify,
    pub metrics: Option<Arc<Metrics>>,
    pending_max: usize,
    route_at_accept: Option<Arc<Router>>,
    /// A purge is in progress here: acceptances wait for it.
    purging: watch::Sender<bool>,
    /// The highest purge the cluster has finished, as last read.
    purge_done: watch::Sender<i64>,
    pub sends: Arc<SendGate>,
    pub config: ClusterConfig,
    db_log: std::sync::Mutex<crate::logs::LogLimiter>,
    pub takeovers: AtomicU64,
    /// The newest purge this instance has joined.
    pub(crate) purge_joined: AtomicI64,
    /// The newest purge whose books this instance has dropped.
    pub(crate) purge_applied: AtomicI64,
    /// Database sessions open now.
    sessions: Arc<AtomicI64>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u128, Held>> {
        self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a payment this instance now owns under `epoch` and hands it to dispatch.
    /// `accepted`: just accepted (counted as such), not taken over.
    pub fn adopt(&self, epoch: i64, id: CorrelationId, mut held: Held, fresh: bool, accepted: bool) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            // Fenced meanwhile: whoever takes the epoch's payments over forwards it.
            return;
        }
        held.ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        held.epoch = epoch;
        let generation = *self.generation.borrow();
        let pinned = match held.status {
            Status::Sent { processor, requested_at } => Some((processor, requested_at)),
            _ => None,
        };
        let work = Work { id, cents: held.cents, accepted_at: held.accepted_at, ticket: held.ticket, generation, pinned, fresh };
        {
            // Once: a payment already held here (a repeat whose answer was read back after the
            // first was adopted) keeps its work item.
            let mut local = self.lock();
            if local.contains_key(&id.0) {
                return;
            }
            local.insert(id.0, held);
        }
        if accepted { self.queue.push_accepted(work) } else { self.queue.push(work) }
    }

    pub fn mark_sent(&self, work: Work, processor: ProcessorIdx, requested_at: UtcMillis) {
        if let Some(h) = self.lock().get_mut(&work.id.0)
            && h.ticket == work.ticket
        {
            h.status = Status::Sent { processor, requested_at };
        }
    }

    pub fn db_ok(&self) {
        self.writer_ok.store(true, Ordering::Relaxed);
    }

    pub fn db_failed(&self, e: &DbError) {
        self.writer_ok.store(false, Ordering::Relaxed);
        let suppressed = self.db_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).allow();
        if let Some(suppressed) = suppressed {
            tracing::error!(error = %e, suppressed, "database statement failed; payments get 503 until it answers");
        }
    }

    /// Drops every payment held here and voids every work item (a new generation); returns
    /// how many it dropped.
    pub fn drop_held(&self) -> usize {
        let dropped = {
            let mut local = self.lock();
            let n = local.len();
            local.clear();
            n
        };
        self.generation.send_modify(|g| *g += 1);
        dropped
    }

    /// This incarnation's lease is gone (another instance took its payments over): drop every
    /// payment held here and register anew.
    pub fn fenced(&self, epoch: i64) {
        if self.epoch.compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire).is_err() || epoch == 0 {
            return;
        }
        let dropped = self.drop_held();
        self.lease_ok.store(false, Ordering::Relaxed);
        tracing::warn!(epoch, dropped, "this instance's lease was lost; its payments are another's now; registering again");
        self.register.notify_one();
    }

    fn healthy(&self) -> bool {
        self.epoch.load(Ordering::Relaxed) != 0 && self.lease_ok.load(Ordering::Relaxed) && self.writer_ok.load(Ordering::Relaxed)
    }
}

/// The way into cluster mode's books, for the API and dispatch.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<Op>,
    /// The readers' session (lookups, summaries, purges).
    reader: Arc<Db>,
    generation: watch::Receiver<u64>,
}

/// Starts cluster mode: migrations, the lease, the writer and the shared health monitor.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    config: ClusterConfig,
    names: Vec<String>,
    queue: WorkQueue,
    router: Arc<Router>,
    route_at_accept: bool,
    pending_max: usize,
    sends: Arc<SendGate>,
    metrics: Option<Arc<Metrics>>,
) -> Result<(ClusterHandle, Vec<tokio::task::JoinHandle<()>>), String> {
    let started = Instant::now();
    let mut attempt = 0u32;
    let version = loop {
        match db::migrate(&config.database_url).await {
            Ok(v) => break v,
            Err(e) if attempt < START_ATTEMPTS && !e.contains("newer than this binary") => {
                attempt += 1;
                if attempt % 10 == 1 {
                    tracing::warn!(error = %e, "database not ready; retrying");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let open = Arc::new(AtomicI64::new(0));
    let reader = Arc::new(Db::new(&config.database_url, "reader", &config.instance_id, open.clone())?);
    let writer_db = Db::new(&config.database_url, "writer", &config.instance_id, open.clone())?;
    let session = reader.session().await.map_err(|e| e.to_string())?;
    timed(session.client.execute("INSERT INTO paygate_health (processor) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", &[&names]))
        .await
        .map_err(|e| e.to_string())?;
    let (generation, generation_rx) = watch::channel(0);
    let inner = Arc::new(Inner {
        instance: config.instance_id.clone(),
        names,
        epoch: AtomicI64::new(0),
        local: Default::default(),
        next_ticket: AtomicU64::new(1),
        queue,
        generation,
        writer_ok: AtomicBool::new(true),
        lease_ok: AtomicBool::new(false),
        register: tokio::sync::Notify::new(),
        metrics,
        pending_max,
        route_at_accept: route_at_accept.then(|| router.clone()),
        purging: watch::channel(false).0,
        purge_done: watch::channel(0).0,
        sends,
        config: config.clone(),
        db_log: std::sync::Mutex::new(crate::logs::LogLimiter::new(Duration::from_millis(10_000))),
        takeovers: AtomicU64::new(0),
        purge_joined: AtomicI64::new(0),
        purge_applied: AtomicI64::new(0),
        sessions: open.clone(),
    });
    lease::register(&inner, &session).await.map_err(|e| format!("cannot register this instance: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = ClusterHandle { inner: inner.clone(), tx: tx.clone(), reader: reader.clone(), generation: generation_rx };
    let mut tasks = vec![tokio::spawn(writer::run(inner.clone(), writer_db, rx))];
    // Heartbeats on a session of their own: never queued behind a slow lookup or summary.
    let lease_db = Db::new(&config.database_url, "lease", &config.instance_id, open.clone())?;
    tasks.push(tokio::spawn(lease::run(handle.clone(), lease_db)));
    tasks.push(tokio::spawn(health::run(inner.clone(), reader.clone(), router)));
    tracing::info!(
        instance = %config.instance_id,
        epoch = inner.epoch.load(Ordering::Relaxed),
        lease_ms = config.lease.as_millis() as u64,
        schema = version,
        ms = started.elapsed().as_millis() as u64,
        "cluster mode: books in PostgreSQL"
    );
    Ok((handle, tasks))
}

/// Attempts (every 500 ms) to reach the database at start before giving up.
pub const START_ATTEMPTS: u32 = 120;

impl ClusterHandle {
    fn send(&self, op: Op) -> Result<(), Stopped> {
        self.tx.send(op).map_err(|_| Stopped)
    }

    /// Accepts a payment: `Ok` once its row is committed (or was already there with the same
    /// amount, from any instance).
    pub async fn accept(&self, id: CorrelationId, cents: Cents) -> Result<Result<(), AcceptError>, Stopped> {
        let inner = &self.inner;
        // A purge in progress holds acceptances until it is done.
        let mut purging = inner.purging.subscribe();
        if *purging.borrow() {
            let _ = tokio::time::timeout(inner.config.purge_timeout, purging.wait_for(|p| !*p)).await;
        }
        if !inner.healthy() {
            return Ok(Err(AcceptError::Unavailable));
        }
        {
            let local = inner.lock();
            if let Some(h) = local.get(&id.0) {
                return Ok(if h.cents == cents { Ok(()) } else { Err(AcceptError::AmountMismatch) });
            }
            if local.len() >= inner.pending_max {
                return Ok(Err(AcceptError::BacklogFull));
            }
        }
        let routed = inner.route_at_accept.as_ref().is_some_and(|r| r.is_healthy(0));
        let (reply, rx) = oneshot::channel();
        self.send(Op::Accept { id, cents, accepted_at: UtcMillis::now(), routed, reply })?;
        Ok(match rx.await.map_err(|_| Stopped)? {
            Accepted::Inserted => Ok(()),
            Accepted::Existing(c) if c == cents.get() as i64 => Ok(()),
            Accepted::Existing(_) => Err(AcceptError::AmountMismatch),
            Accepted::Unavailable => Err(AcceptError::Unavailable),
        })
    }

    /// The payment, from this instance's memory or the database.
    pub async fn get(&self, id: CorrelationId) -> Result<Result<Option<Payment>, String>, Stopped> {
        if let Some(h) = self.inner.lock().get(&id.0) {
            return Ok(Ok(Some(Payment { cents: h.cents, accepted_at: h.accepted_at, status: h.status, ticket: h.ticket })));
        }
        let rows = match self.reader.read(|st| &st.get, &[&uuid::Uuid::from_u128(id.0)]).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let Some(row) = rows.first() else { return Ok(Ok(None)) };
        let (cents, accepted_at, status): (i64, i64, i16) = (row.get(0), row.get(1), row.get(2));
        let (processor, requested_at): (Option<String>, Option<i64>) = (row.get(3), row.get(4));
        let Some(cents) = u64::try_from(cents).ok().and_then(Cents::new) else {
            return Ok(Err(format!("payment {id} has an invalid amount in the database")));
        };
        let idx = processor.as_deref().and_then(|p| self.inner.names.iter().position(|n| n == p));
        let status = match (status, idx, requested_at) {
            (2, Some(i), Some(at)) => Status::Processed { processor: i as ProcessorIdx, requested_at: UtcMillis(at) },
            (2, None, _) => return Ok(Err(format!("payment {id} was processed by a processor not configured here"))),
            (1, Some(i), Some(at)) => Status::Sent { processor: i as ProcessorIdx, requested_at: UtcMillis(at) },
            _ => Status::Pending,
        };
        Ok(Ok(Some(Payment { cents, accepted_at: UtcMillis(accepted_at), status, ticket: 0 })))
    }

    /// The cluster's totals per configured processor; this instance's own answers are
    /// committed first, so it reads what it has applied.
    pub async fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> Result<Result<Vec<Totals>, String>, Stopped> {
        self.flush().await?;
        let (lo, hi) = (from.map_or(i64::MIN, |f| f.0), to.map_or(i64::MAX, |t| t.0));
        let mut out = vec![Totals::default(); self.inner.names.len()];
        let rows = match self.reader.read(|st| &st.summary, &[&lo, &hi]).await {
            Ok(rows) => rows,
            Err(e) => return Ok(Err(e.to_string())),
        };
        for row in rows {
            let name: Option<String> = row.get(0);
            let Some(i) = name.and_then(|n| self.inner.names.iter().position(|x| *x == n)) else { continue };
            let count: i64 = row.get(1);
            let cents: Option<String> = row.get(2);
            out[i] = Totals { count: count as u64, cents: cents.and_then(|c| c.parse().ok()).unwrap_or(0) };
        }
        Ok(Ok(out))
    }

    pub async fn backlog(&self) -> Result<Backlog, Stopped> {
        let local = self.inner.lock();
        let pending = local.len();
        let oldest = local.values().map(|h| h.accepted_at).min();
        Ok(Backlog { pending, oldest_accepted_at: oldest, hot: pending, hot_capacity: self.inner.pending_max, filter_bytes: 0 })
    }

    pub async fn intent(&self, work: Work, processor: ProcessorIdx, requested_at: UtcMillis) -> Result<(), IntentError> {
        let Some(epoch) = self.current_epoch(work) else {
            return Err(IntentError::Stale);
        };
        let (reply, rx) = oneshot::channel();
        self.send(Op::Intent { work, epoch, processor, requested_at, reply }).map_err(|_| IntentError::Stale)?;
        rx.await.unwrap_or(Err(IntentError::Stale))
    }

    pub async fn settle(&self, work: Work, settled: Settled) {
        let epoch = {
            let mut local = self.inner.lock();
            match local.get_mut(&work.id.0) {
                Some(h) if h.ticket == work.ticket => {
                    let epoch = h.epoch;
                    match settled {
                        Settled::Processed { .. } => {
                            local.remove(&work.id.0);
                        }
                        Settled::Rejected => h.status = Status::Pending,
                    }
                    epoch
                }
                _ => return,
            }
        };
        if let Some(m) = &self.inner.metrics {
            m.settled(work.pinned.map_or(0, |p| usize::from(p.0)), matches!(settled, Settled::Processed { .. }));
        }
        let _ = self.send(Op::Settle { work, epoch, settled, since: Instant::now() });
    }

    /// The epoch `work`'s payment is held under, if `work` is still the item that may act on
    /// it in the state it expects.
    fn current_epoch(&self, work: Work) -> Option<i64> {
        let expected = match work.pinned {
            None => Status::Pending,
            Some((processor, requested_at)) => Status::Sent { processor, requested_at },
        };
        self.inner.lock().get(&work.id.0).filter(|h| h.ticket == work.ticket && h.status == expected).map(|h| h.epoch)
    }

    pub async fn is_current(&self, work: Work) -> bool {
        self.current_epoch(work).is_some()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub async fn purged_since(&self, generation: u64) {
        let mut rx = self.generation.clone();
        let _ = rx.wait_for(|g| *g != generation).await;
    }

    pub fn is_healthy(&self) -> bool {
        self.inner.healthy()
    }

    /// Everything handed to the writer before this is committed (or refused).
    pub async fn flush(&self) -> Result<(), Stopped> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Flush { reply })?;
        rx.await.map_err(|_| Stopped)
    }

    /// Purges the cluster's books: every live instance settles its sends and holds new ones
    /// (and its acceptances), then the payments are deleted in one transaction.
    pub async fn purge(&self) -> Result<Result<(), String>, Stopped> {
        Ok(lease::purge(self).await)
    }

    /// Gives this instance's unsettled payments to the others now (graceful stop).
    pub async fn release(&self) {
        if let Err(e) = lease::release(self).await {
            tracing::warn!(error = %e, "could not release the lease; others take over when it expires");
        }
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn epoch(&self) -> i64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Database sessions open now, and whether the lease is held (for `/metrics`).
    pub fn sessions(&self) -> i64 {
        self.inner.sessions.load(Ordering::Relaxed)
    }

    pub fn lease_held(&self) -> bool {
        self.inner.epoch.load(Ordering::Relaxed) != 0 && self.inner.lease_ok.load(Ordering::Relaxed)
    }

    pub fn takeovers(&self) -> u64 {
        self.inner.takeovers.load(Ordering::Relaxed)
    }
}
