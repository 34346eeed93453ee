//! A pull or a delete sent to every backend the policy chose for it, at once.
//!
//! A model with three replicas is pulled on all three, and a delete removes it
//! from each backend that has it. (With one backend chosen, the call is an
//! ordinary forward and its answer passes through byte for byte.)
//!
//! A streamed pull's progress is merged into one NDJSON stream a client's
//! progress bar can follow: a status line (`pulling manifest`, `verifying
//! sha256 digest`...) is passed on the first time any backend sends it; a
//! download line carries, per digest, the sums of `total` and `completed`
//! over the backends, so the bar moves smoothly from 0 to 100% of all the
//! bytes the fleet fetches. The last line says how it went: `{"status":
//! "success", "backends": [...]}` when every backend succeeded, or an
//! `{"error": ...}` line naming each backend that failed and why, with
//! `succeeded` and `failed` beside it. A backend that succeeded has its model
//! list updated before that line is sent ([`crate::proxy::model_change`]).
//!
//! Without streaming (a pull with `stream: false`, every delete) the answer
//! comes once all backends have answered: 200 when all succeeded (for a
//! delete, a backend that did not have the model counts as done, unless none
//! had it: then its 404 is the answer), else the first failure's status with
//! the same `error`, `succeeded` and `failed` fields.
//!
//! Neither call is ever sent twice to a backend: a backend that cannot be
//! reached is reported as failed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::api::endpoint::Endpoint;
use crate::fleet::{BackendState, ModelChange, Pass};
use crate::proxy::listing_cache::Listings;
use crate::proxy::model_change::Learned;
use crate::upstream::{cause, BackendError, Failure, Upstream};
use crate::ResponseBody;

/// The longest progress line or error body read from a backend.
const MAX_LINE: usize = 64 << 10;

/// A call to send to several backends.
pub struct Call<'a> {
    /// Pull or delete.
    pub endpoint: Endpoint,
    /// Method, path and query, headers and body as the backend gets them.
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The body (already edited by the policy).
    pub body: Bytes,
    /// Whether the client asked for a progress stream.
    pub streaming: bool,
    /// What success changes on a backend.
    pub change: Option<ModelChange>,
}

/// Whether `endpoint` is sent to every chosen backend.
pub fn applies(endpoint: Endpoint, candidates: usize) -> bool {
    candidates > 1 && matches!(endpoint, Endpoint::Pull | Endpoint::Delete)
}

/// How one backend's part ended.
#[derive(Debug, Clone)]
enum Outcome {
    Done,
    /// For a delete: the backend did not have the model (404).
    Absent(StatusCode, Bytes),
    Failed {
        status: Option<StatusCode>,
        message: String,
    },
}

/// Sends `call` to every backend of `backends` and answers for all of them.
pub async fn serve(
    upstream: &Upstream,
    listings: &Arc<Listings>,
    backends: Vec<Arc<BackendState>>,
    call: Call<'_>,
    probe_timeout: Duration,
) -> Response<ResponseBody> {
    let sends = backends.iter().map(|backend| {
        let body = http_body_util::Full::new(call.body.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        let sent = upstream.send(&**backend, call.method, call.path, call.headers, body);
        async move {
            let in_flight = backend.start_request();
            let sent = sent.await;
            match &sent {
                Ok(_) => backend.succeeded(Pass::Normal),
                Err(e) => backend.failed(&Failure::of_client(e), Pass::Normal),
            }
            (sent, in_flight)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let learn = |backend: &Arc<BackendState>| {
        if let Some(change) = &call.change {
            Learned {
                backend: backend.clone(),
                change: change.clone(),
                listings: listings.clone(),
                upstream: upstream.clone(),
                probe_timeout,
            }
            .apply();
        }
    };
    let mut streams = Vec::new();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; backends.len()];
    for (i, (sent, in_flight)) in answers.into_iter().enumerate() {
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                let error = BackendError::at(&*backends[i], Failure::of_client(&err));
                outcomes[i] = Some(Outcome::Failed {
                    status: None,
                    message: error.to_string(),
                });
                continue;
            }
        };
        let status = response.status();
        if status.is_success() && call.streaming {
            streams.push((i, response.into_body(), in_flight));
            continue;
        }
        let body = read_bounded(response.into_body()).await;
        outcomes[i] = Some(match (status.is_success(), body) {
            (true, Ok(body)) => match error_of(&body) {
                // A 200 whose body is an error line (a pull with stream:false).
                Some(message) => Outcome::Failed {
                    status: None,
                    message,
                },
                None => Outcome::Done,
            },
            (false, Ok(body))
                if status == StatusCode::NOT_FOUND && call.endpoint == Endpoint::Delete =>
            {
                Outcome::Absent(status, body)
            }
            (false, Ok(body)) => Outcome::Failed {
                status: Some(status),
                message: error_of(&body).unwrap_or_else(|| status.to_string()),
            },
            (_, Err(message)) => Outcome::Failed {
                status: None,
                message,
            },
        });
    }
    if streams.is_empty() {
        let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
        for (backend, outcome) in backends.iter().zip(&outcomes) {
            if matches!(outcome, Outcome::Done | Outcome::Absent(..)) {
                learn(backend);
            }
        }
        return answered(&backends, &outcomes);
    }
    merged(
        backends,
        outcomes,
        streams,
        learn_all(call.change, listings, upstream, probe_timeout),
    )
}

/// The update made for every backend whose part succeeded, for the stream's task.
fn learn_all(
    change: Option<ModelChange>,
    listings: &Arc<Listings>,
    upstream: &Upstream,
    probe_timeout: Duration,
) -> impl Fn(&Arc<BackendState>) + Send + 'static {
    let listings = listings.clone();
    let upstream = upstream.clone();
    move |backend: &Arc<BackendState>| {
        if let Some(change) = &change {
            Learned {
                backend: backend.clone(),
                change: change.clone(),
                listings: listings.clone(),
                upstream: upstream.clone(),
                probe_timeout,
            }
            .apply();
        }
    }
}

/// The one answer for calls that did not stream.
fn answered(backends: &[Arc<BackendState>], outcomes: &[Outcome]) -> Response<ResponseBody> {
    let all_absent = outcomes.iter().all(|o| matches!(o, Outcome::Absent(..)));
    if all_absent {
        if let Some(Outcome::Absent(status, body)) = outcomes.first() {
            return bytes_response(*status, body.clone(), "application/json; charset=utf-8");
        }
    }
    let failed = outcomes.iter().any(|o| matches!(o, Outcome::Failed { .. }));
    if !failed {
        let ids: Vec<&str> = backends.iter().map(|b| b.id.as_str()).collect();
        return json_response(
            StatusCode::OK,
            &json!({"status": "success", "backends": ids}),
        );
    }
    let status = outcomes
        .iter()
        .find_map(|o| match o {
            Outcome::Failed { status, .. } => Some(status.unwrap_or(StatusCode::BAD_GATEWAY)),
            _ => None,
        })
        .unwrap_or(StatusCode::BAD_GATEWAY);
    json_response(status, &summary(backends, outcomes))
}

/// `{"error": ..., "succeeded": [...], "failed": [...]}` for a call that
/// failed somewhere, or `{"status": "success", "backends": [...]}`.
fn summary(backends: &[Arc<BackendState>], outcomes: &[Outcome]) -> Value {
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for (backend, outcome) in backends.iter().zip(outcomes) {
        match outcome {
            Outcome::Done | Outcome::Absent(..) => succeeded.push(backend.id.clone()),
            Outcome::Failed { message, .. } => failed.push((backend.id.clone(), message.clone())),
        }
    }
    if failed.is_empty() {
        return json!({"status": "success", "backends": succeeded});
    }
    let words: Vec<String> = failed
        .iter()
        .map(|(id, message)| format!("{id:?}: {message}"))
        .collect();
    json!({
        "error": format!(
            "done on {} of {} backends; failed on {}",
            succeeded.len(),
            backends.len(),
            words.join("; ")
        ),
        "succeeded": succeeded,
        "failed": failed.iter()
            .map(|(id, message)| json!({"backend": id, "error": message}))
            .collect::<Vec<_>>(),
    })
}

/// One event of a backend's progress stream.
enum Event {
    Line(usize, Value),
    End(usize, Result<(), String>),
}

/// The merged progress stream of the backends in `streams`.
fn merged(
    backends: Vec<Arc<BackendState>>,
    mut outcomes: Vec<Option<Outcome>>,
    streams: Vec<(usize, hyper::body::Incoming, crate::fleet::InFlight)>,
    learn: impl Fn(&Arc<BackendState>) + Send + 'static,
) -> Response<ResponseBody> {
    let (out, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (events, mut incoming) = tokio::sync::mpsc::channel::<Event>(64);
    for (i, body, in_flight) in streams {
        let events = events.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let end = read_lines(body, i, &events).await;
            let _ = events.send(Event::End(i, end)).await;
        });
    }
    drop(events);
    tokio::spawn(async move {
        let mut said: HashSet<String> = HashSet::new();
        // digest -> backend -> (total, completed)
        let mut downloads: BTreeMap<String, BTreeMap<usize, (u64, u64)>> = BTreeMap::new();
        let mut succeeded: HashSet<usize> = HashSet::new();
        while let Some(event) = incoming.recv().await {
            let line = match event {
                Event::End(i, end) => {
                    if outcomes[i].is_none() {
                        outcomes[i] = Some(match end {
                            Ok(()) if succeeded.contains(&i) => Outcome::Done,
                            Ok(()) => Outcome::Failed {
                                status: None,
                                message: "its progress stream ended without success".into(),
                            },
                            Err(message) => Outcome::Failed {
                                status: None,
                                message,
                            },
                        });
                    }
                    None
                }
                Event::Line(i, line) => {
                    if let Some(message) = line.get("error").and_then(Value::as_str) {
                        outcomes[i] = Some(Outcome::Failed {
                            status: None,
                            message: message.to_string(),
                        });
                        None
                    } else {
                        progress(i, &line, &mut said, &mut downloads, &mut succeeded)
                    }
                }
            };
            if let Some(line) = line {
                if out.send(line).await.is_err() {
                    return; // The client went away.
                }
            }
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Failed {
                    status: None,
                    message: "no answer".into(),
                })
            })
            .collect();
        for (backend, outcome) in backends.iter().zip(&outcomes) {
            if matches!(outcome, Outcome::Done) {
                learn(backend);
            }
        }
        let mut last = summary(&backends, &outcomes).to_string();
        last.push('\n');
        let _ = out.send(Bytes::from(last)).await;
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((
            Ok::<_, crate::BoxError>(http_body::Frame::data(chunk)),
            receiver,
        ))
    });
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The merged line for backend `i`'s progress `line`, if one is due.
fn progress(
    i: usize,
    line: &Value,
    said: &mut HashSet<String>,
    downloads: &mut BTreeMap<String, BTreeMap<usize, (u64, u64)>>,
    succeeded: &mut HashSet<usize>,
) -> Option<Bytes> {
    let status = line.get("status").and_then(Value::as_str).unwrap_or("");
    if status == "success" {
        succeeded.insert(i);
        return None;
    }
    if let Some(digest) = line.get("digest").and_then(Value::as_str) {
        let total = line.get("total").and_then(Value::as_u64).unwrap_or(0);
        let completed = line.get("completed").and_then(Value::as_u64).unwrap_or(0);
        let per_backend = downloads.entry(digest.to_string()).or_default();
        per_backend.insert(i, (total, completed));
        let (total, completed) = per_backend
            .values()
            .fold((0, 0), |(t, c), (bt, bc)| (t + bt, c + bc));
        let mut merged = json!({"status": status, "digest": digest, "total": total});
        if completed > 0 {
            merged["completed"] = json!(completed);
        }
        let mut text = merged.to_string();
        text.push('\n');
        return Some(Bytes::from(text));
    }
    if !said.insert(status.to_string()) {
        return None;
    }
    let mut text = line.to_string();
    text.push('\n');
    Some(Bytes::from(text))
}

/// Reads `body` line by line into `events`; the error that ended it, if any.
async fn read_lines(
    mut body: hyper::body::Incoming,
    i: usize,
    events: &tokio::sync::mpsc::Sender<Event>,
) -> Result<(), String> {
    let mut pending = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Err(format!("its stream broke: {}", cause(&err))),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(at + 1);
            if let Ok(value) = serde_json::from_slice::<Value>(&line) {
                if events.send(Event::Line(i, value)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if pending.len() > MAX_LINE {
            pending.clear();
        }
    }
    if let Ok(value) = serde_json::from_slice::<Value>(&pending) {
        let _ = events.send(Event::Line(i, value)).await;
    }
    Ok(())
}

/// A whole small body (an answer or an error), at most [`MAX_LINE`] bytes kept.
async fn read_bounded(mut body: hyper::body::Incoming) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("its answer broke: {}", cause(&e)))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() < MAX_LINE {
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(buf.freeze())
}

/// The `error` of a JSON body (the last line, for a progress stream).
fn error_of(body: &[u8]) -> Option<String> {
    let last = body
        .split(|&b| b == b'\n')
        .rfind(|line| !line.iter().all(u8::is_ascii_whitespace))?;
    let value: Value = serde_json::from_slice(last).ok()?;
    value.get("error")?.as_str().map(str::to_string)
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    bytes_response(
        status,
        Bytes::from(value.to_string()),
        "application/json; charset=utf-8",
    )
}

fn bytes_response(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
) -> Response<ResponseBody> {
    let body = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_lines_carry_the_sums_over_backends() {
        let mut said = HashSet::new();
        let mut downloads = BTreeMap::new();
        let mut succeeded = HashSet::new();
        let mut line = |i, v: Value| {
            progress(i, &v, &mut said, &mut downloads, &mut succeeded)
                .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        };
        assert_eq!(
            line(0, json!({"status": "pulling manifest"})),
            Some(json!({"status": "pulling manifest"}))
        );
        assert_eq!(line(1, json!({"status": "pulling manifest"})), None);
        let d = "sha256:aa";
        let a = line(
            0,
            json!({"status": "pulling aa", "digest": d, "total": 100, "completed": 10}),
        );
        assert_eq!(a.unwrap()["completed"], 10);
        let b = line(
            1,
            json!({"status": "pulling aa", "digest": d, "total": 100, "completed": 30}),
        );
        let b = b.unwrap();
        assert_eq!(
            (b["total"].as_u64(), b["completed"].as_u64()),
            (Some(200), Some(40))
        );
        assert_eq!(line(0, json!({"status": "success"})), None);
        assert!(succeeded.contains(&0));
    }

    #[test]
    fn the_error_of_a_body_is_its_last_lines() {
        assert_eq!(
            error_of(b"{\"status\":\"x\"}\n{\"error\":\"no space\"}\n"),
            Some("no space".into())
        );
        assert_eq!(error_of(b"{\"status\":\"success\"}"), None);
        assert_eq!(error_of(b""), None);
    }
}
