//! Keeping `[[hot]]` models loaded: preloaded at start, kept warm, and
//! loaded again where a backend lost them.
//!
//! After every probe round the prober compares, for each hot model, where
//! the backends' `/api/ps` says it is loaded with where it should be:
//! - fewer than `replicas` backends have it loaded: it is loaded on more, on
//!   backends that are up and serve it, those with the fewest models loaded
//!   first (then configuration order). A backend that restarted has lost it
//!   from its `/api/ps`, so it is loaded again on the next round.
//! - a backend has it loaded with less than half its `keep_alive` left: the
//!   keep-alive is renewed there.
//!
//! A load is what Ollama documents for it: `POST /api/generate` with the
//! model, no prompt and the `keep_alive` (an embedding-only model, which
//! refuses generate, gets `POST /api/embed` with an empty input). At most one
//! load per backend and model is under way at a time, and the backend is
//! probed again when it ends so the next round sees the truth. Loads bypass
//! the plugin chain and the slots: they are the operator's configuration,
//! not a client's request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;

use crate::config::fleet::HotModel;
use crate::fleet::{BackendState, Fleet};
use crate::upstream::{cause, Upstream};

/// How long one load may take (a cold 70B model takes minutes).
const LOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Loads under way, by `(backend id, model key)`.
#[derive(Default)]
pub struct Warmer {
    loading: Mutex<HashSet<(String, String)>>,
}

/// What a round decided for one hot model: where to load it.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Backends to load it on (too few have it).
    pub load: Vec<String>,
    /// Backends where its keep-alive runs out soon.
    pub renew: Vec<String>,
}

/// Decides where `hot` must be loaded or renewed, from what the backends
/// said at `now` (Unix seconds).
pub fn plan(hot: &HotModel, backends: &[Arc<BackendState>], now: i64) -> Plan {
    let key = llamagate_sdk::names::key(&hot.model);
    let mut resident = Vec::new();
    let mut others = Vec::new();
    for backend in backends {
        if !backend.healthy() || !backend.serves(&hot.model) {
            continue;
        }
        let loaded = backend.resident();
        match loaded.iter().find(|r| r.key == key) {
            Some(r) => resident.push((backend.id.clone(), r.expires_at)),
            None => others.push((loaded.len(), backend.id.clone())),
        }
    }
    // Stable: equal counts keep configuration order.
    others.sort_by_key(|(count, _)| *count);
    let missing = (hot.replicas as usize).saturating_sub(resident.len());
    let renew = resident
        .iter()
        .filter(|(_, expires)| {
            hot.keep_alive > 0 && expires.is_some_and(|at| at - now < hot.keep_alive / 2)
        })
        .map(|(id, _)| id.clone())
        .collect();
    Plan {
        load: others.into_iter().take(missing).map(|(_, id)| id).collect(),
        renew,
    }
}

impl Warmer {
    /// One round: starts the loads every hot model needs now, in the
    /// background; returns at once.
    pub fn reconcile(
        self: &Arc<Self>,
        fleet: &Fleet,
        hot: &[HotModel],
        upstream: &Upstream,
        probe_timeout: Duration,
    ) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for model in hot {
            let plan = plan(model, fleet.all(), now);
            for id in plan.load.iter().chain(&plan.renew) {
                let Some(backend) = fleet.get(id) else {
                    continue;
                };
                let task = (id.clone(), llamagate_sdk::names::key(&model.model));
                if !self.loading.lock().unwrap().insert(task.clone()) {
                    continue;
                }
                let warmer = self.clone();
                let backend = backend.clone();
                let upstream = upstream.clone();
                let model = model.clone();
                let why = if plan.load.contains(id) {
                    "load"
                } else {
                    "renew"
                };
                tokio::spawn(async move {
                    load(&backend, &upstream, &model, why).await;
                    backend.probe(&upstream, probe_timeout).await;
                    warmer.loading.lock().unwrap().remove(&task);
                });
            }
        }
    }
}

/// Loads `hot` on `backend` (or renews its keep-alive), and logs the outcome.
async fn load(backend: &BackendState, upstream: &Upstream, hot: &HotModel, why: &str) {
    let body = serde_json::json!({"model": hot.model, "keep_alive": hot.keep_alive}).to_string();
    let mut status = post(backend, upstream, "/api/generate", &body).await;
    if matches!(&status, Ok((s, _)) if *s == StatusCode::BAD_REQUEST) {
        // An embedding model does not generate.
        let body =
            serde_json::json!({"model": hot.model, "input": "", "keep_alive": hot.keep_alive})
                .to_string();
        status = post(backend, upstream, "/api/embed", &body).await;
    }
    match status {
        Ok((s, _)) if s.is_success() => {
            tracing::info!(backend = %backend.id, model = %hot.model, keep_alive = hot.keep_alive, "hot model: {why} done")
        }
        Ok((s, text)) => {
            tracing::warn!(backend = %backend.id, model = %hot.model, "hot model: {why} refused: {s} {text}")
        }
        Err(e) => {
            tracing::warn!(backend = %backend.id, model = %hot.model, "hot model: {why} failed: {e}")
        }
    }
}

async fn post(
    backend: &BackendState,
    upstream: &Upstream,
    path: &str,
    body: &str,
) -> Result<(StatusCode, String), String> {
    let body = http_body_util::Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(super::PROBE_USER_AGENT),
    );
    let exchange = async {
        let response = upstream
            .send(backend, &Method::POST, path, &headers, body)
            .await
            .map_err(|e| cause(&e).to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| cause(&e).to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        Ok((status, text))
    };
    tokio::time::timeout(LOAD_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {LOAD_TIMEOUT:?}")))
}
