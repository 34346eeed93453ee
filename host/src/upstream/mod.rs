//! The pooled HTTP client that talks to backends, and what happened there as
//! data: a [`Failure`] at one backend ([`BackendError`]), every backend a
//! request tried ([`Attempts`]).

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::RequestBody;

/// Where requests go: what the client needs to know of a backend.
pub trait Destination: Sync {
    /// The operator's id for it.
    fn id(&self) -> &str;
    /// Its base URL without userinfo, as shown in logs and errors.
    fn url(&self) -> &str;
    /// The parsed base URL to connect to (scheme, authority, optional base path).
    fn uri(&self) -> &Uri;
    /// The `Authorization` every request to it carries (from its URL's userinfo).
    fn authorization(&self) -> Option<&HeaderValue>;
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the
/// framing headers hyper recomputes for the body it sends, and `expect`: the
/// body was already read from the client.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::EXPECT,
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
];

/// Idle connections kept per backend: enough for the bursts a GPU server can
/// take; beyond it a connection is closed once its request ends.
pub const MAX_IDLE_PER_BACKEND: usize = 256;

/// A pooled client shared by all requests (one connection pool per backend URL).
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, RequestBody>,
}

impl Upstream {
    /// A client that gives up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // Without a pool timer hyper-util never runs the idle sweep, so every
        // connection a burst opened would stay open (and hold its buffers)
        // until reused.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(MAX_IDLE_PER_BACKEND)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Upstream { client }
    }

    /// Sends a request to `backend`. `path` is the path and query to use.
    pub async fn send(
        &self,
        backend: &dyn Destination,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = join(backend.uri(), path);
        let out = request.headers_mut();
        for (name, value) in headers {
            if !HOP_BY_HOP.contains(name) && name != header::CONTENT_LENGTH {
                out.append(name, value.clone());
            }
        }
        if let Some(authorization) = backend.authorization() {
            // Credentials in the backend's URL are the operator's way in (nginx
            // with basic auth in front of Ollama): they replace the client's
            // `Authorization`, which was meant for llamagate's plugins.
            out.insert(header::AUTHORIZATION, authorization.clone());
        }
        if let Some(len) = headers.get(header::CONTENT_LENGTH) {
            // Only a streamed body keeps the client's length; buffered bodies
            // get theirs from the body itself.
            if method == Method::POST && path.starts_with("/api/blobs/") {
                out.insert(header::CONTENT_LENGTH, len.clone());
            }
        }
        self.client.request(request).await
    }

    /// GETs `path` from `backend` with `headers` within `timeout` and returns
    /// status and body.
    pub async fn get(
        &self,
        backend: &dyn Destination,
        path: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), BackendError> {
        let fetch = async {
            let response = self
                .send(
                    backend,
                    &Method::GET,
                    path,
                    headers,
                    crate::empty_request_body(),
                )
                .await
                .map_err(|e| Failure::of_client(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Broken(cause(&e)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .unwrap_or(Err(Failure::TimedOut(timeout)))
            .map_err(|failure| BackendError::at(backend, failure))
    }

    /// GETs and parses a JSON answer; a non-2xx status is an error.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        backend: &dyn Destination,
        path: &str,
        timeout: Duration,
    ) -> Result<T, BackendError> {
        self.get_json_with(backend, path, &HeaderMap::new(), timeout)
            .await
    }

    /// [`Upstream::get_json`] with request headers.
    pub async fn get_json_with<T: serde::de::DeserializeOwned>(
        &self,
        backend: &dyn Destination,
        path: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<T, BackendError> {
        let (status, body) = self.get(backend, path, headers, timeout).await?;
        let failed = |failure| BackendError::at(backend, failure);
        if !status.is_success() {
            return Err(failed(Failure::Status {
                status,
                path: path.to_string(),
            }));
        }
        serde_json::from_slice(&body).map_err(|e| {
            failed(Failure::NotJson {
                path: path.to_string(),
                error: e.to_string(),
            })
        })
    }
}

/// A failure at one backend, worded the same on every endpoint, routed or
/// fanned out: `backend "gpu-01" (http://127.0.0.1:9) is unreachable: connection refused`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend {id:?} ({url}) {failure}")]
pub struct BackendError {
    /// The backend's id.
    pub id: String,
    /// Its URL, without userinfo.
    pub url: String,
    /// What happened.
    pub failure: Failure,
}

impl BackendError {
    /// `failure` at `backend`.
    pub fn at(backend: &dyn Destination, failure: Failure) -> BackendError {
        BackendError {
            id: backend.id().to_string(),
            url: backend.url().to_string(),
            failure,
        }
    }
}

/// Every backend a request tried, in order, with what happened at each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts(pub Vec<BackendError>);

impl std::fmt::Display for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{attempt}")?;
        }
        Ok(())
    }
}

/// What happened when llamagate talked to a backend, as data (for counting)
/// and as the second half of [`BackendError`]'s sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No connection could be made (refused, no route, unknown host, connect
    /// timeout): the next replica may be tried.
    #[error("is unreachable: {0}")]
    Unreachable(Cause),
    /// llamagate itself could not make the attempt (it has no file
    /// descriptor left): nothing is known of the backend.
    #[error("could not be tried: {0}")]
    Local(Cause),
    /// Connected, then the exchange broke (reset, closed early).
    #[error("failed: {0}")]
    Broken(Cause),
    /// No complete answer in time (for a routed request: no response head
    /// within the first-byte timeout).
    #[error("did not answer within {0:?}")]
    TimedOut(Duration),
    /// A routed request was answered with a status the operator counts as a
    /// failure (`retry_statuses`: by default 502, 503, 504).
    #[error("answered {0}")]
    Answered(http::StatusCode),
    /// A listing or probe got a status other than 2xx.
    #[error("answered {status} to GET {path}")]
    Status {
        /// The status.
        status: http::StatusCode,
        /// The path asked for.
        path: String,
    },
    /// A listing or probe got a body that is not the JSON asked for.
    #[error("answered GET {path} with unusable JSON: {error}")]
    NotJson {
        /// The path asked for.
        path: String,
        /// serde's complaint.
        error: String,
    },
}

impl Failure {
    /// A failed [`Upstream::send`]: unreachable when no connection was made.
    pub fn of_client(err: &hyper_util::client::legacy::Error) -> Failure {
        let cause = cause(err);
        if cause.kind == CauseKind::OutOfDescriptors {
            Failure::Local(cause)
        } else if err.is_connect() {
            Failure::Unreachable(cause)
        } else {
            Failure::Broken(cause)
        }
    }

    /// Whether the failure says something about the backend's health (a
    /// failure on llamagate's own side does not).
    pub fn blames_backend(&self) -> bool {
        !matches!(self, Failure::Local(_))
    }
}

/// What went wrong underneath, as a kind to count and a few words to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{words}")]
pub struct Cause {
    /// The kind, for counting and acting on.
    pub kind: CauseKind,
    /// In a few lower-case words (`connection refused`).
    pub words: String,
}

/// Kinds of [`Cause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseKind {
    /// The connection was refused.
    Refused,
    /// Connecting took longer than `connect_timeout`.
    ConnectTimedOut,
    /// The connection was reset or aborted.
    Reset,
    /// The backend closed the connection before its answer was complete.
    ClosedEarly,
    /// llamagate has no file descriptor left (`EMFILE`, `ENFILE`).
    OutOfDescriptors,
    /// Anything else (unknown host, no route, a protocol error).
    Other,
}

/// The root cause of `err` in a few lower-case words (`connection refused`),
/// not hyper's chain of wrappers (`client error (Connect): tcp connect error:
/// Connection refused (os error 111)`).
pub fn cause(err: &(dyn std::error::Error + 'static)) -> Cause {
    use std::io::ErrorKind;
    let mut innermost = err;
    let mut io = None;
    let mut next = Some(err);
    while let Some(e) = next {
        innermost = e;
        if let Some(found) = e.downcast_ref::<std::io::Error>() {
            io = Some(found);
        }
        next = e.source();
    }
    if io
        .and_then(std::io::Error::raw_os_error)
        .is_some_and(|n| n == 23 || n == 24)
    {
        return Cause {
            kind: CauseKind::OutOfDescriptors,
            words: "llamagate has no file descriptor left (raise its RLIMIT_NOFILE, \
                    or lower max_connections)"
                .into(),
        };
    }
    let named = io.and_then(|io| match io.kind() {
        ErrorKind::ConnectionRefused => Some((CauseKind::Refused, "connection refused")),
        ErrorKind::ConnectionReset => Some((CauseKind::Reset, "connection reset")),
        ErrorKind::ConnectionAborted => Some((CauseKind::Reset, "connection aborted")),
        ErrorKind::TimedOut => Some((CauseKind::ConnectTimedOut, "connect timed out")),
        ErrorKind::HostUnreachable => Some((CauseKind::Other, "host unreachable")),
        ErrorKind::NetworkUnreachable => Some((CauseKind::Other, "network unreachable")),
        ErrorKind::AddrNotAvailable => Some((CauseKind::Other, "address not available")),
        ErrorKind::UnexpectedEof => Some((CauseKind::ClosedEarly, "connection closed early")),
        _ => None,
    });
    let (kind, words) = match named {
        Some((kind, words)) => (kind, words.to_string()),
        None => {
            let text = innermost.to_string();
            // `... (os error 111)`: the number says nothing to a reader.
            let text = match text.rfind(" (os error ") {
                Some(at) if text.ends_with(')') => text[..at].to_string(),
                _ => text,
            };
            let mut chars = text.chars();
            let words = match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            };
            let kind = if words.contains("connection closed") {
                CauseKind::ClosedEarly
            } else {
                CauseKind::Other
            };
            (kind, words)
        }
    };
    Cause { kind, words }
}

/// `base` (scheme, authority, optional path prefix) joined with `path`.
fn join(base: &Uri, path: &str) -> Uri {
    let prefix = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        format!("{prefix}{path}")
            .parse()
            .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_worded_in_one_sentence() {
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error")]
        struct Wrapper(#[source] std::io::Error);
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(cause(&refused).to_string(), "connection refused");
        assert_eq!(cause(&refused).kind, CauseKind::Refused);
        let dns = Wrapper(std::io::Error::other(
            "Name or service not known (os error -2)",
        ));
        assert_eq!(cause(&dns).to_string(), "name or service not known");
        let error = BackendError {
            id: "gpu-01".into(),
            url: "http://127.0.0.1:9".into(),
            failure: Failure::Unreachable(cause(&refused)),
        };
        assert_eq!(
            error.to_string(),
            "backend \"gpu-01\" (http://127.0.0.1:9) is unreachable: connection refused"
        );
        let emfile = Wrapper(std::io::Error::from_raw_os_error(24));
        assert_eq!(cause(&emfile).kind, CauseKind::OutOfDescriptors);
        assert!(!Failure::Local(cause(&emfile)).blames_backend());
        let status = Failure::Status {
            status: http::StatusCode::NOT_FOUND,
            path: "/api/tags".into(),
        };
        assert_eq!(
            status.to_string(),
            "answered 404 Not Found to GET /api/tags"
        );
    }

    #[test]
    fn joins_paths() {
        let base: Uri = "http://gpu-01:11434".parse().unwrap();
        assert_eq!(
            join(&base, "/api/chat?x=1").to_string(),
            "http://gpu-01:11434/api/chat?x=1"
        );
        let base: Uri = "http://h/ollama/".parse().unwrap();
        assert_eq!(
            join(&base, "/api/tags").to_string(),
            "http://h/ollama/api/tags"
        );
    }
}
