//! The host's side of a model change: what the model asks the kernel to do (put an
//! address on the TUN link, take it off; later veths, routes and rules) and what it
//! asks about the world (is a container alive?), behind two small traits so the model
//! itself does no I/O.
//!
//! - [`Kernel`] applies a [`HostOp`]; [`LinkHost`] does it over rtnetlink on the TUN
//!   link. Every op has an [`HostOp::inverse`], so a change whose commit fails can be
//!   taken back.
//! - [`Liveness`] answers `check-alive`; [`Namespaces`] looks for what a runtime
//!   leaves behind (a named network namespace, a running pid).
//! - [`Recorder`] stands in for both where there is no host to change: tests, fuzz
//!   targets and benchmarks that run the model without a dataplane.
//!
//! This module may touch rtnetlink, `/run/netns` and `/proc`, nothing else.

use crate::sys::netlink::Netlink;
use ipnet::IpNet;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOp {
    /// Put an address on the TUN link (the host gets an overlay address).
    AddAddress(IpNet),
    /// Take an address off the TUN link.
    DelAddress(IpNet),
}

impl HostOp {
    /// The op that undoes this one.
    pub fn inverse(&self) -> HostOp {
        match self {
            HostOp::AddAddress(n) => HostOp::DelAddress(*n),
            HostOp::DelAddress(n) => HostOp::AddAddress(*n),
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
    #[error("{0} (a test's fake host refused it)")]
    Injected(String),
}

/// Applies host changes. Implementations serialise their own access.
pub trait Kernel: Send + Sync {
    fn apply(&self, op: &HostOp) -> Result<(), HostError>;
    /// Whether `ip` is an address of this host (in tunloom's network namespace).
    fn is_local(&self, ip: IpAddr) -> bool;
}

/// Whether a container exists, for `check-alive`.
pub trait Liveness: Send + Sync {
    fn alive(&self, container: &str) -> bool;
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
}

impl Kernel for LinkHost {
    fn apply(&self, op: &HostOp) -> Result<(), HostError> {
        let mut guard = self.netlink.lock();
        let nl = match guard.as_mut() {
            Some(nl) => nl,
            None => guard.insert(Netlink::open().map_err(HostError::Netlink)?),
        };
        let (what, r) = match op {
            HostOp::AddAddress(n) => (format!("adding {n}"), nl.add_address(self.index, n)),
            HostOp::DelAddress(n) => (format!("removing {n}"), nl.del_address(self.index, n)),
        };
        r.map_err(|source| HostError::Refused {
            op: what,
            link: self.name.clone(),
            source,
        })
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        // The kernel lets a socket bind only to an address the host has.
        ip.is_loopback() || (!ip.is_unspecified() && UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok())
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
        self.ops.lock().push(op.clone());
        Ok(())
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.lock().contains(&ip)
    }
}

impl Liveness for Recorder {
    fn alive(&self, container: &str) -> bool {
        self.alive.lock().contains(container)
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
