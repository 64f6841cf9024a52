//! Peering: which peers this node says hello to (`connect`, stored so it survives a
//! restart) and removing a peer, which takes over the IPAM blocks it owned. The
//! protocol itself runs on the peers' control thread; here the model changes the
//! peer table and waits, bounded, until the peers answer.

use super::schema::Row;
use super::txn::Change;
use super::{Error, Model};
use crate::peers::Peer;
use crate::store::Txn;
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeSet;
use std::net::SocketAddr;

impl Model {
    /// Connects to `addrs` (replacing every other target with `replace`), and waits,
    /// at most the sync timeout, until each answers and both sides forward by each
    /// other's state. Returns the peers that did not get there in time.
    pub fn connect(&self, addrs: &[SocketAddr], replace: bool) -> Result<Vec<SocketAddr>, Error> {
        let set_guard = self.peer_set.lock();
        let before: BTreeSet<SocketAddr> = self
            .peers
            .snapshot()
            .iter()
            .filter(|p| p.target)
            .map(|p| p.control_addr)
            .collect();
        let wanted: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
        let mut ops: Vec<_> = wanted.difference(&before).map(|a| Row::Peer(*a).put()).collect();
        if replace {
            ops.extend(before.difference(&wanted).map(|a| Row::Peer(*a).delete()));
        }
        // Only the peer table changes; persist first, then act.
        self.write(|_| Ok(Change::stored((), Txn::ops(ops), |_| {})))?;
        self.peers.update(|t| t.set_targets(addrs, replace));
        if replace {
            // Peers no longer targeted are gone from the table: their routes go now,
            // not at expiry.
            self.republish()?;
        }
        drop(set_guard);
        let state = self.peers.read(|t| t.state());
        let settled = |t: &[Peer], a: &SocketAddr| t.iter().any(|p| p.control_addr == *a && p.settled(state));
        self.peers
            .wait(self.settings.sync_timeout, |t| addrs.iter().all(|a| settled(t, a)));
        let table = self.peers.snapshot();
        Ok(addrs.iter().filter(|a| !settled(&table, a)).copied().collect())
    }

    /// Removes a peer and takes over the IPAM blocks it owned. Returns the number of
    /// addresses taken over.
    pub fn remove_peer(&self, who: &str) -> Result<u64, Error> {
        let _set_guard = self.peer_set.lock();
        let p = self
            .peers
            .update(|t| t.remove(who))
            .ok_or_else(|| Error::NoPeer(who.to_string()))?;
        let blocks: Vec<Ipv4Net> = p
            .prefixes
            .iter()
            .filter(|a| a.block)
            .filter_map(|a| match a.prefix {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .collect();
        let addr = p.control_addr;
        let r = self.write(move |st| {
            let mut ops = vec![Row::Peer(addr).delete()];
            let mut taken = 0u64;
            for b in blocks {
                if st.ipam.range().contains(&b) && !st.ipam.owned().iter().any(|o| o.contains(&b)) {
                    st.ipam.add_owned(b)?;
                    st.taken.push(b);
                    ops.push(Row::Block(b).put());
                    taken += 1u64 << (32 - b.prefix_len());
                }
            }
            // No undo of the IPAM side: a failed commit fails the store for good
            // (every later write is refused, /status says 503) and a restart reloads
            // what is on disk, where the peer still is.
            Ok(Change {
                undo: None,
                ..Change::stored(taken, Txn::ops(ops), |_| {})
            }
            .routing())
        });
        if let Err(Error::Store(_)) = &r {
            self.peers.update(|t| t.put_back(p));
        }
        r
    }
}
