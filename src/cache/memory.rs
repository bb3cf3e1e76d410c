//! The memory tier: a small LRU of hot chunks, bounded in bytes.
//!
//! The budget counts `Bytes::len()` of each entry. Callers hand in buffers
//! that own exactly their bytes (fetched chunks are copied first, see
//! `ChunkCache::admit`), so the count is the real footprint, give or take
//! allocator rounding and the index itself (a `Digest` and a node per entry).

use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use crate::oci::Digest;

/// Byte-budgeted LRU of verified chunks.
#[derive(Debug)]
pub(super) struct MemoryTier {
    budget: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    lru: LruCache<Digest, Bytes>,
    bytes: u64,
}

impl MemoryTier {
    pub(super) fn new(budget: u64) -> MemoryTier {
        MemoryTier {
            budget,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent
        // beyond a stale byte count, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk, marking it most recently used.
    pub(super) fn get(&self, key: &Digest) -> Option<Bytes> {
        if self.budget == 0 {
            return None;
        }
        self.lock().lru.get(key).cloned()
    }

    pub(super) fn contains(&self, key: &Digest) -> bool {
        self.budget != 0 && self.lock().lru.contains(key)
    }

    /// Stores `bytes`, evicting least recently used chunks until it
    /// fits. A chunk larger than the whole budget is not stored. Returns how
    /// many chunks were evicted.
    pub(super) fn insert(&self, key: &Digest, bytes: Bytes) -> u64 {
        let len = bytes.len() as u64;
        if len > self.budget {
            return 0;
        }
        let mut st = self.lock();
        if let Some(old) = st.lru.pop(key) {
            st.bytes -= old.len() as u64;
        }
        let mut evicted = 0;
        while st.bytes + len > self.budget {
            let Some((_, victim)) = st.lru.pop_lru() else {
                break;
            };
            st.bytes -= victim.len() as u64;
            evicted += 1;
        }
        st.bytes += len;
        st.lru.put(key.clone(), bytes);
        evicted
    }

    pub(super) fn remove(&self, key: &Digest) {
        let mut st = self.lock();
        if let Some(old) = st.lru.pop(key) {
            st.bytes -= old.len() as u64;
        }
    }

    /// (bytes held, entries).
    pub(super) fn usage(&self) -> (u64, u64) {
        let st = self.lock();
        (st.bytes, st.lru.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::Prng;

    fn key(i: u64) -> Digest {
        Digest::sha256_of(&i.to_le_bytes())
    }

    #[test]
    fn evicts_least_recently_used_and_keeps_touched() {
        let m = MemoryTier::new(30);
        for i in 0..3 {
            m.insert(&key(i), Bytes::from(vec![0u8; 10]));
        }
        assert!(m.get(&key(0)).is_some()); // 0 is now the newest
        m.insert(&key(3), Bytes::from(vec![0u8; 10]));
        assert!(m.contains(&key(0)));
        assert!(!m.contains(&key(1)));
        assert_eq!(m.usage(), (30, 3));
    }

    #[test]
    fn too_big_and_zero_budget_are_not_stored() {
        let m = MemoryTier::new(8);
        assert_eq!(m.insert(&key(0), Bytes::from(vec![0u8; 9])), 0);
        assert!(!m.contains(&key(0)));
        let off = MemoryTier::new(0);
        off.insert(&key(0), Bytes::new());
        assert!(off.get(&key(0)).is_none());
    }

    /// Property: whatever the sequence, the bytes held equal the sum of the
    /// entries and never exceed the budget.
    #[test]
    fn prop_budget_holds() {
        for seed in 0..50 {
            let mut rng = Prng::new(seed);
            let budget = rng.below(200);
            let m = MemoryTier::new(budget);
            for _ in 0..300 {
                let k = key(rng.below(20));
                match rng.below(4) {
                    0 => m.remove(&k),
                    1 => {
                        m.get(&k);
                    }
                    _ => {
                        m.insert(&k, Bytes::from(vec![1u8; rng.below(80) as usize]));
                    }
                }
                let st = m.lock();
                let sum: u64 = st.lru.iter().map(|(_, b)| b.len() as u64).sum();
                assert_eq!(sum, st.bytes, "seed {seed}");
                assert!(st.bytes <= budget, "seed {seed}");
            }
        }
    }
}
