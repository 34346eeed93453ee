//! The default policy's configuration and its pure decision rules
//! (unit-tested natively; the WebAssembly glue lives in `lib.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::access::Keys;
use crate::placement::Strategy;
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
    /// How this model's replicas are ordered (per model only; the global
    /// one is [`Config::strategy`]).
    pub strategy: Option<Strategy>,
    /// `"loaded"`: snap a `num_ctx` up to the context of the runner loaded on
    /// the chosen backend, when that is at least as large (per model only).
    pub num_ctx_snap: Option<NumCtxSnap>,
    /// Round a `num_ctx` up to the next of these (ascending); above the
    /// last it is left as it is (per model only).
    pub num_ctx_buckets: Option<Vec<i64>>,
}

/// How a requested `num_ctx` may be snapped to a loaded runner's.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NumCtxSnap {
    /// To the context of the model's runner on the chosen backend, when it
    /// is at least the one asked for (Ollama then need not reload it).
    Loaded,
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
    /// How replicas are ordered, unless a model's override says otherwise.
    pub strategy: Strategy,
    /// Backend id -> weight for `round-robin` and `least-busy` (1 when absent).
    pub weights: BTreeMap<String, u32>,
    /// API keys (`[policy.keys]`); `None`: no table, every request passes.
    /// An empty table lets no request in.
    pub keys: Option<Keys>,
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
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    keys: Option<BTreeMap<String, Value>>,
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
            ..ModelRules::default()
        };
        for (id, weight) in &raw.weights {
            if *weight == 0 {
                return Err(format!(
                    "weights.{id:?}: must be at least 1 (leave a backend out of a model's list to not use it)"
                ));
            }
        }
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
            strategy: raw.strategy,
            weights: raw.weights,
            keys: raw.keys.map(Keys::parse).transpose()?,
        })
    }

    /// The strategy for `model`: its override's, else the global one.
    pub fn strategy_for(&self, model: &str) -> Strategy {
        self.overrides
            .get(&names::key(model))
            .and_then(|r| r.strategy)
            .unwrap_or(self.strategy)
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

    /// The rules that apply to `model`. Per-model rules win over global
    /// ones, option by option: a per-model `enforce` or `defaults` value of
    /// an option sets aside both global rules for it, and a per-model
    /// `max_num_ctx` replaces the global one (see [`Effective`]).
    pub fn rules_for(&self, model: &str) -> Effective<'_> {
        let specific = self.overrides.get(&names::key(model));
        let layer = |f: fn(&ModelRules) -> &OptionRules| {
            let m = specific.map(f);
            let g = f(&self.global);
            (m, g)
        };
        let (m_enforce, g_enforce) = layer(|r| &r.enforce);
        let (m_default, g_default) = layer(|r| &r.defaults);
        let num_ctx = |r: Option<&OptionRules>| r.and_then(|r| r.num_ctx);
        fn keep_alive(r: Option<&OptionRules>) -> Option<&Value> {
            r.and_then(|r| r.keep_alive.as_ref())
        }
        Effective {
            num_ctx: Rule::of(
                num_ctx(m_enforce),
                num_ctx(m_default),
                num_ctx(Some(g_enforce)),
                num_ctx(Some(g_default)),
            ),
            model_max_num_ctx: specific.and_then(|r| r.max_num_ctx),
            global_max_num_ctx: self.global.max_num_ctx,
            snap: specific.and_then(|r| r.num_ctx_snap),
            buckets: specific.and_then(|r| r.num_ctx_buckets.as_deref()),
            keep_alive: Rule::of(
                keep_alive(m_enforce),
                keep_alive(m_default),
                keep_alive(Some(g_enforce)),
                keep_alive(Some(g_default)),
            ),
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

/// Which rule decides an option for one model: the first set of per-model
/// `enforce`, per-model `defaults`, global `enforce`, global `defaults`.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Rule<T> {
    /// No rule: the client's value, or none.
    Free,
    /// Always this value, whatever the client sent; `true`: a per-model rule.
    Enforce(T, bool),
    /// This value when the client sent none; `true`: a per-model rule.
    Default(T, bool),
}

impl<T> Rule<T> {
    fn of(
        m_enforce: Option<T>,
        m_default: Option<T>,
        g_enforce: Option<T>,
        g_default: Option<T>,
    ) -> Self {
        match (m_enforce, m_default, g_enforce, g_default) {
            (Some(v), ..) => Rule::Enforce(v, true),
            (None, Some(v), ..) => Rule::Default(v, true),
            (None, None, Some(v), _) => Rule::Enforce(v, false),
            (None, None, None, Some(v)) => Rule::Default(v, false),
            (None, None, None, None) => Rule::Free,
        }
    }
}

/// The rules in force for one model, per-model ones winning over global ones:
///
/// - For each of `num_ctx` and `keep_alive`, one rule decides: per-model
///   `enforce`, else per-model `defaults` (the client's value if it sent one),
///   else global `enforce`, else global `defaults` (the client's value first).
/// - `max_num_ctx` lowers the resulting `num_ctx`: the per-model cap if the
///   model has one, else the global cap — which never lowers a value a
///   per-model rule set (the operator chose it for that model).
#[derive(Debug, PartialEq)]
pub struct Effective<'a> {
    num_ctx: Rule<i64>,
    model_max_num_ctx: Option<i64>,
    global_max_num_ctx: Option<i64>,
    keep_alive: Rule<&'a Value>,
    snap: Option<NumCtxSnap>,
    buckets: Option<&'a [i64]>,
}

impl Effective<'_> {
    /// The `num_ctx` to write, given the request's (`None` = leave it alone).
    pub fn num_ctx(&self, current: Option<i64>) -> Option<i64> {
        let (wanted, per_model) = match (self.num_ctx, current) {
            (Rule::Enforce(v, m), _) => (v, m),
            (_, Some(current)) => (current, false),
            (Rule::Default(v, m), None) => (v, m),
            (Rule::Free, None) => return None,
        };
        let cap = match (self.model_max_num_ctx, per_model) {
            (Some(max), _) => Some(max),
            (None, false) => self.global_max_num_ctx,
            (None, true) => None,
        };
        let capped = cap.map_or(wanted, |max| wanted.min(max));
        (Some(capped) != current).then_some(capped)
    }

    /// Whether `num_ctx` is enforced (then never snapped nor bucketed).
    fn enforced(&self) -> bool {
        matches!(self.num_ctx, Rule::Enforce(..))
    }

    /// The largest `num_ctx` snapping or bucketing may produce: the cap that
    /// applies to the model (`max_num_ctx`, per model else global).
    fn snap_cap(&self) -> i64 {
        self.model_max_num_ctx
            .or(self.global_max_num_ctx)
            .unwrap_or(i64::MAX)
    }

    /// `n` rounded up to the next of the model's `num_ctx_buckets`: `n`
    /// itself when it is above the last, or the model has none, or
    /// `num_ctx` is enforced, or the bucket is above the cap.
    pub fn bucket(&self, n: i64) -> i64 {
        if self.enforced() {
            return n;
        }
        self.buckets
            .and_then(|b| b.iter().copied().find(|&bucket| bucket >= n))
            .filter(|&bucket| bucket <= self.snap_cap())
            .unwrap_or(n)
    }

    /// When the model snaps to loaded runners (and `num_ctx` is not
    /// enforced): the largest context it may snap to.
    pub fn snap_up_to(&self) -> Option<i64> {
        (self.snap == Some(NumCtxSnap::Loaded) && !self.enforced()).then(|| self.snap_cap())
    }

    /// `n`, or the chosen backend's runner's context `loaded` when snapping
    /// applies and that is at least `n` (and not above the cap).
    pub fn snap(&self, n: i64, loaded: Option<u32>) -> i64 {
        match (self.snap_up_to(), loaded.map(i64::from)) {
            (Some(max), Some(ctx)) if ctx >= n && ctx <= max => ctx,
            _ => n,
        }
    }

    /// The `keep_alive` to write, given whether the request has one.
    pub fn keep_alive(&self, present: bool) -> Option<&Value> {
        match self.keep_alive {
            Rule::Enforce(v, _) => Some(v),
            Rule::Default(v, _) if !present => Some(v),
            _ => None,
        }
    }
}

/// The base model of an `/api/create` body (`from`), read as Go's
/// `encoding/json` reads it: keys matched case-insensitively, the last one
/// in the body winning, `null` leaving it as it was. `None` when there is
/// none (a create from blobs) or the body is not such an object.
pub fn create_base(body: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct LastFrom;
    impl<'de> Visitor<'de> for LastFrom {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut last = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key.eq_ignore_ascii_case("from") {
                    if let Some(value) = map.next_value::<Option<String>>()? {
                        last = Some(value);
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(last)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(LastFrom)
        .ok()
        .flatten()
        .filter(|v| !v.trim().is_empty())
}

/// Every string a body's top-level members that Ollama's Go could read as
/// `field` hold: keys matched as `encoding/json` matches them (ASCII case,
/// and `K` U+212A, `ſ` U+017F, `İ` U+0130, `ı` U+0131 folded) and, looser, as
/// `encoding/json/v2` would (ignoring `_` and `-`). An access check that
/// allows all of them allows the one Ollama reads, however the body spells
/// it. Empty when there is none or the body is not a JSON object.
pub fn body_strings(body: &[u8], field: &str) -> Vec<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    fn fold(c: char) -> Option<char> {
        match c {
            '_' | '-' => None,
            '\u{212A}' => Some('K'),
            '\u{017F}' => Some('S'),
            '\u{0130}' | '\u{0131}' => Some('I'),
            other => Some(other.to_ascii_uppercase()),
        }
    }
    fn near(key: &str, field: &str) -> bool {
        key.chars()
            .filter_map(fold)
            .eq(field.chars().filter_map(fold))
    }
    struct All<'f>(&'f str);
    impl<'de> Visitor<'de> for All<'_> {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut all = Vec::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if near(&key, self.0) {
                    if let Value::String(value) = map.next_value::<Value>()? {
                        all.push(value);
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(all)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(All(field)).unwrap_or_default()
}

fn validate(rules: &ModelRules, prefix: &str) -> Result<(), String> {
    if let Some(buckets) = &rules.num_ctx_buckets {
        if buckets.is_empty() || buckets.iter().any(|&b| b <= 0) {
            return Err(format!(
                "{prefix}num_ctx_buckets: give positive numbers of tokens, e.g. [2048, 8192, 32768]"
            ));
        }
        if buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "{prefix}num_ctx_buckets: {buckets:?} must be in ascending order"
            ));
        }
    }
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

    /// One config per cell of the README's precedence table: the global rule
    /// (none, `defaults`, `enforce`) and the per-model rule (likewise) of an
    /// option, with the global value 1 and the per-model value 2.
    fn precedence_config(option: &str, global: &str, model: &str) -> Config {
        let (g, m) = match option {
            "num_ctx" => (json!(1000), json!(2000)),
            _ => (json!("1m"), json!("2m")),
        };
        let mut v = json!({"overrides": {"m": {}}});
        if global != "none" {
            v[global] = json!({ option: g });
        }
        if model != "none" {
            v["overrides"]["m"][model] = json!({ option: m });
        }
        config(v)
    }

    #[test]
    fn per_model_rules_win_over_global_ones_in_every_cell() {
        // (global rule, per-model rule, result when the client sent its own
        // value, result when it sent none): "client", "global", "model" or "-".
        let table = [
            ("none", "none", "client", "-"),
            ("defaults", "none", "client", "global"),
            ("enforce", "none", "global", "global"),
            ("none", "defaults", "client", "model"),
            ("defaults", "defaults", "client", "model"),
            ("enforce", "defaults", "client", "model"),
            ("none", "enforce", "model", "model"),
            ("defaults", "enforce", "model", "model"),
            ("enforce", "enforce", "model", "model"),
        ];
        for (global, model, sent, unsent) in table {
            let cell = format!("global {global}, per-model {model}");
            // num_ctx: the client sends 3000; `None` from num_ctx() = unchanged.
            let c = precedence_config("num_ctx", global, model);
            let rules = c.rules_for("m");
            let want = |who: &str| match who {
                "global" => Some(1000),
                "model" => Some(2000),
                _ => None,
            };
            let got_sent = rules.num_ctx(Some(3000)).or(Some(3000));
            let want_sent = want(sent).or(Some(3000));
            assert_eq!(got_sent, want_sent, "num_ctx, client sent one: {cell}");
            assert_eq!(
                rules.num_ctx(None),
                want(unsent),
                "num_ctx, none sent: {cell}"
            );
            // Another model only ever sees the global rule.
            let other = c.rules_for("other");
            let global_only = if global == "none" { None } else { Some(1000) };
            assert_eq!(other.num_ctx(None), global_only, "other model: {cell}");

            // keep_alive: `None` = the client's (or no) value stays.
            let c = precedence_config("keep_alive", global, model);
            let rules = c.rules_for("m");
            let want = |who: &str| match who {
                "global" => Some(json!("1m")),
                "model" => Some(json!("2m")),
                _ => None,
            };
            let cleared = |who: &str| if who == "client" { None } else { want(who) };
            assert_eq!(
                rules.keep_alive(true).cloned(),
                cleared(sent),
                "keep_alive, client sent one: {cell}"
            );
            assert_eq!(
                rules.keep_alive(false).cloned(),
                want(unsent),
                "keep_alive, none sent: {cell}"
            );
        }
    }

    #[test]
    fn max_num_ctx_per_model_wins_and_never_lowers_a_per_model_value() {
        // (config, request's num_ctx, num_ctx sent on)
        let cases = [
            // The global cap lowers the client's value and global rules' values.
            (json!({"max_num_ctx": 4096}), Some(8192), Some(4096)),
            (
                json!({"max_num_ctx": 4096, "defaults": {"num_ctx": 8192}}),
                None,
                Some(4096),
            ),
            (
                json!({"max_num_ctx": 4096, "enforce": {"num_ctx": 8192}}),
                Some(100),
                Some(4096),
            ),
            // A per-model cap replaces the global one, up or down.
            (
                json!({"max_num_ctx": 4096, "overrides": {"m": {"max_num_ctx": 16384}}}),
                Some(8192),
                Some(8192),
            ),
            (
                json!({"max_num_ctx": 16384, "overrides": {"m": {"max_num_ctx": 2048}}}),
                Some(8192),
                Some(2048),
            ),
            (
                json!({"enforce": {"num_ctx": 8192}, "overrides": {"m": {"max_num_ctx": 2048}}}),
                None,
                Some(2048),
            ),
            // A global cap never lowers a value a per-model rule set...
            (
                json!({"max_num_ctx": 4096, "overrides": {"m": {"enforce": {"num_ctx": 16384}}}}),
                Some(1),
                Some(16384),
            ),
            (
                json!({"max_num_ctx": 4096, "overrides": {"m": {"defaults": {"num_ctx": 16384}}}}),
                None,
                Some(16384),
            ),
            // ... but still caps what the client asks for.
            (
                json!({"max_num_ctx": 4096, "overrides": {"m": {"defaults": {"num_ctx": 16384}}}}),
                Some(65536),
                Some(4096),
            ),
            // The model's own cap applies to its own values.
            (
                json!({"overrides": {"m": {"enforce": {"num_ctx": 16384}, "max_num_ctx": 8192}}}),
                None,
                Some(8192),
            ),
        ];
        for (v, current, want) in cases {
            let c = config(v.clone());
            let got = c.rules_for("m").num_ctx(current).or(current);
            assert_eq!(got, want, "{v} with num_ctx {current:?}");
        }
    }

    #[test]
    fn the_readme_case_per_model_default_beats_global_enforce() {
        let c = config(json!({
            "enforce": {"keep_alive": "5m"},
            "overrides": {"qwen2.5:14b": {"defaults": {"keep_alive": -1}}}
        }));
        assert_eq!(
            c.rules_for("qwen2.5:14b").keep_alive(false),
            Some(&json!(-1))
        );
        assert_eq!(c.rules_for("qwen2.5:14b").keep_alive(true), None);
        assert_eq!(c.rules_for("llama3.2").keep_alive(true), Some(&json!("5m")));
    }

    #[test]
    fn body_strings_finds_every_spelling_go_could_read() {
        let body = br#"{"destination":"a","Destination":"b","de\u017ftination":"c",
            "dest_ination":"d","destinations":"x","n":{"destination":"y"},"DESTINATION":null}"#;
        assert_eq!(body_strings(body, "destination"), ["a", "b", "c", "d"]);
        assert!(body_strings(b"[1]", "destination").is_empty());
        assert!(body_strings(b"{\"destination\":1}", "destination").is_empty());
    }

    #[test]
    fn create_base_is_read_as_go_reads_it() {
        assert_eq!(
            create_base(br#"{"model":"m","from":"llama3.2"}"#).as_deref(),
            Some("llama3.2")
        );
        assert_eq!(
            create_base(br#"{"From":"a","fROM":"b"}"#).as_deref(),
            Some("b"),
            "last wins"
        );
        assert_eq!(
            create_base(br#"{"from":"a","from":null}"#).as_deref(),
            Some("a"),
            "null is no-op"
        );
        assert_eq!(
            create_base(br#"{"model":"m","files":{"x.gguf":"sha256:00"}}"#),
            None
        );
        assert_eq!(create_base(br#"{"from":""}"#), None);
        assert_eq!(create_base(b"[1]"), None);
        assert_eq!(create_base(b"not json"), None);
    }

    #[test]
    fn strategies_weights_and_num_ctx_rules_are_checked() {
        let c =
            config(json!({"strategy": "least-busy", "overrides": {"M": {"strategy": "priority"}}}));
        assert_eq!(c.strategy_for("other"), Strategy::LeastBusy);
        assert_eq!(c.strategy_for("m:latest"), Strategy::Priority);
        assert_eq!(config(json!({})).strategy_for("x"), Strategy::WarmFirst);
        let err = Config::parse(r#"{"strategy":"fastest"}"#).unwrap_err();
        assert!(err.contains("unknown variant `fastest`"), "{err}");
        let err = Config::parse(r#"{"weights":{"a":0}}"#).unwrap_err();
        assert!(
            err.starts_with("weights.\"a\": must be at least 1"),
            "{err}"
        );
        assert!(Config::parse(r#"{"weights":{"a":1.5}}"#).is_err());
        let err =
            Config::parse(r#"{"overrides":{"m":{"num_ctx_buckets":[8192,2048]}}}"#).unwrap_err();
        assert!(err.contains("ascending"), "{err}");
        assert!(Config::parse(r#"{"overrides":{"m":{"num_ctx_buckets":[]}}}"#).is_err());
        assert!(Config::parse(r#"{"overrides":{"m":{"num_ctx_snap":"always"}}}"#).is_err());
        // Opt-in per model only.
        let err = Config::parse(r#"{"num_ctx_snap":"loaded"}"#).unwrap_err();
        assert!(err.contains("unknown field `num_ctx_snap`"), "{err}");
    }

    #[test]
    fn buckets_and_snapping_respect_enforce_and_caps() {
        let c = config(json!({
            "max_num_ctx": 16384,
            "overrides": {
                "m": {"num_ctx_buckets": [2048, 8192, 32768], "num_ctx_snap": "loaded"},
                "e": {"num_ctx_buckets": [8192], "enforce": {"num_ctx": 4096}}
            }
        }));
        let m = c.rules_for("m");
        assert_eq!(m.bucket(5000), 8192);
        assert_eq!(m.bucket(9000), 9000, "32768 is above the cap");
        assert_eq!(m.snap_up_to(), Some(16384));
        assert_eq!(m.snap(4096, Some(8192)), 8192);
        assert_eq!(m.snap(4096, Some(2048)), 4096);
        assert_eq!(m.snap(4096, None), 4096);
        let e = c.rules_for("e");
        assert_eq!(e.bucket(4096), 4096, "enforced");
        assert_eq!(e.snap_up_to(), None);
        assert_eq!(c.rules_for("x").bucket(5000), 5000);
        assert_eq!(c.rules_for("x").snap(4096, Some(8192)), 4096);
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
