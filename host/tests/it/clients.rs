//! The official `ollama` and `openai` Python clients through llamagate.
//!
//! Needs a Python with both packages: `.ci/run` makes a virtualenv and sets
//! `LLAMAGATE_PYTHON`. Without it the test is skipped locally, but fails in CI.

use std::process::Command;

use crate::common::*;

#[tokio::test]
async fn official_python_clients_work_through_the_proxy() {
    let Some(python) = std::env::var_os("LLAMAGATE_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set LLAMAGATE_PYTHON to a Python with `ollama` and `openai`"
        );
        eprintln!("skipped: set LLAMAGATE_PYTHON to a Python with `ollama` and `openai` installed");
        return;
    };
    let f = Fleet::start(&["--alias", "gpt-4o=llama3.2", "--list-aliases"]).await;
    let script = workspace().join("host/tests/clients/official_clients.py");
    let url = f.url("");
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(url).output())
            .await
            .unwrap()
            .expect("running python");
    assert!(
        output.status.success(),
        "python clients failed:\nstdout:\n{}\nstderr:\n{}\nproxy log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        f.proxy.logs()
    );
}
