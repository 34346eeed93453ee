//! `llamagate:policy@0.2.0`, served beside 0.3.0 and 0.1.0: its bindings and
//! the conversions between its types and the host's (0.3.0's).
//!
//! The records are the same in both versions except `backend` (0.2.0's has
//! `healthy` and `reason` but not 0.3.0's state, version, slots, queue,
//! memory and model facts; its loaded models lack `size` and expiry) and
//! `edits` (0.3.0 adds what the host enforces: priority, timeouts, failover).

use super::v3::llamagate::policy::types as now;

wasmtime::component::bindgen!({
    world: "policy-plugin",
    path: "../wit/v0.2.0",
    additional_derives: [PartialEq],
});

use self::llamagate::policy::types as old;

same_in_every_version!();

/// A 0.2.0 plugin's decision in the host's terms (it asks nothing of what
/// 0.3.0 enforces: the host's own rules and settings apply).
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
            principal: edits.principal,
            priority: None,
            first_byte_timeout_ms: None,
            stream_idle_timeout_ms: None,
            queue_timeout_ms: None,
            failover: None,
            every_backend: None,
        }),
    }
}

/// A backend as a 0.2.0 plugin sees it: no models, no URL, and `healthy`
/// for the state (up or half-open).
pub fn backend(b: super::Backend) -> old::Backend {
    old::Backend {
        id: b.id,
        healthy: b.state.healthy(),
        reason: b.reason,
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
