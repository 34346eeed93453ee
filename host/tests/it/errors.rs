//! Every failure gets a clear error in the shape of the API it came from.

use http::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn unknown_model_is_a_404_in_ollamas_words() {
    let f = Fleet::start(&[]).await;
    let r = post(&f.url("/api/chat"), &json!({"model":"nope","messages":[]})).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"error":"model \"nope\" not found, try pulling it first"}"#
    );
    let r = post(
        &f.url("/api/generate"),
        &json!({"model":"nope","prompt":"x"}),
    )
    .await;
    assert_eq!(r.json(), json!({"error":"model 'nope' not found"}));
    // Models a backend has but the operator did not configure are not reachable.
    let r = post(
        &f.url("/api/chat"),
        &json!({"model":"mistral","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn openai_errors_use_openais_envelope() {
    let f = Fleet::start(&[]).await;
    let r = post(
        &f.url("/v1/chat/completions"),
        &json!({"model":"nope","messages":[{"role":"user","content":"x"}]}),
    )
    .await;
    assert_eq!(r.status, 404);
    let e = &r.json()["error"];
    assert_eq!(e["type"], "not_found_error");
    assert!(e["message"].as_str().unwrap().contains("nope"));
    let r = send(
        Method::POST,
        &f.url("/v1/chat/completions"),
        &[],
        "{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn bad_bodies_are_400s() {
    let f = Fleet::start(&[]).await;
    let cases: [(&str, &str, u16, &str); 5] = [
        ("/api/chat", "", 400, "missing request body"),
        ("/api/chat", "{\"model\":", 400, "invalid JSON"),
        (
            "/api/chat",
            "{\"model\": 7}",
            400,
            "cannot unmarshal number into field \"model\"",
        ),
        ("/api/chat", "{\"messages\":[]}", 400, "model is required"),
        (
            "/api/generate",
            "{\"prompt\":\"x\"}",
            404,
            "model '' not found",
        ),
    ];
    for (path, body, status, message) in cases {
        let r = send(Method::POST, &f.url(path), &[], body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains(message),
            "{body}: {}",
            r.text()
        );
    }
    assert!(
        f.a.requests().iter().all(|r| r.method != "POST"),
        "nothing bad was forwarded"
    );
}

#[tokio::test]
async fn wrong_method_and_oversized_body() {
    let a = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(
        &format!("max_body_size = \"1KiB\"\n[connections]\na = \"{}\"\n[policy.models]\n\"llama3.2\" = \"a\"\n", a.url()),
        &[],
    );
    let r = get(&format!("{}/api/chat", proxy.url)).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (405, "405 method not allowed")
    );
    let big = json!({"model":"llama3.2","prompt":"x".repeat(4096)});
    let r = post(&format!("{}/api/generate", proxy.url), &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_body_size"));
}

#[tokio::test]
async fn unreachable_backend_is_a_502_naming_it() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&[
        "--connection",
        &format!("gpu-09=http://{dead}"),
        "--proxy",
        "llama3.2=gpu-09",
    ]);
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"llama3.2","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let message = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("gpu-09") && message.contains("unreachable"),
        "{message}"
    );
}

#[tokio::test]
async fn upstream_error_status_and_body_are_passed_on() {
    let f = Fleet::start(&[]).await;
    let r = post(
        &f.url("/api/generate"),
        &json!({"model":"llama3.2","prompt":"[[status500]]"}),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({"error":"simulated failure"}));
    let r = post(
        &f.url("/api/chat"),
        &json!({"model":"all-minilm","messages":[{"role":"user","content":"x"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "embedding model cannot chat: {}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("does not support chat"));
}

#[tokio::test]
async fn root_answers_locally() {
    let f = Fleet::start(&[]).await;
    let r = get(&f.url("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Ollama is running"));
    let r = send(Method::HEAD, &f.url("/"), &[], "").await;
    assert_eq!(r.status, 200);
}
