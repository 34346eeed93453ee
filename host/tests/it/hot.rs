//! `[[hot]]` models: preloaded at start on `replicas` backends, and loaded
//! again where a backend lost them (a restart), by a load request llamagate
//! sends itself (`POST /api/generate` with no prompt and the `keep_alive`).

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::faults::*;

/// The loads a simulator received: `/api/generate` requests with no prompt.
fn loads(sim: &SimHandle) -> Vec<Value> {
    sim.requests()
        .iter()
        .filter(|r| r.path == "/api/generate" && r.json().get("prompt").is_none())
        .map(|r| r.json())
        .collect()
}

/// Whether the simulator's own `/api/ps` lists `model` as loaded.
async fn loaded(sim: &SimHandle, model: &str) -> bool {
    let ps = get(&format!("{}/api/ps", sim.url())).await.json();
    ps["models"]
        .as_array()
        .is_some_and(|all| all.iter().any(|m| m["name"] == model))
}

#[tokio::test]
async fn hot_models_are_preloaded_kept_on_replicas_and_restored_after_a_restart() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let b1 = sim_with(&["llama3.2", "qwen2.5"], &[], SimOptions::default()).await;
        let b2 = sim_with(&["llama3.2", "qwen2.5"], &[], SimOptions::default()).await;
        let b3 = sim_with(&["llama3.2", "qwen2.5"], &[], SimOptions::default()).await;
        let config = toml(
            "probe_interval = \"300ms\"",
            &[
                Conn::new("b1", &b1),
                Conn::new("b2", &b2),
                Conn::new("b3", &b3),
            ],
            "",
            "[health]\ndown_probe_interval = \"100ms\"\n\
             [[hot]]\nmodel = \"llama3.2\"\nreplicas = 2\nkeep_alive = \"1h\"\n\
             [[hot]]\nmodel = \"qwen2.5\"\nkeep_alive = -1\n",
        );
        let _proxy = Proxy::with_config(&config, &[]);
        // Two of three get llama3.2; the load says its keep_alive in seconds
        // and is llamagate's own (the probe's User-Agent).
        let sims = [&b1, &b2, &b3];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let holders = loop {
            let mut holders = Vec::new();
            for (i, s) in sims.iter().enumerate() {
                if loaded(s, "llama3.2:latest").await {
                    holders.push(i);
                }
            }
            if holders.len() >= 2 {
                break holders;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "preloaded: {holders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(holders.len(), 2, "replicas = 2: {holders:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let qwen = loop {
            let mut on = Vec::new();
            for (i, s) in sims.iter().enumerate() {
                if loaded(s, "qwen2.5:latest").await {
                    on.push(i);
                }
            }
            if !on.is_empty() {
                break on;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "qwen2.5 never preloaded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(qwen.len(), 1, "replicas = 1 for qwen2.5: {qwen:?}");
        let llama: Vec<Value> = loads(sims[holders[0]])
            .into_iter()
            .filter(|l| l["model"] == "llama3.2")
            .collect();
        let first = &llama[0];
        assert_eq!(first["model"], "llama3.2");
        assert_eq!(first["keep_alive"], 3600);
        let q: Vec<Value> = loads(sims[qwen[0]])
            .into_iter()
            .filter(|l| l["model"] == "qwen2.5")
            .collect();
        assert_eq!(q[0]["keep_alive"], -1, "{q:?}");
        let load = sims[holders[0]]
            .requests()
            .into_iter()
            .find(|r| r.path == "/api/generate")
            .unwrap();
        assert!(load
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("llamagate-probe/")));

        // Nothing more is loaded while all is in place.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let count = |s: &SimHandle| loads(s).len();
        let before: Vec<usize> = sims.iter().map(|s| count(s)).collect();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let after: Vec<usize> = sims.iter().map(|s| count(s)).collect();
        assert_eq!(
            before, after,
            "loads sent although every hot model was in place"
        );

        // A holder restarts with nothing loaded: llama3.2 is loaded again
        // (on it, or on the backend that lacks it).
        let victim = holders[0];
        let addr = sims[victim].addr();
        let mut all = [Some(b1), Some(b2), Some(b3)];
        all[victim].take().unwrap().shutdown();
        let restarted = sim::spawn_at(
            addr,
            SimOptions {
                models: vec!["llama3.2".into(), "qwen2.5".into()],
                ..SimOptions::default()
            },
        )
        .await
        .unwrap();
        all[victim] = Some(restarted);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut n = 0;
            for s in all.iter().flatten() {
                if loaded(s, "llama3.2:latest").await {
                    n += 1;
                }
            }
            if n >= 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "llama3.2 not restored to 2 replicas after the restart ({n})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("test did not finish within 60 s");
}
