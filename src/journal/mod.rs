//! The journal: every ledger event passes through here before its effects leave the ledger,
//! and each event's completion runs only once the event is durable. The completion, not the
//! submitter, carries the consequences (the 202, the hand-off to dispatch), so a client that
//! hangs up cannot lose them.
//!
//! On disk: segment files of framed records in the data directory, each written front to
//! back and zero-filled ahead of its records (see [`file::SegmentFile`]), by one dedicated
//! thread with group commit — it takes everything that arrived while the
//! previous sync ran, writes it with one `write`, calls `fdatasync` once, then completes
//! every waiter. The tokio runtime never touches the disk.

pub mod file;
pub mod frame;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

pub use file::FaultSwitch;
use file::{SegmentFile, segment_path, sync_dir};

/// What the journal does once a submitted event is durable (or cannot be made durable).
pub trait Completion: Send + 'static {
    fn complete(self, result: Result<(), JournalError>);
}

/// An event the journal can store.
pub trait Record: Send + 'static {
    fn encode(&self, out: &mut Vec<u8>);
    /// True when nothing before this record matters any more (a purge): once it is durable
    /// the journal starts a fresh segment and deletes the older files.
    fn is_reset(&self) -> bool;
    /// False for a record whose loss in a power failure or a process crash is harmless because
    /// recovery can rebuild its effect (a processor's confirmation, which the processor still
    /// holds). Such a record does not make the writer sync; it becomes durable with the next
    /// sync that something else needs. Submitted with [`Journal::submit_lazy`] it is also held
    /// back by the owner until a later submission carries it (the ledger: at most
    /// `LAZY_WINDOW_MS`).
    fn needs_sync(&self) -> bool {
        true
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("journal write failed: {0}")]
    Io(String),
}

/// Most submissions one group commit takes; the rest wait for the next.
pub const MAX_BATCH: usize = 8_192;
/// Most records [`Journal::submit_lazy`] holds back before it sends them on their own.
pub const MAX_LAZY: usize = 1_024;
/// A segment is closed and a new one started once it grows past this.
pub const SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How far ahead of the records a segment is zero-filled (see [`file::SegmentFile`]).
pub const PREALLOC_BYTES: u64 = 1024 * 1024;
/// What a repair writes ahead of the records, at least, to prove the disk takes writes.
pub const REPAIR_PROBE_BYTES: u64 = 64 * 1024;
/// A failing disk is logged by the writer at most once per this period.
pub const FAILURE_LOG_EVERY_MS: u64 = 30_000;

/// How the file journal is set up.
#[derive(Clone, Debug)]
pub struct FileOptions {
    pub dir: PathBuf,
    /// `fdatasync` after every group write; off survives a process crash, not power loss.
    /// Either way a crash can lose records still held by [`Journal::submit_lazy`], whose loss
    /// is harmless by [`Record::needs_sync`].
    pub fsync: bool,
    pub segment_max_bytes: u64,
    /// Zero-fill segments this far ahead of the records, so that a sync writes only data
    /// blocks; 0 appends instead.
    pub prealloc_bytes: u64,
    /// Injected disk faults, for tests.
    pub faults: Option<Arc<FaultSwitch>>,
    /// Told the sequence number of each new segment, so older ones can be compacted.
    pub rotated: Option<mpsc::Sender<u64>>,
    /// Held while files other than the open segment are deleted or renamed in the directory.
    pub dir_lock: Arc<Mutex<()>>,
    /// Group-commit sizes, sync latency, bytes and failures, when metrics are on.
    pub metrics: Option<crate::metrics::JournalMetrics>,
    /// Payload of the record that starts every segment (the ledger's processor names); empty
    /// for none.
    pub segment_header: Vec<u8>,
}

enum Msg<E, C> {
    /// Deferred records (see [`Journal::submit_lazy`]) that go first; then one event (or none:
    /// a barrier), and a second one that must share its commit.
    Append(Vec<E>, Option<E>, Option<E>, C),
    /// Deferred records on their own, when nothing else came to carry them in time.
    Lazy(Vec<E>),
    /// Cut the open segment back to its last durable length, after a failure.
    Repair(oneshot::Sender<Result<(), JournalError>>),
}

/// The journal's writer end, owned by the ledger.
pub struct Journal<E, C> {
    backend: Backend<E, C>,
    /// Records that need no sync, held back to travel with the next submission (or with
    /// [`Journal::flush_lazy`]): one wake-up of the writer for both.
    lazy: Vec<E>,
    failures: Arc<AtomicU64>,
    /// Woken by the writer when a write fails, so the owner notices without waiting for its
    /// next submission.
    failed: Arc<tokio::sync::Notify>,
}

enum Backend<E, C> {
    Memory,
    File(mpsc::Sender<Msg<E, C>>),
}

impl<E: Record, C: Completion> Journal<E, C> {
    /// A journal that keeps nothing: every event is "durable" at once. For tests and benches.
    pub fn in_memory() -> Journal<E, C> {
        Journal { backend: Backend::Memory, lazy: Vec::new(), failures: Arc::default(), failed: Arc::default() }
    }

    /// Starts a new segment `next_seq` in `opts.dir` and the writer thread.
    pub fn open(opts: FileOptions, next_seq: u64) -> std::io::Result<Journal<E, C>> {
        std::fs::create_dir_all(&opts.dir)?;
        let (segment, len) = new_segment(&opts, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let failures = Arc::<AtomicU64>::default();
        let failed = Arc::<tokio::sync::Notify>::default();
        let writer = Writer {
            failed_signal: failed.clone(),
            opts,
            seq: next_seq,
            segment,
            len,
            durable: len,
            failed: false,
            failures: failures.clone(),
            buf: Vec::with_capacity(64 * 1024),
            log: crate::logs::LogLimiter::new(std::time::Duration::from_millis(FAILURE_LOG_EVERY_MS)),
        };
        std::thread::Builder::new().name("journal-writer".into()).spawn(move || writer.run(rx))?;
        Ok(Journal { backend: Backend::File(tx), lazy: Vec::new(), failures, failed })
    }

    /// Appends `event` (or, with `None`, only waits for everything submitted before) and runs
    /// `done` once it is durable.
    pub fn submit(&mut self, event: Option<E>, done: C) {
        self.append(event, None, done);
    }

    /// Appends `first` and `second` in the same group commit (both durable, or neither
    /// acknowledged) and runs `done` once they are durable.
    pub fn submit_two(&mut self, first: E, second: E, done: C) {
        self.append(Some(first), Some(second), done);
    }

    /// Holds back `event`, a record whose loss is harmless (see [`Record::needs_sync`]), until
    /// the next submission carries it to the writer in the same message, or until
    /// [`Journal::flush_lazy`]. Records keep their order on disk either way; a process crash
    /// can lose the held ones, as a power failure can lose any unsynced record.
    pub fn submit_lazy(&mut self, event: E) {
        debug_assert!(!event.needs_sync());
        match self.backend {
            Backend::Memory => {}
            Backend::File(_) => {
                self.lazy.push(event);
                if self.lazy.len() >= MAX_LAZY {
                    self.flush_lazy();
                }
            }
        }
    }

    /// Whether records are held back (see [`Journal::submit_lazy`]).
    pub fn has_lazy(&self) -> bool {
        !self.lazy.is_empty()
    }

    /// Sends the held-back records to the writer now.
    pub fn flush_lazy(&mut self) {
        if let (Backend::File(tx), false) = (&self.backend, self.lazy.is_empty()) {
            let _ = tx.send(Msg::Lazy(std::mem::take(&mut self.lazy)));
        }
    }

    fn append(&mut self, event: Option<E>, second: Option<E>, done: C) {
        let lazy = std::mem::take(&mut self.lazy);
        self.send(Msg::Append(lazy, event, second, done));
    }

    fn send(&mut self, msg: Msg<E, C>) {
        match (&self.backend, msg) {
            (Backend::Memory, Msg::Append(_, _, _, done)) => done.complete(Ok(())),
            (Backend::Memory, Msg::Lazy(_)) => {}
            (Backend::Memory, Msg::Repair(reply)) => {
                let _ = reply.send(Ok(()));
            }
            (Backend::File(tx), msg) => {
                if let Err(mpsc::SendError(Msg::Append(_, _, _, done))) = tx.send(msg) {
                    done.complete(Err(JournalError::Io("journal writer has stopped".into())));
                }
            }
        }
    }

    /// How many writes have failed so far; the ledger compares it to know when to recover.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// Resolves after a write failed (at once if one failed since the last call).
    pub fn failed(&self) -> impl std::future::Future<Output = ()> + 'static {
        let failed = self.failed.clone();
        async move { failed.notified().await }
    }

    /// Asks the writer to cut the open segment back to its durable length, after everything
    /// submitted before. `Ok` means the files hold exactly the durable events again. Records
    /// still held back are dropped: they belong to the state the owner rebuilds from disk.
    pub fn repair(&mut self) -> oneshot::Receiver<Result<(), JournalError>> {
        self.lazy.clear();
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Repair(reply));
        rx
    }
}

struct Writer {
    opts: FileOptions,
    seq: u64,
    segment: SegmentFile,
    /// Bytes of the open segment written (records, lazy ones included).
    len: u64,
    /// Bytes of the open segment known to be durable: synced, with fsync on (lazy records
    /// past it are written but not synced); written, with fsync off. A repair cuts the
    /// segment back to it.
    durable: u64,
    /// A write failed and the segment may hold a partial batch past `len`.
    failed: bool,
    failures: Arc<AtomicU64>,
    failed_signal: Arc<tokio::sync::Notify>,
    buf: Vec<u8>,
    log: crate::logs::LogLimiter,
}

impl Writer {
    fn run<E: Record, C: Completion>(mut self, rx: mpsc::Receiver<Msg<E, C>>) {
        let mut waiters: Vec<C> = Vec::with_capacity(1024);
        let mut msgs = Vec::with_capacity(1024);
        let mut reset = false;
        let mut needs_sync = false;
        while let Ok(first) = rx.recv() {
            msgs.push(first);
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            for msg in msgs.drain(..) {
                match msg {
                    Msg::Lazy(lazy) => self.encode_all(lazy, &mut reset, &mut needs_sync),
                    Msg::Append(lazy, event, second, done) => {
                        self.encode_all(lazy, &mut reset, &mut needs_sync);
                        match event {
                            Some(e) => self.encode_all(std::iter::once(e).chain(second), &mut reset, &mut needs_sync),
                            // A barrier waits for everything before it, lazy records included.
                            None => needs_sync = true,
                        }
                        waiters.push(done);
                    }
                    Msg::Repair(reply) => {
                        self.commit(&mut waiters, std::mem::take(&mut reset), std::mem::take(&mut needs_sync));
                        let _ = reply.send(self.repair());
                    }
                }
            }
            self.commit(&mut waiters, std::mem::take(&mut reset), std::mem::take(&mut needs_sync));
        }
    }

    /// Frames `events` into the buffer, noting whether any of them resets or needs a sync.
    fn encode_all<E: Record>(&mut self, events: impl IntoIterator<Item = E>, reset: &mut bool, needs_sync: &mut bool) {
        for e in events {
            *reset |= e.is_reset();
            *needs_sync |= e.needs_sync();
            frame::append(|out| e.encode(out), &mut self.buf);
        }
    }

    /// One group commit: a single write and a single sync for everything buffered, then
    /// every waiter learns the result.
    fn commit<C: Completion>(&mut self, waiters: &mut Vec<C>, reset: bool, needs_sync: bool) {
        if let Some(m) = &self.opts.metrics
            && !waiters.is_empty()
        {
            m.commit_records.observe(waiters.len() as f64);
        }
        let result = if self.failed {
            Err(JournalError::Io("journal is failed; waiting for repair".into()))
        } else {
            self.write_buffer(needs_sync || reset)
        };
        self.buf.clear();
        if let Err(e) = &result
            && !self.failed
        {
            self.failed = true;
            self.failures.fetch_add(1, Ordering::AcqRel);
            self.failed_signal.notify_one();
            if let Some(m) = &self.opts.metrics {
                m.write_failures.inc();
            }
            if let Some(suppressed) = self.log.allow() {
                tracing::error!(segment = %self.segment.path.display(), error = %e, suppressed, "journal write failed; payments are refused until it recovers");
            }
        }
        for w in waiters.drain(..) {
            w.complete(result.clone());
        }
        if result.is_ok() && (reset || self.len >= self.opts.segment_max_bytes) {
            self.rotate(reset);
        } else if result.is_ok() {
            reserve(&mut self.segment, self.len, &self.opts);
        }
    }

    /// Writes the buffer; syncs when asked to and something written is not yet synced.
    fn write_buffer(&mut self, sync: bool) -> Result<(), JournalError> {
        let io = |e: std::io::Error| JournalError::Io(e.to_string());
        if !self.buf.is_empty() {
            self.segment.write_at(&self.buf, self.len).map_err(io)?;
            if let Some(m) = &self.opts.metrics {
                m.bytes_written.inc_by(self.buf.len() as u64);
            }
        }
        let end = self.len + self.buf.len() as u64;
        if !self.opts.fsync {
            self.durable = end;
        } else if sync && end > self.durable {
            let started = std::time::Instant::now();
            self.segment.sync_data().map_err(io)?;
            if let Some(m) = &self.opts.metrics {
                m.fsync_seconds.observe(started.elapsed().as_secs_f64());
            }
            self.durable = end;
        }
        self.len = end;
        Ok(())
    }

    /// Cuts the open segment back to its durable length, then proves the disk takes writes
    /// again by zero-filling space ahead of the records (and syncing it): on a disk that is
    /// still full this fails, and the journal stays failed instead of failing the next
    /// payment's commit all over again. Lazy records written since the last good sync are cut
    /// too: after a failed sync their writeback may have failed, and keeping them would let
    /// later records sit behind a hole that recovery reads as the journal's end.
    fn repair(&mut self) -> Result<(), JournalError> {
        if !self.failed {
            return Ok(());
        }
        let io = |e: std::io::Error| JournalError::Io(e.to_string());
        self.len = self.durable;
        self.segment.truncate(self.len).map_err(io)?;
        let ahead = self.opts.prealloc_bytes.max(REPAIR_PROBE_BYTES);
        self.segment.preallocate(self.len + ahead, self.opts.fsync).map_err(io)?;
        self.failed = false;
        tracing::warn!(segment = %self.segment.path.display(), len = self.len, "journal repaired: the disk takes writes again");
        Ok(())
    }

    /// Starts the next segment. After a reset, the older files are deleted: the reset record
    /// is durable, so they no longer matter.
    fn rotate(&mut self, reset: bool) {
        // Lazy records must not be lost from a closed segment while a later one survives:
        // recovery would see a torn record in the middle of the journal.
        if self.len > self.durable {
            if let Err(e) = self.segment.sync_data() {
                tracing::warn!(error = %e, "cannot sync the segment before closing it; keeping it open");
                return;
            }
            self.durable = self.len;
        }
        let next = self.seq + 1;
        let (segment, len) = match new_segment(&self.opts, next) {
            Ok(s) => s,
            Err(e) => {
                // Keep appending to the current segment; the next commit tries again.
                tracing::warn!(error = %e, "cannot start a new journal segment");
                return;
            }
        };
        self.segment = segment;
        self.seq = next;
        self.len = len;
        // The header: synced with the first commit, which every later record needs.
        self.durable = len;
        if reset {
            let _guard = self.opts.dir_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Ok(listing) = file::list(&self.opts.dir) {
                let old = listing.segments.iter().filter(|(s, _)| *s < next).chain(&listing.snapshots);
                for (_, path) in old {
                    if let Err(e) = std::fs::remove_file(path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot delete purged journal file");
                    }
                }
                let _ = sync_dir(&self.opts.dir);
            }
        } else if let Some(tx) = &self.opts.rotated {
            let _ = tx.send(next);
        }
    }
}

/// Creates segment `seq`, makes its name durable, zero-fills its first stretch and writes the
/// header record (synced with the first commit, which every record after it needs). Returns
/// the segment and its length.
fn new_segment(opts: &FileOptions, seq: u64) -> std::io::Result<(SegmentFile, u64)> {
    let mut segment = SegmentFile::create(segment_path(&opts.dir, seq), opts.faults.clone())?;
    sync_dir(&opts.dir)?;
    reserve(&mut segment, 0, opts);
    let mut header = Vec::new();
    if !opts.segment_header.is_empty() {
        frame::append(|out| out.extend_from_slice(&opts.segment_header), &mut header);
        segment.write_at(&header, 0)?;
    }
    Ok((segment, header.len() as u64))
}

/// Zero-fills `segment` further ahead once its `len` bytes of records come within a quarter
/// of the preallocated end; the writer calls it between group commits, so no commit pays
/// for it. Only an optimisation: if it fails, records are appended as without it.
fn reserve(segment: &mut SegmentFile, len: u64, opts: &FileOptions) {
    let ahead = opts.prealloc_bytes;
    if ahead == 0 || segment.allocated() >= len + ahead / 4 {
        return;
    }
    if let Err(e) = segment.preallocate(len + ahead, opts.fsync) {
        tracing::warn!(segment = %segment.path.display(), error = %e, "cannot preallocate journal space; appending instead");
    }
}
