//! The admin endpoint: what an operator and an orchestrator ask llamagate,
//! on its own address (`admin_listen`, default `127.0.0.1:11435`), away from
//! the traffic port.
//!
//! - `GET /livez`: 200 `ok` while the process serves at all (liveness).
//! - `GET /readyz`: 200 when a configuration is loaded and at least one
//!   backend is up or half-open; else 503 naming why (readiness: a load
//!   balancer or Kubernetes sends no traffic to a llamagate that cannot serve).
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]).
//! - `GET /llamagate/status`: the status document ([`crate::admin::status`]).
//! - `GET /` and `/status`: the status page, which renders that document live
//!   ([`crate::admin::page`]; its own assets `/status.js`, `/status.css`).
//!
//! With an admin key (or an admin-scoped `[policy.keys]` entry) configured,
//! `/metrics` and `/llamagate/status` ask for one (`Authorization: Bearer KEY`,
//! else 401); the two health paths never do (probes cannot always send
//! headers, and they reveal nothing), nor does the page, which holds no
//! data: its script sends the key. Nothing
//! answered here holds a secret.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::json;

use crate::admin::status;
use crate::api::error::{json, text_response};
use crate::proxy::state::Gateway;
use crate::ResponseBody;

/// The content type of the metrics exposition.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers one request to the admin endpoint.
pub fn answer(
    gateway: &Gateway,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed");
    }
    match path {
        "/livez" => text_response(StatusCode::OK, "ok"),
        "/readyz" => readiness(gateway),
        "/metrics" | status::PATH => {
            let admin = gateway.current().settings.admin.clone();
            if admin.guarded() && !status::presents(&admin, headers) {
                let mut refused = text_response(StatusCode::UNAUTHORIZED, "401 unauthorized");
                refused
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return refused;
            }
            match path {
                "/metrics" => metrics(gateway),
                _ => status::response(gateway),
            }
        }
        _ => match crate::admin::page::asset(path) {
            Some(page) => page,
            None => text_response(StatusCode::NOT_FOUND, "404 page not found"),
        },
    }
}

/// Ready: a configuration is in force and some backend can take requests.
fn readiness(gateway: &Gateway) -> Response<ResponseBody> {
    let generation = gateway.current();
    let backends = generation.fleet.all();
    let usable = backends.iter().filter(|b| b.healthy()).count();
    let body = json!({
        "ready": usable > 0,
        "generation": generation.number,
        "backends": backends.len(),
        "usable": usable,
        "reason": (usable == 0).then_some("no backend is up"),
    });
    let status = if usable > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body, false)
}

/// The metrics, with the fleet's gauges read now.
fn metrics(gateway: &Gateway) -> Response<ResponseBody> {
    use crate::metrics::{BackendLabels, StateLabels};
    let generation = gateway.current();
    let m = &gateway.metrics;
    let admission = generation.fleet.admission();
    // Backends that left the configuration leave the gauges too.
    m.backend_state.clear();
    m.backend_in_flight.clear();
    m.backend_queued.clear();
    for backend in generation.fleet.all() {
        let view = backend.view();
        for state in ["up", "half-open", "open", "down"] {
            let labels = StateLabels {
                backend: backend.id.clone(),
                state: state.into(),
            };
            m.backend_state
                .get_or_create(&labels)
                .set(i64::from(view.state.as_str() == state));
        }
        let labels = BackendLabels {
            backend: backend.id.clone(),
        };
        m.backend_in_flight
            .get_or_create(&labels)
            .set(i64::from(view.in_flight));
        let queued = admission.backend_load(&backend.id).map_or(0, |l| l.queued);
        m.backend_queued
            .get_or_create(&labels)
            .set(i64::from(queued));
    }
    let stats = admission.stats();
    m.queue_depth.set(stats.depth as i64);
    m.queue_refused
        .set(stats.refused.queue_full + stats.refused.timed_out);
    let mut response = text_response(StatusCode::OK, "");
    *response.body_mut() = crate::full_body(bytes::Bytes::from(m.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    response
}
