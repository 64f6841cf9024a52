//! The embedded store: one redb database (`state.redb`) in the state directory. Each
//! batch of operations is one write transaction, committed with redb's default
//! durability (fsync before `commit` returns), so an acknowledged write survives
//! `kill -9` and power loss.

use super::{Contents, Op, Store, StoreError, Table};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

fn def(t: Table) -> TableDefinition<'static, &'static str, &'static str> {
    TableDefinition::new(t.name())
}

fn err(what: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) `<dir>/state.redb`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| StoreError(format!("opening {}: {e}", path.display())))?;
        // Create every table once, so reads never meet a missing one.
        let w = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        for t in Table::ALL {
            w.open_table(def(t))
                .map_err(|e| err("creating tables")(e.to_string()))?;
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Contents, StoreError> {
        let r = self.db.begin_read().map_err(|e| err("begin read")(e.to_string()))?;
        let mut out = Contents::new();
        for t in Table::ALL {
            let table = r.open_table(def(t)).map_err(|e| err(t.name())(e.to_string()))?;
            let rows = out.entry(t).or_default();
            for row in table.iter().map_err(|e| err(t.name())(e.to_string()))? {
                let (k, v) = row.map_err(|e| err(t.name())(e.to_string()))?;
                rows.insert(k.value().to_string(), v.value().to_string());
            }
        }
        Ok(out)
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            let mut open = std::collections::BTreeMap::new();
            for op in ops {
                let t = match op {
                    Op::Put { table, .. } | Op::Delete { table, .. } => *table,
                };
                let table = match open.entry(t) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(w.open_table(def(t)).map_err(|e| err(t.name())(e.to_string()))?)
                    }
                };
                match op {
                    Op::Put { key, value, .. } => {
                        table
                            .insert(key.as_str(), value.as_str())
                            .map_err(|e| err(t.name())(e.to_string()))?;
                    }
                    Op::Delete { key, .. } => {
                        table.remove(key.as_str()).map_err(|e| err(t.name())(e.to_string()))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| err("commit")(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_store_conforms_and_persists_across_opens() {
        let dir = std::env::temp_dir().join(format!("tunloom-redb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        super::super::conformance(|| RedbStore::open(&dir).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
