//! Durable state: an ordered key-value store with revisions, compare-and-swap
//! transactions and watches, the [`Store`] trait every backend implements, and the
//! group committer that makes acknowledged writes durable.
//!
//! The store knows nothing of what it holds: keys are `/`-separated strings whose
//! layout the model's schema owns (`crate::model::schema`), values are text. The shape
//! is etcd's, so that the multi-host backend to come is one more implementation of
//! the same trait:
//!
//! - every committed transaction gets the next store **revision**, and every key
//!   remembers the revision that last wrote it;
//! - a [`Txn`] applies its operations only if all its [`Compare`]s hold (a key absent,
//!   present, at a revision, or holding a value) — otherwise it is a conflict and
//!   changes nothing;
//! - a **watch** delivers every change under a prefix after a given revision, in
//!   order, then every later one.
//!
//! Backends: [`redb::RedbStore`] (one crash-safe file in the state directory) and
//! [`memory::MemoryStore`] (tests and fuzzing). `conformance` is the behaviour both
//! must show; each backend's tests run it. The [`Committer`] in front of a backend
//! gathers concurrent writers into one durable batch (group commit). This module may
//! touch the filesystem only through a backend; it never reads the clock.

pub mod committer;
#[cfg(any(test, fuzzing))]
pub mod conformance;
pub mod memory;
pub mod redb;
mod watch;

pub use committer::{CommitEvent, Committer, Ticket};
pub use watch::Watch;

/// A store-wide version number: 0 for an empty store, one more per committed
/// transaction.
pub type Revision = u64;

/// One key as stored, with the revision of the transaction that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub revision: Revision,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: String },
    Delete { key: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// A condition a transaction needs to hold before it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Present(String),
    /// The key was last written at exactly this revision (it exists).
    Revision(String, Revision),
    /// The key holds exactly this value.
    Value(String, String),
}

impl Compare {
    /// Whether the condition holds for the key's current entry (`None`: absent).
    pub fn holds(&self, current: Option<(&str, Revision)>) -> bool {
        match (self, current) {
            (Compare::Absent(_), cur) => cur.is_none(),
            (Compare::Present(_), cur) => cur.is_some(),
            (Compare::Revision(_, r), Some((_, at))) => *r == at,
            (Compare::Value(_, v), Some((value, _))) => v == value,
            (Compare::Revision(..) | Compare::Value(..), None) => false,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Compare::Absent(k) | Compare::Present(k) | Compare::Revision(k, _) | Compare::Value(k, _) => k,
        }
    }
}

/// Operations that apply together, if every comparison holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    /// A transaction without conditions.
    pub fn ops(ops: Vec<Op>) -> Txn {
        Txn {
            compare: Vec::new(),
            ops,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.compare.is_empty() && self.ops.is_empty()
    }
}

/// What became of one transaction in a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, as this revision.
    Applied(Revision),
    /// Comparison number `.0` did not hold: nothing was changed.
    Conflict(usize),
}

/// One change as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put {
        key: String,
        value: String,
        revision: Revision,
    },
    Delete {
        key: String,
        revision: Revision,
    },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put { key, .. } | Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { revision, .. } | Event::Delete { revision, .. } => *revision,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A transaction's comparison did not hold; nothing was changed.
    #[error("conflict: the condition on {key} no longer holds")]
    Conflict { key: String },
    /// A watch asked for changes older than the store still remembers.
    #[error("changes after revision {requested} are no longer kept (oldest kept: after {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// An earlier commit failed, so this store refuses writes until restart.
    #[error("the store failed earlier; writes are refused until tunloom restarts")]
    Failed,
    /// The commit thread is gone (the daemon is stopping).
    #[error("the store thread has stopped")]
    Stopped,
    /// The backend could not do it.
    #[error("{what}: {message}")]
    Backend { what: &'static str, message: String },
    /// The stored state cannot be read: the file is damaged or is no state at all.
    #[error(
        "{path} is damaged ({detail}); restore it from a backup (`tunloom state backup` makes one), \
         or move it away to start with an empty state"
    )]
    Damaged { path: String, detail: String },
}

/// A durable, ordered key-value backend.
pub trait Store: Send + 'static {
    /// Every entry whose key starts with `prefix`, in key order, and the store's
    /// revision they were read at.
    fn range(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError>;

    /// Commits `txns` in order as one durable unit. Each transaction's comparisons
    /// see what the transactions before it left; one whose comparison fails changes
    /// nothing and is reported as a conflict, the others still apply. Returns one
    /// outcome per transaction once the whole batch is durable, or an error, in which
    /// case nothing of the batch was applied.
    fn commit(&mut self, txns: &[Txn]) -> Result<Vec<Outcome>, StoreError>;

    /// Every change under `prefix` after revision `after`, in order, and then every
    /// later one. `Compacted` when changes that old are no longer kept.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError>;
}

/// What a backend's write transaction offers [`apply_batch`]: reads that see the
/// batch's own earlier writes, and writes.
pub(crate) trait KvWrite {
    fn get(&mut self, key: &str) -> Result<Option<(String, Revision)>, StoreError>;
    fn put(&mut self, key: &str, value: &str, revision: Revision) -> Result<(), StoreError>;
    /// Whether the key existed.
    fn delete(&mut self, key: &str) -> Result<bool, StoreError>;
}

/// A committed batch: one outcome per transaction, the changes for watchers, and the
/// store's revision after it.
pub(crate) struct Applied {
    pub outcomes: Vec<Outcome>,
    pub events: Vec<Event>,
    pub revision: Revision,
}

/// The transaction semantics every local backend shares: each transaction's
/// comparisons are checked against what the batch has written so far; one that holds
/// gets the next revision and applies its operations, one that does not changes
/// nothing. The backend makes the whole batch durable (or nothing of it) afterwards.
pub(crate) fn apply_batch(kv: &mut impl KvWrite, mut revision: Revision, txns: &[Txn]) -> Result<Applied, StoreError> {
    let mut outcomes = Vec::with_capacity(txns.len());
    let mut events = Vec::new();
    'txns: for t in txns {
        for (i, c) in t.compare.iter().enumerate() {
            let cur = kv.get(c.key())?;
            if !c.holds(cur.as_ref().map(|(v, r)| (v.as_str(), *r))) {
                outcomes.push(Outcome::Conflict(i));
                continue 'txns;
            }
        }
        if t.ops.is_empty() {
            outcomes.push(Outcome::Applied(revision));
            continue;
        }
        revision += 1;
        for op in &t.ops {
            match op {
                Op::Put { key, value } => {
                    kv.put(key, value, revision)?;
                    events.push(Event::Put {
                        key: key.clone(),
                        value: value.clone(),
                        revision,
                    });
                }
                Op::Delete { key } => {
                    if kv.delete(key)? {
                        events.push(Event::Delete {
                            key: key.clone(),
                            revision,
                        });
                    }
                }
            }
        }
        outcomes.push(Outcome::Applied(revision));
    }
    Ok(Applied {
        outcomes,
        events,
        revision,
    })
}
