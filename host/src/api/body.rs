//! Request bodies: read the few fields a policy needs, and write back only the
//! fields a policy changed.
//!
//! Bodies are never re-serialised through a schema. [`peek`] reads the fields
//! of the first JSON value as Go's `encoding/json` assigns them to Ollama's
//! structs ([`crate::api::json`]; trailing bytes are ignored), borrowing each as
//! raw text; [`splice`] replaces or inserts top-level fields in place, so every other
//! byte (images, tools, `format` schemas, fields newer than llamagate) reaches the
//! backend unchanged.

use serde_json::value::RawValue;

use crate::api::endpoint::{Endpoint, ModelAt, Row, Streams};
use crate::api::json::{self, kind, Object, ReadError};
use crate::plugin::{JsonValue, OptionEntry};

/// A request body that cannot be used, worded for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Nothing but whitespace.
    #[error("missing request body")]
    Empty,
    /// Not JSON.
    #[error("invalid JSON in request body: {0}")]
    Malformed(String),
    /// A field of the wrong JSON type.
    #[error("json: cannot unmarshal {found} into field \"{field}\" of type {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it held.
        found: &'static str,
        /// What it must hold.
        expected: &'static str,
    },
    /// A field llamagate reads is given more than once, or in a spelling
    /// Ollama might read as it (see [`crate::api::json`]).
    #[error("invalid request body: {0}")]
    Ambiguous(String),
    /// A compressed body (`Content-Encoding`), which llamagate cannot read as Ollama would.
    #[error("llamagate does not accept request bodies with a Content-Encoding; send the body uncompressed")]
    Encoded,
    /// More `options` keys than `max_options`.
    #[error("invalid request body: \"options\" has more than {0} keys (llamagate's max_options)")]
    TooManyOptions(usize),
}

impl From<ReadError> for BodyError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Malformed(m) => BodyError::Malformed(m),
            ReadError::TooManyKeys { limit, .. } => BodyError::TooManyOptions(limit),
            e @ ReadError::Ambiguous { .. } => BodyError::Ambiguous(e.to_string()),
        }
    }
}

/// The fields of a body that policies see.
#[derive(Debug, Default, PartialEq)]
pub struct Peeked {
    /// The model and the field that named it (`model`, legacy `name`, `source`).
    pub model: Option<(&'static str, String)>,
    /// `options`, one entry per key, each with its original JSON text.
    pub options: Vec<(OptionEntry, Option<String>)>,
    /// `keep_alive`.
    pub keep_alive: Option<JsonValue>,
    /// `stream` when it is a boolean.
    pub stream: Option<bool>,
}

impl Peeked {
    /// Whether the response will stream, given the endpoint's default.
    pub fn streaming(&self, endpoint: Endpoint) -> bool {
        match Row::of(endpoint).streams {
            Streams::IfTrue => self.stream == Some(true),
            Streams::UnlessFalse => self.stream.unwrap_or(true),
            Streams::Never => self.stream.unwrap_or(false),
        }
    }
}

/// Parses the first JSON value of `body` as an object, reading `fields`.
fn scan<'a>(body: &'a [u8], fields: &[&'static str]) -> Result<Object<'a>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    Ok(Object::scan(body, fields)?)
}

/// Reads the policy-relevant fields of `row`'s struct, as Ollama would:
/// the model fields (the first non-empty one wins) and `row.fields`; at most
/// `max_options` keys in `options`.
pub fn peek(body: &[u8], row: &Row, max_options: usize) -> Result<Peeked, BodyError> {
    let model_fields: &[&'static str] = match row.model {
        ModelAt::Body(fields) => fields,
        ModelAt::None | ModelAt::Path | ModelAt::Form => &[],
    };
    let all: Vec<&'static str> = model_fields.iter().chain(row.fields).copied().collect();
    let object = scan(body, &all)?;
    let mut peeked = Peeked::default();
    for &field in model_fields {
        match object.get(field) {
            Some(raw) if raw.get() == "null" => {}
            Some(raw) => {
                let name: String =
                    serde_json::from_str(raw.get()).map_err(|_| BodyError::WrongType {
                        field,
                        found: kind(raw),
                        expected: "string",
                    })?;
                if !name.is_empty() {
                    peeked.model = Some((field, name));
                    break;
                }
            }
            None => {}
        }
    }
    if let Some(raw) = object.get("options").filter(|r| r.get() != "null") {
        if !raw.get().starts_with('{') {
            return Err(BodyError::WrongType {
                field: "options",
                found: kind(raw),
                expected: "map[string]interface {}",
            });
        }
        peeked.options = json::members(raw, "options", max_options)?
            .into_iter()
            .map(|(key, raw)| {
                let value = to_json_value(raw);
                (OptionEntry { key, value }, Some(raw.get().to_string()))
            })
            .collect();
    }
    peeked.keep_alive = object
        .get("keep_alive")
        .filter(|r| r.get() != "null")
        .map(to_json_value);
    peeked.stream = object.get("stream").and_then(|r| match r.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    });
    Ok(peeked)
}

/// Replaces (or inserts) top-level fields of the body's first JSON value.
/// `edits` holds `(field, JSON text)` pairs; the rest of the body is kept byte
/// for byte. A field present in another spelling is refused (see [`peek`]),
/// so an edit is never shadowed by a key Ollama reads after it.
pub fn splice(body: &[u8], edits: &[(&'static str, String)]) -> Result<Vec<u8>, BodyError> {
    let fields: Vec<&'static str> = edits.iter().map(|(f, _)| *f).collect();
    let object = scan(body, &fields)?;
    let offset = |raw: &RawValue| raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let start = offset(object.whole);
    // Replacements, sorted by position so they can be applied back to front.
    let mut replace: Vec<(usize, usize, &str)> = Vec::new();
    let mut insert = String::new();
    for (field, text) in edits {
        match object.get(field) {
            Some(raw) => replace.push((offset(raw), raw.get().len(), text)),
            None => {
                insert.push_str(&serde_json::to_string(field).expect("string serialises"));
                insert.push(':');
                insert.push_str(text);
                insert.push(',');
            }
        }
    }
    replace.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out = body.to_vec();
    for (at, len, text) in replace {
        out.splice(at..at + len, text.bytes());
    }
    if !insert.is_empty() {
        if object.is_empty() {
            insert.pop();
        }
        out.splice(start + 1..start + 1, insert.bytes());
    }
    Ok(out)
}

/// Renders an `options` object from its entries, keeping untouched values' text.
pub fn render_options(entries: &[(OptionEntry, Option<String>)]) -> String {
    let mut out = String::from("{");
    for (i, (entry, raw)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&entry.key).expect("string serialises"));
        out.push(':');
        match raw {
            Some(raw) => out.push_str(raw),
            None => out.push_str(&render(&entry.value)),
        }
    }
    out.push('}');
    out
}

/// JSON text of a [`JsonValue`].
pub fn render(value: &JsonValue) -> String {
    match value {
        JsonValue::Null => "null".into(),
        JsonValue::Boolean(b) => b.to_string(),
        JsonValue::Integer(n) => n.to_string(),
        JsonValue::Number(f) => serde_json::Number::from_f64(*f)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "null".into()),
        JsonValue::Text(s) => serde_json::to_string(s).expect("string serialises"),
        JsonValue::Raw(s) => s.clone(),
    }
}

fn to_json_value(raw: &RawValue) -> JsonValue {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => JsonValue::Null,
        Some(b't') => JsonValue::Boolean(true),
        Some(b'f') => JsonValue::Boolean(false),
        Some(b'"') => JsonValue::Text(serde_json::from_str(text).unwrap_or_default()),
        Some(b'[' | b'{') => JsonValue::Raw(
            serde_json::from_str::<serde_json::Value>(text)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| text.to_string()),
        ),
        _ => match text.parse::<i64>() {
            Ok(n) => JsonValue::Integer(n),
            Err(_) => JsonValue::Number(text.parse().unwrap_or_default()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &[u8]) -> Result<Peeked, BodyError> {
        peek(body, Row::of(Endpoint::Chat), 64)
    }

    #[test]
    fn peeks_fields_and_ignores_trailing_bytes() {
        let body = br#"{"model":"llama3.2","options":{"num_ctx":4096,"stop":["a"]},"keep_alive":"5m","stream":false} trailing"#;
        let p = chat(body).unwrap();
        assert_eq!(p.model, Some(("model", "llama3.2".into())));
        assert_eq!(p.options[0].0.value, JsonValue::Integer(4096));
        assert_eq!(p.options[1].0.value, JsonValue::Raw(r#"["a"]"#.into()));
        assert_eq!(p.keep_alive, Some(JsonValue::Text("5m".into())));
        assert!(!p.streaming(Endpoint::Chat));
    }

    #[test]
    fn legacy_name_field() {
        let pull = Row::of(Endpoint::Pull);
        let p = peek(br#"{"name":"m"}"#, pull, 64).unwrap();
        assert_eq!(p.model, Some(("name", "m".into())));
        assert!(p.streaming(Endpoint::Pull), "pull streams by default");
        // `model` wins over `name` when both are non-empty, as `cmp.Or`.
        let p = peek(br#"{"name":"a","model":"b"}"#, pull, 64).unwrap();
        assert_eq!(p.model, Some(("model", "b".into())));
        let p = peek(br#"{"model":"","name":"a"}"#, pull, 64).unwrap();
        assert_eq!(p.model, Some(("name", "a".into())));
        // Chat's struct has no `name`: Ollama ignores it, and so does llamagate.
        assert_eq!(chat(br#"{"name":"m"}"#).unwrap().model, None);
    }

    #[test]
    fn null_means_absent() {
        let p = chat(br#"{"model":null,"options":null,"keep_alive":null,"stream":null}"#).unwrap();
        assert_eq!(p, Peeked::default());
        assert!(p.streaming(Endpoint::Chat));
        assert!(!p.streaming(Endpoint::OpenaiChat));
    }

    #[test]
    fn options_last_duplicate_wins() {
        let p = chat(br#"{"model":"m","options":{"num_ctx":1,"num_ctx":99999}}"#).unwrap();
        assert_eq!(p.options.len(), 1);
        assert_eq!(p.options[0].0.value, JsonValue::Integer(99999));
        assert_eq!(
            peek(
                br#"{"options":{"a":1,"b":2,"c":3}}"#,
                Row::of(Endpoint::Chat),
                2
            ),
            Err(BodyError::TooManyOptions(2))
        );
    }

    #[test]
    fn ambiguous_fields_are_refused() {
        for body in [
            &br#"{"model":"llama3.2","Model":"llama3.3:70b"}"#[..],
            br#"{"model":"a","options":{},"OPTIONS":{"num_ctx":1}}"#,
            br#"{"model":"a","keep_alive":0,"\u212aeep_alive":-1}"#,
            br#"{"model":"a","stream":false,"stream":true}"#,
        ] {
            assert!(
                matches!(chat(body), Err(BodyError::Ambiguous(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Fields plugins do not see must still read one way: a copy's target,
        // a create's base model.
        for (endpoint, body) in [
            (
                Endpoint::Copy,
                &br#"{"source":"a","destination":"b","Destination":"c"}"#[..],
            ),
            (Endpoint::Create, br#"{"model":"x","from":"a","FROM":"b"}"#),
        ] {
            assert!(
                matches!(
                    peek(body, Row::of(endpoint), 8),
                    Err(BodyError::Ambiguous(_))
                ),
                "{endpoint:?}"
            );
        }
        // Fields the endpoint's struct lacks are not read, so not ambiguous.
        assert!(peek(
            br#"{"model":"a","Stream":1,"stream":2}"#,
            Row::of(Endpoint::Embed),
            8
        )
        .is_ok());
    }

    #[test]
    fn errors() {
        assert_eq!(chat(b"  \n"), Err(BodyError::Empty));
        assert!(matches!(chat(b"{\"model\":"), Err(BodyError::Malformed(_))));
        assert!(matches!(chat(b"[1]"), Err(BodyError::Malformed(_))));
        assert_eq!(
            chat(br#"{"model":7}"#),
            Err(BodyError::WrongType {
                field: "model",
                found: "number",
                expected: "string"
            })
        );
        assert!(matches!(
            chat(br#"{"model":"m","options":[1]}"#),
            Err(BodyError::WrongType {
                field: "options",
                ..
            })
        ));
    }

    #[test]
    fn splice_keeps_everything_else_byte_for_byte() {
        let body = br#"{ "model" : "gpt-4o", "images":["AAAA"], "think":true, "x": {"y":1} }"#;
        let out = splice(
            body,
            &[
                ("model", "\"llama3.2\"".into()),
                ("keep_alive", "-1".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"keep_alive":-1, "model" : "llama3.2", "images":["AAAA"], "think":true, "x": {"y":1} }"#
        );
    }

    #[test]
    fn splice_into_empty_object() {
        let out = splice(b"{}", &[("a", "1".into())]).unwrap();
        assert_eq!(out, b"{\"a\":1}");
        let out = splice(b"{ }", &[("a", "1".into())]).unwrap();
        assert_eq!(out, b"{\"a\":1 }");
    }

    #[test]
    fn options_render_keeps_raw_text() {
        let p = chat(br#"{"options":{"temperature":0.70,"num_ctx":1}}"#).unwrap();
        let mut entries = p.options;
        entries[1].0.value = JsonValue::Integer(8192);
        entries[1].1 = None;
        assert_eq!(
            render_options(&entries),
            r#"{"temperature":0.70,"num_ctx":8192}"#
        );
    }
}
