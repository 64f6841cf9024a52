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
        for a in addrs {
            self.check_peer_address(a)?;
        }
        let set_guard = self.peer_set.lock();
        let before: BTreeSet<SocketAddr> = self
            .peers
            .snapshot()
            .iter()
            .filter(|p| p.target)
            .map(|p| p.control_addr)
            .collect();
        let wanted: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
        let known = self.peers.read(|t| t.peers().len());
        let after = if replace {
            wanted.len()
        } else {
            known + wanted.difference(&before).count()
        };
        if after > self.settings.max_peers {
            return Err(Error::TooManyPeers {
                wanted: after,
                max: self.settings.max_peers,
            });
        }
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

    /// Refuses a peer address that cannot be a peer: no unicast address or port,
    /// inside the overlay (traffic to it would go into the tunnel it is to carry), or
    /// this node's own.
    fn check_peer_address(&self, a: &SocketAddr) -> Result<(), Error> {
        let ip = a.ip();
        let why = if ip.is_unspecified() {
            Some("unspecified")
        } else if ip.is_multicast() || matches!(ip, std::net::IpAddr::V4(v) if v.is_broadcast()) {
            Some("a multicast or broadcast address")
        } else if a.port() == 0 {
            Some("on port 0")
        } else if self.settings.overlay.iter().any(|o| o.contains(&ip)) {
            Some("inside the overlay; a peer is reached over the underlay")
        } else if self.kernel.is_local(ip) {
            Some("an address of this node itself")
        } else {
            None
        };
        match why {
            Some(why) => Err(Error::BadPeer { addr: *a, why }),
            None => Ok(()),
        }
    }

    /// Removes a peer that is down and takes over the IPAM blocks it owned. Returns
    /// the number of addresses taken over. A peer that is up is refused: taking over
    /// its space while it allocates from it would hand out addresses twice.
    pub fn remove_peer(&self, who: &str) -> Result<u64, Error> {
        let _set_guard = self.peer_set.lock();
        let p = self
            .peers
            .update(|t| match t.find(who).map(|p| (p.up, p.name.clone())) {
                Some((true, name)) => Err(Error::PeerUp(name)),
                Some((false, _)) => Ok(t.remove(who)),
                None => Ok(None),
            })?
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
                    // A block this node gave up to that peer is its own again.
                    for y in st.yielded.iter().filter(|y| b.contains(*y)) {
                        ops.push(Row::Yielded(*y).delete());
                    }
                    st.yielded.retain(|y| !b.contains(y));
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

impl Model {
    /// After peers changed what they announce: gives up any IPAM block of this node
    /// that a peer up now owns by an older claim (it took the block over while this
    /// node was away), so that no address is handed out by both; then publishes the
    /// new state. The peers' thread calls this for every change.
    pub fn peers_changed(&self) -> Result<u64, crate::snapshot::Behind> {
        let (mine, theirs) = self.peers.read(|t| {
            let mine: Vec<(Ipv4Net, u64)> = t
                .announced()
                .iter()
                .filter(|a| a.block)
                .filter_map(|a| match a.prefix {
                    IpNet::V4(n) => Some((n, a.version)),
                    IpNet::V6(_) => None,
                })
                .collect();
            let theirs: Vec<(String, Ipv4Net, u64)> = t
                .peers()
                .iter()
                .filter(|p| p.up)
                .flat_map(|p| {
                    p.prefixes.iter().filter(|a| a.block).filter_map(|a| match a.prefix {
                        IpNet::V4(n) => Some((p.name.clone(), n, a.version)),
                        IpNet::V6(_) => None,
                    })
                })
                .collect();
            (mine, theirs)
        });
        let lost: Vec<(Ipv4Net, String)> = mine
            .iter()
            .filter_map(|(m, mv)| {
                theirs
                    .iter()
                    .find(|(_, b, bv)| (b.contains(m) || m.contains(b)) && bv < mv)
                    .map(|(who, b, _)| (if m.contains(b) { *b } else { *m }, who.clone()))
            })
            .collect();
        if !lost.is_empty() {
            let yielded = self.write(|st| {
                let mut ops = Vec::new();
                for (b, who) in &lost {
                    if st.ipam.remove_owned(*b) {
                        log::error!(
                            "IPAM: peer {who} owns {b} by an older claim (it took the block over while this node was away); \
                             no more addresses are allocated from it here, those already allocated stay"
                        );
                        st.yielded.push(*b);
                        st.taken.retain(|t| !b.contains(t));
                        ops.push(Row::Yielded(*b).put());
                        ops.push(Row::Block(*b).delete());
                    }
                }
                // Given up for good: a restart must not take the block back.
                Ok(super::txn::Change {
                    undo: None,
                    ..super::txn::Change::stored(ops.len(), Txn::ops(ops), |_| {})
                }
                .routing())
            });
            match yielded {
                // The write published and waited for the workers already.
                Ok(_) => return Ok(self.published.load().generation),
                Err(super::Error::Behind(b)) => return Err(b),
                Err(e) => log::error!("IPAM: giving up blocks could not be stored: {e}"),
            }
        }
        self.republish()
    }
}
