//! least-busy: send each request to the replica with the fewest requests in flight.
//!
//! Among the backends the plugins before it chose (or, when none chose, those
//! that serve the requested model), the one llamagate is
//! forwarding the fewest requests to right now (`backend.in_flight`) comes first;
//! backends that are up or half-open (on trial after failures) first,
//! then open or down ones, ties in llamagate's backend order.
//! Only requests that run a model (generate, chat, embeddings, native or `/v1`)
//! are placed; other requests, and models no backend reports serving yet, keep
//! the choice of the plugins before this one.
//!
//! Config (the `config` table of its `[[plugins]]` entry):
//! - `models = ["llama3.2", ...]`: place only these models (default: every model).

use std::sync::OnceLock;

use llamagate_sdk::{names, Backend, Decision, Edits, ListedModel, Policy, Request};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The models this plugin places; `None` places every model.
    pub models: Option<Vec<String>>,
}

impl Config {
    /// Parses and checks the JSON config llamagate hands to `init`.
    pub fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if config.models.as_ref().is_some_and(Vec::is_empty) {
            return Err(
                "`models` is empty: list the models to place, or leave it out for all".into(),
            );
        }
        Ok(config)
    }

    fn places(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| names::same(m, model)))
    }
}

/// The backends to try, best first; `None` leaves the choice to earlier plugins.
/// Asks the host for the candidates (one `backends-for` call, usually) only
/// for the requests it places.
pub fn route(config: &Config, req: &Request) -> Option<Vec<String>> {
    let model = req.model.as_deref().filter(|_| req.is_inference())?;
    if !config.places(model) {
        return None;
    }
    let mut replicas: Vec<Backend> = req.candidates();
    if replicas.is_empty() {
        return None;
    }
    // A stable sort: equally busy backends keep llamagate's order.
    replicas.sort_by_key(|b| (b.state.rank(), b.in_flight));
    Some(replicas.into_iter().map(|b| b.id).collect())
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct LeastBusy;

impl Policy for LeastBusy {
    fn init(config: String) -> Result<(), String> {
        // One instance, one init: a second call could only repeat the same config.
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

llamagate_sdk::export!(LeastBusy);

#[cfg(test)]
mod tests {
    use super::*;
    use llamagate_sdk::testing::{backend, fleet_calls, request, set_fleet};
    use llamagate_sdk::Endpoint;

    fn chat(model: &str) -> Request {
        request(Endpoint::Chat, model)
    }

    #[test]
    fn fewest_in_flight_first_ties_in_fleet_order() {
        set_fleet([
            backend("a", &["llama3.2"]).with_in_flight(3),
            backend("b", &["llama3.2"]).with_in_flight(1),
            backend("c", &["qwen2.5:14b"]),
            backend("d", &["llama3.2"]).with_in_flight(1),
        ]);
        let ids = route(&Config::default(), &chat("llama3.2:latest"));
        assert_eq!(ids.unwrap(), ["b", "d", "a"]);
    }

    #[test]
    fn half_open_backends_rank_with_up_ones_so_they_get_their_trial() {
        set_fleet([
            backend("a", &["llama3.2"]).with_state(llamagate_sdk::BackendState::HalfOpen, None),
            backend("b", &["llama3.2"]).with_in_flight(5),
            backend("c", &["llama3.2"]).unhealthy(),
        ]);
        let ids = route(&Config::default(), &chat("llama3.2"));
        assert_eq!(ids.unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn unhealthy_backends_come_last_however_idle() {
        set_fleet([
            backend("a", &["llama3.2"]).unhealthy(),
            backend("b", &["llama3.2"]).with_in_flight(5),
        ]);
        let ids = route(&Config::default(), &chat("llama3.2"));
        assert_eq!(ids.unwrap(), ["b", "a"]);
    }

    #[test]
    fn passes_what_it_does_not_place() {
        set_fleet([backend("a", &["llama3.2"]), backend("b", &["mistral"])]);
        let config = Config::parse(r#"{"models":["llama3.2"]}"#).unwrap();
        assert!(route(&config, &chat("llama3.2")).is_some());
        assert_eq!(route(&config, &chat("mistral")), None, "not listed");
        let all = Config::default();
        assert_eq!(route(&all, &chat("phi4")), None, "nobody serves it");
        assert_eq!(route(&all, &request(Endpoint::Pull, "llama3.2")), None);
        assert_eq!(route(&all, &request(Endpoint::Tags, "")), None);
        // Only the two requests it places ask the host, once each.
        assert_eq!(fleet_calls().backends_for, 2);
        assert_eq!(fleet_calls().all_backends, 0);
    }

    #[test]
    fn config_is_checked() {
        assert!(Config::parse("{}").unwrap().models.is_none());
        assert!(Config::parse(r#"{"models":[]}"#)
            .unwrap_err()
            .contains("empty"));
        assert!(Config::parse(r#"{"modles":["x"]}"#)
            .unwrap_err()
            .contains("unknown field `modles`"));
    }

    #[test]
    fn the_decision_routes_or_passes() {
        CONFIG.get_or_init(Config::default);
        set_fleet([
            backend("a", &["llama3.2"]).with_in_flight(1),
            backend("b", &["llama3.2"]),
        ]);
        let decision = LeastBusy::on_request(chat("llama3.2"));
        assert_eq!(
            decision,
            Decision::forward(Edits::none().route_to(["b", "a"]))
        );
        assert_eq!(LeastBusy::on_request(chat("phi4")), Decision::pass());
    }

    #[test]
    fn stays_within_the_route_of_earlier_plugins() {
        set_fleet([
            backend("a", &["llama3.2"]).with_in_flight(2),
            backend("b", &["llama3.2"]),
            backend("c", &[]), // mapped by the default policy, not reporting it yet
        ]);
        let mut req = chat("llama3.2");
        req.route = Some(vec!["a".into(), "c".into()]);
        assert_eq!(route(&Config::default(), &req).unwrap(), ["c", "a"]);
    }
}
