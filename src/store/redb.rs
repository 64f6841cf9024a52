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

/// Runs `f`, turning a panic inside it (redb asserts on some damaged files) into an
/// error with its message, printed by no one.
fn without_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a check inside redb failed".into())
    })
}

impl RedbStore {
    /// The database file in `dir`.
    pub fn path(dir: &Path) -> std::path::PathBuf {
        dir.join("state.redb")
    }

    /// Opens (or creates) `<dir>/state.redb`, migrating an older layout. A file that
    /// is empty, damaged or no database at all is refused as [`StoreError::Damaged`],
    /// never opened as a new, empty state and never a panic.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = Self::path(dir);
        let damaged = |detail: String| StoreError::Damaged {
            path: path.display().to_string(),
            detail,
        };
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            return Err(damaged("it is empty: 0 bytes".into()));
        }
        match without_panics(|| Self::open_checked(&path)) {
            Ok(r) => r,
            Err(panic) => Err(damaged(panic)),
        }
    }

    fn open_checked(path: &Path) -> Result<RedbStore, StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            path: path.display().to_string(),
            detail,
        };
        let db = Database::create(path).map_err(|x| match x {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)) => damaged(m),
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                damaged(io.to_string())
            }
            redb::DatabaseError::UpgradeRequired(v) => damaged(format!("written by a newer redb, format {v}")),
            other => StoreError::Backend {
                what: "opening the database",
                message: format!("{}: {other}", path.display()),
            },
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
        // Every stored entry must read back (a damaged page shows here, at start,
        // rather than in the middle of a request).
        let store = RedbStore {
            db,
            revision,
            hub: Hub::new(revision),
        };
        store.range("").map_err(|x| damaged(x.to_string()))?;
        if migrated > 0 {
            log::info!(
                "state: {} converted to the revisioned layout ({migrated} entries)",
                path.display()
            );
        }
        Ok(store)
    }

    /// Verifies every page's checksum (redb's integrity check) of the database in
    /// `dir`, which no process may have open. Returns the entries and revision.
    pub fn check(dir: &Path) -> Result<(usize, Revision), StoreError> {
        let path = Self::path(dir);
        if !path.exists() {
            return Err(StoreError::Backend {
                what: "checking the state",
                message: format!("{} does not exist", path.display()),
            });
        }
        let mut s = Self::open(dir)?;
        let damaged = |detail: String| StoreError::Damaged {
            path: path.display().to_string(),
            detail,
        };
        match without_panics(|| s.db.check_integrity()) {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(damaged("its integrity check failed (and was repaired in place)".into())),
            Ok(Err(x)) => return Err(damaged(x.to_string())),
            Err(panic) => return Err(damaged(panic)),
        }
        let (entries, revision) = s.range("")?;
        Ok((entries.len(), revision))
    }

    /// Writes `entries` at `revision` as a new database in `dir` (which must not hold
    /// one): a backup, as `tunloom run --state-dir` can open it.
    pub fn create_from(dir: &Path, entries: &[Entry], revision: Revision) -> Result<(), StoreError> {
        let path = Self::path(dir);
        if path.exists() {
            return Err(StoreError::Backend {
                what: "writing a backup",
                message: format!("{} exists already", path.display()),
            });
        }
        let db = Database::create(&path).map_err(|x| err("creating the backup")(e(x)))?;
        let w = db.begin_write().map_err(|x| err("begin")(e(x)))?;
        {
            let mut kv = w.open_table(KV).map_err(|x| err("kv table")(e(x)))?;
            for en in entries {
                kv.insert(en.key.as_str(), (en.revision, en.value.as_str()))
                    .map_err(|x| err("write")(e(x)))?;
            }
            let mut meta = w.open_table(META).map_err(|x| err("store table")(e(x)))?;
            meta.insert(REVISION, revision)
                .map_err(|x| err("writing the revision")(e(x)))?;
        }
        w.commit().map_err(|x| err("commit")(e(x)))
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
    fn damaged_files_are_refused_by_name_never_opened_as_empty_nor_a_panic() {
        let d = dir("damaged");
        {
            let mut s = RedbStore::open(&d.0).unwrap();
            let txns: Vec<Txn> = (0..2000)
                .map(|i| Txn::ops(vec![super::super::Op::put(format!("allocations/{i}"), "12 c")]))
                .collect();
            s.commit(&txns).unwrap();
        }
        let path = RedbStore::path(&d.0);
        let good = std::fs::read(&path).unwrap();
        let mut header = good.clone();
        header[..4096].fill(0);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let garbage: Vec<u8> = (0..good.len())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("truncated", good[..good.len() / 3].to_vec()),
            ("header zeroed", header),
            ("garbage", garbage),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            match RedbStore::open(&d.0) {
                Err(StoreError::Damaged { path: p, detail }) => {
                    assert!(p.ends_with("state.redb"), "{what}: {p}");
                    eprintln!("{what}: {detail}");
                }
                Err(e) => panic!("{what}: not reported as damaged: {e}"),
                Ok(s) => panic!("{what}: opened, with {} entries", s.range("").unwrap().0.len()),
            }
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(RedbStore::check(&d.0).unwrap(), (2000, 2000));
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
