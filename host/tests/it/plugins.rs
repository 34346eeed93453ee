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

/// What a client is told when the hostile plugin traps: one line, no backtrace.
const TRAPPED: &str = "llamagate policy error: plugin \"hostile\" trapped: \
                       wasm trap: wasm `unreachable` instruction executed";

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
        ("trap", TRAPPED),
        ("loop", "llamagate policy error: plugin \"hostile\" exceeded its time limit of 250ms (CPU time)"),
        ("oom", "llamagate policy error: plugin \"hostile\" exceeded its memory limit of 33554432 bytes"),
        ("trap", TRAPPED),
    ] {
        let r = chat(&proxy, behaviour).await;
        assert_eq!(r.status, 500, "{behaviour}: {}", r.text());
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert_eq!(message, expect, "{behaviour}");
        let ok = chat(&proxy, "none").await;
        assert_eq!(ok.status, 200, "request after {behaviour}: {}", ok.text());
        assert!(proxy.alive());
    }
}

#[tokio::test]
async fn a_plugin_that_waits_fails_its_request_at_once_and_stalls_nothing() {
    let (_a, mut proxy) = hostile_fleet("").await;
    // Calls run inline on the async workers: a plugin that sleeps must not
    // hold one for the 2 s it asks for, nor panic the worker.
    let started = std::time::Instant::now();
    let sleepers = (0..8).map(|_| chat(&proxy, "sleep"));
    for r in futures_util::future::join_all(sleepers).await {
        assert_eq!(r.status, 500, "{}", r.text());
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            message.starts_with("llamagate policy error: plugin \"hostile\" trapped")
                && message.contains("may not wait"),
            "{message}"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "a sleeping plugin held its request for {:?}",
        started.elapsed()
    );
    assert_eq!(chat(&proxy, "none").await.status, 200);
    assert!(proxy.alive());
    assert!(!proxy.logs().contains("panicked at"), "{}", proxy.logs());
}

#[tokio::test]
async fn a_plugins_stdout_and_stderr_reach_the_log() {
    let (_a, proxy) = hostile_fleet("").await;
    let r = chat(&proxy, "print").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let logs = proxy.logs();
    assert!(
        logs.contains("stdout: hostile says hello on stdout")
            && logs.contains("plugin=\"hostile\""),
        "{logs}"
    );
    assert!(
        logs.contains("stderr: hostile says hello on stderr"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_trap_is_one_line_for_the_client_and_a_few_for_the_log() {
    let (_a, proxy) = hostile_fleet("").await;
    let n = 30;
    for _ in 0..n {
        let r = chat(&proxy, "trap").await;
        assert_eq!(r.status, 500);
        let message = r.json()["error"].as_str().unwrap().to_string();
        assert_eq!(message, TRAPPED);
        let r = post_with(
            &format!("{}/v1/chat/completions", proxy.url),
            &[("x-hostile", "trap")],
            &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(r.status, 500);
        assert_eq!(r.json()["error"]["message"], TRAPPED, "OpenAI shape too");
    }
    assert_eq!(chat(&proxy, "none").await.status, 200);
    let logs = proxy.logs();
    let lines = logs.lines().filter(|l| l.contains("trapped")).count();
    assert!(
        (1..=2).contains(&lines),
        "{n} traps must not log {n} lines, got {lines}:\n{logs}"
    );
    assert!(
        !logs.contains("wasm backtrace"),
        "no backtrace at info level:\n{logs}"
    );
    // The guest's panic message reaches the log, a bounded number of times
    // (20 lines per plugin and stream every 10 s; a panic is 3 lines).
    assert!(
        logs.contains("stderr: hostile plugin asked to trap"),
        "guest stderr reaches the log:\n{logs}"
    );
    let stderr = logs.lines().filter(|l| l.contains("stderr: ")).count();
    assert!(
        (3..=20).contains(&stderr),
        "{n} panics must not log {} lines, got {stderr}:\n{logs}",
        3 * 2 * n
    );
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

/// A plugin built for `llamagate:policy@0.1.0` (plain wit-bindgen, the whole
/// fleet passed to `on-request`) keeps working beside 0.3.0 ones.
#[tokio::test]
async fn a_plugin_built_for_0_1_0_keeps_working() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b", "mistral"]).await;
    let v1 = component("v1-policy-fixture");
    let proxy = Proxy::with_config(
        &format!(
            r#"
            explain = true
            [connections]
            a = "{}"
            b = "{}"
            [[plugins]]
            name = "old"
            path = "{}"
            "#,
            a.url(),
            b.url(),
            v1.display()
        ),
        &[],
    );
    // Its list-models runs too (and the listing shows the fleet is probed).
    let names = loop {
        let tags = get(&format!("{}/api/tags", proxy.url)).await.json();
        let names: Vec<String> = tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        if names.len() == 3 {
            break names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        names.contains(&"v1-llama3.2:latest".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"v1-mistral:latest".to_string()),
        "{names:?}"
    );

    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"llama3.2","messages":[],"stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let header = r
        .header(llamagate::proxy::pipeline::DECISION_HEADER)
        .unwrap();
    // It was handed both backends, with their three models and URLs.
    assert!(
        header.contains("old: header x-v1-seen backends=[a]"),
        "{header}"
    );
    assert!(header.ends_with("served by a"), "{header}");
}

/// A plugin built for `llamagate:policy@0.2.0` (plain wit-bindgen, asking
/// `backends-for`) keeps working beside 0.3.0 ones: it routes, names a
/// principal, and lists.
#[tokio::test]
async fn a_plugin_built_for_0_2_0_keeps_working() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["llama3.2", "mistral"]).await;
    let v2 = component("v2-policy-fixture");
    let proxy = Proxy::with_config(
        &format!(
            r#"
            explain = true
            [connections]
            a = "{}"
            b = "{}"
            [[plugins]]
            name = "old"
            path = "{}"
            "#,
            a.url(),
            b.url(),
            v2.display()
        ),
        &[],
    );
    let names = loop {
        let tags = get(&format!("{}/api/tags", proxy.url)).await.json();
        let names: Vec<String> = tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        if names.len() == 2 {
            break names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        names.contains(&"v2-llama3.2:latest".to_string()),
        "{names:?}"
    );
    // A listing asks the backends itself; routing waits for the probes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = get(&format!("{}/llamagate/status", proxy.admin_url()))
            .await
            .json();
        let probed = status["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| !b["models"].as_array().unwrap().is_empty());
        if probed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &json!({"model":"llama3.2","messages":[],"stream":false}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let header = r
            .header(llamagate::proxy::pipeline::DECISION_HEADER)
            .unwrap();
        // Both backends that serve it, reversed (its choice, not the
        // default policy's), and the principal it named.
        assert!(
            header.contains("old: header x-v2-seen backends=[b,a] principal=v2-fixture"),
            "{header}"
        );
        assert!(header.ends_with("served by b"), "{header}");
    }
    let seen: Vec<String> = b
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .filter_map(|r| {
            r.headers
                .into_iter()
                .find(|(n, _)| n == "x-v2-seen")
                .map(|(_, v)| v)
        })
        .collect();
    assert_eq!(
        seen, ["2/2/0/2"; 3],
        "2 serving, 2 healthy, none loaded, 2 in all"
    );
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"phi4","messages":[],"stream":false}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.text().contains("v2 plugin: no backend serves phi4"),
        "{}",
        r.text()
    );
    let status = get(&format!("{}/llamagate/status", proxy.admin_url()))
        .await
        .json();
    assert_eq!(
        status["contracts_served"],
        json!(["0.3.0", "0.2.0", "0.1.0"])
    );
    assert_eq!(
        status["contracts"],
        json!([
            {"plugin": "default-policy", "contract": "0.3.0"},
            {"plugin": "old", "contract": "0.2.0"}
        ])
    );
    assert_eq!(status["backends"][0]["state"], "up", "{status}");
}

/// The fleet facts a contract-level test hands the plugins: four backends in
/// every state, with 0.3.0's facts filled in.
fn rich_fleet() -> Vec<llamagate::plugin::Backend> {
    use llamagate::plugin::{Backend, Health, LoadedModel, ModelFacts};
    let states = [Health::Up, Health::HalfOpen, Health::Open, Health::Down];
    states
        .into_iter()
        .enumerate()
        .map(|(i, state)| Backend {
            id: format!("b{i}"),
            url: format!("http://b{i}:11434"),
            state,
            reason: (state != Health::Up).then(|| "breaker".to_string()),
            version: Some(format!("0.12.{i}")),
            slots: 12,
            model_slots: 4,
            in_flight: i as u32,
            queued: 10 + i as u32,
            vram: Some(24 << 30),
            models: vec!["llama3.2:latest".into()],
            loaded: vec![LoadedModel {
                name: "llama3.2:latest".into(),
                size: 5 << 30,
                size_vram: 4 << 30,
                context_length: Some(8192),
                expires_in_secs: Some(300),
            }],
            model: Some(ModelFacts {
                size: Some(2 << 30),
                in_flight: 1,
                queued: 2,
            }),
        })
        .collect()
}

/// Decides one chat for `llama3.2` with `plugin` alone (no default policy),
/// with the `x-hostile` header (the hostile fixture's behaviour) set.
fn decide_alone(
    package: &str,
    behaviour: &str,
) -> Result<llamagate::policy::Outcome, llamagate::api::error::GatewayError> {
    use llamagate::plugin::{Endpoint, Facts, Header, Limits, Request, Runtime, Snapshot};
    let wasm = std::fs::read(component(package)).unwrap();
    let runtime = Runtime::new().unwrap();
    let plugin = runtime
        .load(package, &wasm, "{}".into(), Limits::default())
        .unwrap();
    let chain = llamagate::policy::Chain::of(vec![plugin]);
    let request = Request {
        id: "1".into(),
        endpoint: Endpoint::Chat,
        method: "POST".into(),
        path: "/api/chat".into(),
        model: Some("llama3.2".into()),
        headers: vec![Header {
            name: "x-hostile".into(),
            value: behaviour.into(),
        }],
        client_addr: "127.0.0.1:5000".into(),
        options: vec![],
        keep_alive: None,
        streaming: false,
        body_size: 2,
        route: None,
    };
    let facts: std::sync::Arc<dyn Facts> = std::sync::Arc::new(Snapshot::new(rich_fleet()));
    chain.decide_blocking(
        request,
        Default::default(),
        &facts,
        &bytes::Bytes::from_static(b"{}"),
        true,
    )
}

fn plan_header(plan: &llamagate::policy::Plan, name: &str) -> String {
    plan.set_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {name} header set"))
}

/// A 0.3.0 plugin gets every fact of `backend` (state, version, slots, queue,
/// VRAM, loaded sizes and expiry, the asked model's facts from `backends-for`,
/// none from `all-backends`), and what it asks the host to enforce lands in
/// the plan.
#[test]
fn contract_0_3_0_facts_reach_the_plugin_and_its_enforce_edits_the_plan() {
    use llamagate::policy::{Enforce, Outcome};
    use std::time::Duration;
    let Ok(Outcome::Forward(plan)) = decide_alone("hostile-fixture", "facts") else {
        panic!("the facts behaviour forwards");
    };
    let facts = plan_header(&plan, "x-facts");
    let runner = "[llama3.2:latest=5368709120/4294967296/Some(8192)/Some(300)]";
    let model = "Some(2147483648)/1+2";
    let expected: Vec<String> = ["Up:true", "HalfOpen:true", "Open:false", "Down:false"]
        .iter()
        .enumerate()
        .map(|(i, state)| {
            format!(
                "b{i}:{state}:Some(\"0.12.{i}\"):12/4:{i}+{}:Some(25769803776):{runner}:{model}",
                10 + i
            )
        })
        .collect();
    assert_eq!(
        facts,
        format!("{} | all=4 none=true", expected.join(" ")),
        "facts as the plugin saw them"
    );
    assert_eq!(
        plan.enforce,
        Enforce {
            priority: Some(7),
            first_byte_timeout: Some(Duration::from_millis(1500)),
            stream_idle_timeout: Some(Duration::from_millis(2500)),
            queue_timeout: Some(Duration::from_millis(3500)),
            failover: Some(false),
            every_backend: Some(true),
        }
    );
    // A decision that asks nothing leaves the host's own settings.
    let Ok(Outcome::Forward(plan)) = decide_alone("hostile-fixture", "none") else {
        panic!("forwards");
    };
    assert_eq!(plan.enforce, Enforce::default());
}

/// A 0.2.0 plugin is told `healthy` = up or half-open, and its decision
/// asks nothing of what 0.3.0 enforces.
#[test]
fn contract_0_2_0_sees_half_open_as_healthy_and_enforces_nothing() {
    use llamagate::policy::{Enforce, Outcome};
    let Ok(Outcome::Forward(plan)) = decide_alone("v2-policy-fixture", "") else {
        panic!("forwards");
    };
    // 4 serving, 2 healthy (up, half-open), 4 runners, 4 in all.
    assert_eq!(plan_header(&plan, "x-v2-seen"), "4/2/4/4");
    let route = plan.backends.as_ref().unwrap().backends.clone();
    assert_eq!(route, ["b1", "b0", "b3", "b2"]);
    assert_eq!(plan.principal.as_deref(), Some("v2-fixture"));
    assert_eq!(plan.enforce, Enforce::default());
}

#[tokio::test]
async fn explain_header_says_who_decided_what() {
    let (_a, proxy) = hostile_fleet("").await;
    let r = chat(&proxy, "none").await;
    assert!(
        r.header(llamagate::proxy::pipeline::DECISION_HEADER)
            .is_none(),
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
    let header = r
        .header(llamagate::proxy::pipeline::DECISION_HEADER)
        .unwrap();
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
        let status = get(&format!("{}/llamagate/status", proxy.admin_url()))
            .await
            .json();
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
    assert!(out.contains("implements llamagate:policy@0.3.0"), "{out}");
    let v2 = component("v2-policy-fixture");
    let (ok, out) = llamagate(&["plugin", "check", v2.to_str().unwrap()]);
    assert!(
        ok && out.contains("implements llamagate:policy@0.2.0"),
        "{out}"
    );
    let v1 = component("v1-policy-fixture");
    let (ok, out) = llamagate(&["plugin", "check", v1.to_str().unwrap()]);
    assert!(
        ok && out.contains("implements llamagate:policy@0.1.0"),
        "{out}"
    );
    let not_a_policy = write_temp("p.wasm", "\0asm\u{d}\0\u{1}\0");
    let (ok, out) = llamagate(&["plugin", "check", not_a_policy.to_str().unwrap()]);
    assert!(!ok, "{out}");

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

/// A plugin that runs out of memory because the request is huge (it asked for
/// the body) costs the client a 413, not a 500; a plugin that runs out of
/// memory on its own stays a 500.
#[tokio::test]
async fn a_request_too_large_for_the_sandbox_is_the_clients_413() {
    let (_a, proxy) = hostile_fleet("").await;
    let prompt = "x".repeat(40 << 20);
    let r = post_with(
        &format!("{}/api/generate", proxy.url),
        &[("x-hostile", "body-size")],
        &json!({"model":"llama3.2","prompt":prompt,"stream":false}),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("request too large for policy plugin"),
        "{}",
        r.text()
    );
    assert_eq!(chat(&proxy, "oom").await.status, 500);
    assert_eq!(chat(&proxy, "body-size").await.status, 200);
}
