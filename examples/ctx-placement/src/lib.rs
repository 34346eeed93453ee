//! ctx-placement: send large-context requests to the big-memory backends.
//!
//! The KV cache grows with `num_ctx`: a 32k-token context needs gigabytes more
//! than the default, and on a small GPU Ollama spills layers to the CPU and slows
//! to a crawl. This plugin sends requests whose `options.num_ctx` exceeds
//! `threshold` to the `big` backends, and all others (including those without
//! `num_ctx`) to the `small` ones, keeping the big GPUs free for the work only
//! they can do.
//!
//! Within a group, backends that are up or half-open (on trial) come first, then
//! open or down ones, then the order of the list (llamagate moves down it by
//! its failover rules). A backend is used only
//! for the models it serves (the host's `backends-for`), so one that has not
//! answered a probe yet is left out until it has. When no backend of the group
//! serves the model, the choice of the plugins before this one stands. Only requests that run a
//! model (generate, chat, embeddings, native or `/v1`) are placed; the `/v1`
//! endpoints carry no `options`, so they count as small.
//!
//! Config:
//! - `threshold = 16384`: a `num_ctx` above this is large;
//! - `big = ["gpu-big"]`, `small = ["gpu-small"]`: backend ids, in order of preference.

use std::sync::OnceLock;

use llamagate_sdk::{backends_for, Backend, Decision, Edits, ListedModel, Policy, Request};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A `num_ctx` above this goes to `big`.
    #[serde(default = "default_threshold")]
    pub threshold: i64,
    /// Backend ids for large contexts, in order of preference.
    pub big: Vec<String>,
    /// Backend ids for everything else, in order of preference.
    pub small: Vec<String>,
}

fn default_threshold() -> i64 {
    16384
}

impl Config {
    /// Parses and checks the JSON config llamagate hands to `init`.
    pub fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if config.threshold <= 0 {
            return Err(format!(
                "`threshold` must be a positive number of tokens, not {}",
                config.threshold
            ));
        }
        for (key, ids) in [("big", &config.big), ("small", &config.small)] {
            if ids.is_empty() {
                return Err(format!("`{key}` is empty: name at least one backend id"));
            }
        }
        Ok(config)
    }
}

/// The backends to try, best first; `None` leaves the choice to earlier plugins.
/// Asks the host which backends serve the model, once, for the requests it places.
pub fn route(config: &Config, req: &Request) -> Option<Vec<String>> {
    let model = req.model.as_deref().filter(|_| req.is_inference())?;
    let large = req
        .option_i64("num_ctx")
        .is_some_and(|n| n > config.threshold);
    let group = if large { &config.big } else { &config.small };
    let serving = backends_for(model);
    let mut chosen: Vec<&Backend> = group
        .iter()
        .filter_map(|id| serving.iter().find(|b| &b.id == id))
        // Stay within what earlier plugins (the default policy's map) allow.
        .filter(|b| req.route.as_ref().is_none_or(|r| r.contains(&b.id)))
        .collect();
    if chosen.is_empty() {
        return None;
    }
    chosen.sort_by_key(|b| b.state.rank()); // stable: the list's order otherwise
    Some(chosen.into_iter().map(|b| b.id.clone()).collect())
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct CtxPlacement;

impl Policy for CtxPlacement {
    fn init(config: String) -> Result<(), String> {
        let _ = CONFIG.set(Config::parse(&config)?);
        Ok(())
    }

    fn on_request(req: Request) -> Decision {
        let config = CONFIG.get().expect("llamagate calls init first");
        match route(config, &req) {
            Some(ids) => Decision::forward(Edits::none().route_to(ids)),
            None => Decision::pass(),
        }
    }

    fn list_models(_req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> {
        models
    }
}

llamagate_sdk::export!(CtxPlacement);

#[cfg(test)]
mod tests {
    use super::*;
    use llamagate_sdk::testing::{backend, request, set_fleet, TestBackend};
    use llamagate_sdk::{Endpoint, JsonValue};

    fn config() -> Config {
        Config::parse(r#"{"threshold":16384,"big":["big-1","big-2"],"small":["small"]}"#).unwrap()
    }

    fn fleet() -> Vec<TestBackend> {
        vec![
            backend("big-1", &["llama3.2", "qwen2.5:14b"]),
            backend("big-2", &["llama3.2"]),
            backend("small", &["llama3.2"]),
            backend("other", &["llama3.2"]),
        ]
    }

    fn generate(model: &str, num_ctx: i64) -> Request {
        request(Endpoint::Generate, model).with_option("num_ctx", JsonValue::Integer(num_ctx))
    }

    #[test]
    fn placed_by_num_ctx() {
        let c = config();
        set_fleet(fleet());
        assert_eq!(
            route(&c, &generate("llama3.2", 32768)).unwrap(),
            ["big-1", "big-2"]
        );
        assert_eq!(route(&c, &generate("llama3.2", 16384)).unwrap(), ["small"]);
        let plain = request(Endpoint::OpenaiChat, "llama3.2");
        assert_eq!(route(&c, &plain).unwrap(), ["small"]);
    }

    #[test]
    fn only_backends_that_serve_the_model_healthy_first() {
        let c = config();
        set_fleet(fleet());
        assert_eq!(
            route(&c, &generate("qwen2.5:14b", 32768)).unwrap(),
            ["big-1"]
        );
        assert_eq!(
            route(&c, &generate("qwen2.5:14b", 2048)),
            None,
            "no small one serves it"
        );
        let mut f = fleet();
        f[0] = f[0].clone().unhealthy();
        set_fleet(f.clone());
        assert_eq!(
            route(&c, &generate("llama3.2", 32768)).unwrap(),
            ["big-2", "big-1"]
        );
        f[1].models.clear(); // not probed yet: left out until it reports the model
        set_fleet(f);
        assert_eq!(route(&c, &generate("llama3.2", 32768)).unwrap(), ["big-1"]);
    }

    #[test]
    fn stays_within_the_route_of_earlier_plugins() {
        let c = config();
        set_fleet(fleet());
        let mut req = generate("llama3.2", 32768);
        req.route = Some(vec!["big-2".into(), "small".into()]);
        assert_eq!(route(&c, &req).unwrap(), ["big-2"]);
        req.route = Some(vec!["small".into()]);
        assert_eq!(route(&c, &req), None);
    }

    #[test]
    fn other_endpoints_pass() {
        let c = config();
        set_fleet(fleet());
        assert_eq!(route(&c, &request(Endpoint::Pull, "llama3.2")), None);
        assert_eq!(route(&c, &request(Endpoint::Ps, "")), None);
    }

    #[test]
    fn config_is_checked() {
        let err = |json: &str| Config::parse(json).unwrap_err();
        assert_eq!(
            Config::parse(r#"{"big":["b"],"small":["s"]}"#)
                .unwrap()
                .threshold,
            16384
        );
        assert!(err(r#"{"threshold":0,"big":["b"],"small":["s"]}"#)
            .contains("`threshold` must be a positive"));
        assert!(err(r#"{"big":[],"small":["s"]}"#).contains("`big` is empty"));
        assert!(err(r#"{"big":["b"],"small":[]}"#).contains("`small` is empty"));
        assert!(err(r#"{"big":["b"]}"#).contains("missing field `small`"));
        assert!(err(r#"{"big":["b"],"small":["s"],"huge":["h"]}"#).contains("unknown field `huge`"));
    }
}
