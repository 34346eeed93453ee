//! Body fields as Go's `encoding/json` assigns them to Ollama's request
//! structs, and the refusal of every body that could be read two ways.
//!
//! [`Object::scan`] walks the top-level members of a body's first JSON value
//! once and keeps only the members that match one of the fields asked for —
//! never the whole object — so reading the policy fields of a body costs
//! memory in proportion to those fields, not to the body.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Go's case folding of one character, restricted to what can equal an ASCII
/// letter: `encoding/json` compares `ToUpper(ToLower(r))`, which sends ASCII
/// letters and exactly four other characters into `A`–`Z`.
fn go_fold(c: char) -> char {
    match c {
        'a'..='z' => c.to_ascii_uppercase(),
        '\u{212A}' => 'K', // KELVIN SIGN
        '\u{017F}' => 'S', // LATIN SMALL LETTER LONG S
        '\u{0130}' => 'I', // LATIN CAPITAL LETTER I WITH DOT ABOVE
        '\u{0131}' => 'I', // LATIN SMALL LETTER DOTLESS I
        other => other,
    }
}

/// Whether `encoding/json` assigns a member named `key` to the struct field
/// whose JSON name is `field` (ASCII): exactly, or equal under Go's folding.
pub fn go_fold_eq(key: &str, field: &str) -> bool {
    key.chars()
        .map(go_fold)
        .eq(field.chars().map(|c| c.to_ascii_uppercase()))
}

/// A looser match than Go's today: folding and also ignoring `_` and `-`, as
/// `encoding/json/v2`'s case-insensitive names do. A key that matches a field
/// only this way is refused too, so a newer Ollama cannot read it differently.
/// Implies [`go_fold_eq`].
fn near(key: &str, field: &str) -> bool {
    let keep = |c: &char| *c != '_' && *c != '-';
    key.chars()
        .filter(keep)
        .map(go_fold)
        .eq(field.chars().filter(keep).map(|c| c.to_ascii_uppercase()))
}

/// Why a body's members cannot be read one way only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Not JSON, or not an object.
    #[error("{0}")]
    Malformed(String),
    /// A field llamagate reads appears more than once, in any spelling.
    #[error("ambiguous field {field:?}: the body has {} ({}); send it once, spelled {field:?}",
        if keys.len() > 1 { "several keys Ollama would read as it" } else { "a key Ollama may read as it" },
        keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The struct field's JSON name.
        field: &'static str,
        /// Every key of the body that matches it.
        keys: Vec<String>,
    },
    /// An object with more members than allowed (`options`).
    #[error("{field:?} has more than {limit} keys")]
    TooManyKeys {
        /// The field.
        field: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// The members of a body's first JSON value that match the fields asked for.
#[derive(Debug)]
pub struct Object<'a> {
    /// The whole first value, borrowed from the body.
    pub whole: &'a RawValue,
    /// For each field asked for, its value (`None` when absent).
    found: Vec<(&'static str, Option<&'a RawValue>)>,
}

impl<'a> Object<'a> {
    /// Scans `body`'s first JSON value (trailing bytes ignored, as Ollama does)
    /// for `fields`. A field given twice or in another spelling is
    /// [`ReadError::Ambiguous`].
    pub fn scan(body: &'a [u8], fields: &[&'static str]) -> Result<Object<'a>, ReadError> {
        let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>();
        let whole = match stream.next() {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(ReadError::Malformed(e.to_string())),
            None => return Err(ReadError::Malformed("EOF".into())),
        };
        if !whole.get().starts_with('{') {
            return Err(ReadError::Malformed(format!(
                "the body must be a JSON object, not {}",
                kind(whole)
            )));
        }
        let mut seen: Vec<Vec<(Cow<'a, str>, &'a RawValue)>> = vec![Vec::new(); fields.len()];
        let mut de = serde_json::Deserializer::from_str(whole.get());
        de.deserialize_map(Members {
            fields,
            seen: &mut seen,
        })
        .map_err(|e| ReadError::Malformed(e.to_string()))?;
        let mut found = Vec::with_capacity(fields.len());
        for (field, matches) in fields.iter().zip(seen) {
            match matches.as_slice() {
                [] => found.push((*field, None)),
                [(key, value)] if key == field => found.push((*field, Some(*value))),
                _ => {
                    return Err(ReadError::Ambiguous {
                        field,
                        keys: matches.into_iter().map(|(k, _)| k.into_owned()).collect(),
                    })
                }
            }
        }
        Ok(Object { whole, found })
    }

    /// The value of `field` (one of those scanned for), unless absent.
    pub fn get(&self, field: &str) -> Option<&'a RawValue> {
        self.found
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, v)| *v)
    }

    /// Whether the object has no members at all.
    pub fn is_empty(&self) -> bool {
        self.whole.get()[1..].trim_start().starts_with('}')
    }
}

/// Visits the top-level members, keeping those that match a field.
struct Members<'s, 'a> {
    fields: &'s [&'static str],
    seen: &'s mut Vec<Vec<(Cow<'a, str>, &'a RawValue)>>,
}

impl<'de, 's> Visitor<'de> for Members<'s, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let hits: Vec<usize> = self
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| near(&key, f))
                .map(|(i, _)| i)
                .collect();
            if hits.is_empty() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: &'de RawValue = map.next_value()?;
            for i in hits {
                self.seen[i].push((key.clone(), value));
            }
        }
        Ok(())
    }
}

/// The members of an object value (`options`), at most `limit` of them, in
/// order; a repeated key keeps its last value, as a Go map does.
pub fn members<'a>(
    value: &'a RawValue,
    field: &'static str,
    limit: usize,
) -> Result<Vec<(String, &'a RawValue)>, ReadError> {
    struct Collect {
        field: &'static str,
        limit: usize,
    }
    impl<'de> DeserializeSeed<'de> for Collect {
        type Value = Result<Vec<(String, &'de RawValue)>, ReadError>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Collect {
        type Value = Result<Vec<(String, &'de RawValue)>, ReadError>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut out: Vec<(String, &'de RawValue)> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: &'de RawValue = map.next_value()?;
                match out.iter().position(|(k, _)| *k == key) {
                    Some(i) => out[i].1 = value,
                    None if out.len() >= self.limit => {
                        // Skip the rest without keeping it, so the object still parses.
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        return Ok(Err(ReadError::TooManyKeys {
                            field: self.field,
                            limit: self.limit,
                        }));
                    }
                    None => out.push((key, value)),
                }
            }
            Ok(Ok(out))
        }
    }
    let mut de = serde_json::Deserializer::from_str(value.get());
    Collect { field, limit }
        .deserialize(&mut de)
        .map_err(|e| ReadError::Malformed(e.to_string()))?
}

/// The JSON type of a raw value, in Go's words (`object`, `array`, `string`,
/// `bool`, `null`, `number`).
pub fn kind(raw: &RawValue) -> &'static str {
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

    fn scan(body: &str, fields: &[&'static str]) -> Result<Vec<Option<String>>, ReadError> {
        let o = Object::scan(body.as_bytes(), fields)?;
        Ok(fields
            .iter()
            .map(|f| o.get(f).map(|v| v.get().to_string()))
            .collect())
    }

    #[test]
    fn go_folding() {
        for key in [
            "model",
            "Model",
            "MODEL",
            "mOdEl",
            "keep_alive",
            "KEEP_ALIVE",
            "\u{212A}eep_alive",
            "\u{017F}tream",
            "opt\u{0130}ons",
            "opt\u{0131}ons",
        ] {
            let field = ["model", "keep_alive", "stream", "options"]
                .into_iter()
                .find(|f| go_fold_eq(key, f));
            assert!(field.is_some(), "{key:?} should match a field");
        }
        assert!(!go_fold_eq("models", "model"));
        assert!(!go_fold_eq("mode", "model"));
        assert!(!go_fold_eq("keepalive", "keep_alive"));
        assert!(!go_fold_eq("m\u{00F6}del", "model"));
    }

    /// Every character whose Go fold (`ToUpper(ToLower(r))`, simple case
    /// mappings) is an ASCII letter is in `go_fold`'s table. Rust's full
    /// mappings equal the simple ones wherever they map to one character; the
    /// one lowercase special case (U+0130) is handled by hand.
    #[test]
    fn fold_table_is_complete() {
        for c in (0x80u32..=0x10FFFF).filter_map(char::from_u32) {
            let lower: Vec<char> = c.to_lowercase().collect();
            let lower = match (c, lower.as_slice()) {
                ('\u{0130}', _) => 'i',
                (_, [one]) => *one,
                _ => c,
            };
            let upper: Vec<char> = lower.to_uppercase().collect();
            let folded = match upper.as_slice() {
                [one] => *one,
                _ => lower,
            };
            if folded.is_ascii_alphabetic() {
                assert_eq!(
                    go_fold(c),
                    folded.to_ascii_uppercase(),
                    "U+{:04X} folds to {folded:?} in Go",
                    c as u32
                );
            } else {
                assert!(!go_fold(c).is_ascii(), "U+{:04X}", c as u32);
            }
        }
    }

    #[test]
    fn reads_exact_fields_and_ignores_the_rest() {
        let got = scan(
            r#"{"model":"a","messages":[{"model":"x"}],"options":{"num_ctx":1}} trailing"#,
            &["model", "options", "stream"],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![Some("\"a\"".into()), Some(r#"{"num_ctx":1}"#.into()), None]
        );
        // Escapes in keys are decoded before matching.
        assert_eq!(
            scan(r#"{"mod\u0065l":"a"}"#, &["model"]).unwrap(),
            vec![Some("\"a\"".into())]
        );
    }

    #[test]
    fn duplicates_and_case_variants_are_ambiguous() {
        for body in [
            r#"{"model":"llama3.2","Model":"llama3.3:70b"}"#,
            r#"{"model":"llama3.2","model":"llama3.3:70b"}"#,
            r#"{"MODEL":"llama3.3:70b"}"#,
            r#"{"model":"llama3.2","model":null}"#,
            r#"{"mod\u0045l":"llama3.3:70b","model":"llama3.2"}"#,
        ] {
            assert!(
                matches!(
                    scan(body, &["model"]),
                    Err(ReadError::Ambiguous { field: "model", .. })
                ),
                "{body}"
            );
        }
        let err = scan(r#"{"stream":false,"ſtream":true}"#, &["stream"]).unwrap_err();
        assert!(err.to_string().contains("\"ſtream\""), "{err}");
    }

    #[test]
    fn near_misses_are_ambiguous() {
        for body in [
            r#"{"keepAlive":0}"#,
            r#"{"keep-alive":0}"#,
            r#"{"KeepAlive":0}"#,
            r#"{"_model":"x"}"#,
        ] {
            assert!(
                matches!(
                    scan(body, &["keep_alive", "model"]),
                    Err(ReadError::Ambiguous { .. })
                ),
                "{body}"
            );
        }
        // Keys that no reading sends to the field stay ignored.
        assert_eq!(
            scan(
                r#"{"models":"x","keep_alive_x":1}"#,
                &["model", "keep_alive"]
            )
            .unwrap(),
            vec![None, None]
        );
    }

    #[test]
    fn members_keep_the_last_duplicate_and_respect_the_limit() {
        let v: &RawValue = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        let m = members(v, "options", 8).unwrap();
        let m: Vec<_> = m.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        assert_eq!(m, vec![("a", "3"), ("b", "2")]);
        assert!(matches!(
            members(v, "options", 1),
            Err(ReadError::TooManyKeys {
                field: "options",
                limit: 1
            })
        ));
    }

    #[test]
    fn malformed_bodies() {
        assert!(matches!(scan("", &[]), Err(ReadError::Malformed(_))));
        assert!(matches!(scan("[1]", &[]), Err(ReadError::Malformed(_))));
        assert!(matches!(
            scan("{\"model\":", &["model"]),
            Err(ReadError::Malformed(_))
        ));
    }
}
