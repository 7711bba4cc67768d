//! The batching writer: one task, one statement at a time. Everything that arrives while a
//! statement is in flight goes into the next one, so concurrent acceptances share one
//! statement and one commit; processors' answers wait up to [`LAZY_WINDOW_MS`] to ride along
//! with the next acceptance rather than cost a commit of their own.
//!
//! A statement whose answer never came (connection lost, timeout) may have committed: before
//! any reply, the writer reconnects and reads back every payment the batch touched, so a
//! `202` always stands on a commit and an intent is confirmed only if it is in the database.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustc_hash::FxHashSet;
use tokio::sync::{mpsc, oneshot};

use super::db::{Db, DbError, Session, timed};
use super::{Held, Inner};
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::ledger::{IntentError, Settled, Status, Work};
use crate::processor::ProcessorIdx;

/// Most operations in one statement.
pub const MAX_BATCH: usize = 1_024;
/// Longest a processor's answer waits for an acceptance to share its commit (20 ms measured no
/// better at 500/s: each acceptance commits alone there anyway; perf.md, cluster mode).
pub const LAZY_WINDOW_MS: u64 = 5;
/// First and longest pause between attempts while the database is unreachable.
pub const RETRY_BASE_MS: u64 = 50;
pub const RETRY_CAP_MS: u64 = 2_000;

/// What an acceptance found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Inserted by this statement: committed, and ours to forward.
    Inserted,
    /// Already there, with these cents (a repeat, from any instance).
    Existing(i64),
    /// Not committed (the database refused it, or this instance's lease is gone).
    Unavailable,
}

pub enum Op {
    Accept {
        id: CorrelationId,
        cents: Cents,
        accepted_at: UtcMillis,
        routed: bool,
        reply: oneshot::Sender<Accepted>,
    },
    /// `epoch`: the lease epoch the payment is held under; written under that epoch only.
    Intent {
        work: Work,
        epoch: i64,
        processor: ProcessorIdx,
        requested_at: UtcMillis,
        reply: oneshot::Sender<Result<(), IntentError>>,
    },
    /// `work.pinned` is the send this outcome is for.
    Settle {
        work: Work,
        epoch: i64,
        settled: Settled,
        since: Instant,
    },
    /// Replies once everything queued before it is committed (or refused).
    Flush {
        reply: oneshot::Sender<()>,
    },
}

impl Op {
    fn id(&self) -> Option<u128> {
        match self {
            Op::Accept { id, .. } => Some(id.0),
            Op::Intent { work, .. } | Op::Settle { work, .. } => Some(work.id.0),
            Op::Flush { .. } => None,
        }
    }
}

/// Columns of one statement.
#[derive(Default)]
struct Batch {
    ids: FxHashSet<u128>,
    ops: Vec<Op>,
}

fn uuid(id: CorrelationId) -> uuid::Uuid {
    uuid::Uuid::from_u128(id.0)
}

pub async fn run(inner: Arc<Inner>, db: Db, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut deferred: VecDeque<Op> = VecDeque::new();
    let mut failures = 0u32;
    loop {
        // Wait for work: anything but settles goes at once; settles alone wait their window.
        if deferred.is_empty() {
            match rx.recv().await {
                Some(op) => deferred.push_back(op),
                None => return,
            }
        }
        while let Ok(op) = rx.try_recv() {
            deferred.push_back(op);
        }
        if deferred.iter().all(|op| matches!(op, Op::Settle { .. })) {
            let oldest = deferred.iter().filter_map(|op| if let Op::Settle { since, .. } = op { Some(*since) } else { None }).min();
            let deadline = oldest.map_or_else(Instant::now, |t| t + Duration::from_millis(LAZY_WINDOW_MS));
            let closed = loop {
                tokio::select! {
                    op = rx.recv() => match op {
                        Some(op) => {
                            let urgent = !matches!(op, Op::Settle { .. });
                            deferred.push_back(op);
                            if urgent { break false; }
                        }
                        None => break true,
                    },
                    _ = tokio::time::sleep_until(deadline.into()) => break false,
                }
            };
            if closed && deferred.is_empty() {
                return;
            }
        }
        // One statement: each payment at most once (a later operation on the same payment
        // waits for the next statement, keeping each payment's operations in order).
        let mut batch = Batch::default();
        let mut later: VecDeque<Op> = VecDeque::new();
        let mut later_ids: FxHashSet<u128> = FxHashSet::default();
        while let Some(op) = deferred.pop_front() {
            if batch.ops.len() >= MAX_BATCH {
                later_ids.extend(op.id());
                later.push_back(op);
                continue;
            }
            match op.id() {
                Some(id) if batch.ids.contains(&id) || later_ids.contains(&id) => {
                    later_ids.insert(id);
                    later.push_back(op);
                }
                Some(id) => {
                    batch.ids.insert(id);
                    batch.ops.push(op);
                }
                // A flush answers only after everything before it: behind any deferred op.
                None if !later.is_empty() => later.push_back(op),
                None => batch.ops.push(op),
            }
        }
        deferred = later;
        let epoch = inner.epoch.load(Ordering::Acquire);
        let retry = execute(&inner, &db, epoch, batch.ops).await;
        match retry {
            Ok(()) => failures = 0,
            Err(again) => {
                // Settles kept for the next attempt, in front of anything newer.
                for op in again.into_iter().rev() {
                    deferred.push_front(op);
                }
                failures += 1;
                let ceiling = RETRY_BASE_MS.saturating_mul(1 << failures.min(8)).min(RETRY_CAP_MS);
                tokio::time::sleep(Duration::from_millis(ceiling / 2 + fastrand::u64(0..=ceiling / 2))).await;
            }
        }
    }
}

/// Runs one batch and answers its operations. `Err` returns the settles to try again.
async fn execute(inner: &Arc<Inner>, db: &Db, epoch: i64, ops: Vec<Op>) -> Result<(), Vec<Op>> {
    // Intents and outcomes of payments held under an earlier epoch of ours are void: the row
    // was taken over (perhaps by this instance's new incarnation, which holds it anew).
    let (ops, stale): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(|op| match op {
        Op::Intent { epoch: e, .. } | Op::Settle { epoch: e, .. } => *e == epoch,
        _ => true,
    });
    for op in stale {
        if let Op::Intent { reply, .. } = op {
            let _ = reply.send(Err(IntentError::Stale));
        }
    }
    let session = match db.session().await {
        Ok(s) => s,
        Err(e) => {
            inner.db_failed(&e);
            return Err(refuse(ops));
        }
    };
    let started = Instant::now();
    let result = statement(inner, &session, epoch, &ops).await;
    match result {
        Ok(rows) => {
            inner.db_ok();
            if let Some(m) = &inner.metrics {
                let writes = ops.iter().filter(|op| !matches!(op, Op::Flush { .. })).count();
                if writes > 0 {
                    m.cluster.commit_ops.observe(writes as f64);
                }
                m.cluster.commit_seconds.observe(started.elapsed().as_secs_f64());
            }
            answer(inner, epoch, ops, rows);
            Ok(())
        }
        Err(e) => {
            inner.db_failed(&e);
            if e.needs_new_session(&session) {
                db.reset(&session).await;
            }
            match e {
                DbError::Refused(_) => Err(refuse(ops)),
                DbError::Lost(_) => Err(reread(inner, db, epoch, ops, (session.pid, session.started.clone()), started).await),
            }
        }
    }
}

/// What one statement's rows said.
#[derive(Default)]
struct Rows {
    accepted: rustc_hash::FxHashMap<u128, Accepted>,
    took: FxHashSet<u128>,
    lease_held: bool,
}

async fn statement(inner: &Inner, session: &Session, epoch: i64, ops: &[Op]) -> Result<Rows, DbError> {
    let names = &inner.names;
    let (mut a_id, mut a_cents, mut a_at, mut a_proc, mut a_req) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut i_id, mut i_proc, mut i_req) = (vec![], vec![], vec![]);
    let (mut s_id, mut s_status, mut s_at, mut s_to, mut s_sent) = (vec![], vec![], vec![], vec![], vec![]);
    for op in ops {
        match op {
            Op::Accept { id, cents, accepted_at, routed, .. } => {
                a_id.push(uuid(*id));
                a_cents.push(cents.get() as i64);
                a_at.push(accepted_at.0);
                a_proc.push(routed.then(|| names[0].as_str()));
                a_req.push(routed.then_some(accepted_at.0));
            }
            Op::Intent { work, processor, requested_at, .. } => {
                i_id.push(uuid(work.id));
                i_proc.push(names[usize::from(*processor)].as_str());
                i_req.push(requested_at.0);
            }
            Op::Settle { work, settled, .. } => {
                let (to, sent_at) = work.pinned.expect("a settle names its send");
                s_id.push(uuid(work.id));
                let (status, at) = match settled {
                    Settled::Processed { requested_at } => (2i16, Some(requested_at.0)),
                    Settled::Rejected => (0i16, None),
                };
                s_status.push(status);
                s_at.push(at);
                s_to.push(names[usize::from(to)].as_str());
                s_sent.push(sent_at.0);
            }
            Op::Flush { .. } => {}
        }
    }
    let owner = inner.instance.as_str();
    let mut out = Rows::default();
    if a_id.is_empty() && i_id.is_empty() && s_id.is_empty() {
        out.lease_held = true;
        return Ok(out);
    }
    let rows = timed(session.client.query(
        &session.st.write,
        &[&owner, &epoch, &a_id, &a_cents, &a_at, &a_proc, &a_req, &i_id, &i_proc, &i_req, &s_id, &s_status, &s_at, &s_to, &s_sent],
    ))
    .await?;
    for row in rows {
        let kind: i16 = row.get(0);
        match kind {
            0 => {
                let id: uuid::Uuid = row.get(1);
                let inserted: bool = row.get(2);
                let cents: Option<i64> = row.get(3);
                let a = match (inserted, cents) {
                    (true, _) => Accepted::Inserted,
                    (false, Some(c)) => Accepted::Existing(c),
                    // Not inserted and not seen: fenced, or another instance's insert of the
                    // same id committed after this statement's snapshot (read it back below).
                    (false, None) => Accepted::Unavailable,
                };
                out.accepted.insert(id.as_u128(), a);
            }
            1 | 2 => {
                let id: uuid::Uuid = row.get(1);
                out.took.insert(id.as_u128());
            }
            _ => out.lease_held = row.get(2),
        }
    }
    // A repeat that raced another instance's insert: read the row that won.
    let unseen: Vec<uuid::Uuid> =
        out.accepted.iter().filter(|(_, a)| **a == Accepted::Unavailable).map(|(id, _)| uuid::Uuid::from_u128(*id)).collect();
    // The batch has committed by now: a failure of this read must not fail it (those repeats
    // get 503 and their clients ask again).
    if !unseen.is_empty() {
        match timed(session.client.query(&session.st.reread, &[&unseen])).await {
            Ok(rows) => {
                for row in rows {
                    let id: uuid::Uuid = row.get(0);
                    out.accepted.insert(id.as_u128(), Accepted::Existing(row.get(1)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, payments = unseen.len(), "could not read back repeats that raced another instance; they get 503")
            }
        }
    }
    Ok(out)
}

/// Replies to every operation of a batch the database ran.
fn answer(inner: &Arc<Inner>, epoch: i64, ops: Vec<Op>, rows: Rows) {
    if !rows.lease_held {
        inner.fenced(epoch);
    }
    for op in ops {
        match op {
            Op::Accept { id, cents, accepted_at, routed, reply } => {
                let a = rows.accepted.get(&id.0).copied().unwrap_or(Accepted::Unavailable);
                if a == Accepted::Inserted {
                    let pinned = routed.then_some((0, accepted_at));
                    inner.adopt(epoch, id, Held { cents, accepted_at, status: to_status(pinned), ticket: 0, epoch }, routed, true);
                }
                let _ = reply.send(a);
            }
            Op::Intent { work, processor, requested_at, reply, .. } => {
                // Not taken: no longer pending under our epoch (purged, taken over, fenced).
                let r = if rows.took.contains(&work.id.0) {
                    inner.mark_sent(work, processor, requested_at);
                    Ok(())
                } else {
                    Err(IntentError::Stale)
                };
                let _ = reply.send(r);
            }
            // A settle that did not take found its payment purged or taken over; the new
            // owner resolves it on the same processor.
            Op::Settle { .. } => {}
            Op::Flush { reply } => {
                let _ = reply.send(());
            }
        }
    }
}

fn to_status(pinned: Option<(ProcessorIdx, UtcMillis)>) -> Status {
    match pinned {
        Some((processor, requested_at)) => Status::Sent { processor, requested_at },
        None => Status::Pending,
    }
}

/// The statement did not commit: acceptances and intents are refused (the client and
/// dispatch retry), settles are kept.
fn refuse(ops: Vec<Op>) -> Vec<Op> {
    let mut keep = Vec::new();
    for op in ops {
        match op {
            Op::Accept { reply, .. } => {
                let _ = reply.send(Accepted::Unavailable);
            }
            Op::Intent { reply, .. } => {
                let _ = reply.send(Err(IntentError::Unavailable));
            }
            Op::Settle { .. } => keep.push(op),
            Op::Flush { reply } => {
                let _ = reply.send(());
            }
        }
    }
    keep
}

/// A payment's row as read back: cents, status, processor, requested_at, epoch, accepted_at.
type RowState = (i64, i16, Option<String>, Option<i64>, i64, i64);

/// The answer was lost: reconnect (with backoff) and read back every payment the batch
/// touched before answering anything.
async fn reread(inner: &Arc<Inner>, db: &Db, epoch: i64, ops: Vec<Op>, old: (i32, String), lost_at: Instant) -> Vec<Op> {
    let ids: Vec<uuid::Uuid> =
        ops.iter().filter(|op| !matches!(op, Op::Settle { .. })).filter_map(|op| op.id().map(uuid::Uuid::from_u128)).collect();
    if ids.is_empty() {
        return refuse(ops);
    }
    let mut attempt = 0u32;
    let found = loop {
        // The lost statement may still be running on its server process, and commit after a
        // read that did not see it: it must end first.
        let got = match db.session().await {
            Ok(s) => match super::db::await_ended(&s, old.0, &old.1, lost_at).await {
                Ok(()) => timed(s.client.query(&s.st.reread, &[&ids])).await.map(|rows| (s, rows)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match got {
            Ok((_, rows)) => break rows,
            Err(e) => {
                attempt += 1;
                if attempt % 20 == 1 {
                    tracing::warn!(error = %e, payments = ids.len(), "commit outcome unknown; reading it back once the database answers");
                }
                let ceiling = RETRY_BASE_MS.saturating_mul(1 << attempt.min(8)).min(RETRY_CAP_MS);
                tokio::time::sleep(Duration::from_millis(ceiling / 2 + fastrand::u64(0..=ceiling / 2))).await;
            }
        }
    };
    tracing::info!(payments = ids.len(), attempts = attempt + 1, "commit outcome was unknown; read back from the database");
    let mut rows: rustc_hash::FxHashMap<u128, RowState> = Default::default();
    for r in found {
        let id: uuid::Uuid = r.get(0);
        rows.insert(id.as_u128(), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)));
    }
    let mut keep = Vec::new();
    for op in ops {
        match op {
            Op::Accept { id, cents, accepted_at, routed, reply } => {
                let a = match rows.get(&id.0) {
                    // Ours (our epoch): the insert committed.
                    Some((c, _, _, _, e, at)) if *e == epoch && *c == cents.get() as i64 && *at == accepted_at.0 => {
                        let pinned = routed.then_some((0, accepted_at));
                        inner.adopt(epoch, id, Held { cents, accepted_at, status: to_status(pinned), ticket: 0, epoch }, routed, true);
                        Accepted::Inserted
                    }
                    Some((c, ..)) => Accepted::Existing(*c),
                    None => Accepted::Unavailable,
                };
                let _ = reply.send(a);
            }
            Op::Intent { work, processor, requested_at, reply, .. } => {
                let name = inner.names[usize::from(processor)].as_str();
                let took = rows.get(&work.id.0).is_some_and(|(_, status, p, at, e, _)| {
                    *e == epoch && *status == 1 && p.as_deref() == Some(name) && *at == Some(requested_at.0)
                });
                let r = if took {
                    inner.mark_sent(work, processor, requested_at);
                    Ok(())
                } else {
                    Err(IntentError::Unavailable)
                };
                let _ = reply.send(r);
            }
            Op::Settle { .. } => keep.push(op),
            Op::Flush { reply } => {
                let _ = reply.send(());
            }
        }
    }
    keep
}

/// Sessions connected now, for the pool gauge.
pub fn open_sessions(db: &Db) -> i64 {
    db.open.load(Ordering::Relaxed)
}
