//! Group commit: the one thread that owns a store's backend and makes writes durable.
//!
//! The model hands each decided change to [`Committer::submit`] while it still holds
//! its state lock, so transactions reach the store in the order they were decided;
//! it waits on the [`Ticket`] after releasing the lock. The thread gathers whatever is
//! queued (up to `MAX_BATCH` requests) into one backend commit, so many concurrent
//! writers share each fsync, and answers every request only once that commit is
//! durable. Reads and watches go through the same thread, so they are ordered with
//! the commits around them.
//!
//! A conflict (a transaction's comparison did not hold) fails that request alone. A
//! failed commit fails the whole batch and marks the store failed: every later write
//! is refused, while forwarding and reads go on, until tunloom restarts.

use super::{Entry, Outcome, Revision, Store, StoreError, Txn, Watch};
use crate::telemetry::{counted_enum, Counters};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

counted_enum! {
    /// What the committer counts.
    CommitEvent {
        Transactions => "transactions", "Backend commits (each one fsync with redb).";
        Requests => "requests", "Write requests answered after a commit.";
        Operations => "operations", "Puts and deletes committed.";
        Conflicts => "conflicts", "Requests refused because a comparison did not hold.";
    }
}

/// Most requests one backend commit gathers.
const MAX_BATCH: usize = 1024;

enum Request {
    Commit {
        txn: Txn,
        done: SyncSender<Result<Revision, StoreError>>,
    },
    Range {
        prefix: String,
        done: SyncSender<Result<(Vec<Entry>, Revision), StoreError>>,
    },
    Watch {
        prefix: String,
        after: Revision,
        done: SyncSender<Result<Watch, StoreError>>,
    },
}

/// The group-commit front of a store.
pub struct Committer {
    tx: Option<SyncSender<Request>>,
    failed: Arc<AtomicBool>,
    counters: Arc<Counters<CommitEvent>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the commit thread over `store`, counting into `counters`.
    pub fn start(store: impl Store, counters: Arc<Counters<CommitEvent>>) -> Committer {
        let (tx, rx) = sync_channel::<Request>(4096);
        let failed = Arc::new(AtomicBool::new(false));
        let (f, c) = (failed.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("tl-store".into())
            .spawn(move || commit_loop(store, rx, &f, &c))
            .map_err(|e| log::error!("store: cannot start the commit thread: {e}"))
            .ok();
        Committer {
            tx: thread.as_ref().map(|_| tx),
            failed,
            counters,
            thread,
        }
    }

    fn send(&self, r: Request) -> Result<(), Request> {
        match &self.tx {
            Some(tx) => tx.send(r).map_err(|e| e.0),
            None => Err(r),
        }
    }

    /// Queues `txn`; the returned ticket waits for it to be durable. Call while
    /// holding the lock under which it was decided, wait after releasing it.
    pub fn submit(&self, txn: Txn) -> Ticket {
        let (done, wait) = sync_channel(1);
        if self.failed() {
            let _ = done.send(Err(StoreError::Failed));
            return Ticket(wait);
        }
        if let Err(Request::Commit { done, .. }) = self.send(Request::Commit { txn, done }) {
            let _ = done.send(Err(StoreError::Stopped));
        }
        Ticket(wait)
    }

    /// Every entry under `prefix`, read after every commit submitted before.
    pub fn range(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let (done, wait) = sync_channel(1);
        let prefix = prefix.to_string();
        self.send(Request::Range { prefix, done })
            .map_err(|_| StoreError::Stopped)?;
        wait.recv().unwrap_or(Err(StoreError::Stopped))
    }

    /// Every change under `prefix` after `after`; see [`Store::watch`].
    pub fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let (done, wait) = sync_channel(1);
        let prefix = prefix.to_string();
        self.send(Request::Watch { prefix, after, done })
            .map_err(|_| StoreError::Stopped)?;
        wait.recv().unwrap_or(Err(StoreError::Stopped))
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn counters(&self) -> &Arc<Counters<CommitEvent>> {
        &self.counters
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after it commits what is queued.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pending commit.
pub struct Ticket(std::sync::mpsc::Receiver<Result<Revision, StoreError>>);

impl Ticket {
    /// Blocks until the transaction is durable (its revision), refused or failed.
    pub fn wait(self) -> Result<Revision, StoreError> {
        self.0.recv().unwrap_or(Err(StoreError::Stopped))
    }
}

type Done = SyncSender<Result<Revision, StoreError>>;

fn commit_loop(mut store: impl Store, rx: Receiver<Request>, failed: &AtomicBool, counters: &Counters<CommitEvent>) {
    let mut txns: Vec<Txn> = Vec::with_capacity(MAX_BATCH);
    let mut waiting: Vec<Done> = Vec::with_capacity(MAX_BATCH);
    // A read or watch that arrives in the middle of a batch runs after it.
    let mut after: Option<Request> = None;
    while let Some(first) = after.take().or_else(|| rx.recv().ok()) {
        let mut next = Some(first);
        while let Some(r) = next.take() {
            match r {
                Request::Commit { txn, done } => {
                    txns.push(txn);
                    waiting.push(done);
                }
                other if txns.is_empty() => serve(&store, other),
                other => {
                    after = Some(other);
                    break;
                }
            }
            if txns.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if txns.is_empty() {
            continue;
        }
        let result = if failed.load(Ordering::Acquire) {
            Err(StoreError::Failed)
        } else {
            store.commit(&txns)
        };
        match result {
            Ok(outcomes) => {
                counters.inc(CommitEvent::Transactions);
                counters.add(CommitEvent::Requests, txns.len() as u64);
                for ((t, done), o) in txns.iter().zip(&waiting).zip(outcomes) {
                    let answer = match o {
                        Outcome::Applied(rev) => {
                            counters.add(CommitEvent::Operations, t.ops.len() as u64);
                            Ok(rev)
                        }
                        Outcome::Conflict(i) => {
                            counters.inc(CommitEvent::Conflicts);
                            Err(StoreError::Conflict {
                                key: t.compare.get(i).map_or_else(String::new, |c| c.key().to_string()),
                            })
                        }
                    };
                    let _ = done.send(answer);
                }
            }
            Err(e) => {
                if !failed.swap(true, Ordering::AcqRel) {
                    log::error!("store: commit failed, refusing writes from now on: {e}");
                }
                for done in &waiting {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
        txns.clear();
        waiting.clear();
    }
}

fn serve(store: &impl Store, r: Request) {
    match r {
        Request::Range { prefix, done } => {
            let _ = done.send(store.range(&prefix));
        }
        Request::Watch { prefix, after, done } => {
            let _ = done.send(store.watch(&prefix, after));
        }
        Request::Commit { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryStore;
    use super::super::{Compare, Op};
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A store in memory that takes as long as an fsync, counts commits, and fails
    /// on demand.
    #[derive(Clone, Default)]
    struct Slow {
        inner: MemoryStore,
        commits: Arc<AtomicU64>,
        fail: Arc<AtomicBool>,
    }

    impl Store for Slow {
        fn range(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
            self.inner.range(prefix)
        }
        fn commit(&mut self, txns: &[Txn]) -> Result<Vec<Outcome>, StoreError> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(StoreError::Backend {
                    what: "commit",
                    message: "disk on fire".into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(2)); // an fsync
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.inner.commit(txns)
        }
        fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
            self.inner.watch(prefix, after)
        }
    }

    fn put(k: &str) -> Txn {
        Txn::ops(vec![Op::put(k, "v")])
    }

    #[test]
    fn concurrent_writers_share_commits_and_every_write_lands() {
        let m = Slow::default();
        let c = Arc::new(Committer::start(m.clone(), Arc::default()));
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || c.submit(put(&format!("a/k{i}"))).wait())
            })
            .collect();
        let mut revisions: Vec<Revision> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
        revisions.sort();
        assert_eq!(revisions, (1..=64).collect::<Vec<_>>(), "one revision per transaction");
        assert_eq!(c.range("a/").unwrap().0.len(), 64);
        let commits = m.commits.load(Ordering::Relaxed);
        assert!(commits < 64, "64 writes in {commits} commits");
        assert_eq!(c.counters().get(CommitEvent::Requests), 64);
    }

    #[test]
    fn a_conflict_fails_its_request_alone() {
        let c = Committer::start(MemoryStore::default(), Arc::default());
        c.submit(put("a/x")).wait().unwrap();
        let taken = Txn {
            compare: vec![Compare::Absent("a/x".into())],
            ops: vec![Op::put("a/x", "other")],
        };
        let e = c.submit(taken).wait().unwrap_err();
        assert_eq!(e, StoreError::Conflict { key: "a/x".into() });
        assert!(!c.failed(), "a conflict is no failure");
        c.submit(put("a/y")).wait().unwrap();
        assert_eq!(c.counters().get(CommitEvent::Conflicts), 1);
    }

    #[test]
    fn a_failed_commit_fails_its_writers_and_every_later_one() {
        let m = Slow::default();
        let c = Committer::start(m.clone(), Arc::default());
        c.submit(put("m/a")).wait().unwrap();
        m.fail.store(true, Ordering::Relaxed);
        assert!(c.submit(put("m/b")).wait().is_err());
        m.fail.store(false, Ordering::Relaxed);
        assert_eq!(c.submit(put("m/c")).wait().unwrap_err(), StoreError::Failed);
        assert!(c.failed());
        assert_eq!(c.range("m/").unwrap().0.len(), 1, "reads go on");
    }

    #[test]
    fn watches_through_the_committer_see_later_commits() {
        let c = Committer::start(MemoryStore::default(), Arc::default());
        let rev = c.submit(put("w/a")).wait().unwrap();
        let w = c.watch("w/", rev).unwrap();
        c.submit(put("w/b")).wait().unwrap();
        let e = w.next_timeout(std::time::Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!((e.key(), e.revision()), ("w/b", rev + 1));
    }
}
