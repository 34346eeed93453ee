//! The same gateway from flags, environment or `llamagate.toml`.

use serde_json::json;

use crate::common::*;

async fn check_routes(proxy: &Proxy, a: &SimHandle, b: &SimHandle) {
    for (model, sim) in [("llama3.2", a), ("gpt-4o", a), ("qwen2.5:14b", b)] {
        sim.take_requests();
        let r = post(
            &format!("{}/api/generate", proxy.url),
            &json!({"model": model, "prompt":"x","stream":false}),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert!(
            sim.take_requests()
                .iter()
                .any(|r| r.path == "/api/generate"),
            "{model}"
        );
    }
}

#[tokio::test]
async fn config_file_equals_flags() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            gpu-01 = "{}"
            gpu-02 = "{}"
            [policy]
            list_aliases = true
            models = {{ "llama3.2" = "gpu-01", "qwen2.5:14b" = "gpu-02" }}
            aliases = {{ "gpt-4o" = "llama3.2" }}
            "#,
            a.url(),
            b.url()
        ),
        &[],
    );
    check_routes(&proxy, &a, &b).await;
}

#[tokio::test]
async fn gollamas_environment_variables_work() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b"]).await;
    let env = [
        (
            "GOLLAMAS_CONNECTIONS",
            format!("c1={},c2={}", a.url(), b.url()),
        ),
        ("GOLLAMAS_PROXIES", "llama3.2=c1,qwen2.5:14b=c2".to_string()),
        ("GOLLAMAS_ALIASES", "gpt-4o=llama3.2".to_string()),
    ];
    // Environment is process-wide: set it for the child only.
    let proxy = Proxy::start_with_env(&[], &env);
    check_routes(&proxy, &a, &b).await;
}

#[tokio::test]
async fn bad_configs_name_the_key() {
    for (toml, expect) in [
        ("lisen = \"x\"", "unknown field `lisen`"),
        ("[connections]\na = \"ftp://x\"", "connections.a"),
        (
            "[connections]\na = \"http://127.0.0.1:9\"\n[policy.models]\nm = \"b\"",
            "policy.models.\"m\": unknown connection \"b\"",
        ),
        (
            "max_body_size = \"12 parsecs\"\n[connections]\na = \"http://127.0.0.1:9\"",
            "max_body_size",
        ),
    ] {
        let path = write_temp("llamagate.toml", toml);
        let logs = Proxy::try_start(&["--config", path.to_str().unwrap()])
            .err()
            .expect("must not start");
        assert!(logs.contains(expect), "{toml}: {logs}");
    }
    let logs = Proxy::try_start(&[]).err().expect("no backends");
    assert!(logs.contains("no backends configured"), "{logs}");
}
