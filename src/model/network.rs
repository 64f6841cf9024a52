//! Container networks and their endpoints: what Docker's network API and libnetwork's
//! remote driver API describe, decided here and carried out by the host layer.
//!
//! A network is a subnet with a gateway, a VNI and an `internal` flag. It spans hosts
//! without a shared store: the same name and subnet created on several hosts is one
//! overlay network (its VNI is derived from the name unless Docker's
//! `com.docker.network.driver.overlay.vxlanid_list` option gives it), and each host
//! allocates only from its own `IPRange` and announces that range to its peers.
//!
//! An endpoint is one container's attachment: an address from the network's range, a
//! MAC derived from it (Docker's `02:42` + the IPv4 address), and a veth pair whose
//! host end is named after the endpoint id. Connecting makes the veth before the
//! endpoint is stored (and removes it if the store refuses); a crash in between
//! leaves a host end no stored endpoint names, which [`Model::reconcile`] removes at
//! the next start, together with endpoints whose namespace is gone.
//!
//! The default network (the Weave face's, on `ipam.default_subnet`) is listed like any
//! other, cannot be removed, and is not attachable here: its addresses belong to the
//! Weave face's IPAM.

use super::schema::Row;
use super::txn::Change;
use super::{Error, Model, State};
use crate::host::{Attachment, HostOp, Namespace};
use crate::store::Txn;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The option Docker's overlay driver reads the VNI from.
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The default network's name (Weave's).
pub const DEFAULT_NAME: &str = "weave";
/// The drivers a network may name; all of them mean tunloom's overlay.
pub const DRIVERS: [&str; 4] = ["tunloom", "overlay", "bridge", "weavemesh"];
/// The lowest VNI derived from a name: below it are the VNIs people configure by hand.
const DERIVED_VNI_MIN: u32 = 4096;
const MAX_VNI: u32 = (1 << 24) - 1;

/// A network as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64 hex digits, random (Docker's shape).
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// This host allocates only from here (Docker's `IPRange`); the subnet when unset.
    pub ip_range: Option<Ipv4Net>,
    pub vni: u32,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
}

impl Network {
    /// Where this host allocates and what it announces.
    pub fn range(&self) -> Ipv4Net {
        self.ip_range.unwrap_or(self.subnet)
    }
}

/// An endpoint as stored: an address on a network, under a name, and — once a
/// container joined it — that container's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 64 hex digits, random (libnetwork may give its own).
    pub id: String,
    /// The network's id.
    pub network: String,
    /// The endpoint's name: libnetwork's, or the container's for Docker's connect.
    pub name: String,
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    /// Ports the container exposes (libnetwork's `exposed_ports`: protocol, port).
    #[serde(default)]
    pub exposed_ports: Vec<(u8, u16)>,
    /// The container that joined it, if any.
    pub joined: Option<Joined>,
}

/// A container joined to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The container as the request named it.
    pub container: String,
    /// Its network namespace.
    pub netns: PathBuf,
    /// The namespace's name under `/run/netns`, when it has one.
    pub netns_name: Option<String>,
    /// The name inside the namespace, when the request chose one.
    pub ifname: Option<String>,
    /// The namespace's identity (nsfs device, inode) when it joined: the same
    /// namespace under two paths is one container, and a path that names another
    /// namespace later (a reused pid) is not this container any more.
    #[serde(default)]
    pub ns_id: Option<(u64, u64)>,
}

impl Joined {
    /// Whether `other` is this container's namespace: the same path, or the same
    /// namespace (by identity) under another path.
    pub fn same_namespace(&self, other: &Joined) -> bool {
        self.netns == other.netns || (self.ns_id.is_some() && self.ns_id == other.ns_id)
    }
}

impl Endpoint {
    /// The host end's name: `tlc` and the first 10 hex digits of the id.
    pub fn host_if(&self) -> String {
        host_if(&self.id)
    }

    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    /// The container joined to it, if any.
    pub fn container(&self) -> Option<&str> {
        self.joined.as_ref().map(|j| j.container.as_str())
    }
}

/// The host end's name for endpoint `id`.
pub fn host_if(id: &str) -> String {
    format!("tlc{}", &id[..id.len().min(10)])
}

/// Docker's MAC for an IPv4 address: `02:42` and the address.
pub fn mac_for(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// What creating a network asks for (the faces parse their bodies into this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    pub name: String,
    /// Empty: the default driver.
    pub driver: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// Refuse when a network of that name exists (else the existing one is answered,
    /// when it is the same network).
    pub check_duplicate: bool,
    /// An id the caller chose (libnetwork's `NetworkID`), else a random one.
    pub id: Option<String>,
}

/// Where a container's namespace is, as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub netns_name: Option<String>,
}

impl Sandbox {
    /// A container named by the request: the name of a namespace under `/run/netns`
    /// (as `ip netns add` makes), a pid (its `/proc/<pid>/ns/net`), or a path to a
    /// namespace file of either form.
    pub fn of(container: &str) -> Result<Sandbox, Error> {
        if container.starts_with('/') {
            return Sandbox::at(container);
        }
        if is_pid(container) {
            return Ok(Sandbox {
                netns: PathBuf::from(format!("/proc/{container}/ns/net")),
                netns_name: None,
            });
        }
        if !valid_netns_name(container) {
            return Err(Error::BadContainer(container.to_string()));
        }
        Ok(Sandbox {
            netns: PathBuf::from(format!("/run/netns/{container}")),
            netns_name: Some(container.to_string()),
        })
    }

    /// A namespace by path: `/run/netns/<name>` (or `/var/run/netns/<name>`),
    /// `/proc/<pid>/ns/net` or `/proc/<pid>/task/<tid>/ns/net` — nothing else, so a
    /// request cannot make tunloom open an arbitrary file.
    pub fn at(path: &str) -> Result<Sandbox, Error> {
        let bad = || Error::BadContainer(path.to_string());
        let parts: Vec<&str> = path.strip_prefix('/').ok_or_else(bad)?.split('/').collect();
        let name = match parts.as_slice() {
            ["run", "netns", n] | ["var", "run", "netns", n] if valid_netns_name(n) => Some(n.to_string()),
            ["proc", p, "ns", "net"] if is_pid(p) => None,
            ["proc", p, "task", t, "ns", "net"] if is_pid(p) && is_pid(t) => None,
            _ => return Err(bad()),
        };
        Ok(Sandbox {
            netns: PathBuf::from(path),
            netns_name: name,
        })
    }
}

fn is_pid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit())
}

fn valid_netns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Docker's rule for network names.
fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    n.len() <= 128
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A new random 64-hex id.
pub fn random_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The VNI a network gets from its name: stable on every host, above the hand-set
/// range.
pub fn derived_vni(name: &str) -> u32 {
    let h = Sha256::digest(format!("tunloom network {name}").as_bytes());
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    DERIVED_VNI_MIN + n % (MAX_VNI - DERIVED_VNI_MIN + 1)
}

/// At most this many labels and options together on a network, each key and value at
/// most [`MAX_TEXT`] bytes: they are stored and listed with every network.
const MAX_ENTRIES: usize = 64;
const MAX_TEXT: usize = 1024;

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Why a subnet can never be a network's: addresses the host or the Internet
/// reserve (routing loopback into the TUN and masquerading it would cut the host off
/// its own services).
fn reserved(s: Ipv4Net) -> Option<&'static str> {
    const RESERVED: [(&str, &str); 5] = [
        ("0.0.0.0/8", "in 0.0.0.0/8 (this network)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
        ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4, broadcast)"),
    ];
    RESERVED.iter().find_map(|(net, why)| {
        let net: Ipv4Net = net.parse().ok()?;
        overlaps(&net, &s).then_some(*why)
    })
}

/// The default network's id: stable, from its subnet.
pub fn default_id(subnet: &Ipv4Net) -> String {
    Sha256::digest(format!("tunloom default network {subnet}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The networks and endpoints behind the model's lock.
#[derive(Debug, Default)]
pub(crate) struct Networks {
    pub by_id: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Addresses held per network id.
    pub used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

impl Networks {
    fn by_name(&self, name: &str) -> Option<&Network> {
        self.by_id.values().find(|n| n.name == name)
    }

    fn endpoints_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.values().filter(move |e| e.network == network)
    }

    /// The first free address of `net`'s range: not its network or broadcast
    /// address, not the gateway, not held.
    fn free_address(&self, net: &Network) -> Option<Ipv4Addr> {
        let range = net.range();
        let used = self.used.get(&net.id);
        let (first, last) = (u32::from(range.network()), u32::from(range.broadcast()));
        let (sub_first, sub_last) = (u32::from(net.subnet.network()), u32::from(net.subnet.broadcast()));
        (first..=last)
            .filter(|a| net.subnet.prefix_len() >= 31 || (*a != sub_first && *a != sub_last))
            .map(Ipv4Addr::from)
            .find(|a| *a != net.gateway && !used.is_some_and(|u| u.contains(a)))
    }

    fn hold(&mut self, net: &str, a: Ipv4Addr) {
        self.used.entry(net.to_string()).or_default().insert(a);
    }

    fn unhold(&mut self, net: &str, a: Ipv4Addr) {
        if let Some(u) = self.used.get_mut(net) {
            u.remove(&a);
        }
    }
}

/// What the faces show of a network: the network, and its endpoints here.
#[derive(Debug, Clone)]
pub struct NetworkView {
    pub network: Network,
    /// The default network: listed, not removable, not attachable here.
    pub default: bool,
    pub endpoints: Vec<Endpoint>,
}

/// What connecting asks for.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// The network, by id, id prefix or name.
    pub network: String,
    pub container: String,
    /// An explicit namespace path (an extension field); else from `container`.
    pub netns: Option<PathBuf>,
    pub address: Option<Ipv4Addr>,
    /// An endpoint id the caller chose (libnetwork), else random.
    pub endpoint_id: Option<String>,
    pub ifname: Option<String>,
    /// libnetwork's `exposed_ports`: (protocol, port).
    pub exposed_ports: Vec<(u8, u16)>,
}

impl Model {
    /// The default network, as the Weave face's IPAM defines it.
    fn default_network(&self, st: &State) -> Network {
        let subnet = st.default_subnet;
        Network {
            id: default_id(&subnet),
            name: DEFAULT_NAME.into(),
            driver: "weavemesh".into(),
            subnet,
            gateway: super::ipam::gateway(&subnet),
            ip_range: None,
            vni: self.settings.snapshot.vni,
            internal: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            created_ns: 0,
        }
    }

    /// Every network, the default one first.
    pub fn networks(&self) -> Vec<NetworkView> {
        let st = self.state.lock();
        let mut v = vec![NetworkView {
            network: self.default_network(&st),
            default: true,
            endpoints: Vec::new(),
        }];
        let mut nets: Vec<&Network> = st.networks.by_id.values().collect();
        nets.sort_by_key(|n| (n.created_ns, n.name.clone()));
        v.extend(nets.into_iter().map(|n| view(&st, n)));
        v
    }

    /// A network by id, name, or unique id prefix (Docker's lookup order).
    pub fn network(&self, key: &str) -> Result<NetworkView, Error> {
        let st = self.state.lock();
        if self.is_default(&st, key) {
            return Ok(NetworkView {
                network: self.default_network(&st),
                default: true,
                endpoints: Vec::new(),
            });
        }
        let n = find(&st, key)?;
        Ok(view(&st, &n))
    }

    /// Creates a network. Returns it and whether it already existed (the same
    /// network created again without `check_duplicate`).
    pub fn create_network(&self, req: NetworkRequest) -> Result<(Network, bool), Error> {
        if !valid_name(&req.name) {
            return Err(Error::BadNetwork(format!(
                "network name {:?} is not valid: 1 to 128 characters [a-zA-Z0-9][a-zA-Z0-9_.-]",
                req.name
            )));
        }
        if let Some(id) = &req.id {
            if !valid_id(id) {
                return Err(Error::BadNetwork(format!(
                    "network id {id:?} is not 64 lower-case hex digits"
                )));
            }
        }
        let driver = if req.driver.is_empty() {
            "tunloom".to_string()
        } else {
            req.driver.clone()
        };
        if !DRIVERS.contains(&driver.as_str()) {
            return Err(Error::UnknownDriver(format!(
                "driver {driver:?} is not served here: tunloom serves {}",
                DRIVERS.join(", ")
            )));
        }
        let vni = match req.options.get(VXLANID_OPTION) {
            Some(v) => {
                let first = v.split(',').next().unwrap_or("").trim();
                match first.parse::<u32>() {
                    Ok(n) if (1..=MAX_VNI).contains(&n) => n,
                    _ => {
                        return Err(Error::BadNetwork(format!(
                            "{VXLANID_OPTION} = {v:?}: the VNI must be a number from 1 to {MAX_VNI}"
                        )))
                    }
                }
            }
            None => derived_vni(&req.name),
        };
        if req.labels.len() + req.options.len() > MAX_ENTRIES
            || req
                .labels
                .iter()
                .chain(&req.options)
                .any(|(k, v)| k.len() > MAX_TEXT || v.len() > MAX_TEXT)
        {
            return Err(Error::BadNetwork(format!(
                "labels and options: at most {MAX_ENTRIES} entries in all, each key and value at most {MAX_TEXT} bytes"
            )));
        }
        // Asked before the lock: the host's routes change rarely, and a dump may take
        // a while on a host with many.
        let host_routes = self.kernel.host_routes()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.write(|st| {
            if req.name == DEFAULT_NAME {
                return Err(Error::NetworkExists(req.name.clone()));
            }
            if let Some(existing) = st.networks.by_name(&req.name) {
                let same = req.subnet.is_none_or(|s| s.trunc() == existing.subnet)
                    && req.internal == existing.internal
                    && req.ip_range.is_none_or(|r| Some(r.trunc()) == existing.ip_range);
                if req.check_duplicate || !same {
                    return Err(Error::NetworkExists(req.name.clone()));
                }
                let row = Row::Network(Box::new(existing.clone()));
                return Ok(Change::guarded((existing.clone(), true), row.stored()));
            }
            if st.networks.by_id.len() >= self.settings.networks.max {
                return Err(Error::BadNetwork(format!(
                    "this node holds {} networks, the most networks.max allows",
                    st.networks.by_id.len()
                )));
            }
            if vni == self.settings.snapshot.vni {
                return Err(Error::BadNetwork(format!(
                    "VNI {vni} is the default network's (dataplane.vni); give another in {VXLANID_OPTION}"
                )));
            }
            if let Some(other) = st.networks.by_id.values().find(|n| n.vni == vni) {
                return Err(Error::BadNetwork(format!(
                    "VNI {vni} is network {}'s; give another in {VXLANID_OPTION}",
                    other.name
                )));
            }
            let subnet = match req.subnet {
                Some(s) => {
                    let s = s.trunc();
                    if s.prefix_len() > 30 || s.prefix_len() < 8 {
                        return Err(Error::BadNetwork(format!(
                            "subnet {s}: the prefix length must be from 8 to 30"
                        )));
                    }
                    if let Some(why) = reserved(s) {
                        return Err(Error::BadNetwork(format!("subnet {s} is {why}")));
                    }
                    self.check_overlap(st, s)?;
                    s
                }
                None => self.pool_subnet(st, &host_routes)?,
            };
            if let Some(r) = host_routes.iter().find(|r| overlaps(r, &subnet)) {
                return Err(Error::Overlap(format!(
                    "subnet {subnet} overlaps {r}, which this host routes itself"
                )));
            }
            let gateway = match req.gateway {
                Some(g) if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() => {
                    return Err(Error::BadNetwork(format!(
                        "gateway {g} is not a host address of subnet {subnet}"
                    )))
                }
                Some(g) => g,
                None => Ipv4Addr::from(u32::from(subnet.network()) + 1),
            };
            let ip_range = match req.ip_range {
                Some(r) if !subnet.contains(&r) => {
                    return Err(Error::BadNetwork(format!("IPRange {r} is not inside subnet {subnet}")))
                }
                Some(r) => Some(r.trunc()),
                None => None,
            };
            let probe = Network {
                id: String::new(),
                name: String::new(),
                driver: String::new(),
                subnet,
                gateway,
                ip_range,
                vni,
                internal: false,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                created_ns: 0,
            };
            if Networks::default().free_address(&probe).is_none() {
                return Err(Error::BadNetwork(format!(
                    "IPRange {} holds no address a container could have (not the network, broadcast or gateway address)",
                    probe.range()
                )));
            }
            let id = req.id.clone().unwrap_or_else(random_id);
            if st.networks.by_id.contains_key(&id) {
                return Err(Error::NetworkExists(id));
            }
            let net = Network {
                id: id.clone(),
                name: req.name.clone(),
                driver: driver.clone(),
                subnet,
                gateway,
                ip_range,
                vni,
                internal: req.internal,
                labels: req.labels.clone(),
                options: req.options.clone(),
                created_ns: now,
            };
            let row = Row::Network(Box::new(net.clone()));
            st.networks.by_id.insert(id.clone(), net.clone());
            let txn = Txn {
                compare: vec![row.absent()],
                ops: vec![row.put()],
            };
            let mut change = Change::stored((net.clone(), false), txn, move |st: &mut State| {
                st.networks.by_id.remove(&id);
            })
            .routing();
            change.before = self.network_ops(&net);
            Ok(change)
        })
    }

    /// The host changes a network needs: its subnet routed into the TUN and, unless
    /// internal, masqueraded on the way out.
    fn network_ops(&self, net: &Network) -> Vec<HostOp> {
        let mut ops = vec![HostOp::AddRoute(ipnet::IpNet::V4(net.subnet))];
        if !net.internal && self.settings.networks.masquerade {
            ops.push(HostOp::AddEgress(net.subnet));
        }
        ops
    }

    /// Refuses a subnet that overlaps another network, the Weave range, or the
    /// overlay's configured prefixes.
    fn check_overlap(&self, st: &State, s: Ipv4Net) -> Result<(), Error> {
        if let Some(n) = st.networks.by_id.values().find(|n| overlaps(&n.subnet, &s)) {
            return Err(Error::Overlap(format!(
                "subnet {s} overlaps network {} ({})",
                n.name, n.subnet
            )));
        }
        let range = st.ipam.range();
        if overlaps(&range, &s) {
            return Err(Error::Overlap(format!(
                "subnet {s} overlaps the default network's IPAM range {range} (ipam.range)"
            )));
        }
        for p in &self.settings.overlay {
            if let ipnet::IpNet::V4(p) = p {
                if overlaps(p, &s) && !self.settings.networks.pool.contains(p) {
                    return Err(Error::Overlap(format!(
                        "subnet {s} overlaps overlay route {p} (overlay.routes)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first block of `networks.pool` no network overlaps.
    fn pool_subnet(&self, st: &State, host_routes: &[Ipv4Net]) -> Result<Ipv4Net, Error> {
        let pool = self.settings.networks.pool;
        let len = self.settings.networks.prefix;
        let blocks = pool
            .subnets(len)
            .map_err(|_| Error::BadNetwork(format!("networks.prefix {len} does not fit networks.pool {pool}")))?;
        for b in blocks {
            if self.check_overlap(st, b).is_ok() && !host_routes.iter().any(|r| overlaps(r, &b)) {
                return Ok(b);
            }
        }
        Err(Error::PoolExhausted(pool))
    }

    /// Removes a network that has no endpoints here.
    pub fn remove_network(&self, key: &str) -> Result<Network, Error> {
        self.write(|st| {
            if self.is_default(st, key) {
                return Err(Error::DefaultNetwork);
            }
            let net = find(st, key)?;
            let n = st.networks.endpoints_of(&net.id).count();
            if n > 0 {
                return Err(Error::ActiveEndpoints {
                    name: net.name.clone(),
                    id: net.id.clone(),
                    count: n,
                });
            }
            st.networks.by_id.remove(&net.id);
            st.networks.used.remove(&net.id);
            let row = Row::Network(Box::new(net.clone()));
            let back = net.clone();
            let mut change = Change::stored(net.clone(), Txn::ops(vec![row.delete()]), move |st: &mut State| {
                st.networks.by_id.insert(back.id.clone(), back);
            })
            .routing();
            change.after = self.network_ops(&net).iter().map(HostOp::inverse).collect();
            Ok(change)
        })
    }

    /// Removes every network without endpoints here (not the default one); returns
    /// their names.
    pub fn prune_networks(&self) -> Result<Vec<String>, Error> {
        let idle: Vec<String> = {
            let st = self.state.lock();
            st.networks
                .by_id
                .values()
                .filter(|n| st.networks.endpoints_of(&n.id).next().is_none())
                .map(|n| n.id.clone())
                .collect()
        };
        let mut names = Vec::new();
        for id in idle {
            match self.remove_network(&id) {
                Ok(n) => names.push(n.name),
                // Connected to or removed meanwhile: not idle after all.
                Err(Error::ActiveEndpoints { .. } | Error::NoNetwork(_)) => {}
                Err(e) => return Err(e),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether `key` names the default network: its exact id or name, or a prefix
    /// of its id that is no other network's id, name or id prefix (Docker's order:
    /// exact id, exact name, then unique prefix).
    fn is_default(&self, st: &State, key: &str) -> bool {
        let id = default_id(&st.default_subnet);
        if key == id || key == DEFAULT_NAME {
            return true;
        }
        let nets = &st.networks;
        key.len() >= 3
            && id.starts_with(key)
            && nets.by_id.get(key).or_else(|| nets.by_name(key)).is_none()
            && !nets.by_id.keys().any(|other| other.starts_with(key))
    }

    /// Creates an endpoint and joins `req.container` to it in one change (Docker's
    /// connect): an address, a veth in its namespace, and the endpoint stored.
    /// Answers once it is durable and in force.
    pub fn attach(&self, req: ConnectRequest) -> Result<Endpoint, Error> {
        let joined = self.joining(&req.container, req.netns.as_deref(), req.ifname.clone())?;
        let planned = self.planned(&req)?;
        self.write(|st| {
            if !self.is_default(st, &req.network) {
                let net = find(st, &req.network)?;
                let already = st
                    .networks
                    .endpoints_of(&net.id)
                    .filter_map(|e| e.joined.as_ref())
                    .find(|j| j.container == joined.container || j.same_namespace(&joined))
                    .map(|j| j.container.clone());
                if let Some(container) = already {
                    return Err(Error::AlreadyAttached {
                        container,
                        network: net.name.clone(),
                    });
                }
            }
            let (net, mut ep) = self.new_endpoint(st, &req.network, &req.container, planned.clone())?;
            ep.joined = Some(joined.clone());
            Ok(self.store_new(st, &net, ep))
        })
    }

    /// Creates an endpoint without a container (libnetwork's endpoint create).
    pub fn create_endpoint(&self, req: ConnectRequest, name: &str) -> Result<Endpoint, Error> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(Error::BadEndpoint(format!(
                "endpoint name {name:?} must be 1 to 256 printable characters"
            )));
        }
        let planned = self.planned(&req)?;
        self.write(|st| {
            let (net, ep) = self.new_endpoint(st, &req.network, name, planned.clone())?;
            Ok(self.store_new(st, &net, ep))
        })
    }

    /// Joins a container to an endpoint made by [`Model::create_endpoint`].
    pub fn join(&self, endpoint: &str, container: &str, netns: Option<&Path>) -> Result<Endpoint, Error> {
        let joined = self.joining(container, netns, None)?;
        self.write(|st| {
            let (net, ep) = endpoint_on(st, endpoint)?;
            let twice = st
                .networks
                .endpoints_of(&net.id)
                .filter_map(|e| e.joined.as_ref())
                .find(|j| j.container == joined.container || j.same_namespace(&joined))
                .map(|j| j.container.clone());
            if let Some(c) = ep.container().map(str::to_string).or(twice) {
                return Err(Error::AlreadyAttached {
                    container: c,
                    network: net.name.clone(),
                });
            }
            let new = Endpoint {
                joined: Some(joined.clone()),
                ..ep.clone()
            };
            Ok(self.replace(st, &net, ep, new))
        })
    }

    /// Takes a container off an endpoint, which stays (libnetwork's leave).
    pub fn leave(&self, endpoint: &str, container: &str) -> Result<Endpoint, Error> {
        self.write(|st| {
            let (net, ep) = endpoint_on(st, endpoint)?;
            if ep.container() != Some(container) {
                return Err(Error::NotAttached {
                    container: container.to_string(),
                    network: net.name.clone(),
                });
            }
            let new = Endpoint {
                joined: None,
                ..ep.clone()
            };
            Ok(self.replace(st, &net, ep, new))
        })
    }

    /// Detaches a container (by the name it was connected with) from a network and
    /// removes its endpoint (Docker's disconnect).
    pub fn detach(&self, network: &str, container: &str) -> Result<Endpoint, Error> {
        let key = {
            let st = self.state.lock();
            if self.is_default(&st, network) {
                return Err(Error::DefaultNetwork);
            }
            let net = find(&st, network)?;
            let ep = st
                .networks
                .endpoints_of(&net.id)
                .find(|e| e.container() == Some(container))
                .ok_or_else(|| Error::NotAttached {
                    container: container.to_string(),
                    network: net.name.clone(),
                })?;
            ep.id.clone()
        };
        self.remove_endpoint(&key, true)
    }

    /// Removes an endpoint by id and releases its address; one a container is joined
    /// to only with `force` (its veth goes too).
    pub fn remove_endpoint(&self, id: &str, force: bool) -> Result<Endpoint, Error> {
        let mtu = u32::from(self.settings.snapshot.mtu);
        self.write(|st| {
            let ep = st
                .networks
                .endpoints
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NoEndpoint(id.to_string()))?;
            if let (Some(c), false) = (ep.container(), force) {
                return Err(Error::EndpointInUse {
                    endpoint: ep.name.clone(),
                    container: c.to_string(),
                });
            }
            st.networks.endpoints.remove(id);
            st.networks.unhold(&ep.network, ep.address);
            let net = st.networks.by_id.get(&ep.network).cloned();
            let row = Row::Endpoint(Box::new(ep.clone()));
            let back = ep.clone();
            let mut change = Change::stored(ep.clone(), Txn::ops(vec![row.delete()]), move |st: &mut State| {
                st.networks.hold(&back.network, back.address);
                st.networks.endpoints.insert(back.id.clone(), back);
            });
            if let (Some(net), Some(a)) = (net, attachment(&ep, mtu)) {
                change
                    .after
                    .push(HostOp::Detach(Box::new(keep_shared(st, a.on(&net), &ep))));
            }
            Ok(change)
        })
    }

    /// An endpoint by id.
    pub fn endpoint(&self, id: &str) -> Option<Endpoint> {
        self.state.lock().networks.endpoints.get(id).cloned()
    }

    /// Every endpoint here.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.state.lock().networks.endpoints.values().cloned().collect()
    }

    /// Checks what a request names before anything is decided: the container's
    /// namespace must exist.
    fn joining(&self, container: &str, netns: Option<&Path>, ifname: Option<String>) -> Result<Joined, Error> {
        if container.is_empty() || container.len() > 256 || container.chars().any(char::is_control) {
            return Err(Error::BadContainer(container.to_string()));
        }
        let sandbox = match netns {
            Some(p) => Sandbox::at(&p.to_string_lossy())?,
            None => Sandbox::of(container)?,
        };
        if let Some(n) = &ifname {
            if n.is_empty() || n.len() > 15 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                return Err(Error::BadEndpoint(format!(
                    "interface name {n:?} is not valid (1 to 15 characters)"
                )));
            }
        }
        let shown = sandbox.netns.display().to_string();
        let ns_id = match self.liveness.namespace(&sandbox.netns) {
            Namespace::Found { dev, ino } => (dev, ino),
            Namespace::Missing => return Err(Error::NoNamespace(shown)),
            Namespace::NotNamespace => return Err(Error::BadEndpoint(format!("{shown} is not a network namespace"))),
            Namespace::Host => {
                return Err(Error::BadEndpoint(format!(
                    "{shown} is tunloom's own network namespace or the host's; attaching it would rewire the host"
                )))
            }
        };
        Ok(Joined {
            container: container.to_string(),
            netns: sandbox.netns,
            netns_name: sandbox.netns_name,
            ifname,
            ns_id: Some(ns_id),
        })
    }

    /// The parts of a new endpoint a request may fix.
    fn planned(&self, req: &ConnectRequest) -> Result<Planned, Error> {
        if let Some(id) = &req.endpoint_id {
            if !valid_id(id) {
                return Err(Error::BadEndpoint(format!(
                    "endpoint id {id:?} is not 64 lower-case hex digits"
                )));
            }
        }
        Ok(Planned {
            id: req.endpoint_id.clone().unwrap_or_else(random_id),
            address: req.address,
            exposed_ports: req.exposed_ports.clone(),
        })
    }

    /// Decides a new endpoint on `network` (no container yet) and holds its address.
    fn new_endpoint(
        &self,
        st: &mut State,
        network: &str,
        name: &str,
        p: Planned,
    ) -> Result<(Network, Endpoint), Error> {
        if self.is_default(st, network) {
            return Err(Error::DefaultNetwork);
        }
        let net = find(st, network)?;
        if st.networks.endpoints_of(&net.id).any(|e| e.name == name) {
            return Err(Error::EndpointExists(name.to_string()));
        }
        if st.networks.endpoints.contains_key(&p.id)
            || st.networks.endpoints.values().any(|e| e.host_if() == host_if(&p.id))
        {
            return Err(Error::EndpointExists(p.id));
        }
        let address = match p.address {
            Some(a) => {
                if !net.subnet.contains(&a) || a == net.subnet.network() || a == net.subnet.broadcast() {
                    return Err(Error::BadEndpoint(format!(
                        "{a} is not a host address of network {}'s subnet {}",
                        net.name, net.subnet
                    )));
                }
                if !net.range().contains(&a) {
                    return Err(Error::BadEndpoint(format!(
                        "{a} is outside {}, the part of network {}'s subnet this host allocates from (IPRange); another host's containers have those",
                        net.range(),
                        net.name
                    )));
                }
                if a == net.gateway {
                    return Err(Error::BadEndpoint(format!("{a} is network {}'s gateway", net.name)));
                }
                if st.networks.used.get(&net.id).is_some_and(|u| u.contains(&a)) {
                    let holder = st
                        .networks
                        .endpoints_of(&net.id)
                        .find(|e| e.address == a)
                        .map_or_else(String::new, |e| e.name.clone());
                    return Err(Error::Held { addr: a, holder });
                }
                a
            }
            None => st
                .networks
                .free_address(&net)
                .ok_or_else(|| Error::NetworkFull(net.name.clone()))?,
        };
        let ep = Endpoint {
            id: p.id,
            network: net.id.clone(),
            name: name.to_string(),
            address,
            mac: mac_for(address),
            exposed_ports: p.exposed_ports,
            joined: None,
        };
        Ok((net, ep))
    }

    /// Stores a new endpoint (and makes its veth first when a container joins it).
    fn store_new(&self, st: &mut State, net: &Network, ep: Endpoint) -> Change<Endpoint> {
        let mtu = u32::from(self.settings.snapshot.mtu);
        st.networks.hold(&net.id, ep.address);
        st.networks.endpoints.insert(ep.id.clone(), ep.clone());
        let row = Row::Endpoint(Box::new(ep.clone()));
        let txn = Txn {
            compare: vec![row.absent()],
            ops: vec![row.put()],
        };
        let (id, net_id, address) = (ep.id.clone(), net.id.clone(), ep.address);
        let mut change = Change::stored(ep.clone(), txn, move |st: &mut State| {
            st.networks.endpoints.remove(&id);
            st.networks.unhold(&net_id, address);
        });
        if let Some(a) = attachment(&ep, mtu) {
            change.before.push(HostOp::Attach(Box::new(a.on(net))));
        }
        change
    }

    /// Stores an endpoint joined or left: the veth made before, or removed after.
    fn replace(&self, st: &mut State, net: &Network, old: Endpoint, new: Endpoint) -> Change<Endpoint> {
        let mtu = u32::from(self.settings.snapshot.mtu);
        st.networks.endpoints.insert(new.id.clone(), new.clone());
        let (from, to) = (
            Row::Endpoint(Box::new(old.clone())),
            Row::Endpoint(Box::new(new.clone())),
        );
        let txn = Txn {
            compare: vec![from.stored()],
            ops: vec![to.put()],
        };
        let back = old.clone();
        let mut change = Change::stored(new.clone(), txn, move |st: &mut State| {
            st.networks.endpoints.insert(back.id.clone(), back);
        });
        if let Some(a) = attachment(&new, mtu) {
            change.before.push(HostOp::Attach(Box::new(a.on(net))));
        }
        if let (Some(a), None) = (attachment(&old, mtu), &new.joined) {
            change
                .after
                .push(HostOp::Detach(Box::new(keep_shared(st, a.on(net), &old))));
        }
        change
    }

    /// Makes the host match the stored networks and endpoints, once at start: each
    /// network's route and egress; an endpoint whose namespace is gone is removed
    /// and its address released; one whose veth is missing gets it again; a host
    /// end no endpoint names (a crash mid-connect) is removed.
    pub fn reconcile(&self) -> Result<Reconciled, Error> {
        let mtu = u32::from(self.settings.snapshot.mtu);
        let (nets, eps) = {
            let st = self.state.lock();
            let nets: Vec<Network> = st.networks.by_id.values().cloned().collect();
            let eps: Vec<Endpoint> = st.networks.endpoints.values().cloned().collect();
            (nets, eps)
        };
        // Each step on its own: one that fails is reported, and the others still run.
        let mut done = Reconciled::default();
        for n in &nets {
            for op in self.network_ops(n) {
                if let Err(e) = self.kernel.apply(&op) {
                    done.failed.push(format!("network {}: {e}", n.name));
                }
            }
        }
        let links: BTreeSet<String> = self.kernel.host_links()?.into_iter().collect();
        for ep in &eps {
            let Some(net) = nets.iter().find(|n| n.id == ep.network) else {
                match self.remove_endpoint(&ep.id, true) {
                    Ok(_) => {
                        log::warn!("endpoint {} named a network that is gone; removed", ep.id);
                        done.removed.push(ep.name.clone());
                    }
                    Err(e) => done.failed.push(format!("endpoint {}: {e}", ep.id)),
                }
                continue;
            };
            let (Some(j), Some(a)) = (&ep.joined, attachment(ep, mtu)) else {
                continue;
            };
            let now = match self.liveness.namespace(&j.netns) {
                Namespace::Found { dev, ino } => Some((dev, ino)),
                _ => None,
            };
            if now.is_none() || (j.ns_id.is_some() && now != j.ns_id) {
                match self.remove_endpoint(&ep.id, true) {
                    Ok(_) => {
                        log::warn!(
                            "endpoint {}: the namespace {} of container {} is gone (or is another one now); endpoint removed and {} released",
                            ep.id,
                            j.netns.display(),
                            j.container,
                            ep.address
                        );
                        done.removed.push(j.container.clone());
                    }
                    Err(e) => done.failed.push(format!("endpoint {} ({}): {e}", ep.id, j.container)),
                }
            } else if !links.contains(&ep.host_if()) {
                match self.kernel.apply(&HostOp::Attach(Box::new(a.on(net)))) {
                    Ok(()) => {
                        log::warn!(
                            "endpoint {}: veth {} of container {} was missing; made again",
                            ep.id,
                            ep.host_if(),
                            j.container
                        );
                        done.recreated.push(j.container.clone());
                    }
                    Err(e) => done.failed.push(format!("endpoint {} ({}): {e}", ep.id, j.container)),
                }
            }
        }
        let named: BTreeSet<String> = eps
            .iter()
            .filter(|e| e.joined.is_some())
            .map(Endpoint::host_if)
            .collect();
        for l in links.iter().filter(|l| !named.contains(*l)) {
            let stray = Attachment {
                netns: PathBuf::new(),
                netns_name: None,
                host_if: l.clone(),
                ifname: None,
                address: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 32).unwrap_or_default(),
                gateway: Ipv4Addr::UNSPECIFIED,
                mac: [0; 6],
                nameserver: None,
                mtu,
            };
            match self.kernel.apply(&HostOp::Detach(Box::new(stray))) {
                Ok(()) => {
                    log::warn!("veth {l} belonged to no stored endpoint (a connect cut short); removed");
                    done.strays.push(l.clone());
                }
                Err(e) => done.failed.push(format!("stray veth {l}: {e}")),
            }
        }
        for f in &done.failed {
            log::error!("networks: reconciling: {f}");
        }
        Ok(done)
    }
}

/// What a request fixed of a new endpoint.
#[derive(Debug, Clone)]
struct Planned {
    id: String,
    address: Option<Ipv4Addr>,
    exposed_ports: Vec<(u8, u16)>,
}

/// An attachment before the network's part is filled in.
struct Partial(Attachment);

impl Partial {
    fn on(mut self, net: &Network) -> Attachment {
        self.0.address = Ipv4Net::new(self.0.address.addr(), net.subnet.prefix_len()).unwrap_or(self.0.address);
        self.0.gateway = net.gateway;
        self.0.nameserver = Some(net.gateway);
        self.0
    }
}

/// What reconciling did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Containers whose endpoints were removed (namespace gone).
    pub removed: Vec<String>,
    /// Containers whose veths were made again.
    pub recreated: Vec<String>,
    /// Host ends removed that no endpoint named.
    pub strays: Vec<String>,
    /// What could not be made right, and why.
    pub failed: Vec<String>,
}

/// The host's view of a joined endpoint (`None` when no container joined it).
fn attachment(ep: &Endpoint, mtu: u32) -> Option<Partial> {
    let j = ep.joined.as_ref()?;
    Some(Partial(Attachment {
        netns: j.netns.clone(),
        netns_name: j.netns_name.clone(),
        host_if: ep.host_if(),
        ifname: j.ifname.clone(),
        address: Ipv4Net::from(ep.address),
        gateway: Ipv4Addr::UNSPECIFIED,
        mac: ep.mac,
        nameserver: None,
        mtu,
    }))
}

/// A detach that leaves the namespace's resolv.conf alone while another attachment
/// of the same namespace remains (it names that attachment's gateway).
fn keep_shared(st: &State, mut a: Attachment, gone: &Endpoint) -> Attachment {
    let Some(ns) = &gone.joined else { return a };
    let shared = st
        .networks
        .endpoints
        .values()
        .filter(|e| e.id != gone.id)
        .filter_map(|e| e.joined.as_ref())
        .any(|j| j.same_namespace(ns));
    if shared {
        a.netns_name = None;
    }
    a
}

fn view(st: &State, n: &Network) -> NetworkView {
    NetworkView {
        network: n.clone(),
        default: false,
        endpoints: st.networks.endpoints_of(&n.id).cloned().collect(),
    }
}

/// An endpoint by id, and its network.
fn endpoint_on(st: &State, id: &str) -> Result<(Network, Endpoint), Error> {
    let ep = st
        .networks
        .endpoints
        .get(id)
        .cloned()
        .ok_or_else(|| Error::NoEndpoint(id.to_string()))?;
    let net = st
        .networks
        .by_id
        .get(&ep.network)
        .cloned()
        .ok_or_else(|| Error::NoNetwork(ep.network.clone()))?;
    Ok((net, ep))
}

/// A network by id, name, or unique id prefix.
fn find(st: &State, key: &str) -> Result<Network, Error> {
    let nets = &st.networks;
    if let Some(n) = nets.by_id.get(key).or_else(|| nets.by_name(key)) {
        return Ok(n.clone());
    }
    let default = default_id(&st.default_subnet);
    if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) && !default.starts_with(key) {
        let mut m = nets.by_id.values().filter(|n| n.id.starts_with(key));
        if let (Some(n), None) = (m.next(), m.next()) {
            return Ok(n.clone());
        }
    }
    Err(Error::NoNetwork(key.to_string()))
}

/// Loads networks and endpoints from stored rows, holding each endpoint's address.
pub(crate) fn restore(rows: &[Row]) -> Networks {
    let mut n = Networks::default();
    for r in rows {
        if let Row::Network(net) = r {
            n.by_id.insert(net.id.clone(), (**net).clone());
        }
    }
    for r in rows {
        if let Row::Endpoint(ep) = r {
            if n.by_id.contains_key(&ep.network) {
                n.hold(&ep.network, ep.address);
            }
            n.endpoints.insert(ep.id.clone(), (**ep).clone());
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Recorder;
    use crate::model::{Kind, Model};
    use crate::store::redb::RedbStore;
    use crate::testkit::{model_on, model_settings, TempDir};
    use std::path::Path;
    use std::sync::Arc;

    fn open(d: &Path) -> (Model, Arc<Recorder>) {
        model_on(model_settings("10.32.0.0/12"), RedbStore::open(d).unwrap(), 0).unwrap()
    }

    fn named(name: &str) -> NetworkRequest {
        NetworkRequest {
            name: name.into(),
            ..NetworkRequest::default()
        }
    }

    fn on(network: &str, container: &str) -> ConnectRequest {
        ConnectRequest {
            network: network.into(),
            container: container.into(),
            ..ConnectRequest::default()
        }
    }

    fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> Kind {
        r.unwrap_err().kind()
    }

    #[test]
    fn networks_get_pool_subnets_and_refuse_what_overlaps() {
        let d = TempDir::new("net-create");
        let (m, host) = open(&d.0);
        let (a, again) = m.create_network(named("app")).unwrap();
        assert!(!again);
        assert_eq!(a.subnet, "10.48.0.0/24".parse().unwrap());
        assert_eq!(a.gateway, Ipv4Addr::new(10, 48, 0, 1));
        assert_eq!(a.vni, derived_vni("app"));
        assert!(a.id.len() == 64 && valid_id(&a.id));
        assert_eq!(
            host.ops(),
            vec![
                HostOp::AddRoute("10.48.0.0/24".parse().unwrap()),
                HostOp::AddEgress(a.subnet)
            ]
        );
        let b = m.create_network(named("other")).unwrap().0;
        assert_eq!(b.subnet, "10.48.1.0/24".parse().unwrap());
        // The same network again is answered; with check_duplicate it is refused.
        assert_eq!(m.create_network(named("app")).unwrap(), (a.clone(), true));
        let dup = NetworkRequest {
            check_duplicate: true,
            ..named("app")
        };
        let e = m.create_network(dup).unwrap_err();
        assert_eq!(
            (e.kind(), e.to_string()),
            (Kind::Conflict, "network with name app already exists".into())
        );
        let with = |name: &str, subnet: &str| NetworkRequest {
            subnet: Some(subnet.parse().unwrap()),
            ..named(name)
        };
        assert_eq!(kind(m.create_network(with("x", "10.48.0.128/25"))), Kind::Conflict);
        assert_eq!(kind(m.create_network(with("x", "10.0.0.0/8"))), Kind::Conflict);
        assert_eq!(
            kind(m.create_network(with("x", "10.33.0.0/16"))),
            Kind::Conflict,
            "the Weave range"
        );
        assert_eq!(kind(m.create_network(named("weave"))), Kind::Conflict);
        assert_eq!(kind(m.create_network(named("-bad"))), Kind::Invalid);
        let gw = NetworkRequest {
            gateway: Some(Ipv4Addr::new(10, 60, 0, 1)),
            ..with("x", "10.60.1.0/24")
        };
        assert_eq!(kind(m.create_network(gw)), Kind::Invalid);
        let vni = |name: &str, v: &str| NetworkRequest {
            options: [(VXLANID_OPTION.to_string(), v.to_string())].into(),
            ..named(name)
        };
        assert_eq!(m.create_network(vni("v", "4242")).unwrap().0.vni, 4242);
        assert_eq!(
            kind(m.create_network(vni("w", "4242"))),
            Kind::Invalid,
            "a VNI another network has"
        );
        assert_eq!(kind(m.create_network(vni("w", "0"))), Kind::Invalid);
        assert_eq!(
            kind(m.create_network(vni("w", "1"))),
            Kind::Invalid,
            "the default network's"
        );
        let internal = NetworkRequest {
            internal: true,
            ..with("quiet", "198.19.7.0/24")
        };
        let q = m.create_network(internal).unwrap().0;
        assert!(
            !host.ops().contains(&HostOp::AddEgress(q.subnet)),
            "internal networks are not masqueraded"
        );
        // Lookups by name, id and id prefix; the default network is listed first.
        assert_eq!(m.network(&a.id[..12]).unwrap().network.name, "app");
        assert_eq!(m.network("other").unwrap().network.id, b.id);
        let names: Vec<String> = m.networks().into_iter().map(|v| v.network.name).collect();
        assert_eq!(names, ["weave", "app", "other", "v", "quiet"]);
        assert_eq!(kind(m.network("nope")), Kind::NotFound);
        assert_eq!(kind(m.remove_network("weave")), Kind::Forbidden);
    }

    #[test]
    fn attachments_hold_addresses_survive_restarts_and_reconcile() {
        let d = TempDir::new("net-attach");
        let ns = |n: &str| PathBuf::from(format!("/run/netns/{n}"));
        let (c1, c3) = {
            let (m, host) = open(&d.0);
            let app = m.create_network(named("app")).unwrap().0;
            assert_eq!(kind(m.attach(on("app", "c1"))), Kind::NotFound, "no namespace c1");
            for c in ["c1", "c2", "c3"] {
                host.set_namespace(&ns(c), true);
            }
            let c1 = m.attach(on("app", "c1")).unwrap();
            assert_eq!((c1.address, c1.container()), (Ipv4Addr::new(10, 48, 0, 2), Some("c1")));
            assert_eq!(c1.mac_string(), "02:42:0a:30:00:02");
            let Some(HostOp::Attach(a)) = host.ops().last().cloned() else {
                panic!("{:?}", host.ops())
            };
            assert_eq!(a.address, "10.48.0.2/24".parse().unwrap());
            assert_eq!((a.gateway, a.nameserver), (app.gateway, Some(app.gateway)));
            assert_eq!(a.netns_name.as_deref(), Some("c1"));
            assert_eq!(a.host_if, c1.host_if());
            assert_eq!(kind(m.attach(on("app", "c1"))), Kind::Conflict, "attached twice");
            let mut want = on(&app.id, "c2");
            want.address = Some(Ipv4Addr::new(10, 48, 0, 77));
            let c2 = m.attach(want.clone()).unwrap();
            assert_eq!(c2.address, Ipv4Addr::new(10, 48, 0, 77));
            want.container = "c3".into();
            assert_eq!(kind(m.attach(want)), Kind::Conflict, "an address held");
            let c3 = m.attach(on("app", "c3")).unwrap();
            assert_eq!(c3.address, Ipv4Addr::new(10, 48, 0, 3));
            assert_eq!(kind(m.detach("app", "nobody")), Kind::NotFound);
            assert_eq!(kind(m.remove_network("app")), Kind::Conflict, "endpoints remain");
            assert_eq!(kind(m.attach(on("weave", "c1"))), Kind::Forbidden);
            // A failed host change leaves nothing behind.
            host.refuse(true);
            host.set_namespace(&ns("c4"), true);
            assert_eq!(kind(m.attach(on("app", "c4"))), Kind::Unavailable);
            host.refuse(false);
            assert_eq!(m.endpoints().len(), 3);
            (c1, c3)
        };
        // Restart: c1's namespace is gone, c2's veth is missing, c3 is intact, and a
        // connect cut short left a stray host end.
        let (m, host) = open(&d.0);
        assert_eq!(m.endpoints().len(), 3);
        host.set_namespace(&ns("c2"), true);
        host.set_namespace(&ns("c3"), true);
        host.set_link(&c3.host_if(), true);
        host.set_link("tlc0123456789", true);
        let done = m.reconcile().unwrap();
        assert_eq!(done.removed, ["c1"]);
        assert_eq!(done.recreated, ["c2"]);
        assert_eq!(done.strays, ["tlc0123456789"]);
        let mut left: Vec<String> = m.endpoints().into_iter().map(|e| e.name).collect();
        left.sort();
        assert_eq!(left, ["c2", "c3"]);
        // c1's address is free again.
        host.set_namespace(&ns("c5"), true);
        assert_eq!(m.attach(on("app", "c5")).unwrap().address, c1.address);
        let gone = m.detach("app", "c2").unwrap();
        assert!(host
            .ops()
            .iter()
            .any(|o| matches!(o, HostOp::Detach(a) if a.host_if == gone.host_if())));
        assert_eq!(m.detach("app", "c3").unwrap().id, c3.id);
        assert_eq!(m.detach("app", "c5").unwrap().address, c1.address);
        assert_eq!(m.prune_networks().unwrap(), ["app"]);
        assert_eq!(m.networks().len(), 1);
    }

    #[test]
    fn libnetwork_endpoints_are_made_then_joined_and_left() {
        let d = TempDir::new("net-join");
        let (m, host) = open(&d.0);
        m.create_network(named("app")).unwrap();
        let ep = m.create_endpoint(on("app", ""), "web").unwrap();
        assert_eq!((ep.name.as_str(), ep.joined.as_ref()), ("web", None));
        assert!(
            host.ops().iter().all(|o| !matches!(o, HostOp::Attach(_))),
            "no veth before a join"
        );
        assert_eq!(kind(m.create_endpoint(on("app", ""), "web")), Kind::Conflict);
        assert_eq!(kind(m.join(&ep.id, "c1", None)), Kind::NotFound, "no namespace");
        host.set_namespace(Path::new("/run/netns/c1"), true);
        let joined = m.join(&ep.id, "c1", None).unwrap();
        assert_eq!(joined.container(), Some("c1"));
        assert!(matches!(host.ops().last(), Some(HostOp::Attach(a)) if a.host_if == ep.host_if()));
        assert_eq!(kind(m.join(&ep.id, "c1", None)), Kind::Conflict, "joined twice");
        assert_eq!(kind(m.remove_endpoint(&ep.id, false)), Kind::Conflict, "still joined");
        assert_eq!(kind(m.leave(&ep.id, "c2")), Kind::NotFound);
        let left = m.leave(&ep.id, "c1").unwrap();
        assert_eq!(left.joined, None);
        assert!(matches!(host.ops().last(), Some(HostOp::Detach(a)) if a.host_if == ep.host_if()));
        assert_eq!(m.remove_endpoint(&ep.id, false).unwrap().address, ep.address);
        assert_eq!(kind(m.remove_endpoint(&ep.id, false)), Kind::NotFound);
    }

    #[test]
    fn subnets_the_host_needs_and_addresses_of_other_hosts_are_refused() {
        let d = TempDir::new("net-guard");
        let (m, host) = open(&d.0);
        host.add_host_route("198.19.230.0/24".parse().unwrap());
        let with = |name: &str, subnet: &str| NetworkRequest {
            subnet: Some(subnet.parse().unwrap()),
            ..named(name)
        };
        for (subnet, says) in [
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("224.0.0.0/8", "multicast"),
            ("0.0.0.0/8", "0.0.0.0/8"),
            ("255.255.255.0/24", "240.0.0.0/4"),
        ] {
            let e = m.create_network(with("x", subnet)).unwrap_err();
            assert!(
                e.kind() == Kind::Invalid && e.to_string().contains(says),
                "{subnet}: {e}"
            );
        }
        let e = m.create_network(with("lan", "198.19.230.0/25")).unwrap_err();
        assert_eq!(e.kind(), Kind::Conflict, "{e}");
        assert!(e.to_string().contains("this host routes itself"), "{e}");
        let empty = NetworkRequest {
            ip_range: Some("198.19.240.0/32".parse().unwrap()),
            ..with("e", "198.19.240.0/24")
        };
        assert_eq!(
            kind(m.create_network(empty)),
            Kind::Invalid,
            "an IPRange without a usable address"
        );
        let big = NetworkRequest {
            labels: (0..65).map(|i| (i.to_string(), String::new())).collect(),
            ..named("big")
        };
        assert_eq!(kind(m.create_network(big)), Kind::Invalid);
        assert_eq!(
            kind(m.create_network(NetworkRequest {
                driver: "macvlan".into(),
                ..named("d")
            })),
            Kind::NotFound
        );
        let half = NetworkRequest {
            ip_range: Some("198.19.241.0/25".parse().unwrap()),
            ..with("half", "198.19.241.0/24")
        };
        m.create_network(half).unwrap();
        host.set_namespace(Path::new("/run/netns/c1"), true);
        let mut far = on("half", "c1");
        far.address = Some("198.19.241.200".parse().unwrap());
        let e = m.attach(far).unwrap_err();
        assert!(e.kind() == Kind::Invalid && e.to_string().contains("IPRange"), "{e}");
        // A network whose name is a prefix of the default network's id is that network.
        let def = default_id(&"10.32.0.0/12".parse().unwrap());
        let prefix = &def[..4];
        m.create_network(named(prefix)).unwrap();
        assert_eq!(m.network(prefix).unwrap().network.name, prefix);
        assert!(m.network(&def[..10]).unwrap().default);
        // A full network is a conflict, not a failure of the node.
        let tiny = with("tiny", "198.19.242.0/30");
        m.create_network(tiny).unwrap();
        host.set_namespace(Path::new("/run/netns/c2"), true);
        m.attach(on("tiny", "c1")).unwrap();
        assert_eq!(kind(m.attach(on("tiny", "c2"))), Kind::Conflict);
    }

    #[test]
    fn one_namespace_under_two_paths_is_one_container() {
        let d = TempDir::new("net-alias");
        let (m, host) = open(&d.0);
        m.create_network(named("app")).unwrap();
        host.set_namespace(Path::new("/run/netns/c1"), true);
        m.attach(on("app", "c1")).unwrap();
        let mut again = on("app", "other-name");
        again.netns = Some("/run/netns/c1".into());
        assert_eq!(kind(m.attach(again)), Kind::Conflict);
        let ep = m.create_endpoint(on("app", ""), "e2").unwrap();
        assert_eq!(
            kind(m.join(&ep.id, "c1", None)),
            Kind::Conflict,
            "joined on another endpoint"
        );
    }

    #[test]
    fn sandboxes_are_names_pids_or_namespace_paths_only() {
        assert_eq!(Sandbox::of("c1").unwrap().netns, PathBuf::from("/run/netns/c1"));
        assert_eq!(Sandbox::of("4242").unwrap().netns, PathBuf::from("/proc/4242/ns/net"));
        assert_eq!(Sandbox::of("/proc/1/task/2/ns/net").unwrap().netns_name, None);
        assert_eq!(
            Sandbox::of("/var/run/netns/x").unwrap().netns_name.as_deref(),
            Some("x")
        );
        for bad in [
            "",
            ".x",
            "a/b",
            "/",
            "/etc/passwd",
            "/run/netns/../x",
            "/proc/self/ns/net",
            "a b",
        ] {
            assert!(Sandbox::of(bad).is_err(), "{bad:?}");
        }
    }
}
