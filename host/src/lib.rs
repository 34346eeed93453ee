//! llamagate: one Ollama endpoint in front of a fleet of Ollama servers, with
//! every policy decision made by sandboxed WebAssembly plugins.
//!
//! The life of a request is [`proxy::pipeline`], phase by phase. By area,
//! each depending only on the ones listed before it:
//!
//! | area | holds |
//! |---|---|
//! | [`log_limit`] | rate-limited log lines |
//! | [`plugin`] | the WebAssembly runtime: components, instances, call slots (the only user of wasmtime) |
//! | [`api`] | Ollama's API as Ollama reads it: the endpoint table, paths, bodies, the policy view, error wording |
//! | [`config`] | the configuration file, flags and environment |
//! | [`upstream`] | the pooled client that talks to backends, and how a failure there is described |
//! | [`fleet`] | the backends: health, models served and loaded, requests in flight, probes |
//! | [`policy`] | the plugin chain and the decision it makes |
//! | [`proxy`] | the data path: the pipeline, forwarding, relaying, fan-out, listings |
//! | [`admin`] | status and reloads |
//! | [`server`] | start-up, the accept loop and the client-side limits |
//! | [`cli`] | the command line: `serve`, `demo`, `plugin check/replay` |
//!
//! `it::layering` (in `host/tests`) checks that order. The simulated Ollama
//! used by the tests, the benches and `llamagate demo`/`sim` is its own crate,
//! `llamagate-sim` (`host/sim`), not part of this library.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod log_limit;
pub mod log_sink;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod upstream;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of responses llamagate sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Body of requests llamagate sends to backends.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full_body(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty request body.
pub fn empty_request_body() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The default policy component, built from `plugins/default-policy` by `build.rs`.
pub static DEFAULT_POLICY_WASM: &[u8] = include_bytes!(env!("LLAMAGATE_DEFAULT_POLICY_WASM"));
