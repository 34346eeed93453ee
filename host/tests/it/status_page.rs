//! The status page on the admin endpoint, in a real browser (headless
//! chromium over DevTools): live values from two simulated backends appear,
//! change while the page stays open, and the admin key is asked for when one
//! is configured. A screenshot is saved as `target/artefacts/status-page.png`.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::browser::{chromium, Browser};
use crate::common::*;

/// How long the page may take to show something.
const SHOWN: Duration = Duration::from_secs(20);

/// The generated tokens a backend reported in an Ollama answer (its last line).
fn output_tokens(reply: &Reply) -> u64 {
    reply
        .lines()
        .iter()
        .filter_map(|l| l["eval_count"].as_u64())
        .next_back()
        .unwrap_or_else(|| panic!("no eval_count in {}", reply.text()))
}

/// Two backends (`gpu-a` serves llama3.2, `gpu-b` qwen2.5:14b, `gpu-b`'s URL
/// with a password in it), probed often; `extra` goes at the top of the file.
async fn fleet(extra: &str) -> (SimHandle, SimHandle, Proxy) {
    let a = sim::spawn(SimOptions {
        models: vec!["llama3.2".into()],
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let b = backend(&["qwen2.5:14b"]).await;
    let b_url = b.url().replacen("http://", "http://ops:pw-s3cret@", 1);
    let config = format!(
        "{extra}\nprobe_interval = \"200ms\"\n\
         [connections]\n\"gpu-a\" = \"{}\"\n\"gpu-b\" = \"{b_url}\"\n\
         [policy]\nmodels = {{ \"llama3.2\" = \"gpu-a\", \"qwen2.5:14b\" = \"gpu-b\" }}\n",
        a.url()
    );
    let proxy = Proxy::with_config(&config, &[]);
    (a, b, proxy)
}

/// Sends a streamed chat and returns the tokens it generated.
async fn chat(proxy: &Proxy, model: &str) -> u64 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    let r = post(&format!("{}/api/chat", proxy.url), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    output_tokens(&r)
}

/// The status document once it has counted `requests` finished requests.
async fn status_after(admin: &str, headers: &[(&str, &str)], requests: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(
            Method::GET,
            &format!("{admin}/llamagate/status"),
            headers,
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let doc = r.json();
        if doc["recent"]["requests"].as_u64() >= Some(requests) {
            return doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "{doc:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `document.querySelector(css).textContent`, as a JS expression.
fn text_of(css: &str) -> String {
    format!(
        "(document.querySelector({})?.textContent ?? null)",
        json!(css)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_status_carry_live_values_and_no_secret() {
    let (_a, _b, proxy) = fleet("").await;
    let admin = proxy.admin_url();
    // The page and its assets, with a strict policy.
    for (path, kind) in [
        ("/", "text/html"),
        ("/status", "text/html"),
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
    ] {
        let r = get(&format!("{admin}{path}")).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(get(&format!("{admin}/status.html")).await.status, 404);
    // Still there, and still not on the traffic port.
    for path in ["/livez", "/readyz", "/metrics", "/llamagate/status"] {
        assert_eq!(get(&format!("{admin}{path}")).await.status, 200, "{path}");
    }
    assert_ne!(get(&format!("{}/status.js", proxy.url)).await.status, 200);

    let out = chat(&proxy, "llama3.2").await;
    let missing = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model": "<img src=x>", "messages": []}),
    )
    .await;
    assert_eq!(missing.status, 404);
    let doc = status_after(&admin, &[], 2).await;
    let text = doc.to_string();
    assert!(
        !text.contains("pw-s3cret") && !text.contains("ops:"),
        "{text}"
    );
    assert!(
        doc["in_flight"].is_u64() && doc["now_ms"].is_u64(),
        "{doc:#}"
    );
    let llama = doc["recent"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "llama3.2:latest")
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(llama["output_tokens"].as_u64(), Some(out), "{doc:#}");
    let e = &doc["recent"]["errors_recent"][0];
    assert_eq!(
        (e["status"].as_u64(), e["model"].as_str()),
        (Some(404), Some("<img src=x>"))
    );
    assert!(e["id"].as_str().unwrap().starts_with("lg-"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_fleet_live_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let (_a, _b, proxy) = fleet("").await;
    let admin = proxy.admin_url();

    // Traffic: streamed answers to both backends (tokens counted), one error
    // whose model is markup a client sent.
    let mut out_a = chat(&proxy, "llama3.2").await;
    out_a += chat(&proxy, "llama3.2").await;
    let out_b = chat(&proxy, "qwen2.5:14b").await;
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &json!({"model": "<b id=\"injected\">x</b>", "messages": []}),
    )
    .await;
    assert_eq!(r.status, 404);
    let doc = status_after(&admin, &[], 4).await;
    let generation = doc["generation"].as_u64().unwrap();
    let first_plugin = doc["plugins"][0].as_str().unwrap().to_string();

    let mut browser = Browser::start(&chromium).await;
    browser
        .navigate(&format!("{admin}/status?interval=300"))
        .await;
    browser
        .wait_for("a first refresh", "document.body.dataset.refreshes", SHOWN)
        .await;
    for id in ["gpu-a", "gpu-b"] {
        let state = browser
            .eval(&text_of(&format!("tr[data-backend=\"{id}\"] .state")))
            .await;
        assert_eq!(state, "up", "{id}");
    }
    let output = |model: &str| text_of(&format!("tr[data-model=\"{model}\"] .output"));
    assert_eq!(
        browser.eval(&output("llama3.2:latest")).await,
        out_a.to_string()
    );
    assert_eq!(
        browser.eval(&output("qwen2.5:14b")).await,
        out_b.to_string()
    );
    assert_eq!(
        browser.eval(&text_of("#generation")).await,
        generation.to_string()
    );
    assert_eq!(
        browser
            .eval(&text_of("#plugins li"))
            .await
            .as_str()
            .map(|s| s.starts_with(&first_plugin)),
        Some(true)
    );
    // The error, its model shown as text, not markup.
    assert_eq!(
        browser
            .eval(&text_of("#recent-errors tbody tr .model-name"))
            .await,
        "<b id=\"injected\">x</b>"
    );
    assert_eq!(
        browser
            .eval(&text_of("#recent-errors tbody tr .status"))
            .await,
        "404"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('injected') === null")
            .await,
        true
    );
    // A model the backend loaded, with its GPU memory (from the probes).
    browser
        .wait_for(
            "llama3.2 loaded on gpu-a",
            &text_of("tr[data-backend=\"gpu-a\"] li[data-model=\"llama3.2:latest\"] .size-vram"),
            SHOWN,
        )
        .await;
    let html = browser.eval("document.documentElement.outerHTML").await;
    assert!(!html.as_str().unwrap().contains("pw-s3cret"));

    // While the page stays open: more tokens, and a reload.
    out_a += chat(&proxy, "llama3.2").await;
    proxy.signal("HUP");
    browser
        .wait_for(
            "the new token count",
            &format!(
                "{} === {}",
                output("llama3.2:latest"),
                json!(out_a.to_string())
            ),
            SHOWN,
        )
        .await;
    browser
        .wait_for(
            "the new generation",
            &format!(
                "{} === {} && {}.startsWith('ok')",
                text_of("#generation"),
                json!((generation + 1).to_string()),
                text_of("#last-reload")
            ),
            SHOWN,
        )
        .await;
    let refreshes = browser
        .eval("Number(document.body.dataset.refreshes)")
        .await;
    assert!(refreshes.as_u64() >= Some(2), "{refreshes}");

    let shot = workspace().join("target/artefacts/status-page.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_admin_key_and_sends_it() {
    let Some(chromium) = chromium() else { return };
    let (_a, _b, proxy) = fleet("admin_key = \"page-k3y-123\"").await;
    let admin = proxy.admin_url();
    // The page itself needs no key; the status does.
    assert_eq!(get(&format!("{admin}/status")).await.status, 200);
    assert_eq!(get(&format!("{admin}/llamagate/status")).await.status, 401);

    let mut browser = Browser::start(&chromium).await;
    browser.navigate(&format!("{admin}/?interval=300")).await;
    browser
        .wait_for(
            "the key form",
            "!document.getElementById('login').hidden && document.getElementById('status').hidden",
            SHOWN,
        )
        .await;
    let submit = |key: &str| {
        format!(
            "document.getElementById('key').value = {}; \
             document.getElementById('login').requestSubmit(); true",
            json!(key)
        )
    };
    browser.eval(&submit("wrong-key")).await;
    browser
        .wait_for(
            "the refusal",
            &format!("({}).includes('refused')", text_of("#login-message")),
            SHOWN,
        )
        .await;
    browser.eval(&submit("page-k3y-123")).await;
    browser
        .wait_for(
            "the status after the key",
            &format!(
                "document.body.dataset.refreshes && {} === 'up'",
                text_of("tr[data-backend=\"gpu-a\"] .state")
            ),
            SHOWN,
        )
        .await;
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('llamagate-admin-key')")
            .await,
        "page-k3y-123"
    );
    let html = browser.eval("document.documentElement.outerHTML").await;
    assert!(!html.as_str().unwrap().contains("page-k3y-123"));
}
