//! Choosing among replicas: the order in which the default policy lists the
//! backends of one request (the host tries them in that order).
//!
//! Every strategy puts backends by state first: `up` and `half-open` (which
//! must get its trial; the host lets only the breaker's trials through), then
//! `open` and `down` (kept at the end, not dropped, so the host can still try
//! them when nothing else answers). Within a state, the strategy decides, and
//! ties keep the order of the list given (a model's replica list, or
//! configuration order): that order is the operator's preference.
//!
//! - `priority`: the list's order, nothing else (failover down the list).
//! - `round-robin`: the list rotated by the request's id (llamagate numbers
//!   requests 1, 2, 3...), each backend taking `weight` turns in a row.
//! - `least-busy`: the fewest requests of the model (in flight + queued) per
//!   model slot, then the fewest of the backend's requests in flight per
//!   slot, both divided by the backend's weight.
//! - `warm-first` (the default): the model loaded (with a context the request
//!   can use) and not full, fully in GPU memory before partly offloaded to
//!   the CPU; then backends where the model fits in the declared `vram`
//!   without evicting a loaded model ([`needed_vram`]); then any. Within each
//!   of these tiers, as `least-busy`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use llamagate_sdk::{names, Backend, LoadedModel};
use serde::Deserialize;

/// How a request's replicas are ordered.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The list's order.
    Priority,
    /// Rotated by the request id, weighted.
    RoundRobin,
    /// Fewest requests per slot, weighted.
    LeastBusy,
    /// Warm and not full, then a cold fit in GPU memory, then any.
    #[default]
    WarmFirst,
}

/// Loaded models take more memory than their files: runtime buffers and
/// the graph. The weights' size on disk is multiplied by this.
pub const WEIGHTS_OVERHEAD: f64 = 1.2;

/// KV-cache bytes per token of context assumed for a cold load: what an
/// 8B Llama-class model with grouped-query attention needs at f16
/// (32 layers x 8 KV heads x 128 dimensions x 2 (K and V) x 2 bytes).
/// A heuristic: without the model's architecture (`/api/show`) the real
/// figure is unknown; smaller models need less, 70B-class ones about 2.5x.
pub const KV_BYTES_PER_TOKEN: u64 = 128 << 10;

/// The context assumed when the request sets no `num_ctx` (Ollama's default).
pub const DEFAULT_NUM_CTX: i64 = 4096;

/// GPU memory a cold load of a model of `size` bytes (on disk) is assumed to
/// need with `num_ctx` tokens of context: `size` x [`WEIGHTS_OVERHEAD`] +
/// `num_ctx` x [`KV_BYTES_PER_TOKEN`].
pub fn needed_vram(size: u64, num_ctx: Option<i64>) -> u64 {
    let tokens = num_ctx.unwrap_or(DEFAULT_NUM_CTX).max(0) as u64;
    let weights = (size as f64 * WEIGHTS_OVERHEAD) as u64;
    weights.saturating_add(tokens.saturating_mul(KV_BYTES_PER_TOKEN))
}

/// What ordering one request's replicas depends on.
#[derive(Clone, Debug)]
pub struct Placement<'a> {
    /// The strategy in force for the model.
    pub strategy: Strategy,
    /// Backend id -> weight (1 when absent).
    pub weights: &'a BTreeMap<String, u32>,
    /// The model placed (any spelling); `None` for requests without one.
    pub model: Option<&'a str>,
    /// The `num_ctx` the request will carry, when known.
    pub num_ctx: Option<i64>,
    /// When `num_ctx` may be snapped up to a loaded runner's context: the
    /// largest context it may be snapped to. `None`: no snapping, only a
    /// runner with exactly `num_ctx` (or an unknown context) serves it
    /// without a reload.
    pub snap_up_to: Option<i64>,
    /// The request's id, for `round-robin`.
    pub request_id: &'a str,
}

impl Placement<'_> {
    fn weight(&self, b: &Backend) -> u32 {
        self.weights.get(&b.id).copied().unwrap_or(1).max(1)
    }

    /// Whether `runner` can take the request without Ollama reloading it.
    pub fn serves_context(&self, runner: &LoadedModel) -> bool {
        match (self.num_ctx, runner.context_length) {
            (Some(wanted), Some(loaded)) => {
                let loaded = i64::from(loaded);
                loaded == wanted
                    || self
                        .snap_up_to
                        .is_some_and(|max| loaded >= wanted && loaded <= max)
            }
            _ => true,
        }
    }

    /// `warm-first`'s tier of a backend: 0 warm in GPU and not full, 1 warm
    /// but offloaded to the CPU and not full, 2 a cold load fits in its free
    /// declared memory, 3 anything else.
    pub fn warm_tier(&self, b: &Backend) -> u8 {
        let Some(model) = self.model else {
            return 3;
        };
        let runner = b.loaded.iter().find(|l| names::same(&l.name, model));
        let mut freed = 0;
        if let Some(runner) = runner {
            if self.serves_context(runner) {
                return match (b.is_full(), runner.offloaded()) {
                    (true, _) => 3,
                    (false, false) => 0,
                    (false, true) => 1,
                };
            }
            // A reload with another context replaces this runner.
            freed = runner.size_vram;
        }
        let size = b.model.as_ref().and_then(|m| m.size);
        match (size, b.vram_free()) {
            (Some(size), Some(free)) if needed_vram(size, self.num_ctx) <= free + freed => 2,
            _ => 3,
        }
    }

    /// The backends of `list` (in the operator's order of preference), best
    /// first.
    pub fn order(&self, list: Vec<Backend>) -> Vec<Backend> {
        let mut ranked: Vec<(usize, Backend)> = list.into_iter().enumerate().collect();
        ranked.sort_by(|(i, a), (j, b)| {
            a.state
                .rank()
                .cmp(&b.state.rank())
                .then_with(|| self.compare(a, b))
                .then(i.cmp(j))
        });
        let mut ordered: Vec<Backend> = ranked.into_iter().map(|(_, b)| b).collect();
        if self.strategy == Strategy::RoundRobin {
            // Rotate the backends that are up only, so one that is not does
            // not hand its turns to the one after it; the others keep the
            // list's order behind them.
            let up = ordered.iter().take_while(|b| b.state.rank() == 0).count();
            let turn = self.turn(&ordered[..up]);
            ordered[..up].rotate_left(turn);
        }
        ordered
    }

    /// The strategy's comparison of two backends in the same state.
    fn compare(&self, a: &Backend, b: &Backend) -> Ordering {
        match self.strategy {
            Strategy::Priority | Strategy::RoundRobin => Ordering::Equal,
            // Within a tier, occupancy: equally warm replicas share the load
            // instead of the first taking everything until it is full.
            Strategy::WarmFirst => self
                .warm_tier(a)
                .cmp(&self.warm_tier(b))
                .then_with(|| self.busier(a, b)),
            Strategy::LeastBusy => self.busier(a, b),
        }
    }

    /// `least-busy`'s order of two backends (ties: equal).
    fn busier(&self, a: &Backend, b: &Backend) -> Ordering {
        let (am, at) = self.busy(a);
        let (bm, bt) = self.busy(b);
        am.total_cmp(&bm).then(at.total_cmp(&bt))
    }

    /// `least-busy`'s scores: the model's requests per model slot, the
    /// backend's requests in flight per slot, each over the weight.
    fn busy(&self, b: &Backend) -> (f64, f64) {
        let weight = f64::from(self.weight(b));
        let model = f64::from(b.model_load()) / f64::from(b.model_slots.max(1)) / weight;
        let all = f64::from(b.in_flight) / f64::from(b.slots.max(1)) / weight;
        (model, all)
    }

    /// Which backend of `group` takes this request's turn: the request id
    /// (a decimal counter; another id is hashed) modulo the group's total
    /// weight, each backend owning `weight` consecutive turns.
    fn turn(&self, group: &[Backend]) -> usize {
        let total: u64 = group.iter().map(|b| u64::from(self.weight(b))).sum();
        if total == 0 {
            return 0;
        }
        let counter = self.request_id.parse::<u64>().unwrap_or_else(|_| {
            // FNV-1a: stable across runs, unlike std's hasher.
            self.request_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, c| {
                (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3)
            })
        });
        let mut slot = counter % total;
        for (i, b) in group.iter().enumerate() {
            let w = u64::from(self.weight(b));
            if slot < w {
                return i;
            }
            slot -= w;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamagate_sdk::testing::{backend, gib, TestBackend};
    use llamagate_sdk::BackendState;

    fn ids(list: Vec<Backend>) -> Vec<String> {
        list.into_iter().map(|b| b.id).collect()
    }

    /// The records `backends-for("m")` would give for `list`.
    fn records(list: Vec<TestBackend>) -> Vec<Backend> {
        list.into_iter()
            .map(|b| Backend {
                model: Some(b.facts_of("m")),
                ..b.record()
            })
            .collect()
    }

    fn placement<'a>(strategy: Strategy, weights: &'a BTreeMap<String, u32>) -> Placement<'a> {
        Placement {
            strategy,
            weights,
            model: Some("m"),
            num_ctx: None,
            snap_up_to: None,
            request_id: "1",
        }
    }

    #[test]
    fn every_strategy_keeps_the_lists_order_for_equal_backends() {
        let none = BTreeMap::new();
        for strategy in [Strategy::Priority, Strategy::LeastBusy, Strategy::WarmFirst] {
            let p = placement(strategy, &none);
            let list = records(vec![backend("b2", &["m"]), backend("b1", &["m"])]);
            assert_eq!(ids(p.order(list)), ["b2", "b1"], "{strategy:?}");
        }
    }

    #[test]
    fn up_then_half_open_then_open_and_down_kept_last() {
        let none = BTreeMap::new();
        for strategy in [
            Strategy::Priority,
            Strategy::RoundRobin,
            Strategy::LeastBusy,
            Strategy::WarmFirst,
        ] {
            let p = placement(strategy, &none);
            let list = records(vec![
                backend("down", &["m"]).unhealthy(),
                backend("open", &["m"]).with_state(BackendState::Open, Some("5 failures")),
                backend("half", &["m"]).with_state(BackendState::HalfOpen, None),
                backend("up", &["m"]).with_in_flight(2),
            ]);
            // Half-open ranks with up (it must get its trial); open and
            // down last, in the list's order.
            let order = ids(p.order(list));
            let mut first: Vec<&str> = order[..2].iter().map(String::as_str).collect();
            first.sort();
            assert_eq!(first, ["half", "up"], "{strategy:?}: {order:?}");
            assert_eq!(order[2..], ["down", "open"], "{strategy:?}");
        }
    }

    #[test]
    fn warm_replicas_share_the_load() {
        let none = BTreeMap::new();
        let p = placement(Strategy::WarmFirst, &none);
        let list = records(vec![
            backend("busy", &["m"])
                .with_loaded("m", 4096)
                .with_slots(12, 4)
                .with_model_requests("m", 3, 0),
            backend("idle", &["m"])
                .with_loaded("m", 4096)
                .with_slots(12, 4),
            backend("cold", &["m"]),
        ]);
        // Both warm and not full: the idle one first, although listed second.
        assert_eq!(ids(p.order(list)), ["idle", "busy", "cold"]);
    }

    #[test]
    fn priority_ignores_load_and_warmth() {
        let none = BTreeMap::new();
        let p = placement(Strategy::Priority, &none);
        let list = records(vec![
            backend("first", &["m"]).with_model_requests("m", 5, 9),
            backend("second", &["m"]).with_loaded("m", 4096),
        ]);
        assert_eq!(ids(p.order(list)), ["first", "second"]);
    }

    #[test]
    fn round_robin_rotates_by_request_id_with_weights() {
        let weights = BTreeMap::from([("b1".to_string(), 2)]);
        let firsts: Vec<String> = (1..=6)
            .map(|id| {
                let id = id.to_string();
                let p = Placement {
                    request_id: &id,
                    ..placement(Strategy::RoundRobin, &weights)
                };
                let list = records(vec![
                    backend("b1", &["m"]),
                    backend("b2", &["m"]),
                    backend("down", &["m"]).unhealthy(),
                ]);
                let order = ids(p.order(list));
                assert_eq!(order.last().unwrap(), "down", "{order:?}");
                order[0].clone()
            })
            .collect();
        // Turns 0, 1: b1 (weight 2); turn 2: b2; ids 1..=6 are turns 1, 2, 0, 1, 2, 0.
        assert_eq!(firsts, ["b1", "b2", "b1", "b1", "b2", "b1"]);
        let p = Placement {
            request_id: "2",
            ..placement(Strategy::RoundRobin, &weights)
        };
        let list = records(vec![backend("b1", &["m"]), backend("b2", &["m"])]);
        assert_eq!(ids(p.order(list)), ["b2", "b1"], "the rest follow in turn");
    }

    #[test]
    fn least_busy_counts_the_models_requests_per_slot_then_the_backends() {
        let none = BTreeMap::new();
        let p = placement(Strategy::LeastBusy, &none);
        let list = records(vec![
            // 2 of the model on 1 slot: 2.0
            backend("a", &["m"]).with_model_requests("m", 1, 1),
            // 2 on 4 slots: 0.5
            backend("b", &["m"])
                .with_slots(12, 4)
                .with_model_requests("m", 2, 0),
            // none of the model, but busy with others: 0.0, then 6/3
            backend("c", &["m"]).with_in_flight(6),
            // none at all
            backend("d", &["m"]),
        ]);
        assert_eq!(ids(p.order(list)), ["d", "c", "b", "a"]);
        // A weight of 4 makes `a`'s 2.0 a 0.5, as `b`'s; then its 1 in
        // flight on 3 slots, over 4, beats `b`'s 2 on 12.
        let weights = BTreeMap::from([("a".to_string(), 4)]);
        let p = placement(Strategy::LeastBusy, &weights);
        for reversed in [false, true] {
            let mut list = records(vec![
                backend("b", &["m"])
                    .with_slots(12, 4)
                    .with_model_requests("m", 2, 0),
                backend("a", &["m"]).with_model_requests("m", 1, 1),
            ]);
            if reversed {
                list.reverse();
            }
            assert_eq!(ids(p.order(list)), ["a", "b"]);
        }
    }

    #[test]
    fn warm_first_warm_then_offloaded_then_cold_fit_then_any() {
        let none = BTreeMap::new();
        let p = placement(Strategy::WarmFirst, &none);
        let list = records(vec![
            backend("cold-no-vram", &["m"]).with_model_size("m", gib(4)),
            backend("cold-fits", &["m"])
                .with_vram(gib(24))
                .with_model_size("m", gib(4))
                .with_loaded_sized("other", gib(10), gib(10)),
            backend("offloaded", &["m"]).with_loaded_sized("m", gib(10), gib(6)),
            backend("warm-full", &["m"])
                .with_loaded("m", 4096)
                .with_model_requests("m", 1, 0),
            backend("warm", &["m"]).with_loaded("m", 4096),
        ]);
        assert_eq!(
            ids(p.order(list)),
            [
                "warm",
                "offloaded",
                "cold-fits",
                "cold-no-vram",
                "warm-full"
            ]
        );
    }

    #[test]
    fn a_cold_model_fits_only_without_evicting() {
        let none = BTreeMap::new();
        let p = Placement {
            num_ctx: Some(8192),
            ..placement(Strategy::WarmFirst, &none)
        };
        // 4 GiB x 1.2 + 8192 x 128 KiB = 4.8 + 1 GiB = 5.8 GiB needed.
        assert_eq!(needed_vram(gib(4), Some(8192)), 6227702579);
        let tight = backend("tight", &["m"])
            .with_vram(gib(16))
            .with_model_size("m", gib(4))
            .with_loaded_sized("other", gib(11), gib(11)); // 5 GiB free
        let roomy = backend("roomy", &["m"])
            .with_vram(gib(16))
            .with_model_size("m", gib(4))
            .with_loaded_sized("other", gib(10), gib(10)); // 6 GiB free
        let list = records(vec![tight, roomy]);
        assert_eq!(p.warm_tier(&list[0]), 3);
        assert_eq!(p.warm_tier(&list[1]), 2);
        assert_eq!(ids(p.order(list)), ["roomy", "tight"]);
        // Unknown size: nothing can be said, it is "any".
        let unknown = records(vec![backend("x", &["m"]).with_vram(gib(80))]);
        assert_eq!(p.warm_tier(&unknown[0]), 3);
    }

    #[test]
    fn a_runner_with_another_context_is_a_reload_unless_snapping_allows() {
        let none = BTreeMap::new();
        let exact = Placement {
            num_ctx: Some(4096),
            ..placement(Strategy::WarmFirst, &none)
        };
        let list = records(vec![
            backend("big-ctx", &["m"]).with_loaded("m", 8192),
            backend("same-ctx", &["m"]).with_loaded("m", 4096),
        ]);
        assert_eq!(ids(exact.order(list.clone())), ["same-ctx", "big-ctx"]);
        let snapping = Placement {
            snap_up_to: Some(i64::MAX),
            ..exact.clone()
        };
        assert_eq!(snapping.warm_tier(&list[0]), 0, "8192 >= 4096: snapped");
        let capped = Placement {
            snap_up_to: Some(6000),
            ..exact
        };
        assert_eq!(capped.warm_tier(&list[0]), 3, "not above the cap");
    }
}
