//! The policy chain: runs each plugin in the configured order and folds their
//! decisions into one [`Outcome`].
//!
//! Each plugin sees the request as the plugins before it left it (renamed model,
//! edited options, headers). The first `respond` ends the chain. The backend list
//! of the last plugin that set one wins. A plugin that fails fails the request
//! (`on_failure = "closed"`, the default) or is skipped (`"open"`).
//!
//! On the request path ([`Chain::decide`]) each link first waits for one of its
//! plugin's call slots (fairly across clients: [`Plugin::admit`]), then makes
//! the one synchronous plugin call inline, on the async worker the request
//! runs on (no thread hop); the slot is held until that call returns. Offline
//! replay uses [`Chain::decide_blocking`].

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::api::body::render;
use crate::api::error::GatewayError;
use crate::config::OnFailure;
use crate::log_limit::LogLimiter;
use crate::metrics::{Metrics, PluginFailureLabels, PluginLabels};
use crate::plugin::{
    Decision, Edits, Facts, Header, ListedModel, OptionEntry, Plugin, PluginError, Reply, Request,
};

/// One "skipped (on_failure = open)" line per plugin and kind every 10 s.
static SKIPPED: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Logs that a fail-open plugin was skipped, rate-limited per plugin and kind.
fn log_skipped(err: &PluginError) {
    let key = format!("{}:{}", err.plugin(), err.kind());
    crate::warn_limited!(SKIPPED, &key, "{err}; skipped (on_failure = \"open\")");
}

/// The key a request waits under for a plugin's call slot: the client's IP
/// (its port changes with every connection), or the whole address text.
pub fn client_key(client_addr: &str) -> String {
    match client_addr.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => client_addr.to_string(),
    }
}

/// One plugin of a chain and what its failure does.
#[derive(Clone)]
pub struct Link {
    /// The plugin.
    pub plugin: Plugin,
    /// Fail the request, or skip the plugin, when it fails.
    pub on_failure: OnFailure,
}

/// The loaded plugins, in order.
pub struct Chain {
    links: Vec<Link>,
    /// Each link's decision-time histogram, once metered (see [`Chain::decide`]).
    seconds: Vec<std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>>,
}

/// What the chain decided.
pub enum Outcome {
    /// Answer the client now.
    Respond {
        /// The plugin that answered.
        plugin: String,
        /// Its reply.
        reply: Reply,
        /// What each plugin did, when tracing.
        trace: Vec<String>,
    },
    /// Forward the request.
    Forward(Box<Plan>),
}

impl Outcome {
    /// What the decision amounts to, comparable (the live and shadow chains
    /// agree when their verdicts are equal) and shown in words by `Display`.
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Respond { reply, .. } => Verdict::Answer {
                status: reply.status,
            },
            Outcome::Forward(plan) => {
                let route = match &plan.backends {
                    Some(choice) if !choice.backends.is_empty() => {
                        Route::Backends(choice.backends.clone())
                    }
                    None if plan.request.model.is_none() => Route::Any,
                    _ => Route::NotFound,
                };
                let mut with = Vec::new();
                if plan.options_changed {
                    for (entry, raw) in plan.option_entries() {
                        let value = raw.unwrap_or_else(|| render(&entry.value));
                        with.push((entry.key, value));
                    }
                }
                if plan.keep_alive_changed {
                    if let Some(k) = &plan.request.keep_alive {
                        with.push(("keep_alive".to_string(), render(k)));
                    }
                }
                Verdict::Forward {
                    model: plan.request.model.clone(),
                    route,
                    with,
                }
            }
        }
    }

    /// The decision in words, one line ([`Verdict`]'s `Display`).
    pub fn summary(&self) -> String {
        self.verdict().to_string()
    }

    /// The per-plugin trace, when the chain ran with tracing on.
    pub fn trace(&self) -> &[String] {
        match self {
            Outcome::Respond { trace, .. } => trace,
            Outcome::Forward(plan) => &plan.trace,
        }
    }
}

/// What a chain decided, as data: equal verdicts are the same decision.
/// Shown in words: `answer 403`, or
/// `forward llama3.2 to gpu-01, then gpu-02 with num_ctx=8192 keep_alive="10m"`
/// (options and `keep_alive` only when the chain changed them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answer the client with `status` (whichever plugin said so: a shadow
    /// chain under test may name its plugins differently).
    Answer {
        /// The status.
        status: u16,
    },
    /// Forward the request.
    Forward {
        /// The model the backend is asked for.
        model: Option<String>,
        /// Where it goes.
        route: Route,
        /// Options and `keep_alive` the chain changed, as JSON text, in order.
        with: Vec<(String, String)>,
    },
}

/// Where a forwarded request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Any backend (the request names no model).
    Any,
    /// These backends, tried in this order.
    Backends(Vec<String>),
    /// No backend serves the model: the client gets "model not found".
    NotFound,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Answer { status, .. } => write!(f, "answer {status}"),
            Verdict::Forward { model, route, with } => {
                f.write_str("forward")?;
                if let Some(model) = model {
                    write!(f, " {model}")?;
                }
                match route {
                    Route::Backends(ids) => write!(f, " to {}", ids.join(", then "))?,
                    Route::Any => f.write_str(" to any backend")?,
                    Route::NotFound => f.write_str(" to no backend (not found)")?,
                }
                for (i, (key, value)) in with.iter().enumerate() {
                    f.write_str(if i == 0 { " with " } else { " " })?;
                    write!(f, "{key}={value}")?;
                }
                Ok(())
            }
        }
    }
}

/// The backends a plugin chose for a request, in the order to try them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Backend ids, first choice first.
    pub backends: Vec<String>,
    /// The plugin that chose them (the last in the chain that set a list).
    pub by: String,
}

/// What the chain asked the host to enforce for one request (0.3.0 edits;
/// plugins built for older contracts ask nothing). Each field is the value of
/// the last plugin of the chain that set it; `None`: the host's configured
/// behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enforce {
    /// Queue priority while waiting for a slot: higher first (the host's
    /// default is 0).
    pub priority: Option<i32>,
    /// Longest wait for a backend's response head before failing over; replaces
    /// the configured (or per-model) first-byte timeout.
    pub first_byte_timeout: Option<Duration>,
    /// Longest gap between streamed body frames; replaces the configured
    /// stream idle timeout.
    pub stream_idle_timeout: Option<Duration>,
    /// Longest wait in the queue before 429; replaces the configured queue timeout.
    pub queue_timeout: Option<Duration>,
    /// `Some(false)`: never move to the next backend of the list; `Some(true)`
    /// or `None`: the host's failover rules.
    pub failover: Option<bool>,
    /// `Some(true)`: a pull or delete goes to every chosen backend at once.
    pub every_backend: Option<bool>,
}

impl Enforce {
    /// Takes what one plugin's edits set, over what earlier plugins set.
    fn apply(&mut self, edits: &Edits) {
        let ms = Duration::from_millis;
        if let Some(p) = edits.priority {
            self.priority = Some(p);
        }
        if let Some(t) = edits.first_byte_timeout_ms {
            self.first_byte_timeout = Some(ms(t));
        }
        if let Some(t) = edits.stream_idle_timeout_ms {
            self.stream_idle_timeout = Some(ms(t));
        }
        if let Some(t) = edits.queue_timeout_ms {
            self.queue_timeout = Some(ms(t));
        }
        if let Some(f) = edits.failover {
            self.failover = Some(f);
        }
        if let Some(e) = edits.every_backend {
            self.every_backend = Some(e);
        }
    }
}

/// A request as the chain left it, with what changed.
pub struct Plan {
    /// The request view after all edits.
    pub request: Request,
    /// Original JSON text of options no plugin touched (kept byte for byte).
    pub raw_options: BTreeMap<String, String>,
    /// Whether the model was renamed.
    pub model_changed: bool,
    /// Whether `options` changed.
    pub options_changed: bool,
    /// Whether `keep_alive` changed.
    pub keep_alive_changed: bool,
    /// Headers to set on the forwarded request, validated.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove.
    pub remove_headers: Vec<HeaderName>,
    /// Backends to try in order, and the plugin that chose them.
    pub backends: Option<Choice>,
    /// Who the request is for, as the last plugin that said so named it (a
    /// key's or team's name): the fairness key from then on, and in the log.
    pub principal: Option<String>,
    /// Priority, timeouts and failover the plugins asked the host to enforce.
    pub enforce: Enforce,
    /// What each plugin did, when tracing.
    pub trace: Vec<String>,
}

impl Plan {
    /// The request as it reached the chain: nothing changed yet.
    fn new(request: Request, raw_options: BTreeMap<String, String>) -> Plan {
        Plan {
            request,
            raw_options,
            model_changed: false,
            options_changed: false,
            keep_alive_changed: false,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            backends: None,
            principal: None,
            enforce: Enforce::default(),
            trace: Vec::new(),
        }
    }

    /// The top-level body fields to rewrite, as JSON text. `model_field` is the
    /// field that named the model, `None` when the model is not in the body.
    pub fn body_edits(&self, model_field: Option<&'static str>) -> Vec<(&'static str, String)> {
        let mut edits = Vec::new();
        if let (true, Some(field), Some(model)) =
            (self.model_changed, model_field, &self.request.model)
        {
            edits.push((field, serde_json::to_string(model).expect("string")));
        }
        if self.options_changed {
            edits.push((
                "options",
                crate::api::body::render_options(&self.option_entries()),
            ));
        }
        if self.keep_alive_changed {
            if let Some(k) = &self.request.keep_alive {
                edits.push(("keep_alive", render(k)));
            }
        }
        edits
    }

    fn option_entries(&self) -> Vec<(OptionEntry, Option<String>)> {
        self.request
            .options
            .iter()
            .map(|o| (o.clone(), self.raw_options.get(&o.key).cloned()))
            .collect()
    }

    /// Applies one plugin's edits to the view and records what must change.
    fn apply(&mut self, plugin: &str, edits: Edits) -> Result<(), GatewayError> {
        self.enforce.apply(&edits);
        let req = &mut self.request;
        if let Some(model) = edits.model {
            if req.model.as_deref() != Some(model.as_str()) {
                req.model = Some(model);
                self.model_changed = true;
            }
        }
        for entry in edits.set_options {
            self.raw_options.remove(&entry.key);
            match req.options.iter_mut().find(|o| o.key == entry.key) {
                Some(existing) => existing.value = entry.value,
                None => req.options.push(entry),
            }
            self.options_changed = true;
        }
        if !edits.remove_options.is_empty() {
            req.options
                .retain(|o| !edits.remove_options.contains(&o.key));
            self.options_changed = true;
        }
        if let Some(keep_alive) = edits.keep_alive {
            req.keep_alive = Some(keep_alive);
            self.keep_alive_changed = true;
        }
        for name in edits.remove_headers {
            let parsed = header_name(plugin, &name)?;
            req.headers.retain(|h| !h.name.eq_ignore_ascii_case(&name));
            self.set_headers.retain(|(n, _)| *n != parsed);
            self.remove_headers.push(parsed);
        }
        for Header { name, value } in edits.set_headers {
            let parsed = header_name(plugin, &name)?;
            let parsed_value =
                HeaderValue::from_str(&value).map_err(|_| GatewayError::PluginAnswer {
                    plugin: plugin.to_string(),
                    message: format!("set header {name:?} to an invalid value"),
                })?;
            req.headers.retain(|h| !h.name.eq_ignore_ascii_case(&name));
            req.headers.push(Header {
                name: parsed.as_str().to_string(),
                value,
            });
            self.set_headers.retain(|(n, _)| *n != parsed);
            self.set_headers.push((parsed, parsed_value));
        }
        if let Some(principal) = edits.principal {
            self.principal = Some(principal);
        }
        if let Some(list) = edits.backends {
            req.route = Some(list.clone());
            self.backends = Some(Choice {
                backends: list,
                by: plugin.to_string(),
            });
        }
        Ok(())
    }
}

impl Chain {
    /// A chain of `links`, run in this order.
    pub fn new(links: Vec<Link>) -> Chain {
        let seconds = links.iter().map(|_| std::sync::OnceLock::new()).collect();
        Chain { links, seconds }
    }

    /// A chain of plugins that all fail closed.
    pub fn of(plugins: Vec<Plugin>) -> Chain {
        Chain::new(
            plugins
                .into_iter()
                .map(|plugin| Link {
                    plugin,
                    on_failure: OnFailure::Closed,
                })
                .collect(),
        )
    }

    /// Each plugin's name and the contract version it was built for, in order.
    pub fn contracts(&self) -> Vec<(&str, &'static str)> {
        self.links
            .iter()
            .map(|l| (l.plugin.name(), l.plugin.contract()))
            .collect()
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.plugin.name()).collect()
    }

    /// Runs every plugin's `on-request` once a call slot of that plugin is
    /// free, inline on the calling (async worker) thread. With `trace`, the
    /// outcome says what each plugin did. With `metrics`, each plugin's time
    /// and failures are counted there.
    pub async fn decide(
        &self,
        request: Request,
        raw_options: BTreeMap<String, String>,
        facts: Arc<dyn Facts>,
        body: Bytes,
        trace: bool,
        metrics: Option<&Metrics>,
    ) -> Result<Outcome, GatewayError> {
        let address = client_key(&request.client_addr);
        let mut plan = Plan::new(request, raw_options);
        for (link, seconds) in self.links.iter().zip(&self.seconds) {
            let started = metrics.map(|_| std::time::Instant::now());
            // Fair by who the request is for once a plugin has said so.
            let client = plan.principal.as_deref().unwrap_or(&address);
            let result = match link.plugin.admit(client).await {
                Ok(slot) => match ready(&link.plugin).await {
                    Ok(()) => {
                        let (back, result) =
                            on_request(&link.plugin, plan, facts.clone(), body.clone()).await?;
                        plan = back;
                        drop(slot);
                        result
                    }
                    Err(err) => Err(err),
                },
                Err(busy) => Err(busy),
            };
            if let (Some(m), Some(started)) = (metrics, started) {
                let name = link.plugin.name();
                seconds
                    .get_or_init(|| {
                        m.plugin_seconds
                            .get_or_create(&PluginLabels {
                                plugin: name.to_string(),
                            })
                            .clone()
                    })
                    .observe(started.elapsed().as_secs_f64());
                if let Err(err) = &result {
                    m.plugin_failures
                        .get_or_create(&PluginFailureLabels {
                            plugin: name.to_string(),
                            kind: failure_kind(err),
                        })
                        .inc();
                }
            }
            plan = match step(link, plan, result, trace)? {
                ControlFlow::Continue(plan) => plan,
                ControlFlow::Break(outcome) => return Ok(outcome),
            };
        }
        Ok(Outcome::Forward(Box::new(plan)))
    }

    /// [`Chain::decide`] on the calling thread, without call slots: for offline
    /// replay and benchmarks.
    pub fn decide_blocking(
        &self,
        request: Request,
        raw_options: BTreeMap<String, String>,
        facts: &Arc<dyn Facts>,
        body: &Bytes,
        trace: bool,
    ) -> Result<Outcome, GatewayError> {
        let mut plan = Plan::new(request, raw_options);
        for link in &self.links {
            let result = link.plugin.on_request(&plan.request, facts, body);
            plan = match step(link, plan, result, trace)? {
                ControlFlow::Continue(plan) => plan,
                ControlFlow::Break(outcome) => return Ok(outcome),
            };
        }
        Ok(Outcome::Forward(Box::new(plan)))
    }

    /// Runs every plugin's `list-models`, each on the previous one's output,
    /// inline or off the workers as [`Plugin::inline`] allows; `facts`
    /// answers what they ask about the fleet meanwhile.
    pub async fn list(
        &self,
        request: &Request,
        mut models: Vec<ListedModel>,
        facts: &Arc<dyn Facts>,
    ) -> Result<Vec<ListedModel>, GatewayError> {
        for link in &self.links {
            let listed = match ready(&link.plugin).await {
                Ok(()) => list_models(&link.plugin, request, &models, facts).await?,
                Err(err) => Err(err),
            };
            match listed {
                Ok(shown) => models = shown,
                Err(err) if link.on_failure == OnFailure::Open => log_skipped(&err),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(models)
    }
}

/// A plugin failure's kind, as a metric label.
fn failure_kind(err: &PluginError) -> &'static str {
    match err {
        PluginError::Timeout { .. } => "timeout",
        PluginError::OutOfMemory { .. } => "memory",
        PluginError::Trap { .. } => "trap",
        PluginError::Start { .. } => "start",
        PluginError::Busy { .. } => "busy",
    }
}

/// Permission to call `plugin` inline: when only busy (every inline place
/// taken, most likely by calls of a few microseconds), yield and ask again
/// for up to [`INLINE_WAIT`] before giving up to `spawn_blocking`. Yielding
/// also lets the worker's queued tasks go first. (Three bare yields were too
/// short on two cores, where one inline place exists: the other worker's
/// call of ~10 µs was often still running, and the request paid for a
/// blocking-pool hand-off and its wake-ups instead.)
async fn inline_permit(plugin: &Plugin) -> Option<crate::plugin::Inline> {
    let mut since: Option<std::time::Instant> = None;
    loop {
        tokio::task::yield_now().await;
        match plugin.inline() {
            Ok(inline) => return Some(inline),
            Err(crate::plugin::NotInline::Slow) => return None,
            Err(crate::plugin::NotInline::Busy) => {
                let started = *since.get_or_insert_with(std::time::Instant::now);
                if started.elapsed() >= INLINE_WAIT {
                    return None;
                }
            }
        }
    }
}

/// How long a call waits for an inline place before it runs on tokio's
/// blocking pool instead.
const INLINE_WAIT: Duration = Duration::from_micros(50);

/// Makes one `on-request` call: inline on this async worker when
/// [`Plugin::inline`] allows it (after yielding, so the worker's queued tasks
/// go first), else with `spawn_blocking`. The plan travels with the call.
async fn on_request(
    plugin: &Plugin,
    plan: Plan,
    facts: Arc<dyn Facts>,
    body: Bytes,
) -> Result<(Plan, Result<Decision, PluginError>), GatewayError> {
    if let Some(inline) = inline_permit(plugin).await {
        let result = plugin.on_request(&plan.request, &facts, &body);
        drop(inline);
        return Ok((plan, result));
    }
    let plugin = plugin.clone();
    let name = plugin.name().to_string();
    tokio::task::spawn_blocking(move || {
        let result = plugin.on_request(&plan.request, &facts, &body);
        (plan, result)
    })
    .await
    // Only a panic in the host loses the call (and the plan with it).
    .map_err(|_| GatewayError::Internal(format!("plugin {name:?}: the call was lost")))
}

/// Makes one `list-models` call, inline or with `spawn_blocking` as
/// [`on_request`] does.
async fn list_models(
    plugin: &Plugin,
    request: &Request,
    models: &[ListedModel],
    facts: &Arc<dyn Facts>,
) -> Result<Result<Vec<ListedModel>, PluginError>, GatewayError> {
    if let Some(inline) = inline_permit(plugin).await {
        let result = plugin.list_models(request, models, facts);
        drop(inline);
        return Ok(result);
    }
    let (plugin, request, models, facts) = (
        plugin.clone(),
        request.clone(),
        models.to_vec(),
        facts.clone(),
    );
    let name = plugin.name().to_string();
    tokio::task::spawn_blocking(move || plugin.list_models(&request, &models, &facts))
        .await
        .map_err(|_| GatewayError::Internal(format!("plugin {name:?}: the call was lost")))
}

/// Starts an instance of `plugin` off the async workers when none is idle
/// (instantiation and `init` can take long; a call itself never waits).
async fn ready(plugin: &Plugin) -> Result<(), PluginError> {
    if plugin.has_idle() {
        return Ok(());
    }
    let name = plugin.name().to_string();
    let plugin = plugin.clone();
    tokio::task::spawn_blocking(move || plugin.warm())
        .await
        .unwrap_or_else(|_| {
            Err(PluginError::Start {
                plugin: name,
                message: "starting an instance failed in the host".into(),
            })
        })
}

/// Folds one plugin's answer into the plan: go on with the next plugin, or
/// stop with the outcome.
fn step(
    link: &Link,
    mut plan: Plan,
    result: Result<Decision, PluginError>,
    trace: bool,
) -> Result<ControlFlow<Outcome, Plan>, GatewayError> {
    let name = link.plugin.name();
    let decision = match result {
        Ok(d) => d,
        Err(err) if link.on_failure == OnFailure::Open => {
            log_skipped(&err);
            if trace {
                plan.trace.push(format!("{name}: failed, skipped"));
            }
            return Ok(ControlFlow::Continue(plan));
        }
        Err(PluginError::OutOfMemory {
            plugin,
            limit,
            request_bytes,
        }) if request_bytes >= limit / 4 => {
            // The request filled the sandbox, not the plugin's own work.
            return Err(GatewayError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request too large for policy plugin {plugin:?}: {request_bytes} bytes of it                      were handed to a plugin allowed {limit} bytes of memory"
                ),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    match decision {
        Decision::Respond(reply) => {
            if StatusCode::from_u16(reply.status).is_err() || reply.status < 200 {
                return Err(GatewayError::PluginAnswer {
                    plugin: name.to_string(),
                    message: format!("answered with invalid status {}", reply.status),
                });
            }
            if trace {
                plan.trace.push(format!("{name}: respond {}", reply.status));
            }
            Ok(ControlFlow::Break(Outcome::Respond {
                plugin: name.to_string(),
                reply,
                trace: plan.trace,
            }))
        }
        Decision::Forward(edits) => {
            if trace {
                plan.trace.push(describe(name, &edits));
            }
            plan.apply(name, edits)?;
            Ok(ControlFlow::Continue(plan))
        }
    }
}

/// What one plugin's edits do, in a few words (`llama3.2 → gpu-01, num_ctx=8192`).
fn describe(plugin: &str, edits: &Edits) -> String {
    let mut parts = Vec::new();
    if let Some(model) = &edits.model {
        parts.push(format!("model={model}"));
    }
    for o in &edits.set_options {
        parts.push(format!("{}={}", o.key, render(&o.value)));
    }
    for o in &edits.remove_options {
        parts.push(format!("-{o}"));
    }
    if let Some(k) = &edits.keep_alive {
        parts.push(format!("keep_alive={}", render(k)));
    }
    for h in &edits.set_headers {
        parts.push(format!("header {}", h.name));
    }
    for h in &edits.remove_headers {
        parts.push(format!("-header {h}"));
    }
    if let Some(b) = &edits.backends {
        parts.push(format!("backends=[{}]", b.join(",")));
    }
    if let Some(p) = &edits.principal {
        parts.push(format!("principal={p}"));
    }
    if let Some(p) = edits.priority {
        parts.push(format!("priority={p}"));
    }
    for (name, ms) in [
        ("first_byte_timeout", edits.first_byte_timeout_ms),
        ("stream_idle_timeout", edits.stream_idle_timeout_ms),
        ("queue_timeout", edits.queue_timeout_ms),
    ] {
        if let Some(ms) = ms {
            parts.push(format!("{name}={ms}ms"));
        }
    }
    if let Some(f) = edits.failover {
        parts.push(format!("failover={f}"));
    }
    if edits.every_backend == Some(true) {
        parts.push("every backend".into());
    }
    if parts.is_empty() {
        format!("{plugin}: pass")
    } else {
        format!("{plugin}: {}", parts.join(" "))
    }
}

fn header_name(plugin: &str, name: &str) -> Result<HeaderName, GatewayError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| GatewayError::PluginAnswer {
        plugin: plugin.to_string(),
        message: format!("named an invalid header {name:?}"),
    })
}
