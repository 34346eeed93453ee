use super::*;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Answer {
    status: u16,
    ctype: String,
    body: Result<Bytes, String>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("complete body")).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.text()).expect("JSON body")
    }
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(sim: &SimHandle, method: &str, path: &str, body: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", sim.url()))
        .header("x-test", "yes")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client().request(req).await.expect("response head");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Answer {
        status,
        ctype,
        body,
    }
}

async fn sim() -> SimHandle {
    spawn(SimOptions::default()).await.unwrap()
}

#[tokio::test]
async fn tags_shape() {
    let sim = spawn(SimOptions {
        models: vec![
            "llama3.2".into(),
            "qwen2.5:14b".into(),
            "LLAMA3.2:latest".into(),
        ],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let a = call(&sim, "GET", "/api/tags", "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.ctype, "application/json; charset=utf-8");
    assert!(a.text().starts_with(r#"{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2025-05-04T17:37:44.706015396-07:00","size":"#), "{}", a.text());
    let v = a.json();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[1]["name"], "qwen2.5:14b");
    let digest = models[0]["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(models[0]["details"]["format"], "gguf");
    assert_eq!(
        models[0]["details"]["families"][0],
        models[0]["details"]["family"]
    );
    assert_eq!(models[1]["details"]["parameter_size"], "14B");

    let empty = spawn(SimOptions {
        models: vec![],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(
        call(&empty, "GET", "/api/tags", "").await.text(),
        r#"{"models":[]}"#
    );
    let v1 = call(&empty, "GET", "/v1/models", "").await;
    assert_eq!(v1.text(), r#"{"object":"list","data":null}"#);
    assert_eq!(v1.ctype, "application/json");
}

#[tokio::test]
async fn streamed_chat_is_ndjson_ending_in_done() {
    let sim = sim().await;
    let a = call(
        &sim,
        "POST",
        "/api/chat",
        r#"{"model":"LLAMA3.2","messages":[{"role":"user","content":"hi there"}]}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.ctype, "application/x-ndjson");
    assert!(a.text().ends_with("}\n"));
    let lines = a.lines();
    assert_eq!(lines.len(), 6);
    let text: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected_text("LLAMA3.2", 5));
    assert_eq!(text, "Hello from LLAMA3.2. This");
    assert!(lines.iter().all(|l| l["model"] == "LLAMA3.2"));
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["done_reason"], "stop");
    assert_eq!(done["eval_count"], 5);
    assert!(done["total_duration"].is_u64() && done.get("context").is_none());
    let created = lines[0]["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() >= 20, "{created}");
    // The model is now loaded.
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    assert_eq!(ps["models"][0]["name"], "llama3.2:latest");
    assert_eq!(ps["models"][0]["context_length"], 4096);
}

#[tokio::test]
async fn non_streamed_generate_is_one_json() {
    let sim = sim().await;
    let a = call(
        &sim,
        "POST",
        "/api/generate",
        r#"{"model":"llama3.2","prompt":"why","stream":false}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.ctype, "application/json; charset=utf-8");
    let v = a.json();
    assert_eq!(v["response"], "Hello from llama3.2. This");
    assert_eq!(v["done"], true);
    assert!(v["context"].is_array());
    assert!(!a.text().contains('\n'));
    let text = a.text();
    let order: Vec<usize> = [
        "\"model\"",
        "\"created_at\"",
        "\"response\"",
        "\"done\"",
        "\"done_reason\"",
        "\"context\"",
        "\"total_duration\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    // Load and unload requests.
    let load = call(&sim, "POST", "/api/generate", r#"{"model":"llama3.2"}"#).await;
    assert_eq!(load.ctype, "application/json; charset=utf-8");
    assert_eq!(load.json()["done_reason"], "load");
    let unload = call(
        &sim,
        "POST",
        "/api/chat",
        r#"{"model":"llama3.2","keep_alive":0}"#,
    )
    .await
    .json();
    assert_eq!(unload["done_reason"], "unload");
    assert_eq!(
        unload["message"],
        serde_json::json!({"role":"assistant","content":""})
    );
    assert_eq!(
        call(&sim, "GET", "/api/ps", "").await.text(),
        r#"{"models":[]}"#
    );
}

#[tokio::test]
async fn errors_are_worded_like_ollama() {
    let sim = sim().await;
    let cases = [
        (
            "/api/generate",
            r#"{"model":"nope","prompt":"x"}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/generate",
            r#"{"prompt":"x"}"#,
            404,
            r#"{"error":"model '' not found"}"#,
        ),
        (
            "/api/chat",
            r#"{"model":"nope"}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/chat",
            r#"{"messages":[]}"#,
            400,
            r#"{"error":"model is required"}"#,
        ),
        (
            "/api/show",
            r#"{"model":"nope"}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/show",
            r#"{}"#,
            400,
            r#"{"error":"model is required"}"#,
        ),
        (
            "/api/embed",
            r#"{"model":"nope","input":"x"}"#,
            404,
            r#"{"error":"model \"nope\" not found, try pulling it first"}"#,
        ),
        (
            "/api/generate",
            "  \n",
            400,
            r#"{"error":"missing request body"}"#,
        ),
        (
            "/api/generate",
            "xyz",
            400,
            r#"{"error":"invalid character 'x' looking for beginning of value"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"llama3.2","#,
            400,
            r#"{"error":"unexpected EOF"}"#,
        ),
        (
            "/api/chat",
            r#"{"model":"llama3.2",}"#,
            400,
            r#"{"error":"invalid character '}' looking for beginning of object key string"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":5}"#,
            400,
            r#"{"error":"json: cannot unmarshal number into Go struct field GenerateRequest.model of type string"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"llama3.2","prompt":"x","options":{"num_ctx":"big"}}"#,
            400,
            r#"{"error":"option \"num_ctx\" must be of type integer"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"llama3.2","keep_alive":true}"#,
            400,
            r#"{"error":"Unsupported type: 'bool'"}"#,
        ),
        (
            "/api/chat",
            r#"{"model":"llama3.2","keep_alive":"300"}"#,
            400,
            r#"{"error":"time: missing unit in duration \"300\""}"#,
        ),
        (
            "/api/copy",
            r#"{"source":"nope","destination":"x"}"#,
            404,
            r#"{"error":"model \"nope\" not found"}"#,
        ),
        (
            "/api/delete",
            r#"{"model":"nope"}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"llama3.2","prompt":"[[status500]]"}"#,
            500,
            r#"{"error":"simulated failure"}"#,
        ),
    ];
    for (path, body, status, want) in cases {
        let method = if path == "/api/delete" {
            "DELETE"
        } else {
            "POST"
        };
        let a = call(&sim, method, path, body).await;
        assert_eq!(
            (a.status, a.text().as_str()),
            (status, want),
            "{path} {body}"
        );
        assert_eq!(a.ctype, "application/json; charset=utf-8");
    }
    let old = spawn(SimOptions {
        version: "0.11.10".into(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let a = call(&old, "POST", "/api/chat", r#"{"model":"nope"}"#).await;
    assert_eq!(
        a.text(),
        r#"{"error":"model \"nope\" not found, try pulling it first"}"#
    );

    let a = call(&sim, "GET", "/api/nothing", "").await;
    assert_eq!(
        (a.status, a.ctype.as_str(), a.text().as_str()),
        (404, "text/plain", "404 page not found")
    );
    let a = call(&sim, "GET", "/api/chat", "").await;
    assert_eq!(
        (a.status, a.ctype.as_str(), a.text().as_str()),
        (405, "text/plain", "405 method not allowed")
    );
    let a = call(&sim, "GET", "/v1/models/user/model", "").await;
    assert_eq!(a.status, 404);
    let a = call(&sim, "GET", "/v1/models/nope", "").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.ctype, "application/json");
    assert_eq!(
        a.text(),
        r#"{"error":{"message":"model 'nope' not found","type":"not_found_error","param":null,"code":null}}"#
    );
    let a = call(&sim, "POST", "/v1/chat/completions", "").await;
    assert_eq!(
        a.text(),
        r#"{"error":{"message":"EOF","type":"invalid_request_error","param":null,"code":null}}"#
    );
    let a = call(
        &sim,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"llama3.2","messages":[]}"#,
    )
    .await;
    assert_eq!(a.json()["error"]["message"], "[] is too short - 'messages'");
}

#[tokio::test]
async fn error_trigger_ends_with_error_line() {
    let sim = sim().await;
    let a = call(
        &sim,
        "POST",
        "/api/generate",
        r#"{"model":"llama3.2","prompt":"go [[error]]"}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    let text = a.text();
    assert!(
        text.ends_with("{\"error\":\"simulated failure\"}\n"),
        "{text}"
    );
    assert_eq!(a.lines().len(), 3);
    assert!(!text.contains("\"done\":true"));
}

#[tokio::test]
async fn sse_ends_with_done_marker() {
    let sim = sim().await;
    let body = r#"{"model":"llama3.2","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let a = call(&sim, "POST", "/v1/chat/completions", body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.ctype, "text/event-stream");
    let text = a.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")));
    assert_eq!(events.len(), 5 + 3);
    let chunks: Vec<Value> = events[..7]
        .iter()
        .map(|e| serde_json::from_str(&e[6..]).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
    let content: String = chunks[..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, expected_text("llama3.2", 5));
    assert_eq!(chunks[5]["choices"][0]["delta"], serde_json::json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], serde_json::json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 5);
    // Non-streamed.
    let a = call(
        &sim,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        expected_text("llama3.2", 5)
    );
    let a = call(
        &sim,
        "POST",
        "/v1/completions",
        r#"{"model":"llama3.2","prompt":"hi","stream":true}"#,
    )
    .await;
    assert!(a.text().ends_with("data: [DONE]\n\n"));
}

/// `(event name, data)` of every SSE event in `text`.
fn named_events(text: &str) -> Vec<(String, Value)> {
    text.split_terminator("\n\n")
        .map(|e| {
            let (event, data) = e.split_once('\n').expect("event and data lines");
            let name = event.strip_prefix("event: ").expect("event line");
            let data = data.strip_prefix("data: ").expect("data line");
            (
                name.to_string(),
                serde_json::from_str(data).expect("JSON data"),
            )
        })
        .collect()
}

#[tokio::test]
async fn messages_stream_in_anthropic_events() {
    let sim = sim().await;
    let body = r#"{"model":"llama3.2","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi there"}]}"#;
    let a = call(&sim, "POST", "/v1/messages", body).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.ctype, "text/event-stream");
    let events = named_events(&a.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = vec!["message_start", "content_block_start"];
    want.extend(["content_block_delta"; 5]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "each event names its own type");
    }
    let start = &events[0].1["message"];
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "llama3.2");
    assert_eq!(start["content"], serde_json::json!([]));
    assert_eq!(start["usage"]["input_tokens"], 2);
    assert_eq!(
        events[1].1["content_block"],
        serde_json::json!({"type":"text","text":""})
    );
    let text: String = events[2..7]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, expected_text("llama3.2", 5));
    let delta = &events[8].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 5);

    // A token limit stops the stream early, and says so.
    let body = r#"{"model":"llama3.2","max_tokens":2,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let events = named_events(&call(&sim, "POST", "/v1/messages", body).await.text());
    assert_eq!(events.len(), 2 + 2 + 3);
    assert_eq!(events[5].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(events[5].1["usage"]["output_tokens"], 2);

    // Without `stream`, one JSON message, as before.
    let body =
        r#"{"model":"llama3.2","max_tokens":1024,"messages":[{"role":"user","content":"hi"}]}"#;
    let a = call(&sim, "POST", "/v1/messages", body).await;
    assert_eq!(a.ctype, "application/json");
    let v = a.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], expected_text("llama3.2", 5));
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn abort_truncates_the_stream() {
    let sim = spawn(SimOptions {
        chunk_delay: Duration::from_millis(5),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    for (path, body) in [
        (
            "/api/chat",
            r#"{"model":"llama3.2","messages":[{"role":"user","content":"[[abort]]"}]}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"llama3.2","prompt":"[[abort]]"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"[[abort]]"}]}"#,
        ),
    ] {
        let a = call(&sim, "POST", path, body).await;
        assert_eq!(a.status, 200);
        assert!(a.body.is_err(), "{path}: body completed");
    }
    // Raw: two lines arrive, then the connection closes without the last chunk.
    let mut tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let body = r#"{"model":"llama3.2","prompt":"[[abort]]"}"#;
    let req = format!(
        "POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("transfer-encoding: chunked"), "{raw}");
    assert_eq!(raw.matches("\"done\":false").count(), 2);
    assert!(!raw.ends_with("0\r\n\r\n"), "{raw}");
    // Non-streamed: no response at all.
    let req = Request::post(format!("{}/api/generate", sim.url()))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"llama3.2","prompt":"[[abort]]","stream":false}"#,
        )))
        .unwrap();
    assert!(client().request(req).await.is_err());
}

#[tokio::test]
async fn requests_are_recorded() {
    let sim = sim().await;
    call(
        &sim,
        "POST",
        "/api/generate?x=1",
        r#"{"model":"llama3.2","prompt":"hi","stream":false}"#,
    )
    .await;
    call(&sim, "GET", "/api/version", "").await;
    let recs = sim.requests();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].method, "POST");
    assert_eq!(recs[0].path, "/api/generate?x=1");
    assert_eq!(recs[0].header("X-Test"), Some("yes"));
    assert_eq!(recs[0].json()["prompt"], "hi");
    assert_eq!(
        recs[0].body,
        Bytes::from_static(br#"{"model":"llama3.2","prompt":"hi","stream":false}"#)
    );
    assert_eq!(recs[1].json(), Value::Null);
    assert_eq!(sim.take_requests().len(), 2);
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn head_root_version_and_host_check() {
    let sim = sim().await;
    let a = call(&sim, "GET", "/", "").await;
    assert_eq!(
        (a.ctype.as_str(), a.text().as_str()),
        ("text/plain; charset=utf-8", "Ollama is running")
    );
    assert_eq!(
        call(&sim, "GET", "/api/version", "").await.text(),
        r#"{"version":"0.12.3"}"#
    );
    let mut tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    tcp.write_all(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("content-length: 17"),
        "{raw}"
    );
    assert!(rest.starts_with("HTTP/1.1 403"), "{raw}");
}

#[tokio::test]
async fn model_management() {
    let sim = spawn(SimOptions {
        models: vec![],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let a = call(&sim, "POST", "/api/pull", r#"{"model":"qwen2.5:14b"}"#).await;
    assert_eq!(a.ctype, "application/x-ndjson");
    let lines = a.lines();
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert_eq!(
        lines.last().unwrap(),
        &serde_json::json!({"status":"success"})
    );
    let tags = call(&sim, "GET", "/api/tags", "").await.json();
    assert_eq!(tags["models"][0]["name"], "qwen2.5:14b");
    let a = call(
        &sim,
        "POST",
        "/api/pull",
        r#"{"model":"missing-model","stream":false}"#,
    )
    .await;
    assert_eq!(a.status, 500);
    let a = call(
        &sim,
        "POST",
        "/api/copy",
        r#"{"source":"qwen2.5:14b","destination":"mine"}"#,
    )
    .await;
    assert_eq!((a.status, a.text().as_str()), (200, ""));
    let a = call(&sim, "DELETE", "/api/delete", r#"{"model":"QWEN2.5:14b"}"#).await;
    assert_eq!((a.status, a.text().as_str()), (200, ""));
    let names: Vec<Value> = call(&sim, "GET", "/v1/models", "").await.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("mine:latest")]);
    let digest = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        call(&sim, "HEAD", &format!("/api/blobs/{digest}"), "")
            .await
            .status,
        404
    );
    assert_eq!(
        call(&sim, "POST", &format!("/api/blobs/{digest}"), "data")
            .await
            .status,
        201
    );
    assert_eq!(
        call(&sim, "HEAD", &format!("/api/blobs/{digest}"), "")
            .await
            .status,
        200
    );
    let a = call(
        &sim,
        "POST",
        "/api/create",
        r#"{"model":"new","stream":false}"#,
    )
    .await;
    assert_eq!(a.text(), r#"{"status":"success"}"#);
}

#[tokio::test]
async fn embeddings() {
    let sim = spawn(SimOptions {
        models: vec!["all-minilm".into()],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let v = call(
        &sim,
        "POST",
        "/api/embed",
        r#"{"model":"all-minilm","input":["a","b"]}"#,
    )
    .await
    .json();
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    let norm: f64 = e[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-4);
    let floats = call(
        &sim,
        "POST",
        "/v1/embeddings",
        r#"{"model":"all-minilm","input":"a"}"#,
    )
    .await
    .json();
    // 0.12.3 ignores encoding_format; 0.12.7 honours it.
    let body = r#"{"model":"all-minilm","input":"a","encoding_format":"BASE64"}"#;
    assert_eq!(
        call(&sim, "POST", "/v1/embeddings", body).await.json(),
        floats
    );
    let new = spawn(SimOptions {
        models: vec!["all-minilm".into()],
        version: "0.12.7".into(),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let b64 = call(&new, "POST", "/v1/embeddings", body).await.json();
    let encoded = b64["data"][0]["embedding"].as_str().unwrap();
    let want: Vec<u8> = floats["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes())
        .collect();
    assert_eq!(encoded, BASE64.encode(&want));
    let v = call(
        &sim,
        "POST",
        "/api/embeddings",
        r#"{"model":"all-minilm","prompt":"a"}"#,
    )
    .await
    .json();
    assert_eq!(v["embedding"].as_array().unwrap().len(), EMBED_DIM);
    let a = call(
        &sim,
        "POST",
        "/api/chat",
        r#"{"model":"all-minilm","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(
        a.text(),
        r#"{"error":"\"all-minilm\" does not support chat"}"#
    );
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sim = sim().await;
    let addr = sim.addr();
    assert_eq!(call(&sim, "GET", "/", "").await.status, 200);
    sim.shutdown();
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(refused);
}

/// Sends `body` to `path` and waits at most `wait` for the response head.
/// `Ok(None)`: no head in time; `Err`: the connection failed without one.
async fn head_within(
    sim: &SimHandle,
    path: &str,
    body: &str,
    wait: Duration,
) -> Result<Option<hyper::Response<Incoming>>, String> {
    let req = Request::post(format!("{}{path}", sim.url()))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    match tokio::time::timeout(wait, client().request(req)).await {
        Err(_) => Ok(None),
        Ok(Ok(resp)) => Ok(Some(resp)),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// Waits up to 5 s for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const CHAT: &str = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_ONCE: &str =
    r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}"#;

/// Every inference endpoint, with a body it accepts.
const INFERENCE: &[(&str, &str)] = &[
    ("/api/chat", CHAT),
    ("/api/generate", r#"{"model":"llama3.2","prompt":"hi"}"#),
    ("/api/embed", r#"{"model":"llama3.2","input":"hi"}"#),
    ("/api/embeddings", r#"{"model":"llama3.2","prompt":"hi"}"#),
    (
        "/v1/chat/completions",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#,
    ),
    ("/v1/completions", r#"{"model":"llama3.2","prompt":"hi"}"#),
    ("/v1/embeddings", r#"{"model":"llama3.2","input":"hi"}"#),
    ("/v1/responses", r#"{"model":"llama3.2","input":"hi"}"#),
    (
        "/v1/messages",
        r#"{"model":"llama3.2","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
    ),
];

/// The probes answer normally; `Down` is the only fault that touches them.
async fn assert_probes_answer(sim: &SimHandle) {
    for path in ["/api/tags", "/api/ps", "/api/version", "/", "/v1/models"] {
        let a = call(sim, "GET", path, "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    let a = call(sim, "POST", "/api/show", r#"{"model":"llama3.2"}"#).await;
    assert_eq!(a.status, 200, "{}", a.text());
}

#[tokio::test]
async fn busy_answers_inference_with_ollamas_503_and_probes_still_pass() {
    let sim = sim().await;
    assert_eq!(sim.fault(), Fault::None);
    sim.set_fault(Fault::Busy);
    assert_eq!(sim.fault(), Fault::Busy);
    for (path, body) in INFERENCE {
        let a = call(&sim, "POST", path, body).await;
        assert_eq!(a.status, 503, "{path}");
        let v = a.json();
        match *path {
            "/v1/messages" => {
                assert_eq!(v["type"], "error");
                assert_eq!(v["error"]["type"], "overloaded_error");
                assert_eq!(v["error"]["message"], BUSY_MESSAGE);
            }
            p if p.starts_with("/v1/") => {
                assert_eq!(a.ctype, "application/json", "{path}");
                assert_eq!(v["error"]["message"], BUSY_MESSAGE, "{path}");
                assert_eq!(v["error"]["type"], "api_error", "{path}");
            }
            _ => {
                assert_eq!(a.ctype, "application/json; charset=utf-8", "{path}");
                assert_eq!(
                    a.text(),
                    r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#,
                    "{path}"
                );
            }
        }
    }
    assert_eq!(sim.inference_count(), INFERENCE.len() as u64);
    assert_probes_answer(&sim).await;
    // Management endpoints are not inference: a busy queue does not refuse them.
    let a = call(&sim, "POST", "/api/pull", r#"{"model":"qwen2.5:14b"}"#).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Router answers come before the fault, as in Gin.
    assert_eq!(call(&sim, "GET", "/api/chat", "").await.status, 405);
    // A busy server still does not load models.
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    assert_eq!(ps["models"], serde_json::json!([]));
    sim.set_fault(Fault::None);
    let a = call(&sim, "POST", "/api/chat", CHAT_ONCE).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(sim.inference_count(), INFERENCE.len() as u64 + 1);
}

#[tokio::test]
async fn status_fault_answers_that_status_in_each_apis_shape() {
    let sim = sim().await;
    sim.set_fault(Fault::Status(500));
    let a = call(&sim, "POST", "/api/chat", CHAT).await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (500, r#"{"error":"simulated failure"}"#)
    );
    let a = call(&sim, "POST", "/v1/chat/completions", INFERENCE[4].1).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.json()["error"]["message"], "simulated failure");
    sim.set_fault(Fault::Status(502));
    let a = call(&sim, "POST", "/api/generate", INFERENCE[1].1).await;
    assert_eq!(a.status, 502);
    let a = call(&sim, "POST", "/v1/messages", INFERENCE[8].1).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"]["type"], "api_error");
    assert_probes_answer(&sim).await;
    // Management answers normally.
    let a = call(
        &sim,
        "POST",
        "/api/copy",
        r#"{"source":"llama3.2","destination":"x"}"#,
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn stall_head_reads_the_request_and_never_answers() {
    let sim = sim().await;
    sim.set_fault(Fault::StallHead);
    let wait = Duration::from_millis(300);
    for (path, body) in [
        ("/api/chat", CHAT),
        ("/api/chat", CHAT_ONCE),
        ("/v1/embeddings", INFERENCE[6].1),
        ("/api/pull", r#"{"model":"qwen2.5:14b"}"#),
    ] {
        let got = head_within(&sim, path, body, wait).await;
        assert!(
            matches!(got, Ok(None)),
            "{path}: {:?}",
            got.map(|r| r.map(|r| r.status()))
        );
    }
    // Read in full, and recorded.
    let recs = sim.requests();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0].body, CHAT.as_bytes());
    assert_eq!(sim.inference_count(), 3);
    // The clients hung up: the connections close and nothing stays counted.
    eventually("stalled requests let go", || sim.in_flight() == 0).await;
    assert_eq!(sim.max_concurrent(), 1);
    assert_probes_answer(&sim).await;
    // Nothing was loaded.
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    assert_eq!(ps["models"], serde_json::json!([]));
    sim.set_fault(Fault::None);
    assert_eq!(call(&sim, "POST", "/api/chat", CHAT_ONCE).await.status, 200);
}

#[tokio::test]
async fn stall_after_first_sends_one_chunk_then_nothing() {
    let sim = sim().await;
    sim.set_fault(Fault::StallAfterFirst);
    for (path, body, start) in [
        ("/api/chat", CHAT, "{\"model\":\"llama3.2\""),
        (
            "/v1/chat/completions",
            r#"{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            "data: {\"id\":\"chatcmpl-",
        ),
        (
            "/api/pull",
            r#"{"model":"qwen2.5:14b"}"#,
            "{\"status\":\"pulling manifest\"}\n",
        ),
    ] {
        let resp = head_within(&sim, path, body, Duration::from_secs(5))
            .await
            .unwrap()
            .expect("the head comes");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first chunk comes")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        let first = String::from_utf8_lossy(&first).into_owned();
        assert!(first.starts_with(start), "{path}: {first}");
        assert_eq!(
            first.matches('\n').count(),
            if path.starts_with("/v1") { 2 } else { 1 }
        );
        let next = tokio::time::timeout(Duration::from_millis(300), body.frame()).await;
        assert!(next.is_err(), "{path}: more came: {next:?}");
        drop(body);
    }
    eventually("abandoned stalls counted", || sim.cancelled() == 3).await;
    // Not streamed: no head at all.
    let got = head_within(&sim, "/api/chat", CHAT_ONCE, Duration::from_millis(300)).await;
    assert!(matches!(got, Ok(None)));
    assert_probes_answer(&sim).await;
    eventually("stalled requests let go", || sim.in_flight() == 0).await;
}

#[tokio::test]
async fn drop_before_head_closes_without_a_response() {
    let sim = sim().await;
    sim.set_fault(Fault::DropBeforeHead);
    for (path, body) in [
        ("/api/chat", CHAT_ONCE),
        ("/api/chat", CHAT),
        ("/api/pull", r#"{"model":"qwen2.5:14b"}"#),
        ("/api/create", r#"{"model":"new","from":"llama3.2"}"#),
    ] {
        let got = head_within(&sim, path, body, Duration::from_secs(5)).await;
        assert!(
            got.is_err(),
            "{path}: {:?}",
            got.map(|r| r.map(|r| r.status()))
        );
    }
    // DELETE and copy too.
    let req = Request::delete(format!("{}/api/delete", sim.url()))
        .body(Full::new(Bytes::from_static(br#"{"model":"llama3.2"}"#)))
        .unwrap();
    assert!(client().request(req).await.is_err());
    let recs = sim.requests();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[2].json()["model"], "qwen2.5:14b");
    assert_eq!(sim.inference_count(), 2);
    assert_probes_answer(&sim).await;
    // Nothing happened: the pull did not add a model, the delete did not remove one.
    let tags = call(&sim, "GET", "/api/tags", "").await.json();
    assert_eq!(tags["models"].as_array().unwrap().len(), 1);
    assert_eq!(tags["models"][0]["name"], "llama3.2:latest");
}

#[tokio::test]
async fn down_closes_every_connection_probes_included() {
    let sim = sim().await;
    // A keep-alive connection opened while healthy...
    let mut tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    tcp.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).contains("0.12.3") {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    sim.set_fault(Fault::Down);
    // ...is closed at its next request, without an answer.
    tcp.write_all(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    for path in ["/api/tags", "/api/ps", "/api/version", "/"] {
        let req = Request::get(format!("{}{path}", sim.url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(client().request(req).await.is_err(), "{path}");
    }
    let got = head_within(&sim, "/api/chat", CHAT_ONCE, Duration::from_secs(5)).await;
    assert!(got.is_err());
    assert_eq!(sim.inference_count(), 1);
    sim.set_fault(Fault::None);
    assert_probes_answer(&sim).await;
}

#[tokio::test]
async fn load_delay_holds_the_first_byte_of_a_cold_model_only() {
    let load = Duration::from_millis(1500);
    let sim = spawn(SimOptions {
        models: vec!["llama3.2".into(), "qwen2.5:14b".into()],
        loaded: vec!["qwen2.5:14b".into()],
        load_delay: load,
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let first = tokio::spawn({
        let url = sim.url();
        async move {
            let req = Request::post(format!("{url}/api/chat"))
                .body(Full::new(Bytes::from_static(CHAT_ONCE.as_bytes())))
                .unwrap();
            let resp = client().request(req).await.unwrap();
            (resp.status(), tokio::time::Instant::now())
        }
    });
    eventually("the cold request arrived", || sim.in_flight() == 1).await;
    // A second request for the same model waits for the same load.
    let second = tokio::spawn({
        let url = sim.url();
        async move {
            let req = Request::post(format!("{url}/api/generate"))
                .body(Full::new(Bytes::from_static(
                    br#"{"model":"llama3.2","prompt":"x","stream":false}"#,
                )))
                .unwrap();
            client().request(req).await.unwrap().status()
        }
    });
    // Not loaded while loading; a loaded model is answered meanwhile (the margin
    // is wide: this asks only that it does not wait for the other model's load).
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    let loaded: Vec<&str> = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["qwen2.5:14b"]);
    let warm = tokio::time::timeout(
        Duration::from_secs(60),
        call(
            &sim,
            "POST",
            "/api/generate",
            r#"{"model":"qwen2.5:14b","prompt":"x","stream":false}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(warm.status, 200);
    let (status, at) = first.await.unwrap();
    assert_eq!(status, 200);
    assert!(at - started >= load, "{:?}", at - started);
    assert_eq!(second.await.unwrap(), 200);
    assert!(started.elapsed() >= load);
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    assert_eq!(ps["models"].as_array().unwrap().len(), 2);
    assert!(ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "llama3.2:latest"));
}

#[tokio::test]
async fn response_delay_and_concurrency_counters() {
    let sim = spawn(SimOptions {
        response_delay: Duration::from_millis(300),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    assert_eq!((sim.inference_count(), sim.max_concurrent()), (0, 0));
    let started = tokio::time::Instant::now();
    let a = call(&sim, "POST", "/api/chat", CHAT_ONCE).await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Probes do not wait and are not counted.
    call(&sim, "GET", "/api/tags", "").await;
    assert_eq!((sim.inference_count(), sim.max_concurrent()), (1, 1));
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = sim.url();
            tokio::spawn(async move {
                let req = Request::post(format!("{url}/api/chat"))
                    .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
                    .unwrap();
                let resp = client().request(req).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    for c in calls {
        let body = c.await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("\"done\":true"));
    }
    assert_eq!(sim.inference_count(), 4);
    assert_eq!(sim.max_concurrent(), 3);
    assert_eq!(sim.in_flight(), 0);
}

/// Reads from `tcp` until it closes; `true` if it did within 5 s.
async fn closes(tcp: &mut tokio::net::TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink))
        .await
        .is_ok()
}

#[tokio::test]
async fn shutdown_closes_open_connections_and_spawn_at_takes_the_port_again() {
    let opts = SimOptions {
        chunks: 50,
        chunk_delay: Duration::from_millis(100),
        ..SimOptions::default()
    };
    let sim = spawn(opts.clone()).await.unwrap();
    let addr = sim.addr();
    // An idle keep-alive connection.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut chunk = [0u8; 1024];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("0.12.3") {
        let n = idle.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    // A stream under way.
    let mut streaming = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    streaming.write_all(req.as_bytes()).await.unwrap();
    let n = streaming.read(&mut chunk).await.unwrap();
    assert!(String::from_utf8_lossy(&chunk[..n]).starts_with("HTTP/1.1 200"));
    // A stalled request.
    sim.set_fault(Fault::StallHead);
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{CHAT_ONCE}",
        CHAT_ONCE.len()
    );
    stalled.write_all(req.as_bytes()).await.unwrap();
    eventually("the stalled request arrived", || sim.in_flight() == 2).await;

    sim.shutdown();
    assert!(closes(&mut idle).await, "idle connection left open");
    assert!(closes(&mut streaming).await, "stream left open");
    assert!(closes(&mut stalled).await, "stalled connection left open");

    // The same port again, at once: fresh state, no fault.
    let again = spawn_at(addr, opts).await.unwrap();
    assert_eq!(again.addr(), addr);
    assert_eq!(again.fault(), Fault::None);
    let a = call(&again, "POST", "/api/chat", CHAT_ONCE).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(again.requests().len(), 1);
    assert_eq!(again.inference_count(), 1);
    // Taken while in use: an error after the retries, not a second listener.
    let busy = tokio::time::timeout(
        Duration::from_secs(30),
        spawn_at(addr, SimOptions::default()),
    )
    .await
    .unwrap();
    assert!(busy.is_err());
}

#[tokio::test]
async fn ps_reports_sizes_context_and_expiry_like_ollama() {
    let sim = spawn(SimOptions {
        loaded: vec!["llama3.2".into()],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let tags = call(&sim, "GET", "/api/tags", "").await.json();
    let size = tags["models"][0]["size"].as_u64().unwrap();
    assert!(size > 0);
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    let m = &ps["models"][0];
    assert_eq!(m["size"].as_u64(), Some(size));
    assert_eq!(m["size_vram"].as_u64(), Some(size));
    assert_eq!(m["context_length"], 4096);
    let expires = m["expires_at"].as_str().unwrap();
    assert!(expires.ends_with("-07:00"), "{expires}");
    // A request with another num_ctx and keep-alive forever shows both.
    let a = call(
        &sim,
        "POST",
        "/api/generate",
        r#"{"model":"llama3.2","prompt":"x","stream":false,"keep_alive":-1,"options":{"num_ctx":8192}}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    let ps = call(&sim, "GET", "/api/ps", "").await.json();
    assert_eq!(ps["models"][0]["context_length"], 8192);
    let year: i32 = ps["models"][0]["expires_at"].as_str().unwrap()[..4]
        .parse()
        .unwrap();
    assert!(year > 2200, "{year}");
}

#[test]
fn helpers() {
    assert_eq!(fmt_time(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(
        fmt_time(BASE_MODIFIED_NS, LOCAL_OFFSET_SECS),
        "2025-05-04T17:37:44.706015396-07:00"
    );
    assert_eq!(
        fmt_time(1_691_137_965_499_127_000, 0),
        "2023-08-04T08:32:45.499127Z"
    );
    assert_eq!(parse_go_duration("1h30m"), Ok(5_400 * NS));
    assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
    assert_eq!(parse_go_duration("0"), Ok(0));
    assert_eq!(
        parse_go_duration("3x").unwrap_err(),
        "time: unknown unit \"x\" in duration \"3x\""
    );
    assert_eq!(go_float(1e-7, true), "1e-7");
    assert_eq!(go_float(0.25, true), "0.25");
    assert_eq!(go_float(1e21, false), "1e+21");
    let msg = |b: &str| match go_decode(b.as_bytes(), "api.X", "X", &[]) {
        Err(DecodeError::Msg(m)) => m,
        Err(DecodeError::Eof) => "EOF".to_string(),
        Ok(_) => "ok".to_string(),
    };
    assert_eq!(msg(""), "EOF");
    assert_eq!(msg("{} trailing"), "ok");
    assert_eq!(
        msg("[1]"),
        "json: cannot unmarshal array into Go value of type api.X"
    );
    assert_eq!(msg(r#"{"a" 1}"#), "invalid character '1' after object key");
    assert_eq!(
        msg(r#"{"a":1 "b"}"#),
        "invalid character '\"' after object key:value pair"
    );
    assert_eq!(
        msg(r#"{"a":tru}"#),
        "invalid character '}' in literal true (expecting 'e')"
    );
    assert_eq!(
        msg("{\"a\":\"\n\"}"),
        "invalid character '\\n' in string literal"
    );
    assert_eq!(
        msg(r#"{"a":[1,]}"#),
        "invalid character ']' looking for beginning of value"
    );
    assert_eq!(
        msg(r#"{"a":-x}"#),
        "invalid character 'x' in numeric literal"
    );
    // serde_json reads; the wording is Go's, down to the character Go stops at.
    for (body, want) in [
        ("x", "invalid character 'x' looking for beginning of value"),
        ("{", "unexpected EOF"),
        ("[1", "unexpected EOF"),
        (
            "{1:2}",
            "invalid character '1' looking for beginning of object key string",
        ),
        (
            r#"{"a":1,}"#,
            "invalid character '}' looking for beginning of object key string",
        ),
        ("[1 2]", "invalid character '2' after array element"),
        (
            r#"{"a":1.x}"#,
            "invalid character 'x' after decimal point in numeric literal",
        ),
        (
            r#"{"a":1e+x}"#,
            "invalid character 'x' in exponent of numeric literal",
        ),
        (
            r#"{"a":01}"#,
            "invalid character '1' after object key:value pair",
        ),
        ("[01]", "invalid character '1' after array element"),
        (
            "tx",
            "invalid character 'x' in literal true (expecting 'r')",
        ),
        (
            r#"{"a":fals }"#,
            "invalid character ' ' in literal false (expecting 'e')",
        ),
        (
            r#"{"a":"\x"}"#,
            "invalid character 'x' in string escape code",
        ),
        (
            r#"{"a":"\u12x4"}"#,
            "invalid character 'x' in \\u hexadecimal character escape",
        ),
        (
            r#"{"a":"\u"x\""}"#,
            "invalid character '\"' in \\u hexadecimal character escape",
        ),
        (
            "\n\n  {\"a\":\n x}",
            "invalid character 'x' looking for beginning of value",
        ),
        (
            "{\"\u{e9}\":x}",
            "invalid character 'x' looking for beginning of value",
        ),
        // Go reads a top-level number or literal up to where it ends.
        (
            "1x",
            "json: cannot unmarshal number into Go value of type api.X",
        ),
        (
            "01",
            "json: cannot unmarshal number into Go value of type api.X",
        ),
        (
            "truex",
            "json: cannot unmarshal bool into Go value of type api.X",
        ),
        ("   ", "EOF"),
    ] {
        assert_eq!(msg(body), want, "{body:?}");
    }
    // Invalid UTF-8 in a string is read as U+FFFD, as Go does; outside one, Go
    // names the byte.
    assert_eq!(
        match go_decode(b"{\"a\":\"\xff\"}", "api.X", "X", &[]) {
            Ok(v) => v["a"].as_str().map(str::to_string),
            Err(_) => None,
        },
        Some("\u{fffd}".to_string())
    );
    assert!(matches!(
        go_decode(b"{\"a\":tr\xc3}", "api.X", "X", &[]),
        Err(DecodeError::Msg(m)) if m == "invalid character '\u{c3}' in literal true (expecting 'u')"
    ));
    assert!(valid_name("registry.ollama.ai/library/llama3.2:latest"));
    assert!(valid_name("myreg:5000/ns/m"));
    assert!(!valid_name("bad name"));
    assert_eq!(
        ModelInfo::of("nomic-embed-text:latest").capabilities(),
        vec!["embedding"]
    );
}
