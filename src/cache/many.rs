//! [`ChunkCache::get_or_fetch_many`]: several chunks, the missing ones
//! fetched together (adjacent chunks in one range request).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::flight::{Join, Leader, Outcome, SharedError};
use super::{CacheMismatch, ChunkCache, bump, digests_of, mismatch};
use crate::oci::Digest;

impl ChunkCache {
    /// The verified bytes of each of `keys`, in order. Chunks cached in
    /// either tier are served from there; chunks another caller is fetching
    /// are awaited; `fetch` is called with the rest (each once, in the order
    /// of `keys`) and must return their bytes in that order. Every fetched
    /// chunk is verified; the good ones are cached even if others are not.
    ///
    /// `fetch` is `FnMut` rather than `FnOnce`: if a fetch this call waited
    /// for is abandoned (its caller was dropped) or failed with an error of
    /// another type, the keys it covered are fetched again with `fetch`. It
    /// is never called with an empty list, nor with a key cached or in
    /// flight elsewhere at the time.
    ///
    /// # Errors
    ///
    /// The first error among: this call's fetch, a fetch it waited for (of
    /// type `E`), `E::from(CacheMismatch)` for a chunk whose bytes do not
    /// hash to its key or that `fetch` did not return (too short a list).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`ChunkCache::get_or_fetch`]: dropping this call
    /// ends the flights it leads and their waiters retry.
    pub async fn get_or_fetch_many<E, F, Fut>(
        &self,
        keys: &[Digest],
        mut fetch: F,
    ) -> Result<Vec<Bytes>, E>
    where
        F: FnMut(Vec<Digest>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: Clone + From<CacheMismatch> + Send + Sync + 'static,
    {
        let mut found: HashMap<&Digest, Bytes> = HashMap::with_capacity(keys.len());
        let mut first = true;
        loop {
            let mut todo: Vec<&Digest> = Vec::new();
            for key in keys {
                if !found.contains_key(key) && !todo.contains(&key) {
                    todo.push(key);
                }
            }
            if todo.is_empty() {
                break;
            }
            let mut missing = Vec::new();
            for key in todo {
                match self.lookup(key).await {
                    Some(bytes) => {
                        found.insert(key, bytes);
                    }
                    None => missing.push(key),
                }
            }
            if first {
                bump(&self.counters.misses, missing.len() as u64);
                first = false;
            }
            let mut leaders = Vec::new();
            let mut waiters = Vec::new();
            for key in missing {
                match self.flights.join(key, || self.is_cached(key)) {
                    Join::Lead(leader) => leaders.push(leader),
                    Join::Wait(waiter) => waiters.push((key, waiter)),
                    Join::Cached => {} // next round finds it
                }
            }
            let waited = async {
                let mut outcomes = Vec::with_capacity(waiters.len());
                for (key, waiter) in waiters {
                    outcomes.push((key, waiter.wait().await));
                }
                outcomes
            };
            let (led, waited) = tokio::join!(self.lead_many(leaders, &mut fetch), waited);
            for (key, bytes) in led? {
                let key = keys
                    .iter()
                    .find(|k| **k == key)
                    .expect("led keys come from keys");
                found.insert(key, bytes);
            }
            for (key, outcome) in waited {
                match outcome {
                    Outcome::Done(bytes) => {
                        found.insert(key, bytes);
                    }
                    Outcome::Failed(e) => {
                        if let Some(e) = e.downcast_ref::<E>() {
                            return Err(e.clone());
                        }
                    }
                    Outcome::Abandoned => {}
                }
            }
        }
        Ok(keys.iter().map(|k| found[k].clone()).collect())
    }

    /// Fetches the keys of `leaders` with one call of `fetch`, verifies,
    /// publishes and admits what came back.
    async fn lead_many<E, F, Fut>(
        &self,
        leaders: Vec<Leader>,
        fetch: &mut F,
    ) -> Result<Vec<(Digest, Bytes)>, E>
    where
        F: FnMut(Vec<Digest>) -> Fut,
        Fut: Future<Output = Result<Vec<Bytes>, E>>,
        E: Clone + From<CacheMismatch> + Send + Sync + 'static,
    {
        if leaders.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Digest> = leaders.iter().map(|l| l.key().clone()).collect();
        bump(&self.counters.fetches, 1);
        let chunks = match fetch(keys.clone()).await {
            Ok(chunks) => chunks,
            Err(e) => {
                let shared: SharedError = Arc::new(e.clone());
                for leader in leaders {
                    leader.fail(Arc::clone(&shared));
                }
                return Err(e);
            }
        };
        if chunks.len() != keys.len() {
            tracing::debug!(
                asked = keys.len(),
                got = chunks.len(),
                "batched fetch returned a different count"
            );
        }
        let digests = digests_of(chunks.iter().take(keys.len()).cloned().collect()).await;
        let mut good = Vec::with_capacity(keys.len());
        let mut first_error = None;
        for (i, leader) in leaders.into_iter().enumerate() {
            match (chunks.get(i), digests.get(i)) {
                (Some(bytes), Some(actual)) if actual == leader.key() => {
                    good.push((leader, bytes.clone()));
                }
                (_, actual) => {
                    let e = E::from(mismatch(leader.key(), actual.cloned()));
                    leader.fail(Arc::new(e.clone()) as SharedError);
                    first_error.get_or_insert(e);
                }
            }
        }
        let out = good
            .iter()
            .map(|(l, b)| (l.key().clone(), b.clone()))
            .collect();
        self.admit(good);
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
