//! Allocations: the model's IPAM operations (`allocate`, `claim`, `release`,
//! `lookup`) over the [`allocator`], each one a store row per address.
//!
//! Allocation is by container id: the same id gets the same address back, and a new
//! address is stored with the condition that no row holds it yet, so the store itself
//! refuses to record one address twice.

pub mod allocator;

pub use allocator::{gateway, Ipam, IpamCounts, IpamError};

use super::schema::Row;
use super::txn::Change;
use super::{Error, Model, State};
use crate::store::Txn;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// What `allocate` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    Address(Ipv4Addr, u8),
    /// `check-alive` found the container gone: nothing was allocated.
    Cancelled,
}

/// The container id under which exposed host addresses are held in IPAM (as Weave
/// Net holds them), so they are never handed out to a container.
pub const EXPOSE_ID: &str = "weave:expose";

/// The change for `id` holding `a` (in a subnet of prefix length `len`): stored when
/// `new`, and released again if the store refuses it; when not new, answered once the
/// store holds it (it may be an allocation still in flight).
fn held(id: &str, a: Ipv4Addr, len: u8, new: bool) -> Change<Allocation> {
    let value = Allocation::Address(a, len);
    let row = Row::Allocation {
        ip: a,
        prefix: len,
        container: id.to_string(),
    };
    if !new {
        return Change::guarded(value, row.stored());
    }
    let txn = Txn {
        compare: vec![row.absent()],
        ops: vec![row.put()],
    };
    let owner = id.to_string();
    Change::stored(value, txn, move |st: &mut State| {
        st.ipam.release_one(&owner, a);
    })
}

impl Model {
    /// Allocates an address for `id` in `subnet` (default: the default subnet).
    pub fn allocate(&self, id: &str, subnet: Option<Ipv4Net>, check_alive: bool) -> Result<Allocation, Error> {
        if check_alive && !self.liveness.alive(id) {
            return Ok(Allocation::Cancelled);
        }
        self.write(|st| {
            let subnet = subnet.unwrap_or(st.default_subnet).trunc();
            let (a, new) = st.ipam.allocate(id, subnet)?;
            Ok(held(id, a, subnet.prefix_len(), new))
        })
    }

    /// Claims the address of `cidr` for `id`.
    pub fn claim(&self, id: &str, cidr: Ipv4Net, check_alive: bool) -> Result<Allocation, Error> {
        if check_alive && !self.liveness.alive(id) {
            return Ok(Allocation::Cancelled);
        }
        self.write(|st| {
            let new = st.ipam.claim(id, cidr)?;
            Ok(held(id, cidr.addr(), cidr.prefix_len(), new))
        })
    }

    /// Releases everything `id` holds; `NoAddresses` when it held nothing. For
    /// `weave:expose` that is what `weave hide` asks: see [`Model::hide`].
    pub fn release(&self, id: &str) -> Result<usize, Error> {
        if id == EXPOSE_ID {
            return self.hide();
        }
        self.write(|st| {
            let freed = st.ipam.release(id);
            if freed.is_empty() {
                return Err(Error::NoAddresses(id.to_string()));
            }
            let ops = freed
                .iter()
                .map(|(a, len)| {
                    Row::Allocation {
                        ip: *a,
                        prefix: *len,
                        container: id.to_string(),
                    }
                    .delete()
                })
                .collect();
            let (owner, back) = (id.to_string(), freed.clone());
            Ok(Change::stored(freed.len(), Txn::ops(ops), move |st: &mut State| {
                for (a, len) in back {
                    let _ = st.ipam.restore(&owner, a, len);
                }
            }))
        })
    }

    /// The addresses `id` holds in the default subnet.
    pub fn lookup(&self, id: &str) -> Vec<(Ipv4Addr, u8)> {
        let st = self.state.lock();
        let subnet = st.default_subnet;
        st.ipam
            .lookup(id)
            .into_iter()
            .filter(|(a, _)| subnet.contains(a))
            .collect()
    }

    /// Every address `id` holds.
    pub fn lookup_all(&self, id: &str) -> Vec<(Ipv4Addr, u8)> {
        self.state.lock().ipam.lookup(id)
    }

    pub fn default_subnet(&self) -> Ipv4Net {
        self.state.lock().default_subnet
    }
}
