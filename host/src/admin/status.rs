//! `GET /llamagate/status`: what llamagate is running right now, for operators.
//!
//! The plugin chain (and shadow chain) in force, the outcome of the last reload
//! (with the failing plugin's own message), shadow agreement counts, each
//! backend's health, models and requests in flight, and since start
//! ([`crate::proxy::recent`]) the last failed requests and the requests and
//! tokens of each model.
//!
//! Who may ask: without an admin key, only clients on a loopback address;
//! everyone else gets the 404 of an unknown path, so the endpoint is not even
//! revealed. With an admin key, every caller (loopback too) must send
//! `Authorization: Bearer KEY`, or gets a 401. The key is kept only as its
//! SHA-256 digest and compared in constant time. Nothing shown here carries a
//! secret: backend URLs lose their userinfo, a failed reload names file and line.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::config::AdminAccess;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use crate::api::error::json;
use crate::api::error::text_response;
use crate::proxy::state::Gateway;
use crate::ResponseBody;

/// The status endpoint's path (not an Ollama path, so it cannot collide).
pub const PATH: &str = "/llamagate/status";

/// What a caller of the status endpoint gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The status document.
    Allowed,
    /// `404 page not found`, as for an unknown path: no key is configured and
    /// the caller is not on loopback (or the endpoint is off).
    Hidden,
    /// 401 with `www-authenticate: Bearer`: a key is configured and the caller
    /// did not present it.
    Unauthorized,
}

/// Decides whether `client`, sending `headers`, may read the status.
pub fn access(admin: &AdminAccess, client: SocketAddr, headers: &HeaderMap) -> Access {
    match admin.guarded() {
        false if client.ip().to_canonical().is_loopback() => Access::Allowed,
        false => Access::Hidden,
        true => match presents(admin, headers) {
            true => Access::Allowed,
            false => Access::Unauthorized,
        },
    }
}

/// Whether `headers` carry `Authorization: Bearer KEY` for the admin key or
/// an admin-scoped `[policy.keys]` entry in force.
pub fn presents(admin: &AdminAccess, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| bearer(v.as_bytes()))
        .any(|token| admin.admits(token))
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a request is `GET /llamagate/status` (the path read as Ollama's
/// router would read it: percent-decoded), which the server answers before
/// the request pipeline sees it.
pub fn asks_for_status(method: &http::Method, path: &str) -> bool {
    method == http::Method::GET
        && (path == PATH
            || (path.contains('%')
                && crate::api::path::decode(path).is_ok_and(|p| p == PATH.as_bytes())))
}

/// Answers `GET /llamagate/status`: the document, or the refusal [`access`] decides.
pub fn answer(
    gateway: &Gateway,
    headers: &HeaderMap,
    client: SocketAddr,
) -> http::Response<ResponseBody> {
    let generation = gateway.current();
    let settings = &generation.settings;
    let decided = match settings.status {
        true => access(&settings.admin, client, headers),
        false => Access::Hidden,
    };
    match decided {
        Access::Allowed => response(gateway),
        Access::Hidden => text_response(StatusCode::NOT_FOUND, "404 page not found"),
        Access::Unauthorized => {
            let mut refused = text_response(StatusCode::UNAUTHORIZED, "401 unauthorized");
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            refused
        }
    }
}

/// The status document.
pub fn response(gateway: &Gateway) -> http::Response<ResponseBody> {
    let generation = gateway.current();
    let admission = generation.fleet.admission();
    let queue = admission.stats();
    // Milliseconds to a tenth.
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    let backends: Vec<_> = generation
        .fleet
        .all()
        .iter()
        .map(|backend| {
            let state = backend.health();
            let settings = backend.settings();
            let load = admission.backend_load(&backend.id).unwrap_or_default();
            let b = backend.view();
            json!({
                "id": b.id,
                "url": b.url,
                "state": state.as_str(),
                "healthy": state.healthy(),
                "reason": b.reason,
                "parallel": settings.parallel,
                "slots": settings.slots,
                "vram": settings.vram,
                "in_use": load.in_use,
                "queued": load.queued,
                "in_flight": b.in_flight,
                "models": b.models,
                "version": b.version,
                "loaded": b.loaded.iter().map(|l| json!({
                    "name": l.name, "context_length": l.context_length,
                    "size": l.size, "size_vram": l.size_vram, "expires_in_secs": l.expires_in_secs,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let in_flight: u64 = backends
        .iter()
        .filter_map(|b| b["in_flight"].as_u64())
        .sum();
    // This generation's counts (a reload starts them at zero).
    let stats = gateway.shadow.stats();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": crate::proxy::recent::unix_ms(),
        "generation": generation.number,
        "plugins": generation.chain.names(),
        "contracts_served": crate::plugin::CONTRACTS,
        "contracts": generation.chain.contracts().into_iter()
            .map(|(name, version)| json!({"plugin": name, "contract": version}))
            .collect::<Vec<_>>(),
        "shadow": generation.shadow.as_ref().map(|s| json!({
            "plugins": s.names(),
            // Read first, with acquire: its agreed/differed are in place.
            "decided": stats.decided.load(Ordering::Acquire),
            "agreed": stats.agreed.load(Ordering::Relaxed),
            "differed": stats.differed.load(Ordering::Relaxed),
            "failed": stats.failed.load(Ordering::Relaxed),
            "dropped": stats.dropped.load(Ordering::Relaxed),
        })),
        "last_reload": *gateway.last_reload.lock().unwrap(),
        "queue": {
            "depth": queue.depth,
            "max_queue": queue.max_queue,
            "timeout_ms": generation.fleet.queue().timeout.as_millis() as u64,
            "by_key": queue.by_key.iter()
                .map(|(key, n)| json!({"key": key, "waiting": n}))
                .collect::<Vec<_>>(),
            "waits": queue.waits,
            "wait_p50_ms": ms(queue.wait_p50),
            "wait_p99_ms": ms(queue.wait_p99),
            "wait_max_ms": ms(queue.wait_max),
            "cancelled": queue.cancelled,
            "refused_full": queue.refused.queue_full,
            "refused_timed_out": queue.refused.timed_out,
        },
        "in_flight": in_flight,
        "backends": backends,
        // Since start, across reloads: requests, failures, tokens per model.
        "recent": gateway.recent.snapshot(),
    });
    json(StatusCode::OK, &body, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminKey, AdminKeys};

    fn headers(authorization: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in authorization {
            h.append(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn without_a_key_only_loopback_callers_see_status() {
        let none = headers(&[]);
        for client in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert_eq!(
                access(&AdminAccess::default(), client.parse().unwrap(), &none),
                Access::Allowed,
                "{client}"
            );
        }
        for client in [
            "10.0.0.7:5000",
            "192.168.1.2:1",
            "[2001:db8::1]:5000",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert_eq!(
                access(&AdminAccess::default(), client.parse().unwrap(), &none),
                Access::Hidden,
                "{client}"
            );
        }
        // A header does not help when no key is configured.
        let sent = headers(&["Bearer anything"]);
        assert_eq!(
            access(
                &AdminAccess::default(),
                "10.0.0.7:5000".parse().unwrap(),
                &sent
            ),
            Access::Hidden
        );
    }

    #[test]
    fn with_a_key_every_caller_must_present_it() {
        let admin = AdminAccess {
            key: Some(AdminKey::new("s3cret-admin").unwrap()),
            ..AdminAccess::default()
        };
        let remote: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for (sent, want) in [
            (vec![], Access::Unauthorized),
            (vec!["Bearer wrong"], Access::Unauthorized),
            (vec!["Bearer s3cret-admi"], Access::Unauthorized),
            (vec!["Basic s3cret-admin"], Access::Unauthorized),
            (vec!["s3cret-admin"], Access::Unauthorized),
            (vec!["Bearer "], Access::Unauthorized),
            (vec!["Bearer s3cret-admin"], Access::Allowed),
            (vec!["bearer  s3cret-admin "], Access::Allowed),
            (vec!["Bearer wrong", "Bearer s3cret-admin"], Access::Allowed),
        ] {
            for client in [remote, local] {
                assert_eq!(
                    access(&admin, client, &headers(&sent)),
                    want,
                    "{sent:?} from {client}"
                );
            }
        }
    }

    #[test]
    fn admin_scoped_policy_keys_open_it_while_in_force() {
        use llamagate_sdk::keys::sha256_hex;
        let policy: toml::Table = toml::from_str(&format!(
            r#"
            [keys.root]
            hash = "sha256:{}"
            scopes = ["admin"]
            [keys.app]
            hash = "sha256:{}"
            [keys.old]
            hash = "SHA256:{}"
            scopes = ["inference", "admin"]
            expires = "2020-01-01"
            [keys.gone]
            hash = "sha256:{}"
            scopes = ["admin"]
            disabled = true
            "#,
            sha256_hex("lg_root"),
            sha256_hex("lg_app"),
            sha256_hex("lg_old").to_uppercase(),
            sha256_hex("lg_gone"),
        ))
        .unwrap();
        let admin = AdminAccess {
            key: None,
            keys: AdminKeys::from_policy(&policy).unwrap(),
        };
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        for (sent, want) in [
            (vec![], Access::Unauthorized),
            (vec!["Bearer lg_root"], Access::Allowed),
            (vec!["Bearer lg_app"], Access::Unauthorized),
            (vec!["Bearer lg_old"], Access::Unauthorized),
            (vec!["Bearer lg_gone"], Access::Unauthorized),
            (vec!["Bearer lg_roo"], Access::Unauthorized),
        ] {
            assert_eq!(access(&admin, local, &headers(&sent)), want, "{sent:?}");
        }
        // Only revoked and expired admin keys left: still locked, not open.
        let revoked: toml::Table = toml::from_str(&format!(
            "[keys.root]\nhash = \"sha256:{}\"\nscopes = [\"admin\"]\ndisabled = true\n",
            sha256_hex("lg_root")
        ))
        .unwrap();
        let admin = AdminAccess {
            key: None,
            keys: AdminKeys::from_policy(&revoked).unwrap(),
        };
        assert_eq!(access(&admin, local, &headers(&[])), Access::Unauthorized);
        let bad: toml::Table =
            toml::from_str("[keys.r]\nhash = \"lg_plaintext\"\nscopes = [\"admin\"]\n").unwrap();
        let err = format!("{:#}", AdminKeys::from_policy(&bad).unwrap_err());
        assert!(err.starts_with("policy.keys.\"r\".hash: must be"), "{err}");
        assert!(!err.contains("lg_plaintext"), "{err}");
    }

    #[test]
    fn the_key_is_never_printed() {
        let key = AdminKey::new("s3cret-admin").unwrap();
        assert!(!format!("{key:?}").contains("s3cret"));
        let err = AdminKey::new("has space s3cret").unwrap_err();
        assert!(!format!("{err:#}").contains("s3cret"), "{err:#}");
        assert!(AdminKey::new("").is_err());
    }
}
