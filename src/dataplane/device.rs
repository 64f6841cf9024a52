//! Creating and configuring what the dataplane owns: the multi-queue TUN device (its
//! queues, link settings, addresses and routes) and the UDP data sockets.
//!
//! The TUN device is not persistent: the kernel removes it, with its addresses and
//! routes, when the last queue is closed, so even a crashed tunloom leaves nothing
//! behind.

use super::Settings;
use crate::sys::{self, netlink::Netlink};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use tun_rs::{DeviceBuilder, SyncDevice};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("creating TUN device {name} needs CAP_NET_ADMIN (run as root or grant the capability): {source}")]
    Permission { name: String, source: io::Error },
    #[error("TUN device {name} is already in use (is another tunloom running?): {source}")]
    Busy { name: String, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Io { what, source }
}

/// The TUN device: one queue per worker.
pub struct Tun {
    pub name: String,
    pub index: u32,
    pub queues: Vec<SyncDevice>,
    /// IFF_VNET_HDR and TSO were accepted.
    pub offload: bool,
    /// UDP segmentation offload (USO) was accepted too.
    pub uso: bool,
}

/// Creates the device with `queues` queues, sets MTU, GSO size, transmit queue
/// length and link up, adds the exposed addresses and the overlay routes.
pub fn create_tun(d: &Settings, queues: usize) -> Result<Tun, DeviceError> {
    let name = d.tun_name.clone();
    let first = DeviceBuilder::new()
        .name(&name)
        .tx_queue_len(d.tun_txqueuelen)
        .with(|b| {
            b.offload(d.offload);
            b.multi_queue(true);
        })
        .build_sync()
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => DeviceError::Permission {
                name: name.clone(),
                source: e,
            },
            Some(libc::EBUSY) | Some(libc::EEXIST) => DeviceError::Busy {
                name: name.clone(),
                source: e,
            },
            _ => DeviceError::Io {
                what: format!("creating TUN device {name}"),
                source: e,
            },
        })?;
    let offload = d.offload && first.tcp_gso();
    let uso = offload && first.udp_gso();
    let mut qs = vec![first];
    for i in 1..queues.max(1) {
        let q = qs[0]
            .try_clone()
            .map_err(io_err(format!("opening TUN queue {i} of {name}")))?;
        qs.push(q);
    }
    for q in &qs {
        q.set_nonblocking(true)
            .map_err(io_err("making TUN queue non-blocking"))?;
    }
    let index = sys::if_index(&name).map_err(io_err(format!("looking up {name}")))?;
    let mut nl = Netlink::open().map_err(io_err("opening rtnetlink"))?;
    let gso = offload.then_some(d.tun_gso_max_size);
    nl.set_link(index, Some(u32::from(d.mtu)), gso)
        .or_else(|e| {
            // Kernels before 5.19 cannot change gso_max_size through rtnetlink; the
            // device still works, with superpackets up to 64 KB split in two sends.
            if gso.is_some() {
                log::warn!("could not set gso_max_size on {name} ({e}); continuing without it");
                nl.set_link(index, Some(u32::from(d.mtu)), None)
            } else {
                Err(e)
            }
        })
        .map_err(io_err(format!("configuring link {name}")))?;
    for a in &d.expose {
        nl.add_address(index, a)
            .map_err(io_err(format!("adding address {a} to {name}")))?;
    }
    for r in &d.routes {
        nl.add_route(index, r)
            .map_err(io_err(format!("adding route {r} via {name}")))?;
    }
    Ok(Tun {
        name,
        index,
        queues: qs,
        offload,
        uso,
    })
}

/// How packets find their worker, as set up.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Steering {
    /// The TUN device's choice of queue for a packet the host sends: `cpu` (the
    /// queue of the CPU that sends it), `hash` (the kernel's flow hash) or `single`
    /// (one queue).
    pub tun: &'static str,
    /// The data sockets' choice of socket for a datagram: `cpu` (the socket of the
    /// CPU that received it), `hash` (the outer 4-tuple's hash) or `single`.
    pub socket: &'static str,
    /// Why a choice is `hash` where `cpu` was configured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Whether worker `i`, pinned to `cpus[i % cpus.len()]`, is the one `cpu % workers`
/// names for every worker: the condition for steering by CPU to keep a packet on
/// the CPU it arrived on.
pub fn cpus_map_to_workers(workers: usize, pinned: bool, cpus: &[usize]) -> Result<(), String> {
    if !pinned {
        return Err("workers are not pinned (dataplane.pin_workers = false)".into());
    }
    if cpus.is_empty() {
        return Err("no CPUs to pin workers to".into());
    }
    match (0..workers).find(|&i| cpus[i % cpus.len()] % workers != i) {
        None => Ok(()),
        Some(i) => Err(format!(
            "worker {i} runs on CPU {}, not on one whose number modulo {workers} is {i} (set dataplane.cpus so that worker i gets such a CPU)",
            cpus[i % cpus.len()]
        )),
    }
}

/// Attaches the steering programs when `by_cpu` and there are several workers;
/// whatever the kernel refuses stays on hashing, and the result says why.
/// `rx` is a socket of the data port's reuseport group of `sockets`.
pub fn steer(d: &Settings, tun: &Tun, rx: &UdpSocket, sockets: usize) -> Steering {
    let n = tun.queues.len();
    if n <= 1 {
        return Steering {
            tun: "single",
            socket: "single",
            notes: Vec::new(),
        };
    }
    let mut s = Steering {
        tun: "hash",
        socket: "hash",
        notes: Vec::new(),
    };
    if !d.steer_by_cpu {
        return s;
    }
    if let Err(why) = cpus_map_to_workers(n, d.pin_workers, &d.cpus) {
        s.notes.push(why);
        return s;
    }
    match sys::steer_tun_by_cpu(&tun.queues[0]) {
        Ok(()) => s.tun = "cpu",
        Err(e) => s.notes.push(format!(
            "the kernel refused the TUN steering program ({e}); queues picked by flow hash"
        )),
    }
    match sys::steer_reuseport_by_cpu(rx, sockets as u32) {
        Ok(()) => s.socket = "cpu",
        Err(e) => s.notes.push(format!(
            "the kernel refused the reuseport program ({e}); sockets picked by flow hash"
        )),
    }
    s
}

/// Opens a non-blocking UDP socket bound to `addr`, in a SO_REUSEPORT group when
/// `reuse_port`, with large buffers and outer fragmentation allowed.
pub fn udp_socket(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    let sock: UdpSocket = sock.into();
    sys::set_buffers(&sock, buffer)?;
    sys::allow_fragmentation(&sock, addr.is_ipv6())?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::cpus_map_to_workers;

    #[test]
    fn steering_needs_worker_i_on_a_cpu_congruent_to_i() {
        assert_eq!(cpus_map_to_workers(2, true, &[0, 1]), Ok(()));
        assert_eq!(cpus_map_to_workers(2, true, &[2, 3]), Ok(()));
        assert_eq!(cpus_map_to_workers(4, true, &[0, 1, 2, 3]), Ok(()));
        // Two workers on CPUs 1 and 2: CPU 1's packets would go to worker 1 on CPU 2.
        let e = cpus_map_to_workers(2, true, &[1, 2]).unwrap_err();
        assert!(e.contains("worker 0 runs on CPU 1"), "{e}");
        // Fewer CPUs than workers: worker 1 shares CPU 0.
        assert!(cpus_map_to_workers(2, true, &[0]).is_err());
        assert!(cpus_map_to_workers(2, false, &[0, 1])
            .unwrap_err()
            .contains("pin_workers"));
        assert!(cpus_map_to_workers(2, true, &[]).is_err());
    }
}
