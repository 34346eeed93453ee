//! What the status page shows beside the fleet: the last requests that
//! failed, and counts per model (requests, tokens) since start.
//!
//! Fed once per request by the pipeline's `finish` phase ([`Recent::add`],
//! beside the metrics), read by the status document (`admin::status`). Bounded: the ring keeps the last [`KEPT`]
//! failures, each field cut to a few hundred bytes; counts are kept per
//! model *label* (a model some backend lists, `other`, or empty), the same
//! bounded set the metrics use, so a client inventing names cannot grow it.
//!
//! Nothing kept here is a secret: backend URLs in failure reasons are shown
//! without their userinfo ([`crate::upstream::BackendError`]), and request
//! headers are not kept at all (only the request id).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::proxy::tokens::Usage;
use crate::upstream::Attempts;

/// How many failed requests the ring keeps.
pub const KEPT: usize = 50;

/// Longest model name or request id kept (bytes, cut at a character boundary).
const NAME_CAP: usize = 128;
/// Longest reason kept.
const REASON_CAP: usize = 300;

/// One request that ended with an error status or was cut short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failed {
    /// When it ended, Unix milliseconds.
    pub at_ms: u64,
    /// Its `x-request-id`.
    pub id: String,
    /// The endpoint's metric name (`chat`, `openai_chat`...).
    pub endpoint: &'static str,
    /// The model served, else the one asked for (the client's text), else empty.
    pub model: String,
    /// The backend that answered; empty when none did.
    pub backend: String,
    /// The status sent to the client.
    pub status: u16,
    /// Whether the answer ended before its end (client gone, stream broken).
    pub cut: bool,
    /// In a few words: the failed attempts, else the status's reason phrase.
    pub reason: String,
}

/// Counts for one model label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelCounts {
    /// Requests finished.
    pub requests: u64,
    /// Of those, ended with an error status or cut.
    pub errors: u64,
    /// Prompt tokens reported.
    pub input_tokens: u64,
    /// Generated tokens reported.
    pub output_tokens: u64,
}

/// What a finished request tells this module (taken from its record).
#[derive(Clone, Debug, Default)]
pub struct Outcome<'a> {
    /// See [`Failed::id`].
    pub id: &'a str,
    /// See [`Failed::endpoint`].
    pub endpoint: &'static str,
    /// The model as a metric label (bounded).
    pub label: &'a str,
    /// The model the backend was asked for.
    pub served: Option<&'a str>,
    /// The model the client asked for (its text).
    pub asked: Option<&'a str>,
    /// See [`Failed::backend`].
    pub backend: Option<&'a str>,
    /// See [`Failed::status`].
    pub status: u16,
    /// Whether the whole answer was sent.
    pub complete: bool,
    /// The backends tried that failed (worded only when the request is kept).
    pub attempts: Option<&'a Attempts>,
    /// Tokens the answer reported.
    pub usage: Option<Usage>,
}

/// The ring and the counts; one per process, kept across reloads.
#[derive(Debug, Default)]
pub struct Recent {
    requests: AtomicU64,
    errors: AtomicU64,
    failed: Mutex<VecDeque<Failed>>,
    models: Mutex<BTreeMap<String, ModelCounts>>,
}

/// A copy of what [`Recent`] holds, for the status document.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Requests finished since start.
    pub requests: u64,
    /// Of those, ended with an error status or cut.
    pub errors: u64,
    /// Counts per model label, by label.
    pub models: Vec<ModelRow>,
    /// The last failures, newest first.
    pub errors_recent: Vec<Failed>,
}

/// One model's counts, named.
#[derive(Clone, Debug, Serialize)]
pub struct ModelRow {
    /// The label (`llama3.2:latest`, `other`).
    pub model: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: ModelCounts,
}

impl Recent {
    /// Counts `outcome`, and keeps it when it failed.
    pub fn add(&self, outcome: Outcome<'_>) {
        let failed = outcome.status >= 400 || !outcome.complete;
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if !outcome.label.is_empty() {
            let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
            let counts = match models.get_mut(outcome.label) {
                Some(counts) => counts,
                None => models.entry(outcome.label.to_string()).or_default(),
            };
            counts.requests += 1;
            counts.errors += u64::from(failed);
            if let Some(usage) = &outcome.usage {
                counts.input_tokens += usage.prompt_tokens.unwrap_or(0);
                counts.output_tokens += usage.completion_tokens.unwrap_or(0);
            }
        }
        if !failed {
            return;
        }
        let reason = reason(&outcome);
        let entry = Failed {
            at_ms: unix_ms(),
            id: cut(outcome.id, NAME_CAP),
            endpoint: outcome.endpoint,
            model: cut(outcome.served.or(outcome.asked).unwrap_or(""), NAME_CAP),
            backend: cut(outcome.backend.unwrap_or(""), NAME_CAP),
            status: outcome.status,
            cut: !outcome.complete,
            reason,
        };
        let mut ring = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// What is held now.
    pub fn snapshot(&self) -> Snapshot {
        let models = self
            .models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(model, counts)| ModelRow {
                model: model.clone(),
                counts: *counts,
            })
            .collect();
        let errors_recent = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect();
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            models,
            errors_recent,
        }
    }
}

/// The failed attempts, else the status's reason phrase; `cut short` added
/// when the answer did not end.
fn reason(outcome: &Outcome<'_>) -> String {
    let mut reason = if let Some(attempts) = outcome.attempts.filter(|a| !a.0.is_empty()) {
        attempts.to_string()
    } else if outcome.status >= 400 {
        http::StatusCode::from_u16(outcome.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_string()
    } else {
        String::new()
    };
    if !outcome.complete {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str("cut short (the client left, or the stream broke or stalled)");
    }
    cut(&reason, REASON_CAP)
}

/// `text` cut to at most `cap` bytes at a character boundary, `…` marking a cut.
fn cut(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_string();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(label: &str, input: u64, output: u64) -> Outcome<'_> {
        Outcome {
            id: "r",
            endpoint: "chat",
            label,
            served: Some(label),
            backend: Some("a"),
            status: 200,
            complete: true,
            usage: Some(Usage {
                prompt_tokens: Some(input),
                completion_tokens: Some(output),
                ..Usage::default()
            }),
            ..Outcome::default()
        }
    }

    #[test]
    fn counts_tokens_per_model_and_keeps_only_failures() {
        let recent = Recent::default();
        recent.add(ok("llama3.2:latest", 10, 5));
        recent.add(ok("llama3.2:latest", 1, 2));
        recent.add(ok("", 100, 100)); // no model: no row
        recent.add(Outcome {
            id: "lg-1",
            endpoint: "chat",
            label: "other",
            asked: Some("made-up"),
            status: 404,
            complete: true,
            ..Outcome::default()
        });
        let s = recent.snapshot();
        assert_eq!((s.requests, s.errors), (4, 1));
        let models: Vec<_> = s
            .models
            .iter()
            .map(|r| (r.model.as_str(), r.counts))
            .collect();
        assert_eq!(
            models,
            [
                (
                    "llama3.2:latest",
                    ModelCounts {
                        requests: 2,
                        errors: 0,
                        input_tokens: 11,
                        output_tokens: 7
                    }
                ),
                (
                    "other",
                    ModelCounts {
                        requests: 1,
                        errors: 1,
                        ..ModelCounts::default()
                    }
                ),
            ]
        );
        assert_eq!(s.errors_recent.len(), 1);
        let e = &s.errors_recent[0];
        assert_eq!(
            (e.id.as_str(), e.model.as_str(), e.status, e.reason.as_str()),
            ("lg-1", "made-up", 404, "Not Found")
        );
    }

    #[test]
    fn the_ring_is_bounded_newest_first_and_fields_are_cut() {
        let recent = Recent::default();
        let long = "é".repeat(1000);
        let attempts = Attempts(vec![crate::upstream::BackendError {
            id: long.clone(),
            url: "http://h:1".into(),
            failure: crate::upstream::Failure::TimedOut(std::time::Duration::from_secs(1)),
        }]);
        for i in 0..(KEPT + 7) {
            let id = i.to_string();
            recent.add(Outcome {
                id: &id,
                endpoint: "generate",
                asked: Some(&long),
                status: 200,
                complete: false,
                attempts: Some(&attempts),
                ..Outcome::default()
            });
        }
        let s = recent.snapshot();
        assert_eq!(s.errors_recent.len(), KEPT);
        assert_eq!(s.errors_recent[0].id, (KEPT + 6).to_string());
        assert_eq!(s.errors_recent[KEPT - 1].id, "7");
        let e = &s.errors_recent[0];
        assert!(e.cut);
        assert!(
            e.model.len() <= NAME_CAP + '…'.len_utf8(),
            "{}",
            e.model.len()
        );
        assert!(e.reason.len() <= REASON_CAP + '…'.len_utf8());
        assert!(e.reason.ends_with('…'));
    }

    #[test]
    fn a_cut_answer_says_so() {
        let recent = Recent::default();
        let attempts = Attempts(vec![crate::upstream::BackendError {
            id: "a".into(),
            url: "http://h:1".into(),
            failure: crate::upstream::Failure::Answered(http::StatusCode::BAD_GATEWAY),
        }]);
        recent.add(Outcome {
            status: 502,
            complete: false,
            attempts: Some(&attempts),
            ..Outcome::default()
        });
        let r = &recent.snapshot().errors_recent[0].reason;
        assert!(r.starts_with("backend \"a\""), "{r}");
        assert!(r.contains("cut short"), "{r}");
    }
}
