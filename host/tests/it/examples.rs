//! The example plugins of `examples/`, through the real proxy.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use crate::common::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|m| m.to_string()).collect()
}

async fn sim_with(opts: SimOptions) -> SimHandle {
    sim::spawn(opts).await.unwrap()
}

/// Starts llamagate over `backends` (id, sim) with the default policy configured by
/// `policy` and `plugin` (a crate of `examples/`) after it, configured by `config`
/// (an inline TOML table). `top` goes at the top level of the file.
fn start(
    top: &str,
    backends: &[(&str, &SimHandle)],
    policy: &str,
    plugin: &str,
    config: &str,
) -> Proxy {
    let mut toml = format!("{top}\n[connections]\n");
    for (id, sim) in backends {
        toml.push_str(&format!("{id} = \"{}\"\n", sim.url()));
    }
    toml.push_str(&format!(
        "[policy]\n{policy}\n[[plugins]]\npath = \"{}\"\nconfig = {config}\n",
        component(plugin).display()
    ));
    Proxy::with_config(&toml, &[])
}

/// The POST requests a backend got since the last call (probes and listings are GETs).
fn take_posts(sim: &SimHandle) -> Vec<sim::Recorded> {
    sim.take_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

/// Waits until llamagate has probed every backend once, so plugins see their models
/// and what is loaded: a second `/api/ps` probe starts only after the first round
/// has been stored.
async fn wait_probed(sims: &[&SimHandle]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let probes = |s: &SimHandle| s.requests().iter().filter(|r| r.path == "/api/ps").count();
    while sims.iter().any(|s| probes(s) < 2) {
        assert!(Instant::now() < deadline, "backends not probed within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

#[tokio::test]
async fn least_busy_sends_the_next_request_to_the_idle_replica() {
    // `a` has the model loaded, so the default policy alone would send both requests there.
    let a = sim_with(SimOptions {
        models: names(&["llama3.2"]),
        loaded: names(&["llama3.2"]),
        chunks: 50,
        chunk_delay: Duration::from_millis(100),
        ..SimOptions::default()
    })
    .await;
    let b = backend(&["llama3.2"]).await;
    let proxy = start(
        r#"probe_interval = "100ms""#,
        &[("a", &a), ("b", &b)],
        r#"models = { "llama3.2" = ["a", "b"] }"#,
        "least-busy",
        r#"{ models = ["llama3.2"] }"#,
    );
    wait_probed(&[&a, &b]).await;
    let url = format!("{}/api/chat", proxy.url);

    // Both idle: the first in llamagate's order. It streams for seconds; keep it open.
    let slow = open(Method::POST, &url, &[], chat("llama3.2", true).to_string()).await;
    assert_eq!(slow.status(), 200);
    assert_eq!(take_posts(&a).len(), 1, "the first request goes to a");

    let r = post(&url, &chat("llama3.2", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(take_posts(&b).len(), 1, "the second request goes to idle b");
    assert!(take_posts(&a).is_empty(), "a is busy");
    drop(slow);
}

#[tokio::test]
async fn warm_first_prefers_the_loaded_runner_unless_num_ctx_differs() {
    let a = backend(&["llama3.2"]).await;
    // `b` reports llama3.2 loaded, its runner at 4096 tokens of context.
    let b = sim_with(SimOptions {
        models: names(&["llama3.2"]),
        loaded: names(&["llama3.2"]),
        ..SimOptions::default()
    })
    .await;
    let proxy = start(
        r#"probe_interval = "100ms""#,
        &[("a", &a), ("b", &b)],
        r#"models = { "llama3.2" = ["a", "b"] }"#,
        "warm-first",
        "{}",
    );
    wait_probed(&[&a, &b]).await;
    let url = format!("{}/api/generate", proxy.url);
    let generate = |num_ctx: Option<u32>| match num_ctx {
        Some(n) => json!({"model":"llama3.2","prompt":"x","stream":false,"options":{"num_ctx":n}}),
        None => json!({"model":"llama3.2","prompt":"x","stream":false}),
    };

    for (num_ctx, warm) in [(None, true), (Some(4096), true), (Some(8192), false)] {
        let r = post(&url, &generate(num_ctx)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // A different num_ctx would reload b's runner: both are cold, a comes first.
        let expected = if warm { (0, 1) } else { (1, 0) };
        let got = (take_posts(&a).len(), take_posts(&b).len());
        assert_eq!(got, expected, "(to a, to b) for num_ctx {num_ctx:?}");
    }
}

#[tokio::test]
async fn ctx_placement_routes_by_num_ctx() {
    let big = backend(&["llama3.2"]).await;
    let small = backend(&["llama3.2"]).await;
    let proxy = start(
        "",
        &[("gpu-big", &big), ("gpu-small", &small)],
        r#"models = { "llama3.2" = ["gpu-big", "gpu-small"] }"#,
        "ctx-placement",
        r#"{ threshold = 16384, big = ["gpu-big"], small = ["gpu-small"] }"#,
    );
    let cases = [
        ("/api/generate", Some(32768), "gpu-big"),
        ("/api/generate", None, "gpu-small"),
        ("/api/chat", Some(16384), "gpu-small"),
        ("/api/chat", Some(16385), "gpu-big"),
        ("/v1/chat/completions", None, "gpu-small"),
    ];
    for (path, num_ctx, expected) in cases {
        let mut body = match path {
            "/api/generate" => json!({"model":"llama3.2","prompt":"x","stream":false}),
            _ => chat("llama3.2", false),
        };
        if let Some(n) = num_ctx {
            body["options"] = json!({ "num_ctx": n });
        }
        let r = post(&format!("{}{path}", proxy.url), &body).await;
        assert_eq!(r.status, 200, "{path} {num_ctx:?}: {}", r.text());
        let (to_big, to_small) = (take_posts(&big).len(), take_posts(&small).len());
        let went = match (to_big, to_small) {
            (1, 0) => "gpu-big",
            (0, 1) => "gpu-small",
            other => panic!("{path} {num_ctx:?}: requests (big, small) = {other:?}"),
        };
        assert_eq!(went, expected, "{path} with num_ctx {num_ctx:?}");
    }
}

#[tokio::test]
async fn ctx_placement_refuses_a_bad_config_at_start_up() {
    let path = write_temp(
        "llamagate.toml",
        &format!(
            "[connections]\ngpu = \"http://127.0.0.1:9\"\n[[plugins]]\npath = \"{}\"\n\
             config = {{ threshold = 0, big = [\"gpu\"], small = [\"gpu\"] }}\n",
            component("ctx-placement").display()
        ),
    );
    let logs = Proxy::try_start(&["--config", path.to_str().unwrap()])
        .err()
        .expect("must not start");
    assert!(
        logs.contains("must be a positive number of tokens"),
        "{logs}"
    );
}

#[tokio::test]
async fn team_access_refuses_a_malformed_hash_without_quoting_it() {
    // One hex digit short: a hash pasted incompletely.
    let short = "sha256:a4a6d307ad00fa67176e1099fdbc4f4a09bb527a7f24718a5030f2f173d11f7";
    let path = write_temp(
        "llamagate.toml",
        &format!(
            "[connections]\ngpu = \"http://127.0.0.1:9\"\n[[plugins]]\npath = \"{}\"\n\
             config = {{ tokens = {{ \"{short}\" = \"web\" }}, teams = {{ web = [\"*\"] }} }}\n",
            component("team-access").display()
        ),
    );
    let logs = Proxy::try_start(&["--config", path.to_str().unwrap()])
        .err()
        .expect("must not start");
    assert!(
        logs.contains("entry for team \"web\"") && logs.contains("64 hex digits"),
        "{logs}"
    );
    assert!(!logs.contains("a4a6d307"), "the hash is not quoted: {logs}");
}

#[tokio::test]
async fn team_access_still_takes_plaintext_tokens_with_a_warning() {
    let gpu = backend(&["llama3.2"]).await;
    let proxy = start(
        "",
        &[("gpu", &gpu)],
        r#"models = { "llama3.2" = "gpu" }"#,
        "team-access",
        r#"{ tokens = { "sk-plain" = "web" }, teams = { "web" = ["*"] } }"#,
    );
    let chat_as = |token: &'static str| {
        let url = format!("{}/api/chat", proxy.url);
        async move {
            let auth = format!("Bearer {token}");
            post_with(&url, &[("authorization", &auth)], &chat("llama3.2", false)).await
        }
    };
    assert_eq!(chat_as("sk-plain").await.status, 200);
    assert_eq!(chat_as("sk-plaim").await.status, 401);
    let logs = proxy.logs();
    assert!(logs.contains("written in plain text"), "{logs}");
    assert!(
        !logs.contains("sk-plain"),
        "the token is not logged: {logs}"
    );
}

#[tokio::test]
async fn team_access_checks_tokens_and_models_and_filters_listings() {
    let gpu = backend(&["llama3.2", "qwen2.5:14b"]).await;
    let proxy = start(
        "",
        &[("gpu", &gpu)],
        r#"models = { "llama3.2" = "gpu", "qwen2.5:14b" = "gpu" }"#,
        "team-access",
        // The tokens as the README says to write them: `printf %s sk-a | sha256sum`
        // (sk-root's in upper case: either works).
        r#"{ tokens = { "sha256:a4a6d307ad00fa67176e1099fdbc4f4a09bb527a7f24718a5030f2f173d11f7f" = "team-a", "sha256:8649DC2ABF84574467821D2B401F14B2A47BDBA971A08FB753F871FE836CE048" = "admins" }, teams = { "team-a" = ["llama3.2"], "admins" = ["*"] } }"#,
    );
    let url = |path: &str| format!("{}{path}", proxy.url);
    let as_a = [("authorization", "Bearer sk-a")];
    let as_root = [("authorization", "Bearer sk-root")];

    // No token, an unknown one, one a character off a real one (`sk-b`, `sk-roop`),
    // or the configured hash itself: 401 with a challenge, in Ollama's error shape.
    let hash = "Bearer sha256:a4a6d307ad00fa67176e1099fdbc4f4a09bb527a7f24718a5030f2f173d11f7f";
    for headers in [
        &[][..],
        &[("authorization", "Bearer sk-nope")][..],
        &[("authorization", "Bearer sk-b")][..],
        &[("authorization", "Bearer sk-roop")][..],
        &[("authorization", hash)][..],
    ] {
        let r = post_with(&url("/api/chat"), headers, &chat("llama3.2", false)).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(r.json()["error"].as_str().unwrap().contains("bearer token"));
    }
    assert!(
        take_posts(&gpu).is_empty(),
        "refused requests reach no backend"
    );
    assert_eq!(
        send(Method::GET, &url("/api/tags"), &[], "").await.status,
        401
    );

    // A model the team may use: forwarded, without the token.
    let r = post_with(&url("/api/chat"), &as_a, &chat("llama3.2", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = take_posts(&gpu);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the token is stripped"
    );

    // One it may not: 403, worded for each API; nothing reaches the backend.
    let r = post_with(&url("/api/chat"), &as_a, &chat("qwen2.5:14b", false)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("may not use"));
    let r = post_with(
        &url("/v1/chat/completions"),
        &as_a,
        &chat("qwen2.5:14b", false),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("may not use"));
    let pull = json!({"model": "llama3.2", "stream": false});
    assert_eq!(post_with(&url("/api/pull"), &as_a, &pull).await.status, 403);
    assert!(take_posts(&gpu).is_empty());
    let r = post_with(&url("/api/chat"), &as_root, &chat("qwen2.5:14b", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(take_posts(&gpu).len(), 1);

    // Listings show each team its models.
    let listed = |r: Reply, list: &str, key: &str| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text());
        let json = r.json();
        let items = json[list].as_array().unwrap().iter();
        items
            .map(|m| m[key].as_str().unwrap().to_string())
            .collect()
    };
    let tags = url("/api/tags");
    let r = send(Method::GET, &tags, &as_a, "").await;
    assert_eq!(listed(r, "models", "name"), ["llama3.2:latest"]);
    let mut all = listed(
        send(Method::GET, &tags, &as_root, "").await,
        "models",
        "name",
    );
    all.sort();
    assert_eq!(all, ["llama3.2:latest", "qwen2.5:14b"]);
    let models = send(Method::GET, &url("/v1/models"), &as_a, "").await;
    assert_eq!(listed(models, "data", "id"), ["llama3.2:latest"]);
}

/// The attacks of issue 6 against team-access, each now refused or harmless:
/// an encoded delete path, a case-variant `Model`, a pin to another server,
/// an endpoint llamagate does not know. The "web" key may use only llama3.2.
#[tokio::test]
async fn team_access_cannot_be_walked_around() {
    let gpu = backend(&["llama3.2", "llama3.3:70b"]).await;
    let other = backend(&["llama3.2", "llama3.3:70b"]).await;
    let proxy = start(
        "",
        &[("gpu", &gpu), ("other", &other)],
        r#"models = { "llama3.2" = "gpu", "llama3.3:70b" = "gpu" }"#,
        "team-access",
        // sk-a belongs to "web".
        r#"{ tokens = { "sha256:a4a6d307ad00fa67176e1099fdbc4f4a09bb527a7f24718a5030f2f173d11f7f" = "web" }, teams = { "web" = ["llama3.2"] } }"#,
    );
    let web = [("authorization", "Bearer sk-a")];
    let url = |p: &str| format!("{}{p}", proxy.url);
    let r = send(
        http::Method::DELETE,
        &url("/api/%64elete"),
        &web,
        r#"{"name":"llama3.3:70b"}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send(
        http::Method::POST,
        &url("/api/chat"),
        &web,
        r#"{"model":"llama3.2","Model":"llama3.3:70b","messages":[],"stream":false}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let pinned = [
        ("authorization", "Bearer sk-a"),
        ("x-llamagate-backend", "other"),
    ];
    let r = post_with(&url("/api/chat"), &pinned, &chat("llama3.2", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with(&url("/api/signout"), &web, &serde_json::json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let posts = take_posts(&gpu);
    assert_eq!(posts.len(), 1, "only the allowed chat: {posts:?}");
    assert_eq!(posts[0].json()["model"], "llama3.2");
    assert!(other.take_requests().iter().all(|r| r.method == "GET"));
    assert!(gpu.requests().iter().all(|r| r.method != "DELETE"));
}
