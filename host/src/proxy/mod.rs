//! The data path: what happens to a request between the accept loop and the
//! backend. [`pipeline`] is the request's life, phase by phase, in order; the
//! other modules are the parts it calls.
//!
//! - [`state`]: the [`state::Gateway`] every request reads (the generation in
//!   force, the pooled client, shadow counts).
//! - [`generation`]: what a request is decided with, built from a config and
//!   swapped whole on reload.
//! - [`shadow`]: the shadow chain, compared off the request path.
//! - [`fanout`] and [`listing_cache`]: listings asked of every backend and merged.
//! - [`relay`]: the backend's answer passed through, frame by frame.
//! - [`rename`]: an alias kept in the answer's `model` field, frame by frame.
//! - [`model_change`]: a pull, create, copy or delete learned at once.
//! - [`fleetwide`]: a pull or delete sent to every backend chosen for it.
//! - [`body_pace`]: the pace a request body must keep.
//! - [`metrics`]: Prometheus metrics, counted as requests finish.
//! - [`recent`]: the last failed requests and counts per model, for the
//!   status page, kept beside the metrics.
//! - [`record`]: requests written to a file for `llamagate plugin replay`.

pub mod body_pace;
pub mod fanout;
pub mod fleetwide;
pub mod generation;
pub mod listing_cache;
pub mod model_change;
pub mod pipeline;
pub mod recent;
pub mod record;
pub mod relay;
pub mod rename;
pub mod shadow;
pub mod state;
pub mod tokens;
