//! Showing clients the model name they asked for.
//!
//! A client that asked for an alias (`gpt-4o`) that a policy routed to a real
//! model (`llama3.2`) must see the alias in the answer. [`renamed`] wraps a
//! response body and rewrites one top-level string field (`model`, or `id` for
//! `GET /v1/models/{model}`) of every JSON message in it:
//!
//! - NDJSON: every line; SSE: every `data:` line whose payload is a JSON
//!   object (comments, `event:`, `id:`, `data: [DONE]` pass unchanged). Streams
//!   are never held back beyond the one incomplete line: every line goes out in
//!   the output frame of the input frame that completed it. LF and CRLF endings.
//! - A non-streaming JSON body is buffered up to [`MAX_BUFFER`] and rewritten
//!   once; a larger one passes through unchanged. Any other body is untouched.
//!
//! Only the value's bytes change: serde_json validates the message and gives
//! the value's exact byte span (`RawValue`), nothing is re-serialised, so key
//! order, whitespace, numbers and the rest stay as the backend sent them. Keys
//! are compared by their decoded value (`"mod\u0065l"` is `model`). Nested
//! fields are never touched (`{"message":{"model":..}}` keeps its value). A
//! message that is not one valid JSON object (serde_json's rules, nesting
//! deeper than 128 included), or whose field is not a string, passes
//! unchanged; a key given twice is rewritten both times (clients keep either).
//! A line longer than [`MAX_BUFFER`] passes unchanged, as it comes, not held;
//! that holds however the line is split into frames.
//!
//! An error or trailers from the inner body come after all the data received
//! before them, the incomplete last line included (rewritten if it is a whole
//! message). After an error the body ends.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::proxy::relay::Framing;
use crate::BoxError;

/// The most bytes held at once: a whole JSON body, or one line of a stream.
pub const MAX_BUFFER: usize = 16 << 20;

/// Which top-level field to rewrite and to what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    /// The field: `"model"`, or `"id"` for `GET /v1/models/{model}`.
    pub field: &'static str,
    /// A top-level object whose own `field` is rewritten too: the stream
    /// events of `/v1/messages` carry the model in `message`, those of
    /// `/v1/responses` in `response`.
    pub within: Option<&'static str>,
    /// The new value: the name the client asked for.
    pub to: String,
}

/// Wraps a response body so that `rename.field` reads `rename.to` in every
/// JSON message; `json` tells whether the Content-Type is `application/json`
/// (it matters only for [`Framing::Opaque`]). Lengths change, so the caller
/// must drop the response's `Content-Length` unless the framing is Opaque and
/// `json` false (then the body is passed through untouched).
pub fn renamed<B>(body: B, framing: Framing, json: bool, rename: Rename) -> Renamed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    Renamed::with_limit(body, framing, json, rename, MAX_BUFFER)
}

enum Mode {
    /// Passed through untouched.
    Pass,
    /// NDJSON or SSE lines, rewritten one by one.
    Lines,
    /// One JSON body, buffered up to the limit.
    Whole,
}

/// The body [`renamed`] returns.
pub struct Renamed<B> {
    inner: B,
    mode: Mode,
    rewriter: Rewriter,
    limit: usize,
    /// Lines: the incomplete last line; Whole: the body so far.
    buf: BytesMut,
    /// Lines: the current line outgrew the limit and passes through as it comes.
    oversized: bool,
    /// A frame or error to give before polling `inner` again.
    held: Option<Result<Frame<Bytes>, BoxError>>,
    /// `inner` ended or failed: nothing comes after `held`.
    done: bool,
}

impl<B> Renamed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    fn with_limit(inner: B, framing: Framing, json: bool, rename: Rename, limit: usize) -> Self {
        let mode = match (framing, json) {
            (Framing::Ndjson | Framing::Sse, _) => Mode::Lines,
            (Framing::Opaque, true) => Mode::Whole,
            (Framing::Opaque, false) => Mode::Pass,
        };
        let to = serde_json::Value::String(rename.to).to_string();
        Renamed {
            inner,
            mode,
            rewriter: Rewriter {
                field: rename.field,
                within: rename.within,
                to: Bytes::from(to),
                sse: framing == Framing::Sse,
            },
            limit,
            buf: BytesMut::new(),
            oversized: false,
            held: None,
            done: false,
        }
    }

    /// Lines mode: appends to `out` every line `data` completes, keeps the tail.
    fn lines(&mut self, mut data: &[u8], out: &mut BytesMut) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            if self.oversized {
                let end = newline.map_or(data.len(), |i| i + 1);
                out.extend_from_slice(&data[..end]);
                self.oversized = newline.is_none();
                data = &data[end..];
            } else if let Some(i) = newline {
                let (line, rest) = data.split_at(i + 1);
                if self.buf.is_empty() {
                    self.rewriter.line(line, self.limit, out);
                } else {
                    self.buf.extend_from_slice(line);
                    self.rewriter.line(&self.buf, self.limit, out);
                    self.buf.clear();
                }
                data = rest;
            } else if self.buf.len() + data.len() > self.limit {
                out.extend_from_slice(&std::mem::take(&mut self.buf));
                out.extend_from_slice(data);
                self.oversized = true;
                return;
            } else {
                self.buf.extend_from_slice(data);
                return;
            }
        }
    }

    /// Whole mode: buffers `data`; past the limit, gives back what to send
    /// now (and holds the rest) and passes everything through from then on.
    fn whole(&mut self, data: Bytes) -> Option<Bytes> {
        if self.buf.len() + data.len() <= self.limit {
            self.buf.extend_from_slice(&data);
            return None;
        }
        self.mode = Mode::Pass;
        let so_far = std::mem::take(&mut self.buf).freeze();
        if so_far.is_empty() {
            return Some(data);
        }
        self.held = Some(Ok(Frame::data(data)));
        Some(so_far)
    }

    /// Appends what is buffered to `out`, rewritten if it is a whole message.
    fn flush(&mut self, out: &mut BytesMut) {
        let buf = std::mem::take(&mut self.buf);
        match self.mode {
            Mode::Lines => self.rewriter.line(&buf, self.limit, out),
            Mode::Whole => self.rewriter.message(&buf, 0..buf.len(), out),
            Mode::Pass => out.extend_from_slice(&buf),
        }
        self.oversized = false;
    }
}

impl<B> Body for Renamed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(item) = this.held.take() {
            return Poll::Ready(Some(item));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Mode::Pass = this.mode {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        loop {
            let mut out = BytesMut::new();
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Mode::Lines = this.mode {
                            out.reserve(data.len() + this.buf.len());
                            this.lines(&data, &mut out);
                        } else if let Some(now) = this.whole(data) {
                            return Poll::Ready(Some(Ok(Frame::data(now))));
                        }
                        if this.inner.is_end_stream() {
                            this.flush(&mut out);
                            this.done = true;
                        }
                    }
                    Err(frame) => {
                        this.flush(&mut out);
                        this.held = Some(Ok(frame));
                    }
                },
                Some(Err(err)) => {
                    this.flush(&mut out);
                    this.held = Some(Err(err));
                    this.done = true;
                }
                None => {
                    this.flush(&mut out);
                    this.done = true;
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            if let Some(item) = this.held.take() {
                return Poll::Ready(Some(item));
            }
            if this.done {
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.held.is_some() {
            return false;
        }
        self.done || (self.buf.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            _ if self.done && self.held.is_none() => SizeHint::with_exact(0),
            Mode::Pass if self.held.is_none() => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// What to write in place of which field.
struct Rewriter {
    field: &'static str,
    within: Option<&'static str>,
    /// The new value, JSON-encoded.
    to: Bytes,
    sse: bool,
}

impl Rewriter {
    /// Appends `line` (its newline, if any, included) to `out`, rewritten.
    fn line(&self, line: &[u8], limit: usize, out: &mut BytesMut) {
        let end = line.len() - usize::from(line.last() == Some(&b'\n'));
        let start = match self.sse {
            false => 0,
            true if line.starts_with(b"data:") => 5,
            true => end,
        };
        if start == end || end > limit {
            out.extend_from_slice(line);
        } else {
            self.message(line, start..end, out);
        }
    }

    /// Appends `text` to `out`, rewritten if `text[msg]` is one JSON object.
    fn message(&self, text: &[u8], msg: Range<usize>, out: &mut BytesMut) {
        let mut at = 0;
        let spans = field_spans(&text[msg.clone()], self.field, self.within);
        for span in spans.unwrap_or_default() {
            out.extend_from_slice(&text[at..msg.start + span.start]);
            out.extend_from_slice(&self.to);
            at = msg.start + span.end;
        }
        out.extend_from_slice(&text[at..]);
    }
}

/// The spans of the string values of the top-level keys `field` if `text` is
/// one JSON object (whitespace around it allowed), else `None`. serde_json
/// validates and decodes keys; `RawValue` borrows each value's exact bytes.
/// `within`, when given, names a top-level object whose own `field` values
/// are given too (in order of their place in `text`).
fn field_spans(text: &[u8], field: &str, within: Option<&str>) -> Option<Vec<Range<usize>>> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let values = de.deserialize_map(Fields { field, within }).ok()?;
    de.end().ok()?;
    let span_of = |value: &RawValue| {
        let start = (value.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        let span = start..start + value.get().len();
        (span.end <= text.len()).then_some(span)
    };
    let mut spans = Vec::new();
    for (value, nested) in values {
        let span = span_of(value)?;
        match nested {
            false => spans.push(span),
            true => {
                let inner = field_spans(&text[span.clone()], field, None)?;
                spans.extend(
                    inner
                        .into_iter()
                        .map(|r| r.start + span.start..r.end + span.start),
                );
            }
        }
    }
    spans.sort_by_key(|r| r.start);
    Some(spans)
}

/// Visits an object; gives its values under keys that decode to the field
/// (string values), and, flagged, those under `within` (object values).
struct Fields<'f> {
    field: &'f str,
    within: Option<&'f str>,
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<(&'de RawValue, bool)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        let seed = KeyIs {
            field: self.field,
            within: self.within,
        };
        while let Some(hit) = map.next_key_seed(seed)? {
            let value: &'de RawValue = map.next_value()?;
            match hit {
                Key::Field if value.get().starts_with('"') => found.push((value, false)),
                Key::Within if value.get().starts_with('{') => found.push((value, true)),
                _ => {}
            }
        }
        Ok(found)
    }
}

/// What a key is to [`Fields`].
enum Key {
    Field,
    Within,
    Other,
}

/// Which of the two names a key decodes to, without allocating.
#[derive(Clone, Copy)]
struct KeyIs<'f> {
    field: &'f str,
    within: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, key: D) -> Result<Key, D::Error> {
        key.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        Ok(if key == self.field {
            Key::Field
        } else if Some(key) == self.within {
            Key::Within
        } else {
            Key::Other
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::Waker;

    /// An inner body that gives scripted frames, then ends or hangs.
    struct Script {
        frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
        hang: bool,
        /// Whether `is_end_stream` tells the end before the final `None`.
        honest: bool,
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(frame)),
                None if self.hang => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
        fn is_end_stream(&self) -> bool {
            self.honest && !self.hang && self.frames.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            let data = self
                .frames
                .iter()
                .filter_map(|f| f.as_ref().ok()?.data_ref());
            SizeHint::with_exact(data.map(|d| d.len() as u64).sum())
        }
    }

    fn wrap(chunks: &[&[u8]], framing: Framing, json: bool, limit: usize) -> Renamed<Script> {
        let frames = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))));
        let inner = Script {
            frames: frames.collect(),
            hang: false,
            honest: false,
        };
        let rename = Rename {
            field: "model",
            within: None,
            to: "gpt-4o".into(),
        };
        Renamed::with_limit(inner, framing, json, rename, limit)
    }

    #[derive(Debug, PartialEq)]
    enum Out {
        Data(Bytes),
        Trailers,
        Error(String),
        Pending,
        End,
    }

    /// Polls until the body ends or is pending; the last item says which.
    fn drain(body: &mut Renamed<Script>) -> Vec<Out> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut outs = Vec::new();
        loop {
            let out = match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending => Out::Pending,
                Poll::Ready(None) => Out::End,
                Poll::Ready(Some(Err(e))) => Out::Error(e.to_string()),
                Poll::Ready(Some(Ok(f))) => f.into_data().map_or(Out::Trailers, Out::Data),
            };
            let last = matches!(out, Out::Pending | Out::End);
            outs.push(out);
            if last {
                return outs;
            }
        }
    }

    fn text(outs: &[Out]) -> String {
        let data = outs.iter().filter_map(|o| match o {
            Out::Data(d) => Some(String::from_utf8(d.to_vec()).unwrap()),
            _ => None,
        });
        data.collect()
    }

    /// (line, its rewrite or "" if unchanged, line ending).
    type Lines = [(&'static str, &'static str, &'static str)];

    const NDJSON: &Lines = &[
        (
            r#"{"model":"llama3.2","message":{"role":"a","model":"in"},"done":false}"#,
            r#"{"model":"gpt-4o","message":{"role":"a","model":"in"},"done":false}"#,
            "\n",
        ),
        (
            r#" {"t":"the \"model\": x", "model" : "l\u00e9\"" ,"n":[1,-2.5e-3,{"model":"x"}]}"#,
            r#" {"t":"the \"model\": x", "model" : "gpt-4o" ,"n":[1,-2.5e-3,{"model":"x"}]}"#,
            "\r\n",
        ),
        (r#"not json "model":"x""#, "", "\n"),
        (r#"{"model":5,"b":true}"#, "", "\n"),
        ("", "", "\n"),
        (
            r#"{"mod\u0065l":"a","model":"b"}"#,
            r#"{"mod\u0065l":"gpt-4o","model":"gpt-4o"}"#,
            "\n",
        ),
        (r#"{"model":"x"} {}"#, "", "\n"),
        (r#"["model","x"]"#, "", "\n"),
        (r#"{"model":"tail"}"#, r#"{"model":"gpt-4o"}"#, ""),
    ];

    const SSE: &Lines = &[
        (": keep-alive", "", "\n"),
        ("event: message", "", "\n"),
        ("id: 7", "", "\n"),
        (r#"{"model":"x"}"#, "", "\n"),
        (
            r#"data: {"model":"llama3.2","c":[{"d":"data: {\"model\":\"x\"}"}]}"#,
            r#"data: {"model":"gpt-4o","c":[{"d":"data: {\"model\":\"x\"}"}]}"#,
            "\n",
        ),
        ("", "", "\n"),
        (
            r#"data:{"model":"llama3.2"}"#,
            r#"data:{"model":"gpt-4o"}"#,
            "\r\n",
        ),
        ("", "", "\r\n"),
        (r#"model: {"model":"x"}"#, "", "\n"),
        (r#"data: {"model":"x""#, "", "\n"),
        ("data: [DONE]", "", "\n"),
        ("", "", "\n"),
    ];

    /// Feeds the input cut at `cuts`, one chunk at a time; after each, the
    /// output must be the rewrite of exactly the complete lines seen so far.
    fn check_split(framing: Framing, lines: &Lines, cuts: &[usize], honest: bool) {
        let input: String = lines.iter().map(|l| [l.0, l.2].concat()).collect();
        let want = |seen: usize| -> String {
            let mut len = 0;
            let done = lines.iter().take_while(|l| {
                len += l.0.len() + l.2.len();
                len <= seen && !l.2.is_empty() || seen == input.len()
            });
            done.map(|l| [if l.1.is_empty() { l.0 } else { l.1 }, l.2].concat())
                .collect()
        };
        let mut body = wrap(&[], framing, false, MAX_BUFFER);
        (body.inner.hang, body.inner.honest) = (true, honest);
        let (mut got, mut from) = (String::new(), 0);
        for &to in cuts.iter().chain([&input.len()]) {
            let chunk = Bytes::copy_from_slice(&input.as_bytes()[from..to]);
            body.inner.frames.push_back(Ok(Frame::data(chunk)));
            if to == input.len() {
                body.inner.hang = false;
            }
            let outs = drain(&mut body);
            let frames = outs.iter().filter(|o| matches!(o, Out::Data(_))).count();
            assert!(
                frames <= 1 + usize::from(to == input.len() && !honest),
                "{outs:?}"
            );
            got += &text(&outs);
            assert_eq!(got, want(to), "cuts {cuts:?}, honest {honest}");
            from = to;
        }
        assert!(body.is_end_stream());
    }

    #[test]
    fn every_split_of_ndjson_and_sse() {
        for (framing, lines) in [(Framing::Ndjson, NDJSON), (Framing::Sse, SSE)] {
            let len: usize = lines.iter().map(|l| l.0.len() + l.2.len()).sum();
            for i in 0..=len {
                check_split(framing, lines, &[i], true);
                for j in i..=len {
                    check_split(framing, lines, &[i, j], false);
                }
            }
            check_split(framing, lines, &(1..len).collect::<Vec<_>>(), true);
        }
    }

    #[test]
    fn a_complete_line_comes_out_at_once() {
        let mut body = wrap(&[b"{\"model\":\"a\"}\n{\"mo"], Framing::Ndjson, false, 64);
        body.inner.hang = true;
        let outs = drain(&mut body);
        assert_eq!(
            outs,
            [Out::Data("{\"model\":\"gpt-4o\"}\n".into()), Out::Pending]
        );
        assert!(!body.is_end_stream());
    }

    #[test]
    fn escapes_in_the_new_value_and_keys() {
        let mut body = wrap(
            &[br#"{"\u006dodel":"x","model\u0000":"y","mod\/el":1}"#],
            Framing::Ndjson,
            false,
            64,
        );
        body.rewriter.to = serde_json::to_string("a\"b\\é").unwrap().into();
        let want = r#"{"\u006dodel":"a\"b\\é","model\u0000":"y","mod\/el":1}"#;
        assert_eq!(text(&drain(&mut body)), want);
    }

    #[test]
    fn the_model_inside_a_named_object_is_rewritten_too() {
        let text = br#"{"type":"message_start","message":{"id":"m","model":"x","content":[{"model":"keep"}]},"model":"y"}"#;
        let spans = field_spans(text, "model", Some("message")).unwrap();
        let values: Vec<&str> = spans
            .iter()
            .map(|r| std::str::from_utf8(&text[r.clone()]).unwrap())
            .collect();
        assert_eq!(values, [r#""x""#, r#""y""#]);
        // Not named: not looked into.
        assert_eq!(field_spans(text, "model", None).unwrap().len(), 1);
        // A `message` that is no object is passed over.
        let flat = br#"{"message":"model","model":"z"}"#;
        assert_eq!(
            field_spans(flat, "model", Some("message")).unwrap().len(),
            1
        );
    }

    #[test]
    fn only_one_valid_object_is_rewritten() {
        let spans = |s: &str| field_spans(s.as_bytes(), "model", None);
        assert_eq!(
            spans(" {\"model\" :\t\"x\"}\r"),
            Some(vec![Range { start: 12, end: 15 }])
        );
        assert_eq!(
            spans(r#"{"a":[],"b":{},"c":[[0,1e9,{"d":[true]}]],"model":null}"#),
            Some(vec![])
        );
        for bad in [
            "",
            r#"[{"model":"x"}]"#,
            r#"{"model":"x",}"#,
            r#"{"model":"x""#,
            r#"{"model":"x"}}"#,
            r#"{model:"x"}"#,
            r#"{"a":01,"model":"x"}"#,
            r#"{"a":1.,"model":"x"}"#,
            r#"{"a":tru,"model":"x"}"#,
            r#"{"a":"\x","model":"x"}"#,
            "{\"a\":\"\u{1}\",\"model\":\"x\"}",
            r#"{"a":[1,],"model":"x"}"#,
            r#"{"a":{"b"},"model":"x"}"#,
            r#"{"a":1 "model":"x"}"#,
        ] {
            assert_eq!(spans(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_oversized_line_passes_unchanged_and_the_next_is_rewritten() {
        let input =
            b"{\"model\":\"aaaaaaaaaaaaaaaaaaaaaaaaa\"}\n{\"model\":\"b\"}\n{\"model\":\"c\"}";
        let want = "{\"model\":\"aaaaaaaaaaaaaaaaaaaaaaaaa\"}\n{\"model\":\"gpt-4o\"}\n{\"model\":\"gpt-4o\"}";
        for size in [1, 4, 20, input.len()] {
            let mut body = wrap(
                &input.chunks(size).collect::<Vec<_>>(),
                Framing::Ndjson,
                false,
                20,
            );
            assert_eq!(text(&drain(&mut body)), want, "chunks of {size}");
        }
        // An oversized line is not held back.
        let mut body = wrap(
            &[b"{\"model\":\"a", b"aaaaaaaaaaaaaaaaaaaa", b"aa"],
            Framing::Ndjson,
            false,
            20,
        );
        body.inner.hang = true;
        assert_eq!(
            text(&drain(&mut body)),
            "{\"model\":\"aaaaaaaaaaaaaaaaaaaaaaa"
        );
    }

    #[test]
    fn a_whole_json_body_is_rewritten_once() {
        let chunks: [&[u8]; 3] = [
            b"{\"id\":\"llama3.2\",\"obj",
            b"ect\":\"model\",\"created\":1",
            b"}",
        ];
        for honest in [true, false] {
            let mut body = wrap(&chunks, Framing::Opaque, true, 46);
            (body.rewriter.field, body.inner.honest) = ("id", honest);
            let want = r#"{"id":"gpt-4o","object":"model","created":1}"#;
            assert_eq!(drain(&mut body), [Out::Data(want.into()), Out::End]);
        }
    }

    #[test]
    fn a_json_body_over_the_limit_passes_unchanged() {
        let chunks: [&[u8]; 4] = [b"{\"model\":", b"\"llama3.2\"", b",\"a\":1", b"}"];
        let mut body = wrap(&chunks, Framing::Opaque, true, 12);
        let outs = drain(&mut body);
        let want = chunks.map(|c| Out::Data(Bytes::copy_from_slice(c)));
        assert_eq!(outs[..4], want);
        assert_eq!(outs[4..], [Out::End]);
        let mut body = wrap(&[&[b'x'; 30]], Framing::Opaque, true, 20);
        assert_eq!(text(&drain(&mut body)), "x".repeat(30));
    }

    #[test]
    fn other_bodies_pass_untouched() {
        let mut body = wrap(&[b"{\"model\":\"x\"}"], Framing::Opaque, false, 64);
        body.inner
            .frames
            .push_back(Ok(Frame::trailers(http::HeaderMap::new())));
        let outs = drain(&mut body);
        assert_eq!(
            outs,
            [
                Out::Data("{\"model\":\"x\"}".into()),
                Out::Trailers,
                Out::End
            ]
        );
    }

    #[test]
    fn the_tail_comes_before_an_error_or_trailers() {
        let cases: [(Framing, bool, &[u8], &str); 2] = [
            (
                Framing::Ndjson,
                false,
                b"{\"model\":\"a\"}\n{\"model\":\"b\"}",
                "{\"model\":\"gpt-4o\"}\n{\"model\":\"gpt-4o\"}",
            ),
            (
                Framing::Opaque,
                true,
                b"{\"model\":\"a\"",
                "{\"model\":\"a\"",
            ),
        ];
        for (framing, json, input, want) in cases {
            let mut body = wrap(&[input], framing, json, 64);
            body.inner.frames.push_back(Err("broke".into()));
            let outs = drain(&mut body);
            assert_eq!(text(&outs), want);
            assert_eq!(
                outs[outs.len() - 2..],
                [Out::Error("broke".into()), Out::End]
            );
            assert!(body.is_end_stream());
        }
        let mut body = wrap(&[b"data: {\"model\":\"a\"}"], Framing::Sse, false, 64);
        body.inner
            .frames
            .push_back(Ok(Frame::trailers(http::HeaderMap::new())));
        let want = [
            Out::Data("data: {\"model\":\"gpt-4o\"}".into()),
            Out::Trailers,
            Out::End,
        ];
        assert_eq!(drain(&mut body), want);
    }

    #[test]
    fn end_and_size_hints() {
        let mut body = wrap(&[], Framing::Ndjson, false, 64);
        body.inner.honest = true;
        assert!(body.is_end_stream());
        let mut body = wrap(&[b"{}"], Framing::Opaque, false, 64);
        body.inner.honest = true;
        assert_eq!(body.size_hint().exact(), Some(2));
        let mut body = wrap(&[b"{\"model\":\"a\"}"], Framing::Opaque, true, 64);
        body.inner.honest = true;
        assert!(!body.is_end_stream());
        assert_eq!(
            (body.size_hint().lower(), body.size_hint().upper()),
            (0, None)
        );
        drain(&mut body);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
