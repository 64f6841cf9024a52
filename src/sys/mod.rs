//! Every system call tunloom makes that the standard library, socket2, mio and tun-rs
//! do not wrap: batched UDP I/O with segmentation offloads, a few socket options, CPU
//! pinning, entering a network namespace, and rtnetlink for the TUN device's link,
//! addresses and routes and for container attachments (veth pairs, policy rules,
//! routes in tunloom's tables).
//!
//! This is the only module allowed `unsafe`; every block says why it is sound. The
//! API it exposes is safe: raw pointers never leave a call.

#![allow(unsafe_code)]

pub mod netlink;

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// The largest UDP payload one GSO send may carry (65535 - IPv4 and UDP headers).
pub const MAX_GSO_PAYLOAD: usize = 65_507;
/// Kernels since 6.x accept 128 segments per GSO send; older ones 64. tunloom stays
/// within the older limit.
pub const MAX_GSO_SEGMENTS: usize = 64;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int on the stack and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Asks the kernel to report, with each received datagram, how many it has dropped
/// on this socket for want of buffer space (SO_RXQ_OVFL).
pub fn enable_rxq_ovfl(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// Asks the kernel to coalesce received datagrams of one flow (UDP_GRO).
pub fn enable_udp_gro(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Whether the kernel accepts UDP segmentation offload on this socket: setting a
/// socket-wide UDP_SEGMENT fails on kernels without it. The value is reset to 0
/// (off) so only per-send control messages request segmentation.
pub fn probe_udp_gso(sock: &impl AsRawFd) -> bool {
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 1400).is_ok()
        && setsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// Lets the kernel fragment outer datagrams (DF clear), as the kernel's own VXLAN
/// does, so an inner IPv4 packet without DF that exceeds the overlay MTU still
/// arrives.
pub fn allow_fragmentation(sock: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )
    } else {
        setsockopt_int(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )
    }
}

/// Sets socket buffer sizes past `net.core.{r,w}mem_max` (needs CAP_NET_ADMIN);
/// falls back to the capped setting without it.
pub fn set_buffers(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, v)?;
    }
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, v)?;
    }
    Ok(())
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU index out of range"));
    }
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and CPU_SET is
    // given an index checked against CPU_SETSIZE above.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: see above; `set` is a live, exclusively borrowed cpu_set_t.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set pointer and size describe `set`.
    cvt(unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) }).map(drop)
}

/// Yields the CPU to any other runnable thread (a worker's adaptive polling).
pub fn yield_cpu() {
    // SAFETY: sched_yield has no arguments or preconditions; it cannot fail on Linux.
    unsafe { libc::sched_yield() };
}

/// `_IOR('T', 224, int)`: attach an eBPF program that picks a multi-queue TUN
/// device's transmit queue (Linux ≥ 4.16).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The head of `union bpf_attr` for BPF_PROG_LOAD; the kernel requires every byte
/// past the fields it knows to be zero, which the zeroed tail gives.
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    tail: [u64; 10],
}

/// Makes the TUN device that `queue` belongs to send each packet to the queue of
/// the CPU that transmits it (`cpu % queues`, the kernel taking the remainder), so
/// the worker pinned to that CPU reads it. Needs CAP_BPF or CAP_SYS_ADMIN to load
/// the program; the device keeps its own reference to it.
pub fn steer_tun_by_cpu(queue: &impl AsRawFd) -> io::Result<()> {
    // r0 = bpf_get_smp_processor_id(); return r0
    let prog = [
        BpfInsn {
            code: 0x85, // BPF_JMP | BPF_CALL
            regs: 0,
            off: 0,
            imm: BPF_FUNC_GET_SMP_PROCESSOR_ID,
        },
        BpfInsn {
            code: 0x95, // BPF_JMP | BPF_EXIT
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"Apache-2.0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        tail: [0; 10],
    };
    // SAFETY: `attr` is a BPF_PROG_LOAD attribute block whose pointers (the two
    // instructions and the license string) are live for the call; its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            size_of::<BpfProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let prog_fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
    let raw: libc::c_int = prog_fd.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF reads one int (the program's descriptor) from the
    // pointer, which points at a live c_int.
    cvt(unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETSTEERINGEBPF, &raw as *const libc::c_int) }).map(drop)
}

/// Makes the SO_REUSEPORT group `sock` belongs to hand each datagram to its socket
/// number `cpu % sockets` (sockets are numbered in the order they were bound), the
/// CPU being the one that received the datagram: a classic BPF program reading the
/// CPU ancillary field, as the kernel's reuseport_bpf_cpu selftest does.
pub fn steer_reuseport_by_cpu(sock: &impl AsRawFd, sockets: u32) -> io::Result<()> {
    if sockets == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty group"));
    }
    let code = [
        // A = the current CPU (SKF_AD_OFF + SKF_AD_CPU)
        libc::sock_filter {
            code: 0x20, // BPF_LD | BPF_W | BPF_ABS
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        },
        // A %= sockets
        libc::sock_filter {
            code: 0x94, // BPF_ALU | BPF_MOD | BPF_K
            jt: 0,
            jf: 0,
            k: sockets,
        },
        // return A
        libc::sock_filter {
            code: 0x16, // BPF_RET | BPF_A
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` describes `code`, both live for the call, and its size is
    // passed; the kernel copies the program.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in pin_to_cpu; sched_getaffinity writes at most size_of(cpu_set_t).
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let ok = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    if !ok {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` was initialised by sched_getaffinity; i < CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// The kernel's id for the calling thread (what `top -H` and `perf` show).
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// The interface index of `name` in the current network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// Moves the calling thread into the network namespace `ns` (an open namespace file:
/// `/run/netns/<name>`, `/proc/<pid>/ns/net`). Sockets the thread creates afterwards
/// live in that namespace, and stay there. A file that is not a network namespace is
/// refused (EINVAL). Meant for a short-lived thread of its own: the thread cannot go
/// back without a file for its old namespace.
pub fn enter_netns(ns: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: setns takes a file descriptor and a flag; `ns` keeps the descriptor open
    // for the call, and it only changes the calling thread's namespace.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; 64]);

fn sockaddr_of(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = 0;
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn socketaddr_from(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family says so) into storage
            // that is large enough and aligned for it.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A piece of a datagram to send: `bufs[buf][start..start + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxIov {
    pub buf: u32,
    pub start: u32,
    pub len: u32,
}

/// One message to send to `dst`: the pieces `iovs[first..first + count]`
/// concatenated. With `segment > 0` the kernel cuts it into datagrams of `segment`
/// bytes each, the last possibly shorter (UDP GSO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxMsg {
    pub dst: SocketAddr,
    pub segment: u16,
    pub first: u32,
    pub count: u32,
}

/// Reusable storage for [`send_batch`]. It holds raw pointers only during a call.
pub struct SendScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
}

// SAFETY: the raw pointers inside are written and used only within one call of
// `send_batch`, which borrows everything they point to; between calls they dangle
// unused, so moving the scratch to another thread cannot create an aliasing access.
unsafe impl Send for SendScratch {}

impl SendScratch {
    pub fn new(max_msgs: usize, max_segs: usize) -> SendScratch {
        SendScratch {
            // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C structs for
            // which all-zero bytes are valid (null pointers, zero lengths).
            hdrs: vec![unsafe { zeroed() }; max_msgs],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                max_segs
            ],
            // SAFETY: as above.
            addrs: vec![unsafe { zeroed() }; max_msgs],
            cmsgs: vec![CmsgBuf([0; 64]); max_msgs],
        }
    }
}

/// Sends `msgs` on `sock` with as few `sendmmsg` calls as it takes. Returns how many
/// messages the kernel took; the rest were refused by the error returned with them
/// (e.g. `WouldBlock` when the socket buffer is full). A message that cannot be
/// described whole — a piece outside its buffer, more pieces or messages than the
/// scratch holds — is never sent short: it and every message after it are refused
/// with `InvalidInput`.
pub fn send_batch<B: AsRef<[u8]>>(
    sock: &impl AsRawFd,
    bufs: &[B],
    iovs: &[TxIov],
    msgs: &[TxMsg],
    scratch: &mut SendScratch,
) -> (usize, Option<io::Error>) {
    let invalid = |why: &str| Some(io::Error::new(io::ErrorKind::InvalidInput, why.to_string()));
    let mut n = msgs.len().min(scratch.hdrs.len());
    let mut refused = (msgs.len() > n)
        .then(|| invalid("more messages than the send scratch holds"))
        .flatten();
    let mut nseg = 0usize;
    'build: for (i, m) in msgs[..n].iter().enumerate() {
        let first = nseg;
        let pieces = iovs.get(m.first as usize..(m.first as usize).saturating_add(m.count as usize));
        let Some(pieces) = pieces else {
            (n, refused) = (i, invalid("a message names pieces past the end of the batch"));
            break;
        };
        for s in pieces {
            let bytes = bufs
                .get(s.buf as usize)
                .and_then(|b| b.as_ref().get(s.start as usize..s.start as usize + s.len as usize));
            let Some(bytes) = bytes else {
                (n, refused) = (i, invalid("a piece lies outside its buffer"));
                break 'build;
            };
            let Some(iov) = scratch.iovs.get_mut(nseg) else {
                (n, refused) = (i, invalid("more pieces than the send scratch holds"));
                break 'build;
            };
            iov.iov_base = bytes.as_ptr() as *mut libc::c_void;
            iov.iov_len = bytes.len();
            nseg += 1;
        }
        let addr_len = sockaddr_of(&m.dst, &mut scratch.addrs[i]);
        let hdr = &mut scratch.hdrs[i];
        hdr.msg_len = 0;
        hdr.msg_hdr.msg_name = (&mut scratch.addrs[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_hdr.msg_namelen = addr_len;
        hdr.msg_hdr.msg_iov = scratch.iovs[first..].as_mut_ptr();
        hdr.msg_hdr.msg_iovlen = nseg - first;
        hdr.msg_hdr.msg_flags = 0;
        if m.segment > 0 {
            let cbuf = &mut scratch.cmsgs[i];
            // SAFETY: CMSG_SPACE is a pure computation on a small constant.
            let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
            hdr.msg_hdr.msg_control = cbuf.0.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = space;
            // SAFETY: msg_control points at `cbuf`, 8-aligned and 64 bytes, more than
            // CMSG_SPACE(2); CMSG_FIRSTHDR returns a pointer inside it, and CMSG_DATA
            // leaves room for the u16 written (unaligned write, as cmsg data may be).
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.segment);
            }
        } else {
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
        }
    }
    let fd = sock.as_raw_fd();
    let mut done = 0usize;
    while done < n {
        // SAFETY: hdrs[done..n] were filled above; every pointer in them (names,
        // iovecs, control buffers, payload bytes) points into `scratch` or `bufs`,
        // which are borrowed for the whole call and not otherwise touched meanwhile.
        let r = unsafe { libc::sendmmsg(fd, scratch.hdrs[done..n].as_mut_ptr(), (n - done) as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (done, Some(e));
        }
        if r == 0 {
            // Nothing taken and no error: say so, so the caller counts the rest.
            return (done, Some(io::ErrorKind::WouldBlock.into()));
        }
        done += r as usize;
    }
    (done, refused)
}

/// Writes `bufs` as one packet to `fd` (a TUN queue): `writev`. More slices than
/// one `writev` takes is an error, never a truncated packet.
pub fn write_vectored(fd: &impl AsRawFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len();
    if n > libc::UIO_MAXIOV as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{n} pieces are more than one write takes ({})", libc::UIO_MAXIOV),
        ));
    }
    loop {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix (std guarantees it);
        // the slices are borrowed for the call and n does not exceed their count.
        let r = unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast::<libc::iovec>(), n as libc::c_int) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One received datagram (or GRO train) in a [`RecvBatch`].
#[derive(Debug, Clone, Copy)]
pub struct RxMeta {
    pub len: usize,
    pub src: SocketAddr,
    /// With UDP_GRO: the size of each coalesced datagram (the last may be shorter).
    pub segment: Option<u16>,
    /// The datagram did not fit the buffer and was cut.
    pub truncated: bool,
    /// With SO_RXQ_OVFL: datagrams the socket had dropped so far (a wrapping count,
    /// reported once there has been a drop).
    pub dropped: Option<u32>,
}

/// Buffers and headers for `recvmmsg`, reused across calls.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    meta: Vec<RxMeta>,
}

// SAFETY: as for SendScratch: pointers are only dereferenced by the kernel within
// `recv`, which borrows the batch mutably; the buffers they point to are owned by it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(msgs: usize, buf_len: usize) -> RecvBatch {
        let placeholder = RxMeta {
            len: 0,
            src: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            segment: None,
            truncated: false,
            dropped: None,
        };
        RecvBatch {
            bufs: (0..msgs).map(|_| vec![0u8; buf_len]).collect(),
            // SAFETY: all-zero bytes are valid for these plain C structs.
            hdrs: vec![unsafe { zeroed() }; msgs],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                msgs
            ],
            // SAFETY: as above.
            addrs: vec![unsafe { zeroed() }; msgs],
            cmsgs: vec![CmsgBuf([0; 64]); msgs],
            meta: vec![placeholder; msgs],
        }
    }

    /// Receives up to the batch's capacity without blocking. Returns how many
    /// messages arrived (`WouldBlock` when none).
    pub fn recv(&mut self, sock: &impl AsRawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = self.bufs[i].len();
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = self.cmsgs[i].0.len();
            h.msg_hdr.msg_flags = 0;
        }
        let r = loop {
            // SAFETY: every header points at buffers, addresses and control space
            // owned by `self` and sized as declared; `self` is borrowed mutably for
            // the call. MSG_DONTWAIT keeps it from blocking; no timeout pointer.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            break r as usize;
        };
        for i in 0..r {
            let h = &self.hdrs[i];
            let mut segment = None;
            let mut dropped = None;
            // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* walk
            // stays inside that buffer; UDP_GRO data is a c_int and SO_RXQ_OVFL data
            // a u32 (both read unaligned).
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        segment = u16::try_from(v).ok().filter(|s| *s > 0);
                    } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                        dropped = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            self.meta[i] = RxMeta {
                len: h.msg_len as usize,
                src: socketaddr_from(&self.addrs[i]).unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
                segment,
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                dropped,
            };
        }
        Ok(r)
    }

    /// Message `i` of the last `recv`.
    pub fn get(&self, i: usize) -> (&[u8], RxMeta) {
        let m = self.meta[i];
        (&self.bufs[i][..m.len.min(self.bufs[i].len())], m)
    }

    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The receive buffers, for in-place rewriting of what was received.
    pub fn buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs
    }

    pub fn buffers(&self) -> &[Vec<u8>] {
        &self.bufs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_full_receive_buffer_reports_its_drops() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        setsockopt_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
        enable_rxq_ovfl(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[7u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        // The count rides on datagrams queued after the drops: drain what the
        // buffer kept, then send one more.
        let mut b = RecvBatch::new(8, 2048);
        while b.recv(&rx).is_ok() {}
        tx.send_to(b"after", rx.local_addr().unwrap()).unwrap();
        assert_eq!(b.recv(&rx).unwrap(), 1);
        let dropped = b.get(0).1.dropped.expect("drops are reported");
        assert!(
            dropped > 100,
            "a 4 KiB buffer kept at most a few of 200: {dropped} dropped"
        );
    }

    #[test]
    fn send_and_receive_a_gso_train_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gro = enable_udp_gro(&rx).is_ok();
        let gso = probe_udp_gso(&tx);
        let bufs = vec![vec![1u8; 100], vec![2u8; 100], vec![3u8; 60]];
        let segs = [
            TxIov {
                buf: 0,
                start: 0,
                len: 100,
            },
            TxIov {
                buf: 1,
                start: 0,
                len: 100,
            },
            TxIov {
                buf: 2,
                start: 0,
                len: 60,
            },
        ];
        let dst = rx.local_addr().unwrap();
        let msgs = if gso {
            vec![TxMsg {
                dst,
                segment: 100,
                first: 0,
                count: 3,
            }]
        } else {
            (0..3)
                .map(|i| TxMsg {
                    dst,
                    segment: 0,
                    first: i,
                    count: 1,
                })
                .collect()
        };
        let mut scratch = SendScratch::new(8, 8);
        let (sent, err) = send_batch(&tx, &bufs, &segs, &msgs, &mut scratch);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(sent, msgs.len());
        let mut batch = RecvBatch::new(4, 65536);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 3 && std::time::Instant::now() < deadline {
            match batch.recv(&rx) {
                Ok(n) => {
                    for i in 0..n {
                        let (data, meta) = batch.get(i);
                        assert_eq!(meta.src, tx.local_addr().unwrap());
                        let seg = meta.segment.map_or(data.len(), usize::from);
                        got.extend(data.chunks(seg).map(|c| (c[0], c.len())));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, vec![(1, 100), (2, 100), (3, 60)], "gro={gro} gso={gso}");
    }

    /// Whatever cannot be sent whole is refused, and nothing short goes out.
    #[test]
    fn messages_that_cannot_be_described_whole_are_refused_not_truncated() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = rx.local_addr().unwrap();
        let bufs = vec![vec![7u8; 100]];
        let piece = |start, len| TxIov { buf: 0, start, len };
        let msg = |first, count| TxMsg {
            dst,
            segment: 0,
            first,
            count,
        };
        let iovs = [piece(0, 10), piece(10, 10), piece(20, 10), piece(90, 20)];
        let cases: [(&[TxMsg], usize); 4] = [
            // The second message's second piece runs past its buffer.
            (&[msg(0, 1), msg(2, 2)], 2),
            // The second message names pieces the batch does not have.
            (&[msg(0, 2), msg(2, 5)], 2),
            // The second message needs a fourth iovec; the scratch has three.
            (&[msg(0, 1), msg(0, 3)], 3),
            // Three messages; the scratch holds two.
            (&[msg(0, 1), msg(1, 1), msg(2, 1)], 3),
        ];
        for (msgs, scratch_iovs) in cases {
            let mut scratch = SendScratch::new(2, scratch_iovs);
            let (sent, err) = send_batch(&tx, &bufs, &iovs, msgs, &mut scratch);
            assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput), "{msgs:?}");
            let mut got = Vec::new();
            let mut buf = [0u8; 200];
            while let Ok(n) = rx.recv(&mut buf) {
                got.push(n);
            }
            let whole: Vec<usize> = msgs[..sent]
                .iter()
                .map(|m| {
                    iovs[m.first as usize..][..m.count as usize]
                        .iter()
                        .map(|p| p.len as usize)
                        .sum()
                })
                .collect();
            assert_eq!(got, whole, "only whole messages went out: {msgs:?}");
        }
        let slices: Vec<std::io::IoSlice> = (0..libc::UIO_MAXIOV + 1).map(|_| std::io::IoSlice::new(b"x")).collect();
        let e = write_vectored(&tx, &slices).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn cpus_and_thread_ids() {
        assert!(!allowed_cpus().is_empty());
        assert!(thread_id() > 0);
        assert!(if_index("lo").is_ok());
        assert!(if_index("no-such-if0").is_err());
    }
}
