//! The model: everything tunloom knows and scripts change — this node and its peers,
//! the default network, IPAM (range, owned blocks, allocations by container), DNS
//! records, exposed addresses — owned by the control side behind one lock, persisted
//! through the store, and compiled into dataplane snapshots.
//!
//! The model decides and does no I/O of its own: durable state goes through the
//! store's committer, host changes and liveness probes through the [`crate::host`]
//! traits, peer traffic through the peers' control thread ([`crate::peers::Peers`]).
//! Every write follows one path, `txn`'s `write`: decide, commit, publish, wait,
//! answer.
//!
//! - this file: the facade — opening from the store, the state, what this node
//!   announces, snapshot compilation, status;
//! - [`schema`]: how the state is laid out in the store;
//! - [`ipam`]: allocations (`allocate`, `claim`, `release`, `lookup`) over the
//!   allocator;
//! - `dns`: DNS records; `expose`: the host's own overlay addresses;
//!   `peering`: connecting to and removing peers;
//! - [`error`]: what can go wrong, by kind.
//!
//! API faces (`crate::control`) are thin adapters over these methods.

mod dns;
pub mod error;
mod expose;
pub mod ipam;
pub mod network;
mod peering;
pub mod schema;
mod txn;

pub use error::{Error, Kind, OpenError};
pub use ipam::{Allocation, IpamCounts, EXPOSE_ID};
pub use network::{ConnectRequest, Endpoint, Network, NetworkRequest, NetworkView};
pub use schema::Record;

use crate::dns::Dns;
use crate::host::{HostOp, Kernel, Liveness};
use crate::peers::{Peer, Peers};
use crate::route::Table;
use crate::snapshot::{Behind, PeerEntry, Published, Snapshot, SnapshotBase, SnapshotSpec};
use crate::store::{CommitEvent, Committer, Store, Txn};
use crate::telemetry::Counters;
use crate::wire::ether;
use ipam::Ipam;
use ipnet::{IpNet, Ipv4Net};
use parking_lot::Mutex;
use schema::{Meta, Row};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the configuration decides for the model.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The whole IPAM range.
    pub range: Ipv4Net,
    /// Where `allocate` allocates by default.
    pub default_subnet: Ipv4Net,
    /// The blocks of the range this node owns by configuration.
    pub blocks: Vec<Ipv4Net>,
    /// The prefixes routed into the overlay (`overlay.routes`, else the range): the
    /// only place exposed addresses may come from and peers may not.
    pub overlay: Vec<IpNet>,
    /// The DNS domain, absolute and lower case.
    pub domain: String,
    /// Prefixes the configuration announces.
    pub announce: Vec<IpNet>,
    /// Addresses the configuration exposes (put on the TUN device at start).
    pub expose: Vec<IpNet>,
    /// Gateway addresses the configuration has tunloom answer itself.
    pub gateways: Vec<IpAddr>,
    /// What every snapshot carries unchanged.
    pub snapshot: SnapshotBase,
    /// How long a write that involves peers waits for them.
    pub sync_timeout: Duration,
    /// How long a write waits for every worker to apply its snapshot.
    pub apply_timeout: Duration,
    /// The most peers this node knows at once (`control.max_peers`).
    pub max_peers: usize,
    /// Container networks: the pool and its carving, the limit, egress.
    pub networks: NetworkSettings,
}

/// What the configuration decides for container networks (`[networks]`, `[egress]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Where a network without a subnet of its own gets one.
    pub pool: Ipv4Net,
    /// The prefix length of those subnets.
    pub prefix: u8,
    /// The most networks a node holds.
    pub max: usize,
    /// Masquerade what non-internal networks send out of the host.
    pub masquerade: bool,
}

impl Default for NetworkSettings {
    fn default() -> NetworkSettings {
        NetworkSettings {
            pool: Ipv4Net::new(std::net::Ipv4Addr::new(10, 48, 0, 0), 12).unwrap_or_default(),
            prefix: 24,
            max: 4096,
            masquerade: true,
        }
    }
}

/// What the model runs on: its settings and the parts it talks to.
pub struct Parts<S: Store> {
    pub settings: Settings,
    pub published: Arc<Published>,
    /// Where the records are published for the DNS server.
    pub dns: Arc<Dns>,
    pub peers: Arc<Peers>,
    pub store: S,
    pub kernel: Arc<dyn Kernel>,
    pub liveness: Arc<dyn Liveness>,
    /// Where the committer counts its work.
    pub commits: Arc<Counters<CommitEvent>>,
}

/// The state behind the model's lock.
pub(crate) struct State {
    ipam: Ipam,
    default_subnet: Ipv4Net,
    domain: String,
    records: BTreeSet<Record>,
    /// Addresses exposed through the API (the configured ones are in settings).
    exposed: Vec<IpNet>,
    /// Blocks taken over from removed peers (the configured ones are in settings).
    taken: Vec<Ipv4Net>,
    /// Blocks given up to peers that took them over while this node was away.
    yielded: Vec<Ipv4Net>,
    /// Container networks and their endpoints.
    networks: network::Networks,
    /// Performance mode as written through the API; `None` if it never was.
    performance_mode: Option<bool>,
}

/// What the Weave status page shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub ipam: IpamCounts,
    pub default_subnet: Ipv4Net,
    pub domain: String,
    pub peers: Vec<Peer>,
    /// Blocks given up to peers that took them over.
    pub yielded: Vec<Ipv4Net>,
    pub ready: bool,
}

pub struct Model {
    settings: Settings,
    published: Arc<Published>,
    dns: Arc<Dns>,
    peers: Arc<Peers>,
    store: Committer,
    state: Mutex<State>,
    kernel: Arc<dyn Kernel>,
    liveness: Arc<dyn Liveness>,
    /// Serialises changes to the peer set, so that two `replace=true` calls cannot
    /// each store a set computed from what the other is replacing.
    peer_set: Mutex<()>,
}

/// A host route for `addr`, unless a prefix in `list` already covers it.
fn add_host_route(list: &mut Vec<IpNet>, addr: IpAddr) {
    if !list.iter().any(|p| p.contains(&addr)) {
        list.push(IpNet::from(addr));
    }
}

/// What a node announces besides its IPAM blocks: the configured prefixes, then a
/// host route for each exposed address that none of them covers.
pub fn announced_prefixes<'a>(announce: &[IpNet], exposed: impl IntoIterator<Item = &'a IpNet>) -> Vec<IpNet> {
    let mut list: Vec<IpNet> = announce.iter().map(IpNet::trunc).collect();
    for e in exposed {
        add_host_route(&mut list, e.addr());
    }
    list
}

impl Model {
    /// Loads the state from the store, checks it against the settings, restores
    /// exposed addresses on the host, and publishes the first snapshot.
    pub fn open<S: Store>(parts: Parts<S>) -> Result<Model, OpenError> {
        let Parts {
            settings,
            published,
            dns,
            peers,
            store,
            kernel,
            liveness,
            commits,
        } = parts;
        let (entries, _) = store.range("").map_err(OpenError::Load)?;
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            match Row::decode(e) {
                Ok(r) => rows.push(r),
                Err(e) => log::error!("state: {e}, skipped"),
            }
        }
        let range = settings.range.trunc();
        let meta = |m: Meta| {
            rows.iter().find_map(|r| match r {
                Row::Meta(k, v) if *k == m => Some(v.clone()),
                _ => None,
            })
        };
        let allocations = rows.iter().filter(|r| matches!(r, Row::Allocation { .. })).count();
        if let Some(old) = meta(Meta::Range).filter(|old| old.parse::<Ipv4Net>().ok() != Some(range)) {
            if allocations > 0 {
                return Err(OpenError::RangeChanged {
                    allocations,
                    stored: old,
                    configured: range,
                });
            }
        }
        // The default subnet and the domain are the configuration's to set, as Weave's
        // launch flags are; the state remembers them so that a change is said aloud.
        let changes = [
            (
                "ipam.default_subnet",
                Meta::DefaultSubnet,
                settings.default_subnet.to_string(),
                "addresses allocated in the old one stay held; GET /ip/{id} lists only the new one's",
            ),
            (
                "dns.domain",
                Meta::Domain,
                settings.domain.clone(),
                "DNS records under the old domain are kept as they are",
            ),
        ];
        for (option, key, now, consequence) in &changes {
            if let Some(old) = meta(*key).filter(|old| old != now) {
                log::warn!("state: {option} was {old} and is now {now}: {consequence}");
            }
        }
        let mut taken = Vec::new();
        let mut yielded = Vec::new();
        let mut records = BTreeSet::new();
        let mut exposed = Vec::new();
        let mut targets = Vec::new();
        for r in &rows {
            match r {
                Row::Block(b) => taken.push(*b),
                Row::Yielded(b) => yielded.push(*b),
                Row::Record(rec) => {
                    records.insert(rec.clone());
                }
                Row::Exposed(n) => exposed.push(*n),
                Row::Peer(a) => targets.push(*a),
                Row::Meta(..) | Row::Allocation { .. } | Row::Network(_) | Row::Endpoint(_) => {}
            }
        }
        let mut owned = settings.blocks.clone();
        owned.extend(taken.iter().filter(|b| range.contains(*b)));
        let mut ipam = Ipam::new(range, &owned)?;
        for y in &yielded {
            if ipam.remove_owned(*y) {
                log::warn!("state: {y} was given up to a peer that took it over; nothing is allocated from it here");
            }
        }
        let mut restored = 0;
        for r in &rows {
            if let Row::Allocation { ip, prefix, container } = r {
                match ipam.restore(container, *ip, *prefix) {
                    Ok(()) => restored += 1,
                    Err(e) => log::error!("state: allocation {ip} -> {container} not restored: {e}"),
                }
            }
        }
        let gateway = ipam::gateway(&settings.default_subnet);
        for e in exposed.iter().chain(&settings.expose) {
            if let IpAddr::V4(a) = e.addr() {
                if range.contains(&a) && ipam.holder(a).is_none() && a != gateway {
                    let _ = ipam.restore(EXPOSE_ID, a, e.prefix_len());
                }
            }
        }
        peers.update(|t| t.set_targets(&targets, false));
        for e in &exposed {
            kernel.apply(&HostOp::AddAddress(*e))?;
        }
        let model = Model {
            state: Mutex::new(State {
                ipam,
                default_subnet: settings.default_subnet,
                domain: settings.domain.clone(),
                records,
                exposed: exposed.clone(),
                taken,
                yielded,
                networks: network::restore(&rows),
                performance_mode: meta(Meta::PerformanceMode).and_then(|v| v.parse().ok()),
            }),
            store: Committer::start(store, commits),
            settings,
            published,
            dns,
            peers,
            kernel,
            liveness,
            peer_set: Mutex::new(()),
        };
        // What the configuration says now is what the state remembers from here on.
        let st = model.state.lock();
        let txn = Txn::ops(vec![
            Row::Meta(Meta::Range, range.to_string()).put(),
            Row::Meta(Meta::DefaultSubnet, st.default_subnet.to_string()).put(),
            Row::Meta(Meta::Domain, st.domain.clone()).put(),
        ]);
        model.announce(&st);
        let spec = model.spec(&st);
        let records = st.records.len();
        model.dns.publish(&st.records);
        drop(st);
        model.store.submit(txn).wait().map_err(OpenError::Store)?;
        model.published.publish(|g| Snapshot::compile(g, spec));
        log::info!(
            "state: {restored} allocations, {records} DNS records, {} exposed addresses, {} peers to connect to",
            exposed.len(),
            targets.len()
        );
        Ok(model)
    }

    /// Updates what this node announces: the configured prefixes (with host routes
    /// of configured exposed addresses), the IPAM blocks it owns, a host route for
    /// each address exposed through the API that none of those covers, and each
    /// network's range under the network's VNI (everything else under VNI 0). The
    /// networks themselves go along, for checking peers' VNIs against.
    fn announce(&self, st: &State) -> u64 {
        let mut prefixes = announced_prefixes(&self.settings.announce, &self.settings.expose);
        let blocks: Vec<IpNet> = st.ipam.owned().iter().map(|b| IpNet::V4(*b)).collect();
        for e in &st.exposed {
            if !blocks.iter().any(|b| b.contains(&e.addr())) {
                add_host_route(&mut prefixes, e.addr());
            }
        }
        let mut list: Vec<(IpNet, bool, u32)> = prefixes.into_iter().map(|p| (p, false, 0)).collect();
        for n in st.networks.by_id.values() {
            let r = IpNet::V4(n.range());
            match list.iter_mut().find(|(p, _, _)| *p == r) {
                Some(entry) => entry.2 = n.vni,
                None => list.push((r, false, n.vni)),
            }
        }
        list.extend(blocks.into_iter().map(|b| (b, true, 0)));
        let networks: Vec<(Ipv4Net, u32)> = st.networks.by_id.values().map(|n| (n.subnet, n.vni)).collect();
        self.peers.set_announced(&list, &networks)
    }

    /// The addresses tunloom answers itself: configured gateways and the default
    /// network's gateway.
    pub fn service_addresses(&self) -> Vec<IpAddr> {
        let mut v = self.settings.gateways.clone();
        v.push(IpAddr::V4(ipam::gateway(&self.state.lock().default_subnet)));
        v
    }

    fn spec(&self, st: &State) -> SnapshotSpec {
        let mut service: Vec<IpNet> = self.settings.gateways.iter().map(|a| IpNet::from(*a)).collect();
        service.push(IpNet::from(IpAddr::V4(ipam::gateway(&st.default_subnet))));
        // Each network's gateway is answered here, on every host it spans.
        service.extend(st.networks.by_id.values().map(|n| IpNet::from(IpAddr::V4(n.gateway))));
        let (local, peers) = self.peers.read(|t| {
            let local: Vec<IpNet> = t.announced().iter().map(|a| a.prefix).collect();
            let peers = t
                .peers()
                .iter()
                .filter(|p| p.up)
                .filter_map(|p| {
                    let data_addr = p.data_addr?;
                    let prefixes: Vec<(IpNet, u32)> = p.prefixes.iter().map(|a| (a.prefix, a.vni)).collect();
                    let entry = PeerEntry {
                        name: p.name.clone(),
                        data_addr,
                        mac: ether::Address::for_node(&p.name),
                        allowed: Table::build(prefixes.iter().map(|(n, _)| (*n, ())).collect()),
                    };
                    Some((entry, prefixes))
                })
                .collect();
            (local, peers)
        });
        // ICMP errors this node originates come from its first exposed address.
        let mut exposed = st.exposed.iter().chain(&self.settings.expose).map(|n| n.addr());
        let router_v4 = exposed.clone().find_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        });
        let router_v6 = exposed.find_map(|a| match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        });
        let networks = st
            .networks
            .by_id
            .values()
            .map(|n| crate::snapshot::Network {
                subnet: n.subnet,
                vni: n.vni,
                internal: n.internal,
            })
            .collect();
        SnapshotSpec {
            local,
            service,
            peers,
            router_v4,
            router_v6,
            networks,
            ..SnapshotSpec::empty(self.settings.snapshot)
        }
    }

    /// Compiles and publishes a snapshot of the current state and waits until every
    /// worker forwards by it.
    pub fn republish(&self) -> Result<u64, Behind> {
        let spec = {
            let st = self.state.lock();
            self.spec(&st)
        };
        let g = self.published.publish(|g| Snapshot::compile(g, spec));
        self.published.wait_applied(g, self.settings.apply_timeout)?;
        Ok(g)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// Every stored entry and the revision they were read at, in one transaction: a
    /// consistent copy of the state (for backups).
    pub fn dump(&self) -> Result<(Vec<crate::store::Entry>, crate::store::Revision), crate::store::StoreError> {
        self.store.range("")
    }

    /// What the store's committer counted.
    pub fn commits(&self) -> &Arc<Counters<CommitEvent>> {
        self.store.counters()
    }

    /// The DNS server's shared state: the zone published from the records.
    pub fn dns(&self) -> &Arc<Dns> {
        &self.dns
    }

    /// Whether a commit failed, so that writes are refused until restart.
    pub fn store_failed(&self) -> bool {
        self.store.failed()
    }

    /// Performance mode as written through the management API; `None` if it never
    /// was (the configuration or the default decides then).
    pub fn performance_mode(&self) -> Option<bool> {
        self.state.lock().performance_mode
    }

    /// Stores performance mode; returns once it is durable.
    pub fn set_performance_mode(&self, enabled: bool) -> Result<(), Error> {
        self.write(|st| {
            let row = Row::Meta(Meta::PerformanceMode, enabled.to_string());
            let before = st.performance_mode.replace(enabled);
            if before == Some(enabled) {
                return Ok(txn::Change::guarded((), row.stored()));
            }
            let undo = move |st: &mut State| st.performance_mode = before;
            Ok(txn::Change::stored((), Txn::ops(vec![row.put()]), undo))
        })
    }

    pub fn status(&self) -> Status {
        let st = self.state.lock();
        let g = self.published.load().generation;
        let applied = (0..self.published.workers()).all(|i| self.published.seen(i) >= g);
        Status {
            ipam: st.ipam.counts(),
            default_subnet: st.default_subnet,
            domain: st.domain.clone(),
            peers: self.peers.snapshot(),
            yielded: st.yielded.clone(),
            ready: applied && !self.store.failed() && !st.ipam.owned().is_empty(),
        }
    }

    /// Waits until every peer that is up forwards by this node's current state;
    /// returns those that did not in time.
    fn wait_peers_acked(&self) -> Vec<String> {
        let state = self.peers.read(|t| t.state());
        self.peers.wait(self.settings.sync_timeout, |t| {
            t.iter().filter(|p| p.up).all(|p| p.acked >= state)
        });
        self.peers
            .snapshot()
            .iter()
            .filter(|p| p.up && p.acked < state)
            .map(|p| p.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
