//! From an HTTP request to the view policies decide on: read the body's
//! policy fields as Ollama will read them, find the model, refuse what Ollama
//! would refuse — and what could be read two ways — before any plugin runs.
//!
//! Shared by the live gateway and by `llamagate plugin test`, which replays
//! recorded requests through the same steps.

use std::collections::BTreeMap;

use http::{header, HeaderMap, Method, StatusCode};

use crate::api::body::{self, BodyError};
use crate::api::endpoint::{ApiStyle, Classified, Endpoint, Handling, ModelAt};
use crate::api::error::{model_missing, GatewayError};
use crate::plugin::{Header, Request as PolicyRequest};

/// Limits on the work done before the policy runs.
#[derive(Clone, Copy, Debug)]
pub struct ViewLimits {
    /// Most keys a body's `options` may have.
    pub max_options: usize,
    /// Most bytes the policy view (path, headers, model, options, keep_alive) may take.
    pub max_view_size: usize,
}

impl Default for ViewLimits {
    fn default() -> Self {
        ViewLimits {
            max_options: 256,
            max_view_size: 1 << 20,
        }
    }
}

/// A request ready for the policy chain.
pub struct Intake {
    /// The view plugins get.
    pub view: PolicyRequest,
    /// The original JSON text of each option (kept byte for byte unless edited).
    pub raw_options: BTreeMap<String, String>,
    /// The body field that named the model; `None` when the model is not in the body.
    pub model_field: Option<&'static str>,
    /// For a form body: where the model's value is, to rewrite it.
    pub form_model: Option<std::ops::Range<usize>>,
}

/// What one request looks like to llamagate before the policy runs.
pub struct Incoming<'a> {
    /// Request id.
    pub id: String,
    /// Classification of method and path.
    pub classified: &'a Classified,
    /// Method.
    pub method: &'a Method,
    /// The query string, as sent.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The body (empty for streamed uploads).
    pub body: &'a [u8],
    /// Client address, `ip:port`.
    pub client: String,
    /// Limits on the view.
    pub limits: ViewLimits,
}

/// Builds the policy view of a request, or the error Ollama would give it.
pub fn prepare(incoming: Incoming<'_>) -> Result<Intake, GatewayError> {
    let classified = incoming.classified;
    let endpoint = classified.endpoint;
    let style = classified.style;
    let row = classified.row;
    let peeked = match classified.handling {
        Handling::FanOut(_) | Handling::RouteStreaming | Handling::Local => body::Peeked::default(),
        Handling::Route if row.model == ModelAt::Form => {
            refuse_encoded_body(incoming.headers, incoming.body)
                .map_err(|e| body_error(e, style))?;
            body::Peeked::default()
        }
        Handling::Route => {
            refuse_encoded_body(incoming.headers, incoming.body)
                .map_err(|e| body_error(e, style))?;
            match (
                endpoint,
                body::peek(incoming.body, row, incoming.limits.max_options),
            ) {
                (_, Ok(peeked)) => peeked,
                // Unknown endpoints may carry anything; use what can be read,
                // but never a body that reads two ways.
                (Endpoint::Other, Err(BodyError::Ambiguous(m))) => {
                    return Err(body_error(BodyError::Ambiguous(m), style))
                }
                (Endpoint::Other | Endpoint::OpenaiModel, Err(_)) => body::Peeked::default(),
                (_, Err(e)) => return Err(body_error(e, style)),
            }
        }
    };
    let mut form_model = None;
    let mut model = classified
        .path_model
        .clone()
        .or_else(|| peeked.model.as_ref().map(|(_, m)| m.clone()));
    if row.model == ModelAt::Form {
        let content_type = incoming
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let form = crate::api::form::model(content_type, incoming.query, incoming.body)
            .map_err(|e| GatewayError::client(StatusCode::BAD_REQUEST, e.to_string()))?;
        if !form.model.is_empty() {
            model = Some(form.model);
            form_model = Some(form.span);
        }
    }
    if model.is_none() && row.model.required(endpoint) {
        return Err(model_missing(endpoint));
    }
    let path = match incoming.query {
        Some(q) => format!("{}?{q}", classified.path),
        None => classified.path.clone(),
    };
    let view = PolicyRequest {
        id: incoming.id,
        endpoint,
        method: incoming.method.as_str().to_string(),
        path,
        model,
        headers: headers_view(incoming.headers),
        client_addr: incoming.client,
        streaming: peeked.streaming(endpoint),
        options: peeked.options.iter().map(|(o, _)| o.clone()).collect(),
        keep_alive: peeked.keep_alive.clone(),
        body_size: incoming.body.len() as u64,
        route: None,
    };
    let raw_options: BTreeMap<String, String> = peeked
        .options
        .into_iter()
        .filter_map(|(o, raw)| raw.map(|r| (o.key, r)))
        .collect();
    let size = view_size(&view, &raw_options);
    if size > incoming.limits.max_view_size {
        return Err(GatewayError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request too large for the policy: its path, headers and options take {size} bytes, \
                 more than llamagate's max_view_size of {} bytes",
                incoming.limits.max_view_size
            ),
        ));
    }
    Ok(Intake {
        view,
        model_field: peeked.model.as_ref().map(|(field, _)| *field),
        form_model,
        raw_options,
    })
}

/// Bytes the view copies into each plugin: the variable-length parts.
fn view_size(view: &PolicyRequest, raw_options: &BTreeMap<String, String>) -> usize {
    let headers: usize = view
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    let options: usize = view
        .options
        .iter()
        .map(|o| o.key.len() + raw_options.get(&o.key).map_or(16, String::len))
        .sum();
    view.path.len()
        + headers
        + options
        + view.model.as_ref().map_or(0, String::len)
        + view
            .keep_alive
            .as_ref()
            .map_or(0, |k| body::render(k).len())
}

/// A body llamagate cannot read as the backend will: Ollama inflates
/// `Content-Encoding: zstd` on `/v1/responses`, so any encoding is refused.
fn refuse_encoded_body(headers: &HeaderMap, body: &[u8]) -> Result<(), BodyError> {
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded && !body.is_empty() {
        return Err(BodyError::Encoded);
    }
    Ok(())
}

/// A body problem as a 4xx in the client's API.
pub fn body_error(err: BodyError, style: ApiStyle) -> GatewayError {
    let status = match err {
        BodyError::Encoded => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = match (style, &err) {
        // Ollama's OpenAI layer reports an empty body as Go's decoder does.
        (ApiStyle::OpenAi, BodyError::Empty) => "EOF".to_string(),
        _ => err.to_string(),
    };
    GatewayError::client(status, message)
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
