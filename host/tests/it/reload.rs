//! Hot swap: a new plugin set replaces the old one without a restart and without
//! failing a request; a broken one never replaces a working one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

fn config(backend: &str, num_ctx: u32, plugin: &std::path::Path) -> String {
    format!(
        r#"
        [connections]
        a = "{backend}"
        [policy]
        models = {{ "llama3.2" = "a" }}
        defaults = {{ num_ctx = {num_ctx} }}
        [[plugins]]
        name = "second"
        path = "{}"
        "#,
        plugin.display()
    )
}

async fn num_ctx_seen(proxy: &Proxy, sim: &SimHandle) -> serde_json::Value {
    sim.take_requests();
    let r = post(
        &format!("{}/api/generate", proxy.url),
        &json!({"model":"llama3.2","prompt":"x","stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = sim
        .take_requests()
        .into_iter()
        .find(|r| r.path == "/api/generate")
        .unwrap();
    seen.json()["options"]["num_ctx"].clone()
}

/// Polls until `num_ctx` reaches the backend as `want`.
async fn wait_for_num_ctx(proxy: &Proxy, sim: &SimHandle, want: u32) -> Duration {
    let start = Instant::now();
    loop {
        if num_ctx_seen(proxy, sim).await == json!(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "reload to num_ctx {want} never happened:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn swaps_under_load_fail_no_request() {
    let sim = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    let path = write_temp("llamagate.toml", &config(&sim.url(), 1000, &hostile));
    let proxy = Proxy::start(&["--config", path.to_str().unwrap()]);
    assert_eq!(num_ctx_seen(&proxy, &sim).await, json!(1000));

    // Load: 8 clients sending streamed chats until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok, failed) = (
            format!("{}/api/chat", proxy.url),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = post(
                    &url,
                    &json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}),
                )
                .await;
                let done = r.status == 200 && r.lines().last().is_some_and(|l| l["done"] == true);
                if done {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Alternate the plugin between two different components (the first swap to
    // each compiles it) and change the default policy's config every time.
    let other = component("least-busy");
    let status_url = format!("{}/llamagate/status", proxy.admin_url());
    let (mut swap_times, mut took_ms) = (Vec::new(), Vec::new());
    for (i, num_ctx) in [2000, 3000, 4000, 5000].into_iter().enumerate() {
        let plugin = if i % 2 == 0 { &other } else { &hostile };
        std::fs::write(&path, config(&sim.url(), num_ctx, plugin)).unwrap();
        swap_times.push(wait_for_num_ctx(&proxy, &sim, num_ctx).await);
        took_ms.push(get(&status_url).await.json()["last_reload"]["took_ms"].as_u64());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "4 swaps under load: {ok} requests ok, {failed} failed; swaps took {took_ms:?} ms \
         (read, compile, init, swap); seen by clients after {swap_times:?} (file-watch delay included)"
    );
    assert_eq!(failed, 0);
    assert!(ok > 20, "the load ran ({ok} requests)");
    let status = get(&status_url).await.json();
    assert_eq!(status["generation"], 5, "{status}");
    assert_eq!(status["last_reload"]["ok"], true);
}

#[tokio::test]
async fn a_broken_replacement_leaves_the_old_policy_live() {
    let sim = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    // A private copy of the plugin, so this test can break it.
    let plugin = write_temp("policy.wasm", "");
    std::fs::copy(&hostile, &plugin).unwrap();
    let path = write_temp("llamagate.toml", &config(&sim.url(), 1000, &plugin));
    let proxy = Proxy::start(&["--config", path.to_str().unwrap()]);
    assert_eq!(num_ctx_seen(&proxy, &sim).await, json!(1000));

    // A plugin file that is not a component: the reload fails, 1000 stays.
    std::fs::write(&plugin, b"\0asm garbage").unwrap();
    std::fs::write(&path, config(&sim.url(), 2000, &plugin)).unwrap();
    let status_url = format!("{}/llamagate/status", proxy.admin_url());
    let start = Instant::now();
    let status = loop {
        let status = get(&status_url).await.json();
        if status["last_reload"]["ok"] == false {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failed reload reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = status["last_reload"]["message"].as_str().unwrap();
    assert!(
        message.contains("second") && message.contains("not a valid WebAssembly component"),
        "{message}"
    );
    assert_eq!(status["generation"], 1);
    assert_eq!(
        num_ctx_seen(&proxy, &sim).await,
        json!(1000),
        "the old policy still serves"
    );

    // A plugin whose init refuses its config: also not swapped in, message shown.
    std::fs::copy(&hostile, &plugin).unwrap();
    std::fs::write(
        &path,
        config(&sim.url(), 3000, &plugin) + "config = { fail_init = \"no teams configured\" }\n",
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let status = get(&status_url).await.json();
        if status["last_reload"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no teams configured")
        {
            assert_eq!(status["generation"], 1);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "init failure not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(num_ctx_seen(&proxy, &sim).await, json!(1000));

    // Fixed: the next reload goes through.
    std::fs::write(&path, config(&sim.url(), 4000, &plugin)).unwrap();
    wait_for_num_ctx(&proxy, &sim, 4000).await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads() {
    let sim = backend(&["llama3.2"]).await;
    let hostile = component("hostile-fixture");
    // `watch = false`: only the signal reloads.
    let path = write_temp(
        "llamagate.toml",
        &format!("watch = false\n{}", config(&sim.url(), 1000, &hostile)),
    );
    let proxy = Proxy::start(&["--config", path.to_str().unwrap()]);
    std::fs::write(
        &path,
        format!("watch = false\n{}", config(&sim.url(), 2000, &hostile)),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(num_ctx_seen(&proxy, &sim).await, json!(1000), "not watched");
    proxy.signal("HUP");
    wait_for_num_ctx(&proxy, &sim, 2000).await;
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_lets_a_stream_in_flight_finish() {
    use http_body_util::BodyExt;
    let sim = sim::spawn(SimOptions {
        chunks: 12,
        chunk_delay: Duration::from_millis(150),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let mut proxy = Proxy::start(&["--proxy", &format!("llama3.2={}", sim.url())]);
    let response = open(
        http::Method::POST,
        &format!("{}/api/chat", proxy.url),
        &[],
        json!({"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}).to_string(),
    )
    .await;
    let mut body = response.into_body();
    let mut text = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .to_vec();
    proxy.signal("TERM");
    // During the grace period, a new client is turned away at once (refused,
    // or a 503), not left hanging in an open listener's backlog.
    let addr = proxy.url.trim_start_matches("http://").to_string();
    let turned_away = Instant::now() + Duration::from_secs(1);
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /api/version HTTP/1.1\r\nhost: x\r\n\r\n")
                .await?;
            let mut answer = vec![0; 64];
            let n = s.read(&mut answer).await?;
            std::io::Result::Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
        };
        match tokio::time::timeout(Duration::from_millis(300), attempt).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 503") => break,
            other => assert!(
                Instant::now() < turned_away,
                "a new connection during the grace period was not refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        proxy.alive(),
        "still in its grace period, finishing the stream"
    );
    while let Some(frame) = body.frame().await {
        text.extend_from_slice(
            &frame
                .expect("the stream is not cut")
                .into_data()
                .unwrap_or_default(),
        );
    }
    let last = String::from_utf8(text)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(last.contains("\"done\":true"), "{last}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.alive() {
        assert!(
            Instant::now() < deadline,
            "llamagate did not exit after the stream ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
