//! The ledger on disk: recovery (newest snapshot, then the journal segments after it,
//! replayed through the same state machine), snapshot files, and the compactor thread that
//! folds closed segments into a snapshot so that restart time and disk use stay bounded.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use super::codec;
use super::state::{Event, Payment, State, Status};
use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::journal::file::{self, snapshot_path, sync_dir};
use crate::journal::frame::{self, Scan};
use crate::journal::{Completion, Record};
use crate::processor::ProcessorIdx;

impl Record for Event {
    fn encode(&self, out: &mut Vec<u8>) {
        codec::encode(self, out);
    }

    fn is_reset(&self) -> bool {
        matches!(self, Event::Purged)
    }

    /// A processor's answer need not be synced on its own: if it is lost, the payment is
    /// still `Sent` after recovery and is resolved again on the same processor, which still
    /// holds the record (or, for a rejection, sends it again — the processor never recorded it).
    fn needs_sync(&self) -> bool {
        !matches!(self, Event::Processed { .. } | Event::Rejected { .. })
    }
}

/// Recovery could not rebuild the state: the data directory needs a human.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot read data directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("journal file {file} is damaged at byte offset {offset}: {reason}; refusing to start rather than drop history")]
    Corrupt { file: PathBuf, offset: usize, reason: String },
    #[error("snapshot {0} is damaged: {1}")]
    BadSnapshot(PathBuf, String),
}

/// What recovery found.
pub struct Recovered {
    pub state: State,
    /// The sequence number for the next segment to open.
    pub next_seq: u64,
    /// Records replayed from segments (not counting the snapshot).
    pub replayed: u64,
}

/// Rebuilds the state from `dir`: the newest snapshot, then every later segment. A torn last
/// record of the last segment is cut (and logged); damage anywhere else is an error.
/// `names` are the configured processors, cheapest first: the recovered state indexes them in
/// this order, whatever order the files were written in, and follows them with any processor
/// known only from the files.
pub fn recover(dir: &Path, names: &[String]) -> Result<Recovered, RecoveryError> {
    let io = |e| RecoveryError::Io(dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let listing = file::list(dir).map_err(io)?;
    for tmp in &listing.temporaries {
        let _ = std::fs::remove_file(tmp);
    }
    let r = replay(&listing, names, u64::MAX, true, false)?;
    let next_seq = listing.segments.last().map_or(0, |(s, _)| s + 1).max(listing.snapshots.last().map_or(0, |(s, _)| *s));
    Ok(Recovered { state: r.0, next_seq, replayed: r.1 })
}

/// Rebuilds the state of a running gateway's directory (after a repaired write failure):
/// like [`recover`], but with the writer and compactor alive, so under the directory lock and
/// without touching any file.
pub fn reload(dir: &Path, names: &[String], dir_lock: &Mutex<()>) -> Result<State, RecoveryError> {
    let _guard = dir_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let listing = file::list(dir).map_err(|e| RecoveryError::Io(dir.to_path_buf(), e))?;
    Ok(replay(&listing, names, u64::MAX, false, false)?.0)
}

/// The payload of the record that starts every segment: the processor names its events'
/// indices refer to.
pub fn segment_header(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode_processors(names, &mut out);
    out
}

/// Rewrites the processor index of `event` from a file's numbering to the state's.
fn remap(event: Event, map: &[ProcessorIdx]) -> Option<Event> {
    let to = |p: ProcessorIdx| map.get(usize::from(p)).copied();
    Some(match event {
        Event::Intent { id, processor, requested_at } => Event::Intent { id, processor: to(processor)?, requested_at },
        Event::Processed { id, processor, requested_at } => Event::Processed { id, processor: to(processor)?, requested_at },
        Event::Rejected { id, processor } => Event::Rejected { id, processor: to(processor)? },
        other => other,
    })
}

/// Maps a file's processor names onto `state`'s indices, adding names it does not know.
fn name_map(state: &mut State, names: &[String]) -> Result<Vec<ProcessorIdx>, String> {
    names.iter().map(|n| state.processor_index(n).ok_or_else(|| "more than 255 processors".to_string())).collect()
}

/// The state of the newest snapshot plus the segments in `[snapshot, upto)`. With
/// `drop_processed`, a payment leaves the state as soon as it is processed (the compactor's
/// replay, once the history holds every processed payment of these segments), so the replay
/// holds only unfinished payments, not a segment's worth.
fn replay(
    listing: &file::Listing,
    names: &[String],
    upto: u64,
    cut_torn_tail: bool,
    drop_processed: bool,
) -> Result<(State, u64), RecoveryError> {
    let snapshot = listing.snapshots.iter().rev().find(|(s, _)| *s <= upto);
    let (mut state, base) = match snapshot {
        Some((seq, path)) => (load_snapshot(path, names)?, *seq),
        None => (State::new(names), 0),
    };
    // Segments written before processors were stored by name use the configured order.
    let positional: Vec<ProcessorIdx> = (0..names.len() as ProcessorIdx).collect();
    let segments: Vec<_> = listing.segments.iter().filter(|(s, _)| *s >= base && *s < upto).collect();
    let mut replayed = 0u64;
    for (i, (_, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| RecoveryError::Io(path.clone(), e))?;
        let corrupt = |offset, reason: String| RecoveryError::Corrupt { file: path.clone(), offset, reason };
        let mut map = positional.clone();
        let scan = frame::scan(&bytes, |offset, payload| {
            let event = match codec::decode_record(payload).map_err(|e| corrupt(offset, e.to_string()))? {
                codec::Decoded::Processors(names) => {
                    map = name_map(&mut state, &names).map_err(|e| corrupt(offset, e))?;
                    return Ok(());
                }
                codec::Decoded::Event(e) => remap(e, &map).ok_or_else(|| corrupt(offset, format!("{e:?} names an unknown processor")))?,
            };
            state.apply(&event).map_err(|e| corrupt(offset, e.to_string()))?;
            if let (true, Event::Processed { id, .. }) = (drop_processed, event) {
                state.evict(id);
            }
            replayed += 1;
            Ok(())
        })?;
        match scan {
            // Zeros after the records are the writer's preallocated space, in any segment.
            Scan::Clean | Scan::Padded { .. } => {}
            Scan::TornTail { offset, reason } if cut_torn_tail && i + 1 == segments.len() => {
                tracing::warn!(file = %path.display(), offset, dropped_bytes = bytes.len() - offset, reason, "cutting a torn record at the journal's tail (an interrupted write)");
                let f = OpenOptions::new().write(true).open(path).map_err(|e| RecoveryError::Io(path.clone(), e))?;
                f.set_len(offset as u64).and_then(|()| f.sync_all()).map_err(|e| RecoveryError::Io(path.clone(), e))?;
            }
            // The open segment of a running gateway may end mid-batch; its durable prefix counts.
            Scan::TornTail { .. } if !cut_torn_tail && i + 1 == segments.len() => {}
            Scan::TornTail { offset, reason } | Scan::Corrupt { offset, reason } => return Err(corrupt(offset, reason.to_string())),
        }
    }
    Ok((state, replayed))
}

/// Version 2 stores the processor names; version 1 (positional, read as the configured order)
/// is still read.
const SNAPSHOT_MAGIC: &[u8; 8] = b"PGSNAP02";
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"PGSNAP01";
/// id 16 + cents 8 + accepted_at 8 + status 1 + processor 1 + requested_at 8.
const SNAPSHOT_ENTRY_BYTES: usize = 42;

fn encode_snapshot(state: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + state.len() * SNAPSHOT_ENTRY_BYTES + 4);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(state.processors() as u32).to_le_bytes());
    for name in state.names() {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    for (id, p) in state.payments() {
        let (tag, processor, at) = match p.status {
            Status::Pending => (0u8, 0u8, 0i64),
            Status::Sent { processor, requested_at } => (1, processor, requested_at.0),
            Status::Processed { processor, requested_at } => (2, processor, requested_at.0),
        };
        out.extend_from_slice(&id.0.to_le_bytes());
        out.extend_from_slice(&p.cents.get().to_le_bytes());
        out.extend_from_slice(&p.accepted_at.0.to_le_bytes());
        out.push(tag);
        out.push(processor);
        out.extend_from_slice(&at.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_snapshot(bytes: &[u8], names: &[String]) -> Result<State, String> {
    if bytes.len() < 24 || !(&bytes[..8] == SNAPSHOT_MAGIC || &bytes[..8] == SNAPSHOT_MAGIC_V1) {
        return Err("not a paygate snapshot".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch".into());
    }
    let stored_processors = u32::from_le_bytes(body[8..12].try_into().expect("4")) as usize;
    let mut state = State::new(names);
    let mut rest = &body[12..];
    let map: Vec<ProcessorIdx> = if &bytes[..8] == SNAPSHOT_MAGIC_V1 {
        if stored_processors != names.len() {
            return Err(format!("written for {stored_processors} processors, {} configured", names.len()));
        }
        (0..names.len() as ProcessorIdx).collect()
    } else {
        let mut stored = Vec::with_capacity(stored_processors);
        for _ in 0..stored_processors {
            let (&len, tail) = rest.split_first().ok_or("truncated processor table")?;
            let (name, tail) = tail.split_at_checked(usize::from(len)).ok_or("truncated processor table")?;
            stored.push(std::str::from_utf8(name).map_err(|_| "processor name is not UTF-8")?.to_string());
            rest = tail;
        }
        name_map(&mut state, &stored)?
    };
    if rest.len() < 8 {
        return Err("truncated".into());
    }
    let count = u64::from_le_bytes(rest[..8].try_into().expect("8")) as usize;
    let entries = &rest[8..];
    if Some(entries.len()) != count.checked_mul(SNAPSHOT_ENTRY_BYTES) {
        return Err("length does not match its entry count".into());
    }
    let mut payments = Vec::with_capacity(count);
    for e in entries.chunks_exact(SNAPSHOT_ENTRY_BYTES) {
        let u64_at = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8"));
        let id = CorrelationId(u128::from_le_bytes(e[0..16].try_into().expect("16")));
        let cents = Cents::new(u64_at(16)).ok_or("amount out of range")?;
        let at = UtcMillis(u64_at(34) as i64);
        let processor = || map.get(usize::from(e[33])).copied().ok_or("unknown processor");
        let status = match e[32] {
            0 => Status::Pending,
            1 => Status::Sent { processor: processor()?, requested_at: at },
            2 => Status::Processed { processor: processor()?, requested_at: at },
            _ => return Err("unknown payment status".into()),
        };
        payments.push((id, Payment { cents, accepted_at: UtcMillis(u64_at(24) as i64), status, ticket: 0 }));
    }
    Ok(State::restore(state.names(), payments))
}

fn load_snapshot(path: &Path, names: &[String]) -> Result<State, RecoveryError> {
    let bytes = std::fs::read(path).map_err(|e| RecoveryError::Io(path.to_path_buf(), e))?;
    decode_snapshot(&bytes, names).map_err(|e| RecoveryError::BadSnapshot(path.to_path_buf(), e))
}

/// Writes the snapshot atomically: a temporary file, fsync, rename, fsync of the directory.
pub fn write_snapshot(dir: &Path, seq: u64, state: &State) -> std::io::Result<PathBuf> {
    let path = snapshot_path(dir, seq);
    let tmp = path.with_extension("snap.tmp");
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
    f.write_all(&encode_snapshot(state))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Starts the compactor: for each new segment number it hears of, it folds every older
/// segment into a snapshot and deletes them. Returns the channel the journal reports to.
/// With a `history`, the snapshot leaves out the processed payments it holds durably (waiting
/// briefly for the newest ones to be committed there), so snapshots hold the unfinished
/// payments, not all of history, and compaction's work does not grow with age.
pub fn spawn_compactor(
    dir: PathBuf,
    names: Vec<String>,
    dir_lock: Arc<Mutex<()>>,
    history: Option<crate::history::History>,
) -> std::io::Result<mpsc::Sender<u64>> {
    let (tx, rx) = mpsc::channel::<u64>();
    std::thread::Builder::new().name("journal-compactor".into()).spawn(move || {
        while let Ok(mut upto) = rx.recv() {
            // Only the newest boundary matters when several rotations queued up.
            while let Ok(later) = rx.try_recv() {
                upto = later;
            }
            if let Err(e) = compact(&dir, &names, upto, &dir_lock, history.as_ref()) {
                tracing::warn!(error = %e, upto, "journal compaction failed; segments are kept");
            }
        }
    })?;
    Ok(tx)
}

/// Times the compactor looks again for processed payments the history has not committed yet,
/// [`HISTORY_WAIT_MS`] apart; those still missing stay in the snapshot.
pub const HISTORY_TRIES: u32 = 10;
pub const HISTORY_WAIT_MS: u64 = 100;

/// Drops from `state` the processed payments `history` holds durably.
fn leave_out_history(state: &mut State, history: &crate::history::History) -> Result<usize, String> {
    let mut processed = state.take_processed();
    let before = processed.len();
    for attempt in 0..HISTORY_TRIES {
        let mut missing = Vec::new();
        for (id, p) in processed {
            if !history.contains(id)? {
                missing.push((id, p));
            }
        }
        processed = missing;
        if processed.is_empty() || attempt + 1 == HISTORY_TRIES {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(HISTORY_WAIT_MS));
    }
    let kept = processed.len();
    for (id, p) in processed {
        state.put_back(id, p);
    }
    Ok(before - kept)
}

fn compact(dir: &Path, names: &[String], upto: u64, dir_lock: &Mutex<()>, history: Option<&crate::history::History>) -> Result<(), String> {
    let started = std::time::Instant::now();
    let listing = file::list(dir).map_err(|e| e.to_string())?;
    let consumed: Vec<_> = listing.segments.iter().filter(|(s, _)| *s < upto).cloned().collect();
    if consumed.is_empty() {
        return Ok(());
    }
    // Every processed payment of these segments was handed to the history before its record
    // reached the journal; once the history has committed all it was handed, none needs to
    // be looked up one by one (a 64 MiB segment held 615 k payments: 4.2 s of lookups).
    let committed = history.is_some_and(|h| match h.flush_blocking() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "history commit failed before compaction; processed payments are looked up one by one");
            false
        }
    });
    let (mut state, replayed) = replay(&listing, names, upto, false, committed).map_err(|e| e.to_string())?;
    // What is left processed came from the previous snapshot (or the flush failed).
    let in_history = match history {
        Some(h) => leave_out_history(&mut state, h)?,
        None => 0,
    };
    let _guard = dir_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // A purge while we read deletes these files; our snapshot would resurrect what it purged.
    if consumed.iter().any(|(_, p)| !p.exists()) {
        return Ok(());
    }
    let path = write_snapshot(dir, upto, &state).map_err(|e| e.to_string())?;
    for (_, p) in consumed.iter().chain(listing.snapshots.iter().filter(|(s, _)| *s < upto)) {
        std::fs::remove_file(p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    sync_dir(dir).map_err(|e| e.to_string())?;
    tracing::info!(snapshot = %path.display(), payments = state.len(), in_history, replayed, segments = consumed.len(), ms = started.elapsed().as_millis() as u64, "journal compacted into a snapshot");
    Ok(())
}

/// A completion that only waits, for tools and tests that write journals directly.
pub struct Wait(pub std::sync::mpsc::Sender<Result<(), crate::journal::JournalError>>);

impl Completion for Wait {
    fn complete(self, result: Result<(), crate::journal::JournalError>) {
        let _ = self.0.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    fn sample_state() -> State {
        let mut s = State::new(&["default", "fallback"]);
        for i in 0..50u128 {
            let id = CorrelationId(i);
            s.apply(&Event::Accepted { id, cents: Cents::new(100 + i as u64).unwrap(), accepted_at: UtcMillis(1_000 + i as i64) }).unwrap();
            if i % 3 != 0 {
                s.apply(&Event::Intent { id, processor: (i % 2) as u8, requested_at: UtcMillis(2_000 + i as i64) }).unwrap();
            }
            if i % 3 == 1 {
                s.apply(&Event::Processed { id, processor: (i % 2) as u8, requested_at: UtcMillis(2_000 + i as i64) }).unwrap();
            }
        }
        s
    }

    #[test]
    fn snapshot_encode_decode_preserves_state() {
        let s = sample_state();
        let back = decode_snapshot(&encode_snapshot(&s), &names(&["default", "fallback"])).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn snapshot_is_read_by_processor_name_whatever_the_configured_order() {
        let s = sample_state();
        let back = decode_snapshot(&encode_snapshot(&s), &names(&["fallback", "default"])).unwrap();
        assert_eq!(back.names(), &names(&["fallback", "default"])[..]);
        // Every payment names the same processor as before, by its new index.
        for (id, p) in s.payments() {
            let flip = |st: Status| match st {
                Status::Sent { processor, requested_at } => Status::Sent { processor: 1 - processor, requested_at },
                Status::Processed { processor, requested_at } => Status::Processed { processor: 1 - processor, requested_at },
                other => other,
            };
            assert_eq!(back.get(id).unwrap().status, flip(p.status));
        }
        // A processor no longer configured keeps its history, after the configured ones.
        let back = decode_snapshot(&encode_snapshot(&s), &names(&["fallback"])).unwrap();
        assert_eq!(back.names(), &names(&["fallback", "default"])[..]);
        assert_eq!(back.unresolved_at(1), s.unresolved_at(0));
    }

    #[test]
    fn damaged_snapshot_is_refused() {
        let mut bytes = encode_snapshot(&sample_state());
        bytes[40] ^= 1;
        assert!(decode_snapshot(&bytes, &names(&["default", "fallback"])).is_err());
    }
}
