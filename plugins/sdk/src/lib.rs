//! The llamagate plugin SDK.
//!
//! - [`names`]: Ollama's model-name rules (always available; the host uses them too).
//! - `bindings` (feature `guest`, on by default): the generated bindings of the
//!   `llamagate:policy` WIT world, and the [`export!`] macro a plugin calls once.
#![deny(unsafe_code)]

pub mod names;

#[cfg(feature = "guest")]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    //! Generated from `wit/policy.wit`. See that file for the documentation of each item.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy-plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "llamagate_sdk::bindings",
    });
}

#[cfg(feature = "guest")]
pub use bindings::export;
#[cfg(feature = "guest")]
pub use bindings::exports::llamagate::policy::policy::Guest as Policy;
#[cfg(feature = "guest")]
pub use bindings::llamagate::policy::types::*;

/// Log through the host, tagged with the plugin's name.
#[cfg(feature = "guest")]
pub fn log(level: Level, message: &str) {
    bindings::llamagate::policy::host::log(level, message)
}

/// The raw request body (copies it into the plugin: use only when needed).
#[cfg(feature = "guest")]
pub fn request_body() -> Vec<u8> {
    bindings::llamagate::policy::host::request_body()
}

#[cfg(feature = "guest")]
impl Edits {
    /// Edits that change nothing.
    pub fn none() -> Self {
        Edits {
            model: None,
            set_options: Vec::new(),
            remove_options: Vec::new(),
            keep_alive: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            backends: None,
        }
    }
}

#[cfg(feature = "guest")]
impl Request {
    /// The value of a request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The value of an option, if the request sets it.
    pub fn option(&self, key: &str) -> Option<&JsonValue> {
        self.options.iter().find(|o| o.key == key).map(|o| &o.value)
    }
}

#[cfg(feature = "guest")]
impl Decision {
    /// Answer the client with an error status and message.
    pub fn reject(status: u16, message: impl Into<String>) -> Self {
        Decision::Respond(Reply {
            status,
            message: message.into(),
            headers: Vec::new(),
        })
    }
}
