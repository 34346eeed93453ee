//! `llamagate plugin check` and `llamagate plugin test`: try a plugin before
//! swapping it in.
//!
//! - `check FILE.wasm [--with-config C]`: does it compile, implement the
//!   `llamagate:policy` world, and accept this config in `init`?
//! - `test FILE.wasm --requests R.jsonl [--config llamagate.toml] [--alone]`:
//!   replays requests recorded with `--record` through the chain (the configured
//!   one with FILE appended, or FILE alone), offline, and prints each decision —
//!   what a new policy would have done to yesterday's traffic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::api::endpoint::{classify, Rejection};
use crate::api::error::GatewayError;
use crate::api::intake;
use crate::config::{Config, OnFailure, Overrides, PluginSource, PluginSpec};
use crate::fleet::Fleet;
use crate::plugin::{Limits, Runtime};
use crate::policy::{Chain, Outcome};
use crate::proxy::generation::load_chain;

/// Reads a plugin's config: a `.json` file, or a `.toml` file whose whole table
/// is the config. `None` gives `{}`.
pub fn read_plugin_config(path: Option<&Path>) -> anyhow::Result<String> {
    let Some(path) = path else {
        return Ok("{}".into());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        Ok(serde_json::to_string(&table)?)
    } else {
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        Ok(value.to_string())
    }
}

/// `llamagate plugin check`.
pub fn check(file: &Path, plugin_config: Option<&Path>) -> anyhow::Result<()> {
    let config = read_plugin_config(plugin_config)?;
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = Runtime::new()?;
    let started = Instant::now();
    let plugin = runtime.load(&name_of(file), &wasm, config, Limits::default())?;
    println!(
        "ok: {} implements llamagate:policy@{} and its init accepted the config ({} KiB, loaded in {} ms)",
        file.display(),
        plugin.contract(),
        wasm.len() / 1024,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// What `llamagate plugin test` replays against.
pub struct TestArgs {
    /// The plugin to try.
    pub file: PathBuf,
    /// Recorded requests (JSON lines).
    pub requests: PathBuf,
    /// The gateway's configuration, if any (for its backends and chain).
    pub overrides: Overrides,
    /// Run the plugin alone instead of appending it to the configured chain.
    pub alone: bool,
    /// The plugin's config file.
    pub plugin_config: Option<PathBuf>,
}

/// `llamagate plugin test`: prints one line per request and a summary.
pub fn test(args: TestArgs) -> anyhow::Result<()> {
    let runtime = Runtime::new()?;
    let spec = PluginSpec {
        name: name_of(&args.file),
        source: PluginSource::File(args.file.clone()),
        config_json: read_plugin_config(args.plugin_config.as_deref())?,
        limits: Limits::default(),
        on_failure: OnFailure::Closed,
        config_from: None,
    };
    let (chain, fleet) = if args.overrides.config.is_some() || !args.overrides.proxies.is_empty() {
        let config = Config::load(&args.overrides)?;
        let mut specs = if args.alone {
            Vec::new()
        } else {
            config.plugins.clone()
        };
        specs.push(spec);
        (
            load_chain(&runtime, &specs)?,
            Fleet::new(&config.connections, &config.fleet, None)?,
        )
    } else {
        (
            load_chain(&runtime, &[spec])?,
            Fleet::new(&[], &Default::default(), None)?,
        )
    };
    let chain = Arc::new(chain);
    println!("chain: {}", chain.names().join(" -> "));
    let recorded = crate::proxy::record::read(&args.requests)?;
    let (mut forwarded, mut answered, mut not_found, mut failed) = (0, 0, 0, 0);
    for (i, entry) in recorded.iter().enumerate() {
        let line = format!("#{:<4} {} {}", i + 1, entry.method, entry.path);
        match replay(&chain, &fleet, entry, i) {
            Ok((verdict, trace, kind)) => {
                match kind {
                    Verdict::Forward => forwarded += 1,
                    Verdict::Answer => answered += 1,
                    Verdict::NotFound => not_found += 1,
                }
                println!("{line}  ->  {verdict}\n       {trace}");
            }
            Err(err) => {
                failed += 1;
                println!("{line}  ->  error {}: {err}", err.status().as_u16());
            }
        }
    }
    println!(
        "{} requests: {forwarded} forwarded, {answered} answered by the policy, \
         {not_found} not found, {failed} errors",
        recorded.len()
    );
    Ok(())
}

/// What happened to a replayed request.
enum Verdict {
    Forward,
    Answer,
    NotFound,
}

/// Decides one recorded request: (verdict, per-plugin trace, kind).
fn replay(
    chain: &Chain,
    fleet: &Fleet,
    entry: &crate::proxy::record::Recorded,
    index: usize,
) -> Result<(String, String, Verdict), GatewayError> {
    let bad = |m: String| GatewayError::client(http::StatusCode::BAD_REQUEST, m);
    let method = Method::from_bytes(entry.method.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let (raw_path, query) = match entry.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (entry.path.as_str(), None),
    };
    let classified = classify(&method, raw_path, query).map_err(|rejection| match rejection {
        Rejection::MethodNotAllowed => GatewayError::client(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "405 method not allowed",
        ),
        Rejection::BadPath => bad("invalid URL escape in the request path".into()),
        Rejection::Redirect { status, location } => GatewayError::client(
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::TEMPORARY_REDIRECT),
            format!("redirected to {location}"),
        ),
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &entry.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let body = entry.body_bytes().map_err(|e| bad(e.to_string()))?;
    let intake = intake::prepare(intake::Incoming {
        id: (index + 1).to_string(),
        classified: &classified,
        method: &method,
        query,
        headers: &headers,
        body: &body,
        client: entry.client.clone(),
        limits: intake::ViewLimits::default(),
    })?;
    let facts: std::sync::Arc<dyn crate::plugin::Facts> =
        std::sync::Arc::new(crate::plugin::Snapshot::new(fleet.views()));
    let outcome =
        chain.decide_blocking(intake.view, intake.raw_options, &facts, &body.into(), true)?;
    let trace = outcome.trace().join("; ");
    Ok(match outcome {
        Outcome::Respond { plugin, reply, .. } => (
            format!(
                "{} {:?} (answered by {plugin})",
                reply.status, reply.message
            ),
            trace,
            Verdict::Answer,
        ),
        Outcome::Forward(plan) => {
            let model = plan.request.model.as_deref().unwrap_or("-");
            match (&plan.backends, &plan.request.model) {
                (Some(choice), _) if !choice.backends.is_empty() => (
                    format!(
                        "forward to {}  [model {model}]",
                        choice.backends.join(", then ")
                    ),
                    trace,
                    Verdict::Forward,
                ),
                (_, Some(_)) => (
                    format!("404 model {model:?} not found"),
                    trace,
                    Verdict::NotFound,
                ),
                (_, None) => ("forward to any backend".into(), trace, Verdict::Forward),
            }
        }
    })
}

fn name_of(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into())
}
