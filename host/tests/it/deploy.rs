//! The packaging in `host/deploy/`, checked as far as this machine can: the
//! Kubernetes manifests parse and agree with each other and with what the
//! binary serves (the ConfigMap's `llamagate.toml` runs, its probes answer),
//! the Dockerfile says what it must (no Docker engine here to build it), and
//! the systemd unit passes `systemd-analyze verify` and `security`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::common::*;

fn deploy(path: &str) -> PathBuf {
    workspace().join("host/deploy").join(path)
}

fn read(path: &str) -> String {
    let file = deploy(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// One manifest, parsed (each file holds one object).
fn manifest(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The port of `host:port`.
fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address:?}"))
}

/// A Kubernetes port (a number, or a name of the container's ports) as a number.
fn resolve(port: &Value, named: &BTreeMap<String, u16>) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => *named
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name:?}: {named:?}")),
        other => panic!("odd port {other}"),
    }
}

struct Kubernetes {
    deployment: Value,
    service: Value,
    /// The ConfigMap's `llamagate.toml`.
    config: String,
}

fn kubernetes() -> Kubernetes {
    let deployment = manifest("k8s/deployment.yaml");
    let service = manifest("k8s/service.yaml");
    let configmap = manifest("k8s/configmap.yaml");
    for (m, kind) in [
        (&deployment, "Deployment"),
        (&service, "Service"),
        (&configmap, "ConfigMap"),
    ] {
        assert_eq!(m["kind"], kind, "{m}");
    }
    let config = configmap["data"]["llamagate.toml"]
        .as_str()
        .expect("the ConfigMap holds llamagate.toml")
        .to_string();
    Kubernetes {
        deployment,
        service,
        config,
    }
}

#[tokio::test]
async fn the_kubernetes_example_agrees_with_itself_and_with_the_binary() {
    let k = kubernetes();
    let d = &k.deployment;
    assert_eq!(d["spec"]["replicas"], 3);
    let template = &d["spec"]["template"];
    let labels = &template["metadata"]["labels"];
    for selector in [
        &d["spec"]["selector"]["matchLabels"],
        &k.service["spec"]["selector"],
    ] {
        let selector = selector.as_object().expect("a selector");
        assert!(!selector.is_empty());
        for (key, value) in selector {
            assert_eq!(
                &labels[key], value,
                "selector {key} does not match the pods"
            );
        }
    }
    let containers = template["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The config the ConfigMap mounts is the one the container reads.
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["--config", &format!("{mount}/llamagate.toml")]);
    assert_eq!(
        template["spec"]["volumes"][0]["configMap"]["name"],
        manifest("k8s/configmap.yaml")["metadata"]["name"]
    );

    let config: toml::Table = toml::from_str(&k.config).expect("the ConfigMap's llamagate.toml");
    let listen = port_of(config["listen"].as_str().unwrap());
    let admin_listen = config["admin_listen"].as_str().unwrap();
    assert!(
        admin_listen.starts_with("0.0.0.0:"),
        "the kubelet probes the pod IP: {admin_listen}"
    );
    let admin = port_of(admin_listen);
    let named: BTreeMap<String, u16> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    assert!(named.values().any(|p| *p == listen), "{named:?}");

    // Probes: on the admin port, at paths it answers (checked below).
    let mut probe_paths = Vec::new();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &c[probe]["httpGet"];
        assert!(get.is_object(), "{probe} is an httpGet");
        assert_eq!(resolve(&get["port"], &named), admin, "{probe} port");
        probe_paths.push(get["path"].as_str().unwrap().to_string());
    }
    assert_eq!(
        (probe_paths[0].as_str(), probe_paths[1].as_str()),
        ("/livez", "/readyz")
    );
    // The Service sends traffic to the traffic port, never to the admin one.
    let service_ports = k.service["spec"]["ports"].as_array().unwrap();
    assert!(!service_ports.is_empty());
    for p in service_ports {
        assert_eq!(resolve(&p["targetPort"], &named), listen, "{p}");
    }
    // Stopping: longer than the shutdown grace plus preStop's sleep.
    let grace = humantime::parse_duration(config["shutdown_grace"].as_str().unwrap()).unwrap();
    let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let termination = template["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(termination > grace.as_secs() + pre_stop, "{termination}");
    // The key comes from a Secret, under the name the binary reads.
    let env = c["env"].as_array().unwrap();
    let key = env
        .iter()
        .find(|e| e["name"] == "LLAMAGATE_ADMIN_KEY")
        .expect("LLAMAGATE_ADMIN_KEY in the container's env");
    assert!(
        key["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{key}"
    );
    // The image's user.
    let security = &template["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert_eq!(
        user.split(':').next().unwrap(),
        security["runAsUser"].to_string(),
        "the Deployment runs as the image's user"
    );

    // The ConfigMap's config, run by the binary with its backends replaced by
    // simulated ones (and its addresses by free ports).
    let mut text = k.config.clone();
    let mut sims = Vec::new();
    for (_, url) in config["connections"].as_table().unwrap() {
        let url = url.as_str().expect("a URL");
        let sim = backend(&["llama3.2", "qwen2.5:14b"]).await;
        text = text.replace(url, &sim.url());
        sims.push(sim);
    }
    let path = write_temp("llamagate.toml", &text);
    let secret = "k8s-example-admin-key".to_string();
    let proxy = Proxy::start_with_env(
        &["--config", path.to_str().unwrap()],
        &[("LLAMAGATE_ADMIN_KEY", secret.clone())],
    );
    let base = proxy.admin_url();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for path in &probe_paths {
        loop {
            let r = get(&format!("{base}{path}")).await;
            if r.status == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The key is asked for where it should be, and is the Secret's.
    for path in ["/metrics", "/llamagate/status"] {
        assert_eq!(get(&format!("{base}{path}")).await.status, 401, "{path}");
        let bearer = format!("Bearer {secret}");
        let r = send(
            Method::GET,
            &format!("{base}{path}"),
            &[("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{path}");
    }
    let r = post(
        &format!("{}/api/chat", proxy.url),
        &serde_json::json!({"model": "llama3.2", "messages": [], "stream": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_dockerfile_builds_plugins_and_runs_unprivileged() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let runtime = *froms.last().unwrap();
    let build_stage = &lines[froms[0]..runtime];
    assert!(
        build_stage
            .iter()
            .any(|l| l.contains("rustup target add wasm32-wasip2")),
        "the build stage adds the plugins' target"
    );
    assert!(build_stage
        .iter()
        .any(|l| l.contains("cargo build --release --locked")));
    let runtime_stage = &lines[runtime..];
    let user = runtime_stage
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "{user}"
    );
    let expose = runtime_stage
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    assert!(expose.split_whitespace().any(|p| p == "11434"), "{expose}");
    let entrypoint = runtime_stage
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let binary: Vec<String> = serde_json::from_str(entrypoint).expect("exec form");
    assert!(
        runtime_stage
            .iter()
            .any(|l| l.starts_with("COPY --from=build") && l.ends_with(&binary[0])),
        "the entry point is the binary copied from the build stage"
    );
    // BuildKit reads <Dockerfile>.dockerignore beside it.
    let ignore = read("Dockerfile.dockerignore");
    for must in [".git", "**/target", ".venv"] {
        assert!(ignore.lines().any(|l| l.trim() == must), "{must}");
    }
}

/// The unit's `Key=value` lines (comments dropped), values in order.
fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.trim().into())
                .or_default()
                .push(v.trim().into());
        }
    }
    keys
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let text = read("systemd/llamagate.service");
    let keys = unit_keys(&text);
    let one = |k: &str| -> &str {
        let v = keys.get(k).unwrap_or_else(|| panic!("{k}= is not set"));
        v.last().unwrap()
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ConfigurationDirectory", "llamagate"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(one("RestrictAddressFamilies").contains("AF_INET"));
    assert!(keys["SystemCallFilter"]
        .iter()
        .any(|v| v == "@system-service"));
    // wasmtime maps the code it compiles executable: this would stop every plugin.
    assert!(
        !keys.contains_key("MemoryDenyWriteExecute"),
        "MemoryDenyWriteExecute breaks wasmtime's JIT"
    );
    assert!(one("ExecReload").contains("-HUP $MAINPID"));
    let stop = humantime::parse_duration(one("TimeoutStopSec")).unwrap();
    assert!(
        stop > Duration::from_secs(30),
        "above the 30 s shutdown grace"
    );
    let exec = one("ExecStart");
    assert!(
        exec.ends_with("--config /etc/llamagate/llamagate.toml"),
        "{exec}"
    );

    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        if std::env::var("LLAMAGATE_SKIP_SYSTEMD").is_ok_and(|v| v == "1") {
            eprintln!("LLAMAGATE_SKIP_SYSTEMD=1: not verifying the unit");
            return;
        }
        panic!(
            "systemd-analyze is missing: install systemd (`apt-get install -y systemd`; \
             `bash .ci/test` does), or set LLAMAGATE_SKIP_SYSTEMD=1"
        );
    }
    // verify wants ExecStart's program to exist: a copy of the unit runs the
    // binary under test instead of /usr/local/bin/llamagate.
    let program = exec.split_whitespace().next().unwrap();
    let copy = text.replace(
        &format!("ExecStart={program} "),
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_llamagate")),
    );
    assert_ne!(copy, text);
    let unit = write_temp("llamagate.service", &copy);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(analyze)
            .args(args)
            .arg(&unit)
            .output()
            .expect("running systemd-analyze");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, stderr) = run(&["verify", "--man=no"]);
    // An unknown or misspelt key is only a warning: any word about the unit fails.
    assert!(
        ok && !stderr.contains("llamagate"),
        "systemd-analyze verify:\n{stderr}"
    );
    let (ok, stdout, stderr) = run(&["security", "--offline=true", "--no-pager"]);
    assert!(ok, "systemd-analyze security:\n{stdout}{stderr}");
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for llamagate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{stdout}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{stdout}");
}
