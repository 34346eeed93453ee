//! The policy chain: runs each plugin in the configured order and folds their
//! decisions into one [`Outcome`].
//!
//! Each plugin sees the request as the plugins before it left it (renamed model,
//! edited options, headers). The first `respond` ends the chain. The backend list
//! of the last plugin that set one wins.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::body::render;
use crate::error::GatewayError;
use crate::plugin::{Backend, Decision, Header, ListedModel, OptionEntry, Plugin, Reply, Request};

/// The loaded plugins, in order.
pub struct Chain {
    plugins: Vec<Plugin>,
}

/// What the chain decided.
pub enum Outcome {
    /// Answer the client now.
    Respond {
        /// The plugin that answered.
        plugin: String,
        /// Its reply.
        reply: Reply,
    },
    /// Forward the request.
    Forward(Box<Plan>),
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
    pub backends: Option<(Vec<String>, String)>,
}

impl Plan {
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
            let entries: Vec<(OptionEntry, Option<String>)> = self
                .request
                .options
                .iter()
                .map(|o| (o.clone(), self.raw_options.get(&o.key).cloned()))
                .collect();
            edits.push(("options", crate::body::render_options(&entries)));
        }
        if self.keep_alive_changed {
            if let Some(k) = &self.request.keep_alive {
                edits.push(("keep_alive", render(k)));
            }
        }
        edits
    }
}

impl Chain {
    /// A chain of `plugins`, run in this order.
    pub fn new(plugins: Vec<Plugin>) -> Chain {
        Chain { plugins }
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Runs every plugin's `on-request`.
    pub fn decide(
        &self,
        request: Request,
        raw_options: BTreeMap<String, String>,
        backends: &[Backend],
        body: &Bytes,
    ) -> Result<Outcome, GatewayError> {
        let mut plan = Plan {
            request,
            raw_options,
            model_changed: false,
            options_changed: false,
            keep_alive_changed: false,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            backends: None,
        };
        for plugin in &self.plugins {
            let edits = match plugin.on_request(&plan.request, backends, body)? {
                Decision::Respond(reply) => {
                    if StatusCode::from_u16(reply.status).is_err() || reply.status < 200 {
                        return Err(GatewayError::PluginAnswer {
                            plugin: plugin.name().to_string(),
                            message: format!("answered with invalid status {}", reply.status),
                        });
                    }
                    return Ok(Outcome::Respond {
                        plugin: plugin.name().to_string(),
                        reply,
                    });
                }
                Decision::Forward(edits) => edits,
            };
            let name = plugin.name();
            let req = &mut plan.request;
            if let Some(model) = edits.model {
                if req.model.as_deref() != Some(model.as_str()) {
                    req.model = Some(model);
                    plan.model_changed = true;
                }
            }
            for entry in edits.set_options {
                plan.raw_options.remove(&entry.key);
                match req.options.iter_mut().find(|o| o.key == entry.key) {
                    Some(existing) => existing.value = entry.value,
                    None => req.options.push(entry),
                }
                plan.options_changed = true;
            }
            if !edits.remove_options.is_empty() {
                req.options
                    .retain(|o| !edits.remove_options.contains(&o.key));
                plan.options_changed = true;
            }
            if let Some(keep_alive) = edits.keep_alive {
                req.keep_alive = Some(keep_alive);
                plan.keep_alive_changed = true;
            }
            for header in edits.remove_headers {
                let parsed = header_name(name, &header)?;
                req.headers
                    .retain(|h| !h.name.eq_ignore_ascii_case(&header));
                plan.set_headers.retain(|(n, _)| *n != parsed);
                plan.remove_headers.push(parsed);
            }
            for Header { name: key, value } in edits.set_headers {
                let parsed = header_name(name, &key)?;
                let parsed_value =
                    HeaderValue::from_str(&value).map_err(|_| GatewayError::PluginAnswer {
                        plugin: name.to_string(),
                        message: format!("set header {key:?} to an invalid value"),
                    })?;
                req.headers.retain(|h| !h.name.eq_ignore_ascii_case(&key));
                req.headers.push(Header {
                    name: parsed.as_str().to_string(),
                    value,
                });
                plan.set_headers.retain(|(n, _)| *n != parsed);
                plan.set_headers.push((parsed, parsed_value));
            }
            if let Some(list) = edits.backends {
                plan.backends = Some((list, name.to_string()));
            }
        }
        Ok(Outcome::Forward(Box::new(plan)))
    }

    /// Runs every plugin's `list-models`, each on the previous one's output.
    pub fn list(
        &self,
        request: &Request,
        mut models: Vec<ListedModel>,
    ) -> Result<Vec<ListedModel>, GatewayError> {
        for plugin in &self.plugins {
            models = plugin.list_models(request, &models)?;
        }
        Ok(models)
    }
}

fn header_name(plugin: &str, name: &str) -> Result<HeaderName, GatewayError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| GatewayError::PluginAnswer {
        plugin: plugin.to_string(),
        message: format!("named an invalid header {name:?}"),
    })
}
