//! The signing keyset: `<state-dir>/auth/keys.json`, mode 0600, made once (by the
//! daemon's first start or by `tunloom auth token mint`, whichever comes first) and
//! only read afterwards.
//!
//! ```json
//! {"version": 1, "active": "<kid>",
//!  "keys": [{"kid": "<kid>", "alg": "EdDSA", "created_at": "2026-01-01T00:00:00Z",
//!            "seed": "<64 hex digits>", "public": "<64 hex digits>"}]}
//! ```
//!
//! `seed` is the Ed25519 secret key (RFC 8032's 32 bytes); `public` is kept beside it
//! so a damaged file is noticed at load. Tokens are signed with the `active` key and
//! verified with whichever key their header's `kid` names, so a later rotation can
//! add a key and keep the old one for verification.
//!
//! The file is created without a lock: it is written to a temporary name and
//! hard-linked into place, which fails if another process got there first — then that
//! process's keyset is the one read. So a daemon and `tunloom auth token mint`
//! starting together on an empty state directory end up with one keyset.

use super::{hex, hex_decode, new_id, rfc3339, AuthError};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The keyset file's name inside `<state-dir>/auth/`.
pub const FILE: &str = "keys.json";

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    active: String,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    alg: String,
    created_at: String,
    seed: String,
    public: String,
}

/// The keys, ready to sign and verify. Immutable once loaded.
pub struct KeySet {
    active: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
}

impl KeySet {
    /// The kid tokens are signed with.
    pub fn active_kid(&self) -> &str {
        &self.active
    }

    pub fn signing_key(&self) -> &EncodingKey {
        &self.signing
    }

    /// The key a token's `kid` names, if this keyset has it.
    pub fn verifying_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid)
    }

    /// Reads `<state-dir>/auth/keys.json`, creating it (and the `auth` directory,
    /// 0700) when there is none.
    pub fn load_or_create(state_dir: &Path, now: u64) -> Result<KeySet, AuthError> {
        Self::load_or_create_with(state_dir, now, rand::random(), &new_id())
    }

    /// [`KeySet::load_or_create`] with the key and kid given, should it create one
    /// (fixtures and fuzzing need a known kid).
    pub fn load_or_create_with(state_dir: &Path, now: u64, seed: [u8; 32], kid: &str) -> Result<KeySet, AuthError> {
        let dir = auth_dir(state_dir)?;
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => return parse(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, "reading", e)),
        }
        let text = generate(now, seed, kid)?;
        let tmp = dir.join(format!(".{FILE}.{}.{}", std::process::id(), new_id()));
        let written = write_new(&tmp, text.as_bytes());
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir);
                log::info!("auth: created the signing keyset {}", path.display());
            }
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&path, "writing", e)),
        }
        let bytes = std::fs::read(&path).map_err(|e| io(&path, "reading", e))?;
        parse(&path, &bytes)
    }
}

/// `<state-dir>/auth`, created 0700 if missing.
pub fn auth_dir(state_dir: &Path) -> Result<PathBuf, AuthError> {
    let dir = state_dir.join("auth");
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io(&dir, "creating", e))?;
    }
    Ok(dir)
}

fn io(path: &Path, what: &str, e: std::io::Error) -> AuthError {
    AuthError::Io(format!("{what} {}: {e}", path.display()))
}

/// Creates `path` (which must not exist) with mode 0600 and `bytes`, on disk when
/// this returns.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes a directory entry just created durable (best effort: some filesystems
/// refuse to sync a directory).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A new keyset with one fresh Ed25519 key, as the file's text.
fn generate(now: u64, seed: [u8; 32], kid: &str) -> Result<String, AuthError> {
    let key = SigningKey::from_bytes(&seed);
    let file = KeyFile {
        version: 1,
        active: kid.into(),
        keys: vec![StoredKey {
            kid: kid.into(),
            alg: "EdDSA".into(),
            created_at: rfc3339(now),
            seed: hex(&seed),
            public: hex(key.verifying_key().as_bytes()),
        }],
    };
    serde_json::to_string_pretty(&file).map_err(|e| AuthError::Key(e.to_string()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<KeySet, AuthError> {
    let damaged = |why: String| AuthError::Key(format!("{} is damaged: {why}", path.display()));
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "auth: {} is readable by others (mode {:o}); it should be 0600",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
    let mut verifying = HashMap::new();
    let mut signing = None;
    for k in &file.keys {
        if k.alg != "EdDSA" {
            return Err(damaged(format!("key {} has algorithm {:?}, not EdDSA", k.kid, k.alg)));
        }
        let seed: [u8; 32] = hex_decode(&k.seed)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| damaged(format!("key {}: the seed is not 64 hex digits", k.kid)))?;
        let sk = SigningKey::from_bytes(&seed);
        let public = sk.verifying_key().to_bytes();
        if hex_decode(&k.public).as_deref() != Some(&public[..]) {
            return Err(damaged(format!(
                "key {}: the public key does not match the seed",
                k.kid
            )));
        }
        // ring reads a raw 32-byte public key for EdDSA.
        verifying.insert(k.kid.clone(), DecodingKey::from_ed_der(&public));
        if k.kid == file.active {
            let der = sk.to_pkcs8_der().map_err(|e| damaged(e.to_string()))?;
            signing = Some(EncodingKey::from_ed_der(der.as_bytes()));
        }
    }
    let signing = signing.ok_or_else(|| damaged(format!("no key has the active kid {:?}", file.active)))?;
    Ok(KeySet {
        active: file.active,
        signing,
        verifying,
    })
}
