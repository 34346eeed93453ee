//! Request paths as Go's `net/http` hands them to Ollama's router: percent
//! escapes decoded (`%2F` too), nothing else changed — no dot-segment
//! removal, no slash merging, no case folding.

/// A path with an escape Go's URL parser refuses (`%zz`, a `%` near the end).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL escape in the request path")]
pub struct BadEscape;

/// Decodes every `%XX` escape of a raw request path, as Go's
/// `url.ParseRequestURI` does for `URL.Path`. `+` stays `+` (it means space
/// only in queries). The result may hold any byte, `/` and NUL included.
pub fn decode(raw: &str) -> Result<Vec<u8>, BadEscape> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| hex(*b)).ok_or(BadEscape)?;
            let lo = bytes.get(i + 2).and_then(|b| hex(*b)).ok_or(BadEscape)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The canonical request-target encoding of a decoded path: bytes outside
/// RFC 3986's path characters are escaped, so the backend decodes exactly
/// `decoded` again.
pub fn encode(decoded: &[u8]) -> String {
    let mut out = String::with_capacity(decoded.len());
    for &b in decoded {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_go() {
        assert_eq!(decode("/api/%64elete").unwrap(), b"/api/delete");
        assert_eq!(decode("/api%2Fcopy").unwrap(), b"/api/copy");
        assert_eq!(
            decode("/api%2fcopy").unwrap(),
            b"/api/copy",
            "hex is case-insensitive"
        );
        assert_eq!(decode("/v1/models/a%3Ab").unwrap(), b"/v1/models/a:b");
        assert_eq!(
            decode("/a+b").unwrap(),
            b"/a+b",
            "+ is not a space in paths"
        );
        assert_eq!(decode("/a%00b").unwrap(), b"/a\0b");
        assert_eq!(
            decode("/api/%2564elete").unwrap(),
            b"/api/%64elete",
            "decoded once, not twice"
        );
    }

    #[test]
    fn bad_escapes_are_refused() {
        for raw in ["/api/%zzchat", "/api/chat%", "/api/chat%4", "/%g0"] {
            assert_eq!(decode(raw), Err(BadEscape), "{raw}");
        }
    }

    #[test]
    fn encoding_round_trips() {
        for decoded in [
            &b"/api/chat"[..],
            b"/v1/models/llama3.2:latest",
            b"/a b/%/?#",
            b"/\0\xff\x7f",
        ] {
            let encoded = encode(decoded);
            assert!(encoded.is_ascii() && !encoded.contains(['?', '#', ' ']));
            assert_eq!(decode(&encoded).unwrap(), decoded);
        }
        assert_eq!(encode(b"/api/chat"), "/api/chat");
    }
}
