//! Integration tests: the real `llamagate` binary over real sockets, in front of
//! simulated Ollama servers. One binary, a module per topic.

mod common;

mod clients;
mod config;
mod errors;
mod fanout;
mod plugins;
mod routing;
mod streaming;
