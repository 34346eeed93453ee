//! `llamagate:policy@0.1.0`, served beside 0.3.0 and 0.2.0: its bindings and
//! the conversions between its types and the host's (0.3.0's).
//!
//! The records are the same in every version except `backend` (0.1.0's has
//! every model the backend serves and its URL, and no `reason` nor any of
//! 0.3.0's facts) and `edits` (0.2.0 adds `principal`, 0.3.0 what the host
//! enforces). A 0.1.0 plugin is handed the whole fleet on every call, as it
//! always was.

use super::v3::llamagate::policy::types as now;

wasmtime::component::bindgen!({
    world: "policy-plugin",
    path: "../wit/v0.1.0",
    additional_derives: [PartialEq],
});

use self::llamagate::policy::types as old;

same_in_every_version!();

/// A 0.1.0 plugin's decision in the host's terms (it names no principal and
/// asks nothing of what 0.3.0 enforces).
pub fn decision(decision: old::Decision) -> now::Decision {
    match decision {
        old::Decision::Respond(reply) => now::Decision::Respond(reply_from_old(reply)),
        old::Decision::Forward(edits) => now::Decision::Forward(now::Edits {
            model: edits.model,
            set_options: options_from_old(edits.set_options),
            remove_options: edits.remove_options,
            keep_alive: edits.keep_alive.map(value_from_old),
            set_headers: headers_from_old(edits.set_headers),
            remove_headers: edits.remove_headers,
            backends: edits.backends,
            principal: None,
            priority: None,
            first_byte_timeout_ms: None,
            stream_idle_timeout_ms: None,
            queue_timeout_ms: None,
            failover: None,
            every_backend: None,
        }),
    }
}

/// The fleet as a 0.1.0 plugin sees it: every backend with its models.
pub fn backend(b: super::Backend) -> old::Backend {
    old::Backend {
        id: b.id,
        url: b.url,
        healthy: b.state.healthy(),
        models: b.models,
        loaded: b
            .loaded
            .into_iter()
            .map(|l| old::LoadedModel {
                name: l.name,
                context_length: l.context_length,
                size_vram: l.size_vram,
            })
            .collect(),
        in_flight: b.in_flight,
    }
}
