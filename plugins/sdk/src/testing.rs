//! Building requests and backends for native unit tests of plugin logic, and
//! the native stand-ins of the host calls.
//!
//! On the current thread, [`set_fleet`] sets the backends that
//! [`crate::backends_for`] and [`crate::all_backends`] answer from, and
//! [`set_body`] what [`crate::request_body`] returns. A [`TestBackend`] is the
//! record a plugin gets plus the models it serves, which the record does not
//! carry (the host answers `backends-for` from them), and the facts of each
//! model on it (`backends-for(model)` fills the record's `model` with them;
//! `all-backends` leaves it `none`).
//!
//! ```ignore
//! testing::set_fleet([
//!     testing::backend("gpu-01", &["llama3.2"]).with_in_flight(2),
//!     testing::backend("gpu-02", &["llama3.2"]),
//! ]);
//! let req = testing::request(Endpoint::Chat, "llama3.2").with_header("authorization", "Bearer x");
//! assert_eq!(MyPolicy::on_request(req), Decision::forward(Edits::none().route_to(["gpu-02", "gpu-01"])));
//! assert_eq!(testing::fleet_calls().all_backends, 0);
//! ```

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};

use crate::bindings::llamagate::policy::types::{
    Backend, BackendState, Endpoint, Header, JsonValue, LoadedModel, ModelFacts, OptionEntry,
    Request,
};
use crate::names;

thread_local! {
    static BODY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static FLEET: RefCell<Vec<TestBackend>> = const { RefCell::new(Vec::new()) };
    static CALLS: Cell<FleetCalls> = const { Cell::new(FleetCalls { backends_for: 0, all_backends: 0 }) };
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

/// Sets the fleet, in configuration order, that [`crate::backends_for`] and
/// [`crate::all_backends`] answer from in native tests (per thread), and
/// resets [`fleet_calls`].
pub fn set_fleet(fleet: impl IntoIterator<Item = TestBackend>) {
    FLEET.with(|f| *f.borrow_mut() = fleet.into_iter().collect());
    CALLS.with(|c| c.set(FleetCalls::default()));
}

/// How often a plugin asked for backends on this thread since [`set_fleet`]:
/// lets a test check that a decision asks only for what it needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetCalls {
    /// Calls of [`crate::backends_for`].
    pub backends_for: u32,
    /// Calls of [`crate::all_backends`].
    pub all_backends: u32,
}

/// The host calls counted since the last [`set_fleet`] on this thread.
pub fn fleet_calls() -> FleetCalls {
    CALLS.with(Cell::get)
}

/// The native stand-in of the host's `backends-for`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn fleet_for(model: &str) -> Vec<Backend> {
    CALLS.with(|c| {
        let mut calls = c.get();
        calls.backends_for += 1;
        c.set(calls);
    });
    let key = names::key(model);
    FLEET.with(|f| {
        f.borrow()
            .iter()
            .filter(|b| b.models.iter().any(|m| names::key(m) == key))
            .map(|b| Backend {
                model: Some(b.facts_of(model)),
                ..b.backend.clone()
            })
            .collect()
    })
}

/// The native stand-in of the host's `all-backends`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn fleet() -> Vec<Backend> {
    CALLS.with(|c| {
        let mut calls = c.get();
        calls.all_backends += 1;
        c.set(calls);
    });
    FLEET.with(|f| {
        f.borrow()
            .iter()
            .map(|b| Backend {
                model: None,
                ..b.backend.clone()
            })
            .collect()
    })
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

/// A backend for native tests: the record plugins get, and the models it
/// serves (what the host's `backends-for` looks at). It derefs to its
/// [`Backend`], so it can be passed where a `&Backend` is expected.
#[derive(Clone, Debug, PartialEq)]
pub struct TestBackend {
    /// What a plugin gets.
    pub backend: Backend,
    /// The models the backend serves (display names, as from its `/api/tags`).
    pub models: Vec<String>,
    /// Facts of models on this backend, by display name (size, requests);
    /// a served model not listed has none known and nothing in flight.
    pub model_facts: Vec<(String, ModelFacts)>,
}

/// A healthy, idle backend serving `models`, with Ollama's default slots
/// (1 per model, 3 in all), no declared `vram` and no version known.
pub fn backend(id: &str, models: &[&str]) -> TestBackend {
    TestBackend {
        backend: Backend {
            id: id.into(),
            state: BackendState::Up,
            healthy: true,
            reason: None,
            version: None,
            slots: 3,
            model_slots: 1,
            in_flight: 0,
            queued: 0,
            vram: None,
            loaded: Vec::new(),
            model: None,
        },
        models: models.iter().map(|m| names::display(m)).collect(),
        model_facts: Vec::new(),
    }
}

/// Gibibytes, in bytes: `gib(8)` for an 8 GiB GPU.
pub const fn gib(n: u64) -> u64 {
    n << 30
}

impl TestBackend {
    /// Marks `model` as loaded, with its context size, 1 GiB fully in GPU memory.
    pub fn with_loaded(self, model: &str, context_length: u32) -> Self {
        self.with_runner(LoadedModel {
            name: names::display(model),
            size: gib(1),
            size_vram: gib(1),
            context_length: Some(context_length),
            expires_in: None,
        })
    }

    /// Marks `model` as loaded taking `size` bytes, `size_vram` of them in
    /// GPU memory (less than `size`: offloaded to the CPU).
    pub fn with_loaded_sized(self, model: &str, size: u64, size_vram: u64) -> Self {
        self.with_runner(LoadedModel {
            name: names::display(model),
            size,
            size_vram,
            context_length: None,
            expires_in: None,
        })
    }

    /// Adds a loaded runner as given.
    pub fn with_runner(mut self, runner: LoadedModel) -> Self {
        self.backend.loaded.push(runner);
        self
    }

    /// Sets the requests in flight (all models).
    pub fn with_in_flight(mut self, n: u32) -> Self {
        self.backend.in_flight = n;
        self
    }

    /// Sets the requests queued that could go to it (all models).
    pub fn with_queued(mut self, n: u32) -> Self {
        self.backend.queued = n;
        self
    }

    /// Sets the slots: `slots` for the backend, `model_slots` per model.
    pub fn with_slots(mut self, slots: u32, model_slots: u32) -> Self {
        self.backend.slots = slots;
        self.backend.model_slots = model_slots;
        self
    }

    /// Declares its GPU memory budget, in bytes.
    pub fn with_vram(mut self, bytes: u64) -> Self {
        self.backend.vram = Some(bytes);
        self
    }

    /// Sets its Ollama version.
    pub fn with_version(mut self, version: &str) -> Self {
        self.backend.version = Some(version.into());
        self
    }

    /// Sets the size on disk of `model` (as its `/api/tags` would say).
    pub fn with_model_size(mut self, model: &str, bytes: u64) -> Self {
        self.facts_mut(model).size = Some(bytes);
        self
    }

    /// Sets the requests for `model` in flight to it and queued for it.
    /// Also counts them in the backend's totals.
    pub fn with_model_requests(mut self, model: &str, in_flight: u32, queued: u32) -> Self {
        let facts = self.facts_mut(model);
        facts.in_flight = in_flight;
        facts.queued = queued;
        self.backend.in_flight += in_flight;
        self.backend.queued += queued;
        self
    }

    /// Marks the backend unhealthy (`down`), as a failed probe would.
    pub fn unhealthy(self) -> Self {
        self.unhealthy_because("connection refused")
    }

    /// Marks the backend `down`, with the reason the host would give.
    pub fn unhealthy_because(self, reason: &str) -> Self {
        self.with_state(BackendState::Down, Some(reason))
    }

    /// Sets its state (and `healthy` to match: up or half-open), with a reason.
    pub fn with_state(mut self, state: BackendState, reason: Option<&str>) -> Self {
        self.backend.state = state;
        self.backend.healthy = matches!(state, BackendState::Up | BackendState::HalfOpen);
        self.backend.reason = reason.map(Into::into);
        self
    }

    /// The facts `backends-for(model)` gives on this backend.
    pub fn facts_of(&self, model: &str) -> ModelFacts {
        self.model_facts
            .iter()
            .find(|(m, _)| names::same(m, model))
            .map(|(_, f)| *f)
            .unwrap_or(ModelFacts {
                size: None,
                in_flight: 0,
                queued: 0,
            })
    }

    fn facts_mut(&mut self, model: &str) -> &mut ModelFacts {
        let at = match self
            .model_facts
            .iter()
            .position(|(m, _)| names::same(m, model))
        {
            Some(at) => at,
            None => {
                let facts = self.facts_of(model);
                self.model_facts.push((names::display(model), facts));
                self.model_facts.len() - 1
            }
        };
        &mut self.model_facts[at].1
    }

    /// The record a plugin gets.
    pub fn record(&self) -> Backend {
        self.backend.clone()
    }
}

impl Deref for TestBackend {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.backend
    }
}

impl DerefMut for TestBackend {
    fn deref_mut(&mut self) -> &mut Backend {
        &mut self.backend
    }
}

impl From<TestBackend> for Backend {
    fn from(b: TestBackend) -> Backend {
        b.backend
    }
}
