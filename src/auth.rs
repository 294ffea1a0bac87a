//! API keys and tenants.
//!
//! Each configured key is one tenant. Only SHA-256 digests of the keys are kept in memory;
//! a presented key is hashed and compared against every digest in constant time, so neither
//! the keys nor their order can be learned by timing. Keys are never logged: a tenant shows
//! up in logs and usage records by its name.
//!
//! Owns key loading and checking only; it must not know about sessions or HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A user of the gateway, as identified by its API key.
#[derive(Debug, PartialEq, Eq)]
pub struct Tenant {
    /// From the keys file (`name:key`), or `key-<first 8 hex digits of the key's SHA-256>`.
    pub name: Arc<str>,
    /// May read every tenant's usage (`--admin-api-key`).
    pub admin: bool,
}

/// Who is making a request.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// No keys are configured: everyone is the same single user.
    Open,
    Tenant(Arc<Tenant>),
}

impl Caller {
    /// The tenant name that owns what this caller creates.
    pub(crate) fn tenant_name(&self) -> Option<Arc<str>> {
        match self {
            Caller::Open => None,
            Caller::Tenant(t) => Some(t.name.clone()),
        }
    }

    /// Whether this caller may see a session owned by `owner`.
    pub(crate) fn may_access(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Open => true,
            Caller::Tenant(t) => owner == Some(&*t.name),
        }
    }
}

/// The configured keys.
#[derive(Debug, Default)]
pub struct KeyRing {
    entries: Vec<([u8; 32], Arc<Tenant>)>,
}

/// Shortest key accepted; shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Why the configured API keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// `--api-keys-file` cannot be read.
    #[error("cannot read --api-keys-file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A line of `--api-keys-file` is not a usable key.
    #[error("{} line {line}: {fault}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong with it.
        #[source]
        fault: KeyFault,
    },
    /// `--api-keys-file` holds no key.
    #[error(
        "--api-keys-file {} holds no keys (only blank lines and comments): refusing \
         to start without keys. Add a `key` or `name:key` line, or leave out \
         --api-keys-file to serve without keys",
        .0.display()
    )]
    Empty(PathBuf),
    /// An entry of `INGOT_API_KEYS` is not a usable key.
    #[error("INGOT_API_KEYS: {0}")]
    List(#[source] KeyFault),
    /// `--admin-api-key` is not a usable key.
    #[error("--admin-api-key: {0}")]
    Admin(#[source] KeyFault),
}

/// What is wrong with one key entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFault {
    /// Shorter than [`MIN_KEY_LEN`].
    #[error("a key must be at least {MIN_KEY_LEN} characters long")]
    TooShort,
    /// Holds whitespace or control characters.
    #[error("a key may not contain spaces or control characters")]
    BadCharacters,
    /// The same key twice.
    #[error("tenant {0}: this key is configured twice")]
    DuplicateKey(Arc<str>),
    /// The same tenant name twice.
    #[error("tenant name {0} is used twice")]
    DuplicateName(Arc<str>),
}

impl KeyRing {
    /// Loads keys from a file (one a line, `key` or `name:key`; `#` starts a comment line)
    /// and from `INGOT_API_KEYS`-style text (comma-separated, same forms), plus an admin key.
    pub fn load(
        file: Option<&Path>,
        list: Option<&str>,
        admin: Option<&str>,
    ) -> Result<KeyRing, KeysError> {
        let mut ring = KeyRing::default();
        if let Some(path) = file {
            let unreadable = |source| KeysError::Unreadable {
                path: path.to_path_buf(),
                source,
            };
            let text = std::fs::read_to_string(path).map_err(unreadable)?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                ring.add(line, false).map_err(|fault| KeysError::Line {
                    path: path.to_path_buf(),
                    line: n + 1,
                    fault,
                })?;
            }
            // A named keys file that holds none is a mistake (a secret that was not
            // mounted, say), never a wish to serve without keys.
            if ring.is_empty() {
                return Err(KeysError::Empty(path.to_path_buf()));
            }
        }
        if let Some(list) = list {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                ring.add(item, false).map_err(KeysError::List)?;
            }
        }
        if let Some(key) = admin.map(str::trim).filter(|k| !k.is_empty()) {
            ring.add(&format!("admin:{key}"), true)
                .map_err(KeysError::Admin)?;
        }
        Ok(ring)
    }

    fn add(&mut self, entry: &str, admin: bool) -> Result<(), KeyFault> {
        let (name, key) = match entry.split_once(':') {
            Some((name, key)) if is_name(name) => (Some(name), key),
            _ => (None, entry),
        };
        if key.len() < MIN_KEY_LEN {
            return Err(KeyFault::TooShort);
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KeyFault::BadCharacters);
        }
        let digest = digest(key);
        let name: Arc<str> = match name {
            Some(n) => n.into(),
            None => format!("key-{}", hex(&digest[..4])).into(),
        };
        if self.entries.iter().any(|(d, _)| *d == digest) {
            return Err(KeyFault::DuplicateKey(name));
        }
        if self.entries.iter().any(|(_, t)| t.name == name) {
            return Err(KeyFault::DuplicateName(name));
        }
        self.entries
            .push((digest, Arc::new(Tenant { name, admin })));
        Ok(())
    }

    /// Whether no key is configured (the gateway runs open).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys (tenants) are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The tenant a presented key belongs to. Every digest is compared, in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<Tenant>> {
        let digest = digest(presented);
        let mut found = None;
        for (known, tenant) in &self.entries {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tenant name: letters, digits, `-`, `_` and `.`, 1 to 64 of them.
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_named_and_unnamed_keys_and_checks_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            "# tenants\nalice:alice-key-0123456789\n\n  bob-key-0123456789abc  \n",
        )
        .expect("write");
        let ring = KeyRing::load(
            Some(&file),
            Some("carol:carol-key-0123456789, "),
            Some("admin-key-0123456789"),
        )
        .expect("load");
        assert_eq!(ring.len(), 4);
        let name = |k: &str| ring.authenticate(k).map(|t| t.name.to_string());
        assert_eq!(name("alice-key-0123456789").as_deref(), Some("alice"));
        assert_eq!(name("carol-key-0123456789").as_deref(), Some("carol"));
        let bob = name("bob-key-0123456789abc").expect("bob");
        assert!(bob.starts_with("key-") && bob.len() == 12, "{bob}");
        assert_eq!(name("alice-key-012345678"), None);
        assert_eq!(name(""), None);
        assert!(
            ring.authenticate("admin-key-0123456789")
                .expect("admin")
                .admin
        );
        assert!(
            !ring
                .authenticate("alice-key-0123456789")
                .expect("alice")
                .admin
        );
        // Only the first colon separates the name, so a named key may contain colons.
        let ring =
            KeyRing::load(None, Some("web:https://x:k0123456789abcdef"), None).expect("load");
        assert_eq!(
            ring.authenticate("https://x:k0123456789abcdef")
                .map(|t| t.name.to_string()),
            Some("web".into())
        );
        let ring = KeyRing::load(None, Some("not a name:key-0123456789abcdef"), None);
        assert!(ring.is_err(), "spaces are not allowed in keys");
    }

    #[test]
    fn refuses_short_duplicate_and_ambiguous_keys() {
        let fault = |list| match KeyRing::load(None, Some(list), None) {
            Err(KeysError::List(fault)) => Some(fault),
            _ => None,
        };
        assert_eq!(fault("short"), Some(KeyFault::TooShort));
        assert_eq!(
            fault("a:k0123456789abcdef,b:k0123456789abcdef"),
            Some(KeyFault::DuplicateKey("b".into()))
        );
        assert_eq!(
            fault("a:k0123456789abcdef,a:j0123456789abcdef"),
            Some(KeyFault::DuplicateName("a".into()))
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("keys");
        for text in ["", "# only a comment\n\n   \n"] {
            std::fs::write(&empty, text).expect("write");
            let err = KeyRing::load(Some(&empty), Some("k0123456789abcdef"), None)
                .expect_err("a keys file without keys is refused, even with other keys");
            assert!(matches!(err, KeysError::Empty(_)), "{err}");
            let err = err.to_string();
            assert!(err.contains("--api-keys-file"), "{err}");
            assert!(err.contains(&empty.display().to_string()), "{err}");
            assert!(err.contains("no keys"), "{err}");
        }
        let missing = KeyRing::load(Some(Path::new("/nonexistent/keys")), None, None);
        let missing = missing.expect_err("missing file");
        assert!(matches!(missing, KeysError::Unreadable { .. }), "{missing}");
        assert!(missing.to_string().contains("/nonexistent/keys"));
    }

    #[test]
    fn callers_see_only_their_own() {
        let t = Caller::Tenant(Arc::new(Tenant {
            name: "alice".into(),
            admin: false,
        }));
        assert!(t.may_access(Some("alice")));
        assert!(!t.may_access(Some("bob")));
        assert!(!t.may_access(None));
        assert!(Caller::Open.may_access(Some("alice")));
    }
}
