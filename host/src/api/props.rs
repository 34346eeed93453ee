//! Property tests: llamagate's readings against small, independent models of
//! Go's. Inputs are built from the pieces attackers use (case variants,
//! escapes, folding characters, duplicates, slashes and dots), so the search
//! spends its time near the rules' edges.
//!
//! The property is one-sided where llamagate refuses: whenever it accepts a
//! request, its reading equals the model's.

use proptest::prelude::*;
use serde_json::Value;

use crate::api::body::{self, Peeked};
use crate::api::endpoint::{classify, Endpoint, Row, TABLE};
use crate::plugin::JsonValue;

/// Go's `ToUpper(ToLower(r))`, from Rust's Unicode tables (simple mappings:
/// a full mapping to several characters leaves the character as it is; the
/// one lowercase special case, U+0130, lowers to `i`).
fn oracle_fold(c: char) -> char {
    let lower: Vec<char> = c.to_lowercase().collect();
    let lower = match (c, lower.as_slice()) {
        ('\u{0130}', _) => 'i',
        (_, [one]) => *one,
        _ => c,
    };
    let upper: Vec<char> = lower.to_uppercase().collect();
    match upper.as_slice() {
        [one] => *one,
        _ => lower,
    }
}

fn oracle_key_matches(key: &str, field: &str) -> bool {
    key.chars()
        .map(oracle_fold)
        .eq(field.chars().map(oracle_fold))
}

/// What Ollama's struct ends up holding for a string field: members are
/// applied in order; a matching `null` leaves a string as it was.
fn oracle_string(members: &[(String, Value)], field: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for (key, value) in members {
        if oracle_key_matches(key, field) {
            match value {
                Value::Null => {}
                Value::String(s) => out = Some(s.clone()),
                _ => return None,
            }
        }
    }
    out.filter(|s| !s.is_empty())
}

/// A `*bool`: the last match wins, `null` resets it.
fn oracle_bool(members: &[(String, Value)], field: &str) -> Option<bool> {
    let mut out = None;
    for (key, value) in members {
        if oracle_key_matches(key, field) {
            out = value.as_bool();
        }
    }
    out
}

/// Keys built around the field names, with every trick.
fn key() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        Just("model"),
        Just("name"),
        Just("options"),
        Just("keep_alive"),
        Just("stream"),
        Just("messages"),
        Just("prompt"),
    ];
    (base, proptest::collection::vec((0usize..16, 0u8..8), 0..4)).prop_map(|(base, edits)| {
        let mut chars: Vec<String> = base.chars().map(String::from).collect();
        for (at, e) in edits {
            let at = at % chars.len();
            let c = chars[at].clone();
            chars[at] = match e {
                0 => c.to_uppercase(),
                1 if c == "k" => "\u{212A}".into(),
                1 if c == "s" => "\u{017F}".into(),
                2 if c == "i" => "\u{0130}".into(),
                3 if c == "i" => "\u{0131}".into(),
                4 if c == "_" => "".into(),
                5 => match c.chars().next() {
                    Some(first) => format!("\\u{:04x}", first as u32),
                    None => c,
                },
                6 => format!("{c}x"),
                _ => c,
            };
        }
        chars.concat()
    })
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"llama3.2\"".to_string()),
        Just("\"llama3.3:70b\"".to_string()),
        Just("\"\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("7".to_string()),
        Just(r#"{"num_ctx":4096}"#.to_string()),
        Just(r#"{"num_ctx":1,"num_ctx":131072}"#.to_string()),
        Just("\"5m\"".to_string()),
    ]
}

fn object() -> impl Strategy<Value = String> {
    proptest::collection::vec((key(), value()), 0..6).prop_map(|members| {
        let inner: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", inner.join(","))
    })
}

/// The members of a body in order, keys unescaped, as Go's decoder sees them.
fn oracle_members(body: &str) -> Vec<(String, Value)> {
    // serde_json's `Value` keeps only the last duplicate, so split the members
    // with the streaming map visitor instead.
    struct Ordered(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("object")
                }
                fn visit_map<M: serde::de::MapAccess<'de>>(
                    self,
                    mut m: M,
                ) -> Result<Ordered, M::Error> {
                    let mut out = Vec::new();
                    while let Some(e) = m.next_entry::<String, Value>()? {
                        out.push(e);
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Ordered>(body).unwrap().0
}

fn check_agreement(endpoint: Endpoint, body: &str, peeked: &Peeked) {
    let members = oracle_members(body);
    let row = Row::of(endpoint);
    let model_fields: &[&str] = match row.model {
        crate::api::endpoint::ModelAt::Body(f) => f,
        _ => &[],
    };
    let expected_model = model_fields.iter().find_map(|f| oracle_string(&members, f));
    assert_eq!(
        peeked.model.as_ref().map(|(_, m)| m.clone()),
        expected_model,
        "model of {body}"
    );
    if row.fields.contains(&"stream") {
        assert_eq!(peeked.stream, oracle_bool(&members, "stream"), "{body}");
    }
    if row.fields.contains(&"keep_alive") {
        let expected = members
            .iter()
            .rev()
            .find(|(k, _)| oracle_key_matches(k, "keep_alive"))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_null());
        let got = peeked.keep_alive.as_ref().map(|k| match k {
            JsonValue::Text(s) => Value::String(s.clone()),
            JsonValue::Integer(n) => Value::from(*n),
            JsonValue::Boolean(b) => Value::Bool(*b),
            other => Value::String(format!("{other:?}")),
        });
        if let (Some(e), Some(g)) = (&expected, &got) {
            if e.is_string() || e.is_i64() || e.is_boolean() {
                assert_eq!(e, g, "{body}");
            }
        } else {
            assert_eq!(expected.is_some(), got.is_some(), "{body}");
        }
    }
    if row.fields.contains(&"options") {
        // A Go map merges every matching member; null resets it.
        let mut merged: std::collections::BTreeMap<String, Value> = Default::default();
        let mut present = false;
        for (k, v) in &members {
            if oracle_key_matches(k, "options") {
                match v {
                    Value::Null => {
                        merged.clear();
                        present = false;
                    }
                    Value::Object(o) => {
                        present = true;
                        merged.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    _ => return,
                }
            }
        }
        let got: std::collections::BTreeMap<String, Value> = peeked
            .options
            .iter()
            .map(|(o, raw)| {
                (
                    o.key.clone(),
                    serde_json::from_str(raw.as_deref().unwrap()).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, merged, "{body} (present: {present})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whenever llamagate accepts a body, it reads the model, `stream`,
    /// `keep_alive` and `options` exactly as Go's decoder fills the struct.
    #[test]
    fn accepted_bodies_read_as_go_reads_them(
        body in object(),
        endpoint in prop_oneof![
            Just(Endpoint::Chat), Just(Endpoint::Pull), Just(Endpoint::Show),
            Just(Endpoint::Embed), Just(Endpoint::OpenaiChat), Just(Endpoint::Delete),
        ],
    ) {
        if let Ok(peeked) = body::peek(body.as_bytes(), Row::of(endpoint), 64) {
            check_agreement(endpoint, &body, &peeked);
        }
    }

    /// Plain bodies — each field once, spelled exactly — are never refused.
    #[test]
    fn plain_bodies_are_accepted(model in "[a-z0-9.:]{1,12}", stream: bool, n in 1u32..100_000) {
        let body = format!(
            r#"{{"model":"{model}","stream":{stream},"options":{{"num_ctx":{n}}},"keep_alive":"5m","messages":[{{"role":"user","content":"Model KEEP_ALIVE ſtream"}}]}}"#
        );
        let peeked = body::peek(body.as_bytes(), Row::of(Endpoint::Chat), 64).unwrap();
        check_agreement(Endpoint::Chat, &body, &peeked);
    }
}

/// A path built from pieces: segments of known routes in several cases,
/// escapes of their bytes, doubled slashes, dots, a trailing slash.
fn raw_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("api"),
        Just("v1"),
        Just("chat"),
        Just("delete"),
        Just("copy"),
        Just("models"),
        Just("blobs"),
        Just("tags"),
        Just("completions"),
        Just("."),
        Just(".."),
        Just(""),
        Just("x"),
    ];
    let piece = (segment, 0u8..6).prop_map(|(s, how)| match how {
        0 => s.to_uppercase(),
        1 => s.bytes().map(|b| format!("%{b:02x}")).collect::<String>(),
        2 => s
            .bytes()
            .enumerate()
            .map(|(i, b)| {
                if i == 0 {
                    format!("%{b:02X}")
                } else {
                    (b as char).to_string()
                }
            })
            .collect(),
        _ => s.to_string(),
    });
    let sep = prop_oneof![
        Just("/"),
        Just("/"),
        Just("/"),
        Just("%2F"),
        Just("%2f"),
        Just("//")
    ];
    proptest::collection::vec((sep, piece), 1..5).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(sep, piece)| format!("{sep}{piece}"))
            .collect::<String>()
    })
}

/// Go's `URL.Path` for a raw path: every `%XX` decoded, written here again,
/// byte by byte, so it does not share code with [`super::path`].
fn oracle_decode(raw: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut it = raw.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = (it.next()? as char).to_digit(16)?;
            let lo = (it.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

/// gin's routing of a decoded path: an exact route, or one `:param` segment.
fn oracle_route(decoded: &str) -> Endpoint {
    let exact = [
        ("/", Endpoint::Root),
        ("/api/version", Endpoint::Version),
        ("/api/tags", Endpoint::Tags),
        ("/api/ps", Endpoint::Ps),
        ("/api/show", Endpoint::Show),
        ("/api/generate", Endpoint::Generate),
        ("/api/chat", Endpoint::Chat),
        ("/api/embed", Endpoint::Embed),
        ("/api/embeddings", Endpoint::Embeddings),
        ("/api/pull", Endpoint::Pull),
        ("/api/push", Endpoint::Push),
        ("/api/create", Endpoint::Create),
        ("/api/copy", Endpoint::Copy),
        ("/api/delete", Endpoint::Delete),
        ("/v1/chat/completions", Endpoint::OpenaiChat),
        ("/v1/completions", Endpoint::OpenaiCompletions),
        ("/v1/embeddings", Endpoint::OpenaiEmbeddings),
        ("/v1/models", Endpoint::OpenaiModels),
        ("/v1/responses", Endpoint::OpenaiResponses),
        ("/v1/messages", Endpoint::OpenaiMessages),
    ];
    if let Some((_, e)) = exact.iter().find(|(p, _)| *p == decoded) {
        return *e;
    }
    for (prefix, e) in [
        ("/api/blobs/", Endpoint::Blobs),
        ("/v1/models/", Endpoint::OpenaiModel),
    ] {
        if let Some(rest) = decoded.strip_prefix(prefix) {
            if !rest.is_empty() && !rest.contains('/') {
                return e;
            }
        }
    }
    Endpoint::Other
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// The classifier routes exactly as gin routes Go's decoded path, and the
    /// path it forwards decodes to the same bytes.
    #[test]
    fn paths_classify_as_gin_routes_them(raw in raw_path()) {
        let oracle = oracle_decode(&raw);
        let methods = [http::Method::GET, http::Method::POST, http::Method::DELETE, http::Method::HEAD];
        for method in methods {
            match (classify(&method, &raw, None), &oracle) {
                (Err(crate::api::endpoint::Rejection::BadPath), None) => {}
                (Err(crate::api::endpoint::Rejection::BadPath), Some(_)) => panic!("{raw}: refused a good escape"),
                (_, None) => panic!("{raw}: accepted a bad escape"),
                (Ok(c), Some(decoded)) => {
                    let decoded_text = String::from_utf8_lossy(decoded);
                    let expected = oracle_route(&decoded_text);
                    prop_assert_eq!(c.endpoint, expected, "{} {}", method, raw);
                    prop_assert_eq!(oracle_decode(&c.forward_path), Some(decoded.clone()));
                    if expected != Endpoint::Other {
                        prop_assert!(TABLE.iter().any(|r| r.endpoint == expected && r.methods.contains(&method)));
                    }
                }
                (Err(crate::api::endpoint::Rejection::MethodNotAllowed), Some(decoded)) => {
                    let expected = oracle_route(&String::from_utf8_lossy(decoded));
                    prop_assert!(expected != Endpoint::Other, "{}", raw);
                    prop_assert!(!Row::of(expected).methods.contains(&method));
                }
                (Err(crate::api::endpoint::Rejection::Redirect { location, .. }), Some(decoded)) => {
                    // Only when the slash-less path is a route for this method.
                    prop_assert!(decoded.ends_with(b"/"));
                    let trimmed = String::from_utf8_lossy(&decoded[..decoded.len() - 1]).into_owned();
                    let expected = oracle_route(&trimmed);
                    prop_assert!(expected != Endpoint::Other);
                    prop_assert!(Row::of(expected).methods.contains(&method));
                    prop_assert_eq!(oracle_decode(&location), Some(trimmed.into_bytes()));
                }
            }
        }
    }
}
