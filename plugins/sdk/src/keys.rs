//! Secret keys (bearer tokens, API keys) kept as SHA-256 digests and looked up
//! in constant time.
//!
//! A plugin that maps tokens to something (a team, a tenant) builds a
//! [`KeyTable`] from its config in `init` and asks it for each request:
//!
//! ```
//! use llamagate_sdk::keys::{sha256_hex, KeyTable};
//!
//! let mut tokens = KeyTable::new();
//! // printf %s test | sha256sum
//! let key = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
//! tokens.insert(key, "team-a").map_err(|e| format!("tokens entry for team-a: {e}"))?;
//! assert_eq!(tokens.lookup("test"), Some(&"team-a")); // in on-request: req.bearer_token()
//! assert_eq!(tokens.lookup("tess"), None);
//! assert_eq!(format!("sha256:{}", sha256_hex("test")), key);
//! # Ok::<(), String>(())
//! ```
//!
//! **Config form.** A key is written `"sha256:<64 hex digits>"`: the SHA-256 of
//! the token's bytes, as `printf %s "$TOKEN" | sha256sum` prints it (either case;
//! [`sha256_hex`] computes it too). The config then holds no usable secret: a
//! copy of it, a log line quoting it, a backup, lets nobody in. A key without the
//! prefix is a plaintext token, still accepted so that older configs keep working;
//! it is hashed at once and [`KeyTable::plaintext`] counts such keys so the plugin
//! can warn. A key that starts with `sha256:` (any case) is always read as a
//! digest, and refused if it is not 64 hex digits.
//!
//! **Lookup.** [`KeyTable::lookup`] hashes the presented token and compares the
//! digest with *every* stored one using [`subtle::ConstantTimeEq`], without
//! stopping at a match: how long it takes depends on the number of keys and the
//! length of the presented token, not on how much of it is right nor on which
//! entry matched. Comparing digests rather than tokens also keeps the compared
//! length fixed.
//!
//! **Limits.** The digest is unsalted: it protects long random tokens
//! (`openssl rand -hex 32`), which cannot be found from their hash by trying
//! candidates; a short or guessable token can. Errors never quote a key, so
//! they can go to logs.

use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// The prefix that marks a key written as its SHA-256 digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// A SHA-256 digest.
type Digest = [u8; 32];

/// How a key was written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// `sha256:<64 hex digits>`: the recommended form.
    Digest,
    /// The token itself, hashed when it was read.
    Plaintext,
}

/// Why a key was refused. The messages never quote the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
    /// A plaintext key starts or ends with whitespace, which a bearer token
    /// cannot (it is trimmed when read from the header).
    #[error("the key starts or ends with whitespace, which no bearer token can")]
    Whitespace,
    /// `sha256:` is followed by the wrong number of characters.
    #[error(
        "a `sha256:` key must be followed by 64 hex digits (the SHA-256 of the token, \
         as `printf %s \"$TOKEN\" | sha256sum` prints it); this one has {found} characters"
    )]
    DigestLength {
        /// How many characters follow the prefix.
        found: usize,
    },
    /// `sha256:` is followed by something that is not a hex digit.
    #[error("a `sha256:` key must be followed by hex digits only (0-9, a-f)")]
    DigestNotHex,
    /// Two keys stand for the same token (e.g. the token and its digest, or the
    /// same digest in upper and lower case).
    #[error("the key stands for the same token as another entry")]
    Duplicate,
    /// [`KeyTable::insert_digest`] was given something other than a
    /// `sha256:` digest (a plaintext token, perhaps).
    #[error(
        "must be \"sha256:<64 hex digits>\", the SHA-256 of the key (`llamagate keys create` \
         writes it; or printf %s \"$KEY\" | sha256sum), never the key itself"
    )]
    NotDigest,
}

/// The SHA-256 of `token` in lowercase hex: what follows [`DIGEST_PREFIX`] in a config.
pub fn sha256_hex(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in digest(token) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads one config key (not secret-timing sensitive: it runs once, at `init`).
fn parse_key(key: &str) -> Result<(Digest, KeyForm), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    let prefixed = key
        .get(..DIGEST_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(DIGEST_PREFIX));
    if !prefixed {
        if key.trim() != key {
            return Err(KeyError::Whitespace);
        }
        return Ok((digest(key), KeyForm::Plaintext));
    }
    let rest = &key[DIGEST_PREFIX.len()..];
    let found = rest.chars().count();
    if found != 64 {
        return Err(KeyError::DigestLength { found });
    }
    if !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::DigestNotHex);
    }
    // 64 ASCII hex digits: 32 bytes.
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(rest.as_bytes().chunks_exact(2)) {
        *byte = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Ok((out, KeyForm::Digest))
}

/// The value of an ASCII hex digit (checked by the caller).
fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Secret keys → values (`V`: a team name, a tenant record), stored as SHA-256
/// digests and looked up in constant time. See the [module](self) docs.
#[derive(Clone)]
pub struct KeyTable<V> {
    entries: Vec<(Digest, V)>,
    plaintext: usize,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable {
            entries: Vec::new(),
            plaintext: 0,
        }
    }
}

/// Shows the counts only: never a digest.
impl<V> std::fmt::Debug for KeyTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("len", &self.entries.len())
            .field("plaintext", &self.plaintext)
            .finish_non_exhaustive()
    }
}

impl<V> KeyTable<V> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key as written in the config (`"sha256:<hex>"`, or a plaintext
    /// token) with its value, and says which form it was. Refuses a malformed
    /// digest, an empty key, one with surrounding whitespace, and a key that
    /// stands for the same token as an earlier one.
    pub fn insert(&mut self, key: &str, value: V) -> Result<KeyForm, KeyError> {
        let (digest, form) = parse_key(key)?;
        if self.entries.iter().any(|(d, _)| *d == digest) {
            return Err(KeyError::Duplicate);
        }
        self.entries.push((digest, value));
        if form == KeyForm::Plaintext {
            self.plaintext += 1;
        }
        Ok(form)
    }

    /// Like [`KeyTable::insert`], but only a `sha256:` digest is accepted: a
    /// plaintext token is refused with [`KeyError::NotDigest`] and the table is
    /// left as it was.
    pub fn insert_digest(&mut self, key: &str, value: V) -> Result<(), KeyError> {
        let (digest, form) = parse_key(key)?;
        if form != KeyForm::Digest {
            return Err(KeyError::NotDigest);
        }
        if self.entries.iter().any(|(d, _)| *d == digest) {
            return Err(KeyError::Duplicate);
        }
        self.entries.push((digest, value));
        Ok(())
    }

    /// The value of the key `token` stands for, if any. Compares the token's
    /// digest with every stored digest in constant time and does not stop at a
    /// match, so the time taken does not tell which entry, or how much of the
    /// token, was right.
    pub fn lookup(&self, token: &str) -> Option<&V> {
        let presented = digest(token);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, (stored, _)) in self.entries.iter().enumerate() {
            let same = stored.ct_eq(&presented);
            index.conditional_assign(&(i as u64), same);
            found |= same;
        }
        // Keys are unique, so at most one entry matched; whether one did is the answer.
        bool::from(found).then(|| &self.entries[index as usize].1)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no keys (no token can get through).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys were written as plaintext tokens rather than `sha256:` digests.
    pub fn plaintext(&self) -> usize {
        self.plaintext
    }

    /// The values, in insertion order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "sk-9f2c1e7a4b8d4f0e9c3a5b6d7e8f9a0b";

    fn hashed(token: &str) -> String {
        format!("sha256:{}", sha256_hex(token))
    }

    #[test]
    fn sha256_hex_is_the_standard_digest() {
        // FIPS 180-2 test vector, and `printf %s '' | sha256sum`.
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_digest_key_matches_its_token_only() {
        let mut t = KeyTable::new();
        assert_eq!(t.insert(&hashed(TOKEN), "team-a"), Ok(KeyForm::Digest));
        assert_eq!(t.lookup(TOKEN), Some(&"team-a"));
        assert_eq!(t.lookup("sk-wrong"), None);
        assert_eq!(t.lookup(""), None);
        let mut last_byte_off = TOKEN.to_string();
        last_byte_off.pop();
        last_byte_off.push('c');
        assert_eq!(t.lookup(&last_byte_off), None);
        assert_eq!(t.lookup(&TOKEN[..TOKEN.len() - 1]), None, "a prefix");
        assert_eq!(t.lookup(&format!("{TOKEN}x")), None, "an extension");
        // The digest itself is not a token.
        assert_eq!(t.lookup(&hashed(TOKEN)), None);
        assert_eq!(t.lookup(&sha256_hex(TOKEN)), None);
        assert_eq!((t.len(), t.plaintext()), (1, 0));
    }

    #[test]
    fn hex_and_prefix_in_either_case() {
        let upper = format!("SHA256:{}", sha256_hex(TOKEN).to_uppercase());
        let mut t = KeyTable::new();
        assert_eq!(t.insert(&upper, 1), Ok(KeyForm::Digest));
        assert_eq!(t.lookup(TOKEN), Some(&1));
        // The same digest in lower case is the same key.
        assert_eq!(t.insert(&hashed(TOKEN), 2), Err(KeyError::Duplicate));
        let mixed = format!("sha256:{}", {
            let h = sha256_hex("other");
            h[..32].to_uppercase() + &h[32..]
        });
        assert_eq!(t.insert(&mixed, 3), Ok(KeyForm::Digest));
        assert_eq!(t.lookup("other"), Some(&3));
    }

    #[test]
    fn every_entry_is_found_with_its_own_value() {
        let mut t = KeyTable::new();
        for i in 0..20 {
            t.insert(&hashed(&format!("token-{i}")), i).unwrap();
        }
        for i in 0..20 {
            assert_eq!(t.lookup(&format!("token-{i}")), Some(&i));
        }
        assert_eq!(t.lookup("token-20"), None);
        assert_eq!(
            t.values().copied().collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
    }

    #[test]
    fn plaintext_keys_are_hashed_and_counted() {
        let mut t = KeyTable::new();
        assert_eq!(t.insert("sk-a", "a"), Ok(KeyForm::Plaintext));
        assert_eq!(t.insert(&hashed("sk-b"), "b"), Ok(KeyForm::Digest));
        assert_eq!(t.lookup("sk-a"), Some(&"a"));
        assert_eq!(t.lookup("sk-b"), Some(&"b"));
        assert_eq!((t.len(), t.plaintext()), (2, 1));
        // A token and its digest are one key.
        assert_eq!(t.insert(&hashed("sk-a"), "c"), Err(KeyError::Duplicate));
        assert_eq!(t.insert("sk-b", "c"), Err(KeyError::Duplicate));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn malformed_keys_are_refused_without_quoting_them() {
        let good = sha256_hex(TOKEN);
        let cases = [
            (
                format!("sha256:{}", &good[..63]),
                KeyError::DigestLength { found: 63 },
            ),
            (
                format!("sha256:{good}0"),
                KeyError::DigestLength { found: 65 },
            ),
            ("sha256:".to_string(), KeyError::DigestLength { found: 0 }),
            (format!("sha256: {}", &good[1..]), KeyError::DigestNotHex),
            (format!("sha256:{}g", &good[..63]), KeyError::DigestNotHex),
            (format!("sha256:{}é", &good[..63]), KeyError::DigestNotHex),
            (
                format!("sha256:{}é", &good[..62]),
                KeyError::DigestLength { found: 63 },
            ),
            (
                format!("sha256:{TOKEN}"),
                KeyError::DigestLength { found: TOKEN.len() },
            ),
            (String::new(), KeyError::Empty),
            (format!(" {TOKEN}"), KeyError::Whitespace),
            (format!("{TOKEN}\n"), KeyError::Whitespace),
        ];
        for (key, expected) in cases {
            let mut t = KeyTable::new();
            let err = t.insert(&key, ()).unwrap_err();
            assert_eq!(err, expected, "{key:?}");
            let message = err.to_string();
            assert!(!message.contains(&good[..16]), "{message}");
            assert!(!message.contains(TOKEN), "{message}");
            assert!(t.is_empty());
        }
    }

    #[test]
    fn insert_digest_takes_digests_only() {
        let mut t = KeyTable::new();
        assert_eq!(t.insert_digest(TOKEN, 1), Err(KeyError::NotDigest));
        assert!(t.is_empty(), "nothing kept");
        assert_eq!(t.insert_digest(&hashed(TOKEN), 1), Ok(()));
        let upper = format!("SHA256:{}", sha256_hex(TOKEN).to_uppercase());
        assert_eq!(t.insert_digest(&upper, 2), Err(KeyError::Duplicate));
        assert_eq!(
            t.insert_digest("sha256:abc", 3),
            Err(KeyError::DigestLength { found: 3 })
        );
        assert_eq!(t.lookup(TOKEN), Some(&1));
        assert!(!KeyError::NotDigest.to_string().contains(TOKEN));
    }

    #[test]
    fn debug_shows_no_digest() {
        let mut t = KeyTable::new();
        t.insert(&hashed(TOKEN), "team-a").unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(&sha256_hex(TOKEN)[..8]), "{shown}");
        assert!(shown.contains("len: 1"), "{shown}");
    }
}
