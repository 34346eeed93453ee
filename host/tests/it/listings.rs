//! Listings answered from a short-lived merged result (`listing_cache`), one
//! fan-out per burst, dropped when a pull, create, copy or delete succeeds.
//!
//! Backend traffic is counted without llamagate's probes, which send their
//! own `User-Agent` (and `probe_interval = "60s"` keeps them out of the way).

use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// The listings a backend was asked for by clients (probes left out).
fn listings(sim: &SimHandle, path: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .filter(|r| {
            !r.header("user-agent")
                .is_some_and(|ua| ua.starts_with("llamagate-probe/"))
        })
        .count()
}

async fn two_backends(cache: &str) -> (SimHandle, SimHandle, Proxy) {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            r#"
            listing_cache = "{cache}"
            probe_interval = "60s"
            [connections]
            a = "{}"
            b = "{}"
            "#,
            a.url(),
            b.url()
        ),
        &[],
    );
    (a, b, proxy)
}

fn names(reply: &Reply) -> Vec<String> {
    reply.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn listings_within_the_cache_time_ask_each_backend_once() {
    let (a, b, proxy) = two_backends("5s").await;
    for path in ["/api/tags", "/api/ps", "/v1/models", "/api/version"] {
        let first = get(&format!("{}{path}", proxy.url)).await;
        let second = get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(first.status, 200, "{path}: {}", first.text());
        assert_eq!(first.body, second.body, "{path}");
        assert_eq!(listings(&a, path), 1, "{path}");
        assert_eq!(listings(&b, path), 1, "{path}");
    }
    // The probes' own `/api/tags` and `/api/ps` reach the backend too, and
    // are not counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.requests().iter().any(|r| {
        r.header("user-agent")
            .is_some_and(|u| u.starts_with("llamagate-probe/"))
    }) {
        assert!(std::time::Instant::now() < deadline, "no probe seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listings(&a, "/api/tags"), 1);
}

#[tokio::test]
async fn a_burst_of_misses_shares_one_fan_out() {
    let (a, b, proxy) = two_backends("5s").await;
    let url = format!("{}/api/tags", proxy.url);
    let burst = (0..16).map(|_| get(&url));
    let replies = futures_util::future::join_all(burst).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(listings(&a, "/api/tags"), 1);
    assert_eq!(listings(&b, "/api/tags"), 1);
}

#[tokio::test]
async fn a_pull_through_llamagate_refreshes_the_listing_at_once() {
    let (a, b, proxy) = two_backends("5s").await;
    let tags = format!("{}/api/tags", proxy.url);
    let before = names(&get(&tags).await);
    assert!(!before.iter().any(|n| n.starts_with("fresh")), "{before:?}");
    let pinned = [("x-llamagate-backend", "b")];
    for (model, stream) in [("fresh-a", false), ("fresh-b", true)] {
        let body = json!({"model": model, "stream": stream});
        let r = post_with(&format!("{}/api/pull", proxy.url), &pinned, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let after = names(&get(&tags).await);
        assert!(
            after.contains(&format!("{model}:latest")),
            "{model} listed at once: {after:?}"
        );
    }
    assert_eq!(listings(&a, "/api/tags"), 3, "asked again after each pull");
    assert_eq!(listings(&b, "/api/tags"), 3);
    // A pull that fails leaves the cache alone. First let the background
    // re-probe that follows the last successful pull finish (it drops the
    // cache once more when done), and fill the cache again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = b.requests();
        let last_pull = seen.iter().rposition(|r| r.path == "/api/pull").unwrap();
        let probed = seen[last_pull..].iter().any(|r| {
            r.path == "/api/ps"
                && r.header("user-agent")
                    .is_some_and(|u| u.starts_with("llamagate-probe/"))
        });
        if probed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no re-probe after the pull"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    get(&tags).await;
    let cached = listings(&a, "/api/tags");
    let r = post(
        &format!("{}/api/pull", proxy.url),
        &json!({"model": "missing-model", "stream": true}),
    )
    .await;
    assert!(r.text().contains("error"), "{}", r.text());
    get(&tags).await;
    assert_eq!(listings(&a, "/api/tags"), cached, "still cached");
}

#[tokio::test]
async fn listing_cache_zero_asks_every_time() {
    let (a, b, proxy) = two_backends("0").await;
    for _ in 0..3 {
        assert_eq!(get(&format!("{}/api/tags", proxy.url)).await.status, 200);
    }
    assert_eq!(listings(&a, "/api/tags"), 3);
    assert_eq!(listings(&b, "/api/tags"), 3);
}

#[tokio::test]
async fn the_default_cache_is_short() {
    let a = backend(&["llama3.2"]).await;
    let proxy = Proxy::start(&["--connection", &format!("a={}", a.url())]);
    let url = format!("{}/api/tags", proxy.url);
    let started = std::time::Instant::now();
    get(&url).await;
    get(&url).await;
    // (A machine too busy to send two requests within the second proves nothing.)
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(listings(&a, "/api/tags"), 1, "within the default 1s");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    get(&url).await;
    assert_eq!(listings(&a, "/api/tags"), 2, "after it");
}
