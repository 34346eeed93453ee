//! Call slots of one plugin, handed out fairly across clients.
//!
//! A plugin runs at most `capacity` calls at once. A request that finds every
//! slot taken waits asynchronously (no thread is blocked) in its client's queue.
//! Each client is charged the time its calls held a slot, and a freed slot goes
//! to the waiting client that has used least (ties: the oldest waiter). So a
//! client whose requests make the plugin spin to its time limit pays for that
//! time, and a client whose calls take microseconds is served before it —
//! even when it, too, sends many requests at once. A client's account is
//! forgotten when it has nothing running and nothing waiting.
//!
//! A waiter whose future is dropped (the client went away, or it waited too
//! long) leaves its queue at once; a slot granted to it at that moment is
//! passed on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Hands out at most `capacity` slots; waiters are served least-used client first.
pub struct FairQueue {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Slots held (including ones just granted to a waiter).
    running: usize,
    /// Waiters per key, oldest first.
    waiting: HashMap<String, VecDeque<Waiter>>,
    /// Per key with something running or waiting: slots held and time used.
    accounts: HashMap<String, Account>,
    next_id: u64,
}

#[derive(Default)]
struct Account {
    running: usize,
    used: Duration,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// A held slot; dropping it frees the slot for the next waiter and charges
/// its client the time it was held.
pub struct Slot {
    queue: Arc<FairQueue>,
    key: String,
    since: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.queue.release(&self.key, self.since.elapsed());
    }
}

impl FairQueue {
    /// A queue of `capacity` slots (at least one).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(FairQueue {
            capacity: capacity.max(1),
            state: Mutex::default(),
        })
    }

    /// Waits for a slot, for at most `max_wait`; `None` when none came in time.
    pub async fn acquire_within(self: &Arc<Self>, key: &str, max_wait: Duration) -> Option<Slot> {
        tokio::time::timeout(max_wait, self.acquire(key)).await.ok()
    }

    fn slot(self: &Arc<Self>, key: &str) -> Slot {
        Slot {
            queue: self.clone(),
            key: key.to_string(),
            since: Instant::now(),
        }
    }

    /// Waits for a slot in `key`'s queue.
    pub async fn acquire(self: &Arc<Self>, key: &str) -> Slot {
        loop {
            let (id, rx) = {
                let mut state = self.lock();
                if state.running < self.capacity && state.waiting.is_empty() {
                    state.running += 1;
                    state.accounts.entry(key.to_string()).or_default().running += 1;
                    return self.slot(key);
                }
                let (grant, rx) = oneshot::channel();
                let id = state.next_id;
                state.next_id += 1;
                state.accounts.entry(key.to_string()).or_default();
                state
                    .waiting
                    .entry(key.to_string())
                    .or_default()
                    .push_back(Waiter { id, grant });
                (id, rx)
            };
            let mut waiting = Waiting {
                queue: self,
                key,
                id,
                rx,
                granted: false,
            };
            if (&mut waiting.rx).await.is_ok() {
                waiting.granted = true;
                return self.slot(key);
            }
            // The sender vanished without a grant (cannot happen: only a grant or
            // our own cleanup removes it); queue again rather than over-admit.
            waiting.granted = true;
        }
    }

    /// Frees a slot of `key`, charging it `used`, and hands the slot to the
    /// waiting client that has used least, or returns it to the pool.
    fn release(&self, key: &str, used: Duration) {
        let mut state = self.lock();
        if let Some(account) = state.accounts.get_mut(key) {
            account.running = account.running.saturating_sub(1);
            account.used += used;
        }
        state.forget_if_idle(key);
        loop {
            let next = state
                .waiting
                .iter()
                .filter_map(|(k, q)| q.front().map(|w| (k, w.id)))
                .min_by_key(|(k, id)| (state.accounts.get(*k).map(|a| a.used), *id))
                .map(|(k, _)| k.clone());
            let Some(next) = next else {
                state.running -= 1;
                return;
            };
            let queue = state.waiting.get_mut(&next).expect("chosen from the map");
            let waiter = queue.pop_front().expect("non-empty");
            if queue.is_empty() {
                state.waiting.remove(&next);
            }
            if waiter.grant.send(()).is_ok() {
                state.accounts.entry(next).or_default().running += 1;
                return;
            }
            state.forget_if_idle(&next);
        }
    }

    /// Requests waiting for a slot.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().map(VecDeque::len).sum()
    }

    /// Slots held.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock().running
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Drops `key`'s account when it has nothing running and nothing waiting.
    fn forget_if_idle(&mut self, key: &str) {
        let idle = self.accounts.get(key).is_some_and(|a| a.running == 0)
            && !self.waiting.contains_key(key);
        if idle {
            self.accounts.remove(key);
        }
    }
}

/// A registered waiter; when dropped before its grant arrives, it leaves its
/// queue, or passes on a slot granted in the meantime.
struct Waiting<'a> {
    queue: &'a Arc<FairQueue>,
    key: &'a str,
    id: u64,
    rx: oneshot::Receiver<()>,
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        {
            let mut state = self.queue.lock();
            if let Some(queue) = state.waiting.get_mut(self.key) {
                if let Some(at) = queue.iter().position(|w| w.id == self.id) {
                    queue.remove(at);
                    if queue.is_empty() {
                        state.waiting.remove(self.key);
                    }
                    state.forget_if_idle(self.key);
                    return;
                }
            }
        }
        // Not queued any more: a grant was sent (under the lock) before we
        // got here. Take it and pass the slot on.
        if self.rx.try_recv().is_ok() {
            self.queue.release(self.key, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..1000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn the_client_that_used_least_goes_first() {
        let queue = FairQueue::new(1);
        // "flood" holds the slot for a while: it is charged that time.
        let held = queue.acquire("flood").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (key, name) in [
            ("flood", "f1"),
            ("flood", "f2"),
            ("flood", "f3"),
            ("calm", "c1"),
            ("other", "o1"),
            ("calm", "c2"),
            ("calm", "c3"),
        ] {
            let (q, order) = (queue.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = q.acquire(key).await;
                order.lock().unwrap().push(name);
                if key == "flood" {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
            let n = tasks.len();
            until(|| queue.waiting() == n).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["c1", "o1", "c2", "c3", "f1", "f2", "f3"],
            "cheap clients first, however many requests they queued; not first come first served"
        );
        assert_eq!(queue.running(), 0);
        assert!(
            queue.lock().accounts.is_empty(),
            "idle accounts are forgotten"
        );
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let queue = FairQueue::new(1);
        let held = queue.acquire("a").await;
        let q = queue.clone();
        let gone = tokio::spawn(async move { q.acquire("b").await });
        until(|| queue.waiting() == 1).await;
        gone.abort();
        assert!(gone.await.is_err());
        assert_eq!(queue.waiting(), 0);
        drop(held);
        assert_eq!(
            queue.running(),
            0,
            "the slot was not handed to the dead waiter"
        );
        let _again = queue.acquire("c").await;
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_waiter_that_then_goes_away_is_passed_on() {
        let queue = FairQueue::new(1);
        let held = queue.acquire("a").await;
        let q = queue.clone();
        let gone = tokio::spawn(async move { q.acquire("b").await });
        until(|| queue.waiting() == 1).await;
        // Grant, then drop the waiter before it runs (current-thread runtime:
        // it cannot run between these two lines).
        drop(held);
        gone.abort();
        let _ = gone.await;
        assert_eq!(queue.running(), 0);
        let _again = queue.acquire("c").await;
    }

    #[tokio::test]
    async fn waiting_ends_after_max_wait() {
        let queue = FairQueue::new(2);
        let _a = queue.acquire("a").await;
        let _b = queue.acquire("a").await;
        let started = std::time::Instant::now();
        let late = queue.acquire_within("b", Duration::from_millis(50)).await;
        assert!(late.is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(queue.waiting(), 0, "the expired waiter left");
        assert_eq!(queue.running(), 2);
    }
}
