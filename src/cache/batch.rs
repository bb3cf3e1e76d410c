//! [`ChunkCache::lead`]: take over the fetch of several chunks and hand
//! each one over as soon as its bytes are there ([`LedBatch::deliver`]),
//! for a caller that reads one long range and wants the chunks at its start
//! to be usable before the end has arrived.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::flight::{Join, Leader, SharedError};
use super::{CacheMismatch, ChunkCache, bump, mismatch};
use crate::oci::Digest;

/// The flights of a set of chunks, led by one caller (see
/// [`ChunkCache::lead`]). Dropping it ends the flights of the chunks not
/// delivered: their waiters retry (one of them fetches).
#[derive(Debug)]
pub struct LedBatch {
    cache: Arc<ChunkCache>,
    leaders: HashMap<Digest, Leader>,
}

impl ChunkCache {
    /// Leads the flights of those `keys` that are neither cached nor being
    /// fetched by someone else; the others are left alone (not waited for).
    /// Duplicate keys are led once. Counts one miss per key led.
    ///
    /// Whoever asks for a led key meanwhile waits for
    /// [`LedBatch::deliver`] (or for the batch to fail or be dropped).
    pub fn lead(self: &Arc<Self>, keys: &[Digest]) -> LedBatch {
        let mut leaders = HashMap::new();
        for key in keys {
            if leaders.contains_key(key) || self.is_cached(key) {
                continue;
            }
            if let Join::Lead(leader) = self.flights.join(key, || self.is_cached(key)) {
                leaders.insert(key.clone(), leader);
            }
        }
        bump(&self.counters.misses, leaders.len() as u64);
        if !leaders.is_empty() {
            bump(&self.counters.fetches, 1);
        }
        LedBatch {
            cache: Arc::clone(self),
            leaders,
        }
    }
}

impl LedBatch {
    /// Whether this batch leads `key` (and has not delivered or failed it).
    pub fn leads(&self, key: &Digest) -> bool {
        self.leaders.contains_key(key)
    }

    /// How many chunks are still to deliver.
    pub fn len(&self) -> usize {
        self.leaders.len()
    }

    /// Whether every led chunk has been delivered (or none was led).
    pub fn is_empty(&self) -> bool {
        self.leaders.is_empty()
    }

    /// Hands over the bytes of `key`: checked against the key, then given
    /// to its waiters, kept in memory and stored on disk in the background.
    /// A key this batch does not lead is ignored (`Ok`).
    ///
    /// # Errors
    ///
    /// [`CacheMismatch`] when `bytes` do not hash to `key`; the key's
    /// waiters get the same error (as `E`, see [`Self::fail`]) through
    /// `on_mismatch`, and the flight ends.
    pub fn deliver<E>(
        &mut self,
        key: &Digest,
        bytes: Bytes,
        on_mismatch: impl FnOnce(CacheMismatch) -> E,
    ) -> Result<(), CacheMismatch>
    where
        E: Send + Sync + 'static,
    {
        let Some(leader) = self.leaders.remove(key) else {
            return Ok(());
        };
        let actual = Digest::sha256_of(&bytes);
        if actual != *key {
            let m = mismatch(key, Some(actual));
            leader.fail(Arc::new(on_mismatch(m.clone())) as SharedError);
            return Err(m);
        }
        self.cache.admit(vec![(leader, bytes)]);
        Ok(())
    }

    /// Hands over the bytes of `key` that the caller has already checked
    /// against `key` (e.g. `format::chunk::decode_verified` against the same
    /// chunk digest), without hashing them again: given to its waiters, kept
    /// in memory and stored on disk in the background. A key this batch does
    /// not lead is ignored.
    pub fn deliver_verified(&mut self, key: &Digest, bytes: Bytes) {
        if let Some(leader) = self.leaders.remove(key) {
            self.cache.admit(vec![(leader, bytes)]);
        }
    }

    /// Ends the flight of `key` with `error` (its waiters get it), when
    /// this batch leads it.
    pub fn fail_key<E>(&mut self, key: &Digest, error: E)
    where
        E: Send + Sync + 'static,
    {
        if let Some(leader) = self.leaders.remove(key) {
            leader.fail(Arc::new(error) as SharedError);
        }
    }

    /// Ends the flights of every chunk not delivered yet with `error`:
    /// their waiters get it (waiters asking with another error type retry
    /// the fetch themselves).
    pub fn fail<E>(self, error: E)
    where
        E: Send + Sync + 'static,
    {
        let shared: SharedError = Arc::new(error);
        let mut this = self;
        for (_, leader) in this.leaders.drain() {
            leader.fail(Arc::clone(&shared));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheOptions, CacheStats};

    fn cache(dir: &std::path::Path) -> Arc<ChunkCache> {
        let mut o = CacheOptions::new(dir.join("c"));
        o.disk_budget = 1 << 20;
        o.memory_budget = 1 << 20;
        ChunkCache::open(o).unwrap()
    }

    fn stats(c: &ChunkCache) -> CacheStats {
        c.stats()
    }

    #[derive(Debug, Clone, PartialEq)]
    struct TestErr(String);
    impl From<CacheMismatch> for TestErr {
        fn from(m: CacheMismatch) -> Self {
            TestErr(m.to_string())
        }
    }

    #[tokio::test]
    async fn waiters_get_each_chunk_when_it_is_delivered_not_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let (a, b) = (Bytes::from_static(b"first"), Bytes::from_static(b"second"));
        let (ka, kb) = (Digest::sha256_of(&a), Digest::sha256_of(&b));
        let mut batch = c.lead(&[ka.clone(), kb.clone(), ka.clone()]);
        assert_eq!(batch.len(), 2);
        assert!(batch.leads(&ka) && batch.leads(&kb));
        // A second leader gets nothing: both are in flight.
        assert!(c.lead(&[ka.clone(), kb.clone()]).is_empty());
        let c2 = Arc::clone(&c);
        let ka2 = ka.clone();
        let waiter = tokio::spawn(async move {
            c2.get_or_fetch(&ka2, async {
                Err::<Bytes, TestErr>(TestErr("must not fetch".into()))
            })
            .await
        });
        batch.deliver(&ka, a.clone(), TestErr::from).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), a);
        assert!(batch.leads(&kb) && !batch.leads(&ka));
        drop(batch);
        // kb was never delivered: its flight ended, and a reader fetches it.
        let got = c
            .get_or_fetch(&kb, async { Ok::<Bytes, TestErr>(b.clone()) })
            .await
            .unwrap();
        assert_eq!(got, b);
        c.flush().await;
        assert!(c.contains(&ka) && c.contains(&kb));
        assert_eq!(stats(&c).misses, 3);
    }

    #[tokio::test]
    async fn verified_bytes_reach_the_waiters_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let a = Bytes::from_static(b"checked by the caller");
        let ka = Digest::sha256_of(&a);
        let mut batch = c.lead(std::slice::from_ref(&ka));
        let (c2, ka2) = (Arc::clone(&c), ka.clone());
        let waiter = tokio::spawn(async move {
            c2.get_or_fetch(&ka2, async {
                Err::<Bytes, TestErr>(TestErr("must not fetch".into()))
            })
            .await
        });
        batch.deliver_verified(&ka, a.clone());
        assert!(!batch.leads(&ka));
        assert_eq!(waiter.await.unwrap().unwrap(), a);
        c.flush().await;
        assert!(c.contains(&ka));
    }

    #[tokio::test]
    async fn wrong_bytes_are_refused_and_the_waiters_get_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let good = Bytes::from_static(b"good");
        let key = Digest::sha256_of(&good);
        let mut batch = c.lead(std::slice::from_ref(&key));
        let c2 = Arc::clone(&c);
        let k2 = key.clone();
        let waiter = tokio::spawn(async move {
            c2.get_or_fetch(&k2, async {
                Ok::<Bytes, TestErr>(Bytes::from_static(b"x"))
            })
            .await
        });
        tokio::task::yield_now().await;
        let e = batch
            .deliver(&key, Bytes::from_static(b"evil"), TestErr::from)
            .unwrap_err();
        assert_eq!(e.key, key);
        assert!(!c.contains(&key));
        // The waiter either saw the mismatch, or joined after it and fetched
        // (wrong bytes again: its own mismatch). Never the evil bytes.
        let got = waiter.await.unwrap();
        assert!(got.is_err(), "{got:?}");
    }

    #[tokio::test]
    async fn failing_a_batch_fails_its_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let key = Digest::sha256_of(b"k");
        let batch = c.lead(std::slice::from_ref(&key));
        let c2 = Arc::clone(&c);
        let k2 = key.clone();
        let waiter = tokio::spawn(async move {
            c2.get_or_fetch(&k2, async { Err::<Bytes, TestErr>(TestErr("own".into())) })
                .await
        });
        tokio::task::yield_now().await;
        batch.fail(TestErr("registry said 500".into()));
        let e = waiter.await.unwrap().unwrap_err();
        assert!(e.0 == "registry said 500" || e.0 == "own", "{e:?}");
    }
}
