//! Aliases stay aliases: a client that asked for `gpt-4o` (the default
//! policy's `[policy.aliases]`, routed as `llama3.2`) sees `gpt-4o` in the
//! top-level `model` of every NDJSON line, every SSE event, non-streamed
//! bodies, and the `id` of `GET /v1/models/gpt-4o`; the backend sees
//! `llama3.2`. Only that field changes (the generated text names the real
//! model and keeps it), a client that names the real model sees it as it
//! wrote it, and streams are not held back to do it.

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::common::*;
use crate::faults::*;

async fn aliased(opts: SimOptions) -> (SimHandle, Proxy) {
    let b1 = sim_with(&["llama3.2"], &["llama3.2"], opts).await;
    let config = toml(
        "",
        &[Conn::new("b1", &b1)],
        "models = { \"llama3.2\" = \"b1\" }\n[policy.aliases]\n\"gpt-4o\" = \"llama3.2\"",
        "",
    );
    let proxy = Proxy::with_config(&config, &[]);
    (b1, proxy)
}

/// The model the backend was asked for in its last request to `path`.
fn backend_saw(sim: &SimHandle, path: &str) -> Value {
    sim.requests()
        .iter()
        .rev()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no {path} reached the backend"))
        .json()["model"]
        .clone()
}

fn text_of(lines: &[Value], pointer: &str) -> String {
    lines
        .iter()
        .filter_map(|l| l.pointer(pointer).and_then(Value::as_str))
        .collect()
}

#[tokio::test]
async fn native_answers_carry_the_alias() {
    let (b1, proxy) = aliased(SimOptions::default()).await;
    let url = |p: &str| format!("{}{p}", proxy.url);
    let hello = sim::expected_text("llama3.2", 5);

    let r = post(
        &url("/api/chat"),
        &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o", "{}", r.text());
    // The text is the model's, untouched.
    assert_eq!(r.json()["message"]["content"], hello.as_str());
    assert_eq!(backend_saw(&b1, "/api/chat"), "llama3.2");

    let r = post(
        &url("/api/chat"),
        &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = r.lines();
    assert_eq!(lines.len(), 6, "{}", r.text());
    for line in &lines {
        assert_eq!(line["model"], "gpt-4o", "{line}");
    }
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(text_of(&lines, "/message/content"), hello);

    for stream in [false, true] {
        let r = post(
            &url("/api/generate"),
            &json!({"model":"gpt-4o","prompt":"hi","stream":stream}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let lines = r.lines();
        for line in &lines {
            assert_eq!(line["model"], "gpt-4o", "stream {stream}: {line}");
        }
        assert_eq!(text_of(&lines, "/response"), hello);
        assert_eq!(backend_saw(&b1, "/api/generate"), "llama3.2");
    }

    let r = post(&url("/api/embed"), &json!({"model":"gpt-4o","input":"hi"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o");
    assert_eq!(backend_saw(&b1, "/api/embed"), "llama3.2");

    // A client naming the real model sees it as written.
    for name in ["llama3.2", "llama3.2:latest"] {
        let r = post(
            &url("/api/chat"),
            &json!({"model":name,"messages":[{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        for line in r.lines() {
            assert_eq!(line["model"], name, "{line}");
        }
    }
}

#[tokio::test]
async fn openai_answers_carry_the_alias() {
    let (b1, proxy) = aliased(SimOptions::default()).await;
    let url = |p: &str| format!("{}{p}", proxy.url);
    let hello = sim::expected_text("llama3.2", 5);

    let r = post(
        &url("/v1/chat/completions"),
        &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o", "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], hello.as_str());
    assert_eq!(backend_saw(&b1, "/v1/chat/completions"), "llama3.2");

    let r = post(
        &url("/v1/chat/completions"),
        &json!({"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
                "messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let events: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // Five content chunks, the finish chunk, the usage chunk.
    assert_eq!(events.len(), 7, "{text}");
    for e in &events {
        assert_eq!(e["model"], "gpt-4o", "{e}");
    }
    assert_eq!(text_of(&events, "/choices/0/delta/content"), hello);
    assert!(events.last().unwrap()["usage"]["total_tokens"].is_u64());

    let r = post(
        &url("/v1/completions"),
        &json!({"model":"gpt-4o","prompt":"hi"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o");

    let r = post(
        &url("/v1/embeddings"),
        &json!({"model":"gpt-4o","input":"hi"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o");

    let r = get(&url("/v1/models/gpt-4o")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "gpt-4o", "{v}");
    assert_eq!(v["object"], "model");
    assert!(
        b1.requests()
            .iter()
            .any(|r| r.path == "/v1/models/llama3.2"),
        "the backend was asked for the real model"
    );
    // And the real model as written.
    let r = get(&url("/v1/models/llama3.2")).await;
    assert_eq!(r.json()["id"], "llama3.2");
}

/// Renaming works line by line: the first line of a slow stream reaches the
/// client long before the backend's last.
#[tokio::test]
async fn aliased_streams_are_not_held_back() {
    let (_b1, proxy) = aliased(SimOptions {
        chunks: 6,
        chunk_delay: Duration::from_millis(250),
        ..SimOptions::default()
    })
    .await;
    for (path, body) in [
        (
            "/api/chat",
            json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}),
        ),
    ] {
        let start = Instant::now();
        let response = open(
            Method::POST,
            &format!("{}{path}", proxy.url),
            &[],
            body.to_string(),
        )
        .await;
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let first_at = start.elapsed();
        assert!(
            String::from_utf8_lossy(&first).contains("\"model\":\"gpt-4o\""),
            "{path}: {first:?}"
        );
        while let Some(frame) = body.frame().await {
            frame.unwrap();
        }
        let total = start.elapsed();
        // The backend spends 6 x 250 ms; the first line must not wait for it.
        assert!(
            total - first_at >= Duration::from_millis(1000),
            "{path}: first chunk at {first_at:?} of {total:?}"
        );
    }
}
