//! The lease: registration, heartbeats, takeover of dead epochs' payments, and the purge
//! handshake between instances.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::db::{Session, timed};
use super::{ClusterHandle, Held, Inner};
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::ledger::Status;
use crate::processor::ProcessorIdx;

/// Payments taken over per statement.
pub const TAKEOVER_CHUNK: i64 = 256;
/// Longest gap between heartbeats (a shorter lease renews more often: four times per lease).
pub const HEARTBEAT_MAX_MS: u64 = 500;

/// How often this instance renews its lease and looks for dead ones.
pub fn heartbeat_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(20), Duration::from_millis(HEARTBEAT_MAX_MS))
}

/// Registers a new incarnation (a fresh epoch) of this instance.
pub async fn register(inner: &Inner, s: &Session) -> Result<i64, super::DbError> {
    let lease_ms = inner.config.lease.as_millis() as i64;
    let row = timed(s.client.query_one(&s.st.register, &[&inner.instance, &lease_ms])).await?;
    // Purges asked for before this incarnation are not ours to join (the lease row says so
    // too: its purge_ack starts at them).
    let (epoch, purge_asked, purge_done): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    inner.purge_joined.fetch_max(purge_asked, Ordering::AcqRel);
    // Purges done before this incarnation emptied nothing it holds.
    inner.purge_applied.fetch_max(purge_done, Ordering::AcqRel);
    inner.epoch.store(epoch, Ordering::Release);
    inner.lease_ok.store(true, Ordering::Relaxed);
    tracing::info!(instance = %inner.instance, epoch, "lease registered");
    Ok(epoch)
}

/// Heartbeats until the process stops: renews the lease (registering again when it was
/// lost), takes over dead epochs' payments, and joins purges.
pub async fn run(handle: ClusterHandle, db: super::Db) {
    let inner = handle.inner.clone();
    let every = heartbeat_every(inner.config.lease);
    let lease_ms = inner.config.lease.as_millis() as i64;
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = inner.register.notified() => {}
        }
        let s = match db.session().await {
            Ok(s) => s,
            Err(e) => {
                lost_contact(&inner, renewed, &e);
                continue;
            }
        };
        let mut epoch = inner.epoch.load(Ordering::Acquire);
        if epoch == 0 {
            match register(&inner, &s).await {
                Ok(e) => {
                    epoch = e;
                    renewed = Instant::now();
                }
                Err(e) => {
                    if e.needs_new_session(&s) {
                        db.reset(&s).await;
                    }
                    lost_contact(&inner, renewed, &e);
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let rows = match timed(s.client.query(&s.st.heartbeat, &[&inner.instance, &epoch, &lease_ms])).await {
            Ok(rows) => rows,
            Err(e) => {
                if e.needs_new_session(&s) {
                    db.reset(&s).await;
                }
                lost_contact(&inner, renewed, &e);
                continue;
            }
        };
        let Some(row) = rows.first() else {
            inner.fenced(epoch);
            continue;
        };
        renewed = sent;
        inner.lease_ok.store(true, Ordering::Relaxed);
        if !inner.writer_ok.load(Ordering::Relaxed) {
            // The database answers again: let acceptances try it.
            inner.writer_ok.store(true, Ordering::Relaxed);
        }
        let (requested, done, orphans): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
        inner.purge_done.send_if_modified(|d| {
            let newer = done > *d;
            *d = (*d).max(done);
            newer
        });
        // A purge finished without us (our part timed out, or we joined too late): drop what
        // we held of the purged books all the same.
        if done > inner.purge_applied.load(Ordering::Acquire) && !*inner.purging.borrow() {
            apply_purge(&inner, done);
        }
        if requested > inner.purge_joined.load(Ordering::Acquire) {
            tokio::spawn(participate(handle.clone(), requested));
        }
        if orphans && let Err(e) = take_over(&inner, &s, epoch).await {
            tracing::warn!(error = %e, "takeover failed; trying again at the next heartbeat");
            if e.needs_new_session(&s) {
                db.reset(&s).await;
            }
        }
    }
}

/// No answer from the database: past the lease's length (by our clock, from the last renewal
/// sent) others may have taken our payments over, so we stop acting on them.
fn lost_contact(inner: &Inner, renewed: Instant, e: &super::DbError) {
    inner.db_failed(e);
    if renewed.elapsed() >= inner.config.lease {
        inner.fenced(inner.epoch.load(Ordering::Acquire));
    }
}

/// Deletes expired leases and takes their epochs' unsettled payments, a chunk at a time.
async fn take_over(inner: &Arc<Inner>, s: &Session, epoch: i64) -> Result<(), super::DbError> {
    for row in timed(s.client.query(&s.st.expire, &[])).await? {
        let (dead, owner): (i64, String) = (row.get(0), row.get(1));
        tracing::warn!(dead_epoch = dead, %owner, "lease expired; taking over its unsettled payments");
    }
    loop {
        let rows = timed(s.client.query(&s.st.takeover, &[&inner.instance, &epoch, &TAKEOVER_CHUNK])).await?;
        let n = rows.len();
        for row in rows {
            let id: uuid::Uuid = row.get(0);
            let (cents, accepted_at, status): (i64, i64, i16) = (row.get(1), row.get(2), row.get(3));
            let (processor, requested_at): (Option<String>, Option<i64>) = (row.get(4), row.get(5));
            let Some(cents) = u64::try_from(cents).ok().and_then(Cents::new) else { continue };
            let idx = processor.as_deref().and_then(|p| inner.names.iter().position(|n| n == p));
            let status = match (status, idx, requested_at) {
                (1, Some(i), Some(at)) => Status::Sent { processor: i as ProcessorIdx, requested_at: UtcMillis(at) },
                (1, None, _) => {
                    // Only that processor can say whether it recorded it; it stays in the
                    // database, ours, until an instance that knows the processor takes it.
                    tracing::error!(id = %CorrelationId(id.as_u128()), processor = ?processor, "taken-over payment pinned to a processor not configured here");
                    continue;
                }
                _ => Status::Pending,
            };
            let held = Held { cents, accepted_at: UtcMillis(accepted_at), status, ticket: 0, epoch };
            inner.adopt(epoch, CorrelationId(id.as_u128()), held, false, false);
        }
        inner.takeovers.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(m) = &inner.metrics {
            m.cluster.takeovers.inc_by(n as u64);
        }
        if n > 0 {
            tracing::info!(payments = n, epoch, "took over payments of a dead instance");
        }
        if (n as i64) < TAKEOVER_CHUNK {
            return Ok(());
        }
    }
}

/// This instance's part in purge `g`: settle every send on the wire and start none, commit
/// what the writer holds, hold acceptances, say so, and wait for the purge to be done.
async fn participate(handle: ClusterHandle, g: i64) {
    let inner = handle.inner.clone();
    // Once per purge, whether the heartbeat or the purging request saw it first.
    if inner.purge_joined.fetch_max(g, Ordering::AcqRel) >= g {
        return;
    }
    let paused = inner.sends.pause().await;
    inner.purging.send_replace(true);
    let _ = handle.flush().await;
    let deadline = Instant::now() + inner.config.purge_timeout;
    let acked = async {
        loop {
            let epoch = inner.epoch.load(Ordering::Acquire);
            if let Ok(s) = handle.reader.session().await
                && timed(s.client.execute(&s.st.purge_ack, &[&inner.instance, &epoch, &g])).await.is_ok()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut done = inner.purge_done.subscribe();
    let finished = acked.await && tokio::time::timeout_at(deadline.into(), done.wait_for(|d| *d >= g)).await.is_ok_and(|r| r.is_ok());
    if finished {
        apply_purge(&inner, g);
    } else {
        tracing::warn!(purge = g, "purge did not finish in time; carrying on with the books as they are");
    }
    inner.purging.send_replace(false);
    drop(paused);
}

/// Drops every payment held here and voids every work item: purge `g` emptied the books.
fn apply_purge(inner: &Inner, g: i64) {
    if inner.purge_applied.fetch_max(g, Ordering::AcqRel) >= g {
        return;
    }
    let dropped = inner.drop_held();
    tracing::info!(purge = g, dropped, "purge applied here");
}

/// Runs a purge from this instance: asks every instance to join, waits for each live one to
/// be ready, then empties the payments in one statement.
pub async fn purge(handle: &ClusterHandle) -> Result<(), String> {
    let inner = &handle.inner;
    let s = handle.reader.session().await.map_err(|e| e.to_string())?;
    let g: i64 = timed(s.client.query_one(&s.st.purge_request, &[])).await.map_err(|e| e.to_string())?.get(0);
    tokio::spawn(participate(handle.clone(), g));
    let deadline = Instant::now() + inner.config.purge_timeout;
    loop {
        let ready: bool = timed(s.client.query_one(&s.st.purge_ready, &[&g])).await.map_err(|e| e.to_string())?.get(0);
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            return Err("not every instance settled its sends in time; nothing was purged".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One statement, so one transaction that cannot be left open on the shared session; a
    // DELETE rather than TRUNCATE, whose exclusive lock would queue every reader (the other
    // instances' heartbeats among them) behind anything reading the table.
    timed(
        s.client
            .execute("WITH gone AS (DELETE FROM paygate_payments) UPDATE paygate_cluster SET purge_done = greatest(purge_done, $1)", &[&g]),
    )
    .await
    .map_err(|e| e.to_string())?;
    inner.purge_done.send_if_modified(|d| {
        let newer = g > *d;
        *d = (*d).max(g);
        newer
    });
    // Answer once this instance applied it too.
    let mut purging = inner.purging.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(5), purging.wait_for(|p| !*p)).await;
    Ok(())
}

/// Hands this incarnation's payments over at once (a graceful stop): deletes its lease, so the
/// next heartbeat of any other instance takes its unsettled payments.
pub async fn release(handle: &ClusterHandle) -> Result<(), super::DbError> {
    let inner = &handle.inner;
    let epoch = inner.epoch.swap(0, Ordering::AcqRel);
    if epoch == 0 {
        return Ok(());
    }
    let s = handle.reader.session().await?;
    timed(s.client.execute("DELETE FROM paygate_leases WHERE epoch = $1 AND owner = $2", &[&epoch, &inner.instance])).await?;
    tracing::info!(epoch, "lease released; other instances take over what was unsettled here");
    Ok(())
}
