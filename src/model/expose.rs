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
        self.write(|st| {
            if let IpAddr::V4(a) = cidr.addr() {
                if a == gateway(&st.default_subnet) {
                    return Err(Error::Gateway(a));
                }
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
                if st.ipam.range().contains(&a) && st.ipam.holder(a).is_none() {
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
