//! Request bodies: read the few fields a policy needs, and write back only the
//! fields a policy changed.
//!
//! Bodies are never re-serialised through a schema. [`peek`] scans the first JSON
//! value (as Ollama does, trailing bytes are ignored) borrowing every field as raw
//! text; [`splice`] replaces or inserts top-level fields in place, so every other
//! byte (images, tools, `format` schemas, fields newer than llamagate) reaches the
//! backend unchanged.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::endpoint::{streams_by_default, Endpoint};
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
        match endpoint {
            Endpoint::OpenaiChat
            | Endpoint::OpenaiCompletions
            | Endpoint::OpenaiResponses
            | Endpoint::OpenaiMessages => self.stream == Some(true),
            e => self.stream.unwrap_or(streams_by_default(e)),
        }
    }
}

type Fields<'a> = BTreeMap<std::borrow::Cow<'a, str>, &'a RawValue>;

/// Parses the first JSON value of `body` as an object of raw fields.
fn fields(body: &[u8]) -> Result<(&RawValue, Fields<'_>), BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>();
    let whole = match stream.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(BodyError::Malformed(e.to_string())),
        None => return Err(BodyError::Empty),
    };
    if !whole.get().starts_with('{') {
        return Err(BodyError::Malformed(format!(
            "the body must be a JSON object, not {}",
            kind(whole)
        )));
    }
    let map: Fields =
        serde_json::from_str(whole.get()).map_err(|e| BodyError::Malformed(e.to_string()))?;
    Ok((whole, map))
}

/// Reads the policy-relevant fields. `model_fields` are tried in order.
pub fn peek(body: &[u8], model_fields: &[&'static str]) -> Result<Peeked, BodyError> {
    let (_, map) = fields(body)?;
    let mut peeked = Peeked::default();
    for &field in model_fields {
        match map.get(field) {
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
    if let Some(raw) = map.get("options").filter(|r| r.get() != "null") {
        let options: BTreeMap<String, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| BodyError::WrongType {
                field: "options",
                found: kind(raw),
                expected: "map[string]interface {}",
            })?;
        peeked.options = options
            .into_iter()
            .map(|(key, raw)| {
                let value = to_json_value(raw);
                (OptionEntry { key, value }, Some(raw.get().to_string()))
            })
            .collect();
    }
    peeked.keep_alive = map.get("keep_alive").map(|raw| to_json_value(raw));
    peeked.stream = map.get("stream").and_then(|r| match r.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    });
    Ok(peeked)
}

/// Replaces (or inserts) top-level fields of the body's first JSON value.
/// `edits` holds `(field, JSON text)` pairs; the rest of the body is kept byte for byte.
pub fn splice(body: &[u8], edits: &[(&str, String)]) -> Result<Vec<u8>, BodyError> {
    let (whole, map) = fields(body)?;
    let offset = |raw: &RawValue| raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let start = offset(whole);
    // Replacements, sorted by position so they can be applied back to front.
    let mut replace: Vec<(usize, usize, &str)> = Vec::new();
    let mut insert = String::new();
    for (field, text) in edits {
        match map.get(*field) {
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
        if map.is_empty() {
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

fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ => "number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &[&str] = &["model", "name"];

    #[test]
    fn peeks_fields_and_ignores_trailing_bytes() {
        let body = br#"{"model":"llama3.2","options":{"num_ctx":4096,"stop":["a"]},"keep_alive":"5m","stream":false} trailing"#;
        let p = peek(body, MODEL).unwrap();
        assert_eq!(p.model, Some(("model", "llama3.2".into())));
        assert_eq!(p.options[0].0.value, JsonValue::Integer(4096));
        assert_eq!(p.options[1].0.value, JsonValue::Raw(r#"["a"]"#.into()));
        assert_eq!(p.keep_alive, Some(JsonValue::Text("5m".into())));
        assert!(!p.streaming(Endpoint::Chat));
    }

    #[test]
    fn legacy_name_field() {
        let p = peek(br#"{"name":"m"}"#, MODEL).unwrap();
        assert_eq!(p.model, Some(("name", "m".into())));
        assert!(p.streaming(Endpoint::Pull), "pull streams by default");
    }

    #[test]
    fn errors() {
        assert_eq!(peek(b"  \n", MODEL), Err(BodyError::Empty));
        assert!(matches!(
            peek(b"{\"model\":", MODEL),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(peek(b"[1]", MODEL), Err(BodyError::Malformed(_))));
        assert_eq!(
            peek(br#"{"model":7}"#, MODEL),
            Err(BodyError::WrongType {
                field: "model",
                found: "number",
                expected: "string"
            })
        );
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
    }

    #[test]
    fn options_render_keeps_raw_text() {
        let p = peek(br#"{"options":{"temperature":0.70,"num_ctx":1}}"#, MODEL).unwrap();
        let mut entries = p.options;
        entries[0].0.value = JsonValue::Integer(8192);
        entries[0].1 = None;
        assert_eq!(
            render_options(&entries),
            r#"{"num_ctx":8192,"temperature":0.70}"#
        );
    }
}
