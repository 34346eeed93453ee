//! `llamagate.toml`, merged with command-line flags and environment variables.
//!
//! The file is optional; flags add to it (`--proxy`, `--connection`, `--alias`,
//! `--plugin`) or override it (`--listen`). Every key is documented in the
//! README's configuration table. A bad value fails start-up naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

mod admin_key;
pub mod fleet;
pub mod limits;
pub mod origin;

pub use admin_key::{AdminAccess, AdminKey, AdminKeys};

use crate::config::limits::{BodyPace, ClientLimits};
use crate::plugin::Limits;

/// The environment variable that sets the admin key (it wins over the file).
pub const ADMIN_KEY_ENV: &str = "LLAMAGATE_ADMIN_KEY";

/// The admin endpoint's default port (on 127.0.0.1).
pub const DEFAULT_ADMIN_PORT: u16 = 11435;

/// The name under which the embedded default policy is referred to.
pub const BUILTIN_DEFAULT_POLICY: &str = "builtin:default-policy";

/// The whole configuration, ready to use.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the admin endpoint (health, metrics, status); `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// Whether `admin_listen` was given (a default address that is taken is
    /// only warned about; a given one that is taken stops start-up).
    pub admin_listen_given: bool,
    /// Largest request body read into memory, in bytes.
    pub max_body_size: usize,
    /// Limits on the policy view: keys in `options`, bytes in all.
    pub view_limits: crate::api::intake::ViewLimits,
    /// Time to connect to a backend before trying the next.
    pub connect_timeout: Duration,
    /// Time a list endpoint waits for each backend.
    pub fanout_timeout: Duration,
    /// Interval between health and model probes.
    pub probe_interval: Duration,
    /// How long a merged listing is kept (`listing_cache`); zero: not at all.
    pub listing_cache: Duration,
    /// Backends, `(id, url)`, in order.
    pub connections: Vec<(String, String)>,
    /// Backends' slots and memory, health thresholds, the queue.
    pub fleet: fleet::FleetSettings,
    /// When a request moves on, and its timeouts.
    pub failover: fleet::Failover,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginSpec>,
    /// A second chain that sees every request but whose decisions are only
    /// logged and counted (to compare a new policy before promoting it).
    pub shadow: Vec<PluginSpec>,
    /// Add an `x-llamagate-decision` header to every response.
    pub explain: bool,
    /// Watch the config file and plugin files, and reload when they change.
    pub watch: bool,
    /// Files whose change triggers a reload (config file and plugins).
    pub watched_files: Vec<PathBuf>,
    /// Serve `GET /llamagate/status` on the traffic port too.
    pub status: bool,
    /// Count requests in the metrics (`metrics`).
    pub metrics: bool,
    /// Write the access log (`access_log`).
    pub access_log: bool,
    /// Origins browsers may call from (`origins`, `--origins`,
    /// `LLAMAGATE_ORIGINS`, `OLLAMA_ORIGINS`), with Ollama's defaults.
    pub cors: crate::api::cors::Cors,
    /// The key `/llamagate/status` callers must present (`admin_key`,
    /// `admin_key_file`, `LLAMAGATE_ADMIN_KEY`); `None`: loopback callers only.
    pub admin_key: Option<AdminKey>,
    /// The `[policy.keys]` entries with the `admin` scope, which open
    /// `/metrics` and `/llamagate/status` too.
    pub admin_keys: AdminKeys,
    /// On SIGTERM, how long requests in flight (streams) may take to finish.
    pub shutdown_grace: Duration,
    /// Client connection timeouts and the connection cap (`header_timeout`,
    /// `idle_timeout`, `body_timeout`, `body_min_rate`, `max_connections`).
    pub client_limits: ClientLimits,
}

/// One plugin of the chain.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name used in logs and errors.
    pub name: String,
    /// Where the component comes from.
    pub source: PluginSource,
    /// The plugin's config table, as JSON text.
    pub config_json: String,
    /// Sandbox limits.
    pub limits: Limits,
    /// What a failure of this plugin does to the request.
    pub on_failure: OnFailure,
    /// Where its config is in the config file, so that a refusal points at
    /// the file's line (`None`: the plugin came from `--plugin`).
    pub config_from: Option<origin::ConfigOrigin>,
}

/// What happens to a request when a plugin fails (trap, time or memory limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Answer the request with a 500 naming the plugin (the default: auth lives in plugins).
    #[default]
    Closed,
    /// Skip the plugin and go on with the rest of the chain.
    Open,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSource {
    /// The default policy embedded in the binary.
    Builtin,
    /// A `.wasm` file.
    File(PathBuf),
}

impl PluginSource {
    /// The component's bytes.
    pub fn load(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            PluginSource::Builtin => Ok(crate::DEFAULT_POLICY_WASM.to_vec()),
            PluginSource::File(path) => {
                std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))
            }
        }
    }
}

/// `llamagate.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen`
    pub listen: Option<String>,
    /// `admin_listen`: the admin endpoint's address, or `"off"`.
    pub admin_listen: Option<String>,
    /// `max_body_size`
    pub max_body_size: Option<Size>,
    /// `max_options`: most keys a body's `options` may have.
    pub max_options: Option<usize>,
    /// `max_view_size`: most bytes of path, headers and options handed to plugins.
    pub max_view_size: Option<Size>,
    /// `connect_timeout`
    pub connect_timeout: Option<Text>,
    /// `fanout_timeout`
    pub fanout_timeout: Option<Text>,
    /// `probe_interval`
    pub probe_interval: Option<Text>,
    /// `listing_cache`: how long merged listings are kept (`"0"`: off).
    pub listing_cache: Option<Text>,
    /// `default_policy`: whether the built-in policy runs first (default true).
    pub default_policy: Option<bool>,
    /// `shadow_default_policy`: whether the built-in policy runs first in the
    /// shadow chain (default: as in the live chain).
    pub shadow_default_policy: Option<bool>,
    /// `explain`: add the decision header to responses.
    pub explain: Option<bool>,
    /// `watch`: reload when the config or a plugin file changes (default true).
    pub watch: Option<bool>,
    /// `status`: serve `/llamagate/status` on the traffic port too (default false).
    pub status: Option<bool>,
    /// `metrics`: count requests in the metrics (default true).
    pub metrics: Option<bool>,
    /// `access_log`: one log line per request (default true).
    pub access_log: Option<bool>,
    /// `origins`: origins browsers may call from, besides Ollama's defaults.
    pub origins: Option<Vec<String>>,
    /// `admin_key`: the bearer key the status endpoint asks for.
    pub admin_key: Option<String>,
    /// `admin_key_file`: a file holding the admin key (relative to the config file).
    pub admin_key_file: Option<String>,
    /// `shutdown_grace`: time in-flight requests get on shutdown.
    pub shutdown_grace: Option<Text>,
    /// `header_timeout`: time a client has to send a request's headers.
    pub header_timeout: Option<Text>,
    /// `idle_timeout`: time a keep-alive connection with no request stays open.
    pub idle_timeout: Option<Text>,
    /// `body_timeout`: base time allowed for a request body.
    pub body_timeout: Option<Text>,
    /// `body_min_rate`: bytes per second that extend `body_timeout`.
    pub body_min_rate: Option<Size>,
    /// `max_connections`: client connections open at once.
    pub max_connections: Option<usize>,
    /// `first_byte_timeout`: from sending a request to its response head.
    pub first_byte_timeout: Option<Text>,
    /// `stream_idle_timeout`: longest gap between two frames of an answer.
    pub stream_idle_timeout: Option<Text>,
    /// `retry_statuses`: statuses that move a request to the next backend.
    pub retry_statuses: Option<Vec<u16>>,
    /// `[model_timeouts."m"]`: per-model `first_byte` and `stream_idle`.
    #[serde(default)]
    pub model_timeouts: std::collections::BTreeMap<String, fleet::FileModelTimeouts>,
    /// `parallel`: requests at once per model, for backends without their own.
    pub parallel: Option<u32>,
    /// `slots`: requests at once per backend, for backends without their own.
    pub slots: Option<u32>,
    /// `queue_timeout`: longest wait for a slot.
    pub queue_timeout: Option<Text>,
    /// `max_queue`: requests waiting for a slot at once.
    pub max_queue: Option<usize>,
    /// `[health]`: probe thresholds.
    #[serde(default)]
    pub health: fleet::FileHealth,
    /// `[[hot]]`: models kept loaded.
    #[serde(default)]
    pub hot: Vec<fleet::FileHot>,
    /// `[breaker]`: request-failure thresholds.
    #[serde(default)]
    pub breaker: fleet::FileBreaker,
    /// `[connections]`: id → URL (or `{ url, parallel, slots, vram }`), in file order.
    #[serde(default)]
    pub connections: toml::Table,
    /// `[policy]`: the default policy's config.
    #[serde(default)]
    pub policy: toml::Table,
    /// `[[plugins]]`
    #[serde(default)]
    pub plugins: Vec<FilePlugin>,
    /// `[[shadow]]`: plugins run in shadow.
    #[serde(default)]
    pub shadow: Vec<FilePlugin>,
}

/// A `[[plugins]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePlugin {
    /// Name in logs; defaults to the file's stem.
    pub name: Option<String>,
    /// Path of the `.wasm` component (relative to the config file), or
    /// `builtin:default-policy` to place the built-in policy in the chain.
    pub path: String,
    /// Time one call may take (`"100ms"`).
    pub time_limit: Option<Text>,
    /// Memory one instance may use (`"64MiB"`).
    pub memory_limit: Option<Size>,
    /// Calls of this plugin at once (default: the number of CPUs, at least 2).
    pub concurrency: Option<usize>,
    /// How long a request may wait for a free call slot (`"10s"`).
    pub max_wait: Option<Text>,
    /// `"closed"` (default) or `"open"`.
    pub on_failure: Option<OnFailure>,
    /// The plugin's own config, passed to its `init`.
    #[serde(default)]
    pub config: toml::Table,
}

/// A string value (durations).
pub type Text = String;

/// A size: bytes as an integer, or a string with a unit (`"64MiB"`, `"1GB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

impl Size {
    fn bytes(&self, key: &str) -> anyhow::Result<usize> {
        match self {
            Size::Bytes(n) => Ok(*n as usize),
            Size::Text(s) => parse_size(s).with_context(|| format!("{key}: {s:?} is not a size")),
        }
    }
}

/// Command-line and environment settings that add to or override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--proxy model=dest` and `--proxies`
    pub proxies: Vec<(String, String)>,
    /// `--connection id=url` and `--connections`
    pub connections: Vec<(String, String)>,
    /// `--alias a=b` and `--aliases`
    pub aliases: Vec<(String, String)>,
    /// `--list-aliases`
    pub list_aliases: bool,
    /// `--plugin x.wasm`
    pub plugins: Vec<PathBuf>,
    /// `--no-default-policy`
    pub no_default_policy: bool,
    /// `--explain`
    pub explain: bool,
    /// `--parallel`: the `parallel` of backends without their own.
    pub parallel: Option<u32>,
    /// `--origins`, `LLAMAGATE_ORIGINS`, `OLLAMA_ORIGINS`: added to `origins`.
    pub origins: Vec<String>,
}

impl Config {
    /// Reads the config file (if any) and applies the overrides.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Config> {
        let (file, base) = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                // Not `with_context`: the toml error quotes the offending line,
                // which may hold a token or a password.
                let file: FileConfig = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!(toml_error(path, &text, &e)))?;
                (
                    file,
                    path.parent().map(Path::to_path_buf).unwrap_or_default(),
                )
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let mut config = Config::build(file, &base, overrides)?;
        if let Some(path) = &overrides.config {
            // Read again only to find lines; it parsed a moment ago.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for spec in config.plugins.iter_mut().chain(&mut config.shadow) {
                if let Some(origin) = &mut spec.config_from {
                    origin.resolve(path, &text);
                }
            }
        }
        if let Some(key) = std::env::var_os(ADMIN_KEY_ENV) {
            let key = key
                .into_string()
                .map_err(|_| anyhow::anyhow!("{ADMIN_KEY_ENV}: not UTF-8"))?;
            config.admin_key = Some(AdminKey::new(&key).context(ADMIN_KEY_ENV)?);
        }
        Ok(config)
    }

    /// Builds the config from a parsed file; relative plugin paths are taken from `base`.
    pub fn build(file: FileConfig, base: &Path, overrides: &Overrides) -> anyhow::Result<Config> {
        let listen_text = overrides
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:11434".into());
        let listen = parse_listen(&listen_text)?;
        let admin_text = overrides.admin_listen.clone().or(file.admin_listen);
        let admin_listen_given = admin_text.is_some();
        let admin_listen = match admin_text.as_deref().map(str::trim) {
            Some("off" | "") => None,
            Some(text) => Some(parse_listen(text).context("admin_listen")?),
            None => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT))),
        };

        let mut connections: Vec<(String, String)> = Vec::new();
        let mut backend_settings = std::collections::BTreeMap::new();
        let fleet_default =
            fleet::backend_default(overrides.parallel.or(file.parallel), file.slots)?;
        let mut file_connections = Vec::new();
        for (id, value) in file.connections {
            match value {
                toml::Value::String(url) => file_connections.push((id, url)),
                toml::Value::Table(table) => {
                    let entry: fleet::FileConnection = toml::Value::Table(table)
                        .try_into()
                        .map_err(|e: toml::de::Error| {
                            anyhow::anyhow!("connections.{id}: {}", scrub_values(e.message()))
                        })?;
                    backend_settings
                        .insert(id.clone(), fleet::backend(&id, &entry, fleet_default)?);
                    file_connections.push((id, entry.url));
                }
                other => bail!(
                    "connections.{id}: expected a URL string or a table with `url`, not {}",
                    other.type_str()
                ),
            }
        }
        let from_file = file_connections.into_iter().map(Ok::<_, anyhow::Error>);
        let from_flags = overrides.connections.iter().cloned().map(Ok);
        for entry in from_file.chain(from_flags) {
            let (id, url) = entry?;
            let url = check_url(&url).with_context(|| format!("connections.{id}"))?;
            match connections.iter().find(|(i, _)| *i == id) {
                // The file's and a flag's: one of them would be ignored.
                Some((_, existing)) if *existing != url => bail!(
                    "connections.{id}: given twice, as {:?} in [connections] and as {:?} \
                     by --connection or --connections; give it once",
                    redact_url(existing),
                    redact_url(&url)
                ),
                Some(_) => {}
                None => connections.push((id, url)),
            }
        }

        let mut policy = file.policy;
        resolve_policy_models(&mut policy, &overrides.proxies, &mut connections)?;
        let aliases = table_entry(&mut policy, "aliases")?;
        for (alias, target) in &overrides.aliases {
            aliases.insert(alias.clone(), toml::Value::String(target.clone()));
        }
        if overrides.list_aliases {
            policy.insert("list_aliases".into(), toml::Value::Boolean(true));
        }
        if connections.is_empty() {
            bail!(
                "no backends configured: give --proxy MODEL=URL, --connection ID=URL, \
                 or a [connections] table in the config file"
            );
        }
        let policy_json = serde_json::to_string(&policy).context("[policy]")?;
        let admin_keys = AdminKeys::from_policy(&policy)?;

        let (mut plugins, builtin_listed) =
            plugin_specs(file.plugins, "plugins", base, &policy_json)?;
        let (mut shadow, shadow_builtin_listed) =
            plugin_specs(file.shadow, "shadow", base, &policy_json)?;
        for path in &overrides.plugins {
            let source = PluginSource::File(path.clone());
            plugins.push(PluginSpec {
                name: plugin_name(&source),
                source,
                config_json: "{}".into(),
                limits: Limits::default(),
                on_failure: OnFailure::Closed,
                config_from: None,
            });
        }
        let default_policy = file.default_policy.unwrap_or(true) && !overrides.no_default_policy;
        // Like with like: the shadow chain gets the built-in policy in front
        // as the live chain does, unless told otherwise.
        let shadow_default_policy = file.shadow_default_policy.unwrap_or(default_policy);
        if !shadow.is_empty() && shadow_default_policy && !shadow_builtin_listed {
            shadow.insert(0, builtin_spec(&policy_json));
        }
        if default_policy && !builtin_listed {
            plugins.insert(0, builtin_spec(&policy_json));
        }
        if plugins.is_empty() {
            bail!("no policy plugins: the default policy is off and no [[plugins]] are given");
        }

        let (admin_key, admin_key_file) = match (file.admin_key, file.admin_key_file) {
            (Some(_), Some(_)) => bail!("admin_key, admin_key_file: give one of them, not both"),
            (Some(key), None) => (Some(AdminKey::new(&key).context("admin_key")?), None),
            (None, Some(path)) => {
                let path = base.join(path);
                let key = std::fs::read_to_string(&path)
                    .with_context(|| format!("admin_key_file: reading {}", path.display()))?;
                let key = AdminKey::new(key.trim_end_matches(['\n', '\r']))
                    .with_context(|| format!("admin_key_file {}", path.display()))?;
                (Some(key), Some(path))
            }
            (None, None) => (None, None),
        };

        let duration = |value: Option<String>, key: &str, default: Duration| match value {
            Some(t) => parse_duration(&t).with_context(|| key.to_string()),
            None => Ok(default),
        };
        Ok(Config {
            listen,
            admin_listen,
            admin_listen_given,
            max_body_size: match file.max_body_size {
                Some(s) => s.bytes("max_body_size")?,
                None => 256 << 20,
            },
            view_limits: {
                let default = crate::api::intake::ViewLimits::default();
                crate::api::intake::ViewLimits {
                    max_options: file.max_options.unwrap_or(default.max_options),
                    max_view_size: match &file.max_view_size {
                        Some(s) => s.bytes("max_view_size")?,
                        None => default.max_view_size,
                    },
                }
            },
            connect_timeout: duration(
                file.connect_timeout,
                "connect_timeout",
                Duration::from_secs(5),
            )?,
            fanout_timeout: duration(
                file.fanout_timeout,
                "fanout_timeout",
                Duration::from_secs(5),
            )?,
            probe_interval: duration(
                file.probe_interval,
                "probe_interval",
                Duration::from_secs(10),
            )?,
            listing_cache: duration(file.listing_cache, "listing_cache", Duration::from_secs(1))?,
            connections,
            fleet: fleet::FleetSettings {
                backends: backend_settings,
                default_backend: fleet_default,
                health: fleet::health(&file.health, &file.breaker)?,
                queue: fleet::queue(file.queue_timeout.as_ref(), file.max_queue)?,
                hot: fleet::hot(&file.hot)?,
            },
            failover: fleet::failover(
                file.first_byte_timeout.as_ref(),
                file.stream_idle_timeout.as_ref(),
                file.retry_statuses.as_deref(),
                &file.model_timeouts,
            )?,
            watched_files: plugins
                .iter()
                .chain(&shadow)
                .filter_map(|p| match &p.source {
                    PluginSource::File(path) => Some(path.clone()),
                    PluginSource::Builtin => None,
                })
                .chain(overrides.config.clone())
                .chain(admin_key_file)
                .collect(),
            plugins,
            shadow,
            explain: file.explain.unwrap_or(false) || overrides.explain,
            watch: file.watch.unwrap_or(true),
            status: file.status.unwrap_or(false),
            metrics: file.metrics.unwrap_or(true),
            access_log: file.access_log.unwrap_or(true),
            cors: crate::api::cors::Cors::new(
                &file
                    .origins
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(overrides.origins.iter().cloned())
                    .collect::<Vec<_>>(),
            )?,
            admin_key,
            admin_keys,
            shutdown_grace: duration(
                file.shutdown_grace,
                "shutdown_grace",
                Duration::from_secs(30),
            )?,
            client_limits: client_limits(
                file.header_timeout,
                file.idle_timeout,
                file.body_timeout,
                file.body_min_rate,
                file.max_connections,
            )?,
        })
    }
}

/// The client-side limits from their keys; defaults for those not given.
fn client_limits(
    header: Option<Text>,
    idle: Option<Text>,
    body: Option<Text>,
    min_rate: Option<Size>,
    max_connections: Option<usize>,
) -> anyhow::Result<ClientLimits> {
    let defaults = ClientLimits::default();
    let positive = |value: Option<Text>, key: &str, default: Duration| match value {
        None => Ok(default),
        Some(t) => {
            let d = parse_duration(&t).with_context(|| key.to_string())?;
            anyhow::ensure!(!d.is_zero(), "{key}: must be more than 0");
            Ok(d)
        }
    };
    let min_rate = match min_rate {
        None => defaults.body.min_rate,
        Some(s) => s.bytes("body_min_rate")? as u64,
    };
    anyhow::ensure!(
        min_rate > 0,
        "body_min_rate: must be at least 1 byte per second"
    );
    let max_connections = max_connections.unwrap_or(defaults.max_connections);
    anyhow::ensure!(max_connections > 0, "max_connections: must be at least 1");
    Ok(ClientLimits {
        header_timeout: positive(header, "header_timeout", defaults.header_timeout)?,
        idle_timeout: positive(idle, "idle_timeout", defaults.idle_timeout)?,
        body: BodyPace {
            timeout: positive(body, "body_timeout", defaults.body.timeout)?,
            min_rate,
        },
        max_connections,
    })
}

/// The built-in policy with `[policy]` as its config, as a chain's first link.
fn builtin_spec(policy_json: &str) -> PluginSpec {
    PluginSpec {
        name: "default-policy".into(),
        source: PluginSource::Builtin,
        config_json: policy_json.to_string(),
        limits: Limits::default(),
        on_failure: OnFailure::Closed,
        config_from: Some(origin::ConfigOrigin::table(&["policy"])),
    }
}

/// Turns `[[plugins]]` (or `[[shadow]]`) entries into specs; also says whether
/// the built-in policy was placed explicitly.
fn plugin_specs(
    entries: Vec<FilePlugin>,
    table: &str,
    base: &Path,
    policy_json: &str,
) -> anyhow::Result<(Vec<PluginSpec>, bool)> {
    let mut specs = Vec::new();
    let mut builtin_listed = false;
    for (i, p) in entries.into_iter().enumerate() {
        let key = format!("{table}[{i}]");
        let source = if p.path == BUILTIN_DEFAULT_POLICY {
            builtin_listed = true;
            PluginSource::Builtin
        } else {
            PluginSource::File(base.join(&p.path))
        };
        let name = p.name.clone().unwrap_or_else(|| plugin_name(&source));
        // The built-in policy takes `[policy]` unless its entry has a config of its own.
        let (config_json, config_from) = match (&source, p.config.is_empty()) {
            (PluginSource::Builtin, true) => (policy_json.to_string(), vec!["policy".to_string()]),
            _ => (
                serde_json::to_string(&p.config).with_context(|| format!("{key}.config"))?,
                vec![table.to_string(), i.to_string(), "config".to_string()],
            ),
        };
        let config_from = config_from.iter().map(String::as_str).collect::<Vec<_>>();
        let config_from = Some(origin::ConfigOrigin::table(&config_from));
        let mut limits = Limits::default();
        if let Some(t) = &p.time_limit {
            limits.time = parse_duration(t).with_context(|| format!("{key}.time_limit"))?;
        }
        if let Some(m) = &p.memory_limit {
            limits.memory = m.bytes(&format!("{key}.memory_limit"))?;
            if limits.memory > 1 << 30 {
                bail!("{key}.memory_limit: at most 1GiB");
            }
        }
        if let Some(n) = p.concurrency {
            if !(1..=crate::plugin::MAX_CONCURRENCY).contains(&n) {
                bail!(
                    "{key}.concurrency: between 1 and {}",
                    crate::plugin::MAX_CONCURRENCY
                );
            }
            limits.concurrency = n;
        }
        if let Some(t) = &p.max_wait {
            limits.max_wait = parse_duration(t).with_context(|| format!("{key}.max_wait"))?;
        }
        specs.push(PluginSpec {
            name,
            source,
            config_json,
            limits,
            on_failure: p.on_failure.unwrap_or_default(),
            config_from,
        });
    }
    Ok((specs, builtin_listed))
}

fn plugin_name(source: &PluginSource) -> String {
    match source {
        PluginSource::Builtin => "default-policy".into(),
        PluginSource::File(path) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    }
}

/// `[policy.models]` values may be connection ids or URLs (gollamas' `--proxy
/// model=url`); URLs become connections, one per distinct URL, and every value
/// becomes a list of ids.
fn resolve_policy_models(
    policy: &mut toml::Table,
    proxies: &[(String, String)],
    connections: &mut Vec<(String, String)>,
) -> anyhow::Result<()> {
    let models = table_entry(policy, "models")?;
    refuse_same_model_twice(models)?;
    for (model, dest) in proxies {
        let given = toml::Value::String(dest.clone());
        let in_file = models
            .iter()
            .find(|(m, _)| llamagate_sdk::names::same(m, model));
        if let Some((name, value)) = in_file {
            if destinations(value) != destinations(&given) {
                bail!(
                    "policy.models.{name:?}: routed twice, to {} in [policy.models] and to {:?} \
                     by --proxy or --proxies; give it once",
                    shown_destinations(value),
                    redact_url(dest)
                );
            }
            continue;
        }
        models.insert(model.clone(), given);
    }
    for (model, value) in models.iter_mut() {
        let key = format!("policy.models.{model:?}");
        let dests: Vec<String> = match value {
            toml::Value::String(s) => vec![s.clone()],
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .with_context(|| format!("{key}: expected connection ids or URLs"))?,
            _ => bail!("{key}: expected a connection id, a URL, or a list of them"),
        };
        let mut ids = Vec::new();
        for dest in dests {
            let id = if dest.contains("://") {
                let url = check_url(&dest).with_context(|| key.clone())?;
                match connections.iter().find(|(_, u)| *u == url) {
                    Some((id, _)) => id.clone(),
                    None => {
                        let id = url_id(&url, connections);
                        connections.push((id.clone(), url));
                        id
                    }
                }
            } else if connections.iter().any(|(id, _)| *id == dest) {
                dest
            } else {
                let dest = redact_url(&dest);
                bail!("{key}: unknown connection {dest:?} (define it with --connection {dest}=URL or in [connections])");
            };
            ids.push(toml::Value::String(id));
        }
        *value = toml::Value::Array(ids);
    }
    Ok(())
}

/// The destinations of a `[policy.models]` value, for comparing (a string is
/// a list of one; trailing slashes do not count). `None` for a malformed value.
fn destinations(value: &toml::Value) -> Option<Vec<String>> {
    let one = |v: &toml::Value| {
        v.as_str()
            .map(|s| s.trim().trim_end_matches('/').to_string())
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

/// A `[policy.models]` value as an error shows it: URLs without userinfo.
fn shown_destinations(value: &toml::Value) -> String {
    match destinations(value) {
        Some(list) if list.len() == 1 => format!("{:?}", redact_url(&list[0])),
        Some(list) => format!(
            "{:?}",
            list.iter().map(|d| redact_url(d)).collect::<Vec<_>>()
        ),
        None => "a malformed value".into(),
    }
}

/// Refuses two `[policy.models]` keys that Ollama takes for one model
/// (`llama3.2` and `llama3.2:latest`) with different destinations.
fn refuse_same_model_twice(models: &toml::Table) -> anyhow::Result<()> {
    let entries: Vec<_> = models.iter().collect();
    for (i, (model, value)) in entries.iter().enumerate() {
        let earlier = entries[..i].iter().find(|(m, v)| {
            llamagate_sdk::names::same(m, model) && destinations(v) != destinations(value)
        });
        if let Some((first, first_value)) = earlier {
            bail!(
                "policy.models: {first:?} and {model:?} are the same model, routed to {} and to {}; \
                 give it once (a list for replicas)",
                shown_destinations(first_value),
                shown_destinations(value)
            );
        }
    }
    Ok(())
}

/// An id for a URL-only backend: its `host:port`, made unique.
fn url_id(url: &str, taken: &[(String, String)]) -> String {
    let bare = redact_url(url);
    let base = bare
        .split_once("://")
        .map_or(bare.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_string();
    let mut id = base.clone();
    let mut n = 2;
    while taken.iter().any(|(i, _)| *i == id) {
        id = format!("{base}#{n}");
        n += 1;
    }
    id
}

fn table_entry<'a>(table: &'a mut toml::Table, key: &str) -> anyhow::Result<&'a mut toml::Table> {
    table
        .entry(key)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .with_context(|| format!("policy.{key}: expected a table"))
}

/// Checks a backend URL and returns it trimmed, credentials kept. Errors show
/// it without its userinfo.
fn check_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/').to_string();
    let (bare, _) = split_userinfo(&url);
    let shown = &bare;
    let uri: http::Uri = bare
        .parse()
        .with_context(|| format!("{shown:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!("{shown:?}: https backends are not supported yet; use http"),
        _ => bail!("{shown:?}: expected http://host:port"),
    }
    anyhow::ensure!(uri.host().is_some(), "{shown:?}: no host");
    // A base path (`http://host/ollama`) is kept and prefixed to every
    // request and probe; a query would be dropped, so it is refused.
    anyhow::ensure!(
        uri.query().is_none() && !bare.contains('#'),
        "{shown:?}: a backend URL is http://host:port with an optional base path, no ?query or #fragment"
    );
    Ok(url)
}

/// `url` without its userinfo (`http://admin:pw@gpu-01:11434` →
/// `http://gpu-01:11434`): the form logs, status, errors and plugins see.
/// Works on text that is no valid URL too, so no error echoes a password.
pub fn redact_url(url: &str) -> String {
    split_userinfo(url).0
}

/// Splits `url` into the URL without userinfo and the userinfo itself
/// (`user:password`, still percent-encoded). The userinfo ends at the last `@`
/// after the scheme, so an unencoded `/` or `@` in a password is still found.
pub fn split_userinfo(url: &str) -> (String, Option<String>) {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => (
            format!("{}{}", &url[..start], &url[start + at + 1..]),
            Some(url[start..start + at].to_string()),
        ),
        None => (url.to_string(), None),
    }
}

/// A TOML error as `FILE: line L, column C: MESSAGE`, without the `toml`
/// crate's snippet of the line (which may hold a token) and without the values
/// the message quotes.
pub(crate) fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> String {
    let message = scrub_values(err.message())
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match err.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            let file = path.display();
            format!("{file}: line {line}, column {column}: {message}")
        }
        None => format!("{}: {message}", path.display()),
    }
}

/// Replaces the values a serde or TOML message quotes with `…`: every
/// `"string"`, and every `` `span` `` except config key names (lowercase
/// letters and `_`, so `unknown field `lisen`` still names the key) and
/// short punctuation, quoted either way (`` expected `}` ``, `"*"`). A
/// duplicate key may be a token: scrubbed.
pub(crate) fn scrub_values(message: &str) -> String {
    let keep_names = !message.contains("duplicate key");
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest[open..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            out.push('…');
            return out;
        };
        let inner = &after[..close];
        let name = keep_names
            && quote == '`'
            && (1..=32).contains(&inner.len())
            && inner.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        // `}`, or a plugin's "*" (all models): no secret fits in it.
        let punctuation =
            (1..=3).contains(&inner.len()) && inner.bytes().all(|b| b.is_ascii_punctuation());
        out.push_str(if name || punctuation { inner } else { "…" });
        out.push(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Accepts `host:port`, `:port` and gollamas' `localhost:11434`.
fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    full.to_socket_addrs()
        .with_context(|| format!("listen: {text:?} is not an address (expected host:port)"))?
        .next()
        .with_context(|| format!("listen: {text:?} resolves to no address"))
}

/// Parses `100ms`, `5s`, `2m`, `1h30m`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim())
        .with_context(|| format!("{text:?} is not a duration (e.g. \"500ms\", \"5s\")"))
}

/// Parses `1048576`, `512KiB`, `64MiB`, `1GiB`, `100MB`.
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().context("no number")?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"),
    };
    Ok((number * multiplier) as usize)
}

/// Splits gollamas' `a=b,c=d` lists.
pub fn parse_pairs(text: &str, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| parse_pair(pair, what))
        .collect()
}

/// Splits one `key=value` (the key may contain `:`; the split is at the first `=`).
pub fn parse_pair(pair: &str, what: &str) -> anyhow::Result<(String, String)> {
    match pair.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => bail!(
            "{what}: {:?} is not of the form NAME=VALUE",
            redact_url(pair)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str, o: Overrides) -> anyhow::Result<Config> {
        Config::build(toml::from_str(toml_text)?, Path::new("/etc/llamagate"), &o)
    }

    #[test]
    fn the_shadow_chain_gets_the_default_policy_unless_told_otherwise() {
        let conn = "[connections]\na = \"http://a:1\"\n";
        let names = |c: &Config| c.shadow.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        let shadow = "[[shadow]]\npath = \"x.wasm\"\n";
        let c = build(&format!("{conn}{shadow}"), Overrides::default()).unwrap();
        assert_eq!(names(&c), ["default-policy", "x"]);
        assert_eq!(c.shadow[0].config_json, c.plugins[0].config_json);
        for off in [
            "default_policy = false\n",
            "shadow_default_policy = false\n",
        ] {
            let c = build(&format!("{off}{conn}{shadow}"), Overrides::default());
            let c = c.or_else(|_| {
                build(
                    &format!("{off}{conn}{shadow}[[plugins]]\npath = \"y.wasm\"\n"),
                    Overrides::default(),
                )
            });
            assert_eq!(names(&c.unwrap()), ["x"], "{off}");
        }
        let placed =
            "[[shadow]]\npath = \"x.wasm\"\n[[shadow]]\npath = \"builtin:default-policy\"\n";
        let c = build(&format!("{conn}{placed}"), Overrides::default()).unwrap();
        assert_eq!(names(&c), ["x", "default-policy"], "placed by the operator");
        assert!(build(conn, Overrides::default()).unwrap().shadow.is_empty());
    }

    #[test]
    fn listing_cache_is_a_duration_and_zero_turns_it_off() {
        let conn = "[connections]\na = \"http://a:1\"\n";
        let ttl = |line: &str| build(&format!("{line}{conn}"), Overrides::default());
        assert_eq!(ttl("").unwrap().listing_cache, Duration::from_secs(1));
        let c = ttl("listing_cache = \"250ms\"\n").unwrap();
        assert_eq!(c.listing_cache, Duration::from_millis(250));
        assert_eq!(
            ttl("listing_cache = \"0\"\n").unwrap().listing_cache,
            Duration::ZERO
        );
        let err = format!("{:#}", ttl("listing_cache = \"soon\"\n").unwrap_err());
        assert!(err.starts_with("listing_cache"), "{err}");
    }

    #[test]
    fn gollamas_flags_make_connections_per_url() {
        let o = Overrides {
            proxies: vec![
                ("llama3.2".into(), "http://gpu-01:11434".into()),
                ("tinyllama".into(), "http://gpu-01:11434/".into()),
                ("qwen".into(), "c2".into()),
            ],
            connections: vec![("c2".into(), "http://gpu-02:11434".into())],
            ..Default::default()
        };
        let c = build("", o).unwrap();
        assert_eq!(
            c.connections,
            vec![
                ("c2".to_string(), "http://gpu-02:11434".to_string()),
                (
                    "gpu-01:11434".to_string(),
                    "http://gpu-01:11434".to_string()
                ),
            ]
        );
        let policy: serde_json::Value = serde_json::from_str(&c.plugins[0].config_json).unwrap();
        assert_eq!(
            policy["models"]["tinyllama"],
            serde_json::json!(["gpu-01:11434"])
        );
        assert_eq!(c.listen.to_string(), "0.0.0.0:11434");
    }

    #[test]
    fn unknown_connection_is_named() {
        let err = build("[policy.models]\n\"m\" = \"nope\"\n", Overrides::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("policy.models.\"m\": unknown connection \"nope\""),
            "{err:#}"
        );
    }

    #[test]
    fn file_and_flags_that_disagree_are_refused() {
        let conn = "[connections]\ngpu-01 = \"http://a:1\"\n";
        let flag = |proxies: &[(&str, &str)], connections: &[(&str, &str)]| Overrides {
            proxies: proxies
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            connections: connections
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ..Default::default()
        };
        let err = build(
            &format!("{conn}[policy.models]\n\"m\" = \"gpu-01\"\n"),
            flag(&[("m:latest", "http://b:2")], &[]),
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("\"gpu-01\"") && err.contains("http://b:2"),
            "{err}"
        );
        // Agreeing is fine: the same destination, as a string or a list of one.
        build(
            &format!("{conn}[policy.models]\n\"m\" = [\"gpu-01\"]\n"),
            flag(&[("m", "gpu-01")], &[("gpu-01", "http://a:1/")]),
        )
        .unwrap();
        let err = build(conn, flag(&[], &[("gpu-01", "http://b:1")])).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("http://a:1") && err.contains("http://b:1"),
            "{err}"
        );
        let err = build(
            &format!("{conn}[policy.models]\n\"m\" = \"gpu-01\"\n\"M:latest\" = \"http://b:2\"\n"),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("same model"), "{err:#}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<FileConfig>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn plugins_chain_order_and_limits() {
        let c = build(
            r#"
            [connections]
            a = "http://127.0.0.1:1"
            [[plugins]]
            path = "teams.wasm"
            time_limit = "20ms"
            memory_limit = "16MiB"
            concurrency = 3
            max_wait = "250ms"
            config = { teams = 1 }
            "#,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.plugins.len(), 2);
        assert_eq!(c.plugins[0].source, PluginSource::Builtin);
        assert_eq!(c.plugins[1].name, "teams");
        assert_eq!(
            c.plugins[1].source,
            PluginSource::File("/etc/llamagate/teams.wasm".into())
        );
        assert_eq!(c.plugins[1].limits.time, Duration::from_millis(20));
        assert_eq!(c.plugins[1].limits.memory, 16 << 20);
        assert_eq!(c.plugins[1].limits.concurrency, 3);
        assert_eq!(c.plugins[1].limits.max_wait, Duration::from_millis(250));
        assert!(
            c.plugins[0].limits.concurrency >= 2,
            "default: CPUs, at least 2"
        );
        assert_eq!(c.plugins[0].limits.max_wait, Duration::from_secs(10));
        assert_eq!(c.plugins[1].config_json, r#"{"teams":1}"#);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen(":8080").unwrap().port(), 8080);
        assert!(parse_listen("localhost:11434").is_ok());
        assert!(parse_listen("nonsense").is_err());
    }

    #[test]
    fn client_limits_keys() {
        let base = "[connections]\na = \"http://127.0.0.1:1\"\n";
        let c = build(base, Overrides::default()).unwrap();
        assert_eq!(c.client_limits, ClientLimits::default());
        let c = build(
            &format!(
                "header_timeout = \"2s\"\nidle_timeout = \"1m\"\nbody_timeout = \"5s\"\n\
                 body_min_rate = \"1KiB\"\nmax_connections = 7\n{base}"
            ),
            Overrides::default(),
        )
        .unwrap();
        let limits = c.client_limits;
        assert_eq!(limits.header_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.body.timeout, Duration::from_secs(5));
        assert_eq!((limits.body.min_rate, limits.max_connections), (1024, 7));
        for bad in [
            "header_timeout = \"0s\"",
            "body_min_rate = 0",
            "max_connections = 0",
        ] {
            let err = build(&format!("{bad}\n{base}"), Overrides::default()).unwrap_err();
            let key = bad.split(' ').next().unwrap();
            assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
        }
    }

    #[test]
    fn urls_lose_their_userinfo_wherever_shown() {
        for (url, shown) in [
            ("http://admin:pw@gpu-01:11434", "http://gpu-01:11434"),
            ("http://admin@gpu-01:11434/x", "http://gpu-01:11434/x"),
            ("http://a:p/w@x@gpu-01:11434", "http://gpu-01:11434"),
            ("admin:pw@gpu-01:11434", "gpu-01:11434"),
            ("http://gpu-01:11434", "http://gpu-01:11434"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let err = check_url("ftp://admin:pw@gpu-01").unwrap_err();
        assert!(!format!("{err:#}").contains("pw"), "{err:#}");
        // The id of a URL-only backend is no place for a password either.
        let o = Overrides {
            proxies: vec![("m".into(), "http://admin:pw@gpu-01:11434".into())],
            ..Default::default()
        };
        let c = build("", o).unwrap();
        assert_eq!(c.connections[0].0, "gpu-01:11434");
        assert_eq!(c.connections[0].1, "http://admin:pw@gpu-01:11434");
    }

    #[test]
    fn toml_errors_give_line_and_column_without_values() {
        let text = "listen = \"x\"\n[connections]\na = { \"sk-1\" = 1 x }\n";
        let err = toml::from_str::<FileConfig>(text).unwrap_err();
        let shown = toml_error(Path::new("/etc/l.toml"), text, &err);
        assert!(shown.starts_with("/etc/l.toml: line 3, column "), "{shown}");
        assert!(!shown.contains("sk-1"), "{shown}");
        assert_eq!(
            scrub_values("invalid type: string \"sk-x\", expected a boolean"),
            "invalid type: string \"…\", expected a boolean"
        );
        assert_eq!(
            scrub_values("unknown field `lisen`, expected `listen` or `explain`"),
            "unknown field `lisen`, expected `listen` or `explain`"
        );
        assert_eq!(scrub_values("unknown field `sk-a1`"), "unknown field `…`");
        assert_eq!(scrub_values("duplicate key `team`"), "duplicate key `…`");
        assert_eq!(
            scrub_values("integer `1234`, expected `}`"),
            "integer `…`, expected `}`"
        );
        assert_eq!(scrub_values("unclosed \"secret"), "unclosed \"…");
    }

    #[test]
    fn admin_key_from_the_file_or_a_key_file() {
        let dir = std::env::temp_dir().join(format!("llamagate-admin-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "k-123\n").unwrap();
        let conn = "[connections]\na = \"http://127.0.0.1:1\"\n";
        let from_file = Config::build(
            toml::from_str(&format!("admin_key_file = \"key\"\n{conn}")).unwrap(),
            &dir,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(from_file.admin_key, Some(AdminKey::new("k-123").unwrap()));
        assert!(from_file.watched_files.contains(&dir.join("key")));
        let inline = build(
            &format!("admin_key = \"k-123\"\n{conn}"),
            Overrides::default(),
        );
        assert_eq!(inline.unwrap().admin_key, from_file.admin_key);
        let both = build(
            &format!("admin_key = \"k\"\nadmin_key_file = \"key\"\n{conn}"),
            Overrides::default(),
        );
        assert!(format!("{:#}", both.unwrap_err()).contains("not both"));
        let bad = build(
            &format!("admin_key = \"k 123\"\n{conn}"),
            Overrides::default(),
        );
        let bad = format!("{:#}", bad.unwrap_err());
        assert!(bad.contains("admin_key") && !bad.contains("k 123"), "{bad}");
        assert_eq!(build(conn, Overrides::default()).unwrap().admin_key, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
