//! The model on a real redb store (restarts) and on the in-memory store, with a
//! recording host: durability, the write path's undo, and error kinds.

use super::*;
use crate::host::HostOp;
use crate::store::memory::MemoryStore;
use crate::store::redb::RedbStore;
use crate::testkit::{model_on, model_settings, TempDir};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

fn dir(tag: &str) -> TempDir {
    TempDir::new(&format!("model-{tag}"))
}

/// A model over 10.32.0.0/12 on the redb store in `d`, with `workers` workers that
/// never apply a snapshot, and peers waited for at most 100 ms.
fn open_workers(d: &Path, workers: usize, edit: impl FnOnce(&mut Settings)) -> Result<Model, OpenError> {
    let mut s = model_settings("10.32.0.0/12");
    s.sync_timeout = Duration::from_millis(100);
    edit(&mut s);
    Ok(model_on(s, RedbStore::open(d).unwrap(), workers)?.0)
}

fn open(d: &Path) -> Model {
    open_workers(d, 0, |_| {}).unwrap()
}

fn targets(m: &Model) -> BTreeSet<SocketAddr> {
    m.peers
        .snapshot()
        .iter()
        .filter(|p| p.target)
        .map(|p| p.control_addr)
        .collect()
}

#[test]
fn everything_comes_back_after_a_restart() {
    let d = dir("restart");
    {
        let m = open(&d.0);
        assert_eq!(
            m.allocate("c1", None, false).unwrap(),
            Allocation::Address(Ipv4Addr::new(10, 32, 0, 2), 12)
        );
        m.claim("c2", "10.32.0.9/12".parse().unwrap(), false).unwrap();
        m.allocate("c3", None, false).unwrap();
        assert_eq!(m.release("c3").unwrap(), 1);
        m.put_record("c1", "10.32.0.2".parse().unwrap(), "one.weave.local")
            .unwrap();
        m.connect(&["198.18.0.9:6783".parse().unwrap()], false).unwrap();
        m.expose("10.32.0.7/12".parse().unwrap()).unwrap();
    }
    let m = open(&d.0);
    assert_eq!(m.lookup("c1"), vec![(Ipv4Addr::new(10, 32, 0, 2), 12)]);
    assert_eq!(m.lookup("c2"), vec![(Ipv4Addr::new(10, 32, 0, 9), 12)]);
    assert!(m.lookup("c3").is_empty());
    assert_eq!(m.records()[0].fqdn, "one.weave.local.");
    assert_eq!(m.exposed(), vec!["10.32.0.7/12".parse::<IpNet>().unwrap()]);
    assert!(targets(&m).contains(&"198.18.0.9:6783".parse().unwrap()));
    // The same container gets the same address; a new one does not get a held one.
    assert_eq!(
        m.allocate("c1", None, false).unwrap(),
        Allocation::Address(Ipv4Addr::new(10, 32, 0, 2), 12)
    );
    let Allocation::Address(a, _) = m.allocate("c4", None, false).unwrap() else {
        panic!()
    };
    assert!(![2, 7, 9].contains(&a.octets()[3]) || a.octets()[2] != 0);
    // The exposed address is held in IPAM (and stays held across the restart):
    // claims of it are refused, exposing it again is fine.
    let e = m.claim("c5", "10.32.0.7/12".parse().unwrap(), false).unwrap_err();
    assert_eq!(e.kind(), Kind::Conflict, "{e}");
    assert!(m.expose("10.32.0.7/12".parse().unwrap()).is_ok());
    assert_eq!(m.lookup_all(EXPOSE_ID), vec![(Ipv4Addr::new(10, 32, 0, 7), 12)]);
    // The gateway may be exposed (Weave's `weave expose` takes it on a fresh
    // node): the host gets the address, tunloom still answers echo and DNS there.
    m.expose("10.32.0.1/12".parse().unwrap()).unwrap();
    assert!(m.exposed().contains(&"10.32.0.1/12".parse().unwrap()));
    assert!(m.service_addresses().contains(&"10.32.0.1".parse().unwrap()));
}

#[test]
fn performance_mode_is_unset_until_written_and_survives_a_restart() {
    let d = dir("perf");
    {
        let m = open(&d.0);
        assert_eq!(m.performance_mode(), None);
        m.set_performance_mode(false).unwrap();
        assert_eq!(m.performance_mode(), Some(false));
        // Writing the same value again is answered, and changes nothing.
        m.set_performance_mode(false).unwrap();
    }
    let m = open(&d.0);
    assert_eq!(m.performance_mode(), Some(false));
    m.set_performance_mode(true).unwrap();
    drop(m);
    assert_eq!(open(&d.0).performance_mode(), Some(true));
}

#[test]
fn a_changed_range_with_allocations_is_refused() {
    let d = dir("range");
    {
        let m = open(&d.0);
        m.allocate("c1", None, false).unwrap();
    }
    let e = open_workers(&d.0, 0, |s| {
        s.range = "10.64.0.0/12".parse().unwrap();
        s.default_subnet = s.range;
        s.blocks = vec![s.range];
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("10.32.0.0/12") && e.contains("10.64.0.0/12"), "{e}");
}

#[test]
fn a_worker_that_does_not_apply_a_change_is_named() {
    let d = dir("behind");
    let m = open_workers(&d.0, 1, |s| s.apply_timeout = Duration::from_millis(200)).unwrap();
    // Bookkeeping writes do not involve the workers.
    m.allocate("c1", None, false).unwrap();
    let t0 = std::time::Instant::now();
    let e = m.expose("10.32.0.50/12".parse().unwrap()).unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(200), "bounded wait");
    let Error::Behind(b) = e else { panic!("{e}") };
    assert_eq!(b.worker, 0);
    assert!(b.to_string().contains("worker 0 is behind"), "{b}");
    // The change itself is durable.
    assert_eq!(m.exposed(), vec!["10.32.0.50/12".parse::<IpNet>().unwrap()]);
}

#[test]
fn a_stuck_worker_does_not_keep_a_hidden_address_on_the_link() {
    let mut s = model_settings("10.32.0.0/12");
    s.apply_timeout = Duration::from_millis(50);
    let (m, host) = model_on(s, MemoryStore::default(), 1).unwrap();
    let net: IpNet = "10.32.0.50/12".parse().unwrap();
    assert_eq!(m.expose(net).unwrap_err().kind(), Kind::Behind);
    assert_eq!(m.hide().unwrap_err().kind(), Kind::Behind);
    assert_eq!(
        host.ops(),
        vec![HostOp::AddAddress(net), HostOp::DelAddress(net)],
        "the address comes off the link although the worker is behind"
    );
    assert!(m.lookup_all(EXPOSE_ID).is_empty());
}

#[test]
fn not_ready_until_every_worker_forwards_by_the_state() {
    let d = dir("ready");
    let m = open_workers(&d.0, 2, |_| {}).unwrap();
    assert!(!m.status().ready, "no worker has applied the first snapshot");
    let g = m.published.load().generation;
    m.published.mark_seen(0, g);
    assert!(!m.status().ready, "worker 1 still has not");
    m.published.mark_seen(1, g);
    assert!(m.status().ready);
}

#[test]
fn hiding_takes_exposed_addresses_back_and_frees_them() {
    let d = dir("hide");
    let m = open(&d.0);
    assert_eq!(m.release(EXPOSE_ID).unwrap_err().kind(), Kind::NotFound);
    m.expose("10.32.0.7/12".parse().unwrap()).unwrap();
    let e = m.claim("c1", "10.32.0.7/12".parse().unwrap(), false).unwrap_err();
    assert_eq!(e.kind(), Kind::Conflict);
    assert_eq!(m.release(EXPOSE_ID).unwrap(), 1);
    assert!(m.exposed().is_empty());
    assert!(m.lookup_all(EXPOSE_ID).is_empty());
    assert!(m.claim("c1", "10.32.0.7/12".parse().unwrap(), false).is_ok());
    drop(m);
    let m = open(&d.0);
    assert!(m.exposed().is_empty(), "hidden for good");
}

#[test]
fn concurrent_replacements_store_the_set_that_is_in_force() {
    let d = dir("replace-race");
    let in_force = {
        let m = Arc::new(open(&d.0));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..10u8 {
                        let set: Vec<SocketAddr> = (0..3u8)
                            .map(|k| SocketAddr::from(([198, 18, t, 10 + (i + k) % 7], 6783)))
                            .collect();
                        m.connect(&set, true).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        targets(&m)
    };
    assert_eq!(in_force.len(), 3, "{in_force:?}");
    let m = open(&d.0);
    assert_eq!(targets(&m), in_force, "the stored peer set is the one in force");
}

#[test]
fn errors_map_to_their_kinds() {
    let (m, host) = model_on(model_settings("10.32.0.0/12"), MemoryStore::default(), 0).unwrap();
    m.allocate("c1", None, false).unwrap();
    let kind = |r: Result<Allocation, Error>| r.unwrap_err().kind();
    assert_eq!(
        kind(m.claim("c2", "10.32.0.2/12".parse().unwrap(), false)),
        Kind::Conflict
    );
    assert_eq!(
        kind(m.claim("c2", "10.32.0.1/12".parse().unwrap(), false)),
        Kind::Invalid
    );
    assert_eq!(
        kind(m.claim("c2", "10.99.0.1/12".parse().unwrap(), false)),
        Kind::Invalid
    );
    assert_eq!(kind(m.allocate("a b", None, false)), Kind::Invalid);
    assert_eq!(m.release("nobody").unwrap_err().kind(), Kind::NotFound);
    assert_eq!(
        m.delete_records("c1", "10.32.0.2".parse().unwrap(), None)
            .unwrap_err()
            .kind(),
        Kind::NotFound
    );
    assert_eq!(
        m.put_record("c1", "10.32.0.2".parse().unwrap(), "bad..name")
            .unwrap_err()
            .kind(),
        Kind::Invalid
    );
    assert_eq!(
        m.allocate("not-a-netns-here", None, true).unwrap(),
        Allocation::Cancelled,
        "check-alive: the host knows no such container"
    );
    host.add_alive("c9");
    assert!(matches!(m.allocate("c9", None, true), Ok(Allocation::Address(..))));
    assert_eq!(m.remove_peer("ghost").unwrap_err().kind(), Kind::NotFound);
}

#[test]
fn exposing_changes_the_link_before_announcing_and_hiding_after_withdrawing() {
    let mut s = model_settings("10.32.0.0/12");
    s.blocks = vec!["10.32.0.0/13".parse().unwrap()];
    let (m, host) = model_on(s, MemoryStore::default(), 0).unwrap();
    let announced = |m: &Model, p: &str| {
        let p: IpNet = p.parse().unwrap();
        m.peers.read(|t| t.announced().iter().any(|a| a.prefix == p))
    };
    // Inside a block this node owns (and announces): no host route of its own.
    let inside: IpNet = "10.32.0.7/12".parse().unwrap();
    m.expose(inside).unwrap();
    assert!(!announced(&m, "10.32.0.7/32") && announced(&m, "10.32.0.0/13"));
    // Outside it: announced as a host route.
    let outside: IpNet = "10.40.0.7/12".parse().unwrap();
    m.expose(outside).unwrap();
    assert!(announced(&m, "10.40.0.7/32"));
    assert_eq!(
        host.ops(),
        vec![HostOp::AddAddress(inside), HostOp::AddAddress(outside)]
    );
    m.hide().unwrap();
    assert!(!announced(&m, "10.40.0.7/32"));
    assert_eq!(
        host.ops()[2..],
        [HostOp::DelAddress(inside), HostOp::DelAddress(outside)]
    );
    // A kernel that refuses: nothing is exposed, stored, announced or held.
    host.refuse(true);
    let e = m.expose(outside).unwrap_err();
    assert_eq!(e.kind(), Kind::Unavailable, "{e}");
    assert!(m.exposed().is_empty() && !announced(&m, "10.40.0.7/32") && m.lookup_all(EXPOSE_ID).is_empty());
}

#[test]
fn the_store_refuses_to_record_one_address_twice() {
    let store = MemoryStore::default();
    // Another writer (a second node on a shared store, say) took 10.32.0.2 behind
    // this model's back.
    let (m, _) = model_on(model_settings("10.32.0.0/12"), store.clone(), 0).unwrap();
    let mut other = store.clone();
    crate::store::Store::commit(
        &mut other,
        &[Txn::ops(vec![Row::Allocation {
            ip: "10.32.0.2".parse().unwrap(),
            prefix: 12,
            container: "elsewhere".into(),
        }
        .put()])],
    )
    .unwrap();
    let e = m.allocate("c1", None, false).unwrap_err();
    assert_eq!(e.kind(), Kind::Conflict, "{e}");
    assert!(m.lookup("c1").is_empty(), "undone in memory");
    // The next allocation moves on to a free address.
    assert_eq!(
        m.allocate("c1", None, false).unwrap(),
        Allocation::Address(Ipv4Addr::new(10, 32, 0, 3), 12)
    );
}

/// A memory store whose commits take `delay`, as a slow disk's would.
#[derive(Clone)]
struct Slow(MemoryStore, Duration);

impl Store for Slow {
    fn range(
        &self,
        prefix: &str,
    ) -> Result<(Vec<crate::store::Entry>, crate::store::Revision), crate::store::StoreError> {
        self.0.range(prefix)
    }
    fn commit(&mut self, txns: &[Txn]) -> Result<Vec<crate::store::Outcome>, crate::store::StoreError> {
        std::thread::sleep(self.1);
        self.0.commit(txns)
    }
    fn watch(
        &self,
        prefix: &str,
        after: crate::store::Revision,
    ) -> Result<crate::store::Watch, crate::store::StoreError> {
        self.0.watch(prefix, after)
    }
}

#[test]
fn a_repeated_request_is_answered_only_once_the_first_is_durable() {
    let store = MemoryStore::default();
    let (m, _) = model_on(
        model_settings("10.32.0.0/12"),
        Slow(store.clone(), Duration::from_millis(300)),
        0,
    )
    .unwrap();
    let m = Arc::new(m);
    // Another writer holds 10.32.0.2 on disk, so c1's first allocation of it will
    // conflict — but only once its slow commit is evaluated.
    let mut other = store.clone();
    crate::store::Store::commit(
        &mut other,
        &[Txn::ops(vec![Row::Allocation {
            ip: "10.32.0.2".parse().unwrap(),
            prefix: 12,
            container: "elsewhere".into(),
        }
        .put()])],
    )
    .unwrap();
    let first = {
        let m = m.clone();
        std::thread::spawn(move || m.allocate("c1", None, false))
    };
    // The repeat arrives while the first is in flight: in memory, c1 holds .2.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(m.lookup("c1"), vec![(Ipv4Addr::new(10, 32, 0, 2), 12)]);
    let repeat = m.allocate("c1", None, false);
    assert_eq!(first.join().unwrap().unwrap_err().kind(), Kind::Conflict);
    assert_eq!(
        repeat.map_err(|e| e.kind()),
        Err(Kind::Conflict),
        "the repeat was not answered with an address that was never stored"
    );
    assert!(m.lookup("c1").is_empty());
}
