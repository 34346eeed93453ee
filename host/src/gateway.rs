//! The request pipeline: classify, read, decide, then forward or fan out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{self, BodyError};
use crate::endpoint::{classify, ApiStyle, Classified, Endpoint, Handling, Rejection};
use crate::error::{error_response, model_missing, model_not_found, text_response, GatewayError};
use crate::fleet::Fleet;
use crate::plugin::{Header, Request as PolicyRequest};
use crate::policy::{Chain, Outcome, Plan};
use crate::stream::{Framing, Relay};
use crate::upstream::Upstream;
use crate::{full_body, RequestBody, ResponseBody};

/// Settings of the request pipeline.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body read into memory (blob uploads stream and are exempt).
    pub max_body_size: usize,
    /// How long a fan-out waits for each backend.
    pub fanout_timeout: Duration,
}

/// Everything a request needs: the fleet, the client, the policy chain.
pub struct Gateway {
    /// The backends.
    pub fleet: Arc<Fleet>,
    /// The pooled client.
    pub upstream: Upstream,
    chain: RwLock<Arc<Chain>>,
    settings: Settings,
    next_id: AtomicU64,
}

impl Gateway {
    /// A gateway over `fleet` deciding with `chain`.
    pub fn new(fleet: Arc<Fleet>, upstream: Upstream, chain: Chain, settings: Settings) -> Self {
        Gateway {
            fleet,
            upstream,
            chain: RwLock::new(Arc::new(chain)),
            settings,
            next_id: AtomicU64::new(1),
        }
    }

    /// The plugin chain in force. Requests hold their own `Arc`, so a swap never
    /// disturbs one in flight.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.read().unwrap().clone()
    }

    /// The pipeline's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the plugin chain for requests that start from now on.
    pub fn swap_chain(&self, chain: Chain) {
        *self.chain.write().unwrap() = Arc::new(chain);
    }

    /// Serves one request.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ResponseBody> {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let classified = match classify(request.method(), &path) {
            Ok(c) => c,
            Err(Rejection::MethodNotAllowed) => {
                return text_response(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed")
            }
        };
        let style = classified.style;
        if classified.handling == Handling::Local {
            let body = if request.method() == Method::HEAD {
                ""
            } else {
                "Ollama is running"
            };
            return text_response(StatusCode::OK, body);
        }
        match self.serve(request, client, path, classified).await {
            Ok(response) => response,
            Err(err) => err.into_response(style),
        }
    }

    async fn serve(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        path: String,
        classified: Classified,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (parts, incoming) = request.into_parts();
        let endpoint = classified.endpoint;
        let streaming_upload = classified.handling == Handling::RouteStreaming;
        let (bytes, upload) = if streaming_upload {
            (Bytes::new(), Some(incoming))
        } else {
            (self.read_body(incoming).await?, None)
        };

        let peeked = if classified.handling == Handling::FanOut || streaming_upload {
            body::Peeked::default()
        } else if endpoint == Endpoint::Other || endpoint == Endpoint::OpenaiModel {
            // Unknown endpoints may carry anything; use what we can read.
            body::peek(&bytes, &["model"]).unwrap_or_default()
        } else {
            let fields: &[&'static str] = match endpoint {
                Endpoint::Copy => &["source"],
                _ => &["model", "name"],
            };
            body::peek(&bytes, fields).map_err(|e| body_error(e, classified.style))?
        };
        let model = classified
            .path_model
            .clone()
            .or_else(|| peeked.model.as_ref().map(|(_, m)| m.clone()));
        if model.is_none() && names_model(endpoint) {
            return Err(model_missing(endpoint));
        }

        let view = PolicyRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed).to_string(),
            endpoint,
            method: parts.method.as_str().to_string(),
            path: path.clone(),
            model,
            headers: headers_view(&parts.headers),
            client_addr: client.to_string(),
            streaming: peeked.streaming(endpoint),
            options: peeked.options.iter().map(|(o, _)| o.clone()).collect(),
            keep_alive: peeked.keep_alive.clone(),
            body_size: bytes.len() as u64,
        };
        let raw_options: BTreeMap<String, String> = peeked
            .options
            .into_iter()
            .filter_map(|(o, raw)| raw.map(|r| (o.key, r)))
            .collect();

        let chain = self.chain();
        let backends = self.fleet.views();
        let decided = {
            let (chain, body) = (chain.clone(), bytes.clone());
            off_thread(move || chain.decide(view, raw_options, &backends, &body)).await?
        };
        let plan = match decided {
            Outcome::Respond { plugin, reply } => {
                tracing::info!(plugin, status = reply.status, path, "policy answered");
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
                return Ok(response);
            }
            Outcome::Forward(plan) => plan,
        };

        if classified.handling == Handling::FanOut {
            let head = parts.method == Method::HEAD;
            return crate::fanout::serve(self, &chain, &plan.request, head).await;
        }

        let body: Option<Bytes> = if upload.is_some() {
            None
        } else {
            // The model of `/v1/models/{model}` is in the path, not the body.
            let model_field = peeked.model.as_ref().map(|(field, _)| *field);
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
        let forward_path = match (endpoint, &plan.request.model) {
            (Endpoint::OpenaiModel, Some(m)) if plan.model_changed => format!("/v1/models/{m}"),
            _ => path,
        };
        let mut headers = parts.headers;
        apply_header_edits(&mut headers, &plan);
        if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
            headers.append("x-forwarded-for", v);
        }
        self.forward(
            &plan,
            endpoint,
            &parts.method,
            &forward_path,
            &headers,
            body,
            upload,
        )
        .await
    }

    async fn read_body(&self, incoming: Incoming) -> Result<Bytes, GatewayError> {
        let limit = self.settings.max_body_size;
        match Limited::new(incoming, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than llamagate's limit of {limit} bytes (max_body_size)"),
            )),
            Err(e) => Err(GatewayError::client(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )),
        }
    }

    /// Tries the plan's backends in order; moves on only when one cannot be reached.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        plan: &Plan,
        endpoint: Endpoint,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
        mut upload: Option<Incoming>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let candidates: Vec<String> = match &plan.backends {
            Some((ids, _)) => ids.clone(),
            None if plan.request.model.is_none() => {
                self.fleet.all().iter().map(|b| b.id.clone()).collect()
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
            let Some(backend) = self.fleet.get(id) else {
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
                (None, Some(incoming)) => incoming.map_err(Into::into).boxed_unsync(),
                (None, None) => break,
            };
            let in_flight = backend.start_request();
            match self
                .upstream
                .send(backend, method, path, headers, request_body)
                .await
            {
                Ok(response) => {
                    backend.set_healthy(true);
                    tracing::debug!(backend = %backend.id, path, status = %response.status(), "forwarded");
                    return Ok(relay(response, &backend.id, in_flight));
                }
                Err(err) if err.is_connect() => {
                    backend.set_healthy(false);
                    failures.push(format!(
                        "backend {:?} ({}) is unreachable: {}",
                        backend.id,
                        backend.url,
                        source_text(&err)
                    ));
                }
                Err(err) => {
                    failures.push(format!(
                        "backend {:?} ({}) failed: {}",
                        backend.id,
                        backend.url,
                        source_text(&err)
                    ));
                    break;
                }
            }
        }
        Err(GatewayError::Upstream(failures.join("; ")))
    }
}

/// Runs plugin work on tokio's blocking pool. WASI's synchronous stdio (a
/// guest's panic message, a `println!`) bridges into tokio with `block_on`,
/// which must not happen on an async worker; and a plugin that spins until its
/// deadline must not stall the workers that relay streams.
pub async fn off_thread<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, GatewayError> + Send + 'static,
) -> Result<R, GatewayError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| GatewayError::Internal(format!("policy task failed: {e}")))?
}

/// Endpoints whose requests must name a model.
fn names_model(endpoint: Endpoint) -> bool {
    !matches!(
        endpoint,
        Endpoint::Root
            | Endpoint::Version
            | Endpoint::Tags
            | Endpoint::Ps
            | Endpoint::OpenaiModels
            | Endpoint::Blobs
            | Endpoint::Other
    )
}

fn body_error(err: BodyError, style: ApiStyle) -> GatewayError {
    let message = match (style, &err) {
        // Ollama's OpenAI layer reports an empty body as Go's decoder does.
        (ApiStyle::OpenAi, BodyError::Empty) => "EOF".to_string(),
        _ => err.to_string(),
    };
    GatewayError::client(StatusCode::BAD_REQUEST, message)
}

fn headers_view(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some(Header {
                name: name.as_str().to_string(),
                value: value.to_str().ok()?.to_string(),
            })
        })
        .collect()
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

/// The innermost cause, which names what actually failed (e.g. "connection refused").
fn source_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
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

/// A JSON response assembled by llamagate itself.
pub fn json(status: StatusCode, value: &serde_json::Value, head: bool) -> Response<ResponseBody> {
    let text = if head {
        Bytes::new()
    } else {
        Bytes::from(value.to_string())
    };
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
