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
