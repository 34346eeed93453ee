//! API keys (`[policy.keys."NAME"]`): who may call what.
//!
//! Once a `keys` table is configured (even an empty one), every request
//! needs a key, presented as `Authorization: Bearer KEY` (the scheme in any
//! case) or `x-api-key: KEY` (Anthropic's SDKs). `GET /` never reaches the
//! policy (llamagate answers it), so health checks need none.
//!
//! - Keys are configured by their SHA-256 only (`hash = "sha256:<hex>"`); a
//!   field that would hold the key itself (`key`, `secret`, `token`, ...) is
//!   refused. A presented key is hashed and compared with *every* configured
//!   hash in constant time ([`KeyTable`]).
//! - A request that carries two different keys (in the two headers, or one
//!   header twice), an `Authorization` that is not `Bearer`, an empty key, or
//!   one with whitespace inside, is refused: the key judged is the only key.
//! - Unknown, absent, expired (`expires`) and `disabled` keys get 401 with
//!   `www-authenticate: Bearer`; a known key without the endpoint's
//!   [`Scope`], or asking for a model outside its `models`, gets 403.
//! - `models` (absent: every model) lists names compared as Ollama compares
//!   them; an entry matches the model as asked and as its alias resolves, so
//!   `llama3.2` allows the alias `gpt-4o` → `llama3.2`, while `gpt-4o` alone
//!   allows the alias only.
//!
//! Messages never contain a key or a hash.

use std::collections::BTreeMap;

use llamagate_sdk::keys::{KeyError, KeyTable};
use llamagate_sdk::{names, time};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

/// What a key may do. `admin` implies the other two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Run and look at models: generate, chat, embed(dings), show, tags, ps,
    /// version, the OpenAI and Anthropic inference and model-list endpoints.
    Inference,
    /// Change the servers' models: pull, push, create, copy, delete, blob uploads.
    Manage,
    /// Everything, including paths llamagate does not know (passed through to
    /// a backend), and llamagate's `/metrics` and `/llamagate/status`.
    Admin,
}

impl Scope {
    /// The scope's name as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Manage => "manage",
            Scope::Admin => "admin",
        }
    }
}

/// The scope an endpoint needs. Every endpoint is listed (no catch-all), so
/// a new one must be given its scope here.
pub fn required_scope(endpoint: llamagate_sdk::Endpoint) -> Scope {
    use llamagate_sdk::Endpoint as E;
    match endpoint {
        E::Root
        | E::Version
        | E::Tags
        | E::Ps
        | E::Show
        | E::Generate
        | E::Chat
        | E::Embed
        | E::Embeddings
        | E::OpenaiChat
        | E::OpenaiCompletions
        | E::OpenaiEmbeddings
        | E::OpenaiModels
        | E::OpenaiModel
        | E::OpenaiResponses
        | E::OpenaiMessages => Scope::Inference,
        E::Pull | E::Push | E::Create | E::Copy | E::Delete | E::Blobs => Scope::Manage,
        E::Other => Scope::Admin,
    }
}

/// One configured key (never the key itself, nor its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Its name: the request's `principal` (logs, metrics, queue fairness).
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The models it may use, as comparison keys ([`names::key`]); `None`: all.
    pub models: Option<Vec<String>>,
    /// Seconds since the Unix epoch from which it no longer works.
    pub expires: Option<i64>,
    /// Revoked (`llamagate keys revoke`): kept in the config, refused.
    pub disabled: bool,
}

impl Key {
    /// Whether the key has `scope` (or `admin`, which implies every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// Whether a model the client calls `asked`, which the policy resolves to
    /// `resolved` (its alias target, if it is an alias), is on the key's list.
    pub fn allows(&self, asked: &str, resolved: Option<&str>) -> bool {
        let Some(models) = &self.models else {
            return true;
        };
        let asked = names::key(asked);
        let resolved = resolved.map(names::key);
        models
            .iter()
            .any(|m| *m == asked || resolved.as_ref() == Some(m))
    }
}

/// Why a request was refused, with the status it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no usable key (absent, unknown, expired, disabled, malformed).
    Unauthorized(String),
    /// 403: a known key that may not do this.
    Forbidden(String),
}

/// The configured keys.
#[derive(Debug, Default)]
pub struct Keys {
    table: KeyTable<usize>,
    keys: Vec<Key>,
}

/// One `[policy.keys."NAME"]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    hash: Option<String>,
    #[serde(default = "default_scopes")]
    scopes: Vec<Scope>,
    models: Option<Vec<String>>,
    expires: Option<String>,
    #[serde(default)]
    disabled: bool,
    // Fields that would hold the key itself: named so that they are refused
    // with a message of their own (never read, never quoted).
    key: Option<IgnoredAny>,
    secret: Option<IgnoredAny>,
    token: Option<IgnoredAny>,
    api_key: Option<IgnoredAny>,
    password: Option<IgnoredAny>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Inference]
}

/// Whether a key name can be a log field, a metric label and a fairness key
/// as it is: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Keys {
    /// Reads the `keys` table (name → its table, as JSON). Messages start
    /// with the key's path (`keys."ci".hash: ...`) and never quote a hash.
    pub fn parse(raw: BTreeMap<String, Value>) -> Result<Keys, String> {
        let mut keys = Keys::default();
        for (name, value) in raw {
            let place = format!("keys.{name:?}");
            if !valid_name(&name) {
                return Err(format!(
                    "{place}: a key's name is 1 to 64 letters, digits, `.`, `_` or `-` \
                     (it is shown in logs and metrics)"
                ));
            }
            let raw: RawKey = serde_json::from_value(value).map_err(|e| format!("{place}: {e}"))?;
            let plaintext = [
                ("key", raw.key.is_some()),
                ("secret", raw.secret.is_some()),
                ("token", raw.token.is_some()),
                ("api_key", raw.api_key.is_some()),
                ("password", raw.password.is_some()),
            ];
            if let Some((field, _)) = plaintext.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{place}.{field}: keys are never written in plain text: remove `{field}` and \
                     write `hash = \"sha256:<64 hex digits>\"` (`llamagate keys create` makes a \
                     key and writes its hash; or printf %s \"$KEY\" | sha256sum)"
                ));
            }
            let Some(hash) = raw.hash else {
                return Err(format!(
                    "{place}: `hash` is missing (\"sha256:<64 hex digits>\": the SHA-256 of the key)"
                ));
            };
            if raw.scopes.is_empty() {
                return Err(format!(
                    "{place}.scopes is empty: give \"inference\", \"manage\" and/or \"admin\""
                ));
            }
            let models = match raw.models {
                Some(models) if models.is_empty() => {
                    return Err(format!(
                        "{place}.models is empty: list the models the key may use, or leave \
                         `models` out to allow every model"
                    ))
                }
                Some(models) => Some(models.iter().map(|m| names::key(m)).collect()),
                None => None,
            };
            let expires = match raw.expires {
                Some(text) => Some(
                    time::parse_timestamp(&text).map_err(|e| format!("{place}.expires: {e}"))?,
                ),
                None => None,
            };
            keys.table
                .insert_digest(&hash, keys.keys.len())
                .map_err(|e| match e {
                    KeyError::Duplicate => {
                        format!("{place}.hash: the same hash as another key's: each key is its own")
                    }
                    other => format!("{place}.hash: {other}"),
                })?;
            let mut scopes = raw.scopes;
            scopes.sort();
            scopes.dedup();
            keys.keys.push(Key {
                name,
                scopes,
                models,
                expires,
                disabled: raw.disabled,
            });
        }
        Ok(keys)
    }

    /// The configured keys, by name.
    pub fn all(&self) -> &[Key] {
        &self.keys
    }

    /// The key a request presents, if it is known, in force and the only one
    /// it presents; `now` is seconds since the Unix epoch.
    pub fn authenticate(
        &self,
        headers: &[llamagate_sdk::Header],
        now: i64,
    ) -> Result<&Key, Refusal> {
        let unauthorized = |m: &str| Refusal::Unauthorized(m.to_string());
        let token = presented(headers).map_err(unauthorized)?.ok_or_else(|| {
            unauthorized(
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
        })?;
        let key = self
            .table
            .lookup(token)
            .map(|&i| &self.keys[i])
            .ok_or_else(|| unauthorized("invalid API key"))?;
        if key.disabled {
            return Err(unauthorized("this API key is disabled"));
        }
        if let Some(expires) = key.expires.filter(|&at| at <= now) {
            return Err(Refusal::Unauthorized(format!(
                "this API key expired at {}",
                time::format_timestamp(expires)
            )));
        }
        Ok(key)
    }
}

/// The one key a request presents: every `Authorization` and `x-api-key`
/// header must carry the same one. `Ok(None)`: none at all.
fn presented(headers: &[llamagate_sdk::Header]) -> Result<Option<&str>, &'static str> {
    let mut found: Option<&str> = None;
    for header in headers {
        let token = if header.name.eq_ignore_ascii_case("authorization") {
            bearer(&header.value)
                .ok_or("malformed Authorization header: send `Authorization: Bearer <key>`")?
        } else if header.name.eq_ignore_ascii_case("x-api-key") {
            plain_token(header.value.trim()).ok_or("malformed x-api-key header")?
        } else {
            continue;
        };
        match found {
            None => found = Some(token),
            // Comparing two values the client sent tells it nothing it did not know.
            Some(earlier) if earlier == token => {}
            Some(_) => {
                return Err("the request carries more than one API key: send one, once");
            }
        }
    }
    Ok(found)
}

/// The key of `Bearer KEY`: the scheme in any case (RFC 9110 §11.1), one or
/// more spaces, then the key.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| plain_token(token.trim()))
        .flatten()
}

/// A key as it can be sent: not empty, visible ASCII, no spaces inside.
fn plain_token(token: &str) -> Option<&str> {
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// Whether `key` may call `endpoint` at `path` (for the message).
pub fn check_scope(
    key: &Key,
    endpoint: llamagate_sdk::Endpoint,
    path: &str,
) -> Result<(), Refusal> {
    let needed = required_scope(endpoint);
    if key.has(needed) {
        return Ok(());
    }
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Err(Refusal::Forbidden(format!(
        "key {:?} may not call {path}: that needs the {:?} scope",
        key.name,
        needed.as_str()
    )))
}

/// Whether `key` may use a model asked as `asked` and resolved to `resolved`.
pub fn check_model(key: &Key, asked: &str, resolved: Option<&str>) -> Result<(), Refusal> {
    if key.allows(asked, resolved) {
        return Ok(());
    }
    Err(Refusal::Forbidden(format!(
        "key {:?} may not use model {asked:?}",
        key.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamagate_sdk::keys::sha256_hex;
    use llamagate_sdk::{Endpoint, Header};
    use serde_json::json;

    fn keys(v: Value) -> Result<Keys, String> {
        Keys::parse(serde_json::from_value(v).unwrap())
    }

    fn hash(key: &str) -> String {
        format!("sha256:{}", sha256_hex(key))
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| Header {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    fn sample() -> Keys {
        keys(json!({
            "app": {"hash": hash("lg_app"), "models": ["llama3.2"]},
            "ops": {"hash": hash("lg_ops").to_uppercase().replace("SHA256", "sha256"),
                    "scopes": ["manage", "inference"]},
            "root": {"hash": hash("lg_root"), "scopes": ["admin"]},
            "old": {"hash": hash("lg_old"), "expires": "2020-01-01"},
            "gone": {"hash": hash("lg_gone"), "disabled": true},
        }))
        .unwrap()
    }

    fn who(keys: &Keys, pairs: &[(&str, &str)]) -> Result<String, Refusal> {
        keys.authenticate(&headers(pairs), 1_800_000_000)
            .map(|k| k.name.clone())
    }

    fn unauthorized(r: Result<String, Refusal>) -> String {
        match r {
            Err(Refusal::Unauthorized(m)) => m,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn a_key_is_found_by_either_header_and_any_scheme_case() {
        let k = sample();
        for pairs in [
            &[("authorization", "Bearer lg_app")][..],
            &[("authorization", "bearer lg_app")],
            &[("authorization", "BEARER   lg_app ")],
            &[("authorization", "Bearer\tlg_app")],
            &[("x-api-key", "lg_app")],
            &[("x-api-key", "lg_app"), ("authorization", "Bearer lg_app")],
            &[
                ("authorization", "Bearer lg_app"),
                ("authorization", "Bearer lg_app"),
            ],
        ] {
            assert_eq!(who(&k, pairs).as_deref(), Ok("app"), "{pairs:?}");
        }
        assert_eq!(
            who(&k, &[("authorization", "Bearer lg_ops")]).as_deref(),
            Ok("ops"),
            "a hash written in upper case"
        );
    }

    #[test]
    fn no_key_a_wrong_key_or_two_keys_get_401() {
        let k = sample();
        assert!(unauthorized(who(&k, &[])).starts_with("missing API key"));
        for wrong in [
            "lg_ap",         // a prefix of a key
            "lg_appp",       // a key is a prefix of it
            "LG_APP",        // another case
            &hash("lg_app"), // the configured hash itself
            &sha256_hex("lg_app"),
        ] {
            let m = unauthorized(who(&k, &[("x-api-key", wrong)]));
            assert_eq!(m, "invalid API key", "{wrong:?}");
        }
        for malformed in [
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "lg_app",
            "Basic bGdfYXBwOg==",
            "Bearer lg_app lg_root",
            "Bearer lg_app, Bearer lg_root",
            "Token lg_app",
            "Bearerlg_app",
        ] {
            let m = unauthorized(who(&k, &[("authorization", malformed)]));
            assert!(
                m.starts_with("malformed Authorization"),
                "{malformed:?}: {m}"
            );
        }
        assert!(unauthorized(who(&k, &[("x-api-key", "")])).starts_with("malformed x-api-key"));
        assert!(unauthorized(who(&k, &[("x-api-key", "lg_app lg_root")])).starts_with("malformed"));
        // Two different keys, whichever is first and whichever is valid.
        for pairs in [
            &[("authorization", "Bearer lg_app"), ("x-api-key", "lg_root")][..],
            &[
                ("x-api-key", "lg_nope"),
                ("authorization", "Bearer lg_root"),
            ],
            &[
                ("authorization", "Bearer lg_root"),
                ("authorization", "Bearer lg_app"),
            ],
            &[("x-api-key", "lg_root"), ("x-api-key", "lg_app")],
            // A valid key beside a malformed header is still refused.
            &[("authorization", "Basic eA=="), ("x-api-key", "lg_root")],
        ] {
            let m = unauthorized(who(&k, pairs));
            assert!(
                m.contains("more than one") || m.starts_with("malformed"),
                "{pairs:?}: {m}"
            );
        }
    }

    #[test]
    fn expired_and_disabled_keys_get_401() {
        let k = sample();
        assert_eq!(
            unauthorized(who(&k, &[("x-api-key", "lg_old")])),
            "this API key expired at 2020-01-01T00:00:00Z"
        );
        assert_eq!(
            unauthorized(who(&k, &[("x-api-key", "lg_gone")])),
            "this API key is disabled"
        );
        // Expiry is a moment: valid just before it, refused at it.
        let at = time::parse_timestamp("2020-01-01").unwrap();
        let h = headers(&[("x-api-key", "lg_old")]);
        assert!(k.authenticate(&h, at - 1).is_ok());
        assert!(k.authenticate(&h, at).is_err());
    }

    #[test]
    fn scopes_per_endpoint_and_admin_implies_all() {
        let k = sample();
        let key = |name: &str| k.all().iter().find(|k| k.name == name).unwrap();
        let cases = [
            (Endpoint::Chat, "/api/chat", [true, true, true]),
            (Endpoint::Tags, "/api/tags", [true, true, true]),
            (Endpoint::OpenaiMessages, "/v1/messages", [true, true, true]),
            (Endpoint::Pull, "/api/pull", [false, true, true]),
            (Endpoint::Copy, "/api/copy", [false, true, true]),
            (Endpoint::Blobs, "/api/blobs/sha256:00", [false, true, true]),
            (Endpoint::Other, "/api/signout?x=1", [false, false, true]),
        ];
        for (endpoint, path, allowed) in cases {
            for (name, allowed) in ["app", "ops", "root"].into_iter().zip(allowed) {
                let got = check_scope(key(name), endpoint, path);
                assert_eq!(got.is_ok(), allowed, "{name} {path}");
            }
        }
        let Err(Refusal::Forbidden(m)) = check_scope(key("app"), Endpoint::Other, "/api/x?q=1")
        else {
            panic!()
        };
        assert_eq!(
            m,
            "key \"app\" may not call /api/x: that needs the \"admin\" scope"
        );
    }

    #[test]
    fn models_match_as_ollama_names_them_asked_or_resolved() {
        let k = keys(json!({
            "direct": {"hash": hash("a"), "models": ["llama3.2"]},
            "alias": {"hash": hash("b"), "models": ["GPT-4o"]},
        }))
        .unwrap();
        let (direct, alias) = (&k.all()[1], &k.all()[0]);
        assert_eq!(direct.name, "direct");
        assert!(direct.allows("llama3.2:latest", None));
        assert!(direct.allows("LLAMA3.2", None));
        assert!(direct.allows("gpt-4o", Some("llama3.2")), "its alias");
        assert!(!direct.allows("llama3.2:1b", None));
        assert!(!direct.allows("qwen2.5", None));
        assert!(alias.allows("gpt-4o", Some("llama3.2")));
        assert!(!alias.allows("llama3.2", None), "the alias only");
        assert_eq!(
            check_model(alias, "llama3.2", None),
            Err(Refusal::Forbidden(
                "key \"alias\" may not use model \"llama3.2\"".into()
            ))
        );
    }

    #[test]
    fn the_config_is_checked_without_quoting_a_key_or_hash() {
        let secret = "lg_s3cr3t-value";
        let h = hash(secret);
        let err = |v: Value| keys(v).unwrap_err();
        for field in ["key", "secret", "token", "api_key", "password"] {
            let e = err(json!({"ci": {field: secret, "hash": h}}));
            assert!(
                e.starts_with(&format!("keys.\"ci\".{field}: keys are never")),
                "{e}"
            );
            assert!(!e.contains(secret) && !e.contains(&h[10..20]), "{e}");
        }
        let cases = [
            (json!({"ci": {}}), "keys.\"ci\": `hash` is missing"),
            (
                json!({"ci": {"hash": secret}}),
                "keys.\"ci\".hash: must be \"sha256:",
            ),
            (
                json!({"ci": {"hash": &h[..70]}}),
                "keys.\"ci\".hash: a `sha256:` key must be",
            ),
            (
                json!({"ci": {"hash": h, "scopes": []}}),
                "keys.\"ci\".scopes is empty",
            ),
            (
                json!({"ci": {"hash": h, "scopes": ["root"]}}),
                "keys.\"ci\": unknown variant",
            ),
            (
                json!({"ci": {"hash": h, "models": []}}),
                "keys.\"ci\".models is empty",
            ),
            (
                json!({"ci": {"hash": h, "expires": "soon"}}),
                "keys.\"ci\".expires: expected a date",
            ),
            (
                json!({"ci": {"hash": h, "note": "x"}}),
                "keys.\"ci\": unknown field `note`",
            ),
            (json!({"c i": {"hash": h}}), "keys.\"c i\": a key's name is"),
            (json!({"": {"hash": h}}), "keys.\"\": a key's name is"),
            (
                json!({"a": {"hash": h}, "b": {"hash": h.to_uppercase().replace("SHA256", "sha256")}}),
                "keys.\"b\".hash: the same hash as another key's",
            ),
        ];
        for (config, expected) in cases {
            let e = err(config);
            assert!(e.starts_with(expected), "{e}\nexpected: {expected}");
            assert!(!e.contains(secret) && !e.contains(&h[10..20]), "{e}");
        }
    }
}
