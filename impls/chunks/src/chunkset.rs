//! A set of chunk indices as a bitmap.
//!
//! Dirty and pushable sets cover every chunk of a region and are scanned in
//! order; one bit per chunk keeps a 1 Mi-chunk region at 128 KiB and makes
//! the sorted scan free.

#[derive(Debug, Clone)]
pub(crate) struct ChunkSet {
    words: Vec<u64>,
    count: u64,
}

impl ChunkSet {
    /// An empty set for chunk indices `0..capacity`.
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            words: vec![0; capacity.div_ceil(64) as usize],
            count: 0,
        }
    }

    fn split(index: u64) -> (usize, u64) {
        ((index / 64) as usize, 1 << (index % 64))
    }

    /// Adds `index`; returns whether it was new. Callers pass checked indices.
    pub(crate) fn insert(&mut self, index: u64) -> bool {
        let (word, bit) = Self::split(index);
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.count += u64::from(fresh);
        fresh
    }

    /// Removes `index`; returns whether it was present.
    pub(crate) fn remove(&mut self, index: u64) -> bool {
        let (word, bit) = Self::split(index);
        let present = self.words[word] & bit != 0;
        self.words[word] &= !bit;
        self.count -= u64::from(present);
        present
    }

    pub(crate) fn contains(&self, index: u64) -> bool {
        let (word, bit) = Self::split(index);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Removes and returns, in ascending order, every index also in `filter`
    /// (every index when `filter` is `None`).
    pub(crate) fn take_where(&mut self, filter: Option<&ChunkSet>) -> Vec<u64> {
        let mut taken = Vec::new();
        for (i, word) in self.words.iter_mut().enumerate() {
            let mask = filter.map_or(u64::MAX, |f| f.words[i]);
            let mut hit = *word & mask;
            *word &= !hit;
            while hit != 0 {
                let bit = u64::from(hit.trailing_zeros());
                taken.push(i as u64 * 64 + bit);
                hit &= hit - 1;
            }
        }
        self.count -= taken.len() as u64;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_take_in_order() {
        let mut set = ChunkSet::new(200);
        assert!(set.insert(130));
        assert!(!set.insert(130));
        set.insert(3);
        set.insert(64);
        set.insert(199);
        assert_eq!(set.len(), 4);
        assert!(set.remove(64));
        assert!(!set.remove(64));
        assert!(set.contains(3) && !set.contains(4));

        let mut filter = ChunkSet::new(200);
        filter.insert(130);
        filter.insert(5);
        assert_eq!(set.take_where(Some(&filter)), vec![130]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.take_where(None), vec![3, 199]);
        assert_eq!(set.len(), 0);
    }
}
