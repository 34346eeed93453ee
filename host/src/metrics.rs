//! Prometheus metrics, counted as requests finish (`finish` in the pipeline)
//! and read from the fleet when scraped.
//!
//! Label sets are bounded: `endpoint` is one of the table's endpoints,
//! `backend` a configured id, `status` a class (`2xx`...), and `model` the
//! model the backend was asked for when some backend lists it, else `other`
//! (an alias or a model nobody has is the client's text: it must not make a
//! label). Names follow Prometheus conventions; where OpenTelemetry's GenAI
//! conventions name a measure, that name is used (`gen_ai_client_token_usage`,
//! `gen_ai_server_time_to_first_token_seconds`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The endpoint (`chat`, `openai_chat`, `tags`...).
    pub endpoint: &'static str,
    /// The model served, bounded (see the module doc); empty when none.
    pub model: String,
    /// The backend that answered; empty when none did.
    pub backend: String,
    /// `2xx`, `4xx`...
    pub status: &'static str,
}

/// Labels of measures per endpoint and model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The endpoint.
    pub endpoint: &'static str,
    /// The model served, bounded.
    pub model: String,
}

/// Labels of token counts (OpenTelemetry's attribute names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// `gen_ai.request.model`
    pub gen_ai_request_model: String,
    /// `gen_ai.token.type`: `input` (the prompt: `prompt_eval_count`,
    /// `prompt_tokens`) or `output` (the completion: `eval_count`,
    /// `completion_tokens`).
    pub gen_ai_token_type: &'static str,
}

/// Labels of counts per principal (who a request is for, as the policy
/// named it: with the default policy's keys, the key's name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalLabels {
    /// The principal, or `other` past [`MAX_PRINCIPALS`].
    pub principal: String,
    /// `2xx`, `4xx`...
    pub status: &'static str,
}

/// Labels of token counts per principal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalTokenLabels {
    /// The principal, or `other` past [`MAX_PRINCIPALS`].
    pub principal: String,
    /// `input` or `output`.
    pub gen_ai_token_type: &'static str,
}

/// Labels of a plugin's decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The plugin's name.
    pub plugin: String,
}

/// Labels of a plugin's failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFailureLabels {
    /// The plugin's name.
    pub plugin: String,
    /// `timeout`, `memory`, `trap`, `start`, `busy`.
    pub kind: &'static str,
}

/// Most distinct principals that get their own label; later ones count as
/// `other` (a plugin names principals, and a plugin's words must not grow the
/// metrics without bound).
pub const MAX_PRINCIPALS: usize = 256;

/// Labels of per-backend gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend's id.
    pub backend: String,
}

/// Labels of the backend state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The backend's id.
    pub backend: String,
    /// `up`, `half-open`, `open` or `down`.
    pub state: String,
}

/// Labels of reload counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `failed`.
    pub outcome: String,
}

/// The measures of one endpoint and model, looked up once per request (one
/// map lookup instead of one per measure, and no label made per request).
pub struct RouteMeters {
    /// `llamagate_request_duration_seconds`
    pub duration: Histogram,
    /// `llamagate_time_to_first_byte_seconds`
    pub first_byte: Histogram,
    /// `gen_ai_server_time_to_first_token_seconds`
    pub first_token: Histogram,
    /// `llamagate_output_tokens_per_second`
    pub tokens_per_second: Histogram,
    /// `llamagate_requests_cut_total`
    pub cut: Counter,
    /// `llamagate_tokens_total` and `gen_ai_client_token_usage`, input.
    pub input: (Counter, Histogram),
    /// The same, output.
    pub output: (Counter, Histogram),
}

/// Route meters by endpoint, then model.
type Routes = HashMap<&'static str, HashMap<String, Arc<RouteMeters>>>;

/// Every metric llamagate keeps.
pub struct Metrics {
    registry: Registry,
    /// `llamagate_requests_total`
    pub requests: Family<RequestLabels, Counter>,
    /// `llamagate_requests_cut_total`: answers that ended before their end
    /// (the client left, or the backend's stream broke).
    pub cut: Family<RouteLabels, Counter>,
    /// `llamagate_request_duration_seconds`
    pub duration: Family<RouteLabels, Histogram>,
    /// `llamagate_time_to_first_byte_seconds`: to the response head.
    pub first_byte: Family<RouteLabels, Histogram>,
    /// `gen_ai_server_time_to_first_token_seconds`
    pub first_token: Family<RouteLabels, Histogram>,
    /// `gen_ai_client_token_usage` (per request).
    pub token_usage: Family<TokenLabels, Histogram>,
    /// `llamagate_tokens_total`
    pub tokens: Family<TokenLabels, Counter>,
    /// `llamagate_output_tokens_per_second` (per request, generation only).
    pub tokens_per_second: Family<RouteLabels, Histogram>,
    /// `llamagate_reloads_total`
    pub reloads: Family<OutcomeLabels, Counter>,
    /// `llamagate_backend_state` (1 for the state it is in).
    pub backend_state: Family<StateLabels, Gauge>,
    /// `llamagate_backend_in_flight`
    pub backend_in_flight: Family<BackendLabels, Gauge>,
    /// `llamagate_backend_queued`
    pub backend_queued: Family<BackendLabels, Gauge>,
    /// `llamagate_queue_depth`
    pub queue_depth: Gauge,
    /// `llamagate_queue_wait_seconds`: each admitted request's wait for a slot
    /// (zero when one was free).
    pub queue_wait: Histogram,
    /// `llamagate_queue_refused_total` (as counted by the queue, set when scraped).
    pub queue_refused: Gauge<u64, AtomicU64>,
    /// `llamagate_principal_requests_total`
    pub principal_requests: Family<PrincipalLabels, Counter>,
    /// `llamagate_principal_tokens_total`
    pub principal_tokens: Family<PrincipalTokenLabels, Counter>,
    /// Principals that have a label of their own.
    principals: Mutex<HashSet<String>>,
    /// The meters of each endpoint and model seen.
    routes: RwLock<Routes>,
    /// `llamagate_plugin_decision_seconds`: time of each plugin's
    /// `on-request` for a request, waiting for a call slot included.
    pub plugin_seconds: Family<PluginLabels, Histogram>,
    /// `llamagate_plugin_failures_total`
    pub plugin_failures: Family<PluginFailureLabels, Counter>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ]
    .into_iter()
}

fn token_buckets() -> impl Iterator<Item = f64> {
    // OpenTelemetry's advice for gen_ai.client.token.usage.
    [
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let seconds = || Histogram::new(seconds_buckets());
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            cut: Family::default(),
            duration: Family::new_with_constructor(seconds),
            first_byte: Family::new_with_constructor(seconds),
            first_token: Family::new_with_constructor(seconds),
            token_usage: Family::new_with_constructor(|| Histogram::new(token_buckets())),
            tokens: Family::default(),
            tokens_per_second: Family::new_with_constructor(|| {
                Histogram::new([1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0])
            }),
            reloads: Family::default(),
            backend_state: Family::default(),
            backend_in_flight: Family::default(),
            backend_queued: Family::default(),
            queue_depth: Gauge::default(),
            queue_wait: Histogram::new([
                0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            queue_refused: Gauge::default(),
            principal_requests: Family::default(),
            principal_tokens: Family::default(),
            principals: Mutex::default(),
            routes: RwLock::default(),
            plugin_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                ])
            }),
            plugin_failures: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "llamagate_requests",
            "Requests answered, by endpoint, model, backend and status class",
            m.requests.clone(),
        );
        r.register(
            "llamagate_requests_cut",
            "Answers that ended before their end (client gone, stream broken or stalled)",
            m.cut.clone(),
        );
        r.register(
            "llamagate_request_duration_seconds",
            "Time from the request's arrival to the end of its answer",
            m.duration.clone(),
        );
        r.register(
            "llamagate_time_to_first_byte_seconds",
            "Time from the request's arrival to its response head",
            m.first_byte.clone(),
        );
        r.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request's arrival to its first generated content",
            m.first_token.clone(),
        );
        r.register(
            "gen_ai_client_token_usage",
            "Tokens per request, by model and type (input: prompt, output: completion)",
            m.token_usage.clone(),
        );
        r.register(
            "llamagate_tokens",
            "Tokens counted, by model and type",
            m.tokens.clone(),
        );
        r.register(
            "llamagate_output_tokens_per_second",
            "Completion tokens per second of generation, per request",
            m.tokens_per_second.clone(),
        );
        r.register(
            "llamagate_reloads",
            "Configuration reloads, by outcome",
            m.reloads.clone(),
        );
        r.register(
            "llamagate_backend_state",
            "1 for the state each backend is in (up, half-open, open, down)",
            m.backend_state.clone(),
        );
        r.register(
            "llamagate_backend_in_flight",
            "Requests in flight to each backend",
            m.backend_in_flight.clone(),
        );
        r.register(
            "llamagate_backend_queued",
            "Requests waiting for a slot that could go to each backend",
            m.backend_queued.clone(),
        );
        r.register(
            "llamagate_queue_depth",
            "Requests waiting for a slot",
            m.queue_depth.clone(),
        );
        r.register(
            "llamagate_queue_wait_seconds",
            "Each admitted request's wait for a backend slot (0 when one was free)",
            m.queue_wait.clone(),
        );
        r.register(
            "llamagate_queue_refused",
            "Requests refused with 429 by the queue since start",
            m.queue_refused.clone(),
        );
        r.register(
            "llamagate_principal_requests",
            "Requests by principal (the default policy's key name) and status class",
            m.principal_requests.clone(),
        );
        r.register(
            "llamagate_principal_tokens",
            "Tokens by principal and type",
            m.principal_tokens.clone(),
        );
        r.register(
            "llamagate_plugin_decision_seconds",
            "Time of each plugin's decision for a request, waiting for a call slot included",
            m.plugin_seconds.clone(),
        );
        r.register(
            "llamagate_plugin_failures",
            "Plugin calls that failed, by plugin and kind",
            m.plugin_failures.clone(),
        );
        m
    }
}

impl Metrics {
    /// The meters of `endpoint` and `model` (a bounded label), made on first use.
    pub fn route(&self, endpoint: &'static str, model: &str) -> Arc<RouteMeters> {
        {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(meters) = routes.get(endpoint).and_then(|m| m.get(model)) {
                return meters.clone();
            }
        }
        let route = RouteLabels {
            endpoint,
            model: model.to_string(),
        };
        let tokens = |kind: &'static str| {
            let labels = TokenLabels {
                gen_ai_request_model: model.to_string(),
                gen_ai_token_type: kind,
            };
            (
                self.tokens.get_or_create(&labels).clone(),
                self.token_usage.get_or_create(&labels).clone(),
            )
        };
        let meters = Arc::new(RouteMeters {
            duration: self.duration.get_or_create(&route).clone(),
            first_byte: self.first_byte.get_or_create(&route).clone(),
            first_token: self.first_token.get_or_create(&route).clone(),
            tokens_per_second: self.tokens_per_second.get_or_create(&route).clone(),
            cut: self.cut.get_or_create(&route).clone(),
            input: tokens("input"),
            output: tokens("output"),
        });
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(endpoint)
            .or_default()
            .entry(model.to_string())
            .or_insert(meters)
            .clone()
    }

    /// Counts a request and its tokens (`(input, output)`, when the answer
    /// said) for `principal` (bounded: see [`MAX_PRINCIPALS`]).
    pub fn count_principal(
        &self,
        principal: &str,
        status: &'static str,
        tokens: (Option<u64>, Option<u64>),
    ) {
        let principal = {
            let mut known = self.principals.lock().unwrap_or_else(|e| e.into_inner());
            if known.contains(principal) {
                principal.to_string()
            } else if known.len() < MAX_PRINCIPALS {
                known.insert(principal.to_string());
                principal.to_string()
            } else {
                "other".to_string()
            }
        };
        self.principal_requests
            .get_or_create(&PrincipalLabels {
                principal: principal.clone(),
                status,
            })
            .inc();
        for (kind, n) in [("input", tokens.0), ("output", tokens.1)] {
            if let Some(n) = n {
                self.principal_tokens
                    .get_or_create(&PrincipalTokenLabels {
                        principal: principal.clone(),
                        gen_ai_token_type: kind,
                    })
                    .inc_by(n);
            }
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `2xx`, `4xx`... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
