//! The status page: one HTML file, a small script and a style sheet, built
//! into the binary (`include_str!`), served by the admin endpoint at `/` and
//! `/status`. No framework, no build step, no external URL.
//!
//! The page holds no data, so it is served without the admin key. Its script
//! asks [`crate::admin::status::PATH`] every two seconds (`?interval=MS`
//! changes that) and renders the answer with `textContent` only (model names,
//! request ids and reasons come from clients and backends). When the status
//! answers 401 the page asks for the admin key, keeps it in `sessionStorage`
//! (gone when the tab closes) and sends it as `Authorization: Bearer`.
//!
//! Every asset goes with a strict `Content-Security-Policy`: scripts, styles
//! and requests from this origin only, no inline code, no framing.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::ResponseBody;

/// The page.
const HTML: &str = include_str!("page/status.html");
/// Its script.
const SCRIPT: &str = include_str!("page/status.js");
/// Its style sheet.
const STYLE: &str = include_str!("page/status.css");

/// The policy sent with every asset: nothing but this origin, no inline code.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, if the page has one there.
pub fn asset(path: &str) -> Option<Response<ResponseBody>> {
    let (text, content_type) = match path {
        "/" | "/status" => (HTML, "text/html; charset=utf-8"),
        "/status.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/status.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(crate::full_body(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // A new binary may bring a new page: always ask again.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_code() {
        for text in [HTML, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("innerHTML") && !text.contains("outerHTML"));
            assert!(!text.contains("eval(") && !text.contains("document.write"));
        }
        assert!(!HTML.contains("<script>") && !HTML.contains("style="));
        for handler in ["onclick=", "onload=", "onsubmit=", "onerror="] {
            assert!(!HTML.contains(handler), "{handler}");
        }
        assert!(HTML.contains(r#"<script src="status.js""#));
        for path in ["/", "/status", "/status.js", "/status.css"] {
            let r = asset(path).unwrap();
            assert_eq!(
                r.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
        }
        assert!(asset("/status.html").is_none());
    }
}
