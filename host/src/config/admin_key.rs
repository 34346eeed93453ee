//! The admin key (`admin_key`, `admin_key_file`, `LLAMAGATE_ADMIN_KEY`),
//! kept only as a digest.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The admin key, kept as its SHA-256 digest: the key itself is never stored,
/// logged or shown (`Debug` prints no part of it).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey([u8; 32]);

impl AdminKey {
    /// Checks a configured key: not empty, and sendable in a header (visible
    /// ASCII, no spaces). The error never contains the key.
    pub fn new(key: &str) -> anyhow::Result<AdminKey> {
        anyhow::ensure!(!key.is_empty(), "the admin key is empty");
        anyhow::ensure!(
            key.bytes().all(|b| b.is_ascii_graphic()),
            "the admin key must be visible ASCII without spaces, to be sent as \
             `Authorization: Bearer KEY`"
        );
        Ok(AdminKey(Sha256::digest(key.as_bytes()).into()))
    }

    /// Whether `presented` is the key, in time independent of where they differ
    /// (digests of equal length are compared, so the length leaks nothing either).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.0.ct_eq(&digest).into()
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// The `[policy.keys]` entries with the `admin` scope: besides the admin key,
/// they open `/metrics` and `/llamagate/status`. Kept as digests only, looked
/// up in constant time over every entry ([`llamagate_sdk::keys::KeyTable`]).
///
/// Every admin-scoped entry counts towards [`AdminKeys::is_empty`], disabled
/// and expired ones too: revoking the last admin key locks the endpoints, it
/// never opens them to loopback callers again.
#[derive(Clone, Default)]
pub struct AdminKeys(std::sync::Arc<llamagate_sdk::keys::KeyTable<Grant>>);

/// What an admin-scoped key's entry says besides its hash.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    /// Seconds since the Unix epoch from which it no longer works.
    expires: Option<i64>,
    /// Revoked.
    disabled: bool,
}

impl AdminKeys {
    /// The admin-scoped entries of `[policy]`'s `keys` table. Only what the
    /// host needs is read here (`hash`, `scopes`, `expires`, `disabled`); the
    /// default policy checks every entry in full when it starts, so a table it
    /// would refuse stops start-up (or a reload) all the same. Errors name the
    /// entry's key and never quote a hash.
    pub fn from_policy(policy: &toml::Table) -> anyhow::Result<AdminKeys> {
        let mut table = llamagate_sdk::keys::KeyTable::new();
        let Some(toml::Value::Table(keys)) = policy.get("keys") else {
            return Ok(AdminKeys::default());
        };
        for (name, entry) in keys {
            let place = format!("policy.keys.{name:?}");
            let Some(entry) = entry.as_table() else {
                anyhow::bail!("{place}: expected a table");
            };
            let admin = match entry.get("scopes") {
                Some(toml::Value::Array(scopes)) => {
                    scopes.iter().any(|s| s.as_str() == Some("admin"))
                }
                _ => false,
            };
            if !admin {
                continue;
            }
            let Some(hash) = entry.get("hash").and_then(toml::Value::as_str) else {
                anyhow::bail!("{place}: `hash` is missing (\"sha256:<64 hex digits>\")");
            };
            let expires = match entry.get("expires") {
                None => None,
                Some(value) => Some(
                    value
                        .as_str()
                        .ok_or(llamagate_sdk::time::TimeError)
                        .and_then(llamagate_sdk::time::parse_timestamp)
                        .map_err(|e| anyhow::anyhow!("{place}.expires: {e}"))?,
                ),
            };
            let disabled = entry
                .get("disabled")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            table
                .insert_digest(hash, Grant { expires, disabled })
                .map_err(|e| anyhow::anyhow!("{place}.hash: {e}"))?;
        }
        Ok(AdminKeys(std::sync::Arc::new(table)))
    }

    /// Whether no entry has the admin scope.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is an admin-scoped key in force at `now` (seconds
    /// since the Unix epoch).
    pub fn admits(&self, presented: &[u8], now: i64) -> bool {
        let Ok(token) = std::str::from_utf8(presented) else {
            return false;
        };
        self.0
            .lookup(token)
            .is_some_and(|g| !g.disabled && g.expires.is_none_or(|at| now < at))
    }
}

/// Shows the count only.
impl std::fmt::Debug for AdminKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminKeys({} keys)", self.0.len())
    }
}

/// Who may read `/metrics` and `/llamagate/status`: the holder of the admin
/// key, and of an admin-scoped `[policy.keys]` entry in force.
#[derive(Clone, Debug, Default)]
pub struct AdminAccess {
    /// `admin_key`, `admin_key_file`, `LLAMAGATE_ADMIN_KEY`.
    pub key: Option<AdminKey>,
    /// `[policy.keys]` entries with the `admin` scope.
    pub keys: AdminKeys,
}

impl AdminAccess {
    /// Whether a key is asked for at all (else: loopback callers only on the
    /// traffic port, anyone who reaches the admin address there).
    pub fn guarded(&self) -> bool {
        self.key.is_some() || !self.keys.is_empty()
    }

    /// Whether `presented` (a bearer token's bytes) opens the endpoints. Both
    /// kinds of key are checked whatever the first says, in constant time each.
    pub fn admits(&self, presented: &[u8]) -> bool {
        let by_key = self.key.as_ref().is_some_and(|k| k.matches(presented));
        let by_policy = self.keys.admits(presented, llamagate_sdk::time::now());
        by_key | by_policy
    }
}
