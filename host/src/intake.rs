//! From an HTTP request to the view policies decide on: read the body's
//! policy fields, find the model, refuse what Ollama would refuse.
//!
//! Shared by the live gateway and by `llamagate plugin test`, which replays
//! recorded requests through the same steps.

use std::collections::BTreeMap;

use http::{HeaderMap, Method, StatusCode};

use crate::body::{self, BodyError};
use crate::endpoint::{ApiStyle, Classified, Endpoint, Handling};
use crate::error::{model_missing, GatewayError};
use crate::plugin::{Header, Request as PolicyRequest};

/// A request ready for the policy chain.
pub struct Intake {
    /// The view plugins get.
    pub view: PolicyRequest,
    /// The original JSON text of each option (kept byte for byte unless edited).
    pub raw_options: BTreeMap<String, String>,
    /// The body field that named the model; `None` when the model is not in the body.
    pub model_field: Option<&'static str>,
}

/// What one request looks like to llamagate before the policy runs.
pub struct Incoming<'a> {
    /// Request id.
    pub id: String,
    /// Classification of method and path.
    pub classified: &'a Classified,
    /// Method.
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The body (empty for streamed uploads).
    pub body: &'a [u8],
    /// Client address, `ip:port`.
    pub client: String,
}

/// Builds the policy view of a request, or the error Ollama would give it.
pub fn prepare(incoming: Incoming<'_>) -> Result<Intake, GatewayError> {
    let classified = incoming.classified;
    let endpoint = classified.endpoint;
    let peeked = match (classified.handling, endpoint) {
        (Handling::FanOut | Handling::RouteStreaming | Handling::Local, _) => {
            body::Peeked::default()
        }
        // Unknown endpoints may carry anything; use what can be read.
        (_, Endpoint::Other | Endpoint::OpenaiModel) => {
            body::peek(incoming.body, &["model"]).unwrap_or_default()
        }
        (_, Endpoint::Copy) => {
            body::peek(incoming.body, &["source"]).map_err(|e| body_error(e, classified.style))?
        }
        _ => body::peek(incoming.body, &["model", "name"])
            .map_err(|e| body_error(e, classified.style))?,
    };
    let model = classified
        .path_model
        .clone()
        .or_else(|| peeked.model.as_ref().map(|(_, m)| m.clone()));
    if model.is_none() && names_model(endpoint) {
        return Err(model_missing(endpoint));
    }
    let view = PolicyRequest {
        id: incoming.id,
        endpoint,
        method: incoming.method.as_str().to_string(),
        path: incoming.path.to_string(),
        model,
        headers: headers_view(incoming.headers),
        client_addr: incoming.client,
        streaming: peeked.streaming(endpoint),
        options: peeked.options.iter().map(|(o, _)| o.clone()).collect(),
        keep_alive: peeked.keep_alive.clone(),
        body_size: incoming.body.len() as u64,
        route: None,
    };
    Ok(Intake {
        view,
        model_field: peeked.model.as_ref().map(|(field, _)| *field),
        raw_options: peeked
            .options
            .into_iter()
            .filter_map(|(o, raw)| raw.map(|r| (o.key, r)))
            .collect(),
    })
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

/// A body problem as a 400 in the client's API.
pub fn body_error(err: BodyError, style: ApiStyle) -> GatewayError {
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
