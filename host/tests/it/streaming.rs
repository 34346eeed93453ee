//! Streams pass through chunk by chunk, and a broken stream never looks finished.

use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use serde_json::json;

use crate::common::*;

async fn slow_fleet(delay_ms: u64) -> (SimHandle, Proxy) {
    let sim = sim::spawn(SimOptions {
        models: vec!["llama3.2".into()],
        chunks: 6,
        chunk_delay: Duration::from_millis(delay_ms),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&["--proxy", &format!("llama3.2={}", sim.url())]);
    (sim, proxy)
}

#[tokio::test]
async fn first_chunk_arrives_before_the_backend_finishes() {
    let (_sim, proxy) = slow_fleet(250).await;
    for (path, body) in [
        (
            "/api/chat",
            json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model":"llama3.2","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}),
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
        assert!(!first.is_empty());
        let mut rest = Vec::new();
        while let Some(frame) = body.frame().await {
            rest.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
        }
        let total = start.elapsed();
        // The backend spends 6 x 250 ms on this answer; the first chunk must not
        // wait for the rest.
        assert!(
            total >= Duration::from_millis(1250),
            "{path}: total {total:?}"
        );
        assert!(
            total - first_at >= Duration::from_millis(1000),
            "{path}: first chunk at {first_at:?} of {total:?}"
        );
        if path == "/v1/messages" {
            // Anthropic's event stream arrives whole: it starts with
            // `message_start` and ends with `message_stop`.
            assert!(first.starts_with(b"event: message_start\n"), "{first:?}");
            let rest = String::from_utf8_lossy(&rest);
            assert!(
                rest.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
                "{rest}"
            );
        }
    }
}

#[tokio::test]
async fn broken_ndjson_stream_ends_with_an_error_line() {
    // A delay lets the headers and first chunks leave before the break, as with
    // a real model generating.
    let (_sim, proxy) = slow_fleet(20).await;
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"please [[abort]]"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let lines = r.lines();
    assert!(lines.len() >= 2, "{}", r.text());
    assert!(
        lines.iter().all(|l| l["done"] != true),
        "must not look finished: {}",
        r.text()
    );
    let last = lines.last().unwrap();
    let error = last["error"]
        .as_str()
        .unwrap_or_else(|| panic!("last line: {last}"));
    assert!(error.contains("broke"), "{error}");
}

#[tokio::test]
async fn broken_sse_stream_ends_with_an_error_event_and_no_done() {
    let (_sim, proxy) = slow_fleet(20).await;
    let r = post(
        &format!("{}/v1/chat/completions", proxy.url),
        &json!({"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"[[abort]]"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains("[DONE]"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let event: serde_json::Value =
        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke"),
        "{last}"
    );
}

#[tokio::test]
async fn backend_error_lines_are_relayed_unchanged() {
    let (_sim, proxy) = slow_fleet(0).await;
    let r = post(
        &format!("{}/api/generate", proxy.url),
        &json!({"model":"llama3.2","prompt":"[[error]]"}),
    )
    .await;
    let lines = r.lines();
    assert_eq!(
        lines.last().unwrap(),
        &json!({"error":"simulated failure"}),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn client_disconnect_releases_the_backend() {
    let (sim, proxy) = slow_fleet(200).await;
    let response = open(
        Method::POST,
        &format!("{}/api/chat", proxy.url),
        &[],
        json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}).to_string(),
    )
    .await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // The in-flight count drops back to zero once the relay is gone; the
    // simulator sees its connection closed and stops early.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if sim.cancelled() >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend never saw the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The request's record is written once, when its response ends: whole, with
/// the bytes relayed, or cut short when the client goes away.
#[tokio::test]
async fn each_request_is_recorded_once_when_its_response_ends() {
    let sim = sim::spawn(SimOptions {
        models: vec!["llama3.2".into()],
        chunks: 6,
        chunk_delay: Duration::from_millis(100),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start_at_level("debug", &["--proxy", &format!("llama3.2={}", sim.url())]);
    let url = format!("{}/api/chat", proxy.url);
    let whole = post(
        &url,
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(whole.status, 200);
    let cut = open(
        Method::POST,
        &url,
        &[],
        json!({"model":"llama3.2","messages":[{"role":"user","content":"bye"}]}).to_string(),
    )
    .await;
    let mut body = cut.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let logs = proxy.logs();
        let records: Vec<String> = logs
            .lines()
            .filter(|l| l.contains(" request ") && l.contains("endpoint=chat "))
            .map(str::to_string)
            .collect();
        if records.len() >= 2 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), 2, "{records:#?}");
    let complete: Vec<&String> = records
        .iter()
        .filter(|l| l.contains("complete=true"))
        .collect();
    assert_eq!(complete.len(), 1, "{records:#?}");
    assert!(
        complete[0].contains(&format!("bytes={}", whole.body.len())),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|l| l.contains("complete=false")),
        "{records:#?}"
    );
    for line in &records {
        assert!(
            line.contains("status=200") && line.contains("model=\"llama3.2\""),
            "{line}"
        );
    }
}
