//! Backend URLs as operators write them: behind a base path, or unreachable.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::common::*;

/// A reverse proxy that serves `target` under `prefix` only (nginx's
/// `location /ollama/ { proxy_pass http://ollama/; }`) and answers 404
/// elsewhere. Returns its address and the paths it was asked for.
async fn under_prefix(prefix: &'static str, target: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, target, log) = (client.clone(), target.clone(), log.clone());
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let (client, target, log) = (client.clone(), target.clone(), log.clone());
                async move {
                    let asked = request.uri().path_and_query().unwrap().to_string();
                    log.lock().unwrap().push(asked.clone());
                    let Some(rest) = asked.strip_prefix(prefix) else {
                        let body = Full::new(Bytes::from("404 page not found"))
                            .map_err(|never| match never {})
                            .boxed();
                        return Ok::<_, hyper_util::client::legacy::Error>(
                            Response::builder().status(404).body(body).unwrap(),
                        );
                    };
                    *request.uri_mut() = format!("{target}{rest}").parse().unwrap();
                    let response = client.request(request).await?;
                    Ok(response.map(|b| -> BoxBody<Bytes, hyper::Error> { b.boxed() }))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_backend_behind_a_base_path_serves_every_endpoint() {
    let sim = backend(&["llama3.2"]).await;
    let (addr, seen) = under_prefix("/ollama", sim.url()).await;
    // The prefix matters: without it the forwarder has nothing.
    assert_eq!(get(&format!("http://{addr}/api/tags")).await.status, 404);

    let route = format!("llama3.2=http://{addr}/ollama/");
    let proxy = Proxy::start(&["--proxy", &route]);
    let url = |path: &str| format!("{}{path}", proxy.url);
    let chat =
        json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false});
    let r = post(&url("/api/chat"), &chat).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama3.2");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let r = post(&url("/api/chat"), &streamed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.lines().len() > 1, "{}", r.text());
    let r = get(&url("/api/tags")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"][0]["name"], "llama3.2:latest");
    let r = get(&url("/api/version")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        Method::POST,
        &url("/v1/chat/completions"),
        &[],
        chat.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = seen.lock().unwrap().clone();
    for path in [
        "/ollama/api/chat",
        "/ollama/api/tags",
        "/ollama/api/ps",
        "/ollama/v1/chat/completions",
    ] {
        assert!(seen.iter().any(|p| p == path), "{path} not asked: {seen:?}");
    }
    assert!(
        seen.iter().skip(1).all(|p| p.starts_with("/ollama/")),
        "every request and probe carries the base path: {seen:?}"
    );
    assert!(!proxy.logs().contains("unreachable"), "{}", proxy.logs());
}

#[tokio::test]
async fn a_wrong_base_path_is_reported_with_what_the_backend_said() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}/ollama", sim.url());
    let proxy = Proxy::start(&["--proxy", &route]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !proxy.logs().contains("probe failed") {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("answered 404 Not Found to GET /api/tags") && logs.contains("/ollama"),
        "{logs}"
    );
    // A query would be dropped from every request: refused at start-up.
    let query = format!("llama3.2={}/ollama?key=1", sim.url());
    let out = match Proxy::try_start(&["--proxy", &query]) {
        Ok(_) => panic!("a backend URL with a query was accepted"),
        Err(out) => out,
    };
    assert!(out.contains("no ?query"), "{out}");
}

#[tokio::test]
async fn an_unreachable_backend_is_worded_the_same_on_every_endpoint() {
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
    let said = format!("backend \"gpu-09\" (http://{dead}) is unreachable: connection refused");
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"llama3.2","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], said.as_str());
    for path in ["/api/tags", "/api/ps", "/api/version"] {
        let r = get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(
            r.json()["error"],
            format!("no backend answered {path}: {said}").as_str(),
            "{path}"
        );
    }
    let r = get(&format!("{}/v1/models", proxy.url)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        format!("no backend answered /v1/models: {said}").as_str()
    );
}
