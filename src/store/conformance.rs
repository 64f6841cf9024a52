//! The behaviour every [`Store`] backend must show: revisions, compare-and-swap
//! conflicts, prefix ranges, watches (live, from the past, and refused once history
//! is gone) and durability across a reopen. Each backend's tests call [`run`] with a
//! function that opens the same store again (a reopen stands for a restart).

use super::{Compare, Event, Op, Outcome, Revision, Store, StoreError, Txn};
use std::time::Duration;

fn put(k: &str, v: &str) -> Txn {
    Txn::ops(vec![Op::put(k, v)])
}

fn values<S: Store>(s: &S, prefix: &str) -> Vec<(String, String, Revision)> {
    s.range(prefix)
        .unwrap()
        .0
        .into_iter()
        .map(|e| (e.key, e.value, e.revision))
        .collect()
}

fn next(w: &super::Watch) -> Event {
    w.next_timeout(Duration::from_secs(2))
        .expect("the watch is alive")
        .expect("an event within 2 s")
}

/// Runs the suite. `open` must return the same store each time it is called, as a
/// restarted process would find it.
pub fn run<S: Store>(mut open: impl FnMut() -> S) {
    let mut s = open();
    let (all, rev) = s.range("").unwrap();
    assert!(all.is_empty() && rev == 0, "a new store is empty at revision 0");

    // Revisions: one per applied transaction, shared by its operations.
    let out = s
        .commit(&[
            Txn::ops(vec![Op::put("a/1", "one"), Op::put("a/2", "two")]),
            put("ab/1", "not under a/"),
        ])
        .unwrap();
    assert_eq!(out, vec![Outcome::Applied(1), Outcome::Applied(2)]);
    assert_eq!(
        values(&s, "a/"),
        vec![("a/1".into(), "one".into(), 1), ("a/2".into(), "two".into(), 1)],
        "a prefix range holds only its keys"
    );
    assert_eq!(s.range("").unwrap().1, 2);

    // Compare-and-swap: a transaction whose comparison fails changes nothing, and the
    // others in the same batch still apply, seeing what came before them.
    let watch = s.watch("a/", 2).unwrap();
    let out = s
        .commit(&[
            Txn {
                compare: vec![Compare::Absent("a/1".into())],
                ops: vec![Op::put("a/1", "clobbered")],
            },
            Txn {
                compare: vec![
                    Compare::Revision("a/1".into(), 1),
                    Compare::Value("a/2".into(), "two".into()),
                ],
                ops: vec![Op::put("a/1", "uno"), Op::delete("a/2")],
            },
            Txn {
                compare: vec![Compare::Present("a/2".into())],
                ops: vec![Op::put("a/3", "three")],
            },
            Txn {
                compare: vec![Compare::Absent("a/2".into()), Compare::Revision("a/1".into(), 3)],
                ops: vec![Op::put("a/3", "tres"), Op::delete("a/missing")],
            },
        ])
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Conflict(0),
            Outcome::Applied(3),
            Outcome::Conflict(0),
            Outcome::Applied(4)
        ]
    );
    assert_eq!(
        values(&s, "a/"),
        vec![("a/1".into(), "uno".into(), 3), ("a/3".into(), "tres".into(), 4)]
    );
    // A stale revision or a changed value is a conflict too.
    let out = s
        .commit(&[
            Txn {
                compare: vec![Compare::Revision("a/1".into(), 1)],
                ops: vec![Op::put("a/1", "stale")],
            },
            Txn {
                compare: vec![Compare::Value("a/3".into(), "three".into())],
                ops: vec![Op::delete("a/3")],
            },
        ])
        .unwrap();
    assert_eq!(out, vec![Outcome::Conflict(0), Outcome::Conflict(0)]);
    assert_eq!(s.range("").unwrap().1, 4, "conflicts take no revision");

    // The watch saw exactly the applied changes under a/, in order; deleting a key
    // that was not there is no event.
    let seen: Vec<(String, Revision, bool)> = (0..3)
        .map(|_| {
            let e = next(&watch);
            (e.key().to_string(), e.revision(), matches!(e, Event::Put { .. }))
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a/1".into(), 3, true),
            ("a/2".into(), 3, false),
            ("a/3".into(), 4, true)
        ]
    );
    assert!(watch.drain().is_empty());

    // A watch may start in the past while the history is kept, and then goes on live.
    let from_past = s.watch("a/", 3).unwrap();
    assert_eq!(next(&from_past).revision(), 4);
    s.commit(&[put("a/4", "four"), put("b/1", "elsewhere")]).unwrap();
    let e = next(&from_past);
    assert_eq!((e.key(), e.revision()), ("a/4", 5));
    assert_eq!(next(&watch).key(), "a/4");
    assert!(from_past.drain().is_empty(), "other prefixes are not delivered");
    // An empty batch and an empty transaction change nothing.
    assert!(s.commit(&[]).unwrap().is_empty());
    assert_eq!(s.commit(&[Txn::default()]).unwrap(), vec![Outcome::Applied(6)]);
    drop((watch, from_past));
    drop(s);

    // After a restart: everything and the revision are still there; history from
    // before it is not, and saying so is an error, not silence.
    let mut s = open();
    assert_eq!(s.range("").unwrap().1, 6);
    assert_eq!(
        values(&s, "a/"),
        vec![
            ("a/1".into(), "uno".into(), 3),
            ("a/3".into(), "tres".into(), 4),
            ("a/4".into(), "four".into(), 5)
        ]
    );
    assert_eq!(values(&s, "b/"), vec![("b/1".into(), "elsewhere".into(), 6)]);
    assert!(matches!(
        s.watch("a/", 2),
        Err(StoreError::Compacted { requested: 2, .. })
    ));
    let w = s.watch("", 6).unwrap();
    let out = s
        .commit(&[Txn {
            compare: vec![Compare::Revision("a/1".into(), 3)],
            ops: vec![Op::delete("a/1")],
        }])
        .unwrap();
    assert_eq!(out, vec![Outcome::Applied(7)]);
    assert_eq!(
        next(&w),
        Event::Delete {
            key: "a/1".into(),
            revision: 7
        }
    );
}
