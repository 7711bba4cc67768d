//! A filter in front of the history: "certainly not there" for a new id without a disk read.
//!
//! A split-block Bloom filter (one 256-bit block per key, one bit set in each of its eight
//! 32-bit words, as Parquet's): a lookup touches one cache line. It grows without copying:
//! when the newest filter holds its capacity, a new one of twice that capacity is added, and
//! a lookup asks each (a handful even at hundreds of millions of ids, since capacities double).
//! Nothing is ever rehashed or moved while the ledger waits. The seed is per process: the
//! filter is rebuilt from the history's ids at start, so a client cannot aim collisions at it.

/// Bits per key: 12 gives about 0.5 % false positives for a split-block filter (measured by
/// the unit test below and in perf.md).
pub const BITS_PER_KEY: usize = 12;
/// The first filter's capacity when the history is empty.
pub const MIN_CAPACITY: usize = 1 << 16;

const SALT: [u32; 8] = [0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31];

struct Block {
    words: Vec<[u32; 8]>,
    capacity: usize,
    len: usize,
}

impl Block {
    fn new(capacity: usize) -> Block {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(256).max(1);
        Block { words: vec![[0u32; 8]; blocks], capacity, len: 0 }
    }

    fn index(&self, h: u64) -> usize {
        // Multiply-shift maps the high half uniformly onto the blocks.
        (((h >> 32) * self.words.len() as u64) >> 32) as usize
    }

    fn masks(h: u64) -> [u32; 8] {
        let low = h as u32;
        let mut m = [0u32; 8];
        for (i, w) in m.iter_mut().enumerate() {
            *w = 1u32 << (low.wrapping_mul(SALT[i]) >> 27);
        }
        m
    }

    fn insert(&mut self, h: u64) {
        let i = self.index(h);
        let m = Self::masks(h);
        for (w, bit) in self.words[i].iter_mut().zip(m) {
            *w |= bit;
        }
        self.len += 1;
    }

    fn may_contain(&self, h: u64) -> bool {
        let block = &self.words[self.index(h)];
        Self::masks(h).iter().zip(block).all(|(bit, w)| w & bit != 0)
    }
}

pub struct IdFilter {
    seed: u64,
    blocks: Vec<Block>,
}

impl IdFilter {
    /// A filter sized for `expected` ids before its first growth.
    pub fn with_capacity(expected: usize) -> IdFilter {
        IdFilter { seed: fastrand::u64(..), blocks: vec![Block::new(expected.max(MIN_CAPACITY))] }
    }

    fn hash(&self, id: u128) -> u64 {
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^ (z >> 31)
        };
        mix(mix(id as u64 ^ self.seed) ^ (id >> 64) as u64)
    }

    pub fn insert(&mut self, id: u128) {
        let h = self.hash(id);
        let last = self.blocks.last_mut().expect("never empty");
        if last.len >= last.capacity {
            let capacity = last.capacity * 2;
            self.blocks.push(Block::new(capacity));
        }
        self.blocks.last_mut().expect("never empty").insert(h);
    }

    /// False: the id was certainly never inserted. True: it may have been.
    pub fn may_contain(&self, id: u128) -> bool {
        let h = self.hash(id);
        self.blocks.iter().any(|b| b.may_contain(h))
    }

    pub fn clear(&mut self) {
        let first = self.blocks[0].capacity;
        self.blocks = vec![Block::new(first)];
    }

    /// Ids inserted.
    pub fn len(&self) -> usize {
        self.blocks.iter().map(|b| b.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of filter memory.
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.words.len() * 32).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filter_sized_for_its_ids_has_a_half_percent_false_positive_rate() {
        let n = 1_000_000u128;
        let mut f = IdFilter::with_capacity(n as usize);
        for i in 0..n {
            f.insert(i.wrapping_mul(0x9e3779b97f4a7c15f39cc0605cedc835) ^ 7);
        }
        assert_eq!(f.blocks.len(), 1);
        let probes = 1_000_000u128;
        let fp = (0..probes).filter(|i| f.may_contain(u128::MAX - i * 3)).count();
        let rate = fp as f64 / probes as f64;
        println!(
            "filter: {n} ids, one filter, {} bytes ({:.2} bytes/id), false positives {:.3} %",
            f.bytes(),
            f.bytes() as f64 / n as f64,
            rate * 100.0
        );
        assert!(rate < 0.01, "false-positive rate {rate}");
    }

    #[test]
    fn no_false_negatives_and_a_low_false_positive_rate_across_growth() {
        let mut f = IdFilter::with_capacity(1000);
        let ids: Vec<u128> = (0..200_000u128).map(|i| i.wrapping_mul(0x9e3779b97f4a7c15f39cc0605cedc835)).collect();
        for &id in &ids {
            f.insert(id);
        }
        assert!(f.blocks.len() > 1, "the filter grew");
        assert!(ids.iter().all(|&id| f.may_contain(id)));
        let probes = 200_000u128;
        let false_positives = (0..probes).filter(|i| f.may_contain(u128::MAX - i)).count();
        let rate = false_positives as f64 / probes as f64;
        // `cargo test --release --lib filter -- --nocapture` prints what perf.md quotes.
        println!(
            "filter: {} ids in {} filters, {} bytes ({:.2} bytes/id), false positives {:.3} %",
            f.len(),
            f.blocks.len(),
            f.bytes(),
            f.bytes() as f64 / f.len() as f64,
            rate * 100.0
        );
        // Several filters of growing size answer together: their rates add up.
        assert!(rate < 0.02, "false-positive rate {rate}");
        f.clear();
        assert!(f.is_empty());
    }
}
