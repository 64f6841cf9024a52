//! A minimal rtnetlink client: the few link, address and route changes tunloom makes
//! to its own TUN device. Requests are encoded here by hand (each is a few dozen
//! bytes) and sent on a socket2 netlink socket; the kernel's acknowledgement says
//! whether it worked. No unsafe code: only byte building and parsing.

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::time::Duration;

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_MTU: u16 = 4;
const IFLA_GSO_MAX_SIZE: u16 = 41;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A request under construction: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(fixed);
        Msg(v)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Msg {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn addr_bytes(net: &IpNet) -> (u8, Vec<u8>) {
    match net {
        IpNet::V4(n) => (AF_INET, n.addr().octets().to_vec()),
        IpNet::V6(n) => (AF_INET6, n.addr().octets().to_vec()),
    }
}

/// Encodes "set link `index` up, with this MTU and GSO size limit".
fn link_request(seq: u32, index: u32, mtu: Option<u32>, gso_max_size: Option<u32>) -> Vec<u8> {
    let mut fixed = Vec::with_capacity(16);
    fixed.extend_from_slice(&[0, 0]); // family, pad
    fixed.extend_from_slice(&0u16.to_ne_bytes()); // type
    fixed.extend_from_slice(&(index as i32).to_ne_bytes());
    fixed.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    fixed.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    let mut m = Msg::new(RTM_NEWLINK, 0, seq, &fixed);
    if let Some(mtu) = mtu {
        m = m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    if let Some(g) = gso_max_size {
        m = m.attr(IFLA_GSO_MAX_SIZE, &g.to_ne_bytes());
    }
    m.finish()
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

/// Encodes "route `net` through link `index`" in the main table.
fn route_request(seq: u32, index: u32, net: &IpNet) -> Vec<u8> {
    let net = net.trunc();
    let (family, addr) = addr_bytes(&net);
    let mut fixed = vec![
        family,
        net.prefix_len(),
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    fixed.extend_from_slice(&0u32.to_ne_bytes());
    Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq, &fixed)
        .attr(RTA_DST, &addr)
        .attr(RTA_OIF, &index.to_ne_bytes())
        .finish()
}

/// Reads the kernel's answer to request `seq`: Ok for an ack, the errno otherwise.
fn parse_ack(buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    let mut at = 0usize;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().ok()?);
        let mseq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().ok()?);
        if len < 16 || at + len > buf.len() {
            return None;
        }
        if kind == NLMSG_ERROR && mseq == seq && len >= 20 {
            let err = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().ok()?);
            return Some(if err == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-err))
            });
        }
        at += (len + 3) & !3;
    }
    None
}

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(NETLINK_ROUTE)),
        )?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Netlink { sock, seq: 1 })
    }

    fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock.send(&build(seq))?;
        let mut buf = [0u8; 8192];
        loop {
            let n = io::Read::read(&mut &self.sock, &mut buf)?;
            if let Some(r) = parse_ack(&buf[..n], seq) {
                return r;
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
