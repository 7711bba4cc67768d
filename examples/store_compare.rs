//! Which embedded store should hold the gateway's on-disk payment history? A re-runnable
//! comparison of three candidates on the history's own workload:
//!
//! `cargo run --release --example store_compare -- --payments 2000000`
//!
//! (`--payments 200000` for a quick run. Add `--drop-caches`, as root, for truly cold passes:
//! it writes `1` to `/proc/sys/vm/drop_caches`, which drops the whole machine's clean page
//! cache, before each cold pass; without it "cold" only means "a fresh process". Add
//! `--stores fjall` with `--fjall-memtable-mib 8`, `--fjall-cache-mib 32` or
//! `--fjall-flush-on-close` to try fjall tuned. Beware a cliff: fjall's block cache is split
//! into 4 shards per core, and a filter or index block larger than one shard is never kept,
//! so with 16 MiB on 2 cores a table of ~1.5 M keys (a 1.8 MB filter) is read again on every
//! lookup, ~100 µs each.)
//!
//! - `redb`: redb 5 as `paygate::history` uses it — a `payments` table `u128` → 25 bytes,
//!   one write transaction per batch with `Durability::Immediate`, a 16 MiB cache, a read
//!   transaction per lookup.
//! - `fjall`: fjall 3 (an LSM tree) — one keyspace `payments`, keys as 16 big-endian bytes, one
//!   `WriteBatch` per batch committed with `PersistMode::SyncData` (its journal is
//!   `fdatasync`ed before `commit` returns, as redb's file is), a 16 MiB block cache
//!   (`--fjall-cache-mib`; fjall's own default is 32), other options at fjall's defaults
//!   (64 MiB memtable, leveled compaction, Bloom filters).
//! - `runs`: what we would build ourselves — an append-only log (`fdatasync` per batch) and,
//!   every `--run-entries` (64 Ki) entries, a sorted immutable run file of fixed 41-byte
//!   records; a lookup checks the entries not yet in a run (in memory, rebuilt from the log at
//!   open), then binary-searches each run newest first with `pread`, with no filter and no
//!   compaction, so its cost grows with the number of runs.
//!
//! Workload: `--payments` ids that look like UUIDv4 (a bijective mix of the payment number,
//! so they never repeat and need not be kept in memory), 25-byte values laid out as the
//! history's (cents, accepted_at, processor, requested_at), loaded in batches of `--batch`
//! (200: 100 ms of a 2 000 payments/s gateway) with a durable commit per batch. Then
//! `--lookups` random present ids and as many absent ids, interleaved, from a fresh open
//! (cold: after dropping the page cache) and again (warm); the time to open the store and to
//! iterate every key (the gateway rebuilds its id filter that way at start), cold and warm;
//! and the open and iteration after a crash (the process exits right after a durable commit,
//! without closing the store).
//!
//! Each phase of each store runs in a child process of its own (this same binary), so that
//! its CPU time (`getrusage`), bytes written (`/proc/self/io` `write_bytes`) and peak RSS
//! (`VmHWM`) are its own; device-wide sectors and writes (`/sys/dev/block/M:m/stat`) are
//! also shown but count whatever else the machine writes meanwhile. Each store gets a fresh
//! directory under `target/store-compare/` (the gateway's data lives on the same
//! filesystem), removed afterwards; the whole comparison repeats `--reps` times interleaved
//! (redb, fjall, runs, redb, ...) and prints each figure's median and range, then a markdown
//! table.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const VALUE_BYTES: usize = 25;
/// One logical entry: a 16-byte id and its value.
const ENTRY_BYTES: usize = 16 + VALUE_BYTES;
/// As `paygate::history::CACHE_BYTES`; fjall's block cache gets the same.
const CACHE_BYTES: usize = 16 << 20;
/// Absent ids are payment numbers from here on (the load and the crash batch use 0..N+batch).
const ABSENT_BASE: u64 = 1 << 62;

type Value = [u8; VALUE_BYTES];

#[derive(Parser, Debug, Clone)]
#[command(about = "Compares redb, fjall and sorted runs as the payment history's store")]
struct Args {
    /// Payments to load into each store.
    #[arg(long, default_value_t = 2_000_000)]
    payments: u64,
    /// Payments per durable commit.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Present ids looked up, and as many absent ones, in each pass.
    #[arg(long, default_value_t = 100_000)]
    lookups: usize,
    /// Repetitions of the whole comparison (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Stores to compare, in this order within each repetition.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "redb,fjall,runs")]
    stores: Vec<StoreKind>,
    /// Drop the page cache (`/proc/sys/vm/drop_caches`, root only) before each cold pass.
    #[arg(long)]
    drop_caches: bool,
    /// Entries per sorted run of the `runs` store.
    #[arg(long, default_value_t = 65_536)]
    run_entries: usize,
    /// fjall's block cache (its default: 32; the default here is redb's 16 MiB, as the gateway's).
    #[arg(long, default_value_t = (CACHE_BYTES >> 20) as u64)]
    fjall_cache_mib: u64,
    /// fjall's memtable size (its default: 64).
    #[arg(long, default_value_t = 64)]
    fjall_memtable_mib: u64,
    /// Flush fjall's memtable into a table at each clean close (off: fjall's behaviour, which
    /// leaves it to be replayed from the journal at the next open).
    #[arg(long)]
    fjall_flush_on_close: bool,
    /// Seed of the ids and the lookups.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the stores' directories go (default: target/store-compare in the crate).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Keep the stores' directories.
    #[arg(long)]
    keep: bool,
    #[arg(long, value_enum, hide = true)]
    child: Option<Phase>,
    #[arg(long, value_enum, hide = true)]
    store: Option<StoreKind>,
    #[arg(long, hide = true)]
    dir: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 0)]
    rep: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Redb,
    Fjall,
    Runs,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Redb => "redb",
            StoreKind::Fjall => "fjall",
            StoreKind::Runs => "runs",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    Load,
    Open,
    Lookup,
    Crash,
    Recover,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Open => "open",
            Phase::Lookup => "lookup",
            Phase::Crash => "crash",
            Phase::Recover => "recover",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload

/// Payment `i`'s id: a bijection of `i` (odd multiplications and xor-shifts mod 2^128), so
/// distinct numbers give distinct, uniformly spread ids.
fn id_of(seed: u64, i: u64) -> u128 {
    let mut x = u128::from(i) ^ (u128::from(seed) << 64 | 0x5851_F42D_4C95_7F2D);
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    x ^= x >> 67;
    x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93_A4D1_C3B2_E1F0_A5B7);
    x ^= x >> 59;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9_94D0_49BB_1331_11EB);
    x ^= x >> 64;
    x
}

/// Payment `i`'s value, laid out as the history's entry: cents 8, accepted_at 8, processor 1,
/// requested_at 8 (timestamps 2 000 a second, as compressible as the real ones).
fn value_of(i: u64) -> Value {
    let mut rng = fastrand::Rng::with_seed(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA076_1D64_78BD_642F);
    let accepted = 1_750_000_000_000i64 + (i / 2) as i64;
    let mut out = [0u8; VALUE_BYTES];
    out[..8].copy_from_slice(&rng.u64(1..=1_000_000).to_le_bytes());
    out[8..16].copy_from_slice(&accepted.to_le_bytes());
    out[16] = u8::from(rng.u8(..) < 200);
    out[17..].copy_from_slice(&(accepted + rng.i64(0..50)).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// The stores

trait Store: Sized {
    fn open(dir: &Path, args: &Args) -> R<Self>;
    /// Writes `batch` and makes it durable before returning.
    fn commit(&mut self, batch: &[(u128, Value)]) -> R<()>;
    fn get(&self, id: u128) -> R<Option<Value>>;
    /// Visits every key in order: (count, xor of the keys).
    fn scan_keys(&self) -> R<(u64, u128)>;
    /// The store's shape, for the report.
    fn info(&self) -> String;
    /// A clean close.
    fn close(self) -> R<()> {
        drop(self);
        Ok(())
    }
}

const PAYMENTS: TableDefinition<u128, &[u8; VALUE_BYTES]> = TableDefinition::new("payments");

struct RedbStore {
    db: redb::Database,
}

impl Store for RedbStore {
    fn open(dir: &Path, _: &Args) -> R<Self> {
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(dir.join("history.redb"))?;
        Ok(RedbStore { db })
    }

    fn commit(&mut self, batch: &[(u128, Value)]) -> R<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut t = txn.open_table(PAYMENTS)?;
            for (id, v) in batch {
                t.insert(*id, v)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn get(&self, id: u128) -> R<Option<Value>> {
        // As `History::get`: a read transaction per lookup.
        let read = self.db.begin_read()?;
        let t = read.open_table(PAYMENTS)?;
        Ok(t.get(id)?.map(|v| *v.value()))
    }

    fn scan_keys(&self) -> R<(u64, u128)> {
        let read = self.db.begin_read()?;
        let t = read.open_table(PAYMENTS)?;
        let (mut n, mut x) = (0u64, 0u128);
        for row in t.iter()? {
            let (k, _) = row?;
            n += 1;
            x ^= k.value();
        }
        Ok((n, x))
    }

    fn info(&self) -> String {
        String::new()
    }
}

struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
    flush_on_close: bool,
}

impl Store for FjallStore {
    fn open(dir: &Path, args: &Args) -> R<Self> {
        let db = fjall::Database::builder(dir).cache_size(args.fjall_cache_mib << 20).open()?;
        let memtable = args.fjall_memtable_mib << 20;
        let ks = db.keyspace("payments", || fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable))?;
        Ok(FjallStore { db, ks, flush_on_close: args.fjall_flush_on_close })
    }

    fn close(self) -> R<()> {
        if self.flush_on_close {
            // Doc-hidden in fjall 3 ("used in tests"): without it a clean close leaves the
            // memtable in the journal, and every open replays it.
            self.ks.rotate_memtable_and_wait()?;
        }
        drop(self);
        Ok(())
    }

    fn commit(&mut self, batch: &[(u128, Value)]) -> R<()> {
        let mut b = self.db.batch().durability(Some(fjall::PersistMode::SyncData));
        for (id, v) in batch {
            b.insert(&self.ks, &id.to_be_bytes()[..], &v[..]);
        }
        b.commit()?;
        Ok(())
    }

    fn get(&self, id: u128) -> R<Option<Value>> {
        match self.ks.get(id.to_be_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(<Value>::try_from(&v[..])?)),
        }
    }

    fn scan_keys(&self) -> R<(u64, u128)> {
        let (mut n, mut x) = (0u64, 0u128);
        for g in self.ks.iter() {
            let k = g.key()?;
            n += 1;
            x ^= u128::from_be_bytes(<[u8; 16]>::try_from(&k[..])?);
        }
        Ok((n, x))
    }

    fn info(&self) -> String {
        format!(
            "tables={} l0_tables={} journals={} approx_len={}",
            self.ks.table_count(),
            self.ks.l0_table_count(),
            self.db.journal_count(),
            self.ks.approximate_len()
        )
    }
}

/// An append-only log, fdatasync'ed per batch, and sorted immutable runs written from it.
struct RunsStore {
    dir: PathBuf,
    /// The log of the entries not yet in a run, and its number (the run it becomes).
    log: File,
    log_seq: u64,
    mem: Vec<(u128, Value)>,
    mem_index: HashMap<u128, u32>,
    /// Oldest first: (file, entries).
    runs: Vec<(File, u64)>,
    run_entries: usize,
    buf: Vec<u8>,
}

fn seq_of(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

fn sync_dir(dir: &Path) -> R<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn decode(rec: &[u8]) -> (u128, Value) {
    let id = u128::from_le_bytes(rec[..16].try_into().expect("16"));
    (id, rec[16..ENTRY_BYTES].try_into().expect("25"))
}

impl RunsStore {
    fn log_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("log-{seq:010}.log"))
    }

    /// Sorts what the log holds into run `log_seq`, then starts log `log_seq + 1`.
    fn write_run(&mut self) -> R<()> {
        self.mem.sort_unstable_by_key(|e| e.0);
        let tmp = self.dir.join("run.tmp");
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        for (id, v) in &self.mem {
            w.write_all(&id.to_le_bytes())?;
            w.write_all(v)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_data()?;
        let run = self.dir.join(format!("run-{:010}.run", self.log_seq));
        fs::rename(&tmp, &run)?;
        sync_dir(&self.dir)?;
        let old = self.log_path(self.log_seq);
        self.log_seq += 1;
        self.log = OpenOptions::new().create(true).append(true).open(self.log_path(self.log_seq))?;
        sync_dir(&self.dir)?;
        fs::remove_file(old)?;
        self.runs.push((File::open(run)?, self.mem.len() as u64));
        self.mem.clear();
        self.mem_index.clear();
        Ok(())
    }
}

impl Store for RunsStore {
    fn open(dir: &Path, args: &Args) -> R<Self> {
        fs::create_dir_all(dir)?;
        let (mut run_seqs, mut log_seqs) = (Vec::new(), Vec::new());
        for e in fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(s) = seq_of(&name, "run-", ".run") {
                run_seqs.push(s);
            } else if let Some(s) = seq_of(&name, "log-", ".log") {
                log_seqs.push(s);
            }
        }
        run_seqs.sort_unstable();
        log_seqs.sort_unstable();
        let mut runs = Vec::with_capacity(run_seqs.len());
        for &s in &run_seqs {
            let f = File::open(dir.join(format!("run-{s:010}.run")))?;
            let n = f.metadata()?.len() / ENTRY_BYTES as u64;
            runs.push((f, n));
        }
        let log_path = |seq: u64| dir.join(format!("log-{seq:010}.log"));
        let mut log_seq = run_seqs.last().map_or(0, |s| s + 1);
        let (mut mem, mut mem_index) = (Vec::new(), HashMap::new());
        for s in log_seqs {
            if run_seqs.binary_search(&s).is_ok() {
                // A crash between the run's rename and the log's removal.
                fs::remove_file(log_path(s))?;
                continue;
            }
            log_seq = s;
            let mut bytes = Vec::new();
            File::open(log_path(s))?.read_to_end(&mut bytes)?;
            let whole = bytes.len() / ENTRY_BYTES * ENTRY_BYTES;
            for rec in bytes[..whole].chunks_exact(ENTRY_BYTES) {
                let (id, v) = decode(rec);
                mem_index.insert(id, mem.len() as u32);
                mem.push((id, v));
            }
            if whole != bytes.len() {
                // A torn last write: it was never acknowledged.
                OpenOptions::new().write(true).open(log_path(s))?.set_len(whole as u64)?;
            }
        }
        let log = OpenOptions::new().create(true).append(true).open(log_path(log_seq))?;
        Ok(RunsStore { dir: dir.to_path_buf(), log, log_seq, mem, mem_index, runs, run_entries: args.run_entries.max(1), buf: Vec::new() })
    }

    fn commit(&mut self, batch: &[(u128, Value)]) -> R<()> {
        self.buf.clear();
        for (id, v) in batch {
            self.buf.extend_from_slice(&id.to_le_bytes());
            self.buf.extend_from_slice(v);
            self.mem_index.insert(*id, self.mem.len() as u32);
            self.mem.push((*id, *v));
        }
        self.log.write_all(&self.buf)?;
        self.log.sync_data()?;
        if self.mem.len() >= self.run_entries {
            self.write_run()?;
        }
        Ok(())
    }

    fn get(&self, id: u128) -> R<Option<Value>> {
        if let Some(&i) = self.mem_index.get(&id) {
            return Ok(Some(self.mem[i as usize].1));
        }
        let mut rec = [0u8; ENTRY_BYTES];
        for (f, n) in self.runs.iter().rev() {
            let (mut lo, mut hi) = (0u64, *n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                f.read_exact_at(&mut rec, mid * ENTRY_BYTES as u64)?;
                let (k, v) = decode(&rec);
                match k.cmp(&id) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return Ok(Some(v)),
                }
            }
        }
        Ok(None)
    }

    fn scan_keys(&self) -> R<(u64, u128)> {
        let (mut n, mut x) = (0u64, 0u128);
        let mut rec = [0u8; ENTRY_BYTES];
        for (f, entries) in &self.runs {
            let mut r = BufReader::with_capacity(1 << 20, f.try_clone()?);
            for _ in 0..*entries {
                r.read_exact(&mut rec)?;
                n += 1;
                x ^= decode(&rec).0;
            }
        }
        for (id, _) in &self.mem {
            n += 1;
            x ^= id;
        }
        Ok((n, x))
    }

    fn info(&self) -> String {
        format!("runs={} in_log={}", self.runs.len(), self.mem.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Process counters

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn proc_field(path: &str, key: &str) -> f64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn write_bytes() -> f64 {
    proc_field("/proc/self/io", "write_bytes")
}

fn read_bytes() -> f64 {
    proc_field("/proc/self/io", "read_bytes")
}

fn hwm_mib() -> f64 {
    proc_field("/proc/self/status", "VmHWM") / 1024.0
}

/// The block device under `dir`: (sectors written, writes completed), device-wide.
fn device_writes(dir: &Path) -> (f64, f64) {
    let Ok(m) = fs::metadata(dir) else { return (f64::NAN, f64::NAN) };
    let dev = m.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let text = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).unwrap_or_default();
    let f: Vec<f64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    if f.len() < 7 { (f64::NAN, f64::NAN) } else { (f[6], f[4]) }
}

fn du_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                total += if m.is_dir() { du_bytes(&e.path()) } else { m.blocks() * 512 };
            }
        }
    }
    total
}

fn available_bytes(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: statvfs writes into the struct it is given; `c` is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    s.f_bavail * s.f_frsize
}

fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "1") {
        eprintln!("warning: could not drop the page cache ({e}); this cold pass is only a fresh process");
    }
}

// ---------------------------------------------------------------------------------------------
// Child phases: each prints `key value` lines (and `info ...`) for the parent.

fn out(key: &str, v: f64) {
    println!("{key} {v}");
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// p50, p99, p99.9, max and mean of latencies in ns, printed in µs.
fn out_latencies(prefix: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len().max(1) as f64;
    for (name, v) in [
        ("p50", percentile(&ns, 0.50)),
        ("p99", percentile(&ns, 0.99)),
        ("p999", percentile(&ns, 0.999)),
        ("max", ns.last().copied().unwrap_or(0) as f64),
        ("mean", mean),
    ] {
        out(&format!("{prefix}_{name}_us"), v / 1e3);
    }
}

fn batch_of(args: &Args, from: u64, to: u64, batch: &mut Vec<(u128, Value)>) {
    batch.clear();
    batch.extend((from..to).map(|i| (id_of(args.seed, i), value_of(i))));
}

fn child<S: Store>(phase: Phase, dir: &Path, args: &Args) -> R<()> {
    let n = args.payments;
    match phase {
        Phase::Load => {
            let (cpu0, wb0, dev0) = (cpu_seconds(), write_bytes(), device_writes(dir));
            let mut store = S::open(dir, args)?;
            let mut batch = Vec::with_capacity(args.batch);
            let mut commit_ns = Vec::with_capacity((n as usize).div_ceil(args.batch));
            let start = Instant::now();
            let mut i = 0;
            while i < n {
                let to = (i + args.batch as u64).min(n);
                batch_of(args, i, to, &mut batch);
                let t = Instant::now();
                store.commit(&batch)?;
                commit_ns.push(t.elapsed().as_nanos() as u64);
                i = to;
            }
            let load = start.elapsed().as_secs_f64();
            println!("info after load: {}", store.info());
            let t = Instant::now();
            store.close()?;
            out("close_ms", t.elapsed().as_secs_f64() * 1e3);
            let (cpu, wb, dev1) = (cpu_seconds() - cpu0, write_bytes() - wb0, device_writes(dir));
            let commits = commit_ns.len() as f64;
            out("load_s", load);
            out("commits_per_s", commits / load);
            out("payments_per_s", n as f64 / load);
            commit_ns.sort_unstable();
            out("commit_p50_ms", percentile(&commit_ns, 0.5) / 1e6);
            out("commit_p99_ms", percentile(&commit_ns, 0.99) / 1e6);
            out("commit_max_ms", commit_ns.last().copied().unwrap_or(0) as f64 / 1e6);
            out("cpu_s", cpu);
            out("cpu_us_per_payment", cpu / n as f64 * 1e6);
            out("write_mb", wb / 1e6);
            out("write_bytes_per_payment", wb / n as f64);
            out("write_amp", wb / (n as f64 * ENTRY_BYTES as f64));
            out("dev_write_mb", (dev1.0 - dev0.0) * 512.0 / 1e6);
            out("dev_writes_per_commit", (dev1.1 - dev0.1) / commits);
            out("load_hwm_mib", hwm_mib());
        }
        Phase::Open | Phase::Recover => {
            let expect = if phase == Phase::Recover { n + args.batch as u64 } else { n };
            let rb0 = read_bytes();
            let t = Instant::now();
            let store = S::open(dir, args)?;
            let open = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let (count, x) = store.scan_keys()?;
            let scan = t.elapsed().as_secs_f64();
            black_box(x);
            if count != expect {
                return Err(format!("scan found {count} keys, expected {expect}").into());
            }
            let p = phase.name();
            println!("info at {p}: {}", store.info());
            out(&format!("{p}_ms"), open * 1e3);
            out(&format!("{p}_scan_ms"), scan * 1e3);
            out(&format!("{p}_read_mb"), (read_bytes() - rb0) / 1e6);
            out(&format!("{p}_hwm_mib"), hwm_mib());
            store.close()?;
        }
        Phase::Lookup => {
            let store = S::open(dir, args)?;
            let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_mul(1_000_003) ^ args.rep);
            // (payment number, present?)
            let mut queries: Vec<(u64, bool)> = (0..args.lookups).map(|_| (rng.u64(..n), true)).collect();
            queries.extend((0..args.lookups).map(|_| (ABSENT_BASE + rng.u64(..1 << 40), false)));
            let rb0 = read_bytes();
            for pass in ["cold", "warm"] {
                rng.shuffle(&mut queries);
                let (mut hit_ns, mut miss_ns) = (Vec::with_capacity(args.lookups), Vec::with_capacity(args.lookups));
                let mut first_1k = Duration::ZERO;
                for (k, &(i, present)) in queries.iter().enumerate() {
                    let id = id_of(args.seed, i);
                    let t = Instant::now();
                    let got = store.get(id)?;
                    let dt = t.elapsed();
                    if k < 1_000 {
                        first_1k += dt;
                    }
                    match (present, got) {
                        (true, Some(v)) if v == value_of(i) => hit_ns.push(dt.as_nanos() as u64),
                        (false, None) => miss_ns.push(dt.as_nanos() as u64),
                        (p, g) => return Err(format!("lookup of payment {i}: present={p}, got {g:?}").into()),
                    }
                }
                out(&format!("{pass}_first1k_mean_us"), first_1k.as_secs_f64() * 1e6 / 1_000f64.min(queries.len() as f64));
                out_latencies(&format!("{pass}_hit"), hit_ns);
                out_latencies(&format!("{pass}_miss"), miss_ns);
                if pass == "cold" {
                    out("cold_read_mb", (read_bytes() - rb0) / 1e6);
                }
            }
            println!("info at lookup: {}", store.info());
            out("lookup_hwm_mib", hwm_mib());
            store.close()?;
        }
        Phase::Crash => {
            let mut store = S::open(dir, args)?;
            let mut batch = Vec::new();
            batch_of(args, n, n + args.batch as u64, &mut batch);
            store.commit(&batch)?;
            // Durable, not closed: what `kill -9` right after a commit leaves.
            std::process::exit(0);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent

fn run_child(args: &Args, phase: Phase, store: StoreKind, dir: &Path, rep: u64) -> R<BTreeMap<String, f64>> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--child", phase.name(), "--store", store.name()])
        .arg("--dir")
        .arg(dir)
        .args(["--rep", &rep.to_string()])
        .args(["--payments", &args.payments.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--lookups", &args.lookups.to_string()])
        .args(["--run-entries", &args.run_entries.to_string()])
        .args(["--fjall-memtable-mib", &args.fjall_memtable_mib.to_string()])
        .args(["--fjall-cache-mib", &args.fjall_cache_mib.to_string()])
        .args(args.fjall_flush_on_close.then_some("--fjall-flush-on-close"))
        .args(["--seed", &args.seed.to_string()]);
    let output = cmd.output()?;
    std::io::stderr().write_all(&output.stderr)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("{} {} failed ({}): {stdout}", store.name(), phase.name(), output.status).into());
    }
    let mut figures = BTreeMap::new();
    for line in stdout.lines() {
        if line.starts_with("info") {
            println!("    {} {line}", store.name());
        } else if let Some((k, v)) = line.split_once(' ')
            && let Ok(v) = v.parse::<f64>()
        {
            figures.insert(k.to_string(), v);
        }
    }
    Ok(figures)
}

fn one_store(args: &Args, root: &Path, store: StoreKind, rep: u64) -> R<BTreeMap<String, f64>> {
    let avail = available_bytes(root);
    let need = (args.payments * 1_000).max(2 << 30);
    if avail < need + (8 << 30) {
        return Err(format!("only {} MB free under {}", avail / 1_000_000, root.display()).into());
    }
    let dir = root.join(format!("{}-{rep}", store.name()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    sync_dir(root)?;
    let mut all = run_child(args, Phase::Load, store, &dir, rep)?;
    all.insert("du_mb".into(), du_bytes(&dir) as f64 / 1e6);
    let cold = |all: &mut BTreeMap<String, f64>, phase: Phase, prefix: &str| -> R<()> {
        if args.drop_caches {
            drop_caches();
        }
        for (k, v) in run_child(args, phase, store, &dir, rep)? {
            all.insert(format!("{prefix}{k}"), v);
        }
        Ok(())
    };
    cold(&mut all, Phase::Open, "cold_")?;
    for (k, v) in run_child(args, Phase::Open, store, &dir, rep)? {
        all.insert(format!("warm_{k}"), v);
    }
    cold(&mut all, Phase::Lookup, "")?;
    run_child(args, Phase::Crash, store, &dir, rep)?;
    // A restart right after a kill: the page cache is still warm.
    all.extend(run_child(args, Phase::Recover, store, &dir, rep)?);
    all.insert("du_final_mb".into(), du_bytes(&dir) as f64 / 1e6);
    if !args.keep {
        fs::remove_dir_all(&dir)?;
    }
    Ok(all)
}

/// (label, key, decimals) for the table.
const TABLE: &[(&str, &str, usize)] = &[
    ("load: total seconds", "load_s", 1),
    ("load: commits/s", "commits_per_s", 0),
    ("load: commit p50 (ms)", "commit_p50_ms", 2),
    ("load: commit p99 (ms)", "commit_p99_ms", 2),
    ("load: commit max (ms)", "commit_max_ms", 1),
    ("load: CPU seconds", "cpu_s", 2),
    ("load: CPU µs per payment", "cpu_us_per_payment", 2),
    ("load: bytes written (MB, /proc/self/io)", "write_mb", 0),
    ("load: bytes written per payment", "write_bytes_per_payment", 0),
    ("load: write amplification (÷ 41 B)", "write_amp", 1),
    ("load: device MB written (device-wide)", "dev_write_mb", 0),
    ("load: device writes per commit (device-wide)", "dev_writes_per_commit", 2),
    ("load: peak RSS (MiB)", "load_hwm_mib", 0),
    ("on-disk size after load (MB)", "du_mb", 0),
    ("on-disk size at the end (MB)", "du_final_mb", 0),
    ("open, cold (ms)", "cold_open_ms", 1),
    ("iterate all keys, cold (ms)", "cold_open_scan_ms", 0),
    ("open, warm (ms)", "warm_open_ms", 1),
    ("iterate all keys, warm (ms)", "warm_open_scan_ms", 0),
    ("open after a crash, warm (ms)", "recover_ms", 1),
    ("iterate after a crash, warm (ms)", "recover_scan_ms", 0),
    ("cold: first 1 000 lookups, mean (µs)", "cold_first1k_mean_us", 0),
    ("cold hit p50 (µs)", "cold_hit_p50_us", 1),
    ("cold hit p99 (µs)", "cold_hit_p99_us", 0),
    ("cold hit p99.9 (µs)", "cold_hit_p999_us", 0),
    ("cold hit max (µs)", "cold_hit_max_us", 0),
    ("cold hit mean (µs)", "cold_hit_mean_us", 1),
    ("cold miss p50 (µs)", "cold_miss_p50_us", 1),
    ("cold miss p99 (µs)", "cold_miss_p99_us", 0),
    ("cold miss p99.9 (µs)", "cold_miss_p999_us", 0),
    ("cold miss max (µs)", "cold_miss_max_us", 0),
    ("cold miss mean (µs)", "cold_miss_mean_us", 1),
    ("cold pass: MB read from the device", "cold_read_mb", 0),
    ("warm hit p50 (µs)", "warm_hit_p50_us", 2),
    ("warm hit p99 (µs)", "warm_hit_p99_us", 1),
    ("warm hit p99.9 (µs)", "warm_hit_p999_us", 1),
    ("warm hit max (µs)", "warm_hit_max_us", 0),
    ("warm hit mean (µs)", "warm_hit_mean_us", 2),
    ("warm miss p50 (µs)", "warm_miss_p50_us", 2),
    ("warm miss p99 (µs)", "warm_miss_p99_us", 1),
    ("warm miss p99.9 (µs)", "warm_miss_p999_us", 1),
    ("warm miss max (µs)", "warm_miss_max_us", 0),
    ("warm miss mean (µs)", "warm_miss_mean_us", 2),
    ("lookups: peak RSS (MiB)", "lookup_hwm_mib", 0),
];

fn median_range(values: &[f64], decimals: usize) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    if v.len() == 1 {
        return format!("{mid:.decimals$}");
    }
    format!("{mid:.decimals$} ({:.decimals$}–{:.decimals$})", v[0], v[v.len() - 1])
}

fn parent(args: &Args) -> R<()> {
    let root = args.root.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/store-compare"));
    fs::create_dir_all(&root)?;
    println!(
        "store_compare: {} payments in batches of {} (durable commit each), {} + {} lookups, {} reps, page cache {}, under {}",
        args.payments,
        args.batch,
        args.lookups,
        args.lookups,
        args.reps,
        if args.drop_caches { "dropped before cold passes" } else { "NOT dropped (cold = fresh process)" },
        root.display()
    );
    let mut results: Vec<(StoreKind, BTreeMap<String, f64>)> = Vec::new();
    for rep in 0..args.reps as u64 {
        for &store in &args.stores {
            let t = Instant::now();
            println!("rep {} {}:", rep + 1, store.name());
            let r = one_store(args, &root, store, rep)?;
            let g = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
            println!(
                "  load {:.1} s ({:.0} commits/s), cpu {:.2} s ({:.2} µs/payment), wrote {:.0} MB (x{:.1}), du {:.0} MB, rss {:.0} MiB",
                g("load_s"),
                g("commits_per_s"),
                g("cpu_s"),
                g("cpu_us_per_payment"),
                g("write_mb"),
                g("write_amp"),
                g("du_mb"),
                g("load_hwm_mib")
            );
            println!(
                "  open cold {:.1} ms + scan {:.0} ms, warm {:.1} + {:.0} ms, after crash {:.1} + {:.0} ms",
                g("cold_open_ms"),
                g("cold_open_scan_ms"),
                g("warm_open_ms"),
                g("warm_open_scan_ms"),
                g("recover_ms"),
                g("recover_scan_ms")
            );
            println!(
                "  cold hit p50/p99/max {:.1}/{:.0}/{:.0} µs, miss {:.1}/{:.0}/{:.0} µs; warm hit {:.2}/{:.1} µs, miss {:.2}/{:.1} µs ({:.0} s)",
                g("cold_hit_p50_us"),
                g("cold_hit_p99_us"),
                g("cold_hit_max_us"),
                g("cold_miss_p50_us"),
                g("cold_miss_p99_us"),
                g("cold_miss_max_us"),
                g("warm_hit_p50_us"),
                g("warm_hit_p99_us"),
                g("warm_miss_p50_us"),
                g("warm_miss_p99_us"),
                t.elapsed().as_secs_f64()
            );
            results.push((store, r));
        }
    }
    let of = |store: StoreKind, key: &str| -> Vec<f64> {
        results.iter().filter(|(s, _)| *s == store).filter_map(|(_, r)| r.get(key).copied()).collect()
    };
    println!("\nAll figures, median (min–max) over {} reps:", args.reps);
    let mut keys: Vec<&String> = results.iter().flat_map(|(_, r)| r.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let cells: Vec<String> = args.stores.iter().map(|&s| format!("{}={}", s.name(), median_range(&of(s, key), 3))).collect();
        println!("  {key}: {}", cells.join("  "));
    }
    println!(
        "\n{} payments, batches of {}, median (min–max) of {} interleaved reps{}:\n",
        args.payments,
        args.batch,
        args.reps,
        if args.drop_caches { ", cold = after dropping the page cache" } else { "" }
    );
    let names: Vec<&str> = args.stores.iter().map(|s| s.name()).collect();
    println!("| figure | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    for &(label, key, decimals) in TABLE {
        let cells: Vec<String> = args.stores.iter().map(|&s| median_range(&of(s, key), decimals)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    Ok(())
}

fn main() -> R<()> {
    let args = Args::parse();
    match (args.child, args.store, &args.dir) {
        (Some(phase), Some(store), Some(dir)) => match store {
            StoreKind::Redb => child::<RedbStore>(phase, dir, &args),
            StoreKind::Fjall => child::<FjallStore>(phase, dir, &args),
            StoreKind::Runs => child::<RunsStore>(phase, dir, &args),
        },
        (None, _, _) => parent(&args),
        _ => Err("--child needs --store and --dir".into()),
    }
}
