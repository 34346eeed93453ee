//! Integration tests: the real `llamagate` binary over real sockets, in front of
//! simulated Ollama servers. One binary, a module per topic.

mod browser;
mod common;
mod faults;

mod admin;
mod admission;
mod aliases;
mod backends;
mod bypass;
mod client_limits;
mod clients;
mod command_line;
mod config;
mod config_errors;
mod cors;
mod deploy;
mod errors;
mod examples;
mod failover;
mod fanout;
mod fleet_figures;
mod flood;
mod health;
mod hot;
mod keys;
mod layering;
mod listings;
mod management;
mod observe;
mod plugins;
mod precedence;
mod python_example;
mod reload;
mod routing;
mod secrets;
mod shadow;
mod status_page;
mod streaming;
