//! Starting llamagate: build the first generation, start probes, reloads and
//! the accept loop.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::{Config, Overrides, PluginSpec};
use crate::fleet::Fleet;
use crate::gateway::{Gateway, Generation, Settings};
use crate::plugin::Runtime;
use crate::policy::{Chain, Link};
use crate::record::Recorder;
use crate::reload::Reloader;
use crate::upstream::Upstream;

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
            .with_context(|| format!("loading plugin {:?}", spec.name))?;
        links.push(Link {
            plugin,
            on_failure: spec.on_failure,
        });
    }
    Ok(Chain::new(links))
}

/// Builds a generation from a config: plugins loaded and started, backends known
/// (keeping what `previous` knew of backends that did not change).
pub fn build_generation(
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
        fleet: Arc::new(Fleet::new(&config.connections, previous)?),
        settings: Settings {
            max_body_size: config.max_body_size,
            fanout_timeout: config.fanout_timeout,
            probe_interval: config.probe_interval,
            explain: config.explain,
            status: config.status,
        },
    })
}

/// How `run` was started.
pub struct Launch {
    /// The configuration to serve.
    pub config: Config,
    /// Where the configuration came from, to reload it (`None`: no reloads).
    pub reload_from: Option<Overrides>,
    /// Record requests to this file.
    pub record: Option<PathBuf>,
}

/// Runs llamagate until `shutdown` resolves.
pub async fn run(launch: Launch, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Launch {
        config,
        reload_from,
        record,
    } = launch;
    let runtime = Runtime::new()?;
    // Plugin start-up runs guest code, which must stay off the async workers.
    let generation = {
        let (runtime, config) = (runtime.clone(), config.clone());
        tokio::task::spawn_blocking(move || build_generation(&runtime, &config, 1, None))
            .await
            .context("starting the gateway")??
    };
    let recorder = record.as_deref().map(Recorder::open).transpose()?;
    let upstream = Upstream::new(config.connect_timeout);
    let gateway = Arc::new(Gateway::new(generation, upstream.clone(), recorder));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        backends = config.connections.len(),
        plugins = ?gateway.current().chain.names(),
        "llamagate is listening"
    );
    for (id, url) in &config.connections {
        tracing::info!(backend = %id, %url, "backend");
    }
    tokio::spawn(probe_loop(gateway.clone(), upstream));
    if let Some(overrides) = reload_from {
        let reloader = Arc::new(Reloader::new(runtime, gateway.clone(), overrides));
        tokio::spawn(reloader.clone().on_hangup());
        if config.watch {
            tokio::spawn(reloader.watch(config.watched_files.clone()));
        }
    }
    serve(listener, gateway, shutdown, config.shutdown_grace).await
}

/// Probes the current generation's backends on its interval, forever.
async fn probe_loop(gateway: Arc<Gateway>, upstream: Upstream) {
    loop {
        let generation = gateway.current();
        let interval = generation.settings.probe_interval;
        generation
            .fleet
            .probe_all(&upstream, interval.min(std::time::Duration::from_secs(5)))
            .await;
        drop(generation);
        tokio::time::sleep(interval).await;
    }
}

/// Serves connections from `listener` until `shutdown`, then lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't die.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, client).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%client, "connection ended: {e}");
            }
        });
    }
    tracing::info!(?grace, "shutting down: waiting for requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {grace:?}; closing them");
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
