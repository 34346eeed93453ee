//! Browser cross-origin requests: answered as Ollama answers them, decided
//! by llamagate, and never refused again by a backend for their `Origin`.

use http::Method;
use serde_json::json;

use crate::common::*;

fn config(sim: &SimHandle, top: &str) -> String {
    format!(
        "{top}\n[connections]\nb1 = \"{}\"\n[policy]\nmodels = {{ \"llama3.2\" = \"b1\" }}\n",
        sim.url()
    )
}

/// Requests the backend saw other than probes.
fn traffic(sim: &SimHandle) -> Vec<llamagate_sim::Recorded> {
    sim.requests()
        .into_iter()
        .filter(|r| {
            !r.header("user-agent")
                .is_some_and(|u| u.starts_with("llamagate-probe/"))
        })
        .collect()
}

const CHAT: &str =
    r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}"#;

#[tokio::test]
async fn a_preflight_from_localhost_is_answered_without_a_backend() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(&config(&sim, ""), &[]);
    let r = send(
        Method::OPTIONS,
        &format!("{}/api/chat", proxy.url),
        &[
            ("origin", "http://localhost:5173"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type,authorization",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    let methods = r.header("access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = r.header("access-control-allow-headers").unwrap();
    for h in [
        "Authorization",
        "Content-Type",
        "X-Stainless-Os",
        "X-Api-Key",
    ] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert_eq!(r.header("access-control-max-age"), Some("43200"));
    assert!(r.text().is_empty());
    assert!(traffic(&sim).is_empty(), "{:?}", traffic(&sim));
}

#[tokio::test]
async fn an_allowed_origin_reaches_a_backend_that_would_refuse_it() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(
        &config(&sim, r#"origins = ["https://chat.example.com"]"#),
        &[],
    );
    // The simulated Ollama, like Ollama, refuses this origin itself.
    let direct = send(
        Method::POST,
        &format!("{}/api/chat", sim.url()),
        &[("origin", "https://chat.example.com")],
        CHAT,
    )
    .await;
    assert_eq!(direct.status, 403);

    for (path, body) in [
        ("/api/chat", CHAT.to_string()),
        (
            "/v1/chat/completions",
            json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true})
                .to_string(),
        ),
    ] {
        let r = send(
            Method::POST,
            &format!("{}{path}", proxy.url),
            &[("origin", "https://chat.example.com")],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://chat.example.com")
        );
        assert!(r.headers.get_all("vary").iter().any(|v| v == "Origin"));
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("X-Request-Id")
        );
    }
    // Those that came through llamagate (the direct one has no request id).
    let seen: Vec<_> = traffic(&sim)
        .into_iter()
        .filter(|r| r.header("x-request-id").is_some())
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for request in seen {
        assert_eq!(request.header("origin"), None, "{request:?}");
    }
}

#[tokio::test]
async fn an_unknown_origin_is_refused_before_any_policy_or_backend() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(
        &config(
            &sim,
            r#"origins = ["https://chat.example.com", "http://*.lan:8080"]"#,
        ),
        &[],
    );
    for origin in [
        "https://evil.com",
        "https://chat.example.com.evil.com",
        "https://evil.com/https://chat.example.com",
        "http://localhost.evil.com",
        "chrome-extension://abcdefgh",
        "null",
        "http://gpu.lan:8081",
    ] {
        for method in [Method::OPTIONS, Method::POST, Method::GET] {
            let r = send(
                method.clone(),
                &format!("{}/api/chat", proxy.url),
                &[("origin", origin)],
                CHAT,
            )
            .await;
            assert_eq!(r.status, 403, "{method} from {origin}: {}", r.text());
            assert!(r.text().is_empty());
            assert_eq!(r.header("access-control-allow-origin"), None);
        }
    }
    // A wildcard entry allows what it says.
    let r = send(
        Method::POST,
        &format!("{}/api/chat", proxy.url),
        &[("origin", "http://gpu.lan:8080")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(traffic(&sim).len(), 1);
}

#[tokio::test]
async fn same_origin_and_origin_less_requests_pass_unmarked() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(&config(&sim, ""), &[]);
    let host = proxy.url.trim_start_matches("http://").to_string();
    for headers in [vec![], vec![("origin", proxy.url.as_str())]] {
        let r = send(
            Method::POST,
            &format!("{}/api/chat", proxy.url),
            &headers,
            CHAT,
        )
        .await;
        assert_eq!(r.status, 200, "{headers:?} {host}: {}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    // The backend never sees llamagate's own origin (it is not the backend's).
    assert!(traffic(&sim).iter().all(|r| r.header("origin").is_none()));
    // An OPTIONS without an Origin is no preflight: Ollama's router has no
    // such route.
    let r = send(Method::OPTIONS, &format!("{}/api/chat", proxy.url), &[], "").await;
    assert_ne!(r.status, 204);
}

#[tokio::test]
async fn a_preflight_needs_no_key_but_the_request_does() {
    let sim = backend(&["llama3.2"]).await;
    let team = component("team-access");
    let proxy = Proxy::with_config(
        &format!(
            "{}[[plugins]]\npath = \"{}\"\n[plugins.config]\ntokens = {{ \"tok-a\" = \"team-a\" }}\nteams = {{ \"team-a\" = [\"llama3.2\"] }}\n",
            config(&sim, ""),
            team.display()
        ),
        &[],
    );
    let url = format!("{}/api/chat", proxy.url);
    let origin = ("origin", "http://localhost:3000");
    let r = send(Method::OPTIONS, &url, &[origin], "").await;
    assert_eq!(r.status, 204);
    // The browser's request itself still meets the policy.
    let r = send(Method::POST, &url, &[origin], CHAT).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000"),
        "a refusal the page cannot read looks like a network error"
    );
    let r = send(
        Method::POST,
        &url,
        &[origin, ("authorization", "Bearer tok-a")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn origins_come_from_flags_and_ollamas_variable_and_are_checked() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let any = Proxy::start(&["--proxy", &route, "--origins", "*"]);
    let r = send(
        Method::POST,
        &format!("{}/api/chat", any.url),
        &[("origin", "https://anywhere.example")],
        CHAT,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    let env = Proxy::start_with_env(
        &["--proxy", &route],
        &[(
            "OLLAMA_ORIGINS",
            "https://a.example,https://b.example".into(),
        )],
    );
    for (origin, status) in [("https://b.example", 200), ("https://c.example", 403)] {
        let r = send(
            Method::POST,
            &format!("{}/api/chat", env.url),
            &[("origin", origin)],
            CHAT,
        )
        .await;
        assert_eq!(r.status, status, "{origin}");
    }

    // Ollama would not start with an origin that has no scheme: neither does llamagate.
    let refused = Proxy::try_start(&["--proxy", &route, "--origins", "example.com"])
        .err()
        .expect("must not start");
    assert!(
        refused.contains("origins") && refused.contains("example.com"),
        "{refused}"
    );
}
