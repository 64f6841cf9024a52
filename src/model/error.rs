//! Why a model operation failed: what happened, in [`Error`], and what kind of
//! failure that is, in [`Kind`] — which is all a face needs to pick its status code.
//! The messages are written for the person who sent the request.

use super::ipam::IpamError;
use crate::host::HostError;
use crate::names::CONTAINER_ID_RULE;
use crate::snapshot::Behind;
use crate::store::StoreError;
use std::net::{IpAddr, Ipv4Addr};

/// The kinds of failure every face maps to its own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is wrong in itself.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// It contradicts what is there (an address another container holds).
    Conflict,
    /// It is never allowed (removing the predefined default network).
    Forbidden,
    /// The node cannot do it now (the store failed, no space is left, the kernel
    /// refused).
    Unavailable,
    /// It is stored, but a worker did not apply it in time.
    Behind,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("{}", CONTAINER_ID_RULE)]
    BadContainerId,
    #[error("{0:?} is not a valid domain name")]
    BadName(String),
    #[error("{addr} is allocated to container {holder}")]
    Held { addr: Ipv4Addr, holder: String },
    #[error("container {0} holds no addresses")]
    NoAddresses(String),
    #[error("no DNS record for container {container} at {ip}")]
    NoRecord { container: String, ip: IpAddr },
    #[error("no peer {0}")]
    NoPeer(String),
    #[error("no address is exposed through the API")]
    NothingExposed,
    #[error("{net} is {why}; only addresses inside the overlay can be exposed")]
    Unroutable { net: ipnet::IpNet, why: &'static str },
    #[error("{net} is not inside the overlay ({overlay}); exposing it would route it into the tunnel")]
    NotInOverlay { net: ipnet::IpNet, overlay: String },
    #[error("{addr} is the underlay address of peer {peer}; exposing it would cut this node off from it")]
    PeerAddress { addr: IpAddr, peer: String },
    #[error("{addr} is already an address of this host")]
    LocalAddress { addr: IpAddr },
    #[error("peer address {addr} is {why}")]
    BadPeer {
        addr: std::net::SocketAddr,
        why: &'static str,
    },
    #[error("that would make {wanted} peers, more than control.max_peers ({max})")]
    TooManyPeers { wanted: usize, max: usize },
    #[error("{0} is up; stop it first (only a peer that is down can be removed and its space taken over)")]
    PeerUp(String),
    #[error("{0:?} names no network namespace: give a name under /run/netns, a pid, or a path /run/netns/<name> or /proc/<pid>/ns/net")]
    BadContainer(String),
    #[error("{0}")]
    BadNetwork(String),
    #[error("{0}")]
    BadEndpoint(String),
    #[error("{0}")]
    UnknownDriver(String),
    #[error("network with name {0} already exists")]
    NetworkExists(String),
    #[error("{0}")]
    Overlap(String),
    #[error("no subnet of networks.pool {0} is free; give the network a subnet")]
    PoolExhausted(ipnet::Ipv4Net),
    #[error("the default network is predefined: it cannot be removed, and its addresses are the Weave API's")]
    DefaultNetwork,
    #[error("network {name} id {id} has active endpoints ({count})")]
    ActiveEndpoints { name: String, id: String, count: usize },
    #[error("network {0} not found")]
    NoNetwork(String),
    #[error("endpoint {0} not found")]
    NoEndpoint(String),
    #[error("endpoint {endpoint} has container {container} joined; it must leave first")]
    EndpointInUse { endpoint: String, container: String },
    #[error("service endpoint with name {0} already exists")]
    EndpointExists(String),
    #[error("no network namespace at {0}")]
    NoNamespace(String),
    #[error("container {container} is already attached to network {network}")]
    AlreadyAttached { container: String, network: String },
    #[error("container {container} is not connected to network {network}")]
    NotAttached { container: String, network: String },
    #[error("network {0} has no free address left in its range")]
    NetworkFull(String),
    #[error("the change could not be stored: {0}")]
    Store(#[from] StoreError),
    #[error("the host refused the change: {0}")]
    Host(#[from] HostError),
    #[error(transparent)]
    Behind(#[from] Behind),
}

impl Error {
    pub fn kind(&self) -> Kind {
        match self {
            Error::Ipam(IpamError::Taken(..))
            | Error::Held { .. }
            | Error::Store(StoreError::Conflict { .. })
            | Error::PeerUp(_)
            | Error::NetworkExists(_)
            | Error::Overlap(_)
            | Error::ActiveEndpoints { .. }
            | Error::EndpointExists(_)
            | Error::EndpointInUse { .. }
            | Error::AlreadyAttached { .. }
            | Error::PoolExhausted(_)
            | Error::NetworkFull(_) => Kind::Conflict,
            Error::Ipam(IpamError::Full(_)) | Error::Store(_) | Error::Host(_) => Kind::Unavailable,
            Error::DefaultNetwork => Kind::Forbidden,
            Error::Ipam(_)
            | Error::BadContainerId
            | Error::BadName(_)
            | Error::Unroutable { .. }
            | Error::NotInOverlay { .. }
            | Error::PeerAddress { .. }
            | Error::LocalAddress { .. }
            | Error::BadPeer { .. }
            | Error::TooManyPeers { .. }
            | Error::BadContainer(_)
            | Error::BadNetwork(_)
            | Error::BadEndpoint(_) => Kind::Invalid,
            Error::NoAddresses(_)
            | Error::NoRecord { .. }
            | Error::NoPeer(_)
            | Error::NothingExposed
            | Error::NoNetwork(_)
            | Error::NoEndpoint(_)
            | Error::NoNamespace(_)
            | Error::UnknownDriver(_)
            | Error::NotAttached { .. } => Kind::NotFound,
            Error::Behind(_) => Kind::Behind,
        }
    }
}

/// Why the model could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("loading the state: {0}")]
    Load(StoreError),
    #[error(
        "the state holds {allocations} allocations in range {stored}, but ipam.range is now {configured}; \
         release them or keep the range (tunloom will not silently reinterpret addresses)"
    )]
    RangeChanged {
        allocations: usize,
        stored: String,
        configured: ipnet::Ipv4Net,
    },
    #[error("IPAM: {0}")]
    Ipam(#[from] IpamError),
    #[error("restoring exposed address: {0}")]
    Host(#[from] HostError),
    #[error("writing the state: {0}")]
    Store(StoreError),
}
