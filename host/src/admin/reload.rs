//! Hot reload: on SIGHUP, and when the config file or a plugin file changes,
//! build a whole new generation off the request path — read the config, compile
//! and link every plugin, run each `init` — and only then swap it in.
//!
//! Requests in flight finish on the generation they started with. If anything
//! fails (config, compile, link, init), nothing is swapped: the old generation
//! keeps serving, the error is logged and shown on `/llamagate/status`.
//! Changes to `listen` and `connect_timeout` need a restart. Every reload
//! re-probes the backends right after the swap (the reload is reported once
//! that probe is done), so what they serve is known without waiting a
//! `probe_interval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, Overrides};
use crate::plugin::Runtime;
use crate::proxy::generation;
use crate::proxy::state::{Gateway, ReloadReport};

/// How often watched files are checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The longest a reload waits for its re-probe of the backends.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Rebuilds and swaps generations.
pub struct Reloader {
    runtime: Arc<Runtime>,
    gateway: Arc<Gateway>,
    overrides: Overrides,
    /// One reload at a time; also holds the files the last good config names.
    watched: tokio::sync::Mutex<Vec<PathBuf>>,
}

impl Reloader {
    /// A reloader reading the config as `overrides` say (file, flags, environment).
    pub fn new(runtime: Arc<Runtime>, gateway: Arc<Gateway>, overrides: Overrides) -> Reloader {
        Reloader {
            runtime,
            gateway,
            overrides,
            watched: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Builds a new generation and swaps it in; on failure keeps the old one.
    /// Returns whether the new generation is live.
    pub async fn reload(&self, why: &str) -> bool {
        let mut watched = self.watched.lock().await;
        let started = Instant::now();
        let previous = self.gateway.current();
        let (runtime, overrides) = (self.runtime.clone(), self.overrides.clone());
        let number = previous.number + 1;
        let built = tokio::task::spawn_blocking(move || {
            let config = Config::load(&overrides)?;
            let generation = generation::build(&runtime, &config, number, Some(&previous.fleet))?;
            anyhow::Ok((generation, config))
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let took_ms = started.elapsed().as_millis() as u64;
        let report = match built {
            Ok((generation, config)) => {
                let plugins = generation.chain.names().join(", ");
                let fleet = generation.fleet.clone();
                let probe_timeout = generation.settings.probe_interval.min(PROBE_TIMEOUT);
                // What the backends serve now, not at the last probe: a model
                // added behind llamagate's back is routable once the new
                // generation is. Probed before the swap, so the generation
                // number and the reload report (both on status) change together.
                fleet.probe_all(&self.gateway.upstream, probe_timeout).await;
                *watched = config.watched_files;
                tracing::info!(
                    generation = number,
                    took_ms,
                    "reloaded ({why}): plugins [{plugins}]"
                );
                let report = ReloadReport {
                    at: unix_now(),
                    ok: true,
                    message: format!("generation {number} ({why}): plugins [{plugins}]"),
                    took_ms,
                };
                // The report first: whoever sees the new generation sees its report.
                *self.gateway.last_reload.lock().unwrap() = Some(report.clone());
                self.gateway.swap(generation);
                report
            }
            Err(err) => {
                tracing::error!(
                    "reload ({why}) failed; the previous configuration stays live: {err:#}"
                );
                ReloadReport {
                    at: unix_now(),
                    ok: false,
                    message: format!("{err:#}"),
                    took_ms,
                }
            }
        };
        let ok = report.ok;
        *self.gateway.last_reload.lock().unwrap() = Some(report);
        let outcome = if ok { "ok" } else { "failed" };
        self.gateway
            .metrics
            .reloads
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        ok
    }

    /// Reloads on every SIGHUP. The handler is installed when this is called,
    /// not when the future first runs: call it before announcing that
    /// llamagate listens, or an early SIGHUP would end the process (its
    /// default action). Needs a Tokio runtime.
    pub fn on_hangup(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send {
        #[cfg(unix)]
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        async move {
            #[cfg(unix)]
            {
                let Ok(mut hangups) = hangups else {
                    tracing::warn!("cannot listen for SIGHUP; reload by editing the files instead");
                    return;
                };
                while hangups.recv().await.is_some() {
                    self.reload("SIGHUP").await;
                }
            }
        }
    }

    /// Reloads when a watched file's size or modification time changes, once it
    /// has stopped changing (so a half-written file is not loaded).
    pub async fn watch(self: Arc<Self>, files: Vec<PathBuf>) {
        *self.watched.lock().await = files;
        let mut seen = self.stamps().await;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = self.stamps().await;
            if now == seen {
                continue;
            }
            // Let a writer finish: reload only once two looks agree.
            tokio::time::sleep(WATCH_INTERVAL / 2).await;
            let settled = self.stamps().await;
            if settled != now {
                continue;
            }
            self.reload("files changed").await;
            seen = self.stamps().await;
        }
    }

    async fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let files = self.watched.lock().await.clone();
        files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
