//! Integration tests: the real `llamagate` binary over real sockets, in front of
//! simulated Ollama servers. One binary, a module per topic.

mod common;

mod bypass;
mod client_limits;
mod clients;
mod config;
mod errors;
mod examples;
mod fanout;
mod flood;
mod plugins;
mod python_example;
mod reload;
mod routing;
mod secrets;
mod streaming;
