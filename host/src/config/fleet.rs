//! How llamagate treats its backends, as configured: health and breaker
//! thresholds (`[health]`, `[breaker]`), failover and timeouts
//! (`first_byte_timeout`, `stream_idle_timeout`, `retry_statuses`,
//! `[model_timeouts]`), and slots and the queue (`parallel`, `slots` and
//! `vram` per backend in `[connections]`, `queue_timeout`, `max_queue`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::{parse_duration, parse_size, Size, Text};

/// Ollama's default `OLLAMA_NUM_PARALLEL`: requests one loaded model works on at once.
pub const OLLAMA_NUM_PARALLEL: u32 = 1;

/// Ollama's default `OLLAMA_MAX_LOADED_MODELS` per GPU.
pub const OLLAMA_MAX_LOADED_MODELS: u32 = 3;

/// What the fleet is built with besides its backends' URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetSettings {
    /// Slots and memory of backends given in table form, by id (the others
    /// get `default_backend`).
    pub backends: BTreeMap<String, BackendSettings>,
    /// Slots of backends given as a plain URL (top-level `parallel`, `slots`).
    pub default_backend: BackendSettings,
    /// Probe and breaker thresholds (`[health]`, `[breaker]`).
    pub health: HealthConfig,
    /// The queue for slots (`queue_timeout`, `max_queue`).
    pub queue: QueueSettings,
    /// Models kept loaded (`[[hot]]`).
    pub hot: Vec<HotModel>,
}

/// A model kept loaded on some backends (`[[hot]]`): preloaded at start,
/// kept warm, and loaded again where a backend lost it (a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotModel {
    /// The model, as the backends name it (no alias).
    pub model: String,
    /// Backends it should be loaded on (`replicas`, default 1).
    pub replicas: u32,
    /// The `keep_alive` sent with each load, in seconds; -1: until unloaded
    /// (`keep_alive`, default 30 minutes, refreshed before it runs out).
    pub keep_alive: i64,
}

/// One `[[hot]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHot {
    /// `model`
    pub model: String,
    /// `replicas`
    pub replicas: Option<u32>,
    /// `keep_alive`: a duration (`"30m"`), seconds, or `-1` (never unload).
    pub keep_alive: Option<toml::Value>,
}

/// `[[hot]]` made whole.
pub fn hot(entries: &[FileHot]) -> anyhow::Result<Vec<HotModel>> {
    let mut out: Vec<HotModel> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = |field: &str| format!("hot[{i}].{field}");
        anyhow::ensure!(!entry.model.trim().is_empty(), "{}: empty", key("model"));
        if out
            .iter()
            .any(|h| llamagate_sdk::names::same(&h.model, &entry.model))
        {
            bail!("{}: {:?} is given twice", key("model"), entry.model);
        }
        let keep_alive = match &entry.keep_alive {
            None => 30 * 60,
            Some(toml::Value::Integer(n)) if *n < 0 => -1,
            Some(toml::Value::Integer(n)) => *n,
            Some(toml::Value::String(t)) if t.trim().starts_with('-') => -1,
            Some(toml::Value::String(t)) => parse_duration(t)
                .with_context(|| key("keep_alive"))?
                .as_secs() as i64,
            Some(other) => bail!(
                "{}: expected a duration (\"30m\"), seconds, or -1, not {}",
                key("keep_alive"),
                other.type_str()
            ),
        };
        anyhow::ensure!(
            keep_alive != 0,
            "{}: 0 would unload it at once",
            key("keep_alive")
        );
        out.push(HotModel {
            model: entry.model.trim().to_string(),
            replicas: at_least_one(entry.replicas, &key("replicas"), 1)?,
            keep_alive,
        });
    }
    Ok(out)
}

/// Thresholds and times of health tracking (`[health]` and `[breaker]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Probe successes in a row that bring a down backend back (`rise`).
    pub rise: u32,
    /// Probe failures in a row that mark a backend down (`fall`).
    pub fall: u32,
    /// Probe interval for a backend that is down or whose breaker is open.
    pub down_probe_interval: Duration,
    /// Request failures in a row that open the breaker (`failures`).
    pub failures: u32,
    /// How long the breaker stays open the first time (`open_for`).
    pub open_for: Duration,
    /// Requests let through while half-open (`trials`).
    pub trials: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            rise: 2,
            fall: 3,
            down_probe_interval: Duration::from_secs(1),
            failures: 5,
            open_for: Duration::from_secs(10),
            trials: 1,
        }
    }
}

/// When a request moves on to the next backend, and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// From sending the request to the response head (`first_byte_timeout`).
    pub first_byte_timeout: Duration,
    /// Longest gap between two frames of an answer (`stream_idle_timeout`).
    pub stream_idle_timeout: Duration,
    /// Statuses that count as a failed attempt and move on (`retry_statuses`).
    pub retry_statuses: Vec<u16>,
    /// Per-model timeouts, by normalised model name (`[model_timeouts]`).
    pub per_model: BTreeMap<String, ModelTimeouts>,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            // Ollama gives a model 5 minutes to load (`OLLAMA_LOAD_TIMEOUT`):
            // a cold load must not be cut.
            first_byte_timeout: Duration::from_secs(6 * 60),
            stream_idle_timeout: Duration::from_secs(5 * 60),
            retry_statuses: vec![502, 503, 504],
            per_model: BTreeMap::new(),
        }
    }
}

impl Failover {
    /// The first-byte and stream-idle timeouts for `model`.
    pub fn timeouts(&self, model: Option<&str>) -> (Duration, Duration) {
        let own = model.and_then(|m| self.per_model.get(&llamagate_sdk::names::key(m)));
        (
            own.and_then(|t| t.first_byte)
                .unwrap_or(self.first_byte_timeout),
            own.and_then(|t| t.stream_idle)
                .unwrap_or(self.stream_idle_timeout),
        )
    }

    /// Whether `status` counts as a failed attempt.
    pub fn retries(&self, status: u16) -> bool {
        self.retry_statuses.contains(&status)
    }
}

/// One model's timeouts (`[model_timeouts."llama3.3:70b"]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelTimeouts {
    /// `first_byte`
    pub first_byte: Option<Duration>,
    /// `stream_idle`
    pub stream_idle: Option<Duration>,
}

/// Slots and memory of one backend (the table form of a `[connections]` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    /// Requests at once per model (`parallel`; Ollama's `OLLAMA_NUM_PARALLEL`).
    pub parallel: u32,
    /// Requests at once in all (`slots`).
    pub slots: u32,
    /// Declared GPU memory budget in bytes (`vram`), for placement.
    pub vram: Option<u64>,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            parallel: OLLAMA_NUM_PARALLEL,
            slots: OLLAMA_NUM_PARALLEL * OLLAMA_MAX_LOADED_MODELS,
            vram: None,
        }
    }
}

/// The queue of requests waiting for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    /// Longest wait for a slot; then 429 with `Retry-After` (`queue_timeout`).
    pub timeout: Duration,
    /// Requests waiting at once, in all; beyond it 429 at once (`max_queue`,
    /// like Ollama's `OLLAMA_MAX_QUEUE`).
    pub max: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            timeout: Duration::from_secs(120),
            max: 512,
        }
    }
}

/// `[health]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    /// `rise`
    pub rise: Option<u32>,
    /// `fall`
    pub fall: Option<u32>,
    /// `down_probe_interval`
    pub down_probe_interval: Option<Text>,
}

/// `[breaker]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBreaker {
    /// `failures`
    pub failures: Option<u32>,
    /// `open_for`
    pub open_for: Option<Text>,
    /// `trials`
    pub trials: Option<u32>,
}

/// One `[model_timeouts."m"]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModelTimeouts {
    /// `first_byte`
    pub first_byte: Option<Text>,
    /// `stream_idle`
    pub stream_idle: Option<Text>,
}

/// The table form of a `[connections]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnection {
    /// `url`
    pub url: String,
    /// `parallel`
    pub parallel: Option<u32>,
    /// `slots`
    pub slots: Option<u32>,
    /// `vram`
    pub vram: Option<Size>,
}

fn at_least_one(value: Option<u32>, key: &str, default: u32) -> anyhow::Result<u32> {
    match value {
        Some(0) => bail!("{key}: must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn duration(value: Option<&Text>, key: &str, default: Duration) -> anyhow::Result<Duration> {
    match value {
        Some(t) => parse_duration(t).with_context(|| key.to_string()),
        None => Ok(default),
    }
}

fn positive(value: Option<&Text>, key: &str, default: Duration) -> anyhow::Result<Duration> {
    let d = duration(value, key, default)?;
    anyhow::ensure!(!d.is_zero(), "{key}: must be more than 0");
    Ok(d)
}

/// `[health]` and `[breaker]` made whole.
pub fn health(health: &FileHealth, breaker: &FileBreaker) -> anyhow::Result<HealthConfig> {
    let d = HealthConfig::default();
    Ok(HealthConfig {
        rise: at_least_one(health.rise, "health.rise", d.rise)?,
        fall: at_least_one(health.fall, "health.fall", d.fall)?,
        down_probe_interval: positive(
            health.down_probe_interval.as_ref(),
            "health.down_probe_interval",
            d.down_probe_interval,
        )?,
        failures: at_least_one(breaker.failures, "breaker.failures", d.failures)?,
        open_for: duration(breaker.open_for.as_ref(), "breaker.open_for", d.open_for)?,
        trials: at_least_one(breaker.trials, "breaker.trials", d.trials)?,
    })
}

/// The failover keys made whole.
pub fn failover(
    first_byte: Option<&Text>,
    stream_idle: Option<&Text>,
    retry_statuses: Option<&[u16]>,
    per_model: &BTreeMap<String, FileModelTimeouts>,
) -> anyhow::Result<Failover> {
    let d = Failover::default();
    let retry_statuses = match retry_statuses {
        Some(list) => {
            for status in list {
                if !(400..=599).contains(status) {
                    bail!("retry_statuses: {status} is not an error status (400-599)");
                }
            }
            list.to_vec()
        }
        None => d.retry_statuses,
    };
    let mut models = BTreeMap::new();
    for (model, t) in per_model {
        let key = |field: &str| format!("model_timeouts.{model:?}.{field}");
        let parse = |v: Option<&Text>, field: &str| {
            v.map(|t| {
                let d = parse_duration(t).with_context(|| key(field))?;
                anyhow::ensure!(!d.is_zero(), "{}: must be more than 0", key(field));
                Ok(d)
            })
            .transpose()
        };
        let timeouts = ModelTimeouts {
            first_byte: parse(t.first_byte.as_ref(), "first_byte")?,
            stream_idle: parse(t.stream_idle.as_ref(), "stream_idle")?,
        };
        if models
            .insert(llamagate_sdk::names::key(model), timeouts)
            .is_some()
        {
            bail!("model_timeouts.{model:?}: the same model is given twice");
        }
    }
    Ok(Failover {
        first_byte_timeout: positive(first_byte, "first_byte_timeout", d.first_byte_timeout)?,
        stream_idle_timeout: positive(stream_idle, "stream_idle_timeout", d.stream_idle_timeout)?,
        retry_statuses,
        per_model: models,
    })
}

/// The settings of backends without their own, from the top-level
/// `parallel` and `slots` (or `--parallel`).
pub fn backend_default(
    parallel: Option<u32>,
    slots: Option<u32>,
) -> anyhow::Result<BackendSettings> {
    let parallel = at_least_one(parallel, "parallel", OLLAMA_NUM_PARALLEL)?;
    Ok(BackendSettings {
        parallel,
        slots: at_least_one(
            slots,
            "slots",
            parallel.saturating_mul(OLLAMA_MAX_LOADED_MODELS),
        )?,
        vram: None,
    })
}

/// A `[connections]` entry's table form, checked; `id` names it in errors.
/// What it does not say comes from `default` (the top-level keys), except
/// that a `parallel` of its own makes its default `slots` `parallel` x 3.
pub fn backend(
    id: &str,
    entry: &FileConnection,
    default: BackendSettings,
) -> anyhow::Result<BackendSettings> {
    let key = |field: &str| format!("connections.{id}.{field}");
    let parallel = at_least_one(entry.parallel, &key("parallel"), default.parallel)?;
    let default_slots = match entry.parallel {
        Some(p) => p.saturating_mul(OLLAMA_MAX_LOADED_MODELS),
        None => default.slots,
    };
    let slots = at_least_one(entry.slots, &key("slots"), default_slots)?;
    let vram = match &entry.vram {
        None => None,
        Some(Size::Bytes(n)) => Some(*n),
        Some(Size::Text(t)) => Some(
            parse_size(t).with_context(|| format!("{}: {t:?} is not a size", key("vram")))? as u64,
        ),
    };
    Ok(BackendSettings {
        parallel,
        slots,
        vram,
    })
}

/// The queue keys made whole.
pub fn queue(timeout: Option<&Text>, max: Option<usize>) -> anyhow::Result<QueueSettings> {
    let d = QueueSettings::default();
    Ok(QueueSettings {
        timeout: duration(timeout, "queue_timeout", d.timeout)?,
        max: max.unwrap_or(d.max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_ollama() {
        let b = BackendSettings::default();
        assert_eq!((b.parallel, b.slots), (1, 3));
        let entry = FileConnection {
            url: "http://h".into(),
            parallel: Some(4),
            slots: None,
            vram: Some(Size::Text("24GiB".into())),
        };
        let b = backend("b1", &entry, BackendSettings::default()).unwrap();
        assert_eq!((b.parallel, b.slots, b.vram), (4, 12, Some(24 << 30)));
        let zero = FileConnection {
            parallel: Some(0),
            ..entry
        };
        let err = backend("b1", &zero, BackendSettings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("connections.b1.parallel"), "{err}");
    }

    #[test]
    fn per_model_timeouts_are_found_by_ollamas_name_rules() {
        let mut per_model = BTreeMap::new();
        per_model.insert(
            "Llama3.3:70B".to_string(),
            FileModelTimeouts {
                first_byte: Some("20m".into()),
                stream_idle: None,
            },
        );
        let f = failover(Some(&"1m".to_string()), None, None, &per_model).unwrap();
        assert_eq!(
            f.timeouts(Some("library/llama3.3:70b")),
            (Duration::from_secs(1200), Duration::from_secs(300))
        );
        assert_eq!(f.timeouts(Some("llama3.3")).0, Duration::from_secs(60));
        assert!(f.retries(503) && !f.retries(500));
        let bad = failover(None, None, Some(&[200]), &BTreeMap::new()).unwrap_err();
        assert!(bad.to_string().contains("retry_statuses"), "{bad}");
    }
}
