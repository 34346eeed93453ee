//! Requests that try to get around the policy: each is written the way an
//! attacker (or a careless client) would, and each must be read by llamagate
//! exactly as Ollama would read it — or refused before any backend sees it.

use std::io::{Read, Write};
use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::*;

/// One backend serving `llama3.2` and `llama3.3:70b`; only `llama3.2` is
/// routed (the operator's map), so a request that reaches the backend with
/// `llama3.3:70b` has walked around the policy.
async fn guarded() -> (SimHandle, Proxy) {
    let a = backend(&["llama3.2", "llama3.3:70b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            r#"
            max_options = 64
            [connections]
            a = "{}"
            [policy.models]
            "llama3.2" = "a"
            "#,
            a.url()
        ),
        &[],
    );
    (a, proxy)
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("{}{path}", proxy.url)
}

/// What a backend received apart from llamagate's own probes.
fn traffic(backend: &SimHandle) -> Vec<sim::Recorded> {
    backend
        .requests()
        .into_iter()
        .filter(|r| {
            let probe = r
                .header("user-agent")
                .is_some_and(|ua| ua.starts_with("llamagate-probe/"));
            let listing = r.method == "GET" && (r.path == "/api/tags" || r.path == "/api/ps");
            !probe && !listing
        })
        .collect()
}

/// Whether the backend still lists `model`.
async fn still_has(a: &SimHandle, model: &str) -> bool {
    let tags = get(&format!("{}/api/tags", a.url())).await.json();
    tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == model)
}

#[tokio::test]
async fn encoded_paths_are_classified_as_ollama_routes_them() {
    let (a, proxy) = guarded().await;
    // The request from the issue: `/api/%64elete` is `/api/delete` to Ollama.
    for path in ["/api/%64elete", "/api%2Fdelete", "/%61pi/delete"] {
        let r = send(
            Method::DELETE,
            &url(&proxy, path),
            &[],
            json!({"name":"llama3.3:70b"}).to_string(),
        )
        .await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(r.text().contains("llama3.3:70b"), "{}", r.text());
    }
    assert!(traffic(&a).is_empty(), "{:?}", traffic(&a));
    assert!(still_has(&a, "llama3.3:70b:latest").await || still_has(&a, "llama3.3:70b").await);
    // The encoded path of an allowed request reaches the backend canonically.
    let r = send(
        Method::POST,
        &url(&proxy, "/api/%63hat?x=%41"),
        &[],
        json!({"model":"llama3.2","messages":[],"stream":false}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = traffic(&a);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/chat?x=%41");
}

#[tokio::test]
async fn malformed_escapes_are_refused() {
    let (a, proxy) = guarded().await;
    for path in ["/api/%zzchat", "/api/chat%", "/api/chat%4"] {
        let r = post(&url(&proxy, path), &json!({"model":"llama3.3:70b"})).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert!(traffic(&a).is_empty());
}

#[tokio::test]
async fn trailing_slash_is_redirected_not_forwarded() {
    let (a, proxy) = guarded().await;
    let r = post(
        &url(&proxy, "/api/chat/?q=1"),
        &json!({"model":"llama3.3:70b","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/api/chat?q=1"));
    let r = send(
        Method::DELETE,
        &url(&proxy, "/api/%64elete/"),
        &[],
        json!({"name":"llama3.3:70b"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/api/delete"));
    let r = get(&url(&proxy, "/api/tags/")).await;
    assert_eq!(r.status, 301);
    assert!(traffic(&a).is_empty(), "{:?}", traffic(&a));
}

#[tokio::test]
async fn paths_ollama_does_not_clean_stay_unknown() {
    let (a, proxy) = guarded().await;
    // gin does not clean or case-fold: these are unknown paths to Ollama (404),
    // forwarded as written; the policy sees no model for them.
    for path in ["/API/CHAT", "//api/chat", "/api/./chat"] {
        let r = post(
            &url(&proxy, path),
            &json!({"model":"llama3.3:70b","messages":[],"stream":false}),
        )
        .await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    // The unknown-endpoint model peek routed `llama3.3:70b` nowhere: not
    // configured, so llamagate answered 404 without the backend.
    assert!(traffic(&a).is_empty(), "{:?}", traffic(&a));
}

#[tokio::test]
async fn case_variant_model_is_refused() {
    let (a, proxy) = guarded().await;
    // The request from the issue, and its cousins: Go's encoding/json matches
    // keys case-insensitively (and K, ſ, İ, ı fold to ASCII), the last one wins.
    let bodies = [
        r#"{"model":"llama3.2","Model":"llama3.3:70b","messages":[],"stream":false}"#,
        r#"{"model":"llama3.2","model":"llama3.3:70b","messages":[],"stream":false}"#,
        r#"{"MODEL":"llama3.3:70b","messages":[],"stream":false}"#,
        r#"{"model":"llama3.2","mod\u0065L":"llama3.3:70b","messages":[]}"#,
        r#"{"model":"llama3.2","messages":[],"stream":false,"ſtream":true}"#,
        r#"{"model":"llama3.2","messages":[],"keep_alive":"5m","\u212aeep_alive":-1}"#,
        r#"{"model":"llama3.2","messages":[],"keepAlive":-1}"#,
        r#"{"model":"llama3.2","messages":[],"options":{"num_ctx":2048},"Options":{"num_ctx":131072}}"#,
        r#"{"model":"llama3.2","messages":[],"opt\u0130ons":{"num_ctx":131072}}"#,
    ];
    for body in bodies {
        let r = send(Method::POST, &url(&proxy, "/api/chat"), &[], body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains("ambiguous"),
            "{}",
            r.text()
        );
    }
    // The same under /v1, in OpenAI's error shape.
    let r = send(
        Method::POST,
        &url(&proxy, "/v1/chat/completions"),
        &[],
        r#"{"model":"llama3.2","Model":"llama3.3:70b","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Unknown endpoints too: a newer Ollama route decodes bodies the same way.
    let r = send(
        Method::POST,
        &url(&proxy, "/api/experimental/new"),
        &[],
        r#"{"model":"llama3.2","Model":"llama3.3:70b"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(traffic(&a).is_empty(), "{:?}", traffic(&a));
}

#[tokio::test]
async fn legacy_name_only_where_ollama_reads_it() {
    let (a, proxy) = guarded().await;
    // ChatRequest has no `name`: Ollama answers "model is required".
    let r = post(
        &url(&proxy, "/api/chat"),
        &json!({"name":"llama3.2","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "model is required");
    // ShowRequest has it, and `model` wins over it.
    let r = post(&url(&proxy, "/api/show"), &json!({"name":"llama3.2"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &url(&proxy, "/api/show"),
        &json!({"name":"llama3.2","model":"llama3.3:70b"}),
    )
    .await;
    assert_eq!(r.status, 404, "model wins over name: {}", r.text());
    assert_eq!(traffic(&a).len(), 1);
}

#[tokio::test]
async fn too_many_options_is_a_400_and_costs_little() {
    let (a, proxy) = guarded().await;
    let options: serde_json::Map<_, _> =
        (0..200_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let body = json!({"model":"llama3.2","messages":[],"options":options});
    let r = post(&url(&proxy, "/api/chat"), &body).await;
    assert_eq!(r.status, 400, "{}", &r.text()[..r.text().len().min(300)]);
    assert!(r.text().contains("max_options"), "{}", r.text());
    // Within the limit, duplicates keep the last value, as a Go map does.
    let r = post(
        &url(&proxy, "/api/chat"),
        &json!({"model":"llama3.2","messages":[],"stream":false,"options":{"num_ctx":1024}}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(traffic(&a).len(), 1);
}

#[tokio::test]
async fn compressed_bodies_are_refused() {
    let (a, proxy) = guarded().await;
    // Ollama inflates zstd bodies on /v1/responses; llamagate cannot read them as it would.
    for path in ["/v1/responses", "/api/chat"] {
        let r = send(
            Method::POST,
            &url(&proxy, path),
            &[("content-encoding", "zstd")],
            vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0],
        )
        .await;
        assert_eq!(r.status, 415, "{path}: {}", r.text());
    }
    assert!(traffic(&a).is_empty());
}

#[tokio::test]
async fn the_pin_header_only_places_new_data() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["qwen2.5:14b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            a = "{}"
            b = "{}"
            [policy.models]
            "llama3.2" = "a"
            "qwen2.5:14b" = "b"
            "#,
            a.url(),
            b.url()
        ),
        &[],
    );
    let pin = [("x-llamagate-backend", "b")];
    // A chat cannot choose its server: the operator's map wins.
    let r = post_with(
        &url(&proxy, "/api/chat"),
        &pin,
        &json!({"model":"llama3.2","messages":[],"stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(traffic(&a).len(), 1);
    assert!(traffic(&b).is_empty());
    // The header is llamagate's: the backend never sees it.
    assert!(traffic(&a)[0]
        .headers
        .iter()
        .all(|(n, _)| n != "x-llamagate-backend"));
    // A pull may place a model on a chosen server.
    let r = post_with(
        &url(&proxy, "/api/pull"),
        &pin,
        &json!({"model":"llama3.2","stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(traffic(&b).len(), 1);
    assert_eq!(traffic(&a).len(), 1);
}

/// Sends raw bytes and returns what the server answered first.
fn raw_exchange(proxy: &Proxy, request: &str) -> String {
    let addr = proxy.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn an_oversized_declared_length_is_refused_before_the_body() {
    let (a, proxy) = guarded().await;
    let answer = raw_exchange(
        &proxy,
        "POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000000\r\n\
         expect: 100-continue\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("max_body_size"), "{answer}");
    assert!(traffic(&a).is_empty());
}

#[tokio::test]
async fn the_policy_view_is_bounded() {
    let a = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(
        &format!(
            "max_view_size = \"4KiB\"\n[connections]\na = \"{}\"\n[policy.models]\n\"llama3.2\" = \"a\"\n",
            a.url()
        ),
        &[],
    );
    let big = "x".repeat(8 << 10);
    let r = post_with(
        &url(&proxy, "/api/chat"),
        &[("x-big", big.as_str())],
        &json!({"model":"llama3.2","messages":[],"stream":false}),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("max_view_size"));
    let r = post(
        &url(&proxy, "/api/chat"),
        &json!({"model":"llama3.2","messages":[],"stream":false,"prompt":big}),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "the body itself is not the view: {}",
        r.text()
    );
}

fn form(model_parts: &[&str]) -> Vec<u8> {
    let mut out = String::from(
        "--B0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\nRIFF\r\n",
    );
    for p in model_parts {
        out.push_str("--B0\r\n");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("--B0--\r\n");
    out.into_bytes()
}

#[tokio::test]
async fn transcriptions_are_judged_on_their_form_model() {
    let a = backend(&["llama3.2", "llama3.3:70b"]).await;
    let proxy = Proxy::with_config(
        &format!(
            "[connections]\na = \"{}\"\n[policy]\naliases = {{ whisper = \"llama3.2\" }}\n[policy.models]\n\"llama3.2\" = \"a\"\n",
            a.url()
        ),
        &[],
    );
    let ct = [("content-type", "multipart/form-data; boundary=B0")];
    let target = url(&proxy, "/v1/audio/transcriptions");
    let plain = |m: &str| format!("Content-Disposition: form-data; name=\"model\"\r\n\r\n{m}");
    // Before, the form's model was invisible to the policy: any model ran.
    let r = send(Method::POST, &target, &ct, form(&[&plain("llama3.3:70b")])).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    // Ways Go's FormValue could read another model than the one judged.
    let rfc2231 = "Content-Disposition: form-data; name*=UTF-8''model\r\n\r\nllama3.3:70b";
    for (query, body) in [
        ("?model=llama3.3:70b", form(&[&plain("llama3.2")])),
        ("", form(&[rfc2231, &plain("llama3.2")])),
        ("", form(&[&plain("llama3.3:70b"), &plain("llama3.2")])),
    ] {
        let r = send(Method::POST, &format!("{target}{query}"), &ct, body).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text());
    }
    let r = send(Method::POST, &target, &ct, form(&[])).await;
    assert_eq!(r.status, 400, "no model: {}", r.text());
    assert!(traffic(&a).is_empty(), "{:?}", traffic(&a));
    // An allowed model goes through; an alias is rewritten inside the form.
    send(Method::POST, &target, &ct, form(&[&plain("whisper")])).await;
    let seen = traffic(&a);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let body = String::from_utf8_lossy(&seen[0].body).into_owned();
    assert!(
        body.contains("name=\"model\"\r\n\r\nllama3.2\r\n--B0"),
        "{body}"
    );
    assert!(body.contains("RIFF"));
}
