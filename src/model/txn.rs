//! The one way the model changes: decide → host changes that must come first →
//! commit → publish → wait → host changes that must come after → answer.
//!
//! [`Model::write`] takes a decision (a closure over the state that returns a
//! [`Change`]) and carries it out:
//!
//! 1. Under the state lock: decide (the state is changed in memory), make the host
//!    changes the new state needs before anyone relies on it (an address goes on the
//!    link before it is announced), hand the store transaction to the group committer
//!    (so transactions reach the store in decision order) and, when forwarding
//!    changed, update what this node announces.
//! 2. Without the lock: wait until the transaction is durable. If it is not, the
//!    change is undone in memory, its announcements restored and its host changes
//!    reverted, and the write fails.
//! 3. When forwarding changed: publish a snapshot and wait, bounded, until every
//!    worker forwards by it; then tell the peers at once.
//! 4. Host changes that must wait until nothing relies on what they remove (an
//!    address comes off the link after it is withdrawn). Their failures are logged:
//!    the change itself is done.
//!
//! Only then does the write return, so a face answers once the change is durable and
//! in force. An answer that changes nothing but repeats what an earlier change
//! decided (an idempotent allocation, say) is held back, with a guard transaction,
//! until that change is durable too.
//!
//! Host changes that come first run under the state lock: an rtnetlink call takes
//! well under a millisecond, and holding the lock keeps them in the same order as the
//! announcements they precede.

use super::{Error, Model, State};
use crate::host::HostOp;
use crate::store::{Compare, Txn};

/// Reverts a decided change in memory when it could not be made.
pub(super) type Undo = Box<dyn FnOnce(&mut State) + Send>;

/// A decided change: its result, the store transaction, how to undo it in memory,
/// whether forwarding changed, and the host changes around the commit.
pub(super) struct Change<T> {
    pub value: T,
    pub txn: Txn,
    pub undo: Option<Undo>,
    /// What this node announces or forwards by changed.
    pub routing: bool,
    /// The DNS records changed (or a repeat relies on them).
    pub names: bool,
    /// Host changes made before the commit (and reverted if it fails).
    pub before: Vec<HostOp>,
    /// Host changes made once the change is in force.
    pub after: Vec<HostOp>,
}

impl<T> Change<T> {
    /// Nothing changes, but the answer relies on what `holds` says of the store —
    /// which a change still in flight may have just decided: the answer is given only
    /// once the store confirms it (after every transaction submitted before), and a
    /// conflict if that change could not be stored after all.
    pub fn guarded(value: T, holds: Compare) -> Change<T> {
        Change {
            txn: Txn {
                compare: vec![holds],
                ops: Vec::new(),
            },
            ..Change::read(value)
        }
    }

    /// Nothing changes; the answer is `value`.
    pub fn read(value: T) -> Change<T> {
        Change {
            value,
            txn: Txn::default(),
            undo: None,
            routing: false,
            names: false,
            before: Vec::new(),
            after: Vec::new(),
        }
    }

    /// A change stored by `txn`, undone in memory by `undo` if it cannot be.
    pub fn stored(value: T, txn: Txn, undo: impl FnOnce(&mut State) + Send + 'static) -> Change<T> {
        Change {
            value,
            txn,
            undo: Some(Box::new(undo)),
            routing: false,
            names: false,
            before: Vec::new(),
            after: Vec::new(),
        }
    }

    /// Marks the change as one that changes forwarding.
    pub fn routing(mut self) -> Change<T> {
        self.routing = true;
        self
    }

    /// Marks the change as one whose answer the DNS server must give before it
    /// returns.
    pub fn names(mut self) -> Change<T> {
        self.names = true;
        self
    }
}

impl Model {
    /// The write path; see the module documentation.
    pub(super) fn write<T>(&self, decide: impl FnOnce(&mut State) -> Result<Change<T>, Error>) -> Result<T, Error> {
        let (change, ticket) = {
            let mut st = self.state.lock();
            let mut change = decide(&mut st)?;
            for (i, op) in change.before.iter().enumerate() {
                if let Err(e) = self.kernel.apply(op) {
                    self.revert(&change.before[..i]);
                    if let Some(undo) = change.undo.take() {
                        undo(&mut st);
                    }
                    return Err(e.into());
                }
            }
            let ticket = (!change.txn.is_empty()).then(|| self.store.submit(std::mem::take(&mut change.txn)));
            if change.routing {
                self.announce(&st);
            }
            (change, ticket)
        };
        if let Some(t) = ticket {
            if let Err(e) = t.wait() {
                let mut st = self.state.lock();
                if let Some(undo) = change.undo {
                    undo(&mut st);
                }
                if change.routing {
                    self.announce(&st);
                }
                if change.names {
                    self.dns.publish(&st.records);
                }
                drop(st);
                self.revert(&change.before);
                return Err(Error::Store(e));
            }
        }
        // The change is durable from here on: what follows happens whether or not
        // every worker applies it in time, and a worker that does not is reported.
        if change.names {
            self.dns.publish(&self.state.lock().records);
        }
        let applied = if change.routing {
            let r = self.republish();
            self.peers.update(|t| t.hello_now(None));
            r.map(drop)
        } else {
            Ok(())
        };
        for op in &change.after {
            if let Err(e) = self.kernel.apply(op) {
                log::warn!("host: {e}");
            }
        }
        applied?;
        Ok(change.value)
    }

    /// Takes back host changes already made, last first.
    fn revert(&self, done: &[HostOp]) {
        for op in done.iter().rev() {
            if let Err(e) = self.kernel.apply(&op.inverse()) {
                log::warn!("host: reverting {op:?}: {e}");
            }
        }
    }
}
