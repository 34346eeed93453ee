//! The `model` of a `multipart/form-data` body (`/v1/audio/transcriptions`),
//! read conservatively: Ollama takes it with Go's `Request.FormValue("model")`
//! after `ParseMultipartForm`, which looks in the URL query first, then in the
//! form's parts (decoding RFC 2231 names and quoted-printable parts, and
//! accepting bare-LF delimiters). llamagate accepts only a body in which
//! exactly one plain part can carry the model and the query names none;
//! everything that could be read another way is refused.

use std::ops::Range;

/// Why a form's model cannot be read one way only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Not `multipart/form-data` with one plain boundary.
    #[error("expected a multipart/form-data body with a boundary")]
    NotMultipart,
    /// The query names a model (Ollama would read it before the form's).
    #[error("give the model in the form only, not in the URL query")]
    ModelInQuery,
    /// More than one part, or an unusual part, could name the model.
    #[error("the form names its model ambiguously: send one part `Content-Disposition: form-data; name=\"model\"` holding only the name")]
    Ambiguous,
}

/// The model of a form and where its bytes are, to rewrite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormModel {
    /// The model name (empty when the form has no model part).
    pub model: String,
    /// The byte range of the value in the body (empty range when absent).
    pub span: Range<usize>,
}

/// Reads the model of a multipart body. `content_type` is the request's
/// `Content-Type`, `query` its raw query.
pub fn model(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<FormModel, FormError> {
    if let Some(q) = query {
        if lenient_decode(q).to_ascii_lowercase().contains("model") {
            return Err(FormError::ModelInQuery);
        }
    }
    let boundary = boundary(content_type.ok_or(FormError::NotMultipart)?)?;
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Split at every delimiter that starts the body or a line: a superset of
    // the places Go's reader splits, so no part Go sees is missed.
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&body[i..], delimiter) {
        let at = i + at;
        if at == 0 || body[at - 1] == b'\n' {
            starts.push(at);
        }
        i = at + 1;
    }
    let mut found: Option<FormModel> = None;
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(body.len());
        let part = &body[start + delimiter.len()..end];
        // The delimiter line's end, then the part's headers up to a blank line.
        let Some(line_end) = part.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let rest = &part[line_end + 1..];
        let (head_len, sep_len) = match (find(rest, b"\r\n\r\n"), find(rest, b"\n\n")) {
            (Some(a), Some(b)) if b < a => (b, 2),
            (Some(a), _) => (a, 4),
            (None, Some(b)) => (b, 2),
            (None, None) => (rest.len(), 0),
        };
        let head = &rest[..head_len];
        if !String::from_utf8_lossy(head)
            .to_ascii_lowercase()
            .contains("model")
        {
            continue;
        }
        if found.is_some() || sep_len == 0 || !plain_model_part(head) {
            return Err(FormError::Ambiguous);
        }
        let value_start = start + delimiter.len() + line_end + 1 + head_len + sep_len;
        // The line break before the next delimiter belongs to the delimiter,
        // which must be one Go's reader splits at too.
        let mut value_end = end;
        if n + 1 < starts.len() {
            if !proper_delimiter(&body[end + delimiter.len()..]) {
                return Err(FormError::Ambiguous);
            }
            value_end -= 1; // '\n'
            if value_end > value_start && body[value_end - 1] == b'\r' {
                value_end -= 1;
            }
        }
        let value = &body[value_start..value_end.max(value_start)];
        let model = std::str::from_utf8(value).map_err(|_| FormError::Ambiguous)?;
        if model.contains(['\r', '\n']) {
            return Err(FormError::Ambiguous);
        }
        found = Some(FormModel {
            model: model.to_string(),
            span: value_start..value_end.max(value_start),
        });
    }
    Ok(found.unwrap_or(FormModel {
        model: String::new(),
        span: 0..0,
    }))
}

/// Whether what follows a delimiter makes it one: `--` (the last), or
/// optional spaces and tabs, then a line break.
fn proper_delimiter(after: &[u8]) -> bool {
    if after.starts_with(b"--") {
        return true;
    }
    let rest = after
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map_or(&after[after.len()..], |i| &after[i..]);
    rest.starts_with(b"\r\n") || rest.starts_with(b"\n")
}

/// Whether a part's headers are exactly one plain
/// `Content-Disposition: form-data; name="model"` (no file name, no
/// RFC 2231 encoding, no transfer encoding, no folded lines).
fn plain_model_part(head: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(head) else {
        return false;
    };
    let mut dispositions = 0;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.starts_with([' ', '\t']) {
            return false;
        }
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let name = name.trim().to_ascii_lowercase();
        if name == "content-transfer-encoding" {
            return false;
        }
        if name != "content-disposition" {
            if value.to_ascii_lowercase().contains("model") {
                return false;
            }
            continue;
        }
        dispositions += 1;
        let params: Vec<&str> = value.split(';').map(str::trim).collect();
        if !params[0].eq_ignore_ascii_case("form-data") || params.len() != 2 {
            return false;
        }
        let Some((key, value)) = params[1].split_once('=') else {
            return false;
        };
        if key.trim() != "name" || !matches!(value.trim(), "\"model\"" | "model") {
            return false;
        }
    }
    dispositions == 1
}

/// The boundary of a `multipart/form-data` content type: exactly one plain
/// `boundary` parameter.
fn boundary(content_type: &str) -> Result<String, FormError> {
    let mut params = content_type.split(';').map(str::trim);
    if !params
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data"))
    {
        return Err(FormError::NotMultipart);
    }
    let mut found = None;
    for param in params {
        let (key, value) = param.split_once('=').ok_or(FormError::NotMultipart)?;
        let key = key.trim().to_ascii_lowercase();
        if key.starts_with("boundary") {
            if key != "boundary" || found.is_some() {
                return Err(FormError::NotMultipart);
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if value.is_empty() || value.contains(['"', '\\']) {
                return Err(FormError::NotMultipart);
            }
            found = Some(value.to_string());
        }
    }
    found.ok_or(FormError::NotMultipart)
}

/// `%XX` and `+` decoded where well formed; the rest kept.
fn lenient_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (
                (b[i + 1] as char).to_digit(16),
                (b[i + 2] as char).to_digit(16),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn form(parts: &[&str]) -> Vec<u8> {
        let mut out = String::new();
        for p in parts {
            out.push_str("--XyZ\r\n");
            out.push_str(p);
            out.push_str("\r\n");
        }
        out.push_str("--XyZ--\r\n");
        out.into_bytes()
    }

    const MODEL: &str = "Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper";
    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....model....";

    #[test]
    fn reads_one_plain_model_part() {
        let body = form(&[FILE, MODEL]);
        let m = model(Some(CT), None, &body).unwrap();
        assert_eq!(m.model, "whisper");
        assert_eq!(&body[m.span.clone()], b"whisper");
        let body = form(&[FILE]);
        assert_eq!(model(Some(CT), None, &body).unwrap().model, "");
        let quoted = "multipart/form-data; boundary=\"XyZ\"";
        assert_eq!(
            model(Some(quoted), None, &form(&[MODEL])).unwrap().model,
            "whisper"
        );
    }

    #[test]
    fn refuses_every_other_reading() {
        let twice = form(&[MODEL, MODEL]);
        let rfc2231 = form(&[
            "Content-Disposition: form-data; name*=UTF-8''model\r\n\r\nbig",
            MODEL,
        ]);
        let qp = form(&[
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbig=3A70b",
        ]);
        let folded = form(&["Content-Disposition: form-data;\r\n name=\"model\"\r\n\r\nbig"]);
        let upper = form(&[
            "Content-Disposition: form-data; name=\"MODEL\"\r\n\r\nbig",
            MODEL,
        ]);
        let false_delimiter = form(&[
            "Content-Disposition: form-data; name=\"model\"\r\n\r\nsmall\r\n--XyZnot\r\nmore",
        ]);
        let bare_lf = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\n--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nbig\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsmall\r\n--XyZ--\r\n".to_vec();
        for body in [twice, rfc2231, qp, folded, upper, bare_lf, false_delimiter] {
            assert_eq!(
                model(Some(CT), None, &body),
                Err(FormError::Ambiguous),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        let body = form(&[MODEL]);
        for q in ["model=big", "MODEL=big", "mod%65l=big", "x=1&model=big"] {
            assert_eq!(
                model(Some(CT), Some(q), &body),
                Err(FormError::ModelInQuery),
                "{q}"
            );
        }
        for ct in [
            "application/json",
            "multipart/form-data",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary*=XyZ",
        ] {
            assert_eq!(
                model(Some(ct), None, &body),
                Err(FormError::NotMultipart),
                "{ct}"
            );
        }
    }
}
