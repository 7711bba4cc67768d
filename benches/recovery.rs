//! Restart time: `persist::recover` of a data directory holding processed payments.
//!
//! - `recovery/snapshot_plus_tail`: 1,000,000 processed payments on disk as a snapshot
//!   (999,000 payments, via `write_snapshot`) plus a small journal tail (1,000 payments,
//!   3,000 records). Target < 2 s. Prints `recovery-1m: {"payments":1000000,"ms":..}` with
//!   the median of the measured runs.
//! - `recovery/journal_only`: 100,000 processed payments as journal records only (300,000
//!   records, no snapshot), to show what the snapshot saves. Prints `recovery-journal-100k: ..`.
//!
//! Each fixture is built once per function, outside the timing, in a fresh directory under
//! `std::env::temp_dir()`, and deleted at the end. The files were just written, so they are
//! in the page cache: this is recovery's CPU cost, not a cold read from disk.
//! Under `cargo test --benches` the fixtures shrink and each benchmark runs once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::journal::{FileOptions, Journal, PREALLOC_BYTES, SEGMENT_MAX_BYTES};
use paygate::ledger::persist::{self, Wait};
use paygate::ledger::{Event, State};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROCESSORS: [&str; 2] = ["default", "fallback"];
/// An arbitrary fixed epoch for fixtures (2025-07-15T00:00:00Z).
const T0: i64 = 1_752_537_600_000;
/// Runs measured per benchmark (criterion's samples, one run each).
const RUNS: usize = 10;

/// `cargo bench` passes `--bench`; `cargo test --benches` does not.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("paygate-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Accepted, Intent and Processed for payment `i`: ~60 s of traffic, 90 % on the default
/// processor, 1 % of the `requestedAt`s up to 5 s late.
fn lifecycle(rng: &mut fastrand::Rng, i: u64) -> [Event; 3] {
    let id = CorrelationId(rng.u128(..));
    let accepted_at = T0 + (i as i64 * 60_000 / 1_000_000);
    let late = if rng.u8(..100) == 0 { rng.i64(1..=5_000) } else { 0 };
    let requested_at = UtcMillis(accepted_at + 1 - late);
    let processor = u8::from(rng.u8(..10) == 0);
    [
        Event::Accepted { id, cents: Cents::new(rng.u64(1..=100_000)).expect("positive"), accepted_at: UtcMillis(accepted_at) },
        Event::Intent { id, processor, requested_at },
        Event::Processed { id, processor, requested_at },
    ]
}

/// Writes payments `from..to` as journal segment `seq` in `dir` (write() only: the fixture
/// need not survive a power cut) and waits until every record is written.
fn write_segment(dir: &Path, seq: u64, rng: &mut fastrand::Rng, from: u64, to: u64) {
    let opts = FileOptions {
        dir: dir.to_path_buf(),
        fsync: false,
        segment_max_bytes: SEGMENT_MAX_BYTES,
        prealloc_bytes: PREALLOC_BYTES,
        faults: None,
        rotated: None,
        dir_lock: Arc::default(),
        segment_header: Vec::new(),
        metrics: None,
    };
    let mut journal = Journal::<Event, Wait>::open(opts, seq).expect("open journal");
    let (tx, rx) = mpsc::channel();
    for i in from..to {
        for e in lifecycle(rng, i) {
            journal.submit(Some(e), Wait(tx.clone()));
        }
    }
    drop(tx);
    // Every completion reports once its record is written; the channel closes after the last.
    let mut written = 0u64;
    for result in rx {
        result.expect("journal write");
        written += 1;
    }
    assert_eq!(written, 3 * (to - from));
}

/// Total size of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
}

/// Times `persist::recover(dir)` once per criterion iteration (dropping the recovered state
/// outside the timing) and prints `label: {"payments":..,"ms":..}` with the median of the
/// measured runs (criterion's warm-up run excluded). `first_ms` is the first recovery of the
/// fixture in this process, the closest to a real restart (fresh memory to fault in); `bytes`
/// is the size of the data directory.
fn bench_recover(c: &mut Criterion, group: &str, name: &str, label: &str, dir: &Path, payments: usize) {
    // Two untimed runs: the first checks the fixture, the second sizes the measurement.
    let mut untimed = [Duration::ZERO; 2];
    for took in &mut untimed {
        let started = Instant::now();
        let check = persist::recover(dir, &PROCESSORS.map(String::from)).expect("recover fixture");
        *took = started.elapsed();
        assert_eq!(check.state.len(), payments);
        assert_eq!(check.state.unfinished(), 0);
        let processed = check.state.payments().filter(|(_, p)| matches!(p.status, paygate::ledger::Status::Processed { .. })).count();
        assert_eq!(processed, payments);
    }

    // Each call of the routine: the durations of its runs. The first call is the warm-up.
    let mut calls: Vec<Vec<Duration>> = Vec::new();
    let mut g = c.benchmark_group(group);
    // Flat sampling with one run per sample: RUNS runs rather than criterion's 1 + 2 + .. +
    // RUNS. (Criterion warns that it cannot complete the samples in the target time whenever a
    // sample is a single iteration; that is the intent here.)
    g.sampling_mode(SamplingMode::Flat).sample_size(RUNS).warm_up_time(Duration::from_millis(1));
    g.measurement_time((untimed[1] * RUNS as u32).mul_f64(0.9));
    g.bench_function(BenchmarkId::new(name, payments), |b| {
        b.iter_custom(|iters| {
            let mut runs = Vec::with_capacity(iters as usize);
            for _ in 0..iters {
                let started = Instant::now();
                let recovered = persist::recover(dir, &PROCESSORS.map(String::from)).expect("recover");
                runs.push(started.elapsed());
                std::hint::black_box(&recovered.state);
                drop(recovered);
            }
            let total = runs.iter().sum();
            calls.push(runs);
            total
        })
    });
    g.finish();
    let skip = usize::from(calls.len() > 1);
    let mut runs: Vec<Duration> = calls.into_iter().skip(skip).flatten().collect();
    runs.sort();
    if let Some(median) = runs.get(runs.len() / 2) {
        let ms = |d: &Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        let line = format!(
            r#"{{"payments":{payments},"ms":{},"runs":{},"min_ms":{},"max_ms":{},"first_ms":{},"bytes":{}}}"#,
            ms(median),
            runs.len(),
            ms(&runs[0]),
            ms(&runs[runs.len() - 1]),
            ms(&untimed[0]),
            dir_bytes(dir)
        );
        println!("{label}: {line}");
    }
}

/// 1,000,000 processed payments: a snapshot plus a small journal tail.
fn snapshot_plus_tail(c: &mut Criterion) {
    let (payments, tail) = if full_run() { (1_000_000u64, 1_000u64) } else { (10_000, 100) };
    let dir = TempDir::new("recovery-snapshot");
    let mut rng = fastrand::Rng::with_seed(1);
    let mut state = State::new(&PROCESSORS);
    for i in 0..payments - tail {
        for e in lifecycle(&mut rng, i) {
            state.apply(&e).expect("fixture events apply");
        }
    }
    // Recovery reads the newest snapshot, then every segment numbered at or after it.
    persist::write_snapshot(dir.path(), 1, &state).expect("write snapshot");
    drop(state);
    write_segment(dir.path(), 1, &mut rng, payments - tail, payments);
    let label = if full_run() { "recovery-1m" } else { "recovery-snapshot" };
    bench_recover(c, "recovery", "snapshot_plus_tail", label, dir.path(), payments as usize);
}

/// 100,000 processed payments as journal records only.
fn journal_only(c: &mut Criterion) {
    let payments = if full_run() { 100_000u64 } else { 1_000 };
    let dir = TempDir::new("recovery-journal");
    let mut rng = fastrand::Rng::with_seed(2);
    write_segment(dir.path(), 0, &mut rng, 0, payments);
    let label = if full_run() { "recovery-journal-100k" } else { "recovery-journal" };
    bench_recover(c, "recovery", "journal_only", label, dir.path(), payments as usize);
}

criterion_group!(benches, snapshot_plus_tail, journal_only);
criterion_main!(benches);
