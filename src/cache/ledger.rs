//! The disk budget's books: which chunks are on disk in what recency order,
//! and how many bytes are committed, reserved for writes in progress, or
//! still on disk while being deleted. Pure bookkeeping, no I/O: `disk.rs`
//! does the file operations and reports back.
//!
//! # Accounting unit
//!
//! A file is charged its apparent size rounded up to whole 4 KiB blocks, and
//! at least one block ([`charge`]): close to what ext4, xfs and tmpfs
//! allocate for it, independent of the filesystem so tests are exact, and an
//! empty chunk still costs its inode. The 256 shard directories and the lock
//! file are not counted.
//!
//! # The invariant
//!
//! `used() = committed + reserved + doomed + stuck ≤ budget` at all times, and
//! every byte on disk is inside `used()`: a write reserves its charge before
//! the temp file is created, and an evicted file's charge is released only
//! after its unlink returned (`doomed` until then; `stuck` for good if the
//! unlink failed). So concurrent writers can never together overshoot.

use std::collections::HashMap;

use lru::LruCache;

use crate::oci::Digest;

/// Accounting block: files are charged in whole blocks of this size.
pub(super) const BLOCK: u64 = 4096;

/// What a file of `len` bytes is charged against the budget.
pub(super) fn charge(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

/// An indexed chunk: its charge, and a generation that tells a later
/// re-store of the same key apart from this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) charge: u64,
    pub(super) generation: u64,
}

/// A chunk taken out of the index whose file must now be unlinked, then
/// reported with [`Ledger::unlinked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Victim {
    pub(super) key: Digest,
    pub(super) charge: u64,
}

/// The answer to [`Ledger::reserve`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reserve {
    /// The charge is reserved: write the file, then `commit` or `release`.
    Granted,
    /// Unlink these, report each with `unlinked`, then ask again.
    Evict(Vec<Victim>),
    /// Other writers are already freeing enough; ask again shortly.
    Wait,
    /// Nothing is left to evict: the rest of the budget is reserved by
    /// writes in progress (or stuck). Serve the chunk uncached.
    NoRoom,
    /// Larger than the whole budget: never stored.
    TooBig,
    /// The key is indexed already or its old file is being deleted.
    Busy,
}

/// The books. See the module docs for the invariant.
#[derive(Debug)]
pub(super) struct Ledger {
    budget: u64,
    index: LruCache<Digest, Entry>,
    committed: u64,
    reserved: u64,
    doomed: HashMap<Digest, u64>,
    doomed_bytes: u64,
    stuck: u64,
    next_generation: u64,
}

impl Ledger {
    pub(super) fn new(budget: u64) -> Ledger {
        Ledger {
            budget,
            index: LruCache::unbounded(),
            committed: 0,
            reserved: 0,
            doomed: HashMap::new(),
            doomed_bytes: 0,
            stuck: 0,
            next_generation: 0,
        }
    }

    /// Every byte that is, or may be about to be, on disk.
    pub(super) fn used(&self) -> u64 {
        self.committed + self.reserved + self.doomed_bytes + self.stuck
    }

    pub(super) fn entries(&self) -> u64 {
        self.index.len() as u64
    }

    /// Indexes a file found on disk when opening (call oldest first). May
    /// overshoot the budget until [`Ledger::over_budget`] victims are removed.
    pub(super) fn insert_existing(&mut self, key: Digest, charge: u64) {
        self.commit_inner(key, charge);
    }

    /// Victims to delete so the books fit the budget again (after opening
    /// with a smaller budget than last time).
    pub(super) fn over_budget(&mut self) -> Vec<Victim> {
        let need = self.used().saturating_sub(self.budget);
        self.pop_victims(need)
    }

    /// Asks to write a chunk of `charge` bytes for `key`.
    pub(super) fn reserve(&mut self, key: &Digest, charge: u64) -> Reserve {
        if charge > self.budget {
            return Reserve::TooBig;
        }
        if self.index.contains(key) || self.doomed.contains_key(key) {
            return Reserve::Busy;
        }
        let used = self.used();
        if used + charge <= self.budget {
            self.reserved += charge;
            return Reserve::Granted;
        }
        let shortage = used + charge - self.budget;
        if self.doomed_bytes >= shortage {
            return Reserve::Wait;
        }
        let victims = self.pop_victims(shortage - self.doomed_bytes);
        if !victims.is_empty() {
            Reserve::Evict(victims)
        } else if self.doomed_bytes > 0 {
            Reserve::Wait
        } else {
            Reserve::NoRoom
        }
    }

    /// Takes least recently used entries out of the index until at least
    /// `need` bytes are doomed by this call (or the index is empty).
    pub(super) fn pop_victims(&mut self, need: u64) -> Vec<Victim> {
        let mut freed = 0;
        let mut victims = Vec::new();
        while freed < need {
            let Some((key, entry)) = self.index.pop_lru() else {
                break;
            };
            freed += entry.charge;
            victims.push(self.doom(key, entry.charge));
        }
        victims
    }

    fn doom(&mut self, key: Digest, charge: u64) -> Victim {
        self.committed -= charge;
        self.doomed_bytes += charge;
        self.doomed.insert(key.clone(), charge);
        Victim { key, charge }
    }

    /// Reports that a victim's unlink returned: `removed` if the file is gone
    /// (deleted or already missing), false if it may still be there, whose
    /// charge then stays counted for good.
    pub(super) fn unlinked(&mut self, key: &Digest, removed: bool) {
        if let Some(charge) = self.doomed.remove(key) {
            self.doomed_bytes -= charge;
            if !removed {
                self.stuck += charge;
            }
        }
    }

    /// A reserved write landed under its final name.
    pub(super) fn commit(&mut self, key: Digest, charge: u64) {
        self.reserved -= charge;
        self.commit_inner(key, charge);
    }

    fn commit_inner(&mut self, key: Digest, charge: u64) {
        self.next_generation += 1;
        let entry = Entry {
            charge,
            generation: self.next_generation,
        };
        self.committed += charge;
        if let Some(old) = self.index.put(key, entry) {
            // Not reachable through `reserve` (it answers Busy), but a
            // rename over an indexed file replaces it, so count it once.
            self.committed -= old.charge;
        }
    }

    /// A reserved write failed; its temp file is gone.
    pub(super) fn release(&mut self, charge: u64) {
        self.reserved -= charge;
    }

    /// The entry for `key`, marking it most recently used.
    pub(super) fn touch(&mut self, key: &Digest) -> Option<Entry> {
        self.index.get(key).copied()
    }

    pub(super) fn contains(&self, key: &Digest) -> bool {
        self.index.contains(key)
    }

    /// Takes `key` out of the index (only the given generation, if one is
    /// given) and returns it as a victim to unlink.
    pub(super) fn remove(&mut self, key: &Digest, generation: Option<u64>) -> Option<Victim> {
        let entry = *self.index.peek(key)?;
        if generation.is_some_and(|g| g != entry.generation) {
            return None;
        }
        self.index.pop(key);
        Some(self.doom(key.clone(), entry.charge))
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
    fn charge_rounds_to_blocks() {
        assert_eq!(charge(0), 4096);
        assert_eq!(charge(1), 4096);
        assert_eq!(charge(4096), 4096);
        assert_eq!(charge(4097), 8192);
    }

    #[test]
    fn reserve_evicts_lru_and_waits_for_doomed() {
        let mut l = Ledger::new(3 * BLOCK);
        for i in 0..3 {
            assert_eq!(l.reserve(&key(i), BLOCK), Reserve::Granted);
            l.commit(key(i), BLOCK);
        }
        l.touch(&key(0));
        let Reserve::Evict(v) = l.reserve(&key(9), BLOCK) else {
            panic!("expected eviction");
        };
        assert_eq!(
            v,
            vec![Victim {
                key: key(1),
                charge: BLOCK
            }]
        );
        // The victim's bytes are still on disk: a second writer must wait,
        // not evict more or overshoot.
        assert_eq!(l.reserve(&key(8), BLOCK), Reserve::Wait);
        assert_eq!(l.reserve(&key(1), BLOCK), Reserve::Busy);
        l.unlinked(&key(1), true);
        assert_eq!(l.reserve(&key(9), BLOCK), Reserve::Granted);
        assert_eq!(l.reserve(&key(8), 4 * BLOCK), Reserve::TooBig);
        assert_eq!(l.used(), 3 * BLOCK);
    }

    #[test]
    fn no_room_when_everything_is_reserved() {
        let mut l = Ledger::new(2 * BLOCK);
        assert_eq!(l.reserve(&key(0), 2 * BLOCK), Reserve::Granted);
        assert_eq!(l.reserve(&key(1), BLOCK), Reserve::NoRoom);
        l.release(2 * BLOCK);
        assert_eq!(l.used(), 0);
    }

    #[test]
    fn remove_checks_generation() {
        let mut l = Ledger::new(10 * BLOCK);
        l.insert_existing(key(0), BLOCK);
        let g = l.touch(&key(0)).unwrap().generation;
        assert!(l.remove(&key(0), Some(g + 1)).is_none());
        assert!(l.remove(&key(0), Some(g)).is_some());
        assert!(!l.contains(&key(0)));
        l.unlinked(&key(0), false);
        assert_eq!(l.used(), BLOCK, "a failed unlink stays counted");
    }

    /// Property: with writers, evictions, removals and unlinks interleaved
    /// at random (unlinks delayed, as they run on other threads), the bytes
    /// a model disk holds never exceed the budget.
    #[test]
    fn prop_concurrent_writers_never_overshoot() {
        for seed in 0..200 {
            let mut rng = Prng::new(seed);
            let budget = BLOCK * (1 + rng.below(12));
            let mut l = Ledger::new(budget);
            let mut disk: HashMap<Digest, u64> = HashMap::new();
            let mut temps: Vec<(Digest, u64)> = Vec::new();
            let mut unlinks: Vec<Victim> = Vec::new();
            for _ in 0..400 {
                match rng.below(6) {
                    0 | 1 => {
                        let k = key(rng.below(24));
                        let c = charge(rng.below(5 * BLOCK));
                        if temps.iter().any(|(t, _)| *t == k) {
                            continue; // single flight: one writer per key
                        }
                        match l.reserve(&k, c) {
                            Reserve::Granted => temps.push((k, c)),
                            Reserve::Evict(v) => unlinks.extend(v),
                            _ => {}
                        }
                    }
                    2 if !temps.is_empty() => {
                        let (k, c) = temps.swap_remove(rng.below(temps.len() as u64) as usize);
                        if rng.below(5) == 0 {
                            l.release(c);
                        } else {
                            assert!(disk.insert(k.clone(), c).is_none(), "seed {seed}");
                            l.commit(k, c);
                        }
                    }
                    3 => {
                        let k = key(rng.below(24));
                        unlinks.extend(l.remove(&k, None));
                    }
                    4 if !unlinks.is_empty() => {
                        let v = unlinks.swap_remove(rng.below(unlinks.len() as u64) as usize);
                        disk.remove(&v.key);
                        l.unlinked(&v.key, true);
                    }
                    _ => {
                        l.touch(&key(rng.below(24)));
                    }
                }
                let on_disk: u64 =
                    disk.values().sum::<u64>() + temps.iter().map(|t| t.1).sum::<u64>();
                assert!(on_disk <= budget, "seed {seed}: {on_disk} > {budget}");
                assert!(on_disk <= l.used(), "seed {seed}");
                assert!(l.used() <= budget, "seed {seed}");
            }
        }
    }
}
