//! Go's `encoding/json` as Ollama's handlers meet it: requests decoded into
//! structs (first value only, fields matched case-insensitively, Go's error
//! wording), responses written field by field the way Go marshals a struct
//! (`<>&` escaped, Go's float format), plus `time.ParseDuration` and
//! `time.RFC3339Nano`.

use std::fmt::Write as _;

use serde_json::Value;

use crate::{parse_keep_alive, NS};

// ---------------------------------------------------------------------------
// Go-compatible request decoding

/// Why a body could not be decoded.
pub(crate) enum DecodeError {
    /// Empty or whitespace-only body (`io.EOF`).
    Eof,
    /// Any other failure, in Go's words.
    Msg(String),
}

/// The JSON kinds a request field may be declared with.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Str,
    Bool,
    Num,
    /// An array, with the Go type named in errors.
    Arr(&'static str),
    /// An object, with the Go type named in errors.
    Map(&'static str),
}

/// Decodes the first JSON value of `body` as Go's `json.Decoder` would into a
/// struct named `go_type` (`short` without the package), including the errors
/// `keep_alive` parsing and mistyped fields produce.
pub(crate) fn go_decode(
    body: &[u8],
    go_type: &str,
    short: &str,
    fields: &[(&str, Kind)],
) -> Result<Value, DecodeError> {
    let v = first_value(body)?;
    if !v.is_object() {
        if v.is_null() {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        return Err(DecodeError::Msg(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            kind_name(&v)
        )));
    };
    // Unmarshaler errors (keep_alive) stop decoding; type errors are reported last.
    if let Some(k) = field(&v, "keep_alive").filter(|k| !k.is_null()) {
        parse_keep_alive(k).map_err(DecodeError::Msg)?;
    }
    for (name, kind) in fields {
        let Some(val) = field(&v, name) else { continue };
        let ok = match kind {
            Kind::Str => val.is_string(),
            Kind::Bool => val.is_boolean(),
            Kind::Arr(_) => val.is_array(),
            Kind::Map(_) => val.is_object(),
            Kind::Num => val.is_number(),
        };
        if !ok && !val.is_null() {
            let go_kind = match kind {
                Kind::Str => "string",
                Kind::Bool => "bool",
                Kind::Arr(t) | Kind::Map(t) => t,
                Kind::Num => "int",
            };
            return Err(DecodeError::Msg(format!(
                "json: cannot unmarshal {} into Go struct field {short}.{name} of type {go_kind}",
                kind_name(val)
            )));
        }
    }
    Ok(v)
}

pub(crate) fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A field of a JSON object, matched as Go matches struct fields: exactly, else
/// case-insensitively.
pub(crate) fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

pub(crate) fn str_field(v: &Value, name: &str) -> Option<String> {
    field(v, name).and_then(Value::as_str).map(str::to_string)
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub(crate) fn parse_go_duration(orig: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let mult: f64 = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(orig)
                ))
            }
        };
        let value: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            frac_part
        )
        .trim_end_matches('.')
        .parse()
        .map_err(|_| invalid())?;
        total += value * mult;
        if total > i64::MAX as f64 {
            return Err(invalid());
        }
    }
    let ns = total as i128;
    Ok(if neg { -ns } else { ns })
}

/// The first JSON value of `body`, read as Go's `json.Decoder` reads it: what
/// follows a complete value is ignored, invalid UTF-8 in strings becomes
/// U+FFFD, and a syntax error is worded as Go words it. serde_json does the
/// reading; only the wording is Go's.
fn first_value(body: &[u8]) -> Result<Value, DecodeError> {
    let first = |b: &[u8]| {
        serde_json::Deserializer::from_slice(b)
            .into_iter::<Value>()
            .next()
    };
    let lossy;
    let mut text = body;
    let mut read = first(text);
    if matches!(&read, Some(Err(e)) if e.to_string().starts_with("invalid unicode code point"))
        && std::str::from_utf8(body).is_err()
    {
        // serde_json refuses invalid UTF-8 in a string; Go replaces it.
        lossy = String::from_utf8_lossy(body).into_owned();
        text = lossy.as_bytes();
        read = first(text);
    }
    match read {
        None => Err(DecodeError::Eof),
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) if e.is_eof() => Err(DecodeError::Msg("unexpected EOF".to_string())),
        Some(Err(e)) => {
            let at = error_offset(text, &e);
            // Go's decoder stops at the end of a top-level number or literal
            // (`1x`, `truex`, `01`); serde_json calls what follows an error.
            let ends_value = e.to_string().starts_with("trailing characters")
                || (leading_zero(text, at) && innermost_open(&text[..at]).is_none());
            match serde_json::from_slice(&text[..at]) {
                Ok(v) if ends_value => Ok(v),
                _ => Err(DecodeError::Msg(go_syntax_error(text, at, &e))),
            }
        }
    }
}

/// The byte offset of the character serde_json's error points at.
fn error_offset(text: &[u8], e: &serde_json::Error) -> usize {
    let line_start: usize = text
        .split_inclusive(|&c| c == b'\n')
        .take(e.line().saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    // Column 0 means the newline that ended the previous line.
    (line_start + e.column())
        .saturating_sub(1)
        .min(text.len().saturating_sub(1))
}

/// Whether serde_json's "invalid number" at `at` is a digit after a leading
/// `0`, where Go sees the end of the number `0`.
fn leading_zero(text: &[u8], at: usize) -> bool {
    at > 0 && text[at].is_ascii_digit() && text[at - 1] == b'0'
}

/// The innermost `{` or `[` still open at the end of `prefix` (strings skipped).
fn innermost_open(prefix: &[u8]) -> Option<u8> {
    let (mut open, mut in_string, mut escaped) = (Vec::new(), false, false);
    for &c in prefix {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (_, b'"') => in_string = !in_string,
            (false, b'{' | b'[') => open.push(c),
            (false, b'}' | b']') => {
                open.pop();
            }
            _ => {}
        }
    }
    open.last().copied()
}

/// serde_json's syntax error at byte `at`, in `encoding/json`'s words
/// (`invalid character 'x' looking for beginning of value`). Errors Go has no
/// syntax error for (a number out of range, nesting too deep) keep serde_json's.
fn go_syntax_error(b: &[u8], at: usize, e: &serde_json::Error) -> String {
    let message = e.to_string();
    let code = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(code, _)| code);
    let mut c = b[at];
    let before = |n: usize| at.checked_sub(n).map(|i| b[i]);
    // serde_json reports a bad `\uXXXX` after its four characters; Go at the
    // first one that is not a hex digit.
    let hex_escape = (at.saturating_sub(4).max(1)..at).find(|&u| b[u] == b'u' && b[u - 1] == b'\\');
    let literal;
    let context = match code {
        "expected value" => "looking for beginning of value",
        "trailing comma" if c == b'}' => "looking for beginning of object key string",
        "trailing comma" => "looking for beginning of value",
        "key must be a string" | "expected `\"`" => "looking for beginning of object key string",
        "expected `:`" => "after object key",
        "expected `,` or `}`" => "after object key:value pair",
        "expected `,` or `]`" => "after array element",
        "control character (\\u0000-\\u001F) found while parsing a string" => "in string literal",
        "invalid escape" => match hex_escape {
            Some(u) => {
                c = b[u + 1..=at]
                    .iter()
                    .copied()
                    .find(|c| !c.is_ascii_hexdigit())
                    .unwrap_or(c);
                "in \\u hexadecimal character escape"
            }
            None => "in string escape code",
        },
        "expected ident" => {
            let start = b[..at]
                .iter()
                .rposition(|c| !c.is_ascii_lowercase())
                .map_or(0, |i| i + 1);
            let word = match b[start] {
                b't' => "true",
                b'f' => "false",
                _ => "null",
            };
            let want = word.as_bytes().get(at - start).copied().unwrap_or(b' ');
            literal = format!("in literal {word} (expecting {})", quote_char(want));
            &literal
        }
        "invalid number" if leading_zero(b, at) => match innermost_open(&b[..at]) {
            Some(b'{') => "after object key:value pair",
            _ => "after array element",
        },
        "invalid number" => match (before(1), before(2)) {
            (Some(b'e' | b'E'), _) | (Some(b'+' | b'-'), Some(b'e' | b'E')) => {
                "in exponent of numeric literal"
            }
            (Some(b'.'), _) => "after decimal point in numeric literal",
            _ => "in numeric literal",
        },
        _ => return message,
    };
    format!("invalid character {} {context}", quote_char(c))
}

/// Go's `quoteChar` from `encoding/json`: one byte, as a quoted character.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".to_string(),
        b'"' => "'\"'".to_string(),
        _ => {
            let q = go_quote(&char::from(c).to_string());
            format!("'{}'", &q[1..q.len() - 1])
        }
    }
}

/// Go's `strconv.Quote` (`%q`) for the strings Ollama quotes in errors: for
/// printable text it is JSON's string quoting.
pub(crate) fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

// ---------------------------------------------------------------------------
// Go-compatible JSON output

/// An object written field by field, in order, the way Go marshals a struct.
pub(crate) struct Obj(String);

impl Obj {
    pub(crate) fn new() -> Obj {
        Obj(String::from("{"))
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        go_str_into(&mut self.0, k);
        self.0.push(':');
    }

    pub(crate) fn s(mut self, k: &str, v: &str) -> Obj {
        self.key(k);
        go_str_into(&mut self.0, v);
        self
    }

    pub(crate) fn n(mut self, k: &str, v: impl std::fmt::Display) -> Obj {
        self.key(k);
        let _ = write!(self.0, "{v}");
        self
    }

    /// A number field with Go's `omitempty`: left out when zero.
    pub(crate) fn n_nz(self, k: &str, v: u64) -> Obj {
        if v == 0 {
            self
        } else {
            self.n(k, v)
        }
    }

    pub(crate) fn b(mut self, k: &str, v: bool) -> Obj {
        self.key(k);
        self.0.push_str(if v { "true" } else { "false" });
        self
    }

    pub(crate) fn null(mut self, k: &str) -> Obj {
        self.key(k);
        self.0.push_str("null");
        self
    }

    /// A field whose value is already JSON.
    pub(crate) fn raw(mut self, k: &str, json: &str) -> Obj {
        self.key(k);
        self.0.push_str(json);
        self
    }

    pub(crate) fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// A JSON array of already-encoded items.
pub(crate) fn array(items: impl IntoIterator<Item = String>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

pub(crate) fn str_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    array(items.into_iter().map(|s| {
        let mut out = String::new();
        go_str_into(&mut out, s);
        out
    }))
}

/// A JSON string as Go's `encoding/json` writes it (HTML characters escaped).
pub(crate) fn go_str_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Any JSON value in Go's encoding (map keys sorted, HTML escaped).
pub(crate) fn go_json(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let mut out = String::new();
            go_str_into(&mut out, s);
            out
        }
        Value::Array(items) => array(items.iter().map(go_json)),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut obj = Obj::new();
            for k in keys {
                obj = obj.raw(k, &go_json(&map[k.as_str()]));
            }
            obj.done()
        }
        other => other.to_string(),
    }
}

/// A float as Go's `encoding/json` writes a float32 (`f32`) or float64.
pub(crate) fn go_float(x: f64, f32_bits: bool) -> String {
    let abs = x.abs();
    let exp = abs != 0.0 && !(1e-6..1e21).contains(&abs);
    let s = match (exp, f32_bits) {
        (false, true) => format!("{}", x as f32),
        (false, false) => format!("{x}"),
        (true, true) => format!("{:e}", x as f32),
        (true, false) => format!("{x:e}"),
    };
    if exp {
        // Go writes a sign and at least two exponent digits: 1e-07, 1e+21.
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', e),
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits.to_string()
        };
        // ...except that encoding/json cleans up e-09 to e-9.
        let digits = if sign == '-' && digits.len() == 2 && digits.starts_with('0') {
            digits[1..].to_string()
        } else {
            digits
        };
        format!("{mant}e{sign}{digits}")
    } else {
        s
    }
}

// ---------------------------------------------------------------------------
// Time

/// RFC 3339 with nanoseconds as Go's `time.RFC3339Nano` writes it (trailing zeros
/// of the fraction dropped; `Z` for UTC, else `±hh:mm`).
pub(crate) fn fmt_time(unix_ns: i128, offset_secs: i64) -> String {
    let local = unix_ns + i128::from(offset_secs) * NS;
    let secs = local.div_euclid(NS) as i64;
    let nanos = local.rem_euclid(NS) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    if offset_secs == 0 {
        out.push('Z');
    } else {
        let sign = if offset_secs < 0 { '-' } else { '+' };
        let off = offset_secs.abs();
        let _ = write!(out, "{sign}{:02}:{:02}", off / 3600, off % 3600 / 60);
    }
    out
}

/// Days since 1970-01-01 to a (year, month, day) civil date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
