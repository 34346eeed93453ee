//! A plugin that refuses its config is reported at the line of
//! `llamagate.toml` that holds it — not at a position in the JSON llamagate
//! made from the table — without echoing the refused value.

use std::time::{Duration, Instant};

use crate::common::*;

const TOKEN: &str = "sha256:a4a6d307ad00fa67176e1099fdbc4f4a09bb527a7f24718a5030f2f173d11f7f";

/// Starts llamagate on `toml`, expecting it to refuse; returns its output and the file's path.
fn refused(toml: &str) -> (String, String) {
    let path = write_temp("llamagate.toml", toml);
    let shown = path.display().to_string();
    match Proxy::try_start(&["--config", &shown]) {
        Ok(_) => panic!("llamagate started with:\n{toml}"),
        Err(out) => (out, shown),
    }
}

#[test]
fn the_default_policy_refusing_a_value_names_its_line_and_key() {
    let (out, file) = refused(
        "listen = \"127.0.0.1:0\"\n\
         [connections]\n\
         a = \"http://127.0.0.1:9\"\n\
         \n\
         [policy]\n\
         models = { \"llama3.2\" = \"a\" }\n\
         max_num_ctx = \"sk-not-a-number\"\n",
    );
    assert!(
        out.contains(&format!("{file}: line 7, policy.max_num_ctx: ")),
        "{out}"
    );
    assert!(
        out.contains("expected i64"),
        "the plugin's words stay: {out}"
    );
    assert!(!out.contains("column"), "no JSON position: {out}");
    assert!(
        !out.contains("sk-not-a-number"),
        "the value is not echoed: {out}"
    );
}

#[test]
fn team_access_refusing_its_config_names_the_table_line() {
    let wasm = component("team-access");
    let plugin = format!(
        "[connections]\na = \"http://127.0.0.1:9\"\n\n\
         [[plugins]]\npath = \"{}\"\n\n\
         [plugins.config]\n\
         teams = {{ \"team-a\" = [\"llama3.2\"] }}\n\
         tokens = {{ \"{TOKEN}\" = \"team-a\" }}\n",
        wasm.display()
    );
    // A value of the wrong type: serde's message, at the key's line.
    let (out, file) = refused(&format!("{plugin}forward_token = \"sk-live-123\"\n"));
    assert!(
        out.contains(&format!(
            "{file}: line 10, plugins[0].config.forward_token: plugin \"team_access\""
        )),
        "{out}"
    );
    assert!(
        !out.contains("sk-live-123") && !out.contains("column"),
        "{out}"
    );
    // A refusal in the plugin's own words, which start with the key: its line,
    // and the words as the plugin chose them.
    let (out, file) = refused(&plugin.replace("[\"llama3.2\"]", "[]"));
    assert!(
        out.contains(&format!("{file}: line 8, plugins[0].config.teams.\"…\": "))
            && out.contains("teams.\"team-a\" is empty"),
        "{out}"
    );
    // Without a key at its start: the table's line.
    let (out, file) = refused(&plugin.replace("\" = \"team-a\" }", "\" = \"team-b\" }"));
    assert!(
        out.contains(&format!("{file}: line 7, plugins[0].config: "))
            && out.contains("does not define"),
        "{out}"
    );
}

#[tokio::test]
async fn a_reload_refused_by_a_plugin_names_the_line_too() {
    let sim = backend(&["llama3.2"]).await;
    let good = format!(
        "[connections]\na = \"{}\"\n[policy]\nmodels = {{ \"llama3.2\" = \"a\" }}\n",
        sim.url()
    );
    let path = write_temp("llamagate.toml", &good);
    let proxy = Proxy::start(&["--config", path.to_str().unwrap()]);
    std::fs::write(&path, format!("{good}max_num_ctx = \"sk-secret-9\"\n")).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        let s = get(&format!("{}/llamagate/status", proxy.admin_url()))
            .await
            .json();
        if s["last_reload"]["ok"] == false {
            break s["last_reload"]["message"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expected = format!("{}: line 5, policy.max_num_ctx: ", path.display());
    assert!(message.contains(&expected), "{message}");
    assert!(!message.contains("sk-secret-9"), "{message}");
    assert!(!proxy.logs().contains("sk-secret-9"), "{}", proxy.logs());
}
