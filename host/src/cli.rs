//! The command line. Accepts gollamas' flags and environment variables
//! (`GOLLAMAS_*`) as well as llamagate's own (`LLAMAGATE_*`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_pair, parse_pairs, Overrides};

/// llamagate: one Ollama endpoint for a fleet of Ollama servers.
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
    #[arg(long, short = 'c', env = "LLAMAGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:11434]. Env: LLAMAGATE_LISTEN, GOLLAMAS_LISTEN.
    #[arg(long, global = true)]
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
    /// Append every request (with body and headers: keep the file private) to FILE
    /// as JSON lines, for `llamagate plugin test`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace). Env: LLAMAGATE_LOG, GOLLAMAS_LEVEL.
    #[arg(long, global = true)]
    pub level: Option<String>,
}

/// Options of `llamagate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {}

/// Options of `llamagate sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
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
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl ServeArgs {
    /// The log filter to use.
    pub fn log_filter(&self) -> String {
        self.level
            .clone()
            .or_else(|| env(&["LLAMAGATE_LOG", "GOLLAMAS_LEVEL"]))
            .unwrap_or_else(|| "info".into())
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
            ..Default::default()
        };
        let lists = [
            (
                &self.connections,
                &self.connection,
                ["LLAMAGATE_CONNECTIONS", "GOLLAMAS_CONNECTIONS"],
                "--connection",
                &mut o.connections,
            ),
            (
                &self.proxies,
                &self.proxy,
                ["LLAMAGATE_PROXIES", "GOLLAMAS_PROXIES"],
                "--proxy",
                &mut o.proxies,
            ),
            (
                &self.aliases,
                &self.alias,
                ["LLAMAGATE_ALIASES", "GOLLAMAS_ALIASES"],
                "--alias",
                &mut o.aliases,
            ),
        ];
        for (plural, singular, env_names, what, out) in lists {
            if let Some(text) = plural.clone().or_else(|| env(&env_names)) {
                out.extend(parse_pairs(&text, what)?);
            }
            for pair in singular {
                out.push(parse_pair(pair, what)?);
            }
        }
        if o.plugins.is_empty() {
            if let Some(list) = env(&["LLAMAGATE_PLUGINS"]) {
                o.plugins = list.split(',').map(|s| PathBuf::from(s.trim())).collect();
            }
        }
        Ok(o)
    }
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
    fn bad_pair_is_explained() {
        let cli = Cli::try_parse_from(["llamagate", "--proxy", "nourl"]).unwrap();
        let err = cli.serve.overrides().unwrap_err().to_string();
        assert!(err.contains("--proxy: \"nourl\""), "{err}");
    }
}
