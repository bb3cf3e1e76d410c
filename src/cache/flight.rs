//! Single flight: at most one fetch per key in progress; everyone else who
//! wants that key waits for its result.
//!
//! The map holds a `watch::Receiver` per key under a std `Mutex` that is
//! only held for map operations, never across an `.await`. The leader holds
//! the `watch::Sender` inside a [`Leader`] guard; dropping the guard (the
//! leader's task was cancelled, or it panicked) removes the entry and closes
//! the channel, and every waiter wakes up with [`Outcome::Abandoned`] and
//! retries (one of them becomes the new leader).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::oci::Digest;

/// A leader's error, type-erased so callers with different error types can
/// share one map; a waiter downcasts it back to its own `E`.
pub(super) type SharedError = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
enum State {
    Pending,
    Done(Bytes),
    Failed(SharedError),
}

/// What a waiter learned.
pub(super) enum Outcome {
    Done(Bytes),
    Failed(SharedError),
    /// The leader went away without a result.
    Abandoned,
}

/// Flight id (to tell a newer flight of the same key apart) and its channel.
type FlightMap = HashMap<Digest, (u64, watch::Receiver<State>)>;

/// The in-flight fetches, by key.
#[derive(Default)]
pub(super) struct Flights {
    map: Mutex<FlightMap>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.lock().len())
            .finish()
    }
}

/// The answer to [`Flights::join`].
pub(super) enum Join {
    /// Nobody is fetching `key`: the caller must, and report through this.
    Lead(Leader),
    /// Somebody is: wait on this.
    Wait(Waiter),
    /// `cached` said the key is cached now: look again.
    Cached,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlightMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key` or starts one. `cached` is asked under the
    /// map lock before starting one: a flight removes its entry only after
    /// its chunk is stored, so this closes the gap between a cache miss and
    /// registering, in which a previous flight may have finished.
    pub(super) fn join(self: &Arc<Self>, key: &Digest, cached: impl FnOnce() -> bool) -> Join {
        let mut map = self.lock();
        if let Some((_, rx)) = map.get(key) {
            return Join::Wait(Waiter { rx: rx.clone() });
        }
        if cached() {
            return Join::Cached;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(State::Pending);
        map.insert(key.clone(), (id, rx));
        Join::Lead(Leader {
            flights: Arc::clone(self),
            key: key.clone(),
            id,
            tx,
        })
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The right and duty to fetch one key. Dropping it ends the flight.
pub(super) struct Leader {
    flights: Arc<Flights>,
    key: Digest,
    id: u64,
    tx: watch::Sender<State>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader").field("key", &self.key).finish()
    }
}

impl Leader {
    pub(super) fn key(&self) -> &Digest {
        &self.key
    }

    /// Hands the chunk to current and later waiters. Keep the guard until
    /// the chunk is stored, so late arrivals join instead of fetching again.
    pub(super) fn succeed(&self, bytes: Bytes) {
        self.tx.send_replace(State::Done(bytes));
    }

    /// Hands the error to current waiters and ends the flight, so the next
    /// caller fetches afresh.
    pub(super) fn fail(self, error: SharedError) {
        self.tx.send_replace(State::Failed(error));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// A place in line for someone else's fetch.
pub(super) struct Waiter {
    rx: watch::Receiver<State>,
}

impl Waiter {
    /// The leader's result.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping a waiter affects nobody else.
    pub(super) async fn wait(mut self) -> Outcome {
        loop {
            match &*self.rx.borrow_and_update() {
                State::Pending => {}
                State::Done(b) => return Outcome::Done(b.clone()),
                State::Failed(e) => return Outcome::Failed(Arc::clone(e)),
            }
            if self.rx.changed().await.is_err() {
                // Closed; a result may still have been sent just before.
                return match &*self.rx.borrow() {
                    State::Pending => Outcome::Abandoned,
                    State::Done(b) => Outcome::Done(b.clone()),
                    State::Failed(e) => Outcome::Failed(Arc::clone(e)),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Digest {
        Digest::sha256_of(b"k")
    }

    #[tokio::test]
    async fn waiters_get_the_result_and_the_entry_goes_with_the_leader() {
        let f = Arc::new(Flights::default());
        let Join::Lead(leader) = f.join(&key(), || false) else {
            panic!("first caller leads");
        };
        let Join::Wait(w) = f.join(&key(), || false) else {
            panic!("second caller waits");
        };
        leader.succeed(Bytes::from_static(b"x"));
        // Late arrival while the leader still stores: joins, gets it at once.
        let Join::Wait(late) = f.join(&key(), || false) else {
            panic!("late caller waits");
        };
        drop(leader);
        assert_eq!(f.len(), 0);
        for w in [w, late] {
            assert!(matches!(w.wait().await, Outcome::Done(b) if b == "x"));
        }
        assert!(matches!(f.join(&key(), || true), Join::Cached));
    }

    #[tokio::test]
    async fn dropped_leader_wakes_waiters_as_abandoned() {
        let f = Arc::new(Flights::default());
        let Join::Lead(leader) = f.join(&key(), || false) else {
            panic!();
        };
        let Join::Wait(w) = f.join(&key(), || false) else {
            panic!();
        };
        let waiting = tokio::spawn(w.wait());
        tokio::task::yield_now().await;
        drop(leader);
        assert!(matches!(waiting.await.unwrap(), Outcome::Abandoned));
        assert!(matches!(f.join(&key(), || false), Join::Lead(_)));
    }
}
