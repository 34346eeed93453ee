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
            time_limit = "50ms"
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
