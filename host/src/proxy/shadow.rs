//! The shadow chain: a second plugin chain whose decisions are only compared
//! with the live chain's and counted, off the request path.
//!
//! At most [`SHADOW_QUEUE`] shadow decisions are pending at once; past that a
//! request goes unshadowed and is counted as dropped, so a slow shadow chain
//! costs neither memory nor threads. Counts belong to the generation in force.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::log_limit::LogLimiter;
use crate::plugin::{Facts, Request};
use crate::policy::{Chain, Verdict};

/// Shadow decisions pending at once; past this, requests go unshadowed (and
/// are counted).
pub const SHADOW_QUEUE: usize = 64;

/// Counts of shadow decisions.
#[derive(Default)]
pub struct ShadowStats {
    /// Requests the shadow chain decided.
    pub decided: AtomicU64,
    /// ... of which it decided as the live chain did.
    pub agreed: AtomicU64,
    /// ... of which it decided otherwise.
    pub differed: AtomicU64,
    /// Requests on which the shadow chain failed.
    pub failed: AtomicU64,
    /// Requests not shadowed because [`SHADOW_QUEUE`] decisions were already pending.
    pub dropped: AtomicU64,
}

/// The shadow queue and the counts of the generation in force.
pub struct Shadow {
    stats: ArcSwap<ShadowStats>,
    queue: Arc<Semaphore>,
}

impl Default for Shadow {
    fn default() -> Self {
        Shadow {
            stats: ArcSwap::default(),
            queue: Arc::new(Semaphore::new(SHADOW_QUEUE)),
        }
    }
}

/// What a shadow decision is made on: the request as the live chain got it.
pub struct ShadowInput {
    /// The shadow chain.
    pub chain: Arc<Chain>,
    /// The policy view.
    pub view: Request,
    /// Options' original JSON text.
    pub raw_options: BTreeMap<String, String>,
    /// The fleet the live chain asked about.
    pub fleet: Arc<dyn Facts>,
    /// The request body.
    pub body: Bytes,
}

impl Shadow {
    /// The counts of the generation in force (decisions under way count into
    /// the counts they started with).
    pub fn stats(&self) -> Arc<ShadowStats> {
        self.stats.load_full()
    }

    /// Starts the counts over (on reload).
    pub fn reset(&self) {
        self.stats.store(Arc::default());
    }

    /// Decides `input` with the shadow chain in the background and counts
    /// whether it agrees with `live`; dropped (and counted) when the queue is full.
    pub fn compare(&self, input: ShadowInput, live: Verdict) {
        static FAILED: LogLimiter = LogLimiter::new(Duration::from_secs(10));
        let stats = self.stats();
        let Ok(pending) = self.queue.clone().try_acquire_owned() else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        tokio::spawn(async move {
            let _pending = pending;
            let id = input.view.id.clone();
            match input
                .chain
                .decide(
                    input.view,
                    input.raw_options,
                    input.fleet,
                    input.body,
                    false,
                    None,
                )
                .await
            {
                Ok(outcome) => {
                    let theirs = outcome.verdict();
                    if theirs == live {
                        stats.agreed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.differed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(request = %id, live = %live, shadow = %theirs, "shadow policy decided otherwise");
                    }
                    // Counted last, with release: whoever sees a decision
                    // counted sees whether it agreed.
                    stats.decided.fetch_add(1, Ordering::Release);
                }
                Err(err) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    if FAILED.check("shadow").is_some() {
                        tracing::info!(request = %id, "shadow policy failed: {err}");
                    }
                }
            }
        });
    }
}
