//! Per-model rules win over global ones (the README's `[policy]` table),
//! through the real proxy.

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn a_per_model_default_wins_over_a_global_enforce() {
    let a = backend(&["llama3.2", "qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            a = "{}"
            [policy]
            models = {{ "llama3.2" = "a", "qwen2.5:14b" = "a" }}
            enforce = {{ keep_alive = "5m", num_ctx = 2048 }}
            max_num_ctx = 4096
            [policy.overrides."llama3.2"]
            defaults = {{ keep_alive = -1, num_ctx = 16384 }}
            "#,
            a.url()
        ),
        &[],
    );
    let a = &a;
    let sent = |model: &str, extra: Value| {
        let mut body = json!({"model": model, "messages": [], "stream": false});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let url = format!("{}/api/chat", proxy.url);
        async move {
            let r = post(&url, &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let seen = a
                .requests()
                .into_iter()
                .rev()
                .find(|r| r.path == "/api/chat")
                .unwrap();
            let seen = seen.json();
            (
                seen["keep_alive"].clone(),
                seen["options"]["num_ctx"].clone(),
            )
        }
    };
    // The model's defaults: set when missing, above the global cap...
    assert_eq!(sent("llama3.2", json!({})).await, (json!(-1), json!(16384)));
    // ... and the client's own values kept (its num_ctx under the global cap).
    assert_eq!(
        sent(
            "llama3.2",
            json!({"keep_alive": "1m", "options": {"num_ctx": 8192}})
        )
        .await,
        (json!("1m"), json!(4096))
    );
    // Another model: the global rules.
    assert_eq!(
        sent(
            "qwen2.5:14b",
            json!({"keep_alive": "1m", "options": {"num_ctx": 8192}})
        )
        .await,
        (json!("5m"), json!(2048))
    );
}
