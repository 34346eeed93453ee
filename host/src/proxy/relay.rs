//! Relaying a backend's response body to the client, frame by frame.
//!
//! Frames are passed on as they arrive, so streams are never buffered, and only
//! when the client asks for more, so a slow client slows the backend
//! (backpressure). Dropping the relay (the client went away) drops the upstream
//! body, which closes the backend connection and makes Ollama stop generating.
//!
//! A stream that breaks mid-way must not look finished: NDJSON gets a last
//! `{"error":"..."}` line and SSE an error event without `[DONE]`. A backend
//! that sends nothing for longer than `stream_idle_timeout` is treated as a
//! break: the stream ends the same way, and the backend's breaker hears of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::fleet::admission::Permit;
use crate::fleet::{BackendState, InFlight, Pass};
use crate::upstream::Failure;
use crate::BoxError;

/// How the response frames its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `application/x-ndjson`: one JSON object per line.
    Ndjson,
    /// `text/event-stream`.
    Sse,
    /// Anything else: a break is passed on as a broken connection.
    Opaque,
}

impl Framing {
    /// The framing a response's `Content-Type` announces.
    pub fn of(headers: &HeaderMap) -> Framing {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/x-ndjson") {
            Framing::Ndjson
        } else if content_type.starts_with("text/event-stream") {
            Framing::Sse
        } else {
            Framing::Opaque
        }
    }
}

/// The response body llamagate sends while relaying a backend's.
pub struct Relay {
    inner: Incoming,
    framing: Framing,
    backend: Arc<BackendState>,
    ended_with_newline: bool,
    finished: bool,
    /// Longest gap between frames.
    idle_for: Duration,
    /// When the last frame came (the idle timer is moved lazily, when it fires).
    last_frame: Instant,
    /// Made the first time the backend makes the relay wait: most answers
    /// that are not streams never need one.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Held until the relay ends: the in-flight count and the slot.
    _held: (InFlight, Option<Permit>),
}

impl Relay {
    /// Wraps `inner`; `held` (the in-flight count, the slot) is released when
    /// the relay is dropped. A gap of more than `idle_for` between frames ends it.
    pub fn new(
        inner: Incoming,
        framing: Framing,
        backend: Arc<BackendState>,
        held: (InFlight, Option<Permit>),
        idle_for: Duration,
    ) -> Relay {
        let now = Instant::now();
        Relay {
            inner,
            framing,
            backend,
            ended_with_newline: true,
            finished: false,
            idle_for,
            last_frame: now,
            idle: None,
            _held: held,
        }
    }

    /// Whether the backend has been silent for longer than allowed; moves the
    /// timer to the real deadline when a frame came since it was set.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_frame + self.idle_for;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        loop {
            if idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_frame + self.idle_for;
            if Instant::now() >= deadline {
                return true;
            }
            idle.as_mut().reset(deadline.into());
        }
    }

    fn error_frame(&self, what: &str) -> Option<Bytes> {
        let message = format!(
            "llamagate: the stream from backend {:?} {what}",
            self.backend.id
        );
        match self.framing {
            Framing::Ndjson => {
                let line = serde_json::json!({ "error": message }).to_string();
                let lead = if self.ended_with_newline { "" } else { "\n" };
                Some(Bytes::from(format!("{lead}{line}\n")))
            }
            Framing::Sse => {
                let event = serde_json::json!({
                    "error": { "message": message, "type": "api_error", "param": null, "code": null }
                });
                Some(Bytes::from(format!("data: {event}\n\n")))
            }
            Framing::Opaque => None,
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.last_frame = Instant::now();
                if let Some(data) = frame.data_ref() {
                    if let Some(&last) = data.last() {
                        self.ended_with_newline = last == b'\n';
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                self.finished = true;
                tracing::warn!(backend = %self.backend.id, "stream broke mid-way: {err}");
                self.backend
                    .failed(&Failure::Broken(crate::upstream::cause(&err)), Pass::Normal);
                match self.error_frame(&format!("broke: {err}")) {
                    Some(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                    None => Poll::Ready(Some(Err(Box::new(err)))),
                }
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending if self.stalled(cx) => {
                self.finished = true;
                let idle_for = self.idle_for;
                tracing::warn!(backend = %self.backend.id, ?idle_for, "stream stalled: cut");
                self.backend
                    .failed(&Failure::TimedOut(idle_for), Pass::Normal);
                let what = format!("stalled: nothing came for {idle_for:?} (stream_idle_timeout)");
                match self.error_frame(&what) {
                    Some(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                    None => Poll::Ready(Some(Err(format!("backend {what}").into()))),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished {
            return SizeHint::with_exact(0);
        }
        // An error frame may be added, so an exact length cannot be promised
        // for streams; other bodies keep theirs.
        match self.framing {
            Framing::Opaque => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
