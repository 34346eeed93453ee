//! Admission: slots per backend and model (`parallel`, Ollama's
//! `OLLAMA_NUM_PARALLEL`), a queue for requests that find none free, fair
//! across client addresses, bounded by `queue_timeout` (then 429 with
//! `Retry-After`, in the API's own error shape) and `max_queue`; a client that
//! hangs up leaves the queue at once; the queue's depth is on status.
//!
//! The simulator's `response_delay` holds a slot for as long as a test needs;
//! its `max_concurrent` says how many requests it answered at once. Clients
//! with their own address connect from 127.0.0.2, 127.0.0.3, ... (all of
//! 127.0.0.0/8 is loopback).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::common::*;
use crate::faults::*;

const ONE: &str = r#"models = { "llama3.2" = "b1", "qwen2.5:14b" = "b1" }"#;

async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"));
}

fn slow(delay_ms: u64) -> SimOptions {
    SimOptions {
        response_delay: Duration::from_millis(delay_ms),
        ..SimOptions::default()
    }
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Requests waiting for a slot, as status shows them (`queue.depth`).
fn queued(status: &Value) -> Option<u64> {
    status["queue"]["depth"].as_u64()
}

/// Waits until status shows `n` requests queued.
async fn wait_queued(proxy: &Proxy, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(proxy).await;
        if queued(&s) == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed {n} queued: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` requests reached the backend or wait in the queue.
async fn wait_arrived(proxy: &Proxy, sim: &SimHandle, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(proxy).await;
        if queued(&s).map(|q| q + sim.inference_count()) == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed {n} arrived ({} at the backend): {s}",
            sim.inference_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `body` to `path` in a task (it may wait in the queue).
fn spawn_post(
    proxy: &Proxy,
    path: &str,
    body: Value,
) -> tokio::task::JoinHandle<Result<Reply, String>> {
    let url = format!("{}{path}", proxy.url);
    tokio::spawn(async move { try_send(Method::POST, &url, &body).await })
}

/// One slot (`parallel = 1`): requests to one model never run at once on the
/// backend, however they are spelled or sent (native, OpenAI, streamed,
/// embeddings), and all of them are served.
#[tokio::test]
async fn one_slot_means_one_request_at_a_time() {
    bounded(60, async {
        let b1 = sim_with(&["llama3.2"], &["llama3.2"], slow(400)).await;
        let config = toml(
            "",
            &[Conn::with("b1", &b1, "parallel = 1")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let calls = vec![
            spawn_post(&proxy, "/api/chat", chat_body("one")),
            spawn_post(
                &proxy,
                "/api/chat",
                json!({"model":"LLAMA3.2:latest","messages":[{"role":"user","content":"two"}]}),
            ),
            spawn_post(&proxy, "/v1/chat/completions", openai_body("three", true)),
            spawn_post(
                &proxy,
                "/api/generate",
                json!({"model":"library/llama3.2","prompt":"four","stream":false}),
            ),
            spawn_post(
                &proxy,
                "/api/embed",
                json!({"model":"llama3.2","input":"five"}),
            ),
        ];
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap().unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(r.status, 200, "call {i}: {}", r.text());
        }
        assert_eq!(b1.inference_count(), 5);
        assert_eq!(
            b1.max_concurrent(),
            1,
            "two requests ran at once on one slot"
        );
    })
    .await;
}

/// A request that waits longer than `queue_timeout` gets 429 with
/// `Retry-After`, in Ollama's shape on `/api/*` and OpenAI's on `/v1/*`, and
/// never reaches the backend. Requests without a slot to take (listings,
/// show, another model's slot) are not held behind it.
#[tokio::test]
async fn a_request_that_waits_past_queue_timeout_gets_429_with_retry_after() {
    bounded(60, async {
        let b1 = sim_with(
            &["llama3.2", "qwen2.5:14b"],
            &["llama3.2", "qwen2.5:14b"],
            slow(4000),
        )
        .await;
        let config = toml(
            "queue_timeout = \"1s\"",
            &[Conn::with("b1", &b1, "parallel = 1")],
            ONE,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let holder = spawn_post(&proxy, "/api/chat", chat_body("holder"));
        eventually("the holder is being answered", || b1.in_flight() == 1).await;

        let r = post(&format!("{}/api/chat", proxy.url), &chat_body("late native")).await;
        assert_eq!(r.status, 429, "{}", r.text());
        let retry = r.header("retry-after").expect("Retry-After on a 429");
        retry
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("Retry-After is not delta-seconds: {retry:?}"));
        assert!(r.header("content-type").unwrap().starts_with("application/json"));
        let v = r.json();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 1, "Ollama's shape: {v}");

        let r = post(
            &format!("{}/v1/chat/completions", proxy.url),
            &openai_body("late openai", false),
        )
        .await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.header("retry-after").is_some());
        let v = r.json();
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");

        // A streamed request waits the same way: 429 before any byte.
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &chat_stream_body("late stream"),
        )
        .await;
        assert_eq!(r.status, 429, "{}", r.text());

        let s = status(&proxy).await;
        assert_eq!(s["queue"]["refused_timed_out"], 3, "{s}");
        // Nothing that waited reached the backend.
        for text in ["late native", "late openai", "late stream"] {
            assert_eq!(saying(&b1, text), 0, "{text} reached the backend");
        }
        // No slot to take: answered while the slot is held.
        assert_eq!(get(&format!("{}/api/tags", proxy.url)).await.status, 200);
        assert_eq!(get(&format!("{}/api/ps", proxy.url)).await.status, 200);
        let r = post(&format!("{}/api/show", proxy.url), &json!({"model":"llama3.2"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Another model has its own slot (slots = 3 x parallel per backend).
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &json!({"model":"qwen2.5:14b","messages":[{"role":"user","content":"other model"}],"stream":false}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());

        let r = holder.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(b1.max_concurrent(), 2, "the holder and the other model's request");
    })
    .await;
}

/// `max_queue` bounds the waiting requests of all clients: past it, 429 at
/// once (long before `queue_timeout`).
#[tokio::test]
async fn a_full_queue_answers_429_at_once() {
    bounded(60, async {
        let b1 = sim_with(&["llama3.2"], &["llama3.2"], slow(3000)).await;
        let config = toml(
            "queue_timeout = \"60s\"\nmax_queue = 1",
            &[Conn::with("b1", &b1, "parallel = 1")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let holder = spawn_post(&proxy, "/api/chat", chat_body("holder"));
        eventually("the holder is being answered", || b1.in_flight() == 1).await;
        let waiter = spawn_post(&proxy, "/api/chat", chat_body("waiter"));
        wait_queued(&proxy, 1).await;
        // The client timeout (20 s) is far below queue_timeout: only an answer
        // at once passes.
        let r = post(&format!("{}/api/chat", proxy.url), &chat_body("over")).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.header("retry-after").is_some());
        assert_eq!(status(&proxy).await["queue"]["refused_full"], 1);
        for t in [holder, waiter] {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert_eq!(saying(&b1, "over"), 0);
        assert_eq!(b1.max_concurrent(), 1);
    })
    .await;
}

/// A client that hangs up while queued leaves the queue at once: the request
/// never reaches the backend, and the next waiter gets the slot.
#[tokio::test]
async fn a_client_that_hangs_up_while_queued_frees_its_place() {
    bounded(60, async {
        let b1 = sim_with(&["llama3.2"], &["llama3.2"], slow(1500)).await;
        let config = toml(
            "queue_timeout = \"30s\"",
            &[Conn::with("b1", &b1, "parallel = 1")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let to = proxy_addr(&proxy);
        let holder = spawn_post(&proxy, "/api/chat", chat_body("holder"));
        eventually("the holder is being answered", || b1.in_flight() == 1).await;

        // Queued, then the client closes its connection.
        let gone = raw_open(local(1), to, "/api/chat", &chat_body("gone")).await;
        wait_queued(&proxy, 1).await;
        drop(gone);
        wait_queued(&proxy, 0).await;
        let s = status(&proxy).await;
        assert_eq!(s["queue"]["cancelled"], 1, "{s}");

        let next = spawn_post(&proxy, "/api/chat", chat_body("next"));
        let r = holder.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let r = next.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            saying(&b1, "gone"),
            0,
            "a request whose client left was sent"
        );
        let order: Vec<String> = b1
            .requests()
            .iter()
            .filter(|r| r.path == "/api/chat")
            .map(|r| {
                r.json()["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(order, ["holder", "next"]);
    })
    .await;
}

/// A client that leaves in the middle of its stream gives its slot back at
/// once: the next request does not wait for the backend's stream to end (it
/// would run past `queue_timeout`).
#[tokio::test]
async fn a_client_that_leaves_mid_stream_frees_the_slot() {
    bounded(60, async {
        let b1 = sim_with(
            &["llama3.2"],
            &["llama3.2"],
            SimOptions {
                chunks: 40,
                chunk_delay: Duration::from_millis(200),
                ..SimOptions::default()
            },
        )
        .await;
        let config = toml(
            "queue_timeout = \"3s\"",
            &[Conn::with("b1", &b1, "parallel = 1")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let response = open(
            Method::POST,
            &format!("{}/api/chat", proxy.url),
            &[],
            chat_stream_body("leaving").to_string(),
        )
        .await;
        let mut body = response.into_body();
        http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        drop(body);
        // The backend's stream has 8 s to go; the slot must not.
        let r = post(&format!("{}/api/chat", proxy.url), &chat_body("after")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(saying(&b1, "after"), 1);
    })
    .await;
}

/// Fairness across clients: one address floods the queue, another sends one
/// request; with round robin across clients the lone one is served after at
/// most one more of the flood's, not after all of them.
#[tokio::test]
async fn a_flooding_client_does_not_push_another_to_the_back() {
    bounded(90, async {
        let b1 = sim_with(&["llama3.2"], &["llama3.2"], slow(1000)).await;
        let config = toml(
            "queue_timeout = \"60s\"",
            &[Conn::with("b1", &b1, "parallel = 1")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let to = proxy_addr(&proxy);
        let mut flood = Vec::new();
        for i in 0..5 {
            flood
                .push(raw_open(local(2), to, "/api/chat", &chat_body(&format!("flood {i}"))).await);
            if i == 0 {
                eventually("the first flood request is answered", || {
                    b1.in_flight() == 1
                })
                .await;
            }
        }
        // All five arrived (answered or queued) before the lone one is sent.
        wait_arrived(&proxy, &b1, 5).await;
        let lone = raw_open(local(3), to, "/api/chat", &chat_body("lone")).await;
        wait_arrived(&proxy, &b1, 6).await;

        let mut replies = Vec::new();
        for c in flood {
            replies.push(tokio::spawn(raw_read(c)));
        }
        let lone = raw_read(lone).await;
        assert_eq!(
            lone.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&lone.body)
        );
        for r in replies {
            assert_eq!(r.await.unwrap().status, 200);
        }
        let order: Vec<String> = b1
            .requests()
            .iter()
            .filter(|r| r.path == "/api/chat")
            .map(|r| {
                r.json()["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(order.len(), 6, "{order:?}");
        let at = order.iter().position(|t| t == "lone").unwrap();
        assert!(
            at <= 2,
            "the lone client's request was served {} of 6: {order:?}",
            at + 1
        );
    })
    .await;
}

/// The queue's depth is on status while requests wait, and back to 0 when
/// they are served.
#[tokio::test]
async fn the_queue_depth_is_on_status() {
    bounded(60, async {
        let b1 = sim_with(&["llama3.2"], &["llama3.2"], slow(1000)).await;
        let config = toml(
            "",
            &[Conn::with("b1", &b1, "parallel = 1")],
            r#"models = { "llama3.2" = "b1" }"#,
            "",
        );
        let proxy = Proxy::with_config(&config, &[]);
        let s = status(&proxy).await;
        assert_eq!(queued(&s), Some(0), "no queue depth on status: {s}");
        let calls: Vec<_> = (0..3)
            .map(|i| spawn_post(&proxy, "/api/chat", chat_body(&format!("q {i}"))))
            .collect();
        eventually("one is being answered", || b1.in_flight() == 1).await;
        wait_queued(&proxy, 2).await;
        let s = status(&proxy).await;
        let b = backend_status(&proxy, "b1").await;
        assert_eq!(b["parallel"], 1, "{b}");
        // The one being answered holds the slot; both waiters are from one
        // client (this test's address).
        assert_eq!(b["in_use"], 1, "{b}");
        assert_eq!(b["queued"], 2, "{b}");
        let keys = s["queue"]["by_key"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{s}");
        assert_eq!(keys[0]["waiting"], 2, "{s}");
        assert!(
            keys[0]["key"].as_str().unwrap().contains("127.0.0.1"),
            "keyed by client address: {s}"
        );
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap().status, 200);
        }
        wait_queued(&proxy, 0).await;
        let s = status(&proxy).await;
        assert_eq!(s["queue"]["waits"], 2, "two waited: {s}");
        assert!(s["queue"]["wait_max_ms"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(backend_status(&proxy, "b1").await["in_use"], 0);
        assert_eq!(b1.max_concurrent(), 1);
    })
    .await;
}
