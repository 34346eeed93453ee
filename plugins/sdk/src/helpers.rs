//! Helpers on the generated types, so a simple policy is a few dozen lines.

use crate::bindings::llamagate::policy::types::{
    Backend, BackendState, Decision, Edits, Endpoint, Header, JsonValue, Level, LoadedModel,
    OptionEntry, Reply, Request,
};
use crate::names;

/// Logs through the host, tagged with the plugin's name (natively: to stderr).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::llamagate::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// The raw request body. It copies the whole body into the plugin (vision
/// requests carry megabytes): use it only when the structured view is not enough.
/// Natively, it returns what [`crate::testing::set_body`] set.
pub fn request_body() -> Vec<u8> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::llamagate::policy::host::request_body();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::body();
}

/// The backends that serve `model` (names compared as Ollama compares them),
/// in configuration order; empty if none. Unhealthy ones are included.
/// Natively, it answers from what [`crate::testing::set_fleet`] set.
pub fn backends_for(model: &str) -> Vec<Backend> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::llamagate::policy::host::backends_for(model);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::fleet_for(model);
}

/// Every configured backend, in configuration order. It copies the whole
/// fleet: use it for what [`backends_for`] cannot answer (a model no backend
/// has yet, a request without a model). Natively, what
/// [`crate::testing::set_fleet`] set.
pub fn all_backends() -> Vec<Backend> {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::llamagate::policy::host::all_backends();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::fleet();
}

/// The backends whose id is in `ids`, in configuration order (ids that name no
/// backend are left out), e.g. an earlier plugin's `route`.
///
/// When they all serve `model`, one [`backends_for`] call answers; the whole
/// fleet is asked for only when some do not (or `model` is `None`). Those
/// that serve `model` carry its facts (`model`) either way.
pub fn backends_with_ids(ids: &[String], model: Option<&str>) -> Vec<Backend> {
    let mut serving = Vec::new();
    if let Some(model) = model {
        serving = backends_for(model)
            .into_iter()
            .filter(|b| ids.contains(&b.id))
            .collect();
        if ids.iter().all(|id| serving.iter().any(|b| &b.id == id)) {
            return serving;
        }
    }
    all_backends()
        .into_iter()
        .filter(|b| ids.contains(&b.id))
        .map(|b| match serving.iter().position(|s| s.id == b.id) {
            Some(at) => serving.swap_remove(at),
            None => b,
        })
        .collect()
}

impl Request {
    /// The value of a request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    /// The value of an option, if the request sets it.
    pub fn option(&self, key: &str) -> Option<&JsonValue> {
        self.options.iter().find(|o| o.key == key).map(|o| &o.value)
    }

    /// An integer option (`num_ctx`, `num_predict`, ...).
    pub fn option_i64(&self, key: &str) -> Option<i64> {
        self.option(key).and_then(JsonValue::as_i64)
    }

    /// The backends a placing plugin may choose from: those an earlier plugin
    /// of the chain chose (`route`, e.g. the default policy's model map), or,
    /// when none chose, those that serve the requested model (every backend
    /// when the request names none). In configuration order. Asks the host
    /// ([`backends_with_ids`], [`backends_for`]): call it once per decision.
    pub fn candidates(&self) -> Vec<Backend> {
        match (&self.route, &self.model) {
            (Some(route), model) => backends_with_ids(route, model.as_deref()),
            (None, Some(model)) => backends_for(model),
            (None, None) => all_backends(),
        }
    }

    /// Whether the request came through the OpenAI-compatible `/v1` API.
    pub fn is_openai(&self) -> bool {
        self.path.starts_with("/v1/")
    }

    /// Whether the endpoint takes an `options` object (`num_ctx` and the like).
    pub fn takes_options(&self) -> bool {
        matches!(
            self.endpoint,
            Endpoint::Generate | Endpoint::Chat | Endpoint::Embed | Endpoint::Embeddings
        )
    }

    /// Whether the endpoint runs the model: generate, chat and embeddings, native
    /// or OpenAI-compatible (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/embeddings`, `/v1/responses`, `/v1/messages`). These are the requests
    /// that load a model and occupy a GPU, so the ones worth placing by load or
    /// memory; listings, `show` and model management (pull, create, delete...) are not.
    pub fn is_inference(&self) -> bool {
        matches!(
            self.endpoint,
            Endpoint::Generate
                | Endpoint::Chat
                | Endpoint::Embed
                | Endpoint::Embeddings
                | Endpoint::OpenaiChat
                | Endpoint::OpenaiCompletions
                | Endpoint::OpenaiEmbeddings
                | Endpoint::OpenaiResponses
                | Endpoint::OpenaiMessages
        )
    }
}

impl JsonValue {
    /// The value as an integer, if it is a number without fraction.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            JsonValue::Integer(n) => Some(*n),
            JsonValue::Number(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl BackendState {
    /// Rank for ordering replicas: `up` and `half-open` 0, `open` and
    /// `down` 1 (kept last, not dropped: the host may still try them when
    /// all else fails). A half-open backend ranks with the up ones: it must
    /// get its trial request, or its breaker would never close while other
    /// replicas take the traffic; the host itself lets only the breaker's
    /// `trials` through at once and sends the rest on down the list.
    pub fn rank(self) -> u8 {
        match self {
            BackendState::Up | BackendState::HalfOpen => 0,
            BackendState::Open | BackendState::Down => 1,
        }
    }
}

impl LoadedModel {
    /// Whether Ollama put part of it in CPU memory (`size-vram` < `size`): it
    /// runs, but much slower than fully in GPU memory.
    pub fn offloaded(&self) -> bool {
        self.size_vram < self.size
    }
}

impl Backend {
    /// Whether `model` is loaded in the backend's memory right now.
    pub fn has_loaded(&self, model: &str) -> bool {
        self.loaded.iter().any(|l| names::same(&l.name, model))
    }

    /// The loaded runner of `model`, if it is loaded right now. Its
    /// `context_length` tells whether a request's `num_ctx` would make Ollama
    /// reload it (Ollama restarts a runner whose `num_ctx` differs).
    pub fn loaded_model(&self, model: &str) -> Option<&LoadedModel> {
        self.loaded.iter().find(|l| names::same(&l.name, model))
    }

    /// GPU memory the loaded models take (sum of their `size-vram`).
    pub fn vram_used(&self) -> u64 {
        self.loaded.iter().map(|l| l.size_vram).sum()
    }

    /// Declared GPU memory not taken by loaded models; `None` when the
    /// operator declared no `vram`.
    pub fn vram_free(&self) -> Option<u64> {
        self.vram.map(|v| v.saturating_sub(self.vram_used()))
    }

    /// Requests for the asked model (`model` facts of `backends-for`) in
    /// flight plus queued; 0 when the record carries no model facts.
    pub fn model_load(&self) -> u32 {
        self.model
            .as_ref()
            .map_or(0, |m| m.in_flight.saturating_add(m.queued))
    }

    /// Whether the asked model's per-model slots are all taken here (its
    /// requests in flight reach `model-slots`), or all the backend's slots.
    pub fn is_full(&self) -> bool {
        let model_in_flight = self.model.as_ref().map_or(0, |m| m.in_flight);
        model_in_flight >= self.model_slots.max(1) || self.in_flight >= self.slots.max(1)
    }
}

impl Edits {
    /// Edits that change nothing.
    pub fn none() -> Self {
        Edits {
            model: None,
            set_options: Vec::new(),
            remove_options: Vec::new(),
            keep_alive: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            backends: None,
            principal: None,
            priority: None,
            first_byte_timeout_ms: None,
            stream_idle_timeout_ms: None,
            queue_timeout_ms: None,
            failover: None,
            every_backend: None,
        }
    }

    /// Send the request to these backends, tried in this order.
    pub fn route_to<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.backends = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Rename the model before it reaches the backend.
    pub fn rename_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Set an option, replacing the client's value.
    pub fn set_option(mut self, key: impl Into<String>, value: JsonValue) -> Self {
        let key = key.into();
        self.set_options.retain(|o| o.key != key);
        self.set_options.push(OptionEntry { key, value });
        self
    }

    /// Set `options.num_ctx`.
    pub fn set_num_ctx(self, tokens: i64) -> Self {
        self.set_option("num_ctx", JsonValue::Integer(tokens))
    }

    /// Set `keep_alive`: seconds (`JsonValue::Integer(-1)`) or a duration (`Text("10m")`).
    pub fn set_keep_alive(mut self, value: JsonValue) -> Self {
        self.keep_alive = Some(value);
        self
    }

    /// Set a request header.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Remove a request header (so the backend never sees it, e.g. `authorization`).
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(name.into());
        self
    }

    /// Say who the request is for: a key's or team's name, never a secret
    /// (llamagate logs it and uses it as the fairness key from then on).
    pub fn set_principal(mut self, name: impl Into<String>) -> Self {
        self.principal = Some(name.into());
        self
    }

    /// Queue priority while the request waits for a slot (higher first; 0
    /// by default).
    pub fn set_priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Longest wait for a backend's response head before llamagate moves on.
    pub fn set_first_byte_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.first_byte_timeout_ms = Some(millis(timeout));
        self
    }

    /// Longest gap between two parts of a streamed response.
    pub fn set_stream_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.stream_idle_timeout_ms = Some(millis(timeout));
        self
    }

    /// Longest wait for a free slot before the client gets 429.
    pub fn set_queue_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.queue_timeout_ms = Some(millis(timeout));
        self
    }

    /// `false`: never move to the next backend of the route; `true`: the
    /// host's failover rules (also what leaving it unset means).
    pub fn set_failover(mut self, failover: bool) -> Self {
        self.failover = Some(failover);
        self
    }

    /// For a pull or a delete: send it to every backend of the route at
    /// once (`true`), or to the first that can be reached (`false`, unset).
    pub fn set_every_backend(mut self, every: bool) -> Self {
        self.every_backend = Some(every);
        self
    }
}

/// Whole milliseconds of a duration, saturating.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Decision {
    /// Go on unchanged.
    pub fn pass() -> Self {
        Decision::Forward(Edits::none())
    }

    /// Go on with these edits.
    pub fn forward(edits: Edits) -> Self {
        Decision::Forward(edits)
    }

    /// Answer the client with an error status and message; llamagate words it
    /// in the client's API shape (`{"error":"..."}` or OpenAI's envelope).
    pub fn reject(status: u16, message: impl Into<String>) -> Self {
        Decision::Respond(Reply {
            status,
            message: message.into(),
            headers: Vec::new(),
        })
    }

    /// Like [`Decision::reject`], with response headers (`www-authenticate`, `retry-after`).
    pub fn reject_with_headers(
        status: u16,
        message: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> Self {
        Decision::Respond(Reply {
            status,
            message: message.into(),
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        })
    }

    /// The edits, if the decision forwards.
    pub fn edits(&self) -> Option<&Edits> {
        match self {
            Decision::Forward(e) => Some(e),
            Decision::Respond(_) => None,
        }
    }

    /// The reply, if the decision answers.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Decision::Respond(r) => Some(r),
            Decision::Forward(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{all_backends, backends_for, backends_with_ids};
    use crate::testing::{backend, fleet_calls, request, set_fleet, FleetCalls};
    use crate::{Backend, Endpoint};

    fn ids(backends: Vec<Backend>) -> Vec<String> {
        backends.into_iter().map(|b| b.id).collect()
    }

    fn fleet() {
        set_fleet([
            backend("a", &["llama3.2", "mistral"]),
            backend("b", &["qwen2.5:14b"]).unhealthy(),
            backend("c", &["llama3.2:latest"]),
            backend("d", &[]),
        ]);
    }

    #[test]
    fn backends_for_a_model_by_any_spelling_in_fleet_order() {
        fleet();
        assert_eq!(ids(backends_for("LLAMA3.2")), ["a", "c"]);
        assert_eq!(ids(backends_for("library/qwen2.5:14b")), ["b"]);
        assert!(backends_for("llama3.2:1b").is_empty());
        assert_eq!(ids(all_backends()), ["a", "b", "c", "d"]);
        let b = &backends_for("qwen2.5:14b")[0];
        assert_eq!(
            (b.healthy, b.reason.as_deref()),
            (false, Some("connection refused"))
        );
        assert_eq!(
            fleet_calls(),
            FleetCalls {
                backends_for: 4,
                all_backends: 1
            }
        );
    }

    #[test]
    fn backends_with_ids_asks_the_whole_fleet_only_when_it_must() {
        fleet();
        let route = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Every id serves the model: one `backends-for`, fleet order kept.
        assert_eq!(
            ids(backends_with_ids(&route(&["c", "a"]), Some("llama3.2"))),
            ["a", "c"]
        );
        assert_eq!(fleet_calls().all_backends, 0);
        // `d` does not serve it, `x` is no backend: the whole fleet is asked.
        let chosen = backends_with_ids(&route(&["d", "x", "a"]), Some("llama3.2"));
        assert!(chosen[0].model.is_some(), "a serves it: its facts are kept");
        assert!(chosen[1].model.is_none(), "d does not");
        assert_eq!(ids(chosen), ["a", "d"]);
        assert_eq!(fleet_calls().all_backends, 1);
        assert_eq!(ids(backends_with_ids(&route(&["b"]), None)), ["b"]);
        assert!(backends_with_ids(&[], Some("llama3.2")).is_empty());
    }

    #[test]
    fn candidates_are_the_route_else_the_serving_backends() {
        fleet();
        let chat = request(Endpoint::Chat, "llama3.2");
        assert_eq!(ids(chat.candidates()), ["a", "c"]);
        let mut routed = chat.clone();
        routed.route = Some(vec!["d".into(), "c".into()]);
        assert_eq!(ids(routed.candidates()), ["c", "d"]);
        assert_eq!(ids(request(Endpoint::Tags, "").candidates()).len(), 4);
        assert!(request(Endpoint::Chat, "phi4").candidates().is_empty());
    }

    #[test]
    fn inference_endpoints() {
        for e in [Endpoint::Chat, Endpoint::Embed, Endpoint::OpenaiChat] {
            assert!(request(e, "llama3.2").is_inference(), "{e:?}");
        }
        for e in [Endpoint::Show, Endpoint::Pull, Endpoint::Tags] {
            assert!(!request(e, "llama3.2").is_inference(), "{e:?}");
        }
    }

    #[test]
    fn backends_for_carries_that_models_facts_all_backends_none() {
        set_fleet([
            backend("a", &["llama3.2", "mistral"])
                .with_model_size("llama3.2", 2 << 30)
                .with_model_requests("LLAMA3.2", 2, 3)
                .with_model_requests("mistral", 1, 0),
            backend("b", &["llama3.2"]),
        ]);
        let serving = backends_for("llama3.2:latest");
        let a = serving[0].model.expect("facts of the asked model");
        assert_eq!((a.size, a.in_flight, a.queued), (Some(2 << 30), 2, 3));
        assert_eq!(serving[0].model_load(), 5);
        assert_eq!((serving[0].in_flight, serving[0].queued), (3, 3));
        let b = serving[1].model.unwrap();
        assert_eq!((b.size, b.in_flight, b.queued), (None, 0, 0));
        assert_eq!(
            backends_for("mistral")[0].model.as_ref().unwrap().in_flight,
            1
        );
        assert!(all_backends().iter().all(|b| b.model.is_none()));
    }

    #[test]
    fn state_rank_offload_fullness_and_free_vram() {
        use crate::BackendState;
        let ranks: Vec<u8> = [
            BackendState::Up,
            BackendState::HalfOpen,
            BackendState::Open,
            BackendState::Down,
        ]
        .into_iter()
        .map(BackendState::rank)
        .collect();
        assert_eq!(ranks, [0, 0, 1, 1]);
        let b = backend("gpu", &["m"])
            .with_vram(crate::testing::gib(24))
            .with_loaded_sized("m", crate::testing::gib(10), crate::testing::gib(8));
        assert!(b.loaded_model("m").unwrap().offloaded());
        assert_eq!(b.vram_free(), Some(crate::testing::gib(16)));
        assert_eq!(backend("x", &[]).vram_free(), None);
        set_fleet([backend("a", &["m"])
            .with_slots(8, 2)
            .with_model_requests("m", 2, 0)]);
        assert!(backends_for("m")[0].is_full(), "2 of 2 model slots");
        set_fleet([backend("a", &["m"])
            .with_slots(8, 2)
            .with_model_requests("m", 1, 4)]);
        assert!(!backends_for("m")[0].is_full());
    }

    #[test]
    fn edits_ask_the_host_to_enforce() {
        use std::time::Duration;
        let e = crate::Edits::none()
            .set_priority(-3)
            .set_first_byte_timeout(Duration::from_secs(20 * 60))
            .set_stream_idle_timeout(Duration::from_millis(1500))
            .set_queue_timeout(Duration::from_secs(5))
            .set_failover(false);
        assert_eq!(e.priority, Some(-3));
        assert_eq!(e.first_byte_timeout_ms, Some(1_200_000));
        assert_eq!(e.stream_idle_timeout_ms, Some(1500));
        assert_eq!(e.queue_timeout_ms, Some(5000));
        assert_eq!(e.failover, Some(false));
        let none = crate::Edits::none();
        assert_eq!((none.priority, none.failover), (None, None));
    }

    #[test]
    fn loaded_model_by_any_spelling() {
        let b = backend("gpu", &["llama3.2"]).with_loaded("llama3.2", 8192);
        let runner = b.loaded_model("LLAMA3.2:latest").expect("loaded");
        assert_eq!(runner.context_length, Some(8192));
        assert!(b.loaded_model("qwen2.5:14b").is_none());
    }
}
