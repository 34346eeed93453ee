//! warm-first: prefer the backends that have the model loaded already.
//!
//! A cold start reads gigabytes into GPU memory before the first token: seconds
//! to minutes. Among the backends the plugins before it chose (or, when none
//! chose, those that serve the requested model) this plugin
//! tries, in order: up or half-open (on trial), then open or down; warm before cold; then the fewest
//! requests in flight; ties keep llamagate's backend order.
//!
//! Warm means the backend's `/api/ps` (probed every `probe_interval`) lists the
//! model, and, when the request sets `options.num_ctx`, its runner was loaded with
//! that context size: Ollama restarts a runner whose `num_ctx` differs, which is
//! as slow as a cold load. A request without `num_ctx` counts any runner as warm
//! (the plugin cannot know the backend's default context size); `num_ctx` set by
//! the default policy's `defaults` or `enforce` is seen, since it runs first.
//!
//! Only requests that run a model (generate, chat, embeddings, native or `/v1`)
//! are placed; others, and models no backend reports serving yet, keep the
//! choice of the plugins before this one. Config: none (`{}`).

use llamagate_sdk::{Backend, Decision, Edits, ListedModel, Policy, Request};
use serde::Deserialize;

/// The plugin takes no configuration; this refuses any key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

/// Whether `backend` can run `model` with `num_ctx` without loading it.
pub fn is_warm(backend: &Backend, model: &str, num_ctx: Option<i64>) -> bool {
    backend
        .loaded_model(model)
        .is_some_and(|runner| match (num_ctx, runner.context_length) {
            (Some(wanted), Some(loaded)) => wanted == i64::from(loaded),
            _ => true,
        })
}

/// The backends to try, best first; `None` leaves the choice to earlier plugins.
/// Asks the host for the candidates only for the requests it places.
pub fn route(req: &Request) -> Option<Vec<String>> {
    let model = req.model.as_deref().filter(|_| req.is_inference())?;
    let num_ctx = req.option_i64("num_ctx");
    let mut replicas: Vec<Backend> = req.candidates();
    if replicas.is_empty() {
        return None;
    }
    // A stable sort: otherwise equal backends keep llamagate's order.
    replicas.sort_by_key(|b| (b.state.rank(), !is_warm(b, model, num_ctx), b.in_flight));
    Some(replicas.into_iter().map(|b| b.id).collect())
}

struct WarmFirst;

impl Policy for WarmFirst {
    fn init(config: String) -> Result<(), String> {
        serde_json::from_str::<Config>(&config)
            .map(drop)
            .map_err(|e| format!("{e} (warm-first takes no configuration)"))
    }

    fn on_request(req: Request) -> Decision {
        match route(&req) {
            Some(ids) => Decision::forward(Edits::none().route_to(ids)),
            None => Decision::pass(),
        }
    }

    fn list_models(_req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> {
        models
    }
}

llamagate_sdk::export!(WarmFirst);

#[cfg(test)]
mod tests {
    use super::*;
    use llamagate_sdk::testing::{backend, request, set_fleet};
    use llamagate_sdk::{Endpoint, JsonValue};

    fn chat(num_ctx: Option<i64>) -> Request {
        let req = request(Endpoint::Chat, "llama3.2");
        match num_ctx {
            Some(n) => req.with_option("num_ctx", JsonValue::Integer(n)),
            None => req,
        }
    }

    #[test]
    fn warm_before_cold_then_fewest_in_flight() {
        set_fleet([
            backend("cold-idle", &["llama3.2"]),
            backend("warm-busy", &["llama3.2"])
                .with_loaded("llama3.2", 4096)
                .with_in_flight(2),
            backend("warm-idle", &["llama3.2"]).with_loaded("llama3.2", 4096),
            backend("other", &["mistral"]).with_loaded("mistral", 4096),
        ]);
        assert_eq!(
            route(&chat(None)).unwrap(),
            ["warm-idle", "warm-busy", "cold-idle"]
        );
    }

    #[test]
    fn a_different_num_ctx_means_a_reload() {
        set_fleet([
            backend("a", &["llama3.2"]).with_loaded("llama3.2", 8192),
            backend("b", &["llama3.2"]).with_loaded("llama3.2", 4096),
        ]);
        assert_eq!(route(&chat(Some(4096))).unwrap(), ["b", "a"]);
        assert_eq!(route(&chat(Some(8192))).unwrap(), ["a", "b"]);
        assert_eq!(route(&chat(None)).unwrap(), ["a", "b"], "both warm");
        let cold = backend("c", &["llama3.2"]);
        assert!(!is_warm(&cold, "llama3.2", None));
        let mut unknown_ctx = backend("d", &["llama3.2"]).with_loaded("llama3.2", 0);
        unknown_ctx.loaded[0].context_length = None; // Ollama before 0.10 does not say
        assert!(is_warm(&unknown_ctx, "llama3.2:latest", Some(32768)));
    }

    #[test]
    fn half_open_ranks_with_up_so_it_gets_its_trial() {
        set_fleet([
            backend("a", &["llama3.2"])
                .with_loaded("llama3.2", 4096)
                .with_state(llamagate_sdk::BackendState::HalfOpen, None),
            backend("b", &["llama3.2"]),
        ]);
        assert_eq!(route(&chat(None)).unwrap(), ["a", "b"]);
    }

    #[test]
    fn unhealthy_comes_last_even_when_warm() {
        set_fleet([
            backend("a", &["llama3.2"])
                .with_loaded("llama3.2", 4096)
                .unhealthy(),
            backend("b", &["llama3.2"]),
        ]);
        assert_eq!(route(&chat(None)).unwrap(), ["b", "a"]);
    }

    #[test]
    fn passes_what_it_does_not_place() {
        set_fleet([backend("a", &["llama3.2"]).with_loaded("llama3.2", 4096)]);
        assert_eq!(route(&request(Endpoint::Chat, "phi4")), None);
        assert_eq!(route(&request(Endpoint::Show, "llama3.2")), None);
        assert_eq!(
            WarmFirst::on_request(request(Endpoint::Tags, "")),
            Decision::pass()
        );
    }

    #[test]
    fn config_must_be_empty() {
        assert_eq!(WarmFirst::init("{}".into()), Ok(()));
        let err = WarmFirst::init(r#"{"models":["x"]}"#.into()).unwrap_err();
        assert!(err.contains("unknown field `models`"), "{err}");
    }
}
