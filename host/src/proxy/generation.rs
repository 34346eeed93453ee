//! What requests are decided with: the plugin chain, the shadow chain, the
//! fleet, the listing cache and the pipeline's settings, built from one
//! configuration and swapped whole on reload (by `admin::reload`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, PluginSpec};
use crate::fleet::Fleet;
use crate::plugin::Runtime;
use crate::policy::{Chain, Link};
use crate::proxy::listing_cache::Listings;

/// Settings of the request pipeline.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body read into memory (blob uploads stream and are exempt).
    pub max_body_size: usize,
    /// Limits on the policy view (`max_options`, `max_view_size`).
    pub view_limits: crate::api::intake::ViewLimits,
    /// How long a fan-out waits for each backend.
    pub fanout_timeout: Duration,
    /// Interval between backend probes.
    pub probe_interval: Duration,
    /// When a request moves to the next backend, and its timeouts.
    pub failover: crate::config::fleet::Failover,
    /// Add the decision header (`x-llamagate-decision`) to responses.
    pub explain: bool,
    /// Serve the status endpoint.
    pub status: bool,
    /// The keys `/metrics` and status callers must present (the admin key,
    /// admin-scoped `[policy.keys]`); none: loopback callers only.
    pub admin: crate::config::AdminAccess,
    /// Metrics and the access log, each on or off.
    pub observe: Observe,
    /// The origins browsers may call from.
    pub cors: crate::api::cors::Cors,
}

/// Which observations each request costs (`metrics`, `access_log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observe {
    /// Count requests, times and tokens in the metrics.
    pub metrics: bool,
    /// Write one access-log line per request.
    pub access_log: bool,
}

/// What requests are decided with; replaced whole on reload.
pub struct Generation {
    /// Counts reloads: 1 for the configuration llamagate started with.
    pub number: u64,
    /// The live plugin chain.
    pub chain: Arc<Chain>,
    /// The shadow chain, whose decisions are only compared and counted.
    pub shadow: Option<Arc<Chain>>,
    /// The backends.
    pub fleet: Arc<Fleet>,
    /// Merged listings, kept for `listing_cache` (this generation's own).
    pub listings: Arc<Listings>,
    /// Pipeline settings.
    pub settings: Settings,
}

/// Compiles and starts every plugin of a chain; fails with the plugin's message.
pub fn load_chain(runtime: &Arc<Runtime>, specs: &[PluginSpec]) -> anyhow::Result<Chain> {
    let mut links = Vec::new();
    for spec in specs {
        let wasm = spec.source.load()?;
        let plugin = runtime
            .load(
                &spec.name,
                &wasm,
                spec.config_json.clone(),
                spec.limits.clone(),
            )
            .map_err(|err| located(spec, err))?;
        links.push(Link {
            plugin,
            on_failure: spec.on_failure,
        });
    }
    Ok(Chain::new(links))
}

/// How [`Runtime::load`] words an `init` that returned an error.
const REFUSED: &str = "init refused the config: ";

/// A plugin's failure to load, for the operator: a refused config is named by
/// the file's line and key (not a position in the JSON made from it), with
/// quoted values scrubbed; anything else names the plugin.
fn located(spec: &PluginSpec, err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    match (&spec.config_from, text.split_once(REFUSED)) {
        (Some(origin), Some((head, refusal))) => {
            let (place, refusal) = origin.locate(&spec.config_json, refusal);
            anyhow::anyhow!("{place}: {head}{REFUSED}{refusal}")
        }
        _ => err.context(format!("loading plugin {:?}", spec.name)),
    }
}

/// Builds a generation from a config: plugins loaded and started, backends known
/// (keeping what `previous` knew of backends that did not change).
pub fn build(
    runtime: &Arc<Runtime>,
    config: &Config,
    number: u64,
    previous: Option<&Fleet>,
) -> anyhow::Result<Generation> {
    let chain = load_chain(runtime, &config.plugins)?;
    let shadow = if config.shadow.is_empty() {
        None
    } else {
        Some(Arc::new(
            load_chain(runtime, &config.shadow).context("loading the shadow chain")?,
        ))
    };
    Ok(Generation {
        number,
        chain: Arc::new(chain),
        shadow,
        fleet: Arc::new(Fleet::new(&config.connections, &config.fleet, previous)?),
        listings: Arc::new(Listings::new(config.listing_cache)),
        settings: Settings {
            max_body_size: config.max_body_size,
            view_limits: config.view_limits,
            fanout_timeout: config.fanout_timeout,
            probe_interval: config.probe_interval,
            failover: config.failover.clone(),
            explain: config.explain,
            status: config.status,
            admin: crate::config::AdminAccess {
                key: config.admin_key.clone(),
                keys: config.admin_keys.clone(),
            },
            observe: Observe {
                metrics: config.metrics,
                access_log: config.access_log,
            },
            cors: config.cors.clone(),
        },
    })
}
