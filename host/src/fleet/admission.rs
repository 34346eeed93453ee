//! Admission: how many requests each backend runs at once, and who waits.
//!
//! Every backend has two kinds of slot ([`Limits`]): `slots` requests on the
//! backend in all, and `parallel` requests per model on it (Ollama runs
//! `OLLAMA_NUM_PARALLEL` requests per loaded model and queues the rest
//! itself, where nobody can see or order them). A request takes one of each,
//! on the first of its candidate backends (in the order given) that has both
//! free; a backend never [configured](Admission::configure) is no candidate.
//! The model is an opaque key: the caller normalises names.
//!
//! When no candidate has room the request waits in one queue shared by all
//! backends, at most [`Ask::max_wait`] and with at most `max_queue` waiting
//! in all. When a slot frees, it is handed over at once, under the same lock,
//! to the first waiter that can use it, in this order:
//!
//! - strictly higher [`Ask::priority`] first;
//! - within a priority, round robin across [`Ask::key`]s: the key just served
//!   goes to the back of the ring, so a key with 100 waiting does not starve a
//!   key with one;
//! - first come, first served within a key.
//!
//! Waiters that cannot use the freed slot (other candidates, or their model's
//! slots there are full) are skipped without holding up the ones behind them.
//! The handed-over slot counts as in use from that moment, so no newcomer can
//! take it first and waiters are never woken just to race for it. It follows
//! that whenever the lock is free no waiter could use any free slot, so a
//! newcomer that finds a free slot takes it without looking at the queue.
//!
//! On a reload, [`Admission::configure`] every backend of the new
//! configuration, then [`Admission::retain`] them: counts in use survive,
//! raised limits serve waiters at once, lowered ones revoke nothing.
//!
//! A [`Permit`] gives its slots back when dropped. A waiting [`Admission::acquire`]
//! that is dropped (the client hung up) leaves the queue at once; if a slot had
//! just been handed to it, that slot goes on to the next waiter.
//!
//! [`Refusal`]s carry a Retry-After estimate, in whole seconds within 1..=60:
//!
//! ```text
//! retry_after = ceil((ahead + 1) / Σ_b (min(slots_b, parallel_b) / hold_b))
//! ```
//!
//! over the configured candidates `b`, where `hold_b` is the mean time permits
//! are held on `b` (an EWMA with weight 1/8 per release; the all-backend EWMA
//! while `b` has none, 1 s before any) and `ahead` counts the waiters of equal
//! or higher priority that share a candidate: the time for that many slots to
//! free up, plus the asker's own.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How many keys [`QueueStats::by_key`] lists.
pub const TOP_KEYS: usize = 10;
/// Waits kept for the percentiles of [`QueueStats`].
const RECENT_WAITS: usize = 1024;
/// Hold time assumed before any permit was released, in seconds.
const DEFAULT_HOLD: f64 = 1.0;
/// Idle model entries a backend keeps before it starts forgetting them.
const MODELS_KEPT: usize = 32;

/// Slot limits of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests on the backend at once, all models together.
    pub slots: u32,
    /// Requests per model on the backend at once.
    pub parallel: u32,
}

impl Limits {
    /// `parallel` per model and the default backend total, `parallel` x 3
    /// (3 is Ollama's `OLLAMA_MAX_LOADED_MODELS` default).
    pub fn with_parallel(parallel: u32) -> Limits {
        Limits {
            slots: parallel.saturating_mul(3),
            parallel,
        }
    }
}

impl Default for Limits {
    /// Ollama's defaults: 1 per model, 3 in all.
    fn default() -> Limits {
        Limits::with_parallel(1)
    }
}

/// What a request asks [`Admission::acquire`] for.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// Backends that may serve it, most preferred first.
    pub candidates: &'a [&'a str],
    /// The model (normalised by the caller).
    pub model: &'a str,
    /// Fairness key (principal, else client IP).
    pub key: &'a str,
    /// Higher is served first.
    pub priority: i32,
    /// Longest time to wait in the queue (zero: refused at once if no slot is free).
    pub max_wait: Duration,
}

/// Why no slot was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_queue` requests were waiting already.
    #[error("too many requests waiting; retry after {}s", retry_after.as_secs())]
    QueueFull {
        /// Estimated time until a slot is likely (see the module doc).
        retry_after: Duration,
    },
    /// No slot freed within `max_wait`.
    #[error("no backend slot freed in {waited:?}; retry after {}s", retry_after.as_secs())]
    TimedOut {
        /// Time spent waiting.
        waited: Duration,
        /// Estimated time until a slot is likely (see the module doc).
        retry_after: Duration,
    },
    /// The candidate list was empty or named no configured backend.
    #[error("no configured backend among the candidates")]
    NoCandidate,
}

impl Refusal {
    /// The Retry-After estimate, if the refusal has one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::QueueFull { retry_after } | Refusal::TimedOut { retry_after, .. } => {
                Some(*retry_after)
            }
            Refusal::NoCandidate => None,
        }
    }
}

/// Load of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Configured requests at once, all models.
    pub slots: u32,
    /// Configured requests at once per model.
    pub parallel: u32,
    /// Slots in use (may exceed `slots` after limits were lowered).
    pub in_use: u32,
    /// Waiting requests that have this backend among their candidates.
    pub queued: u32,
}

/// Load of one model on one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelLoad {
    /// Its slots in use.
    pub in_use: u32,
    /// Waiting requests for it that have this backend among their candidates.
    pub queued: u32,
}

/// Refusals counted since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// [`Refusal::QueueFull`].
    pub queue_full: u64,
    /// [`Refusal::TimedOut`].
    pub timed_out: u64,
    /// [`Refusal::NoCandidate`].
    pub no_candidate: u64,
}

/// Queue statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests waiting now.
    pub depth: usize,
    /// The most requests allowed to wait.
    pub max_queue: usize,
    /// Waiting requests per fairness key, deepest first, at most [`TOP_KEYS`].
    pub by_key: Vec<(String, usize)>,
    /// Requests that waited and were then admitted or timed out, since start.
    pub waits: u64,
    /// Median of the last 1024 such waits.
    pub wait_p50: Duration,
    /// 99th percentile of the last 1024 such waits.
    pub wait_p99: Duration,
    /// Longest of the last 1024 such waits.
    pub wait_max: Duration,
    /// Waiters that left because their request was dropped, since start.
    pub cancelled: u64,
    /// Refusals by kind, since start.
    pub refused: Refusals,
}

/// Slots of every backend and the queue of requests waiting for one.
pub struct Admission {
    state: Mutex<State>,
}

/// A slot on a backend and one for the model there; dropping it gives both
/// back and hands them to the next eligible waiter.
pub struct Permit {
    admission: Arc<Admission>,
    backend: Arc<str>,
    model: Arc<str>,
    /// When the slots were taken.
    since: Instant,
    waited: Duration,
}

impl Permit {
    /// The backend the slot is on.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The model the slot is for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Time spent in the queue (zero if a slot was free at once).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("backend", &self.backend)
            .field("model", &self.model)
            .field("waited", &self.waited)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = self.since.elapsed().as_secs_f64();
        self.admission
            .lock()
            .release(&self.backend, &self.model, held);
    }
}

struct State {
    max_queue: usize,
    backends: HashMap<Arc<str>, Slots>,
    /// Waiters by priority (highest first), each a ring of per-key lanes.
    levels: BTreeMap<Reverse<i32>, VecDeque<Lane>>,
    depth: usize,
    next_id: u64,
    /// Hold-time EWMA over all backends, seconds.
    hold: Option<f64>,
    recent: Vec<Duration>,
    next_recent: usize,
    waits: u64,
    cancelled: u64,
    refused: Refusals,
}

struct Slots {
    id: Arc<str>,
    /// `None` once [`Admission::retain`] forgot it (kept while permits are out).
    limits: Option<Limits>,
    in_use: u32,
    queued: u32,
    /// Hold-time EWMA on this backend, seconds.
    hold: Option<f64>,
    models: HashMap<Arc<str>, ModelSlots>,
}

struct ModelSlots {
    name: Arc<str>,
    in_use: u32,
    queued: u32,
}

struct Lane {
    key: Box<str>,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    candidates: Box<[Arc<str>]>,
    model: Arc<str>,
    since: Instant,
    tx: oneshot::Sender<Result<Grant, Refusal>>,
}

/// Slots handed to a waiter, already counted as in use.
struct Grant {
    backend: Arc<str>,
    model: Arc<str>,
    at: Instant,
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |o| o + (sample - o) / 8.0)
}

/// Runs `f` on `name`'s entry, creating it (sharing `shared` if given) if absent.
fn with_model<R>(
    models: &mut HashMap<Arc<str>, ModelSlots>,
    name: &str,
    shared: Option<&Arc<str>>,
    f: impl FnOnce(&mut ModelSlots) -> R,
) -> R {
    let m = match models.get_mut(name) {
        Some(m) => m,
        None => {
            let name: Arc<str> = shared.map_or_else(|| name.into(), Arc::clone);
            let entry = ModelSlots {
                name: Arc::clone(&name),
                in_use: 0,
                queued: 0,
            };
            models.entry(name).or_insert(entry)
        }
    };
    f(m)
}

/// Forgets `name`'s entry if it is idle and the backend keeps many.
fn settle(models: &mut HashMap<Arc<str>, ModelSlots>, name: &str) {
    let idle = models
        .get(name)
        .is_some_and(|m| m.in_use == 0 && m.queued == 0);
    if idle && models.len() > MODELS_KEPT {
        models.remove(name);
    }
}

impl State {
    fn configured(&self, backend: &str) -> Option<(&Slots, Limits)> {
        let b = self.backends.get(backend)?;
        Some((b, b.limits?))
    }

    /// Takes a backend and a model slot on `backend` if both are free.
    fn try_take(&mut self, backend: &str, model: &str) -> Option<(Arc<str>, Arc<str>)> {
        let b = self.backends.get_mut(backend)?;
        let limits = b.limits?;
        let model_used = b.models.get(model).map_or(0, |m| m.in_use);
        if b.in_use >= limits.slots || model_used >= limits.parallel {
            return None;
        }
        b.in_use += 1;
        let model = with_model(&mut b.models, model, None, |m| {
            m.in_use += 1;
            Arc::clone(&m.name)
        });
        Some((Arc::clone(&b.id), model))
    }

    /// Gives back slots without handing them on.
    fn give_back(&mut self, backend: &str, model: &str) {
        let Some(b) = self.backends.get_mut(backend) else {
            return;
        };
        b.in_use = b.in_use.saturating_sub(1);
        if let Some(m) = b.models.get_mut(model) {
            m.in_use = m.in_use.saturating_sub(1);
        }
        settle(&mut b.models, model);
        if b.limits.is_none() && b.in_use == 0 {
            self.backends.remove(backend);
        }
    }

    fn release(&mut self, backend: &str, model: &str, held: f64) {
        if let Some(b) = self.backends.get_mut(backend) {
            b.hold = Some(ewma(b.hold, held));
            self.hold = Some(ewma(self.hold, held));
        }
        self.give_back(backend, model);
        self.dispatch(backend);
    }

    /// Hands free slots of `backend` to waiters until none fits.
    fn dispatch(&mut self, backend: &str) {
        while self.grant_one(backend) {}
    }

    /// Hands one slot of `backend` to the first waiter that can use it.
    fn grant_one(&mut self, backend: &str) -> bool {
        let Some((b, limits)) = self.configured(backend) else {
            return false;
        };
        if b.in_use >= limits.slots {
            return false;
        }
        let fits = |w: &Waiter| {
            w.candidates.iter().any(|c| **c == *backend)
                && b.models.get(&*w.model).map_or(0, |m| m.in_use) < limits.parallel
        };
        let mut found = None;
        'find: for (&level, lanes) in &self.levels {
            for (li, lane) in lanes.iter().enumerate() {
                if let Some(wi) = lane.waiters.iter().position(fits) {
                    found = Some((level, li, wi));
                    break 'find;
                }
            }
        }
        let Some((level, li, wi)) = found else {
            return false;
        };
        let Some(waiter) = self.take_waiter(level, li, wi, true) else {
            return false;
        };
        // The waiter fitted, so this succeeds; if it did not, dropping the
        // waiter's sender ends its wait.
        if let Some((backend, model)) = self.try_take(backend, &waiter.model) {
            let at = Instant::now();
            let waited = at - waiter.since;
            match waiter.tx.send(Ok(Grant { backend, model, at })) {
                Ok(()) => self.record_wait(waited),
                // Its receiver is gone (cannot happen while it is queued, but
                // never leak): the slot goes to the next one.
                Err(Ok(g)) => self.give_back(&g.backend, &g.model),
                Err(Err(_)) => {}
            }
        }
        true
    }

    fn take_waiter(
        &mut self,
        level: Reverse<i32>,
        li: usize,
        wi: usize,
        rotate: bool,
    ) -> Option<Waiter> {
        let lanes = self.levels.get_mut(&level)?;
        let mut lane = lanes.remove(li)?;
        let waiter = lane.waiters.remove(wi);
        if !lane.waiters.is_empty() {
            if rotate {
                lanes.push_back(lane);
            } else {
                lanes.insert(li, lane);
            }
        }
        if lanes.is_empty() {
            self.levels.remove(&level);
        }
        let waiter = waiter?;
        self.depth -= 1;
        self.count(&waiter, false);
        Some(waiter)
    }

    /// Removes a waiter from the queue, if it is still there.
    fn remove(&mut self, priority: i32, key: &str, id: u64) -> Option<Waiter> {
        let level = Reverse(priority);
        let lanes = self.levels.get(&level)?;
        let li = lanes.iter().position(|l| *l.key == *key)?;
        let wi = lanes[li].waiters.iter().position(|w| w.id == id)?;
        self.take_waiter(level, li, wi, false)
    }

    /// Adds (or takes off) a waiter to the queued counts of its candidates.
    fn count(&mut self, w: &Waiter, add: bool) {
        for c in w.candidates.iter() {
            let Some(b) = self.backends.get_mut(&**c) else {
                continue;
            };
            if add {
                b.queued += 1;
                with_model(&mut b.models, &w.model, Some(&w.model), |m| m.queued += 1);
            } else {
                b.queued = b.queued.saturating_sub(1);
                if let Some(m) = b.models.get_mut(&*w.model) {
                    m.queued = m.queued.saturating_sub(1);
                }
                settle(&mut b.models, &w.model);
            }
        }
    }

    /// Counts `backend`'s waiters afresh (it was not configured until now).
    fn recount(&mut self, backend: &str) {
        let Some(b) = self.backends.get_mut(backend) else {
            return;
        };
        b.queued = 0;
        b.models.values_mut().for_each(|m| m.queued = 0);
        let waiters = self.levels.values().flatten().flat_map(|l| &l.waiters);
        for w in waiters.filter(|w| w.candidates.iter().any(|c| **c == *backend)) {
            b.queued += 1;
            with_model(&mut b.models, &w.model, Some(&w.model), |m| m.queued += 1);
        }
    }

    fn enqueue(
        &mut self,
        ask: &Ask<'_>,
        since: Instant,
    ) -> (u64, oneshot::Receiver<Result<Grant, Refusal>>) {
        let mut candidates: Vec<Arc<str>> = Vec::with_capacity(ask.candidates.len());
        for c in ask.candidates {
            if !candidates.iter().any(|k| **k == **c) {
                let id = self
                    .backends
                    .get(*c)
                    .map_or_else(|| (*c).into(), |b| Arc::clone(&b.id));
                candidates.push(id);
            }
        }
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        let waiter = Waiter {
            id: self.next_id,
            candidates: candidates.into(),
            model: ask.model.into(),
            since,
            tx,
        };
        self.count(&waiter, true);
        self.depth += 1;
        let lanes = self.levels.entry(Reverse(ask.priority)).or_default();
        match lanes.iter_mut().find(|l| *l.key == *ask.key) {
            Some(lane) => lane.waiters.push_back(waiter),
            None => lanes.push_back(Lane {
                key: ask.key.into(),
                waiters: VecDeque::from([waiter]),
            }),
        }
        (self.next_id, rx)
    }

    fn record_wait(&mut self, waited: Duration) {
        self.waits += 1;
        if self.recent.len() < RECENT_WAITS {
            self.recent.push(waited);
        } else {
            self.recent[self.next_recent] = waited;
        }
        self.next_recent = (self.next_recent + 1) % RECENT_WAITS;
    }

    /// The Retry-After estimate of the module doc.
    fn retry_after(&self, candidates: &[&str], priority: i32) -> Duration {
        let ahead = self
            .levels
            .range(..=Reverse(priority))
            .flat_map(|(_, lanes)| lanes)
            .flat_map(|l| &l.waiters)
            .filter(|w| w.candidates.iter().any(|c| candidates.contains(&&**c)))
            .count();
        let mut rate = 0.0;
        for (i, c) in candidates.iter().enumerate() {
            if candidates[..i].contains(c) {
                continue;
            }
            if let Some((b, l)) = self.configured(c) {
                let hold = b.hold.or(self.hold).unwrap_or(DEFAULT_HOLD).max(1e-3);
                rate += f64::from(l.slots.min(l.parallel)) / hold;
            }
        }
        let secs = if rate > 0.0 {
            ((ahead + 1) as f64 / rate).ceil()
        } else {
            60.0
        };
        Duration::from_secs(secs.clamp(1.0, 60.0) as u64)
    }
}

/// A queued [`Admission::acquire`]; dropping it leaves the queue.
struct Waiting<'a> {
    admission: &'a Arc<Admission>,
    priority: i32,
    key: &'a str,
    id: u64,
    rx: oneshot::Receiver<Result<Grant, Refusal>>,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed = {
            let mut st = self.admission.lock();
            let removed = st.remove(self.priority, self.key, self.id).is_some();
            st.cancelled += u64::from(removed);
            removed
        };
        // Not queued any more: it was handed slots under the lock (the lock
        // is free now, so dropping the permit can hand them on).
        if !removed {
            if let Ok(Ok(grant)) = self.rx.try_recv() {
                let at = grant.at;
                drop(self.admission.permit(grant, at));
            }
        }
    }
}

impl Admission {
    /// An admission with no backends, letting at most `max_queue` requests wait.
    pub fn new(max_queue: usize) -> Arc<Admission> {
        Arc::new(Admission {
            state: Mutex::new(State {
                max_queue,
                backends: HashMap::new(),
                levels: BTreeMap::new(),
                depth: 0,
                next_id: 0,
                hold: None,
                recent: Vec::new(),
                next_recent: 0,
                waits: 0,
                cancelled: 0,
                refused: Refusals::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn permit(self: &Arc<Self>, grant: Grant, start: Instant) -> Permit {
        Permit {
            admission: Arc::clone(self),
            backend: grant.backend,
            model: grant.model,
            since: grant.at,
            waited: grant.at.saturating_duration_since(start),
        }
    }

    /// Sets the most requests allowed to wait; those waiting beyond it stay.
    pub fn set_max_queue(&self, max_queue: usize) {
        self.lock().max_queue = max_queue;
    }

    /// Creates or updates a backend's limits (on start and on reload); counts
    /// in use are kept. Raised limits are handed to waiters at once; lowered
    /// ones revoke nothing (in use may exceed them until permits are dropped).
    pub fn configure(&self, backend: &str, limits: Limits) {
        let mut st = self.lock();
        let was = match st.backends.get_mut(backend) {
            Some(b) => b.limits.replace(limits).is_some(),
            None => {
                let id: Arc<str> = backend.into();
                let slots = Slots {
                    id: Arc::clone(&id),
                    limits: Some(limits),
                    in_use: 0,
                    queued: 0,
                    hold: None,
                    models: HashMap::new(),
                };
                st.backends.insert(id, slots);
                false
            }
        };
        if !was {
            st.recount(backend);
        }
        st.dispatch(backend);
    }

    /// Forgets the limits of backends not in `keep` (permits still out
    /// release fine). Waiters left without a configured candidate are
    /// refused with [`Refusal::NoCandidate`].
    pub fn retain(&self, keep: &[&str]) {
        let mut st = self.lock();
        st.backends.retain(|id, b| {
            if keep.contains(&&**id) {
                return true;
            }
            b.limits = None;
            b.in_use > 0
        });
        let mut stranded = Vec::new();
        for (&Reverse(priority), lanes) in &st.levels {
            for lane in lanes {
                for w in &lane.waiters {
                    if !w.candidates.iter().any(|c| st.configured(c).is_some()) {
                        stranded.push((priority, lane.key.clone(), w.id));
                    }
                }
            }
        }
        for (priority, key, id) in stranded {
            if let Some(w) = st.remove(priority, &key, id) {
                st.refused.no_candidate += 1;
                let _ = w.tx.send(Err(Refusal::NoCandidate));
            }
        }
    }

    /// Slots on the first candidate (in the given preference order) that has
    /// both a free backend slot and a free slot for the model; otherwise
    /// waits in the queue until one is handed over, or `max_wait` passes.
    /// Dropping the future (the client hung up) leaves the queue at once and
    /// never leaks a slot, even one handed over in the same instant.
    pub async fn acquire(self: &Arc<Self>, ask: Ask<'_>) -> Result<Permit, Refusal> {
        let start = Instant::now();
        let (id, rx) = {
            let mut st = self.lock();
            for c in ask.candidates {
                if let Some((backend, model)) = st.try_take(c, ask.model) {
                    return Ok(self.permit(
                        Grant {
                            backend,
                            model,
                            at: start,
                        },
                        start,
                    ));
                }
            }
            if !ask.candidates.iter().any(|c| st.configured(c).is_some()) {
                st.refused.no_candidate += 1;
                return Err(Refusal::NoCandidate);
            }
            if ask.max_wait.is_zero() {
                st.refused.timed_out += 1;
                let retry_after = st.retry_after(ask.candidates, ask.priority);
                return Err(Refusal::TimedOut {
                    waited: Duration::ZERO,
                    retry_after,
                });
            }
            if st.depth >= st.max_queue {
                st.refused.queue_full += 1;
                let retry_after = st.retry_after(ask.candidates, ask.priority);
                return Err(Refusal::QueueFull { retry_after });
            }
            st.enqueue(&ask, start)
        };
        let mut waiting = Waiting {
            admission: self,
            priority: ask.priority,
            key: ask.key,
            id,
            rx,
            armed: true,
        };
        // Far enough for "no limit" without overflowing.
        let deadline = start
            .checked_add(ask.max_wait)
            .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400));
        let message = match tokio::time::timeout_at(deadline, &mut waiting.rx).await {
            Ok(message) => message.ok(),
            Err(_) => {
                let mut st = self.lock();
                if st.remove(ask.priority, ask.key, id).is_some() {
                    waiting.armed = false;
                    let waited = start.elapsed();
                    st.record_wait(waited);
                    st.refused.timed_out += 1;
                    let retry_after = st.retry_after(ask.candidates, ask.priority);
                    return Err(Refusal::TimedOut {
                        waited,
                        retry_after,
                    });
                }
                drop(st);
                // Handed slots (or refused) in the same instant: take that.
                waiting.rx.try_recv().ok()
            }
        };
        waiting.armed = false;
        match message {
            Some(Ok(grant)) => Ok(self.permit(grant, start)),
            Some(Err(refusal)) => Err(refusal),
            // The sender went without a word: only if the waiter could not
            // be given the slots it fitted (never expected).
            None => Err(Refusal::NoCandidate),
        }
    }

    /// Load of one configured backend.
    pub fn backend_load(&self, backend: &str) -> Option<BackendLoad> {
        let st = self.lock();
        let (b, l) = st.configured(backend)?;
        Some(BackendLoad {
            slots: l.slots,
            parallel: l.parallel,
            in_use: b.in_use,
            queued: b.queued,
        })
    }

    /// In use and waiting for one model on one backend.
    pub fn model_load(&self, backend: &str, model: &str) -> ModelLoad {
        let st = self.lock();
        let m = st.backends.get(backend).and_then(|b| b.models.get(model));
        m.map_or_else(ModelLoad::default, |m| ModelLoad {
            in_use: m.in_use,
            queued: m.queued,
        })
    }

    /// Queue statistics now.
    pub fn stats(&self) -> QueueStats {
        let st = self.lock();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for lane in st.levels.values().flatten() {
            *by_key.entry(&lane.key).or_default() += lane.waiters.len();
        }
        let mut by_key: Vec<(String, usize)> =
            by_key.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
        by_key.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        by_key.truncate(TOP_KEYS);
        let mut recent = st.recent.clone();
        recent.sort_unstable();
        // Nearest rank: the smallest wait with at least p% of waits at or below it.
        let rank = |p: usize| {
            recent
                .get((recent.len() * p).div_ceil(100).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        QueueStats {
            depth: st.depth,
            max_queue: st.max_queue,
            by_key,
            waits: st.waits,
            wait_p50: rank(50),
            wait_p99: rank(99),
            wait_max: recent.last().copied().unwrap_or_default(),
            cancelled: st.cancelled,
            refused: st.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    type Acquire<'a> = Pin<Box<dyn Future<Output = Result<Permit, Refusal>> + Send + 'a>>;

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    /// An admission with `(id, slots, parallel)` backends.
    fn admission(backends: &[(&str, u32, u32)]) -> Arc<Admission> {
        let a = Admission::new(512);
        for &(id, slots, parallel) in backends {
            a.configure(id, Limits { slots, parallel });
        }
        a
    }

    fn ask<'a>(candidates: &'a [&'a str], model: &'a str, key: &'a str) -> Ask<'a> {
        Ask {
            candidates,
            model,
            key,
            priority: 0,
            max_wait: SECS(60),
        }
    }

    fn start<'a>(a: &'a Arc<Admission>, ask: Ask<'a>) -> Acquire<'a> {
        let mut f: Acquire<'a> = Box::pin(a.acquire(ask));
        assert!(poll(&mut f).is_pending(), "expected to wait");
        f
    }

    fn poll(f: &mut Acquire<'_>) -> Poll<Result<Permit, Refusal>> {
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    fn ready(f: &mut Acquire<'_>) -> Permit {
        match poll(f) {
            Poll::Ready(r) => r.expect("a permit"),
            Poll::Pending => panic!("still waiting"),
        }
    }

    fn now(a: &Arc<Admission>, ask: Ask<'_>) -> Result<Permit, Refusal> {
        let mut f: Acquire<'_> = Box::pin(a.acquire(ask));
        match poll(&mut f) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("waited"),
        }
    }

    fn in_use(a: &Admission, b: &str) -> u32 {
        a.backend_load(b).unwrap().in_use
    }

    #[tokio::test]
    async fn first_free_candidate_in_order_and_unconfigured_skipped() {
        let a = admission(&[("b1", 1, 1), ("b2", 1, 1)]);
        let c = ["nope", "b2", "b1"];
        let p1 = now(&a, ask(&c, "m", "k")).unwrap();
        let p2 = now(&a, ask(&c, "m", "k")).unwrap();
        assert_eq!((p1.backend(), p2.backend()), ("b2", "b1"));
        assert_eq!((p1.model(), p1.waited()), ("m", Duration::ZERO));
        let _w = start(&a, ask(&c, "m", "k"));
        assert_eq!(a.backend_load("nope"), None);
        assert_eq!(a.backend_load("b1").unwrap().queued, 1);
    }

    #[tokio::test]
    async fn no_candidate() {
        let a = admission(&[("b1", 1, 1)]);
        assert_eq!(
            now(&a, ask(&[], "m", "k")).unwrap_err(),
            Refusal::NoCandidate
        );
        assert_eq!(
            now(&a, ask(&["x"], "m", "k")).unwrap_err(),
            Refusal::NoCandidate
        );
        assert_eq!(a.stats().refused.no_candidate, 2);
        assert_eq!(a.stats().depth, 0);
    }

    #[tokio::test]
    async fn model_slots_and_backend_slots() {
        let a = admission(&[("b1", 2, 1)]);
        let _m1 = now(&a, ask(&["b1"], "m1", "k")).unwrap();
        let _w1 = start(&a, ask(&["b1"], "m1", "k")); // model full, backend not
        let _m2 = now(&a, ask(&["b1"], "m2", "k")).unwrap();
        let _w3 = start(&a, ask(&["b1"], "m3", "k")); // backend full
        assert_eq!(
            a.model_load("b1", "m1"),
            ModelLoad {
                in_use: 1,
                queued: 1
            }
        );
        assert_eq!(
            a.model_load("b1", "m3"),
            ModelLoad {
                in_use: 0,
                queued: 1
            }
        );
        let load = BackendLoad {
            slots: 2,
            parallel: 1,
            in_use: 2,
            queued: 2,
        };
        assert_eq!(a.backend_load("b1"), Some(load));
    }

    #[tokio::test]
    async fn priority_then_round_robin_across_keys_then_fifo() {
        let a = admission(&[("b1", 1, 1)]);
        let c = ["b1"];
        let mut held = Some(now(&a, ask(&c, "m", "x")).unwrap());
        let mut waiting: Vec<(&str, Acquire<'_>)> = Vec::new();
        for (name, key, priority) in [
            ("a1", "A", 0),
            ("a2", "A", 0),
            ("a3", "A", 0),
            ("b1", "B", 0),
            ("h", "C", 5),
        ] {
            waiting.push((
                name,
                start(
                    &a,
                    Ask {
                        priority,
                        ..ask(&c, "m", key)
                    },
                ),
            ));
        }
        let mut order = Vec::new();
        while !waiting.is_empty() {
            drop(held.take());
            let mut served =
                waiting
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, (_, f))| match poll(f) {
                        Poll::Ready(r) => Some((i, r.unwrap())),
                        Poll::Pending => None,
                    });
            let (i, permit) = served.next().expect("one was served");
            assert!(served.next().is_none(), "one slot, one waiter served");
            order.push(waiting.remove(i).0);
            held = Some(permit);
        }
        assert_eq!(order, ["h", "a1", "b1", "a2", "a3"]);
    }

    #[tokio::test]
    async fn waiters_that_cannot_use_the_slot_do_not_block_others() {
        let a = admission(&[("b1", 1, 1), ("b2", 1, 1)]);
        let _p1 = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let p2 = now(&a, ask(&["b2"], "m", "k")).unwrap();
        let mut w1 = start(&a, ask(&["b1"], "m", "k"));
        let mut w2 = start(&a, ask(&["b2"], "m", "k"));
        drop(p2);
        assert!(poll(&mut w1).is_pending());
        assert_eq!(ready(&mut w2).backend(), "b2");

        // Same backend: the first waiter's model is full there, the second's is not.
        let a = admission(&[("b", 2, 1)]);
        let _m1 = now(&a, ask(&["b"], "m1", "k")).unwrap();
        let m2 = now(&a, ask(&["b"], "m2", "k")).unwrap();
        let mut w1 = start(&a, ask(&["b"], "m1", "k"));
        let mut w2 = start(&a, ask(&["b"], "m3", "k"));
        drop(m2);
        assert!(poll(&mut w1).is_pending());
        assert_eq!(ready(&mut w2).model(), "m3");
    }

    #[tokio::test]
    async fn freed_slot_goes_to_the_waiter_not_a_newcomer() {
        let a = admission(&[("b1", 1, 1)]);
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let mut w = start(&a, ask(&["b1"], "m", "k"));
        drop(p);
        assert_eq!(in_use(&a, "b1"), 1, "handed over at release");
        let mut newcomer = start(&a, ask(&["b1"], "m", "other"));
        ready(&mut w);
        assert_eq!(ready(&mut newcomer).backend(), "b1");

        // Free capacity the waiters cannot use is taken at once.
        let a = admission(&[("b1", 2, 1)]);
        let _p = now(&a, ask(&["b1"], "m1", "k")).unwrap();
        let _w = start(&a, ask(&["b1"], "m1", "k"));
        assert_eq!(now(&a, ask(&["b1"], "m2", "k")).unwrap().backend(), "b1");
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_after_max_wait() {
        let a = admission(&[("b1", 1, 1)]);
        let _p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let t = Instant::now();
        let err = a
            .acquire(Ask {
                max_wait: SECS(5),
                ..ask(&["b1"], "m", "k")
            })
            .await
            .unwrap_err();
        assert_eq!(t.elapsed(), SECS(5));
        assert!(
            matches!(err, Refusal::TimedOut { waited, .. } if waited == SECS(5)),
            "{err:?}"
        );
        let s = a.stats();
        assert_eq!(
            (s.depth, s.refused.timed_out, s.waits, s.wait_max),
            (0, 1, 1, SECS(5))
        );
        assert_eq!(a.backend_load("b1").unwrap().queued, 0);
        // A zero wait never queues.
        let err = now(
            &a,
            Ask {
                max_wait: Duration::ZERO,
                ..ask(&["b1"], "m", "k")
            },
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Refusal::TimedOut {
                waited: Duration::ZERO,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn granted_wait_is_measured() {
        let a = admission(&[("b1", 1, 1)]);
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let w = tokio::spawn({
            let a = a.clone();
            async move { a.acquire(ask(&["b1"], "m", "k")).await.map(|p| p.waited()) }
        });
        tokio::time::sleep(SECS(3)).await;
        drop(p);
        assert_eq!(w.await.unwrap().unwrap(), SECS(3));
        assert_eq!(a.stats().wait_p50, SECS(3));
    }

    #[tokio::test]
    async fn queue_full_refuses_at_once() {
        let a = admission(&[("b1", 1, 1)]);
        a.set_max_queue(1);
        let _p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let _w1 = start(&a, ask(&["b1"], "m", "k"));
        let err = now(&a, ask(&["b1"], "m", "k")).unwrap_err();
        assert!(matches!(err, Refusal::QueueFull { .. }), "{err:?}");
        assert_eq!(a.stats().refused.queue_full, 1);
        a.set_max_queue(2);
        let _w2 = start(&a, ask(&["b1"], "m", "k"));
        assert_eq!(a.stats().depth, 2);
    }

    #[tokio::test]
    async fn dropped_waiter_leaves_the_queue() {
        let a = admission(&[("b1", 1, 1)]);
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        drop(start(&a, ask(&["b1"], "m", "k")));
        assert_eq!((a.stats().depth, a.stats().cancelled), (0, 1));
        assert_eq!(
            a.model_load("b1", "m"),
            ModelLoad {
                in_use: 1,
                queued: 0
            }
        );
        drop(p);
        assert_eq!(in_use(&a, "b1"), 0);
        now(&a, ask(&["b1"], "m", "k")).unwrap();
    }

    #[tokio::test]
    async fn slot_handed_to_a_dropped_waiter_goes_on() {
        let a = admission(&[("b1", 1, 1)]);
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let w1 = start(&a, ask(&["b1"], "m", "k"));
        let mut w2 = start(&a, ask(&["b1"], "m", "k"));
        drop(p); // handed to w1
        drop(w1); // before w1 saw it
        assert_eq!(in_use(&a, "b1"), 1);
        drop(ready(&mut w2));
        assert_eq!(in_use(&a, "b1"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_aborts_never_leak() {
        let a = admission(&[("b1", 3, 2), ("b2", 2, 1)]);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const CANDIDATES: [&[&str]; 3] = [&["b1"], &["b2"], &["b2", "b1"]];
        let mut tasks = Vec::new();
        for i in 0..400 {
            let (a, c, m, hold) = (a.clone(), rand(3) as usize, rand(3), rand(200));
            // Every fifth gives up within 2 ms, racing the hand-overs.
            let max_wait = match i % 5 {
                0 => Duration::from_micros(rand(2000)),
                _ => SECS(30),
            };
            let key = ["k0", "k1", "k2", "k3"][i % 4];
            tasks.push(tokio::spawn(async move {
                let model = ["m0", "m1", "m2"][m as usize];
                let ask = Ask {
                    priority: (i % 3) as i32,
                    max_wait,
                    ..ask(CANDIDATES[c], model, key)
                };
                if let Ok(_p) = a.acquire(ask).await {
                    for _ in 0..hold {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for _ in 0..100_000 {
            if a.stats().depth >= 100 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Abort half of them at random moments: waiting, holding, or just handed a slot.
        for _ in 0..200 {
            for _ in 0..rand(20) {
                tokio::task::yield_now().await;
            }
            tasks[rand(400) as usize].abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        assert_eq!(a.stats().depth, 0);
        for b in ["b1", "b2"] {
            assert_eq!(
                (in_use(&a, b), a.backend_load(b).unwrap().queued),
                (0, 0),
                "{b}"
            );
        }
        let s = a.stats();
        assert!(s.cancelled > 0 && s.refused.timed_out > 0, "{s:?}");
        let all = [
            ("b1", "m0"),
            ("b1", "m0"),
            ("b1", "m1"),
            ("b2", "m0"),
            ("b2", "m1"),
        ];
        let _held: Vec<Permit> = all
            .iter()
            .map(|(b, m)| now(&a, ask(&[b], m, "k")).unwrap())
            .collect();
    }

    #[tokio::test]
    async fn raising_limits_wakes_waiters_lowering_revokes_nothing() {
        let a = admission(&[("b1", 1, 1)]);
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let mut w1 = start(&a, ask(&["b1"], "m", "k"));
        let mut w2 = start(&a, ask(&["b1"], "m", "k"));
        a.configure(
            "b1",
            Limits {
                slots: 3,
                parallel: 3,
            },
        );
        let (p1, p2) = (ready(&mut w1), ready(&mut w2));
        a.configure(
            "b1",
            Limits {
                slots: 1,
                parallel: 1,
            },
        );
        assert_eq!(in_use(&a, "b1"), 3);
        let mut w3 = start(&a, ask(&["b1"], "m", "k"));
        drop((p, p1));
        assert!(poll(&mut w3).is_pending(), "still 1 in use of 1");
        drop(p2);
        ready(&mut w3);
    }

    #[tokio::test]
    async fn retain_forgets_backends_and_keeps_counts() {
        let a = admission(&[("b1", 1, 1), ("b2", 1, 1)]);
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let mut only_b1 = start(&a, ask(&["b1"], "m", "k"));
        let _b2 = now(&a, ask(&["b2"], "m", "k")).unwrap();
        let mut both = start(&a, ask(&["b1", "b2", "b2"], "m", "k"));
        a.retain(&["b2"]);
        assert_eq!(a.backend_load("b1"), None);
        assert!(matches!(
            poll(&mut only_b1),
            Poll::Ready(Err(Refusal::NoCandidate))
        ));
        assert!(poll(&mut both).is_pending(), "b2 is still a candidate");
        assert_eq!(
            (a.stats().depth, a.backend_load("b2").unwrap().queued),
            (1, 1)
        );
        a.configure(
            "b1",
            Limits {
                slots: 1,
                parallel: 1,
            },
        );
        assert_eq!(in_use(&a, "b1"), 1, "the permit still out is counted");
        a.retain(&[]);
        drop(p);
        a.configure(
            "b1",
            Limits {
                slots: 1,
                parallel: 1,
            },
        );
        assert_eq!(in_use(&a, "b1"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_from_hold_times_and_queue() {
        let a = admission(&[("b1", 1, 1)]);
        let zero = |priority| Ask {
            priority,
            max_wait: Duration::ZERO,
            ..ask(&["b1"], "m", "k")
        };
        let retry = |r: Result<Permit, Refusal>| r.unwrap_err().retry_after().unwrap();
        let p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        assert_eq!(
            retry(now(&a, zero(0))),
            SECS(1),
            "no hold time known: 1 s each"
        );
        tokio::time::sleep(SECS(10)).await;
        drop(p);
        let _p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let _w1 = start(&a, ask(&["b1"], "m", "k"));
        let _w2 = start(&a, ask(&["b1"], "m", "k"));
        assert_eq!(
            retry(now(&a, zero(0))),
            SECS(30),
            "(2 ahead + 1) x 10 s / 1 slot"
        );
        assert_eq!(
            retry(now(&a, zero(1))),
            SECS(10),
            "none ahead at a higher priority"
        );
        a.set_max_queue(2);
        assert_eq!(retry(now(&a, ask(&["b1"], "m", "k"))), SECS(30));
        a.set_max_queue(100);
        let _more: Vec<_> = (0..4).map(|_| start(&a, ask(&["b1"], "m", "k"))).collect();
        assert_eq!(retry(now(&a, zero(0))), SECS(60), "(6 + 1) x 10 s, clamped");
        // Instant releases: an EWMA of 0 s still gives at least 1 s.
        let a = admission(&[("b1", 3, 3)]);
        drop(now(&a, ask(&["b1"], "m", "k")).unwrap());
        let _held: Vec<_> = (0..3)
            .map(|_| now(&a, ask(&["b1"], "m", "k")).unwrap())
            .collect();
        let err = now(
            &a,
            Ask {
                max_wait: Duration::ZERO,
                ..ask(&["b1"], "m", "k")
            },
        )
        .unwrap_err();
        assert_eq!(err.retry_after(), Some(SECS(1)));
    }

    #[tokio::test]
    async fn stats_by_key() {
        let a = admission(&[("b1", 1, 1)]);
        let _p = now(&a, ask(&["b1"], "m", "k")).unwrap();
        let _w: Vec<_> = ["a", "b", "b", "c", "b", "a"]
            .iter()
            .map(|k| start(&a, ask(&["b1"], "m", k)))
            .collect();
        let s = a.stats();
        assert_eq!(s.depth, 6);
        assert_eq!(
            s.by_key,
            [
                ("b".to_owned(), 3),
                ("a".to_owned(), 2),
                ("c".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn acquire_is_send() {
        fn send<T: Send>(_: &T) {}
        let a = Admission::new(1);
        send(&a.acquire(ask(&[], "m", "k")));
    }
}
