//! The state every request reads: the generation in force (swapped whole on
//! reload, read without a lock), the pooled client, request ids, shadow
//! counts and the last reload's report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::proxy::generation::Generation;
use crate::proxy::record::Recorder;
use crate::proxy::shadow::Shadow;
use crate::upstream::Upstream;

/// The outcome of the last reload, for the status endpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadReport {
    /// Unix time, seconds.
    pub at: u64,
    /// Whether the new generation is live.
    pub ok: bool,
    /// What happened (the error, with the plugin's own message, when it failed).
    pub message: String,
    /// Milliseconds from start to swap (or failure).
    pub took_ms: u64,
}

/// Everything a request needs besides itself.
pub struct Gateway {
    /// Read without a lock on every request; swapped whole on reload.
    current: ArcSwap<Generation>,
    /// The pooled client.
    pub upstream: Upstream,
    next_id: AtomicU64,
    /// The shadow chain's queue and counts.
    pub shadow: Shadow,
    /// The last reload's outcome.
    pub last_reload: Mutex<Option<ReloadReport>>,
    /// Where requests are recorded (`--record`), if anywhere.
    pub recorder: Option<Recorder>,
    /// The metrics (kept across reloads).
    pub metrics: Arc<Metrics>,
    /// The last failed requests and counts per model, for the status page
    /// (kept across reloads; fed with the metrics).
    pub recent: Arc<crate::proxy::recent::Recent>,
}

impl Gateway {
    /// A gateway deciding with `generation`, recording requests if `recorder` is set.
    pub fn new(generation: Generation, upstream: Upstream, recorder: Option<Recorder>) -> Self {
        Gateway {
            current: ArcSwap::from_pointee(generation),
            upstream,
            next_id: AtomicU64::new(1),
            shadow: Shadow::default(),
            last_reload: Mutex::new(None),
            recorder,
            metrics: Arc::default(),
            recent: Arc::default(),
        }
    }

    /// The generation in force. Requests hold their own `Arc`, so a swap never
    /// disturbs one in flight.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Makes `generation` the one new requests use; shadow counts start over.
    pub fn swap(&self, generation: Generation) {
        self.shadow.reset();
        self.current.store(Arc::new(generation));
    }

    /// A new request id.
    pub fn next_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }
}
