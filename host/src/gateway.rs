//! The request pipeline: classify, read, decide, then forward or fan out.
//!
//! Everything a request decides with — the plugin chain, the shadow chain, the
//! fleet, the settings — is one [`Generation`], swapped whole on reload. A
//! request holds the generation it started with until it ends, so a reload
//! never disturbs a request in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body;
use crate::client_limits::{paced, BodyDeadline, BodyTimeout};
use crate::endpoint::{classify, Endpoint, Handling, Rejection};
use crate::error::{error_response, model_not_found, text_response, GatewayError};
use crate::fleet::Fleet;
use crate::intake::{self, body_error};
use crate::plugin::Header;
use crate::policy::{Chain, Outcome, Plan};
use crate::record::Recorder;
use crate::stream::{Framing, Relay};
use crate::upstream::{BackendError, Failure, Upstream};
use crate::{RequestBody, ResponseBody};

/// The response header that explains a decision (with `explain = true`).
pub const DECISION_HEADER: &str = "x-llamagate-decision";

/// Settings of the request pipeline.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body read into memory (blob uploads stream and are exempt).
    pub max_body_size: usize,
    /// Limits on the policy view (`max_options`, `max_view_size`).
    pub view_limits: crate::intake::ViewLimits,
    /// How long a fan-out waits for each backend.
    pub fanout_timeout: Duration,
    /// Interval between backend probes.
    pub probe_interval: Duration,
    /// Add [`DECISION_HEADER`] to responses.
    pub explain: bool,
    /// Serve the status endpoint.
    pub status: bool,
    /// The key status callers must present; `None`: loopback callers only.
    pub admin_key: Option<crate::status::AdminKey>,
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
    pub listings: Arc<crate::fanout::Listings>,
    /// Pipeline settings.
    pub settings: Settings,
}

/// Counts of shadow decisions.
#[derive(Default)]
pub struct ShadowStats {
    /// Requests the shadow chain decided.
    pub decided: AtomicU64,
    /// ... of which it decided as the live chain did.
    pub agreed: AtomicU64,
    /// ... of which it decided otherwise.
    pub differed: AtomicU64,
    /// Requests on which the shadow chain failed.
    pub failed: AtomicU64,
    /// Requests not shadowed because [`SHADOW_QUEUE`] decisions were already pending.
    pub dropped: AtomicU64,
}

/// Shadow decisions pending at once; past this, requests go unshadowed (and
/// are counted), so a slow shadow chain costs no memory or threads.
pub const SHADOW_QUEUE: usize = 64;

/// The outcome of the last reload, for the status endpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadReport {
    /// Unix time, seconds.
    pub at: u64,
    /// Whether the new generation is live.
    pub ok: bool,
    /// What happened (the error, with the plugin's own message, when it failed).
    pub message: String,
    /// Milliseconds from start to swap (or failure).
    pub took_ms: u64,
}

/// Everything a request needs: the current generation and the pooled client.
pub struct Gateway {
    /// Read without a lock on every request; swapped whole on reload.
    current: ArcSwap<Generation>,
    /// The pooled client.
    pub upstream: Upstream,
    next_id: AtomicU64,
    /// Shadow decision counts of the generation in force: a reload starts
    /// them at zero (shadow decisions already under way count into the
    /// counts they started with).
    pub shadow_stats: ArcSwap<ShadowStats>,
    /// Permits for pending shadow decisions ([`SHADOW_QUEUE`]).
    shadow_queue: Arc<tokio::sync::Semaphore>,
    /// The last reload's outcome.
    pub last_reload: Mutex<Option<ReloadReport>>,
    recorder: Option<Recorder>,
}

impl Gateway {
    /// A gateway deciding with `generation`, recording requests if `recorder` is set.
    pub fn new(generation: Generation, upstream: Upstream, recorder: Option<Recorder>) -> Self {
        Gateway {
            current: ArcSwap::from_pointee(generation),
            upstream,
            next_id: AtomicU64::new(1),
            shadow_stats: ArcSwap::default(),
            shadow_queue: Arc::new(tokio::sync::Semaphore::new(SHADOW_QUEUE)),
            last_reload: Mutex::new(None),
            recorder,
        }
    }

    /// The generation in force. Requests hold their own `Arc`, so a swap never
    /// disturbs one in flight.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Makes `generation` the one new requests use.
    pub fn swap(&self, generation: Generation) {
        self.shadow_stats.store(Arc::default());
        self.current.store(Arc::new(generation));
    }

    /// Serves one request.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let uri = request.uri().clone();
        let classified = match classify(request.method(), uri.path(), uri.query()) {
            Ok(c) => c,
            Err(rejection) => return rejected(rejection),
        };
        if classified.path == crate::status::PATH && request.method() == Method::GET {
            return crate::status::answer(self, request.headers(), client);
        }
        let style = classified.style;
        if classified.handling == Handling::Local {
            let body = if request.method() == Method::HEAD {
                ""
            } else {
                "Ollama is running"
            };
            return text_response(StatusCode::OK, body);
        }
        let generation = self.current();
        match self.serve(&generation, request, client, classified).await {
            Ok(response) => response,
            Err(err) => err.into_response(style),
        }
    }

    async fn serve(
        &self,
        generation: &Arc<Generation>,
        request: Request<Incoming>,
        client: SocketAddr,
        classified: crate::endpoint::Classified,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (parts, incoming) = request.into_parts();
        let endpoint = classified.endpoint;
        let query = parts.uri.query();
        let raw_path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let settings = &generation.settings;
        if classified.handling != Handling::RouteStreaming {
            refuse_oversized(&parts.headers, settings.max_body_size)?;
        }
        // The accept loop gives every request its body deadline (`body_timeout`).
        let deadline = parts.extensions.get::<BodyDeadline>();
        let (bytes, upload) = if classified.handling == Handling::RouteStreaming {
            let upload: RequestBody = paced(incoming, deadline).boxed_unsync();
            (Bytes::new(), Some(upload))
        } else {
            let limit = generation.settings.max_body_size;
            let declared = declared_length(&parts.headers);
            (read_body(incoming, limit, deadline, declared).await?, None)
        };
        if let Some(recorder) = &self.recorder {
            recorder.record(&parts.method, &raw_path, &parts.headers, client, &bytes);
        }

        let intake = intake::prepare(intake::Incoming {
            id: self.next_id.fetch_add(1, Ordering::Relaxed).to_string(),
            classified: &classified,
            method: &parts.method,
            query,
            headers: &parts.headers,
            body: &bytes,
            client: client.to_string(),
            limits: settings.view_limits,
        })?;
        let backends = generation.fleet.views();
        let explain = generation.settings.explain;
        // Listings are decided on the request as the client sent it: on-request
        // edits (a stripped token, say) must not hide it from `list-models`.
        let listing_view = (classified.handling == Handling::FanOut).then(|| intake.view.clone());
        let shadow_input = generation.shadow.as_ref().map(|s| {
            (
                s.clone(),
                intake.view.clone(),
                intake.raw_options.clone(),
                backends.clone(),
            )
        });
        let decided = {
            // Each plugin waits for a call slot (fairly across clients), then
            // runs off the async workers.
            let (view, raw) = (intake.view, intake.raw_options);
            generation
                .chain
                .decide(view, raw, backends.into(), bytes.clone(), explain)
                .await?
        };
        if let Some((shadow, view, raw, backends)) = shadow_input {
            self.run_shadow(
                shadow,
                view,
                raw,
                backends,
                bytes.clone(),
                decided.summary(),
            );
        }
        let trace = explain.then(|| decided.trace().join("; "));
        let plan = match decided {
            Outcome::Respond { plugin, reply, .. } => {
                tracing::info!(plugin, status = reply.status, path = %classified.path, "policy answered");
                let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::FORBIDDEN);
                let mut response = error_response(classified.style, status, &reply.message);
                for Header { name, value } in reply.headers {
                    if let (Ok(n), Ok(v)) = (
                        header::HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        response.headers_mut().append(n, v);
                    }
                }
                return Ok(explained(response, trace, None));
            }
            Outcome::Forward(plan) => plan,
        };

        if classified.handling == Handling::FanOut {
            let head = parts.method == Method::HEAD;
            let view = listing_view.unwrap_or_else(|| plan.request.clone());
            let response = crate::fanout::serve(self, generation, &view, head).await?;
            return Ok(explained(response, trace, None));
        }

        let body: Option<Bytes> = if upload.is_some() {
            None
        } else if let Some(span) = intake.form_model.clone() {
            // A form body: only the model's value can be rewritten.
            match (&plan.request.model, plan.model_changed) {
                (Some(model), true) => {
                    let mut out = Vec::with_capacity(bytes.len() + model.len());
                    out.extend_from_slice(&bytes[..span.start]);
                    out.extend_from_slice(model.as_bytes());
                    out.extend_from_slice(&bytes[span.end..]);
                    Some(out.into())
                }
                _ => Some(bytes),
            }
        } else {
            let edits = plan.body_edits(intake.model_field);
            if edits.is_empty() {
                Some(bytes)
            } else {
                Some(
                    body::splice(&bytes, &edits)
                        .map_err(|e| body_error(e, classified.style))?
                        .into(),
                )
            }
        };
        // The backend gets the canonical encoding of the path as classified,
        // so it routes exactly what the policy judged.
        let mut forward_path = match (endpoint, &plan.request.model) {
            (Endpoint::OpenaiModel, Some(m)) if plan.model_changed => {
                format!("/v1/models/{}", crate::api::path::encode(m.as_bytes()))
            }
            _ => classified.forward_path.clone(),
        };
        if let Some(q) = query {
            forward_path.push('?');
            forward_path.push_str(q);
        }
        let mut headers = parts.headers;
        apply_header_edits(&mut headers, &plan);
        if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
            headers.append("x-forwarded-for", v);
        }
        let target = Target {
            method: &parts.method,
            path: &forward_path,
            headers: &headers,
        };
        let change = crate::model_change::change_of(
            endpoint,
            plan.request.model.as_deref(),
            body.as_deref(),
        );
        let (response, backend) = self
            .forward(&generation.fleet, &plan, endpoint, target, body, upload)
            .await?;
        // A pull, create, copy or delete that succeeds is known at once.
        let response = match (change, generation.fleet.get(&backend)) {
            (Some(change), Some(served)) => crate::model_change::Learned {
                backend: served.clone(),
                change,
                listings: generation.listings.clone(),
                upstream: self.upstream.clone(),
                probe_timeout: settings.probe_interval.min(Duration::from_secs(5)),
            }
            .once_succeeded(response),
            _ => response,
        };
        Ok(explained(response, trace, Some(&backend)))
    }

    /// Runs the shadow chain off the request path and counts whether it agrees.
    fn run_shadow(
        &self,
        shadow: Arc<Chain>,
        view: crate::plugin::Request,
        raw: std::collections::BTreeMap<String, String>,
        backends: Vec<crate::plugin::Backend>,
        body: Bytes,
        live: String,
    ) {
        static FAILED: crate::log_limit::LogLimiter =
            crate::log_limit::LogLimiter::new(Duration::from_secs(10));
        let stats = self.shadow_stats.load_full();
        let Ok(pending) = self.shadow_queue.clone().try_acquire_owned() else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let id = view.id.clone();
        tokio::spawn(async move {
            let _pending = pending;
            match shadow.decide(view, raw, backends.into(), body, false).await {
                Ok(outcome) => {
                    stats.decided.fetch_add(1, Ordering::Relaxed);
                    let theirs = outcome.summary();
                    if theirs == live {
                        stats.agreed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.differed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(request = %id, live = %live, shadow = %theirs, "shadow policy decided otherwise");
                    }
                }
                Err(err) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    if FAILED.check("shadow").is_some() {
                        tracing::info!(request = %id, "shadow policy failed: {err}");
                    }
                }
            }
        });
    }

    /// Tries the plan's backends in order; moves on only when one cannot be
    /// reached. Returns the response and the id of the backend that gave it.
    async fn forward(
        &self,
        fleet: &Fleet,
        plan: &Plan,
        endpoint: Endpoint,
        target: Target<'_>,
        body: Option<Bytes>,
        mut upload: Option<RequestBody>,
    ) -> Result<(Response<ResponseBody>, String), GatewayError> {
        let candidates: Vec<String> = match &plan.backends {
            Some((ids, _)) => ids.clone(),
            None if plan.request.model.is_none() => {
                fleet.all().iter().map(|b| b.id.clone()).collect()
            }
            None => Vec::new(),
        };
        if candidates.is_empty() {
            return Err(match &plan.request.model {
                Some(model) => model_not_found(endpoint, model),
                None => GatewayError::Upstream("no backend is configured".into()),
            });
        }
        let mut failures = Vec::new();
        for id in &candidates {
            let Some(backend) = fleet.get(id) else {
                let plugin = plan
                    .backends
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                return Err(GatewayError::PluginAnswer {
                    plugin,
                    message: format!("chose backend {id:?}, which is not configured"),
                });
            };
            let request_body: RequestBody = match (&body, upload.take()) {
                (Some(bytes), _) => full_request_body(bytes.clone()),
                (None, Some(upload)) => upload,
                (None, None) => break,
            };
            let in_flight = backend.start_request();
            match self
                .upstream
                .send(
                    backend,
                    target.method,
                    target.path,
                    target.headers,
                    request_body,
                )
                .await
            {
                Ok(response) => {
                    backend.set_healthy(true);
                    tracing::debug!(backend = %backend.id, path = target.path, status = %response.status(), "forwarded");
                    return Ok((relay(response, &backend.id, in_flight), backend.id.clone()));
                }
                Err(err) => {
                    // Worded as the fan-out words it (`BackendError`).
                    let failure = Failure::of_client(&err);
                    let unreachable = matches!(failure, Failure::Unreachable(_));
                    failures.push(BackendError::at(backend, failure).to_string());
                    if !unreachable {
                        break;
                    }
                    backend.set_healthy(false);
                }
            }
        }
        Err(GatewayError::Upstream(failures.join("; ")))
    }
}

/// Where a forwarded request goes on the backend.
struct Target<'a> {
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
}

/// The router's answer to a request it cannot route, as Ollama's gives it.
fn rejected(rejection: Rejection) -> Response<ResponseBody> {
    match rejection {
        Rejection::MethodNotAllowed => {
            text_response(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed")
        }
        Rejection::BadPath => text_response(StatusCode::BAD_REQUEST, "400 Bad Request"),
        Rejection::Redirect { status, location } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TEMPORARY_REDIRECT);
            let mut response = text_response(status, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
    }
}

/// Refuses a declared `Content-Length` over `limit` before any of the body is
/// read, so `Expect: 100-continue` gets 413 instead of `100 Continue`.
fn refuse_oversized(headers: &HeaderMap, limit: usize) -> Result<(), GatewayError> {
    match declared_length(headers) {
        Some(len) if len > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// The body length the client declared (`Content-Length`), if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn too_large(limit: usize) -> GatewayError {
    GatewayError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than llamagate's limit of {limit} bytes (max_body_size)"),
    )
}

/// Reads a whole body, refusing more than `limit` bytes, and cutting it with a
/// 408 when it falls behind `deadline`'s pace.
async fn read_body(
    incoming: Incoming,
    limit: usize,
    deadline: Option<&BodyDeadline>,
    declared: Option<u64>,
) -> Result<Bytes, GatewayError> {
    let failed = |e: crate::BoxError| {
        if e.is::<BodyTimeout>() {
            GatewayError::client(StatusCode::REQUEST_TIMEOUT, e.to_string())
        } else {
            GatewayError::client(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    };
    let mut body = paced(incoming, deadline);
    // One buffer of the declared size: a body costs its own size once, not a
    // list of frames plus a copy.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(failed)?.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Adds the decision header when explaining: each plugin's part, then the backend.
fn explained(
    mut response: Response<ResponseBody>,
    trace: Option<String>,
    backend: Option<&str>,
) -> Response<ResponseBody> {
    let Some(mut text) = trace else {
        return response;
    };
    if let Some(backend) = backend {
        text.push_str(&format!("; served by {backend}"));
    }
    let printable: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&printable) {
        response.headers_mut().insert(DECISION_HEADER, value);
    }
    response
}

fn apply_header_edits(headers: &mut HeaderMap, plan: &Plan) {
    for name in &plan.remove_headers {
        headers.remove(name);
    }
    for (name, value) in &plan.set_headers {
        headers.insert(name.clone(), value.clone());
    }
}

fn full_request_body(bytes: Bytes) -> RequestBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Turns a backend's response into the client's, passing the body through.
fn relay(
    response: Response<Incoming>,
    backend: &str,
    in_flight: crate::fleet::InFlight,
) -> Response<ResponseBody> {
    let (mut parts, incoming) = response.into_parts();
    let framing = Framing::of(&parts.headers);
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TRAILER,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
    ] {
        parts.headers.remove(name);
    }
    if framing != Framing::Opaque {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let body = Relay::new(incoming, framing, backend.to_string(), in_flight);
    Response::from_parts(parts, body.boxed_unsync())
}

/// A JSON response assembled by llamagate itself (an empty body for `HEAD`).
pub fn json(status: StatusCode, value: &serde_json::Value, head: bool) -> Response<ResponseBody> {
    let text = if head {
        Bytes::new()
    } else {
        Bytes::from(value.to_string())
    };
    crate::error::json_response(status, "application/json; charset=utf-8", text)
}
