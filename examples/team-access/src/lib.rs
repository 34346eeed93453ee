//! team-access: bearer tokens per team, each team limited to its models.
//!
//! Every request needs `Authorization: Bearer <token>` with a configured token
//! (else 401 with `www-authenticate: Bearer`). A request that names a model is
//! allowed only if the token's team may use it (else 403); listings and
//! `/api/version` need only a valid token. Requests that change a server for
//! everyone — managing models (pull, push, create, copy, delete), blob uploads,
//! and any endpoint llamagate does not know (a newer Ollama's `/api/signout`,
//! say) — are allowed only to teams allowed `"*"`. Listings (`/api/tags`, `/api/ps`,
//! `/v1/models`) show each team only its models. The token is removed before
//! the request reaches a backend, unless `forward_token = true`. The team's name
//! is the request's `principal`: llamagate's fairness key and log name for it.
//! The plugin never asks the host for backends.
//!
//! Tokens are configured by their SHA-256 (`"sha256:<hex>"`, from
//! `printf %s "$TOKEN" | sha256sum`), so the config holds no usable secret, and
//! looked up in constant time ([`llamagate_sdk::keys::KeyTable`]). Plaintext
//! tokens are still accepted, with a warning at `init`.
//!
//! Model names are compared as Ollama compares them (`llama3.2` =
//! `llama3.2:latest`). Aliases are resolved by the default policy before this
//! plugin runs: allow the models they point to.
//!
//! Config:
//! - `tokens = { "sha256:<hex>" = "team-a" }`: SHA-256 of a token → team;
//! - `teams = { "team-a" = ["llama3.2"], "admins" = ["*"] }`: team → models;
//! - `forward_token = false`: pass `authorization` on to the backends.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use llamagate_sdk::keys::KeyTable;
use llamagate_sdk::{log, names, Decision, Edits, Endpoint, Level, ListedModel, Policy, Request};
use serde::Deserialize;

/// The config as written, before its tokens are hashed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tokens: BTreeMap<String, String>,
    teams: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    forward_token: bool,
}

/// The plugin's configuration.
#[derive(Debug)]
pub struct Config {
    /// SHA-256 of a bearer token → team.
    pub tokens: KeyTable<String>,
    /// Team → the models it may use; `"*"` allows every model.
    pub teams: BTreeMap<String, Vec<String>>,
    /// Pass the `authorization` header on to the backends.
    pub forward_token: bool,
}

impl Config {
    /// Parses and checks the JSON config llamagate hands to `init`.
    /// Messages never quote a token or a hash: they end up in logs.
    pub fn parse(json: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if raw.tokens.is_empty() {
            return Err("`tokens` is empty: no request could get through".into());
        }
        if let Some((team, _)) = raw.teams.iter().find(|(_, models)| models.is_empty()) {
            return Err(format!(
                "teams.{team:?} is empty: list its models, or \"*\" for all"
            ));
        }
        let mut tokens = KeyTable::new();
        for (key, team) in raw.tokens {
            if !raw.teams.contains_key(&team) {
                return Err(format!(
                    "a token belongs to team {team:?}, which `teams` does not define"
                ));
            }
            let place = format!("`tokens` entry for team {team:?}");
            tokens
                .insert(&key, team)
                .map_err(|e| format!("{place}: {e}"))?;
        }
        Ok(Config {
            tokens,
            teams: raw.teams,
            forward_token: raw.forward_token,
        })
    }

    /// The team of the request's bearer token, if the token is known.
    pub fn team(&self, req: &Request) -> Option<&str> {
        self.tokens.lookup(req.bearer_token()?).map(String::as_str)
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

/// Whether the endpoint changes a server for everyone: its models, its blobs,
/// or — for endpoints llamagate does not know — anything.
fn manages_models(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Pull
            | Endpoint::Push
            | Endpoint::Create
            | Endpoint::Copy
            | Endpoint::Delete
            | Endpoint::Blobs
            | Endpoint::Other
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
    if manages_models(req.endpoint) && !config.allows_all(team) {
        return Decision::reject(
            403,
            format!("team {team:?} may not manage models or call {}", req.path),
        );
    }
    if let Some(model) = req.model.as_deref() {
        if !config.allows(team, model) {
            return Decision::reject(403, format!("team {team:?} may not use model {model:?}"));
        }
    }
    let edits = Edits::none().set_principal(team);
    // `list_models` sees the request as the client sent it, so the token can go.
    if config.forward_token {
        Decision::forward(edits)
    } else {
        Decision::forward(edits.remove_header("authorization"))
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
        let config = Config::parse(&config)?;
        if config.tokens.plaintext() > 0 {
            log(
                Level::Warn,
                &format!(
                    "{} of {} tokens are written in plain text: write \"sha256:<hex>\" \
                     (printf %s \"$TOKEN\" | sha256sum) so the config holds no usable secret",
                    config.tokens.plaintext(),
                    config.tokens.len()
                ),
            );
        }
        let _ = CONFIG.set(config);
        Ok(())
    }

    fn on_request(req: Request) -> Decision {
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
    use llamagate_sdk::keys::sha256_hex;
    use llamagate_sdk::testing::request;

    fn config(forward_token: bool) -> Config {
        Config::parse(&format!(
            r#"{{"tokens":{{"sha256:{}":"team-a","sha256:{}":"admins"}},
                "teams":{{"team-a":["llama3.2","qwen2.5:14b"],"admins":["*"]}},
                "forward_token":{forward_token}}}"#,
            sha256_hex("sk-a"),
            sha256_hex("sk-root").to_uppercase(),
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
        // One character off, a prefix, or the configured hash itself: no way in.
        for wrong in ["sk-b", "sk-", "sk-aa", "Sk-a", &sha256_hex("sk-a")] {
            let reply = decide(&c, &chat("llama3.2", wrong));
            assert_eq!(
                reply,
                Decision::reject_with_headers(
                    401,
                    "invalid bearer token",
                    &[("www-authenticate", "Bearer")]
                ),
                "{wrong}"
            );
        }
        assert_eq!(status(&decide(&c, &chat("llama3.2", "sk-a"))), None);
        assert_eq!(status(&decide(&c, &chat("llama3.2", "sk-root"))), None);
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
        for endpoint in [Endpoint::Tags, Endpoint::Ps, Endpoint::Version] {
            let req = request(endpoint, "").with_header("authorization", "Bearer sk-a");
            assert_eq!(status(&decide(&c, &req)), None, "{endpoint:?}");
        }
    }

    #[test]
    fn blobs_and_unknown_endpoints_are_management() {
        let c = config(false);
        for endpoint in [Endpoint::Blobs, Endpoint::Other] {
            let req = request(endpoint, "").with_header("authorization", "Bearer sk-a");
            assert_eq!(status(&decide(&c, &req)), Some(403), "{endpoint:?}");
            let req = request(endpoint, "").with_header("authorization", "Bearer sk-root");
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
        assert_eq!(
            kept,
            Decision::forward(Edits::none().set_principal("team-a"))
        );
    }

    #[test]
    fn the_team_is_the_principal() {
        let c = config(false);
        let principal = |token: &str| {
            let decision = decide(&c, &chat("llama3.2", token));
            decision.edits().and_then(|e| e.principal.clone())
        };
        assert_eq!(principal("sk-a").as_deref(), Some("team-a"));
        assert_eq!(principal("sk-root").as_deref(), Some("admins"));
        assert_eq!(principal("sk-nope"), None, "refused: no edits at all");
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
    fn plaintext_tokens_still_work() {
        let c = Config::parse(&format!(
            r#"{{"tokens":{{"sk-plain":"a","sha256:{}":"a"}},"teams":{{"a":["*"]}}}}"#,
            sha256_hex("sk-hashed")
        ))
        .unwrap();
        assert_eq!((c.tokens.len(), c.tokens.plaintext()), (2, 1));
        assert_eq!(status(&decide(&c, &chat("llama3.2", "sk-plain"))), None);
        assert_eq!(status(&decide(&c, &chat("llama3.2", "sk-hashed"))), None);
        assert_eq!(
            status(&decide(&c, &chat("llama3.2", "sk-plaim"))),
            Some(401)
        );
    }

    #[test]
    fn config_is_checked_without_quoting_tokens() {
        let err = |json: &str| Config::parse(json).unwrap_err();
        let e = err(r#"{"tokens":{"sk-secret":"team-x"},"teams":{"team-a":["*"]}}"#);
        assert!(e.contains("\"team-x\"") && !e.contains("sk-secret"), "{e}");
        let hash = sha256_hex("sk-secret");
        for key in [
            format!("sha256:{}", &hash[..63]),
            format!("sha256:{}z", &hash[..63]),
            "sha256:sk-secret".to_string(),
        ] {
            let e = err(&format!(
                r#"{{"tokens":{{"{key}":"team-a"}},"teams":{{"team-a":["*"]}}}}"#
            ));
            assert!(
                e.starts_with("`tokens` entry for team \"team-a\": a `sha256:` key"),
                "{e}"
            );
            assert!(!e.contains(&hash[..16]) && !e.contains("sk-secret"), "{e}");
        }
        let e = err(&format!(
            r#"{{"tokens":{{"sk-secret":"team-a","sha256:{hash}":"team-b"}},
                "teams":{{"team-a":["*"],"team-b":["*"]}}}}"#
        ));
        assert!(e.contains("same token as another entry"), "{e}");
        assert!(!e.contains(&hash[..16]) && !e.contains("sk-secret"), "{e}");
        assert!(err(r#"{"tokens":{},"teams":{}}"#).contains("`tokens` is empty"));
        assert!(err(r#"{"tokens":{"t":"a"},"teams":{"a":[]}}"#).contains("teams.\"a\" is empty"));
        assert!(
            err(r#"{"tokens":{"t":"a"},"teams":{"a":["*"]},"forward":true}"#)
                .contains("unknown field")
        );
    }
}
