//! The `llamagate` binary.

use clap::Parser;
use llamagate::cli::{Cli, Command, LogFormat, PluginCommand, ServeArgs};
use llamagate::config::Config;
use llamagate::server::Launch;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(cli.serve.log_filter()) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("llamagate: --level: {err}; logging at info");
            EnvFilter::new(llamagate::cli::expand_level("info"))
        }
    };
    let format = match cli.serve.log_format() {
        Ok(format) => format,
        Err(err) => {
            eprintln!("llamagate: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(llamagate::log_sink::Sink);
    match format {
        LogFormat::Text => logs
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    llamagate::log_sink::start_flusher();
    let outcome = run(cli).await;
    llamagate::log_sink::flush();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llamagate: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Demo(args)) => {
            llamagate::cli::demo::run(args.listen.or(cli.serve.listen)).await
        }
        Some(Command::Sim(args)) => {
            let listen = args
                .listen
                .or(cli.serve.listen)
                .unwrap_or_else(|| "127.0.0.1:11435".into());
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!(
                "simulated Ollama listening on http://{}",
                listener.local_addr()?
            );
            let options = llamagate_sim::SimOptions {
                models: args.models,
                version: args.version,
                chunks: args.chunks,
                chunk_delay: std::time::Duration::from_millis(args.chunk_delay_ms),
                // Nobody reads the record of a standalone simulator.
                record: false,
                ..Default::default()
            };
            tokio::select! {
                r = llamagate_sim::serve(listener, options) => r,
                _ = llamagate::server::shutdown_signal() => Ok(()),
            }
        }
        Some(Command::Keys(command)) => llamagate::cli::keys(command, cli.serve.config),
        Some(Command::Plugin(command)) => {
            let config = match &command {
                PluginCommand::Test { config, .. } => config.clone().or(cli.serve.config),
                PluginCommand::Check { .. } => None,
            };
            let overrides = ServeArgs {
                config,
                ..cli.serve
            }
            .overrides()?;
            tokio::task::spawn_blocking(move || match command {
                PluginCommand::Check { file, with_config } => {
                    llamagate::cli::plugin_cmd::check(&file, with_config.as_deref())
                }
                PluginCommand::Test {
                    file,
                    config: _,
                    requests,
                    with_config,
                    alone,
                } => llamagate::cli::plugin_cmd::test(llamagate::cli::plugin_cmd::TestArgs {
                    file,
                    requests,
                    overrides,
                    alone,
                    plugin_config: with_config,
                }),
            })
            .await?
        }
        None => {
            let overrides = cli.serve.overrides()?;
            let config = Config::load(&overrides)?;
            let launch = Launch {
                config,
                reload_from: Some(overrides),
                record: cli.serve.record.clone(),
            };
            llamagate::server::run(launch, llamagate::server::shutdown_signal()).await
        }
    }
}
