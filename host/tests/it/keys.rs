//! API keys in the default policy (`[policy.keys]`) and `llamagate keys`:
//! every rule tried from the side of a client that wants around it.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use llamagate_sdk::keys::sha256_hex;
use serde_json::json;

use crate::common::*;

const APP: &str = "lg_app0000000000000000000000000000";
const ALIAS: &str = "lg_alias000000000000000000000000000";
const OPS: &str = "lg_ops0000000000000000000000000000";
const ROOT: &str = "lg_root000000000000000000000000000";
const OLD: &str = "lg_old0000000000000000000000000000";
const GONE: &str = "lg_gone000000000000000000000000000";
const LATER: &str = "lg_later00000000000000000000000000";

fn hash(key: &str) -> String {
    format!("sha256:{}", sha256_hex(key))
}

fn keyed_config(backend: &str) -> String {
    format!(
        r#"
        # The status on the traffic port too, to see admin keys guard it.
        status = true
        [connections]
        a = "{backend}"

        [policy]
        aliases = {{ "gpt-4o" = "llama3.2" }}
        list_aliases = true

        [policy.keys.app]
        hash = "{app}"
        models = ["llama3.2"]

        [policy.keys.alias-only]
        hash = "{alias}"
        models = ["gpt-4o"]

        [policy.keys.ops]
        hash = "{ops}"
        scopes = ["inference", "manage"]
        models = ["llama3.2", "mine"]

        [policy.keys.root]
        hash = "{root}"
        scopes = ["admin"]

        [policy.keys.old]
        hash = "{old}"
        expires = "2020-01-01"

        [policy.keys.gone]
        hash = "{gone}"
        disabled = true

        [policy.keys.later]
        hash = "{later}"
        expires = "2999-01-01T00:00:00+02:00"
        "#,
        app = hash(APP),
        alias = hash(ALIAS),
        ops = hash(OPS),
        // Written in upper case: the same digest.
        root = hash(ROOT).to_uppercase(),
        old = hash(OLD),
        gone = hash(GONE),
        later = hash(LATER),
    )
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn chat(proxy: &Proxy, headers: &[(&str, &str)], model: &str) -> Reply {
    post_with(
        &format!("{}/api/chat", proxy.url),
        headers,
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false}),
    )
    .await
}

/// A 401 in Ollama's shape with the challenge, never quoting a key.
fn assert_401(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    assert!(r.json()["error"].is_string(), "{what}: {}", r.text());
    for key in [APP, ALIAS, OPS, ROOT, OLD, GONE, LATER] {
        assert!(!r.text().contains(&key[3..12]), "{what}: {}", r.text());
    }
}

#[tokio::test]
async fn keys_are_required_checked_and_hard_to_get_around() {
    let sim = backend(&["llama3.2", "qwen2.5:14b"]).await;
    let proxy = Proxy::start_at_level(
        "debug",
        &[
            "--config",
            write_temp("llamagate.toml", &keyed_config(&sim.url()))
                .to_str()
                .unwrap(),
        ],
    );
    let url = |path: &str| format!("{}{path}", proxy.url);

    // The health check needs no key.
    let r = get(&url("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Ollama is running"));
    let r = send(Method::HEAD, &url("/"), &[], Bytes::new()).await;
    assert_eq!(r.status, 200);

    // No key, on every kind of endpoint, in each API's own error shape.
    assert_401(&get(&url("/api/tags")).await, "tags");
    assert_401(&get(&url("/api/version")).await, "version");
    assert_401(&chat(&proxy, &[], "llama3.2").await, "chat");
    let r = get(&url("/v1/models")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text());

    // The key, by either header, the scheme in any case.
    let auth = bearer(APP);
    for headers in [
        vec![("authorization", auth.as_str())],
        vec![(
            "authorization",
            "bEaReR   lg_app0000000000000000000000000000",
        )],
        vec![("x-api-key", APP)],
        vec![("authorization", auth.as_str()), ("x-api-key", APP)],
        vec![
            ("authorization", auth.as_str()),
            ("authorization", auth.as_str()),
        ],
    ] {
        let r = chat(&proxy, &headers, "llama3.2").await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
    }
    // A hash written in upper case in the config is the same hash.
    let r = chat(&proxy, &[("authorization", &bearer(ROOT))], "qwen2.5:14b").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The key never reaches the backend; the request is the key's (its principal).
    sim.take_requests();
    let r = chat(
        &proxy,
        &[("authorization", &auth), ("x-api-key", APP)],
        "gpt-4o",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = sim.take_requests();
    let seen = seen.iter().find(|r| r.path == "/api/chat").unwrap();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.json()["model"], "llama3.2");
    let logs = proxy.logs();
    assert!(
        logs.contains("principal=\"app\"") || logs.contains("principal=app"),
        "{logs}"
    );
    for key in [APP, ROOT] {
        assert!(!logs.contains(&key[3..12]), "a key in the log:\n{logs}");
    }

    // Ways around: wrong, partial, extended, malformed, the hash itself, two keys.
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("authorization", "Bearer lg_nope".into())],
            "unknown key",
        ),
        (
            vec![("authorization", bearer(&APP[..APP.len() - 1]))],
            "a prefix of a key",
        ),
        (
            vec![("authorization", bearer(&format!("{APP}0")))],
            "a key is its prefix",
        ),
        (
            vec![("authorization", bearer(&APP.to_uppercase()))],
            "another case",
        ),
        (vec![("authorization", bearer(&hash(APP)))], "the hash"),
        (
            vec![("authorization", bearer(&sha256_hex(APP)))],
            "the hex digest",
        ),
        (vec![("authorization", "Bearer".into())], "empty bearer"),
        (vec![("authorization", "Bearer    ".into())], "blank bearer"),
        (vec![("authorization", APP.into())], "no scheme"),
        (
            vec![("authorization", format!("Basic {APP}"))],
            "another scheme",
        ),
        (
            vec![("authorization", format!("Bearer {APP} {ROOT}"))],
            "two in one",
        ),
        (vec![("x-api-key", "".into())], "empty x-api-key"),
        (
            vec![("authorization", bearer(APP)), ("x-api-key", ROOT.into())],
            "two keys",
        ),
        (
            vec![
                ("x-api-key", "lg_nope".into()),
                ("authorization", bearer(ROOT)),
            ],
            "junk + root",
        ),
        (
            vec![
                ("authorization", bearer(ROOT)),
                ("authorization", bearer(APP)),
            ],
            "twice",
        ),
        (
            vec![
                ("authorization", "Basic eDp5".into()),
                ("x-api-key", ROOT.into()),
            ],
            "basic + key",
        ),
        (vec![("authorization", bearer(OLD))], "expired"),
        (vec![("authorization", bearer(GONE))], "disabled"),
    ];
    for (headers, what) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_401(&chat(&proxy, &headers, "llama3.2").await, what);
    }
    let r = chat(&proxy, &[("x-api-key", OLD)], "llama3.2").await;
    assert!(r.text().contains("expired"), "{}", r.text());
    // Expiry is read from the wall clock inside the plugin: a key that
    // expires in 2999 works, one that expired in 2020 does not (above).
    let r = chat(&proxy, &[("x-api-key", LATER)], "llama3.2").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Models: as asked and through aliases; 403 in each API's shape.
    let r = chat(&proxy, &[("x-api-key", APP)], "qwen2.5:14b").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.json()["error"],
        "key \"app\" may not use model \"qwen2.5:14b\""
    );
    assert_eq!(r.header("www-authenticate"), None);
    let r = post_with(
        &url("/v1/chat/completions"),
        &[("authorization", &bearer(APP))],
        &json!({"model": "qwen2.5:14b", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("qwen2.5:14b"));
    for (key, model, want) in [
        (APP, "LLAMA3.2:latest", 200),
        (APP, "gpt-4o", 200),
        (ALIAS, "gpt-4o", 200),
        (ALIAS, "llama3.2", 403),
    ] {
        let r = chat(&proxy, &[("x-api-key", key)], model).await;
        assert_eq!(r.status, want, "{model}: {}", r.text());
    }
    // The Anthropic endpoint, by x-api-key as its SDKs send it.
    let r = post_with(
        &url("/v1/messages"),
        &[("x-api-key", APP)],
        &json!({"model": "qwen2.5:14b", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // Scopes: an inference key may not pull or delete; manage may not call
    // unknown paths; admin may.
    let pull = json!({"model": "llama3.2", "stream": false});
    let r = post_with(&url("/api/pull"), &[("x-api-key", APP)], &pull).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("\"manage\" scope"));
    let r = post_with(&url("/api/pull"), &[("x-api-key", OPS)], &pull).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        Method::POST,
        &url("/api/signout"),
        &[("x-api-key", OPS)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = send(
        Method::POST,
        &url("/api/signout"),
        &[("x-api-key", ROOT)],
        Bytes::new(),
    )
    .await;
    assert!(r.status != 401 && r.status != 403, "{}", r.text());
    // A copy checks its destination too, however the body spells it.
    let copy = |body: serde_json::Value| {
        let url = url("/api/copy");
        async move { post_with(&url, &[("x-api-key", OPS)], &body).await.status }
    };
    assert_eq!(
        copy(json!({"source": "llama3.2", "destination": "mine"})).await,
        200
    );
    assert_eq!(
        copy(json!({"source": "llama3.2", "destination": "theirs"})).await,
        403
    );
    assert_eq!(
        copy(json!({"source": "qwen2.5:14b", "destination": "mine"})).await,
        403
    );
    let sneaky = r#"{"source":"llama3.2","destination":"mine","Destination":"theirs"}"#;
    let r = send(
        Method::POST,
        &url("/api/copy"),
        &[("x-api-key", OPS)],
        sneaky,
    )
    .await;
    // The host refuses such a body itself (400); the policy would (403).
    assert!(matches!(r.status, 400 | 403), "{}", r.text());

    // Listings show a key its models only.
    let names = |r: Reply| {
        let mut names: Vec<String> = r.json()["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let tags = |key: &'static str| {
        let url = url("/api/tags");
        async move { send(Method::GET, &url, &[("x-api-key", key)], Bytes::new()).await }
    };
    assert_eq!(names(tags(APP).await), ["gpt-4o:latest", "llama3.2:latest"]);
    assert_eq!(names(tags(ALIAS).await), ["gpt-4o:latest"]);
    assert!(names(tags(ROOT).await).contains(&"qwen2.5:14b".to_string()));
    let r = send(
        Method::GET,
        &url("/v1/models"),
        &[("x-api-key", ALIAS)],
        Bytes::new(),
    )
    .await;
    let listed = r.json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o:latest"], "{}", r.text());

    // The admin endpoint: admin-scoped keys in force, nothing else.
    let admin = proxy.admin_url();
    assert_eq!(get(&format!("{admin}/livez")).await.status, 200);
    for (key, want) in [
        (None, 401),
        (Some(APP), 401),
        (Some(GONE), 401),
        (Some(ROOT), 200),
    ] {
        let auth = key.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        for path in ["/metrics", "/llamagate/status"] {
            let r = send(
                Method::GET,
                &format!("{admin}{path}"),
                &headers,
                Bytes::new(),
            )
            .await;
            assert_eq!(r.status, want, "{path} with {key:?}");
        }
    }
    // The traffic port's status page too.
    let r = send(Method::GET, &url("/llamagate/status"), &[], Bytes::new()).await;
    assert_eq!(r.status, 401);
    let r = send(
        Method::GET,
        &url("/llamagate/status"),
        &[("authorization", &bearer(ROOT))],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_key_in_plain_text_stops_start_up_without_being_quoted() {
    let secret = "lg_plaintext_secret_0123456789abcdef";
    for (entry, expected) in [
        (
            format!("key = \"{secret}\""),
            "keys.\"ci\".key: keys are never written in plain text",
        ),
        (
            format!("secret = \"{secret}\"\nhash = \"{}\"", hash(secret)),
            "keys.\"ci\".secret: keys are never",
        ),
        (
            format!("hash = \"{secret}\""),
            "keys.\"ci\".hash: must be \"sha256:",
        ),
        (
            format!("hash = \"{secret}\"\nscopes = [\"admin\"]"),
            "policy.keys.\"ci\".hash: must be",
        ),
    ] {
        let config = format!(
            "[connections]\na = \"http://127.0.0.1:9\"\n\n# keys\n[policy.keys.ci]\n{entry}\n"
        );
        let path = write_temp("llamagate.toml", &config);
        let logs = Proxy::try_start(&["--config", path.to_str().unwrap()])
            .err()
            .expect("refused");
        assert!(logs.contains(expected), "{expected}:\n{logs}");
        if !expected.starts_with("policy.") {
            // The default policy's refusal, at the entry's line.
            assert!(
                logs.contains("line 6, policy.keys"),
                "the entry's line:\n{logs}"
            );
        }
        assert!(!logs.contains(&secret[3..20]), "{logs}");
    }
}

/// Runs `llamagate keys ...`; returns (stdout, stderr) of a success.
fn keys_cli(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .arg("keys")
        .args(args)
        .env_remove("LLAMAGATE_CONFIG")
        .output()
        .expect("running llamagate keys");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "keys {args:?} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// Polls a chat with `key` until its status is `want`.
async fn wait_for_status(proxy: &Proxy, key: Option<&str>, want: u16) {
    let start = Instant::now();
    let auth = key.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    loop {
        let r = chat(proxy, &headers, "llama3.2").await;
        if r.status == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never {want} (last {}: {}):\n{}",
            r.status,
            r.text(),
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn keys_create_and_revoke_edit_the_file_and_the_proxy_reloads() {
    let sim = backend(&["llama3.2"]).await;
    let original = format!(
        "# llamagate for the team\nlisten = \"127.0.0.1:0\"   # overridden in tests\n\n\
         [connections]\na = \"{}\"  # the only GPU\n\n[policy]\n# no keys yet\nlist_aliases = false\n",
        sim.url()
    );
    let path = write_temp("llamagate.toml", &original);
    let config = path.to_str().unwrap();
    let proxy = Proxy::start(&["--config", config]);
    wait_for_status(&proxy, None, 200).await;

    let (stdout, stderr) = keys_cli(&[
        "create",
        "ci",
        "--model",
        "llama3.2",
        "--expires",
        "30d",
        "--config",
        config,
    ]);
    let secret = stdout.trim_end_matches('\n');
    assert!(!secret.contains('\n'), "only the key on stdout: {stdout:?}");
    assert!(
        secret.starts_with("lg_") && secret.len() == 35,
        "{stdout:?}"
    );
    assert!(stderr.contains("only time"), "{stderr}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with(&original),
        "comments and layout kept:\n{text}"
    );
    assert!(!text.contains(secret));
    // Refused: the same name again (the file is left as it was).
    let again = Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .args(["keys", "create", "ci", "-c", config])
        .output()
        .unwrap();
    assert!(!again.status.success() && again.stdout.is_empty());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // The running proxy takes the key up: now every request needs one.
    wait_for_status(&proxy, Some(secret), 200).await;
    wait_for_status(&proxy, None, 401).await;

    let (listed, _) = keys_cli(&["list", "--config", config]);
    let row = listed
        .lines()
        .find(|l| l.starts_with("ci "))
        .expect(&listed);
    assert!(
        row.contains("inference") && row.contains("llama3.2") && row.contains("active"),
        "{row}"
    );
    assert!(!listed.contains(&sha256_hex(secret)[..12]), "{listed}");

    keys_cli(&["revoke", "ci", "--config", config]);
    wait_for_status(&proxy, Some(secret), 401).await;
    let r = chat(&proxy, &[("authorization", &bearer(secret))], "llama3.2").await;
    assert!(
        r.json()["error"].as_str().unwrap().contains("disabled"),
        "{}",
        r.text()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(&original), "{text}");
    assert!(text.contains("disabled = true"), "{text}");
    let (listed, _) = keys_cli(&["list", "-c", config]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ci ") && l.contains("disabled")),
        "{listed}"
    );
}
