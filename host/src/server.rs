//! Accepting connections and starting the gateway.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::fleet::Fleet;
use crate::gateway::{Gateway, Settings};
use crate::plugin::Runtime;
use crate::policy::Chain;
use crate::upstream::Upstream;

/// Compiles and starts every plugin of the chain; fails with the plugin's message.
pub fn load_chain(runtime: &Arc<Runtime>, config: &Config) -> anyhow::Result<Chain> {
    let mut plugins = Vec::new();
    for spec in &config.plugins {
        let wasm = spec.source.load()?;
        let plugin = runtime
            .load(
                &spec.name,
                &wasm,
                spec.config_json.clone(),
                spec.limits.clone(),
            )
            .with_context(|| format!("loading plugin {:?}", spec.name))?;
        plugins.push(plugin);
    }
    Ok(Chain::new(plugins))
}

/// Builds a gateway from a config: plugins loaded, backends known, probes not started.
pub fn build_gateway(config: &Config) -> anyhow::Result<Arc<Gateway>> {
    let runtime = Runtime::new()?;
    let chain = load_chain(&runtime, config)?;
    let fleet = Arc::new(Fleet::new(&config.connections)?);
    let upstream = Upstream::new(config.connect_timeout);
    let settings = Settings {
        max_body_size: config.max_body_size,
        fanout_timeout: config.fanout_timeout,
    };
    Ok(Arc::new(Gateway::new(fleet, upstream, chain, settings)))
}

/// Runs llamagate with `config` until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Plugin start-up runs guest code, which must stay off the async workers.
    let gateway = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || build_gateway(&config))
            .await
            .context("starting the gateway")??
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        backends = config.connections.len(),
        plugins = ?gateway.chain().names(),
        "llamagate is listening"
    );
    for (id, url) in &config.connections {
        tracing::info!(backend = %id, %url, "backend");
    }
    tokio::spawn(
        gateway
            .fleet
            .clone()
            .probe_loop(gateway.upstream.clone(), config.probe_interval),
    );
    serve(listener, gateway, shutdown).await
}

/// Serves connections from `listener` until `shutdown`, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
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
    tracing::info!("shutting down: waiting for requests in flight");
    graceful.shutdown().await;
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
