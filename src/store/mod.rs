//! Durable state: a small key-value model (named tables of string keys and values),
//! the [`Store`] trait every backend implements, and the group-commit thread that
//! makes acknowledged writes durable.
//!
//! The model (`crate::model`) describes every change as [`Op`]s and hands them to the
//! [`Committer`] while it still holds its state lock, so operations reach the store in
//! the order they were decided. The committer thread gathers whatever is queued into
//! one transaction and commits it; every caller in the batch is answered only after the
//! commit is durable. Many concurrent writers therefore share each fsync. When a commit
//! fails, the store is marked failed: every later write is refused (the daemon keeps
//! forwarding and serving reads) until it is restarted.

pub mod redb;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The tables of the state model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Settings that must survive restarts (`range`, `default_subnet`, `domain`).
    Meta,
    /// Peer control addresses to connect to (`POST /connect`).
    Peers,
    /// IP address → `<prefix length> <container id>`.
    Allocations,
    /// IPAM blocks this node took over from removed peers.
    Blocks,
    /// `<container id>\t<ip>\t<fqdn>` → "".
    Records,
    /// Exposed host addresses (`a.b.c.d/len`) → "".
    Exposed,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Meta,
        Table::Peers,
        Table::Allocations,
        Table::Blocks,
        Table::Records,
        Table::Exposed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Peers => "peers",
            Table::Allocations => "allocations",
            Table::Blocks => "blocks",
            Table::Records => "records",
            Table::Exposed => "exposed",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { table: Table, key: String, value: String },
    Delete { table: Table, key: String },
}

impl Op {
    pub fn put(table: Table, key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Put {
            table,
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(table: Table, key: impl Into<String>) -> Op {
        Op::Delete { table, key: key.into() }
    }
}

/// Everything a store holds, table by table.
pub type Contents = BTreeMap<Table, BTreeMap<String, String>>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A durable backend. `apply` must make all of `ops` durable atomically, or none.
pub trait Store: Send + 'static {
    fn load(&self) -> Result<Contents, StoreError>;
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
}

struct Request {
    ops: Vec<Op>,
    done: SyncSender<Result<(), StoreError>>,
}

/// Counters of the committer, for the API.
#[derive(Default)]
pub struct CommitStats {
    pub transactions: AtomicU64,
    pub operations: AtomicU64,
    pub requests: AtomicU64,
}

/// The group-commit front of a store.
pub struct Committer {
    tx: SyncSender<Request>,
    failed: Arc<AtomicBool>,
    pub stats: Arc<CommitStats>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the commit thread over `store`.
    pub fn start(mut store: impl Store) -> Committer {
        let (tx, rx) = sync_channel::<Request>(4096);
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CommitStats::default());
        let (f, st) = (failed.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("tl-store".into())
            .spawn(move || commit_loop(&mut store, rx, &f, &st))
            .ok();
        Committer {
            tx,
            failed,
            stats,
            thread,
        }
    }

    /// Queues `ops`; the returned ticket waits for them to be durable. Call while
    /// holding the lock under which the ops were decided, wait after releasing it.
    pub fn submit(&self, ops: Vec<Op>) -> Ticket {
        let (done, wait) = sync_channel(1);
        if self.failed.load(Ordering::Acquire) {
            let _ = done.send(Err(StoreError(
                "the store failed earlier; writes are refused until tunloom restarts".into(),
            )));
            return Ticket(wait);
        }
        if let Err(e) = self.tx.send(Request { ops, done }) {
            let _ = e.0.done.send(Err(StoreError("the store thread has stopped".into())));
        }
        Ticket(wait)
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it commits what is queued.
        let (tx, _) = sync_channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pending commit.
pub struct Ticket(Receiver<Result<(), StoreError>>);

impl Ticket {
    /// Blocks until the ops are durable (or failed).
    pub fn wait(self) -> Result<(), StoreError> {
        self.0
            .recv()
            .unwrap_or_else(|_| Err(StoreError("the store thread has stopped".into())))
    }
}

/// Most requests one transaction gathers.
const MAX_BATCH: usize = 1024;

fn commit_loop(store: &mut impl Store, rx: Receiver<Request>, failed: &AtomicBool, stats: &CommitStats) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut ops: Vec<Op> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        ops.clear();
        for r in &batch {
            ops.extend(r.ops.iter().cloned());
        }
        let result = if failed.load(Ordering::Acquire) {
            Err(StoreError(
                "the store failed earlier; writes are refused until tunloom restarts".into(),
            ))
        } else {
            store.apply(&ops)
        };
        match &result {
            Ok(()) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                stats.operations.fetch_add(ops.len() as u64, Ordering::Relaxed);
                stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                if !failed.swap(true, Ordering::AcqRel) {
                    log::error!("store: commit failed, refusing writes from now on: {e}");
                }
            }
        }
        for r in batch.drain(..) {
            let _ = r.done.send(result.clone());
        }
    }
}

/// The behaviour every backend must show; each backend's tests call it with a fresh
/// store factory (`open` is called again on the same place to check persistence).
#[cfg(test)]
pub(crate) fn conformance<S: Store>(mut open: impl FnMut() -> S) {
    {
        let mut s = open();
        assert!(s.load().unwrap().values().all(|t| t.is_empty()), "a new store is empty");
        s.apply(&[
            Op::put(Table::Allocations, "10.32.0.2", "12 c1"),
            Op::put(Table::Allocations, "10.32.0.3", "12 c2"),
            Op::put(Table::Meta, "domain", "weave.local."),
        ])
        .unwrap();
        s.apply(&[
            Op::delete(Table::Allocations, "10.32.0.3"),
            Op::put(Table::Peers, "198.18.0.2:6783", ""),
        ])
        .unwrap();
        // Deleting what is not there, and overwriting, are fine.
        s.apply(&[
            Op::delete(Table::Records, "nothing"),
            Op::put(Table::Meta, "domain", "tunloom.local."),
        ])
        .unwrap();
        s.apply(&[]).unwrap();
    }
    let s = open();
    let c = s.load().unwrap();
    let get = |t: Table| c.get(&t).cloned().unwrap_or_default();
    assert_eq!(
        get(Table::Allocations).into_iter().collect::<Vec<_>>(),
        vec![("10.32.0.2".into(), "12 c1".into())]
    );
    assert_eq!(
        get(Table::Meta).get("domain").map(String::as_str),
        Some("tunloom.local.")
    );
    assert!(get(Table::Peers).contains_key("198.18.0.2:6783"));
    assert!(get(Table::Records).is_empty());
}

/// A store that keeps everything in memory and nothing across processes: for the
/// fuzz targets and tests that exercise the model, not durability.
#[cfg(any(test, fuzzing))]
#[derive(Clone, Default)]
pub struct Memory {
    data: Arc<parking_lot::Mutex<Contents>>,
}

#[cfg(any(test, fuzzing))]
impl Store for Memory {
    fn load(&self) -> Result<Contents, StoreError> {
        Ok(self.data.lock().clone())
    }
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut d = self.data.lock();
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    d.entry(*table).or_default().insert(key.clone(), value.clone());
                }
                Op::Delete { table, key } => {
                    d.entry(*table).or_default().remove(key);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in memory that takes as long as an fsync, counts transactions, and
    /// fails on demand.
    #[derive(Clone, Default)]
    struct Mem {
        inner: Memory,
        txns: Arc<AtomicU64>,
        fail: Arc<AtomicBool>,
    }

    impl Store for Mem {
        fn load(&self) -> Result<Contents, StoreError> {
            self.inner.load()
        }
        fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(StoreError("disk on fire".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(2)); // an fsync
            self.inner.apply(ops)?;
            self.txns.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn memory_store_conforms() {
        let m = Mem::default();
        conformance(|| m.clone());
    }

    #[test]
    fn concurrent_writers_share_transactions_and_every_write_lands() {
        let m = Mem::default();
        let c = Arc::new(Committer::start(m.clone()));
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || c.submit(vec![Op::put(Table::Allocations, format!("k{i}"), "v")]).wait())
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(m.inner.data.lock()[&Table::Allocations].len(), 64);
        let txns = m.txns.load(Ordering::Relaxed);
        assert!(txns < 64, "64 writes in {txns} transactions");
        assert_eq!(c.stats.requests.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_failed_commit_fails_its_writers_and_every_later_one() {
        let m = Mem::default();
        let c = Committer::start(m.clone());
        c.submit(vec![Op::put(Table::Meta, "a", "1")]).wait().unwrap();
        m.fail.store(true, Ordering::Relaxed);
        assert!(c.submit(vec![Op::put(Table::Meta, "b", "1")]).wait().is_err());
        m.fail.store(false, Ordering::Relaxed);
        let e = c.submit(vec![Op::put(Table::Meta, "c", "1")]).wait().unwrap_err();
        assert!(e.0.contains("refused"), "{e}");
        assert!(c.failed());
    }
}
