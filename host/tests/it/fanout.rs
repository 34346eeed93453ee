//! List endpoints ask every backend and merge.

use serde_json::json;

use crate::common::*;

fn names(v: &serde_json::Value, list: &str, key: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn tags_are_merged_without_duplicates_and_show_only_configured_models() {
    let a = backend(&["llama3.2", "all-minilm"]).await;
    let b = backend(&["LLAMA3.2:latest", "qwen2.5:14b", "mistral"]).await;
    let proxy = Proxy::start(&[
        "--proxy",
        &format!("llama3.2={}", a.url()),
        "--proxy",
        &format!("qwen2.5:14b={}", b.url()),
        "--alias",
        "gpt-4o=llama3.2",
        "--list-aliases",
    ]);
    let r = get(&format!("{}/api/tags", proxy.url)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tags = r.json();
    assert_eq!(
        names(&tags, "models", "name"),
        ["llama3.2:latest", "qwen2.5:14b", "gpt-4o:latest"]
    );
    let alias = &tags["models"][2];
    assert_eq!(alias["model"], "gpt-4o:latest");
    assert_eq!(
        alias["details"], tags["models"][0]["details"],
        "alias carries its target's details"
    );

    let r = get(&format!("{}/v1/models", proxy.url)).await;
    assert_eq!(r.json()["object"], "list");
    assert_eq!(
        names(&r.json(), "data", "id"),
        ["llama3.2:latest", "qwen2.5:14b", "gpt-4o:latest"]
    );
}

#[tokio::test]
async fn aliases_hidden_unless_asked() {
    let f = Fleet::start(&["--alias", "gpt-4o=llama3.2"]).await;
    let tags = get(&f.url("/api/tags")).await.json();
    assert_eq!(
        names(&tags, "models", "name"),
        ["llama3.2:latest", "all-minilm:latest", "qwen2.5:14b"]
    );
}

#[tokio::test]
async fn ps_lists_loaded_models_of_every_backend() {
    let f = Fleet::start(&[]).await;
    for model in ["llama3.2", "qwen2.5:14b"] {
        let r = post(
            &f.url("/api/generate"),
            &json!({"model": model, "prompt": ""}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let ps = get(&f.url("/api/ps")).await.json();
    let mut loaded = names(&ps, "models", "name");
    loaded.sort();
    assert_eq!(loaded, ["llama3.2:latest", "qwen2.5:14b"]);
}

#[tokio::test]
async fn version_is_the_lowest_compared_as_versions() {
    let new = sim::spawn(SimOptions {
        version: "0.12.3".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let old = sim::spawn(SimOptions {
        version: "0.9.6".into(),
        models: vec!["x".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&[
        "--proxy",
        &format!("llama3.2={}", new.url()),
        "--proxy",
        &format!("x={}", old.url()),
    ]);
    let r = get(&format!("{}/api/version", proxy.url)).await;
    assert_eq!(r.json(), json!({"version": "0.9.6"}));
    let head = send(
        http::Method::HEAD,
        &format!("{}/api/version", proxy.url),
        &[],
        "",
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn a_down_backend_is_skipped_and_all_down_is_an_error() {
    let live = backend(&["llama3.2"]).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&[
        "--proxy",
        &format!("llama3.2={}", live.url()),
        "--proxy",
        &format!("qwen2.5:14b=http://{dead}"),
    ]);
    let r = get(&format!("{}/api/tags", proxy.url)).await;
    assert_eq!(r.status, 200);
    assert_eq!(names(&r.json(), "models", "name"), ["llama3.2:latest"]);
    assert_eq!(
        get(&format!("{}/api/version", proxy.url)).await.json()["version"],
        "0.12.3"
    );

    live.shutdown();
    // Past the default `listing_cache` (1 s), which still holds the answer.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = get(&format!("{}/api/tags", proxy.url)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("no backend answered"));
}
