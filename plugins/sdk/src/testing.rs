//! Building requests and backends for native unit tests of plugin logic.
//!
//! ```ignore
//! let req = testing::request(Endpoint::Chat, "llama3.2").with_header("authorization", "Bearer x");
//! let fleet = [testing::backend("gpu-01", &["llama3.2"])];
//! assert_eq!(MyPolicy::on_request(req, fleet.to_vec()), Decision::pass());
//! ```

use std::cell::RefCell;

use crate::bindings::llamagate::policy::types::{
    Backend, Endpoint, Header, JsonValue, LoadedModel, OptionEntry, Request,
};

thread_local! {
    static BODY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Sets what [`crate::request_body`] returns in native tests (per thread).
pub fn set_body(body: impl Into<Vec<u8>>) {
    BODY.with(|b| *b.borrow_mut() = body.into());
}

/// What [`set_body`] set; the native stand-in of the host's `request-body`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn body() -> Vec<u8> {
    BODY.with(|b| b.borrow().clone())
}

/// A request for `model` to `endpoint`, with the method and path llamagate
/// would give it, no headers and no options.
pub fn request(endpoint: Endpoint, model: &str) -> Request {
    let (method, path) = match endpoint {
        Endpoint::Chat => ("POST", "/api/chat"),
        Endpoint::Generate => ("POST", "/api/generate"),
        Endpoint::Embed => ("POST", "/api/embed"),
        Endpoint::Embeddings => ("POST", "/api/embeddings"),
        Endpoint::Show => ("POST", "/api/show"),
        Endpoint::OpenaiChat => ("POST", "/v1/chat/completions"),
        Endpoint::OpenaiCompletions => ("POST", "/v1/completions"),
        Endpoint::OpenaiEmbeddings => ("POST", "/v1/embeddings"),
        Endpoint::Tags => ("GET", "/api/tags"),
        Endpoint::Ps => ("GET", "/api/ps"),
        Endpoint::OpenaiModels => ("GET", "/v1/models"),
        _ => ("POST", "/"),
    };
    Request {
        id: "test".into(),
        endpoint,
        method: method.into(),
        path: path.into(),
        model: (!model.is_empty()).then(|| model.to_string()),
        headers: Vec::new(),
        client_addr: "127.0.0.1:50000".into(),
        options: Vec::new(),
        keep_alive: None,
        streaming: matches!(endpoint, Endpoint::Chat | Endpoint::Generate),
        body_size: 0,
        route: None,
    }
}

impl Request {
    /// Adds a header (name lower-cased, as llamagate gives them).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        });
        self
    }

    /// Adds an option.
    pub fn with_option(mut self, key: &str, value: JsonValue) -> Self {
        self.options.push(OptionEntry {
            key: key.into(),
            value,
        });
        self
    }
}

/// A healthy, idle backend serving `models`.
pub fn backend(id: &str, models: &[&str]) -> Backend {
    Backend {
        id: id.into(),
        url: format!("http://{id}:11434"),
        healthy: true,
        models: models.iter().map(|m| crate::names::display(m)).collect(),
        loaded: Vec::new(),
        in_flight: 0,
    }
}

impl Backend {
    /// Marks `model` as loaded, with its context size.
    pub fn with_loaded(mut self, model: &str, context_length: u32) -> Self {
        self.loaded.push(LoadedModel {
            name: crate::names::display(model),
            context_length: Some(context_length),
            size_vram: 1 << 30,
        });
        self
    }

    /// Sets the requests in flight.
    pub fn with_in_flight(mut self, n: u32) -> Self {
        self.in_flight = n;
        self
    }

    /// Marks the backend unhealthy.
    pub fn unhealthy(mut self) -> Self {
        self.healthy = false;
        self
    }
}
