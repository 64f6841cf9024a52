//! The model: everything tunloom knows and scripts change — this node and its peers,
//! the default network, IPAM (range, owned blocks, allocations by container), DNS
//! records, exposed addresses — owned by the control side behind one lock, persisted
//! through the store, and compiled into dataplane snapshots.
//!
//! Every write follows one path ([`Model::write`]): decide under the state lock, hand
//! the resulting store operations to the group committer while still holding the lock
//! (so they reach the store in decision order), release the lock, wait until they are
//! durable, and — when forwarding changed — publish a snapshot and wait, bounded, until
//! every worker forwards by it. Only then does the API answer. A write that cannot be
//! made durable is undone in memory and answered with 503.
//!
//! API faces (`crate::control`) are thin adapters over these methods.

pub mod ipam;

use crate::config::Settings;
use crate::names::{normalize_fqdn, valid_container_id, CONTAINER_ID_RULE};
use crate::peers::{Peer, Peers};
use crate::snapshot::{Behind, Published, Snapshot, SnapshotSpec};
use crate::store::{Committer, Op, Store, Table};
use crate::sys::netlink::Netlink;
use ipam::{Ipam, IpamCounts, IpamError};
use ipnet::{IpNet, Ipv4Net};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a model operation failed, in the terms an API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The request is wrong (400).
    #[error("{0}")]
    Bad(String),
    /// What it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The node cannot do it now (503): the store failed, no space is left.
    #[error("{0}")]
    Unavailable(String),
    /// A worker did not apply the change in time (503).
    #[error(transparent)]
    Behind(#[from] Behind),
}

impl From<IpamError> for ModelError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::Full(_) => ModelError::Unavailable(e.to_string()),
            _ => ModelError::Bad(e.to_string()),
        }
    }
}

/// A DNS record: `fqdn` names `ip`, registered for `container`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub container: String,
    pub ip: IpAddr,
    pub fqdn: String,
}

impl Record {
    fn key(&self) -> String {
        format!("{}\t{}\t{}", self.container, self.ip, self.fqdn)
    }
}

/// Whether a container is alive, for `check-alive=true`. tunloom has no container
/// runtime to ask, so it looks for what a runtime (or CNI plugin, or script) leaves
/// behind: a network namespace named after the container in `/run/netns` (as `ip netns
/// add <id>` and Docker-style tooling create), or, for a numeric id, a running process
/// with that pid.
pub fn alive(id: &str) -> bool {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return false;
    }
    std::path::Path::new("/run/netns").join(id).exists()
        || (id.bytes().all(|b| b.is_ascii_digit()) && std::path::Path::new("/proc").join(id).exists())
}

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

/// The TUN link, for exposing addresses on it.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub index: u32,
}

struct State {
    ipam: Ipam,
    default_subnet: Ipv4Net,
    domain: String,
    records: BTreeSet<Record>,
    exposed: Vec<IpNet>,
    /// Blocks taken over from removed peers (the configured ones are in settings).
    taken: Vec<Ipv4Net>,
}

/// Reverts a decided change in memory when it could not be stored.
type Undo = Box<dyn FnOnce(&mut State) + Send>;

/// A decided change: its result, store operations, how to undo it in memory, and
/// whether forwarding changed.
struct Change<T> {
    value: T,
    ops: Vec<Op>,
    undo: Option<Undo>,
    routing: bool,
}

impl<T> Change<T> {
    fn read(value: T) -> Change<T> {
        Change {
            value,
            ops: Vec::new(),
            undo: None,
            routing: false,
        }
    }
}

/// Snapshot of what the Weave status page shows.
#[derive(Debug, Clone)]
pub struct Status {
    pub ipam: IpamCounts,
    pub default_subnet: Ipv4Net,
    pub domain: String,
    pub peers: Vec<Peer>,
    pub ready: bool,
}

pub struct Model {
    pub settings: Arc<Settings>,
    pub published: Arc<Published>,
    pub peers: Arc<Peers>,
    store: Committer,
    state: Mutex<State>,
    link: Option<Link>,
    /// Serialises link changes (netlink) across API threads.
    netlink: Mutex<Option<Netlink>>,
    /// Serialises changes to the peer set, so that two `replace=true` calls cannot
    /// each store a set computed from what the other is replacing.
    peer_set: Mutex<()>,
}

fn parse_alloc(value: &str) -> Option<(u8, &str)> {
    let (len, id) = value.split_once(' ')?;
    Some((len.parse().ok()?, id))
}

/// The change for `id` holding `a` (in a subnet of prefix length `len`): stored when
/// `new`, and released again if the store refuses it.
fn held(id: &str, a: Ipv4Addr, len: u8, new: bool) -> Change<Allocation> {
    let value = Allocation::Address(a, len);
    if !new {
        return Change::read(value);
    }
    let owner = id.to_string();
    Change {
        value,
        ops: vec![Op::put(Table::Allocations, a.to_string(), format!("{len} {id}"))],
        undo: Some(Box::new(move |st: &mut State| {
            st.ipam.release_one(&owner, a);
        })),
        routing: false,
    }
}

impl Model {
    /// Loads the state from `store`, checks it against the configuration, restores
    /// exposed addresses on `link`, and compiles the first snapshot.
    pub fn open(
        settings: Arc<Settings>,
        published: Arc<Published>,
        peers: Arc<Peers>,
        store: impl Store,
        link: Option<Link>,
    ) -> Result<Model, String> {
        let contents = store.load().map_err(|e| format!("loading the state: {e}"))?;
        let table = |t: Table| contents.get(&t).cloned().unwrap_or_default();
        let meta = table(Table::Meta);
        let allocations = table(Table::Allocations);
        let range = settings.config.ipam.range.trunc();
        if let Some(old) = meta.get("range").and_then(|r| r.parse::<Ipv4Net>().ok()) {
            if old != range && !allocations.is_empty() {
                return Err(format!(
                    "the state holds {} allocations in range {old}, but ipam.range is now {range}; \
                     release them or keep the range (tunloom will not silently reinterpret addresses)",
                    allocations.len()
                ));
            }
        }
        // The default subnet and the domain are the configuration's to set, as Weave's
        // launch flags are; the state remembers them so that a change is said aloud.
        let domain = normalize_fqdn(&settings.config.dns.domain).unwrap_or_else(|| "weave.local.".into());
        let changes = [
            (
                "ipam.default_subnet",
                "default_subnet",
                settings.default_subnet.to_string(),
                "addresses allocated in the old one stay held; GET /ip/{id} lists only the new one's",
            ),
            (
                "dns.domain",
                "domain",
                domain.clone(),
                "DNS records under the old domain are kept as they are",
            ),
        ];
        for (option, key, now, consequence) in changes {
            if let Some(old) = meta.get(key).filter(|old| **old != now) {
                log::warn!("state: {option} was {old} and is now {now}: {consequence}");
            }
        }
        let taken: Vec<Ipv4Net> = table(Table::Blocks).keys().filter_map(|k| k.parse().ok()).collect();
        let mut owned = settings.blocks.clone();
        owned.extend(taken.iter().filter(|b| range.contains(*b)));
        let mut ipam = Ipam::new(range, &owned).map_err(|e| e.to_string())?;
        let mut restored = 0;
        for (ip, value) in &allocations {
            let parsed = ip.parse::<Ipv4Addr>().ok().zip(parse_alloc(value));
            match parsed {
                Some((a, (len, id))) => match ipam.restore(id, a, len) {
                    Ok(()) => restored += 1,
                    Err(e) => log::error!("state: allocation {ip} -> {value} not restored: {e}"),
                },
                None => log::error!("state: unreadable allocation {ip:?} -> {value:?}"),
            }
        }
        let records: BTreeSet<Record> = table(Table::Records)
            .keys()
            .filter_map(|k| {
                let mut f = k.splitn(3, '\t');
                Some(Record {
                    container: f.next()?.to_string(),
                    ip: f.next()?.parse().ok()?,
                    fqdn: f.next()?.to_string(),
                })
            })
            .collect();
        let exposed: Vec<IpNet> = table(Table::Exposed).keys().filter_map(|k| k.parse().ok()).collect();
        let gateway = Self::gateway(&settings.default_subnet);
        for e in exposed.iter().chain(&settings.config.overlay.expose) {
            if let IpAddr::V4(a) = e.addr() {
                if a == gateway {
                    return Err(format!(
                        "exposed address {e} is the default network's gateway, which tunloom serves"
                    ));
                }
                if range.contains(&a) && ipam.holder(a).is_none() {
                    let _ = ipam.restore(EXPOSE_ID, a, e.prefix_len());
                }
            }
        }
        let targets: Vec<SocketAddr> = table(Table::Peers).keys().filter_map(|k| k.parse().ok()).collect();
        peers.set_targets(&targets, false);
        let committer = Committer::start(store);
        let model = Model {
            state: Mutex::new(State {
                ipam,
                default_subnet: settings.default_subnet,
                domain,
                records,
                exposed: exposed.clone(),
                taken,
            }),
            settings,
            published,
            peers,
            store: committer,
            netlink: Mutex::new(None),
            peer_set: Mutex::new(()),
            link,
        };
        for e in &exposed {
            model
                .link_address(e)
                .map_err(|e| format!("restoring exposed address: {e}"))?;
        }
        // What the configuration says now is what the state remembers from here on.
        let st = model.state.lock();
        let ops = vec![
            Op::put(Table::Meta, "range", range.to_string()),
            Op::put(Table::Meta, "default_subnet", st.default_subnet.to_string()),
            Op::put(Table::Meta, "domain", st.domain.clone()),
        ];
        model.announce(&st);
        let spec = model.spec(&st);
        drop(st);
        model
            .store
            .submit(ops)
            .wait()
            .map_err(|e| format!("writing the state: {e}"))?;
        model.published.publish(|g| Snapshot::compile(g, spec));
        log::info!(
            "state: {restored} allocations, {} DNS records, {} exposed addresses, {} peers to connect to",
            model.state.lock().records.len(),
            exposed.len(),
            targets.len()
        );
        Ok(model)
    }

    /// Announcements: configured prefixes, owned IPAM blocks, exposed host addresses.
    fn announce(&self, st: &State) -> u64 {
        let mut list: Vec<(IpNet, bool)> = self.settings.announced.iter().map(|p| (*p, false)).collect();
        for b in st.ipam.owned() {
            list.push((IpNet::V4(*b), true));
        }
        for e in &st.exposed {
            let host = IpNet::new(e.addr(), e.max_prefix_len()).expect("max prefix length is valid");
            if !list.iter().any(|(p, _)| p.contains(&e.addr())) {
                list.push((host, false));
            }
        }
        self.peers.set_announced(&list)
    }

    fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(subnet.network()) + 1)
    }

    fn spec(&self, st: &State) -> SnapshotSpec {
        let s = &self.settings;
        let local: Vec<IpNet> = self.peers.announced().iter().map(|a| a.prefix).collect();
        let mut service: Vec<IpNet> = s.config.overlay.gateways.iter().map(|a| IpNet::from(*a)).collect();
        service.push(IpNet::from(IpAddr::V4(Self::gateway(&st.default_subnet))));
        let first = |v6: bool| {
            st.exposed
                .iter()
                .map(|n| n.addr())
                .chain(s.config.overlay.expose.iter().map(|n| n.addr()))
                .find(|a| a.is_ipv6() == v6)
        };
        SnapshotSpec {
            node_mac: s.node_mac,
            vni: s.config.dataplane.vni,
            mtu: s.mtu,
            local,
            service,
            peers: self.peers.up_entries(),
            router_v4: first(false).and_then(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            }),
            router_v6: first(true).and_then(|a| match a {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }),
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
        self.published.wait_applied(g, Duration::from_secs(2))?;
        Ok(g)
    }

    /// The write path; see the module documentation.
    fn write<T>(&self, decide: impl FnOnce(&mut State) -> Result<Change<T>, ModelError>) -> Result<T, ModelError> {
        let (change, ticket) = {
            let mut st = self.state.lock();
            let mut change = decide(&mut st)?;
            let ticket = (!change.ops.is_empty()).then(|| self.store.submit(std::mem::take(&mut change.ops)));
            if change.routing {
                self.announce(&st);
            }
            (change, ticket)
        };
        if let Some(t) = ticket {
            if let Err(e) = t.wait() {
                let mut st = self.state.lock();
                if let Some(undo) = change.undo {
                    undo(&mut st);
                }
                if change.routing {
                    self.announce(&st);
                }
                return Err(ModelError::Unavailable(format!("the change could not be stored: {e}")));
            }
        }
        if change.routing {
            self.republish()?;
            self.peers.hello_all();
        }
        Ok(change.value)
    }

    fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.config.control.sync_timeout_ms)
    }

    /// Allocates an address for `id` in `subnet` (default: the default subnet).
    pub fn allocate(&self, id: &str, subnet: Option<Ipv4Net>, check_alive: bool) -> Result<Allocation, ModelError> {
        if check_alive && !alive(id) {
            return Ok(Allocation::Cancelled);
        }
        self.write(|st| {
            let subnet = subnet.unwrap_or(st.default_subnet).trunc();
            let (a, new) = st.ipam.allocate(id, subnet)?;
            Ok(held(id, a, subnet.prefix_len(), new))
        })
    }

    /// Claims the address of `cidr` for `id`.
    pub fn claim(&self, id: &str, cidr: Ipv4Net, check_alive: bool) -> Result<Allocation, ModelError> {
        if check_alive && !alive(id) {
            return Ok(Allocation::Cancelled);
        }
        self.write(|st| {
            let new = st.ipam.claim(id, cidr)?;
            Ok(held(id, cidr.addr(), cidr.prefix_len(), new))
        })
    }

    /// Releases everything `id` holds; NotFound when it held nothing. For
    /// `weave:expose` that is what `weave hide` asks: see [`Model::hide`].
    pub fn release(&self, id: &str) -> Result<usize, ModelError> {
        if id == EXPOSE_ID {
            return self.hide();
        }
        self.write(|st| {
            let freed = st.ipam.release(id);
            if freed.is_empty() {
                return Err(ModelError::NotFound(format!("container {id} holds no addresses")));
            }
            let ops = freed
                .iter()
                .map(|(a, _)| Op::delete(Table::Allocations, a.to_string()))
                .collect();
            let (owned, back) = (id.to_string(), freed.clone());
            Ok(Change {
                value: freed.len(),
                ops,
                undo: Some(Box::new(move |st: &mut State| {
                    for (a, len) in back {
                        let _ = st.ipam.restore(&owned, a, len);
                    }
                })),
                routing: false,
            })
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

    pub fn domain(&self) -> String {
        self.state.lock().domain.clone()
    }

    /// Connects to `addrs` (replacing every other target with `replace`), and waits,
    /// at most the sync timeout, until each answers and both sides forward by each
    /// other's state. Returns the peers that did not get there in time.
    pub fn connect(&self, addrs: &[SocketAddr], replace: bool) -> Result<Vec<SocketAddr>, ModelError> {
        let set_guard = self.peer_set.lock();
        let before: BTreeSet<SocketAddr> = self
            .peers
            .snapshot()
            .iter()
            .filter(|p| p.target)
            .map(|p| p.control_addr)
            .collect();
        let wanted: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
        let mut ops: Vec<Op> = wanted
            .difference(&before)
            .map(|a| Op::put(Table::Peers, a.to_string(), ""))
            .collect();
        if replace {
            ops.extend(
                before
                    .difference(&wanted)
                    .map(|a| Op::delete(Table::Peers, a.to_string())),
            );
        }
        // Only the peer table changes; persist first, then act.
        self.write(|_| {
            Ok(Change {
                value: (),
                ops,
                undo: None,
                routing: false,
            })
        })?;
        self.peers.set_targets(addrs, replace);
        if replace {
            // Peers no longer targeted drop out of the snapshot now, not at expiry.
            let dropped: Vec<String> = self
                .peers
                .snapshot()
                .iter()
                .filter(|p| !wanted.contains(&p.control_addr) && !p.name.is_empty())
                .map(|p| p.name.clone())
                .collect();
            for name in dropped {
                self.peers.remove(&name);
            }
            self.republish()?;
        }
        drop(set_guard);
        for a in addrs {
            self.peers.hello_to(*a);
        }
        let state = self.peers.state();
        let settled = |t: &[Peer], a: &SocketAddr| t.iter().any(|p| p.control_addr == *a && p.settled(state));
        self.peers
            .wait(self.sync_timeout(), |t| addrs.iter().all(|a| settled(t, a)));
        let table = self.peers.snapshot();
        Ok(addrs.iter().filter(|a| !settled(&table, a)).copied().collect())
    }

    /// Removes a peer and takes over the IPAM blocks it owned. Returns the number of
    /// addresses taken over.
    pub fn remove_peer(&self, who: &str) -> Result<u64, ModelError> {
        let _set_guard = self.peer_set.lock();
        let p = self
            .peers
            .remove(who)
            .ok_or_else(|| ModelError::NotFound(format!("no peer {who}")))?;
        let blocks: Vec<Ipv4Net> = p
            .prefixes
            .iter()
            .filter(|a| a.block)
            .filter_map(|a| match a.prefix {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .collect();
        let addr = p.control_addr.to_string();
        let back = p.clone();
        let r = self.write(move |st| {
            let mut ops = vec![Op::delete(Table::Peers, addr)];
            let mut taken = 0u64;
            for b in blocks {
                if st.ipam.range().contains(&b) && !st.ipam.owned().iter().any(|o| o.contains(&b)) {
                    st.ipam.add_owned(b)?;
                    st.taken.push(b);
                    ops.push(Op::put(Table::Blocks, b.to_string(), ""));
                    taken += 1u64 << (32 - b.prefix_len());
                }
            }
            // No undo of the IPAM side: a failed commit fails the store for good
            // (every later write is refused, /status says 503) and a restart reloads
            // what is on disk, where the peer still is.
            Ok(Change {
                value: taken,
                ops,
                undo: None,
                routing: true,
            })
        });
        if let Err(ModelError::Unavailable(_)) = &r {
            self.peers.put_back(back);
        }
        r
    }

    /// Takes every address exposed through the API off the TUN device, stops
    /// announcing them, and frees their IPAM holds; addresses the configuration
    /// exposes stay. Returns how many were hidden.
    pub fn hide(&self) -> Result<usize, ModelError> {
        let configured = self.settings.config.overlay.expose.clone();
        let gone = self.write(|st| {
            let gone = std::mem::take(&mut st.exposed);
            if gone.is_empty() {
                return Err(ModelError::NotFound("no address is exposed through the API".into()));
            }
            let mut freed = Vec::new();
            for e in &gone {
                if let IpAddr::V4(a) = e.addr() {
                    let by_config = configured.iter().any(|c| c.addr() == e.addr());
                    if !by_config && st.ipam.release_one(EXPOSE_ID, a) {
                        freed.push((a, e.prefix_len()));
                    }
                }
            }
            let ops = gone.iter().map(|e| Op::delete(Table::Exposed, e.to_string())).collect();
            let back = gone.clone();
            Ok(Change {
                value: gone,
                ops,
                undo: Some(Box::new(move |st: &mut State| {
                    st.exposed = back;
                    for (a, len) in freed {
                        let _ = st.ipam.restore(EXPOSE_ID, a, len);
                    }
                })),
                routing: true,
            })
        })?;
        // Off the device only once no one is told to send to it any more.
        for e in gone.iter().filter(|e| !configured.iter().any(|c| c.addr() == e.addr())) {
            if let Err(err) = self.link_change(e, false) {
                log::warn!("hide: {err}");
            }
        }
        log::info!("hid {} exposed address(es)", gone.len());
        Ok(gone.len())
    }

    fn link_address(&self, net: &IpNet) -> Result<(), String> {
        self.link_change(net, true)
    }

    fn link_change(&self, net: &IpNet, add: bool) -> Result<(), String> {
        let Some(link) = &self.link else { return Ok(()) };
        let mut nl = self.netlink.lock();
        if nl.is_none() {
            *nl = Some(Netlink::open().map_err(|e| format!("opening rtnetlink: {e}"))?);
        }
        let Some(nl) = nl.as_mut() else {
            return Err("no netlink socket".into());
        };
        if add {
            nl.add_address(link.index, net)
                .map_err(|e| format!("adding {net} to {}: {e}", link.name))
        } else {
            nl.del_address(link.index, net)
                .map_err(|e| format!("removing {net} from {}: {e}", link.name))
        }
    }

    /// Puts `cidr` on the TUN device and announces it; waits until the peers that are
    /// up forward by it. Returns the peers that did not get there in time.
    pub fn expose(&self, cidr: IpNet) -> Result<Vec<String>, ModelError> {
        {
            let st = self.state.lock();
            if let IpAddr::V4(a) = cidr.addr() {
                if a == Self::gateway(&st.default_subnet) {
                    return Err(ModelError::Bad(format!(
                        "{a} is the default network's gateway, served by tunloom"
                    )));
                }
                if let Some(holder) = st.ipam.holder(a).filter(|h| *h != EXPOSE_ID) {
                    return Err(ModelError::Bad(format!("{a} is allocated to container {holder}")));
                }
            }
            if st.exposed.contains(&cidr) {
                drop(st);
                return Ok(self.wait_peers_acked());
            }
        }
        self.link_address(&cidr).map_err(ModelError::Unavailable)?;
        self.write(|st| {
            if !st.exposed.contains(&cidr) {
                st.exposed.push(cidr);
            }
            // Held in IPAM, so no container is ever handed the host's address.
            let mut held = None;
            if let IpAddr::V4(a) = cidr.addr() {
                if st.ipam.range().contains(&a) && st.ipam.holder(a).is_none() {
                    st.ipam.restore(EXPOSE_ID, a, cidr.prefix_len())?;
                    held = Some(a);
                }
            }
            Ok(Change {
                value: (),
                ops: vec![Op::put(Table::Exposed, cidr.to_string(), "")],
                undo: Some(Box::new(move |st: &mut State| {
                    st.exposed.retain(|e| *e != cidr);
                    if let Some(a) = held {
                        st.ipam.release_one(EXPOSE_ID, a);
                    }
                })),
                routing: true,
            })
        })?;
        Ok(self.wait_peers_acked())
    }

    /// Waits until every peer that is up forwards by this node's current state;
    /// returns those that did not in time.
    fn wait_peers_acked(&self) -> Vec<String> {
        let state = self.peers.state();
        self.peers.wait(self.sync_timeout(), |t| {
            t.iter().filter(|p| p.up).all(|p| p.acked >= state)
        });
        self.peers
            .snapshot()
            .iter()
            .filter(|p| p.up && p.acked < state)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Registers `fqdn` for `container` at `ip`.
    pub fn put_record(&self, container: &str, ip: IpAddr, fqdn: &str) -> Result<(), ModelError> {
        if !valid_container_id(container) {
            return Err(ModelError::Bad(CONTAINER_ID_RULE.into()));
        }
        let fqdn =
            normalize_fqdn(fqdn).ok_or_else(|| ModelError::Bad(format!("{fqdn:?} is not a valid domain name")))?;
        let r = Record {
            container: container.to_string(),
            ip,
            fqdn,
        };
        self.write(|st| {
            if st.records.contains(&r) {
                return Ok(Change::read(()));
            }
            st.records.insert(r.clone());
            let undo_r = r.clone();
            Ok(Change {
                value: (),
                ops: vec![Op::put(Table::Records, r.key(), "")],
                undo: Some(Box::new(move |st: &mut State| {
                    st.records.remove(&undo_r);
                })),
                routing: false,
            })
        })
    }

    /// Removes the records of `container` at `ip` (only `fqdn`'s, when given).
    pub fn delete_records(&self, container: &str, ip: IpAddr, fqdn: Option<&str>) -> Result<usize, ModelError> {
        let fqdn = match fqdn {
            Some(f) => {
                Some(normalize_fqdn(f).ok_or_else(|| ModelError::Bad(format!("{f:?} is not a valid domain name")))?)
            }
            None => None,
        };
        self.write(|st| {
            let gone: Vec<Record> = st
                .records
                .iter()
                .filter(|r| r.container == container && r.ip == ip && fqdn.as_ref().is_none_or(|f| *f == r.fqdn))
                .cloned()
                .collect();
            if gone.is_empty() {
                return Err(ModelError::NotFound(format!(
                    "no DNS record for container {container} at {ip}"
                )));
            }
            for r in &gone {
                st.records.remove(r);
            }
            let ops = gone.iter().map(|r| Op::delete(Table::Records, r.key())).collect();
            let back = gone.clone();
            Ok(Change {
                value: gone.len(),
                ops,
                undo: Some(Box::new(move |st: &mut State| st.records.extend(back))),
                routing: false,
            })
        })
    }

    pub fn records(&self) -> Vec<Record> {
        self.state.lock().records.iter().cloned().collect()
    }

    pub fn exposed(&self) -> Vec<IpNet> {
        self.state.lock().exposed.clone()
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
            ready: applied && !self.store.failed() && !st.ipam.owned().is_empty(),
        }
    }

    pub fn commit_stats(&self) -> serde_json::Value {
        let s = &self.store.stats;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        serde_json::json!({
            "transactions": g(&s.transactions),
            "requests": g(&s.requests),
            "operations": g(&s.operations),
            "failed": self.store.failed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::redb::RedbStore;
    use std::path::{Path, PathBuf};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tunloom-model-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn open_config(d: &Path, text: &str) -> Result<Model, String> {
        open_workers(d, text, 0)
    }

    /// A model whose snapshot `workers` fake workers must apply (none ever does).
    fn open_workers(d: &Path, text: &str, workers: usize) -> Result<Model, String> {
        let s = Arc::new(Config::parse(text, Path::new("t")).unwrap());
        let spec = SnapshotSpec {
            node_mac: s.node_mac,
            vni: 1,
            mtu: 1450,
            local: vec![],
            service: vec![],
            peers: vec![],
            router_v4: None,
            router_v6: None,
        };
        let published = Arc::new(Published::new(Snapshot::compile(0, spec), workers));
        let peers = Arc::new(Peers::new(s.clone()));
        Model::open(s, published, peers, RedbStore::open(d).unwrap(), None)
    }

    fn open(d: &Path, extra: &str) -> Result<Model, String> {
        open_config(
            d,
            &format!("[node]\nname = \"m\"\n[ipam]\nrange = \"10.32.0.0/12\"\n{extra}"),
        )
    }

    #[test]
    fn everything_comes_back_after_a_restart() {
        let d = dir("restart");
        {
            let m = open(&d.0, "").unwrap();
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
        let m = open(&d.0, "").unwrap();
        assert_eq!(m.lookup("c1"), vec![(Ipv4Addr::new(10, 32, 0, 2), 12)]);
        assert_eq!(m.lookup("c2"), vec![(Ipv4Addr::new(10, 32, 0, 9), 12)]);
        assert!(m.lookup("c3").is_empty());
        assert_eq!(m.records()[0].fqdn, "one.weave.local.");
        assert_eq!(m.exposed(), vec!["10.32.0.7/12".parse::<IpNet>().unwrap()]);
        assert!(m
            .peers
            .snapshot()
            .iter()
            .any(|p| p.control_addr == "198.18.0.9:6783".parse().unwrap()));
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
        assert!(matches!(
            m.claim("c5", "10.32.0.7/12".parse().unwrap(), false),
            Err(ModelError::Bad(_))
        ));
        assert!(m.expose("10.32.0.7/12".parse().unwrap()).is_ok());
        assert_eq!(m.lookup_all(EXPOSE_ID), vec![(Ipv4Addr::new(10, 32, 0, 7), 12)]);
        // The gateway may not be exposed.
        assert!(matches!(
            m.expose("10.32.0.1/12".parse().unwrap()),
            Err(ModelError::Bad(_))
        ));
    }

    #[test]
    fn a_changed_range_with_allocations_is_refused() {
        let d = dir("range");
        {
            let m = open(&d.0, "").unwrap();
            m.allocate("c1", None, false).unwrap();
        }
        let e = open_config(&d.0, "[ipam]\nrange = \"10.64.0.0/12\"\n").map(|_| ());
        let e = e.unwrap_err();
        assert!(e.contains("10.32.0.0/12") && e.contains("10.64.0.0/12"), "{e}");
    }

    #[test]
    fn a_worker_that_does_not_apply_a_change_is_named() {
        let d = dir("behind");
        let m = open_workers(&d.0, "[node]\nname = \"m\"\n", 1).unwrap();
        // Bookkeeping writes do not involve the workers.
        m.allocate("c1", None, false).unwrap();
        let t0 = std::time::Instant::now();
        let e = m.expose("10.32.0.50/12".parse().unwrap()).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_secs(2), "bounded wait");
        let ModelError::Behind(b) = e else { panic!("{e}") };
        assert_eq!(b.worker, 0);
        assert!(b.to_string().contains("worker 0 is behind"), "{b}");
        // The change itself is durable.
        assert_eq!(m.exposed(), vec!["10.32.0.50/12".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn not_ready_until_every_worker_forwards_by_the_state() {
        let d = dir("ready");
        let m = open_workers(&d.0, "[node]\nname = \"m\"\n", 2).unwrap();
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
        let m = open(&d.0, "").unwrap();
        assert!(matches!(m.release(EXPOSE_ID), Err(ModelError::NotFound(_))));
        m.expose("10.32.0.7/12".parse().unwrap()).unwrap();
        assert!(matches!(
            m.claim("c1", "10.32.0.7/12".parse().unwrap(), false),
            Err(ModelError::Bad(_))
        ));
        assert_eq!(m.release(EXPOSE_ID).unwrap(), 1);
        assert!(m.exposed().is_empty());
        assert!(m.lookup_all(EXPOSE_ID).is_empty());
        assert!(m.claim("c1", "10.32.0.7/12".parse().unwrap(), false).is_ok());
        drop(m);
        let m = open(&d.0, "").unwrap();
        assert!(m.exposed().is_empty(), "hidden for good");
    }

    #[test]
    fn concurrent_replacements_store_the_set_that_is_in_force() {
        let d = dir("replace-race");
        let targets = |m: &Model| -> BTreeSet<SocketAddr> {
            m.peers
                .snapshot()
                .iter()
                .filter(|p| p.target)
                .map(|p| p.control_addr)
                .collect()
        };
        let in_force = {
            let m = Arc::new(open(&d.0, "[control]\nsync_timeout_ms = 100\n").unwrap());
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
        let m = open(&d.0, "[control]\nsync_timeout_ms = 100\n").unwrap();
        assert_eq!(targets(&m), in_force, "the stored peer set is the one in force");
    }

    #[test]
    fn errors_map_to_their_kinds() {
        let d = dir("errors");
        let m = open(&d.0, "").unwrap();
        m.allocate("c1", None, false).unwrap();
        assert!(matches!(
            m.claim("c2", "10.32.0.2/12".parse().unwrap(), false),
            Err(ModelError::Bad(_))
        ));
        assert!(matches!(m.release("nobody"), Err(ModelError::NotFound(_))));
        assert!(matches!(
            m.delete_records("c1", "10.32.0.2".parse().unwrap(), None),
            Err(ModelError::NotFound(_))
        ));
        assert!(matches!(
            m.put_record("c1", "10.32.0.2".parse().unwrap(), "bad..name"),
            Err(ModelError::Bad(_))
        ));
        assert_eq!(
            m.allocate("not-a-netns-here", None, true).unwrap(),
            Allocation::Cancelled,
            "check-alive: no namespace, no process"
        );
        assert!(matches!(m.remove_peer("ghost"), Err(ModelError::NotFound(_))));
    }
}
