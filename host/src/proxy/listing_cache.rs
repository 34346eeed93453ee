//! Merged listings (`/api/tags`, `/api/ps`, `/v1/models`, `/api/version`),
//! kept for a moment (`listing_cache`, default 1 s) so a burst of listings
//! does not ask every backend once per request.
//!
//! - What is kept is the fan-out's merged answer, before the chain's
//!   `list-models`: that depends on who asks and runs for every request.
//! - Single flight: requests that miss while the same listing is being
//!   fetched wait for that fetch and share its answer (an error too), so a
//!   burst costs each backend one request, however large the burst.
//! - [`ListingCache::invalidate`] empties it at once; llamagate calls it when a
//!   pull, create, copy or delete it forwarded succeeds, and a fetch that was
//!   under way at that moment is not kept.
//! - Each generation has its own cache, so a reload starts empty.
//! - `listing_cache = "0"` turns it off: every listing asks every backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::error::Unanswered;

/// The listings that are cached, one slot each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `/api/tags`
    Tags,
    /// `/api/ps`
    Ps,
    /// `/v1/models`
    OpenaiModels,
    /// `/api/version`
    Version,
}

impl Listing {
    fn slot(self) -> usize {
        self as usize
    }
}

/// A fetched listing, or the error that fetching it gave (shared with the
/// requests that waited for it, never kept for later ones).
struct Fetched<T> {
    /// When the fetch started (a listing's age counts from then).
    started: Instant,
    /// When it ended: requests that arrived before then waited for it.
    ended: Instant,
    /// The invalidation count when it started.
    epoch: u64,
    result: Result<Arc<T>, Unanswered>,
}

/// One listing's slot: the last fetch, and the lock a fetch holds.
struct Slot<T> {
    last: Mutex<Option<Fetched<T>>>,
    fetching: tokio::sync::Mutex<()>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            last: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}

/// Short-lived merged listings of one generation, `T` being the merged form.
pub struct ListingCache<T> {
    ttl: Duration,
    epoch: AtomicU64,
    slots: [Slot<T>; 4],
}

impl<T> ListingCache<T> {
    /// A cache keeping each listing for `ttl`; zero turns caching (and single
    /// flight) off.
    pub fn new(ttl: Duration) -> Self {
        ListingCache {
            ttl,
            epoch: AtomicU64::new(0),
            slots: Default::default(),
        }
    }

    /// How long a listing is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets every listing, and any fetch under way: the next listing asks
    /// the backends again.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        for slot in &self.slots {
            *slot.last.lock().unwrap() = None;
        }
    }

    /// The listing, from the cache while it is fresh, else from `fetch`
    /// (at most one fetch per listing at a time; those who wait share it).
    pub async fn get<F, Fut>(&self, listing: Listing, fetch: F) -> Result<Arc<T>, Unanswered>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, Unanswered>>,
    {
        if self.ttl.is_zero() {
            return fetch().await.map(Arc::new);
        }
        let slot = &self.slots[listing.slot()];
        let arrived = Instant::now();
        if let Some(hit) = self.fresh(slot, arrived) {
            return hit;
        }
        let _fetching = slot.fetching.lock().await;
        // Whoever held the lock may have fetched what this request needs.
        if let Some(hit) = self.fresh(slot, arrived) {
            return hit;
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        let started = Instant::now();
        let result = fetch().await.map(Arc::new);
        let kept = match &result {
            Ok(value) => Ok(value.clone()),
            Err(err) => Err(err.clone()),
        };
        let mut last = slot.last.lock().unwrap();
        if self.epoch.load(Ordering::Relaxed) == epoch {
            *last = Some(Fetched {
                started,
                ended: Instant::now(),
                epoch,
                result: kept,
            });
        }
        result
    }

    /// The kept answer if it serves a request that arrived at `arrived`: a
    /// listing fetched less than `ttl` ago, or any outcome of a fetch that
    /// ended after the request arrived (the request waited for it).
    fn fresh(&self, slot: &Slot<T>, arrived: Instant) -> Option<Result<Arc<T>, Unanswered>> {
        let last = slot.last.lock().unwrap();
        let fetched = last.as_ref()?;
        if fetched.epoch != self.epoch.load(Ordering::Relaxed) {
            return None;
        }
        let waited_for_it = fetched.ended >= arrived;
        match &fetched.result {
            Ok(value) if waited_for_it || fetched.started.elapsed() < self.ttl => {
                Some(Ok(value.clone()))
            }
            Err(unanswered) if waited_for_it => Some(Err(unanswered.clone())),
            _ => None,
        }
    }
}

/// A listing as merged from the backends' answers, before the chain's
/// `list-models` (what [`ListingCache`] keeps).
pub enum MergedListing {
    /// `/api/version`: the lowest version.
    Version(String),
    /// `/api/tags`, `/api/ps`, `/v1/models`: the models, without duplicates.
    Models(Vec<Merged>),
}

/// The listings cache of a generation.
pub type Listings = ListingCache<MergedListing>;

/// One model of a merged listing.
pub struct Merged {
    /// The model's name as the first backend listing it spelled it.
    pub name: String,
    /// That backend's entry for it.
    pub item: serde_json::Value,
    /// Every backend that listed it, in answer order.
    pub backends: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    async fn counted(calls: &AtomicUsize, delay: Duration) -> Result<usize, Unanswered> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(delay).await;
        Ok(n)
    }

    #[tokio::test]
    async fn a_burst_shares_one_fetch() {
        let cache = ListingCache::new(Duration::from_secs(5));
        let calls = AtomicUsize::new(0);
        let burst = (0..20)
            .map(|_| cache.get(Listing::Tags, || counted(&calls, Duration::from_millis(50))));
        let answers = futures_util::future::join_all(burst).await;
        assert!(answers.iter().all(|a| *a.as_ref().unwrap().as_ref() == 1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another listing has its own slot.
        let ps = cache.get(Listing::Ps, || counted(&calls, Duration::ZERO));
        assert_eq!(*ps.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn invalidation_and_expiry_fetch_again() {
        let cache = ListingCache::new(Duration::from_millis(200));
        let calls = AtomicUsize::new(0);
        let get = || cache.get(Listing::Tags, || counted(&calls, Duration::ZERO));
        assert_eq!(*get().await.unwrap(), 1);
        assert_eq!(*get().await.unwrap(), 1, "fresh");
        cache.invalidate();
        assert_eq!(*get().await.unwrap(), 2, "invalidated");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(*get().await.unwrap(), 3, "expired");
    }

    #[tokio::test]
    async fn a_fetch_under_way_when_invalidated_is_not_kept() {
        let cache = Arc::new(ListingCache::new(Duration::from_secs(5)));
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                let fetch = || counted(&calls, Duration::from_millis(100));
                *cache.get(Listing::Tags, fetch).await.unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        cache.invalidate();
        assert_eq!(slow.await.unwrap(), 1);
        let again = cache.get(Listing::Tags, || counted(&calls, Duration::ZERO));
        assert_eq!(*again.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn errors_are_shared_with_waiters_only_and_zero_is_off() {
        let cache: ListingCache<usize> = ListingCache::new(Duration::from_secs(5));
        let calls = AtomicUsize::new(0);
        let failing = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<usize, _>(Unanswered {
                what: "/api/tags".into(),
                attempts: Default::default(),
            })
        };
        let burst = (0..5).map(|_| cache.get(Listing::Version, failing));
        for answer in futures_util::future::join_all(burst).await {
            assert_eq!(
                answer.unwrap_err().to_string(),
                "no backend answered /api/tags"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.get(Listing::Version, failing).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "an error is not kept");

        let off = ListingCache::new(Duration::ZERO);
        let calls = AtomicUsize::new(0);
        for want in 1..=3 {
            let got = off.get(Listing::Tags, || counted(&calls, Duration::ZERO));
            assert_eq!(*got.await.unwrap(), want);
        }
    }
}
