//! `GET /llamagate/status`: what llamagate is running right now, for operators.
//!
//! The plugin chain (and shadow chain) in force, the outcome of the last reload
//! (with the failing plugin's own message), shadow agreement counts, and each
//! backend's health, models and requests in flight.

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::json;

use crate::gateway::{json, Gateway};
use crate::ResponseBody;

/// The status endpoint's path (not an Ollama path, so it cannot collide).
pub const PATH: &str = "/llamagate/status";

/// The status document.
pub fn response(gateway: &Gateway) -> http::Response<ResponseBody> {
    let generation = gateway.current();
    let backends: Vec<_> = generation
        .fleet
        .views()
        .into_iter()
        .map(|b| {
            json!({
                "id": b.id,
                "url": b.url,
                "healthy": b.healthy,
                "in_flight": b.in_flight,
                "models": b.models,
                "loaded": b.loaded.iter().map(|l| json!({
                    "name": l.name, "context_length": l.context_length, "size_vram": l.size_vram
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let stats = &gateway.shadow_stats;
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": generation.number,
        "plugins": generation.chain.names(),
        "shadow": generation.shadow.as_ref().map(|s| json!({
            "plugins": s.names(),
            "decided": stats.decided.load(Ordering::Relaxed),
            "agreed": stats.agreed.load(Ordering::Relaxed),
            "differed": stats.differed.load(Ordering::Relaxed),
            "failed": stats.failed.load(Ordering::Relaxed),
        })),
        "last_reload": *gateway.last_reload.lock().unwrap(),
        "backends": backends,
    });
    json(StatusCode::OK, &body, false)
}
