//! The llamagate plugin SDK.
//!
//! - [`names`]: Ollama's model-name rules (always available; the host uses them too).
//! - [`time`]: dates and RFC 3339 times as configs write them (key expiry), and
//!   the wall clock (always available).
//! - [`keys`] (the `keys` feature, on by default): a table of bearer tokens kept as
//!   SHA-256 digests (`"sha256:<hex>"` in the config) and looked up in constant time.
//! - With the `guest` feature (on by default): the types of the
//!   `llamagate:policy@0.3.0` WIT world with helpers, the [`Policy`] trait a
//!   plugin implements, the host calls ([`backends_for`], [`all_backends`],
//!   [`request_body`], [`log`]) and the [`export!`] macro it calls once. See
//!   `wit/v0.3.0/policy.wit` for each item's meaning.
//!
//! `on_request` gets the request only; a plugin that places requests asks for
//! the backends it needs: [`backends_for`] a model (usually), [`all_backends`]
//! (a model nobody has yet), or [`Request::candidates`] (those an earlier plugin
//! chose, else those that serve the model).
//!
//! A plugin's logic can be unit-tested natively with `cargo test`: the types are
//! plain Rust, [`testing`] builds requests and backends, and the host imports
//! have native stand-ins ([`testing::set_fleet`] and [`testing::set_body`] say
//! what they return).
//!
//! ```
//! use llamagate_sdk::{Decision, Edits, ListedModel, Policy, Request};
//!
//! /// Caps `num_ctx`; sends inference to the least busy backend that serves the model.
//! struct CapAndSpread;
//!
//! impl Policy for CapAndSpread {
//!     fn init(_config: String) -> Result<(), String> { Ok(()) }
//!
//!     fn on_request(req: Request) -> Decision {
//!         let mut edits = Edits::none();
//!         if req.option_i64("num_ctx").is_some_and(|n| n > 8192) {
//!             edits = edits.set_num_ctx(8192);
//!         }
//!         if req.is_inference() {
//!             let mut replicas = req.candidates(); // one host call, only here
//!             replicas.sort_by_key(|b| (!b.healthy, b.in_flight));
//!             if !replicas.is_empty() {
//!                 edits = edits.route_to(replicas.into_iter().map(|b| b.id));
//!             }
//!         }
//!         Decision::forward(edits)
//!     }
//!
//!     fn list_models(_req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> { models }
//! }
//!
//! llamagate_sdk::export!(CapAndSpread);
//!
//! // A native unit test: `testing` stands in for the host.
//! # fn main() {
//! use llamagate_sdk::{testing, Endpoint, JsonValue};
//! testing::set_fleet([
//!     testing::backend("gpu-01", &["llama3.2"]).with_in_flight(2),
//!     testing::backend("gpu-02", &["llama3.2", "qwen2.5:14b"]),
//!     testing::backend("gpu-03", &["mistral"]),
//! ]);
//! let req = testing::request(Endpoint::Chat, "llama3.2")
//!     .with_option("num_ctx", JsonValue::Integer(32768));
//! assert_eq!(
//!     CapAndSpread::on_request(req),
//!     Decision::forward(Edits::none().set_num_ctx(8192).route_to(["gpu-02", "gpu-01"])),
//! );
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod names;
pub mod time;

#[cfg(feature = "keys")]
pub mod keys;

#[cfg(feature = "guest")]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    //! Generated from `wit/v0.3.0/policy.wit`. See that file for the documentation of each item.
    wit_bindgen::generate!({
        path: "../../wit/v0.3.0",
        world: "policy-plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "llamagate_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

#[cfg(feature = "guest")]
mod helpers;
#[cfg(feature = "guest")]
pub mod testing;

/// Exports a [`Policy`] implementation as the plugin's `policy` interface; call
/// it once per plugin, e.g. `llamagate_sdk::export!(MyPolicy);`.
///
/// For `wasm32` it writes the component's exports. On other targets (native
/// `cargo test` of a `cdylib` + `rlib` plugin crate) it only names the type: the
/// component's export names (`llamagate:policy/policy@0.3.0#init`) cannot be
/// symbols of a native shared library, whose linker would refuse them.
#[cfg(feature = "guest")]
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::export!($ty with_types_in $crate::bindings);
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = (
                <$ty as $crate::Policy>::init,
                <$ty as $crate::Policy>::on_request,
                <$ty as $crate::Policy>::list_models,
            );
        };
    };
}
#[cfg(feature = "guest")]
pub use bindings::exports::llamagate::policy::policy::Guest as Policy;
#[cfg(feature = "guest")]
pub use bindings::llamagate::policy::types::*;
#[cfg(feature = "guest")]
pub use helpers::{all_backends, backends_for, backends_with_ids, log, request_body};
