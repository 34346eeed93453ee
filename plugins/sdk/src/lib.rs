//! The llamagate plugin SDK.
//!
//! - [`names`]: Ollama's model-name rules (always available; the host uses them too).
//! - [`keys`] (the `keys` feature, on by default): a table of bearer tokens kept as
//!   SHA-256 digests (`"sha256:<hex>"` in the config) and looked up in constant time.
//! - With the `guest` feature (on by default): the types of the `llamagate:policy`
//!   WIT world with helpers, the [`Policy`] trait a plugin implements, and the
//!   [`export!`] macro it calls once. See `wit/v0.1.0/policy.wit` for each item's meaning.
//!
//! A plugin's logic can be unit-tested natively with `cargo test`: the types are
//! plain Rust, [`testing`] builds requests and backends, and the host imports
//! ([`log`], [`request_body`]) have native stand-ins.
//!
//! ```ignore
//! use llamagate_sdk::{Backend, Decision, Edits, ListedModel, Policy, Request};
//!
//! struct Cap;
//! impl Policy for Cap {
//!     fn init(_config: String) -> Result<(), String> { Ok(()) }
//!     fn on_request(req: Request, _backends: Vec<Backend>) -> Decision {
//!         match req.option_i64("num_ctx") {
//!             Some(n) if n > 8192 => Decision::forward(Edits::none().set_num_ctx(8192)),
//!             _ => Decision::pass(),
//!         }
//!     }
//!     fn list_models(_req: Request, models: Vec<ListedModel>) -> Vec<ListedModel> { models }
//! }
//! llamagate_sdk::export!(Cap);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod names;

#[cfg(feature = "keys")]
pub mod keys;

#[cfg(feature = "guest")]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    //! Generated from `wit/v0.1.0/policy.wit`. See that file for the documentation of each item.
    wit_bindgen::generate!({
        path: "../../wit/v0.1.0",
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
/// component's export names (`llamagate:policy/policy@0.1.0#init`) cannot be
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
pub use helpers::{log, request_body, serving};
