//! Load benchmark: what llamagate costs in throughput and latency compared with
//! talking to the backend directly.
//!
//! One run starts two child processes from the release `llamagate` binary:
//!
//! - a simulated Ollama backend (`llamagate sim`), and
//! - llamagate itself, proxying model `llama3.2` to that backend,
//!
//! then drives the same closed-loop load against the backend directly and through
//! llamagate, back to back, for each scenario:
//!
//! - `chat, stream:false`: `POST /api/chat` answered with one JSON object;
//! - `chat, streamed (NDJSON)`: `POST /api/chat` answered with 5 content chunks and
//!   the done frame;
//! - `tags (fan-out)`: `GET /api/tags`, which llamagate answers by asking every
//!   backend (here: one) and merging the lists.
//!
//! Closed loop: `LOAD_CONCURRENCY` workers (default 16), each with its own
//! keep-alive connection from a shared hyper client pool, send one request, read
//! the whole answer, and send the next. A 1 s warm-up precedes each measured
//! window of `LOAD_SECONDS` (default 5); only requests that complete inside the
//! window count. Every answer must be `200` with a complete body; anything else is
//! counted as an error, printed, and makes the run fail.
//!
//! The load generator, the backend and llamagate share the machine's cores, so the
//! absolute figures mostly measure the machine; compare them only as the
//! proxy/direct ratios within one run.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p llamagate --bench load
//! LOAD_CONCURRENCY=32 LOAD_SECONDS=10 cargo bench -p llamagate --bench load
//! ```
//!
//! Under `cargo test --benches` (no `--bench` argument) it does nothing.

use std::collections::{BTreeMap, VecDeque};
use std::error::Error as StdError;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// The model the backend serves and the requests ask for.
const MODEL: &str = "llama3.2";
/// Content chunks the simulated backend streams before the done frame.
const CHUNKS: usize = 5;
/// Load before each measured window, not counted.
const WARM_UP: Duration = Duration::from_secs(1);
/// A request taking longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child process may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines kept per child, to show when something goes wrong.
const LOG_TAIL: usize = 50;

const CHAT: &str =
    r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}"#;
const CHAT_STREAM: &str =
    r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One kind of request the load repeats.
struct Scenario {
    name: &'static str,
    method: Method,
    path: &'static str,
    body: &'static str,
    /// A complete answer contains this (for chats, only the final frame has it).
    expect: &'static str,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "chat, stream:false",
            method: Method::POST,
            path: "/api/chat",
            body: CHAT,
            expect: r#""done":true"#,
        },
        Scenario {
            name: "chat, streamed (NDJSON)",
            method: Method::POST,
            path: "/api/chat",
            body: CHAT_STREAM,
            expect: r#""done":true"#,
        },
        Scenario {
            name: "tags (fan-out)",
            method: Method::GET,
            path: "/api/tags",
            body: "",
            expect: r#""models""#,
        },
    ]
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and a
    // timed load run has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: skipped (run it with `cargo bench -p llamagate --bench load`)");
        return Ok(());
    }
    let concurrency: usize = env_or("LOAD_CONCURRENCY", 16)?;
    let seconds: f64 = env_or("LOAD_SECONDS", 5.0)?;
    if concurrency == 0 || !(seconds > 0.0 && seconds.is_finite()) {
        bail!("LOAD_CONCURRENCY and LOAD_SECONDS must be positive");
    }
    let window = Duration::from_secs_f64(seconds);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{cores} core(s), shared by the load generator, the simulated backend and llamagate: \
         absolute figures depend on the machine, compare them only as ratios within this run."
    );

    // Both children are killed when these guards drop, also on error or panic.
    let (mut backend, backend_url) = start_backend()?;
    let (mut proxy, proxy_url) = start_proxy(&backend_url)?;
    println!(
        "backend {backend_url}, llamagate {proxy_url}; concurrency {concurrency}, \
         {seconds} s per run after a {} s warm-up",
        WARM_UP.as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let mut total_errors = 0;
    for scenario in scenarios() {
        let direct = runtime.block_on(run_load(&backend_url, &scenario, concurrency, window))?;
        let proxied = runtime.block_on(run_load(&proxy_url, &scenario, concurrency, window))?;
        print_scenario(&scenario, &direct, &proxied);
        total_errors += direct.error_count() + proxied.error_count();
    }
    drop(runtime);

    // A child that died or complained during the run explains odd figures.
    for child in [&mut proxy, &mut backend] {
        child.report_problems();
    }
    if total_errors > 0 {
        bail!("{total_errors} request(s) failed; the figures above are not trustworthy");
    }
    Ok(())
}

/// Reads a number from the environment, or `default` if the variable is unset.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number")),
        _ => Ok(default),
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Picks the address out of a line a child prints when it listens.
type Extract = fn(&str) -> Option<String>;

/// A child process, killed (and reaped) on drop.
struct Proc {
    name: &'static str,
    child: Child,
    /// The last lines it wrote to stdout or stderr.
    logs: Arc<Mutex<VecDeque<String>>>,
    /// Lines logged at WARN or ERROR level.
    complaints: Arc<AtomicU64>,
}

impl Proc {
    /// Starts `llamagate args…` and waits until a line of its output yields
    /// an address through `extract`; returns the process and that address.
    fn start(
        name: &'static str,
        args: &[&str],
        extract: Extract,
    ) -> anyhow::Result<(Proc, String)> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_llamagate"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only the flags above configure the children.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("LLAMAGATE_") || key_str.starts_with("GOLLAMAS_") {
                command.env_remove(&key);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Guard first, so the child is killed if anything below fails.
        let proc = Proc {
            name,
            child,
            logs: Default::default(),
            complaints: Default::default(),
        };
        // Both pipes are drained for the life of the child, so it never blocks
        // on a full pipe; whichever first shows the address reports it.
        let (tx, rx) = mpsc::channel();
        proc.drain(stdout, extract, tx.clone());
        proc.drain(stderr, extract, tx);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok((proc, addr)),
            // Disconnected: both pipes closed, the child exited.
            Err(e) => {
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => "did not listen in time",
                    mpsc::RecvTimeoutError::Disconnected => "exited before listening",
                };
                // Let the drain threads catch up with the last lines.
                std::thread::sleep(Duration::from_millis(100));
                bail!("the {name} {why}; its output:\n{}", proc.tail())
            }
        }
    }

    /// Reads `pipe` line by line on a thread until it closes: keeps the last
    /// lines, counts warnings, and sends the first address `extract` finds.
    fn drain(&self, pipe: impl Read + Send + 'static, extract: Extract, tx: mpsc::Sender<String>) {
        let logs = self.logs.clone();
        let complaints = self.complaints.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.is_some() {
                    if let Some(addr) = extract(&line) {
                        let _ = tx.take().map(|tx| tx.send(addr));
                    }
                }
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    complaints.fetch_add(1, Ordering::Relaxed);
                }
                let mut logs = logs.lock().unwrap_or_else(|e| e.into_inner());
                if logs.len() == LOG_TAIL {
                    logs.pop_front();
                }
                logs.push_back(line);
            }
        });
    }

    /// The last lines the child wrote.
    fn tail(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.iter().map(|l| format!("  | {l}\n")).collect()
    }

    /// Prints whether the child exited or logged warnings during the run.
    fn report_problems(&mut self) {
        let exited = self.child.try_wait().ok().flatten();
        let complaints = self.complaints.load(Ordering::Relaxed);
        if let Some(status) = exited {
            println!("\nthe {} exited during the run ({status})", self.name);
        } else if complaints > 0 {
            println!(
                "\nthe {} logged {complaints} warning(s)/error(s)",
                self.name
            );
        } else {
            return;
        }
        println!("last lines of its output:\n{}", self.tail());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the simulated backend; returns it and its base URL.
fn start_backend() -> anyhow::Result<(Proc, String)> {
    let chunks = CHUNKS.to_string();
    Proc::start(
        "simulated backend",
        &[
            "--listen",
            "127.0.0.1:0",
            "--level",
            "warn",
            "sim",
            "--model",
            MODEL,
            "--chunks",
            &chunks,
            "--chunk-delay-ms",
            "0",
        ],
        // `simulated Ollama listening on http://127.0.0.1:PORT` (stdout)
        |line| {
            line.strip_prefix("simulated Ollama listening on ")
                .map(|url| url.trim().to_string())
        },
    )
}

/// Starts llamagate in front of `backend_url`; returns it and its base URL.
fn start_proxy(backend_url: &str) -> anyhow::Result<(Proc, String)> {
    let route = format!("{MODEL}={backend_url}");
    Proc::start(
        "llamagate",
        // `info`, because the line that says where it listens is logged at info
        // level; llamagate logs nothing per request at that level.
        &[
            "--listen",
            "127.0.0.1:0",
            "--proxy",
            &route,
            // The simulated backend answers at once: slots must not bind.
            "--parallel",
            "4096",
            "--level",
            "info",
        ],
        // `... llamagate is listening address=127.0.0.1:PORT ...` (stderr)
        |line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .map(|addr| format!("http://{addr}"))
        },
    )
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// What one closed-loop run against one target measured.
#[derive(Default)]
struct RunStats {
    /// Latencies of the successful requests completed inside the window.
    latencies: Vec<Duration>,
    /// Failed requests completed inside the window, by cause.
    errors: BTreeMap<String, u64>,
    /// The measured window.
    window: Duration,
}

impl RunStats {
    fn merge(&mut self, other: RunStats) {
        self.latencies.extend(other.latencies);
        for (cause, n) in other.errors {
            *self.errors.entry(cause).or_default() += n;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful requests per second.
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64()
    }

    /// The `p`-quantile latency (nearest rank); `latencies` must be sorted.
    fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.latencies.len();
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.latencies.get(rank - 1).copied()
    }
}

/// Runs `concurrency` closed-loop workers against `base_url` for a warm-up
/// then a measured `window`, with a fresh connection pool.
async fn run_load(
    base_url: &str,
    scenario: &Scenario,
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<RunStats> {
    let uri: Uri = format!("{base_url}{}", scenario.path)
        .parse()
        .context("building the request URI")?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let target = Arc::new(Target {
        client,
        method: scenario.method.clone(),
        uri,
        body: Bytes::from_static(scenario.body.as_bytes()),
        expect: scenario.expect.as_bytes(),
    });
    let start = Instant::now() + WARM_UP;
    let end = start + window;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(target.clone(), start, end)))
        .collect();
    let mut stats = RunStats {
        window,
        ..RunStats::default()
    };
    for w in workers {
        stats.merge(w.await.context("a load worker panicked")?);
    }
    stats.latencies.sort_unstable();
    Ok(stats)
}

/// The request a run repeats, and how it is sent.
struct Target {
    client: HttpClient,
    method: Method,
    uri: Uri,
    body: Bytes,
    expect: &'static [u8],
}

/// Sends requests one after the other until `end`; records those that
/// complete within `[start, end]`.
async fn worker(target: Arc<Target>, start: Instant, end: Instant) -> RunStats {
    let mut stats = RunStats::default();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&target))
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer within {REQUEST_TIMEOUT:?}")));
        let done = Instant::now();
        if done < start || done > end {
            continue; // warm-up, or finished after the window closed
        }
        match outcome {
            Ok(()) => stats.latencies.push(done - sent),
            Err(cause) => *stats.errors.entry(cause).or_default() += 1,
        }
    }
    stats
}

/// One request: sends it, reads the whole answer and checks it.
async fn exchange(target: &Target) -> Result<(), String> {
    let mut request = Request::builder()
        .method(target.method.clone())
        .uri(target.uri.clone());
    if !target.body.is_empty() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(target.body.clone()))
        .map_err(|e| format!("building the request: {e}"))?;
    let response = target
        .client
        .request(request)
        .await
        .map_err(|e| format!("request failed: {}", chain(&e)))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body broke: {}", chain(&e)))?
        .to_bytes();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    if !body
        .windows(target.expect.len())
        .any(|w| w == target.expect)
    {
        return Err(format!(
            "incomplete answer: no {} in the body",
            String::from_utf8_lossy(target.expect)
        ));
    }
    Ok(())
}

/// An error with its causes, `outer: inner: …`.
fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn print_scenario(scenario: &Scenario, direct: &RunStats, proxied: &RunStats) {
    println!(
        "\n{} ({} {})",
        scenario.name, scenario.method, scenario.path
    );
    println!(
        "  {:<10} {:>9} {:>11} {:>9} {:>9} {:>7}",
        "target", "requests", "requests/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, stats) in [("direct", direct), ("llamagate", proxied)] {
        println!(
            "  {:<10} {:>9} {:>11.1} {:>9} {:>9} {:>7}",
            name,
            stats.latencies.len(),
            stats.rps(),
            ms(stats.percentile(0.50)),
            ms(stats.percentile(0.99)),
            stats.error_count(),
        );
        for (cause, n) in &stats.errors {
            println!("    {n} x {cause}");
        }
    }
    println!(
        "  proxy/direct: requests/s x{}, p50 x{}, p99 x{}",
        ratio(Some(proxied.rps()), Some(direct.rps())),
        ratio(
            proxied.percentile(0.50).map(|d| d.as_secs_f64()),
            direct.percentile(0.50).map(|d| d.as_secs_f64())
        ),
        ratio(
            proxied.percentile(0.99).map(|d| d.as_secs_f64()),
            direct.percentile(0.99).map(|d| d.as_secs_f64())
        ),
    );
}

/// A latency in milliseconds with 2 decimals, or `-` if there is none.
fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

/// `a / b` with 2 decimals, or `-` if undefined.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}
