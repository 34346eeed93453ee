//! Health that counts what happens: a replica answering 503 at once while its
//! probes pass is shut out by its breaker after `[breaker] failures` requests,
//! gets one trial after `open_for`, and traffic again once it recovers; a
//! backend killed and restarted on its port is probed every
//! `down_probe_interval` and gets traffic again within moments; probes that
//! fail mark a backend down. `/llamagate/status` shows each backend's
//! `state` (`up`, `half-open`, `open`, `down`), `healthy` (up or half-open)
//! and the `reason`.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::faults::*;

const PAIR: &str = r#"models = { "llama3.2" = ["b1", "b2"] }"#;

async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"));
}

/// Sends a non-streamed chat that must succeed.
async fn served(proxy: &Proxy, text: &str) {
    let r = post(&format!("{}/api/chat", proxy.url), &chat_body(text)).await;
    assert_eq!(r.status, 200, "{text}: {}", r.text());
}

fn assert_shape(b: &Value) {
    let state = b["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no state: {b}"));
    assert!(["up", "half-open", "open", "down"].contains(&state), "{b}");
    assert_eq!(
        b["healthy"],
        matches!(state, "up" | "half-open"),
        "healthy must be up or half-open: {b}"
    );
    match state {
        "up" => assert!(b["reason"].is_null(), "up with a reason: {b}"),
        _ => assert!(
            b["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{state} without a reason: {b}"
        ),
    }
}

/// The issue's case: a replica that answers Ollama's 503 "server busy" at
/// once, probes passing. Every client request succeeds; the busy one gets at
/// most `failures` requests, none while open (however often its probes pass),
/// one trial after `open_for`, and traffic again when it recovers.
#[tokio::test]
async fn a_busy_replica_is_shut_out_by_its_breaker_then_tried_then_back() {
    bounded(120, async {
        let b1 = warm().await;
        let b2 = warm().await;
        b1.set_fault(sim::Fault::Busy);
        let config = toml(
            // Probes pass often: a passing probe must not close the breaker.
            "probe_interval = \"100ms\"",
            &[
                Conn::with("b1", &b1, "parallel = 8"),
                Conn::with("b2", &b2, "parallel = 8"),
            ],
            PAIR,
            "[breaker]\nfailures = 3\nopen_for = \"3s\"\n[health]\ndown_probe_interval = \"100ms\"",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        assert_shape(&backend_status(&proxy, "b1").await);

        for i in 0..10 {
            served(&proxy, &format!("busy {i}")).await;
        }
        let shut_out = b1.inference_count();
        assert!(
            (1..=3).contains(&shut_out),
            "the busy replica got {shut_out} requests (breaker: 3)"
        );
        let b = backend_status(&proxy, "b1").await;
        assert_eq!(b["state"], "open", "{b}");
        assert_shape(&b);
        assert!(
            b["reason"].as_str().unwrap().contains("503"),
            "the reason should name the status: {b}"
        );
        assert_eq!(backend_status(&proxy, "b2").await["state"], "up");

        // While open (however many probes pass), nothing reaches it.
        for i in 0..5 {
            served(&proxy, &format!("open {i}")).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if backend_status(&proxy, "b1").await["state"] == "open" {
                assert_eq!(b1.inference_count(), shut_out, "sent to an open breaker");
            }
        }

        // After open_for: half-open, and exactly one trial, which fails.
        let b = wait_state(&proxy, "b1", "half-open", Duration::from_secs(10)).await;
        assert_shape(&b);
        // Many at once: the slots would let 8 through, the breaker only one.
        let before = b1.inference_count();
        let at_once: Vec<_> = (0..8)
            .map(|i| {
                let url = format!("{}/api/chat", proxy.url);
                tokio::spawn(async move {
                    try_send(http::Method::POST, &url, &chat_body(&format!("trial {i}"))).await
                })
            })
            .collect();
        for t in at_once {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert_eq!(
            b1.inference_count(),
            before + 1,
            "half-open lets exactly one trial through"
        );
        assert_eq!(backend_status(&proxy, "b1").await["state"], "open");

        // Recovered: the next trial closes the breaker and traffic returns.
        b1.set_fault(sim::Fault::None);
        wait_state(&proxy, "b1", "half-open", Duration::from_secs(15)).await;
        let before = b1.inference_count();
        let mut sent = 0;
        while b1.inference_count() == before {
            assert!(sent < 20, "the recovered replica got no trial");
            served(&proxy, &format!("recovered {sent}")).await;
            sent += 1;
        }
        let b = wait_state(&proxy, "b1", "up", Duration::from_secs(5)).await;
        assert_shape(&b);
        let before = b1.inference_count();
        for i in 0..6 {
            served(&proxy, &format!("back {i}")).await;
        }
        assert!(
            b1.inference_count() > before,
            "the recovered replica gets traffic again"
        );
    })
    .await;
}

/// The same with many clients at once: not one client request fails, and the
/// busy replica gets no more than the breaker's threshold plus the requests
/// already on their way when it opened.
#[tokio::test]
async fn concurrent_clients_never_see_a_busy_replicas_503() {
    bounded(120, async {
        let b1 = warm().await;
        let b2 = warm().await;
        b1.set_fault(sim::Fault::Busy);
        let config = toml(
            "",
            &[
                Conn::with("b1", &b1, "parallel = 8"),
                Conn::with("b2", &b2, "parallel = 8"),
            ],
            PAIR,
            "[breaker]\nfailures = 3\nopen_for = \"60s\"",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let clients = 8;
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let url = format!("{}/api/chat", proxy.url);
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    for i in 0..10 {
                        let body = chat_body(&format!("client {c} #{i}"));
                        match try_send(http::Method::POST, &url, &body).await {
                            Ok(r) if r.status == 200 => {}
                            Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                            Err(e) => failures.push(e),
                        }
                    }
                    failures
                })
            })
            .collect();
        let mut failures = Vec::new();
        for t in tasks {
            failures.extend(t.await.unwrap());
        }
        assert!(
            failures.is_empty(),
            "{} of 80 failed: {failures:?}",
            failures.len()
        );
        assert!(
            b1.inference_count() < 3 + clients,
            "the busy replica got {} requests",
            b1.inference_count()
        );
        assert_eq!(backend_status(&proxy, "b1").await["state"], "open");
    })
    .await;
}

/// A backend killed is down at its first refused connection; restarted on the
/// same port it is probed every `down_probe_interval` (not `probe_interval`,
/// a minute here) and gets traffic again within seconds.
#[tokio::test]
async fn a_killed_backend_restarted_on_its_port_gets_traffic_again() {
    bounded(90, async {
        let b1 = warm().await;
        let b2 = warm().await;
        let addr = b1.addr();
        let config = toml(
            "",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            PAIR,
            "[health]\ndown_probe_interval = \"200ms\"",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        served(&proxy, "before").await;
        assert_eq!(saying(&b1, "before"), 1, "b1 first while both are up");
        b1.shutdown();

        for i in 0..5 {
            served(&proxy, &format!("killed {i}")).await;
        }
        let b = wait_state(&proxy, "b1", "down", Duration::from_secs(5)).await;
        assert_shape(&b);
        let reason = b["reason"].as_str().unwrap();
        assert!(reason.contains("refused"), "{b}");

        let again = sim::spawn_at(
            addr,
            SimOptions {
                loaded: vec!["llama3.2".into()],
                ..SimOptions::default()
            },
        )
        .await
        .unwrap();
        // Within a few seconds (rise 2 x 200 ms, with a wide margin; with the
        // minute's probe_interval it would take a minute).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while again.inference_count() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the restarted backend got no traffic within 10 s; status: {}",
                backend_status(&proxy, "b1").await
            );
            served(&proxy, &format!("restarted {n}")).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let b = wait_state(&proxy, "b1", "up", Duration::from_secs(5)).await;
        assert_shape(&b);
    })
    .await;
}

/// Probes that fail (every connection closed: probes too) mark a backend
/// down after `fall` of them; requests go to the other replica meanwhile, and
/// probes that pass again bring it back after `rise`.
#[tokio::test]
async fn failing_probes_mark_a_backend_down_and_passing_ones_bring_it_back() {
    bounded(60, async {
        let b1 = warm().await;
        let b2 = warm().await;
        let config = toml(
            "probe_interval = \"100ms\"",
            &[Conn::new("b1", &b1), Conn::new("b2", &b2)],
            PAIR,
            "[health]\nrise = 2\nfall = 2\ndown_probe_interval = \"100ms\"",
        );
        let proxy = start_probed(&config, &["b1", "b2"]).await;
        let b = wait_state(&proxy, "b1", "up", Duration::from_secs(5)).await;
        assert_shape(&b);
        b1.set_fault(sim::Fault::Down);
        let b = wait_state(&proxy, "b1", "down", Duration::from_secs(5)).await;
        assert_shape(&b);
        let before = b1.inference_count();
        for i in 0..4 {
            served(&proxy, &format!("down {i}")).await;
        }
        assert_eq!(
            b1.inference_count(),
            before,
            "sent to a backend that is down"
        );
        b1.set_fault(sim::Fault::None);
        let b = wait_state(&proxy, "b1", "up", Duration::from_secs(5)).await;
        assert_shape(&b);
        served(&proxy, "up again").await;
        assert_eq!(saying(&b1, "up again"), 1, "b1 first again once up");
    })
    .await;
}
