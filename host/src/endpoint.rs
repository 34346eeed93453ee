//! Classifies a request by method and path: which endpoint, how llamagate
//! handles it, and which API's error shape it speaks.

use http::Method;

pub use crate::plugin::Endpoint;

/// How llamagate serves an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Answered by llamagate itself (`/`).
    Local,
    /// Sent to every backend, answers merged.
    FanOut,
    /// Sent to one backend chosen by the policy; the body is read and inspected.
    Route,
    /// Sent to one backend chosen by the policy; the body streams through unread
    /// (blob uploads can be gigabytes).
    RouteStreaming,
}

/// The error shape a client of this endpoint understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiStyle {
    /// `{"error":"..."}`
    Ollama,
    /// `{"error":{"message":...,"type":...}}`
    OpenAi,
}

/// A classified request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// How to serve it.
    pub handling: Handling,
    /// Error shape.
    pub style: ApiStyle,
    /// For `/v1/models/{model}`: the model in the path.
    pub path_model: Option<String>,
}

/// Why a request cannot be served, in Ollama's plain-text words.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The path exists but not for this method: 405 `405 method not allowed`.
    MethodNotAllowed,
}

/// Classifies `method path`. Unknown paths are [`Endpoint::Other`] and are forwarded.
pub fn classify(method: &Method, path: &str) -> Result<Classified, Rejection> {
    use Endpoint as E;
    use Handling::*;
    let path = path.split('?').next().unwrap_or(path);
    let (endpoint, handling, allowed): (Endpoint, Handling, &[Method]) = match path {
        "/" => (E::Root, Local, &[Method::GET, Method::HEAD]),
        "/api/version" => (E::Version, FanOut, &[Method::GET, Method::HEAD]),
        "/api/tags" => (E::Tags, FanOut, &[Method::GET, Method::HEAD]),
        "/api/ps" => (E::Ps, FanOut, &[Method::GET]),
        "/api/show" => (E::Show, Route, &[Method::POST]),
        "/api/generate" => (E::Generate, Route, &[Method::POST]),
        "/api/chat" => (E::Chat, Route, &[Method::POST]),
        "/api/embed" => (E::Embed, Route, &[Method::POST]),
        "/api/embeddings" => (E::Embeddings, Route, &[Method::POST]),
        "/api/pull" => (E::Pull, Route, &[Method::POST]),
        "/api/push" => (E::Push, Route, &[Method::POST]),
        "/api/create" => (E::Create, Route, &[Method::POST]),
        "/api/copy" => (E::Copy, Route, &[Method::POST]),
        "/api/delete" => (E::Delete, Route, &[Method::DELETE]),
        "/v1/chat/completions" => (E::OpenaiChat, Route, &[Method::POST]),
        "/v1/completions" => (E::OpenaiCompletions, Route, &[Method::POST]),
        "/v1/embeddings" => (E::OpenaiEmbeddings, Route, &[Method::POST]),
        "/v1/models" => (E::OpenaiModels, FanOut, &[Method::GET]),
        "/v1/responses" => (E::OpenaiResponses, Route, &[Method::POST]),
        "/v1/messages" => (E::OpenaiMessages, Route, &[Method::POST]),
        p if p.starts_with("/api/blobs/") => {
            (E::Blobs, RouteStreaming, &[Method::HEAD, Method::POST])
        }
        p if p.starts_with("/v1/models/") && !p["/v1/models/".len()..].contains('/') => {
            let model = &p["/v1/models/".len()..];
            if method != Method::GET {
                return Err(Rejection::MethodNotAllowed);
            }
            return Ok(Classified {
                endpoint: E::OpenaiModel,
                handling: Route,
                style: ApiStyle::OpenAi,
                path_model: Some(percent_decode(model)),
            });
        }
        _ => (E::Other, Route, &[]),
    };
    if !allowed.is_empty() && !allowed.contains(method) {
        return Err(Rejection::MethodNotAllowed);
    }
    let style = if path.starts_with("/v1/") {
        ApiStyle::OpenAi
    } else {
        ApiStyle::Ollama
    };
    Ok(Classified {
        endpoint,
        handling,
        style,
        path_model: None,
    })
}

/// Whether the endpoint streams when the body has no `stream` field.
pub fn streams_by_default(endpoint: Endpoint) -> bool {
    use Endpoint as E;
    matches!(
        endpoint,
        E::Generate | E::Chat | E::Pull | E::Push | E::Create
    )
}

/// Decodes `%XX` escapes in a path (model names may carry `:`).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths() {
        let c = classify(&Method::POST, "/api/chat").unwrap();
        assert_eq!(c.endpoint, Endpoint::Chat);
        assert_eq!(c.style, ApiStyle::Ollama);
        let c = classify(&Method::GET, "/v1/models/llama3.2%3Alatest").unwrap();
        assert_eq!(c.endpoint, Endpoint::OpenaiModel);
        assert_eq!(c.path_model.as_deref(), Some("llama3.2:latest"));
        assert_eq!(
            classify(&Method::HEAD, "/api/blobs/sha256:00")
                .unwrap()
                .handling,
            Handling::RouteStreaming
        );
        assert_eq!(
            classify(&Method::GET, "/api/tags?x=1").unwrap().endpoint,
            Endpoint::Tags
        );
    }

    #[test]
    fn wrong_method() {
        assert_eq!(
            classify(&Method::GET, "/api/chat"),
            Err(Rejection::MethodNotAllowed)
        );
        assert_eq!(
            classify(&Method::POST, "/api/delete"),
            Err(Rejection::MethodNotAllowed)
        );
    }

    #[test]
    fn unknown_paths_are_forwarded() {
        let c = classify(&Method::POST, "/v1/audio/transcriptions").unwrap();
        assert_eq!(c.endpoint, Endpoint::Other);
        assert_eq!(c.style, ApiStyle::OpenAi);
        assert_eq!(
            classify(&Method::GET, "/v1/models/a/b").unwrap().endpoint,
            Endpoint::Other
        );
    }
}
