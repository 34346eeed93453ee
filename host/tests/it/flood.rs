//! A flood of requests that make one plugin spin costs those requests, not
//! everyone's: the plugin runs a bounded number of calls at once, a freed slot
//! goes to the waiting client (by address) that has used least plugin time,
//! time limits count the call's own CPU time, and memory returns near idle
//! after the flood.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::common::*;

/// A client whose connections come from `ip` (any of 127.0.0.0/8 is local).
fn client_from(ip: &str) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip.parse::<IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends a chat with `x-hostile: behaviour` to `path`; (status, retry-after, body).
async fn chat_from(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    behaviour: &str,
) -> (u16, Option<String>, Value) {
    let body =
        json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false});
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("x-hostile", behaviour)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("no answer within 30 s")
        .expect("request failed");
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry, value)
}

async fn hostile_proxy(limits: &str) -> (SimHandle, Proxy) {
    let a = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            a = "{}"
            [policy.models]
            "llama3.2" = "a"
            [[plugins]]
            name = "hostile"
            path = "{}"
            {limits}
            "#,
            a.url(),
            hostile.display()
        ),
        &[],
    );
    (a, proxy)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spinning_flood_from_one_client_does_not_starve_another() {
    const FLOOD: usize = 300;
    const LANES: usize = 2;
    const PER_LANE: usize = 15;
    // The flood's waiters give up after `max_wait`; a calm request waiting in
    // one FIFO queue behind 300 calls of 100 ms on 2 slots would too.
    let (_a, proxy) = hostile_proxy(
        r#"time_limit = "100ms"
           concurrency = 2
           max_wait = "3s""#,
    )
    .await;
    let url = format!("{}/api/chat", proxy.url);
    let calm = client_from("127.0.0.1");
    let noisy = client_from("127.0.0.2");
    // Warm up both plugins' instance pools, then note the resting memory.
    for behaviour in ["none", "loop", "none", "loop", "none"] {
        chat_from(&calm, &url, behaviour).await;
    }
    let resting = rss_kib(proxy.pid());

    let started = Instant::now();
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (noisy, url) = (noisy.clone(), url.clone());
            tokio::spawn(async move { chat_from(&noisy, &url, "loop").await })
        })
        .collect();
    // Let the flood fill the queue before the calm client arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lanes: Vec<_> = (0..LANES)
        .map(|_| {
            let (calm, url) = (calm.clone(), url.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..PER_LANE {
                    let at = Instant::now();
                    let (status, _, body) = chat_from(&calm, &url, "none").await;
                    answers.push((status, body, at.elapsed()));
                }
                answers
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for lane in lanes {
        for (status, body, took) in lane.await.unwrap() {
            assert_eq!(
                status, 200,
                "a calm request failed during the flood: {body}"
            );
            latencies.push(took);
        }
    }
    let (mut timed_out, mut busy) = (0, 0);
    for request in flood {
        let (status, retry, body) = request.await.unwrap();
        let message = body["error"].as_str().unwrap_or_default();
        match status {
            500 if message.contains("plugin \"hostile\" exceeded its time limit") => timed_out += 1,
            503 if message.contains("plugin \"hostile\" is busy") && retry.is_some() => busy += 1,
            _ => panic!("flood request: {status} {body}"),
        }
    }
    let took = started.elapsed();
    latencies.sort();
    eprintln!(
        "flood of {FLOOD} took {took:?} ({timed_out} ran to their limit, {busy} busy); \
         calm p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(timed_out >= 2, "the plugin did run");
    assert!(took < Duration::from_secs(30), "{took:?}");

    // Idle instances are bounded by `concurrency`: memory returns near rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(proxy.pid());
    eprintln!("RSS {resting} KiB at rest, {after} KiB after the flood");
    assert!(
        after < resting + 48 * 1024,
        "RSS went from {resting} KiB to {after} KiB after the flood"
    );
}

#[tokio::test]
async fn a_request_that_finds_the_plugin_busy_gets_503_with_retry_after() {
    let (_a, proxy) = hostile_proxy(
        r#"time_limit = "1500ms"
           concurrency = 1
           max_wait = "200ms""#,
    )
    .await;
    let client = client_from("127.0.0.1");
    let url = format!("{}/api/chat", proxy.url);
    let spinning = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { chat_from(&client, &url, "loop").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, retry, body) = chat_from(&client, &url, "none").await;
    if status != 503 {
        // Served only once the spinner ended: it waited behind the call
        // spinning on its worker instead of for a slot.
        let took = started.elapsed();
        let spun = spinning.await.unwrap();
        panic!("{status} after {took:?}, the spinning request ended {spun:?}");
    }
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(
        body["error"],
        "llamagate policy error: plugin \"hostile\" is busy: all 1 of its call slots stayed \
         taken for 200ms; retry later"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let (status, retry, body) = chat_from(
        &client,
        &format!("{}/v1/chat/completions", proxy.url),
        "none",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("plugin \"hostile\" is busy"), "{body}");

    let (status, _, body) = spinning.await.unwrap();
    assert_eq!(status, 500, "{body}");
    let (status, _, body) = chat_from(&client, &url, "none").await;
    assert_eq!(status, 200, "free again: {body}");
}

/// Calls run inline on the async workers: one that spins to its time limit
/// must not hold up new connections, nor requests that need no plugin slot.
#[tokio::test]
async fn a_call_spinning_on_a_worker_holds_up_only_its_own_request() {
    // Slots to spare: only the workers are contended.
    let (_a, proxy) = hostile_proxy(
        r#"time_limit = "1500ms"
           concurrency = 8"#,
    )
    .await;
    let url = format!("{}/api/chat", proxy.url);
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { chat_from(&client_from("127.0.0.1"), &url, "loop").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    for _ in 0..5 {
        // A new connection each time: the accept loop must be running.
        let (status, _, body) = chat_from(&client_from("127.0.0.1"), &url, "none").await;
        assert_eq!(status, 200, "{body}");
    }
    let took = started.elapsed();
    for spinner in spinners {
        let (status, _, body) = spinner.await.unwrap();
        assert_eq!(status, 500, "{body}");
    }
    assert!(
        took < Duration::from_millis(1000),
        "5 plain requests took {took:?} beside two spinning calls"
    );
}
