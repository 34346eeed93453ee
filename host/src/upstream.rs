//! The pooled HTTP client that talks to backends.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::fleet::BackendState;
use crate::RequestBody;

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
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Upstream { client }
    }

    /// Sends a request to `backend`. `path` is the path and query to use.
    pub async fn send(
        &self,
        backend: &BackendState,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = join(&backend.uri, path);
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

    /// GETs `path` from `backend` within `timeout` and returns status and body.
    pub async fn get(
        &self,
        backend: &BackendState,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<(http::StatusCode, Bytes)> {
        let fetch = async {
            let response = self
                .send(
                    backend,
                    &Method::GET,
                    path,
                    &HeaderMap::new(),
                    crate::empty_request_body(),
                )
                .await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .with_context(|| format!("{} did not answer within {timeout:?}", backend.url))?
            .with_context(|| format!("GET {}{path}", backend.url))
    }

    /// GETs and parses a JSON answer; a non-2xx status is an error.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        backend: &BackendState,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let (status, body) = self.get(backend, path, timeout).await?;
        anyhow::ensure!(status.is_success(), "GET {}{path}: {status}", backend.url);
        serde_json::from_slice(&body)
            .with_context(|| format!("GET {}{path}: bad JSON", backend.url))
    }
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
