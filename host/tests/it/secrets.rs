//! No secrets out: the status endpoint needs loopback or the admin key, and
//! neither it nor the log shows backend passwords, the admin key, or the text of
//! a config line that failed to parse; `--record` keeps its file private.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::common::*;

const PASSWORD: &str = "s3cr3t-pw";
const ADMIN_KEY: &str = "adm-key-4711";

/// A config routing llama3.2 to `sim` through a URL carrying credentials.
fn config(sim: &SimHandle, top: &str) -> String {
    format!(
        "{top}\n[connections]\na = \"http://admin:{PASSWORD}@{}\"\n[policy]\nmodels = {{ \"llama3.2\" = \"a\" }}\n",
        sim.addr()
    )
}

async fn status(proxy: &Proxy, authorization: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    send(
        Method::GET,
        &format!("{}/llamagate/status", proxy.admin_url()),
        &headers,
        Bytes::new(),
    )
    .await
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, ADMIN_KEY, "admin:"] {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

#[tokio::test]
async fn status_hides_backend_credentials_and_they_reach_the_backend() {
    let sim = backend(&["llama3.2"]).await;
    let proxy = Proxy::with_config(&config(&sim, ""), &[]);

    // Loopback, no admin key configured: allowed.
    let r = status(&proxy, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_secret("status", &r.text());
    assert_eq!(
        r.json()["backends"][0]["url"],
        format!("http://{}", sim.addr())
    );

    // The credentials go to the backend as Basic auth, instead of the client's
    // own Authorization (meant for llamagate's plugins).
    let r = post_with(
        &format!("{}/api/generate", proxy.url),
        &[("authorization", "Bearer client-token")],
        &json!({"model":"llama3.2","prompt":"x","stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = sim.requests();
    let generate = seen.iter().find(|r| r.path == "/api/generate").unwrap();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    assert_eq!(
        generate.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert!(
        !generate
            .headers
            .iter()
            .any(|(_, v)| v.contains("client-token")),
        "{:?}",
        generate.headers
    );
    // Probes carry them too (else a guarded backend would look down).
    let probe = seen.iter().find(|r| r.path == "/api/tags").unwrap();
    assert!(probe.header("authorization").is_some());

    let logs = proxy.logs();
    assert!(logs.contains("backend"), "{logs}");
    assert_no_secret("the log", &logs);
}

#[tokio::test]
async fn the_admin_key_is_required_when_configured() {
    let sim = backend(&["llama3.2"]).await;
    let key_file = write_temp("admin.key", &format!("{ADMIN_KEY}\n"));
    let from_file = format!("admin_key_file = {:?}", key_file.to_str().unwrap());
    let with_key = Proxy::with_config(&config(&sim, &format!("admin_key = \"{ADMIN_KEY}\"")), &[]);
    let with_file = Proxy::with_config(&config(&sim, &from_file), &[]);
    let path = write_temp("llamagate.toml", &config(&sim, ""));
    let with_env = Proxy::start_with_env(
        &["--config", path.to_str().unwrap()],
        &[("LLAMAGATE_ADMIN_KEY", ADMIN_KEY.to_string())],
    );
    for (how, proxy) in [
        ("admin_key", &with_key),
        ("admin_key_file", &with_file),
        ("env", &with_env),
    ] {
        for sent in [
            None,
            Some("Bearer wrong-key"),
            Some(&format!("Basic {ADMIN_KEY}")[..]),
        ] {
            let r = status(proxy, sent).await;
            assert_eq!(r.status, 401, "{how}, {sent:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{how}");
            assert_no_secret(how, &r.text());
        }
        let r = status(proxy, Some(&format!("Bearer {ADMIN_KEY}"))).await;
        assert_eq!(r.status, 200, "{how}: {}", r.text());
        assert!(r.json()["backends"].is_array());
        assert_no_secret(how, &r.text());
        assert_no_secret(&format!("{how}: the log"), &proxy.logs());
    }

    // The traffic port serves no status by default, whatever the caller sends;
    // `status = true` serves it there too, behind the same key.
    let bearer = format!("Bearer {ADMIN_KEY}");
    let on_traffic = |proxy: &Proxy| format!("{}/llamagate/status", proxy.url);
    let r = send(
        Method::GET,
        &on_traffic(&with_key),
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (404, "404 page not found"));
    let on = Proxy::with_config(
        &config(&sim, &format!("status = true\nadmin_key = \"{ADMIN_KEY}\"")),
        &[],
    );
    let r = send(Method::GET, &on_traffic(&on), &[], Bytes::new()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = send(
        Method::GET,
        &on_traffic(&on),
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_secret("status on the traffic port", &r.text());
}

/// Polls the status until a reload has failed; returns its message.
async fn failed_reload(proxy: &Proxy) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(proxy, None).await.json();
        if s["last_reload"]["ok"] == false {
            return s["last_reload"]["message"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no failed reload: {s}\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failed_reload_names_file_and_line_not_the_secret() {
    let sim = backend(&["llama3.2"]).await;
    let good = config(&sim, "watch = false");
    let path = write_temp("llamagate.toml", &good);
    let proxy = Proxy::start(&["--config", path.to_str().unwrap()]);
    let shown = path.display().to_string();

    let plugin = "[[plugins]]\npath = \"team.wasm\"\n";
    for (broken, line, secret) in [
        // A syntax error on the line holding a token (line 8).
        (
            format!(
                "{good}{plugin}config = {{ tokens = {{ \"sk-secret-123\" = \"team-a\" x }} }}\n"
            ),
            Some(8),
            "sk-secret-123",
        ),
        // Values of the wrong type or variant: serde's messages quote them.
        (
            format!("explain = \"sk-secret-456\"\n{good}"),
            Some(1),
            "sk-secret-456",
        ),
        (
            format!("{good}{plugin}on_failure = \"sk-secret-789\"\n"),
            Some(8),
            "sk-secret-789",
        ),
        // A duplicate key may be a token.
        (
            format!("{good}{plugin}config = {{ tokens = {{ sk_dup = 1, sk_dup = 2 }} }}\n"),
            Some(8),
            "sk_dup",
        ),
        // A bad backend URL is named without its password.
        (
            good.replace("http://admin:", "ftp://admin:"),
            None,
            PASSWORD,
        ),
    ] {
        std::fs::write(&path, &broken).unwrap();
        proxy.signal("HUP");
        let message = failed_reload(&proxy).await;
        eprintln!("reload failed: {message}");
        let expected = match line {
            Some(line) => format!("{shown}: line {line}, column"),
            None => "connections.a".to_string(),
        };
        assert!(message.contains(&expected), "{message}");
        assert!(
            !message.contains(secret),
            "status shows the secret: {message}"
        );
        assert_no_secret("the reload message", &message);
        let logs = proxy.logs();
        assert!(logs.contains(&expected), "{logs}");
        assert!(!logs.contains(secret), "the log shows the secret:\n{logs}");
        // Back to a good config, so the next failure is seen as new.
        std::fs::write(&path, &good).unwrap();
        proxy.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&proxy, None).await.json()["last_reload"]["ok"] != true {
            assert!(Instant::now() < deadline, "{}", proxy.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_no_secret("the log", &proxy.logs());
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn record_files_are_made_private_or_refused() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());

    // An existing world-readable file is re-moded to 0600.
    let existing = write_temp("traffic.jsonl", "");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let proxy = Proxy::start(&["--proxy", &route, "--record", existing.to_str().unwrap()]);
    assert_eq!(mode(&existing), 0o600, "{}", proxy.logs());
    drop(proxy);

    // A new file is created 0600.
    let fresh = existing.with_file_name("fresh.jsonl");
    let proxy = Proxy::start(&["--proxy", &route, "--record", fresh.to_str().unwrap()]);
    assert_eq!(mode(&fresh), 0o600);
    drop(proxy);

    // A symlink is refused (it might point at a file others can read), and its
    // target is left alone.
    let target = write_temp("target.jsonl", "");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = target.with_file_name("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let logs = Proxy::try_start(&["--proxy", &route, "--record", link.to_str().unwrap()])
        .err()
        .expect("must not start on a symlink");
    assert!(
        logs.contains("--record") && logs.contains("symbolic link"),
        "{logs}"
    );
    assert_eq!(mode(&target), 0o644);

    // A file of another user cannot be made private (its owner can read it).
    let foreign = write_temp("foreign.jsonl", "");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o644)).unwrap();
    match std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)) {
        Ok(()) => {
            let logs =
                Proxy::try_start(&["--proxy", &route, "--record", foreign.to_str().unwrap()])
                    .err()
                    .expect("must not start on another user's file");
            assert!(logs.contains("belongs to uid 65534"), "{logs}");
        }
        Err(e) => eprintln!("not root ({e}): the foreign-owner case is not tried"),
    }

    // A directory is no file to record to.
    let dir = existing.parent().unwrap();
    let logs = Proxy::try_start(&["--proxy", &route, "--record", dir.to_str().unwrap()])
        .err()
        .expect("must not start on a directory");
    assert!(logs.contains("not a regular file"), "{logs}");
}
