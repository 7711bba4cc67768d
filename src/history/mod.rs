//! History: every settled payment, on disk and indexed, so that the ledger's memory holds only
//! what the hot path needs (see `ledger`'s hot set).
//!
//! An embedded redb database (`history.redb` in the data directory; perf.md says why redb)
//! with four tables: payments by id (idempotency and `GET /payments/{id}` for any age), the
//! processed totals per processor and millisecond (the exact edges of a summary window), the
//! same per second, and the processor names its indices refer to. The per-second totals are
//! also held in memory, so a summary over any span is a range sum in memory plus at most two
//! partial seconds read from disk: memory grows with the seconds that saw payments, not with
//! payments.
//!
//! One writer thread owns every write. The ledger hands it each processed payment as it is
//! applied, numbered in order; the writer counts it at once in its summary (so the summary
//! is exact whether or not the batch is on disk yet), commits batches (one durable redb
//! commit per [`BATCH_WINDOW_MS`] or [`BATCH_MAX`] payments, off the request path: the
//! journal stays the one synced write before a `202`), and then publishes the number of the
//! last payment it holds durably. Only then may the ledger forget a payment. Summaries pass
//! through the same channel, so they see every payment the ledger applied before them.
//! Reads by id run on any thread (redb's readers never wait for the writer).

pub mod filter;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{oneshot, watch};

use self::filter::IdFilter;
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::ledger::summary::{SummaryIndex, Totals};
use crate::ledger::{Payment, State, Status};
use crate::processor::ProcessorIdx;

/// id → cents 8, accepted_at 8, processor 1 (history's numbering), requested_at 8.
const PAYMENTS: TableDefinition<u128, &[u8; ENTRY_BYTES]> = TableDefinition::new("payments");
/// (processor, millisecond) → count 8, cents 16.
const SUMMARY_MS: TableDefinition<(u8, i64), &[u8; TOTALS_BYTES]> = TableDefinition::new("summary_ms");
/// (processor, second) → count 8, cents 16.
const SUMMARY_S: TableDefinition<(u8, i64), &[u8; TOTALS_BYTES]> = TableDefinition::new("summary_s");
/// History's processor number → name.
const NAMES: TableDefinition<u8, &str> = TableDefinition::new("processors");
/// `commit` → the number of the last batch committed (see `Writer::summary`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const ENTRY_BYTES: usize = 25;
const TOTALS_BYTES: usize = 24;

/// The history file in the data directory.
pub const FILE_NAME: &str = "history.redb";
/// Most payments in one commit.
pub const BATCH_MAX: usize = 4_096;
/// Longest a payment waits for its batch's commit.
pub const BATCH_WINDOW_MS: u64 = 100;
/// How often the writer looks for the committer's answer while a batch is out.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(1);
/// Wait before retrying a commit the disk refused.
pub const RETRY_MS: u64 = 1_000;
/// redb's own page cache. Reads miss it into the OS page cache; a small cache keeps the
/// gateway's memory flat however large the history grows.
pub const CACHE_BYTES: usize = 16 << 20;

/// A processed payment as the history keeps it. `processor` is the ledger's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: CorrelationId,
    pub cents: Cents,
    pub accepted_at: UtcMillis,
    pub processor: ProcessorIdx,
    pub requested_at: UtcMillis,
    /// The history may hold it already: the payment was recovered from disk (at start or
    /// after a journal repair), so it may have reached the history before its answer's
    /// journal record was lost. The writer checks only these at receipt.
    pub maybe_known: bool,
}

impl Entry {
    /// The entry of a processed payment; `None` for any other status.
    pub fn of(id: CorrelationId, p: &Payment) -> Option<Entry> {
        match p.status {
            Status::Processed { processor, requested_at } => {
                Some(Entry { id, cents: p.cents, accepted_at: p.accepted_at, processor, requested_at, maybe_known: true })
            }
            _ => None,
        }
    }

    /// The payment as `GET /payments/{id}` shows it.
    pub fn payment(&self) -> Payment {
        Payment {
            cents: self.cents,
            accepted_at: self.accepted_at,
            status: Status::Processed { processor: self.processor, requested_at: self.requested_at },
            ticket: 0,
        }
    }
}

fn totals_bytes(t: Totals) -> [u8; TOTALS_BYTES] {
    let mut out = [0u8; TOTALS_BYTES];
    out[..8].copy_from_slice(&t.count.to_le_bytes());
    out[8..].copy_from_slice(&t.cents.to_le_bytes());
    out
}

fn totals_of(b: &[u8; TOTALS_BYTES]) -> Totals {
    Totals { count: u64::from_le_bytes(b[..8].try_into().expect("8")), cents: u128::from_le_bytes(b[8..].try_into().expect("16")) }
}

fn one(cents: Cents) -> Totals {
    Totals { count: 1, cents: u128::from(cents.get()) }
}

fn second_of(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

type DbResult<T> = Result<T, String>;

fn db_err(e: impl std::fmt::Display) -> String {
    format!("history: {e}")
}

/// Processor numbering between the ledger's state and the history file.
#[derive(Clone, Debug)]
struct Names {
    /// ledger index → history index
    to_history: Vec<u8>,
    /// history index → ledger index
    to_ledger: Vec<ProcessorIdx>,
}

/// The shared, read-only side of the history, and the way to its writer.
#[derive(Clone)]
pub struct History {
    /// Taken by [`History::close`], so that the file (and redb's lock on it) is released at a
    /// known point, whatever clones of this handle still exist.
    db: Arc<std::sync::RwLock<Option<Arc<Database>>>>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    names: Arc<Names>,
    tx: mpsc::Sender<Msg>,
    /// The number of the last payment held durably (see the module's docs).
    pub confirmed: watch::Receiver<u64>,
}

enum Msg {
    Settled {
        seq: u64,
        entry: Entry,
    },
    Summary {
        from: Option<UtcMillis>,
        to: Option<UtcMillis>,
        reply: oneshot::Sender<Vec<Totals>>,
    },
    /// Empties the history durably; payments handed over after it are dropped until `Resume`
    /// (they belong to the books being purged).
    Purge {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Resume,
    Flush {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Commit what is held and stop.
    Stop,
}

/// The id filter a thread is building at open.
pub struct PendingFilter {
    rx: Option<oneshot::Receiver<IdFilter>>,
    /// Kept by [`PendingFilter::may_contain`] once it waited.
    built: Option<IdFilter>,
}

impl PendingFilter {
    /// The filter, if it is built (never blocks); `None` again after it was taken once.
    pub fn try_take(&mut self) -> Option<IdFilter> {
        let f = self.rx.as_mut()?.try_recv().ok()?;
        self.rx = None;
        Some(f)
    }

    /// Waits for the filter (for tools and tests; never on a runtime's thread). Whether `id`
    /// may be in the history; true when the filter could not be built.
    pub fn may_contain(&mut self, id: u128) -> bool {
        if let Some(rx) = self.rx.take() {
            self.built = rx.blocking_recv().ok();
        }
        self.built.as_ref().is_none_or(|f| f.may_contain(id))
    }
}

/// What opening the history found.
pub struct Opened {
    pub history: History,
    /// Every id in the history (and of the payments absorbed at open), built by a thread of
    /// its own from the history as it was at open: the gateway serves meanwhile.
    pub filter: PendingFilter,
    /// Payments in the history.
    pub len: u64,
    /// Processed payments moved from the recovered state into the history.
    pub absorbed: usize,
}

impl History {
    /// Opens (or creates) the history in `dir`, moves the processed payments of `state` (what
    /// recovery replayed) into it — those already there are skipped, so a restart after a
    /// crash at any point neither loses nor counts twice — and starts its writer. Processor
    /// names only the history knows are added to `state`.
    pub fn open(dir: &Path, state: &mut State) -> DbResult<Opened> {
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(dir.join(FILE_NAME)).map_err(db_err)?;
        let names = map_names(&db, state)?;
        let processed = state.take_processed();
        let absorbed = processed.len();
        let entries: Vec<Entry> = processed.iter().filter_map(|(id, p)| Entry::of(*id, p)).collect();
        if !entries.is_empty() {
            let txn = db.begin_write().map_err(db_err)?;
            write_batch(&txn, &names, &entries)?;
            txn.commit().map_err(db_err)?;
        }
        let read = db.begin_read().map_err(db_err)?;
        let payments = read.open_table(PAYMENTS).map_err(db_err)?;
        let len = payments.len().map_err(db_err)?;
        // Scanning every id takes about a second per ten million (perf.md): not on the start's
        // critical path. Until the filter arrives the ledger reads the history for every id
        // it does not hold (correct, one disk read more per new payment) and keeps the ids it
        // evicts meanwhile for the filter.
        let (filter_tx, filter_rx) = oneshot::channel();
        let filter = PendingFilter { rx: Some(filter_rx), built: None };
        std::thread::Builder::new()
            .name("history-filter".into())
            .spawn(move || {
                let started = Instant::now();
                let mut filter = IdFilter::with_capacity((len as usize).saturating_mul(5) / 4);
                let scanned = payments.iter().map_err(db_err).and_then(|rows| {
                    for row in rows {
                        filter.insert(row.map_err(db_err)?.0.value());
                    }
                    Ok(())
                });
                match scanned {
                    Ok(()) => {
                        tracing::info!(
                            ids = filter.len(),
                            bytes = filter.bytes(),
                            ms = started.elapsed().as_millis() as u64,
                            "history id filter built"
                        );
                        let _ = filter_tx.send(filter);
                    }
                    // Without a filter the ledger keeps reading the history for every new id.
                    Err(e) => tracing::error!(error = %e, "cannot build the history's id filter; every new id is looked up on disk"),
                }
            })
            .map_err(db_err)?;
        let mut seconds = vec![SummaryIndex::new(); names.to_ledger.len()];
        for row in read.open_table(SUMMARY_S).map_err(db_err)?.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (p, s) = k.value();
            if let Some(index) = seconds.get_mut(usize::from(p)) {
                index.add_totals(UtcMillis(s), totals_of(v.value()));
            }
        }
        let commits = last_commit(&read)?;
        drop(read);
        let db = Arc::new(db);
        let names = Arc::new(names);
        let (tx, rx) = mpsc::channel();
        let (confirmed_tx, confirmed) = watch::channel(0);
        let (to_committer, committer_rx) = mpsc::channel::<(u64, Arc<Vec<Entry>>)>();
        let (committer_tx, from_committer) = mpsc::channel();
        {
            let (db, names) = (db.clone(), names.clone());
            std::thread::Builder::new()
                .name("history-commit".into())
                .spawn(move || {
                    for (no, entries) in committer_rx {
                        let _ = committer_tx.send((no, commit_batch(&db, &names, no, &entries)));
                    }
                })
                .map_err(db_err)?;
        }
        let writer = Writer {
            db: db.clone(),
            names: names.clone(),
            seconds,
            pending: Vec::with_capacity(BATCH_MAX),
            pending_ids: std::collections::HashSet::with_capacity(2 * BATCH_MAX),
            in_flight: None,
            commits,
            to_committer,
            from_committer,
            received: 0,
            confirmed: confirmed_tx,
            dropping: false,
            stopping: false,
        };
        let writer = std::thread::Builder::new().name("history-writer".into()).spawn(move || writer.run(rx)).map_err(db_err)?;
        let history = History {
            db: Arc::new(std::sync::RwLock::new(Some(db))),
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
            names,
            tx,
            confirmed,
        };
        Ok(Opened { history, filter, len, absorbed })
    }

    /// Commits what the writer holds, stops it and closes the file (a gateway that stops, or
    /// refuses to start, releases its data directory for the next one in the same process).
    /// Reads after it fail.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(w) = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = w.join();
        }
        let db = self.db.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(mut db) = db {
            // A read in flight holds its own reference for a moment.
            for _ in 0..1_000 {
                match Arc::try_unwrap(db) {
                    Ok(db) => return drop(db),
                    Err(shared) => db = shared,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            tracing::warn!("history still in use after close");
        }
    }

    fn db(&self) -> DbResult<Arc<Database>> {
        self.db.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone().ok_or_else(|| "history is closed".to_string())
    }

    /// Hands over payment number `seq` (numbers increase by one from 1 in each process).
    pub fn settled(&self, seq: u64, entry: Entry) {
        let _ = self.tx.send(Msg::Settled { seq, entry });
    }

    /// Sends a summary request in order after every payment handed over before it.
    pub fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>, reply: oneshot::Sender<Vec<Totals>>) {
        let _ = self.tx.send(Msg::Summary { from, to, reply });
    }

    pub fn purge(&self, reply: oneshot::Sender<Result<(), String>>) {
        let _ = self.tx.send(Msg::Purge { reply });
    }

    pub fn resume(&self) {
        let _ = self.tx.send(Msg::Resume);
    }

    /// Commits what the writer holds now.
    pub async fn flush(&self) -> DbResult<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Flush { reply }).map_err(|_| "history writer stopped".to_string())?;
        rx.await.map_err(|_| "history writer stopped".to_string())?
    }

    /// Bytes in redb's own page cache now (at most [`CACHE_BYTES`]).
    pub fn cache_bytes(&self) -> usize {
        self.db().map_or(0, |db| db.cache_stats().used_bytes())
    }

    /// [`History::flush`] for a thread outside the runtime (the compactor).
    pub fn flush_blocking(&self) -> DbResult<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Flush { reply }).map_err(|_| "history writer stopped".to_string())?;
        rx.blocking_recv().map_err(|_| "history writer stopped".to_string())?
    }

    /// The payment `id` as the history holds it (a disk read: call it off the ledger's task).
    pub fn get(&self, id: CorrelationId) -> DbResult<Option<Entry>> {
        let read = self.db()?.begin_read().map_err(db_err)?;
        let table = match read.open_table(PAYMENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let Some(v) = table.get(id.0).map_err(db_err)? else { return Ok(None) };
        Ok(Some(decode_entry(id, v.value(), &self.names)?))
    }

    /// Whether the history holds `id` durably.
    pub fn contains(&self, id: CorrelationId) -> DbResult<bool> {
        Ok(self.get(id)?.is_some())
    }
}

/// Writes `entries` straight into the history of `dir` (no gateway running), in transactions
/// of `batch`, skipping ids already there; returns how many were new. For fixtures and
/// benchmarks: a history of millions of payments without sending them over HTTP. `names` are
/// the processors the entries' indices refer to.
pub fn import(dir: &Path, names: &[String], entries: impl IntoIterator<Item = Entry>, batch: usize) -> DbResult<u64> {
    std::fs::create_dir_all(dir).map_err(db_err)?;
    let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(dir.join(FILE_NAME)).map_err(db_err)?;
    let mut state = State::new(names);
    let names = map_names(&db, &mut state)?;
    let mut written = 0u64;
    let mut chunk = Vec::with_capacity(batch.max(1));
    let mut flush = |chunk: &mut Vec<Entry>| -> DbResult<()> {
        let txn = db.begin_write().map_err(db_err)?;
        written += write_batch(&txn, &names, chunk)?.len() as u64;
        txn.commit().map_err(db_err)?;
        chunk.clear();
        Ok(())
    };
    for e in entries {
        chunk.push(e);
        if chunk.len() >= batch.max(1) {
            flush(&mut chunk)?;
        }
    }
    if !chunk.is_empty() {
        flush(&mut chunk)?;
    }
    Ok(written)
}

fn map_names(db: &Database, state: &mut State) -> DbResult<Names> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut stored: Vec<String> = Vec::new();
    {
        let mut t = txn.open_table(NAMES).map_err(db_err)?;
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if usize::from(k.value()) != stored.len() {
                return Err("history: processor table has a gap".into());
            }
            stored.push(v.value().to_string());
        }
        for name in state.names().to_vec() {
            if !stored.contains(&name) {
                let idx = u8::try_from(stored.len()).map_err(|_| "history: more than 255 processors")?;
                t.insert(idx, name.as_str()).map_err(db_err)?;
                stored.push(name);
            }
        }
        // Create the other tables, so readers find them.
        txn.open_table(PAYMENTS).map_err(db_err)?;
        txn.open_table(SUMMARY_MS).map_err(db_err)?;
        txn.open_table(SUMMARY_S).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    let mut to_ledger = Vec::with_capacity(stored.len());
    for name in &stored {
        to_ledger.push(state.processor_index(name).ok_or("more than 255 processors")?);
    }
    let mut to_history = vec![0u8; state.names().len()];
    for (h, &l) in to_ledger.iter().enumerate() {
        to_history[usize::from(l)] = h as u8;
    }
    Ok(Names { to_history, to_ledger })
}

fn last_commit(read: &redb::ReadTransaction) -> DbResult<u64> {
    match read.open_table(META) {
        Ok(t) => Ok(t.get("commit").map_err(db_err)?.map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(db_err(e)),
    }
}

/// One durable commit of a batch, numbered `no` (the number is stored with it).
fn commit_batch(db: &Database, names: &Names, no: u64, entries: &[Entry]) -> DbResult<()> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    write_batch(&txn, names, entries)?;
    txn.open_table(META).map_err(db_err)?.insert("commit", no).map_err(db_err)?;
    txn.commit().map_err(db_err)
}

fn encode_entry(e: &Entry, names: &Names) -> [u8; ENTRY_BYTES] {
    let mut out = [0u8; ENTRY_BYTES];
    out[..8].copy_from_slice(&e.cents.get().to_le_bytes());
    out[8..16].copy_from_slice(&e.accepted_at.0.to_le_bytes());
    out[16] = names.to_history[usize::from(e.processor)];
    out[17..].copy_from_slice(&e.requested_at.0.to_le_bytes());
    out
}

fn decode_entry(id: CorrelationId, b: &[u8; ENTRY_BYTES], names: &Names) -> DbResult<Entry> {
    let cents = Cents::new(u64::from_le_bytes(b[..8].try_into().expect("8"))).ok_or("history: amount out of range")?;
    let processor = *names.to_ledger.get(usize::from(b[16])).ok_or("history: unknown processor")?;
    Ok(Entry {
        id,
        cents,
        accepted_at: UtcMillis(i64::from_le_bytes(b[8..16].try_into().expect("8"))),
        processor,
        requested_at: UtcMillis(i64::from_le_bytes(b[17..].try_into().expect("8"))),
        maybe_known: true,
    })
}

/// Writes `entries` and adds those that were new to the per-millisecond and per-second
/// totals (an id stored already is written again with the same facts and not counted twice:
/// one B-tree operation per entry, not a lookup and an insert). Returns the new ones.
fn write_batch(txn: &redb::WriteTransaction, names: &Names, entries: &[Entry]) -> DbResult<Vec<Entry>> {
    let mut fresh = Vec::with_capacity(entries.len());
    {
        let mut payments = txn.open_table(PAYMENTS).map_err(db_err)?;
        for e in entries {
            if payments.insert(e.id.0, &encode_entry(e, names)).map_err(db_err)?.is_none() {
                fresh.push(*e);
            }
        }
    }
    let mut ms: Vec<((u8, i64), Totals)> =
        fresh.iter().map(|e| ((names.to_history[usize::from(e.processor)], e.requested_at.0), one(e.cents))).collect();
    for (table, key_of) in [(SUMMARY_MS, (|ms| ms) as fn(i64) -> i64), (SUMMARY_S, second_of as fn(i64) -> i64)] {
        let mut deltas: Vec<((u8, i64), Totals)> = ms.iter().map(|&((p, at), t)| ((p, key_of(at)), t)).collect();
        deltas.sort_unstable_by_key(|(k, _)| *k);
        deltas.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 = a.1.plus(b.1);
                true
            } else {
                false
            }
        });
        let mut t = txn.open_table(table).map_err(db_err)?;
        for (k, delta) in deltas {
            let old = t.get(k).map_err(db_err)?.map_or(Totals::default(), |v| totals_of(v.value()));
            t.insert(k, &totals_bytes(old.plus(delta))).map_err(db_err)?;
        }
    }
    ms.clear();
    Ok(fresh)
}

struct Writer {
    db: Arc<Database>,
    names: Arc<Names>,
    /// Per history processor: totals by second (the key is a second, not a millisecond),
    /// of everything received, committed or not.
    seconds: Vec<SummaryIndex>,
    /// Received, counted, not yet handed to the committer.
    pending: Vec<Entry>,
    /// The ids of `pending` and `in_flight`.
    pending_ids: std::collections::HashSet<u128>,
    /// The batch the committer thread is writing: its number, its entries, and the number of
    /// the last payment received when it left. Commits run on their own thread so that a
    /// summary (answered here) never waits for a sync.
    in_flight: Option<(u64, Arc<Vec<Entry>>, u64)>,
    /// The number of the last batch handed to the committer.
    commits: u64,
    to_committer: mpsc::Sender<(u64, Arc<Vec<Entry>>)>,
    from_committer: mpsc::Receiver<(u64, DbResult<()>)>,
    /// The number of the last payment received.
    received: u64,
    confirmed: watch::Sender<u64>,
    dropping: bool,
    stopping: bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        // When the pending batch is due; after a failed commit, when to try again.
        let mut due: Option<Instant> = None;
        let mut failing = false;
        loop {
            // While a batch is out, look for its result every millisecond or so.
            let wait = match (due, self.in_flight.is_some()) {
                (None, false) => None,
                (Some(at), false) => Some(at.saturating_duration_since(Instant::now())),
                (at, true) => Some(at.map_or(IN_FLIGHT_POLL, |at| at.saturating_duration_since(Instant::now()).min(IN_FLIGHT_POLL))),
            };
            let msg = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d),
            };
            let disconnected = match msg {
                Ok(msg) => {
                    self.handle(msg);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while let Ok((no, result)) = self.from_committer.try_recv() {
                if let Err(e) = self.finished(no, result) {
                    tracing::error!(error = %e, pending = self.pending.len(), "history commit failed; payments stay in memory and it is retried");
                    failing = true;
                    due = Some(Instant::now() + Duration::from_millis(RETRY_MS));
                }
            }
            if disconnected || self.stopping {
                if let Err(e) = self.commit() {
                    tracing::warn!(error = %e, "last history commit failed; the next start redoes it from the journal");
                }
                return;
            }
            if self.pending.is_empty() {
                if self.in_flight.is_none() {
                    due = None;
                    self.confirm(self.received);
                }
            } else if self.in_flight.is_none()
                && ((self.pending.len() >= BATCH_MAX && !failing) || due.is_some_and(|d| Instant::now() >= d))
            {
                failing = false;
                due = None;
                self.send_batch();
            } else if due.is_none() {
                due = Some(Instant::now() + Duration::from_millis(BATCH_WINDOW_MS));
            }
        }
    }

    fn confirm(&self, upto: u64) {
        self.confirmed.send_if_modified(|c| std::mem::replace(c, upto) != upto);
    }

    /// Hands the pending batch to the committer.
    fn send_batch(&mut self) {
        debug_assert!(self.in_flight.is_none());
        if self.pending.is_empty() {
            return;
        }
        self.commits += 1;
        let batch = Arc::new(std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_MAX)));
        self.in_flight = Some((self.commits, batch.clone(), self.received));
        if self.to_committer.send((self.commits, batch)).is_err() {
            tracing::error!("history committer stopped");
        }
    }

    /// The committer's answer for batch `no`: confirmed, or back in front of the pending ones.
    fn finished(&mut self, no: u64, result: DbResult<()>) -> DbResult<()> {
        let Some((flying, batch, upto)) = self.in_flight.take() else { return Ok(()) };
        debug_assert_eq!(flying, no);
        match result {
            Ok(()) => {
                for e in batch.iter() {
                    self.pending_ids.remove(&e.id.0);
                }
                self.confirm(upto);
                Ok(())
            }
            Err(e) => {
                let mut again = Arc::unwrap_or_clone(batch);
                again.append(&mut self.pending);
                self.pending = again;
                Err(e)
            }
        }
    }

    /// Waits for the batch in flight, if any, and returns its result.
    fn settle_in_flight(&mut self) -> DbResult<()> {
        let Some((no, ..)) = self.in_flight else { return Ok(()) };
        match self.from_committer.recv() {
            Ok((done, result)) => {
                debug_assert_eq!(done, no);
                self.finished(done, result)
            }
            Err(_) => {
                self.in_flight = None;
                Err("history committer stopped".into())
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Settled { seq, entry } => {
                self.received = seq;
                if self.dropping || self.pending_ids.contains(&entry.id.0) || (entry.maybe_known && self.known(entry.id)) {
                    return;
                }
                let p = self.names.to_history[usize::from(entry.processor)];
                self.seconds[usize::from(p)].add_totals(UtcMillis(second_of(entry.requested_at.0)), one(entry.cents));
                self.pending_ids.insert(entry.id.0);
                self.pending.push(entry);
            }
            Msg::Summary { from, to, reply } => {
                let totals = self.summary(from, to).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "history summary read failed");
                    Vec::new()
                });
                let _ = reply.send(totals);
            }
            Msg::Purge { reply } => {
                let result = self.purge();
                self.dropping = result.is_ok();
                let _ = reply.send(result);
            }
            Msg::Resume => self.dropping = false,
            Msg::Flush { reply } => {
                let _ = reply.send(self.commit());
            }
            Msg::Stop => self.stopping = true,
        }
    }

    /// Whether the file holds `id` already (a payment recovered from the journal, or resolved
    /// again after a journal repair, may be handed over twice). A failed read counts it as
    /// new; the commit skips it then if it is there, so the file's totals stay exact.
    fn known(&self, id: CorrelationId) -> bool {
        let read = || -> DbResult<bool> {
            let r = self.db.begin_read().map_err(db_err)?;
            let t = r.open_table(PAYMENTS).map_err(db_err)?;
            Ok(t.get(id.0).map_err(db_err)?.is_some())
        };
        read().unwrap_or_else(|e| {
            tracing::error!(error = %e, "history read failed");
            false
        })
    }

    /// Commits everything received, and waits for it.
    fn commit(&mut self) -> DbResult<()> {
        self.settle_in_flight()?;
        self.send_batch();
        self.settle_in_flight()?;
        self.confirm(self.received);
        Ok(())
    }

    fn purge(&mut self) -> DbResult<()> {
        // A batch still being written would land after the purge otherwise.
        let _ = self.settle_in_flight();
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        for table in [SUMMARY_MS, SUMMARY_S] {
            txn.delete_table(table).map_err(db_err)?;
            txn.open_table(table).map_err(db_err)?;
        }
        txn.delete_table(PAYMENTS).map_err(db_err)?;
        txn.open_table(PAYMENTS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        self.pending.clear();
        self.pending_ids.clear();
        self.in_flight = None;
        self.seconds.iter_mut().for_each(SummaryIndex::clear);
        Ok(())
    }

    /// Per ledger processor: processed payments with `from <= requestedAt <= to`. Whole seconds
    /// come from memory; the partial seconds at either end from the per-millisecond totals on
    /// disk and the payments not yet committed.
    fn summary(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> DbResult<Vec<Totals>> {
        let mut out = vec![Totals::default(); self.names.to_history.len()];
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Ok(out);
        }
        // Whole seconds inside the window, and the partial ones at its ends.
        let (from_ms, to_ms) = (from.map(|f| i128::from(f.0)), to.map(|t| i128::from(t.0)));
        let lo_full = from_ms.map(|f| (f + 999).div_euclid(1000));
        let hi_full = to_ms.map(|t| (t + 1).div_euclid(1000) - 1);
        let mut partial: Vec<(i64, i64)> = Vec::with_capacity(2);
        let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let window = |s: i128| {
            (clamp(from_ms.map_or(s * 1000, |f| f.max(s * 1000))), clamp(to_ms.map_or(s * 1000 + 999, |t| t.min(s * 1000 + 999))))
        };
        if let Some(f) = from_ms
            && f.rem_euclid(1000) != 0
        {
            partial.push(window(f.div_euclid(1000)));
        }
        if let Some(t) = to_ms
            && t.rem_euclid(1000) != 999
        {
            let w = window(t.div_euclid(1000));
            if partial.first() != Some(&w) {
                partial.push(w);
            }
        }
        let read = self.db.begin_read().map_err(db_err)?;
        let ms_table = read.open_table(SUMMARY_MS).map_err(db_err)?;
        // The batch in flight counts from memory until this read sees it committed.
        let on_disk = last_commit(&read)?;
        let flying: &[Entry] = match &self.in_flight {
            Some((no, batch, _)) if *no > on_disk => batch,
            _ => &[],
        };
        for (h, index) in self.seconds.iter().enumerate() {
            let mut total = match (lo_full, hi_full) {
                (Some(l), Some(h)) if l > h => Totals::default(),
                _ => index.range(lo_full.map(|l| UtcMillis(clamp(l))), hi_full.map(|h| UtcMillis(clamp(h)))),
            };
            for &(a, b) in &partial {
                for row in ms_table.range((h as u8, a)..=(h as u8, b)).map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    total = total.plus(totals_of(v.value()));
                }
                for e in self.pending.iter().chain(flying).filter(|e| usize::from(self.names.to_history[usize::from(e.processor)]) == h) {
                    if (a..=b).contains(&e.requested_at.0) {
                        total = total.plus(one(e.cents));
                    }
                }
            }
            let l = usize::from(self.names.to_ledger[h]);
            if l < out.len() {
                out[l] = total;
            }
        }
        Ok(out)
    }
}
