//! llamagate's built-in policy, embedded in the binary.
//!
//! It gives llamagate gollamas' semantics and the usual fleet rules:
//! - a model → backend map (`[policy.models]`; several ids are replicas),
//!   or, when the map is empty, routing to whichever backends serve the model;
//! - aliases (`gpt-4o` → `llama3.2`), rewritten before the backend sees them,
//!   and shown in listings with `list_aliases`;
//! - listings restricted to the configured models unless `list_all`;
//! - `num_ctx` and `keep_alive`: defaults (set when missing), enforced values
//!   (always set) and a `num_ctx` ceiling, globally and per model;
//! - an optional header that pins a blob upload, a create or a pull to one
//!   backend (`x-llamagate-backend`); other requests are routed by the map
//!   whatever the header says, and the header never reaches a backend;
//! - an unpinned pull or create of a model no backend has yet goes to the
//!   best backend (a configured model: to its backends); a create prefers the
//!   backends that already have its `from` model.
//!
//! Replicas are ordered healthy first, then those with the model loaded, then
//! by fewest requests in flight.

use std::collections::BTreeMap;

use llamagate_sdk::names;
use serde::Deserialize;

mod rules;
pub use rules::{create_base, Config, ModelRules, OptionRules};

#[cfg(target_arch = "wasm32")]
mod guest {
    use super::*;
    use llamagate_sdk::{
        Backend, Decision, Edits, Endpoint, JsonValue, ListedModel, OptionEntry, Policy, Request,
    };
    use std::cell::RefCell;

    thread_local! {
        static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
    }

    struct DefaultPolicy;

    impl Policy for DefaultPolicy {
        fn init(config: String) -> Result<(), String> {
            let config = Config::parse(&config)?;
            CONFIG.with(|c| *c.borrow_mut() = Some(config));
            Ok(())
        }

        fn on_request(req: Request, backends: Vec<Backend>) -> Decision {
            CONFIG.with(|c| {
                let c = c.borrow();
                let config = c.as_ref().expect("init runs first");
                Decision::Forward(decide(config, &req, &backends))
            })
        }

        fn list_models(_req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> {
            CONFIG.with(|c| {
                let c = c.borrow();
                let config = c.as_ref().expect("init runs first");
                let shown = config.listing(models.iter().map(|m| m.name.as_str()));
                shown
                    .into_iter()
                    .filter_map(|(name, source)| {
                        let m = models.iter().find(|m| m.name == source)?;
                        Some(ListedModel {
                            name,
                            source,
                            backends: m.backends.clone(),
                        })
                    })
                    .collect()
            })
        }
    }

    fn decide(config: &Config, req: &Request, backends: &[Backend]) -> Edits {
        let mut edits = Edits::none();
        let pin = req.header(&config.backend_header);
        if pin.is_some() {
            // The header is llamagate's, never the backend's.
            edits.remove_headers.push(config.backend_header.clone());
        }
        // Only requests that place new data on a server may choose it: the
        // blobs of a create, the create, a pull. Everything else is routed by
        // the operator's model map, whatever the client asks.
        if pins(req.endpoint) {
            if let Some(id) = config.pinned_backend(pin) {
                if backends.iter().any(|b| b.id == id) {
                    edits.backends = Some(vec![id.to_string()]);
                }
            }
        }
        let Some(model) = req.model.as_deref() else {
            if edits.backends.is_none() && req.endpoint != Endpoint::Root {
                edits.backends = Some(order(backends.iter().collect(), None));
            }
            return edits;
        };
        let target = config.resolve_alias(model);
        if let Some(target) = &target {
            edits.model = Some(target.clone());
        }
        let target = target.as_deref().unwrap_or(model);
        if edits.backends.is_none() {
            let mut chosen = route(config, req.endpoint, target, backends);
            if req.endpoint == Endpoint::Create {
                // Unpinned: where the base model (`from`) already is, if
                // anywhere, so Ollama need not fetch it from the registry.
                if let Some(base) = create_base(&llamagate_sdk::request_body()) {
                    prefer_serving(
                        &mut chosen,
                        &config.resolve_alias(&base).unwrap_or(base),
                        backends,
                    );
                }
            }
            edits.backends = Some(chosen);
        }
        if takes_options(req.endpoint) {
            let rules = config.rules_for(target);
            let current = req.option("num_ctx").and_then(as_i64);
            if let Some(n) = rules.num_ctx(current) {
                edits.set_options.push(OptionEntry {
                    key: "num_ctx".into(),
                    value: JsonValue::Integer(n),
                });
            }
            if let Some(k) = rules.keep_alive(req.keep_alive.is_some()) {
                edits.keep_alive = Some(to_json_value(k));
            }
        }
        edits
    }

    /// The backends for a model, best first; empty when none serves it.
    fn route(
        config: &Config,
        endpoint: Endpoint,
        model: &str,
        backends: &[Backend],
    ) -> Vec<String> {
        let key = names::key(model);
        if let Some(ids) = config.models.get(&key) {
            let chosen = backends.iter().filter(|b| ids.contains(&b.id)).collect();
            return order(chosen, Some(&key));
        }
        if !config.routes_unlisted() {
            return Vec::new();
        }
        let serving: Vec<&Backend> = backends
            .iter()
            .filter(|b| b.models.iter().any(|m| names::key(m) == key))
            .collect();
        if serving.is_empty() && creates_model(endpoint) {
            // A model nobody has yet: pull or create it on the best backend.
            return order(backends.iter().collect(), None);
        }
        order(serving, Some(&key))
    }

    /// Moves the backends that serve `model` to the front, healthy ones
    /// first, keeping the order otherwise.
    fn prefer_serving(chosen: &mut [String], model: &str, backends: &[Backend]) {
        let key = names::key(model);
        let rank = |id: &String| {
            let b = backends.iter().find(|b| &b.id == id);
            let serves = b.is_some_and(|b| b.models.iter().any(|m| names::key(m) == key));
            (!b.is_some_and(|b| b.healthy), !serves)
        };
        chosen.sort_by_key(rank);
    }

    /// Healthy first, then with the model loaded, then fewest in flight.
    fn order(mut list: Vec<&Backend>, model_key: Option<&str>) -> Vec<String> {
        list.sort_by_key(|b| {
            let loaded = model_key
                .map(|k| b.loaded.iter().any(|l| names::key(&l.name) == k))
                .unwrap_or(false);
            (!b.healthy, !loaded, b.in_flight)
        });
        list.into_iter().map(|b| b.id.clone()).collect()
    }

    fn takes_options(endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::Generate | Endpoint::Chat | Endpoint::Embed | Endpoint::Embeddings
        )
    }

    /// Endpoints the backend header may pin.
    fn pins(endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::Blobs | Endpoint::Create | Endpoint::Pull
        )
    }

    fn creates_model(endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::Pull | Endpoint::Create)
    }

    fn as_i64(v: &JsonValue) -> Option<i64> {
        match v {
            JsonValue::Integer(n) => Some(*n),
            JsonValue::Number(f) => Some(*f as i64),
            _ => None,
        }
    }

    fn to_json_value(v: &serde_json::Value) -> JsonValue {
        match v {
            serde_json::Value::Null => JsonValue::Null,
            serde_json::Value::Bool(b) => JsonValue::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => JsonValue::Integer(i),
                None => JsonValue::Number(n.as_f64().unwrap_or_default()),
            },
            serde_json::Value::String(s) => JsonValue::Text(s.clone()),
            other => JsonValue::Raw(other.to_string()),
        }
    }

    llamagate_sdk::export!(DefaultPolicy);
}

/// Parses the `models` table value: one id or a list of ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

fn normalise_keys<V>(map: BTreeMap<String, V>) -> BTreeMap<String, V> {
    map.into_iter().map(|(k, v)| (names::key(&k), v)).collect()
}
