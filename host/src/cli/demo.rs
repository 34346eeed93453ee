//! `llamagate demo`: two simulated Ollama backends with different models and
//! llamagate in front of them, so the product can be tried without a GPU.

use crate::config::{Config, FileConfig, Overrides};
use llamagate_sim::{self as sim, SimOptions};

/// Starts the simulated backends and serves the gateway until Ctrl-C.
pub async fn run(listen: Option<String>) -> anyhow::Result<()> {
    let gpu1 = sim::spawn(SimOptions {
        models: vec!["llama3.2".into(), "all-minilm".into()],
        version: "0.12.3".into(),
        chunk_delay: std::time::Duration::from_millis(80),
        ..SimOptions::default()
    })
    .await?;
    let gpu2 = sim::spawn(SimOptions {
        models: vec!["qwen2.5:14b".into(), "mistral".into()],
        version: "0.9.6".into(),
        chunk_delay: std::time::Duration::from_millis(80),
        ..SimOptions::default()
    })
    .await?;
    let listen = listen.unwrap_or_else(|| "127.0.0.1:11434".into());
    let file: FileConfig = toml::from_str(&format!(
        r#"
        [connections]
        gpu-01 = "{}"
        gpu-02 = "{}"

        [policy]
        list_aliases = true
        models = {{ "llama3.2" = "gpu-01", "all-minilm" = "gpu-01", "qwen2.5:14b" = "gpu-02" }}
        aliases = {{ "gpt-4o" = "llama3.2" }}
        defaults = {{ num_ctx = 8192, keep_alive = "10m" }}
        "#,
        gpu1.url(),
        gpu2.url()
    ))?;
    let overrides = Overrides {
        listen: Some(listen.clone()),
        ..Default::default()
    };
    let config = Config::build(file, std::path::Path::new("."), &overrides)?;
    let host = listen.replace("0.0.0.0", "127.0.0.1");
    println!(
        r#"
llamagate demo: two simulated Ollama servers behind one endpoint.
  gpu-01 {gpu1} serves llama3.2, all-minilm   (version 0.12.3)
  gpu-02 {gpu2} serves qwen2.5:14b, mistral   (version 0.9.6; mistral is not configured, so hidden)
  alias gpt-4o -> llama3.2; num_ctx 8192 and keep_alive 10m are added when missing

Try:
  curl http://{host}/api/tags
  curl http://{host}/api/version
  curl http://{host}/api/chat -d '{{"model":"llama3.2","messages":[{{"role":"user","content":"hi"}}]}}'
  curl http://{host}/api/generate -d '{{"model":"qwen2.5:14b","prompt":"hi","stream":false}}'
  curl http://{host}/v1/chat/completions -d '{{"model":"gpt-4o","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
  curl http://{host}/api/chat -d '{{"model":"mistral","messages":[]}}'     # 404: not configured
  OLLAMA_HOST=http://{host} ollama list                                   # with the ollama CLI

Ctrl-C stops it.
"#,
        gpu1 = gpu1.url(),
        gpu2 = gpu2.url(),
    );
    let launch = crate::server::Launch {
        config,
        reload_from: None,
        record: None,
    };
    crate::server::run(launch, crate::server::shutdown_signal()).await
}
