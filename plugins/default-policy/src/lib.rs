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

/// The `policy` export. Compiled natively too, so that its decisions are
/// unit-tested against the SDK's stand-in fleet.
mod guest {
    use super::*;
    use llamagate_sdk::{
        all_backends, backends_for, backends_with_ids, Backend, Decision, Edits, Endpoint,
        JsonValue, ListedModel, OptionEntry, Policy, Request,
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

        fn on_request(req: Request) -> Decision {
            CONFIG.with(|c| {
                let c = c.borrow();
                let config = c.as_ref().expect("init runs first");
                Decision::Forward(decide(config, &req))
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

    /// The edits for one request. Asks the host for backends only as the
    /// request needs them: a request for a model costs one `backends-for`
    /// call (more only when a mapped backend does not serve the model).
    fn decide(config: &Config, req: &Request) -> Edits {
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
                if all_backends().iter().any(|b| b.id == id) {
                    edits.backends = Some(vec![id.to_string()]);
                }
            }
        }
        let Some(model) = req.model.as_deref() else {
            if edits.backends.is_none() && req.endpoint != Endpoint::Root {
                edits.backends = Some(ids(order(all_backends(), None)));
            }
            return edits;
        };
        let target = config.resolve_alias(model);
        if let Some(target) = &target {
            edits.model = Some(target.clone());
        }
        let target = target.as_deref().unwrap_or(model);
        if edits.backends.is_none() {
            let mut chosen = route(config, req.endpoint, target);
            if req.endpoint == Endpoint::Create {
                // Unpinned: where the base model (`from`) already is, if
                // anywhere, so Ollama need not fetch it from the registry.
                if let Some(base) = create_base(&llamagate_sdk::request_body()) {
                    prefer_serving(&mut chosen, &config.resolve_alias(&base).unwrap_or(base));
                }
            }
            edits.backends = Some(ids(chosen));
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
    fn route(config: &Config, endpoint: Endpoint, model: &str) -> Vec<Backend> {
        let key = names::key(model);
        if let Some(ids) = config.models.get(&key) {
            // The map's backends, whether or not they report the model yet.
            return order(backends_with_ids(ids, Some(model)), Some(&key));
        }
        if !config.routes_unlisted() {
            return Vec::new();
        }
        let serving = backends_for(model);
        if serving.is_empty() && creates_model(endpoint) {
            // A model nobody has yet: pull or create it on the best backend.
            return order(all_backends(), None);
        }
        order(serving, Some(&key))
    }

    /// Moves the backends that serve `model` to the front, healthy ones
    /// first, keeping the order otherwise.
    fn prefer_serving(chosen: &mut [Backend], model: &str) {
        if chosen.is_empty() {
            return;
        }
        let serving = backends_for(model);
        chosen.sort_by_key(|b| (!b.healthy, !serving.iter().any(|s| s.id == b.id)));
    }

    /// Healthy first, then with the model loaded, then fewest in flight.
    fn order(mut list: Vec<Backend>, model_key: Option<&str>) -> Vec<Backend> {
        list.sort_by_key(|b| {
            let loaded = model_key
                .map(|k| b.loaded.iter().any(|l| names::key(&l.name) == k))
                .unwrap_or(false);
            (!b.healthy, !loaded, b.in_flight)
        });
        list
    }

    fn ids(list: Vec<Backend>) -> Vec<String> {
        list.into_iter().map(|b| b.id).collect()
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

    #[cfg(test)]
    mod tests {
        use super::*;
        use llamagate_sdk::testing::{backend, fleet_calls, request, set_body, set_fleet};

        fn config(json: &str) -> Config {
            Config::parse(json).unwrap()
        }

        fn routed(config: &Config, req: &Request) -> Option<Vec<String>> {
            decide(config, req).backends
        }

        fn chat(model: &str) -> Request {
            request(Endpoint::Chat, model)
        }

        #[test]
        fn unmapped_models_go_to_their_backends_healthy_then_loaded_then_idle() {
            set_fleet([
                backend("a", &["llama3.2"]).with_in_flight(2),
                backend("b", &["llama3.2"]).unhealthy(),
                backend("c", &["llama3.2"])
                    .with_in_flight(5)
                    .with_loaded("llama3.2", 4096),
                backend("d", &["mistral"]),
                backend("e", &["llama3.2:latest"]).with_in_flight(1),
            ]);
            let c = config("{}");
            assert_eq!(routed(&c, &chat("LLAMA3.2")).unwrap(), ["c", "e", "a", "b"]);
            // One host call, and only the backends that serve the model.
            assert_eq!(fleet_calls().backends_for, 1);
            assert_eq!(fleet_calls().all_backends, 0);
            assert_eq!(routed(&c, &chat("phi4")).unwrap(), Vec::<String>::new());
        }

        #[test]
        fn mapped_models_go_to_their_map_entry_served_yet_or_not() {
            set_fleet([
                backend("a", &["llama3.2"]),
                backend("b", &[]).with_in_flight(1),
                backend("c", &["llama3.2"]),
            ]);
            let c = config(r#"{"models":{"llama3.2":["c","a"],"mistral":["b","a"]}}"#);
            assert_eq!(routed(&c, &chat("llama3.2")).unwrap(), ["a", "c"]);
            assert_eq!(fleet_calls().all_backends, 0, "all of them serve it");
            // `b` reports no models yet: the map still sends it there.
            assert_eq!(routed(&c, &chat("mistral")).unwrap(), ["a", "b"]);
            assert_eq!(routed(&c, &chat("qwen2.5")).unwrap(), Vec::<String>::new());
        }

        #[test]
        fn a_model_nobody_has_is_pulled_on_the_best_backend() {
            set_fleet([
                backend("a", &["llama3.2"]).with_in_flight(3),
                backend("b", &[]).unhealthy(),
                backend("c", &["mistral"]),
            ]);
            let c = config("{}");
            let pull = request(Endpoint::Pull, "qwen2.5:14b");
            assert_eq!(routed(&c, &pull).unwrap(), ["c", "a", "b"]);
            let pull = request(Endpoint::Pull, "mistral");
            assert_eq!(routed(&c, &pull).unwrap(), ["c"], "where it already is");
        }

        #[test]
        fn requests_without_a_model_go_anywhere_but_the_root_probe() {
            set_fleet([backend("a", &[]).unhealthy(), backend("b", &[])]);
            let c = config("{}");
            assert_eq!(
                routed(&c, &request(Endpoint::Tags, "")).unwrap(),
                ["b", "a"]
            );
            assert_eq!(routed(&c, &request(Endpoint::Root, "")), None);
        }

        #[test]
        fn the_header_pins_pulls_creates_and_blobs_only() {
            set_fleet([backend("a", &["llama3.2"]), backend("b", &[])]);
            let c = config("{}");
            let pin = |req: Request, id: &str| req.with_header("x-llamagate-backend", id);
            let edits = decide(&c, &pin(request(Endpoint::Pull, "llama3.2"), "b"));
            assert_eq!(edits.backends.unwrap(), ["b"]);
            assert_eq!(edits.remove_headers, ["x-llamagate-backend"]);
            let unknown = pin(request(Endpoint::Pull, "llama3.2"), "zz");
            assert_eq!(routed(&c, &unknown).unwrap(), ["a"]);
            let edits = decide(&c, &pin(chat("llama3.2"), "b"));
            assert_eq!(edits.backends.unwrap(), ["a"], "a chat is routed as usual");
            assert_eq!(edits.remove_headers, ["x-llamagate-backend"]);
        }

        #[test]
        fn a_create_prefers_the_backends_that_have_its_base() {
            set_fleet([
                backend("a", &[]),
                backend("b", &["llama3.2"]).with_in_flight(4),
                backend("c", &["llama3.2"]).unhealthy(),
            ]);
            let c = config(r#"{"aliases":{"base":"llama3.2"}}"#);
            set_body(r#"{"model":"mine","from":"base"}"#);
            let create = request(Endpoint::Create, "mine");
            assert_eq!(routed(&c, &create).unwrap(), ["b", "a", "c"]);
            set_body(r#"{"model":"mine"}"#);
            assert_eq!(routed(&c, &create).unwrap(), ["a", "b", "c"]);
        }

        #[test]
        fn aliases_are_renamed_and_routed_by_their_target() {
            set_fleet([backend("a", &["mistral"]), backend("b", &["llama3.2"])]);
            let c = config(r#"{"aliases":{"gpt-4o":"llama3.2"},"defaults":{"num_ctx":8192}}"#);
            let edits = decide(&c, &chat("gpt-4o"));
            assert_eq!(edits.model.as_deref(), Some("llama3.2"));
            assert_eq!(edits.backends.unwrap(), ["b"]);
            assert_eq!(edits.set_options[0].key, "num_ctx");
            assert_eq!(edits.principal, None);
        }
    }
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
