//! Egress masquerade: what a network's containers send out of the host, through
//! anything but the TUN link, leaves with the host's address. This module may touch
//! one nftables table, `ip tunloom`, and nothing else:
//!
//! ```text
//! table ip tunloom {
//!     set egress { type ipv4_addr; flags interval; }        # one element per network
//!     chain prerouting {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname "tlc*" notrack
//!         iifname "<tun>" ip daddr @egress notrack
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @egress oifname != "<tun>" masquerade
//!     }
//! }
//! ```
//!
//! Why the `notrack` rules: every packet a container sends crosses the host twice —
//! from its veth into the TUN, then from the TUN (written back by tunloom) out of the
//! uplink. NAT is decided on a connection's first packet, so if the first crossing
//! (out to the TUN, not masqueraded) were tracked, the second would belong to the
//! same connection and never be masqueraded. The crossing into the TUN and the
//! last one, from the TUN to a container, are therefore not tracked; the crossing
//! out of the uplink is, and its replies are translated back.
//!
//! It is the one place the daemon runs a program: `nft` from Debian's `nftables`
//! package (`scripts/setup` installs it). nftables over raw netlink is a large binary
//! protocol (expressions, sets, batches, generation ids) that `nft` already speaks
//! correctly; tunloom hands it a short script on stdin instead. Each script runs as
//! one nft transaction, so the table is never seen half made, and each `nft` run is
//! bounded in time ([`NFT_LIMIT`]).
//!
//! - [`add`] ensures the table, set, chain and its one rule (created on the first
//!   add; the chain is flushed and its rule written again in the same transaction,
//!   so a table left by a crash is repaired without losing its elements), then adds
//!   the network's element. Adding an element already there is fine.
//! - [`del`] removes the element; a missing element, set or table is fine.
//! - [`remove_table`] deletes the whole table (at exit).
//!
//! `nft` runs in the calling thread's network namespace (a child inherits it).

use super::HostError;
use ipnet::Ipv4Net;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one `nft` run may take before it is killed and the op fails.
pub const NFT_LIMIT: Duration = Duration::from_secs(10);

/// The nftables table tunloom owns.
pub const TABLE: &str = "tunloom";

/// Runs `nft -f -` with `script`; its stderr on failure.
fn nft(script: &str) -> io::Result<()> {
    let spawn = |prog: &str| {
        Command::new(prog)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    };
    // A PATH without the sbin directories (a plain user's) still finds Debian's nft.
    let mut child = match spawn("nft") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => spawn("/usr/sbin/nft"),
        other => other,
    }
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run nft (Debian package nftables; scripts/setup installs it): {e}"),
        )
    })?;
    let written = child
        .stdin
        .take()
        .map_or(Ok(()), |mut stdin| stdin.write_all(script.as_bytes()));
    let deadline = Instant::now() + NFT_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nft did not finish in {NFT_LIMIT:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if status.success() {
        return written;
    }
    Err(io::Error::other(format!(
        "nft failed ({status}): {}",
        err.lines().next().unwrap_or("").trim()
    )))
}

/// The script that ensures the table and masquerades `net`.
fn add_script(tun: &str, net: Ipv4Net) -> String {
    format!(
        "add table ip {TABLE}\n\
         add set ip {TABLE} egress {{ type ipv4_addr; flags interval; }}\n\
         add chain ip {TABLE} prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n\
         flush chain ip {TABLE} prerouting\n\
         add rule ip {TABLE} prerouting iifname \"tlc*\" notrack\n\
         add rule ip {TABLE} prerouting iifname \"{tun}\" ip daddr @egress notrack\n\
         add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain ip {TABLE} postrouting\n\
         add rule ip {TABLE} postrouting ip saddr @egress oifname != \"{tun}\" masquerade\n\
         add element ip {TABLE} egress {{ {} }}\n",
        net.trunc()
    )
}

/// The script that stops masquerading `net`: adding the element first makes the
/// delete succeed whether or not it was there, in one transaction.
fn del_script(net: Ipv4Net) -> String {
    let net = net.trunc();
    format!(
        "add element ip {TABLE} egress {{ {net} }}\n\
         delete element ip {TABLE} egress {{ {net} }}\n"
    )
}

/// Whether table `ip tunloom` exists.
fn table_exists() -> io::Result<bool> {
    // `list table` on a missing table fails; anything else wrong fails the same
    // way, so an `nft` that cannot run at all is told apart first.
    match nft(&format!("list table ip {TABLE}\n")) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::TimedOut => Err(e),
        Err(_) => Ok(false),
    }
}

/// Masquerades what `net` sends out of anything but `tun` (the TUN link's name,
/// checked by the caller to be a plain link name).
pub fn add(tun: &str, net: Ipv4Net) -> Result<(), HostError> {
    nft(&add_script(tun, net)).map_err(|source| HostError::Refused {
        op: format!("masquerading {} (nft table ip {TABLE})", net.trunc()),
        link: tun.to_string(),
        source,
    })
}

/// Stops masquerading `net`; nothing to stop is fine.
pub fn del(tun: &str, net: Ipv4Net) -> Result<(), HostError> {
    let err = |source| HostError::Refused {
        op: format!("ending the masquerade of {} (nft table ip {TABLE})", net.trunc()),
        link: tun.to_string(),
        source,
    };
    if !table_exists().map_err(err)? {
        return Ok(());
    }
    nft(&del_script(net)).map_err(err)
}

/// Deletes table `ip tunloom`, if it is there.
pub fn remove_table() -> io::Result<()> {
    if table_exists()? {
        nft(&format!("delete table ip {TABLE}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_only_tunlooms_table() {
        let net: Ipv4Net = "198.19.1.7/24".parse().unwrap();
        let add = add_script("tl0", net);
        assert!(add.contains("add element ip tunloom egress { 198.19.1.0/24 }"), "{add}");
        assert!(add.contains("ip saddr @egress oifname != \"tl0\" masquerade"), "{add}");
        for line in add.lines().chain(del_script(net).lines()) {
            assert!(line.contains(" ip tunloom"), "{line}");
        }
    }
}
