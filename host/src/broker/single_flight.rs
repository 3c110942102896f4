//! One plugin poll per operation at a time. A platform (or several
//! replicas of its controller) may poll the same `last_operation` many
//! times at once; the first poll of an operation calls the plugin and
//! settles the answer, and every poll of the same operation arriving
//! meanwhile waits for that poll's reply instead of calling the plugin
//! again. The entry is removed as soon as the poll ends, so the next poll
//! asks again (or reads the settled record).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// The polls under way, by operation id; each publishes its reply once.
pub(super) struct Flights<T> {
    running: Mutex<HashMap<String, watch::Receiver<Option<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync> Flights<T> {
    /// Runs `work` for `key` unless a run for `key` is under way, whose
    /// result is then returned instead. If that run is dropped before it
    /// ends (its caller cancelled), the waiting ones start again.
    pub(super) async fn run(&self, key: &str, work: impl Future<Output = T>) -> T {
        let published = loop {
            let flight = {
                let mut running = self.lock();
                match running.entry(key.to_owned()) {
                    Entry::Occupied(flight) => flight.get().clone(),
                    Entry::Vacant(place) => {
                        let (sender, receiver) = watch::channel(None);
                        place.insert(receiver);
                        break sender;
                    }
                }
            };
            if let Some(result) = wait(flight).await {
                return result;
            }
        };
        // Removes the entry when this run ends, or is dropped half-way:
        // only the run that inserted an entry removes it.
        let _landed = Landed { flights: self, key };
        let result = work.await;
        published.send_replace(Some(result.clone()));
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Option<T>>>> {
        // Only the map's integrity is guarded: nothing panics while it is held.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The result of the run `flight` follows; `None` if it was dropped first.
async fn wait<T: Clone>(mut flight: watch::Receiver<Option<T>>) -> Option<T> {
    let published = flight.wait_for(Option::is_some).await.ok()?;
    published.as_ref().cloned()
}

struct Landed<'a, T: Clone + Send + Sync> {
    flights: &'a Flights<T>,
    key: &'a str,
}

impl<T: Clone + Send + Sync> Drop for Landed<'_, T> {
    fn drop(&mut self) {
        self.flights.lock().remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn concurrent_runs_of_one_key_share_one_result_and_others_run_apart() {
        let flights = Arc::new(Flights::<usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let start = |key: &'static str| {
            let (flights, runs, release) = (flights.clone(), runs.clone(), release.clone());
            tokio::spawn(async move {
                flights
                    .run(key, async {
                        let number = runs.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        number
                    })
                    .await
            })
        };
        let same: Vec<_> = (0..16).map(|_| start("op-1")).collect();
        let other = start("op-2");
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        // Let every task reach its wait before the runs end.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        let mut results = Vec::new();
        for task in same {
            results.push(task.await.expect("joined"));
        }
        other.await.expect("joined");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
        assert!(
            results.windows(2).all(|pair| pair[0] == pair[1]),
            "{results:?}"
        );
        assert!(flights.lock().is_empty(), "entries removed when done");
        // Done: the next run of the key runs again.
        assert_eq!(flights.run("op-1", async { 7 }).await, 7);
    }

    #[tokio::test]
    async fn a_dropped_run_lets_the_waiting_ones_start_again() {
        let flights = Arc::new(Flights::<&'static str>::default());
        let stalled = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("op", std::future::pending()).await })
        };
        while flights.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let waiting = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("op", async { "ran" }).await })
        };
        tokio::task::yield_now().await;
        stalled.abort();
        assert_eq!(waiting.await.expect("joined"), "ran");
        assert!(flights.lock().is_empty());
    }
}
