//! The single writer's longest insert, for the ledger's tables: std's `HashMap` (hashbrown,
//! keyed foldhash) growing with every payment, as the ledger kept all of history before the
//! hot set; the same map at a steady size with one removal per insert (its tombstones); and
//! the hot set's `IdTable`, sized at start, under the same churn.
//!
//! `cargo run --release --example table_stall -- [payments] [steady]` (default 1 000 000 and
//! 300 000). Prints the five longest single inserts with the table's size then, and the sum
//! of the inserts over 100 µs: the stall a command waits behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use paygate::domain::{Cents, UtcMillis};
use paygate::ledger::table::{IdHasher, IdTable};
use paygate::ledger::{Payment, Status};

fn payment() -> Payment {
    Payment { cents: Cents::new(1990).unwrap(), accepted_at: UtcMillis(1), status: Status::Pending, ticket: 1 }
}

fn id(i: u64) -> u128 {
    u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ 0x5555
}

struct Longest(Vec<(Duration, usize)>);

impl Longest {
    fn note(&mut self, took: Duration, len: usize) {
        self.0.push((took, len));
        if self.0.len() > 64 {
            self.0.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
            self.0.truncate(5);
        }
    }

    fn report(mut self, what: &str, over_100us: Duration) {
        self.0.sort_unstable_by_key(|a| std::cmp::Reverse(a.0));
        let top: Vec<String> = self.0.iter().take(5).map(|(d, n)| format!("{:.2} ms at {n}", d.as_secs_f64() * 1e3)).collect();
        println!("{what}: longest inserts {}; inserts over 100 µs took {:.1} ms in all", top.join(", "), over_100us.as_secs_f64() * 1e3);
    }
}

fn timed(mut op: impl FnMut(), len: usize, longest: &mut Longest, slow: &mut Duration) {
    let t = Instant::now();
    op();
    let took = t.elapsed();
    longest.note(took, len);
    if took > Duration::from_micros(100) {
        *slow += took;
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let payments = args.first().copied().unwrap_or(1_000_000);
    let steady = args.get(1).copied().unwrap_or(300_000);

    // 1. Growing with every payment (the ledger before the hot set).
    let mut map: HashMap<u128, Payment, IdHasher> = HashMap::default();
    let (mut longest, mut slow) = (Longest(Vec::new()), Duration::ZERO);
    for i in 0..payments as u64 {
        let len = map.len();
        timed(
            || {
                let _ = map.insert(id(i), payment());
            },
            len,
            &mut longest,
            &mut slow,
        );
    }
    longest.report(&format!("HashMap growing to {payments}"), slow);
    drop(map);

    // 2. std's map at a steady size, sized at start, one removal per insert.
    let mut map: HashMap<u128, Payment, IdHasher> = HashMap::with_capacity_and_hasher(steady, IdHasher::default());
    let capacity = map.capacity();
    let (mut longest, mut slow) = (Longest(Vec::new()), Duration::ZERO);
    for i in 0..payments as u64 {
        if i >= steady as u64 / 2 {
            map.remove(&id(i - steady as u64 / 2));
        }
        let len = map.len();
        timed(
            || {
                let _ = map.insert(id(i), payment());
            },
            len,
            &mut longest,
            &mut slow,
        );
    }
    longest.report(
        &format!(
            "HashMap with_capacity({steady}) at {} items, churned {payments} times (capacity {capacity} → {})",
            steady / 2,
            map.capacity()
        ),
        slow,
    );
    drop(map);

    // 3. The hot set's table under the same churn.
    let mut table: IdTable<Payment> = IdTable::with_capacity(steady);
    let capacity = table.capacity();
    let (mut longest, mut slow) = (Longest(Vec::new()), Duration::ZERO);
    for i in 0..payments as u64 {
        if i >= steady as u64 / 2 {
            table.remove(&id(i - steady as u64 / 2));
        }
        let len = table.len();
        timed(
            || {
                let _ = table.insert(id(i), payment());
            },
            len,
            &mut longest,
            &mut slow,
        );
    }
    longest.report(
        &format!(
            "IdTable::with_capacity({steady}) at {} items, churned {payments} times (capacity {capacity} → {})",
            steady / 2,
            table.capacity()
        ),
        slow,
    );
}
