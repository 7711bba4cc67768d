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

/// The two tables measured, behind one interface.
trait Table {
    fn put(&mut self, key: u128);
    fn take(&mut self, key: u128);
    fn size(&self) -> usize;
    fn room(&self) -> usize;
}

impl Table for HashMap<u128, Payment, IdHasher> {
    fn put(&mut self, key: u128) {
        let _ = self.insert(key, payment());
    }
    fn take(&mut self, key: u128) {
        self.remove(&key);
    }
    fn size(&self) -> usize {
        self.len()
    }
    fn room(&self) -> usize {
        self.capacity()
    }
}

impl Table for IdTable<Payment> {
    fn put(&mut self, key: u128) {
        let _ = self.insert(key, payment());
    }
    fn take(&mut self, key: u128) {
        self.remove(&key);
    }
    fn size(&self) -> usize {
        self.len()
    }
    fn room(&self) -> usize {
        self.capacity()
    }
}

/// Inserts `payments` ids one at a time, timing each; with `keep`, the oldest is removed once
/// `keep` are held (one removal per insert), else the table grows with every insert.
fn churn(what: &str, table: &mut impl Table, payments: u64, keep: Option<u64>) {
    let capacity = table.room();
    let (mut longest, mut slow) = (Longest(Vec::new()), Duration::ZERO);
    for i in 0..payments {
        if let Some(keep) = keep
            && i >= keep
        {
            table.take(id(i - keep));
        }
        let len = table.size();
        let t = Instant::now();
        table.put(id(i));
        let took = t.elapsed();
        longest.note(took, len);
        if took > Duration::from_micros(100) {
            slow += took;
        }
    }
    longest.report(&format!("{what}, {payments} inserts (capacity {capacity} → {})", table.room()), slow);
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let payments = args.first().copied().unwrap_or(1_000_000) as u64;
    let steady = args.get(1).copied().unwrap_or(300_000);
    let keep = steady as u64 / 2;
    // 1. Growing with every payment (the ledger before the hot set).
    churn(&format!("HashMap growing to {payments}"), &mut HashMap::<u128, Payment, IdHasher>::default(), payments, None);
    // 2. std's map sized at start, at a steady size, one removal per insert.
    let mut map = HashMap::<u128, Payment, IdHasher>::with_capacity_and_hasher(steady, IdHasher::default());
    churn(&format!("HashMap with_capacity({steady}) churned at {keep} items"), &mut map, payments, Some(keep));
    // 3. The hot set's table under the same churn.
    churn(&format!("IdTable::with_capacity({steady}) churned at {keep} items"), &mut IdTable::with_capacity(steady), payments, Some(keep));
}
