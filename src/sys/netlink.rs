//! A minimal rtnetlink client: the link, address, route and rule changes tunloom makes
//! to its own TUN device and to container attachments (veth pairs created across
//! namespaces, policy rules into tunloom's tables, routes in those tables), and the
//! few questions it asks (a link by name, every link, every IPv4 route). Requests are
//! encoded here by hand (each is a few dozen bytes) and sent on a socket2 netlink
//! socket; the kernel's acknowledgement says whether it worked. No unsafe code here:
//! only byte building and parsing (entering a namespace is `sys::enter_netns`).
//!
//! Message layout (linux/netlink.h, linux/rtnetlink.h): a 16-byte `nlmsghdr`, the
//! request's fixed part (`ifinfomsg`, `ifaddrmsg`, `rtmsg`, `fib_rule_hdr`), then
//! attributes, each a 4-byte header (length, type) and data padded to 4 bytes; a
//! nested attribute's data is itself attributes. All integers are host-endian.

use ipnet::{IpNet, Ipv4Net};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_GSO_MAX_SIZE: u16 = 41;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const FRA_SRC: u16 = 2;
const FRA_IIFNAME: u16 = 3;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;
const FR_ACT_BLACKHOLE: u8 = 6;
/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const RTN_UNREACHABLE: u8 = 7;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const HEADER: usize = 16;
const IFINFOMSG: usize = 16;
const RTMSG: usize = 12;

/// A request under construction: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    /// A request the kernel acknowledges (NLM_F_ACK).
    fn new(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
        Msg::with_flags(kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, fixed)
    }

    /// A dump request: answered by many messages and NLMSG_DONE, no ack.
    fn dump(kind: u16, seq: u32, fixed: &[u8]) -> Msg {
        Msg::with_flags(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, fixed)
    }

    fn with_flags(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(fixed);
        Msg(v)
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn attr_u32(self, kind: u16, v: u32) -> Msg {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute (names).
    fn attr_str(self, kind: u16, s: &str) -> Msg {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        self.attr(kind, &b)
    }

    /// An attribute whose data `inner` writes (more attributes, or a fixed part and
    /// attributes as in VETH_INFO_PEER); its length is filled in afterwards.
    fn nest(mut self, kind: u16, inner: impl FnOnce(Msg) -> Msg) -> Msg {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&kind.to_ne_bytes());
        let mut m = inner(self);
        let len = (m.0.len() - at) as u16;
        m.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        m.pad();
        m
    }

    /// Raw bytes inside a nest (a fixed header such as the peer's `ifinfomsg`).
    fn raw(mut self, data: &[u8]) -> Msg {
        self.0.extend_from_slice(data);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Iterates the attributes in `buf`: (type without flags, data).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, data))
    })
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

fn addr_bytes(net: &IpNet) -> (u8, Vec<u8>) {
    match net {
        IpNet::V4(n) => (AF_INET, n.addr().octets().to_vec()),
        IpNet::V6(n) => (AF_INET6, n.addr().octets().to_vec()),
    }
}

/// An `ifinfomsg`: family, type, index, flags and the change mask.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG] {
    let mut f = [0u8; IFINFOMSG];
    f[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    f[8..12].copy_from_slice(&flags.to_ne_bytes());
    f[12..16].copy_from_slice(&change.to_ne_bytes());
    f
}

/// Encodes "set link `index` up, with this MTU and GSO size limit".
fn link_request(seq: u32, index: u32, mtu: Option<u32>, gso_max_size: Option<u32>) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWLINK, 0, seq, &ifinfomsg(index, IFF_UP, IFF_UP));
    if let Some(mtu) = mtu {
        m = m.attr_u32(IFLA_MTU, mtu);
    }
    if let Some(g) = gso_max_size {
        m = m.attr_u32(IFLA_GSO_MAX_SIZE, g);
    }
    m.finish()
}

/// A veth pair to create: one end here, the other (`peer`) placed directly into the
/// network namespace `peer_netns` with its own MAC address.
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    pub mtu: u32,
    pub peer_mac: [u8; 6],
    pub peer_netns: BorrowedFd<'a>,
}

/// Encodes "create veth pair `v`" (fails with EEXIST when either name is taken).
fn veth_request(seq: u32, v: &Veth<'_>) -> Vec<u8> {
    Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, seq, &ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, v.name)
        .attr_u32(IFLA_MTU, v.mtu)
        .nest(IFLA_LINKINFO | NLA_F_NESTED, |m| {
            m.attr_str(IFLA_INFO_KIND, "veth")
                .nest(IFLA_INFO_DATA | NLA_F_NESTED, |m| {
                    // The peer's data is an ifinfomsg followed by its attributes.
                    m.nest(VETH_INFO_PEER, |m| {
                        m.raw(&ifinfomsg(0, 0, 0))
                            .attr_str(IFLA_IFNAME, v.peer)
                            .attr_u32(IFLA_MTU, v.mtu)
                            .attr(IFLA_ADDRESS, &v.peer_mac)
                            .attr_u32(IFLA_NET_NS_FD, v.peer_netns.as_raw_fd() as u32)
                    })
                })
        })
        .finish()
}

/// Encodes "delete the link called `name`" (ENODEV when there is none).
fn del_link_request(seq: u32, name: &str) -> Vec<u8> {
    Msg::new(RTM_DELLINK, 0, seq, &ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name)
        .finish()
}

/// Encodes "describe the link called `name`".
fn get_link_request(seq: u32, name: &str) -> Vec<u8> {
    Msg::new(RTM_GETLINK, 0, seq, &ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name)
        .finish()
}

/// A link's index and name from an RTM_NEWLINK message.
fn parse_link(msg: &[u8]) -> Option<(u32, String)> {
    let fixed = msg.get(HEADER..HEADER + IFINFOMSG)?;
    let index = i32::from_ne_bytes(fixed[4..8].try_into().ok()?) as u32;
    let name = attrs(&msg[HEADER + IFINFOMSG..]).find(|(k, _)| *k == IFLA_IFNAME)?.1;
    let name = name.split(|b| *b == 0).next()?;
    Some((index, String::from_utf8_lossy(name).into_owned()))
}

/// Encodes "add address `net` (address and prefix length) to link `index`", or with
/// `add` false, "remove it".
fn address_request(seq: u32, index: u32, net: &IpNet, add: bool) -> Vec<u8> {
    let (family, addr) = addr_bytes(net);
    let mut fixed = vec![family, net.prefix_len(), 0, RT_SCOPE_UNIVERSE];
    fixed.extend_from_slice(&index.to_ne_bytes());
    let (kind, flags) = if add {
        (RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        (RTM_DELADDR, 0)
    };
    Msg::new(kind, flags, seq, &fixed)
        .attr(IFA_LOCAL, &addr)
        .attr(IFA_ADDRESS, &addr)
        .finish()
}

/// One route: a destination in a table, out of a link and/or via a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub table: u32,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    /// An `unreachable` route (the host answers "unreachable" and forwards nothing)
    /// rather than a unicast one.
    pub unreachable: bool,
}

impl Route {
    /// `dst dev <index>` in `table`, on the link (no gateway).
    pub fn dev(dst: IpNet, table: u32, index: u32) -> Route {
        Route {
            dst,
            table,
            oif: Some(index),
            gateway: None,
            unreachable: false,
        }
    }

    /// `unreachable dst` in `table`.
    pub fn unreachable(dst: IpNet, table: u32) -> Route {
        Route {
            dst,
            table,
            oif: None,
            gateway: None,
            unreachable: true,
        }
    }
}

/// Encodes "add (replacing) route `r`", or with `add` false, "delete it". A table
/// past 255 goes in RTA_TABLE (the header's byte holds only 0..=255).
fn route_msg(seq: u32, r: &Route, add: bool) -> Vec<u8> {
    route_msg_flags(seq, r, add, NLM_F_REPLACE)
}

/// [`route_msg`] with `extra` flags on an add: NLM_F_REPLACE, or NLM_F_EXCL to leave
/// a route already there alone (EEXIST).
fn route_msg_flags(seq: u32, r: &Route, add: bool, extra: u16) -> Vec<u8> {
    let dst = r.dst.trunc();
    let (family, addr) = addr_bytes(&dst);
    let scope = match (add, r.gateway) {
        // Deleting matches any scope.
        (false, _) => RT_SCOPE_NOWHERE,
        (true, _) if r.unreachable => RT_SCOPE_UNIVERSE,
        (true, None) => RT_SCOPE_LINK,
        (true, Some(_)) => RT_SCOPE_UNIVERSE,
    };
    let table = u8::try_from(r.table).unwrap_or(0);
    let protocol = if add { RTPROT_STATIC } else { 0 };
    let rtype = if r.unreachable { RTN_UNREACHABLE } else { RTN_UNICAST };
    let mut fixed = vec![family, dst.prefix_len(), 0, 0, table, protocol, scope, rtype];
    fixed.extend_from_slice(&0u32.to_ne_bytes());
    let (kind, flags) = if add {
        (RTM_NEWROUTE, NLM_F_CREATE | extra)
    } else {
        (RTM_DELROUTE, 0)
    };
    let mut m = Msg::new(kind, flags, seq, &fixed);
    if r.table > 255 {
        m = m.attr_u32(RTA_TABLE, r.table);
    }
    if dst.prefix_len() > 0 {
        m = m.attr(RTA_DST, &addr);
    }
    if let Some(gw) = r.gateway {
        m = match gw {
            IpAddr::V4(a) => m.attr(RTA_GATEWAY, &a.octets()),
            IpAddr::V6(a) => m.attr(RTA_GATEWAY, &a.octets()),
        };
    }
    if let Some(oif) = r.oif {
        m = m.attr_u32(RTA_OIF, oif);
    }
    m.finish()
}

/// Encodes "route `net` through link `index`" in the main table.
fn route_request(seq: u32, index: u32, net: &IpNet) -> Vec<u8> {
    route_msg(seq, &Route::dev(*net, RT_TABLE_MAIN, index), true)
}

/// An IPv4 route from an RTM_NEWROUTE message of a dump.
fn parse_route(msg: &[u8]) -> Option<Route> {
    let fixed = msg.get(HEADER..HEADER + RTMSG)?;
    if fixed[0] != AF_INET {
        return None;
    }
    let mut r = Route {
        dst: IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, fixed[1]).ok()?),
        table: u32::from(fixed[4]),
        oif: None,
        gateway: None,
        unreachable: fixed[7] == RTN_UNREACHABLE,
    };
    for (kind, data) in attrs(&msg[HEADER + RTMSG..]) {
        let v4 = || <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from);
        match kind {
            RTA_DST => r.dst = IpNet::V4(Ipv4Net::new(v4()?, fixed[1]).ok()?),
            RTA_TABLE => r.table = u32_of(data)?,
            RTA_OIF => r.oif = u32_of(data),
            RTA_GATEWAY => r.gateway = v4().map(IpAddr::V4),
            _ => {}
        }
    }
    Some(r)
}

/// One IPv4 policy rule: packets that came in on `iif` look up `table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule<'a> {
    pub priority: u32,
    pub iif: &'a str,
    /// Only packets from this source (a /32), or any.
    pub src: Option<Ipv4Addr>,
    /// The table to look up; 0: drop the packet (a blackhole rule).
    pub table: u32,
}

/// Encodes "add rule `r`" (EEXIST when the same rule is there: NLM_F_EXCL, without
/// which the kernel would add a duplicate), or with `add` false, "delete it".
fn rule_msg(seq: u32, r: &Rule<'_>, add: bool) -> Vec<u8> {
    // fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let table = u8::try_from(r.table).unwrap_or(0);
    let action = if r.table == 0 { FR_ACT_BLACKHOLE } else { FR_ACT_TO_TBL };
    let src_len = if r.src.is_some() { 32 } else { 0 };
    let mut fixed = vec![AF_INET, 0, src_len, 0, table, 0, 0, action];
    fixed.extend_from_slice(&0u32.to_ne_bytes());
    let (kind, flags) = if add {
        (RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL)
    } else {
        (RTM_DELRULE, 0)
    };
    let mut m = Msg::new(kind, flags, seq, &fixed)
        .attr_str(FRA_IIFNAME, r.iif)
        .attr_u32(FRA_PRIORITY, r.priority);
    if let Some(src) = r.src {
        m = m.attr(FRA_SRC, &src.octets());
    }
    if r.table != 0 {
        m = m.attr_u32(FRA_TABLE, r.table);
    }
    m.finish()
}

/// What one read of the kernel's answer to request `seq` means.
#[derive(Debug)]
enum Step {
    /// More messages are coming.
    More,
    /// The answer is complete: acknowledged (or dump done), or refused with an errno.
    Done(io::Result<()>),
}

/// Reads one datagram of answers to request `seq`, keeping its data messages in `out`.
/// Messages for other sequence numbers (a late answer to a request that timed out)
/// are skipped.
fn read_answer(buf: &[u8], seq: u32, out: &mut Vec<Vec<u8>>) -> Step {
    let mut at = 0usize;
    while at + HEADER <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let mseq = u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
        if len < HEADER || at + len > buf.len() {
            return Step::Done(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated rtnetlink message",
            )));
        }
        let msg = &buf[at..at + len];
        at += (len + 3) & !3;
        if mseq != seq || kind == NLMSG_NOOP {
            continue;
        }
        match kind {
            NLMSG_ERROR | NLMSG_DONE => {
                let err = msg
                    .get(HEADER..HEADER + 4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Step::Done(if err == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-err))
                });
            }
            _ => out.push(msg.to_vec()),
        }
    }
    Step::More
}

/// Reads the kernel's answer to request `seq`: Ok for an ack, the errno otherwise.
#[cfg(test)]
fn parse_ack(buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    match read_answer(buf, seq, &mut Vec::new()) {
        Step::More => None,
        Step::Done(r) => Some(r),
    }
}

/// Whether an error says the thing is not there (what deleting something absent gets).
pub fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL)
    )
}

/// An rtnetlink socket in the network namespace it was opened in (a socket stays
/// bound to that namespace whichever thread later uses it).
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(NETLINK_ROUTE)),
        )?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Netlink { sock, seq: 1 })
    }

    /// A socket in the network namespace `ns` (an open namespace file), opened by a
    /// short-lived thread that enters it; the calling thread stays where it is.
    pub fn open_in(ns: &std::fs::File) -> io::Result<Netlink> {
        let ns = ns.try_clone()?;
        std::thread::Builder::new()
            .name("netns-socket".into())
            .spawn(move || {
                super::enter_netns(&ns)?;
                Netlink::open()
            })?
            .join()
            .map_err(|_| io::Error::other("the thread opening a namespace's netlink socket panicked"))?
    }

    /// Sends one request and reads its whole answer: the data messages, or the errno.
    fn transact(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock.send(&build(seq))?;
        // Large enough for any datagram of a dump (the kernel fills up to 32 KiB).
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = io::Read::read(&mut &self.sock, &mut buf)?;
            if let Step::Done(r) = read_answer(&buf[..n], seq, &mut out) {
                return r.map(|()| out);
            }
        }
    }

    fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<()> {
        self.transact(build).map(drop)
    }

    /// Brings link `index` up, optionally setting its MTU and the largest GSO packet
    /// the stack may hand it.
    pub fn set_link(&mut self, index: u32, mtu: Option<u32>, gso_max_size: Option<u32>) -> io::Result<()> {
        self.request(|seq| link_request(seq, index, mtu, gso_max_size))
    }

    /// Adds (or refreshes) an address on link `index`.
    pub fn add_address(&mut self, index: u32, net: &IpNet) -> io::Result<()> {
        self.request(|seq| address_request(seq, index, net, true))
    }

    /// Removes an address from link `index`.
    pub fn del_address(&mut self, index: u32, net: &IpNet) -> io::Result<()> {
        self.request(|seq| address_request(seq, index, net, false))
    }

    /// Routes `net` through link `index` (replacing an existing route for it).
    pub fn add_route(&mut self, index: u32, net: &IpNet) -> io::Result<()> {
        self.request(|seq| route_request(seq, index, net))
    }

    /// Adds route `r`, replacing one for the same destination in its table.
    pub fn replace_route(&mut self, r: &Route) -> io::Result<()> {
        self.request(|seq| route_msg(seq, r, true))
    }

    /// Adds route `r` unless one for the same destination is in its table already
    /// (that one is left alone, and this is not an error).
    pub fn add_route_if_none(&mut self, r: &Route) -> io::Result<()> {
        match self.request(|seq| route_msg_flags(seq, r, true, NLM_F_EXCL)) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Deletes route `r` (fields left `None` match anything). A missing route is an
    /// error (ESRCH; see [`is_absent`]).
    pub fn del_route(&mut self, r: &Route) -> io::Result<()> {
        self.request(|seq| route_msg(seq, r, false))
    }

    /// Every IPv4 route of every table.
    pub fn routes_v4(&mut self) -> io::Result<Vec<Route>> {
        let mut fixed = [0u8; RTMSG];
        fixed[0] = AF_INET;
        let msgs = self.transact(|seq| Msg::dump(RTM_GETROUTE, seq, &fixed).finish())?;
        Ok(msgs.iter().filter_map(|m| parse_route(m)).collect())
    }

    /// Adds rule `r`; the same rule already there is not an error.
    pub fn add_rule(&mut self, r: &Rule<'_>) -> io::Result<()> {
        match self.request(|seq| rule_msg(seq, r, true)) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Deletes rule `r`; a missing rule is not an error.
    pub fn del_rule(&mut self, r: &Rule<'_>) -> io::Result<()> {
        match self.request(|seq| rule_msg(seq, r, false)) {
            Err(e) if is_absent(&e) => Ok(()),
            other => other,
        }
    }

    /// Creates veth pair `v`.
    pub fn create_veth(&mut self, v: &Veth<'_>) -> io::Result<()> {
        self.request(|seq| veth_request(seq, v))
    }

    /// Deletes the link called `name`; whether one was there (deleting one end of a
    /// veth pair deletes both).
    pub fn del_link(&mut self, name: &str) -> io::Result<bool> {
        match self.request(|seq| del_link_request(seq, name)) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The index of the link called `name`, if there is one.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        match self.transact(|seq| get_link_request(seq, name)) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| parse_link(m)).map(|(i, _)| i)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link: (index, name).
    pub fn links(&mut self) -> io::Result<Vec<(u32, String)>> {
        let fixed = ifinfomsg(0, 0, 0);
        let msgs = self.transact(|seq| Msg::dump(RTM_GETLINK, seq, &fixed).finish())?;
        Ok(msgs.iter().filter_map(|m| parse_link(m)).collect())
    }

    /// The sources of the IPv4 rules at `priority` on input link `iif`.
    pub fn rules_of(&mut self, iif: &str, priority: u32) -> io::Result<Vec<Ipv4Addr>> {
        let mut fixed = [0u8; 12];
        fixed[0] = AF_INET;
        let msgs = self.transact(|seq| Msg::dump(RTM_GETRULE, seq, &fixed).finish())?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let (mut name, mut prio, mut src) = (None, 0, None);
                for (kind, data) in attrs(m.get(HEADER + 12..)?) {
                    match kind {
                        FRA_IIFNAME => name = Some(data.split(|b| *b == 0).next().unwrap_or(data)),
                        FRA_PRIORITY => prio = u32_of(data)?,
                        FRA_SRC => src = <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from),
                        _ => {}
                    }
                }
                (name == Some(iif.as_bytes()) && prio == priority)
                    .then_some(src)
                    .flatten()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn route_request_bytes() {
        let m = route_request(7, 3, &"198.19.0.0/16".parse().unwrap());
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &44u32.to_ne_bytes()[..], &24u16.to_ne_bytes(), &(0x505u16).to_ne_bytes(),
            &7u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[2, 16, 0, 0, 254, 4, 253, 1], &0u32.to_ne_bytes(),
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[198, 19, 0, 0],
            &8u16.to_ne_bytes(), &4u16.to_ne_bytes(), &3u32.to_ne_bytes(),
        ].concat();
        assert_eq!(m, want);
    }

    #[test]
    fn link_and_address_requests_are_padded_and_sized() {
        let m = link_request(1, 9, Some(1450), Some(60000));
        assert_eq!(m.len(), 16 + 16 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize, m.len());
        let a = address_request(2, 9, &"fd00::1/64".parse().unwrap(), true);
        assert_eq!(a.len(), 16 + 8 + 20 + 20);
        assert_eq!(a[16], AF_INET6);
        assert_eq!(a[17], 64);
        let d = address_request(2, 9, &"fd00::1/64".parse().unwrap(), false);
        assert_eq!(d.len(), a.len());
        assert_eq!(u16::from_ne_bytes([d[4], d[5]]), RTM_DELADDR);
        assert_eq!(u16::from_ne_bytes([d[6], d[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(d[16..], a[16..], "the same address, only the verb differs");
    }

    /// An attribute header, written out by hand for the fixtures below.
    fn hdr(len: u16, kind: u16) -> Vec<u8> {
        [len.to_ne_bytes(), kind.to_ne_bytes()].concat()
    }

    #[test]
    fn veth_request_bytes() {
        let ns = std::fs::File::open("/proc/self/ns/net").unwrap();
        let fd = ns.as_raw_fd() as u32;
        let v = Veth {
            name: "tlc0",
            peer: "eth0",
            mtu: 1450,
            peer_mac: [2, 0, 0, 0, 0, 1],
            peer_netns: std::os::fd::AsFd::as_fd(&ns),
        };
        let m = veth_request(3, &v);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // nlmsghdr: length, RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE, seq, pid.
            &132u32.to_ne_bytes()[..], &16u16.to_ne_bytes(), &0x605u16.to_ne_bytes(),
            &3u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[0; 16], // ifinfomsg: any family, no index, no flags
            &hdr(9, 3), b"tlc0\0", &[0; 3], // IFLA_IFNAME
            &hdr(8, 4), &1450u32.to_ne_bytes(), // IFLA_MTU
            &hdr(80, 0x8012), // IFLA_LINKINFO (nested)
            &hdr(9, 1), b"veth\0", &[0; 3], // IFLA_INFO_KIND
            &hdr(64, 0x8002), // IFLA_INFO_DATA (nested)
            &hdr(60, 1), // VETH_INFO_PEER: an ifinfomsg, then the peer's attributes
            &[0; 16],
            &hdr(9, 3), b"eth0\0", &[0; 3],
            &hdr(8, 4), &1450u32.to_ne_bytes(),
            &hdr(10, 1), &[2, 0, 0, 0, 0, 1], &[0; 2], // IFLA_ADDRESS
            &hdr(8, 28), &fd.to_ne_bytes(), // IFLA_NET_NS_FD
        ].concat();
        assert_eq!(m, want);
    }

    #[test]
    fn rule_request_bytes() {
        let r = Rule {
            priority: 100,
            iif: "tlc0",
            src: None,
            table: 6783,
        };
        let m = rule_msg(9, &r, true);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            // nlmsghdr: length, RTM_NEWRULE, REQUEST|ACK|EXCL|CREATE, seq, pid.
            &56u32.to_ne_bytes()[..], &32u16.to_ne_bytes(), &0x605u16.to_ne_bytes(),
            &9u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            // fib_rule_hdr: AF_INET, lengths and tos 0, table in FRA_TABLE, FR_ACT_TO_TBL.
            &[2, 0, 0, 0, 0, 0, 0, 1], &0u32.to_ne_bytes(),
            &hdr(9, 3), b"tlc0\0", &[0; 3], // FRA_IIFNAME
            &hdr(8, 6), &100u32.to_ne_bytes(), // FRA_PRIORITY
            &hdr(8, 15), &6783u32.to_ne_bytes(), // FRA_TABLE
        ].concat();
        assert_eq!(m, want);
        let d = rule_msg(9, &Rule { table: 7, ..r }, false);
        assert_eq!(u16::from_ne_bytes([d[4], d[5]]), RTM_DELRULE);
        assert_eq!(u16::from_ne_bytes([d[6], d[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(d[20], 7, "a small table also goes in the header");
        // From one source; and a blackhole rule, which names no table.
        let from = rule_msg(
            9,
            &Rule {
                src: Some("198.19.1.5".parse().unwrap()),
                ..r
            },
            true,
        );
        assert_eq!(&from[16..24], &[2, 0, 32, 0, 0, 0, 0, 1], "src_len 32");
        assert!(
            from.windows(8).any(|w| w == [hdr(8, 2), vec![198, 19, 1, 5]].concat()),
            "FRA_SRC"
        );
        let hole = rule_msg(9, &Rule { table: 0, ..r }, true);
        assert_eq!(hole[23], FR_ACT_BLACKHOLE);
        assert!(!hole.windows(4).any(|w| w == hdr(8, 15)), "no FRA_TABLE");
    }

    #[test]
    fn routes_in_tunloom_tables_and_via_gateways() {
        let r = Route::dev("198.19.1.5/32".parse().unwrap(), 6784, 12);
        let m = route_msg(4, &r, true);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &52u32.to_ne_bytes()[..], &24u16.to_ne_bytes(), &0x505u16.to_ne_bytes(),
            &4u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            // rtmsg: AF_INET /32, table in RTA_TABLE, static, scope link, unicast.
            &[2, 32, 0, 0, 0, 4, 253, 1], &0u32.to_ne_bytes(),
            &hdr(8, 15), &6784u32.to_ne_bytes(), // RTA_TABLE
            &hdr(8, 1), &[198, 19, 1, 5], // RTA_DST
            &hdr(8, 4), &12u32.to_ne_bytes(), // RTA_OIF
        ].concat();
        assert_eq!(m, want);
        // A default route via a gateway: no RTA_DST, universe scope.
        let d = Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            table: RT_TABLE_MAIN,
            oif: Some(2),
            gateway: Some("198.19.1.1".parse().unwrap()),
            unreachable: false,
        };
        let m = route_msg(5, &d, true);
        assert_eq!(&m[16..24], &[2, 0, 0, 0, 254, 4, 0, 1]);
        assert_eq!(&m[28..36], &[hdr(8, 5), vec![198, 19, 1, 1]].concat()[..]);
        assert_eq!(m.len(), 28 + 8 + 8);
        // Deleting matches any scope and protocol.
        let del = route_msg(6, &r, false);
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), RTM_DELROUTE);
        assert_eq!(&del[16..24], &[2, 32, 0, 0, 0, 0, 255, 1]);
        // What a dump returns parses back (the kernel sends RTA_TABLE too).
        let mut dumped = m.clone();
        dumped.extend_from_slice(&[hdr(8, 15), 254u32.to_ne_bytes().to_vec()].concat());
        let len = dumped.len() as u32;
        dumped[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_route(&dumped), Some(d));
        assert_eq!(parse_route(&route_msg(4, &r, true)), Some(r));
        // `unreachable <subnet>`: its type, universe scope, no link.
        let u = Route::unreachable("198.19.0.0/24".parse().unwrap(), 6784);
        let m = route_msg(7, &u, true);
        assert_eq!(&m[16..24], &[2, 24, 0, 0, 0, 4, 0, RTN_UNREACHABLE]);
        assert_eq!(parse_route(&m), Some(u));
    }

    #[test]
    fn dumps_end_at_done_and_links_parse() {
        let mut link = Msg::with_flags(RTM_NEWLINK, 2, 8, &ifinfomsg(5, 0, 0))
            .attr_u32(IFLA_MTU, 1500)
            .attr_str(IFLA_IFNAME, "tlc0123456789")
            .finish();
        assert_eq!(parse_link(&link), Some((5, "tlc0123456789".to_string())));
        let done = Msg::with_flags(NLMSG_DONE, 2, 8, &0i32.to_ne_bytes()).finish();
        let other = Msg::with_flags(RTM_NEWLINK, 2, 7, &ifinfomsg(6, 0, 0)).finish();
        let mut buf = other.clone();
        buf.extend_from_slice(&link);
        let mut out = Vec::new();
        assert!(matches!(read_answer(&buf, 8, &mut out), Step::More));
        assert_eq!(out, vec![link.clone()], "the stale answer to seq 7 is skipped");
        assert!(matches!(read_answer(&done, 8, &mut out), Step::Done(Ok(()))));
        // A message cut short is an error, not a silent end.
        link.truncate(link.len() - 4);
        assert!(matches!(read_answer(&link, 8, &mut out), Step::Done(Err(_))));
    }

    #[test]
    fn acks_and_errors_are_read() {
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&5u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-17i32).to_ne_bytes());
        ack.extend_from_slice(&[0u8; 16]);
        let r = parse_ack(&ack, 5).unwrap();
        assert_eq!(r.unwrap_err().raw_os_error(), Some(17));
        assert!(parse_ack(&ack, 6).is_none());
        assert!(parse_ack(&ack[..10], 5).is_none());
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert!(parse_ack(&ack, 5).unwrap().is_ok());
    }
}
