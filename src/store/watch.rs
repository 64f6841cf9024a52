//! Watches for the stores that live in this process (redb, memory): a bounded history
//! of recent changes, so a watch may start a little in the past, and the list of
//! watchers to hand each new change to.
//!
//! A watcher that does not keep up (its queue of `WATCH_QUEUE` events is full) is
//! dropped: its [`Watch`] ends, and it must watch again from the last revision it
//! saw, as etcd's clients do when the server cancels a slow watch. Nothing here waits
//! on a watcher.

use super::{Event, Revision, StoreError};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Changes kept for watches that start in the past.
const HISTORY: usize = 4096;
/// Events queued for one watcher before it counts as too slow.
const WATCH_QUEUE: usize = 4096;

/// A stream of changes under one prefix. Ends (`None`) when the store goes away or
/// the watcher fell too far behind.
pub struct Watch(Receiver<Event>);

impl Watch {
    /// The next change, waiting at most `timeout`. `Ok(None)` on timeout,
    /// `Err(())` once the watch has ended.
    #[allow(clippy::result_unit_err)]
    pub fn next_timeout(&self, timeout: Duration) -> Result<Option<Event>, ()> {
        match self.0.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// Every change already delivered, without waiting.
    pub fn drain(&self) -> Vec<Event> {
        self.0.try_iter().collect()
    }
}

struct Inner {
    history: VecDeque<Event>,
    /// Every change after this revision is in `history`.
    compacted: Revision,
    watchers: Vec<(String, SyncSender<Event>)>,
}

/// The watch side of a local store.
pub(super) struct Hub(Mutex<Inner>);

impl Hub {
    /// A hub for a store whose changes up to `revision` are not kept.
    pub(super) fn new(revision: Revision) -> Hub {
        Hub(Mutex::new(Inner {
            history: VecDeque::new(),
            compacted: revision,
            watchers: Vec::new(),
        }))
    }

    /// Starts a watch under `prefix` after `after`, where the store is at `current`.
    pub(super) fn watch(&self, prefix: &str, after: Revision, current: Revision) -> Result<Watch, StoreError> {
        let mut inner = self.0.lock();
        if after < inner.compacted && after < current {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: inner.compacted,
            });
        }
        let (tx, rx) = sync_channel(WATCH_QUEUE);
        for e in inner
            .history
            .iter()
            .filter(|e| e.revision() > after && e.key().starts_with(prefix))
        {
            if tx.try_send(e.clone()).is_err() {
                // More history than one queue holds: as if it had fallen behind.
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted: inner.compacted,
                });
            }
        }
        inner.watchers.push((prefix.to_string(), tx));
        Ok(Watch(rx))
    }

    /// Hands committed changes to the history and to every watcher. Call after the
    /// changes are durable, in revision order.
    pub(super) fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.0.lock();
        for e in events {
            inner.watchers.retain(|(prefix, tx)| {
                if !e.key().starts_with(prefix.as_str()) {
                    return true;
                }
                match tx.try_send(e.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        log::warn!("store: a watch on {prefix:?} fell behind and was ended");
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
            });
            inner.history.push_back(e);
            if inner.history.len() > HISTORY {
                if let Some(old) = inner.history.pop_front() {
                    inner.compacted = old.revision();
                }
            }
        }
    }
}
