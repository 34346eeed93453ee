//! The Python example plugin (componentize-py), through the real proxy.
//!
//! `examples/team-access-py` is the per-team access policy written in Python and
//! built into a component with `componentize-py`: proof that the WIT contract
//! does not assume Rust. These tests build it (once, into
//! `target/plugins/team_access_py.wasm`, skipped when newer than its sources),
//! run it behind the default policy in front of simulated backends, and run its
//! native unit tests (`test_policy.py`).
//!
//! Needs `LLAMAGATE_PYTHON`, a Python whose directory holds `componentize-py`:
//! `.ci/test` makes such a virtualenv. Without it the tests are skipped locally,
//! but fail in CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use http::Method;
use serde_json::{json, Value};

use crate::common::*;

/// The example's source directory.
fn example_dir() -> PathBuf {
    workspace().join("examples/team-access-py")
}

/// `LLAMAGATE_PYTHON`, or `None` (skip) when it is unset outside CI.
fn python() -> Option<PathBuf> {
    match std::env::var_os("LLAMAGATE_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set LLAMAGATE_PYTHON to a virtualenv's python with componentize-py"
            );
            eprintln!(
                "skipped: set LLAMAGATE_PYTHON to a virtualenv's python with componentize-py \
                 installed (bash .ci/test does)"
            );
            None
        }
    }
}

/// `componentize-py` next to `LLAMAGATE_PYTHON` (not canonicalised: a venv's
/// `python` is a symlink out of the venv), or `None` (skip) outside CI.
fn componentize_py() -> Option<PathBuf> {
    let python = python()?;
    let exe = if cfg!(windows) {
        "componentize-py.exe"
    } else {
        "componentize-py"
    };
    let path = python.parent().unwrap_or(Path::new(".")).join(exe);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install componentize-py next to LLAMAGATE_PYTHON; {} is missing",
        path.display()
    );
    eprintln!(
        "skipped: {} is missing (pip install componentize-py into LLAMAGATE_PYTHON's virtualenv)",
        path.display()
    );
    None
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Builds the component once per test run, and not at all when it is newer
/// than every source (the Python files and the WIT contract).
fn python_component(componentize_py: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out_dir = workspace().join("target/plugins");
            let out = out_dir.join("team_access_py.wasm");
            // The example targets WIT 0.1.0 on purpose: it proves 0.1.0 plugins keep working.
            let mut sources = vec![workspace().join("wit/v0.1.0/policy.wit")];
            for entry in std::fs::read_dir(example_dir()).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "py") {
                    sources.push(path);
                }
            }
            let newest_source = sources.iter().filter_map(|p| modified(p)).max();
            if let (Some(built), Some(source)) = (modified(&out), newest_source) {
                if built > source {
                    return out;
                }
            }
            std::fs::create_dir_all(&out_dir).unwrap();
            // Written aside and renamed, so a concurrent run never loads half a file.
            let partial = out_dir.join(format!("team_access_py.wasm.{}", std::process::id()));
            let started = Instant::now();
            let output = Command::new(componentize_py)
                .current_dir(example_dir())
                .arg("-d")
                .arg(workspace().join("wit/v0.1.0"))
                .args(["-w", "policy-plugin", "componentize", "app", "-o"])
                .arg(&partial)
                .output()
                .expect("running componentize-py");
            if !output.status.success() {
                let _ = std::fs::remove_file(&partial);
            }
            assert!(
                output.status.success(),
                "componentize-py failed:\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::rename(&partial, &out).unwrap();
            eprintln!(
                "built {} ({} bytes) in {:.1?}",
                out.display(),
                std::fs::metadata(&out).unwrap().len(),
                started.elapsed()
            );
            out
        })
        .clone()
}

/// The tokens `sk-a` and `sk-root`, written as the README says: `printf %s sk-a | sha256sum`.
const TEAMS: &str = r#"{ tokens = { "sha256:a4a6d307ad00fa67176e1099fdbc4f4a09bb527a7f24718a5030f2f173d11f7f" = "team-a", "sha256:8649dc2abf84574467821d2b401f14b2a47bdba971a08fb753f871fe836ce048" = "admins" }, teams = { "team-a" = ["llama3.2", "qwen2.5:14b"], "admins" = ["*"] } }"#;
/// `sk-root`'s hash, and `sk-new`'s, for the reload that swaps one token for another.
const ROOT_HASH: &str = "8649dc2abf84574467821d2b401f14b2a47bdba971a08fb753f871fe836ce048";
const NEW_HASH: &str = "8da9a7efee51ce8615fe40f891bb33ed0da172afab224ae4c3f434dedbdfcfe3";

fn config(a: &SimHandle, b: &SimHandle, wasm: &Path, plugin_config: &str) -> String {
    format!(
        r#"
        [connections]
        a = "{}"
        b = "{}"

        [policy]
        list_aliases = true
        aliases = {{ "gpt-4o" = "llama3.2" }}
        [policy.models]
        "llama3.2" = "a"
        "all-minilm" = "a"
        "qwen2.5:14b" = "b"
        "mistral" = "b"

        [[plugins]]
        name = "team-access-py"
        path = "{}"
        config = {plugin_config}
        "#,
        a.url(),
        b.url(),
        wasm.display()
    )
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false})
}

fn names(listing: &Value, list: &str, key: &str) -> Vec<String> {
    let mut names: Vec<String> = listing[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {listing}"))
        .iter()
        .map(|m| m[key].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Polls `/llamagate/status` until `done` holds.
async fn wait_for_status(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = get(url).await.json();
        if done(&status) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "reload not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn python_plugin_authenticates_authorizes_and_filters_per_team() {
    let Some(componentize_py) = componentize_py() else {
        return;
    };
    let wasm = tokio::task::spawn_blocking(move || python_component(&componentize_py))
        .await
        .unwrap();
    let a = backend(&["llama3.2", "all-minilm"]).await;
    let b = backend(&["qwen2.5:14b", "mistral"]).await;

    let config_path = write_temp("llamagate.toml", &config(&a, &b, &wasm, TEAMS));
    let start_path = config_path.clone();
    // Compiling the ~18 MB interpreter component takes Cranelift seconds.
    let proxy = tokio::task::spawn_blocking(move || {
        Proxy::start(&["--config", start_path.to_str().unwrap()])
    })
    .await
    .unwrap();
    let url = |path: &str| format!("{}{path}", proxy.url);
    let team_a = [("authorization", "Bearer sk-a"), ("x-trace", "t-1")];
    let admin = [("authorization", "Bearer sk-root")];

    // No token, a foreign scheme, an unknown token, one a character off a real
    // one, the configured hash itself: 401 with a Bearer challenge.
    let hash = format!("Bearer sha256:{ROOT_HASH}");
    for headers in [
        &[][..],
        &[("authorization", "Basic dXNlcjpwdw==")][..],
        &[("authorization", "Bearer sk-nope")][..],
        &[("authorization", "Bearer sk-b")][..],
        &[("authorization", "Bearer sk-roop")][..],
        &[("authorization", hash.as_str())][..],
    ] {
        let r = post_with(&url("/api/chat"), headers, &chat("llama3.2")).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{headers:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("bearer token"));
    }

    // A model outside the team's list: 403, in the API's own error shape.
    let r = post_with(&url("/api/chat"), &team_a, &chat("mistral")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": "team \"team-a\" may not use model \"mistral\""})
    );
    let r = post_with(&url("/v1/chat/completions"), &team_a, &chat("llama3.2:1b")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("may not use model"));
    assert!(
        a.requests()
            .iter()
            .chain(b.requests().iter())
            .all(|r| r.method != "POST"),
        "rejected requests never reach a backend"
    );

    // Allowed, under any spelling Ollama accepts, and through an alias (the
    // default policy renames `gpt-4o` before this plugin sees the request).
    for model in ["llama3.2", "LLAMA3.2:latest", "library/llama3.2", "gpt-4o"] {
        let r = post_with(&url("/api/chat"), &team_a, &chat(model)).await;
        assert_eq!(r.status, 200, "{model}: {}\n{}", r.text(), proxy.logs());
    }
    let r = post_with(&url("/api/chat"), &team_a, &chat("qwen2.5:14b")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with(&url("/api/chat"), &admin, &chat("mistral")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The token stays at the gateway; other headers pass; routing is the default policy's.
    let seen_a: Vec<_> = a
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let seen_b: Vec<_> = b
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!((seen_a.len(), seen_b.len()), (4, 2));
    for r in seen_a.iter().chain(seen_b.iter()) {
        assert_eq!(r.header("authorization"), None, "{:?}", r.headers);
    }
    assert!(seen_a.iter().all(|r| r.header("x-trace") == Some("t-1")));
    assert!(seen_a.iter().all(|r| r.json()["model"] != "gpt-4o"));

    // Listings show each team its own models (and aliases of them).
    let tags = url("/api/tags");
    let r = send(Method::GET, &tags, &[("authorization", "Bearer sk-a")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        names(&r.json(), "models", "name"),
        ["gpt-4o:latest", "llama3.2:latest", "qwen2.5:14b"]
    );
    let r = send(Method::GET, &tags, &admin, "").await;
    assert_eq!(
        names(&r.json(), "models", "name"),
        [
            "all-minilm:latest",
            "gpt-4o:latest",
            "llama3.2:latest",
            "mistral:latest",
            "qwen2.5:14b"
        ]
    );
    let r = send(Method::GET, &tags, &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = send(
        Method::GET,
        &url("/v1/models"),
        &[("authorization", "Bearer sk-a")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        names(&r.json(), "data", "id"),
        ["gpt-4o:latest", "llama3.2:latest", "qwen2.5:14b"]
    );

    // An operator edits the tokens: the reload reuses the compiled component and
    // runs `init` on fresh instances. A config `init` refuses (its WIT `result`
    // error) is not swapped in; the message is shown and the old policy serves on.
    let status_url = format!("{}/llamagate/status", proxy.admin_url());
    std::fs::write(
        &config_path,
        config(&a, &b, &wasm, r#"{ teams = { "team-a" = ["llama3.2"] } }"#),
    )
    .unwrap();
    let status = wait_for_status(&status_url, |s| {
        s["last_reload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`tokens` is missing"))
    })
    .await;
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    assert_eq!(status["generation"], 1, "{status}");
    let r = post_with(&url("/api/chat"), &team_a, &chat("llama3.2")).await;
    assert_eq!(r.status, 200, "the old policy still serves: {}", r.text());

    let with_new_token = TEAMS.replace(ROOT_HASH, NEW_HASH);
    assert_ne!(with_new_token, TEAMS);
    std::fs::write(&config_path, config(&a, &b, &wasm, &with_new_token)).unwrap();
    let status = wait_for_status(&status_url, |s| s["generation"] == 2).await;
    assert_eq!(status["last_reload"]["ok"], true, "{status}");
    eprintln!(
        "reload with a new Python plugin config took {} ms",
        status["last_reload"]["took_ms"]
    );
    let new = [("authorization", "Bearer sk-new")];
    let r = post_with(&url("/api/chat"), &new, &chat("mistral")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with(&url("/api/chat"), &admin, &chat("mistral")).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn python_policy_unit_tests_pass() {
    let Some(python) = python() else {
        return;
    };
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .current_dir(example_dir())
            .args(["-B", "test_policy.py"])
            .output()
    })
    .await
    .unwrap()
    .expect("running python");
    assert!(
        output.status.success(),
        "test_policy.py failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
