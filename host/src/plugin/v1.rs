//! `llamagate:policy@0.1.0`, served beside 0.2.0: its bindings and the
//! conversions between its types and the host's (0.2.0's).
//!
//! The records are the same in both versions except `backend` (0.1.0's has
//! every model the backend serves and its URL, and no `reason`) and `edits`
//! (0.2.0 adds `principal`). A 0.1.0 plugin is handed the whole fleet on every
//! call, as it always was.

use super::v2::llamagate::policy::types as now;

wasmtime::component::bindgen!({
    world: "policy-plugin",
    path: "../wit/v0.1.0",
    additional_derives: [PartialEq],
});

use self::llamagate::policy::types as old;

/// Enums and variants whose cases have the same names in both versions.
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

same_cases!(now::Endpoint => old::Endpoint {
    Root, Version, Tags, Ps, Show, Generate, Chat, Embed, Embeddings, Pull, Push, Create, Copy,
    Delete, Blobs, OpenaiChat, OpenaiCompletions, OpenaiEmbeddings, OpenaiModels, OpenaiModel,
    OpenaiResponses, OpenaiMessages, Other,
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

/// The request as a 0.1.0 plugin sees it.
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

/// A 0.1.0 plugin's decision in the host's terms (it names no principal).
pub fn decision(decision: old::Decision) -> now::Decision {
    match decision {
        old::Decision::Respond(reply) => now::Decision::Respond(now::Reply {
            status: reply.status,
            message: reply.message,
            headers: headers_from_old(reply.headers),
        }),
        old::Decision::Forward(edits) => now::Decision::Forward(now::Edits {
            model: edits.model,
            set_options: options_from_old(edits.set_options),
            remove_options: edits.remove_options,
            keep_alive: edits.keep_alive.map(value_from_old),
            set_headers: headers_from_old(edits.set_headers),
            remove_headers: edits.remove_headers,
            backends: edits.backends,
            principal: None,
        }),
    }
}

/// The fleet as a 0.1.0 plugin sees it: every backend with its models.
pub fn backend(b: super::Backend) -> old::Backend {
    old::Backend {
        id: b.id,
        url: b.url,
        healthy: b.healthy,
        models: b.models,
        loaded: b
            .loaded
            .into_iter()
            .map(|l| old::LoadedModel {
                name: l.name,
                context_length: l.context_length,
                size_vram: l.size_vram,
            })
            .collect(),
        in_flight: b.in_flight,
    }
}

/// Listed models for a 0.1.0 plugin.
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

/// What a 0.1.0 plugin listed, in the host's terms.
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
