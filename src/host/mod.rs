//! The host's side of a model change: what the model asks the kernel to do (put an
//! address on the TUN link, take it off; later veths, routes and rules) and what it
//! asks about the world (is a container alive?), behind two small traits so the model
//! itself does no I/O.
//!
//! - [`Kernel`] applies a [`HostOp`]; [`LinkHost`] does it over rtnetlink on the TUN
//!   link, container attachments in [`attach`] (veth pairs, tunloom's routing tables
//!   6783 and 6784 and its rules; the module doc draws the routing), egress
//!   masquerade in [`egress`] (nftables). Every op has an [`HostOp::inverse`], so a
//!   change whose commit fails can be taken back.
//! - [`Liveness`] answers `check-alive`; [`Namespaces`] looks for what a runtime
//!   leaves behind (a named network namespace, a running pid).
//! - [`Recorder`] stands in for both where there is no host to change: tests, fuzz
//!   targets and benchmarks that run the model without a dataplane.
//!
//! This module may touch rtnetlink (in tunloom's namespace and in containers'),
//! `/run/netns`, `/proc` (and IPv4 sysctls under `/proc/sys/net/ipv4`), the
//! `resolv.conf` files it writes under `/etc/netns/`, and the nftables table
//! `ip tunloom` (through `nft`), nothing else.

pub mod attach;
pub mod egress;

use crate::sys::netlink::{self, Netlink, Route, RT_TABLE_MAIN};
use ipnet::IpNet;
use ipnet::Ipv4Net;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// One container's attachment to a network: a veth pair whose host end stays in
/// tunloom's namespace and whose other end lives in the container's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The container's network namespace: `/run/netns/<name>`, `/proc/<pid>/ns/net`
    /// or another path to a namespace file.
    pub netns: PathBuf,
    /// The namespace's name under `/run/netns`, when it has one: its
    /// `/etc/netns/<name>/resolv.conf` (what `ip netns exec` mounts) is written.
    pub netns_name: Option<String>,
    /// The host end's name (`tlc` + 10 hex digits of the endpoint id).
    pub host_if: String,
    /// The name inside the namespace; `None` takes the first free `ethN`.
    pub ifname: Option<String>,
    /// The container's address, with the network's prefix length.
    pub address: Ipv4Net,
    /// The default route's next hop (the network's gateway).
    pub gateway: Ipv4Addr,
    /// The container end's MAC address.
    pub mac: [u8; 6],
    /// The resolver written into resolv.conf (the gateway, where tunloom answers DNS).
    pub nameserver: Option<Ipv4Addr>,
    /// The MTU of both ends (the overlay MTU).
    pub mtu: u32,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOp {
    /// Put an address on the TUN link (the host gets an overlay address).
    AddAddress(IpNet),
    /// Take an address off the TUN link.
    DelAddress(IpNet),
    /// Route a prefix (a network's subnet) into the TUN link.
    AddRoute(IpNet),
    /// Take that route away.
    DelRoute(IpNet),
    /// Create (or re-create) a container's veth pair and configure both ends.
    Attach(Box<Attachment>),
    /// Remove it; an attachment already gone is not an error.
    Detach(Box<Attachment>),
    /// Masquerade what a network's containers send out of the host.
    AddEgress(Ipv4Net),
    /// Stop masquerading it.
    DelEgress(Ipv4Net),
}

impl HostOp {
    /// The op that undoes this one.
    pub fn inverse(&self) -> HostOp {
        match self {
            HostOp::AddAddress(n) => HostOp::DelAddress(*n),
            HostOp::DelAddress(n) => HostOp::AddAddress(*n),
            HostOp::AddRoute(n) => HostOp::DelRoute(*n),
            HostOp::DelRoute(n) => HostOp::AddRoute(*n),
            HostOp::Attach(a) => HostOp::Detach(a.clone()),
            HostOp::Detach(a) => HostOp::Attach(a.clone()),
            HostOp::AddEgress(n) => HostOp::DelEgress(*n),
            HostOp::DelEgress(n) => HostOp::AddEgress(*n),
        }
    }
}

/// Why the host could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("opening rtnetlink: {0}")]
    Netlink(std::io::Error),
    #[error("{op} on {link}: {source}")]
    Refused {
        op: String,
        link: String,
        source: std::io::Error,
    },
    #[error("this build cannot make the host change {0}")]
    Unsupported(String),
    #[error("{0} (a test's fake host refused it)")]
    Injected(String),
}

/// Applies host changes. Implementations serialise their own access.
pub trait Kernel: Send + Sync {
    fn apply(&self, op: &HostOp) -> Result<(), HostError>;
    /// Whether `ip` is an address of this host (in tunloom's network namespace).
    fn is_local(&self, ip: IpAddr) -> bool;
    /// The host ends of container attachments present on this host (links whose
    /// names start with `tlc`), for reconciling the stored endpoints at start.
    fn host_links(&self) -> Result<Vec<String>, HostError>;
    /// The host's own IPv4 routes (main table, not the default, not into the TUN):
    /// a network must not take a subnet the host reaches some other way.
    fn host_routes(&self) -> Result<Vec<Ipv4Net>, HostError>;
}

/// Whether a container exists, for `check-alive`.
pub trait Liveness: Send + Sync {
    fn alive(&self, container: &str) -> bool;
    /// What is at `path`: a container's network namespace (and which), or not.
    fn namespace(&self, path: &Path) -> Namespace;
}

/// What a path names, as a container's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// A network namespace, by its identity (the nsfs device and inode), which
    /// outlives the path: a pid reused by another process names another namespace.
    Found { dev: u64, ino: u64 },
    /// Nothing is there.
    Missing,
    /// Something that is no network namespace (a regular file, a directory).
    NotNamespace,
    /// tunloom's own network namespace or the initial one (pid 1's): attaching it
    /// would rewire the host itself.
    Host,
}

/// The TUN link, changed over rtnetlink.
pub struct LinkHost {
    name: String,
    index: u32,
    /// One socket, opened on first use, shared by the API threads one at a time.
    netlink: Mutex<Option<Netlink>>,
}

impl LinkHost {
    pub fn new(name: String, index: u32) -> LinkHost {
        LinkHost {
            name,
            index,
            netlink: Mutex::new(None),
        }
    }

    /// Runs `f` with the socket, opened on first use in the calling thread's network
    /// namespace, holding the lock (host changes happen one at a time).
    fn with_netlink<T>(&self, f: impl FnOnce(&mut Netlink) -> Result<T, HostError>) -> Result<T, HostError> {
        let mut guard = self.netlink.lock();
        let nl = match guard.as_mut() {
            Some(nl) => nl,
            None => guard.insert(Netlink::open().map_err(HostError::Netlink)?),
        };
        f(nl)
    }

    /// What containers' attachments rely on, made once at start, after the TUN link
    /// is up and before any op: `net.ipv4.ip_forward=1`, `rp_filter=0` on the TUN
    /// (and `conf/all/rp_filter` lowered from strict to loose), table 6783's
    /// `default dev <tun>` and rule 99 `iif <tun> lookup 6784`. Idempotent.
    pub fn prepare(&self) -> Result<(), HostError> {
        self.with_netlink(|nl| attach::prepare(nl, &self.name, self.index))
    }

    /// Removes, at exit, what [`LinkHost::prepare`] made: rule 99, the route of
    /// table 6783, and the nftables table `ip tunloom`. What belongs to attachments
    /// stays, because attachments are durable: host ends, their rules (100 and the
    /// blackhole 101, which now drops what containers send), their /32 routes and the
    /// networks' `unreachable` routes in 6784, resolv.conf files. Routes in `main` go
    /// with the TUN link. Never fails: what cannot be removed is logged.
    pub fn cleanup(&self) {
        let left = self.with_netlink(|nl| Ok(attach::cleanup(nl, &self.name)));
        match left {
            Ok(left) => {
                for what in left {
                    log::warn!("cleanup: could not remove {what}");
                }
            }
            Err(e) => log::warn!("cleanup: {e}"),
        }
        if let Err(e) = egress::remove_table() {
            log::warn!("cleanup: could not delete nft table ip {}: {e}", egress::TABLE);
        }
    }
}

impl Kernel for LinkHost {
    fn apply(&self, op: &HostOp) -> Result<(), HostError> {
        self.with_netlink(|nl| {
            let refused = |what: String| {
                let link = self.name.clone();
                move |source| HostError::Refused { op: what, link, source }
            };
            match op {
                HostOp::AddAddress(n) => nl.add_address(self.index, n).map_err(refused(format!("adding {n}"))),
                HostOp::DelAddress(n) => nl.del_address(self.index, n).map_err(refused(format!("removing {n}"))),
                // Replaces a route already there: adding twice is fine.
                // A network's subnet: into the TUN in main, and `unreachable` in table
                // 6784, so a packet tunloom hands back for an address no container
                // holds is refused by the host instead of routed into the TUN again
                // (a loop until its TTL ran out).
                HostOp::AddRoute(n) => nl
                    .add_route(self.index, n)
                    .and_then(|()| nl.replace_route(&Route::unreachable(n.trunc(), attach::TO_CONTAINERS)))
                    .map_err(refused(format!("routing {n} into the TUN"))),
                HostOp::DelRoute(n) => {
                    let mut r = Ok(());
                    for route in [
                        Route::dev(n.trunc(), RT_TABLE_MAIN, self.index),
                        Route::unreachable(n.trunc(), attach::TO_CONTAINERS),
                    ] {
                        match nl.del_route(&route) {
                            Err(e) if !netlink::is_absent(&e) => {
                                r = Err(refused(format!("removing the route to {n}"))(e));
                            }
                            _ => {}
                        }
                    }
                    r
                }
                HostOp::Attach(a) => attach::attach(nl, a),
                HostOp::Detach(a) => attach::detach(nl, a),
                HostOp::AddEgress(n) | HostOp::DelEgress(n) if !attach::valid_ifname(&self.name) => {
                    Err(refused(format!("masquerading {n}"))(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "the TUN link's name cannot go in an nft rule",
                    )))
                }
                HostOp::AddEgress(n) => egress::add(&self.name, *n),
                HostOp::DelEgress(n) => egress::del(&self.name, *n),
            }
        })
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        // The kernel lets a socket bind only to an address the host has.
        ip.is_loopback() || (!ip.is_unspecified() && UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
    }

    fn host_links(&self) -> Result<Vec<String>, HostError> {
        self.with_netlink(|nl| {
            let links = nl.links().map_err(|source| HostError::Refused {
                op: "listing links".into(),
                link: self.name.clone(),
                source,
            })?;
            Ok(links
                .into_iter()
                .map(|(_, name)| name)
                .filter(|n| n.starts_with("tlc"))
                .collect())
        })
    }

    fn host_routes(&self) -> Result<Vec<Ipv4Net>, HostError> {
        let routes = self.with_netlink(|nl| nl.routes_v4().map_err(HostError::Netlink))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.table == RT_TABLE_MAIN && r.oif != Some(self.index) && r.dst.prefix_len() > 0)
            .filter_map(|r| match r.dst {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .collect())
    }
}

/// Liveness from what runtimes leave behind. tunloom has no container runtime to ask,
/// so a container counts as alive when a network namespace named after it exists in
/// `/run/netns` (as `ip netns add <id>` and Docker-style tooling create), or, for a
/// numeric id, when a process with that pid runs.
pub struct Namespaces;

impl Liveness for Namespaces {
    fn alive(&self, id: &str) -> bool {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return false;
        }
        std::path::Path::new("/run/netns").join(id).exists()
            || (id.bytes().all(|b| b.is_ascii_digit()) && std::path::Path::new("/proc").join(id).exists())
    }

    fn namespace(&self, path: &Path) -> Namespace {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::metadata(path) else {
            return Namespace::Missing;
        };
        // Every namespace file (a bind mount under /run/netns, /proc/<pid>/ns/net)
        // lives on the one nsfs device, the same as this process's own.
        let Ok(own) = std::fs::metadata("/proc/self/ns/net") else {
            return Namespace::NotNamespace;
        };
        if !m.is_file() || m.dev() != own.dev() {
            return Namespace::NotNamespace;
        }
        let init = std::fs::metadata("/proc/1/ns/net").map(|i| i.ino()).ok();
        if m.ino() == own.ino() || Some(m.ino()) == init {
            return Namespace::Host;
        }
        Namespace::Found {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// A host that only records what it is asked: for running the model without a
/// dataplane (tests, fuzzing, benchmarks). It can be told to refuse ops, and which
/// containers are alive.
#[derive(Default)]
pub struct Recorder {
    ops: Mutex<Vec<HostOp>>,
    refuse: AtomicBool,
    alive: Mutex<BTreeSet<String>>,
    local: Mutex<BTreeSet<IpAddr>>,
    namespaces: Mutex<BTreeSet<PathBuf>>,
    /// Host ends present: made by `Attach`, removed by `Detach`, or planted by a test.
    links: Mutex<BTreeSet<String>>,
    /// The host's own routes, as a test sets them.
    routes: Mutex<Vec<Ipv4Net>>,
}

impl Recorder {
    /// Every op applied so far, in order.
    pub fn ops(&self) -> Vec<HostOp> {
        self.ops.lock().clone()
    }

    /// Makes every later op fail (or succeed again).
    pub fn refuse(&self, yes: bool) {
        self.refuse.store(yes, Ordering::Relaxed);
    }

    /// Marks a container alive.
    pub fn add_alive(&self, id: &str) {
        self.alive.lock().insert(id.to_string());
    }

    /// Makes a network namespace exist (or vanish).
    pub fn set_namespace(&self, path: &Path, exists: bool) {
        let mut ns = self.namespaces.lock();
        if exists {
            ns.insert(path.to_path_buf());
        } else {
            ns.remove(path);
        }
    }

    /// Plants (or removes) a host link, as a crash mid-attach would leave one.
    pub fn set_link(&self, name: &str, exists: bool) {
        let mut links = self.links.lock();
        if exists {
            links.insert(name.to_string());
        } else {
            links.remove(name);
        }
    }

    /// Gives the host a route of its own.
    pub fn add_host_route(&self, net: Ipv4Net) {
        self.routes.lock().push(net);
    }

    /// Gives the host an address (loopback ones it always has).
    pub fn add_local(&self, ip: IpAddr) {
        self.local.lock().insert(ip);
    }
}

impl Kernel for Recorder {
    fn apply(&self, op: &HostOp) -> Result<(), HostError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(HostError::Injected(format!("{op:?}")));
        }
        match op {
            HostOp::Attach(a) => self.set_link(&a.host_if, true),
            HostOp::Detach(a) => self.set_link(&a.host_if, false),
            _ => {}
        }
        self.ops.lock().push(op.clone());
        Ok(())
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.lock().contains(&ip)
    }

    fn host_links(&self) -> Result<Vec<String>, HostError> {
        Ok(self.links.lock().iter().cloned().collect())
    }

    fn host_routes(&self) -> Result<Vec<Ipv4Net>, HostError> {
        Ok(self.routes.lock().clone())
    }
}

impl Liveness for Recorder {
    fn alive(&self, container: &str) -> bool {
        self.alive.lock().contains(container)
    }

    fn namespace(&self, path: &Path) -> Namespace {
        use std::hash::{Hash, Hasher};
        if !self.namespaces.lock().contains(path) {
            return Namespace::Missing;
        }
        // A stable identity per path: distinct paths name distinct namespaces here.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        Namespace::Found {
            dev: 1,
            ino: h.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_invert_and_the_recorder_records_or_refuses() {
        let add = HostOp::AddAddress("10.32.0.7/12".parse().unwrap());
        assert_eq!(add.inverse().inverse(), add);
        let r = Recorder::default();
        r.apply(&add).unwrap();
        r.refuse(true);
        assert!(r.apply(&add.inverse()).is_err());
        assert_eq!(r.ops(), vec![add]);
        assert!(!r.alive("c1"));
        r.add_alive("c1");
        assert!(r.alive("c1"));
    }

    #[test]
    fn namespaces_reject_path_tricks_and_find_running_pids() {
        let n = Namespaces;
        for bad in ["", "../etc", ".hidden", "a/b"] {
            assert!(!n.alive(bad), "{bad:?}");
        }
        assert!(n.alive(&std::process::id().to_string()), "this process is alive");
        assert!(!n.alive("not-a-netns-here"));
    }
}
