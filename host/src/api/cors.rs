//! Browser cross-origin requests, decided the way Ollama decides them
//! (`gin-contrib/cors` as `server/routes.go` configures it, with the origins
//! of `OLLAMA_ORIGINS` plus its defaults).
//!
//! - No `Origin`, or an `Origin` equal to `http://` or `https://` + the
//!   request's `Host`: not a cross-origin request; nothing is added.
//! - An origin outside the list: 403 with an empty body, as Ollama answers.
//! - An allowed origin on `OPTIONS`: the preflight answer, 204, without
//!   forwarding.
//! - An allowed origin on any other method: the request goes on, and the
//!   answer gets `Access-Control-Allow-Origin` (the origin, or `*` when the
//!   list holds `*`) and `Vary: Origin`.
//!
//! Once llamagate has allowed a request, the backend must not refuse it for
//! its `Origin` (Ollama answers 403 to an origin outside its own list, and
//! the backend's list is not llamagate's): the header is removed before the
//! request is forwarded, and any CORS headers a backend adds are replaced.
//!
//! The list is the configured origins, then Ollama's defaults: `http(s)://`
//! `localhost`, `127.0.0.1` and `0.0.0.0`, with any port or none, and
//! `app://*`, `file://*`, `tauri://*`, `vscode-webview://*`,
//! `vscode-file://*`. Browser extensions (`chrome-extension://...`,
//! `moz-extension://...`) are allowed only when listed, as with Ollama.
//! An entry holds at most one `*`, which matches any text (`http://*.lan`,
//! `chrome-extension://*`); an entry without one must start with a scheme
//! Ollama accepts, else start-up stops (Ollama would not start either).

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::ResponseBody;

/// Methods a preflight allows (gin-contrib/cors' defaults).
const ALLOW_METHODS: &str = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS";

/// Request headers a preflight allows: Ollama's list (with OpenAI's SDK
/// headers), plus the two llamagate reads (`X-Api-Key` for keys, and
/// `X-Request-Id`) and Anthropic's version header for `/v1/messages`.
const ALLOW_HEADERS: &str = "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,\
Openai-Beta,X-Stainless-Arch,X-Stainless-Async,X-Stainless-Custom-Poll-Interval,\
X-Stainless-Helper-Method,X-Stainless-Lang,X-Stainless-Os,X-Stainless-Package-Version,\
X-Stainless-Poll-Helper,X-Stainless-Retry-Count,X-Stainless-Runtime,\
X-Stainless-Runtime-Version,X-Stainless-Timeout,X-Api-Key,X-Request-Id,Anthropic-Version";

/// How long a browser may keep a preflight's answer (12 h, as Ollama).
const MAX_AGE: &str = "43200";

/// Schemes an entry without `*` may start with (gin-contrib/cors' default
/// schemes plus the browser extensions Ollama enables).
const SCHEMES: [&str; 6] = [
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
];

/// The allowed origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// The list holds `*`: every origin.
    any: bool,
    /// Entries without `*`, lower-cased (matched exactly).
    exact: Vec<String>,
    /// Entries with one `*`: (before, after).
    wildcards: Vec<(String, String)>,
}

/// What a request's `Origin` means for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not a cross-origin request.
    NotCors,
    /// An origin outside the list: 403.
    Refused,
    /// A preflight from an allowed origin: answered here.
    Preflight(HeaderValue),
    /// An allowed origin: forward, then mark the answer.
    Allowed(HeaderValue),
}

impl Default for Cors {
    fn default() -> Self {
        Cors::new(&[]).expect("the default origins are valid")
    }
}

impl Cors {
    /// The configured origins (`origins`, `--origins`, `LLAMAGATE_ORIGINS`,
    /// `OLLAMA_ORIGINS`) followed by Ollama's defaults.
    pub fn new(configured: &[String]) -> anyhow::Result<Cors> {
        let mut cors = Cors {
            any: false,
            exact: Vec::new(),
            wildcards: Vec::new(),
        };
        let defaults = ["localhost", "127.0.0.1", "0.0.0.0"]
            .into_iter()
            .flat_map(|host| {
                ["http", "https"]
                    .into_iter()
                    .flat_map(move |s| [format!("{s}://{host}"), format!("{s}://{host}:*")])
            })
            .chain(
                ["app", "file", "tauri", "vscode-webview", "vscode-file"]
                    .map(|s| format!("{s}://*")),
            );
        for entry in configured.iter().cloned().chain(defaults) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                cors.any = true;
                continue;
            }
            match entry.matches('*').count() {
                0 if SCHEMES.iter().any(|s| entry.starts_with(s)) => {
                    cors.exact.push(entry.to_ascii_lowercase());
                }
                0 => anyhow::bail!(
                    "origins: {entry:?} must contain '*' or start with one of {}",
                    SCHEMES.join(", ")
                ),
                1 => {
                    let (before, after) = entry.split_once('*').unwrap_or((entry, ""));
                    cors.wildcards.push((before.to_string(), after.to_string()));
                }
                _ => anyhow::bail!("origins: {entry:?} has more than one '*'"),
            }
        }
        Ok(cors)
    }

    /// Whether `origin` (as the browser sent it) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.any
            || self.exact.iter().any(|e| e == origin)
            || self.wildcards.iter().any(|(before, after)| {
                origin.starts_with(before.as_str())
                    && origin.ends_with(after.as_str())
                    && origin.len() >= before.len() + after.len()
            })
    }

    /// What a request is, by its method, `Origin` and `Host`. The first
    /// `Origin` counts, as Go's `Header.Get` reads it.
    pub fn check(&self, method: &Method, headers: &HeaderMap, authority: Option<&str>) -> Check {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Check::NotCors;
        };
        let Ok(text) = origin.to_str() else {
            return Check::Refused;
        };
        if text.is_empty() {
            return Check::NotCors;
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(authority)
            .unwrap_or("");
        let same = ["http://", "https://"]
            .iter()
            .any(|s| text.strip_prefix(s) == Some(host));
        if same {
            return Check::NotCors;
        }
        if !self.allows(text) {
            return Check::Refused;
        }
        if method == Method::OPTIONS {
            Check::Preflight(origin.clone())
        } else {
            Check::Allowed(origin.clone())
        }
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed `origin`.
    fn allow_origin(&self, origin: HeaderValue) -> HeaderValue {
        if self.any {
            HeaderValue::from_static("*")
        } else {
            origin
        }
    }

    /// The answer to a preflight.
    pub fn preflight(&self, origin: HeaderValue) -> Response<ResponseBody> {
        let mut response = crate::api::error::text_response(StatusCode::NO_CONTENT, "");
        let h = response.headers_mut();
        h.remove(header::CONTENT_TYPE);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        if !self.any {
            for vary in [
                "Origin",
                "Access-Control-Request-Method",
                "Access-Control-Request-Headers",
            ] {
                h.append(header::VARY, HeaderValue::from_static(vary));
            }
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        response
    }

    /// Marks the answer to an allowed cross-origin request, replacing any
    /// CORS headers the backend sent.
    pub fn mark(&self, origin: HeaderValue, headers: &mut HeaderMap) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("X-Request-Id"),
        );
        if !self.any {
            let varies = headers.get_all(header::VARY).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("origin"))
                })
            });
            if !varies {
                headers.append(header::VARY, HeaderValue::from_static("Origin"));
            }
        }
    }
}

/// The refusal of an origin outside the list: 403, empty, as Ollama's.
pub fn refused() -> Response<ResponseBody> {
    let mut response = crate::api::error::text_response(StatusCode::FORBIDDEN, "");
    response.headers_mut().remove(header::CONTENT_TYPE);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(cors: &Cors, method: Method, origin: &str) -> Check {
        cors.check(
            &method,
            &headers(&[("origin", origin), ("host", "gate:11434")]),
            None,
        )
    }

    #[test]
    fn defaults_are_ollamas() {
        let cors = Cors::default();
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "http://0.0.0.0:8080",
            "app://obsidian.md",
            "file://",
            "tauri://localhost",
            "vscode-webview://abc",
        ] {
            assert!(cors.allows(ok), "{ok}");
        }
        for refused in [
            "http://example.com",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "https://evil.com#http://localhost",
            "chrome-extension://abcdef",
            "moz-extension://abcdef",
            "HTTP://LOCALHOST",
            "null",
        ] {
            assert!(!cors.allows(refused), "{refused}");
        }
    }

    #[test]
    fn configured_origins_come_first_and_are_checked() {
        let cors = Cors::new(&[
            "https://app.example.com".into(),
            "chrome-extension://*".into(),
        ])
        .unwrap();
        assert!(cors.allows("https://app.example.com"));
        assert!(cors.allows("chrome-extension://abcdef"));
        assert!(!cors.allows("https://app.example.com.evil.io"));
        // Entries are lower-cased, origins are not (as gin-contrib/cors).
        let upper = Cors::new(&["https://App.Example.com".into()]).unwrap();
        assert!(upper.allows("https://app.example.com"));
        assert!(Cors::new(&["example.com".into()]).is_err());
        assert!(Cors::new(&["http://*.*.com".into()]).is_err());
        assert!(Cors::new(&["*".into()]).unwrap().allows("http://anything"));
        // A wildcard does not match where its two halves overlap.
        let w = Cors::new(&["https://a*a".into()]).unwrap();
        assert!(!w.allows("https://a"));
        assert!(w.allows("https://aa"));
    }

    #[test]
    fn same_origin_and_no_origin_are_not_cors() {
        let cors = Cors::default();
        assert_eq!(
            cors.check(&Method::GET, &headers(&[]), None),
            Check::NotCors
        );
        assert_eq!(
            check(&cors, Method::POST, "http://gate:11434"),
            Check::NotCors
        );
        assert_eq!(
            check(&cors, Method::POST, "https://gate:11434"),
            Check::NotCors
        );
        assert_eq!(
            check(&cors, Method::POST, "http://gate:11435"),
            Check::Refused
        );
        assert_eq!(
            cors.check(
                &Method::GET,
                &headers(&[("origin", "http://gate")]),
                Some("gate")
            ),
            Check::NotCors
        );
        assert!(matches!(
            check(&cors, Method::OPTIONS, "http://localhost:5173"),
            Check::Preflight(_)
        ));
        assert!(matches!(
            check(&cors, Method::POST, "http://localhost:5173"),
            Check::Allowed(_)
        ));
    }

    #[test]
    fn the_first_origin_counts() {
        let cors = Cors::default();
        let h = headers(&[
            ("origin", "http://evil.com"),
            ("origin", "http://localhost"),
        ]);
        assert_eq!(cors.check(&Method::GET, &h, None), Check::Refused);
    }

    #[test]
    fn marking_replaces_the_backends_headers() {
        let cors = Cors::default();
        let mut h = headers(&[
            ("access-control-allow-origin", "*"),
            ("vary", "Accept-Encoding"),
        ]);
        cors.mark(HeaderValue::from_static("http://localhost:3000"), &mut h);
        assert_eq!(h.get_all("access-control-allow-origin").iter().count(), 1);
        assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
        assert_eq!(h.get_all("vary").iter().count(), 2);
    }
}
