//! The command line. Accepts gollamas' flags and environment variables
//! (`GOLLAMAS_*`) as well as llamagate's own (`LLAMAGATE_*`).

pub mod demo;
pub mod keys_cmd;
pub mod plugin_cmd;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_pair, parse_pairs, Overrides};

/// llamagate: one Ollama endpoint for a fleet of Ollama servers.
///
/// The gateway's flags belong to the command without a subcommand; each
/// subcommand's help lists only the flags it uses (`--level` is everywhere).
/// For compatibility, `--listen` and `--config` before a subcommand's name
/// still reach `demo`, `sim` and `plugin test`.
#[derive(Debug, Parser)]
#[command(name = "llamagate", version, about, long_about = None)]
pub struct Cli {
    /// What to run; without a command, llamagate serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Gateway options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start two simulated Ollama backends and llamagate in front of them.
    Demo(DemoArgs),
    /// Run one simulated Ollama server (for tests and benchmarks).
    Sim(SimArgs),
    /// Check a plugin, or replay recorded requests through it.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Create, list or revoke the default policy's API keys ([policy.keys] in
    /// the config file; a running llamagate reloads with the change).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `llamagate keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key, write its SHA-256 into the config file, and print the key
    /// (once: only its hash is kept).
    Create {
        /// The key's name: shown in logs and metrics, the queue's fairness key.
        name: String,
        /// What it may do: inference, manage, admin (repeatable) [default: inference].
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A model it may use (repeatable; aliases too) [default: every model].
        #[arg(long = "model", value_name = "MODEL")]
        models: Vec<String>,
        /// When it stops working: a duration from now (30d, 12h), a date
        /// (2027-01-01, midnight UTC) or an RFC 3339 time [default: never].
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// The config file (llamagate.toml) to write the key into.
        #[arg(long, short = 'c', env = "LLAMAGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the keys: name, scopes, models, expiry, state (never a key or a whole hash).
    List {
        /// The config file (llamagate.toml).
        #[arg(long, short = 'c', env = "LLAMAGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Revoke a key: `disabled = true` in its entry, which stays.
    Revoke {
        /// The key's name.
        name: String,
        /// The config file (llamagate.toml).
        #[arg(long, short = 'c', env = "LLAMAGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Runs `llamagate keys ...`; `fallback` is a `--config` given before `keys`.
/// The new key is the only thing printed on stdout; the rest goes to stderr.
pub fn keys(command: KeysCommand, fallback: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    match command {
        KeysCommand::Create {
            name,
            scopes,
            models,
            expires,
            config,
        } => {
            let path = keys_cmd::config_path(config.or(fallback))?;
            let new = keys_cmd::NewKey {
                name,
                scopes,
                models,
                expires,
            };
            let secret = keys_cmd::create(&path, &new)?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{secret}")?;
            stdout.flush()?;
            eprintln!(
                "llamagate: key {:?} written to {} (its SHA-256 only). This is the only time \
                 the key is shown: store it now. Send it as `Authorization: Bearer <key>` or \
                 `x-api-key: <key>`; a running llamagate that watches the file takes it up \
                 within a second (else send it SIGHUP).",
                new.name,
                path.display()
            );
        }
        KeysCommand::List { config } => {
            let path = keys_cmd::config_path(config.or(fallback))?;
            print!("{}", keys_cmd::list(&path)?);
        }
        KeysCommand::Revoke { name, config } => {
            let path = keys_cmd::config_path(config.or(fallback))?;
            match keys_cmd::revoke(&path, &name)? {
                true => eprintln!(
                    "llamagate: key {name:?} revoked in {} (disabled = true); a running \
                     llamagate that watches the file refuses it within a second",
                    path.display()
                ),
                false => eprintln!("llamagate: key {name:?} was revoked already"),
            }
        }
    }
    Ok(())
}

/// `llamagate plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Does FILE compile, implement the llamagate:policy world, and accept this config?
    Check {
        /// The plugin component.
        file: PathBuf,
        /// The plugin's config: a .json file, or a .toml file holding its table.
        #[arg(long)]
        with_config: Option<PathBuf>,
    },
    /// Replay recorded requests (from --record) through the chain with FILE, offline,
    /// and print each decision.
    Test {
        /// The plugin component.
        file: PathBuf,
        /// The gateway's config file (llamagate.toml), for its chain and backends.
        #[arg(long, short = 'c', env = "LLAMAGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Requests recorded with `llamagate --record FILE` (JSON lines).
        #[arg(long)]
        requests: PathBuf,
        /// The plugin's config: a .json file, or a .toml file holding its table.
        #[arg(long)]
        with_config: Option<PathBuf>,
        /// Run FILE alone, not after the chain of --config.
        #[arg(long)]
        alone: bool,
    },
}

/// Options of the gateway.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Config file (llamagate.toml).
    #[arg(long, short = 'c', env = "LLAMAGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:11434]. Env: LLAMAGATE_LISTEN, GOLLAMAS_LISTEN.
    #[arg(long)]
    pub listen: Option<String>,
    /// Route a model to a backend: MODEL=URL or MODEL=CONNECTION_ID (repeatable).
    #[arg(long = "proxy", value_name = "MODEL=DEST")]
    pub proxy: Vec<String>,
    /// Comma-separated MODEL=DEST pairs. Env: LLAMAGATE_PROXIES, GOLLAMAS_PROXIES.
    #[arg(long)]
    pub proxies: Option<String>,
    /// Name a backend: ID=URL (repeatable).
    #[arg(long = "connection", value_name = "ID=URL")]
    pub connection: Vec<String>,
    /// Comma-separated ID=URL pairs. Env: LLAMAGATE_CONNECTIONS, GOLLAMAS_CONNECTIONS.
    #[arg(long)]
    pub connections: Option<String>,
    /// Alias a model: ALIAS=MODEL (repeatable).
    #[arg(long = "alias", value_name = "ALIAS=MODEL")]
    pub alias: Vec<String>,
    /// Comma-separated ALIAS=MODEL pairs. Env: LLAMAGATE_ALIASES, GOLLAMAS_ALIASES.
    #[arg(long)]
    pub aliases: Option<String>,
    /// Show aliases in model listings. Env: LLAMAGATE_LIST_ALIASES, GOLLAMAS_LIST_ALIASES.
    #[arg(long)]
    pub list_aliases: bool,
    /// Add a policy plugin after the default policy (repeatable). Env: LLAMAGATE_PLUGINS (comma-separated).
    #[arg(long = "plugin", value_name = "FILE.wasm")]
    pub plugin: Vec<PathBuf>,
    /// Do not run the built-in default policy.
    #[arg(long)]
    pub no_default_policy: bool,
    /// Add an `x-llamagate-decision` header explaining each decision to responses.
    #[arg(long)]
    pub explain: bool,
    /// Address of the admin endpoint (/livez, /readyz, /metrics, status) or
    /// `off` [default: 127.0.0.1:11435]. Env: LLAMAGATE_ADMIN_LISTEN.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_listen: Option<String>,
    /// Requests at once per model on each backend not given its own
    /// `parallel` (the backends' OLLAMA_NUM_PARALLEL; default 1). Env: LLAMAGATE_PARALLEL.
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
    /// Origins browsers may call from, comma-separated, besides Ollama's
    /// defaults (localhost, 127.0.0.1, 0.0.0.0, app://, file://...).
    /// Env: LLAMAGATE_ORIGINS, OLLAMA_ORIGINS.
    #[arg(long, value_name = "ORIGINS")]
    pub origins: Option<String>,
    /// Log format: `text` or `json` (one object per line).
    /// Env: LLAMAGATE_LOG_FORMAT.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Append every request (with body and headers: keep the file private) to FILE
    /// as JSON lines, for `llamagate plugin test`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace: llamagate's own lines; libraries
    /// stay at warn) or a filter (`llamagate=debug,hyper=debug`).
    /// Env: LLAMAGATE_LOG, GOLLAMAS_LEVEL.
    #[arg(long, global = true)]
    pub level: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `TIME LEVEL message key=value...`
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the fields, at the top level.
    Json,
}

/// Options of `llamagate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the demo's llamagate listens on [default: 127.0.0.1:11434].
    #[arg(long)]
    pub listen: Option<String>,
}

/// Options of `llamagate sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on [default: 127.0.0.1:11435].
    #[arg(long)]
    pub listen: Option<String>,
    /// Models the simulated server has (repeatable).
    #[arg(long = "model", default_value = "llama3.2")]
    pub models: Vec<String>,
    /// Version it reports.
    #[arg(long, default_value = "0.12.3")]
    pub version: String,
    /// Milliseconds between streamed chunks.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    /// Content chunks per streamed answer.
    #[arg(long, default_value_t = 5)]
    pub chunks: usize,
}

/// An environment variable, trying llamagate's name and then gollamas'.
fn env(names: &[&str]) -> Option<String> {
    env_named(names).map(|(_, value)| value)
}

/// Like [`env`], also saying which of the names was set.
fn env_named<'a>(names: &[&'a str]) -> Option<(&'a str, String)> {
    names.iter().find_map(|n| {
        let value = std::env::var(n).ok().filter(|v| !v.trim().is_empty())?;
        Some((*n, value))
    })
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// The crates whose lines a bare level is about: llamagate's own
/// (`llamagate`, `llamagate_sdk`, `llamagate_sim`; a filter's target matches by prefix).
const OWN_TARGETS: &str = "llamagate";

/// An `EnvFilter` directive string for `--level`. A bare level (`debug`, or
/// gollamas' `warning`, `fatal`) sets llamagate's own lines to it and keeps
/// every dependency at `warn` (or quieter, for `error` and `off`), so `debug`
/// is not 30,000 lines of Cranelift; anything else is a filter, used as given.
pub fn expand_level(text: &str) -> String {
    use tracing_subscriber::filter::LevelFilter;
    let text = text.trim();
    let named = match text.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "fatal" | "panic" => "error".to_string(),
        other => other.to_string(),
    };
    match named.parse::<LevelFilter>() {
        Ok(level) if !named.is_empty() => {
            let dependencies = level.min(LevelFilter::WARN);
            format!("{dependencies},{OWN_TARGETS}={level}").to_ascii_lowercase()
        }
        _ => text.to_string(),
    }
}

impl ServeArgs {
    /// The log filter to use (see [`expand_level`]).
    pub fn log_filter(&self) -> String {
        let given = self
            .level
            .clone()
            .or_else(|| env(&["LLAMAGATE_LOG", "GOLLAMAS_LEVEL"]))
            .unwrap_or_else(|| "info".into());
        expand_level(&given)
    }

    /// The log format (`--log-format`, `LLAMAGATE_LOG_FORMAT`; default text).
    pub fn log_format(&self) -> anyhow::Result<LogFormat> {
        let given = self
            .log_format
            .clone()
            .or_else(|| env(&["LLAMAGATE_LOG_FORMAT"]));
        match given.as_deref().map(|f| f.trim().to_ascii_lowercase()) {
            None => Ok(LogFormat::Text),
            Some(f) if f == "text" => Ok(LogFormat::Text),
            Some(f) if f == "json" => Ok(LogFormat::Json),
            Some(other) => anyhow::bail!("--log-format: {other:?} is not `text` or `json`"),
        }
    }

    /// Flags and environment, as config overrides. Flags win over environment.
    pub fn overrides(&self) -> anyhow::Result<Overrides> {
        let mut o = Overrides {
            config: self.config.clone(),
            listen: self
                .listen
                .clone()
                .or_else(|| env(&["LLAMAGATE_LISTEN", "GOLLAMAS_LISTEN"])),
            list_aliases: self.list_aliases
                || env(&["LLAMAGATE_LIST_ALIASES", "GOLLAMAS_LIST_ALIASES"])
                    .is_some_and(|v| truthy(&v)),
            plugins: self.plugin.clone(),
            no_default_policy: self.no_default_policy,
            explain: self.explain,
            admin_listen: self
                .admin_listen
                .clone()
                .or_else(|| env(&["LLAMAGATE_ADMIN_LISTEN"])),
            parallel: match self.parallel {
                Some(n) => Some(n),
                None => env(&["LLAMAGATE_PARALLEL"])
                    .map(|v| v.trim().parse::<u32>())
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("LLAMAGATE_PARALLEL: {e}"))?,
            },
            origins: self
                .origins
                .clone()
                .or_else(|| env(&["LLAMAGATE_ORIGINS", "OLLAMA_ORIGINS"]))
                .map(|list| list.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            ..Default::default()
        };
        let lists = [
            (
                &self.connections,
                "--connections",
                &self.connection,
                ["LLAMAGATE_CONNECTIONS", "GOLLAMAS_CONNECTIONS"],
                "--connection",
                Same::Exactly,
                &mut o.connections,
            ),
            (
                &self.proxies,
                "--proxies",
                &self.proxy,
                ["LLAMAGATE_PROXIES", "GOLLAMAS_PROXIES"],
                "--proxy",
                Same::AsModel,
                &mut o.proxies,
            ),
            (
                &self.aliases,
                "--aliases",
                &self.alias,
                ["LLAMAGATE_ALIASES", "GOLLAMAS_ALIASES"],
                "--alias",
                Same::AsModel,
                &mut o.aliases,
            ),
        ];
        for (plural, plural_flag, singular, env_names, what, same, out) in lists {
            let mut given: Vec<(String, String, &str)> = Vec::new();
            let list = match plural {
                Some(text) => Some((plural_flag, text.clone())),
                None => env_named(&env_names),
            };
            if let Some((source, text)) = list {
                for (key, value) in parse_pairs(&text, what)? {
                    given.push((key, value, source));
                }
            }
            for pair in singular {
                let (key, value) = parse_pair(pair, what)?;
                given.push((key, value, what));
            }
            refuse_conflicts(&given, same, what)?;
            out.extend(given.into_iter().map(|(k, v, _)| (k, v)));
        }
        if o.plugins.is_empty() {
            if let Some(list) = env(&["LLAMAGATE_PLUGINS"]) {
                o.plugins = list.split(',').map(|s| PathBuf::from(s.trim())).collect();
            }
        }
        Ok(o)
    }
}

/// How two keys of a flag list are the same key.
#[derive(Clone, Copy)]
enum Same {
    /// Byte for byte (connection ids).
    Exactly,
    /// As Ollama compares model names (`llama3.2` = `llama3.2:latest`).
    AsModel,
}

/// Refuses a key given twice with different values (`--proxy a=URL1 --proxy
/// a=URL2`), naming both and where each came from: silently keeping the last
/// would route somewhere the operator did not mean. The same value twice is fine.
fn refuse_conflicts(
    given: &[(String, String, &str)],
    same: Same,
    what: &str,
) -> anyhow::Result<()> {
    for (i, (key, value, source)) in given.iter().enumerate() {
        let earlier = given[..i].iter().find(|(k, v, _)| {
            let same_key = match same {
                Same::Exactly => k == key,
                Same::AsModel => llamagate_sdk::names::same(k, key),
            };
            same_key && v.trim_end_matches('/') != value.trim_end_matches('/')
        });
        if let Some((first_key, first_value, first_source)) = earlier {
            let hint = match what {
                "--proxy" => " (replicas of a model go in a list in [policy.models])",
                _ => "",
            };
            anyhow::bail!(
                "{what}: {key:?} is given twice, as {first_key}={:?} ({first_source}) and as \
                 {key}={:?} ({source}); give it once{hint}",
                crate::config::redact_url(first_value),
                crate::config::redact_url(value),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gollamas_command_line_parses() {
        let cli = Cli::try_parse_from([
            "llamagate",
            "--listen",
            "127.0.0.1:11434",
            "--proxy",
            "llama3.2=http://gpu-01:11434",
            "--proxy=qwen2.5:14b=http://gpu-02:11434",
            "--alias",
            "gpt-4o=llama3.2",
            "--list-aliases",
        ])
        .unwrap();
        let o = cli.serve.overrides().unwrap();
        assert_eq!(o.listen.as_deref(), Some("127.0.0.1:11434"));
        assert_eq!(
            o.proxies[1],
            ("qwen2.5:14b".to_string(), "http://gpu-02:11434".to_string())
        );
        assert_eq!(o.aliases, vec![("gpt-4o".into(), "llama3.2".into())]);
        assert!(o.list_aliases);
    }

    #[test]
    fn a_bare_level_is_about_llamagate_alone() {
        assert_eq!(expand_level("debug"), "warn,llamagate=debug");
        assert_eq!(expand_level(" TRACE "), "warn,llamagate=trace");
        assert_eq!(expand_level("info"), "warn,llamagate=info");
        assert_eq!(expand_level("error"), "error,llamagate=error");
        assert_eq!(expand_level("warning"), "warn,llamagate=warn");
        assert_eq!(expand_level("off"), "off,llamagate=off");
        for filter in [
            "wasmtime=debug,llamagate=debug",
            "llamagate=debug",
            "debug,hyper=info",
        ] {
            assert_eq!(expand_level(filter), filter);
        }
        for filter in ["debug", "info", "wasmtime=debug,llamagate=debug"] {
            let expanded = expand_level(filter);
            assert!(
                tracing_subscriber::EnvFilter::try_new(&expanded).is_ok(),
                "{expanded}"
            );
        }
    }

    #[test]
    fn a_key_given_twice_with_different_values_is_refused() {
        let overrides = |args: &[&str]| {
            let mut all = vec!["llamagate"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().serve.overrides()
        };
        let err = overrides(&[
            "--proxy",
            "m=http://admin:pw@a:1",
            "--proxy",
            "m:latest=http://b:2",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("m=\"http://a:1\" (--proxy)")
                && err.contains("m:latest=\"http://b:2\" (--proxy)"),
            "{err}"
        );
        assert!(!err.contains("pw"), "{err}");
        let err = overrides(&["--proxies", "m=a", "--proxy", "m=b"]).unwrap_err();
        assert!(err.to_string().contains("(--proxies)"), "{err}");
        let err = overrides(&[
            "--connection",
            "g=http://a:1",
            "--connections",
            "g=http://b:1",
        ]);
        assert!(err.is_err());
        // Connection ids are not model names; the same value twice is fine.
        assert!(overrides(&[
            "--connection",
            "g=http://a:1",
            "--connection",
            "G=http://b:1"
        ])
        .is_ok());
        assert!(overrides(&["--proxy", "m=http://a:1", "--proxy", "m=http://a:1/"]).is_ok());
    }

    #[test]
    fn bad_pair_is_explained() {
        let cli = Cli::try_parse_from(["llamagate", "--proxy", "nourl"]).unwrap();
        let err = cli.serve.overrides().unwrap_err().to_string();
        assert!(err.contains("--proxy: \"nourl\""), "{err}");
    }
}
