//! Error responses in the shape the client's API speaks, and the errors a
//! request can meet on its way, tagged with where they came from.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::api::endpoint::{ApiStyle, Endpoint};
use crate::log_limit::LogLimiter;
use crate::plugin::PluginError;
use crate::upstream::Attempts;
use crate::ResponseBody;

/// Rate limit of the log lines for failing plugins, per plugin and kind.
static PLUGIN_FAILURES: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Where a failure came from, so clients can tell "your request is bad" from
/// "the backend is down" from "the policy said no".
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The client sent something unusable.
    #[error("{message}")]
    Client {
        /// HTTP status (400, 404, 413...).
        status: StatusCode,
        /// Error text.
        message: String,
    },
    /// A policy plugin failed (trap, time or memory limit, bad answer).
    #[error("llamagate policy error: {0}")]
    Plugin(#[from] PluginError),
    /// A policy plugin gave an answer llamagate cannot act on.
    #[error("llamagate policy error: plugin {plugin:?} {message}")]
    PluginAnswer {
        /// Plugin name.
        plugin: String,
        /// What was wrong.
        message: String,
    },
    /// Every backend tried failed; what happened at each, in order.
    #[error("{0}")]
    Upstream(Attempts),
    /// No backend is configured at all.
    #[error("no backend is configured")]
    NoBackend,
    /// A listing no backend could answer.
    #[error("{0}")]
    Unanswered(#[from] Unanswered),
    /// No slot came free in time on any backend for the model (or the queue
    /// is full): 429 with `Retry-After`.
    #[error("{message}")]
    Queued {
        /// What happened, for the client.
        message: String,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// A bug in llamagate itself.
    #[error("llamagate internal error: {0}")]
    Internal(String),
}

/// A listing no backend could answer: `what` failed at each backend asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no backend answered {what}{}", colon(.attempts))]
pub struct Unanswered {
    /// What was asked (`/api/tags`; `a version` when none reported one).
    pub what: String,
    /// What happened at each backend asked (empty when they answered, but
    /// not with what was asked).
    pub attempts: Attempts,
}

/// `: ` and the attempts, when there are any.
fn colon(attempts: &Attempts) -> String {
    if attempts.0.is_empty() {
        String::new()
    } else {
        format!(": {attempts}")
    }
}

impl GatewayError {
    /// A client error with a status.
    pub fn client(status: StatusCode, message: impl Into<String>) -> Self {
        GatewayError::Client {
            status,
            message: message.into(),
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Client { status, .. } => *status,
            GatewayError::Queued { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Plugin(PluginError::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Plugin(_)
            | GatewayError::PluginAnswer { .. }
            | GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // llamagate's own shortage (no descriptor left): retry later.
            GatewayError::Upstream(attempts)
                if !attempts.0.is_empty()
                    && attempts.0.iter().all(|a| !a.failure.blames_backend()) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Upstream(_) | GatewayError::NoBackend | GatewayError::Unanswered(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Renders the error for a client of `style`.
    pub fn into_response(self, style: ApiStyle) -> Response<ResponseBody> {
        let status = self.status();
        // One line per plugin and kind every 10 s: a flood of failing requests
        // must not flood the log (the full trap is logged at debug level).
        match &self {
            GatewayError::Plugin(err @ PluginError::Busy { .. }) => {
                let key = format!("{}:{}", err.plugin(), err.kind());
                crate::warn_limited!(PLUGIN_FAILURES, &key, "{self}");
            }
            GatewayError::Plugin(err) => {
                let key = format!("{}:{}", err.plugin(), err.kind());
                crate::error_limited!(PLUGIN_FAILURES, &key, "{self}");
            }
            GatewayError::PluginAnswer { plugin, .. } => {
                let key = format!("{plugin}:answer");
                crate::error_limited!(PLUGIN_FAILURES, &key, "{self}");
            }
            _ => {}
        }
        let retry_after = match &self {
            GatewayError::Plugin(PluginError::Busy { .. }) => Some(1),
            GatewayError::Queued { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        let mut response = error_response(style, status, &self.to_string());
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON error body: `{"error":"..."}` for Ollama, OpenAI's envelope for `/v1`.
pub fn error_response(
    style: ApiStyle,
    status: StatusCode,
    message: &str,
) -> Response<ResponseBody> {
    let body = match style {
        ApiStyle::Ollama => serde_json::json!({ "error": message }),
        ApiStyle::OpenAi => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                _ => "api_error",
            };
            serde_json::json!({
                "error": { "message": message, "type": kind, "param": null, "code": null }
            })
        }
    };
    let content_type = match style {
        ApiStyle::Ollama => "application/json; charset=utf-8",
        ApiStyle::OpenAi => "application/json",
    };
    json_response(status, content_type, body.to_string().into())
}

/// A JSON response assembled by llamagate itself (an empty body for `HEAD`).
pub fn json(status: StatusCode, value: &serde_json::Value, head: bool) -> Response<ResponseBody> {
    let text = if head {
        Bytes::new()
    } else {
        Bytes::from(value.to_string())
    };
    json_response(status, "application/json; charset=utf-8", text)
}

/// A response with a JSON body.
pub fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut response = Response::new(crate::full_body(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text response, as Ollama sends for unknown paths and methods.
pub fn text_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(crate::full_body(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// "model not found" worded as Ollama words it for this endpoint.
pub fn model_not_found(endpoint: Endpoint, model: &str) -> GatewayError {
    use Endpoint as E;
    let message = match endpoint {
        E::Chat | E::Embed | E::Embeddings | E::OpenaiChat | E::OpenaiEmbeddings => {
            format!("model {} not found, try pulling it first", go_quote(model))
        }
        E::Copy => format!("model {} not found", go_quote(model)),
        _ => format!("model '{model}' not found"),
    };
    GatewayError::client(StatusCode::NOT_FOUND, message)
}

/// The error Ollama gives when a request names no model.
pub fn model_missing(endpoint: Endpoint) -> GatewayError {
    use Endpoint as E;
    match endpoint {
        E::Generate | E::OpenaiCompletions | E::Embed => {
            GatewayError::client(StatusCode::NOT_FOUND, "model '' not found")
        }
        E::Pull | E::Create => GatewayError::client(StatusCode::BAD_REQUEST, "invalid model name"),
        E::Copy => GatewayError::client(StatusCode::BAD_REQUEST, "source \"\" is invalid"),
        _ => GatewayError::client(StatusCode::BAD_REQUEST, "model is required"),
    }
}

/// Go's `%q` for ordinary strings: JSON string quoting is the same for them.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}
