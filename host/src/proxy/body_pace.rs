//! The pace a request body must keep (`body_timeout` plus one second per
//! `body_min_rate` bytes): the accept loop puts a [`BodyDeadline`] in every
//! request's extensions, and whoever reads the body wraps it with [`paced`],
//! which cuts it with a [`BodyTimeout`] once it falls behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::limits::BodyPace;
use crate::BoxError;

/// The body pace of one request, put in its extensions by the accept loop;
/// records whether its body ran out of time, so that the answer (whatever
/// failed downstream of the cut body) can be made a 408.
#[derive(Clone, Debug)]
pub struct BodyDeadline {
    /// The pace the body must keep.
    pub pace: BodyPace,
    expired: Arc<AtomicBool>,
}

impl BodyDeadline {
    /// A deadline at `pace`, not expired.
    pub fn new(pace: BodyPace) -> Self {
        BodyDeadline {
            pace,
            expired: Arc::default(),
        }
    }

    /// Whether the body was cut for arriving too slowly.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }
}

/// A request body arrived more slowly than its [`BodyPace`] allows.
#[derive(Debug, thiserror::Error)]
#[error(
    "request body arrived too slowly: {received} bytes in {elapsed_ms} ms \
     (llamagate allows body_timeout = {timeout_ms} ms plus 1 s per {min_rate} bytes)"
)]
pub struct BodyTimeout {
    /// Bytes that had arrived.
    pub received: u64,
    /// Time since the body was first read.
    pub elapsed_ms: u128,
    /// `body_timeout`, in milliseconds.
    pub timeout_ms: u128,
    /// `body_min_rate`, bytes per second.
    pub min_rate: u64,
}

/// A request body cut with [`BodyTimeout`] once it falls behind its pace.
/// The clock starts when the body is first read.
pub struct Paced<B> {
    inner: B,
    clock: Option<Clock>,
}

struct Clock {
    deadline: BodyDeadline,
    started: Option<Instant>,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
}

/// Wraps `body` so that it keeps `deadline`'s pace; `None`: no limit.
pub fn paced<B>(body: B, deadline: Option<&BodyDeadline>) -> Paced<B> {
    Paced {
        inner: body,
        clock: deadline.map(|d| Clock {
            deadline: d.clone(),
            started: None,
            received: 0,
            timer: None,
        }),
    }
}

impl Clock {
    /// Sets the timer to the deadline for what has arrived so far.
    fn rearm(&mut self) {
        let started = *self.started.get_or_insert_with(Instant::now);
        let at = started + self.deadline.pace.allowance(self.received);
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// `Some(error)` once the deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<BodyTimeout> {
        if self.timer.is_none() {
            self.rearm();
        }
        let timer = self.timer.as_mut()?;
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.deadline.expired.store(true, Ordering::Release);
        let pace = self.deadline.pace;
        Some(BodyTimeout {
            received: self.received,
            elapsed_ms: self.started.map_or(0, |s| s.elapsed().as_millis()),
            timeout_ms: pace.timeout.as_millis(),
            min_rate: pace.min_rate,
        })
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(clock) = &mut this.clock else {
            return polled.map_err(Into::into);
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    clock.received += data.len() as u64;
                    clock.rearm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match clock.poll_expired(cx) {
                Some(timeout) => Poll::Ready(Some(Err(Box::new(timeout)))),
                None => Poll::Pending,
            },
        }
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
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use std::time::Duration;

    /// `n` frames of `size` bytes, one every `every`.
    fn frames(
        n: usize,
        size: usize,
        every: Duration,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Unpin> {
        StreamBody::new(Box::pin(futures_util::stream::iter(0..n).then(
            move |_| async move {
                tokio::time::sleep(every).await;
                Ok(Frame::data(Bytes::from(vec![b'x'; size])))
            },
        )))
    }

    #[tokio::test]
    async fn a_trickle_is_cut_and_a_steady_body_is_not() {
        let pace = BodyPace {
            timeout: Duration::from_millis(200),
            min_rate: 1024,
        };
        // 10 bytes every 50 ms: 200 bytes/s, far below 1 KiB/s.
        let deadline = BodyDeadline::new(pace);
        let started = Instant::now();
        let trickle = frames(1000, 10, Duration::from_millis(50));
        let err = paced(trickle, Some(&deadline)).collect().await.unwrap_err();
        assert!(err.is::<BodyTimeout>(), "{err}");
        assert!(deadline.expired());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");

        // 4 KiB every 20 ms (200 KiB/s) for 0.5 s: past body_timeout, yet in pace.
        let deadline = BodyDeadline::new(pace);
        let steady = frames(25, 4096, Duration::from_millis(20));
        let body = paced(steady, Some(&deadline)).collect().await.unwrap();
        assert_eq!(body.to_bytes().len(), 25 * 4096);
        assert!(!deadline.expired());
    }
}
