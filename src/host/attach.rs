//! Container attachments: what puts a container's network namespace on tunloom's
//! overlay, and what takes it off again. This module may touch, over rtnetlink, the
//! links, addresses, routes and rules named below (in tunloom's namespace and in the
//! container's), the IPv4 sysctls of the TUN link and of attachment host ends under
//! `/proc/sys/net/ipv4`, and the `resolv.conf` files it writes under `/etc/netns/`.
//! Nothing else: no `ip` subprocesses, no other links, tables or rules.
//!
//! # Routing
//! Two routing tables and two rule priorities belong to tunloom:
//!
//! - Table **6783** ([`TO_TUN`]) holds one route, `default dev <tun>`. Each
//!   attachment adds a rule at priority **100** ([`FROM_CONTAINER`]),
//!   `iif <host_if> from <its address> lookup 6783`: every packet a container sends
//!   enters the TUN device, so tunloom's pipeline sees it (also container to
//!   container on one host, and traffic to the world); and a rule at priority **101**
//!   ([`GUARD`]), `iif <host_if> blackhole`, drops the rest — a packet from an address
//!   the container was not given (the pipeline sees addresses, not which veth a
//!   packet came from, so a forged source could otherwise cross networks), and
//!   everything while tunloom is down (table 6783 is empty then, and a packet would
//!   otherwise fall through to `main` around the pipeline).
//! - Table **6784** ([`TO_CONTAINERS`]) holds one `/32 dev <host_if>` route (scope
//!   link) per attachment, and an `unreachable <subnet>` per network (made with its
//!   route into the TUN), so a packet for an address of the network that no container
//!   here holds is refused instead of routed into the TUN again. One rule at priority **99** ([`FROM_TUN`]),
//!   `iif <tun> lookup 6784`, sends what tunloom writes back into the TUN to the
//!   container it is for; what table 6784 does not hold falls through to `main`
//!   (egress to the world, masqueraded by `super::egress`).
//! - A network's subnet is routed `dev <tun>` in `main` (`HostOp::AddRoute`), so
//!   replies to masqueraded traffic and traffic the host itself sends also pass
//!   tunloom.
//!
//! # Sysctls (tunloom's namespace)
//! - `net.ipv4.ip_forward = 1`: the host forwards between host ends and the TUN.
//! - `conf/<tun>/rp_filter = 0` and `conf/<host_if>/rp_filter = 0`. The kernel uses
//!   max(`conf/all`, `conf/<dev>`); with `all` at 1 (strict) a packet tunloom writes
//!   back into the TUN from a source routed elsewhere (a reply from the world, whose
//!   route is the uplink) would be dropped, so [`prepare`] lowers `conf/all/rp_filter`
//!   from 1 to 2 (loose: the source must still be routable) and logs it; 0 and 2 are
//!   left as they are. It is not raised again on exit.
//! - `conf/<host_if>/proxy_arp = 1`: the container's ARP for its gateway (or for a
//!   neighbour on its subnet) is answered by the host end, since their route is the
//!   TUN, another interface; `neigh/<host_if>/proxy_delay = 0` answers at once (the
//!   kernel otherwise holds proxied answers to broadcasts for up to 0.8 s, which a
//!   container starting up would wait through).
//!
//! # Attaching
//! [`attach`] is an idempotent "ensure": a host end left by a crash is deleted first;
//! the veth pair is created with its peer placed directly into the container's
//! namespace (IFLA_NET_NS_FD) with its MAC and MTU; inside, over a netlink socket
//! opened in that namespace, the peer gets its address, comes up with `lo`, and gets
//! a default route via the gateway; the host end comes up with its sysctls, its /32
//! route in 6784 and its rule into 6783; then `/etc/netns/<name>/resolv.conf`. A step
//! that fails deletes the host end (which deletes the pair) and the rule, and the
//! error names the step and the link. [`detach`] removes the rule, the route, the
//! pair and the resolv.conf it wrote; anything already gone is fine.

use super::{Attachment, HostError};
use crate::sys::netlink::{Netlink, Route, Rule, Veth, RT_TABLE_MAIN};
use ipnet::{IpNet, Ipv4Net};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The table whose default route is the TUN link: what containers send.
pub const TO_TUN: u32 = 6783;
/// The table of per-container /32 routes: what tunloom writes back into the TUN.
pub const TO_CONTAINERS: u32 = 6784;
/// The priority of each host end's rule `iif <host_if> lookup 6783`.
pub const FROM_CONTAINER: u32 = 100;
/// The priority of each host end's rule `iif <host_if> blackhole`: what a container
/// sends from an address not its own, or while tunloom is down, goes nowhere.
pub const GUARD: u32 = 101;
/// The priority of the rule `iif <tun> lookup 6784`.
pub const FROM_TUN: u32 = 99;
/// What starts every resolv.conf tunloom writes, so it removes only its own.
const RESOLV_MARK: &str = "# written by tunloom";
/// Where `ip netns exec` finds a named namespace's own /etc files.
const NETNS_ETC: &str = "/etc/netns";

fn refused(op: impl Into<String>, link: &str) -> impl FnOnce(io::Error) -> HostError {
    let op = op.into();
    let link = link.to_string();
    move |source| HostError::Refused { op, link, source }
}

fn invalid(op: &str, link: &str, why: String) -> HostError {
    HostError::Refused {
        op: op.to_string(),
        link: link.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why),
    }
}

/// A link name the kernel takes and that is safe in a /proc path and in an nft rule:
/// 1 to 15 bytes of letters, digits, `_`, `-` and `.`, not `.` or `..`.
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Writes an IPv4 sysctl in the calling thread's network namespace
/// (`/proc/sys/net/ipv4/<key>`).
fn sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys/net/ipv4").join(key);
    std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

fn read_sysctl(key: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(key))?
        .trim()
        .to_string())
}

/// The sysctls a link of tunloom's (the TUN, a host end) needs.
fn link_sysctls(link: &str, proxy_arp: bool) -> io::Result<()> {
    sysctl(&format!("conf/{link}/rp_filter"), "0")?;
    if proxy_arp {
        sysctl(&format!("conf/{link}/proxy_arp"), "1")?;
        sysctl(&format!("neigh/{link}/proxy_delay"), "0")?;
    }
    Ok(())
}

fn host_route(a: &Attachment, host_index: u32) -> Route {
    Route::dev(
        IpNet::V4(Ipv4Net::new(a.address.addr(), 32).expect("/32 is a valid prefix")),
        TO_CONTAINERS,
        host_index,
    )
}

/// What a container sends from its own address enters the TUN.
fn host_rule(a: &Attachment) -> Rule<'_> {
    Rule {
        priority: FROM_CONTAINER,
        iif: &a.host_if,
        src: Some(a.address.addr()),
        table: TO_TUN,
    }
}

/// Anything else from the host end is dropped: a container cannot send from another
/// network's address (the pipeline sees only addresses, not the veth a packet came
/// from), and while tunloom is down (table 6783 empty) nothing from a container is
/// forwarded around the pipeline.
fn guard_rule(a: &Attachment) -> Rule<'_> {
    Rule {
        priority: GUARD,
        iif: &a.host_if,
        src: None,
        table: 0,
    }
}

/// The resolv.conf of the named namespace, when the attachment has a name and a
/// nameserver (a name that could leave `/etc/netns` is refused).
fn resolv_path(a: &Attachment) -> Result<Option<PathBuf>, HostError> {
    let (Some(name), Some(_)) = (&a.netns_name, a.nameserver) else {
        return Ok(None);
    };
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(invalid(
            "attach: naming the namespace's resolv.conf",
            &a.host_if,
            format!("{name:?} is not a namespace name"),
        ));
    }
    Ok(Some(Path::new(NETNS_ETC).join(name).join("resolv.conf")))
}

/// Sets up what every attachment relies on: `ip_forward`, the TUN's sysctls, table
/// 6783's default route into the TUN and rule 99. Idempotent. The TUN must be up
/// (the kernel routes only through links that are).
pub fn prepare(nl: &mut Netlink, tun: &str, tun_index: u32) -> Result<(), HostError> {
    if !valid_ifname(tun) {
        return Err(invalid(
            "prepare",
            tun,
            format!("{tun:?} is not a link name tunloom uses"),
        ));
    }
    sysctl("ip_forward", "1").map_err(refused("prepare: enabling net.ipv4.ip_forward", tun))?;
    link_sysctls(tun, false).map_err(refused("prepare: the TUN link's rp_filter", tun))?;
    if read_sysctl("conf/all/rp_filter").map_err(refused("prepare: reading conf/all/rp_filter", tun))? == "1" {
        sysctl("conf/all/rp_filter", "2").map_err(refused("prepare: lowering conf/all/rp_filter to loose", tun))?;
        log::warn!(
            "net.ipv4.conf.all.rp_filter was 1 (strict), which drops what tunloom writes back into {tun}; set to 2 (loose)"
        );
    }
    let default = IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is a valid prefix"));
    nl.replace_route(&Route::dev(default, TO_TUN, tun_index))
        .map_err(refused(
            format!("prepare: default route into the TUN in table {TO_TUN}"),
            tun,
        ))?;
    nl.add_rule(&Rule {
        priority: FROM_TUN,
        iif: tun,
        src: None,
        table: TO_CONTAINERS,
    })
    .map_err(refused(
        format!("prepare: rule {FROM_TUN} (iif {tun} lookup {TO_CONTAINERS})"),
        tun,
    ))
}

/// Removes what [`prepare`] made: rule 99 and the routes of table 6783. What belongs
/// to attachments stays — host ends, their rules 100, their /32 routes in 6784 and
/// resolv.conf files — because attachments are durable: a container stays attached
/// across a restart, and the next start's rule 99 makes it reachable again. Returns
/// what could not be removed, for the caller to log.
pub fn cleanup(nl: &mut Netlink, tun: &str) -> Vec<String> {
    let mut failed = Vec::new();
    let rule = Rule {
        priority: FROM_TUN,
        iif: tun,
        src: None,
        table: TO_CONTAINERS,
    };
    if let Err(e) = nl.del_rule(&rule) {
        failed.push(format!("rule {FROM_TUN} (iif {tun} lookup {TO_CONTAINERS}): {e}"));
    }
    match nl.routes_v4() {
        Ok(routes) => {
            for r in routes.iter().filter(|r| r.table == TO_TUN) {
                match nl.del_route(r) {
                    Err(e) if !crate::sys::netlink::is_absent(&e) => {
                        failed.push(format!("route {} in table {}: {e}", r.dst, r.table))
                    }
                    _ => {}
                }
            }
        }
        Err(e) => failed.push(format!("listing routes: {e}")),
    }
    failed
}

/// The first `ethN` not among `names`.
fn first_free_eth(names: &[(u32, String)]) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|c| !names.iter().any(|(_, n)| n == c))
        .expect("some ethN is free")
}

/// Creates (or re-creates) attachment `a`; see the module doc. `nl` is a socket in
/// tunloom's namespace.
pub fn attach(nl: &mut Netlink, a: &Attachment) -> Result<(), HostError> {
    let link = a.host_if.as_str();
    if !valid_ifname(link) {
        return Err(invalid("attach", link, format!("{link:?} is not a link name")));
    }
    if let Some(n) = &a.ifname {
        if !valid_ifname(n) {
            return Err(invalid("attach", link, format!("{n:?} is not a link name")));
        }
    }
    let resolv = resolv_path(a)?;
    let path = a.netns.display().to_string();
    let ns = File::open(&a.netns).map_err(refused(format!("attach: opening the network namespace {path}"), link))?;
    let mut inside =
        Netlink::open_in(&ns).map_err(refused(format!("attach: entering the network namespace {path}"), link))?;
    // A host end left from before (a crash mid-attach, a restart) goes first.
    nl.del_link(link)
        .map_err(refused("attach: deleting the old host end", link))?;
    let peer = match &a.ifname {
        Some(n) => n.clone(),
        None => first_free_eth(
            &inside
                .links()
                .map_err(refused(format!("attach: listing the links in {path}"), link))?,
        ),
    };
    nl.create_veth(&Veth {
        name: link,
        peer: &peer,
        mtu: a.mtu,
        peer_mac: a.mac,
        peer_netns: ns.as_fd(),
    })
    .map_err(refused(
        format!("attach: creating the veth pair (peer {peer} in {path})"),
        link,
    ))?;
    let configured = configure(nl, &mut inside, a, &peer, &path).and_then(|()| match &resolv {
        Some(p) => write_resolv(p, a).map_err(refused(format!("attach: writing {}", p.display()), link)),
        None => Ok(()),
    });
    if let Err(e) = configured {
        // Undo: the pair (its peer goes with it; the /32 route with the link) and the
        // rule; a resolv.conf is written last, so there is none of ours to remove.
        let _ = nl.del_rule(&host_rule(a));
        let _ = nl.del_rule(&guard_rule(a));
        if let Err(undo) = nl.del_link(link) {
            log::warn!("attach {link}: undoing, the host end could not be deleted: {undo}");
        }
        return Err(e);
    }
    Ok(())
}

/// Both ends' configuration, after the pair exists.
fn configure(nl: &mut Netlink, inside: &mut Netlink, a: &Attachment, peer: &str, path: &str) -> Result<(), HostError> {
    let link = a.host_if.as_str();
    let step = |what: &str| format!("attach: {what} ({peer} in {path})");
    let peer_index = inside
        .link_index(peer)
        .map_err(refused(step("finding the container end"), link))?
        .ok_or_else(|| refused(step("finding the container end"), link)(io::Error::from_raw_os_error(libc::ENODEV)))?;
    inside
        .set_link(peer_index, None, None)
        .map_err(refused(step("bringing the container end up"), link))?;
    inside
        .add_address(peer_index, &IpNet::V4(a.address))
        .map_err(refused(step(&format!("adding address {}", a.address)), link))?;
    if let Some(lo) = inside.link_index("lo").map_err(refused(step("finding lo"), link))? {
        inside
            .set_link(lo, None, None)
            .map_err(refused(step("bringing lo up"), link))?;
    }
    let default = Route {
        dst: IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is a valid prefix")),
        table: RT_TABLE_MAIN,
        oif: Some(peer_index),
        gateway: Some(IpAddr::V4(a.gateway)),
        unreachable: false,
    };
    // A container on several networks keeps the default route it has (the first
    // network's, as Docker does); and a namespace never loses one it had.
    inside
        .add_route_if_none(&default)
        .map_err(refused(step(&format!("default route via {}", a.gateway)), link))?;

    let host_index = nl
        .link_index(link)
        .map_err(refused("attach: finding the host end", link))?
        .ok_or_else(|| refused("attach: finding the host end", link)(io::Error::from_raw_os_error(libc::ENODEV)))?;
    nl.set_link(host_index, None, None)
        .map_err(refused("attach: bringing the host end up", link))?;
    link_sysctls(link, true).map_err(refused("attach: the host end's proxy_arp and rp_filter", link))?;
    nl.replace_route(&host_route(a, host_index)).map_err(refused(
        format!("attach: route {}/32 in table {TO_CONTAINERS}", a.address.addr()),
        link,
    ))?;
    nl.add_rule(&guard_rule(a))
        .map_err(refused(format!("attach: rule {GUARD} (iif {link} blackhole)"), link))?;
    nl.add_rule(&host_rule(a)).map_err(refused(
        format!(
            "attach: rule {FROM_CONTAINER} (iif {link} from {} lookup {TO_TUN})",
            a.address.addr()
        ),
        link,
    ))
}

fn write_resolv(path: &Path, a: &Attachment) -> io::Result<()> {
    let Some(ns) = a.nameserver else {
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{RESOLV_MARK} for {}\nnameserver {ns}\n", a.host_if))
}

/// Removes attachment `a`; see the module doc. Whatever is already gone is fine.
pub fn detach(nl: &mut Netlink, a: &Attachment) -> Result<(), HostError> {
    let link = a.host_if.as_str();
    if !valid_ifname(link) {
        return Err(invalid("detach", link, format!("{link:?} is not a link name")));
    }
    // A stray host end's address is not known: its rule 100 is found by link name.
    let rule = if a.address.addr().is_unspecified() {
        nl.rules_of(link, FROM_CONTAINER)
            .map_err(refused("detach: listing its rules", link))?
    } else {
        vec![a.address.addr()]
    };
    for src in rule {
        let r = Rule {
            src: Some(src),
            ..host_rule(a)
        };
        nl.del_rule(&r).map_err(refused(
            format!("detach: rule {FROM_CONTAINER} (iif {link} from {src} lookup {TO_TUN})"),
            link,
        ))?;
    }
    nl.del_rule(&guard_rule(a))
        .map_err(refused(format!("detach: rule {GUARD} (iif {link} blackhole)"), link))?;
    // The /32 route is this link's only while the link exists (the address may have
    // moved to another attachment since): deleted by link, and with it.
    if let Some(index) = nl
        .link_index(link)
        .map_err(refused("detach: finding the host end", link))?
    {
        match nl.del_route(&host_route(a, index)) {
            Err(e) if !crate::sys::netlink::is_absent(&e) => {
                return Err(refused(
                    format!("detach: route {}/32 in table {TO_CONTAINERS}", a.address.addr()),
                    link,
                )(e))
            }
            _ => {}
        }
        nl.del_link(link)
            .map_err(refused("detach: deleting the veth pair", link))?;
    }
    if let Some(path) = resolv_path(a)? {
        remove_resolv(&path).map_err(refused(format!("detach: removing {}", path.display()), link))?;
    }
    Ok(())
}

/// Removes a resolv.conf tunloom wrote (not one it did not), and its directory when
/// that is left empty.
fn remove_resolv(path: &Path) -> io::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.starts_with(RESOLV_MARK) => std::fs::remove_file(path)?,
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        // Fails when something else lives there; that is theirs.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_that_reach_proc_paths_and_nft_rules_are_checked() {
        for good in ["tl0", "tlc0123456789", "eth0", "a.b-c_d"] {
            assert!(valid_ifname(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "tl\"0", "0123456789abcdef"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn eth_names_skip_those_taken() {
        let taken = |n: &[&str]| n.iter().map(|s| (1, s.to_string())).collect::<Vec<_>>();
        assert_eq!(first_free_eth(&taken(&["lo"])), "eth0");
        assert_eq!(first_free_eth(&taken(&["lo", "eth0", "eth2"])), "eth1");
    }

    #[test]
    fn resolv_conf_only_for_named_namespaces_with_a_nameserver() {
        let mut a = Attachment {
            netns: "/run/netns/c1".into(),
            netns_name: Some("c1".into()),
            host_if: "tlc0000000001".into(),
            ifname: None,
            address: "198.19.1.5/24".parse().unwrap(),
            gateway: "198.19.1.1".parse().unwrap(),
            mac: [2, 0, 0, 0, 0, 1],
            nameserver: Some("198.19.1.1".parse().unwrap()),
            mtu: 1400,
        };
        assert_eq!(
            resolv_path(&a).unwrap(),
            Some(PathBuf::from("/etc/netns/c1/resolv.conf"))
        );
        a.netns_name = Some("../etc".into());
        assert!(resolv_path(&a)
            .unwrap_err()
            .to_string()
            .contains("not a namespace name"));
        a.netns_name = Some("c1".into());
        a.nameserver = None;
        assert_eq!(resolv_path(&a).unwrap(), None);
    }
}
