//! team-access: bearer tokens per team, each team limited to its models.
//!
//! Every request needs `Authorization: Bearer <token>` with a configured token
//! (else 401 with `www-authenticate: Bearer`). A request that names a model is
//! allowed only if the token's team may use it (else 403); requests without a
//! model (`/api/tags`, `/api/ps`, `/api/version`, blobs) need only a valid token.
//! Managing models (pull, push, create, copy, delete) changes them for everyone,
//! so only teams allowed `"*"` may do it. Listings (`/api/tags`, `/api/ps`,
//! `/v1/models`) show each team only its models. The token is removed before
//! the request reaches a backend, unless `forward_token = true`.
//!
//! Model names are compared as Ollama compares them (`llama3.2` =
//! `llama3.2:latest`). Aliases are resolved by the default policy before this
//! plugin runs: allow the models they point to.
//!
//! Config:
//! - `tokens = { "sk-..." = "team-a" }`: token → team;
//! - `teams = { "team-a" = ["llama3.2"], "admins" = ["*"] }`: team → models;
//! - `forward_token = false`: pass `authorization` on to the backends.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use llamagate_sdk::{names, Backend, Decision, Edits, Endpoint, ListedModel, Policy, Request};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bearer token → team.
    pub tokens: BTreeMap<String, String>,
    /// Team → the models it may use; `"*"` allows every model.
    pub teams: BTreeMap<String, Vec<String>>,
    /// Pass the `authorization` header on to the backends.
    #[serde(default)]
    pub forward_token: bool,
}

impl Config {
    /// Parses and checks the JSON config llamagate hands to `init`.
    /// Messages never quote a token: they are secrets and end up in logs.
    pub fn parse(json: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if config.tokens.is_empty() {
            return Err("`tokens` is empty: no request could get through".into());
        }
        if let Some((team, _)) = config.teams.iter().find(|(_, models)| models.is_empty()) {
            return Err(format!(
                "teams.{team:?} is empty: list its models, or \"*\" for all"
            ));
        }
        if let Some(team) = config
            .tokens
            .values()
            .find(|t| !config.teams.contains_key(*t))
        {
            return Err(format!(
                "a token belongs to team {team:?}, which `teams` does not define"
            ));
        }
        Ok(config)
    }

    /// The team of the request's bearer token, if the token is known.
    pub fn team(&self, req: &Request) -> Option<&str> {
        self.tokens.get(req.bearer_token()?).map(String::as_str)
    }

    /// Whether `team` may use `model`.
    pub fn allows(&self, team: &str, model: &str) -> bool {
        self.teams[team]
            .iter()
            .any(|m| m == "*" || names::same(m, model))
    }

    fn allows_all(&self, team: &str) -> bool {
        self.teams[team].iter().any(|m| m == "*")
    }
}

/// Whether the endpoint changes the models a backend holds.
fn manages_models(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Pull | Endpoint::Push | Endpoint::Create | Endpoint::Copy | Endpoint::Delete
    )
}

/// The verdict on one request.
pub fn decide(config: &Config, req: &Request) -> Decision {
    let Some(team) = config.team(req) else {
        let message = match req.bearer_token() {
            Some(_) => "invalid bearer token",
            None => "missing bearer token: send Authorization: Bearer <token>",
        };
        return Decision::reject_with_headers(401, message, &[("www-authenticate", "Bearer")]);
    };
    if let Some(model) = req.model.as_deref() {
        if manages_models(req.endpoint) && !config.allows_all(team) {
            return Decision::reject(403, format!("team {team:?} may not manage models"));
        }
        if !config.allows(team, model) {
            return Decision::reject(403, format!("team {team:?} may not use model {model:?}"));
        }
    }
    // `list_models` sees the request as the client sent it, so the token can go.
    if config.forward_token {
        Decision::pass()
    } else {
        Decision::forward(Edits::none().remove_header("authorization"))
    }
}

/// The entries of a listing the request's team may see.
pub fn visible(config: &Config, req: &Request, models: Vec<ListedModel>) -> Vec<ListedModel> {
    let Some(team) = config.team(req) else {
        return Vec::new();
    };
    models
        .into_iter()
        .filter(|m| config.allows(team, &m.source))
        .collect()
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct TeamAccess;

impl Policy for TeamAccess {
    fn init(config: String) -> Result<(), String> {
        let _ = CONFIG.set(Config::parse(&config)?);
        Ok(())
    }

    fn on_request(req: Request, _backends: Vec<Backend>) -> Decision {
        decide(CONFIG.get().expect("llamagate calls init first"), &req)
    }

    fn list_models(req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> {
        visible(
            CONFIG.get().expect("llamagate calls init first"),
            &req,
            models,
        )
    }
}

llamagate_sdk::export!(TeamAccess);

#[cfg(test)]
mod tests {
    use super::*;
    use llamagate_sdk::testing::request;

    fn config(forward_token: bool) -> Config {
        Config::parse(&format!(
            r#"{{"tokens":{{"sk-a":"team-a","sk-root":"admins"}},
                "teams":{{"team-a":["llama3.2","qwen2.5:14b"],"admins":["*"]}},
                "forward_token":{forward_token}}}"#
        ))
        .unwrap()
    }

    fn chat(model: &str, token: &str) -> Request {
        request(Endpoint::Chat, model).with_header("authorization", &format!("Bearer {token}"))
    }

    fn status(decision: &Decision) -> Option<u16> {
        decision.reply().map(|r| r.status)
    }

    #[test]
    fn tokens_are_required_and_checked() {
        let c = config(false);
        let none = decide(&c, &request(Endpoint::Chat, "llama3.2"));
        let reply = none.reply().expect("401");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers[0].name, "www-authenticate");
        assert_eq!(reply.headers[0].value, "Bearer");
        assert_eq!(status(&decide(&c, &chat("llama3.2", "sk-nope"))), Some(401));
        let basic = request(Endpoint::Tags, "").with_header("authorization", "Basic c2stYQ==");
        assert_eq!(status(&decide(&c, &basic)), Some(401));
    }

    #[test]
    fn models_per_team() {
        let c = config(false);
        assert_eq!(status(&decide(&c, &chat("LLAMA3.2:latest", "sk-a"))), None);
        assert_eq!(status(&decide(&c, &chat("qwen2.5:14b", "sk-a"))), None);
        let denied = decide(&c, &chat("qwen2.5:32b", "sk-a"));
        assert_eq!(
            denied,
            Decision::reject(403, "team \"team-a\" may not use model \"qwen2.5:32b\"")
        );
        assert_eq!(status(&decide(&c, &chat("qwen2.5:32b", "sk-root"))), None);
    }

    #[test]
    fn endpoints_without_a_model_need_only_a_token() {
        let c = config(false);
        for endpoint in [
            Endpoint::Tags,
            Endpoint::Ps,
            Endpoint::Version,
            Endpoint::Blobs,
        ] {
            let req = request(endpoint, "").with_header("authorization", "Bearer sk-a");
            assert_eq!(status(&decide(&c, &req)), None, "{endpoint:?}");
        }
    }

    #[test]
    fn only_teams_allowed_everything_manage_models() {
        let c = config(false);
        let pull = |token: &str| {
            request(Endpoint::Pull, "llama3.2")
                .with_header("authorization", &format!("Bearer {token}"))
        };
        assert_eq!(status(&decide(&c, &pull("sk-a"))), Some(403));
        assert_eq!(status(&decide(&c, &pull("sk-root"))), None);
    }

    #[test]
    fn the_token_is_removed_unless_forwarded() {
        let removed = decide(&config(false), &chat("llama3.2", "sk-a"));
        assert_eq!(removed.edits().unwrap().remove_headers, ["authorization"]);
        let kept = decide(&config(true), &chat("llama3.2", "sk-a"));
        assert_eq!(kept, Decision::pass());
    }

    #[test]
    fn listings_show_a_team_its_models() {
        let c = config(false);
        let listed = |name: &str, source: &str| ListedModel {
            name: name.into(),
            source: source.into(),
            backends: vec!["gpu".into()],
        };
        let all = vec![
            listed("llama3.2:latest", "llama3.2:latest"),
            listed("mistral:latest", "mistral:latest"),
            listed("gpt-4o", "llama3.2:latest"),
        ];
        let tags = |token: &str| request(Endpoint::Tags, "").with_header("authorization", token);
        let names = |shown: Vec<ListedModel>| shown.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(
            names(visible(&c, &tags("Bearer sk-a"), all.clone())),
            ["llama3.2:latest", "gpt-4o"]
        );
        assert_eq!(
            names(visible(&c, &tags("Bearer sk-root"), all.clone())).len(),
            3
        );
        assert!(visible(&c, &tags("Bearer sk-nope"), all).is_empty());
    }

    #[test]
    fn config_is_checked_without_quoting_tokens() {
        let err = |json: &str| Config::parse(json).unwrap_err();
        let e = err(r#"{"tokens":{"sk-secret":"team-x"},"teams":{"team-a":["*"]}}"#);
        assert!(e.contains("\"team-x\"") && !e.contains("sk-secret"), "{e}");
        assert!(err(r#"{"tokens":{},"teams":{}}"#).contains("`tokens` is empty"));
        assert!(err(r#"{"tokens":{"t":"a"},"teams":{"a":[]}}"#).contains("teams.\"a\" is empty"));
        assert!(
            err(r#"{"tokens":{"t":"a"},"teams":{"a":["*"]},"forward":true}"#)
                .contains("unknown field")
        );
    }
}
