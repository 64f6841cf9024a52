//! `tunloom state`: checking a state directory and copying it consistently, for the
//! operator who suspects a damaged disk or wants a backup before an upgrade.
//!
//! A check needs the database to itself (redb holds a running daemon's file open), so
//! it refuses while the daemon runs. A backup works either way: with the daemon
//! stopped it reads the file directly; with the daemon running it asks its management
//! API for a dump read in one transaction (`GET /api/v1/state/backup`), so the copy
//! is of one revision, never half a write. Either way the copy is a new state
//! directory that `tunloom run --state-dir` opens. This module touches the state
//! directories it is given and, for a backup, the local management API.

use crate::store::redb::RedbStore;
use crate::store::{Entry, Revision, Store, StoreError};
use std::net::SocketAddr;
use std::path::Path;

/// Why a state command failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("tunloom is running on {0}; stop it first (`tunloom state backup` works while it runs)")]
    InUse(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} exists and is not empty; back up into a new directory")]
    NotEmpty(String),
    #[error("asking the running tunloom at {api} for its state: {message}")]
    Api { api: SocketAddr, message: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// What a check found.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub entries: usize,
    pub revision: Revision,
}

/// Checks the state in `dir` (redb's integrity check, every entry read back).
pub fn check(dir: &Path) -> Result<Checked, StateError> {
    if super::state_dir_in_use(dir) {
        return Err(StateError::InUse(dir.display().to_string()));
    }
    let (entries, revision) = RedbStore::check(dir)?;
    Ok(Checked { entries, revision })
}

/// Copies the state of `state_dir` into the new state directory `to`; asks the
/// tunloom running on `state_dir` (its management API at `api`) when there is one.
pub fn backup(state_dir: &Path, to: &Path, api: SocketAddr) -> Result<Checked, StateError> {
    let io = |what, path: &Path| {
        let path = path.display().to_string();
        move |source| StateError::Io { what, path, source }
    };
    if to.exists() && std::fs::read_dir(to).map_err(io("reading", to))?.next().is_some() {
        return Err(StateError::NotEmpty(to.display().to_string()));
    }
    let (entries, revision) = if super::state_dir_in_use(state_dir) {
        from_api(api, state_dir)?
    } else {
        RedbStore::open(state_dir)?.range("")?
    };
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    RedbStore::create_from(to, &entries, revision)?;
    Ok(Checked {
        entries: entries.len(),
        revision,
    })
}

/// The running daemon's state, read in one transaction.
fn from_api(api: SocketAddr, state_dir: &Path) -> Result<(Vec<Entry>, Revision), StateError> {
    let fail = |message: String| StateError::Api { api, message };
    // A short readonly token from the node's own signing key: whoever may read the
    // state directory may read the state.
    let token = crate::auth::mint_offline(
        state_dir,
        "tunloom-state-backup",
        crate::auth::Role::Readonly,
        std::time::Duration::from_secs(300),
    )
    .map_err(|e| fail(format!("minting a token from {}: {e}", state_dir.display())))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{api}/api/v1/state/backup"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| fail(e.to_string()))?;
    let status = resp.status().as_u16();
    let doc: serde_json::Value = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_json()
        .map_err(|e| fail(format!("status {status}: {e}")))?;
    if status != 200 {
        return Err(fail(format!("status {status}: {}", doc["error"])));
    }
    let revision = doc["revision"].as_u64().ok_or_else(|| fail("no revision".into()))?;
    let entries = doc["entries"]
        .as_array()
        .ok_or_else(|| fail("no entries".into()))?
        .iter()
        .map(|e| {
            Some(Entry {
                key: e["key"].as_str()?.to_string(),
                value: e["value"].as_str()?.to_string(),
                revision: e["revision"].as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| fail("an entry without key, value or revision".into()))?;
    Ok((entries, revision))
}
