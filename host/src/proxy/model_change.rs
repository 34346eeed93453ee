//! After a pull, create, copy or delete through llamagate succeeds, the fleet
//! knows at once: `ollama pull x && ollama run x` works, and a deleted model
//! is a 404 on the next request, without waiting for a probe.
//!
//! How: the backend that served the call has its model list updated directly
//! ([`BackendState::learn`]: the model added, or removed) the moment success
//! is seen, the merged listings are dropped, and that backend is re-probed in
//! the background for the exact state (loaded models, names as it lists
//! them). Success is a 2xx answer for a call that does not stream; for a
//! stream (NDJSON progress), the `{"status":"success"}` line — the update is
//! made before that line is passed to the client, so a client that acts on
//! it finds the model routable. A stream that ends with an error line
//! changes nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::api::endpoint::{Changes, Endpoint, Row};
use crate::api::json::Object;
use crate::fleet::{BackendState, ModelChange};
use crate::proxy::listing_cache::Listings;
use crate::proxy::relay::Framing;
use crate::upstream::Upstream;
use crate::{BoxError, ResponseBody};

/// The longest progress line looked at: the success line is short, and a
/// longer line need not be kept.
const MAX_LINE: usize = 256;

/// The change a management call makes if it succeeds: `model` is the model
/// the backend was asked about (after aliases), `body` the forwarded body
/// (a copy's `destination` is read from it).
pub fn change_of(
    endpoint: Endpoint,
    model: Option<&str>,
    body: Option<&[u8]>,
) -> Option<ModelChange> {
    match Row::of(endpoint).changes {
        Changes::AddsModel => Some(ModelChange::Added(model?.to_string())),
        Changes::RemovesModel => Some(ModelChange::Removed(model?.to_string())),
        Changes::AddsDestination => destination(body?).map(ModelChange::Added),
        Changes::Nothing => None,
    }
}

/// A copy's `destination`, read as Ollama reads it ([`Object::scan`]);
/// `None` when it is missing or could be read two ways.
fn destination(body: &[u8]) -> Option<String> {
    let object = Object::scan(body, &["destination"]).ok()?;
    serde_json::from_str(object.get("destination")?.get()).ok()
}

/// What to update once a management call succeeds on `backend`.
pub struct Learned {
    /// The backend that served the call.
    pub backend: Arc<BackendState>,
    /// What the call changes there.
    pub change: ModelChange,
    /// The generation's listings, dropped when the change is applied.
    pub listings: Arc<Listings>,
    /// The client for the re-probe.
    pub upstream: Upstream,
    /// How long the re-probe may take.
    pub probe_timeout: Duration,
}

impl Learned {
    /// Applies the change now: the backend's models, the listings, and a
    /// re-probe of the backend in the background.
    pub fn apply(self) {
        tracing::debug!(backend = %self.backend.id, change = ?self.change, "model list updated");
        self.backend.learn(&self.change);
        self.listings.invalidate();
        tokio::spawn(async move {
            self.backend.probe(&self.upstream, self.probe_timeout).await;
            self.listings.invalidate();
        });
    }

    /// Passes `response` on, applying the change when it shows success: at
    /// once for a 2xx that does not stream, or when an NDJSON stream's
    /// `{"status":"success"}` line goes by.
    pub fn once_succeeded(self, response: Response<ResponseBody>) -> Response<ResponseBody> {
        if !response.status().is_success() {
            return response;
        }
        if Framing::of(response.headers()) != Framing::Ndjson {
            self.apply();
            return response;
        }
        response.map(|inner| {
            WatchSuccess {
                inner,
                line: Vec::new(),
                long: false,
                learned: Some(self),
            }
            .boxed_unsync()
        })
    }
}

/// An NDJSON body that applies a [`Learned`] when its success line passes.
struct WatchSuccess {
    inner: ResponseBody,
    /// The current line so far (up to [`MAX_LINE`] bytes).
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: not the success line.
    long: bool,
    learned: Option<Learned>,
}

impl WatchSuccess {
    fn scan(&mut self, data: &[u8]) {
        let mut rest = data;
        while self.learned.is_some() && !rest.is_empty() {
            let (part, ended) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            if self.line.len() + part.len() > MAX_LINE {
                self.long = true;
            } else if !self.long {
                self.line.extend_from_slice(part);
            }
            match ended {
                Some(next) => {
                    self.end_line();
                    rest = &rest[next..];
                }
                None => break,
            }
        }
    }

    fn end_line(&mut self) {
        if !self.long && is_success(&self.line) {
            if let Some(learned) = self.learned.take() {
                learned.apply();
            }
        }
        self.line.clear();
        self.long = false;
    }
}

/// Whether a progress line is Ollama's last line of a successful pull or create.
fn is_success(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Progress<'a> {
        status: Option<&'a str>,
        error: Option<serde::de::IgnoredAny>,
    }
    matches!(
        serde_json::from_slice::<Progress>(line.trim_ascii()),
        Ok(Progress {
            status: Some("success"),
            error: None
        })
    )
}

impl Body for WatchSuccess {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.scan(&data);
                }
            }
            // A last line without its newline counts too.
            Poll::Ready(None) => self.end_line(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_call_changes() {
        let added = |m: &str| Some(ModelChange::Added(m.into()));
        assert_eq!(change_of(Endpoint::Pull, Some("x"), None), added("x"));
        assert_eq!(change_of(Endpoint::Create, Some("x"), None), added("x"));
        assert_eq!(
            change_of(Endpoint::Delete, Some("x"), None),
            Some(ModelChange::Removed("x".into()))
        );
        let copy = br#"{"source":"a","destination":"b"}"#;
        assert_eq!(change_of(Endpoint::Copy, None, Some(copy)), added("b"));
        // Another spelling, or twice: not read (the next probe learns it).
        for body in [
            &br#"{"source":"a","Destination":"b"}"#[..],
            br#"{"source":"a","destination":"b","destination":"c"}"#,
        ] {
            assert_eq!(change_of(Endpoint::Copy, None, Some(body)), None);
        }
        assert_eq!(change_of(Endpoint::Copy, None, Some(b"{}")), None);
        assert_eq!(change_of(Endpoint::Chat, Some("x"), None), None);
        assert_eq!(change_of(Endpoint::Pull, None, None), None);
    }

    #[test]
    fn only_the_success_line_counts() {
        assert!(is_success(br#"{"status":"success"}"#));
        assert!(is_success(b" {\"status\": \"success\"}\r"));
        assert!(!is_success(br#"{"status":"pulling manifest"}"#));
        assert!(!is_success(br#"{"status":"success","error":"x"}"#));
        assert!(!is_success(
            br#"{"error":"pull model manifest: file does not exist"}"#
        ));
        assert!(!is_success(b"success"));
    }
}
