//! Starting llamagate: build the first generation, start probes, reloads and
//! the accept loop.

pub mod admin;
pub mod client_limits;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin::reload::Reloader;
use crate::api::endpoint::ApiStyle;
use crate::api::error::error_response;
use crate::config::{Config, Overrides};
use crate::log_limit::LogLimiter;
use crate::plugin::Runtime;
use crate::proxy::body_pace::BodyDeadline;
use crate::proxy::record::Recorder;
use crate::proxy::state::Gateway;
use crate::server::client_limits::{
    shed_response, Activity, ClientLimits, ConnectionCap, Expiry, Tracked, Watched,
};
use crate::upstream::Upstream;
use crate::ResponseBody;

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
        tokio::task::spawn_blocking(move || {
            crate::proxy::generation::build(&runtime, &config, 1, None)
        })
        .await
        .context("starting the gateway")??
    };
    let recorder = record.as_deref().map(Recorder::open).transpose()?;
    let upstream = Upstream::new(config.connect_timeout);
    let gateway = Arc::new(Gateway::new(generation, upstream.clone(), recorder));

    let limits = &config.client_limits;
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        idle_timeout = ?limits.idle_timeout,
        body_timeout = ?limits.body.timeout,
        body_min_rate = limits.body.min_rate,
        "client limits"
    );
    // Before "listening" is announced: SIGHUP must reload, not kill, from then on.
    if let Some(overrides) = reload_from {
        let reloader = Arc::new(Reloader::new(runtime, gateway.clone(), overrides));
        tokio::spawn(reloader.clone().on_hangup());
        if config.watch {
            tokio::spawn(reloader.watch(config.watched_files.clone()));
        }
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    // Bound before llamagate says it listens: a given admin address that is
    // taken stops start-up before anything is announced.
    let admin = match config.admin_listen {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(admin) => {
                tracing::info!(
                    admin_address = %admin.local_addr()?,
                    "admin endpoint is listening (/livez /readyz /metrics /llamagate/status)"
                );
                Some(admin)
            }
            // A default address that is taken (a second llamagate on the
            // host) costs the admin endpoint, not the gateway.
            Err(e) if !config.admin_listen_given => {
                tracing::warn!(
                    admin_address = %addr,
                    "admin endpoint not started: {e}; set admin_listen (or \"off\")"
                );
                None
            }
            Err(e) => return Err(e).with_context(|| format!("admin_listen: listening on {addr}")),
        },
    };
    tracing::info!(
        address = %listener.local_addr()?,
        backends = config.connections.len(),
        plugins = ?gateway.current().chain.names(),
        "llamagate is listening"
    );
    for (id, url) in &config.connections {
        let url = crate::config::redact_url(url);
        tracing::info!(backend = %id, %url, "backend");
    }
    tokio::spawn(probe_loop(gateway.clone(), upstream));
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(admin, gateway.clone()));
    }
    serve(
        listener,
        gateway,
        shutdown,
        config.shutdown_grace,
        config.client_limits,
    )
    .await
}

/// Probes the current generation's backends, forever: each at
/// `probe_interval`, or at `down_probe_interval` while it is down or its
/// breaker is open, so a restarted backend is back within a second or two.
/// After each round, the `[[hot]]` models are loaded where they are missing.
async fn probe_loop(gateway: Arc<Gateway>, upstream: Upstream) {
    loop {
        let generation = gateway.current();
        let interval = generation.settings.probe_interval;
        let timeout = interval.min(std::time::Duration::from_secs(5));
        generation
            .fleet
            .probe_due(&upstream, interval, timeout)
            .await;
        generation.fleet.keep_warm(&upstream, timeout);
        let next = generation.fleet.probe_tick(interval);
        drop(generation);
        tokio::time::sleep(next).await;
    }
}

/// The accept loop's warnings (shed connections, accept errors): one line per
/// kind every few seconds, with a count of those held back.
static ACCEPT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(5));

/// Serves connections from `listener` within `limits` until `shutdown`, then
/// closes the listener (new connections are refused) and lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ClientLimits,
) -> anyhow::Result<()> {
    // hyper's own header_read_timeout stays off (no timer is set): it would
    // also close idle keep-alive connections; `client_limits` explains.
    let builder = auto::Builder::new(TokioExecutor::new());
    let cap = ConnectionCap::new(limits.max_connections);
    // Every connection holds a receiver; `closed()` resolves when all are gone.
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = cap.admit(client.ip()) else {
            shed(stream, &cap);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = {
            let (gateway, activity) = (gateway.clone(), activity.clone());
            service_fn(move |request: Request<Incoming>| {
                let in_flight = activity.begin(request.version() == Version::HTTP_2);
                let gateway = gateway.clone();
                async move {
                    let response = serve_request(&gateway, request, client, limits).await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| Tracked::new(body, in_flight)),
                    )
                }
            })
        };
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let connection = builder.serve_connection(io, service).into_owned();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            // Set once the connection was asked to close gracefully (shutdown,
            // or idle): from then on it ends by itself, or is dropped when it
            // still has no request in flight an idle_timeout later (an HTTP/2
            // peer that ignores GOAWAY).
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    _ = stopped.wait_for(|stop| *stop), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    expiry = activity.expired(limits.header_timeout, limits.idle_timeout), if !closing => {
                        if expiry == Expiry::Header {
                            tracing::debug!(%client, "closing: no complete request headers within header_timeout");
                            break Ok(());
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tokio::time::sleep(limits.idle_timeout), if closing => {
                        if activity.in_flight() == 0 {
                            break Ok(());
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%client, "connection ended: {e}");
            }
        });
    }
    // Stop accepting at once: a closed listener refuses new connections,
    // where an open one nobody accepts from would leave them hanging in its
    // backlog for the whole grace period.
    drop(listener);
    drop(stopped);
    tracing::info!(
        ?grace,
        "shutting down: no new connections; waiting for requests in flight"
    );
    let _ = stop.send(true);
    if tokio::time::timeout(grace, stop.closed()).await.is_err() {
        tracing::warn!("requests still in flight after {grace:?}; closing them");
    }
    Ok(())
}

/// Serves one request with its body deadline; a request whose body was cut
/// for arriving too slowly is answered 408 and its connection closed.
async fn serve_request(
    gateway: &Gateway,
    mut request: Request<Incoming>,
    client: std::net::SocketAddr,
    limits: ClientLimits,
) -> Response<ResponseBody> {
    let deadline = BodyDeadline::new(limits.body);
    request.extensions_mut().insert(deadline.clone());
    let version = request.version();
    let mut response =
        if crate::admin::status::asks_for_status(request.method(), request.uri().path()) {
            crate::admin::status::answer(gateway, request.headers(), client)
        } else {
            crate::proxy::pipeline::handle(gateway, request, client).await
        };
    if deadline.expired() {
        if response.status() != StatusCode::REQUEST_TIMEOUT {
            // A buffered body's 408 comes from the gateway in the client's API
            // shape; what fails downstream of a cut upload stream (a backend
            // error) is replaced here. Only blob uploads stream, and they
            // speak Ollama's API.
            let message = "request body arrived too slowly (body_timeout, body_min_rate)";
            response = error_response(ApiStyle::Ollama, StatusCode::REQUEST_TIMEOUT, message);
        }
        if version < Version::HTTP_2 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Closes a connection over `max_connections` at once, after a best-effort
/// 503 that does not wait for the socket.
fn shed(stream: TcpStream, cap: &ConnectionCap) {
    let _ = stream.try_write(&shed_response());
    crate::warn_limited!(
        ACCEPT_LOG,
        "shed",
        open = cap.open(),
        max_connections = cap.max(),
        "shedding new connections: max_connections reached"
    );
}

/// Backs off after a failed `accept` (out of descriptors, mostly) without
/// flooding the log.
async fn accept_failed(err: &std::io::Error) {
    if crate::server::client_limits::out_of_descriptors(err) {
        crate::warn_limited!(
            ACCEPT_LOG,
            "descriptors",
            "accept failed: out of file descriptors ({err}); pausing accepts briefly \
             (raise `ulimit -n`, or lower max_connections)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        crate::warn_limited!(ACCEPT_LOG, "accept", "accept failed: {err}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
