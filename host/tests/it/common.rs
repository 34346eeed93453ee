//! Test harness: the real `llamagate` binary as a child process, simulated
//! Ollama backends in-process, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub use llamagate_sim::{self as sim, SimHandle, SimOptions};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds a plugin crate of the workspace for wasm32-wasip2 (once per test run)
/// and returns the component's path.
pub fn component(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    let target_dir = workspace().join("target").join("plugins");
    let path = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if !built.iter().any(|p| p == package) {
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "-p",
                package,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build a test plugin");
        assert!(
            status.success(),
            "building {package} for wasm32-wasip2 failed"
        );
        built.push(package.to_string());
    }
    path
}

/// The value of field `name` in a log line, text (`name=value`) or JSON
/// (`--log-format json`: `"name":"value"` at the top level).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).ok()?;
        return v.get(name)?.as_str().map(str::to_string);
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
}

/// A running llamagate process; killed on drop.
pub struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts llamagate with `args` (plus `--listen 127.0.0.1:0`) and waits until it listens.
    pub fn start(args: &[&str]) -> Proxy {
        Self::try_start(args).unwrap_or_else(|logs| panic!("llamagate did not start:\n{logs}"))
    }

    /// Starts llamagate with a config file holding `toml`, plus `args`.
    pub fn with_config(toml: &str, args: &[&str]) -> Proxy {
        let path = write_temp("llamagate.toml", toml);
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        Self::start(&all)
    }

    /// Starts llamagate with extra environment variables (for it alone).
    pub fn start_with_env(args: &[&str], env: &[(&str, String)]) -> Proxy {
        Self::try_start_with_env(args, env)
            .unwrap_or_else(|logs| panic!("llamagate did not start:\n{logs}"))
    }

    /// Starts llamagate; `Err` holds its output if it exited instead of listening.
    pub fn try_start(args: &[&str]) -> Result<Proxy, String> {
        Self::try_start_with_env(args, &[])
    }

    /// Starts llamagate as the last word of `prefix` (`["prlimit",
    /// "--nofile=128:128", "--"]`): a command that execs it, so that the
    /// process killed on drop is llamagate itself.
    pub fn start_under(prefix: &[&str], args: &[&str]) -> Proxy {
        Self::try_start_under(prefix, args, &[])
            .unwrap_or_else(|logs| panic!("llamagate did not start:\n{logs}"))
    }

    /// Starts llamagate with extra environment variables; `Err` holds its output.
    pub fn try_start_with_env(args: &[&str], env: &[(&str, String)]) -> Result<Proxy, String> {
        Self::try_start_under(&[], args, env)
    }

    /// Starts llamagate with `--level LEVEL` instead of `--level info`.
    pub fn start_at_level(level: &str, args: &[&str]) -> Proxy {
        Self::try_start_full(&[], args, &[], level)
            .unwrap_or_else(|logs| panic!("llamagate did not start:\n{logs}"))
    }

    fn try_start_under(
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Proxy, String> {
        Self::try_start_full(prefix, args, env, "info")
    }

    fn try_start_full(
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, String)],
        level: &str,
    ) -> Result<Proxy, String> {
        let binary = env!("CARGO_BIN_EXE_llamagate");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["--listen", "127.0.0.1:0", "--level", level])
            // Tests run side by side: each admin endpoint on a port of its own.
            .args(if args.contains(&"--admin-listen") {
                &[][..]
            } else {
                &["--admin-listen", "127.0.0.1:0"][..]
            })
            .env_remove("LLAMAGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting llamagate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = log_field(&line, "address") {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        // Generous: an interpreter component (Python) takes Cranelift many seconds
        // on a busy machine. A process that exits is noticed at once anyway.
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(addr) => Ok(Proxy {
                child,
                url: format!("http://{addr}"),
                logs,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(logs.lock().unwrap().join("\n"))
            }
        }
    }

    /// `http://ADDR` of the admin endpoint (from its start-up line).
    pub fn admin_url(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find_map(|line| log_field(line, "admin_address"))
                .map(|a| format!("http://{a}"));
            if let Some(url) = found {
                return url;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no admin endpoint in the log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything llamagate logged so far.
    ///
    /// The log is read from a pipe by another thread, so a line written just
    /// before the caller looked may not have arrived yet: this waits until no
    /// new line has come for 100 ms (2 s at most).
    pub fn logs(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut seen = self.logs.lock().unwrap().len();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.logs.lock().unwrap().len();
            if now == seen || std::time::Instant::now() > deadline {
                break;
            }
            seen = now;
        }
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends a signal (`HUP`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to a fresh temporary file and returns its path.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "llamagate-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts a simulated backend with these models.
pub async fn backend(models: &[&str]) -> SimHandle {
    sim::spawn(SimOptions {
        models: models.iter().map(|m| m.to_string()).collect(),
        ..SimOptions::default()
    })
    .await
    .unwrap()
}

/// A complete HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// NDJSON lines, parsed.
    pub fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request and returns the response with its body unread.
pub async fn open(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> http::Response<Incoming> {
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .expect("no answer within 20 s")
        .expect("request failed")
}

/// Sends a request and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let response = open(method, url, headers, body).await;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body not finished within 20 s")
        .map(|c| c.to_bytes())
        .unwrap_or_else(|e| panic!("body broke: {e}"));
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, &[], Bytes::new()).await
}

pub async fn post(url: &str, body: &Value) -> Reply {
    send(Method::POST, url, &[], body.to_string()).await
}

pub async fn post_with(url: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    send(Method::POST, url, headers, body.to_string()).await
}

/// A proxy over two backends: `a` serves llama3.2 and all-minilm, `b` serves qwen2.5:14b.
pub struct Fleet {
    pub a: SimHandle,
    pub b: SimHandle,
    pub proxy: Proxy,
}

impl Fleet {
    pub async fn start(extra: &[&str]) -> Fleet {
        let a = backend(&["llama3.2", "all-minilm"]).await;
        let b = backend(&["qwen2.5:14b", "mistral"]).await;
        let pa = format!("llama3.2={}", a.url());
        let pe = format!("all-minilm={}", a.url());
        let pb = format!("qwen2.5:14b={}", b.url());
        let mut args = vec!["--proxy", &pa, "--proxy", &pe, "--proxy", &pb];
        args.extend_from_slice(extra);
        let proxy = Proxy::start(&args);
        Fleet { a, b, proxy }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.url)
    }
}
