//! The life of one request, phase by phase, in the order the phases run.
//!
//! [`handle`] is the whole story; each phase is one function below it, with
//! what it may do and what it hands on (the way pingora's `ProxyHttp`
//! documents its hooks):
//!
//! 1. [`classify`]: which endpoint of the table ([`crate::api::endpoint`]) the
//!    method and path are, read as Ollama's router reads them.
//! 2. [`read`]: the body, bounded in size and pace, and the view the policy
//!    decides on ([`crate::api::intake`]).
//! 3. [`decide`]: the plugin chain's decision, and the shadow chain's beside it
//!    ([`crate::proxy::shadow`]). A listing leaves here for the fan-out
//!    ([`crate::proxy::fanout`]).
//! 4. [`admit`]: the backends the request may be sent to now, in order. A
//!    pass-through today; slots and queues come with fleet admission.
//! 5. [`forward`]: the request as the policy left it, sent to the first
//!    candidate that can be reached; every attempt is kept ([`Attempts`]).
//! 6. [`relay`]: the backend's answer passed through frame by frame.
//! 7. [`finish`]: the outcome recorded once per request.
//!
//! Everything a request decides with is one [`Generation`], swapped whole on
//! reload: a request holds the generation it started with until it ends.
//! An error in any phase becomes the client's answer in its API's style.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::api::body;
use crate::api::cors;
use crate::api::endpoint::{
    classify as classify_path, ApiStyle, Classified, Endpoint, Handling, ModelAt, Rejection,
};
use crate::api::error::{error_response, model_not_found, text_response, GatewayError};
use crate::api::intake::{self, body_error, Intake};
use crate::config::fleet::Failover;
use crate::fleet::admission::{Admission, Ask, Permit, Refusal};
use crate::fleet::{BackendState, Fleet, InFlight, Pass};
use crate::metrics::{status_class, Metrics, RequestLabels};
use crate::plugin::{Facts, Header};
use crate::policy::{Outcome, Plan};
use crate::proxy::body_pace::{paced, BodyDeadline, BodyTimeout};
use crate::proxy::generation::{Generation, Observe};
use crate::proxy::model_change;
use crate::proxy::relay::{Framing, Relay};
use crate::proxy::shadow::ShadowInput;
use crate::proxy::state::Gateway;
use crate::proxy::tokens::Counter;
use crate::upstream::{Attempts, BackendError, Failure};
use crate::{RequestBody, ResponseBody};

/// The response header that explains a decision (with `explain = true`).
pub const DECISION_HEADER: &str = "x-llamagate-decision";

/// The header that carries a request's id: the client's, when it sent a
/// usable one, else one llamagate makes. It reaches the backend, the plugins
/// (among the headers), the log line and the client's answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Serves one request: the phases in order.
pub async fn handle(
    gateway: &Gateway,
    mut request: Request<Incoming>,
    client: SocketAddr,
) -> Response<ResponseBody> {
    let generation = gateway.current();
    let settings = &generation.settings;
    let observe = settings.observe;
    let mut record = Record::start(request.method(), client);
    if observe.access_log {
        record.path = request.uri().path().to_string();
    }
    let id = request_id(request.headers(), gateway);
    request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    record.request_id = id.to_str().unwrap_or_default().to_string();
    let cors = settings.cors.check(
        request.method(),
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
    );
    let mut response = match cors {
        cors::Check::Refused => cors::refused(),
        cors::Check::Preflight(ref origin) => settings.cors.preflight(origin.clone()),
        cors::Check::NotCors | cors::Check::Allowed(_) => {
            // llamagate has decided the origin: the backend's own list must
            // not refuse it (see `api::cors`).
            request.headers_mut().remove(header::ORIGIN);
            match serve(gateway, &generation, request, client, &mut record).await {
                Ok(response) => response,
                Err(err) => err.into_response(record.style),
            }
        }
    };
    if let cors::Check::Allowed(origin) = cors {
        settings.cors.mark(origin, response.headers_mut());
    }
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    if !observe.metrics && !observe.access_log {
        return response;
    }
    finish(record, response, gateway, observe)
}

/// The client's `x-request-id` when it is one value of 1 to 128 visible
/// ASCII characters; else a new one (`lg-` and 16 hex digits, unique within
/// the process and unlikely to repeat across processes).
fn request_id(headers: &HeaderMap, gateway: &Gateway) -> HeaderValue {
    let mut sent = headers.get_all(REQUEST_ID_HEADER).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len()) && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let mut h = SEED.get_or_init(std::hash::RandomState::new).build_hasher();
    h.write(gateway.next_id().as_bytes());
    HeaderValue::try_from(format!("lg-{:016x}", h.finish()))
        .unwrap_or_else(|_| HeaderValue::from_static("lg-0"))
}

async fn serve(
    gateway: &Gateway,
    generation: &Arc<Generation>,
    request: Request<Incoming>,
    client: SocketAddr,
    record: &mut Record,
) -> Result<Response<ResponseBody>, GatewayError> {
    let classified = match classify(&request) {
        Ok(classified) => classified,
        Err(rejection) => return Ok(rejected(rejection)),
    };
    record.endpoint = Some(classified.endpoint);
    record.style = classified.style;
    if classified.handling == Handling::Local {
        return Ok(local(request.method()));
    }
    let (mut read, upload) = read(gateway, generation, request, client, classified).await?;
    record.model_asked = read.view.as_ref().and_then(|v| v.model.clone());
    let (outcome, trace) = decide(gateway, generation, &mut read).await?;
    let plan = match outcome {
        Outcome::Respond { plugin, reply, .. } => {
            tracing::info!(plugin, status = reply.status, path = %read.classified.path, "policy answered");
            return Ok(explained(
                answered(read.classified.style, reply),
                trace,
                None,
            ));
        }
        Outcome::Forward(plan) => plan,
    };
    if let Handling::FanOut(merge) = read.classified.handling {
        let head = read.method == Method::HEAD;
        let view = read.listing_view.as_ref().unwrap_or(&plan.request);
        let response = crate::proxy::fanout::serve(gateway, generation, view, merge, head).await?;
        return Ok(explained(response, trace, None));
    }
    record.model_served = plan.request.model.clone();
    record.model_label = match plan.request.model.as_deref() {
        Some(m) if generation.fleet.lists(m) => llamagate_sdk::names::display(m),
        Some(m) => {
            record.model_unlisted = Some(llamagate_sdk::names::display(m));
            "other".into()
        }
        None => String::new(),
    };
    record.principal = plan.principal.clone();
    let candidates = admit(&generation.fleet, &plan, read.classified.endpoint)?;
    let read_row = read.classified.row;
    let mut outgoing = Outgoing::of(read, upload, &plan, client, &generation.settings.failover)?;
    outgoing.slot = slot_for(read_row, &plan, client, generation.fleet.queue());
    let change = model_change::change_of(
        outgoing.endpoint,
        plan.request.model.as_deref(),
        outgoing.body.as_deref(),
    );
    if every_backend(&plan) && crate::proxy::fleetwide::applies(outgoing.endpoint, candidates.len())
    {
        if let Some(body) = outgoing.body.clone() {
            record.backend = Some(
                candidates
                    .iter()
                    .map(|b| b.id.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            let call = crate::proxy::fleetwide::Call {
                endpoint: outgoing.endpoint,
                method: &outgoing.method,
                path: &outgoing.path,
                headers: &outgoing.headers,
                body,
                streaming: plan.request.streaming,
                change,
            };
            let response = crate::proxy::fleetwide::serve(
                &gateway.upstream,
                &generation.listings,
                candidates,
                call,
                probe_timeout(generation),
            )
            .await;
            return Ok(explained(response, trace, None));
        }
    }
    let forwarded = forward(
        gateway,
        generation,
        candidates,
        outgoing,
        &mut record.attempts,
    )
    .await?;
    let backend = forwarded.backend.clone();
    record.backend = Some(backend.id.clone());
    let response = relay(forwarded);
    let response = match (plan.model_changed, record.model_asked.as_deref()) {
        (true, Some(asked)) => kept_alias(response, read_row, asked),
        _ => response,
    };
    // A pull, create, copy or delete that succeeds is known at once.
    let response = match change {
        Some(change) => model_change::Learned {
            backend: backend.clone(),
            change,
            listings: generation.listings.clone(),
            upstream: gateway.upstream.clone(),
            probe_timeout: probe_timeout(generation),
        }
        .once_succeeded(response),
        None => response,
    };
    Ok(explained(response, trace, Some(&backend.id)))
}

/// Whether the policy asked for its pull or delete to reach every backend it
/// chose (rather than the first that answers). Contract 0.3.0 lets a plugin
/// say so; older plugins place such calls on one backend, as before.
fn every_backend(plan: &Plan) -> bool {
    plan.enforce.every_backend == Some(true)
}

/// How long the re-probe after a model change may take.
fn probe_timeout(generation: &Generation) -> Duration {
    generation
        .settings
        .probe_interval
        .min(Duration::from_secs(5))
}

// ---------------------------------------------------------------------------
// 1. classify

/// Phase 1: the endpoint, from the method and the path as Ollama's router reads
/// them (percent-decoded, no cleaning). A path Ollama's router would refuse or
/// redirect is answered here, as it would answer it; nothing is forwarded.
pub fn classify(request: &Request<Incoming>) -> Result<Classified, Rejection> {
    let uri = request.uri();
    classify_path(request.method(), uri.path(), uri.query())
}

/// `GET /` and `HEAD /`: Ollama's own answer, from llamagate.
fn local(method: &Method) -> Response<ResponseBody> {
    let body = if method == Method::HEAD {
        ""
    } else {
        "Ollama is running"
    };
    text_response(StatusCode::OK, body)
}

// ---------------------------------------------------------------------------
// 2. read

/// A request read and viewed, ready for the policy.
pub struct Read {
    /// Its classification.
    pub classified: Classified,
    /// Method.
    pub method: Method,
    /// The path and query as sent.
    pub raw_path: String,
    /// Headers as sent.
    pub headers: HeaderMap,
    /// The whole body (empty when it streams: a blob upload).
    pub bytes: Bytes,
    /// The view plugins decide on (taken by [`decide`]).
    pub view: Option<crate::plugin::Request>,
    /// The original JSON text of each option (taken by [`decide`]).
    pub raw_options: BTreeMap<String, String>,
    /// The body field that named the model, to rewrite it.
    pub model_field: Option<&'static str>,
    /// For a form body: where the model's value is, to rewrite it.
    pub form_model: Option<std::ops::Range<usize>>,
    /// For listings: the view as the client sent it (on-request edits, a
    /// stripped token say, must not hide it from `list-models`).
    pub listing_view: Option<crate::plugin::Request>,
}

/// Phase 2: reads the body (refusing a declared size over `max_body_size`
/// before any of it is read, and a body that falls behind `body_timeout`'s
/// pace) and builds the policy view, reading each field as Ollama's
/// `encoding/json` would. A blob upload is not read: its body is handed on
/// as it arrives (the second half of the answer).
pub async fn read(
    gateway: &Gateway,
    generation: &Generation,
    request: Request<Incoming>,
    client: SocketAddr,
    classified: Classified,
) -> Result<(Read, Option<RequestBody>), GatewayError> {
    let (parts, incoming) = request.into_parts();
    let settings = &generation.settings;
    let streams = classified.handling == Handling::RouteStreaming;
    // The accept loop gives every request its body deadline (`body_timeout`).
    let deadline = parts.extensions.get::<BodyDeadline>();
    let (bytes, upload) = if streams {
        let upload: RequestBody = paced(incoming, deadline).boxed_unsync();
        (Bytes::new(), Some(upload))
    } else {
        refuse_oversized(&parts.headers, settings.max_body_size)?;
        let declared = declared_length(&parts.headers);
        let bytes = read_body(incoming, settings.max_body_size, deadline, declared).await?;
        (bytes, None)
    };
    let raw_path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Some(recorder) = &gateway.recorder {
        recorder.record(&parts.method, &raw_path, &parts.headers, client, &bytes);
    }
    let intake = intake::prepare(intake::Incoming {
        id: gateway.next_id(),
        classified: &classified,
        method: &parts.method,
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &bytes,
        client: client.to_string(),
        limits: settings.view_limits,
    })?;
    let Intake {
        view,
        raw_options,
        model_field,
        form_model,
    } = intake;
    let listing_view = matches!(classified.handling, Handling::FanOut(_)).then(|| view.clone());
    let read = Read {
        classified,
        method: parts.method,
        raw_path,
        headers: parts.headers,
        bytes,
        view: Some(view),
        raw_options,
        model_field,
        form_model,
        listing_view,
    };
    Ok((read, upload))
}

// ---------------------------------------------------------------------------
// 3. decide

/// Phase 3: the live chain's decision (each plugin waits for a call slot,
/// fairly across clients), plus the decision header's text when explaining.
/// The shadow chain, if any, decides the same request off the request path.
pub async fn decide(
    gateway: &Gateway,
    generation: &Generation,
    read: &mut Read,
) -> Result<(Outcome, Option<String>), GatewayError> {
    let explain = generation.settings.explain;
    let facts: Arc<dyn Facts> = generation.fleet.clone();
    let view = read
        .view
        .take()
        .ok_or_else(|| GatewayError::Internal("a request was decided twice".into()))?;
    let raw_options = std::mem::take(&mut read.raw_options);
    // The shadow chain decides the request as the live chain got it.
    let shadow = generation.shadow.as_ref().map(|chain| ShadowInput {
        chain: chain.clone(),
        view: view.clone(),
        raw_options: raw_options.clone(),
        fleet: facts.clone(),
        body: read.bytes.clone(),
    });
    let outcome = generation
        .chain
        .decide(
            view,
            raw_options,
            facts,
            read.bytes.clone(),
            explain,
            generation
                .settings
                .observe
                .metrics
                .then_some(&*gateway.metrics),
        )
        .await?;
    if let Some(input) = shadow {
        gateway.shadow.compare(input, outcome.verdict());
    }
    let trace = explain.then(|| outcome.trace().join("; "));
    Ok((outcome, trace))
}

/// A plugin's `respond`, in the API's error shape, with its headers.
fn answered(style: ApiStyle, reply: crate::plugin::Reply) -> Response<ResponseBody> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = error_response(style, status, &reply.message);
    for Header { name, value } in reply.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

// ---------------------------------------------------------------------------
// 4. admit

/// Phase 4: the backends the request may go to, in the order to try them: the
/// policy's choice, or every backend for a request that names no model. A
/// model no backend serves is the API's "model not found". (Slots and queues
/// per backend come here with fleet admission.)
pub fn admit(
    fleet: &Fleet,
    plan: &Plan,
    endpoint: Endpoint,
) -> Result<Vec<Arc<BackendState>>, GatewayError> {
    let ids: Vec<&str> = match &plan.backends {
        Some(choice) => choice.backends.iter().map(String::as_str).collect(),
        None if plan.request.model.is_none() => fleet.all().iter().map(|b| b.id.as_str()).collect(),
        None => Vec::new(),
    };
    if ids.is_empty() {
        return Err(match &plan.request.model {
            Some(model) => model_not_found(endpoint, model),
            None => GatewayError::NoBackend,
        });
    }
    ids.into_iter()
        .map(|id| {
            fleet
                .get(id)
                .cloned()
                .ok_or_else(|| GatewayError::PluginAnswer {
                    plugin: plan
                        .backends
                        .as_ref()
                        .map(|c| c.by.clone())
                        .unwrap_or_default(),
                    message: format!("chose backend {id:?}, which is not configured"),
                })
        })
        .collect()
}

/// The slot an inference request needs: its model, its fairness key (the
/// policy's principal, else the client's IP address), priority and wait.
fn slot_for(
    row: &crate::api::endpoint::Row,
    plan: &Plan,
    client: SocketAddr,
    queue: crate::fleet::QueueSettings,
) -> Option<Slot> {
    if row.work() != crate::api::endpoint::Work::Inference {
        return None;
    }
    let model = plan.request.model.as_deref()?;
    Some(Slot {
        model: llamagate_sdk::names::key(model),
        key: match &plan.principal {
            Some(principal) => principal.clone(),
            None => client.ip().to_canonical().to_string(),
        },
        priority: plan.enforce.priority.unwrap_or(0),
        max_wait: plan.enforce.queue_timeout.unwrap_or(queue.timeout),
    })
}

// ---------------------------------------------------------------------------
// 5. forward

/// The request as the backend gets it.
pub struct Outgoing {
    endpoint: Endpoint,
    method: Method,
    /// Path and query: the canonical encoding of the path as classified, so
    /// the backend routes exactly what the policy judged.
    path: String,
    headers: HeaderMap,
    /// The body with the policy's edits applied, or `None` for a streamed upload.
    body: Option<Bytes>,
    upload: Option<RequestBody>,
    /// First-byte and stream-idle timeouts for this request.
    timeouts: (Duration, Duration),
    /// Whether it may move to another backend once sent (the policy may say no).
    failover: bool,
    /// For inference: the slot it needs.
    slot: Option<Slot>,
}

impl Outgoing {
    /// Applies the plan to the request read: the body's fields (or a form's
    /// model), the path of `/v1/models/{model}`, headers, `X-Forwarded-For`.
    fn of(
        read: Read,
        upload: Option<RequestBody>,
        plan: &Plan,
        client: SocketAddr,
        failover: &Failover,
    ) -> Result<Outgoing, GatewayError> {
        let Read {
            classified,
            method,
            raw_path,
            mut headers,
            bytes,
            model_field,
            form_model,
            ..
        } = read;
        let body = if upload.is_some() {
            None
        } else if let Some(span) = form_model {
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
            let edits = plan.body_edits(model_field);
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
        // A model named in the path (`/v1/models/{model}`) is renamed there.
        let renamed_in_path = match (classified.row.param_prefix(), &plan.request.model) {
            (Some(prefix), Some(m))
                if plan.model_changed && classified.row.model == ModelAt::Path =>
            {
                Some(format!(
                    "{prefix}{}",
                    crate::api::path::encode(m.as_bytes())
                ))
            }
            _ => None,
        };
        let mut path = renamed_in_path.unwrap_or(classified.forward_path);
        if let Some((_, query)) = raw_path.split_once('?') {
            path.push('?');
            path.push_str(query);
        }
        for name in &plan.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &plan.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
            headers.append("x-forwarded-for", v);
        }
        Ok(Outgoing {
            endpoint: classified.endpoint,
            method,
            path,
            headers,
            body,
            upload,
            timeouts: {
                let (first_byte, idle) = failover.timeouts(plan.request.model.as_deref());
                (
                    plan.enforce.first_byte_timeout.unwrap_or(first_byte),
                    plan.enforce.stream_idle_timeout.unwrap_or(idle),
                )
            },
            failover: plan.enforce.failover != Some(false),
            slot: None,
        })
    }
}

/// A response head from a backend, with what the rest of the request needs.
pub struct Forwarded {
    /// The backend's response (head received, body not yet read).
    pub response: Response<Incoming>,
    /// The backend that answered.
    pub backend: Arc<BackendState>,
    /// Counts the request in flight there until the body ends.
    pub in_flight: InFlight,
    /// The slot it holds there until the body ends (inference only).
    pub permit: Option<Permit>,
    /// Longest gap allowed between body frames.
    pub stream_idle: Duration,
}

/// An attempt at one backend that holds a breaker trial: given back if the
/// attempt ends with neither success nor failure (the client left).
struct Attempt<'a> {
    backend: &'a BackendState,
    pass: Pass,
    settled: bool,
}

impl Attempt<'_> {
    fn succeeded(mut self) {
        self.settled = true;
        self.backend.succeeded(self.pass);
    }

    fn failed(mut self, failure: &Failure) {
        self.settled = true;
        self.backend.failed(failure, self.pass);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.backend.abandoned(self.pass);
        }
    }
}

/// Phase 5: sends `outgoing` to the candidates in the policy's order, moving
/// on (failover) while no byte of an answer has reached the client:
/// - always when a backend cannot be connected to (nothing was sent);
/// - for inference and lookups only, when the connection breaks before the
///   response head, or no head comes within the first-byte timeout (never for
///   pull, push, create, copy, delete or an unknown path: the backend may have
///   acted on it);
/// - for inference and lookups only, when the head's status is one of
///   `retry_statuses` and another candidate is left (the last one's answer
///   reaches the client as it is).
///
/// A backend that is down or whose breaker is open is skipped, unless every
/// candidate is (then each is tried in order: the real error beats a made-up
/// one). Every outcome feeds the backend's health; every failed attempt is
/// kept in `attempts`, and when none succeeds the client's 502 lists them.
pub async fn forward(
    gateway: &Gateway,
    generation: &Generation,
    candidates: Vec<Arc<BackendState>>,
    mut outgoing: Outgoing,
    attempts: &mut Attempts,
) -> Result<Forwarded, GatewayError> {
    let failover = &generation.settings.failover;
    let row = crate::api::endpoint::Row::of(outgoing.endpoint);
    let resendable = row.work().resendable() && outgoing.failover;
    let (first_byte, stream_idle) = outgoing.timeouts;
    let first_byte = (!row.slow_to_answer() && outgoing.upload.is_none()).then_some(first_byte);
    let mut order = TryOrder::new(candidates);
    let mut resent_same = false;
    let admission = generation.fleet.admission();
    let metered = generation.settings.observe.metrics;
    while let Some((backend, pass, last, permit)) =
        order.next(admission, outgoing.slot.as_ref()).await?
    {
        if let (true, Some(permit)) = (metered, &permit) {
            gateway
                .metrics
                .queue_wait
                .observe(permit.waited().as_secs_f64());
        }
        let body: RequestBody = match (&outgoing.body, outgoing.upload.take()) {
            (Some(bytes), _) => full_request_body(bytes.clone()),
            (None, Some(upload)) => upload,
            // A streamed upload cannot be sent twice.
            (None, None) => break,
        };
        let attempt = Attempt {
            backend: &backend,
            pass,
            settled: false,
        };
        // Counted in flight from now: a request waiting for a model to load
        // keeps its backend busy.
        let in_flight = backend.start_request();
        let sent = gateway.upstream.send(
            &*backend,
            &outgoing.method,
            &outgoing.path,
            &outgoing.headers,
            body,
        );
        let sent = match first_byte {
            Some(limit) => tokio::time::timeout(limit, sent)
                .await
                .map_err(|_| Failure::TimedOut(limit)),
            None => Ok(sent.await),
        };
        let failure = match sent {
            Ok(Ok(response)) => {
                let status = response.status();
                if !failover.retries(status.as_u16()) {
                    attempt.succeeded();
                    tracing::debug!(backend = %backend.id, path = %outgoing.path, %status, "forwarded");
                    return Ok(Forwarded {
                        response,
                        backend: backend.clone(),
                        in_flight,
                        permit,
                        stream_idle,
                    });
                }
                let failure = Failure::Answered(status);
                attempt.failed(&failure);
                if last || !resendable {
                    // The last word is the backend's own.
                    return Ok(Forwarded {
                        response,
                        backend: backend.clone(),
                        in_flight,
                        permit,
                        stream_idle,
                    });
                }
                failure
            }
            Ok(Err(err)) => {
                let failure = Failure::of_client(&err);
                attempt.failed(&failure);
                failure
            }
            Err(timed_out) => {
                attempt.failed(&timed_out);
                timed_out
            }
        };
        drop(in_flight);
        drop(permit);
        let moves_on = match &failure {
            // Nothing was sent: any request may go elsewhere (unless the
            // policy said it may not move at all).
            Failure::Unreachable(_) => outgoing.failover,
            Failure::Local(_) => false,
            _ => resendable,
        };
        attempts
            .0
            .push(BackendError::at(&*backend, failure.clone()));
        if !moves_on {
            break;
        }
        // A connection that broke before the head may have been a pooled one
        // the backend had closed: with no other candidate, the request is
        // sent once more on a new connection.
        if last && !resent_same && matches!(failure, Failure::Broken(_)) {
            resent_same = true;
            order.again(backend);
        }
    }
    Err(GatewayError::Upstream(attempts.clone()))
}

/// What a request that takes a slot asks admission for.
pub struct Slot {
    /// The model, normalised.
    pub model: String,
    /// The fairness key: the policy's principal, else the client's address.
    pub key: String,
    /// Higher is served first.
    pub priority: i32,
    /// Longest wait in the queue.
    pub max_wait: Duration,
}

/// The client's answer when no slot came free: 429 with `Retry-After`.
fn queued(refusal: Refusal, model: &str) -> GatewayError {
    let retry_after = refusal.retry_after().unwrap_or(Duration::from_secs(1));
    let message = match refusal {
        Refusal::QueueFull { .. } => format!(
            "llamagate: too many requests are waiting for a backend (max_queue); retry in {}s",
            retry_after.as_secs().max(1)
        ),
        Refusal::TimedOut { waited, .. } => format!(
            "llamagate: every backend for model {model:?} stayed busy for {:.1}s (queue_timeout); \
             retry in {}s",
            waited.as_secs_f64(),
            retry_after.as_secs().max(1)
        ),
        Refusal::NoCandidate => {
            return GatewayError::Internal(format!("no slot can exist for model {model:?}"))
        }
    };
    GatewayError::Queued {
        message,
        retry_after,
    }
}

/// The candidates in the order to try them: those that may take a request
/// now (up, or half-open with a trial free), in the policy's order; then, only
/// if none of them could be tried, every other one in that order ("panic
/// mode": the real error beats a made-up one).
struct TryOrder {
    list: std::collections::VecDeque<Arc<BackendState>>,
    /// Down, open, or half-open with its trials taken.
    passed_over: Vec<Arc<BackendState>>,
    panic: bool,
    tried: bool,
}

impl TryOrder {
    fn new(candidates: Vec<Arc<BackendState>>) -> TryOrder {
        let (usable, passed_over): (Vec<_>, Vec<_>) =
            candidates.into_iter().partition(|b| b.healthy());
        TryOrder {
            list: usable.into(),
            passed_over,
            panic: false,
            tried: false,
        }
    }

    /// The next backend, its pass (a trial is taken here, only for the
    /// backend about to be tried), whether it is the last one, and, for a
    /// request that takes a slot, its slot there: the first of the remaining
    /// candidates with a free slot, after waiting in the queue if none has.
    async fn next(
        &mut self,
        admission: &Arc<Admission>,
        slot: Option<&Slot>,
    ) -> Result<Option<(Arc<BackendState>, Pass, bool, Option<Permit>)>, GatewayError> {
        loop {
            if self.list.is_empty() {
                if self.tried || self.panic || self.passed_over.is_empty() {
                    return Ok(None);
                }
                self.panic = true;
                self.list = std::mem::take(&mut self.passed_over).into();
            }
            let (at, permit) = match slot {
                None => (0, None),
                Some(slot) => {
                    let ids: Vec<&str> = self.list.iter().map(|b| b.id.as_str()).collect();
                    let permit = admission
                        .acquire(Ask {
                            candidates: &ids,
                            model: &slot.model,
                            key: &slot.key,
                            priority: slot.priority,
                            max_wait: slot.max_wait,
                        })
                        .await
                        .map_err(|refusal| queued(refusal, &slot.model))?;
                    let at = self
                        .list
                        .iter()
                        .position(|b| b.id == permit.backend())
                        .unwrap_or(0);
                    (at, Some(permit))
                }
            };
            let Some(backend) = self.list.remove(at) else {
                continue;
            };
            let pass = match self.panic {
                true => Some(Pass::Normal),
                false => backend.pass(),
            };
            match pass {
                Some(pass) => {
                    self.tried = true;
                    let last = self.list.is_empty();
                    return Ok(Some((backend, pass, last, permit)));
                }
                None => self.passed_over.push(backend),
            }
        }
    }

    /// Tries `backend` once more, next.
    fn again(&mut self, backend: Arc<BackendState>) {
        self.list.push_front(backend);
    }
}

// ---------------------------------------------------------------------------
// 6. relay

/// Phase 6: the backend's response as the client's: hop-by-hop headers
/// dropped, the body passed through frame by frame ([`Relay`]), counted as
/// in flight on the backend until it ends, and cut with the stream's error
/// frame when the backend stalls longer than the stream-idle timeout.
pub fn relay(forwarded: Forwarded) -> Response<ResponseBody> {
    let Forwarded {
        response,
        backend,
        in_flight,
        permit,
        stream_idle,
    } = forwarded;
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
    let body = Relay::new(incoming, framing, backend, (in_flight, permit), stream_idle);
    Response::from_parts(parts, body.boxed_unsync())
}

/// The answer to a request whose model the policy renamed (an alias), with
/// the name the client asked for in its `model` field (`id` for
/// `/v1/models/{model}`), in every frame, without holding the stream back
/// ([`crate::proxy::rename`]). A compressed body is left as it is.
fn kept_alias(
    response: Response<ResponseBody>,
    row: &crate::api::endpoint::Row,
    asked: &str,
) -> Response<ResponseBody> {
    use crate::api::endpoint::Work;
    use crate::proxy::rename::{renamed, Rename};
    let field = match row.endpoint {
        Endpoint::OpenaiModel => "id",
        _ if row.work() == Work::Inference => "model",
        _ => return response,
    };
    let headers = response.headers();
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let framing = Framing::of(headers);
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if encoded || (framing == Framing::Opaque && !json) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let within = match row.endpoint {
        Endpoint::OpenaiMessages => Some("message"),
        Endpoint::OpenaiResponses => Some("response"),
        _ => None,
    };
    let rename = Rename {
        field,
        within,
        to: asked.to_string(),
    };
    let body = renamed(body, framing, json, rename).boxed_unsync();
    Response::from_parts(parts, body)
}

// ---------------------------------------------------------------------------
// 7. finish

/// What happened to one request, filled in as the phases run.
pub struct Record {
    started: Instant,
    method: Method,
    /// The client's address.
    pub client: SocketAddr,
    /// The request's path (only kept for the access log).
    pub path: String,
    /// The endpoint, once classified.
    pub endpoint: Option<Endpoint>,
    /// The error shape of the client's API.
    pub style: ApiStyle,
    /// The model the client asked for.
    pub model_asked: Option<String>,
    /// The model the backend was asked for, after the policy.
    pub model_served: Option<String>,
    /// Who the request is for, as the policy named it.
    pub principal: Option<String>,
    /// The backend that answered.
    pub backend: Option<String>,
    /// Backends tried that failed, in order.
    pub attempts: Attempts,
    /// The request's id (`x-request-id`).
    pub request_id: String,
    /// The model served when no backend listed it at decision time (it
    /// becomes the label if a backend answers it with success).
    pub model_unlisted: Option<String>,
    /// The model as a metric label: the model served when some backend
    /// lists it, `other` when none does, empty for no model.
    pub model_label: String,
}

impl Record {
    fn start(method: &Method, client: SocketAddr) -> Record {
        Record {
            started: Instant::now(),
            method: method.clone(),
            client,
            path: String::new(),
            endpoint: None,
            style: ApiStyle::Ollama,
            model_asked: None,
            model_served: None,
            principal: None,
            backend: None,
            attempts: Attempts::default(),
            model_label: String::new(),
            request_id: String::new(),
            model_unlisted: None,
        }
    }
}

/// Phase 7: the outcome, recorded once per request when its response has
/// ended, whole or cut short (the client went away): counted in the
/// [`Metrics`] (requests, durations, time to the head and to the first token,
/// tokens from the answer's last frame or usage chunk, cut answers), and
/// written as the access log's line (target `llamagate::access`, at info):
/// what was asked and served, for whom, the status, the times, the tokens.
/// `observe` says which of the two are on.
pub fn finish(
    record: Record,
    response: Response<ResponseBody>,
    gateway: &Gateway,
    observe: Observe,
) -> Response<ResponseBody> {
    let (parts, body) = response.into_parts();
    let counter = match record.endpoint.map(crate::api::endpoint::Row::of) {
        Some(row) if row.work() == crate::api::endpoint::Work::Inference => {
            let json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            Some(Counter::new(Framing::of(&parts.headers), json))
        }
        _ => None,
    };
    let finishing = Finishing {
        body,
        status: parts.status.as_u16(),
        head: record.started.elapsed(),
        record: Some(record),
        bytes: 0,
        ended: false,
        counter,
        metrics: observe
            .metrics
            .then(|| (gateway.metrics.clone(), gateway.recent.clone())),
        access_log: observe.access_log,
    };
    Response::from_parts(parts, finishing.boxed_unsync())
}

/// A response body that writes its request's [`Record`] once, when it ends
/// or is dropped.
struct Finishing {
    body: ResponseBody,
    record: Option<Record>,
    status: u16,
    head: Duration,
    bytes: u64,
    ended: bool,
    /// Reads token counts from the answer as it passes (inference only).
    counter: Option<Counter>,
    /// Where the outcome is counted (and kept for the status page), when
    /// metrics are on.
    metrics: Option<(Arc<Metrics>, Arc<crate::proxy::recent::Recent>)>,
    /// Write the access log's line.
    access_log: bool,
}

impl Finishing {
    fn write(&mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        let complete = self.ended || http_body::Body::is_end_stream(&self.body);
        let total = record.started.elapsed();
        let usage = self.counter.as_mut().map(Counter::finish);
        if let Some((metrics, recent)) = &self.metrics {
            let label = self.count(metrics, &record, complete, total, usage.as_ref());
            recent.add(crate::proxy::recent::Outcome {
                id: &record.request_id,
                endpoint: endpoint_name(record.endpoint.unwrap_or(Endpoint::Other)),
                label: &label,
                served: record.model_served.as_deref(),
                asked: record.model_asked.as_deref(),
                backend: record.backend.as_deref(),
                status: self.status,
                complete,
                attempts: Some(&record.attempts),
                usage,
            });
        }
        if self.access_log {
            let ms = |d: Duration| (d.as_micros() as f64) / 1000.0;
            let endpoint = endpoint_name(record.endpoint.unwrap_or(Endpoint::Other));
            tracing::info!(
                target: crate::log_sink::ACCESS_TARGET,
                id = %record.request_id,
                client = %record.client,
                method = %record.method,
                path = %record.path,
                endpoint = %endpoint,
                // What a client or a plugin wrote is quoted and escaped (a
                // newline in a model name must not forge a line); llamagate's
                // own words and the operator's ids are not.
                model = record.model_asked.as_deref().unwrap_or(""),
                served = record.model_served.as_deref().unwrap_or(""),
                backend = %record.backend.as_deref().unwrap_or(""),
                principal = record.principal.as_deref().unwrap_or(""),
                status = self.status,
                duration_ms = ms(total),
                ttfb_ms = ms(self.head),
                prompt_tokens = usage.as_ref().and_then(|u| u.prompt_tokens),
                completion_tokens = usage.as_ref().and_then(|u| u.completion_tokens),
                bytes = self.bytes,
                failed_attempts = record.attempts.0.len(),
                complete,
                "request"
            );
        }
    }

    /// Counts the outcome in the metrics.
    fn count(
        &self,
        m: &Metrics,
        record: &Record,
        complete: bool,
        total: Duration,
        usage: Option<&crate::proxy::tokens::Usage>,
    ) -> String {
        let endpoint = endpoint_name(record.endpoint.unwrap_or(Endpoint::Other));
        // A model no backend listed yet (before the first probe) is a label
        // once a backend answered for it with success: it exists there.
        let model_label = match (&record.model_unlisted, &record.backend) {
            (Some(model), Some(_)) if (200..300).contains(&self.status) => model.clone(),
            _ => record.model_label.clone(),
        };
        m.requests
            .get_or_create(&RequestLabels {
                endpoint,
                model: model_label.clone(),
                backend: record.backend.clone().unwrap_or_default(),
                status: status_class(self.status),
            })
            .inc();
        let route = m.route(endpoint, &model_label);
        route.duration.observe(total.as_secs_f64());
        route.first_byte.observe(self.head.as_secs_f64());
        if !complete {
            route.cut.inc();
        }
        if let Some(principal) = &record.principal {
            let tokens = usage.map_or((None, None), |u| (u.prompt_tokens, u.completion_tokens));
            m.count_principal(principal, status_class(self.status), tokens);
        }
        let Some(usage) = usage else {
            return model_label;
        };
        if let Some(at) = usage.first_token_at {
            let ttft = at.saturating_duration_since(record.started);
            route.first_token.observe(ttft.as_secs_f64());
            if let Some(out) = usage.completion_tokens.filter(|n| *n > 0) {
                let generating = total.saturating_sub(ttft).as_secs_f64();
                if generating > 0.0 {
                    route.tokens_per_second.observe(out as f64 / generating);
                }
            }
        }
        for ((counter, histogram), n) in [
            (&route.input, usage.prompt_tokens),
            (&route.output, usage.completion_tokens),
        ] {
            if let Some(n) = n {
                counter.inc_by(n);
                histogram.observe(n as f64);
            }
        }
        model_label
    }
}

/// The endpoint as a metric label: `chat`, `openai_chat`, `other`.
fn endpoint_name(endpoint: Endpoint) -> &'static str {
    use Endpoint as E;
    match endpoint {
        E::Root => "root",
        E::Version => "version",
        E::Tags => "tags",
        E::Ps => "ps",
        E::Show => "show",
        E::Generate => "generate",
        E::Chat => "chat",
        E::Embed => "embed",
        E::Embeddings => "embeddings",
        E::Pull => "pull",
        E::Push => "push",
        E::Create => "create",
        E::Copy => "copy",
        E::Delete => "delete",
        E::Blobs => "blobs",
        E::OpenaiChat => "openai_chat",
        E::OpenaiCompletions => "openai_completions",
        E::OpenaiEmbeddings => "openai_embeddings",
        E::OpenaiModels => "openai_models",
        E::OpenaiModel => "openai_model",
        E::OpenaiResponses => "openai_responses",
        E::OpenaiMessages => "openai_messages",
        E::Other => "other",
    }
}

impl http_body::Body for Finishing {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                    if let Some(counter) = self.counter.as_mut() {
                        counter.observe(data);
                    }
                }
            }
            std::task::Poll::Ready(None) => {
                self.ended = true;
                self.write();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.write();
    }
}

// ---------------------------------------------------------------------------
// helpers

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

fn full_request_body(bytes: Bytes) -> RequestBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
