//! llamagate: one Ollama endpoint in front of a fleet of Ollama servers, with
//! every policy decision made by sandboxed WebAssembly plugins.
//!
//! The life of a request, by module:
//! [`server`] accepts it (within the [`client_limits`]) → [`endpoint`]
//! classifies it → [`intake`] (with [`body`]) builds the view policies decide
//! on → [`policy`] runs the plugin chain ([`plugin`] owns wasmtime) → [`gateway`] picks a backend from the [`fleet`] and
//! forwards it through [`upstream`], relaying the answer with [`stream`] — or
//! [`fanout`] asks every backend and merges the answers. [`error`] words failures
//! for the client's API. Around it: [`reload`] (hot swap), [`status`],
//! [`record`] and [`plugin_cmd`] (replay), [`config`], [`cli`], [`demo`]. The
//! simulated Ollama used by the tests, the benches and `llamagate demo`/`sim` is
//! its own crate, `llamagate-sim` (`host/sim`), not part of this library.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod body;
pub mod cli;
pub mod client_limits;
pub mod config;
pub mod demo;
pub mod endpoint;
pub mod error;
pub mod fanout;
pub mod fleet;
pub mod gateway;
pub mod intake;
pub mod listing_cache;
pub mod log_limit;
pub mod model_change;
pub mod plugin;
pub mod plugin_cmd;
pub mod policy;
pub mod record;
pub mod reload;
pub mod server;
pub mod status;
pub mod stream;
pub mod upstream;
pub mod version;

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
