//! Shadow chains compare like with like (the default policy in front, as in
//! the live chain), count per generation, and log decisions in words.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

async fn chat(proxy: &Proxy, hostile: &str) -> Reply {
    post_with(
        &format!("{}/api/chat", proxy.url),
        &[("x-hostile", hostile)],
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}),
    )
    .await
}

/// The status's `shadow` block once it has counted `decided` decisions.
async fn shadow_once_decided(proxy: &Proxy, decided: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&format!("{}/llamagate/status", proxy.admin_url()))
            .await
            .json();
        if status["shadow"]["decided"] == decided {
            return status["shadow"].clone();
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first log line holding `text`, waited for: the status counts a shadow
/// decision just before its line is written, and the log is read from a pipe.
async fn logged(proxy: &Proxy, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = proxy.logs();
        if let Some(line) = logs.lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {text:?} in:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Live: the default policy; shadow: the hostile fixture (which passes
/// `x-hostile: none`), with `extra` at the top level.
fn shadowed(sim: &SimHandle, extra: &str) -> String {
    let hostile = component("hostile-fixture");
    format!(
        r#"
        watch = false
        {extra}
        [connections]
        a = "{}"
        [policy.models]
        "llama3.2" = "a"
        [[shadow]]
        path = "{}"
        "#,
        sim.url(),
        hostile.display()
    )
}

#[tokio::test]
async fn a_shadow_chain_gets_the_default_policy_in_front_and_agrees() {
    let a = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(&shadowed(&a, ""), &[]);
    for _ in 0..3 {
        assert_eq!(chat(&proxy, "none").await.status, 200);
    }
    let shadow = shadow_once_decided(&proxy, 3).await;
    assert_eq!(
        shadow["plugins"],
        json!(["default-policy", "hostile_fixture"])
    );
    assert_eq!(shadow["agreed"], 3, "{shadow}");
    assert_eq!(shadow["differed"], 0, "{shadow}");
}

#[tokio::test]
async fn shadow_default_policy_false_leaves_it_out_and_the_log_says_so_in_words() {
    let a = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(&shadowed(&a, "shadow_default_policy = false"), &[]);
    assert_eq!(chat(&proxy, "none").await.status, 200);
    let shadow = shadow_once_decided(&proxy, 1).await;
    assert_eq!(shadow["plugins"], json!(["hostile_fixture"]));
    assert_eq!(shadow["differed"], 1, "no backend chosen: {shadow}");
    let line = logged(&proxy, "shadow policy decided otherwise").await;
    assert!(line.contains("live=forward llama3.2 to a "), "{line}");
    assert!(
        line.contains("shadow=forward llama3.2 to no backend"),
        "{line}"
    );
    assert!(!line.contains("Some(") && !line.contains("[\""), "{line}");
}

#[cfg(unix)]
#[tokio::test]
async fn shadow_counts_are_per_generation_and_decisions_read_as_words() {
    let a = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    let proxy = Proxy::with_config(
        &format!(
            r#"
            watch = false
            [connections]
            a = "{}"
            [policy.models]
            "llama3.2" = "a"
            [[shadow]]
            path = "builtin:default-policy"
            config = {{ models = {{ "llama3.2" = "a" }}, defaults = {{ num_ctx = 4096 }} }}
            [[shadow]]
            path = "{}"
            "#,
            a.url(),
            hostile.display()
        ),
        &[],
    );
    assert_eq!(chat(&proxy, "none").await.status, 200);
    assert_eq!(chat(&proxy, "reject").await.status, 200, "not applied");
    let shadow = shadow_once_decided(&proxy, 2).await;
    assert_eq!(shadow["differed"], 2, "{shadow}");
    logged(&proxy, "shadow=forward llama3.2 to a with num_ctx=4096").await;
    logged(&proxy, "shadow=answer 429").await;

    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&format!("{}/llamagate/status", proxy.admin_url()))
            .await
            .json();
        if status["generation"] == 2 {
            assert_eq!(
                status["shadow"]["decided"], 0,
                "counts start again: {status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no reload: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(chat(&proxy, "none").await.status, 200);
    let shadow = shadow_once_decided(&proxy, 1).await;
    assert_eq!(shadow["differed"], 1, "{shadow}");
}
