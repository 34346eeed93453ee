//! The backends: their addresses, what llamagate last saw of them (health,
//! models served and loaded) and the requests in flight to each.
//!
//! A background prober asks every backend for `/api/tags` and `/api/ps` on an
//! interval (a shorter one while it is down). Health combines those probes
//! with what real requests meet ([`health`]). State is per process: llamagate
//! replicas each probe on their own, so the proxy stays stateless.
//!
//! A backend URL may carry credentials (`http://admin:pw@gpu-01:11434`, for an
//! nginx with basic auth in front of Ollama). They are split off when the
//! fleet is built: what is shown anywhere ([`BackendState::url`]) has no
//! userinfo, and the credentials go to that backend only, as its
//! `Authorization: Basic` header ([`BackendState::authorization`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{HeaderValue, Uri};
use llamagate_sdk::names;
use serde::Deserialize;

use crate::plugin::{Backend, Health, LoadedModel, ModelFacts};
use crate::upstream::{Destination, Failure, Upstream};

pub mod admission;
pub mod health;
pub mod warm;

pub use crate::config::fleet::{FleetSettings, QueueSettings};
use admission::{Admission, Limits};

pub use crate::config::fleet::BackendSettings;
pub use health::{HealthConfig, Pass};

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
    /// Probes and the breaker.
    tracker: health::Tracker,
    /// Slots and memory, as configured (changed by a reload).
    settings: RwLock<BackendSettings>,
    /// Its `/api/version`, once a probe got it.
    version: RwLock<Option<String>>,
    /// When it was last probed (for probing at its own interval).
    probed_at: Mutex<Option<std::time::Instant>>,
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
    /// Size on disk by [`names::key`] (its `/api/tags` `size`).
    sizes: std::collections::HashMap<String, u64>,
    loaded: Vec<LoadedModel>,
    /// Per loaded model (same order as `loaded`): its key, bytes in memory,
    /// and when Ollama unloads it (Unix seconds; `None`: not said).
    resident: Vec<Resident>,
}

/// What `/api/ps` says of one loaded model beyond [`LoadedModel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resident {
    /// [`names::key`] of its name.
    pub key: String,
    /// Bytes in memory (`size`).
    pub size: u64,
    /// When it is unloaded, in Unix seconds (`expires_at`).
    pub expires_at: Option<i64>,
}

impl Seen {
    fn new(tags: Vec<TagEntry>, ps: Vec<TagEntry>) -> Seen {
        let keys = tags.iter().map(|m| names::key(&m.name)).collect();
        let sizes = tags.iter().map(|m| (names::key(&m.name), m.size)).collect();
        let resident = ps
            .iter()
            .map(|m| Resident {
                key: names::key(&m.name),
                size: m.size,
                expires_at: m.expires_at.as_deref().and_then(unix_seconds),
            })
            .collect();
        let loaded = ps
            .into_iter()
            .map(|m| LoadedModel {
                name: m.name,
                size: m.size,
                context_length: m.context_length,
                size_vram: m.size_vram,
                expires_in_secs: None,
            })
            .collect();
        Seen {
            models: tags.into_iter().map(|m| m.name).collect(),
            keys,
            sizes,
            loaded,
            resident,
        }
    }
}

/// An RFC 3339 time (`2024-06-04T14:38:31.83753-07:00`, Ollama's
/// `expires_at`) in Unix seconds; `None` if it is not one.
pub fn unix_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

impl BackendState {
    /// Its slots and memory, as configured.
    pub fn settings(&self) -> BackendSettings {
        *self.settings.read().unwrap()
    }

    /// Its state now: up, half-open, open or down ([`health`]).
    pub fn health(&self) -> Health {
        self.tracker.health()
    }

    /// Whether requests may go there (up or half-open).
    pub fn healthy(&self) -> bool {
        self.health().healthy()
    }

    /// Why it is not up, in words; `None` when up.
    pub fn reason(&self) -> Option<String> {
        self.tracker.reason()
    }

    /// Asks to send a request there now ([`health::Tracker::pass`]).
    pub fn pass(&self) -> Option<Pass> {
        self.tracker.pass()
    }

    /// A request sent with `pass` got its answer.
    pub fn succeeded(&self, pass: Pass) {
        self.tracker.succeeded(&self.id, pass)
    }

    /// A request sent with `pass` failed as `failure` says.
    pub fn failed(&self, failure: &Failure, pass: Pass) {
        self.tracker.failed(&self.id, failure, pass)
    }

    /// A request sent with `pass` ended with neither (the client left).
    pub fn abandoned(&self, pass: Pass) {
        self.tracker.abandoned(pass)
    }

    /// A listing or probe answered.
    pub fn probe_succeeded(&self) {
        self.tracker.probe_succeeded(&self.id)
    }

    /// A listing or probe failed as `failure` says.
    pub fn probe_failed(&self, failure: &Failure) {
        self.tracker.probe_failed(&self.id, failure)
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
                seen.resident.retain(|r| r.key != key);
            }
        }
        self.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks this backend for its models (`/api/tags`) and loaded models
    /// (`/api/ps`) now, and records its health.
    pub async fn probe(self: &Arc<Self>, upstream: &Upstream, timeout: Duration) {
        probe(self, upstream, timeout).await
    }

    /// Whether it serves `model` (by Ollama's name rules).
    pub fn serves(&self, model: &str) -> bool {
        self.seen.read().unwrap().keys.contains(&names::key(model))
    }

    /// The models loaded there, as its last `/api/ps` said.
    pub fn resident(&self) -> Vec<Resident> {
        self.seen.read().unwrap().resident.clone()
    }

    /// Size on disk of `model` there (its `/api/tags`), if it lists it.
    pub fn model_size(&self, model: &str) -> Option<u64> {
        self.seen
            .read()
            .unwrap()
            .sizes
            .get(&names::key(model))
            .copied()
    }

    /// The view plugins and status get, with its model list.
    pub fn view(&self) -> Backend {
        self.facts(None, None, true)
    }

    /// What plugins are told of it: health, slots (and, with `admission`,
    /// those in use and waiting), loaded models with their time left, and
    /// for `model` (a [`names::key`]) that model's facts there.
    fn facts(&self, admission: Option<&Admission>, model: Option<&str>, models: bool) -> Backend {
        let seen = self.seen.read().unwrap();
        let settings = self.settings();
        let now = unix_now();
        let loaded = seen
            .loaded
            .iter()
            .zip(&seen.resident)
            .map(|(l, r)| LoadedModel {
                expires_in_secs: r.expires_at.map(|at| at.saturating_sub(now).max(0) as u64),
                ..l.clone()
            })
            .collect();
        let load = admission
            .and_then(|a| a.backend_load(&self.id))
            .unwrap_or_default();
        let model = model.map(|key| {
            let there = admission
                .map(|a| a.model_load(&self.id, key))
                .unwrap_or_default();
            ModelFacts {
                size: seen.sizes.get(key).copied(),
                in_flight: there.in_use,
                queued: there.queued,
            }
        });
        Backend {
            id: self.id.clone(),
            url: self.url.clone(),
            state: self.health(),
            reason: self.reason(),
            version: self.version.read().unwrap().clone(),
            slots: settings.slots,
            model_slots: settings.parallel,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queued: load.queued,
            vram: settings.vram,
            models: if models {
                seen.models.clone()
            } else {
                Vec::new()
            },
            loaded,
            model,
        }
    }
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    health: HealthConfig,
    queue: QueueSettings,
    admission: Arc<Admission>,
    hot: Vec<crate::config::fleet::HotModel>,
    warmer: Arc<warm::Warmer>,
}

impl Fleet {
    /// Builds the fleet from `(id, url)` pairs, keeping the state (health,
    /// models, requests in flight) of backends `previous` had with the same id and URL.
    pub fn new(
        backends: &[(String, String)],
        settings: &FleetSettings,
        previous: Option<&Fleet>,
    ) -> anyhow::Result<Fleet> {
        let health = settings.health;
        let backends: Vec<Arc<BackendState>> = backends
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
                    tracker: health::Tracker::default(),
                    settings: RwLock::default(),
                    version: RwLock::default(),
                    probed_at: Mutex::default(),
                    in_flight: AtomicU32::new(0),
                    seen: RwLock::default(),
                    learned: AtomicU64::new(0),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        // The queue and the slots in use outlive a reload.
        let admission = match previous {
            Some(p) => p.admission.clone(),
            None => Admission::new(settings.queue.max),
        };
        let warmer = previous.map(|p| p.warmer.clone()).unwrap_or_default();
        admission.set_max_queue(settings.queue.max);
        for backend in &backends {
            backend.tracker.configure(health);
            let own = settings
                .backends
                .get(&backend.id)
                .copied()
                .unwrap_or(settings.default_backend);
            *backend.settings.write().unwrap() = own;
            admission.configure(
                &backend.id,
                Limits {
                    slots: own.slots,
                    parallel: own.parallel,
                },
            );
        }
        let ids: Vec<&str> = backends.iter().map(|b| b.id.as_str()).collect();
        admission.retain(&ids);
        Ok(Fleet {
            backends,
            health,
            queue: settings.queue,
            admission,
            hot: settings.hot.clone(),
            warmer,
        })
    }

    /// Slots and the queue of requests waiting for one (shared with the
    /// fleets of earlier and later generations).
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// The queue's settings.
    pub fn queue(&self) -> QueueSettings {
        self.queue
    }

    /// All backends.
    pub fn all(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// The backend with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<BackendState>> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// Whether some backend lists `model` (by Ollama's name rules).
    pub fn lists(&self, model: &str) -> bool {
        let key = names::key(model);
        self.backends
            .iter()
            .any(|b| b.seen.read().unwrap().keys.contains(&key))
    }

    /// Snapshot for plugins: every backend, with its model list.
    pub fn views(&self) -> Vec<Backend> {
        self.backends
            .iter()
            .map(|b| b.facts(Some(&self.admission), None, true))
            .collect()
    }

    /// Snapshots of the backends that serve `model` (by Ollama's name rules),
    /// without their model lists but with that model's facts there
    /// ([`crate::plugin::Facts::serving`]).
    pub fn serving(&self, model: &str) -> Vec<Backend> {
        let key = names::key(model);
        self.backends
            .iter()
            .filter(|b| b.seen.read().unwrap().keys.contains(&key))
            .map(|b| b.facts(Some(&self.admission), Some(&key), false))
            .collect()
    }

    /// Probes every backend now, concurrently.
    pub async fn probe_all(&self, upstream: &Upstream, timeout: Duration) {
        let probes = self.backends.iter().map(|b| probe(b, upstream, timeout));
        futures_util::future::join_all(probes).await;
    }

    /// Probes, concurrently, the backends whose interval has passed: `normal`,
    /// or the short one for a backend that is down or whose breaker is open.
    pub async fn probe_due(&self, upstream: &Upstream, normal: Duration, timeout: Duration) {
        let now = std::time::Instant::now();
        let due = self.backends.iter().filter(|b| {
            let interval = b.tracker.probe_interval(normal);
            b.probed_at
                .lock()
                .unwrap()
                .is_none_or(|at| now.duration_since(at) + Duration::from_millis(5) >= interval)
        });
        let probes = due.map(|b| probe(b, upstream, timeout));
        futures_util::future::join_all(probes).await;
    }

    /// Starts, in the background, the loads the `[[hot]]` models need now
    /// ([`warm`]).
    pub fn keep_warm(&self, upstream: &Upstream, probe_timeout: Duration) {
        if !self.hot.is_empty() {
            self.warmer
                .reconcile(self, &self.hot, upstream, probe_timeout);
        }
    }

    /// How often the prober looks for backends due a probe: the short
    /// interval, so a backend a request found down is probed again within it
    /// (looking costs nothing; only backends due are probed).
    pub fn probe_tick(&self, normal: Duration) -> Duration {
        normal.min(self.health.down_probe_interval)
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
    size: u64,
    #[serde(default)]
    context_length: Option<u32>,
    #[serde(default)]
    size_vram: u64,
    #[serde(default)]
    expires_at: Option<String>,
}

/// The `User-Agent` of probes, so a backend's log (and the tests) tell them
/// from the listings clients asked for.
pub const PROBE_USER_AGENT: &str = concat!("llamagate-probe/", env!("CARGO_PKG_VERSION"));

async fn probe(backend: &Arc<BackendState>, upstream: &Upstream, timeout: Duration) {
    *backend.probed_at.lock().unwrap() = Some(std::time::Instant::now());
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
    let answered = tags.is_ok();
    match (tags, ps) {
        (Ok(tags), ps) => {
            let tags = tags.models.unwrap_or_default();
            let ps = ps.ok().and_then(|p| p.models).unwrap_or_default();
            let fresh = Seen::new(tags, ps);
            let mut seen = backend.seen.write().unwrap();
            // A change learned while this probe was under way is newer than
            // its answer; the probe that change started brings the truth.
            if backend.learned.load(Ordering::Relaxed) == learned {
                *seen = fresh;
            }
            drop(seen);
            backend.probe_succeeded();
        }
        (Err(e), _) => {
            // Why, once, when a backend goes from healthy to not (a wrong
            // base path answers 404; "unreachable" alone would mislead).
            if backend.healthy() {
                tracing::warn!(backend = %backend.id, "probe failed: {e}");
            } else {
                tracing::debug!(backend = %backend.id, "probe failed: {e}");
            }
            backend.probe_failed(&e.failure);
        }
    }
    // After the models are known: a probe's first answer makes them
    // routable without waiting for this one.
    if answered {
        // Asked while unknown, and again after the backend was down (it may
        // have been upgraded).
        let known = backend.version.read().unwrap().is_some() && backend.healthy();
        if !known {
            #[derive(Deserialize)]
            struct Version {
                version: String,
            }
            if let Ok(v) = upstream
                .get_json_with::<Version>(&**backend, "/api/version", &headers, timeout)
                .await
            {
                *backend.version.write().unwrap() = Some(v.version);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_without_their_own_slots_take_the_fleet_default() {
        let own = BackendSettings {
            parallel: 2,
            slots: 5,
            vram: Some(1),
        };
        let settings = FleetSettings {
            backends: [("a".to_string(), own)].into(),
            default_backend: BackendSettings {
                parallel: 64,
                slots: 192,
                vram: None,
            },
            ..FleetSettings::default()
        };
        let fleet = Fleet::new(
            &[
                ("a".into(), "http://h:1".into()),
                ("b".into(), "http://h:2".into()),
            ],
            &settings,
            None,
        )
        .unwrap();
        assert_eq!(fleet.get("a").unwrap().settings(), own);
        assert_eq!(fleet.get("b").unwrap().settings().parallel, 64);
        let load = fleet.admission().backend_load("b").unwrap();
        assert_eq!((load.parallel, load.slots), (64, 192));
    }

    #[test]
    fn expiry_times_are_read_with_their_offset() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2024-06-04T14:38:31.83753-07:00"),
            Some(1717537111)
        );
        assert_eq!(unix_seconds("2024-06-04T21:38:31Z"), Some(1717537111));
        assert_eq!(unix_seconds("2318-01-01T00:00:00+02:00"), Some(10981778400));
        assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), Some(-62135596800));
        assert_eq!(unix_seconds("yesterday"), None);
        assert_eq!(unix_seconds("2024-06-04T14:38:31"), None);
    }

    #[test]
    fn credentials_are_split_off_the_url() {
        let fleet = Fleet::new(
            &[
                ("a".into(), "http://admin:p%40ss%2Fw@gpu-01:11434/".into()),
                ("b".into(), "http://gpu-02:11434".into()),
            ],
            &FleetSettings::default(),
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
            &FleetSettings::default(),
            Some(&fleet),
        )
        .unwrap();
        assert!(Arc::ptr_eq(same.get("a").unwrap(), a));
        let changed = Fleet::new(
            &[("a".into(), "http://admin:new@gpu-01:11434".into())],
            &FleetSettings::default(),
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
