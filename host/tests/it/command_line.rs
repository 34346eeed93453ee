//! The command line as a new user meets it: what `--level` shows, what each
//! subcommand's help lists, and flags that contradict each other.

use serde_json::json;

use crate::common::*;

/// Runs the binary to completion; returns success and stdout + stderr.
fn llamagate(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .args(args)
        .env_remove("LLAMAGATE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn level_debug_is_llamagate_debug_not_cranelift() {
    let sim = backend(&["llama3.2"]).await;
    let route = format!("llama3.2={}", sim.url());
    let proxy = Proxy::start_at_level("debug", &["--proxy", &route]);
    let r = post(
        &format!("{}/api/generate", proxy.url),
        &json!({"model":"llama3.2","prompt":"x","stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !proxy.logs().contains("forwarded") {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = proxy.logs();
    let lines = logs.lines().count();
    // Today's dependencies at debug: ~30,000 lines of Cranelift timings and
    // object sections while the default policy compiles.
    assert!(
        lines < 200,
        "{lines} lines at --level debug; first ones:\n{}",
        logs.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    for noise in ["timing:", "cranelift", "wasmtime", "ignoring section"] {
        assert!(!logs.contains(noise), "{noise:?} at --level debug:\n{logs}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("DEBUG") && l.contains("forwarded")),
        "llamagate's own debug lines are shown:\n{logs}"
    );
}

#[test]
fn subcommand_help_lists_only_what_it_uses() {
    let (ok, check) = llamagate(&["plugin", "check", "--help"]);
    assert!(ok, "{check}");
    for gateway_flag in ["--listen", "--config", "--proxy", "--record"] {
        assert!(
            !check.contains(gateway_flag),
            "plugin check --help: {check}"
        );
    }
    assert!(
        check.contains("--with-config") && check.contains("--level"),
        "{check}"
    );

    let (ok, test) = llamagate(&["plugin", "test", "--help"]);
    assert!(ok, "{test}");
    assert!(
        test.contains("--config") && test.contains("--requests"),
        "{test}"
    );
    assert!(!test.contains("--listen"), "plugin test --help: {test}");

    let (ok, demo) = llamagate(&["demo", "--help"]);
    assert!(ok, "{demo}");
    assert!(
        demo.contains("127.0.0.1:11434"),
        "demo's own default: {demo}"
    );
    assert!(!demo.contains("0.0.0.0"), "demo --help: {demo}");
    assert!(!demo.contains("--config"), "demo --help: {demo}");

    let (ok, sim) = llamagate(&["sim", "--help"]);
    assert!(ok, "{sim}");
    assert!(sim.contains("127.0.0.1:11435"), "sim's own default: {sim}");
    assert!(
        !sim.contains("0.0.0.0") && !sim.contains("--config"),
        "{sim}"
    );

    let (ok, keys) = llamagate(&["keys", "create", "--help"]);
    assert!(ok, "{keys}");
    for flag in ["--scope", "--model", "--expires", "--config"] {
        assert!(
            keys.contains(flag),
            "{flag} missing from keys create --help: {keys}"
        );
    }
    for gateway_flag in ["--listen", "--proxy", "--record"] {
        assert!(!keys.contains(gateway_flag), "keys create --help: {keys}");
    }

    // The gateway keeps every gollamas flag.
    let (ok, serve) = llamagate(&["--help"]);
    assert!(ok, "{serve}");
    for flag in [
        "--listen",
        "--proxy",
        "--proxies",
        "--connections",
        "--aliases",
        "--alias",
        "--list-aliases",
        "--level",
        "--config",
        "[default: 0.0.0.0:11434]",
    ] {
        assert!(serve.contains(flag), "{flag} missing from --help: {serve}");
    }
}

/// Starts llamagate expecting it to refuse; returns what it printed.
fn refused(args: &[&str], env: &[(&str, String)]) -> String {
    match Proxy::try_start_with_env(args, env) {
        Ok(_) => panic!("llamagate started with {args:?} {env:?}"),
        Err(logs) => logs,
    }
}

#[tokio::test]
async fn a_model_or_connection_given_twice_is_refused_naming_both() {
    let a = backend(&["llama3.2"]).await;
    let b = backend(&["llama3.2"]).await;
    let (ua, ub) = (a.url(), b.url());
    let (pa, pb) = (format!("llama3.2={ua}"), format!("llama3.2={ub}"));

    let out = refused(&["--proxy", &pa, "--proxy", &pb], &[]);
    assert!(
        out.contains(&ua) && out.contains(&ub) && out.contains("given twice"),
        "{out}"
    );
    // Ollama's name rules: `llama3.2:latest` is `llama3.2`.
    let latest = format!("llama3.2:latest={ub}");
    let out = refused(&["--proxy", &pa, "--proxy", &latest], &[]);
    assert!(out.contains(&ua) && out.contains(&ub), "{out}");
    // A list, and a list from gollamas' environment variable against a flag.
    let out = refused(&["--proxies", &format!("{pa},{pb}")], &[]);
    assert!(out.contains(&ua) && out.contains(&ub), "{out}");
    let out = refused(&["--proxy", &pb], &[("GOLLAMAS_PROXIES", pa.clone())]);
    assert!(
        out.contains(&ua) && out.contains(&ub) && out.contains("GOLLAMAS_PROXIES"),
        "{out}"
    );
    let out = refused(
        &[
            "--connection",
            &format!("gpu={ua}"),
            "--connection",
            &format!("gpu={ub}"),
        ],
        &[],
    );
    assert!(out.contains(&ua) && out.contains(&ub), "{out}");

    // The config file against a flag.
    let file = write_temp(
        "llamagate.toml",
        &format!("[connections]\ngpu-01 = \"{ua}\"\n[policy.models]\n\"llama3.2\" = \"gpu-01\"\n"),
    );
    let config = file.to_str().unwrap();
    let out = refused(&["--config", config, "--proxy", &pb], &[]);
    assert!(
        out.contains("gpu-01") && out.contains(&ub) && out.contains("[policy.models]"),
        "{out}"
    );
    let out = refused(
        &["--config", config, "--connection", &format!("gpu-01={ub}")],
        &[],
    );
    assert!(out.contains(&ua) && out.contains(&ub), "{out}");

    // The same thing twice is no conflict.
    let proxy = Proxy::start(&["--proxy", &pa, "--proxy", &format!("{pa}/")]);
    let r = post(
        &format!("{}/api/generate", proxy.url),
        &json!({"model":"llama3.2","prompt":"x","stream":false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}
