//! Requests reach the right backend, edited only as the policy says.

use http::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn each_model_reaches_only_its_backend() {
    let f = Fleet::start(&[]).await;
    let r = post(
        &f.url("/api/chat"),
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama3.2");
    let r = post(
        &f.url("/api/generate"),
        &json!({"model":"QWEN2.5:14b","prompt":"hi","stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let a: Vec<_> =
        f.a.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
    let b: Vec<_> =
        f.b.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
    assert_eq!(a.len(), 1, "a got {a:?}");
    assert_eq!(a[0].path, "/api/chat");
    assert_eq!(b.len(), 1, "b got {b:?}");
    assert_eq!(b[0].path, "/api/generate");
}

#[tokio::test]
async fn alias_is_rewritten_and_unknown_fields_survive_byte_for_byte() {
    let f = Fleet::start(&["--alias", "gpt-4o=llama3.2"]).await;
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi","images":["iVBORw0KGgo="]}],"think":"high","format":{"type":"object","properties":{"a":{"type":"integer"}}},"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"future_field":[1,2.50,{"x":null}],"stream":false}"#;
    let r = send(Method::POST, &f.url("/api/chat"), &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen =
        f.a.requests()
            .into_iter()
            .find(|r| r.path == "/api/chat")
            .unwrap();
    let expected = body.replacen("\"gpt-4o\"", "\"llama3.2\"", 1);
    assert_eq!(String::from_utf8_lossy(&seen.body), expected);
}

#[tokio::test]
async fn untouched_bodies_are_forwarded_unchanged() {
    let f = Fleet::start(&[]).await;
    let body = "{\"model\" : \"llama3.2\",\n \"prompt\":\"hi\", \"stream\":false, \"options\":{\"temperature\":0.70}}  ";
    let r = send(Method::POST, &f.url("/api/generate"), &[], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen =
        f.a.requests()
            .into_iter()
            .find(|r| r.path == "/api/generate")
            .unwrap();
    assert_eq!(seen.body, body.as_bytes());
}

#[tokio::test]
async fn num_ctx_and_keep_alive_defaults_and_enforcement() {
    let a = backend(&["llama3.2", "qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            gpu = "{}"
            [policy]
            models = {{ "llama3.2" = "gpu", "qwen2.5:14b" = "gpu" }}
            defaults = {{ num_ctx = 8192, keep_alive = "10m" }}
            max_num_ctx = 16384
            [policy.overrides."qwen2.5:14b"]
            enforce = {{ num_ctx = 4096, keep_alive = -1 }}
            "#,
            a.url()
        ),
        &[],
    );
    let url = format!("{}/api/generate", proxy.url);
    let cases = [
        (
            json!({"model":"llama3.2","prompt":"x","stream":false}),
            json!(8192),
            json!("10m"),
        ),
        (
            json!({"model":"llama3.2","prompt":"x","stream":false,"options":{"num_ctx":2048,"seed":7},"keep_alive":"1m"}),
            json!(2048),
            json!("1m"),
        ),
        (
            json!({"model":"llama3.2","prompt":"x","stream":false,"options":{"num_ctx":65536}}),
            json!(16384),
            json!("10m"),
        ),
        (
            json!({"model":"qwen2.5:14b","prompt":"x","stream":false,"options":{"num_ctx":32768},"keep_alive":"5m"}),
            json!(4096),
            json!(-1),
        ),
    ];
    for (body, num_ctx, keep_alive) in cases {
        a.take_requests();
        let r = post(&url, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = a
            .take_requests()
            .into_iter()
            .find(|r| r.path == "/api/generate")
            .unwrap()
            .json();
        assert_eq!(seen["options"]["num_ctx"], num_ctx, "for {body}");
        assert_eq!(seen["keep_alive"], keep_alive, "for {body}");
        if body["options"]["seed"] == 7 {
            assert_eq!(seen["options"]["seed"], 7, "other options kept");
        }
    }
}

#[tokio::test]
async fn legacy_name_copy_delete_and_openai_model_route_by_model() {
    let f = Fleet::start(&["--alias", "gpt-4o=qwen2.5:14b"]).await;
    let r = post(&f.url("/api/show"), &json!({"name":"qwen2.5:14b"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &f.url("/api/copy"),
        &json!({"source":"llama3.2","destination":"mine"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        Method::DELETE,
        &f.url("/api/delete"),
        &[],
        json!({"model":"qwen2.5:14b"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&f.url("/v1/models/gpt-4o")).await;
    assert_eq!(r.status, 404, "deleted above: {}", r.text());
    let paths = |s: &SimHandle| {
        s.requests()
            .into_iter()
            .filter(|r| {
                !r.header("user-agent")
                    .is_some_and(|ua| ua.starts_with("llamagate-probe/"))
            })
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&f.a), ["POST /api/copy"]);
    assert_eq!(
        paths(&f.b),
        [
            "POST /api/show",
            "DELETE /api/delete",
            "GET /v1/models/qwen2.5:14b"
        ]
    );
    let delete =
        f.b.requests()
            .into_iter()
            .find(|r| r.method == "DELETE")
            .unwrap();
    assert_eq!(
        delete.json()["model"],
        "qwen2.5:14b",
        "DELETE keeps its body"
    );
}

#[tokio::test]
async fn newer_endpoints_route_by_model() {
    let f = Fleet::start(&[]).await;
    for path in ["/v1/responses", "/v1/messages"] {
        let r = post(&f.url(path), &json!({"model":"qwen2.5:14b","input":"hi","max_tokens":5,"messages":[{"role":"user","content":"hi"}]})).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(
        f.b.requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1/"))
            .count(),
        2
    );
    assert!(f.a.requests().iter().all(|r| !r.path.starts_with("/v1/")));
}

#[tokio::test]
async fn blobs_stream_to_the_pinned_backend() {
    let f = Fleet::start(&[]).await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let url = f.url(&format!("/api/blobs/{digest}"));
    let pin = [("x-llamagate-backend", "127.0.0.1:0")];
    let _ = pin;
    let b_id = f.b.url().trim_start_matches("http://").to_string();
    let header = [("x-llamagate-backend", b_id.as_str())];
    let r = send(Method::HEAD, &url, &header, "").await;
    assert_eq!(r.status, 404);
    let blob = vec![7u8; 3 << 20];
    let r = send(Method::POST, &url, &header, blob).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send(Method::HEAD, &url, &header, "").await;
    assert_eq!(r.status, 200);
    let up =
        f.b.requests()
            .into_iter()
            .find(|r| r.method == "POST")
            .unwrap();
    assert_eq!(up.body.len(), 3 << 20);
    assert!(f
        .a
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/api/blobs")));
}

#[tokio::test]
async fn replicas_fail_over_when_one_is_unreachable() {
    let live = backend(&["llama3.2"]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            dead = "http://{dead}"
            live = "{}"
            [policy.models]
            "llama3.2" = ["dead", "live"]
            "#,
            live.url()
        ),
        &[],
    );
    for _ in 0..3 {
        let r = post(
            &format!("{}/api/generate", proxy.url),
            &json!({"model":"llama3.2","prompt":"x","stream":false}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
