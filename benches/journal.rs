//! The journal's group commit on a real file in a temp dir:
//!
//! - `journal_append` (criterion): one thread submits a batch of 1,000 events and waits for
//!   all of them to be durable; throughput in events/s, fsync on (and off, for comparison).
//! - `journal_latency` (plain code after criterion): several threads each submit one event and
//!   wait for it, in a loop, for a few seconds; prints one line per mode (fsync on/off,
//!   segments preallocated or appended),
//!   `journal-latency: {"fsync":..,"prealloc":..,"records_per_s":..,"p50_us":..,"p99_us":..,"p999_us":..,"max_us":..}`,
//!   where latency is submit → durable (the instant the writer completes the event, after its
//!   `fdatasync`), from an HdrHistogram.
//!
//! The files go under `std::env::temp_dir()` (`TMPDIR` moves them): fsync figures are only
//! meaningful on the disk the gateway will use, not on tmpfs. Under `cargo test --benches`
//! everything runs once, briefly, as a smoke test.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::journal::{Completion, FileOptions, Journal, JournalError, PREALLOC_BYTES, SEGMENT_MAX_BYTES};
use paygate::ledger::Event;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per criterion iteration of `journal_append`.
const BATCH: usize = 1_000;
/// Concurrent submitters in `journal_latency`.
const SUBMITTERS: usize = 4;
/// How long `journal_latency` runs per fsync mode.
const LATENCY_RUN: Duration = Duration::from_secs(3);

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

/// Reports the instant the journal completed the event (right after its group's sync), so
/// that the submitter's own wake-up delay is not counted.
struct Durable(mpsc::Sender<(Instant, Result<(), JournalError>)>);

impl Completion for Durable {
    fn complete(self, result: Result<(), JournalError>) {
        let _ = self.0.send((Instant::now(), result));
    }
}

fn open(dir: &Path, fsync: bool, prealloc: bool) -> Journal<Event, Durable> {
    let opts = FileOptions {
        dir: dir.to_path_buf(),
        fsync,
        segment_max_bytes: SEGMENT_MAX_BYTES,
        prealloc_bytes: if prealloc { PREALLOC_BYTES } else { 0 },
        faults: None,
        rotated: None,
        dir_lock: Arc::default(),
        segment_header: Vec::new(),
        metrics: None,
    };
    Journal::open(opts, 0).expect("open journal")
}

/// An Accepted event (the largest, 33 bytes) for a fresh id.
fn event(rng: &mut fastrand::Rng) -> Event {
    Event::Accepted { id: CorrelationId(rng.u128(..)), cents: Cents::new(1990).expect("positive"), accepted_at: UtcMillis::now() }
}

fn mode(fsync: bool) -> &'static str {
    if fsync { "fsync_on" } else { "fsync_off" }
}

// ---------------------------------------------------------------------------------------------
// journal_append: throughput of one submitter

fn journal_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal_append");
    g.throughput(Throughput::Elements(BATCH as u64));
    if full_run() {
        g.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5)).sample_size(30);
    }
    for fsync in [true, false] {
        let dir = TempDir::new(&format!("journal-append-{}", mode(fsync)));
        let mut journal = open(dir.path(), fsync, true);
        let (tx, rx) = mpsc::channel();
        let mut rng = fastrand::Rng::with_seed(1);
        g.bench_function(BenchmarkId::new(mode(fsync), format!("batch_{BATCH}")), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    journal.submit(Some(event(&mut rng)), Durable(tx.clone()));
                }
                for _ in 0..BATCH {
                    let (_, result) = rx.recv().expect("journal completes every event");
                    result.expect("journal write");
                }
            })
        });
        drop(journal);
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// journal_latency: submit → durable with concurrent submitters

struct LatencyReport {
    records: u64,
    seconds: f64,
    hist: Histogram<u64>,
}

fn measure_latency(fsync: bool, prealloc: bool, run_for: Duration) -> LatencyReport {
    let dir = TempDir::new(&format!("journal-latency-{}-{prealloc}", mode(fsync)));
    // One journal, as in the gateway (the ledger task owns it); submitters take turns at it.
    let journal = Arc::new(Mutex::new(open(dir.path(), fsync, prealloc)));
    let started = Instant::now();
    let deadline = started + run_for;
    let threads: Vec<_> = (0..SUBMITTERS)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
                let mut rng = fastrand::Rng::with_seed(t as u64 + 10);
                let (tx, rx) = mpsc::channel();
                while Instant::now() < deadline {
                    let e = event(&mut rng);
                    let submitted = Instant::now();
                    journal.lock().expect("journal lock").submit(Some(e), Durable(tx.clone()));
                    let (durable, result) = rx.recv().expect("journal completes every event");
                    result.expect("journal write");
                    hist.saturating_record(durable.saturating_duration_since(submitted).as_nanos().max(1) as u64);
                }
                hist
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    for t in threads {
        hist.add(t.join().expect("submitter thread")).expect("same bounds");
    }
    let seconds = started.elapsed().as_secs_f64();
    LatencyReport { records: hist.len(), seconds, hist }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1_000.0 * 10.0).round() / 10.0
}

/// (fsync, preallocated segments): the gateway's default first, then one factor changed.
const LATENCY_MODES: [(bool, bool); 3] = [(true, true), (true, false), (false, true)];

fn journal_latency(run_for: Duration) {
    for (fsync, prealloc) in LATENCY_MODES {
        let r = measure_latency(fsync, prealloc, run_for);
        let h = &r.hist;
        let line = format!(
            r#"{{"fsync":{fsync},"prealloc":{prealloc},"submitters":{SUBMITTERS},"seconds":{:.2},"records":{},"records_per_s":{:.0},"p50_us":{},"p99_us":{},"p999_us":{},"max_us":{}}}"#,
            r.seconds,
            r.records,
            r.records as f64 / r.seconds,
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
        );
        println!("journal-latency: {line}");
    }
}

/// The benchmark filter criterion was given, if any (the first positional argument).
fn filter() -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "-c",
        "--color",
        "--format",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--output-format",
        "--plotting-backend",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    journal_append(&mut c);
    c.final_summary();

    let listing = std::env::args().any(|a| a == "--list");
    // A filter selects this part by substring (criterion's own filter is a regex).
    let selected = filter().is_none_or(|f| "journal_latency".contains(f.as_str()) || f.contains("journal_latency"));
    if !listing && selected {
        journal_latency(if full_run() { LATENCY_RUN } else { Duration::from_millis(200) });
    }
}
