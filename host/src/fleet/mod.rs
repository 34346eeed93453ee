//! The backends: their addresses, what llamagate last saw of them (health,
//! models served and loaded) and the requests in flight to each.
//!
//! A background prober asks every backend for `/api/tags` and `/api/ps` on an
//! interval. State is per process: llamagate replicas each probe on their own,
//! so the proxy stays stateless.
//!
//! A backend URL may carry credentials (`http://admin:pw@gpu-01:11434`, for an
//! nginx with basic auth in front of Ollama). They are split off when the
//! fleet is built: what is shown anywhere ([`BackendState::url`]) has no
//! userinfo, and the credentials go to that backend only, as its
//! `Authorization: Basic` header ([`BackendState::authorization`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{HeaderValue, Uri};
use llamagate_sdk::names;
use serde::Deserialize;

use crate::plugin::{Backend, Health, LoadedModel, ModelFacts};
use crate::upstream::{Destination, Failure, Upstream};

/// One backend Ollama server.
pub struct BackendState {
    /// Operator's id.
    pub id: String,
    /// Base URL, without a trailing slash and without userinfo: the form shown
    /// in logs, status, errors and to plugins.
    pub url: String,
    /// Parsed base URL to connect to (no userinfo either).
    pub uri: Uri,
    /// The URL as configured, credentials included; compared on reload only.
    configured: String,
    /// `Basic ...` from the URL's userinfo, if it has one.
    authorization: Option<HeaderValue>,
    healthy: AtomicBool,
    /// Why it is not healthy (the last failure, in words).
    reason: Mutex<Option<String>>,
    in_flight: AtomicU32,
    seen: RwLock<Seen>,
    /// Bumped (under `seen`'s write lock) by every [`BackendState::learn`], so
    /// a probe that was already under way when a pull or delete succeeded
    /// cannot put back the list from before it.
    learned: AtomicU64,
}

/// A change to a backend's models that llamagate saw succeed (a pull, create,
/// copy or delete it forwarded), applied before the next probe confirms it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelChange {
    /// The model now exists on the backend (pull, create, copy's destination).
    Added(String),
    /// The model is gone from the backend (delete).
    Removed(String),
}

#[derive(Default, Clone)]
struct Seen {
    models: Vec<String>,
    /// [`names::key`] of every model, to answer "does it serve X" without
    /// normalising every name on every request.
    keys: HashSet<String>,
    loaded: Vec<LoadedModel>,
}

impl Seen {
    fn new(models: Vec<String>, loaded: Vec<LoadedModel>) -> Seen {
        let keys = models.iter().map(|m| names::key(m)).collect();
        Seen {
            models,
            keys,
            loaded,
        }
    }
}

impl BackendState {
    /// Whether the last probe succeeded (true until the first probe says otherwise).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records that a request or probe reached it.
    pub fn set_healthy(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(backend = %self.id, "backend is reachable again");
        }
        *self.reason.lock().unwrap() = None;
    }

    /// Records that a request or probe failed there, and why (`failure`).
    pub fn set_unhealthy(&self, failure: &Failure) {
        *self.reason.lock().unwrap() = Some(failure.to_string());
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(backend = %self.id, url = %self.url, "backend {failure}");
        }
    }

    /// Why it is not healthy, if it is not.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap().clone()
    }

    /// The `Authorization` value every request to this backend carries, made
    /// from the userinfo of its URL (replacing the client's own, which was
    /// meant for llamagate and its plugins, not for the backend).
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Applies a change llamagate saw succeed to what it knows of the
    /// backend's models, at once: a pulled model is routable, a deleted one
    /// is not, without waiting for the next probe.
    pub fn learn(&self, change: &ModelChange) {
        let mut seen = self.seen.write().unwrap();
        match change {
            ModelChange::Added(model) => {
                if seen.keys.insert(names::key(model)) {
                    seen.models.insert(0, names::display(model));
                }
            }
            ModelChange::Removed(model) => {
                let key = names::key(model);
                seen.keys.remove(&key);
                seen.models.retain(|m| names::key(m) != key);
                seen.loaded.retain(|l| names::key(&l.name) != key);
            }
        }
        self.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks this backend for its models (`/api/tags`) and loaded models
    /// (`/api/ps`) now, and records its health.
    pub async fn probe(self: &Arc<Self>, upstream: &Upstream, timeout: Duration) {
        probe(self, upstream, timeout).await
    }

    /// The view plugins get.
    pub fn view(&self) -> Backend {
        let seen = self.seen.read().unwrap().clone();
        Backend {
            id: self.id.clone(),
            url: self.url.clone(),
            state: if self.healthy() {
                Health::Up
            } else {
                Health::Down
            },
            reason: self.reason(),
            models: seen.models,
            loaded: seen.loaded,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            model: None,
            ..Backend::default()
        }
    }
}

impl Destination for BackendState {
    fn id(&self) -> &str {
        &self.id
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

/// A request in flight to a backend; dropping it ends the count.
pub struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `Basic base64(user:password)` from a URL's percent-encoded userinfo, marked
/// sensitive so HTTP/2 never indexes it.
fn basic_authorization(userinfo: &str) -> HeaderValue {
    use base64::Engine as _;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut credentials = percent_decode(user);
    credentials.push(b':');
    credentials.extend(percent_decode(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); a malformed escape stays as written.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
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
                let configured = url.trim_end_matches('/').to_string();
                let kept = previous.and_then(|p| p.get(id));
                if let Some(kept) = kept.filter(|b| b.configured == configured) {
                    return Ok(kept.clone());
                }
                let (url, userinfo) = crate::config::split_userinfo(&configured);
                let uri: Uri = url
                    .parse()
                    .map_err(|e| anyhow::anyhow!("backend {id:?}: bad URL {url:?}: {e}"))?;
                Ok(Arc::new(BackendState {
                    id: id.clone(),
                    url,
                    uri,
                    configured,
                    authorization: userinfo.as_deref().map(basic_authorization),
                    healthy: AtomicBool::new(true),
                    reason: Mutex::default(),
                    in_flight: AtomicU32::new(0),
                    seen: RwLock::default(),
                    learned: AtomicU64::new(0),
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

    /// Snapshots of the backends that serve `model` (by Ollama's name rules),
    /// without their model lists ([`crate::plugin::Facts::serving`]).
    pub fn serving(&self, model: &str) -> Vec<Backend> {
        let key = names::key(model);
        self.backends
            .iter()
            .filter_map(|b| {
                let seen = b.seen.read().unwrap();
                seen.keys.contains(&key).then(|| Backend {
                    id: b.id.clone(),
                    url: b.url.clone(),
                    state: if b.healthy() {
                        Health::Up
                    } else {
                        Health::Down
                    },
                    reason: b.reason(),
                    models: Vec::new(),
                    loaded: seen.loaded.clone(),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    model: Some(ModelFacts::default()),
                    ..Backend::default()
                })
            })
            .collect()
    }

    /// Probes every backend now, concurrently.
    pub async fn probe_all(&self, upstream: &Upstream, timeout: Duration) {
        let probes = self.backends.iter().map(|b| probe(b, upstream, timeout));
        futures_util::future::join_all(probes).await;
    }
}

impl crate::plugin::Facts for Fleet {
    fn all(&self) -> Vec<Backend> {
        self.views()
    }
    fn serving(&self, model: &str) -> Vec<Backend> {
        Fleet::serving(self, model)
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

/// The `User-Agent` of probes, so a backend's log (and the tests) tell them
/// from the listings clients asked for.
pub const PROBE_USER_AGENT: &str = concat!("llamagate-probe/", env!("CARGO_PKG_VERSION"));

async fn probe(backend: &Arc<BackendState>, upstream: &Upstream, timeout: Duration) {
    let learned = backend.learned.load(Ordering::Relaxed);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(PROBE_USER_AGENT),
    );
    let tags = upstream
        .get_json_with::<Tags>(&**backend, "/api/tags", &headers, timeout)
        .await;
    let ps = upstream
        .get_json_with::<Tags>(&**backend, "/api/ps", &headers, timeout)
        .await;
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
                    ..LoadedModel::default()
                })
                .collect();
            let mut seen = backend.seen.write().unwrap();
            // A change learned while this probe was under way is newer than
            // its answer; the probe that change started brings the truth.
            if backend.learned.load(Ordering::Relaxed) == learned {
                *seen = Seen::new(models, loaded);
            }
            drop(seen);
            backend.set_healthy();
        }
        (Err(e), _) => {
            // Why, once, when a backend goes from healthy to not (a wrong
            // base path answers 404; "unreachable" alone would mislead).
            if backend.healthy() {
                tracing::warn!(backend = %backend.id, "probe failed: {e}");
            } else {
                tracing::debug!(backend = %backend.id, "probe failed: {e}");
            }
            if e.failure.blames_backend() {
                backend.set_unhealthy(&e.failure);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_split_off_the_url() {
        let fleet = Fleet::new(
            &[
                ("a".into(), "http://admin:p%40ss%2Fw@gpu-01:11434/".into()),
                ("b".into(), "http://gpu-02:11434".into()),
            ],
            None,
        )
        .unwrap();
        let a = fleet.get("a").unwrap();
        assert_eq!(a.url, "http://gpu-01:11434");
        assert_eq!(a.uri.to_string(), "http://gpu-01:11434/");
        assert_eq!(a.view().url, "http://gpu-01:11434");
        // base64("admin:p@ss/w")
        assert_eq!(a.authorization().unwrap(), "Basic YWRtaW46cEBzcy93");
        assert!(a.authorization().unwrap().is_sensitive());
        assert!(fleet.get("b").unwrap().authorization().is_none());

        // A new password is a new backend; the same URL keeps its state.
        let same = Fleet::new(
            &[("a".into(), "http://admin:p%40ss%2Fw@gpu-01:11434".into())],
            Some(&fleet),
        )
        .unwrap();
        assert!(Arc::ptr_eq(same.get("a").unwrap(), a));
        let changed = Fleet::new(
            &[("a".into(), "http://admin:new@gpu-01:11434".into())],
            Some(&fleet),
        )
        .unwrap();
        assert!(!Arc::ptr_eq(changed.get("a").unwrap(), a));
        assert_eq!(
            changed.get("a").unwrap().authorization().unwrap(),
            "Basic YWRtaW46bmV3"
        );
    }
}
