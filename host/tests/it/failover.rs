//! Failover before the first byte, and the timeouts that decide it: a request
//! moves to the next replica when the backend cannot be reached, closes the
//! connection before the response head, answers a status of `retry_statuses`
//! (unless it is the last candidate) or sends no head within
//! `first_byte_timeout`; never once a byte reached the client, and never for
//! pull, push, create, copy or delete once they were sent. A cold load is not
//! cut, and a stream that stalls is cut after `stream_idle_timeout` with the
//! error frame.
//!
//! In every test the faulty replica is `b1`, listed first and with the model
//! loaded, so that the policy tries it first; each test checks that it did
//! (a request that never met the fault proves nothing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::common::*;
use crate::faults::*;

const PAIR: &str = r#"models = { "llama3.2" = ["b1", "b2"] }"#;

/// Bounds a whole test.
async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"));
}

/// What one client request of the kill test met.
#[derive(Debug)]
enum Outcome {
    Whole,
    Cut,
    Failed(String),
}

async fn one_request(proxy_url: &str, kind: usize, n: usize) -> Outcome {
    let text = format!("load {kind}-{n}");
    let (path, body, streamed, openai) = match kind % 4 {
        0 => ("/api/chat", chat_stream_body(&text), true, false),
        1 => ("/api/chat", chat_body(&text), false, false),
        2 => ("/v1/chat/completions", openai_body(&text, true), true, true),
        _ => (
            "/v1/chat/completions",
            openai_body(&text, false),
            false,
            true,
        ),
    };
    let r = match try_send(Method::POST, &format!("{proxy_url}{path}"), &body).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{path}: {e}")),
    };
    if r.status != 200 {
        return Outcome::Failed(format!(
            "{path} streamed={streamed}: {} {}",
            r.status,
            r.text()
        ));
    }
    let text = r.text();
    if !streamed {
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(format!("{path}: not JSON ({e}): {text}")),
        };
        let content = match openai {
            true => &v["choices"][0]["message"]["content"],
            false => &v["message"]["content"],
        };
        return match content.as_str() {
            Some(c) if c == sim::expected_text("llama3.2", 8) => Outcome::Whole,
            _ => Outcome::Failed(format!("{path}: incomplete answer {text}")),
        };
    }
    let ended = match openai {
        true => sse_end(&text),
        false => ndjson_end(&text),
    };
    match ended {
        Ok(Ended::Complete) => Outcome::Whole,
        Ok(Ended::Cut(_)) => Outcome::Cut,
        Err(e) => Outcome::Failed(format!("{path}: {e}")),
    }
}

/// The issue's kill test, small: 12 clients, mixed streaming and not, one of
/// two replicas killed while requests are in flight on it, then a burst sent
/// at once. Every answer that had not started is served whole by the other;
/// a stream cut by the kill ends with the error frame, never silently.
#[tokio::test]
async fn a_replica_killed_under_load_loses_no_request_that_had_not_started() {
    bounded(120, async {
        let opts = SimOptions {
            chunks: 8,
            chunk_delay: Duration::from_millis(60),
            response_delay: Duration::from_millis(150),
            ..SimOptions::default()
        };
        let b1 = sim_with(&["llama3.2"], &["llama3.2"], opts.clone()).await;
        let b2 = sim_with(&["llama3.2"], &["llama3.2"], opts).await;
        let config = toml(
            "",
            &[
                Conn::with("b1", &b1, "parallel = 4"),
                Conn::with("b2", &b2, "parallel = 4"),
            ],
            PAIR,
            "[health]\ndown_probe_interval = \"200ms\"",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..12)
            .map(|c| {
                let (url, stop) = (proxy.url.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        outcomes.push(one_request(&url, c + n, n).await);
                        n += 1;
                    }
                    outcomes
                })
            })
            .collect();
        // Kill b1 while it is answering: non-streamed requests waiting for
        // their head and streams under way.
        // Late enough that streams are under way there, not only waiting.
        eventually("b1 busy with several requests", || {
            b1.inference_count() >= 10 && b1.in_flight() >= 3
        })
        .await;
        let reached_b1 = b1.inference_count();
        b1.shutdown();
        // Sent at once just after the kill, as in the issue (23 of 48 lost).
        let burst: Vec<_> = (0..16)
            .map(|i| {
                let url = proxy.url.clone();
                tokio::spawn(async move { one_request(&url, 1 + 2 * (i % 2), 1000 + i).await })
            })
            .collect();
        let mut burst_outcomes = Vec::new();
        for b in burst {
            burst_outcomes.push(b.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut outcomes = burst_outcomes;
        for c in clients {
            outcomes.extend(c.await.unwrap());
        }
        let failed: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Failed(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        let cut = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Cut))
            .count();
        let whole = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Whole))
            .count();
        eprintln!(
            "kill test: {} requests, {whole} whole, {cut} streams cut, b1 got {reached_b1} before the kill",
            outcomes.len()
        );
        assert!(
            reached_b1 >= 3,
            "b1 got {reached_b1} requests before the kill"
        );
        assert!(
            failed.is_empty(),
            "{} of {} requests failed ({whole} whole, {cut} streams cut): {failed:#?}",
            failed.len(),
            outcomes.len()
        );
        assert!(
            b2.inference_count() >= 16,
            "b2 got {}",
            b2.inference_count()
        );
    })
    .await;
}

/// A replica that reads the request and closes the connection before any
/// head: every inference request is served by the other replica.
#[tokio::test]
async fn a_connection_closed_before_the_head_moves_inference_to_the_other_replica() {
    let b1 = warm().await;
    let b2 = warm().await;
    b1.set_fault(sim::Fault::DropBeforeHead);
    let config = toml("", &[Conn::new("b1", &b1), Conn::new("b2", &b2)], PAIR, "");
    let proxy = start_probed(&config, &["b1", "b2"]).await;
    let url = |p: &str| format!("{}{p}", proxy.url);

    let r = post(&url("/api/chat"), &chat_body("dropped once")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["message"]["content"],
        sim::expected_text("llama3.2", 5)
    );
    assert_eq!(saying(&b1, "dropped once"), 1, "b1 was not tried first");
    assert_eq!(saying(&b2, "dropped once"), 1);

    let r = post(&url("/api/chat"), &chat_stream_body("dropped stream")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ndjson_end(&r.text()), Ok(Ended::Complete), "{}", r.text());
    assert_eq!(saying(&b2, "dropped stream"), 1);

    let r = post(
        &url("/v1/chat/completions"),
        &openai_body("dropped v1", false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(saying(&b2, "dropped v1"), 1);

    let r = post(
        &url("/api/embed"),
        &json!({"model":"llama3.2","input":"dropped embed"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["embeddings"].as_array().map(Vec::len), Some(1));
}

/// A backend restarted on its port leaves llamagate's pooled connections to
/// it dead; a request that meets one is sent again on a new connection, not
/// reported to the client, even with no other replica.
#[tokio::test]
async fn a_dead_pooled_connection_is_replaced_not_reported() {
    bounded(60, async {
        let b1 = warm().await;
        let addr = b1.addr();
        let config = toml(
            "",
            &[Conn::with("b1", &b1, "parallel = 4")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = start_probed(&config, &["b1"]).await;
        let url = format!("{}/api/chat", proxy.url);
        // Several pooled connections.
        let warmup: Vec<_> = (0..4)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    try_send(Method::POST, &url, &chat_body(&format!("pool {i}"))).await
                })
            })
            .collect();
        for w in warmup {
            assert_eq!(w.await.unwrap().unwrap().status, 200);
        }
        b1.shutdown();
        let again = sim::spawn_at(
            addr,
            SimOptions {
                loaded: vec!["llama3.2".into()],
                ..SimOptions::default()
            },
        )
        .await
        .unwrap();
        let after: Vec<_> = (0..4)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    try_send(Method::POST, &url, &chat_body(&format!("after {i}"))).await
                })
            })
            .collect();
        for (i, a) in after.into_iter().enumerate() {
            let r = a
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
        }
        for i in 0..4 {
            assert_eq!(saying(&again, &format!("after {i}")), 1);
        }
    })
    .await;
}

/// A replica that accepts and never answers holds a request only for
/// `first_byte_timeout`; then the other replica serves it.
#[tokio::test]
async fn a_stalled_replica_fails_over_after_the_first_byte_timeout() {
    bounded(90, async {
        let b1 = warm().await;
        let b2 = warm().await;
        b1.set_fault(sim::Fault::StallHead);
        let config = toml(
            "first_byte_timeout = \"1s\"",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            PAIR,
            "",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let url = |p: &str| format!("{}{p}", proxy.url);
        for (path, body, text) in [
            ("/api/chat", chat_body("stall a"), "stall a"),
            ("/api/chat", chat_stream_body("stall b"), "stall b"),
            (
                "/v1/chat/completions",
                openai_body("stall c", true),
                "stall c",
            ),
        ] {
            let started = Instant::now();
            let r = post(&url(path), &body).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert!(
                started.elapsed() >= Duration::from_secs(1),
                "{path}: answered before the first-byte timeout could pass"
            );
            assert_eq!(saying(&b1, text), 1, "{path}: b1 was not tried first");
            assert_eq!(saying(&b2, text), 1, "{path}");
        }
        // The stalled attempts were abandoned: llamagate closed them.
        eventually("b1's stalled connections closed", || b1.in_flight() == 0).await;
        drop(proxy);

        // With no other replica, the client gets an error in its API's shape
        // after the timeout, not a hang.
        let only = warm().await;
        only.set_fault(sim::Fault::StallHead);
        let config = toml(
            "first_byte_timeout = \"1s\"",
            &[Conn::new("b1", &only)],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = start_probed(&config, &["b1"]).await;
        let r = post(&format!("{}/api/chat", proxy.url), &chat_body("no way")).await;
        assert!(r.status >= 500, "{} {}", r.status, r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
        let r = post(
            &format!("{}/v1/chat/completions", proxy.url),
            &openai_body("no way v1", true),
        )
        .await;
        assert!(r.status >= 500, "{} {}", r.status, r.text());
        assert!(r.json()["error"]["message"].is_string(), "{}", r.text());
        eventually("the stalled connections closed", || only.in_flight() == 0).await;
    })
    .await;
}

/// `[model_timeouts."m"]` wins over the global timeouts, both ways: a shorter
/// first-byte timeout fails a stalled replica over although the global one
/// would wait a minute, and a longer one lets a cold load through that the
/// global one would cut. The same for the stream-idle timeout.
#[tokio::test]
async fn per_model_timeouts_override_the_global_ones() {
    bounded(120, async {
        // Shorter for llama3.2 than the global minute: fails over in time.
        let b1 = sim_with(
            &["llama3.2", "qwen2.5:14b"],
            &["llama3.2", "qwen2.5:14b"],
            SimOptions::default(),
        )
        .await;
        let b2 = warm().await;
        b1.set_fault(sim::Fault::StallHead);
        let config = toml(
            "first_byte_timeout = \"60s\"",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            r#"models = { "llama3.2" = ["b1", "b2"], "qwen2.5:14b" = "b1" }"#,
            "[model_timeouts.\"llama3.2\"]\nfirst_byte = \"1s\"",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &chat_body("own timeout"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(saying(&b1, "own timeout"), 1);
        assert_eq!(saying(&b2, "own timeout"), 1);
        drop(proxy);

        // Longer for qwen (spelled another way) than the global second: a
        // 2.5 s cold load is not cut, and llama3.2's is.
        let cold = sim_with(
            &["llama3.2", "qwen2.5:14b"],
            &[],
            SimOptions {
                load_delay: Duration::from_millis(2500),
                ..SimOptions::default()
            },
        )
        .await;
        let config = toml(
            "first_byte_timeout = \"1s\"",
            &[Conn::new("b1", &cold)],
            r#"models = { "llama3.2" = "b1", "qwen2.5:14b" = "b1" }"#,
            "[model_timeouts.\"QWEN2.5:14B\"]\nfirst_byte = \"20s\"",
        );
        let proxy = start_probed(&config, &["b1"]).await;
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &json!({"model":"qwen2.5:14b","messages":[{"role":"user","content":"cold qwen"}],"stream":false}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(saying(&cold, "cold qwen"), 1, "sent once, not cut and resent");
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &chat_body("cold llama"),
        )
        .await;
        assert_ne!(r.status, 200, "the global 1 s must cut llama3.2's cold load");
        drop(proxy);

        // The stream-idle timeout, per model.
        let stalls = sim_with(
            &["llama3.2", "qwen2.5:14b"],
            &["llama3.2", "qwen2.5:14b"],
            SimOptions::default(),
        )
        .await;
        stalls.set_fault(sim::Fault::StallAfterFirst);
        let config = toml(
            "stream_idle_timeout = \"60s\"",
            &[Conn::new("b1", &stalls)],
            r#"models = { "llama3.2" = "b1", "qwen2.5:14b" = "b1" }"#,
            "[model_timeouts.\"qwen2.5:14b\"]\nstream_idle = \"1s\"",
        );
        let proxy = start_probed(&config, &["b1"]).await;
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &json!({"model":"qwen2.5:14b","messages":[{"role":"user","content":"idle qwen"}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            matches!(ndjson_end(&r.text()), Ok(Ended::Cut(_))),
            "{}",
            r.text()
        );
    })
    .await;
}

/// A cold load longer than `connect_timeout` is still a request in progress:
/// with the default first-byte timeout it is not cut, and not sent to the
/// other replica too.
#[tokio::test]
async fn a_cold_load_longer_than_the_connect_timeout_is_not_cut() {
    bounded(60, async {
        let cold = SimOptions {
            load_delay: Duration::from_millis(1500),
            ..SimOptions::default()
        };
        let b1 = sim_with(&["llama3.2"], &[], cold.clone()).await;
        let b2 = sim_with(&["llama3.2"], &[], cold).await;
        let config = toml(
            "connect_timeout = \"300ms\"",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            PAIR,
            "",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        for (path, body) in [
            ("/api/chat", chat_body("cold a")),
            ("/api/chat", chat_stream_body("cold b")),
        ] {
            let r = post(&format!("{}{path}", proxy.url), &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert_eq!(
            b1.inference_count() + b2.inference_count(),
            2,
            "each request sent once: b1 {:?}, b2 {:?}",
            b1.requests().iter().map(|r| r.json()).collect::<Vec<_>>(),
            b2.requests().iter().map(|r| r.json()).collect::<Vec<_>>()
        );
    })
    .await;
}

/// A stream that stalls after its first chunk is cut after
/// `stream_idle_timeout` and ends with the error frame: an NDJSON
/// `{"error":...}` line, an SSE error event (no `[DONE]`). It is never resent
/// to the other replica: a byte already reached the client.
#[tokio::test]
async fn a_stream_that_stalls_is_cut_with_the_error_frame_and_not_resent() {
    bounded(90, async {
        let b1 = warm().await;
        let b2 = warm().await;
        b1.set_fault(sim::Fault::StallAfterFirst);
        let config = toml(
            "stream_idle_timeout = \"1s\"",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            PAIR,
            "[breaker]\nfailures = 10",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let url = |p: &str| format!("{}{p}", proxy.url);

        for (path, body) in [
            ("/api/chat", chat_stream_body("idle chat")),
            (
                "/api/generate",
                json!({"model":"llama3.2","prompt":"idle generate"}),
            ),
        ] {
            let started = Instant::now();
            let r = post(&url(path), &body).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert!(started.elapsed() >= Duration::from_secs(1), "{path}");
            let lines = r.lines();
            assert!(lines.len() >= 2, "{path}: {}", r.text());
            assert_eq!(lines[0]["model"], "llama3.2", "{path}: {}", r.text());
            assert_eq!(lines[0]["done"], false, "{path}");
            assert!(
                matches!(ndjson_end(&r.text()), Ok(Ended::Cut(_))),
                "{path}: {}",
                r.text()
            );
        }

        let r = post(&url("/v1/chat/completions"), &openai_body("idle v1", true)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        let data = sse_data(&text);
        assert!(data.len() >= 2, "{text}");
        let first: Value = serde_json::from_str(&data[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert!(matches!(sse_end(&text), Ok(Ended::Cut(_))), "{text}");

        assert_eq!(b1.inference_count(), 3, "b1 was not tried first");
        assert_eq!(
            b2.inference_count(),
            0,
            "resent after a byte reached the client"
        );
        eventually("b1's stalled streams closed", || b1.in_flight() == 0).await;
    })
    .await;
}

/// Pull, push, create, copy and delete are not resent once sent: the backend
/// may have acted on them. A backend that closes the connection before the
/// head fails the call, and the other replica receives nothing (push, create,
/// copy) or only its own share of a fleet-wide pull or delete, once, with the
/// merged answer naming the backend that failed. A backend that cannot be
/// connected to (nothing was sent) is passed over.
#[tokio::test]
async fn management_calls_are_never_resent_to_another_backend() {
    bounded(60, async {
        let b1 = warm().await;
        let b2 = warm().await;
        b1.set_fault(sim::Fault::DropBeforeHead);
        // Failures of b1 must not open its breaker midway (which would send
        // a later call straight to b2, rightly).
        let config = toml(
            "",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            PAIR,
            "[breaker]\nfailures = 20",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let url = |p: &str| format!("{}{p}", proxy.url);
        for (path, body) in [
            ("/api/push", json!({"model":"llama3.2"})),
            ("/api/push", json!({"model":"llama3.2","stream":false})),
            // Routed by its model, which must be in `[policy.models]`.
            ("/api/create", json!({"model":"llama3.2","from":"llama3.2"})),
            (
                "/api/copy",
                json!({"source":"llama3.2","destination":"copied"}),
            ),
        ] {
            let before = received(&b1, path);
            let r = post(&url(path), &body).await;
            assert!(r.status >= 500, "{path} {body}: {} {}", r.status, r.text());
            assert_eq!(
                received(&b1, path),
                before + 1,
                "{path}: b1 not tried (once)"
            );
            assert_eq!(received(&b2, path), 0, "{path} resent to b2");
        }
        // b2 has only its model: no copy or create reached it.
        let tags = get(&format!("{}/api/tags", b2.url())).await.json();
        assert_eq!(tags["models"].as_array().unwrap().len(), 1, "{tags}");

        // Fleet-wide: every replica gets the call once; b1's failure is not
        // followed by a second try anywhere.
        let r = post(&url("/api/pull"), &json!({"model":"llama3.2"})).await;
        assert_eq!(received(&b1, "/api/pull"), 1, "{}", r.text());
        assert_eq!(received(&b2, "/api/pull"), 1, "{}", r.text());
        let last = r.lines().pop().unwrap();
        assert_eq!(last["succeeded"], json!(["b2"]), "{}", r.text());
        assert_eq!(last["failed"][0]["backend"], "b1", "{}", r.text());
        let r = send(
            Method::DELETE,
            &url("/api/delete"),
            &[],
            json!({"model":"llama3.2"}).to_string(),
        )
        .await;
        assert_eq!(received(&b1, "/api/delete"), 1, "{}", r.text());
        assert_eq!(received(&b2, "/api/delete"), 1, "{}", r.text());
        assert_ne!(r.status, 200, "a delete that failed on b1: {}", r.text());

        // Nothing listens on b1: nothing was sent, so the copy moves on.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let b3 = warm().await;
        let config = toml(
            "",
            &[
                Conn {
                    id: "b1",
                    url: format!("http://{dead}"),
                    extra: "",
                },
                Conn::new("b2", &b3),
            ],
            PAIR,
            "",
        );
        let proxy = start_probed(&config, &["b2"]).await;
        let r = post(
            &format!("{}/api/copy", proxy.url),
            &json!({"source":"llama3.2","destination":"moved"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(received(&b3, "/api/copy"), 1);
    })
    .await;
}

/// A status outside `retry_statuses` (500 by default) is the backend's answer
/// and reaches the client as it is; 503 moves on. `retry_statuses` is the
/// operator's to change.
#[tokio::test]
async fn a_500_is_passed_through_and_a_503_fails_over() {
    let b1 = warm().await;
    let b2 = warm().await;
    b1.set_fault(sim::Fault::Status(500));
    let config = toml("", &[Conn::new("b1", &b1), Conn::new("b2", &b2)], PAIR, "");
    let proxy = start_probed(&config, &["b1", "b2"]).await;
    let url = |p: &str| format!("{}{p}", proxy.url);

    let r = post(&url("/api/chat"), &chat_body("five hundred")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, r#"{"error":"simulated failure"}"#)
    );
    let r = post(
        &url("/v1/chat/completions"),
        &openai_body("five hundred v1", false),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "simulated failure");
    assert_eq!(b1.inference_count(), 2);
    assert_eq!(b2.inference_count(), 0, "a 500 is not retried");

    b1.set_fault(sim::Fault::Status(503));
    let r = post(&url("/api/chat"), &chat_body("five oh three")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(saying(&b1, "five oh three"), 1);
    assert_eq!(saying(&b2, "five oh three"), 1);
    drop(proxy);

    // The operator's own list: 500 moves on, 503 does not.
    let config = toml(
        "retry_statuses = [500]",
        &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
        PAIR,
        "",
    );
    let proxy = start_probed(&config, &["b1", "b2"]).await;
    b1.set_fault(sim::Fault::Status(500));
    let r = post(&format!("{}/api/chat", proxy.url), &chat_body("listed")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(saying(&b2, "listed"), 1);
    b1.set_fault(sim::Fault::Status(503));
    let r = post(&format!("{}/api/chat", proxy.url), &chat_body("unlisted")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(saying(&b1, "unlisted"), 1);
    assert_eq!(saying(&b2, "unlisted"), 0);
}

/// When every candidate answers a retry status, the last one's answer reaches
/// the client as it is: Ollama's own 503 and its body, not a 502 of llamagate's.
#[tokio::test]
async fn the_last_candidates_503_reaches_the_client_as_it_is() {
    let b1 = warm().await;
    let b2 = warm().await;
    b1.set_fault(sim::Fault::Busy);
    b2.set_fault(sim::Fault::Busy);
    let config = toml("", &[Conn::new("b1", &b1), Conn::new("b2", &b2)], PAIR, "");
    let proxy = start_probed(&config, &["b1", "b2"]).await;
    let r = post(&format!("{}/api/chat", proxy.url), &chat_body("all busy")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.text(),
        r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!((saying(&b1, "all busy"), saying(&b2, "all busy")), (1, 1));
    let r = post(
        &format!("{}/v1/chat/completions", proxy.url),
        &openai_body("all busy v1", false),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], sim::BUSY_MESSAGE);
    drop(proxy);

    // One backend alone: its 503 is the answer, sent once.
    let only = warm().await;
    only.set_fault(sim::Fault::Busy);
    let config = toml(
        "",
        &[Conn::new("b1", &only)],
        r#"models = { "llama3.2" = "b1" }"#,
        "",
    );
    let proxy = start_probed(&config, &["b1"]).await;
    let r = post(&format!("{}/api/chat", proxy.url), &chat_body("alone")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], sim::BUSY_MESSAGE);
    assert_eq!(only.inference_count(), 1);
}
