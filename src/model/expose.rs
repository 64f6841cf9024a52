//! Exposed addresses: overlay addresses the host itself gets (Weave's `expose`), put
//! on the TUN link, announced to peers, and held in IPAM under `weave:expose` so no
//! container is ever handed one. `hide` takes back every address exposed through
//! the API; the configured ones stay.

use super::ipam::{gateway, EXPOSE_ID};
use super::schema::Row;
use super::txn::Change;
use super::{Error, Model, State};
use crate::host::HostOp;
use crate::store::Txn;
use ipnet::IpNet;
use std::net::IpAddr;

impl Model {
    /// Puts `cidr` on the TUN device and announces it; waits until the peers that are
    /// up forward by it. Returns the peers that did not get there in time.
    pub fn expose(&self, cidr: IpNet) -> Result<Vec<String>, Error> {
        self.check_exposable(&cidr)?;
        self.write(|st| {
            if let IpAddr::V4(a) = cidr.addr() {
                if let Some(holder) = st.ipam.holder(a).filter(|h| *h != EXPOSE_ID) {
                    return Err(Error::Held {
                        addr: a,
                        holder: holder.to_string(),
                    });
                }
            }
            if st.exposed.contains(&cidr) {
                return Ok(Change::guarded((), Row::Exposed(cidr).stored()));
            }
            st.exposed.push(cidr);
            // Held in IPAM, so no container is ever handed the host's address.
            let mut held = None;
            if let IpAddr::V4(a) = cidr.addr() {
                // The gateway is never handed out, so it needs no holding.
                if st.ipam.range().contains(&a) && st.ipam.holder(a).is_none() && a != gateway(&st.default_subnet) {
                    st.ipam.restore(EXPOSE_ID, a, cidr.prefix_len())?;
                    held = Some(a);
                }
            }
            let txn = Txn::ops(vec![Row::Exposed(cidr).put()]);
            let mut change = Change::stored((), txn, move |st: &mut State| {
                st.exposed.retain(|e| *e != cidr);
                if let Some(a) = held {
                    st.ipam.release_one(EXPOSE_ID, a);
                }
            })
            .routing();
            // On the link before anyone is told to send to it.
            change.before.push(HostOp::AddAddress(cidr));
            Ok(change)
        })?;
        Ok(self.wait_peers_acked())
    }

    /// Refuses what would cut the overlay: an address that is no unicast host
    /// address, a prefix reaching outside the overlay (the kernel routes the whole
    /// prefix into the TUN device), a peer's underlay address, or an address the host
    /// already has elsewhere.
    fn check_exposable(&self, cidr: &IpNet) -> Result<(), Error> {
        let a = cidr.addr();
        let why = if cidr.prefix_len() == 0 {
            Some("a default route")
        } else if a.is_unspecified() {
            Some("the unspecified address")
        } else if a.is_loopback() {
            Some("a loopback address")
        } else if a.is_multicast() {
            Some("a multicast address")
        } else if matches!(a, IpAddr::V4(v) if v.is_broadcast()) {
            Some("the broadcast address")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::Unroutable { net: *cidr, why });
        }
        let peer = self.peers.read(|t| {
            t.peers()
                .iter()
                .find(|p| p.control_addr.ip() == a || p.data_addr.is_some_and(|d| d.ip() == a))
                .map(|p| {
                    if p.name.is_empty() {
                        p.control_addr.to_string()
                    } else {
                        p.name.clone()
                    }
                })
        });
        if let Some(peer) = peer {
            return Err(Error::PeerAddress { addr: a, peer });
        }
        let exposed = self
            .state
            .lock()
            .exposed
            .iter()
            .chain(&self.settings.expose)
            .any(|e| e.addr() == a);
        if !exposed && self.kernel.is_local(a) {
            return Err(Error::LocalAddress { addr: a });
        }
        let overlay = &self.settings.overlay;
        if !overlay.iter().any(|o| o.contains(&cidr.trunc())) {
            let list: Vec<String> = overlay.iter().map(ToString::to_string).collect();
            return Err(Error::NotInOverlay {
                net: *cidr,
                overlay: list.join(", "),
            });
        }
        Ok(())
    }

    /// Takes every address exposed through the API off the TUN device, stops
    /// announcing them, and frees their IPAM holds; addresses the configuration
    /// exposes stay. Returns how many were hidden.
    pub fn hide(&self) -> Result<usize, Error> {
        let configured = self.settings.expose.clone();
        let by_config = move |e: &IpNet| configured.iter().any(|c| c.addr() == e.addr());
        let n = self.write(|st| {
            let gone = std::mem::take(&mut st.exposed);
            if gone.is_empty() {
                return Err(Error::NothingExposed);
            }
            let mut freed = Vec::new();
            for e in &gone {
                if let IpAddr::V4(a) = e.addr() {
                    if !by_config(e) && st.ipam.release_one(EXPOSE_ID, a) {
                        freed.push((a, e.prefix_len()));
                    }
                }
            }
            let ops = gone.iter().map(|e| Row::Exposed(*e).delete()).collect();
            // Off the device only once no one is told to send to it any more.
            let after = gone
                .iter()
                .filter(|e| !by_config(e))
                .map(|e| HostOp::DelAddress(*e))
                .collect();
            let n = gone.len();
            let mut change = Change::stored(n, Txn::ops(ops), move |st: &mut State| {
                st.exposed = gone;
                for (a, len) in freed {
                    let _ = st.ipam.restore(EXPOSE_ID, a, len);
                }
            })
            .routing();
            change.after = after;
            Ok(change)
        })?;
        log::info!("hid {n} exposed address(es)");
        Ok(n)
    }

    /// The addresses exposed through the API.
    pub fn exposed(&self) -> Vec<IpNet> {
        self.state.lock().exposed.clone()
    }
}
