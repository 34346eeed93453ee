//! Integration tests: the real `llamagate` binary over real sockets, in front of
//! simulated Ollama servers. One binary, a module per topic.

mod common;

mod clients;
mod config;
mod errors;
mod examples;
mod fanout;
mod plugins;
mod python_example;
mod reload;
mod routing;
mod streaming;
