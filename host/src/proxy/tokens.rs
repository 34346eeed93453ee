//! Token usage, read from a response body as it passes.
//!
//! A [`Counter`] is shown each chunk of a backend's answer on its way to the
//! client. It only looks: no byte is changed, held back or delayed. It reads:
//!
//! - **NDJSON** (`/api/generate`, `/api/chat`): the line whose top-level `done`
//!   is `true` ends the stream and gives `prompt_eval_count` and `eval_count`.
//! - **SSE** (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
//!   `/v1/messages`): `data: [DONE]`, or an event named `response.completed`,
//!   `response.incomplete`, `response.failed` or `message_stop`, ends it. Counts
//!   come from a `usage` object at the top level (OpenAI's usage chunk,
//!   Anthropic's `message_delta`), in `message` (`message_start`) or in
//!   `response` (`response.completed`), as `prompt_tokens`/`completion_tokens`
//!   or `input_tokens`/`output_tokens`; a later value replaces an earlier one.
//! - **Opaque** with `json` (non-streaming answers, `/api/embed`,
//!   `/v1/embeddings`): the whole body, read by [`Counter::finish`] with the
//!   same fields. It is `done` if it is one complete JSON object with no
//!   top-level `error` (nor `"done":false`). Its first token time is when its
//!   first bytes passed, if it is done and generated tokens (`eval_count` or
//!   `completion_tokens` above 0). Any other body is not read.
//!
//! First token: in a stream, the first message with a non-empty string value
//! for `response`, `content`, `thinking`, `reasoning` or `text`, or a non-empty
//! `tool_calls` array (a role-only first delta has `"content":""`); in named
//! SSE events, the first `response.*.delta` or `content_block_delta`.
//!
//! Cost: streams are cut into lines (LF or CRLF) as they come. Only a line in
//! which a byte search finds `"done":true` or `"usage":{` is parsed (serde_json,
//! borrowing, other fields skipped; the zeroed usage every `/v1/completions`
//! chunk carries is skipped too). Until the first token is seen, each line is
//! also searched for the content keys; after that, other lines cost one or two
//! scans. Only the incomplete last line is held, at most [`LINE_CAP`] bytes; a
//! non-streaming body at most [`BODY_CAP`].
//!
//! A longer line or body is not held: only its last [`TAIL`] bytes are, and
//! are searched for the count keys (`"eval_count":259`: the last occurrence,
//! its number ended within them). Final frames can be long: `/api/generate`'s
//! carries `context` (about 7 bytes a token), `response.completed` repeats the
//! output, embeddings are large; in all of them the counts come last (Go's
//! struct order, sorted map keys). Such a line is final if its head holds
//! `"done":true` (NDJSON) or its event is final (SSE), and it ends with `}`; a
//! long body, if counts were found and it ends with `}`. A long line that is
//! not final is taken as content. A count key in a nested object near the end
//! of such a line would fool this; none of the shapes above has one.
//!
//! Ollama omits zero metrics: a final frame without `eval_count` gives `None`,
//! which a caller counts as zero when `done`.

use std::time::Instant;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::proxy::relay::Framing;

/// The most bytes of one incomplete stream line held.
pub const LINE_CAP: usize = 64 << 10;
/// The most bytes of a non-streaming JSON body held.
pub const BODY_CAP: usize = 1 << 20;
/// How many last bytes of a longer line or body are kept and searched for counts.
pub const TAIL: usize = 4 << 10;

/// Every chunk of a `/v1/completions` stream with `include_usage` carries this.
const ZERO_USAGE: &[u8] = br#""usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}"#;
/// Keys whose non-empty value is generated content.
const CONTENT: [&[u8]; 6] = [
    b"response",
    b"content",
    b"thinking",
    b"reasoning",
    b"text",
    b"tool_calls",
];
const PROMPT: [&[u8]; 3] = [b"prompt_eval_count", b"prompt_tokens", b"input_tokens"];
const COMPLETION: [&[u8]; 3] = [b"eval_count", b"completion_tokens", b"output_tokens"];

/// The token usage a response reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens: `prompt_eval_count`, `prompt_tokens` or `input_tokens`.
    pub prompt_tokens: Option<u64>,
    /// Generated tokens: `eval_count`, `completion_tokens` or `output_tokens`.
    pub completion_tokens: Option<u64>,
    /// A final frame was seen; false for a stream cut (or failed) before it.
    pub done: bool,
    /// When the first frame carrying generated content passed; for a whole
    /// body, when its first bytes did, if it is done and generated tokens.
    pub first_token_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    Ndjson,
    Sse,
    Whole,
    #[default]
    Off,
}

/// Watches one response body and collects its [`Usage`].
#[derive(Debug, Default)]
pub struct Counter {
    mode: Mode,
    /// [`LINE_CAP`] for streams, [`BODY_CAP`] for a whole body.
    limit: usize,
    /// The incomplete line (or the body) so far; once it outgrew `limit`, its tail.
    buf: Vec<u8>,
    /// The current line (or the body) outgrew `limit`.
    long: bool,
    /// The long line is a final frame (known from its head).
    long_final: bool,
    /// SSE: the current event's name (`event:`), cut at 64 bytes.
    event: Vec<u8>,
    /// Opaque: when the body's first bytes passed.
    first_chunk: Option<Instant>,
    /// How many messages were parsed (the tests check the pre-check with it).
    parsed: usize,
    usage: Usage,
}

impl Counter {
    /// A counter for a body of this framing; `json` tells whether the
    /// Content-Type is `application/json` (it matters only for Opaque).
    pub fn new(framing: Framing, json: bool) -> Counter {
        let (mode, limit) = match (framing, json) {
            (Framing::Ndjson, _) => (Mode::Ndjson, LINE_CAP),
            (Framing::Sse, _) => (Mode::Sse, LINE_CAP),
            (Framing::Opaque, true) => (Mode::Whole, BODY_CAP),
            (Framing::Opaque, false) => (Mode::Off, 0),
        };
        Counter {
            mode,
            limit,
            ..Counter::default()
        }
    }

    /// Looks at one chunk of the body as it passes (chunks split lines anywhere).
    pub fn observe(&mut self, mut chunk: &[u8]) {
        match self.mode {
            Mode::Off => {}
            Mode::Whole if chunk.is_empty() => {}
            Mode::Whole => {
                self.first_chunk.get_or_insert_with(Instant::now);
                self.piece(chunk);
            }
            Mode::Ndjson | Mode::Sse => {
                while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                    self.complete(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                }
                if !chunk.is_empty() {
                    self.piece(chunk);
                }
            }
        }
    }

    /// The body ended (or was cut): flushes a final incomplete line.
    pub fn finish(&mut self) -> Usage {
        match self.mode {
            Mode::Whole if self.long => self.end_long(),
            Mode::Whole => {
                let body = std::mem::take(&mut self.buf);
                if let Some(frame) = self.parse(&body) {
                    self.read(&frame);
                    self.usage.done = frame.error.is_none() && frame.done != Some(false);
                }
            }
            Mode::Ndjson | Mode::Sse if self.long || !self.buf.is_empty() => self.complete(&[]),
            _ => {}
        }
        if self.usage.done && self.usage.completion_tokens.is_some_and(|n| n > 0) {
            self.usage.first_token_at = self.usage.first_token_at.or(self.first_chunk);
        }
        self.buf = Vec::new();
        self.usage
    }

    /// A line ends with `part`.
    fn complete(&mut self, part: &[u8]) {
        if !self.long && self.buf.is_empty() && part.len() <= self.limit {
            return self.line(part);
        }
        self.piece(part);
        if self.long {
            return self.end_long();
        }
        let line = std::mem::take(&mut self.buf);
        self.line(&line);
        self.buf = line;
        self.buf.clear();
    }

    /// Holds `part` of the current line or body, or only a tail once too long.
    fn piece(&mut self, part: &[u8]) {
        if self.long {
            return keep_tail(&mut self.buf, part);
        }
        let (head, rest) = part.split_at(part.len().min(self.limit - self.buf.len()));
        let want = (self.buf.len() + head.len()).max(self.buf.capacity() * 2);
        self.buf
            .reserve_exact(want.min(self.limit) - self.buf.len());
        self.buf.extend_from_slice(head);
        if rest.is_empty() {
            return;
        }
        // Outgrown: decide what the line is from its head, then keep its tail.
        let data = self.buf.starts_with(b"data:");
        let (last, content) = match self.mode {
            Mode::Ndjson => {
                let last = has_value(&self.buf, b"done", b"true");
                (last, !last)
            }
            Mode::Sse => (
                data && is_final(&self.event),
                data && (self.event.is_empty() || is_content(&self.event)),
            ),
            Mode::Whole | Mode::Off => (false, false),
        };
        if content {
            self.mark_content();
        }
        (self.long, self.long_final) = (true, last);
        self.buf
            .drain(..self.buf.len() - TAIL.saturating_sub(rest.len()));
        keep_tail(&mut self.buf, rest);
    }

    /// The long line (or body) ended; `buf` holds its tail.
    fn end_long(&mut self) {
        let tail = std::mem::take(&mut self.buf);
        let last = |keys: [&'static [u8]; 3]| {
            keys.into_iter()
                .find_map(|k| values(&tail, k).filter_map(number).last())
        };
        let (prompt, completion) = (last(PROMPT), last(COMPLETION));
        self.set(prompt, completion);
        let counted = prompt.is_some() || completion.is_some();
        let last = if self.mode == Mode::Whole {
            counted
        } else {
            self.long_final
        };
        self.usage.done |= last && tail.trim_ascii_end().ends_with(b"}");
        self.buf = tail;
        self.buf.clear();
        (self.long, self.long_final) = (false, false);
    }

    fn line(&mut self, line: &[u8]) {
        if self.mode == Mode::Ndjson {
            self.look_for_content(line);
            if has_value(line, b"done", b"true") {
                if let Some(frame) = self.parse(line) {
                    self.usage.done |= frame.done == Some(true);
                    self.read(&frame);
                }
            }
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.event.clear();
        }
        if let Some(name) = field(line, b"event") {
            self.event.clear();
            return self.event.extend_from_slice(&name[..name.len().min(64)]);
        }
        let Some(data) = field(line, b"data") else {
            return;
        };
        if data == b"[DONE]" || is_final(&self.event) {
            self.usage.done = true;
        }
        if self.event.is_empty() {
            self.look_for_content(data);
        } else if is_content(&self.event) {
            self.mark_content();
        }
        if has_value(data, b"usage", b"{") && find(data, ZERO_USAGE).is_none() {
            if let Some(frame) = self.parse(data) {
                self.read(&frame);
            }
        }
    }

    fn parse<'a>(&mut self, message: &'a [u8]) -> Option<Frame<'a>> {
        self.parsed += 1;
        serde_json::from_slice(message).ok()
    }

    /// Takes the counts a message carries.
    fn read(&mut self, frame: &Frame) {
        self.set(frame.prompt_eval_count, frame.eval_count);
        let nested = (frame.response)
            .filter(|r| r.get().starts_with('{'))
            .and_then(|r| serde_json::from_str::<Nested>(r.get()).ok());
        let message = frame.message.as_ref().and_then(|m| m.usage);
        for counts in [frame.usage, message, nested.and_then(|n| n.usage)]
            .into_iter()
            .flatten()
        {
            let prompt = counts.prompt_tokens.or(counts.input_tokens);
            self.set(prompt, counts.completion_tokens.or(counts.output_tokens));
        }
    }

    fn set(&mut self, prompt: Option<u64>, completion: Option<u64>) {
        self.usage.prompt_tokens = prompt.or(self.usage.prompt_tokens);
        self.usage.completion_tokens = completion.or(self.usage.completion_tokens);
    }

    fn look_for_content(&mut self, message: &[u8]) {
        let filled = |v: &[u8]| match v.split_first() {
            Some((b'"', rest)) => !rest.starts_with(b"\""),
            Some((b'[', rest)) => !rest.trim_ascii_start().starts_with(b"]"),
            _ => false,
        };
        if self.usage.first_token_at.is_none()
            && CONTENT.iter().any(|k| values(message, k).any(filled))
        {
            self.mark_content();
        }
    }

    fn mark_content(&mut self) {
        self.usage.first_token_at.get_or_insert_with(Instant::now);
    }
}

/// The fields of one message that hold counts; the rest is skipped.
#[derive(Deserialize)]
struct Frame<'a> {
    done: Option<bool>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    usage: Option<Counts>,
    /// Anthropic's `message_start` (Ollama's chat message has no usage).
    message: Option<Nested>,
    /// The Responses API's response object (generate's text is a string).
    #[serde(borrow)]
    response: Option<&'a RawValue>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Nested {
    usage: Option<Counts>,
}

#[derive(Clone, Copy, Deserialize)]
struct Counts {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

fn is_final(event: &[u8]) -> bool {
    let ends = [
        &b"message_stop"[..],
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
    ];
    ends.contains(&event)
}

fn is_content(event: &[u8]) -> bool {
    event == b"content_block_delta" || event.starts_with(b"response.") && event.ends_with(b".delta")
}

/// An SSE line's value for `name`, one leading space dropped.
fn field<'l>(line: &'l [u8], name: &[u8]) -> Option<&'l [u8]> {
    let value = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// Keeps the last [`TAIL`] bytes of `buf` followed by `bytes`.
fn keep_tail(buf: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(TAIL)..];
    buf.drain(..(buf.len() + bytes.len()).saturating_sub(TAIL));
    buf.extend_from_slice(bytes);
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut at = 0;
    loop {
        let i = at + hay.get(at..)?.iter().position(|&b| b == first)?;
        if hay[i + 1..].starts_with(rest) {
            return Some(i);
        }
        at = i + 1;
    }
}

/// What follows each `"key":` (blanks allowed).
fn values<'h>(hay: &'h [u8], key: &'static [u8]) -> impl Iterator<Item = &'h [u8]> {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let i = at + find(&hay[at..], key)?;
        at = i + key.len();
        let quoted = i > 0 && hay[i - 1] == b'"' && hay.get(at) == Some(&b'"');
        if let Some(value) = hay.get(at + 1..).filter(|_| quoted) {
            if let Some(value) = value.trim_ascii_start().strip_prefix(b":") {
                return Some(value.trim_ascii_start());
            }
        }
    })
}

fn has_value(hay: &[u8], key: &'static [u8], prefix: &[u8]) -> bool {
    values(hay, key).any(|v| v.starts_with(prefix))
}

/// A number that ends before `value` does (so it was not cut).
fn number(value: &[u8]) -> Option<u64> {
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits == value.len() {
        return None;
    }
    std::str::from_utf8(&value[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Got = (Option<u64>, Option<u64>, bool);
    fn got(u: Usage) -> Got {
        (u.prompt_tokens, u.completion_tokens, u.done)
    }
    fn run(framing: Framing, chunks: &[&[u8]]) -> Usage {
        let mut counter = Counter::new(framing, true);
        chunks.iter().for_each(|c| counter.observe(c));
        counter.finish()
    }
    /// Every split into two chunks, and one byte at a time, give `want`.
    fn every_split(framing: Framing, body: &str, want: Got) {
        let body = body.as_bytes();
        let splits = (0..=body.len()).map(|i| vec![&body[..i], &body[i..]]);
        for chunks in splits.chain([body.chunks(1).collect()]) {
            let usage = run(framing, &chunks);
            assert_eq!(got(usage), want, "split at {}", chunks[0].len());
            let generated = want.1.is_some_and(|n| n > 0) && want.2;
            assert_eq!(
                usage.first_token_at.is_some(),
                framing != Framing::Opaque || generated
            );
        }
    }

    const CHAT: &str = r#"{"model":"qwen3","created_at":"2025-06-01T10:00:00.1Z","message":{"role":"assistant","content":""},"done":false}
{"model":"qwen3","created_at":"2025-06-01T10:00:00.2Z","message":{"role":"assistant","content":"","thinking":"Let"},"done":false}
{"model":"qwen3","created_at":"2025-06-01T10:00:00.3Z","message":{"role":"assistant","content":"Hi \"done\":true"},"done":false}
{"model":"qwen3","created_at":"2025-06-01T10:00:00.4Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}
"#;
    const SSE: &str = r#"data: {"id":"chatcmpl-4","object":"chat.completion.chunk","created":1733000000,"model":"llama3.2","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}

data: {"id":"chatcmpl-4","object":"chat.completion.chunk","created":1733000000,"model":"llama3.2","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}

data: {"id":"chatcmpl-4","object":"chat.completion.chunk","created":1733000000,"model":"llama3.2","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}

data: {"id":"chatcmpl-4","object":"chat.completion.chunk","created":1733000000,"model":"llama3.2","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":8,"total_tokens":34}}

data: [DONE]

"#;
    const RESPONSES: &str = r#"event: response.created
data: {"response":{"id":"resp_1","output":[],"status":"in_progress","usage":null},"sequence_number":0,"type":"response.created"}

event: response.output_text.delta
data: {"delta":"Hi","item_id":"msg_1","output_index":0,"sequence_number":3,"type":"response.output_text.delta"}

event: response.completed
data: {"response":{"id":"resp_1","output":[{"content":[{"text":"TEXT","type":"output_text"}]}],"status":"completed","usage":{"input_tokens":26,"input_tokens_details":{"cached_tokens":0},"output_tokens":8,"total_tokens":34}},"sequence_number":9,"type":"response.completed"}

"#;
    const MESSAGES: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","role":"assistant","content":[],"usage":{"input_tokens":26,"output_tokens":0}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":8}}

event: message_stop
data: {"type":"message_stop"}

"#;

    fn done_line() -> &'static str {
        CHAT.lines().last().unwrap()
    }

    #[test]
    fn ndjson_and_sse_at_every_split() {
        for eol in ["\n", "\r\n"] {
            let (chat, sse) = (CHAT.replace('\n', eol), SSE.replace('\n', eol));
            every_split(Framing::Ndjson, &chat, (Some(26), Some(282), true));
            every_split(Framing::Sse, &sse, (Some(26), Some(8), true));
        }
    }

    #[test]
    fn first_token_is_the_first_content_frame_and_only_final_frames_are_parsed() {
        for (framing, body, sep) in [(Framing::Ndjson, CHAT, "\n"), (Framing::Sse, SSE, "\n\n")] {
            let mut frames = body.split_inclusive(sep);
            let mut counter = Counter::new(framing, false);
            counter.observe(frames.next().unwrap().as_bytes());
            assert_eq!(counter.usage.first_token_at, None, "empty or role-only");
            counter.observe(frames.next().unwrap().as_bytes());
            let first = counter.usage.first_token_at.expect("a content frame");
            frames.for_each(|f| counter.observe(f.as_bytes()));
            assert_eq!(counter.finish().first_token_at, Some(first));
            assert_eq!(counter.parsed, 1);
        }
    }

    #[test]
    fn completions_zeroed_usage_is_not_parsed_and_the_real_one_is() {
        let zero = r#","usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}"#;
        let chunk = |c: &str| format!("data: {{\"id\":\"cmpl-1\",\"choices\":{c}{zero}\n\n");
        let real = r#","usage":{"prompt_tokens":5,"completion_tokens":50}}"#;
        let body = chunk(r#"[{"text":"Hi","index":0,"finish_reason":null}]"#).repeat(50)
            + &chunk("[]").replace(zero, real)
            + "data: [DONE]\n\n";
        let mut counter = Counter::new(Framing::Sse, false);
        counter.observe(body.as_bytes());
        let usage = counter.finish();
        assert_eq!((got(usage), counter.parsed), ((Some(5), Some(50), true), 1));
        assert!(usage.first_token_at.is_some());
    }

    #[test]
    fn a_huge_content_line_is_not_held() {
        let huge = format!(r#"{{"response":"{}","done":false}}"#, "x".repeat(100 << 10));
        let body = huge + "\n" + done_line() + "\n";
        for size in [7, 1000, 1 << 20] {
            let mut counter = Counter::new(Framing::Ndjson, false);
            for chunk in body.as_bytes().chunks(size) {
                counter.observe(chunk);
                assert!(counter.buf.capacity() <= LINE_CAP);
            }
            let usage = counter.finish();
            assert_eq!(got(usage), (Some(26), Some(282), true));
            assert!(
                usage.first_token_at.is_some(),
                "a long line not final is content"
            );
        }
    }

    #[test]
    fn a_long_final_line_is_read_from_its_tail() {
        let context: Vec<String> = (0..20_000).map(|i| (100_000 + i).to_string()).collect();
        let context = format!(r#""stop","context":[{}],"#, context.join(","));
        let line = done_line().replace(r#""stop","#, &context);
        assert!(line.len() > 2 * LINE_CAP);
        for size in [1, 4096, 70_000, 1 << 20] {
            let mut counter = Counter::new(Framing::Ndjson, false);
            line.as_bytes()
                .chunks(size)
                .for_each(|c| counter.observe(c));
            assert!(counter.buf.capacity() <= LINE_CAP);
            assert_eq!(got(counter.finish()), (Some(26), Some(282), true), "{size}");
        }
        // Cut inside the last count: that count is not taken, and it is not done.
        let cut = &line.as_bytes()[..line.rfind("282").unwrap() + 2];
        assert_eq!(got(run(Framing::Ndjson, &[cut])), (Some(26), None, false));
    }

    #[test]
    fn a_cut_stream_counts_what_it_saw_and_is_not_done() {
        let usage = run(Framing::Ndjson, &[&CHAT.as_bytes()[..CHAT.len() - 40]]);
        assert_eq!(got(usage), (None, None, false));
        assert!(usage.first_token_at.is_some());
        let cut = &SSE.as_bytes()[..SSE.find("data: [DONE]").unwrap()];
        assert_eq!(got(run(Framing::Sse, &[cut])), (Some(26), Some(8), false));
        let cut = &MESSAGES.as_bytes()[..MESSAGES.find("event: message_stop").unwrap()];
        assert_eq!(got(run(Framing::Sse, &[cut])), (Some(26), Some(8), false));
    }

    #[test]
    fn non_streaming_bodies_and_embeddings() {
        every_split(Framing::Opaque, done_line(), (Some(26), Some(282), true));
        let openai = r#"{"id":"chatcmpl-4","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":26,"completion_tokens":8,"total_tokens":34}}"#;
        every_split(Framing::Opaque, openai, (Some(26), Some(8), true));
        let embed = r#"{"model":"all-minilm","embeddings":[[0.01,-0.2]],"total_duration":14143917,"prompt_eval_count":8}"#;
        every_split(Framing::Opaque, embed, (Some(8), None, true));
        let v1 = r#"{"object":"list","data":[{"embedding":[0.01],"index":0}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        every_split(Framing::Opaque, v1, (Some(8), None, true));
        let cut = run(Framing::Opaque, &[&openai.as_bytes()[..openai.len() - 1]]);
        let error = run(Framing::Opaque, &[br#"{"error":"model 'x' not found"}"#]);
        let mut not_json = Counter::new(Framing::Opaque, false);
        not_json.observe(openai.as_bytes());
        assert_eq!([cut, error, not_json.finish()], [Usage::default(); 3]);
    }

    #[test]
    fn a_body_over_the_cap_is_read_from_its_tail_or_not_at_all() {
        let vectors = vec!["[0.0123,-0.0456,0.0789]"; 60_000].join(",");
        let body = format!(r#"{{"model":"m","embeddings":[{vectors}],"prompt_eval_count":8}}"#);
        assert!(body.len() > BODY_CAP);
        let mut counter = Counter::new(Framing::Opaque, true);
        body.as_bytes()
            .chunks(10_000)
            .for_each(|c| counter.observe(c));
        assert!(counter.buf.capacity() <= BODY_CAP);
        assert_eq!(got(counter.finish()), (Some(8), None, true));
        let plain = format!(r#"{{"embedding":[{vectors}]}}"#);
        assert_eq!(run(Framing::Opaque, &[plain.as_bytes()]), Usage::default());
    }

    #[test]
    fn responses_and_anthropic_streams() {
        every_split(Framing::Sse, RESPONSES, (Some(26), Some(8), true));
        every_split(Framing::Sse, MESSAGES, (Some(26), Some(8), true));
        let long = RESPONSES.replace("TEXT", &"y".repeat(100 << 10));
        let usage = run(
            Framing::Sse,
            &long.as_bytes().chunks(1000).collect::<Vec<_>>(),
        );
        assert_eq!(
            got(usage),
            (Some(26), Some(8), true),
            "a long response.completed"
        );
        let mut counter = Counter::new(Framing::Sse, false);
        let mut events = MESSAGES.split_inclusive("\n\n");
        events
            .by_ref()
            .take(2)
            .for_each(|e| counter.observe(e.as_bytes()));
        assert_eq!(
            (counter.usage.prompt_tokens, counter.usage.first_token_at),
            (Some(26), None)
        );
        counter.observe(events.next().unwrap().as_bytes());
        assert!(
            counter.usage.first_token_at.is_some(),
            "content_block_delta"
        );
    }
}
