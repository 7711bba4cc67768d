//! The hot set's table: payments by id, open addressing with linear probing and
//! backward-shift deletion, sized once.
//!
//! Why not `std::collections::HashMap` (hashbrown): a removal there may leave a tombstone, and
//! tombstones use up the table's room for inserts; once it is used up, the next insert
//! rehashes the whole table in place — on the ledger's single writer, while every command
//! waits. The hot set removes a payment for every one it adds, for ever, so that rehash would
//! come back periodically (the test `the_hot_table_never_grows_past_its_start_up_capacity`
//! saw hashbrown's room shrink from 112 to 64 within 2 000 payments). Backward-shift deletion
//! leaves no tombstones: the table's room never shrinks, and a table sized at start for the
//! ledger's limits never grows or rehashes.
//!
//! Layout: keys, values and an occupancy bitmap in three arrays (a probe reads keys only, four
//! to a cache line). At most 5/8 full, so an unsuccessful lookup probes about 3.6 slots.

use std::hash::BuildHasher;

/// The keyed hash of the ledger's client-chosen ids (see `state`'s notes on the choice).
#[cfg(feature = "foldhash")]
pub type IdHasher = foldhash::fast::RandomState;
#[cfg(all(feature = "fxhash", not(feature = "foldhash")))]
pub type IdHasher = rustc_hash::FxBuildHasher;
#[cfg(not(any(feature = "foldhash", feature = "fxhash")))]
pub type IdHasher = std::collections::hash_map::RandomState;

/// Most items per slot: 5/8.
const LOAD_NUM: usize = 5;
const LOAD_DEN: usize = 8;
const MIN_SLOTS: usize = 16;

#[derive(Clone)]
pub struct IdTable<V> {
    keys: Vec<u128>,
    values: Vec<V>,
    occupied: Vec<u64>,
    len: usize,
    mask: usize,
    hasher: IdHasher,
}

impl<V: Copy + Default> Default for IdTable<V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<V: Copy + Default> IdTable<V> {
    /// A table that holds `capacity` items without growing.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_slots(Self::slots_for(capacity), IdHasher::default())
    }

    fn slots_for(capacity: usize) -> usize {
        (capacity.saturating_mul(LOAD_DEN).div_ceil(LOAD_NUM)).max(MIN_SLOTS).next_power_of_two()
    }

    fn with_slots(slots: usize, hasher: IdHasher) -> Self {
        IdTable {
            keys: vec![0; slots],
            values: vec![V::default(); slots],
            occupied: vec![0; slots.div_ceil(64)],
            len: 0,
            mask: slots - 1,
            hasher,
        }
    }

    /// Items it holds before it must grow.
    pub fn capacity(&self) -> usize {
        (self.mask + 1) * LOAD_NUM / LOAD_DEN
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `additional` more items (a whole rebuild: only at start or after a
    /// journal repair, never on the request path).
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want > self.capacity() {
            self.rebuild(Self::slots_for(want));
        }
    }

    fn rebuild(&mut self, slots: usize) {
        let mut bigger = Self::with_slots(slots, self.hasher.clone());
        for (k, v) in self.iter() {
            bigger.insert(*k, *v);
        }
        *self = bigger;
    }

    fn home(&self, key: u128) -> usize {
        (self.hasher.hash_one(key) as usize) & self.mask
    }

    fn is_occupied(&self, i: usize) -> bool {
        self.occupied[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_occupied(&mut self, i: usize, on: bool) {
        if on {
            self.occupied[i / 64] |= 1 << (i % 64);
        } else {
            self.occupied[i / 64] &= !(1 << (i % 64));
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: u128) -> (usize, bool) {
        let mut i = self.home(key);
        loop {
            if !self.is_occupied(i) {
                return (i, false);
            }
            if self.keys[i] == key {
                return (i, true);
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn get(&self, key: &u128) -> Option<&V> {
        match self.find(*key) {
            (i, true) => Some(&self.values[i]),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &u128) -> Option<&mut V> {
        match self.find(*key) {
            (i, true) => Some(&mut self.values[i]),
            _ => None,
        }
    }

    pub fn contains_key(&self, key: &u128) -> bool {
        self.find(*key).1
    }

    /// Inserts or replaces; grows (a rebuild) only when full, which the ledger's start-up
    /// sizing rules out on the request path.
    pub fn insert(&mut self, key: u128, value: V) -> Option<V> {
        let (i, found) = self.find(key);
        if found {
            return Some(std::mem::replace(&mut self.values[i], value));
        }
        if self.len >= self.capacity() {
            self.rebuild((self.mask + 1) * 2);
            return self.insert(key, value);
        }
        self.keys[i] = key;
        self.values[i] = value;
        self.set_occupied(i, true);
        self.len += 1;
        None
    }

    pub fn remove(&mut self, key: &u128) -> Option<V> {
        let (mut hole, found) = self.find(*key);
        if !found {
            return None;
        }
        let removed = self.values[hole];
        self.len -= 1;
        // Backward shift: pull later items of the probe run into the hole while they may
        // legally sit there (their home is not cyclically after the hole).
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            if !self.is_occupied(j) {
                break;
            }
            let home = self.home(self.keys[j]);
            let distance_home = j.wrapping_sub(home) & self.mask;
            let distance_hole = j.wrapping_sub(hole) & self.mask;
            if distance_home >= distance_hole {
                self.keys[hole] = self.keys[j];
                self.values[hole] = self.values[j];
                hole = j;
            }
        }
        self.set_occupied(hole, false);
        Some(removed)
    }

    pub fn clear(&mut self) {
        self.occupied.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }

    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.occupied.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + b
                })
            })
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u128, &V)> + '_ {
        self.slots().map(|i| (&self.keys[i], &self.values[i]))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.slots().map(|i| &self.values[i])
    }

    /// Visits every item mutably.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&u128, &mut V)) {
        let slots: Vec<usize> = self.slots().collect();
        for i in slots {
            f(&self.keys[i], &mut self.values[i]);
        }
    }

    /// Keeps the items `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&u128, &mut V) -> bool) {
        let doomed: Vec<u128> = {
            let mut d = Vec::new();
            let slots: Vec<usize> = self.slots().collect();
            for i in slots {
                if !keep(&self.keys[i], &mut self.values[i]) {
                    d.push(self.keys[i]);
                }
            }
            d
        };
        for k in doomed {
            self.remove(&k);
        }
    }
}

impl<V: Copy + Default + PartialEq> PartialEq for IdTable<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V: Copy + Default + std::fmt::Debug> std::fmt::Debug for IdTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTable").field("len", &self.len).field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u16>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k % 512, v)),
            any::<u16>().prop_map(|k| Op::Remove(k % 512)),
            any::<u16>().prop_map(|k| Op::Get(k % 512)),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(op(), 1..3000)) {
            let mut t: IdTable<u32> = IdTable::with_capacity(64);
            let mut m: HashMap<u128, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(t.insert(u128::from(k) << 70, v), m.insert(u128::from(k) << 70, v)),
                    Op::Remove(k) => prop_assert_eq!(t.remove(&(u128::from(k) << 70)), m.remove(&(u128::from(k) << 70))),
                    Op::Get(k) => prop_assert_eq!(t.get(&(u128::from(k) << 70)), m.get(&(u128::from(k) << 70))),
                }
                prop_assert_eq!(t.len(), m.len());
            }
            let mut a: Vec<_> = t.iter().map(|(k, v)| (*k, *v)).collect();
            let mut b: Vec<_> = m.into_iter().collect();
            a.sort_unstable();
            b.sort_unstable();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn churn_at_capacity_never_grows_the_table() {
        let mut t: IdTable<u64> = IdTable::with_capacity(1000);
        let capacity = t.capacity();
        let slots = t.keys.len();
        for i in 0..200_000u128 {
            t.insert(i.wrapping_mul(0x9e3779b97f4a7c15), 1);
            if i >= 1000 {
                assert_eq!(t.remove(&(i - 1000).wrapping_mul(0x9e3779b97f4a7c15)), Some(1));
            }
        }
        assert_eq!((t.capacity(), t.keys.len(), t.len()), (capacity, slots, 1000));
    }
}
