//! The backends: their addresses, what llamagate last saw of them (health,
//! models served and loaded) and the requests in flight to each.
//!
//! A background prober asks every backend for `/api/tags` and `/api/ps` on an
//! interval. State is per process: llamagate replicas each probe on their own,
//! so the proxy stays stateless.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::plugin::{Backend, LoadedModel};
use crate::upstream::Upstream;

/// One backend Ollama server.
pub struct BackendState {
    /// Operator's id.
    pub id: String,
    /// Base URL, without a trailing slash.
    pub url: String,
    /// Parsed base URL.
    pub uri: Uri,
    healthy: AtomicBool,
    in_flight: AtomicU32,
    seen: RwLock<Seen>,
}

#[derive(Default, Clone)]
struct Seen {
    models: Vec<String>,
    loaded: Vec<LoadedModel>,
}

impl BackendState {
    /// Whether the last probe succeeded (true until the first probe says otherwise).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records the outcome of a request or probe.
    pub fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                tracing::info!(backend = %self.id, "backend is reachable again");
            } else {
                tracing::warn!(backend = %self.id, url = %self.url, "backend is unreachable");
            }
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The view plugins get.
    pub fn view(&self) -> Backend {
        let seen = self.seen.read().unwrap().clone();
        Backend {
            id: self.id.clone(),
            url: self.url.clone(),
            healthy: self.healthy(),
            models: seen.models,
            loaded: seen.loaded,
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// A request in flight to a backend; dropping it ends the count.
pub struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All backends, in configuration order.
pub struct Fleet {
    backends: Vec<Arc<BackendState>>,
}

impl Fleet {
    /// Builds the fleet from `(id, url)` pairs, keeping the state (health,
    /// models, requests in flight) of backends `previous` had with the same id and URL.
    pub fn new(backends: &[(String, String)], previous: Option<&Fleet>) -> anyhow::Result<Fleet> {
        let backends = backends
            .iter()
            .map(|(id, url)| {
                let url = url.trim_end_matches('/').to_string();
                if let Some(kept) = previous.and_then(|p| p.get(id)).filter(|b| b.url == url) {
                    return Ok(kept.clone());
                }
                let uri: Uri = url
                    .parse()
                    .map_err(|e| anyhow::anyhow!("backend {id:?}: bad URL {url:?}: {e}"))?;
                Ok(Arc::new(BackendState {
                    id: id.clone(),
                    url,
                    uri,
                    healthy: AtomicBool::new(true),
                    in_flight: AtomicU32::new(0),
                    seen: RwLock::default(),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Fleet { backends })
    }

    /// All backends.
    pub fn all(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// The backend with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<BackendState>> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// Snapshot for plugins.
    pub fn views(&self) -> Vec<Backend> {
        self.backends.iter().map(|b| b.view()).collect()
    }

    /// Probes every backend now, concurrently.
    pub async fn probe_all(&self, upstream: &Upstream, timeout: Duration) {
        let probes = self.backends.iter().map(|b| probe(b, upstream, timeout));
        futures_util::future::join_all(probes).await;
    }
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    models: Option<Vec<TagEntry>>,
}

#[derive(Deserialize)]
struct TagEntry {
    name: String,
    #[serde(default)]
    context_length: Option<u32>,
    #[serde(default)]
    size_vram: u64,
}

async fn probe(backend: &Arc<BackendState>, upstream: &Upstream, timeout: Duration) {
    let tags = upstream
        .get_json::<Tags>(backend, "/api/tags", timeout)
        .await;
    let ps = upstream.get_json::<Tags>(backend, "/api/ps", timeout).await;
    match (tags, ps) {
        (Ok(tags), ps) => {
            let models = tags
                .models
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.name)
                .collect();
            let loaded = ps
                .ok()
                .and_then(|p| p.models)
                .unwrap_or_default()
                .into_iter()
                .map(|m| LoadedModel {
                    name: m.name,
                    context_length: m.context_length,
                    size_vram: m.size_vram,
                })
                .collect();
            *backend.seen.write().unwrap() = Seen { models, loaded };
            backend.set_healthy(true);
        }
        (Err(e), _) => {
            tracing::debug!(backend = %backend.id, "probe failed: {e}");
            backend.set_healthy(false);
        }
    }
}
