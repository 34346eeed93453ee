//! What an operator reads about each request: the access log (text and
//! JSON), the plugins' decision times and failures, counts per principal,
//! and the `metrics` / `access_log` switches.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::admin::sample;
use crate::common::*;

/// Waits until `count` access-log lines (`request` lines of target
/// `llamagate::access`) are in the logs; returns them.
fn access_lines(proxy: &Proxy, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = proxy
            .logs()
            .lines()
            .filter(|l| l.contains(" request ") || l.contains("\"message\":\"request\""))
            .map(str::to_string)
            .collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scrapes the admin endpoint until `name` (with `with`) reaches `at_least`.
async fn metric_at_least(proxy: &Proxy, name: &str, with: &[&str], at_least: f64) -> String {
    let url = format!("{}/metrics", proxy.admin_url());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = get(&url).await.text();
        if sample(&m, name, with).unwrap_or(0.0) >= at_least || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_with_what_was_asked_and_served() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(
        &format!(
            "[connections]\nb1 = \"{}\"\n[policy]\nmodels = {{ \"llama3.2\" = \"b1\" }}\naliases = {{ \"gpt-4o\" = \"llama3.2\" }}\n",
            sim.url()
        ),
        &[],
    );
    let chat = format!("{}/api/chat", proxy.url);
    let r = post_with(
        &chat,
        &[("x-request-id", "trace-1")],
        &json!({"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let last = r.lines().pop().unwrap();
    let r = post_with(
        &chat,
        &[("x-request-id", "trace-2")],
        &json!({"model":"nobody-has-it","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 404);

    let lines = access_lines(&proxy, 2);
    let first = lines
        .iter()
        .find(|l| l.contains("id=trace-1"))
        .unwrap_or_else(|| panic!("no line for trace-1:\n{}", proxy.logs()));
    for part in [
        " INFO ",
        "client=127.0.0.1:",
        "method=POST",
        "path=/api/chat",
        "endpoint=chat ",
        "model=\"gpt-4o\"",
        "served=\"llama3.2\"",
        "backend=b1 ",
        "status=200",
        "ttfb_ms=",
        "duration_ms=",
        &format!("prompt_tokens={}", last["prompt_eval_count"]),
        &format!("completion_tokens={}", last["eval_count"]),
        "complete=true",
    ] {
        assert!(first.contains(part), "{part:?} missing from {first}");
    }
    let second = lines.iter().find(|l| l.contains("id=trace-2")).unwrap();
    assert!(second.contains("status=404"), "{second}");
    assert!(second.contains("model=\"nobody-has-it\""), "{second}");
    // Exactly one line per request.
    assert_eq!(lines.iter().filter(|l| l.contains("id=trace-1")).count(), 1);

    // A client's model name cannot forge a line of its own.
    let r = post_with(
        &chat,
        &[("x-request-id", "trace-3")],
        &json!({"model":"x\n2026-01-01T00:00:00Z  INFO request id=forged status=200","messages":[]}),
    )
    .await;
    assert_eq!(r.status, 404);
    let lines = access_lines(&proxy, 3);
    let third = lines.iter().find(|l| l.contains("id=trace-3")).unwrap();
    assert!(third.contains("model=\"x\\n2026"), "{third}");
    assert!(
        !proxy.logs().lines().any(|l| l.starts_with("2026-01-01")),
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start(&["--proxy", &route, "--log-format", "json"]);
    let r = post_with(
        &format!("{}/v1/chat/completions", proxy.url),
        &[("x-request-id", "json-1")],
        &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = r.json()["usage"].clone();
    let lines = access_lines(&proxy, 1);
    for line in proxy.logs().lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let line: Value = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["id"] == "json-1")
        .unwrap_or_else(|| panic!("no access line:\n{}", proxy.logs()));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "llamagate::access");
    assert_eq!(line["status"], 200);
    assert_eq!(line["endpoint"], "openai_chat");
    assert_eq!(line["model"], "llama3.2");
    assert_eq!(line["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(line["completion_tokens"], usage["completion_tokens"]);
    assert!(line["duration_ms"].as_f64().unwrap() >= line["ttfb_ms"].as_f64().unwrap());

    // A format nobody knows stops start-up, naming the flag.
    let refused = Proxy::try_start(&["--proxy", &route, "--log-format", "yaml"])
        .err()
        .expect("must not start");
    assert!(refused.contains("--log-format"), "{refused}");
}

#[tokio::test]
async fn metrics_and_the_access_log_can_be_switched_off() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(
        &format!(
            "metrics = false\naccess_log = false\n[connections]\nb1 = \"{}\"\n[policy]\nmodels = {{ \"llama3.2\" = \"b1\" }}\n",
            sim.url()
        ),
        &[],
    );
    for _ in 0..3 {
        let r = post(
            &format!("{}/api/chat", proxy.url),
            &json!({"model":"llama3.2","messages":[],"stream":false}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-request-id").is_some());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = get(&format!("{}/metrics", proxy.admin_url())).await;
    assert_eq!(m.status, 200);
    let m = m.text();
    assert_eq!(sample(&m, "llamagate_requests_total", &[]), None, "{m}");
    assert_eq!(
        sample(&m, "llamagate_plugin_decision_seconds_count", &[]),
        None
    );
    // The fleet's gauges are read when scraped, and stay.
    assert!(
        sample(&m, "llamagate_backend_state", &["state=\"up\""]).is_some(),
        "{m}"
    );
    assert!(access_lines(&proxy, 1).is_empty(), "{}", proxy.logs());
}

#[tokio::test]
async fn plugin_decision_times_failures_and_principals_are_counted() {
    let sim = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    let team = component("team-access");
    let proxy = Proxy::with_config(
        &format!(
            r#"
            [connections]
            a = "{}"
            [policy.models]
            "llama3.2" = "a"
            [[plugins]]
            name = "hostile"
            path = "{}"
            [[plugins]]
            name = "teams"
            path = "{}"
            [plugins.config]
            tokens = {{ "sha256:{}" = "team-a" }}
            teams = {{ "team-a" = ["llama3.2"] }}
            "#,
            sim.url(),
            hostile.display(),
            team.display(),
            sha256_hex("secret-a"),
        ),
        &[],
    );
    let chat = format!("{}/api/chat", proxy.url);
    let body =
        json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false});
    for _ in 0..2 {
        let r = post_with(&chat, &[("authorization", "Bearer secret-a")], &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = post_with(
        &chat,
        &[("authorization", "Bearer secret-a"), ("x-hostile", "trap")],
        &body,
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());

    let m = metric_at_least(
        &proxy,
        "llamagate_principal_requests_total",
        &["principal=\"team-a\""],
        2.0,
    )
    .await;
    // Each plugin's decisions: the default policy and "teams" decided twice;
    // "hostile" three times, once trapping.
    for (plugin, n) in [("default-policy", 3.0), ("hostile", 3.0), ("teams", 2.0)] {
        assert_eq!(
            sample(
                &m,
                "llamagate_plugin_decision_seconds_count",
                &[&format!("plugin=\"{plugin}\"")]
            ),
            Some(n),
            "{plugin}:\n{m}"
        );
    }
    assert_eq!(
        sample(
            &m,
            "llamagate_plugin_failures_total",
            &["plugin=\"hostile\"", "kind=\"trap\""]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "llamagate_principal_requests_total",
            &["principal=\"team-a\"", "status=\"2xx\""]
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "llamagate_principal_tokens_total",
            &["principal=\"team-a\"", "gen_ai_token_type=\"output\""]
        )
        .is_some_and(|n| n > 0.0),
        "{m}"
    );
    // The two admitted requests took a slot without waiting.
    assert_eq!(
        sample(&m, "llamagate_queue_wait_seconds_bucket", &["le=\"0.0\""]),
        Some(2.0),
        "{m}"
    );
    // The log names the principal, never the token.
    let lines = access_lines(&proxy, 2);
    assert!(
        lines.iter().any(|l| l.contains("principal=\"team-a\"")),
        "{lines:?}"
    );
    assert!(!proxy.logs().contains("secret-a"));
}

/// `sha256:` hex of a token, as team-access's config wants it.
fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
