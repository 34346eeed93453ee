//! A misbehaving plugin costs one request an error, never the proxy.

use serde_json::json;

use crate::common::*;

async fn hostile_fleet(toml_extra: &str) -> (SimHandle, Proxy) {
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
            time_limit = "250ms"
            memory_limit = "32MiB"
            {toml_extra}
            "#,
            a.url(),
            hostile.display()
        ),
        &[],
    );
    (a, proxy)
}

async fn chat(proxy: &Proxy, behaviour: &str) -> Reply {
    post_with(
        &format!("{}/api/chat", proxy.url),
        &[("x-hostile", behaviour)],
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}),
    )
    .await
}

#[tokio::test]
async fn trap_loop_and_memory_hog_each_cost_one_request() {
    let (_a, mut proxy) = hostile_fleet("").await;
    for (behaviour, expect) in [
        ("trap", "failed"),
        ("loop", "time limit"),
        ("oom", "memory limit"),
        ("trap", "failed"),
    ] {
        let r = chat(&proxy, behaviour).await;
        assert_eq!(r.status, 500, "{behaviour}: {}", r.text());
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            message.contains("\"hostile\"") && message.contains(expect),
            "{behaviour}: {message}"
        );
        let ok = chat(&proxy, "none").await;
        assert_eq!(ok.status, 200, "request after {behaviour}: {}", ok.text());
        assert!(proxy.alive());
    }
}

#[tokio::test]
async fn bad_answers_are_errors_naming_the_plugin() {
    let (_a, proxy) = hostile_fleet("").await;
    for behaviour in ["unknown-backend", "bad-header"] {
        let r = chat(&proxy, behaviour).await;
        assert_eq!(r.status, 500, "{behaviour}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains("\"hostile\""),
            "{}",
            r.text()
        );
    }
    assert_eq!(chat(&proxy, "none").await.status, 200);
}

#[tokio::test]
async fn a_plugin_can_reject_with_its_status_message_and_headers() {
    let (a, proxy) = hostile_fleet("").await;
    let r = chat(&proxy, "reject").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"error":"slow down"}));
    assert_eq!(r.header("retry-after"), Some("7"));
    let r = post_with(
        &format!("{}/v1/chat/completions", proxy.url),
        &[("x-hostile", "reject")],
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.json()["error"]["message"], "slow down");
    assert!(
        a.requests().iter().all(|r| r.method != "POST"),
        "rejected requests never reach a backend"
    );
}

#[tokio::test]
async fn the_body_reaches_a_plugin_only_when_it_asks() {
    let (a, proxy) = hostile_fleet("").await;
    let body =
        json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false});
    let r = chat(&proxy, "body-size").await;
    assert_eq!(r.status, 200);
    let seen = a
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(
        seen.header("x-body-bytes-seen"),
        Some(body.to_string().len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_plugin_that_refuses_its_config_stops_start_up_with_its_message() {
    let hostile = component("hostile-fixture");
    let path = write_temp(
        "llamagate.toml",
        &format!(
            "[connections]\na = \"http://127.0.0.1:9\"\n[[plugins]]\npath = \"{}\"\nconfig = {{ fail_init = \"teams table is missing\" }}\n",
            hostile.display()
        ),
    );
    let logs = Proxy::try_start(&["--config", path.to_str().unwrap()])
        .err()
        .expect("must not start");
    assert!(logs.contains("teams table is missing"), "{logs}");
}

#[tokio::test]
async fn default_policy_rejects_a_bad_config_naming_the_key() {
    let logs = Proxy::try_start(&[
        "--connection",
        "a=http://127.0.0.1:9",
        "--config",
        write_temp(
            "llamagate.toml",
            "[policy]\ndefaults = { keep_alive = \"300\" }\n",
        )
        .to_str()
        .unwrap(),
    ])
    .err()
    .expect("must not start");
    assert!(logs.contains("defaults.keep_alive"), "{logs}");
}

#[tokio::test]
async fn fail_open_skips_a_failing_plugin() {
    let (_a, proxy) = hostile_fleet("on_failure = \"open\"").await;
    for behaviour in ["trap", "loop", "oom"] {
        let r = chat(&proxy, behaviour).await;
        assert_eq!(
            r.status,
            200,
            "{behaviour} with on_failure = open: {}",
            r.text()
        );
    }
    assert!(proxy.logs().contains("skipped (on_failure = \"open\")"));
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
#[tokio::test]
async fn memory_hogs_do_not_grow_the_proxy() {
    let (_a, proxy) = hostile_fleet("").await;
    // Warm up, then hog 32 MiB twenty times over.
    for _ in 0..3 {
        assert_eq!(chat(&proxy, "oom").await.status, 500);
    }
    let before = rss_kib(proxy.pid());
    for _ in 0..20 {
        assert_eq!(chat(&proxy, "oom").await.status, 500);
    }
    assert_eq!(chat(&proxy, "none").await.status, 200);
    let after = rss_kib(proxy.pid());
    // 20 x 32 MiB would be 640 MiB if nothing were given back.
    assert!(
        after < before + 96 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn explain_header_says_who_decided_what() {
    let (_a, proxy) = hostile_fleet("").await;
    let r = chat(&proxy, "none").await;
    assert!(
        r.header(llamagate::gateway::DECISION_HEADER).is_none(),
        "off by default"
    );

    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::start(&[
        "--proxy",
        &format!("llama3.2={}", sim.url()),
        "--alias",
        "gpt-4o=llama3.2",
        "--explain",
    ]);
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"gpt-4o","messages":[],"stream":false}),
    )
    .await;
    let header = r.header(llamagate::gateway::DECISION_HEADER).unwrap();
    let id = sim.url().trim_start_matches("http://").to_string();
    assert!(
        header.starts_with("default-policy: model=llama3.2"),
        "{header}"
    );
    assert!(header.ends_with(&format!("served by {id}")), "{header}");
}

#[tokio::test]
async fn shadow_chain_decides_without_effect_and_is_counted() {
    let a = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            a = "{}"
            [policy.models]
            "llama3.2" = "a"
            [[shadow]]
            path = "builtin:default-policy"
            config = {{ models = {{ "llama3.2" = ["a"] }}, defaults = {{ num_ctx = 4096 }} }}
            [[shadow]]
            path = "{}"
            "#,
            a.url(),
            hostile.display()
        ),
        &[],
    );
    // The shadow chain would add num_ctx and rejects "reject" requests; neither happens live.
    let r = chat(&proxy, "none").await;
    assert_eq!(r.status, 200);
    let r = chat(&proxy, "reject").await;
    assert_eq!(r.status, 200, "shadow decisions are not applied");
    let seen: Vec<_> = a
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .collect();
    assert!(
        seen.iter().all(|r| r.json()["options"].is_null()),
        "no num_ctx injected"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = get(&format!("{}/llamagate/status", proxy.url)).await.json();
        let shadow = &status["shadow"];
        if shadow["decided"] == 2 {
            assert_eq!(shadow["differed"], 2, "{status}");
            assert_eq!(
                shadow["plugins"],
                json!(["default-policy", "hostile_fixture"])
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(proxy.logs().contains("shadow policy decided otherwise"));
}

fn llamagate(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn plugin_check_says_what_is_wrong() {
    let hostile = component("hostile-fixture");
    let (ok, out) = llamagate(&["plugin", "check", hostile.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("implements llamagate:policy@0.1.0"), "{out}");

    let config = write_temp("c.json", r#"{"fail_init":"tokens missing"}"#);
    let (ok, out) = llamagate(&[
        "plugin",
        "check",
        hostile.to_str().unwrap(),
        "--with-config",
        config.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("tokens missing"), "{out}");

    let garbage = write_temp("x.wasm", "not wasm");
    let (ok, out) = llamagate(&["plugin", "check", garbage.to_str().unwrap()]);
    assert!(
        !ok && out.contains("not a valid WebAssembly component"),
        "{out}"
    );
}

#[tokio::test]
async fn recorded_traffic_replays_through_a_new_plugin() {
    let a = backend(&["llama3.2"]).await;
    let record = write_temp("traffic.jsonl", "");
    let config = write_temp(
        "llamagate.toml",
        &format!(
            "[connections]\ngpu = \"{}\"\n[policy.models]\n\"llama3.2\" = \"gpu\"\n",
            a.url()
        ),
    );
    let proxy = Proxy::start(&[
        "--config",
        config.to_str().unwrap(),
        "--record",
        record.to_str().unwrap(),
    ]);
    for behaviour in ["none", "reject", "none"] {
        chat(&proxy, behaviour).await;
    }
    let r = post(
        &format!("{}/api/generate", proxy.url),
        &json!({"model":"nope","prompt":"x"}),
    )
    .await;
    assert_eq!(r.status, 404);
    // The recorder writes from a background thread: wait for the last line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let recorded = std::fs::read_to_string(&record).unwrap();
        if recorded.lines().count() == 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{recorded}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(proxy);

    let hostile = component("hostile-fixture");
    let (ok, out) = llamagate(&[
        "plugin",
        "test",
        hostile.to_str().unwrap(),
        "--requests",
        record.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("chain: default-policy -> hostile_fixture"),
        "{out}"
    );
    assert!(
        out.contains("429 \"slow down\" (answered by hostile_fixture)"),
        "{out}"
    );
    assert!(out.contains("forward to gpu"), "{out}");
    assert!(out.contains("404 model \"nope\" not found"), "{out}");
    assert!(
        out.contains("4 requests: 2 forwarded, 1 answered by the policy, 1 not found, 0 errors"),
        "{out}"
    );
}
