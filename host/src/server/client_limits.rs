//! Limits on what a client connection may hold on to: the time to send a
//! request's headers (`header_timeout`) and its body (`body_timeout` plus one
//! second per `body_min_rate` bytes), the time a keep-alive connection may sit
//! idle (`idle_timeout`), and how many connections may be open at once
//! (`max_connections`, with [`LOOPBACK_HEADROOM`] more for the operator).
//!
//! hyper's `header_read_timeout` is not used: in hyper 1.12 its timer starts as
//! soon as a keep-alive connection goes idle (`proto/h1/conn.rs`: `State::idle`
//! sets `notify_read` so that "the next read will start the header read
//! timeout"), so it would close every idle keep-alive connection after
//! `header_timeout` and leave no room for a longer idle timeout. Instead each
//! connection keeps an [`Activity`] record, fed by its socket ([`Watched`]) and
//! by its requests ([`InFlight`], held until the response body is dropped), and
//! a watchdog ([`Activity::expired`]) that applies one rule at a time:
//! - requests in flight: no deadline at all (a stream may be silent for minutes);
//! - bytes of a new request arrived (or the connection is new): the request's
//!   headers must be complete `header_timeout` after its first byte;
//! - otherwise the connection is idle and closes `idle_timeout` after its last
//!   request ended.
//!
//! On HTTP/2, control frames (pings, window updates) do not start the header
//! clock; an HTTP/2 connection with no stream open is idle.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use crate::config::limits::{BodyPace, ClientLimits};

/// Connections from loopback addresses admitted past `max_connections`, kept
/// so that the operator can still reach `/llamagate/status` when the public
/// ones are used up.
pub const LOOPBACK_HEADROOM: usize = 16;

// ---------------------------------------------------------------------------
// The connection cap

/// Counts open client connections against `max_connections`.
pub struct ConnectionCap {
    max: usize,
    open: AtomicUsize,
}

/// One admitted connection; frees its place when dropped.
pub struct Slot(Arc<ConnectionCap>);

impl ConnectionCap {
    /// A cap of `max` connections (plus [`LOOPBACK_HEADROOM`] from loopback).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionCap {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// A place for a connection from `peer`, or `None`: shed it.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let limit = match is_loopback(peer) {
            true => self.max.saturating_add(LOOPBACK_HEADROOM),
            false => self.max,
        };
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Loopback, IPv4-mapped IPv6 included (a listener on `[::]`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// What a shed connection is sent (best effort, without waiting) before it is
/// closed: a 503 in Ollama's error shape.
pub fn shed_response() -> Vec<u8> {
    let body =
        r#"{"error":"llamagate has too many open connections (max_connections); try again later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether an `accept` error means the process or system is out of file
/// descriptors (`EMFILE`, `ENFILE`).
pub fn out_of_descriptors(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        matches!(
            Errno::from_io_error(err),
            Some(Errno::MFILE) | Some(Errno::NFILE)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

// ---------------------------------------------------------------------------
// Header and idle timeouts

/// What one client connection is doing, as its watchdog sees it.
pub struct Activity {
    state: Mutex<State>,
    /// Signalled when the last request in flight ends.
    settled: Notify,
}

struct State {
    /// Requests whose response has not been dropped yet.
    in_flight: usize,
    /// When the last request ended (or the connection was accepted).
    idle_since: Instant,
    /// When the first byte of a request not yet handed over arrived.
    header_since: Option<Instant>,
    /// An HTTP/2 connection: reads with no stream open are control frames.
    http2: bool,
}

/// Why a connection's watchdog fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request's headers did not arrive within `header_timeout`.
    Header,
    /// No request for `idle_timeout`.
    Idle,
}

impl Activity {
    /// A freshly accepted connection: its first request's headers are due
    /// `header_timeout` from now.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: now,
                header_since: Some(now),
                http2: false,
            }),
            settled: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket delivered bytes.
    fn on_read(&self) {
        let mut state = self.state();
        if state.in_flight == 0 && state.header_since.is_none() && !state.http2 {
            state.header_since = Some(Instant::now());
        }
    }

    /// A request's headers are complete and it is being served; it counts as
    /// in flight until the returned guard (moved into the response body) drops.
    pub fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.header_since = None;
        state.http2 |= http2;
        InFlight(self.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    /// Resolves when the connection has broken a rule: headers not complete
    /// `header` after a request's first byte, or no request for `idle`. Never
    /// resolves while a request is in flight.
    pub async fn expired(&self, header: Duration, idle: Duration) -> Expiry {
        loop {
            let due = {
                let state = self.state();
                if state.in_flight > 0 {
                    None
                } else if let Some(since) = state.header_since {
                    Some((since + header, Expiry::Header))
                } else {
                    Some((state.idle_since + idle, Expiry::Idle))
                }
            };
            match due {
                // A permit stored by a request that ended in between makes
                // this return at once, so no wake-up is lost.
                None => self.settled.notified().await,
                Some((at, kind)) if Instant::now() >= at => return kind,
                // Woken early or late, the loop looks again: the state may
                // have moved the deadline.
                Some((at, _)) => tokio::time::sleep_until(at).await,
            }
        }
    }
}

/// A request in flight on a connection; see [`Activity::begin`].
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.header_since = None;
            drop(state);
            self.0.settled.notify_one();
        }
    }
}

/// A client socket that reports the bytes it reads to its [`Activity`].
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    /// Wraps `io`, reporting to `activity`.
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A response body that keeps its request [`InFlight`] until it is dropped
/// (sent in full, or abandoned by a client that went away).
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// Holds `in_flight` for as long as `body` lives.
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_grows_with_the_bytes_received() {
        let pace = BodyPace {
            timeout: Duration::from_secs(30),
            min_rate: 64 << 10,
        };
        assert_eq!(pace.allowance(0), Duration::from_secs(30));
        assert_eq!(pace.allowance(64 << 20), Duration::from_secs(30 + 1024));
        assert!(
            pace.allowance(u64::MAX) > Duration::from_secs(1 << 33),
            "saturates"
        );
    }

    #[test]
    fn loopback_headroom_is_for_loopback_only() {
        let cap = ConnectionCap::new(2);
        let public: IpAddr = "192.0.2.7".parse().unwrap();
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| cap.admit(public).unwrap()).collect();
        assert!(cap.admit(public).is_none());
        let extra: Vec<_> = (0..LOOPBACK_HEADROOM)
            .map(|_| cap.admit(local).unwrap())
            .collect();
        assert!(cap.admit(local).is_none());
        drop(extra);
        drop(held);
        assert_eq!(cap.open(), 0);
        assert!(cap.admit(public).is_some());
    }

    #[tokio::test]
    async fn watchdog_waits_for_requests_in_flight() {
        let (header, idle) = (Duration::from_millis(100), Duration::from_millis(300));
        // A new connection owes its headers within `header`.
        let started = Instant::now();
        assert_eq!(Activity::new().expired(header, idle).await, Expiry::Header);
        assert!(started.elapsed() >= header);

        let activity = Activity::new();
        let request = activity.begin(false);
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.expired(header, idle).await }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!watchdog.is_finished(), "fired with a request in flight");
        let ended = Instant::now();
        drop(request);
        assert_eq!(watchdog.await.unwrap(), Expiry::Idle);
        assert!(ended.elapsed() >= idle);
    }
}
