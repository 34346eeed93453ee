//! List-style endpoints: ask every backend at once, merge the answers.
//!
//! - `/api/tags`, `/api/ps`: `models[]` merged, de-duplicated by normalised name,
//!   then passed through the chain's `list-models` (which hides and aliases).
//! - `/v1/models`: `data[]` likewise, keyed by `id`.
//! - `/api/version`: the lowest version, compared as versions.
//!
//! A backend that fails or times out is skipped; only when none answers is the
//! result an error.
//!
//! The merged answer (before `list-models`, which depends on who asks) is kept
//! for `listing_cache` in the generation's [`crate::proxy::listing_cache::Listings`].

use std::sync::Arc;

use http::StatusCode;
use llamagate_sdk::names;
use serde_json::{json, Value};

use crate::api::endpoint::{Endpoint, Merge, Row};
use crate::api::error::json as json_response;
use crate::api::error::{GatewayError, Unanswered};
use crate::fleet::BackendState;
use crate::plugin::{ListedModel, Request};
use crate::proxy::generation::Generation;
use crate::proxy::listing_cache::{Listing, Merged, MergedListing};
use crate::proxy::state::Gateway;
use crate::upstream::Attempts;
use crate::ResponseBody;

/// Serves a fan-out endpoint, merging the answers as its row of the endpoint
/// table says (`merge`).
pub async fn serve(
    gateway: &Gateway,
    generation: &Generation,
    request: &Request,
    merge_as: Merge,
    head: bool,
) -> Result<http::Response<ResponseBody>, GatewayError> {
    let path = Row::of(request.endpoint).exact_path().ok_or_else(|| {
        GatewayError::Internal(format!("{:?} has no listing path", request.endpoint))
    })?;
    let (list_key, name_key) = match merge_as {
        Merge::LowestVersion => ("", ""),
        Merge::Models { list, name } => (list, name),
    };
    let listing = match request.endpoint {
        Endpoint::Version => Listing::Version,
        Endpoint::Tags => Listing::Tags,
        Endpoint::Ps => Listing::Ps,
        _ => Listing::OpenaiModels,
    };
    // Kept for `listing_cache`; concurrent misses share one fan-out.
    let fetched = generation
        .listings
        .get(listing, || async {
            let answers = ask_all(gateway, generation, path).await?;
            match merge_as {
                Merge::LowestVersion => lowest_version(&answers).map(MergedListing::Version),
                Merge::Models { .. } => {
                    Ok(MergedListing::Models(merge(&answers, list_key, name_key)))
                }
            }
        })
        .await?;
    let merged = match &*fetched {
        MergedListing::Version(lowest) => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({ "version": lowest }),
                head,
            ));
        }
        MergedListing::Models(merged) => merged,
    };
    let listed: Vec<ListedModel> = merged
        .iter()
        .map(|m| ListedModel {
            name: m.name.clone(),
            source: m.name.clone(),
            backends: m.backends.clone(),
        })
        .collect();
    let facts: std::sync::Arc<dyn crate::plugin::Facts> = generation.fleet.clone();
    let shown = generation.chain.list(request, listed, &facts).await?;
    let items: Vec<Value> = shown
        .iter()
        .filter_map(|entry| {
            let source = merged
                .iter()
                .find(|m| m.name == entry.source)
                .or_else(|| merged.iter().find(|m| names::same(&m.name, &entry.source)))?;
            let mut item = source.item.clone();
            if entry.name != source.name {
                item[name_key] = Value::String(entry.name.clone());
                if name_key == "name" {
                    item["model"] = Value::String(entry.name.clone());
                }
            }
            Some(item)
        })
        .collect();
    let body = match list_key {
        // OpenAI's list object.
        "data" => json!({ "object": "list", "data": items }),
        _ => json!({ list_key: items }),
    };
    Ok(json_response(StatusCode::OK, &body, head))
}

/// The lowest version the backends reported.
fn lowest_version(answers: &[(String, Value)]) -> Result<String, Unanswered> {
    let versions: Vec<&str> = answers
        .iter()
        .filter_map(|(_, v)| v.get("version").and_then(Value::as_str))
        .collect();
    crate::api::version::lowest(versions.iter().copied())
        .map(str::to_string)
        .ok_or_else(|| Unanswered {
            what: "a version".into(),
            attempts: Attempts::default(),
        })
}

fn merge(answers: &[(String, Value)], list_key: &str, name_key: &str) -> Vec<Merged> {
    let mut merged: Vec<(String, Merged)> = Vec::new();
    for (backend, answer) in answers {
        let Some(items) = answer.get(list_key).and_then(Value::as_array) else {
            continue;
        };
        for item in items {
            let Some(name) = item.get(name_key).and_then(Value::as_str) else {
                continue;
            };
            let key = names::key(name);
            match merged.iter_mut().find(|(k, _)| *k == key) {
                Some((_, m)) => m.backends.push(backend.clone()),
                None => merged.push((
                    key,
                    Merged {
                        name: name.to_string(),
                        item: item.clone(),
                        backends: vec![backend.clone()],
                    },
                )),
            }
        }
    }
    merged.into_iter().map(|(_, m)| m).collect()
}

/// GETs `path` from every backend concurrently; returns the JSON answers of
/// those that gave one, or an error naming every failure if none did.
async fn ask_all(
    gateway: &Gateway,
    generation: &Generation,
    path: &str,
) -> Result<Vec<(String, Value)>, Unanswered> {
    let timeout = generation.settings.fanout_timeout;
    let asks = generation
        .fleet
        .all()
        .iter()
        .map(|backend: &Arc<BackendState>| {
            let upstream = gateway.upstream.clone();
            async move {
                let result = upstream.get_json::<Value>(&**backend, path, timeout).await;
                match &result {
                    Ok(_) => backend.probe_succeeded(),
                    Err(e) => backend.probe_failed(&e.failure),
                }
                (backend.id.clone(), result)
            }
        });
    let results = futures_util::future::join_all(asks).await;
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (id, result) in results {
        match result {
            Ok(value) => answers.push((id, value)),
            Err(e) => {
                tracing::warn!(backend = %id, "skipped in {path}: {e}");
                failures.push(e);
            }
        }
    }
    if answers.is_empty() && !failures.is_empty() {
        return Err(Unanswered {
            what: path.to_string(),
            attempts: Attempts(failures),
        });
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_by_normalised_name() {
        let answers = vec![
            (
                "a".to_string(),
                json!({"models":[{"name":"llama3.2:latest"},{"name":"x:1b"}]}),
            ),
            (
                "b".to_string(),
                json!({"models":[{"name":"LLAMA3.2"},{"name":"y:latest"}]}),
            ),
            ("c".to_string(), json!({"models":null})),
        ];
        let merged = merge(&answers, "models", "name");
        let names: Vec<&str> = merged.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["llama3.2:latest", "x:1b", "y:latest"]);
        assert_eq!(merged[0].backends, ["a", "b"]);
    }
}
