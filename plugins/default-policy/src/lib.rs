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
//! - replicas ordered by a `strategy`, globally and per model ([`placement`]):
//!   `warm-first` (the default), `priority`, `round-robin` or `least-busy`,
//!   with `weights` per backend; up and half-open (on trial) before open or down,
//!   and the replica list's order breaking ties;
//! - opt-in per model, `num_ctx` snapped to a loaded runner's context or
//!   rounded up to buckets, so clients that vary it do not make Ollama reload;
//! - API keys ([`access`], `[policy.keys]`): stored as SHA-256 hashes,
//!   scopes, a model allow-list, expiry and revocation; the key's name is the
//!   request's `principal`, and no backend sees the key.

use std::collections::BTreeMap;

use llamagate_sdk::names;
use serde::Deserialize;

pub mod access;
pub mod placement;
mod rules;
pub use placement::{Placement, Strategy};
pub use rules::{body_strings, create_base, Config, ModelRules, NumCtxSnap, OptionRules};

/// The `policy` export. Compiled natively too, so that its decisions are
/// unit-tested against the SDK's stand-in fleet.
mod guest {
    use super::*;
    use crate::access::{Key, Keys, Refusal};
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
                on_request(config, &req, llamagate_sdk::time::now())
            })
        }

        fn list_models(req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> {
            CONFIG.with(|c| {
                let c = c.borrow();
                let config = c.as_ref().expect("init runs first");
                list_models(config, &req, models, llamagate_sdk::time::now())
            })
        }
    }

    /// The decision on one request at `now` (seconds since the Unix epoch):
    /// the key checked first, when keys are configured, then the routing.
    fn on_request(config: &Config, req: &Request, now: i64) -> Decision {
        let key = match &config.keys {
            Some(keys) => match admit(config, keys, req, now) {
                Ok(key) => key,
                Err(refusal) => return refused(refusal),
            },
            None => None,
        };
        let mut edits = decide(config, req);
        if let Some(key) = key {
            edits.principal = Some(key.name.clone());
            // The key is llamagate's: no backend sees it.
            edits
                .remove_headers
                .extend(["authorization".to_string(), "x-api-key".to_string()]);
        }
        Decision::Forward(edits)
    }

    /// The key of a request, if it may make it: known, in force, with the
    /// endpoint's scope and, for a key limited to some models, every model the
    /// request names (a copy's destination and a create's base too: a key
    /// must not copy a model it may not use into one it may). `Ok(None)`:
    /// the request needs no key (`GET /`).
    fn admit<'k>(
        config: &Config,
        keys: &'k Keys,
        req: &Request,
        now: i64,
    ) -> Result<Option<&'k Key>, Refusal> {
        if req.endpoint == Endpoint::Root {
            return Ok(None);
        }
        let key = keys.authenticate(&req.headers, now)?;
        access::check_scope(key, req.endpoint, &req.path)?;
        if key.models.is_some() {
            let mut named: Vec<String> = req.model.iter().cloned().collect();
            match req.endpoint {
                Endpoint::Copy => {
                    named.extend(body_strings(&llamagate_sdk::request_body(), "destination"))
                }
                Endpoint::Create => {
                    named.extend(body_strings(&llamagate_sdk::request_body(), "from"))
                }
                _ => {}
            }
            for model in &named {
                access::check_model(key, model, config.resolve_alias(model).as_deref())?;
            }
        }
        Ok(Some(key))
    }

    /// A refusal in the reply the host words in the API's error shape.
    fn refused(refusal: Refusal) -> Decision {
        match refusal {
            Refusal::Unauthorized(message) => {
                Decision::reject_with_headers(401, message, &[("www-authenticate", "Bearer")])
            }
            Refusal::Forbidden(message) => Decision::reject(403, message),
        }
    }

    /// The entries of a merged listing to show: the configured models (and
    /// aliases, with `list_aliases`), and with keys only those the request's
    /// key may use (none for a request without a valid key).
    fn list_models(
        config: &Config,
        req: &Request,
        models: Vec<ListedModel>,
        now: i64,
    ) -> Vec<ListedModel> {
        let key = match &config.keys {
            Some(keys) => match admit(config, keys, req, now) {
                Ok(key) => key,
                Err(_) => return Vec::new(),
            },
            None => None,
        };
        let shown = config.listing(models.iter().map(|m| m.name.as_str()));
        shown
            .into_iter()
            .filter(|(name, source)| key.is_none_or(|k| k.allows(name, Some(source))))
            .filter_map(|(name, source)| {
                let m = models.iter().find(|m| m.name == source)?;
                Some(ListedModel {
                    name,
                    source,
                    backends: m.backends.clone(),
                })
            })
            .collect()
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
                edits.backends = Some(ids(order(all_backends())));
            }
            return edits;
        };
        let target = config.resolve_alias(model);
        if let Some(target) = &target {
            edits.model = Some(target.clone());
        }
        let target = target.as_deref().unwrap_or(model);
        let rules = config.rules_for(target);
        let options = takes_options(req.endpoint);
        let current = req.option("num_ctx").and_then(as_i64).filter(|_| options);
        // The context the request will carry, before snapping to a runner
        // (which depends on the backend chosen below).
        let wanted = rules
            .num_ctx(current)
            .or(current)
            .map(|n| rules.bucket(n))
            .filter(|_| options);
        let placement = Placement {
            strategy: config.strategy_for(target),
            weights: &config.weights,
            model: Some(target),
            num_ctx: wanted,
            snap_up_to: rules.snap_up_to(),
            request_id: &req.id,
        };
        let mut first_runner_ctx = None;
        if edits.backends.is_none() {
            let mut chosen = route(config, req.endpoint, target, &placement);
            if req.endpoint == Endpoint::Create {
                // Unpinned: where the base model (`from`) already is, if
                // anywhere, so Ollama need not fetch it from the registry.
                if let Some(base) = create_base(&llamagate_sdk::request_body()) {
                    prefer_serving(&mut chosen, &config.resolve_alias(&base).unwrap_or(base));
                }
            }
            first_runner_ctx = chosen
                .first()
                .and_then(|b| b.loaded_model(target))
                .and_then(|r| r.context_length);
            // A delete removes the model from every backend chosen; a pull
            // of a model that has replicas (configured, or already on some
            // backends) updates them all. A pull of a model nobody has yet
            // is placed on one backend, the first of the list.
            let fleet_wide = match req.endpoint {
                Endpoint::Delete => true,
                Endpoint::Pull => {
                    config.models.contains_key(&names::key(target))
                        || !backends_for(target).is_empty()
                }
                _ => false,
            };
            if fleet_wide && chosen.len() > 1 {
                edits.every_backend = Some(true);
            }
            edits.backends = Some(ids(chosen));
        }
        if options {
            let snapped = wanted.map(|n| rules.snap(n, first_runner_ctx));
            if let Some(n) = snapped.filter(|n| Some(*n) != current) {
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
        placement: &Placement,
    ) -> Vec<Backend> {
        let key = names::key(model);
        if let Some(ids) = config.models.get(&key) {
            // The map's backends, whether or not they report the model yet,
            // in the replica list's order: the operator's preference.
            let mut listed = backends_with_ids(ids, Some(model));
            listed.sort_by_key(|b| ids.iter().position(|id| *id == b.id));
            return placement.order(listed);
        }
        if !config.routes_unlisted() {
            return Vec::new();
        }
        let serving = backends_for(model);
        if serving.is_empty() && creates_model(endpoint) {
            // A model nobody has yet: pull or create it on the best backend.
            return order(all_backends());
        }
        placement.order(serving)
    }

    /// Moves the backends that serve `model` to the front, healthy ones
    /// first, keeping the order otherwise.
    fn prefer_serving(chosen: &mut [Backend], model: &str) {
        if chosen.is_empty() {
            return;
        }
        let serving = backends_for(model);
        chosen.sort_by_key(|b| (b.state.rank(), !serving.iter().any(|s| s.id == b.id)));
    }

    /// For requests that place no known model (a pull of a new one, a
    /// listing): up and half-open first, then the rest; then fewest in
    /// flight; then configuration order.
    fn order(mut list: Vec<Backend>) -> Vec<Backend> {
        list.sort_by_key(|b| (b.state.rank(), b.in_flight));
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
        fn unmapped_models_go_warm_and_free_first_then_least_busy_then_in_fleet_order() {
            set_fleet([
                backend("a", &["llama3.2"]).with_in_flight(2),
                backend("b", &["llama3.2"]).unhealthy(),
                // Warm, but its 3 slots are taken: no better than cold.
                backend("c", &["llama3.2"])
                    .with_in_flight(5)
                    .with_loaded("llama3.2", 4096),
                backend("d", &["mistral"]),
                backend("e", &["llama3.2:latest"]).with_in_flight(1),
                backend("f", &["llama3.2"]).with_loaded("llama3.2", 4096),
            ]);
            let c = config("{}");
            assert_eq!(
                routed(&c, &chat("LLAMA3.2")).unwrap(),
                ["f", "e", "a", "c", "b"]
            );
            // One host call, and only the backends that serve the model.
            assert_eq!(fleet_calls().backends_for, 1);
            assert_eq!(fleet_calls().all_backends, 0);
            assert_eq!(routed(&c, &chat("phi4")).unwrap(), Vec::<String>::new());
        }

        #[test]
        fn mapped_models_go_to_their_map_entry_in_its_order_served_yet_or_not() {
            set_fleet([
                backend("a", &["llama3.2"]),
                backend("b", &[]),
                backend("c", &["llama3.2"]),
            ]);
            let c = config(r#"{"models":{"llama3.2":["c","a"],"mistral":["b","a"]}}"#);
            assert_eq!(routed(&c, &chat("llama3.2")).unwrap(), ["c", "a"]);
            assert_eq!(fleet_calls().all_backends, 0, "all of them serve it");
            // `b` reports no models yet: the map still sends it there.
            assert_eq!(routed(&c, &chat("mistral")).unwrap(), ["b", "a"]);
            assert_eq!(routed(&c, &chat("qwen2.5")).unwrap(), Vec::<String>::new());
        }

        /// The issue's case: `["b2","b1"]` sent 6 of 6 sequential requests to b1.
        #[test]
        fn the_replica_lists_order_is_the_tie_break_for_every_strategy() {
            set_fleet([backend("b1", &["m"]), backend("b2", &["m"])]);
            for strategy in ["priority", "least-busy", "warm-first"] {
                let c = config(&format!(
                    r#"{{"models":{{"m":["b2","b1"]}},"strategy":"{strategy}"}}"#
                ));
                for id in 1..=6 {
                    let mut req = chat("m");
                    req.id = id.to_string();
                    assert_eq!(routed(&c, &req).unwrap(), ["b2", "b1"], "{strategy}");
                }
            }
            // Round robin starts from the list's first too.
            let c = config(r#"{"models":{"m":["b2","b1"]},"strategy":"round-robin"}"#);
            let firsts: Vec<String> = (0..4)
                .map(|id| {
                    let mut req = chat("m");
                    req.id = id.to_string();
                    routed(&c, &req).unwrap()[0].clone()
                })
                .collect();
            assert_eq!(firsts, ["b2", "b1", "b2", "b1"]);
        }

        #[test]
        fn a_models_strategy_overrides_the_global_one_and_weights_apply() {
            set_fleet([
                backend("a", &["m", "n"]).with_model_requests("m", 1, 0),
                backend("b", &["m", "n"]).with_loaded("n", 4096),
            ]);
            let c = config(
                r#"{"strategy":"priority","weights":{"a":3},
                    "overrides":{"m":{"strategy":"least-busy"}}}"#,
            );
            // m: least busy; `a`'s 1 request over weight 3 still loses to 0.
            assert_eq!(routed(&c, &chat("m")).unwrap(), ["b", "a"]);
            // n: priority, although `b` has it loaded.
            assert_eq!(routed(&c, &chat("n")).unwrap(), ["a", "b"]);
            let c = config(r#"{"strategy":"round-robin","weights":{"a":3}}"#);
            let firsts: Vec<String> = (0..8)
                .map(|id| {
                    let mut req = chat("n");
                    req.id = id.to_string();
                    routed(&c, &req).unwrap()[0].clone()
                })
                .collect();
            assert_eq!(firsts, ["a", "a", "a", "b", "a", "a", "a", "b"]);
        }

        #[test]
        fn a_cold_model_goes_where_it_fits_and_offloaded_runners_are_degraded() {
            use llamagate_sdk::testing::gib;
            set_fleet([
                backend("small", &["m"])
                    .with_vram(gib(8))
                    .with_model_size("m", gib(7)),
                backend("offloaded", &["m"]).with_loaded_sized("m", gib(9), gib(5)),
                backend("big", &["m"])
                    .with_vram(gib(48))
                    .with_model_size("m", gib(7)),
            ]);
            let c = config("{}");
            assert_eq!(
                routed(&c, &chat("m")).unwrap(),
                ["offloaded", "big", "small"]
            );
            let c = config(r#"{"models":{"m":["small","big"]}}"#);
            set_fleet([
                backend("small", &["m"])
                    .with_vram(gib(8))
                    .with_model_size("m", gib(7)),
                backend("big", &["m"])
                    .with_vram(gib(48))
                    .with_model_size("m", gib(7)),
            ]);
            assert_eq!(routed(&c, &chat("m")).unwrap(), ["big", "small"]);
        }

        fn num_ctx_sent(c: &Config, req: &Request) -> Option<i64> {
            decide(c, req)
                .set_options
                .iter()
                .find(|o| o.key == "num_ctx")
                .and_then(|o| as_i64(&o.value))
        }

        fn chat_ctx(model: &str, n: i64) -> Request {
            chat(model).with_option("num_ctx", JsonValue::Integer(n))
        }

        #[test]
        fn num_ctx_snaps_to_the_chosen_backends_runner_when_opted_in() {
            set_fleet([
                backend("a", &["m", "plain"])
                    .with_loaded("m", 8192)
                    .with_loaded("plain", 8192),
                backend("b", &["m", "plain"]).with_loaded("m", 2048),
            ]);
            let c = config(
                r#"{"max_num_ctx":16384,"overrides":{"m":{"num_ctx_snap":"loaded"},
                    "e":{"num_ctx_snap":"loaded","enforce":{"num_ctx":4096}}}}"#,
            );
            let edits = decide(&c, &chat_ctx("m", 4096));
            assert_eq!(
                edits.backends.unwrap(),
                ["a", "b"],
                "a's runner can take it"
            );
            assert_eq!(num_ctx_sent(&c, &chat_ctx("m", 4096)), Some(8192));
            assert_eq!(
                num_ctx_sent(&c, &chat_ctx("m", 8192)),
                None,
                "already right"
            );
            // Larger than any runner: left as asked (a reload is unavoidable).
            assert_eq!(num_ctx_sent(&c, &chat_ctx("m", 12000)), None);
            // Not opted in: 4096 stays 4096, so the 8192 runner would reload.
            assert_eq!(num_ctx_sent(&c, &chat_ctx("plain", 4096)), None);
            // No num_ctx asked: nothing to snap.
            assert_eq!(num_ctx_sent(&c, &chat("m")), None);
            // An enforced value is never snapped.
            set_fleet([backend("a", &["e"]).with_loaded("e", 8192)]);
            assert_eq!(num_ctx_sent(&c, &chat_ctx("e", 1000)), Some(4096));
            // Never above the cap.
            set_fleet([backend("a", &["m"]).with_loaded("m", 32768)]);
            assert_eq!(num_ctx_sent(&c, &chat_ctx("m", 4096)), None);
        }

        #[test]
        fn num_ctx_rounds_up_to_buckets_when_opted_in() {
            set_fleet([backend("a", &["m", "plain"])]);
            let c = config(
                r#"{"defaults":{"num_ctx":3000},
                    "overrides":{"m":{"num_ctx_buckets":[2048,8192,32768]}}}"#,
            );
            assert_eq!(num_ctx_sent(&c, &chat_ctx("m", 3000)), Some(8192));
            assert_eq!(num_ctx_sent(&c, &chat_ctx("m", 100)), Some(2048));
            assert_eq!(num_ctx_sent(&c, &chat_ctx("m", 8192)), None);
            assert_eq!(
                num_ctx_sent(&c, &chat_ctx("m", 40000)),
                None,
                "above the last"
            );
            assert_eq!(
                num_ctx_sent(&c, &chat("m")),
                Some(8192),
                "the default, rounded"
            );
            assert_eq!(num_ctx_sent(&c, &chat_ctx("plain", 3001)), None);
            assert_eq!(num_ctx_sent(&c, &chat("plain")), Some(3000));
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

        fn keyed() -> Config {
            use llamagate_sdk::keys::sha256_hex;
            config(&format!(
                r#"{{"aliases":{{"gpt-4o":"llama3.2","fast":"qwen2.5"}},"list_aliases":true,
                    "keys":{{
                      "app":{{"hash":"sha256:{}","models":["llama3.2"]}},
                      "only-alias":{{"hash":"sha256:{}","models":["gpt-4o"]}},
                      "ops":{{"hash":"sha256:{}","scopes":["manage","inference"],"models":["llama3.2","mine"]}},
                      "root":{{"hash":"sha256:{}","scopes":["admin"]}}}}}}"#,
                sha256_hex("lg_app"),
                sha256_hex("lg_alias"),
                sha256_hex("lg_ops"),
                sha256_hex("lg_root"),
            ))
        }

        fn status(d: &Decision) -> Option<u16> {
            d.reply().map(|r| r.status)
        }

        fn with_key(req: Request, key: &str) -> Request {
            req.with_header("authorization", &format!("Bearer {key}"))
        }

        const NOW: i64 = 1_800_000_000;

        #[test]
        fn a_valid_key_names_the_principal_and_never_reaches_a_backend() {
            set_fleet([backend("a", &["llama3.2"])]);
            let c = keyed();
            let req = with_key(chat("gpt-4o"), "lg_app").with_header("x-api-key", "lg_app");
            let d = on_request(&c, &req, NOW);
            let edits = d.edits().expect("forwarded");
            assert_eq!(edits.principal.as_deref(), Some("app"));
            assert!(edits.remove_headers.contains(&"authorization".to_string()));
            assert!(edits.remove_headers.contains(&"x-api-key".to_string()));
            assert_eq!(
                edits.model.as_deref(),
                Some("llama3.2"),
                "routing still runs"
            );
            assert_eq!(edits.backends.as_deref(), Some(&["a".to_string()][..]));
            // Without keys nothing changes.
            let plain = on_request(&config("{}"), &chat("llama3.2"), NOW);
            assert_eq!(plain.edits().unwrap().principal, None);
            assert!(plain.edits().unwrap().remove_headers.is_empty());
        }

        #[test]
        fn refusals_are_401_with_a_challenge_and_403_without() {
            set_fleet([backend("a", &["llama3.2", "qwen2.5"])]);
            let c = keyed();
            let d = on_request(&c, &chat("llama3.2"), NOW);
            let reply = d.reply().expect("refused");
            assert_eq!(reply.status, 401);
            assert_eq!(
                (
                    reply.headers[0].name.as_str(),
                    reply.headers[0].value.as_str()
                ),
                ("www-authenticate", "Bearer")
            );
            let d = on_request(&c, &with_key(chat("qwen2.5"), "lg_app"), NOW);
            assert_eq!(status(&d), Some(403));
            assert!(d.reply().unwrap().headers.is_empty());
            assert!(!d.reply().unwrap().message.contains("lg_app"));
            // The alias resolves to a model the key may not use.
            assert_eq!(
                status(&on_request(&c, &with_key(chat("fast"), "lg_app"), NOW)),
                Some(403)
            );
            // Listed only as an alias: the alias yes, its target asked directly no.
            assert_eq!(
                status(&on_request(&c, &with_key(chat("gpt-4o"), "lg_alias"), NOW)),
                None
            );
            assert_eq!(
                status(&on_request(
                    &c,
                    &with_key(chat("llama3.2"), "lg_alias"),
                    NOW
                )),
                Some(403)
            );
            // An inference key may not pull; an unknown path needs admin.
            let pull = with_key(request(Endpoint::Pull, "llama3.2"), "lg_app");
            assert_eq!(status(&on_request(&c, &pull, NOW)), Some(403));
            let other = request(Endpoint::Other, "");
            assert_eq!(
                status(&on_request(&c, &with_key(other.clone(), "lg_ops"), NOW)),
                Some(403)
            );
            assert_eq!(
                status(&on_request(&c, &with_key(other, "lg_root"), NOW)),
                None
            );
            // `GET /` needs no key.
            assert_eq!(
                status(&on_request(&c, &request(Endpoint::Root, ""), NOW)),
                None
            );
        }

        #[test]
        fn a_copy_checks_its_destination_and_a_create_its_base() {
            set_fleet([backend("a", &["llama3.2", "qwen2.5"])]);
            let c = keyed();
            let copy = |source: &str, body: &str| {
                set_body(body);
                let req = with_key(request(Endpoint::Copy, source), "lg_ops");
                status(&on_request(&c, &req, NOW))
            };
            assert_eq!(
                copy("llama3.2", r#"{"source":"llama3.2","destination":"mine"}"#),
                None
            );
            assert_eq!(
                copy(
                    "llama3.2",
                    r#"{"source":"llama3.2","destination":"theirs"}"#
                ),
                Some(403)
            );
            assert_eq!(
                copy("qwen2.5", r#"{"source":"qwen2.5","destination":"mine"}"#),
                Some(403)
            );
            // Go would read the second spelling: both are checked.
            assert_eq!(
                copy(
                    "llama3.2",
                    r#"{"source":"llama3.2","destination":"mine","DESTINATION":"theirs"}"#
                ),
                Some(403)
            );
            let create = |body: &str| {
                set_body(body);
                let req = with_key(request(Endpoint::Create, "mine"), "lg_ops");
                status(&on_request(&c, &req, NOW))
            };
            assert_eq!(create(r#"{"model":"mine","from":"llama3.2"}"#), None);
            assert_eq!(create(r#"{"model":"mine","from":"qwen2.5"}"#), Some(403));
            assert_eq!(
                create(r#"{"model":"mine","from":"fast"}"#),
                Some(403),
                "an alias of qwen2.5"
            );
            // An admin key without a list may copy anything.
            set_body(r#"{"source":"qwen2.5","destination":"x"}"#);
            let req = with_key(request(Endpoint::Copy, "qwen2.5"), "lg_root");
            assert_eq!(status(&on_request(&c, &req, NOW)), None);
        }

        #[test]
        fn listings_show_a_key_its_models_and_no_key_nothing() {
            let c = keyed();
            let listed = |name: &str, source: &str| ListedModel {
                name: name.into(),
                source: source.into(),
                backends: vec!["a".into()],
            };
            let all = vec![
                listed("llama3.2:latest", "llama3.2:latest"),
                listed("qwen2.5:latest", "qwen2.5:latest"),
            ];
            let names = |key: Option<&str>| {
                let mut req = request(Endpoint::Tags, "");
                if let Some(key) = key {
                    req = with_key(req, key);
                }
                list_models(&c, &req, all.clone(), NOW)
                    .into_iter()
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(Some("lg_app")), ["llama3.2:latest", "gpt-4o:latest"]);
            assert_eq!(names(Some("lg_alias")), ["gpt-4o:latest"]);
            assert_eq!(names(Some("lg_root")).len(), 4);
            assert!(names(None).is_empty());
            assert!(names(Some("lg_nope")).is_empty());
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
