//! The simulator's recorded payments: an in-memory map from correlation id to amount and
//! `requestedAt`, sharded so that concurrent inserts rarely meet on one lock. Every lock here is
//! a plain mutex held for a map operation or one shard's scan, never across an `.await`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::domain::{Cents, CorrelationId, UtcMillis};

/// Number of independently locked shards; a power of two so the shard is a mask of the id.
const SHARDS: usize = 64;

/// Most payments the simulator keeps (about 1 GiB of maps); beyond it a payment is refused
/// rather than letting a runaway load test exhaust the machine.
pub const MAX_STORED_PAYMENTS: u64 = 20_000_000;

/// What the processor holds for one payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub amount: Cents,
    pub requested_at: UtcMillis,
}

/// The outcome of trying to record a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Recorded,
    /// The id was already recorded; nothing changed.
    Duplicate,
    /// [`MAX_STORED_PAYMENTS`] reached; nothing changed.
    Full,
}

/// Totals over a window of `requestedAt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub cents: u128,
}

pub struct Store {
    shards: Box<[Mutex<FxHashMap<u128, Recorded>>]>,
    /// Kept beside the shards so that counting and the capacity check take no lock.
    len: AtomicU64,
}

impl Default for Store {
    fn default() -> Self {
        Store { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), len: AtomicU64::new(0) }
    }
}

impl Store {
    fn shard(&self, id: CorrelationId) -> &Mutex<FxHashMap<u128, Recorded>> {
        // The low bits of a v4 UUID are random, so they spread ids evenly.
        &self.shards[(id.0 as usize) & (SHARDS - 1)]
    }

    /// Records `payment` under `id` unless the id is already there; the check and the insert
    /// happen under one lock, so two racing requests for one id record it once.
    pub fn insert(&self, id: CorrelationId, payment: Recorded) -> Insert {
        let mut shard = lock(self.shard(id));
        if shard.contains_key(&id.0) {
            return Insert::Duplicate;
        }
        if self.len.load(Ordering::Relaxed) >= MAX_STORED_PAYMENTS {
            return Insert::Full;
        }
        shard.insert(id.0, payment);
        self.len.fetch_add(1, Ordering::Relaxed);
        Insert::Recorded
    }

    pub fn get(&self, id: CorrelationId) -> Option<Recorded> {
        lock(self.shard(id)).get(&id.0).copied()
    }

    /// Sums the payments with `from <= requestedAt <= to`, or all of them when `window` is
    /// `None`. Shards are scanned one at a time, so a payment recorded during the scan may or
    /// may not be counted, exactly as if it had arrived just before or after.
    pub fn totals(&self, window: Option<(UtcMillis, UtcMillis)>) -> Totals {
        let mut t = Totals::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for p in shard.values() {
                if window.is_none_or(|(from, to)| from <= p.requested_at && p.requested_at <= to) {
                    t.requests += 1;
                    t.cents += u128::from(p.amount.get());
                }
            }
        }
        t
    }

    pub fn purge(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            self.len.fetch_sub(shard.len() as u64, Ordering::Relaxed);
            // Drop the allocation too: a purge usually precedes a fresh, possibly smaller run.
            *shard = FxHashMap::default();
        }
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
}

/// A poisoned shard still holds consistent data (every critical section is a single map
/// operation), so the simulator keeps serving rather than failing every later request.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cents: u64, at: i64) -> Recorded {
        Recorded { amount: Cents::new(cents).unwrap(), requested_at: UtcMillis(at) }
    }

    #[test]
    fn second_insert_of_an_id_is_a_duplicate_and_keeps_the_first() {
        let s = Store::default();
        let id = CorrelationId(7);
        assert_eq!(s.insert(id, rec(100, 1)), Insert::Recorded);
        assert_eq!(s.insert(id, rec(200, 2)), Insert::Duplicate);
        assert_eq!(s.get(id), Some(rec(100, 1)));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn totals_count_inclusive_bounds() {
        let s = Store::default();
        for (i, at) in [9, 10, 15, 20, 21].into_iter().enumerate() {
            s.insert(CorrelationId(i as u128), rec(100 + i as u64, at));
        }
        let t = s.totals(Some((UtcMillis(10), UtcMillis(20))));
        assert_eq!(t, Totals { requests: 3, cents: 101 + 102 + 103 });
        assert_eq!(s.totals(None), Totals { requests: 5, cents: 510 });
        assert_eq!(s.totals(Some((UtcMillis(21), UtcMillis(20)))), Totals::default());
    }

    #[test]
    fn purge_forgets_everything() {
        let s = Store::default();
        for i in 0..1000u128 {
            s.insert(CorrelationId(i), rec(1, 0));
        }
        s.purge();
        assert_eq!(s.len(), 0);
        assert_eq!(s.get(CorrelationId(3)), None);
        assert_eq!(s.totals(None), Totals::default());
        assert_eq!(s.insert(CorrelationId(3), rec(1, 0)), Insert::Recorded);
    }
}
