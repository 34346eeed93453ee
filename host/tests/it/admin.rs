//! The admin endpoint on its own address: liveness, readiness, metrics
//! (with token counts read from the answers as they pass) and status, and
//! the admin key in front of metrics and status.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::common::*;

/// The value of the sample `name{labels...}` whose labels include all of `with`.
pub(crate) fn sample(metrics: &str, name: &str, with: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

#[tokio::test]
async fn health_metrics_and_status_are_on_the_admin_address() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start(&["--proxy", &route, "--alias", "gpt-4o=llama3.2"]);
    let admin = proxy.admin_url();
    assert_ne!(admin, proxy.url);
    let r = get(&format!("{admin}/livez")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = get(&format!("{admin}/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ready"], true);
    let r = get(&format!("{admin}/llamagate/status")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backends"][0]["state"], "up");

    // Traffic of both APIs, streamed and not; an alias and a model nobody has.
    let chat = json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]});
    for body in [
        chat.clone(),
        json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":false}),
    ] {
        let r = post(&format!("{}/api/chat", proxy.url), &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model":"made-up-by-a-client","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 404);

    // A request is counted when its answer's body ends, which hyper may see
    // just after the client has read the last byte.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let r = get(&format!("{admin}/metrics")).await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")));
        let m = r.text();
        let counted = sample(&m, "llamagate_requests_total", &[]).unwrap_or(0.0);
        if counted >= 3.0 || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(
            &m,
            "llamagate_requests_total",
            &[
                "endpoint=\"chat\"",
                "model=\"llama3.2:latest\"",
                "status=\"2xx\""
            ]
        ),
        Some(2.0),
        "{m}"
    );
    // The alias and the unknown model are not labels.
    assert!(!m.contains("gpt-4o") && !m.contains("made-up"), "{m}");
    assert_eq!(
        sample(&m, "llamagate_requests_total", &["status=\"4xx\""]),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "llamagate_time_to_first_byte_seconds_count",
            &["endpoint=\"chat\""]
        )
        .is_some_and(|n| n >= 2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "llamagate_backend_state", &["state=\"up\""]),
        Some(1.0),
        "{m}"
    );
    // The traffic port does not serve metrics: it is an Ollama path like any other.
    let r = get(&format!("{}/metrics", proxy.url)).await;
    assert_ne!(r.status, 200);
    assert!(!r.text().contains("llamagate_requests_total"));
}

#[tokio::test]
async fn readiness_fails_while_no_backend_is_up() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let route = format!("llama3.2=http://{dead}");
    let proxy = Proxy::start(&["--proxy", &route]);
    let admin = proxy.admin_url();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&format!("{admin}/readyz")).await;
        if r.status == 503 {
            assert_eq!(r.json()["ready"], false, "{}", r.text());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Alive all the same.
    assert_eq!(get(&format!("{admin}/livez")).await.status, 200);
}

#[tokio::test]
async fn the_admin_key_guards_metrics_and_status_but_not_health() {
    let sim = backend(&["llama3.2"]).await;
    let config = format!(
        "admin_key = \"s3cret-admin\"\n[connections]\na = \"{}\"\n",
        sim.url()
    );
    let proxy = Proxy::with_config(&config, &[]);
    let admin = proxy.admin_url();
    for path in ["/metrics", "/llamagate/status"] {
        let r = get(&format!("{admin}{path}")).await;
        assert_eq!(r.status, 401, "{path}");
        let r = send(
            Method::GET,
            &format!("{admin}{path}"),
            &[("authorization", "Bearer s3cret-admin")],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.text().contains("s3cret"), "{path}");
    }
    for path in ["/livez", "/readyz"] {
        assert_eq!(get(&format!("{admin}{path}")).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn admin_listen_off_serves_no_admin_endpoint() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start(&["--proxy", &route, "--admin-listen", "off"]);
    let r = get(&format!("{}/api/tags", proxy.url)).await;
    assert_eq!(r.status, 200);
    assert!(!proxy.logs().contains("admin_address="), "{}", proxy.logs());
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_reach_the_backend_and_the_client() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start(&["--proxy", &route]);
    let body = json!({"model":"llama3.2","messages":[],"stream":false});
    let url = format!("{}/api/chat", proxy.url);
    let r = post_with(&url, &[("x-request-id", "abc-123")], &body).await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r2 = post(&url, &body).await;
    let made = r2.header("x-request-id").unwrap().to_string();
    assert!(made.starts_with("lg-") && made.len() == 19, "{made}");
    // Unusable ids (a space, two values) are replaced, not passed on.
    let r3 = post_with(&url, &[("x-request-id", "a b")], &body).await;
    assert!(r3.header("x-request-id").unwrap().starts_with("lg-"));
    let r4 = post(&url, &body).await;
    assert_ne!(r4.header("x-request-id"), Some(made.as_str()), "ids repeat");
    let chats: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .collect();
    assert_eq!(chats[0].header("x-request-id"), Some("abc-123"));
    assert_eq!(chats[1].header("x-request-id"), Some(made.as_str()));
    assert!(chats[2].header("x-request-id").unwrap().starts_with("lg-"));
    // Errors answered by llamagate carry it too.
    let r = post(&url, &json!({"model":"nobody-has-it","messages":[]})).await;
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some());
}

/// The token counts the backend reported in an answer: Ollama's last line or
/// body (`prompt_eval_count`, `eval_count`), or OpenAI's `usage`.
fn reported(text: &str) -> (f64, f64) {
    let mut counts = (0.0, 0.0);
    for line in text.lines() {
        let line = line.strip_prefix("data: ").unwrap_or(line);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(p), Some(e)) = (v["prompt_eval_count"].as_f64(), v["eval_count"].as_f64()) {
            counts = (p, e);
        }
        if let (Some(p), Some(c)) = (
            v["usage"]["prompt_tokens"].as_f64(),
            v["usage"]["completion_tokens"].as_f64(),
        ) {
            counts = (p, c);
        }
    }
    counts
}

#[tokio::test]
async fn token_counts_equal_what_the_backends_reported() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start(&["--proxy", &route]);
    let admin = proxy.admin_url();
    let mut want = (0.0, 0.0);
    let msgs = json!([{"role":"user","content":"count my tokens please"}]);
    let requests = [
        ("/api/chat", json!({"model":"llama3.2","messages":msgs})),
        (
            "/api/chat",
            json!({"model":"llama3.2","messages":msgs,"stream":false}),
        ),
        (
            "/api/generate",
            json!({"model":"llama3.2","prompt":"a b c"}),
        ),
        (
            "/api/generate",
            json!({"model":"llama3.2","prompt":"a b c","stream":false}),
        ),
        (
            "/v1/chat/completions",
            json!({"model":"llama3.2","messages":msgs}),
        ),
        (
            "/v1/chat/completions",
            json!({"model":"llama3.2","messages":msgs,"stream":true,
                   "stream_options":{"include_usage":true}}),
        ),
    ];
    // A mixed run: each kind four times, interleaved.
    const ROUNDS: usize = 4;
    for (path, body) in requests.iter().cycle().take(ROUNDS * requests.len()) {
        let r = post(&format!("{}{path}", proxy.url), body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let (p, c) = reported(&r.text());
        assert!(
            p > 0.0 && c > 0.0,
            "{path}: the backend reported no counts: {}",
            r.text()
        );
        want = (want.0 + p, want.1 + c);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = get(&format!("{admin}/metrics")).await.text();
        let input = sample(
            &m,
            "llamagate_tokens_total",
            &["gen_ai_token_type=\"input\""],
        );
        let output = sample(
            &m,
            "llamagate_tokens_total",
            &["gen_ai_token_type=\"output\""],
        );
        if (input, output) == (Some(want.0), Some(want.1)) {
            eprintln!(
                "{} requests: input tokens {} in the metrics, {} reported; output {} and {}",
                ROUNDS * requests.len(),
                input.unwrap(),
                want.0,
                output.unwrap(),
                want.1
            );
            let usage = sample(&m, "gen_ai_client_token_usage_count", &[]);
            assert_eq!(usage, Some(2.0 * (ROUNDS * requests.len()) as f64), "{m}");
            assert!(
                sample(&m, "gen_ai_server_time_to_first_token_seconds_count", &[])
                    .is_some_and(|n| n >= (ROUNDS * requests.len()) as f64),
                "{m}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics {input:?}/{output:?}, reported {want:?}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
