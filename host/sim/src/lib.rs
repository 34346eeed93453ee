//! A simulated Ollama server, for tests and for `llamagate demo` / `llamagate sim`.
//!
//! The simulator speaks the Ollama HTTP API as described in `OLLAMA_API.md`: the
//! native `/api/*` endpoints (NDJSON streams, Go-worded errors, load and unload
//! requests), the OpenAI-compatible `/v1/*` layer (SSE streams, error envelopes;
//! `/v1/messages` streams Anthropic's `event:` sequence) and
//! Gin's router behaviour (`404 page not found`, `405 method not allowed`, trailing
//! slash redirects, the loopback `Host` check). Bodies are compact JSON written the
//! way Go's `encoding/json` writes them (struct field order, `<>&` escaped).
//!
//! Generated text is deterministic: chunk `i` of a reply to model `m` is the `i`-th
//! word of `Hello from m. This is a simulated reply.` (see [`expected_text`]), so
//! tests can assert on content. Magic markers in the prompt (generate,
//! `/v1/completions`) or in the last message (chat, `/v1/chat/completions`) drive
//! failures:
//!
//! - `[[abort]]`: two chunks, then the connection is cut without a terminating chunk;
//! - `[[error]]`: two chunks, then `{"error":"simulated failure"}` (native) or the
//!   end of the SSE stream without `data: [DONE]` (`/v1`);
//! - `[[status500]]`: HTTP 500 `simulated failure` before anything is streamed.
//!
//! Pulling a model whose name starts with `missing` fails the way a pull of an
//! unknown registry model does. Every request is recorded (see [`SimHandle::requests`]).
//!
//! Faults a test switches on and off while the simulator runs (shared state: a
//! request already being answered keeps the behaviour it started with) are set
//! with [`SimHandle::set_fault`] (see [`Fault`]): a busy server answering 503 at
//! once, a chosen error status, a server that reads the request and never answers
//! or stalls after the first chunk, one that closes the connection before the
//! response head, and one whose every connection is closed. The probe endpoints
//! stay healthy under every fault but [`Fault::Down`], since a backend whose probes
//! pass while inference fails is the case a gateway gets wrong.
//! [`SimOptions::load_delay`] simulates a cold model load and
//! [`SimOptions::response_delay`] a slow answer; [`SimHandle::inference_count`] and
//! [`SimHandle::max_concurrent`] count what arrived. [`SimHandle::shutdown`] closes
//! every connection, and [`spawn_at`] starts a simulator again on the same address,
//! to kill and restart a backend.
//!
//! Behaviour that changed between Ollama releases follows [`SimOptions::version`]:
//! the chat not-found wording (0.12.0), `405` answers (0.7.0), real error statuses
//! before a stream starts (0.12.6), `/v1/embeddings` `encoding_format` (0.12.7),
//! `/api/show` capabilities (0.6.4) and `/api/ps` `context_length` (0.10.0).
//!
//! This crate is a test fixture, not part of llamagate's library: the tests, the
//! benches and the `demo`/`sim` commands depend on it, and it depends on nothing
//! of the gateway's (only on `llamagate-sdk` for Ollama's model-name rules).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use llamagate_sdk::names;
use serde_json::Value;
use tokio::net::TcpListener;

mod go;
use go::*;

/// Behaviour of one simulated backend.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Served models, given as e.g. `llama3.2` or `qwen2.5:14b`; listed in display
    /// form (`llama3.2:latest`), the first one newest.
    pub models: Vec<String>,
    /// Models reported by `/api/ps` as loaded at start.
    pub loaded: Vec<String>,
    /// The `/api/version` answer, e.g. `0.12.3`; also selects version-dependent behaviour.
    pub version: String,
    /// Number of content chunks a streamed generate/chat emits before the done frame.
    pub chunks: usize,
    /// Sleep between streamed chunks (and lines of pull/push/create progress).
    pub chunk_delay: Duration,
    /// Keep every request for [`SimHandle::requests`]; off for long load runs,
    /// where the record would grow without bound.
    pub record: bool,
    /// A cold load: an inference request for a served model that is not loaded
    /// waits this long before the first byte of its answer, and the model shows in
    /// `/api/ps` only after it. Requests for a model whose load is under way wait
    /// for the same load, as Ollama's scheduler makes them. Zero (the default): no wait.
    pub load_delay: Duration,
    /// A wait before every inference answer (after any cold load), to hold a
    /// backend's slots busy. Zero by default.
    pub response_delay: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            models: vec!["llama3.2".to_string()],
            loaded: Vec::new(),
            version: "0.12.3".to_string(),
            chunks: 5,
            chunk_delay: Duration::ZERO,
            record: true,
            load_delay: Duration::ZERO,
            response_delay: Duration::ZERO,
        }
    }
}

/// The message of Ollama's 503 when its queue is full (`OLLAMA_MAX_QUEUE`), two
/// spaces included.
pub const BUSY_MESSAGE: &str = "server busy, please try again.  maximum pending requests exceeded";

/// A failure the simulator shows on purpose, switched at run time with
/// [`SimHandle::set_fault`].
///
/// *Inference endpoints* are `/api/generate`, `/api/chat`, `/api/embed`,
/// `/api/embeddings`, `/v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings`, `/v1/responses` and `/v1/messages`. *Probe endpoints* are the
/// read-only ones a gateway asks on its own: `/`, `/api/version`, `/api/tags`,
/// `/api/ps`, `/api/show`, `/v1/models` and `/v1/models/{model}`; they answer
/// normally under every fault but [`Fault::Down`]. Everything else (pull, push,
/// create, copy, delete, blobs) is a *management endpoint*.
///
/// A fault applies to requests that would reach a handler: the `Host` check,
/// unknown paths and wrong methods answer as usual (except under `Down`). The
/// fault is read when a request's head arrives; switching it does not change a
/// request already being answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Normal service.
    #[default]
    None,
    /// Inference endpoints answer at once `503` with
    /// `{"error":"server busy, please try again.  maximum pending requests exceeded"}`
    /// ([`BUSY_MESSAGE`]; under `/v1` in the OpenAI envelope, on `/v1/messages` in
    /// Anthropic's with type `overloaded_error`), as Ollama does when its queue is
    /// full. Management endpoints answer normally.
    Busy,
    /// Inference endpoints answer at once this status with
    /// `{"error":"simulated failure"}` (in each API's error shape, as for `Busy`).
    Status(u16),
    /// Inference and management endpoints read the request, then never answer;
    /// the connection stays open until the client or [`SimHandle::shutdown`]
    /// closes it.
    StallHead,
    /// Streamed answers (inference and management) send the head and their first
    /// chunk, then stall forever with the connection open; answers that do not
    /// stream behave as under [`Fault::StallHead`] (after any load and response
    /// delay).
    StallAfterFirst,
    /// Inference and management endpoints read the request (body included), then
    /// close the connection without any response.
    DropBeforeHead,
    /// Every request, probes included, has its connection closed as soon as its
    /// head is read (the body is not read, and the request is recorded with an
    /// empty body).
    Down,
}

/// One request the simulator received, as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request method, e.g. `POST`.
    pub method: String,
    /// The request target: path and query, as sent.
    pub path: String,
    /// Every header, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The full request body.
    pub body: bytes::Bytes,
}

impl Recorded {
    /// The body parsed as JSON; `Null` if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running simulated backend; stops when shut down or dropped.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.recorded).clone()
    }

    /// Every request received so far, oldest first; the record is cleared.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut *lock(&self.state.recorded))
    }

    /// How many streamed answers were abandoned by the client before their end.
    pub fn cancelled(&self) -> u64 {
        self.state
            .cancelled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Switches the fault every request from now on meets (see [`Fault`]).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = fault;
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *lock(&self.state.fault)
    }

    /// How many requests for an inference endpoint arrived (their head was read),
    /// whatever the fault, including ones refused by the `Host` check.
    pub fn inference_count(&self) -> u64 {
        self.state.counters.received.load(Ordering::SeqCst)
    }

    /// How many inference requests are being answered right now: from the arrival
    /// of the head until the answer's last byte is handed to the connection, or the
    /// connection closes.
    pub fn in_flight(&self) -> u64 {
        self.state.counters.active.load(Ordering::SeqCst)
    }

    /// The highest number of inference requests answered at the same time so far
    /// (as counted by [`SimHandle::in_flight`]).
    pub fn max_concurrent(&self) -> u64 {
        self.state.counters.max_active.load(Ordering::SeqCst)
    }

    /// Stops accepting connections and closes every open one: idle keep-alive
    /// connections, stalled requests and streams cut mid-way, as a killed process
    /// would. The closing happens in the background within moments; [`spawn_at`]
    /// waits for the address to be free.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Binds `127.0.0.1:0` and serves in a tokio task.
pub async fn spawn(opts: SimOptions) -> anyhow::Result<SimHandle> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    start(listener, opts)
}

/// Binds exactly `addr` (with `SO_REUSEADDR`, so the port of a simulator just shut
/// down can be taken again despite its closed connections) and serves in a tokio
/// task: a backend restarted on the same port. While the address is still in use
/// (a simulator shut down a moment ago closes in the background) it tries again
/// for up to 5 s. The new simulator starts afresh from `opts`: no fault, nothing
/// recorded or counted, only `opts.loaded` loaded.
pub async fn spawn_at(addr: SocketAddr, opts: SimOptions) -> anyhow::Result<SimHandle> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match bind_reusable(addr) {
            Ok(listener) => break listener,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("binding {addr}"))),
        }
    };
    start(listener, opts)
}

fn bind_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn start(listener: TcpListener, opts: SimOptions) -> anyhow::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let state = Arc::new(State::new(opts, addr));
    let task = tokio::spawn(run(listener, state.clone()));
    Ok(SimHandle { addr, state, task })
}

/// Serves on `listener` until the future is dropped (used by `llamagate demo` /
/// `llamagate sim`). Dropping the future also closes every open connection.
pub async fn serve(listener: TcpListener, opts: SimOptions) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    run(listener, Arc::new(State::new(opts, addr))).await;
    Ok(())
}

/// The full text a reply to `model` carries when it streams `chunks` chunks: the
/// chunks are `Hello`, ` from`, ` <model>`, `.`, ` This`, ` is`, ` a`, ` simulated`,
/// ` reply`, `.` (then again from the start).
pub fn expected_text(model: &str, chunks: usize) -> String {
    (0..chunks).map(|i| token(i, model)).collect()
}

// ---------------------------------------------------------------------------
// Server loop and shared state

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type SimBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// The local UTC offset the simulated server reports in `modified_at`/`expires_at`.
const LOCAL_OFFSET_SECS: i64 = -7 * 3600;
/// `modified_at` of the first configured model: 2025-05-04T17:37:44.706015396-07:00.
const BASE_MODIFIED_NS: i128 = 1_746_405_464_706_015_396;
const NS: i128 = 1_000_000_000;
const DEFAULT_KEEP_ALIVE_NS: i128 = 5 * 60 * NS;
const SIMULATED_FAILURE: &str = "simulated failure";

async fn run(listener: TcpListener, state: Arc<State>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| handle(state.clone(), req));
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), svc);
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "sim connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sim accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

struct State {
    version: String,
    /// `major.minor.patch` of `version` (pre-release and build suffixes ignored);
    /// `None` for a development build (`0.0.0`) or a version that is not semver.
    ver: Option<(u64, u64, u64)>,
    chunks: usize,
    delay: Duration,
    record: bool,
    /// Whether the listener is on loopback (then the `Host` check applies).
    loopback: bool,
    hostname: String,
    inner: Mutex<Inner>,
    recorded: Mutex<Vec<Recorded>>,
    counter: AtomicU64,
    /// Streams the client abandoned before their end.
    cancelled: Arc<AtomicU64>,
    /// The fault in force (see [`Fault`]).
    fault: Mutex<Fault>,
    load_delay: Duration,
    response_delay: Duration,
    /// Cold loads under way: model key -> when the load is done.
    loading: Mutex<HashMap<String, tokio::time::Instant>>,
    counters: Arc<Counters>,
}

/// Inference requests received and being answered.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    active: AtomicU64,
    max_active: AtomicU64,
}

/// One inference request being answered; counted in [`Counters::active`] until dropped.
struct Active(Arc<Counters>);

impl Active {
    fn new(counters: &Arc<Counters>) -> Active {
        let now = counters.active.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_active.fetch_max(now, Ordering::SeqCst);
        Active(counters.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Inner {
    models: Vec<ModelEntry>,
    loaded: Vec<Loaded>,
    blobs: HashSet<String>,
}

#[derive(Clone)]
struct ModelEntry {
    /// Display form, e.g. `llama3.2:latest`.
    name: String,
    digest: String,
    size: u64,
    modified_ns: i128,
}

#[derive(Clone)]
struct Loaded {
    entry: ModelEntry,
    expires_ns: i128,
    ctx: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn new(opts: SimOptions, addr: SocketAddr) -> State {
        let mut models: Vec<ModelEntry> = Vec::new();
        for (i, name) in opts.models.iter().enumerate() {
            if models.iter().any(|m| names::same(&m.name, name)) {
                continue;
            }
            models.push(ModelEntry::new(
                name,
                BASE_MODIFIED_NS - i as i128 * 3600 * NS,
            ));
        }
        let now = now_ns();
        let loaded = opts
            .loaded
            .iter()
            .map(|name| Loaded {
                entry: models
                    .iter()
                    .find(|m| names::same(&m.name, name))
                    .cloned()
                    .unwrap_or_else(|| ModelEntry::new(name, BASE_MODIFIED_NS)),
                expires_ns: now + DEFAULT_KEEP_ALIVE_NS,
                ctx: 4096,
            })
            .collect();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_ascii_lowercase())
            .unwrap_or_default();
        State {
            ver: release(&opts.version),
            version: opts.version,
            chunks: opts.chunks,
            delay: opts.chunk_delay,
            record: opts.record,
            loopback: addr.ip().is_loopback(),
            cancelled: Arc::default(),
            hostname,
            inner: Mutex::new(Inner {
                models,
                loaded,
                blobs: HashSet::new(),
            }),
            recorded: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            load_delay: opts.load_delay,
            response_delay: opts.response_delay,
            loading: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        }
    }

    /// Waits for a cold load of the model `body` names, if it is served and not
    /// loaded, then marks it loaded; requests arriving during the load wait for it.
    async fn cold_load(&self, body: &[u8]) {
        if self.load_delay.is_zero() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let Some(entry) = str_field(&v, "model").and_then(|m| self.find(&m)) else {
            return;
        };
        let key = names::key(&entry.name);
        let ready_at = {
            // Lock order: `loading`, then `inner` (as below).
            let mut loading = lock(&self.loading);
            let loaded = lock(&self.inner)
                .loaded
                .iter()
                .any(|l| names::same(&l.entry.name, &entry.name));
            if loaded {
                return;
            }
            *loading
                .entry(key.clone())
                .or_insert_with(|| tokio::time::Instant::now() + self.load_delay)
        };
        tokio::time::sleep_until(ready_at).await;
        let mut loading = lock(&self.loading);
        if loading.get(&key) == Some(&ready_at) {
            loading.remove(&key);
        }
        // Loaded before the lock is let go, so that no request sees the model
        // neither loading nor loaded.
        self.load(&entry, None, None);
    }

    fn at_least(&self, major: u64, minor: u64, patch: u64) -> bool {
        // Development builds report 0.0.0 and behave like the newest release.
        self.ver.is_none_or(|v| v >= (major, minor, patch))
    }

    fn find(&self, name: &str) -> Option<ModelEntry> {
        if !valid_name(name) {
            return None;
        }
        lock(&self.inner)
            .models
            .iter()
            .find(|m| names::same(&m.name, name))
            .cloned()
    }

    fn add_model(&self, entry: ModelEntry) {
        let mut inner = lock(&self.inner);
        inner.models.retain(|m| !names::same(&m.name, &entry.name));
        inner.models.push(entry);
    }

    /// Marks a model loaded (or refreshes its timer), as a scheduled request does.
    fn load(&self, entry: &ModelEntry, keep_alive: Option<i128>, ctx: Option<u64>) {
        let keep = keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE_NS);
        let expires_ns = now_ns().saturating_add(keep);
        let mut inner = lock(&self.inner);
        let ctx = ctx.unwrap_or(4096);
        match inner
            .loaded
            .iter_mut()
            .find(|l| names::same(&l.entry.name, &entry.name))
        {
            Some(l) => {
                l.expires_ns = expires_ns;
                l.ctx = ctx;
            }
            None => inner.loaded.push(Loaded {
                entry: entry.clone(),
                expires_ns,
                ctx,
            }),
        }
    }

    fn unload(&self, name: &str) {
        lock(&self.inner)
            .loaded
            .retain(|l| !names::same(&l.entry.name, name));
    }

    /// Whether a keep-alive asks for the model to be unloaded after the request.
    fn is_unload(&self, keep_alive: Option<i128>) -> bool {
        match keep_alive {
            Some(0) => true,
            // Before 0.12.4, any keep-alive under one second counted as 0.
            Some(d) if !self.at_least(0, 12, 4) => (0..NS).contains(&d),
            _ => false,
        }
    }

    fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) % 999
    }

    fn allowed_host(&self, host: &str) -> bool {
        if !self.loopback {
            return true;
        }
        let host = host.trim();
        let bare = if let Some(rest) = host.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else if host.matches(':').count() == 1 {
            host.split(':').next().unwrap_or("")
        } else {
            host
        };
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return match ip {
                IpAddr::V4(v4) => {
                    v4.is_loopback() || v4.is_private() || v4.is_unspecified() || v4.is_link_local()
                }
                IpAddr::V6(v6) => {
                    v6.is_loopback()
                        || v6.is_unspecified()
                        || (v6.segments()[0] & 0xfe00) == 0xfc00
                        || (v6.segments()[0] & 0xffc0) == 0xfe80
                }
            };
        }
        let bare = bare.to_ascii_lowercase();
        bare.is_empty()
            || bare == "localhost"
            || (!self.hostname.is_empty() && bare == self.hostname)
            || [".localhost", ".local", ".internal"]
                .iter()
                .any(|tld| bare.ends_with(tld))
    }
}

impl ModelEntry {
    fn new(name: &str, modified_ns: i128) -> ModelEntry {
        let display = names::display(name);
        let key = names::key(name);
        ModelEntry {
            digest: digest_hex(&key),
            size: 1_000_000_000 + fnv(&key, 7) % 4_000_000_000,
            name: display,
            modified_ns,
        }
    }

    fn info(&self) -> ModelInfo {
        ModelInfo::of(&self.name)
    }
}

/// What the simulator makes up about a model from its name.
struct ModelInfo {
    family: String,
    parameter_size: String,
    quantization: &'static str,
    embedding: bool,
}

impl ModelInfo {
    fn of(display: &str) -> ModelInfo {
        let last = display.rsplit('/').next().unwrap_or(display);
        let (model, tag) = last.rsplit_once(':').unwrap_or((last, "latest"));
        let model = model.to_ascii_lowercase();
        let embedding = ["embed", "minilm", "bge", "e5-"]
            .iter()
            .any(|m| model.contains(m));
        let family: String = model
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        let family = if embedding {
            "bert".to_string()
        } else if family.is_empty() {
            "llama".to_string()
        } else {
            family
        };
        let lower_tag = tag.to_ascii_lowercase();
        let size_tag = lower_tag.split('-').next().unwrap_or("");
        let parameter_size = match size_tag.strip_suffix(['b', 'm']) {
            Some(num) if !num.is_empty() && num.parse::<f64>().is_ok() => {
                size_tag.to_ascii_uppercase()
            }
            _ if embedding => "23M".to_string(),
            _ => "3.2B".to_string(),
        };
        ModelInfo {
            family,
            parameter_size,
            quantization: if embedding { "F16" } else { "Q4_K_M" },
            embedding,
        }
    }

    fn details_json(&self) -> String {
        Obj::new()
            .s("parent_model", "")
            .s("format", "gguf")
            .s("family", &self.family)
            .raw("families", &str_array([self.family.as_str()]))
            .s("parameter_size", &self.parameter_size)
            .s("quantization_level", self.quantization)
            .done()
    }

    fn capabilities(&self) -> Vec<&'static str> {
        if self.embedding {
            vec!["embedding"]
        } else {
            vec!["completion", "tools"]
        }
    }
}

// ---------------------------------------------------------------------------
// Request handling

/// One parsed request, with its body.
struct Req {
    method: Method,
    /// Percent-decoded path, as Go's `URL.Path`.
    path: String,
    query: Option<String>,
    body: Bytes,
}

enum Piece {
    Emit(Box<dyn FnOnce() -> Bytes + Send>),
    Abort,
    /// Wait forever (the connection stays open).
    Stall,
}

enum Reply {
    Full {
        status: StatusCode,
        ctype: Option<&'static str>,
        body: Bytes,
        location: Option<String>,
    },
    Stream {
        ctype: &'static str,
        pieces: Vec<Piece>,
    },
    /// Drop the connection without answering.
    Abort,
}

const JSON_CT: &str = "application/json; charset=utf-8";
const OPENAI_JSON_CT: &str = "application/json";
const NDJSON_CT: &str = "application/x-ndjson";
const SSE_CT: &str = "text/event-stream";

fn full(status: StatusCode, ctype: Option<&'static str>, body: impl Into<Bytes>) -> Reply {
    Reply::Full {
        status,
        ctype,
        body: body.into(),
        location: None,
    }
}

fn json_reply(status: StatusCode, body: String) -> Reply {
    full(status, Some(JSON_CT), body)
}

fn ok_json(body: String) -> Reply {
    json_reply(StatusCode::OK, body)
}

fn native_err(status: u16, msg: &str) -> Reply {
    json_reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        error_line(msg),
    )
}

fn error_line(msg: &str) -> String {
    Obj::new().s("error", msg).done()
}

fn openai_err(status: u16, msg: &str) -> Reply {
    let kind = match status {
        400 => "invalid_request_error",
        404 => "not_found_error",
        _ => "api_error",
    };
    let inner = Obj::new()
        .s("message", msg)
        .s("type", kind)
        .null("param")
        .null("code")
        .done();
    full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Some(OPENAI_JSON_CT),
        Obj::new().raw("error", &inner).done(),
    )
}

fn empty(status: StatusCode) -> Reply {
    full(status, None, Bytes::new())
}

fn ndjson(pieces: Vec<Piece>) -> Reply {
    Reply::Stream {
        ctype: NDJSON_CT,
        pieces,
    }
}

fn line(f: impl FnOnce() -> String + Send + 'static) -> Piece {
    Piece::Emit(Box::new(move || {
        let mut s = f();
        s.push('\n');
        Bytes::from(s)
    }))
}

fn fixed_line(s: String) -> Piece {
    line(move || s)
}

fn sse_event(f: impl FnOnce() -> String + Send + 'static) -> Piece {
    Piece::Emit(Box::new(move || Bytes::from(format!("data: {}\n\n", f()))))
}

/// Whether Ollama, with no `OLLAMA_ORIGINS`, allows a browser `origin`:
/// `http(s)://` localhost, 127.0.0.1 or 0.0.0.0 with any port or none, and
/// the `app`, `file`, `tauri`, `vscode-webview` and `vscode-file` schemes.
pub fn ollama_allows_origin(origin: &str) -> bool {
    let hosts = ["localhost", "127.0.0.1", "0.0.0.0"];
    let web = ["http://", "https://"].iter().any(|scheme| {
        origin.strip_prefix(scheme).is_some_and(|rest| {
            hosts
                .iter()
                .any(|h| rest == *h || rest.strip_prefix(h).is_some_and(|p| p.starts_with(':')))
        })
    });
    web || [
        "app://",
        "file://",
        "tauri://",
        "vscode-webview://",
        "vscode-file://",
    ]
    .iter()
    .any(|scheme| origin.starts_with(scheme))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<SimBody>, BoxError> {
    let (parts, body) = req.into_parts();
    // Go's `net/http` routes on the percent-decoded path.
    let path = percent_encoding::percent_decode_str(parts.uri.path())
        .decode_utf8_lossy()
        .into_owned();
    let handled = route_methods(&path).is_some_and(|m| m.contains(&parts.method));
    let class = match handled {
        true => class_of(&path),
        false => Class::Other,
    };
    let active = (class == Class::Inference).then(|| {
        state.counters.received.fetch_add(1, Ordering::SeqCst);
        Active::new(&state.counters)
    });
    let fault = *lock(&state.fault);
    let body = match fault {
        // The body is not even read.
        Fault::Down => Bytes::new(),
        _ => body.collect().await?.to_bytes(),
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    if state.record {
        lock(&state.recorded).push(Recorded {
            method: parts.method.as_str().to_string(),
            path: target,
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.clone(),
        });
    }
    if fault == Fault::Down {
        return Err("simulated down backend".into());
    }

    let head = parts.method == Method::HEAD;
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if !state.allowed_host(&host) {
        return into_response(empty(StatusCode::FORBIDDEN), head, &state, None);
    }
    // Ollama's CORS middleware (gin-contrib/cors, default OLLAMA_ORIGINS):
    // an origin outside its list is refused, a preflight answered.
    if let Some(origin) = parts.headers.get(hyper::header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let same = origin == format!("http://{host}") || origin == format!("https://{host}");
        if !origin.is_empty() && !same {
            if !ollama_allows_origin(&origin) {
                return into_response(empty(StatusCode::FORBIDDEN), head, &state, None);
            }
            if parts.method == Method::OPTIONS {
                return into_response(empty(StatusCode::NO_CONTENT), head, &state, None);
            }
        }
    }
    let faulted = matches!(class, Class::Inference | Class::Management);
    match fault {
        Fault::Busy if class == Class::Inference => {
            return into_response(fault_reply(&path, 503, BUSY_MESSAGE), head, &state, None);
        }
        Fault::Status(code) if class == Class::Inference => {
            let reply = fault_reply(&path, code, SIMULATED_FAILURE);
            return into_response(reply, head, &state, None);
        }
        Fault::StallHead if faulted => stall(active).await,
        Fault::DropBeforeHead if faulted => return Err("simulated drop before the head".into()),
        _ => {}
    }
    if class == Class::Inference {
        state.cold_load(&body).await;
    }
    let req = Req {
        method: parts.method,
        path,
        query: parts.uri.query().map(str::to_string),
        body,
    };
    let mut reply = route(&state, &req);
    if class == Class::Inference && !state.response_delay.is_zero() {
        tokio::time::sleep(state.response_delay).await;
    }
    if fault == Fault::StallAfterFirst && faulted {
        match &mut reply {
            Reply::Stream { pieces, .. } => {
                pieces.truncate(1);
                pieces.push(Piece::Stall);
            }
            Reply::Full { .. } | Reply::Abort => stall(active).await,
        }
    }
    into_response(reply, head, &state, active)
}

/// Never returns; `active` stays counted until the connection closes.
async fn stall(active: Option<Active>) -> ! {
    let _active = active;
    std::future::pending::<()>().await;
    unreachable!("a pending future never completes")
}

/// What a path is, for the faults and counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Generation and embeddings: counted, and subject to every fault.
    Inference,
    /// Pull, push, create, copy, delete, blobs: stalls and drops apply.
    Management,
    /// Probes and listings, and requests no handler answers: only `Down` applies.
    Other,
}

fn class_of(path: &str) -> Class {
    match path {
        "/api/generate"
        | "/api/chat"
        | "/api/embed"
        | "/api/embeddings"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/embeddings"
        | "/v1/responses"
        | "/v1/messages" => Class::Inference,
        "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete" => {
            Class::Management
        }
        _ if path.starts_with("/api/blobs/") => Class::Management,
        _ => Class::Other,
    }
}

/// An error answer of status `code` in the error shape of the API `path` belongs to.
fn fault_reply(path: &str, code: u16, msg: &str) -> Reply {
    if path == "/v1/messages" {
        let kind = match code {
            400 => "invalid_request_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        };
        anthropic_err(code, kind, msg)
    } else if path.starts_with("/v1/") {
        openai_err(code, msg)
    } else {
        native_err(code, msg)
    }
}

/// Counts a stream as cancelled if it is dropped before its last piece; holds
/// the stream's place among the requests being answered until then.
struct Unfinished {
    counter: Arc<AtomicU64>,
    done: bool,
    active: Option<Active>,
}

impl Unfinished {
    fn finish(&mut self) {
        self.done = true;
        self.active = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.done {
            self.counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The response for `reply`; `active` (an inference request being answered) is
/// let go when a full body is handed over, or when a stream ends or is dropped.
fn into_response(
    reply: Reply,
    head: bool,
    state: &State,
    active: Option<Active>,
) -> Result<Response<SimBody>, BoxError> {
    let (delay, cancelled) = (state.delay, &state.cancelled);
    match reply {
        Reply::Abort => Err("simulated abort".into()),
        Reply::Full {
            status,
            ctype,
            body,
            location,
        } => {
            let len = body.len();
            let body = if head { Bytes::new() } else { body };
            let mut resp = Response::new(
                Full::new(body)
                    .map_err(|e: Infallible| match e {})
                    .boxed_unsync(),
            );
            *resp.status_mut() = status;
            if let Some(ct) = ctype {
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            if let Some(loc) = location {
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    resp.headers_mut().insert(LOCATION, v);
                }
            }
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
            Ok(resp)
        }
        Reply::Stream { ctype, pieces } => {
            let guard = Unfinished {
                counter: cancelled.clone(),
                done: false,
                active,
            };
            let frames = stream::unfold(
                (VecDeque::from(pieces), true, guard),
                move |(mut queue, first, mut guard)| async move {
                    let Some(piece) = queue.pop_front() else {
                        guard.finish();
                        return None;
                    };
                    if !first {
                        if delay.is_zero() {
                            // Ollama flushes every line; yielding lets hyper write
                            // what it has, as a real flush would.
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(delay).await;
                        }
                    }
                    let item = match piece {
                        Piece::Emit(f) => Ok(Frame::data(f())),
                        Piece::Stall => std::future::pending().await,
                        Piece::Abort => {
                            queue.clear();
                            Err(std::io::Error::new(
                                std::io::ErrorKind::ConnectionAborted,
                                "simulated abort",
                            ))
                        }
                    };
                    if item.is_err() {
                        guard.finish();
                    }
                    Some((item, (queue, false, guard)))
                },
            );
            let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
            Ok(resp)
        }
    }
}

/// The methods a route answers, or `None` for an unknown path.
fn route_methods(path: &str) -> Option<&'static [Method]> {
    const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
    const GET: &[Method] = &[Method::GET];
    const POST: &[Method] = &[Method::POST];
    const HEAD_POST: &[Method] = &[Method::HEAD, Method::POST];
    const DELETE: &[Method] = &[Method::DELETE];
    let one_segment = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    };
    Some(match path {
        "/" | "/api/version" | "/api/tags" => GET_HEAD,
        "/api/ps" | "/v1/models" => GET,
        "/api/show"
        | "/api/generate"
        | "/api/chat"
        | "/api/embed"
        | "/api/embeddings"
        | "/api/pull"
        | "/api/push"
        | "/api/create"
        | "/api/copy"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/embeddings"
        | "/v1/responses"
        | "/v1/messages" => POST,
        "/api/delete" => DELETE,
        _ if one_segment("/api/blobs/") => HEAD_POST,
        _ if one_segment("/v1/models/") => GET,
        _ => return None,
    })
}

fn route(st: &State, req: &Req) -> Reply {
    let path = req.path.as_str();
    match route_methods(path) {
        Some(methods) if methods.contains(&req.method) => {}
        found => {
            // Gin: redirect to the path without a trailing slash when that route exists.
            if path.len() > 1 && path.ends_with('/') {
                let stripped = &path[..path.len() - 1];
                if route_methods(stripped).is_some_and(|m| m.contains(&req.method)) {
                    let mut location = stripped.to_string();
                    if let Some(q) = &req.query {
                        location.push('?');
                        location.push_str(q);
                    }
                    let get = req.method == Method::GET;
                    let (status, ctype, body) = if get || req.method == Method::HEAD {
                        let status = if get {
                            StatusCode::MOVED_PERMANENTLY
                        } else {
                            StatusCode::TEMPORARY_REDIRECT
                        };
                        let text = status.canonical_reason().unwrap_or("");
                        let body =
                            format!("<a href=\"{}\">{text}</a>.\n\n", html_escape(&location));
                        (status, Some("text/html; charset=utf-8"), Bytes::from(body))
                    } else {
                        (StatusCode::TEMPORARY_REDIRECT, None, Bytes::new())
                    };
                    return Reply::Full {
                        status,
                        ctype,
                        body,
                        location: Some(location),
                    };
                }
            }
            return if found.is_some() && st.at_least(0, 7, 0) {
                full(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Some("text/plain"),
                    "405 method not allowed",
                )
            } else {
                full(
                    StatusCode::NOT_FOUND,
                    Some("text/plain"),
                    "404 page not found",
                )
            };
        }
    }
    match path {
        "/" => full(
            StatusCode::OK,
            Some("text/plain; charset=utf-8"),
            "Ollama is running",
        ),
        "/api/version" => ok_json(Obj::new().s("version", &st.version).done()),
        "/api/tags" => tags(st),
        "/api/ps" => ps(st),
        "/api/show" => show(st, &req.body),
        "/api/generate" => generate(st, &req.body),
        "/api/chat" => chat(st, &req.body),
        "/api/embed" => embed(st, &req.body),
        "/api/embeddings" => embeddings(st, &req.body),
        "/api/pull" => pull(st, &req.body),
        "/api/push" => push(st, &req.body),
        "/api/create" => create(st, &req.body),
        "/api/copy" => copy(st, &req.body),
        "/api/delete" => delete(st, &req.body),
        "/v1/chat/completions" => oai_chat(st, &req.body),
        "/v1/completions" => oai_completions(st, &req.body),
        "/v1/embeddings" => oai_embeddings(st, &req.body),
        "/v1/models" => oai_models(st),
        "/v1/responses" => oai_responses(st, &req.body),
        "/v1/messages" => anthropic_messages(st, &req.body),
        _ => {
            if let Some(digest) = path.strip_prefix("/api/blobs/") {
                blob(st, req.method == Method::HEAD, digest)
            } else if let Some(model) = path.strip_prefix("/v1/models/") {
                oai_model(st, model)
            } else {
                full(
                    StatusCode::NOT_FOUND,
                    Some("text/plain"),
                    "404 page not found",
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Listing endpoints

fn sorted_models(st: &State) -> Vec<ModelEntry> {
    let mut models = lock(&st.inner).models.clone();
    models.sort_by_key(|m| std::cmp::Reverse(m.modified_ns));
    models
}

fn model_json(m: &ModelEntry) -> Obj {
    Obj::new()
        .s("name", &m.name)
        .s("model", &m.name)
        .s("modified_at", &fmt_time(m.modified_ns, LOCAL_OFFSET_SECS))
        .n("size", m.size)
        .s("digest", &m.digest)
        .raw("details", &m.info().details_json())
}

fn tags(st: &State) -> Reply {
    let models = sorted_models(st);
    let items = models.iter().map(|m| model_json(m).done());
    ok_json(Obj::new().raw("models", &array(items)).done())
}

fn ps(st: &State) -> Reply {
    let mut loaded = lock(&st.inner).loaded.clone();
    loaded.sort_by_key(|l| std::cmp::Reverse(l.expires_ns));
    let context = st.at_least(0, 10, 0);
    let items = loaded.iter().map(|l| {
        let m = &l.entry;
        let obj = Obj::new()
            .s("name", &m.name)
            .s("model", &m.name)
            .n("size", m.size)
            .s("digest", &m.digest)
            .raw("details", &m.info().details_json())
            .s("expires_at", &fmt_time(l.expires_ns, LOCAL_OFFSET_SECS))
            .n("size_vram", m.size);
        if context {
            obj.n("context_length", l.ctx).done()
        } else {
            obj.done()
        }
    });
    ok_json(Obj::new().raw("models", &array(items)).done())
}

fn show(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(
        body,
        "ShowRequest",
        &[
            ("model", Kind::Str),
            ("name", Kind::Str),
            ("verbose", Kind::Bool),
            ("options", OPTIONS),
        ],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = non_empty(str_field(&v, "model")).or_else(|| non_empty(str_field(&v, "name")));
    let Some(model) = model else {
        return native_err(400, "model is required");
    };
    let Some(m) = st.find(&model) else {
        return native_err(404, &format!("model '{model}' not found"));
    };
    let info = m.info();
    let template = "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
    let hex = m.digest.clone();
    let modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {name}\n\nFROM /root/.ollama/models/blobs/sha256-{hex}\nTEMPLATE \"\"\"{template}\"\"\"\nPARAMETER stop <|eot_id|>\nLICENSE \"\"\"Simulated license for {name}\"\"\"\n",
        name = m.name
    );
    let arch = info.family.clone();
    let mut model_info = serde_json::Map::new();
    model_info.insert("general.architecture".into(), Value::from(arch.clone()));
    model_info.insert("general.file_type".into(), Value::from(15));
    model_info.insert(
        "general.parameter_count".into(),
        Value::from(m.size * 2 / 3 * 2),
    );
    model_info.insert("general.quantization_version".into(), Value::from(2));
    model_info.insert(format!("{arch}.context_length"), Value::from(131072));
    model_info.insert(
        format!("{arch}.embedding_length"),
        Value::from(if info.embedding { 384 } else { 3072 }),
    );
    model_info.insert("tokenizer.ggml.model".into(), Value::from("gpt2"));
    let mut obj = Obj::new()
        .s("license", &format!("Simulated license for {}", m.name))
        .s("modelfile", &modelfile)
        .s(
            "parameters",
            "stop                           \"<|eot_id|>\"",
        )
        .s("template", template)
        .raw("details", &info.details_json())
        .raw("model_info", &go_json(&Value::Object(model_info)));
    if st.at_least(0, 6, 4) {
        obj = obj.raw("capabilities", &str_array(info.capabilities()));
    }
    ok_json(
        obj.s("modified_at", &fmt_time(m.modified_ns, LOCAL_OFFSET_SECS))
            .done(),
    )
}

// ---------------------------------------------------------------------------
// Generation

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Abort,
    Error,
    Status500,
}

fn trigger_in(text: &str) -> Option<Trigger> {
    if text.contains("[[status500]]") {
        Some(Trigger::Status500)
    } else if text.contains("[[abort]]") {
        Some(Trigger::Abort)
    } else if text.contains("[[error]]") {
        Some(Trigger::Error)
    } else {
        None
    }
}

const WORDS: [&str; 10] = [
    "Hello",
    " from",
    "",
    ".",
    " This",
    " is",
    " a",
    " simulated",
    " reply",
    ".",
];

fn token(i: usize, model: &str) -> String {
    match WORDS[i % WORDS.len()] {
        "" => format!(" {model}"),
        w => w.to_string(),
    }
}

/// One simulated generation.
struct Gen {
    model: String,
    tokens: Vec<String>,
    prompt_tokens: u64,
    done_reason: &'static str,
    trigger: Option<Trigger>,
}

impl Gen {
    fn new(
        st: &State,
        model: &str,
        prompt_tokens: u64,
        num_predict: Option<i64>,
        trigger: Option<Trigger>,
    ) -> Gen {
        let limit = match num_predict {
            Some(n) if n >= 0 => (n as usize).min(st.chunks),
            _ => st.chunks,
        };
        Gen {
            model: model.to_string(),
            tokens: (0..limit).map(|i| token(i, model)).collect(),
            prompt_tokens: prompt_tokens.max(1),
            done_reason: if limit < st.chunks { "length" } else { "stop" },
            trigger,
        }
    }

    fn text(&self) -> String {
        self.tokens.concat()
    }

    fn eval_count(&self) -> u64 {
        self.tokens.len() as u64
    }

    /// Tokens sent before a failure trigger fires (all of them without one).
    fn streamed(&self) -> &[String] {
        match self.trigger {
            Some(Trigger::Abort | Trigger::Error) => &self.tokens[..self.tokens.len().min(2)],
            _ => &self.tokens,
        }
    }

    fn metrics(&self, obj: Obj) -> Obj {
        let load = 12_345_678u64;
        let prompt_eval = self.prompt_tokens * 1_500_000;
        let eval = self.eval_count() * 20_000_000;
        obj.n_nz("total_duration", load + prompt_eval + eval + 1_000_000)
            .n_nz("load_duration", load)
            .n_nz("prompt_eval_count", self.prompt_tokens)
            .n_nz("prompt_eval_duration", prompt_eval)
            .n_nz("eval_count", self.eval_count())
            .n_nz("eval_duration", eval)
    }

    fn context(&self) -> String {
        let n = self.prompt_tokens + self.eval_count();
        array((1..=n).map(|i| (i * 37 % 128_000).to_string()))
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn gen_frame(model: &str, response: &str) -> String {
    Obj::new()
        .s("model", model)
        .s("created_at", &now_utc())
        .s("response", response)
        .b("done", false)
        .done()
}

fn gen_done(g: &Gen, response: &str, context: bool) -> String {
    let mut obj = Obj::new()
        .s("model", &g.model)
        .s("created_at", &now_utc())
        .s("response", response)
        .b("done", true)
        .s("done_reason", g.done_reason);
    if context {
        obj = obj.raw("context", &g.context());
    }
    g.metrics(obj).done()
}

fn chat_message(content: &str) -> String {
    Obj::new()
        .s("role", "assistant")
        .s("content", content)
        .done()
}

fn chat_frame(model: &str, content: &str) -> String {
    Obj::new()
        .s("model", model)
        .s("created_at", &now_utc())
        .raw("message", &chat_message(content))
        .b("done", false)
        .done()
}

fn chat_done(g: &Gen, content: &str) -> String {
    let obj = Obj::new()
        .s("model", &g.model)
        .s("created_at", &now_utc())
        .raw("message", &chat_message(content))
        .b("done", true)
        .s("done_reason", g.done_reason);
    g.metrics(obj).done()
}

/// The reply to a load or unload request.
fn load_reply(model: &str, chat: bool, reason: &str) -> Reply {
    let obj = Obj::new().s("model", model).s("created_at", &now_utc());
    let obj = if chat {
        obj.raw("message", &chat_message(""))
    } else {
        obj.s("response", "")
    };
    ok_json(obj.b("done", true).s("done_reason", reason).done())
}

/// The options and keep-alive checks a scheduled request goes through.
struct Sched {
    num_ctx: Option<u64>,
    num_predict: Option<i64>,
}

fn sched_fields(v: &Value) -> Result<Sched, String> {
    let options = field(v, "options");
    if let Some(opts) = options.and_then(Value::as_object) {
        check_options(opts)?;
    }
    let opt_int = |k: &str| options.and_then(|o| field(o, k)).and_then(Value::as_f64);
    Ok(Sched {
        num_ctx: opt_int("num_ctx").filter(|n| *n > 0.0).map(|n| n as u64),
        num_predict: opt_int("num_predict").map(|n| n as i64),
    })
}

fn keep_alive(v: &Value) -> Result<Option<i128>, String> {
    match field(v, "keep_alive") {
        None | Some(Value::Null) => Ok(None),
        Some(k) => parse_keep_alive(k).map(Some),
    }
}

const GEN_FIELDS: &[(&str, Kind)] = &[
    ("model", Kind::Str),
    ("prompt", Kind::Str),
    ("suffix", Kind::Str),
    ("system", Kind::Str),
    ("template", Kind::Str),
    ("stream", Kind::Bool),
    ("raw", Kind::Bool),
    ("images", Kind::Arr("[]api.ImageData")),
    ("context", Kind::Arr("[]int")),
    ("options", OPTIONS),
];

fn generate(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(body, "GenerateRequest", GEN_FIELDS) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let keep = match keep_alive(&v) {
        Ok(k) => k,
        Err(e) => return native_err(400, &e),
    };
    let model = str_field(&v, "model").unwrap_or_default();
    let Some(entry) = st.find(&model) else {
        return native_err(404, &format!("model '{model}' not found"));
    };
    let prompt = str_field(&v, "prompt").unwrap_or_default();
    let has_images = field(&v, "images")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let empty = prompt.is_empty() && !has_images;
    if empty && st.is_unload(keep) {
        st.unload(&entry.name);
        return load_reply(&model, false, "unload");
    }
    if entry.info().embedding {
        return native_err(
            400,
            &format!("{} does not support generate", go_quote(&model)),
        );
    }
    let sched = match sched_fields(&v) {
        Ok(s) => s,
        Err(e) => return native_err(400, &e),
    };
    st.load(&entry, keep, sched.num_ctx);
    if empty {
        return load_reply(&model, false, "load");
    }
    let trigger = trigger_in(&prompt);
    let prompt_tokens = words(&prompt) + str_field(&v, "system").map_or(0, |s| words(&s));
    let g = Gen::new(st, &model, prompt_tokens, sched.num_predict, trigger);
    let context = !field(&v, "raw").and_then(Value::as_bool).unwrap_or(false);
    if st.is_unload(keep) {
        st.unload(&entry.name);
    }
    if trigger == Some(Trigger::Status500) {
        return native_err(500, SIMULATED_FAILURE);
    }
    if !streams(&v) {
        return match trigger {
            Some(Trigger::Abort) => Reply::Abort,
            Some(_) => native_err(500, SIMULATED_FAILURE),
            None => ok_json(gen_done(&g, &g.text(), context)),
        };
    }
    let mut pieces: Vec<Piece> = g
        .streamed()
        .iter()
        .map(|t| {
            let (m, t) = (model.clone(), t.clone());
            line(move || gen_frame(&m, &t))
        })
        .collect();
    finish_native_stream(&mut pieces, trigger, move || gen_done(&g, "", context));
    ndjson(pieces)
}

fn finish_native_stream(
    pieces: &mut Vec<Piece>,
    trigger: Option<Trigger>,
    done: impl FnOnce() -> String + Send + 'static,
) {
    match trigger {
        Some(Trigger::Abort) => pieces.push(Piece::Abort),
        Some(Trigger::Error) => pieces.push(fixed_line(error_line(SIMULATED_FAILURE))),
        _ => pieces.push(line(done)),
    }
}

/// Whether a native request streams: `stream` absent or `null` means yes.
fn streams(v: &Value) -> bool {
    field(v, "stream").and_then(Value::as_bool).unwrap_or(true)
}

/// The text of a chat message's `content`: a string, or OpenAI text parts.
fn content_text(msg: &Value) -> String {
    match field(msg, "content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| field(p, "text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The chat not-found wording of the configured version.
fn chat_not_found(st: &State, model: &str) -> String {
    if st.at_least(0, 12, 0) {
        format!("model '{model}' not found")
    } else {
        format!("model {} not found, try pulling it first", go_quote(model))
    }
}

const CHAT_FIELDS: &[(&str, Kind)] = &[
    ("model", Kind::Str),
    ("messages", Kind::Arr("[]api.Message")),
    ("stream", Kind::Bool),
    ("tools", Kind::Arr("api.Tools")),
    ("options", OPTIONS),
];

fn chat(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(body, "ChatRequest", CHAT_FIELDS) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let keep = match keep_alive(&v) {
        Ok(k) => k,
        Err(e) => return native_err(400, &e),
    };
    let model = str_field(&v, "model").unwrap_or_default();
    if !valid_name(&model) {
        return native_err(400, "model is required");
    }
    let Some(entry) = st.find(&model) else {
        return native_err(404, &chat_not_found(st, &model));
    };
    let messages = field(&v, "messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if messages.is_empty() && st.is_unload(keep) {
        st.unload(&entry.name);
        return load_reply(&model, true, "unload");
    }
    if entry.info().embedding {
        return native_err(400, &format!("{} does not support chat", go_quote(&model)));
    }
    let sched = match sched_fields(&v) {
        Ok(s) => s,
        Err(e) => return native_err(400, &e),
    };
    st.load(&entry, keep, sched.num_ctx);
    if messages.is_empty() {
        return load_reply(&model, true, "load");
    }
    let trigger = messages
        .last()
        .map(content_text)
        .and_then(|t| trigger_in(&t));
    let prompt_tokens = messages.iter().map(|m| words(&content_text(m))).sum();
    let g = Gen::new(st, &model, prompt_tokens, sched.num_predict, trigger);
    if st.is_unload(keep) {
        st.unload(&entry.name);
    }
    if trigger == Some(Trigger::Status500) {
        return native_err(500, SIMULATED_FAILURE);
    }
    if !streams(&v) {
        return match trigger {
            Some(Trigger::Abort) => Reply::Abort,
            Some(_) => native_err(500, SIMULATED_FAILURE),
            None => ok_json(chat_done(&g, &g.text())),
        };
    }
    let mut pieces: Vec<Piece> = g
        .streamed()
        .iter()
        .map(|t| {
            let (m, t) = (model.clone(), t.clone());
            line(move || chat_frame(&m, &t))
        })
        .collect();
    finish_native_stream(&mut pieces, trigger, move || chat_done(&g, ""));
    ndjson(pieces)
}

// ---------------------------------------------------------------------------
// Embeddings

const EMBED_DIM: usize = 8;

/// A deterministic vector for `text`, not normalised.
fn raw_vector(text: &str) -> Vec<f64> {
    (0..EMBED_DIM)
        .map(|i| {
            let h = fnv(text, i as u64 + 1);
            (h % 20_001) as f64 / 10_000.0 - 1.0 + 0.0001 * (i as f64 + 1.0)
        })
        .collect()
}

/// A deterministic L2-normalised float32 vector for `text`, optionally truncated.
fn unit_vector(text: &str, dims: Option<usize>) -> Vec<f32> {
    let mut v = raw_vector(text);
    if let Some(d) = dims.filter(|d| *d > 0 && *d < EMBED_DIM) {
        v.truncate(d);
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| (x / norm) as f32).collect()
}

fn f32_array(v: &[f32]) -> String {
    array(v.iter().map(|x| go_float(f64::from(*x), true)))
}

/// The inputs of an embed request, or the error to answer.
fn embed_inputs(v: &Value) -> Result<Vec<String>, String> {
    match field(v, "input") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "invalid input type".to_string())
            })
            .collect(),
        Some(_) => Err("invalid input type".to_string()),
    }
}

fn embed(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(
        body,
        "EmbedRequest",
        &[
            ("model", Kind::Str),
            ("truncate", Kind::Bool),
            ("options", OPTIONS),
        ],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let keep = match keep_alive(&v) {
        Ok(k) => k,
        Err(e) => return native_err(400, &e),
    };
    let inputs = match embed_inputs(&v) {
        Ok(i) => i,
        Err(e) => return native_err(400, &e),
    };
    let model = str_field(&v, "model").unwrap_or_default();
    if model.is_empty() {
        return native_err(404, "model '' not found");
    }
    let Some(entry) = st.find(&model) else {
        return native_err(
            404,
            &format!("model {} not found, try pulling it first", go_quote(&model)),
        );
    };
    let sched = match sched_fields(&v) {
        Ok(s) => s,
        Err(e) => return native_err(400, &e),
    };
    st.load(&entry, keep, sched.num_ctx);
    if st.is_unload(keep) {
        st.unload(&entry.name);
    }
    if inputs.is_empty() {
        return ok_json(Obj::new().s("model", &model).raw("embeddings", "[]").done());
    }
    let dims = field(&v, "dimensions")
        .and_then(Value::as_u64)
        .map(|d| d as usize);
    let vectors = inputs.iter().map(|i| f32_array(&unit_vector(i, dims)));
    let tokens: u64 = inputs.iter().map(|i| words(i).max(1)).sum();
    ok_json(
        Obj::new()
            .s("model", &model)
            .raw("embeddings", &array(vectors))
            .n("total_duration", 14_143_917 + tokens * 100_000)
            .n("load_duration", 1_019_500)
            .n("prompt_eval_count", tokens)
            .done(),
    )
}

fn embeddings(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(
        body,
        "EmbeddingRequest",
        &[
            ("model", Kind::Str),
            ("prompt", Kind::Str),
            ("options", OPTIONS),
        ],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let keep = match keep_alive(&v) {
        Ok(k) => k,
        Err(e) => return native_err(400, &e),
    };
    let model = str_field(&v, "model").unwrap_or_default();
    if !valid_name(&model) {
        return native_err(400, "model is required");
    }
    let Some(entry) = st.find(&model) else {
        return native_err(
            404,
            &format!("model {} not found, try pulling it first", go_quote(&model)),
        );
    };
    let sched = match sched_fields(&v) {
        Ok(s) => s,
        Err(e) => return native_err(400, &e),
    };
    st.load(&entry, keep, sched.num_ctx);
    if st.is_unload(keep) {
        st.unload(&entry.name);
    }
    let prompt = str_field(&v, "prompt").unwrap_or_default();
    let vector = if prompt.is_empty() {
        "[]".to_string()
    } else {
        array(raw_vector(&prompt).iter().map(|x| go_float(x * 3.0, false)))
    };
    ok_json(Obj::new().raw("embedding", &vector).done())
}

// ---------------------------------------------------------------------------
// Model management

fn progress(status: &str) -> Obj {
    Obj::new().s("status", status)
}

/// A progress stream, or with `stream:false` its last line as one JSON answer.
fn progress_reply(st: &State, stream: bool, lines: Vec<String>, error: Option<String>) -> Reply {
    if !stream {
        return match error {
            Some(e) => native_err(500, &e),
            None => ok_json(progress("success").done()),
        };
    }
    if let Some(e) = &error {
        if lines.is_empty() && st.at_least(0, 12, 6) {
            return native_err(500, e);
        }
    }
    let mut pieces: Vec<Piece> = lines.into_iter().map(fixed_line).collect();
    match error {
        Some(e) => pieces.push(fixed_line(error_line(&e))),
        None => pieces.push(fixed_line(progress("success").done())),
    }
    ndjson(pieces)
}

const MANAGE_FIELDS: &[(&str, Kind)] = &[
    ("model", Kind::Str),
    ("name", Kind::Str),
    ("stream", Kind::Bool),
    ("insecure", Kind::Bool),
];

fn model_or_name(v: &Value) -> String {
    non_empty(str_field(v, "model"))
        .or_else(|| str_field(v, "name"))
        .unwrap_or_default()
}

fn pull(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(body, "PullRequest", MANAGE_FIELDS) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = model_or_name(&v);
    if !valid_name(&name) {
        return native_err(400, "invalid model name");
    }
    let stream = streams(&v);
    let model_part = names::display(&name);
    let model_part = model_part.rsplit('/').next().unwrap_or("");
    if model_part.to_ascii_lowercase().starts_with("missing") {
        return progress_reply(
            st,
            stream,
            vec![progress("pulling manifest").done()],
            Some("pull model manifest: file does not exist".to_string()),
        );
    }
    let entry = ModelEntry::new(&name, now_ns());
    let digest = format!("sha256:{}", entry.digest);
    let pulling = format!("pulling {}", &entry.digest[..12]);
    let total = entry.size;
    let mut lines = vec![progress("pulling manifest").done()];
    for completed in [0, total / 2, total] {
        let obj = progress(&pulling).s("digest", &digest).n("total", total);
        lines.push(if completed == 0 {
            obj.done()
        } else {
            obj.n("completed", completed).done()
        });
    }
    for s in [
        "verifying sha256 digest",
        "writing manifest",
        "removing unused layers",
    ] {
        lines.push(progress(s).done());
    }
    st.add_model(entry);
    progress_reply(st, stream, lines, None)
}

fn push(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(body, "PushRequest", MANAGE_FIELDS) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = model_or_name(&v);
    if name.is_empty() {
        return native_err(400, "model is required");
    }
    let stream = streams(&v);
    let mut lines = vec![progress("retrieving manifest").done()];
    let Some(entry) = st.find(&name) else {
        lines.push(progress("couldn't retrieve manifest").done());
        let full_name = names::display(&name);
        let (path, tag) = full_name.rsplit_once(':').unwrap_or((&full_name, "latest"));
        let path = match path.matches('/').count() {
            0 => format!("registry.ollama.ai/library/{path}"),
            1 => format!("registry.ollama.ai/{path}"),
            _ => path.to_string(),
        };
        let err =
            format!("open /root/.ollama/models/manifests/{path}/{tag}: no such file or directory");
        return progress_reply(st, stream, lines, Some(err));
    };
    let digest = format!("sha256:{}", entry.digest);
    lines.push(
        progress("starting upload")
            .s("digest", &digest)
            .n("total", entry.size)
            .done(),
    );
    lines.push(
        progress("starting upload")
            .s("digest", &digest)
            .n("total", entry.size)
            .n("completed", entry.size)
            .done(),
    );
    lines.push(progress("pushing manifest").done());
    progress_reply(st, stream, lines, None)
}

fn create(st: &State, body: &[u8]) -> Reply {
    let mut fields = MANAGE_FIELDS.to_vec();
    fields.extend([
        ("from", Kind::Str),
        ("files", Kind::Map("map[string]string")),
        ("adapters", Kind::Map("map[string]string")),
        ("quantize", Kind::Str),
    ]);
    let v = match decode_native(body, "CreateRequest", &fields) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = model_or_name(&v);
    if !valid_name(&name) {
        return native_err(400, "invalid model name");
    }
    let stream = streams(&v);
    let mut referenced: Vec<String> = Vec::new();
    for key in ["files", "adapters"] {
        if let Some(map) = field(&v, key).and_then(Value::as_object) {
            referenced.extend(map.values().filter_map(Value::as_str).map(str::to_string));
        }
    }
    {
        let inner = lock(&st.inner);
        if let Some(missing) = referenced
            .iter()
            .find(|d| !inner.blobs.contains(&blob_key(d)))
        {
            let err = format!(
                "open /root/.ollama/models/blobs/{}: no such file or directory",
                blob_key(missing)
            );
            drop(inner);
            return progress_reply(st, stream, Vec::new(), Some(err));
        }
    }
    let entry = ModelEntry::new(&name, now_ns());
    let layer = format!("sha256:{}", digest_hex(&format!("layer:{}", entry.name)));
    let lines = vec![
        progress("reading model metadata").done(),
        progress("creating system layer").done(),
        progress(&format!(
            "using already created layer sha256:{}",
            entry.digest
        ))
        .done(),
        progress(&format!("writing layer {layer}")).done(),
        progress("writing manifest").done(),
    ];
    st.add_model(entry);
    progress_reply(st, stream, lines, None)
}

fn copy(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(
        body,
        "CopyRequest",
        &[("source", Kind::Str), ("destination", Kind::Str)],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let source = str_field(&v, "source").unwrap_or_default();
    let destination = str_field(&v, "destination").unwrap_or_default();
    if !valid_name(&source) {
        return native_err(400, &format!("source {} is invalid", go_quote(&source)));
    }
    if !valid_name(&destination) {
        return native_err(
            400,
            &format!("destination {} is invalid", go_quote(&destination)),
        );
    }
    let Some(src) = st.find(&source) else {
        return native_err(404, &format!("model {} not found", go_quote(&source)));
    };
    st.add_model(ModelEntry {
        name: names::display(&destination),
        modified_ns: now_ns(),
        ..src
    });
    empty(StatusCode::OK)
}

fn delete(st: &State, body: &[u8]) -> Reply {
    let v = match decode_native(
        body,
        "DeleteRequest",
        &[("model", Kind::Str), ("name", Kind::Str)],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = model_or_name(&v);
    if !valid_name(&name) {
        return native_err(400, &format!("name {} is invalid", go_quote(&name)));
    }
    let Some(entry) = st.find(&name) else {
        return native_err(404, &format!("model '{name}' not found"));
    };
    let mut inner = lock(&st.inner);
    inner.models.retain(|m| !names::same(&m.name, &entry.name));
    inner
        .loaded
        .retain(|l| !names::same(&l.entry.name, &entry.name));
    empty(StatusCode::OK)
}

/// The blob store key of a digest (`sha256:x` and `sha256-x` name one file).
fn blob_key(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn valid_digest(d: &str) -> bool {
    d.len() == 71
        && d.starts_with("sha256")
        && matches!(d.as_bytes()[6], b':' | b'-')
        && d[7..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn blob(st: &State, head: bool, digest: &str) -> Reply {
    if !valid_digest(digest) {
        return native_err(400, "invalid digest format");
    }
    let mut inner = lock(&st.inner);
    let key = blob_key(digest);
    if head {
        if inner.blobs.contains(&key) {
            empty(StatusCode::OK)
        } else {
            native_err(404, &format!("blob {} not found", go_quote(digest)))
        }
    } else if inner.blobs.insert(key) {
        empty(StatusCode::CREATED)
    } else {
        empty(StatusCode::OK)
    }
}

// ---------------------------------------------------------------------------
// OpenAI-compatible layer

fn decode_openai(body: &[u8], go_type: &str, fields: &[(&str, Kind)]) -> Result<Value, Reply> {
    match go_decode(body, &format!("openai.{go_type}"), go_type, fields) {
        Ok(v) => Ok(v),
        Err(DecodeError::Eof) => Err(openai_err(400, "EOF")),
        Err(DecodeError::Msg(m)) => Err(openai_err(400, &m)),
    }
}

fn unix_now() -> i64 {
    (now_ns() / NS) as i64
}

fn usage(g: &Gen) -> String {
    Obj::new()
        .n("prompt_tokens", g.prompt_tokens)
        .n("completion_tokens", g.eval_count())
        .n("total_tokens", g.prompt_tokens + g.eval_count())
        .done()
}

fn include_usage(v: &Value) -> bool {
    field(v, "stream_options")
        .and_then(|o| field(o, "include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The `num_predict` an OpenAI request asks for via `max_tokens`.
fn max_tokens(v: &Value) -> Option<i64> {
    field(v, "max_tokens")
        .or_else(|| field(v, "max_completion_tokens"))
        .and_then(Value::as_i64)
}

fn sse(pieces: Vec<Piece>) -> Reply {
    Reply::Stream {
        ctype: SSE_CT,
        pieces,
    }
}

fn oai_chat(st: &State, body: &[u8]) -> Reply {
    let v = match decode_openai(
        body,
        "ChatCompletionRequest",
        &[
            ("model", Kind::Str),
            ("messages", Kind::Arr("[]openai.Message")),
            ("stream", Kind::Bool),
            ("tools", Kind::Arr("[]api.Tool")),
        ],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let messages = field(&v, "messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if messages.is_empty() {
        return openai_err(400, "[] is too short - 'messages'");
    }
    for m in &messages {
        if let Some(Value::Array(parts)) = field(m, "content") {
            for p in parts {
                let url = field(p, "image_url")
                    .and_then(|u| field(u, "url").or(Some(u)))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if url.starts_with("http://") || url.starts_with("https://") {
                    return openai_err(
                        400,
                        "image URLs are not currently supported, please use base64 encoded data instead",
                    );
                }
            }
        }
    }
    let model = str_field(&v, "model").unwrap_or_default();
    if !valid_name(&model) {
        return openai_err(400, "model is required");
    }
    let Some(entry) = st.find(&model) else {
        return openai_err(404, &chat_not_found(st, &model));
    };
    if entry.info().embedding {
        return openai_err(400, &format!("{} does not support chat", go_quote(&model)));
    }
    st.load(&entry, None, None);
    let trigger = messages
        .last()
        .map(content_text)
        .and_then(|t| trigger_in(&t));
    let prompt_tokens = messages.iter().map(|m| words(&content_text(m))).sum();
    let g = Gen::new(st, &model, prompt_tokens, max_tokens(&v), trigger);
    if trigger == Some(Trigger::Status500) {
        return openai_err(500, SIMULATED_FAILURE);
    }
    let id = format!("chatcmpl-{}", st.next_id());
    let created = unix_now();
    if !field(&v, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return match trigger {
            Some(Trigger::Abort) => Reply::Abort,
            Some(_) => openai_err(500, SIMULATED_FAILURE),
            None => {
                let choice = Obj::new()
                    .n("index", 0)
                    .raw("message", &chat_message(&g.text()))
                    .s("finish_reason", g.done_reason)
                    .done();
                full(
                    StatusCode::OK,
                    Some(OPENAI_JSON_CT),
                    Obj::new()
                        .s("id", &id)
                        .s("object", "chat.completion")
                        .n("created", created)
                        .s("model", &model)
                        .s("system_fingerprint", "fp_ollama")
                        .raw("choices", &array([choice]))
                        .raw("usage", &usage(&g))
                        .done(),
                )
            }
        };
    }
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: String, usage: Option<String>| {
            let obj = Obj::new()
                .s("id", &id)
                .s("object", "chat.completion.chunk")
                .n("created", created)
                .s("model", &model)
                .s("system_fingerprint", "fp_ollama")
                .raw("choices", &choices);
            match usage {
                Some(u) => obj.raw("usage", &u).done(),
                None => obj.done(),
            }
        }
    };
    let mut pieces = Vec::new();
    for (i, t) in g.streamed().iter().enumerate() {
        let delta = if i == 0 {
            Obj::new().s("role", "assistant").s("content", t).done()
        } else {
            Obj::new().s("content", t).done()
        };
        let choice = Obj::new()
            .n("index", 0)
            .raw("delta", &delta)
            .null("finish_reason")
            .done();
        let c = chunk.clone();
        pieces.push(sse_event(move || c(array([choice]), None)));
    }
    match trigger {
        Some(Trigger::Abort) => pieces.push(Piece::Abort),
        Some(_) => {}
        None => {
            let choice = Obj::new()
                .n("index", 0)
                .raw("delta", "{}")
                .s("finish_reason", g.done_reason)
                .done();
            let c = chunk.clone();
            pieces.push(sse_event(move || c(array([choice]), None)));
            if include_usage(&v) {
                let u = usage(&g);
                pieces.push(sse_event(move || chunk("[]".to_string(), Some(u))));
            }
            pieces.push(Piece::Emit(Box::new(|| {
                Bytes::from_static(b"data: [DONE]\n\n")
            })));
        }
    }
    sse(pieces)
}

fn oai_completions(st: &State, body: &[u8]) -> Reply {
    let v = match decode_openai(
        body,
        "CompletionRequest",
        &[
            ("model", Kind::Str),
            ("prompt", Kind::Str),
            ("stream", Kind::Bool),
            ("suffix", Kind::Str),
        ],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = str_field(&v, "model").unwrap_or_default();
    let Some(entry) = st.find(&model) else {
        return openai_err(404, &format!("model '{model}' not found"));
    };
    if entry.info().embedding {
        return openai_err(
            400,
            &format!("{} does not support generate", go_quote(&model)),
        );
    }
    st.load(&entry, None, None);
    let prompt = str_field(&v, "prompt").unwrap_or_default();
    let trigger = trigger_in(&prompt);
    let mut g = Gen::new(st, &model, words(&prompt), max_tokens(&v), trigger);
    if prompt.is_empty() {
        g.tokens.clear();
        g.done_reason = "load";
    }
    if trigger == Some(Trigger::Status500) {
        return openai_err(500, SIMULATED_FAILURE);
    }
    let id = format!("cmpl-{}", st.next_id());
    let created = unix_now();
    let choice = |text: &str, finish: Option<&str>| {
        let obj = Obj::new().s("text", text).n("index", 0);
        match finish {
            Some(f) => obj.s("finish_reason", f).done(),
            None => obj.null("finish_reason").done(),
        }
    };
    if !field(&v, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return match trigger {
            Some(Trigger::Abort) => Reply::Abort,
            Some(_) => openai_err(500, SIMULATED_FAILURE),
            None => full(
                StatusCode::OK,
                Some(OPENAI_JSON_CT),
                Obj::new()
                    .s("id", &id)
                    .s("object", "text_completion")
                    .n("created", created)
                    .s("model", &model)
                    .s("system_fingerprint", "fp_ollama")
                    .raw("choices", &array([choice(&g.text(), Some(g.done_reason))]))
                    .raw("usage", &usage(&g))
                    .done(),
            ),
        };
    }
    let with_usage = include_usage(&v);
    let zero_usage = Obj::new()
        .n("prompt_tokens", 0)
        .n("completion_tokens", 0)
        .n("total_tokens", 0)
        .done();
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: String, usage: Option<String>| {
            let obj = Obj::new()
                .s("id", &id)
                .s("object", "text_completion")
                .n("created", created)
                .raw("choices", &choices)
                .s("model", &model)
                .s("system_fingerprint", "fp_ollama");
            match usage {
                Some(u) => obj.raw("usage", &u).done(),
                None => obj.done(),
            }
        }
    };
    let chunk_usage = with_usage.then_some(zero_usage);
    let mut pieces = Vec::new();
    for t in g.streamed() {
        let (c, ch, u) = (chunk.clone(), array([choice(t, None)]), chunk_usage.clone());
        pieces.push(sse_event(move || c(ch, u)));
    }
    match trigger {
        Some(Trigger::Abort) => pieces.push(Piece::Abort),
        Some(_) => {}
        None => {
            let (c, ch, u) = (
                chunk.clone(),
                array([choice("", Some(g.done_reason))]),
                chunk_usage,
            );
            pieces.push(sse_event(move || c(ch, u)));
            if with_usage {
                let u = usage(&g);
                pieces.push(sse_event(move || chunk("[]".to_string(), Some(u))));
            }
            pieces.push(Piece::Emit(Box::new(|| {
                Bytes::from_static(b"data: [DONE]\n\n")
            })));
        }
    }
    sse(pieces)
}

fn oai_embeddings(st: &State, body: &[u8]) -> Reply {
    let v = match decode_openai(
        body,
        "EmbedRequest",
        &[
            ("model", Kind::Str),
            ("encoding_format", Kind::Str),
            ("dimensions", Kind::Num),
        ],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match field(&v, "input") {
        None | Some(Value::Null) => return openai_err(400, "invalid input"),
        Some(Value::Array(a)) if a.is_empty() => return openai_err(400, "invalid input"),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => match a.iter().map(|i| i.as_str().map(str::to_string)).collect() {
            Some(list) => list,
            None => return openai_err(400, "invalid input type"),
        },
        Some(_) => return openai_err(400, "invalid input type"),
    };
    let format = str_field(&v, "encoding_format").unwrap_or_default();
    let base64 = if st.at_least(0, 12, 7) {
        match format.to_ascii_lowercase().as_str() {
            "" | "float" => false,
            "base64" => true,
            _ => {
                return openai_err(
                    400,
                    &format!("Invalid value for 'encoding_format' = {format}. Supported values: ['float', 'base64']."),
                )
            }
        }
    } else {
        false
    };
    let model = str_field(&v, "model").unwrap_or_default();
    if model.is_empty() {
        return openai_err(404, "model '' not found");
    }
    let Some(entry) = st.find(&model) else {
        return openai_err(
            404,
            &format!("model {} not found, try pulling it first", go_quote(&model)),
        );
    };
    st.load(&entry, None, None);
    let dims = field(&v, "dimensions")
        .and_then(Value::as_u64)
        .map(|d| d as usize);
    let data = inputs.iter().enumerate().map(|(i, text)| {
        let vec = unit_vector(text, dims);
        let obj = Obj::new().s("object", "embedding");
        let obj = if base64 {
            let bytes: Vec<u8> = vec.iter().flat_map(|x| x.to_le_bytes()).collect();
            obj.s("embedding", &BASE64.encode(&bytes))
        } else {
            obj.raw("embedding", &f32_array(&vec))
        };
        obj.n("index", i).done()
    });
    let tokens: u64 = inputs.iter().map(|i| words(i).max(1)).sum();
    full(
        StatusCode::OK,
        Some(OPENAI_JSON_CT),
        Obj::new()
            .s("object", "list")
            .raw("data", &array(data))
            .s("model", &model)
            .raw(
                "usage",
                &Obj::new()
                    .n("prompt_tokens", tokens)
                    .n("total_tokens", tokens)
                    .done(),
            )
            .done(),
    )
}

fn owned_by(display: &str) -> String {
    let parts: Vec<&str> = display.split('/').collect();
    match parts.len() {
        1 => "library".to_string(),
        2 => parts[0].to_string(),
        _ => parts[1].to_string(),
    }
}

fn oai_model_json(id: &str, m: &ModelEntry) -> String {
    Obj::new()
        .s("id", id)
        .s("object", "model")
        .n("created", m.modified_ns.div_euclid(NS))
        .s("owned_by", &owned_by(&m.name))
        .done()
}

fn oai_models(st: &State) -> Reply {
    let models = sorted_models(st);
    let data = if models.is_empty() {
        "null".to_string()
    } else {
        array(models.iter().map(|m| oai_model_json(&m.name, m)))
    };
    full(
        StatusCode::OK,
        Some(OPENAI_JSON_CT),
        Obj::new().s("object", "list").raw("data", &data).done(),
    )
}

fn oai_model(st: &State, model: &str) -> Reply {
    match st.find(model) {
        Some(m) => full(
            StatusCode::OK,
            Some(OPENAI_JSON_CT),
            oai_model_json(model, &m),
        ),
        None => openai_err(404, &format!("model '{model}' not found")),
    }
}

/// The text of a Responses/Messages request's `input` or last message.
fn last_input_text(v: &Value) -> String {
    match field(v, "input").or_else(|| field(v, "messages")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.last().map(content_text).unwrap_or_default(),
        _ => String::new(),
    }
}

fn oai_responses(st: &State, body: &[u8]) -> Reply {
    let v = match decode_openai(
        body,
        "ResponsesRequest",
        &[("model", Kind::Str), ("stream", Kind::Bool)],
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = str_field(&v, "model").unwrap_or_default();
    if !valid_name(&model) {
        return openai_err(400, "model is required");
    }
    let Some(entry) = st.find(&model) else {
        return openai_err(404, &format!("model '{model}' not found"));
    };
    st.load(&entry, None, None);
    let text = last_input_text(&v);
    let g = Gen::new(
        st,
        &model,
        words(&text),
        field(&v, "max_output_tokens").and_then(Value::as_i64),
        None,
    );
    let n = st.next_id();
    let content = Obj::new()
        .s("type", "output_text")
        .s("text", &g.text())
        .raw("annotations", "[]")
        .done();
    let message = Obj::new()
        .s("id", &format!("msg_{n}"))
        .s("type", "message")
        .s("status", "completed")
        .s("role", "assistant")
        .raw("content", &array([content]))
        .done();
    let usage = Obj::new()
        .n("input_tokens", g.prompt_tokens)
        .n("output_tokens", g.eval_count())
        .n("total_tokens", g.prompt_tokens + g.eval_count())
        .done();
    full(
        StatusCode::OK,
        Some(OPENAI_JSON_CT),
        Obj::new()
            .s("id", &format!("resp_{n}"))
            .s("object", "response")
            .n("created_at", unix_now())
            .s("status", "completed")
            .s("model", &model)
            .raw("output", &array([message]))
            .raw("usage", &usage)
            .done(),
    )
}

fn anthropic_err(status: u16, kind: &str, msg: &str) -> Reply {
    let inner = Obj::new().s("type", kind).s("message", msg).done();
    full(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Some(OPENAI_JSON_CT),
        Obj::new().s("type", "error").raw("error", &inner).done(),
    )
}

fn anthropic_messages(st: &State, body: &[u8]) -> Reply {
    let v = match go_decode(
        body,
        "anthropic.MessagesRequest",
        "MessagesRequest",
        &[("model", Kind::Str), ("stream", Kind::Bool)],
    ) {
        Ok(v) => v,
        Err(DecodeError::Eof) => return anthropic_err(400, "invalid_request_error", "EOF"),
        Err(DecodeError::Msg(m)) => return anthropic_err(400, "invalid_request_error", &m),
    };
    let model = str_field(&v, "model").unwrap_or_default();
    if !valid_name(&model) {
        return anthropic_err(400, "invalid_request_error", "model is required");
    }
    let Some(entry) = st.find(&model) else {
        return anthropic_err(
            404,
            "not_found_error",
            &format!("model '{model}' not found"),
        );
    };
    st.load(&entry, None, None);
    let text = last_input_text(&v);
    let g = Gen::new(
        st,
        &model,
        words(&text),
        field(&v, "max_tokens").and_then(Value::as_i64),
        None,
    );
    let id = format!("msg_{}", st.next_id());
    let stop_reason = if g.done_reason == "length" {
        "max_tokens"
    } else {
        "end_turn"
    };
    if field(&v, "stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return anthropic_stream(&g, &id, &model, stop_reason);
    }
    let content = Obj::new().s("type", "text").s("text", &g.text()).done();
    let usage = Obj::new()
        .n("input_tokens", g.prompt_tokens)
        .n("output_tokens", g.eval_count())
        .done();
    full(
        StatusCode::OK,
        Some(OPENAI_JSON_CT),
        Obj::new()
            .s("id", &id)
            .s("type", "message")
            .s("role", "assistant")
            .s("model", &model)
            .raw("content", &array([content]))
            .s("stop_reason", stop_reason)
            .null("stop_sequence")
            .raw("usage", &usage)
            .done(),
    )
}

/// A Messages answer streamed in Anthropic's event format: `message_start`, one
/// text block (`content_block_start`, a `text_delta` per chunk,
/// `content_block_stop`), `message_delta` with the stop reason and the output
/// usage, then `message_stop`.
fn anthropic_stream(g: &Gen, id: &str, model: &str, stop_reason: &str) -> Reply {
    let event = |name: &'static str, data: String| {
        Piece::Emit(Box::new(move || {
            Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
        }))
    };
    let usage = Obj::new()
        .n("input_tokens", g.prompt_tokens)
        .n("output_tokens", 0)
        .done();
    let message = Obj::new()
        .s("id", id)
        .s("type", "message")
        .s("role", "assistant")
        .s("model", model)
        .raw("content", "[]")
        .null("stop_reason")
        .null("stop_sequence")
        .raw("usage", &usage)
        .done();
    let block = Obj::new().s("type", "text").s("text", "").done();
    let mut pieces = vec![
        event(
            "message_start",
            Obj::new()
                .s("type", "message_start")
                .raw("message", &message)
                .done(),
        ),
        event(
            "content_block_start",
            Obj::new()
                .s("type", "content_block_start")
                .n("index", 0)
                .raw("content_block", &block)
                .done(),
        ),
    ];
    for t in &g.tokens {
        let delta = Obj::new().s("type", "text_delta").s("text", t).done();
        pieces.push(event(
            "content_block_delta",
            Obj::new()
                .s("type", "content_block_delta")
                .n("index", 0)
                .raw("delta", &delta)
                .done(),
        ));
    }
    let delta = Obj::new()
        .s("stop_reason", stop_reason)
        .null("stop_sequence")
        .done();
    let usage = Obj::new().n("output_tokens", g.eval_count()).done();
    pieces.extend([
        event(
            "content_block_stop",
            Obj::new()
                .s("type", "content_block_stop")
                .n("index", 0)
                .done(),
        ),
        event(
            "message_delta",
            Obj::new()
                .s("type", "message_delta")
                .raw("delta", &delta)
                .raw("usage", &usage)
                .done(),
        ),
        event("message_stop", Obj::new().s("type", "message_stop").done()),
    ]);
    sse(pieces)
}

// ---------------------------------------------------------------------------
// Ollama's request rules

const OPTIONS: Kind = Kind::Map("map[string]interface {}");

fn decode_native(body: &[u8], go_type: &str, fields: &[(&str, Kind)]) -> Result<Value, Reply> {
    match go_decode(body, &format!("api.{go_type}"), go_type, fields) {
        Ok(v) => Ok(v),
        Err(DecodeError::Eof) => Err(native_err(400, "missing request body")),
        Err(DecodeError::Msg(m)) => Err(native_err(400, &m)),
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Whether Ollama's `model.ParseName` accepts the name (roughly: a non-empty model
/// part and only the characters names may hold).
fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 350 {
        return false;
    }
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let (prefix, last) = name.rsplit_once('/').unwrap_or(("", name));
    let (model, tag) = match last.rsplit_once(':') {
        Some((m, t)) => (m, Some(t)),
        None => (last, None),
    };
    let part_ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(&c))
    };
    if !part_ok(model, &[]) || tag.is_some_and(|t| !part_ok(t, &[])) {
        return false;
    }
    prefix.is_empty() || prefix.split('/').all(|p| part_ok(p, &[':']))
}

/// Checks request options the way `Options.FromMap` does.
fn check_options(opts: &serde_json::Map<String, Value>) -> Result<(), String> {
    const INTS: &[&str] = &[
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "mirostat",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
    ];
    const FLOATS: &[&str] = &[
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
    ];
    const BOOLS: &[&str] = &[
        "penalize_newline",
        "numa",
        "low_vram",
        "f16_kv",
        "use_mmap",
        "use_mlock",
        "vocab_only",
    ];
    for (key, val) in opts {
        if val.is_null() {
            continue;
        }
        let k = key.as_str();
        let bad = |what: &str| Err(format!("option {} must be of {what}", go_quote(k)));
        if INTS.contains(&k) && !val.is_number() {
            return bad("type integer");
        }
        if FLOATS.contains(&k) && !val.is_number() {
            return bad("type float32");
        }
        if BOOLS.contains(&k) && !val.is_boolean() {
            return bad("type boolean");
        }
        if k == "stop" {
            let Some(items) = val.as_array() else {
                return bad("type array");
            };
            if !items.iter().all(Value::is_string) {
                return bad("an array of strings");
            }
        }
    }
    Ok(())
}

/// Parses `keep_alive` like `api.Duration.UnmarshalJSON`: nanoseconds, with
/// negative values meaning forever.
fn parse_keep_alive(v: &Value) -> Result<i128, String> {
    match v {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(0.0);
            Ok(if secs < 0.0 {
                i64::MAX as i128
            } else {
                (secs * 1e9) as i128
            })
        }
        Value::String(s) => {
            let d = parse_go_duration(s)?;
            Ok(if d < 0 { i64::MAX as i128 } else { d })
        }
        Value::Bool(_) => Err("Unsupported type: 'bool'".to_string()),
        Value::Array(_) => Err("Unsupported type: '[]interface {}'".to_string()),
        Value::Object(_) => Err("Unsupported type: 'map[string]interface {}'".to_string()),
        Value::Null => Ok(DEFAULT_KEEP_ALIVE_NS),
    }
}

// ---------------------------------------------------------------------------
// Small helpers: clock, made-up digests, versions, redirects

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn now_utc() -> String {
    fmt_time(now_ns(), 0)
}

/// FNV-1a over `s`, seeded.
fn fnv(s: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so that nearby seeds give unrelated values.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// 64 hex digits derived from `s`.
fn digest_hex(s: &str) -> String {
    (0..4)
        .map(|i| format!("{:016x}", fnv(s, 100 + i)))
        .collect()
}

/// `major.minor.patch` of a semver version string (`v` prefix allowed; `-rc1` and
/// `git describe` suffixes ignored); `None` for `0.0.0` or a non-semver string.
fn release(version: &str) -> Option<(u64, u64, u64)> {
    let v = semver::Version::parse(version.trim().trim_start_matches('v')).ok()?;
    Some((v.major, v.minor, v.patch)).filter(|core| *core != (0, 0, 0))
}

/// Go's `html.EscapeString`, for the body of Gin's redirects.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests;
