//! `llamagate keys create|list|revoke`: the default policy's API keys
//! (`[policy.keys."NAME"]`), edited in the config file itself.
//!
//! The file is edited with `toml_edit`, so its comments, order and layout stay
//! as they were; it is replaced whole (written beside it, then renamed over
//! it, keeping its permissions), so a running llamagate that watches it never
//! reads half a file, and reloads with the change.
//!
//! - `create NAME`: makes a key (`lg_` and 32 base62 characters from the
//!   operating system's random source), writes its SHA-256 as the entry's
//!   `hash`, and prints the key once, alone on stdout; nothing else keeps it.
//! - `list`: name, scopes, models, expiry and state of every key, and the
//!   first 8 hex digits of its hash (to tell keys apart, never the whole).
//! - `revoke NAME`: sets `disabled = true`, keeping the entry (its name stays
//!   taken, the file records that the key existed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

use llamagate_sdk::keys::sha256_hex;
use llamagate_sdk::time;

/// The scopes a key may have, as the config writes them.
pub const SCOPES: [&str; 3] = ["inference", "manage", "admin"];

/// What `keys create` writes.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// The entry's name (1 to 64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// Its scopes; empty: `["inference"]`.
    pub scopes: Vec<String>,
    /// Its model allow-list; empty: every model.
    pub models: Vec<String>,
    /// `30d`, `12h` (from now) or a date / RFC 3339 time; `None`: never.
    pub expires: Option<String>,
}

/// The config file the command edits: `--config`, else `LLAMAGATE_CONFIG`
/// (both read by clap), as for the gateway itself.
pub fn config_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given.context(
        "no config file: give --config FILE (or set LLAMAGATE_CONFIG); the keys are \
         written into its [policy.keys]",
    )
}

/// `llamagate keys create`: writes the entry and returns the key, which the
/// caller prints once.
pub fn create(path: &Path, new: &NewKey) -> anyhow::Result<String> {
    let name = new.name.as_str();
    check_name(name)?;
    let scopes: Vec<&str> = if new.scopes.is_empty() {
        vec!["inference"]
    } else {
        new.scopes.iter().map(String::as_str).collect()
    };
    for scope in &scopes {
        if !SCOPES.contains(scope) {
            bail!("--scope {scope:?}: expected one of inference, manage, admin");
        }
    }
    if let Some(model) = new.models.iter().find(|m| m.trim().is_empty()) {
        bail!("--model {model:?}: empty model name");
    }
    let expires = new
        .expires
        .as_deref()
        .map(|text| expiry(text, time::now()))
        .transpose()?;

    let (text, mut doc) = read(path)?;
    let (keys, inline) = keys_table(&mut doc, true)?.expect("created");
    if let Some((existing, _)) = keys.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
        bail!(
            "a key named {existing:?} exists already in {}: choose another name \
             (a revoked key keeps its name)",
            path.display()
        );
    }
    let secret = new_secret()?;
    let mut entry = Table::new();
    entry.insert(
        "hash",
        toml_edit::value(format!("sha256:{}", sha256_hex(&secret))),
    );
    entry.insert(
        "scopes",
        toml_edit::value(Array::from_iter(scopes.iter().copied())),
    );
    if !new.models.is_empty() {
        entry.insert(
            "models",
            toml_edit::value(Array::from_iter(new.models.iter().map(String::as_str))),
        );
    }
    if let Some(expires) = expires {
        entry.insert("expires", toml_edit::value(expires));
    }
    insert_entry(keys, inline, name, entry);
    write(path, &text, &doc)?;
    Ok(secret)
}

/// `llamagate keys list`: one line per key, with a header.
pub fn list(path: &Path) -> anyhow::Result<String> {
    let (_, mut doc) = read(path)?;
    let mut rows = vec![[
        "NAME".to_string(),
        "SCOPES".into(),
        "MODELS".into(),
        "EXPIRES".into(),
        "STATE".into(),
        "HASH".into(),
    ]];
    let now = time::now();
    if let Some((keys, _)) = keys_table(&mut doc, false)? {
        for (name, item) in keys.iter() {
            let entry = item.as_table_like();
            let field = |key: &str| entry.and_then(|t| t.get(key)).and_then(Item::as_value);
            let strings = |key: &str| {
                field(key).and_then(Value::as_array).map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or("?").to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
            };
            let expires = field("expires").and_then(Value::as_str);
            let expired = expires
                .and_then(|e| time::parse_timestamp(e).ok())
                .is_some_and(|at| at <= now);
            let disabled = field("disabled").and_then(Value::as_bool) == Some(true);
            let state = match (disabled, expired) {
                (true, _) => "disabled",
                (false, true) => "expired",
                (false, false) => "active",
            };
            let hash = field("hash")
                .and_then(Value::as_str)
                .and_then(|h| h.get(7..15))
                .map_or("?".to_string(), |h| format!("{}…", h.to_ascii_lowercase()));
            rows.push([
                name.to_string(),
                strings("scopes").unwrap_or_else(|| "inference".into()),
                strings("models").unwrap_or_else(|| "*".into()),
                expires.unwrap_or("never").to_string(),
                state.to_string(),
                hash,
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// `llamagate keys revoke`: `disabled = true` on the entry. `Ok(false)`: it
/// was revoked already (the file is left untouched).
pub fn revoke(path: &Path, name: &str) -> anyhow::Result<bool> {
    let (text, mut doc) = read(path)?;
    let Some((keys, _)) = keys_table(&mut doc, false)? else {
        bail!(
            "no key named {name:?} in {}: it has no [policy.keys]",
            path.display()
        );
    };
    let Some(entry) = keys.get_mut(name).and_then(Item::as_table_like_mut) else {
        bail!(
            "no key named {name:?} in {} (`llamagate keys list` shows them)",
            path.display()
        );
    };
    if entry.get("disabled").and_then(Item::as_bool) == Some(true) {
        return Ok(false);
    }
    entry.insert("disabled", toml_edit::value(true));
    write(path, &text, &doc)?;
    Ok(true)
}

/// Refuses a name the default policy would refuse.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        bail!(
            "key name {name:?}: use 1 to 64 letters, digits, `.`, `_` or `-` \
             (it is shown in logs and metrics)"
        );
    }
    Ok(())
}

/// An expiry as the config writes it: a duration from `now` (`30d`, `12h`) as
/// an RFC 3339 UTC time, or a date or time as given (checked). Never the past.
fn expiry(text: &str, now: i64) -> anyhow::Result<String> {
    let text = text.trim();
    let (written, at) = match time::parse_timestamp(text) {
        Ok(at) => (text.to_string(), at),
        Err(_) => {
            let d = humantime::parse_duration(text).map_err(|_| {
                anyhow::anyhow!(
                    "--expires {text:?}: expected a duration from now (30d, 12h) or a date \
                     (2027-01-01) or an RFC 3339 time (2027-01-01T12:00:00Z)"
                )
            })?;
            let at = now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            (time::format_timestamp(at), at)
        }
    };
    if at <= now {
        bail!("--expires {text:?}: that is not in the future");
    }
    Ok(written)
}

/// `lg_` and 32 characters of `0-9A-Za-z` from the OS's random source, each
/// uniform (bytes of 248 and above are drawn again: 248 = 4 × 62): about 190 bits.
fn new_secret() -> anyhow::Result<String> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const LEN: usize = 32;
    let mut out = String::from("lg_");
    let mut drawn = 0;
    while drawn < LEN {
        let mut bytes = [0u8; 48];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("reading the operating system's random source: {e}"))?;
        for b in bytes.into_iter().filter(|&b| b < 248) {
            if drawn == LEN {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b % 62)]));
            drawn += 1;
        }
    }
    Ok(out)
}

/// The file's text and its editable document. A file that does not parse is
/// reported by line and column, never with the line's text (it may hold a secret).
fn read(path: &Path) -> anyhow::Result<(String, DocumentMut)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Err(e) = toml::from_str::<toml::Table>(&text) {
        bail!(crate::config::toml_error(path, &text, &e));
    }
    let doc = text
        .parse::<DocumentMut>()
        .map_err(|_| anyhow::anyhow!("{}: not TOML", path.display()))?;
    Ok((text, doc))
}

/// `[policy.keys]` and whether its entries are written inline
/// (`keys = { ci = { ... } }`); made (for `[policy.keys."NAME"]` tables) when `create`.
fn keys_table(
    doc: &mut DocumentMut,
    create: bool,
) -> anyhow::Result<Option<(&mut dyn TableLike, bool)>> {
    let root = doc.as_table_mut();
    if !root.contains_key("policy") {
        if !create {
            return Ok(None);
        }
        let mut policy = Table::new();
        policy.set_implicit(true);
        root.insert("policy", Item::Table(policy));
    }
    let policy_inline = root["policy"].is_value();
    let policy = root["policy"]
        .as_table_like_mut()
        .context("`policy` is not a table")?;
    if !policy.contains_key("keys") {
        if !create {
            return Ok(None);
        }
        if policy_inline {
            policy.insert("keys", toml_edit::value(toml_edit::InlineTable::new()));
        } else {
            let mut keys = Table::new();
            keys.set_implicit(true);
            policy.insert("keys", Item::Table(keys));
        }
    }
    let item = policy.get_mut("keys").expect("present");
    let inline = item.is_value();
    let keys = item
        .as_table_like_mut()
        .context("`policy.keys` is not a table")?;
    // Entries written `ci = { ... }` under `[policy.keys]`: like them.
    let inline = inline || keys.iter().any(|(_, entry)| entry.is_value());
    Ok(Some((keys, inline)))
}

/// Adds an entry as a `[policy.keys.NAME]` table, or inline.
fn insert_entry(keys: &mut dyn TableLike, inline: bool, name: &str, entry: Table) {
    if inline {
        keys.insert(name, toml_edit::value(entry.into_inline_table()));
    } else {
        keys.insert(name, Item::Table(entry));
    }
}

/// Replaces the file with `doc`: written beside it and renamed over it, with
/// the original's permissions. Checked first to parse as TOML again.
fn write(path: &Path, before: &str, doc: &DocumentMut) -> anyhow::Result<()> {
    let mut text = doc.to_string();
    if before.ends_with('\n') && !text.ends_with('\n') {
        text.push('\n');
    }
    toml::from_str::<toml::Table>(&text).context("the edited file would not be TOML (a bug)")?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let file_name = path.file_name().context("the config path names no file")?;
    let temp = dir.unwrap_or(Path::new(".")).join(format!(
        ".{}.llamagate-keys-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let permissions = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions();
    std::fs::write(&temp, &text).with_context(|| format!("writing {}", temp.display()))?;
    let done = std::fs::set_permissions(&temp, permissions)
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("replacing {}", path.display()));
    if done.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the gateway\nlisten = \"0.0.0.0:11434\"  # all interfaces\n\n[connections]\na = \"http://a:11434\"\n\n[policy]\n# routing\nmodels = { \"llama3.2\" = \"a\" }\n";

    fn temp(text: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llamagate-keys-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("llamagate.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn new(name: &str) -> NewKey {
        NewKey {
            name: name.into(),
            ..NewKey::default()
        }
    }

    #[test]
    fn create_keeps_the_file_and_writes_only_the_hash() {
        let path = temp(FILE);
        let secret = create(
            &path,
            &NewKey {
                scopes: vec!["inference".into(), "manage".into()],
                models: vec!["llama3.2".into()],
                expires: Some("2099-01-01".into()),
                ..new("ci")
            },
        )
        .unwrap();
        assert!(secret.starts_with("lg_") && secret.len() == 35, "{secret}");
        assert!(secret[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(FILE), "comments and layout kept:\n{text}");
        assert!(!text.contains(&secret));
        assert!(
            text.contains(&format!("hash = \"sha256:{}\"", sha256_hex(&secret))),
            "{text}"
        );
        assert!(text.contains("[policy.keys.ci]"), "{text}");
        assert!(
            text.contains("scopes = [\"inference\", \"manage\"]"),
            "{text}"
        );
        assert!(text.contains("expires = \"2099-01-01\""), "{text}");
        // A second key, then list and revoke.
        let other = create(&path, &new("batch.v2")).unwrap();
        assert_ne!(other, secret);
        let err = create(&path, &new("CI")).unwrap_err().to_string();
        assert!(err.contains("exists already"), "{err}");
        let listed = list(&path).unwrap();
        assert!(listed.starts_with("NAME"), "{listed}");
        assert!(listed.contains(&sha256_hex(&secret)[..8]), "{listed}");
        assert!(!listed.contains(&sha256_hex(&secret)[..9]), "{listed}");
        let ci = listed.lines().find(|l| l.starts_with("ci ")).unwrap();
        assert!(
            ci.contains("inference,manage") && ci.contains("llama3.2") && ci.contains("active"),
            "{ci}"
        );
        assert!(revoke(&path, "ci").unwrap());
        assert!(!revoke(&path, "ci").unwrap(), "revoked already");
        let listed = list(&path).unwrap();
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with("ci ") && l.contains("disabled")),
            "{listed}"
        );
        assert!(revoke(&path, "nobody").is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(FILE), "{text}");
        assert!(text.contains("disabled = true"));
    }

    #[test]
    fn inline_keys_and_a_file_without_policy() {
        let path = temp("[connections]\na = \"http://a:1\"\n");
        create(&path, &new("first")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[policy.keys.first]") && !text.contains("[policy]\n"),
            "{text}"
        );
        for file in [
            "[policy]\nkeys = { old = { hash = \"sha256:00\" } }\n",
            "[policy]\nkeys = {}\n",
            "policy = { list_aliases = true }\n",
            "[policy.keys]\nold = { hash = \"sha256:00\" }\n",
        ] {
            let path = temp(file);
            create(&path, &new("new")).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("new = { hash = \"sha256:"), "{text}");
            let parsed: toml::Table = toml::from_str(&text).unwrap();
            assert!(parsed["policy"]["keys"]["new"]["hash"].is_str(), "{text}");
            assert!(list(&path).unwrap().contains("\nnew "), "{text}");
        }
    }

    #[test]
    fn bad_input_is_refused_before_the_file_is_touched() {
        let path = temp(FILE);
        for (key, expected) in [
            (new(""), "key name"),
            (new("a b"), "key name"),
            (new(&"x".repeat(65)), "key name"),
            (
                NewKey {
                    scopes: vec!["root".into()],
                    ..new("k")
                },
                "--scope \"root\"",
            ),
            (
                NewKey {
                    models: vec![" ".into()],
                    ..new("k")
                },
                "--model",
            ),
            (
                NewKey {
                    expires: Some("2001-01-01".into()),
                    ..new("k")
                },
                "not in the future",
            ),
            (
                NewKey {
                    expires: Some("soon".into()),
                    ..new("k")
                },
                "expected a duration",
            ),
        ] {
            let err = create(&path, &key).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), FILE);
        let broken = temp("[policy\nadmin_key = \"s3cret\"\n");
        let err = format!("{:#}", create(&broken, &new("k")).unwrap_err());
        assert!(!err.contains("s3cret"), "{err}");
        assert!(config_path(None).is_err());
    }

    #[test]
    fn durations_become_utc_times() {
        assert_eq!(expiry("30d", 0).unwrap(), "1970-01-31T00:00:00Z");
        assert_eq!(expiry("12h", 0).unwrap(), "1970-01-01T12:00:00Z");
        assert_eq!(expiry(" 2027-01-01 ", 0).unwrap(), "2027-01-01");
        assert!(expiry("0s", 0).is_err());
    }
}
