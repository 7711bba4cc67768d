//! The payments-summary index of one processor: exact counts and cent sums of its processed
//! payments, keyed by the processor-recorded `requestedAt` (millisecond resolution), answering
//! inclusive time-range queries in O(log n). The ledger keeps one per processor.
//!
//! Layout: the distinct milliseconds (buckets), sorted, cut into chunks of at most
//! `chunk_capacity` buckets; each chunk holds running totals of its own buckets, and a Fenwick
//! tree holds the chunk totals. A prefix sum is then two binary searches and one Fenwick walk.
//!
//! Why chunks rather than one flat prefix-sum array: a late payment (an out-of-order
//! `requestedAt`, or one replayed after a crash) rewrites only its own chunk's running totals
//! (at most `chunk_capacity` of them) and O(log chunks) Fenwick nodes, instead of every prefix
//! after it. There is no side buffer to scan and no periodic rebuild, so neither a query nor a
//! late add has a cost that grows with the number of late arrivals. An in-order append touches
//! only the last chunk and the last Fenwick node, which is O(1).

use std::fmt;

use crate::domain::{Cents, UtcMillis};

/// Default upper bound on buckets per chunk. A late add shifts and re-sums up to this many
/// buckets (about 20 KiB), while a query's cost barely depends on it (one more binary-search
/// step per doubling); at a million buckets it keeps 2 000 to 4 000 chunks in the Fenwick tree.
/// Measured at a million payments: 256, 512 and 1024 give the same query times within noise.
pub const CHUNK_CAPACITY_BUCKETS: usize = 512;

/// How many payments, and how many cents in all. Sums of [`Cents`] may exceed one amount's
/// maximum, hence u128.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub cents: u128,
}

const ZERO: Totals = Totals { count: 0, cents: 0 };

impl Totals {
    pub fn plus(self, other: Totals) -> Totals {
        Totals { count: self.count + other.count, cents: self.cents + other.cents }
    }

    /// Only called with `other` a prefix of `self`, so it cannot underflow.
    fn minus(self, other: Totals) -> Totals {
        Totals { count: self.count - other.count, cents: self.cents - other.cents }
    }
}

#[derive(Clone)]
pub struct SummaryIndex {
    /// First key of each chunk, beside `chunks`: a lookup binary-searches this one dense array
    /// instead of touching the heap buffer of every chunk it probes.
    firsts: Vec<i64>,
    /// Non-empty, in key order, keys disjoint and increasing across chunks.
    chunks: Vec<Chunk>,
    /// Fenwick tree over the chunk totals: node `i` (1-based) sums chunks `(i - lowbit(i), i]`.
    fenwick: Vec<Totals>,
    total: Totals,
    buckets: usize,
    chunk_capacity: usize,
}

#[derive(Clone)]
struct Chunk {
    /// Distinct milliseconds, strictly increasing.
    keys: Vec<i64>,
    /// `cum[i]` = totals over `keys[..=i]`, so a prefix inside the chunk is a single read.
    cum: Vec<Totals>,
}

impl Chunk {
    fn total(&self) -> Totals {
        *self.cum.last().expect("chunks are never empty")
    }
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Default for SummaryIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// Shape only: a million buckets are no use in a log line.
impl fmt::Debug for SummaryIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SummaryIndex")
            .field("total", &self.total)
            .field("buckets", &self.buckets)
            .field("chunks", &self.chunks.len())
            .field("chunk_capacity", &self.chunk_capacity)
            .finish_non_exhaustive()
    }
}

impl SummaryIndex {
    pub fn new() -> Self {
        Self::with_chunk_capacity(CHUNK_CAPACITY_BUCKETS)
    }

    /// An index whose chunks hold at most `chunk_capacity` buckets; tests use tiny capacities
    /// to exercise chunk splits.
    pub fn with_chunk_capacity(chunk_capacity: usize) -> Self {
        assert!(chunk_capacity >= 1, "a chunk holds at least one bucket");
        SummaryIndex { firsts: Vec::new(), chunks: Vec::new(), fenwick: Vec::new(), total: ZERO, buckets: 0, chunk_capacity }
    }

    /// Adds one payment at `at`.
    pub fn add(&mut self, at: UtcMillis, cents: Cents) {
        self.add_totals(at, Totals { count: 1, cents: u128::from(cents.get()) });
    }

    /// Adds `delta` (any number of payments) at `at`.
    pub fn add_totals(&mut self, at: UtcMillis, delta: Totals) {
        self.total = self.total.plus(delta);
        let key = at.0;
        let Some(last) = self.chunks.len().checked_sub(1) else {
            self.push_chunk(key, delta);
            return;
        };
        let chunk = &mut self.chunks[last];
        let last_key = *chunk.keys.last().expect("chunks are never empty");
        if key < last_key {
            self.add_late(key, delta);
            return;
        }
        if key == last_key {
            let t = chunk.cum.last_mut().expect("chunks are never empty");
            *t = t.plus(delta);
        } else if chunk.keys.len() < self.chunk_capacity {
            let running = chunk.total().plus(delta);
            chunk.keys.push(key);
            chunk.cum.push(running);
            self.buckets += 1;
        } else {
            self.push_chunk(key, delta);
            return;
        }
        // The last Fenwick node covers no other node, so this is one write.
        self.fenwick_add(last, delta);
    }

    /// Totals over all payments with `from <= at <= to` (inclusive both ends; `from > to`
    /// gives zeros). `None` is unbounded on that side.
    pub fn range(&self, from: Option<UtcMillis>, to: Option<UtcMillis>) -> Totals {
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return ZERO;
        }
        let through_to = match to.and_then(|t| t.0.checked_add(1)) {
            Some(end) => self.sum_below(end),
            // Unbounded, or `to` is the last representable instant: everything is at or before it.
            None => self.total,
        };
        let before_from = from.map_or(ZERO, |f| self.sum_below(f.0));
        through_to.minus(before_from)
    }

    pub fn total(&self) -> Totals {
        self.total
    }

    pub fn clear(&mut self) {
        self.firsts.clear();
        self.chunks.clear();
        self.fenwick.clear();
        self.total = ZERO;
        self.buckets = 0;
    }

    /// Distinct milliseconds holding at least one payment.
    pub fn len_buckets(&self) -> usize {
        self.buckets
    }

    /// Totals over all payments strictly before `end`.
    fn sum_below(&self, end: i64) -> Totals {
        let Some(c) = self.firsts.partition_point(|&f| f < end).checked_sub(1) else {
            return ZERO;
        };
        let chunk = &self.chunks[c];
        // At least 1: this chunk's first key is below `end`.
        let inside = chunk.keys.partition_point(|&k| k < end);
        self.fenwick_prefix(c).plus(chunk.cum[inside - 1])
    }

    fn push_chunk(&mut self, key: i64, delta: Totals) {
        let mut keys = Vec::with_capacity(self.chunk_capacity);
        let mut cum = Vec::with_capacity(self.chunk_capacity);
        keys.push(key);
        cum.push(delta);
        self.firsts.push(key);
        self.chunks.push(Chunk { keys, cum });
        self.buckets += 1;
        self.fenwick_push(delta);
    }

    /// A key before the last bucket: goes into the chunk whose range holds it (the first chunk
    /// when it precedes everything), which is split once it outgrows its capacity.
    fn add_late(&mut self, key: i64, delta: Totals) {
        let c = self.firsts.partition_point(|&f| f <= key).saturating_sub(1);
        let chunk = &mut self.chunks[c];
        let i = chunk.keys.partition_point(|&k| k < key);
        if chunk.keys.get(i) != Some(&key) {
            let before = if i == 0 { ZERO } else { chunk.cum[i - 1] };
            chunk.keys.insert(i, key);
            chunk.cum.insert(i, before);
            self.buckets += 1;
            if i == 0 {
                debug_assert_eq!(c, 0, "only the first chunk can gain a new first key");
                self.firsts[c] = key;
            }
        }
        for t in &mut chunk.cum[i..] {
            *t = t.plus(delta);
        }
        let len = chunk.keys.len();
        self.fenwick_add(c, delta);
        if len > self.chunk_capacity {
            self.split(c);
        }
    }

    /// Halves chunk `c`. Chunk indices after it shift, so the Fenwick tree is rebuilt: O(chunks),
    /// at most once per `chunk_capacity / 2` late adds.
    fn split(&mut self, c: usize) {
        let chunk = &mut self.chunks[c];
        let mid = chunk.keys.len() / 2;
        let base = chunk.cum[mid - 1];
        let keys = chunk.keys.split_off(mid);
        let mut cum = chunk.cum.split_off(mid);
        for t in &mut cum {
            *t = t.minus(base);
        }
        self.firsts.insert(c + 1, keys[0]);
        self.chunks.insert(c + 1, Chunk { keys, cum });
        self.rebuild_fenwick();
    }

    /// Totals of chunks `[0, c)`.
    fn fenwick_prefix(&self, c: usize) -> Totals {
        let mut sum = ZERO;
        let mut i = c;
        while i > 0 {
            sum = sum.plus(self.fenwick[i - 1]);
            i &= i - 1;
        }
        sum
    }

    fn fenwick_add(&mut self, c: usize, delta: Totals) {
        let mut i = c + 1;
        while i <= self.fenwick.len() {
            self.fenwick[i - 1] = self.fenwick[i - 1].plus(delta);
            i += lowbit(i);
        }
    }

    /// Appends a chunk total: the new node sums itself and the nodes that tile the rest of its
    /// span, O(log chunks).
    fn fenwick_push(&mut self, chunk_total: Totals) {
        let n = self.fenwick.len() + 1;
        let span_start = n - lowbit(n);
        let mut node = chunk_total;
        let mut j = n - 1;
        while j > span_start {
            node = node.plus(self.fenwick[j - 1]);
            j &= j - 1;
        }
        self.fenwick.push(node);
    }

    fn rebuild_fenwick(&mut self) {
        self.fenwick.clear();
        self.fenwick.extend(self.chunks.iter().map(Chunk::total));
        let n = self.fenwick.len();
        for i in 1..=n {
            let parent = i + lowbit(i);
            if parent <= n {
                self.fenwick[parent - 1] = self.fenwick[parent - 1].plus(self.fenwick[i - 1]);
            }
        }
    }

    /// Checks every structural invariant against a recomputation from the buckets.
    #[cfg(test)]
    fn assert_invariants(&self) {
        assert_eq!(self.firsts.len(), self.chunks.len());
        let mut prev: Option<i64> = None;
        let mut running = ZERO;
        let mut buckets = 0;
        for (c, chunk) in self.chunks.iter().enumerate() {
            assert!(!chunk.keys.is_empty() && chunk.keys.len() <= self.chunk_capacity);
            assert_eq!(chunk.keys.len(), chunk.cum.len());
            assert_eq!(self.firsts[c], chunk.keys[0]);
            assert_eq!(self.fenwick_prefix(c), running);
            let mut inner = ZERO;
            for (i, &k) in chunk.keys.iter().enumerate() {
                assert!(prev.is_none_or(|p| p < k), "keys strictly increase");
                prev = Some(k);
                let bucket = chunk.cum[i].minus(inner);
                assert!(bucket.count > 0 && bucket.cents > 0, "no empty bucket");
                inner = chunk.cum[i];
            }
            running = running.plus(chunk.total());
            buckets += chunk.keys.len();
        }
        assert_eq!(self.fenwick_prefix(self.chunks.len()), running);
        assert_eq!(running, self.total);
        assert_eq!(buckets, self.buckets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(ms: i64) -> UtcMillis {
        UtcMillis(ms)
    }

    fn cents(c: u64) -> Cents {
        Cents::new(c).expect("valid amount")
    }

    fn t(count: u64, cents: u128) -> Totals {
        Totals { count, cents }
    }

    fn r(index: &SummaryIndex, from: Option<i64>, to: Option<i64>) -> Totals {
        index.range(from.map(UtcMillis), to.map(UtcMillis))
    }

    /// 100 @ 1000, 200 @ 1001, 400 @ 1003.
    fn three() -> SummaryIndex {
        let mut index = SummaryIndex::new();
        index.add(at(1000), cents(100));
        index.add(at(1001), cents(200));
        index.add(at(1003), cents(400));
        index
    }

    #[test]
    fn empty_index_sums_to_zero() {
        let index = SummaryIndex::new();
        assert_eq!(index.total(), Totals::default());
        assert_eq!(r(&index, None, None), Totals::default());
        assert_eq!(r(&index, Some(0), Some(10)), Totals::default());
        assert_eq!(index.len_buckets(), 0);
    }

    #[test]
    fn bounds_are_inclusive_at_the_exact_millisecond() {
        let index = three();
        assert_eq!(r(&index, Some(1000), Some(1000)), t(1, 100));
        assert_eq!(r(&index, Some(1001), Some(1003)), t(2, 600));
        assert_eq!(r(&index, Some(1000), Some(1003)), t(3, 700));
        assert_eq!(r(&index, Some(1002), Some(1002)), t(0, 0));
        assert_eq!(r(&index, Some(1001), Some(1002)), t(1, 200));
        assert_eq!(r(&index, Some(999), Some(999)), t(0, 0));
        assert_eq!(r(&index, Some(1004), Some(5000)), t(0, 0));
    }

    #[test]
    fn from_after_to_is_zero() {
        let index = three();
        assert_eq!(r(&index, Some(1003), Some(1000)), t(0, 0));
        assert_eq!(r(&index, Some(1001), Some(1000)), t(0, 0));
    }

    #[test]
    fn none_bounds_are_unbounded() {
        let index = three();
        assert_eq!(r(&index, None, None), t(3, 700));
        assert_eq!(r(&index, None, Some(1001)), t(2, 300));
        assert_eq!(r(&index, Some(1001), None), t(2, 600));
        assert_eq!(r(&index, None, Some(999)), t(0, 0));
        assert_eq!(r(&index, Some(1004), None), t(0, 0));
        assert_eq!(index.total(), t(3, 700));
    }

    #[test]
    fn extreme_bounds_do_not_overflow() {
        let mut index = SummaryIndex::new();
        index.add(at(i64::MIN), cents(1));
        index.add(at(-5), cents(2));
        index.add(at(i64::MAX), cents(4));
        assert_eq!(r(&index, Some(i64::MIN), Some(i64::MAX)), t(3, 7));
        assert_eq!(r(&index, Some(i64::MIN), Some(i64::MIN)), t(1, 1));
        assert_eq!(r(&index, Some(i64::MAX), Some(i64::MAX)), t(1, 4));
        assert_eq!(r(&index, Some(i64::MAX), None), t(1, 4));
        assert_eq!(r(&index, None, Some(i64::MIN)), t(1, 1));
        assert_eq!(r(&index, Some(-5), Some(-5)), t(1, 2));
        index.assert_invariants();
    }

    #[test]
    fn payments_in_the_same_millisecond_share_a_bucket() {
        let mut index = SummaryIndex::new();
        index.add(at(7), cents(1));
        index.add(at(7), cents(2));
        index.add(at(8), cents(4));
        index.add(at(7), cents(8)); // late, into an existing bucket
        assert_eq!(index.len_buckets(), 2);
        assert_eq!(r(&index, Some(7), Some(7)), t(3, 11));
        assert_eq!(index.total(), t(4, 15));
        index.assert_invariants();
    }

    #[test]
    fn late_insert_before_everything() {
        let mut index = three();
        index.add(at(10), cents(1));
        assert_eq!(index.len_buckets(), 4);
        assert_eq!(r(&index, None, Some(999)), t(1, 1));
        assert_eq!(r(&index, Some(10), Some(10)), t(1, 1));
        assert_eq!(r(&index, Some(11), None), t(3, 700));
        index.assert_invariants();
    }

    #[test]
    fn late_insert_between_buckets() {
        let mut index = three();
        index.add(at(1002), cents(1));
        assert_eq!(index.len_buckets(), 4);
        assert_eq!(r(&index, Some(1002), Some(1002)), t(1, 1));
        assert_eq!(r(&index, Some(1001), Some(1002)), t(2, 201));
        assert_eq!(r(&index, Some(1002), Some(1003)), t(2, 401));
        assert_eq!(index.total(), t(4, 701));
        index.assert_invariants();
    }

    #[test]
    fn late_insert_into_an_existing_bucket() {
        let mut index = three();
        index.add(at(1001), cents(5));
        assert_eq!(index.len_buckets(), 3);
        assert_eq!(r(&index, Some(1001), Some(1001)), t(2, 205));
        assert_eq!(r(&index, Some(1002), None), t(1, 400));
        index.assert_invariants();
    }

    #[test]
    fn insert_after_a_late_one_appends() {
        let mut index = three();
        index.add(at(1), cents(1));
        index.add(at(2000), cents(2));
        index.add(at(2000), cents(4));
        assert_eq!(index.len_buckets(), 5);
        assert_eq!(r(&index, Some(1004), None), t(2, 6));
        assert_eq!(index.total(), t(6, 707));
        index.assert_invariants();
    }

    #[test]
    fn late_inserts_split_full_chunks() {
        let mut index = SummaryIndex::with_chunk_capacity(4);
        for ms in (0..40).map(|i| i * 10) {
            index.add(at(ms), cents(1));
        }
        assert_eq!(index.chunks.len(), 10);
        // Fill the gaps from the back, so every chunk overflows and splits repeatedly.
        for ms in (0..400).rev().filter(|ms| ms % 10 != 0) {
            index.add(at(ms), cents(2));
            index.assert_invariants();
        }
        assert_eq!(index.len_buckets(), 400);
        assert_eq!(index.total(), t(400, 40 + 360 * 2));
        assert_eq!(r(&index, Some(10), Some(19)), t(10, 1 + 9 * 2));
        assert_eq!(r(&index, Some(395), None), t(5, 10));
    }

    #[test]
    fn clear_forgets_everything_and_keeps_working() {
        let mut index = SummaryIndex::with_chunk_capacity(2);
        for ms in [5, 3, 9, 1, 7, 7] {
            index.add(at(ms), cents(10));
        }
        index.clear();
        assert_eq!(index.total(), t(0, 0));
        assert_eq!(index.len_buckets(), 0);
        assert_eq!(r(&index, None, None), t(0, 0));
        index.assert_invariants();
        index.add(at(4), cents(3));
        index.add(at(2), cents(5));
        assert_eq!(r(&index, None, Some(3)), t(1, 5));
        assert_eq!(index.total(), t(2, 8));
        index.assert_invariants();
    }

    #[test]
    fn clone_is_independent() {
        let mut a = three();
        let b = a.clone();
        a.add(at(1000), cents(1));
        assert_eq!(b.total(), t(3, 700));
        assert_eq!(a.total(), t(4, 701));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Later than or equal to the previous add's time, by this many ms.
        Ahead(i64, u64),
        /// At an absolute time, usually before recent adds.
        At(i64, u64),
        Query(Option<i64>, Option<i64>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let amount = prop_oneof![1u64..=1_000, Just(crate::domain::money::MAX_CENTS)];
        let bound = proptest::option::weighted(0.8, -5i64..130);
        prop_oneof![
            5 => (0i64..3, amount.clone()).prop_map(|(d, c)| Op::Ahead(d, c)),
            3 => (-5i64..130, amount).prop_map(|(ms, c)| Op::At(ms, c)),
            2 => (bound.clone(), bound).prop_map(|(f, t)| Op::Query(f, t)),
        ]
    }

    fn naive(model: &[(i64, u64)], from: Option<i64>, to: Option<i64>) -> Totals {
        model
            .iter()
            .filter(|(ms, _)| from.is_none_or(|f| f <= *ms) && to.is_none_or(|t| *ms <= t))
            .fold(ZERO, |acc, &(_, c)| acc.plus(t(1, u128::from(c))))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_a_naive_model(capacity in 1usize..9, ops in proptest::collection::vec(op(), 1..400)) {
            let mut index = SummaryIndex::with_chunk_capacity(capacity);
            let mut model: Vec<(i64, u64)> = Vec::new();
            let mut now = 0i64;
            for op in ops {
                match op {
                    Op::Ahead(d, c) => {
                        now += d;
                        index.add(at(now), cents(c));
                        model.push((now, c));
                    }
                    Op::At(ms, c) => {
                        index.add(at(ms), cents(c));
                        model.push((ms, c));
                    }
                    Op::Query(from, to) => {
                        prop_assert_eq!(r(&index, from, to), naive(&model, from, to), "range {:?}..={:?}", from, to);
                    }
                }
            }
            index.assert_invariants();
            let mut distinct: Vec<i64> = model.iter().map(|m| m.0).collect();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(index.len_buckets(), distinct.len());
            prop_assert_eq!(index.total(), naive(&model, None, None));
            for from in -6i64..=131 {
                for to in [from - 1, from, from + 1, from + 17, 131] {
                    prop_assert_eq!(r(&index, Some(from), Some(to)), naive(&model, Some(from), Some(to)));
                }
                prop_assert_eq!(r(&index, Some(from), None), naive(&model, Some(from), None));
                prop_assert_eq!(r(&index, None, Some(from)), naive(&model, None, Some(from)));
            }
        }
    }
}
