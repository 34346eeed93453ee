//! The default policy's configuration and its pure decision rules
//! (unit-tested natively; the WebAssembly glue lives in `lib.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::{names, normalise_keys, OneOrMany};

/// `num_ctx` and `keep_alive` values.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptionRules {
    /// Context size in tokens.
    pub num_ctx: Option<i64>,
    /// Seconds (number) or a Go duration string (`"10m"`, `"-1"` is not one: use `-1`).
    pub keep_alive: Option<Value>,
}

/// Rules for one model, layered over the global ones.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRules {
    /// Set when the request has none.
    #[serde(default)]
    pub defaults: OptionRules,
    /// Always set, replacing the client's value.
    #[serde(default)]
    pub enforce: OptionRules,
    /// Largest `num_ctx` a request may ask for; larger values are lowered to it.
    pub max_num_ctx: Option<i64>,
}

/// The default policy's configuration (`[policy]` in `llamagate.toml`).
#[derive(Debug, Default)]
pub struct Config {
    /// Normalised model name → backend ids (replicas), in the operator's order.
    pub models: BTreeMap<String, Vec<String>>,
    /// Normalised alias → target model name.
    pub aliases: BTreeMap<String, String>,
    /// Show aliases in listings.
    pub list_aliases: bool,
    /// List and route every model the backends serve, not only configured ones.
    pub all_models: bool,
    /// Global rules.
    pub global: ModelRules,
    /// Per-model rules, by normalised name.
    pub overrides: BTreeMap<String, ModelRules>,
    /// Header that pins a request to a backend id; empty disables it.
    pub backend_header: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    models: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    list_aliases: bool,
    #[serde(default)]
    all_models: bool,
    #[serde(default)]
    defaults: OptionRules,
    #[serde(default)]
    enforce: OptionRules,
    max_num_ctx: Option<i64>,
    #[serde(default)]
    overrides: BTreeMap<String, ModelRules>,
    #[serde(default = "default_backend_header")]
    backend_header: String,
}

fn default_backend_header() -> String {
    "x-llamagate-backend".into()
}

impl Config {
    /// Parses and validates the JSON config the host passes to `init`.
    pub fn parse(json: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let global = ModelRules {
            defaults: raw.defaults,
            enforce: raw.enforce,
            max_num_ctx: raw.max_num_ctx,
        };
        validate(&global, "")?;
        for (model, rules) in &raw.overrides {
            validate(rules, &format!("overrides.{model:?}."))?;
        }
        let models: BTreeMap<String, Vec<String>> = normalise_keys(raw.models)
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect();
        let aliases = normalise_keys(raw.aliases);
        for (alias, target) in &aliases {
            if !models.is_empty() && !raw.all_models && !models.contains_key(&names::key(target)) {
                return Err(format!(
                    "aliases.{alias:?}: target {target:?} is not a configured model"
                ));
            }
        }
        Ok(Config {
            models,
            aliases,
            list_aliases: raw.list_aliases,
            all_models: raw.all_models,
            global,
            overrides: normalise_keys(raw.overrides),
            backend_header: raw.backend_header.to_ascii_lowercase(),
        })
    }

    /// Whether models outside `models` are routed and listed.
    pub fn routes_unlisted(&self) -> bool {
        self.all_models || self.models.is_empty()
    }

    /// The model an alias points to, if `model` is an alias.
    pub fn resolve_alias(&self, model: &str) -> Option<String> {
        self.aliases.get(&names::key(model)).cloned()
    }

    /// The backend id a pinning header names, if the feature is on.
    pub fn pinned_backend<'a>(&self, header: Option<&'a str>) -> Option<&'a str> {
        if self.backend_header.is_empty() {
            return None;
        }
        header.map(str::trim).filter(|h| !h.is_empty())
    }

    /// The rules that apply to `model`: per-model values win over global ones.
    pub fn rules_for(&self, model: &str) -> Effective<'_> {
        let specific = self.overrides.get(&names::key(model));
        let pick = |f: fn(&ModelRules) -> Option<&Value>| specific.and_then(f).or(f(&self.global));
        let pick_i = |f: fn(&ModelRules) -> Option<i64>| specific.and_then(f).or(f(&self.global));
        Effective {
            default_num_ctx: pick_i(|r| r.defaults.num_ctx),
            enforce_num_ctx: pick_i(|r| r.enforce.num_ctx),
            max_num_ctx: pick_i(|r| r.max_num_ctx),
            default_keep_alive: pick(|r| r.defaults.keep_alive.as_ref()),
            enforce_keep_alive: pick(|r| r.enforce.keep_alive.as_ref()),
        }
    }

    /// Which models a listing shows: `(shown name, source name)` pairs, given the
    /// names the backends reported.
    pub fn listing<'a>(&self, served: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
        let mut shown: Vec<(String, String)> = served
            .filter(|n| self.routes_unlisted() || self.models.contains_key(&names::key(n)))
            .map(|n| (n.to_string(), n.to_string()))
            .collect();
        if self.list_aliases {
            for (alias, target) in &self.aliases {
                let target = names::key(target);
                if let Some((_, source)) = shown.iter().find(|(_, s)| names::key(s) == target) {
                    shown.push((alias.clone(), source.clone()));
                }
            }
        }
        shown
    }
}

/// The rules in force for one model.
#[derive(Debug, PartialEq)]
pub struct Effective<'a> {
    default_num_ctx: Option<i64>,
    enforce_num_ctx: Option<i64>,
    max_num_ctx: Option<i64>,
    default_keep_alive: Option<&'a Value>,
    enforce_keep_alive: Option<&'a Value>,
}

impl Effective<'_> {
    /// The `num_ctx` to write, given the request's (`None` = leave it alone).
    pub fn num_ctx(&self, current: Option<i64>) -> Option<i64> {
        let wanted = self.enforce_num_ctx.or(current).or(self.default_num_ctx)?;
        let capped = match self.max_num_ctx {
            Some(max) => wanted.min(max),
            None => wanted,
        };
        (Some(capped) != current).then_some(capped)
    }

    /// The `keep_alive` to write, given whether the request has one.
    pub fn keep_alive(&self, present: bool) -> Option<&Value> {
        self.enforce_keep_alive.or(if present {
            None
        } else {
            self.default_keep_alive
        })
    }
}

fn validate(rules: &ModelRules, prefix: &str) -> Result<(), String> {
    for (key, n) in [
        ("defaults.num_ctx", rules.defaults.num_ctx),
        ("enforce.num_ctx", rules.enforce.num_ctx),
        ("max_num_ctx", rules.max_num_ctx),
    ] {
        if matches!(n, Some(n) if n <= 0) {
            return Err(format!(
                "{prefix}{key}: must be a positive number of tokens"
            ));
        }
    }
    for (key, v) in [
        ("defaults.keep_alive", &rules.defaults.keep_alive),
        ("enforce.keep_alive", &rules.enforce.keep_alive),
    ] {
        if let Some(v) = v {
            check_keep_alive(v).map_err(|e| format!("{prefix}{key}: {e}"))?;
        }
    }
    Ok(())
}

/// Accepts what Ollama accepts: a number of seconds or a Go duration string.
fn check_keep_alive(v: &Value) -> Result<(), String> {
    match v {
        Value::Number(_) => Ok(()),
        Value::String(s) => {
            let s = s.trim_start_matches(['-', '+']);
            if s == "0" {
                return Ok(());
            }
            let has_unit = s.ends_with(|c: char| c.is_ascii_alphabetic() || c == 'µ');
            let starts_numeric = s.starts_with(|c: char| c.is_ascii_digit() || c == '.');
            if has_unit && starts_numeric {
                Ok(())
            } else {
                Err(format!(
                    "{v} is not a duration: use seconds (300, -1) or a string with a unit (\"5m\", \"1h30m\")"
                ))
            }
        }
        _ => Err(format!(
            "{v} is not a number of seconds or a duration string"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> Config {
        Config::parse(&v.to_string()).unwrap()
    }

    #[test]
    fn aliases_resolve_by_normalised_name() {
        let c = config(json!({"models": {"llama3.2": "a"}, "aliases": {"gpt-4o": "llama3.2"}}));
        assert_eq!(
            c.resolve_alias("GPT-4o:latest").as_deref(),
            Some("llama3.2")
        );
        assert_eq!(c.resolve_alias("llama3.2"), None);
    }

    #[test]
    fn alias_to_unknown_model_is_refused() {
        let err = Config::parse(r#"{"models":{"a":"x"},"aliases":{"b":"nope"}}"#).unwrap_err();
        assert!(err.contains("not a configured model"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse(r#"{"modles":{}}"#).unwrap_err();
        assert!(err.contains("unknown field `modles`"), "{err}");
    }

    #[test]
    fn num_ctx_default_enforce_and_cap() {
        let c = config(json!({
            "defaults": {"num_ctx": 8192},
            "max_num_ctx": 16384,
            "overrides": {"small": {"enforce": {"num_ctx": 2048}}}
        }));
        let big = c.rules_for("big");
        assert_eq!(big.num_ctx(None), Some(8192), "default when missing");
        assert_eq!(big.num_ctx(Some(4096)), None, "client value kept");
        assert_eq!(big.num_ctx(Some(65536)), Some(16384), "capped");
        let small = c.rules_for("small:latest");
        assert_eq!(small.num_ctx(Some(4096)), Some(2048), "enforced");
        assert_eq!(small.num_ctx(Some(2048)), None, "already right");
    }

    #[test]
    fn keep_alive_default_and_enforce() {
        let c = config(json!({
            "defaults": {"keep_alive": "10m"},
            "overrides": {"pinned": {"enforce": {"keep_alive": -1}}}
        }));
        assert_eq!(c.rules_for("x").keep_alive(false), Some(&json!("10m")));
        assert_eq!(c.rules_for("x").keep_alive(true), None);
        assert_eq!(c.rules_for("pinned").keep_alive(true), Some(&json!(-1)));
    }

    #[test]
    fn bad_keep_alive_is_refused() {
        let err = Config::parse(r#"{"defaults":{"keep_alive":"300"}}"#).unwrap_err();
        assert!(err.starts_with("defaults.keep_alive:"), "{err}");
        assert!(Config::parse(r#"{"defaults":{"keep_alive":true}}"#).is_err());
    }

    #[test]
    fn listing_configured_only_with_aliases() {
        let c = config(json!({
            "models": {"llama3.2": "a"},
            "aliases": {"gpt-4o": "llama3.2"},
            "list_aliases": true
        }));
        let shown = c.listing(["llama3.2:latest", "other:latest"].into_iter());
        assert_eq!(
            shown,
            vec![
                ("llama3.2:latest".into(), "llama3.2:latest".into()),
                ("gpt-4o:latest".into(), "llama3.2:latest".into())
            ]
        );
    }

    #[test]
    fn listing_everything_when_no_models_configured() {
        let c = config(json!({}));
        assert_eq!(c.listing(["a:latest", "b:1b"].into_iter()).len(), 2);
        assert!(c.routes_unlisted());
    }
}
