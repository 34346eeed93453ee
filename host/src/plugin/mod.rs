//! The plugin runtime: the one module that owns wasmtime.
//!
//! Lifecycle rules:
//! - One [`Runtime`] per process: one `Engine` (pooling allocator, epoch
//!   interruption, `concurrency_support(false)`), one `Linker`, one ticker thread.
//! - A [`Plugin`] is a compiled component plus its config. It keeps a pool of idle
//!   instances, each in its own `Store` and already `init`-ed with the config.
//!   At most `concurrency` instances, and no more than one per CPU (calls run
//!   inline on the async workers, so no more are ever busy at once), are kept
//!   idle, so a burst does not leave hundreds behind and several plugins plus
//!   a shadow chain cannot exhaust the engine's instance pool.
//! - A call first takes one of the plugin's `concurrency` call slots
//!   ([`Plugin::admit`]: waiting, fairly across clients, up to `max_wait`), then
//!   takes an idle instance (or makes one), arms its deadline, calls, and gives
//!   the instance back.
//! - A trap (including the deadline and the memory cap) poisons the store: that
//!   instance is dropped, never called again, and the call fails with a
//!   [`PluginError`] naming the plugin. The next call gets a fresh instance.
//! - Plugins get an empty WASI context: no files, network or environment
//!   beyond what WASI p2 always links. Their stdout and stderr are lines in
//!   llamagate's log ([`stdio`]).
//! - Calls run on the thread that makes them: on the request path, inline on
//!   an async worker, with no hop to another thread. Nothing a plugin can do
//!   makes that thread wait: WASI's blocking I/O is linked in versions that
//!   complete at once or trap ([`nonblocking`]), CPU time is capped by
//!   `time_limit`, and a host function that panics anyway costs only that
//!   call (the instance is dropped). Callers yield to the scheduler just
//!   before a call, so the worker's queued tasks (the accept loop, say) are
//!   not held behind a call that runs to its limit; tasks woken meanwhile run
//!   on the other workers. Two things keep spinning plugins from holding
//!   every worker ([`Plugin::inline`]): at most one call fewer than there are
//!   workers runs inline at once, and a plugin with a call that used more
//!   than [`SLOW_CALL`] of CPU time runs its calls with `spawn_blocking` for
//!   [`SLOW_FOR`]; either way the call is the same. Starting an instance (instantiation and
//!   `init`, slow for interpreted plugins) is also done off the workers
//!   ([`Plugin::warm`]).
//!
//! Time limits count the CPU time the call itself used, not wall-clock time, so
//! a well-behaved plugin does not time out because other requests (or other
//! processes) took the CPU. The epoch ticker still wakes every store at its
//! deadline tick; the store's epoch callback then reads the calling thread's CPU
//! clock (`CLOCK_THREAD_CPUTIME_ID`) and either extends the deadline by the
//! budget left or traps. That costs one clock read per call plus one per tick
//! past the first deadline. Fuel was the alternative: deterministic, but it
//! slows every loop and call of every plugin, needs a fuel-per-millisecond
//! calibration that differs by machine and instruction mix (so `time_limit`
//! would no longer mean time), and does not count time spent in host calls.
//! Each store has its own deadline; a call runs on one thread from start to
//! end, so that thread's CPU clock is the call's.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod nonblocking;
mod slots;
pub mod stdio;

use slots::FairQueue;
pub use slots::Slot;
use stdio::{Channel, GuestOutput};

/// `llamagate:policy@0.3.0`, the current contract: its request, decision and
/// listing types are the host's.
mod v3 {
    wasmtime::component::bindgen!({
        world: "policy-plugin",
        path: "../wit/v0.3.0",
        additional_derives: [PartialEq],
    });
}

/// `From` between enums whose cases have the same names in both versions.
macro_rules! same_cases {
    ($from:ty => $to:ty { $($case:ident),* $(,)? }) => {
        impl From<$from> for $to {
            fn from(value: $from) -> $to {
                match value {
                    $(<$from>::$case => <$to>::$case,)*
                }
            }
        }
    };
}

/// Conversions shared by the older contracts' modules ([`v1`], [`v2`]): the
/// types that are the same in every version (request, reply, listing, log
/// level). Expanded inside a module that names its own types `old` and the
/// host's `now`.
macro_rules! same_in_every_version {
    () => {
        same_cases!(now::Endpoint => old::Endpoint {
            Root, Version, Tags, Ps, Show, Generate, Chat, Embed, Embeddings, Pull, Push, Create,
            Copy, Delete, Blobs, OpenaiChat, OpenaiCompletions, OpenaiEmbeddings, OpenaiModels,
            OpenaiModel, OpenaiResponses, OpenaiMessages, Other,
        });

        same_cases!(old::Level => now::Level { Debug, Info, Warn, Error });

        fn value_to_old(v: &now::JsonValue) -> old::JsonValue {
            match v {
                now::JsonValue::Null => old::JsonValue::Null,
                now::JsonValue::Boolean(b) => old::JsonValue::Boolean(*b),
                now::JsonValue::Integer(i) => old::JsonValue::Integer(*i),
                now::JsonValue::Number(n) => old::JsonValue::Number(*n),
                now::JsonValue::Text(t) => old::JsonValue::Text(t.clone()),
                now::JsonValue::Raw(r) => old::JsonValue::Raw(r.clone()),
            }
        }

        fn value_from_old(v: old::JsonValue) -> now::JsonValue {
            match v {
                old::JsonValue::Null => now::JsonValue::Null,
                old::JsonValue::Boolean(b) => now::JsonValue::Boolean(b),
                old::JsonValue::Integer(i) => now::JsonValue::Integer(i),
                old::JsonValue::Number(n) => now::JsonValue::Number(n),
                old::JsonValue::Text(t) => now::JsonValue::Text(t),
                old::JsonValue::Raw(r) => now::JsonValue::Raw(r),
            }
        }

        fn headers_to_old(headers: &[now::Header]) -> Vec<old::Header> {
            headers
                .iter()
                .map(|h| old::Header {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect()
        }

        fn headers_from_old(headers: Vec<old::Header>) -> Vec<now::Header> {
            headers
                .into_iter()
                .map(|h| now::Header {
                    name: h.name,
                    value: h.value,
                })
                .collect()
        }

        fn options_from_old(options: Vec<old::OptionEntry>) -> Vec<now::OptionEntry> {
            options
                .into_iter()
                .map(|o| now::OptionEntry {
                    key: o.key,
                    value: value_from_old(o.value),
                })
                .collect()
        }

        fn reply_from_old(reply: old::Reply) -> now::Reply {
            now::Reply {
                status: reply.status,
                message: reply.message,
                headers: headers_from_old(reply.headers),
            }
        }

        /// The request as a plugin of this version sees it.
        pub fn request(req: &now::Request) -> old::Request {
            old::Request {
                id: req.id.clone(),
                endpoint: req.endpoint.into(),
                method: req.method.clone(),
                path: req.path.clone(),
                model: req.model.clone(),
                headers: headers_to_old(&req.headers),
                client_addr: req.client_addr.clone(),
                options: req
                    .options
                    .iter()
                    .map(|o| old::OptionEntry {
                        key: o.key.clone(),
                        value: value_to_old(&o.value),
                    })
                    .collect(),
                keep_alive: req.keep_alive.as_ref().map(value_to_old),
                streaming: req.streaming,
                body_size: req.body_size,
                route: req.route.clone(),
            }
        }

        /// Listed models for a plugin of this version.
        pub fn listed_to_old(models: &[now::ListedModel]) -> Vec<old::ListedModel> {
            models
                .iter()
                .map(|m| old::ListedModel {
                    name: m.name.clone(),
                    source: m.source.clone(),
                    backends: m.backends.clone(),
                })
                .collect()
        }

        /// What a plugin of this version listed, in the host's terms.
        pub fn listed_from_old(models: Vec<old::ListedModel>) -> Vec<now::ListedModel> {
            models
                .into_iter()
                .map(|m| now::ListedModel {
                    name: m.name,
                    source: m.source,
                    backends: m.backends,
                })
                .collect()
        }
    };
}

mod v1;
mod v2;

pub use v3::llamagate::policy::types::{
    Decision, Edits, Endpoint, Header, JsonValue, Level, ListedModel, OptionEntry, Reply, Request,
};

/// The contract versions llamagate serves, newest first.
pub const CONTRACTS: [&str; 3] = ["0.3.0", "0.2.0", "0.1.0"];

/// A backend's state, as plugins (0.3.0's `backend-state`) and the status
/// endpoint are told it: from active probes and from the breaker that counts
/// what happened to real requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Health {
    /// Probes pass and the breaker is closed (also: not probed yet).
    #[default]
    Up,
    /// The breaker's wait is over: a trial request may go.
    HalfOpen,
    /// The breaker is open after consecutive request failures.
    Open,
    /// Unreachable, or its probes fail.
    Down,
}

impl Health {
    /// Whether requests may be sent (`Up` or `HalfOpen`): the `healthy`
    /// of the 0.1.0 and 0.2.0 contracts.
    pub fn healthy(self) -> bool {
        matches!(self, Health::Up | Health::HalfOpen)
    }

    /// The state in words, as the status endpoint shows it (`up`, `half-open`,
    /// `open`, `down`: the WIT enum's case names).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::HalfOpen => "half-open",
            Health::Open => "open",
            Health::Down => "down",
        }
    }
}

/// A model loaded in a backend's memory (from its `/api/ps`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedModel {
    /// Display name, e.g. `llama3.2:latest`.
    pub name: String,
    /// Bytes it takes in memory, GPU and CPU together (`size`).
    pub size: u64,
    /// Bytes of it in GPU memory (`size_vram`); less than `size` means CPU offload.
    pub size_vram: u64,
    /// The runner's context size, when the backend reports it.
    pub context_length: Option<u32>,
    /// Seconds until Ollama unloads it; `None` = never, or not reported.
    pub expires_in_secs: Option<u64>,
}

/// What llamagate knows of one model on one backend (filled for the model a
/// plugin asked `backends-for` about).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFacts {
    /// Bytes on disk, from the backend's `/api/tags`; `None` when unknown.
    pub size: Option<u64>,
    /// Requests for this model being forwarded to the backend now.
    pub in_flight: u32,
    /// Requests for this model waiting in the queue that could go to it.
    pub queued: u32,
}

/// What llamagate knows of one backend, as plugins are told it: each
/// contract version gets the part it defines (0.1.0 the models and URL,
/// 0.2.0 the reason it is unhealthy, 0.3.0 everything but the models and URL).
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// The operator's id.
    pub id: String,
    /// Base URL without userinfo.
    pub url: String,
    /// Probe and breaker state.
    pub state: Health,
    /// Why it is not up, in words; `None` when up.
    pub reason: Option<String>,
    /// Its Ollama version (`/api/version`), once known.
    pub version: Option<String>,
    /// Requests sent to it at once, all models together.
    pub slots: u32,
    /// Requests sent to it at once for one model (`OLLAMA_NUM_PARALLEL`).
    pub model_slots: u32,
    /// Requests this process is forwarding to it now.
    pub in_flight: u32,
    /// Requests waiting in the queue that could go to it.
    pub queued: u32,
    /// Declared GPU memory budget in bytes.
    pub vram: Option<u64>,
    /// Models it serves, as its `/api/tags` names them (0.1.0 plugins only).
    pub models: Vec<String>,
    /// Models loaded now (its `/api/ps`).
    pub loaded: Vec<LoadedModel>,
    /// The model a `backends-for` asked about, on this backend; `None` in
    /// the whole fleet's list.
    pub model: Option<ModelFacts>,
}

impl Default for Backend {
    /// An idle backend that is up, with the slot defaults of Ollama's own
    /// (`OLLAMA_NUM_PARALLEL` 1 per model, 3 models loaded at most).
    fn default() -> Self {
        Backend {
            id: String::new(),
            url: String::new(),
            state: Health::Up,
            reason: None,
            version: None,
            slots: 3,
            model_slots: 1,
            in_flight: 0,
            queued: 0,
            vram: None,
            models: Vec::new(),
            loaded: Vec::new(),
            model: None,
        }
    }
}

impl Backend {
    /// Whether requests may be sent to it ([`Health::healthy`]).
    pub fn healthy(&self) -> bool {
        self.state.healthy()
    }

    /// The 0.3.0 record: everything but the models and the URL.
    fn v3(self) -> v3::llamagate::policy::types::Backend {
        use v3::llamagate::policy::types as t;
        t::Backend {
            id: self.id,
            state: match self.state {
                Health::Up => t::BackendState::Up,
                Health::HalfOpen => t::BackendState::HalfOpen,
                Health::Open => t::BackendState::Open,
                Health::Down => t::BackendState::Down,
            },
            healthy: self.state.healthy(),
            reason: self.reason,
            version: self.version,
            slots: self.slots,
            model_slots: self.model_slots,
            in_flight: self.in_flight,
            queued: self.queued,
            vram: self.vram,
            loaded: self
                .loaded
                .into_iter()
                .map(|l| t::LoadedModel {
                    name: l.name,
                    size: l.size,
                    size_vram: l.size_vram,
                    context_length: l.context_length,
                    expires_in: l.expires_in_secs,
                })
                .collect(),
            model: self.model.map(|m| t::ModelFacts {
                size: m.size,
                in_flight: m.in_flight,
                queued: m.queued,
            }),
        }
    }
}

/// A component's exports, by the contract version it was built for.
enum Bindings {
    V1(v1::PolicyPlugin),
    V2(v2::PolicyPlugin),
    V3(v3::PolicyPlugin),
}

/// A component ready to instantiate, by contract version.
enum Pre {
    V1(v1::PolicyPluginPre<State>),
    V2(v2::PolicyPluginPre<State>),
    V3(v3::PolicyPluginPre<State>),
}

/// What a plugin may learn about the fleet during a call, answered by the
/// host from what it knows now (the fleet implements it).
pub trait Facts: Send + Sync {
    /// Every backend with the models it serves, in configuration order.
    fn all(&self) -> Vec<Backend>;
    /// The backends that serve `model` (Ollama's name rules), in configuration
    /// order, with `models` left empty (0.2.0 and later plugins are not handed
    /// them, and copying them was the cost that grew with the fleet) and
    /// `model` filled with that model's facts on each.
    fn serving(&self, model: &str) -> Vec<Backend>;
}

/// A fixed set of backends answering [`Facts`] (for replay and benchmarks;
/// the live fleet answers from its own state). Model names are indexed by
/// their normalised form once, as the fleet does.
pub struct Snapshot {
    backends: Vec<Backend>,
    keys: Vec<std::collections::HashSet<String>>,
}

impl Snapshot {
    /// The facts `backends` give.
    pub fn new(backends: Vec<Backend>) -> Snapshot {
        let keys = backends
            .iter()
            .map(|b| {
                b.models
                    .iter()
                    .map(|m| llamagate_sdk::names::key(m))
                    .collect()
            })
            .collect();
        Snapshot { backends, keys }
    }
}

impl Facts for Snapshot {
    fn all(&self) -> Vec<Backend> {
        self.backends
            .iter()
            .map(|b| Backend {
                model: None,
                ..b.clone()
            })
            .collect()
    }
    fn serving(&self, model: &str) -> Vec<Backend> {
        let key = llamagate_sdk::names::key(model);
        self.backends
            .iter()
            .zip(&self.keys)
            .filter(|(_, keys)| keys.contains(&key))
            .map(|(b, _)| Backend {
                models: Vec::new(),
                model: Some(b.model.clone().unwrap_or_default()),
                ..b.clone()
            })
            .collect()
    }
}

/// How often the epoch ticker advances. Deadlines are whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Whole epoch ticks covering `time`, plus one: the deadline is checked at tick
/// boundaries, so a call gets at least `time`.
fn ticks(time: Duration) -> u64 {
    (time.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1
}

/// CPU time the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Hard ceiling on any plugin's linear memory; per-plugin caps sit below it.
const MAX_MEMORY_CEILING: usize = 1 << 30;

/// Why a plugin call failed. Each variant names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin used up its time limit (CPU time of the call) and was interrupted.
    #[error("plugin {plugin:?} exceeded its time limit of {limit:?} (CPU time)")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The configured limit.
        limit: Duration,
    },
    /// The plugin tried to grow its memory past its cap.
    #[error("plugin {plugin:?} exceeded its memory limit of {limit} bytes")]
    OutOfMemory {
        /// Plugin name.
        plugin: String,
        /// The configured cap in bytes.
        limit: usize,
        /// Bytes of the request copied into the sandbox during the call (the
        /// view, and the body if the plugin asked for it): when they are a
        /// large part of the cap, the request's size is to blame, not the plugin.
        request_bytes: usize,
    },
    /// The plugin trapped (panic, unreachable, bad memory access...).
    #[error("plugin {plugin:?} trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap in one line, as wasmtime names it (the backtrace is logged
        /// at debug level, never sent to clients).
        message: String,
    },
    /// A new instance could not be created or refused its config.
    #[error("plugin {plugin:?} could not start: {message}")]
    Start {
        /// Plugin name.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// Every call slot stayed taken for `max_wait`: the request was not run.
    #[error("plugin {plugin:?} is busy: all {concurrency} of its call slots stayed taken for {waited:?}; retry later")]
    Busy {
        /// Plugin name.
        plugin: String,
        /// Calls of the plugin allowed at once.
        concurrency: usize,
        /// How long the request waited.
        waited: Duration,
    },
}

impl PluginError {
    /// The plugin the error is about.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Timeout { plugin, .. }
            | PluginError::OutOfMemory { plugin, .. }
            | PluginError::Trap { plugin, .. }
            | PluginError::Start { plugin, .. }
            | PluginError::Busy { plugin, .. } => plugin,
        }
    }

    /// A short name of the kind of failure, for logs and rate limiting.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Timeout { .. } => "timeout",
            PluginError::OutOfMemory { .. } => "out-of-memory",
            PluginError::Trap { .. } => "trap",
            PluginError::Start { .. } => "start",
            PluginError::Busy { .. } => "busy",
        }
    }
}

/// Sandbox limits of one plugin.
#[derive(Clone, Debug)]
pub struct Limits {
    /// CPU time one call may use.
    pub time: Duration,
    /// Bytes of linear memory one instance may use.
    pub memory: usize,
    /// Calls of this plugin admitted at once (idle instances kept: at most
    /// this, and at most one per CPU).
    pub concurrency: usize,
    /// How long a request may wait for a free call slot before it is refused.
    pub max_wait: Duration,
}

/// Most calls of one plugin at once a config may ask for (the pooling
/// allocator holds 512 component instances for all plugins together).
pub const MAX_CONCURRENCY: usize = 256;

impl Limits {
    /// The default `concurrency`: the number of CPUs, at least 2.
    pub fn default_concurrency() -> usize {
        cpus().clamp(2, MAX_CONCURRENCY)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_millis(100),
            memory: 64 << 20,
            concurrency: Limits::default_concurrency(),
            max_wait: Duration::from_secs(10),
        }
    }
}

/// The process-wide wasmtime state: engine, linker and epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    stop: Arc<AtomicBool>,
    /// Compiled components by content hash, so a reload recompiles only what changed.
    compiled: Mutex<HashMap<u64, Component>>,
}

/// Compiled components kept for reloads; past this the cache starts afresh.
const MAX_CACHED_COMPONENTS: usize = 32;

impl Runtime {
    /// Builds the engine and starts the epoch ticker thread.
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        // Calls are synchronous and short, so live instances stay near the number
        // of worker threads; these bounds leave room for hot swaps and many plugins.
        pool.total_component_instances(512);
        // A Rust component has a handful of core instances; componentize-py ones
        // have dozens.
        pool.max_core_instances_per_component(64);
        pool.total_core_instances(4096);
        pool.max_memories_per_component(8);
        pool.total_memories(1024);
        pool.max_tables_per_component(64);
        pool.total_tables(4096);
        // The real per-plugin cap is enforced by the store's limiter.
        pool.max_memory_size(MAX_MEMORY_CEILING);
        // Instances of interpreters (componentize-py) carry large vmctx data.
        pool.max_component_instance_size(4 << 20);
        pool.max_core_instance_size(4 << 20);

        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            // No async guests: skipping the concurrency bookkeeping makes each
            // call about 3x cheaper.
            .concurrency_support(false)
            .wasm_component_model(true);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("creating the wasmtime engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        // The blocking parts of wasi:io, replaced by versions that never wait.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<State, nonblocking::NonBlocking>(
            &mut linker,
            |s| nonblocking::NonBlockingIo(&mut s.table),
        )
        .map_err(anyhow::Error::from)
        .context("linking wasi:io/poll")?;
        wasmtime_wasi::p2::bindings::sync::io::streams::add_to_linker::<
            State,
            nonblocking::NonBlocking,
        >(&mut linker, |s| nonblocking::NonBlockingIo(&mut s.table))
        .map_err(anyhow::Error::from)
        .context("linking wasi:io/streams")?;
        linker.allow_shadowing(false);
        // Every contract version's host interface (`host@0.1.0`, `host@0.2.0`,
        // `host@0.3.0`).
        v3::PolicyPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking the llamagate host interface")?;
        v2::PolicyPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking the llamagate host interface, 0.2.0")?;
        v1::PolicyPlugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("linking the llamagate host interface, 0.1.0")?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("llamagate-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            stop,
            compiled: Mutex::default(),
        }))
    }

    /// Compiles a component, checks it implements the world, and starts one
    /// instance (running `init` with `config`), so a bad plugin fails here.
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        wasm: &[u8],
        config_json: String,
        limits: Limits,
    ) -> anyhow::Result<Plugin> {
        let component = self
            .compile(wasm)
            .with_context(|| format!("plugin {name:?}: not a valid WebAssembly component"))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("plugin {name:?}: does not fit the llamagate:policy world"))?;
        // Newest first: a component exports one version of `policy`.
        let pre = if let Ok(pre) = v3::PolicyPluginPre::new(pre.clone()) {
            Pre::V3(pre)
        } else if let Ok(pre) = v2::PolicyPluginPre::new(pre.clone()) {
            Pre::V2(pre)
        } else {
            Pre::V1(v1::PolicyPluginPre::new(pre).map_err(|_| {
                anyhow!(
                    "plugin {name:?}: does not export llamagate:policy/policy at a version \
                     llamagate serves ({})",
                    CONTRACTS.join(", ")
                )
            })?)
        };
        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                name: name.to_string(),
                runtime: self.clone(),
                pre,
                config: config_json,
                slots: FairQueue::new(limits.concurrency),
                limits,
                stdout: GuestOutput::new(Arc::from(name), Channel::Stdout),
                stderr: GuestOutput::new(Arc::from(name), Channel::Stderr),
                slow_until: AtomicU64::new(0),
                idle: Mutex::new(Vec::new()),
            }),
        };
        let first = plugin.inner.start().map_err(|e| anyhow!("{e}"))?;
        plugin.inner.idle.lock().unwrap().push(first);
        Ok(plugin)
    }
}

impl Runtime {
    /// Compiles a component, or takes it from the cache when these bytes were
    /// compiled before.
    fn compile(&self, wasm: &[u8]) -> anyhow::Result<Component> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        wasm.hash(&mut hasher);
        let key = hasher.finish();
        if let Some(component) = self.compiled.lock().unwrap().get(&key) {
            return Ok(component.clone());
        }
        let component = Component::new(&self.engine, wasm).map_err(anyhow::Error::from)?;
        let mut cache = self.compiled.lock().unwrap();
        if cache.len() >= MAX_CACHED_COMPONENTS {
            cache.clear();
        }
        cache.insert(key, component.clone());
        Ok(component)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Per-store state: the empty WASI context, the memory limiter and the body of
/// the request being decided.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_cap: usize,
    hit_memory_cap: bool,
    /// Whether the call asked for the body (`host.request-body`).
    body_handed: bool,
    plugin: Arc<str>,
    body: Bytes,
    /// What the call may ask about the fleet (`host.backends-for`).
    facts: Option<Arc<dyn Facts>>,
    /// The calling thread's CPU clock reading at which the current call's
    /// budget runs out.
    cpu_deadline: Duration,
}

impl State {
    /// Gives the call about to start `budget` of CPU time.
    fn arm(store: &mut Store<State>, budget: Duration) {
        store.data_mut().cpu_deadline = thread_cpu_time() + budget;
        store.set_epoch_deadline(ticks(budget));
    }

    /// At a deadline tick: go on for the budget left, or interrupt when the
    /// call has used it up.
    fn on_deadline(&self) -> UpdateDeadline {
        let used = thread_cpu_time();
        match self.cpu_deadline.checked_sub(used) {
            Some(left) if !left.is_zero() => UpdateDeadline::Continue(ticks(left)),
            _ => UpdateDeadline::Interrupt,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.hit_memory_cap = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl v3::llamagate::policy::types::Host for State {}
impl v2::llamagate::policy::types::Host for State {}
impl v1::llamagate::policy::types::Host for State {}

impl v1::llamagate::policy::host::Host for State {
    fn log(&mut self, level: v1::llamagate::policy::types::Level, message: String) {
        v3::llamagate::policy::host::Host::log(self, level.into(), message)
    }

    fn request_body(&mut self) -> Vec<u8> {
        v3::llamagate::policy::host::Host::request_body(self)
    }
}

impl v2::llamagate::policy::host::Host for State {
    fn backends_for(&mut self, model: String) -> Vec<v2::llamagate::policy::types::Backend> {
        self.serving(&model).into_iter().map(v2::backend).collect()
    }

    fn all_backends(&mut self) -> Vec<v2::llamagate::policy::types::Backend> {
        self.all().into_iter().map(v2::backend).collect()
    }

    fn log(&mut self, level: v2::llamagate::policy::types::Level, message: String) {
        v3::llamagate::policy::host::Host::log(self, level.into(), message)
    }

    fn request_body(&mut self) -> Vec<u8> {
        v3::llamagate::policy::host::Host::request_body(self)
    }
}

impl State {
    /// The answer to `backends-for` in the host's terms (empty outside a call).
    fn serving(&self, model: &str) -> Vec<Backend> {
        self.facts
            .as_ref()
            .map_or_else(Vec::new, |facts| facts.serving(model))
    }

    /// The answer to `all-backends` in the host's terms (empty outside a call).
    fn all(&self) -> Vec<Backend> {
        self.facts
            .as_ref()
            .map_or_else(Vec::new, |facts| facts.all())
    }
}

impl v3::llamagate::policy::host::Host for State {
    fn backends_for(&mut self, model: String) -> Vec<v3::llamagate::policy::types::Backend> {
        self.serving(&model).into_iter().map(Backend::v3).collect()
    }

    fn all_backends(&mut self) -> Vec<v3::llamagate::policy::types::Backend> {
        self.all().into_iter().map(Backend::v3).collect()
    }

    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn request_body(&mut self) -> Vec<u8> {
        self.body_handed = true;
        self.body.to_vec()
    }
}

/// Bytes of a request view's variable-length parts, as copied into a sandbox.
fn view_bytes(req: &Request) -> usize {
    let headers: usize = req
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    let options: usize = req.options.iter().map(|o| o.key.len() + 16).sum();
    req.path.len() + headers + options + req.model.as_ref().map_or(0, String::len)
}

/// A loaded plugin: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    name: String,
    runtime: Arc<Runtime>,
    pre: Pre,
    config: String,
    limits: Limits,
    slots: Arc<FairQueue>,
    idle: Mutex<Vec<Instance>>,
    stdout: GuestOutput,
    stderr: GuestOutput,
    /// Until when (ms on [`clock_ms`]) its calls run off the async workers,
    /// because one used more than [`SLOW_CALL`] of CPU time.
    slow_until: AtomicU64,
}

/// A call that uses more CPU time than this marks its plugin slow: its calls
/// run off the async workers for the next [`SLOW_FOR`].
pub const SLOW_CALL: Duration = Duration::from_millis(1);

/// How long a plugin marked slow keeps running off the async workers.
pub const SLOW_FOR: Duration = Duration::from_secs(1);

/// Milliseconds since the first call to it: a cheap clock for `slow_until`.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Plugin calls running inline on async workers right now, all plugins
/// together.
static INLINE_CALLS: AtomicUsize = AtomicUsize::new(0);

/// At most this many calls run inline at once: one worker fewer than tokio
/// has (one per CPU), so calls that spin to their limit can never hold every
/// worker, and streams keep moving on the one left.
fn max_inline_calls() -> usize {
    cpus().saturating_sub(1).max(1)
}

/// The CPUs this process may use (tokio's worker count), read once: asking
/// the OS reads cgroup files every time.
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Why a call may not run inline now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotInline {
    /// The plugin was marked slow ([`SLOW_CALL`]).
    Slow,
    /// As many calls as may run inline already do (likely short ones).
    Busy,
}

/// Permission to run one plugin call inline on this async worker; released
/// on drop.
pub struct Inline(());

impl Drop for Inline {
    fn drop(&mut self) {
        INLINE_CALLS.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Instance {
    store: Store<State>,
    bindings: Bindings,
}

impl Plugin {
    /// The plugin's configured name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Permission to make the next call inline on the calling async worker:
    /// `None` while the plugin is marked slow or when as many calls as may
    /// already run inline; the caller then runs it with `spawn_blocking`.
    pub fn inline(&self) -> Result<Inline, NotInline> {
        if clock_ms() < self.inner.slow_until.load(Ordering::Relaxed) {
            return Err(NotInline::Slow);
        }
        let max = max_inline_calls();
        INLINE_CALLS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Inline(()))
            .map_err(|_| NotInline::Busy)
    }

    /// Whether a call now finds an instance ready (else it starts one first).
    pub fn has_idle(&self) -> bool {
        !self.inner.idle.lock().unwrap().is_empty()
    }

    /// Starts one more instance and keeps it idle (up to `concurrency`), so
    /// that the next call need not: instantiation and `init` may take long,
    /// so callers on an async worker run this off it.
    pub fn warm(&self) -> Result<(), PluginError> {
        let instance = self.inner.start()?;
        let mut idle = self.inner.idle.lock().unwrap();
        if idle.len() < self.inner.idle_cap() {
            idle.push(instance);
        }
        Ok(())
    }

    /// Waits (asynchronously, least-used `client` key first) for one of the
    /// plugin's call slots; hold the slot for the duration of the call. After
    /// `max_wait` without a slot: [`PluginError::Busy`].
    pub async fn admit(&self, client: &str) -> Result<Slot, PluginError> {
        let limits = &self.inner.limits;
        self.inner
            .slots
            .acquire_within(client, limits.max_wait)
            .await
            .ok_or_else(|| PluginError::Busy {
                plugin: self.inner.name.clone(),
                concurrency: limits.concurrency,
                waited: limits.max_wait,
            })
    }

    /// The contract version the plugin was built for (`"0.3.0"`, `"0.2.0"`,
    /// `"0.1.0"`).
    pub fn contract(&self) -> &'static str {
        match self.inner.pre {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
            Pre::V3(_) => "0.3.0",
        }
    }

    /// Runs `on-request`. `body` is what `host.request-body` returns; `facts`
    /// answers what the plugin asks about the fleet (a 0.1.0 plugin is handed
    /// all of it).
    pub fn on_request(
        &self,
        req: &Request,
        facts: &Arc<dyn Facts>,
        body: &Bytes,
    ) -> Result<Decision, PluginError> {
        self.inner
            .call(body, Some(facts), |store, bindings| match bindings {
                Bindings::V3(b) => b.llamagate_policy_policy().call_on_request(store, req),
                Bindings::V2(b) => b
                    .llamagate_policy_policy()
                    .call_on_request(store, &v2::request(req))
                    .map(v2::decision),
                Bindings::V1(b) => {
                    let backends: Vec<_> = facts.all().into_iter().map(v1::backend).collect();
                    b.llamagate_policy_policy()
                        .call_on_request(store, &v1::request(req), &backends)
                        .map(v1::decision)
                }
            })
            .map_err(|err| match err {
                PluginError::OutOfMemory {
                    plugin,
                    limit,
                    request_bytes,
                } => PluginError::OutOfMemory {
                    plugin,
                    limit,
                    request_bytes: request_bytes + view_bytes(req),
                },
                other => other,
            })
    }

    /// Runs `list-models`; `facts` answers what the plugin asks about the fleet.
    pub fn list_models(
        &self,
        req: &Request,
        models: &[ListedModel],
        facts: &Arc<dyn Facts>,
    ) -> Result<Vec<ListedModel>, PluginError> {
        self.inner.call(
            &Bytes::new(),
            Some(facts),
            |store, bindings| match bindings {
                Bindings::V3(b) => b
                    .llamagate_policy_policy()
                    .call_list_models(store, req, models),
                Bindings::V2(b) => b
                    .llamagate_policy_policy()
                    .call_list_models(store, &v2::request(req), &v2::listed_to_old(models))
                    .map(v2::listed_from_old),
                Bindings::V1(b) => b
                    .llamagate_policy_policy()
                    .call_list_models(store, &v1::request(req), &v1::listed_to_old(models))
                    .map(v1::listed_from_old),
            },
        )
    }
}

impl PluginInner {
    /// Idle instances kept: calls run inline on the async workers, so no more
    /// than one per worker thread (at most one per CPU) is ever busy at once,
    /// and never more than `concurrency`.
    fn idle_cap(&self) -> usize {
        self.limits.concurrency.min(cpus().max(2))
    }

    fn call<R>(
        &self,
        body: &Bytes,
        facts: Option<&Arc<dyn Facts>>,
        f: impl FnOnce(&mut Store<State>, &Bindings) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let idle = self.idle.lock().unwrap().pop();
        let mut instance = match idle {
            Some(i) => i,
            None => self.start()?,
        };
        instance.store.data_mut().body = body.clone();
        instance.store.data_mut().body_handed = false;
        instance.store.data_mut().facts = facts.cloned();
        State::arm(&mut instance.store, self.limits.time);
        let started = std::time::Instant::now();
        // A host function that panics (one llamagate did not make safe for an
        // async worker) fails this call only; the instance is dropped.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut instance.store, &instance.bindings)
        }));
        // Wall time first (a vDSO read); the CPU clock only when that is
        // long, since a preempted thread's wall time says nothing.
        if started.elapsed() > SLOW_CALL {
            let cpu_started = instance
                .store
                .data()
                .cpu_deadline
                .saturating_sub(self.limits.time);
            if thread_cpu_time().saturating_sub(cpu_started) > SLOW_CALL {
                let until = clock_ms() + SLOW_FOR.as_millis() as u64;
                self.slow_until.store(until, Ordering::Relaxed);
            }
        }
        let Ok(called) = called else {
            return Err(PluginError::Trap {
                plugin: self.name.clone(),
                message: "a host function the plugin called failed".into(),
            });
        };
        match called {
            Ok(result) => {
                instance.store.data_mut().body = Bytes::new();
                instance.store.data_mut().facts = None;
                let mut idle = self.idle.lock().unwrap();
                if idle.len() < self.idle_cap() {
                    idle.push(instance);
                }
                Ok(result)
            }
            // The instance is dropped here: a trapped store is never reused.
            Err(err) => {
                let state = instance.store.data();
                let mut failure = self.classify(err, state.hit_memory_cap);
                if let PluginError::OutOfMemory { request_bytes, .. } = &mut failure {
                    *request_bytes = if state.body_handed { body.len() } else { 0 };
                }
                Err(failure)
            }
        }
    }

    /// Instantiation and `init` run once per instance and may parse a large
    /// config (or, for interpreted plugins, start an interpreter): they get ten
    /// times the call limit, and at least a second.
    fn start_budget(&self) -> Duration {
        (self.limits.time * 10).max(Duration::from_secs(1))
    }

    fn classify(&self, err: wasmtime::Error, hit_memory_cap: bool) -> PluginError {
        let plugin = self.name.clone();
        if matches!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            return PluginError::Timeout {
                plugin,
                limit: self.limits.time,
            };
        }
        if hit_memory_cap {
            return PluginError::OutOfMemory {
                plugin,
                limit: self.limits.memory,
                request_bytes: 0,
            };
        }
        tracing::debug!(plugin, "plugin trapped: {err:?}");
        PluginError::Trap {
            plugin,
            message: one_line(&err),
        }
    }

    /// Makes a fresh instance and runs `init` with the config.
    fn start(&self) -> Result<Instance, PluginError> {
        let state = State {
            wasi: WasiCtx::builder()
                .stdout(self.stdout.clone())
                .stderr(self.stderr.clone())
                .build(),
            table: ResourceTable::new(),
            memory_cap: self.limits.memory,
            hit_memory_cap: false,
            body_handed: false,
            plugin: Arc::from(self.name.as_str()),
            body: Bytes::new(),
            facts: None,
            cpu_deadline: Duration::ZERO,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| s);
        store.epoch_deadline_callback(|store| Ok(store.data().on_deadline()));
        State::arm(&mut store, self.start_budget());
        let bindings = match &self.pre {
            Pre::V1(pre) => pre.instantiate(&mut store).map(Bindings::V1),
            Pre::V2(pre) => pre.instantiate(&mut store).map(Bindings::V2),
            Pre::V3(pre) => pre.instantiate(&mut store).map(Bindings::V3),
        }
        .map_err(|e| self.start_error(e, store.data().hit_memory_cap))?;
        State::arm(&mut store, self.start_budget());
        let init = match &bindings {
            Bindings::V1(b) => b
                .llamagate_policy_policy()
                .call_init(&mut store, &self.config),
            Bindings::V2(b) => b
                .llamagate_policy_policy()
                .call_init(&mut store, &self.config),
            Bindings::V3(b) => b
                .llamagate_policy_policy()
                .call_init(&mut store, &self.config),
        };
        match init {
            Ok(Ok(())) => Ok(Instance { store, bindings }),
            Ok(Err(message)) => Err(PluginError::Start {
                plugin: self.name.clone(),
                message: format!("init refused the config: {message}"),
            }),
            Err(e) => Err(self.start_error(e, store.data().hit_memory_cap)),
        }
    }

    fn start_error(&self, err: wasmtime::Error, hit_memory_cap: bool) -> PluginError {
        match self.classify(err, hit_memory_cap) {
            PluginError::Trap { plugin, message } => PluginError::Start { plugin, message },
            other => other,
        }
    }
}

/// A wasmtime error in one line for clients: the trap's own description
/// (`wasm trap: wasm `unreachable` instruction executed`), or the innermost
/// cause, without the backtrace.
fn one_line(err: &wasmtime::Error) -> String {
    let text = match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first.trim().chars().take(300).collect()
}
