//! Pull, create, copy and delete through llamagate are known to routing at
//! once (`ollama pull x && ollama run x`), a reload re-probes, and an
//! unpinned create is placed by the policy.
//!
//! Every proxy here probes only every 60 s, so no probe can be what makes a
//! test pass; routing uses probed models (no `[policy.models]`).

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::common::*;

fn config(backends: &[(&str, &SimHandle)]) -> String {
    let mut toml = String::from("probe_interval = \"60s\"\nwatch = false\n[connections]\n");
    for (id, sim) in backends {
        toml.push_str(&format!("{id} = \"{}\"\n", sim.url()));
    }
    toml
}

async fn chat(proxy: &Proxy, model: &str) -> Reply {
    post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false}),
    )
    .await
}

/// Waits for the start-up probe: until `model` is routable.
async fn routable(proxy: &Proxy, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(proxy, model).await.status != 200 {
        assert!(Instant::now() < deadline, "{model} never became routable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `/api/chat` requests a backend got for `model`.
fn chats(sim: &SimHandle, model: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path == "/api/chat" && r.json()["model"] == model)
        .count()
}

#[tokio::test]
async fn a_pulled_model_is_routable_at_once_and_a_deleted_one_is_gone() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(&config(&[("a", &a), ("b", &b)]), &[]);
    routable(&proxy, "llama3.2").await;
    assert_eq!(chat(&proxy, "fresh").await.status, 404, "nobody has it yet");

    // Streamed, as `ollama pull` does: routable once the success line is in.
    let pull = post(
        &format!("{}/api/pull", proxy.url),
        &json!({"model": "fresh"}),
    )
    .await;
    assert_eq!(pull.lines().last().unwrap(), &json!({"status": "success"}));
    let r = chat(&proxy, "fresh").await;
    assert_eq!(r.status, 200, "routable at once: {}", r.text());
    let holder = if chats(&a, "fresh") == 1 { &a } else { &b };
    assert_eq!(chats(holder, "fresh"), 1);

    // Not streamed.
    let pull = post(
        &format!("{}/api/pull", proxy.url),
        &json!({"model": "fresh2", "stream": false}),
    )
    .await;
    assert_eq!(pull.status, 200, "{}", pull.text());
    assert_eq!(chat(&proxy, "fresh2").await.status, 200);

    // A copy: the destination, on the source's backend.
    let copy = post(
        &format!("{}/api/copy", proxy.url),
        &json!({"source": "fresh", "destination": "fresh-copy"}),
    )
    .await;
    assert_eq!(copy.status, 200, "{}", copy.text());
    assert_eq!(chat(&proxy, "fresh-copy").await.status, 200);
    assert_eq!(chats(holder, "fresh-copy"), 1);

    // A delete: 404 at once.
    let delete = send(
        Method::DELETE,
        &format!("{}/api/delete", proxy.url),
        &[],
        json!({"model": "fresh"}).to_string(),
    )
    .await;
    assert_eq!(delete.status, 200, "{}", delete.text());
    let r = chat(&proxy, "fresh").await;
    assert_eq!(r.status, 404, "gone at once: {}", r.text());
    assert_eq!(
        chat(&proxy, "fresh-copy").await.status,
        200,
        "the copy stays"
    );

    // A pull that fails teaches nothing.
    let failed = post(
        &format!("{}/api/pull", proxy.url),
        &json!({"model": "missing-one"}),
    )
    .await;
    assert!(failed.lines().last().unwrap()["error"].is_string());
    assert_eq!(chat(&proxy, "missing-one").await.status, 404);
}

#[tokio::test]
async fn an_unpinned_create_goes_where_its_base_model_is() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(&config(&[("a", &a), ("b", &b)]), &[]);
    routable(&proxy, "qwen2.5:14b").await;
    let create = |body: Value| {
        let url = format!("{}/api/create", proxy.url);
        async move { post(&url, &body).await }
    };
    // `a` comes first for a model nobody has; the base is on `b`.
    let r =
        create(json!({"model": "mario", "from": "qwen2.5:14b", "system": "You are Mario."})).await;
    assert_eq!(
        r.lines().last().unwrap(),
        &json!({"status": "success"}),
        "{}",
        r.text()
    );
    let created: Vec<_> = b
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/create")
        .collect();
    assert_eq!(created.len(), 1, "placed with its base model");
    assert_eq!(chat(&proxy, "mario").await.status, 200, "routable at once");
    assert_eq!(chats(&b, "mario"), 1);

    // Without `from` (or a base nobody has): placed as a pull of a new model.
    let r = create(json!({"model": "luigi", "from": "nobody-has-this"})).await;
    assert_eq!(
        r.lines().last().unwrap(),
        &json!({"status": "success"}),
        "{}",
        r.text()
    );
    assert_eq!(chat(&proxy, "luigi").await.status, 200);

    // Blobs and the create that uses them, pinned to the same backend.
    let blob = b"weights";
    let digest = {
        use sha2::Digest;
        format!("sha256:{:x}", sha2::Sha256::digest(blob))
    };
    let pin = [("x-llamagate-backend", "b")];
    let r = send(
        Method::POST,
        &format!("{}/api/blobs/{digest}", proxy.url),
        &pin,
        &blob[..],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post_with(
        &format!("{}/api/create", proxy.url),
        &pin,
        &json!({"model": "peach", "files": {"model.gguf": digest}, "stream": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(chat(&proxy, "peach").await.status, 200);
    assert_eq!(chats(&b, "peach"), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn a_reload_re_probes_the_backends() {
    let a = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(&config(&[("a", &a)]), &[]);
    routable(&proxy, "llama3.2").await;
    // Pulled on the backend directly, behind llamagate's back.
    let r = post(
        &format!("{}/api/pull", a.url()),
        &json!({"model": "behind", "stream": false}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(chat(&proxy, "behind").await.status, 404, "not probed yet");
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&format!("{}/llamagate/status", proxy.admin_url()))
            .await
            .json();
        let message = status["last_reload"]["message"].as_str().unwrap_or("");
        if message.starts_with("generation 2") {
            break;
        }
        assert!(Instant::now() < deadline, "no reload: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = chat(&proxy, "behind").await;
    assert_eq!(r.status, 200, "re-probed by the reload: {}", r.text());
}
