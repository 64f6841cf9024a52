//! The embedded store: one redb database (`state.redb`) in the state directory. Each
//! batch of transactions is one redb write transaction, committed with redb's
//! default durability (fsync before `commit` returns), so an acknowledged write
//! survives `kill -9` and power loss.
//!
//! Layout: table `kv` maps each key to (revision that last wrote it, value); table
//! `store` holds the store's own revision. A database written by tunloom before
//! revisions existed (one `&str → &str` table per kind of record) is migrated on
//! open, in one transaction: each such table `T` becomes the keys `T/<key>` at
//! revision 1. This module touches only the database file it is given.

use super::watch::Hub;
use super::{apply_batch, Entry, KvWrite, Outcome, Revision, Store, StoreError, Txn, Watch};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::path::Path;

const KV: TableDefinition<'static, &'static str, (u64, &'static str)> = TableDefinition::new("kv");
const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("store");
const REVISION: &str = "revision";

fn err(what: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Backend {
        what,
        message: e.to_string(),
    }
}

/// Lifts any of redb's error types into [`redb::Error`] for [`err`].
fn e<E: Into<redb::Error>>(x: E) -> redb::Error {
    x.into()
}

pub struct RedbStore {
    db: Database,
    revision: Revision,
    hub: Hub,
}

impl RedbStore {
    /// Opens (or creates) `<dir>/state.redb`, migrating an older layout.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|x| StoreError::Backend {
            what: "opening the database",
            message: format!("{}: {x}", path.display()),
        })?;
        let w = db.begin_write().map_err(|x| err("begin")(e(x)))?;
        let migrated = migrate(&w)?;
        let revision = {
            let mut meta = w.open_table(META).map_err(|x| err("store table")(e(x)))?;
            w.open_table(KV).map_err(|x| err("kv table")(e(x)))?;
            let mut rev = meta
                .get(REVISION)
                .map_err(|x| err("reading the revision")(e(x)))?
                .map_or(0, |v| v.value());
            if migrated > 0 && rev == 0 {
                rev = 1;
                meta.insert(REVISION, rev)
                    .map_err(|x| err("writing the revision")(e(x)))?;
            }
            rev
        };
        w.commit().map_err(|x| err("commit")(e(x)))?;
        if migrated > 0 {
            log::info!(
                "state: {} converted to the revisioned layout ({migrated} entries)",
                path.display()
            );
        }
        Ok(RedbStore {
            db,
            revision,
            hub: Hub::new(revision),
        })
    }
}

/// Moves every table of the old layout (string keys and values, one table per kind
/// of record) into `kv` as `<table>/<key>` at revision 1. Returns the entries moved.
fn migrate(w: &redb::WriteTransaction) -> Result<usize, StoreError> {
    let legacy: Vec<String> = w
        .list_tables()
        .map_err(|x| err("listing tables")(e(x)))?
        .map(|t| t.name().to_string())
        .filter(|n| n != KV.name() && n != META.name())
        .collect();
    let mut moved = 0;
    for name in legacy {
        let def: TableDefinition<&str, &str> = TableDefinition::new(&name);
        let rows: Vec<(String, String)> = {
            let t = w.open_table(def).map_err(|x| err("reading an old table")(e(x)))?;
            let mut rows = Vec::new();
            for row in t.iter().map_err(|x| err("reading an old table")(e(x)))? {
                let (k, v) = row.map_err(|x| err("reading an old table")(e(x)))?;
                rows.push((format!("{name}/{}", k.value()), v.value().to_string()));
            }
            rows
        };
        let mut kv = w.open_table(KV).map_err(|x| err("kv table")(e(x)))?;
        for (k, v) in &rows {
            kv.insert(k.as_str(), (1, v.as_str()))
                .map_err(|x| err("migrating")(e(x)))?;
        }
        drop(kv);
        w.delete_table(def).map_err(|x| err("dropping an old table")(e(x)))?;
        moved += rows.len();
    }
    Ok(moved)
}

struct Writer<'a>(redb::Table<'a, &'static str, (u64, &'static str)>);

impl KvWrite for Writer<'_> {
    fn get(&mut self, key: &str) -> Result<Option<(String, Revision)>, StoreError> {
        Ok(self.0.get(key).map_err(|x| err("read")(e(x)))?.map(|g| {
            let (rev, v) = g.value();
            (v.to_string(), rev)
        }))
    }
    fn put(&mut self, key: &str, value: &str, revision: Revision) -> Result<(), StoreError> {
        self.0
            .insert(key, (revision, value))
            .map_err(|x| err("write")(e(x)))
            .map(drop)
    }
    fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        Ok(self.0.remove(key).map_err(|x| err("delete")(e(x)))?.is_some())
    }
}

impl Store for RedbStore {
    fn range(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let r = self.db.begin_read().map_err(|x| err("begin read")(e(x)))?;
        let t = r.open_table(KV).map_err(|x| err("kv table")(e(x)))?;
        let mut out = Vec::new();
        for row in t.range(prefix..).map_err(|x| err("range")(e(x)))? {
            let (k, v) = row.map_err(|x| err("range")(e(x)))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (revision, value) = v.value();
            out.push(Entry {
                key: key.to_string(),
                value: value.to_string(),
                revision,
            });
        }
        Ok((out, self.revision))
    }

    fn commit(&mut self, txns: &[Txn]) -> Result<Vec<Outcome>, StoreError> {
        let w = self.db.begin_write().map_err(|x| err("begin")(e(x)))?;
        let applied = {
            let mut kv = Writer(w.open_table(KV).map_err(|x| err("kv table")(e(x)))?);
            apply_batch(&mut kv, self.revision, txns)?
        };
        if applied.revision != self.revision {
            let mut meta = w.open_table(META).map_err(|x| err("store table")(e(x)))?;
            meta.insert(REVISION, applied.revision)
                .map_err(|x| err("writing the revision")(e(x)))?;
        }
        // Dropping `w` on an error above aborts the transaction: nothing is applied.
        w.commit().map_err(|x| err("commit")(e(x)))?;
        self.revision = applied.revision;
        self.hub.publish(applied.events);
        Ok(applied.outcomes)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        self.hub.watch(prefix, after, self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> crate::testkit::TempDir {
        crate::testkit::TempDir::new(&format!("redb-{tag}"))
    }

    #[test]
    fn redb_store_conforms_and_persists_across_opens() {
        let d = dir("conformance");
        super::super::conformance::run(|| RedbStore::open(&d.0).unwrap());
    }

    #[test]
    fn the_layout_before_revisions_is_migrated_once() {
        let d = dir("migrate");
        {
            let db = Database::create(d.0.join("state.redb")).unwrap();
            let w = db.begin_write().unwrap();
            for (table, key, value) in [
                ("allocations", "10.32.0.2", "12 c1"),
                ("meta", "domain", "weave.local."),
                ("peers", "198.18.0.2:6783", ""),
            ] {
                let def: TableDefinition<&str, &str> = TableDefinition::new(table);
                w.open_table(def).unwrap().insert(key, value).unwrap();
            }
            w.commit().unwrap();
        }
        let s = RedbStore::open(&d.0).unwrap();
        let (all, rev) = s.range("").unwrap();
        assert_eq!(rev, 1);
        let keys: Vec<(&str, &str, Revision)> = all
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.revision))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("allocations/10.32.0.2", "12 c1", 1),
                ("meta/domain", "weave.local.", 1),
                ("peers/198.18.0.2:6783", "", 1),
            ]
        );
        drop(s);
        let s = RedbStore::open(&d.0).unwrap();
        assert_eq!(s.range("").unwrap(), (all, 1), "a second open changes nothing");
    }
}
