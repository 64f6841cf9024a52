//! A store that keeps everything in memory: for tests, benchmarks and fuzz targets
//! that exercise the model rather than durability. It follows the same transaction
//! and watch rules as the durable backends (the conformance suite checks it), and
//! [`MemoryStore::reopen`] stands for a restart: the data stays, the watch history
//! does not.

use super::watch::Hub;
use super::{apply_batch, Entry, KvWrite, Outcome, Revision, Store, StoreError, Txn, Watch};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Default)]
struct Data {
    rows: BTreeMap<String, (String, Revision)>,
    revision: Revision,
}

impl KvWrite for Data {
    fn get(&mut self, key: &str) -> Result<Option<(String, Revision)>, StoreError> {
        Ok(self.rows.get(key).cloned())
    }
    fn put(&mut self, key: &str, value: &str, revision: Revision) -> Result<(), StoreError> {
        self.rows.insert(key.to_string(), (value.to_string(), revision));
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(self.rows.remove(key).is_some())
    }
}

/// An in-memory store. Clones share the data.
#[derive(Clone)]
pub struct MemoryStore {
    data: Arc<Mutex<Data>>,
    hub: Arc<Hub>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            data: Arc::default(),
            hub: Arc::new(Hub::new(0)),
        }
    }
}

impl MemoryStore {
    /// The same data as after a restart: watches start afresh at the current revision.
    pub fn reopen(&self) -> MemoryStore {
        MemoryStore {
            data: self.data.clone(),
            hub: Arc::new(Hub::new(self.data.lock().revision)),
        }
    }
}

impl Store for MemoryStore {
    fn range(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let d = self.data.lock();
        let rows = d
            .rows
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| Entry {
                key: k.clone(),
                value: v.clone(),
                revision: *r,
            })
            .collect();
        Ok((rows, d.revision))
    }

    fn commit(&mut self, txns: &[Txn]) -> Result<Vec<Outcome>, StoreError> {
        let mut d = self.data.lock();
        // Memory writes cannot fail, so the batch never stops part-way.
        let start = d.revision;
        let applied = apply_batch(&mut *d, start, txns)?;
        d.revision = applied.revision;
        self.hub.publish(applied.events);
        Ok(applied.outcomes)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let current = self.data.lock().revision;
        self.hub.watch(prefix, after, current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_conforms() {
        let m = MemoryStore::default();
        super::super::conformance::run(|| m.reopen());
    }
}
