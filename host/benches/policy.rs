//! The cost of a policy decision on the hot path, for a typical chat request:
//! reading the body's policy fields, running the plugin chain (1 and 3 plugins,
//! each a separate default-policy instance), and writing the edits back.
//!
//! Run: `cargo bench -p llamagate --bench policy`.

use std::collections::BTreeMap;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use llamagate::api::body;
use llamagate::api::endpoint::Row;
use std::sync::Arc;

use llamagate::plugin::{
    Backend, Endpoint, Facts, Header, Limits, LoadedModel, Plugin, Request, Runtime, Snapshot,
};
use llamagate::policy::{Chain, Outcome};

const CONFIG: &str = r#"{
    "models": {"llama3.2": ["gpu-01", "gpu-02"], "qwen2.5:14b": ["gpu-03"], "all-minilm": ["gpu-04"]},
    "aliases": {"gpt-4o": "llama3.2"},
    "list_aliases": true,
    "defaults": {"num_ctx": 8192, "keep_alive": "10m"},
    "max_num_ctx": 32768
}"#;

fn body() -> Bytes {
    let history: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "Tell me about llamas. ".repeat(10)}))
        .collect();
    serde_json::json!({"model": "gpt-4o", "messages": history, "options": {"temperature": 0.7}})
        .to_string()
        .into()
}

fn request(body: &Bytes) -> (Request, BTreeMap<String, String>) {
    let peeked = body::peek(body, Row::of(Endpoint::Chat), 256).unwrap();
    let header = |name: &str, value: &str| Header {
        name: name.into(),
        value: value.into(),
    };
    let request = Request {
        id: "1".into(),
        endpoint: Endpoint::Chat,
        method: "POST".into(),
        path: "/api/chat".into(),
        model: peeked.model.as_ref().map(|(_, m)| m.clone()),
        headers: vec![
            header("host", "llamagate:11434"),
            header("user-agent", "ollama-python/0.6.3"),
            header("content-type", "application/json"),
            header("accept", "application/x-ndjson"),
            header("authorization", "Bearer sk-team-a"),
        ],
        client_addr: "10.0.0.7:51234".into(),
        options: peeked.options.iter().map(|(o, _)| o.clone()).collect(),
        keep_alive: peeked.keep_alive.clone(),
        streaming: true,
        body_size: body.len() as u64,
        route: None,
    };
    let raw = peeked
        .options
        .into_iter()
        .filter_map(|(o, raw)| raw.map(|r| (o.key, r)))
        .collect();
    (request, raw)
}

/// `n` backends serving `models` models each. With `everywhere`, every one
/// serves `llama3.2`; otherwise only `gpu-01` and `gpu-02` do (as the config
/// maps it) and the rest serve other models, as in a real fleet.
fn fleet(n: u32, models: usize, everywhere: bool) -> Vec<Backend> {
    (1..=n)
        .map(|i| Backend {
            id: format!("gpu-{i:02}"),
            url: format!("http://gpu-{i:02}:11434"),

            models: (i <= 2 || everywhere)
                .then(|| "llama3.2:latest".to_string())
                .into_iter()
                .chain((1..models).map(|m| format!("model-{}:latest", (i as usize * 7 + m) % 200)))
                .collect(),
            loaded: vec![LoadedModel {
                name: "llama3.2:latest".into(),
                context_length: Some(8192),
                size: 3 << 30,
                size_vram: 3 << 30,
                ..LoadedModel::default()
            }],
            in_flight: i,
            ..Backend::default()
        })
        .collect()
}

fn load(runtime: &std::sync::Arc<Runtime>, n: usize) -> Chain {
    let plugins: Vec<Plugin> = (0..n)
        .map(|i| {
            runtime
                .load(
                    &format!("default-policy-{i}"),
                    llamagate::DEFAULT_POLICY_WASM,
                    CONFIG.into(),
                    Limits::default(),
                )
                .unwrap()
        })
        .collect();
    Chain::of(plugins)
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let body = body();
    let (request, raw) = request(&body);
    let backends: Arc<dyn Facts> = Arc::new(Snapshot::new(fleet(4, 4, false)));
    let large: Arc<dyn Facts> = Arc::new(Snapshot::new(fleet(50, 20, false)));
    let everywhere: Arc<dyn Facts> = Arc::new(Snapshot::new(fleet(50, 20, true)));

    let mut group = c.benchmark_group("chat request");
    group.bench_function("peek body fields", |b| {
        b.iter(|| body::peek(&body, Row::of(Endpoint::Chat), 256).unwrap())
    });
    for n in [1, 3] {
        let chain = load(&runtime, n);
        group.bench_function(format!("decide, chain of {n}"), |b| {
            b.iter(|| {
                chain
                    .decide_blocking(request.clone(), raw.clone(), &backends, &body, false)
                    .unwrap()
            })
        });
    }
    let chain = load(&runtime, 1);
    group.bench_function("decide, chain of 1, 50 backends x 20 models", |b| {
        b.iter(|| {
            chain
                .decide_blocking(request.clone(), raw.clone(), &large, &body, false)
                .unwrap()
        })
    });
    group.bench_function(
        "decide, chain of 1, 50 backends x 20 models, all 50 serve it",
        |b| {
            b.iter(|| {
                chain
                    .decide_blocking(request.clone(), raw.clone(), &everywhere, &body, false)
                    .unwrap()
            })
        },
    );
    let Outcome::Forward(plan) = chain
        .decide_blocking(request.clone(), raw.clone(), &backends, &body, false)
        .unwrap()
    else {
        panic!("the default policy forwards");
    };
    let edits = plan.body_edits(Some("model"));
    group.bench_function("splice edits into body", |b| {
        b.iter(|| body::splice(&body, &edits).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
