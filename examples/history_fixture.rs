//! A large settled history, written straight into `DIR/history.redb` with
//! [`paygate::history::import`] (no gateway, no HTTP), for benchmarks of a gateway that starts
//! on millions of payments (`scripts/history_bench.py`).
//!
//! `cargo run --release --example history_fixture -- --dir DIR --payments 10000000
//! [--rate-per-s 2000] [--seed 1] [--processors default,fallback]`
//!
//! Payment `i` (0 = oldest) is a pure function of `(seed, i)`: its id is a bijective mix of
//! `i` under a key drawn from the seed (so ids never repeat), its processor, amount and
//! acceptance delay come from a `fastrand` generator seeded with `(seed, i)`, and its
//! `requestedAt` is spaced at `--rate-per-s`, the newest `--end-ago-ms` before now. Besides
//! the history it writes `DIR/fixture.json` (exact totals per processor, the time span) and
//! `DIR/fixture-ids.txt` (a sample of payments spread evenly over the history, ids written as
//! the gateway writes them), so that a bench can check a summary exactly and pick old ids.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::history::{self, Entry};
use paygate::processor::ProcessorIdx;

#[derive(Parser, Debug)]
#[command(about = "Writes N settled payments straight into DIR/history.redb")]
struct Args {
    /// Data directory of the gateway that will start on the history; must not hold one yet.
    #[arg(long)]
    dir: PathBuf,
    /// Settled (processed) payments to write.
    #[arg(long)]
    payments: u64,
    /// Payments per second of `requestedAt`: the history spans payments / rate seconds.
    #[arg(long, default_value_t = 2_000)]
    rate_per_s: u64,
    /// Seed of every id, amount and processor choice (the same seed writes the same history).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Processor names, cheapest first, as the gateway's `--processor NAME=URL` will name them.
    #[arg(long, value_delimiter = ',', default_value = "default,fallback")]
    processors: Vec<String>,
    /// Percent of payments on the first processor; the rest go evenly to the others.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
    first_pct: u8,
    /// Every payment's amount in cents (1990: the contest's 19.90); 0: random amounts from
    /// 0.01 to 999.99, which lets a bench tell one payment's amount from another's.
    #[arg(long, default_value_t = 0)]
    cents: u64,
    /// Payments per write transaction.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Payments listed in fixture-ids.txt, evenly spaced from the oldest to the newest.
    #[arg(long, default_value_t = 20_000)]
    sample: u64,
    /// The newest payment's `requestedAt` is this long before now, milliseconds.
    #[arg(long, default_value_t = 2_000)]
    end_ago_ms: u64,
}

/// splitmix64's finalizer: a bijection of u64.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Payment `i`'s id: xor with a key of the seed, then odd multiplications and xor-shifts, each
/// a bijection of u128, so distinct `i` always give distinct ids.
fn id_of(seed: u64, i: u64) -> CorrelationId {
    let key = (u128::from(mix64(seed ^ 0x5851_f42d_4c95_7f2d)) << 64) | u128::from(mix64(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    let mut x = u128::from(i) ^ key;
    x = x.wrapping_mul(0x2d35_8dcc_aa6c_78a5_8bb8_4b93_962e_acc9);
    x ^= x >> 67;
    x = x.wrapping_mul(0x4f1b_bcdc_bfa5_4e19_a1c6_5f2b_73c9_1ee5);
    x ^= x >> 59;
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    x ^= x >> 64;
    CorrelationId(x)
}

struct Fixture<'a> {
    args: &'a Args,
    /// `requestedAt` of the newest payment.
    end: i64,
    started: Instant,
    /// Per processor: count, cents.
    totals: Vec<(u64, u128)>,
    sample: Vec<Entry>,
    sample_every: u64,
    generated: u64,
}

impl Fixture<'_> {
    fn requested_at(&self, i: u64) -> i64 {
        let behind = u128::from(self.args.payments - 1 - i) * 1_000 / u128::from(self.args.rate_per_s);
        self.end - behind as i64
    }

    fn entry(&self, i: u64) -> Entry {
        let a = self.args;
        let mut rng = fastrand::Rng::with_seed(mix64(a.seed.rotate_left(32) ^ mix64(i)));
        let others = a.processors.len() - 1;
        let processor = if others == 0 || rng.u8(0..100) < a.first_pct { 0 } else { 1 + rng.usize(0..others) };
        let cents = if a.cents > 0 { a.cents } else { rng.u64(1..100_000) };
        let requested_at = self.requested_at(i);
        Entry {
            id: id_of(a.seed, i),
            cents: Cents::new(cents).expect("cents in range"),
            // The gateway stamps acceptance first and `requestedAt` when it sends.
            accepted_at: UtcMillis(requested_at - rng.i64(1..=5)),
            processor: processor as ProcessorIdx,
            requested_at: UtcMillis(requested_at),
            maybe_known: true,
        }
    }

    /// Payments `from..` of one write transaction, sorted by id: the transaction then walks
    /// the payments table in key order (the same entries, in fewer page visits).
    fn chunk(&mut self, from: u64) -> Vec<Entry> {
        let a = self.args;
        if from > 0 {
            // `import` commits a transaction as soon as it holds `batch` payments, before it
            // asks for the next one: everything before `from` is committed now.
            let s = self.started.elapsed().as_secs_f64();
            eprintln!(
                "  {from:>11} / {} committed ({:5.1} %) in {s:7.1} s, {:.0} payments/s",
                a.payments,
                100.0 * from as f64 / a.payments as f64,
                from as f64 / s.max(1e-9)
            );
        }
        let to = (from + a.batch as u64).min(a.payments);
        let mut out: Vec<Entry> = (from..to).map(|i| self.entry(i)).collect();
        for (i, e) in (from..to).zip(&out) {
            let t = &mut self.totals[usize::from(e.processor)];
            t.0 += 1;
            t.1 += u128::from(e.cents.get());
            if i % self.sample_every == 0 || i == a.payments - 1 {
                self.sample.push(*e);
            }
        }
        self.generated = to;
        out.sort_unstable_by_key(|e| e.id.0);
        out
    }
}

fn iso(ms: i64) -> String {
    UtcMillis(ms).to_string()
}

fn decimal(cents: u128) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn run(args: &Args) -> Result<(), String> {
    if args.payments == 0 || args.rate_per_s == 0 || args.batch == 0 {
        return Err("--payments, --rate-per-s and --batch must be above 0".into());
    }
    if args.processors.is_empty() || args.processors.iter().any(|p| p.trim().is_empty()) {
        return Err("--processors: expected names such as default,fallback".into());
    }
    if args.cents > paygate::domain::money::MAX_CENTS {
        return Err(format!("--cents {}: above the largest amount", args.cents));
    }
    let file = args.dir.join(history::FILE_NAME);
    if file.exists() {
        // `import` skips ids already there, so the totals below would not describe the file.
        return Err(format!("{} exists already: remove it or choose another --dir", file.display()));
    }
    let end = UtcMillis::now().0 - args.end_ago_ms as i64;
    let mut fx = Fixture {
        args,
        end,
        started: Instant::now(),
        totals: vec![(0, 0); args.processors.len()],
        sample: Vec::with_capacity(args.sample.min(args.payments) as usize + 1),
        sample_every: (args.payments / args.sample.max(1)).max(1),
        generated: 0,
    };
    let first_ms = fx.requested_at(0);
    eprintln!(
        "history_fixture: {} payments into {} ({} per s of requestedAt, {} .. {}, seed {}, batch {})",
        args.payments,
        file.display(),
        args.rate_per_s,
        iso(first_ms),
        iso(end),
        args.seed,
        args.batch
    );
    let starts = (0..args.payments).step_by(args.batch);
    let written = {
        let fx = &mut fx;
        let entries = starts.flat_map(move |from| fx.chunk(from));
        history::import(&args.dir, &args.processors, entries, args.batch)?
    };
    let elapsed = fx.started.elapsed().as_secs_f64();
    if written != args.payments || fx.generated != args.payments {
        return Err(format!("wrote {written} of {} payments (an id repeated?)", args.payments));
    }
    let bytes = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?.len();
    eprintln!(
        "history_fixture: {written} payments in {elapsed:.1} s ({:.0} payments/s); {} is {:.1} MiB",
        written as f64 / elapsed,
        file.display(),
        bytes as f64 / f64::from(1u32 << 20)
    );

    let ids_path = args.dir.join("fixture-ids.txt");
    let mut ids = std::io::BufWriter::new(std::fs::File::create(&ids_path).map_err(|e| format!("{}: {e}", ids_path.display()))?);
    let mut line = Vec::with_capacity(128);
    line.extend_from_slice(b"# correlationId amount processor requestedAt requested_at_ms\n");
    for e in &fx.sample {
        e.id.write_to(&mut line);
        line.push(b' ');
        e.cents.write_decimal(&mut line);
        let _ = writeln!(line, " {} {} {}", args.processors[usize::from(e.processor)], e.requested_at, e.requested_at.0);
        ids.write_all(&line).map_err(|e| format!("{}: {e}", ids_path.display()))?;
        line.clear();
    }
    ids.flush().map_err(|e| format!("{}: {e}", ids_path.display()))?;

    let totals: serde_json::Map<String, serde_json::Value> = args
        .processors
        .iter()
        .zip(&fx.totals)
        .map(|(name, &(count, cents))| {
            let t = serde_json::json!({"count": count, "cents": cents.to_string(), "amount": decimal(cents)});
            (name.clone(), t)
        })
        .collect();
    let summary = serde_json::json!({
        "payments": written,
        "seed": args.seed,
        "rate_per_s": args.rate_per_s,
        "processors": args.processors,
        "first_pct": args.first_pct,
        "cents": args.cents,
        "from_ms": first_ms,
        "to_ms": end,
        "from": iso(first_ms),
        "to": iso(end),
        "totals": totals,
        "sample_file": "fixture-ids.txt",
        "sample": fx.sample.len(),
        "history_bytes": bytes,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "batch": args.batch,
        "created_at": iso(UtcMillis::now().0),
    });
    let json_path = args.dir.join("fixture.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&json_path, text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    for (name, &(count, cents)) in args.processors.iter().zip(&fx.totals) {
        eprintln!("  {name}: {count} payments, {}", decimal(cents));
    }
    eprintln!("history_fixture: wrote {} and {} ({} sample ids)", json_path.display(), ids_path.display(), fx.sample.len());
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("history_fixture: {e}");
        std::process::exit(1);
    }
}
