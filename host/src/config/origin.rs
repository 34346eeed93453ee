//! Where a plugin's config came from in `llamagate.toml`.
//!
//! A plugin gets its config table as JSON that llamagate made from the TOML
//! (`[policy]` for the built-in policy, `[[plugins]] config` for the others).
//! When its `init` refuses it with serde's `... at line 1 column 48`, that
//! position is in JSON the operator never saw. [`ConfigOrigin`] keeps the
//! table's place in the file and the line of every key in it, and
//! [`ConfigOrigin::locate`] turns a refusal into `FILE: line 8,
//! policy.max_num_ctx: ...`: the file's line and the key, found from serde's
//! JSON position or from a key the message starts with (`teams."a" is
//! empty`). serde's messages quote the refused value, which may be a token:
//! their quoted values are scrubbed. A plugin's own words are its own (the
//! examples never quote a secret) and are kept.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// The place of one plugin's config table in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOrigin {
    /// Key path of the table: `["policy"]`, `["plugins", "1", "config"]`.
    table: Vec<String>,
    /// The config file, once [`ConfigOrigin::resolve`]d against it.
    file: Option<PathBuf>,
    /// Line of the table itself (its header or key); `None` when the file
    /// does not have it (the table came from flags alone).
    line: Option<usize>,
    /// Every key inside the table, as a path relative to it, with its line.
    keys: Vec<(Vec<String>, usize)>,
}

impl ConfigOrigin {
    /// The table at `path` (`&["plugins", "1", "config"]`), not yet found in a file.
    pub fn table(path: &[&str]) -> ConfigOrigin {
        ConfigOrigin {
            table: path.iter().map(|s| s.to_string()).collect(),
            ..ConfigOrigin::default()
        }
    }

    /// Finds the table and its keys in `text`, the contents of `file`. A
    /// table (or part of one) missing from the file keeps the nearest line
    /// that holds it: a plugin entry without `config` points at the entry.
    pub fn resolve(&mut self, file: &Path, text: &str) {
        self.file = Some(file.to_path_buf());
        let Ok(document) = DeTable::parse(text) else {
            return;
        };
        let mut all = Vec::new();
        flatten_table(document.get_ref(), text, &mut Vec::new(), &mut all);
        self.line = (1..=self.table.len()).rev().find_map(|n| {
            let prefix = &self.table[..n];
            all.iter().find(|(p, _)| p == prefix).map(|(_, line)| *line)
        });
        self.keys = all
            .into_iter()
            .filter(|(p, _)| p.len() > self.table.len() && p.starts_with(&self.table))
            .map(|(p, line)| (p[self.table.len()..].to_vec(), line))
            .collect();
    }

    /// Where a refusal of the config points, and the refusal fit to show.
    ///
    /// `refusal` is the plugin's message. A trailing serde_json position
    /// (`at line 1 column 48`) is looked up in `config_json` and becomes the
    /// key it falls in and that key's line, and the message's quoted values
    /// are scrubbed; without one, a key the message starts with is looked up.
    /// Returns (`FILE: line 8, policy.max_num_ctx`, `invalid type: string "…", expected i64`).
    pub fn locate(&self, config_json: &str, refusal: &str) -> (String, String) {
        let (message, position) = split_json_position(refusal);
        let (key, message) = match position {
            Some((line, column)) => (
                json_offset(config_json, line, column)
                    .map(|at| json_path_at(config_json, at))
                    .unwrap_or_default(),
                super::scrub_values(message),
            ),
            None => (
                leading_key(message)
                    .filter(|key| self.keys.iter().any(|(p, _)| p.first() == key.first()))
                    .unwrap_or_default(),
                message.to_string(),
            ),
        };
        // The deepest part of the key the file has (flags add keys it lacks).
        let line = (1..=key.len())
            .rev()
            .find_map(|n| {
                self.keys
                    .iter()
                    .find(|(p, _)| *p == key[..n])
                    .map(|(_, line)| *line)
            })
            .or(self.line);
        let mut name = shown_path(&self.table);
        for segment in &key {
            name.push_str(&shown_segment(segment));
        }
        let place = match (&self.file, line) {
            (Some(file), Some(line)) => format!("{}: line {line}, {name}", file.display()),
            _ => name,
        };
        (place, message)
    }
}

/// The key path a message starts with, as the default policy and the
/// examples write it: `overrides."qwen2.5:14b".max_num_ctx: ...`,
/// `teams."team-a" is empty`, `` `tokens` is empty ``.
fn leading_key(message: &str) -> Option<Vec<String>> {
    let mut rest = message;
    let mut path = Vec::new();
    loop {
        let segment;
        if let Some(quote) = rest.chars().next().filter(|c| matches!(c, '"' | '`')) {
            let inner = &rest[1..];
            let mut end = None;
            let mut escaped = false;
            for (i, c) in inner.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    c if c == quote && !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            segment = inner[..end].replace("\\\"", "\"").replace("\\\\", "\\");
            rest = &inner[end + 1..];
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            (end > 0).then_some(())?;
            segment = rest[..end].to_string();
            rest = &rest[end..];
        }
        path.push(segment);
        match rest.chars().next() {
            Some('.') => rest = &rest[1..],
            Some(':' | ' ') => return Some(path),
            _ => return None,
        }
    }
}

/// Every key of `table` (and below) as a path from the document's root,
/// with the line its key starts on; array items count as keys `"0"`, `"1"`...
fn flatten_table(
    table: &DeTable<'_>,
    text: &str,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        out.push((path.clone(), line_of(text, key.span().start)));
        flatten_value(value.get_ref(), text, path, out);
        path.pop();
    }
}

fn flatten_value(
    value: &DeValue<'_>,
    text: &str,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    match value {
        DeValue::Table(table) => flatten_table(table, text, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                out.push((path.clone(), line_of(text, item.span().start)));
                flatten_value(item.get_ref(), text, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `["plugins", "1", "config"]` as `plugins[1].config`.
fn shown_path(path: &[String]) -> String {
    let shown: String = path.iter().map(|s| shown_segment(s)).collect();
    shown.strip_prefix('.').unwrap_or(&shown).to_string()
}

/// One key of a path: `.name`, `[2]`, or `."…"` for a key that is no config
/// name — model names and token digests are keys, and a token may be one.
fn shown_segment(segment: &str) -> String {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        format!("[{segment}]")
    } else if (1..=32).contains(&segment.len())
        && segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        format!(".{segment}")
    } else {
        ".\"…\"".to_string()
    }
}

/// Splits serde_json's ` at line L column C` off the end of a message.
fn split_json_position(message: &str) -> (&str, Option<(usize, usize)>) {
    let parse = || {
        let (head, tail) = message.rsplit_once(" at line ")?;
        let (line, column) = tail.split_once(" column ")?;
        Some((head, (line.parse().ok()?, column.trim().parse().ok()?)))
    };
    match parse() {
        Some((head, position)) => (head, Some(position)),
        None => (message, None),
    }
}

/// The byte offset serde_json means by (`line`, `column`): the last byte it
/// had read, which lies inside the value it complains about.
fn json_offset(json: &str, line: usize, column: usize) -> Option<usize> {
    let start = if line <= 1 {
        0
    } else {
        json.match_indices('\n').nth(line - 2)?.0 + 1
    };
    Some(
        (start + column)
            .saturating_sub(1)
            .min(json.len().saturating_sub(1)),
    )
}

/// The key path of the innermost value (or `"key": value` member) of `json`
/// that holds byte `at`; empty for the whole document or unreadable input.
fn json_path_at(json: &str, at: usize) -> Vec<String> {
    let mut spans = Vec::new();
    let mut scanner = Scanner {
        text: json.as_bytes(),
        json,
        i: 0,
    };
    if scanner.value(&mut Vec::new(), &mut spans).is_none() {
        return Vec::new();
    }
    spans
        .into_iter()
        .filter(|(start, end, _)| *start <= at && at < *end)
        .min_by_key(|(start, end, path)| (end - start, std::cmp::Reverse(path.len())))
        .map(|(_, _, path)| path)
        .unwrap_or_default()
}

/// A reader of the JSON llamagate itself made from a TOML table, recording
/// the byte span of every value under its key path.
struct Scanner<'a> {
    text: &'a [u8],
    json: &'a str,
    i: usize,
}

type Spans = Vec<(usize, usize, Vec<String>)>;

impl Scanner<'_> {
    fn peek(&mut self) -> Option<u8> {
        while self.text.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
        self.text.get(self.i).copied()
    }

    fn value(&mut self, path: &mut Vec<String>, spans: &mut Spans) -> Option<()> {
        let start = self.i;
        match self.peek()? {
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                } else {
                    loop {
                        self.peek()?;
                        let member = self.i;
                        self.string()?;
                        let key: String = serde_json::from_str(&self.json[member..self.i]).ok()?;
                        (self.peek()? == b':').then_some(())?;
                        self.i += 1;
                        path.push(key);
                        self.value(path, spans)?;
                        spans.push((member, self.i, path.clone()));
                        path.pop();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b'}' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                } else {
                    for n in 0.. {
                        path.push(n.to_string());
                        self.value(path, spans)?;
                        path.pop();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b']' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
            }
            b'"' => self.string()?,
            _ => {
                while self
                    .text
                    .get(self.i)
                    .is_some_and(|b| !matches!(b, b',' | b']' | b'}') && !b.is_ascii_whitespace())
                {
                    self.i += 1;
                }
            }
        }
        spans.push((start, self.i, path.clone()));
        Some(())
    }

    /// Skips a string (the opening quote is next).
    fn string(&mut self) -> Option<()> {
        (self.peek()? == b'"').then_some(())?;
        self.i += 1;
        loop {
            match *self.text.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json says about `json` read as `T`.
    fn serde_says<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        serde_json::from_str::<T>(json).unwrap_err().to_string()
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Policy {
        #[serde(default)]
        models: serde_json::Value,
        #[serde(default)]
        max_num_ctx: Option<i64>,
        #[serde(default)]
        overrides: std::collections::BTreeMap<String, Rules>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rules {
        #[serde(default)]
        max_num_ctx: Option<i64>,
    }

    const FILE: &str = r#"listen = "127.0.0.1:0"

[connections]
a = "http://127.0.0.1:9"

[policy]
models = { "llama3.2" = "a" }
max_num_ctx = "big"

[policy.overrides."qwen2.5:14b"]
max_num_ctx = "sk-secret-1"
colour = 1

[[plugins]]
path = "teams.wasm"

[[plugins]]
path = "other.wasm"
[plugins.config]
tokens = { "sha256:ab" = "team-a" }
"#;

    fn policy_origin() -> ConfigOrigin {
        let mut origin = ConfigOrigin::table(&["policy"]);
        origin.resolve(Path::new("/etc/llamagate.toml"), FILE);
        origin
    }

    #[test]
    fn a_refused_value_points_at_its_line_and_key() {
        let json = r#"{"models":{"llama3.2":["a"]},"max_num_ctx":"big","overrides":{"qwen2.5:14b":{"max_num_ctx":"sk-secret-1","colour":1}}}"#;
        let refusal = serde_says::<Policy>(json);
        assert!(refusal.contains("at line 1 column"), "{refusal}");
        let (place, message) = policy_origin().locate(json, &refusal);
        assert_eq!(place, "/etc/llamagate.toml: line 8, policy.max_num_ctx");
        assert_eq!(message, "invalid type: string \"…\", expected i64");

        let json = r#"{"overrides":{"qwen2.5:14b":{"max_num_ctx":"sk-secret-1"}}}"#;
        let (place, message) = policy_origin().locate(json, &serde_says::<Policy>(json));
        assert_eq!(
            place,
            "/etc/llamagate.toml: line 11, policy.overrides.\"…\".max_num_ctx"
        );
        assert!(!message.contains("sk-secret"), "{message}");

        let json = r#"{"overrides":{"qwen2.5:14b":{"colour":1}}}"#;
        let (place, message) = policy_origin().locate(json, &serde_says::<Policy>(json));
        assert_eq!(
            place,
            "/etc/llamagate.toml: line 12, policy.overrides.\"…\".colour"
        );
        assert!(message.starts_with("unknown field `colour`"), "{message}");
    }

    #[test]
    fn a_message_without_a_position_points_at_the_table() {
        let (place, message) = policy_origin().locate("{}", "`tokens` is empty");
        assert_eq!(place, "/etc/llamagate.toml: line 6, policy");
        assert_eq!(message, "`tokens` is empty");
        // A key the message starts with, as the default policy names them;
        // the plugin's own words are kept.
        let said = "overrides.\"qwen2.5:14b\".max_num_ctx: must be a positive number of tokens";
        let (place, message) = policy_origin().locate("{}", said);
        assert_eq!(
            place,
            "/etc/llamagate.toml: line 11, policy.overrides.\"…\".max_num_ctx"
        );
        assert_eq!(message, said);
        assert_eq!(
            policy_origin().locate("{}", "max_num_ctx: too big").0,
            "/etc/llamagate.toml: line 8, policy.max_num_ctx"
        );
        assert_eq!(
            policy_origin()
                .locate("{}", "a token belongs to team \"x\"")
                .0,
            "/etc/llamagate.toml: line 6, policy"
        );

        let mut config = ConfigOrigin::table(&["plugins", "1", "config"]);
        config.resolve(Path::new("l.toml"), FILE);
        assert_eq!(
            config.locate("{}", "no").0,
            "l.toml: line 19, plugins[1].config"
        );
        let json = r#"{"tokens":{"sha256:ab":7}}"#;
        let refusal = "invalid type: integer `7`, expected a string at line 1 column 24";
        assert_eq!(
            config.locate(json, refusal),
            (
                "l.toml: line 20, plugins[1].config.tokens.\"…\"".to_string(),
                "invalid type: integer `…`, expected a string".to_string()
            )
        );
        // No config table: the entry itself.
        let mut entry = ConfigOrigin::table(&["plugins", "0", "config"]);
        entry.resolve(Path::new("l.toml"), FILE);
        assert_eq!(
            entry.locate("{}", "no").0,
            "l.toml: line 14, plugins[0].config"
        );
        // Not in the file at all (flags only): no line to give.
        let mut none = ConfigOrigin::table(&["shadow", "0", "config"]);
        none.resolve(Path::new("l.toml"), FILE);
        assert_eq!(none.locate("{}", "no").0, "shadow[0].config");
    }

    #[test]
    fn json_paths_by_offset() {
        let json = r#"{"a":{"b\"c":[1,{"d":true}]},"e":"x"}"#;
        let at = |needle: &str| json.find(needle).unwrap();
        assert_eq!(json_path_at(json, at("true")), ["a", "b\"c", "1", "d"]);
        assert_eq!(json_path_at(json, at("1,")), ["a", "b\"c", "0"]);
        assert_eq!(json_path_at(json, at("\"x\"")), ["e"]);
        assert!(json_path_at(json, 0).is_empty());
        assert!(json_path_at("{\"a\":", 3).is_empty(), "unreadable: no path");
        assert_eq!(
            split_json_position("bad at line 1 column 9"),
            ("bad", Some((1, 9)))
        );
        assert_eq!(split_json_position("bad"), ("bad", None));
        assert_eq!(
            leading_key("teams.\"team-a\" is empty").unwrap(),
            ["teams", "team-a"]
        );
        assert_eq!(leading_key("`tokens` is empty").unwrap(), ["tokens"]);
        assert_eq!(leading_key("no"), None);
    }
}
