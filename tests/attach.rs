//! `LinkHost` on a real kernel: a "host" namespace with a TUN link `tl0` and a
//! "container" namespace; tunloom's host code runs on a thread inside the host
//! namespace and attaches the container (veth pair, addresses, routes, rules,
//! sysctls, resolv.conf), detaches it, masquerades a network with nft and cleans up.
//! Everything is checked with `ip`, `nft` and `/proc` inside the namespaces. Needs
//! root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1). Never touches the root
//! namespace; overlay addresses are from 198.19.0.0/16.

mod common;

use common::Needs;
use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tunloom::host::{Attachment, HostOp, Kernel, LinkHost};
use tunloom_lab::netns::Netns;

const LIMIT: Duration = Duration::from_secs(10);
const HOST_IF: &str = "tlc00000000a1";

/// What `prog args…` prints inside `ns` (it must succeed).
fn out(ns: &Netns, prog: &str, args: &[&str]) -> String {
    let o = ns
        .run(prog, args, LIMIT)
        .unwrap_or_else(|e| panic!("{prog} {args:?} in {}: {e}", ns.name));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether `prog args…` succeeds inside `ns`.
fn ok(ns: &Netns, prog: &str, args: &[&str]) -> bool {
    ns.run(prog, args, LIMIT).is_ok()
}

/// A /proc/sys/net/ipv4 value as seen inside `ns`.
fn sysctl(ns: &Netns, key: &str) -> String {
    out(ns, "cat", &[&format!("/proc/sys/net/ipv4/{key}")])
        .trim()
        .to_string()
}

/// Lines of `text` with whitespace runs folded to one space.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn has_line(text: &str, want: &str) -> bool {
    lines(text).iter().any(|l| l.contains(want))
}

/// A second handle on `ns` for a thread: only names it (the guard that created it
/// deletes it; this one must not).
fn handle(ns: &Netns) -> ManuallyDrop<Netns> {
    ManuallyDrop::new(Netns { name: ns.name.clone() })
}

/// A host namespace with an up TUN link `tl0`, and a container namespace.
fn namespaces(tag: &str) -> (Netns, Netns) {
    let pid = std::process::id();
    let host = Netns::create(&format!("tlat-h{pid}{tag}")).unwrap();
    let ctr = Netns::create(&format!("tlat-c{pid}{tag}")).unwrap();
    host.ip(&["tuntap", "add", "tl0", "mode", "tun"]).unwrap();
    host.ip(&["link", "set", "tl0", "up"]).unwrap();
    (host, ctr)
}

fn attachment(ctr: &Netns) -> Attachment {
    Attachment {
        netns: PathBuf::from("/run/netns").join(&ctr.name),
        netns_name: Some(ctr.name.clone()),
        host_if: HOST_IF.into(),
        ifname: None,
        address: "198.19.1.5/24".parse().unwrap(),
        gateway: "198.19.1.1".parse().unwrap(),
        mac: [0x02, 0x42, 0xc6, 0x13, 0x01, 0x05],
        nameserver: Some("198.19.1.1".parse().unwrap()),
        mtu: 1410,
    }
}

/// A `LinkHost` for `tl0`, made on (and so with its netlink socket in) the calling
/// thread's namespace.
fn link_host() -> LinkHost {
    let index = tunloom::sys::if_index("tl0").expect("tl0 exists in the host namespace");
    LinkHost::new("tl0".into(), index)
}

fn attach_configures_both_ends_and_detach_removes_everything() {
    let (host, ctr) = namespaces("a");
    // lo down first, so attaching must bring it up.
    ctr.ip(&["link", "set", "lo", "down"]).unwrap();
    let a = attachment(&ctr);
    let resolv = PathBuf::from("/etc/netns").join(&ctr.name).join("resolv.conf");
    let hn = host.name.clone();
    let (host2, ctr2) = (handle(&host), handle(&ctr));
    let checks = move || {
        let (host, ctr) = (&host2, &ctr2);
        let h = link_host();
        h.prepare().unwrap();
        h.prepare().expect("prepare is idempotent");
        h.apply(&HostOp::AddRoute("198.19.1.0/24".parse().unwrap())).unwrap();
        h.apply(&HostOp::AddRoute("198.19.1.0/24".parse().unwrap()))
            .expect("adding a route twice is fine");
        h.apply(&HostOp::Attach(Box::new(a.clone()))).unwrap();

        // The container end: eth0 with the MAC, MTU and address, up; lo up; the
        // default route via the gateway.
        let eth0 = out(ctr, "ip", &["addr", "show", "dev", "eth0"]);
        assert!(eth0.contains("link/ether 02:42:c6:13:01:05"), "{eth0}");
        assert!(eth0.contains("mtu 1410"), "{eth0}");
        assert!(eth0.contains("inet 198.19.1.5/24"), "{eth0}");
        assert!(eth0.contains(",UP,") || eth0.contains(",UP>"), "{eth0}");
        let lo = out(ctr, "ip", &["link", "show", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
        let routes = out(ctr, "ip", &["route", "show", "default"]);
        assert!(has_line(&routes, "default via 198.19.1.1 dev eth0"), "{routes}");

        // The host end: up, MTU, sysctls; tunloom's tables and rules.
        let end = out(host, "ip", &["link", "show", HOST_IF]);
        assert!(end.contains("mtu 1410") && end.contains(",UP"), "{end}");
        assert_eq!(sysctl(host, &format!("conf/{HOST_IF}/proxy_arp")), "1");
        assert_eq!(sysctl(host, &format!("conf/{HOST_IF}/rp_filter")), "0");
        assert_eq!(sysctl(host, &format!("neigh/{HOST_IF}/proxy_delay")), "0");
        assert_eq!(sysctl(host, "conf/tl0/rp_filter"), "0");
        assert_eq!(sysctl(host, "ip_forward"), "1");
        assert_ne!(sysctl(host, "conf/all/rp_filter"), "1", "never strict");
        let rules = out(host, "ip", &["rule", "show"]);
        assert!(has_line(&rules, "99: from all iif tl0 lookup 6784"), "{rules}");
        assert!(
            has_line(&rules, &format!("100: from 198.19.1.5 iif {HOST_IF} lookup 6783")),
            "{rules}"
        );
        assert!(
            has_line(&rules, &format!("101: from all iif {HOST_IF} blackhole")),
            "{rules}"
        );
        let t6783 = out(host, "ip", &["route", "show", "table", "6783"]);
        assert!(has_line(&t6783, "default dev tl0"), "{t6783}");
        let t6784 = out(host, "ip", &["route", "show", "table", "6784"]);
        assert!(has_line(&t6784, &format!("198.19.1.5 dev {HOST_IF}")), "{t6784}");
        let main = out(host, "ip", &["route", "show", "198.19.1.0/24"]);
        assert!(has_line(&main, "198.19.1.0/24 dev tl0"), "{main}");
        // The routing decisions the tables exist for.
        let from_ctr = out(
            host,
            "ip",
            &["route", "get", "198.19.2.9", "from", "198.19.1.5", "iif", HOST_IF],
        );
        assert!(
            from_ctr.contains("dev tl0"),
            "a container's packet enters the TUN: {from_ctr}"
        );
        let to_ctr = out(
            host,
            "ip",
            &["route", "get", "198.19.1.5", "from", "198.19.2.9", "iif", "tl0"],
        );
        assert!(
            to_ctr.contains(&format!("dev {HOST_IF}")),
            "the TUN's packet reaches the container: {to_ctr}"
        );
        assert_eq!(h.host_links().unwrap(), vec![HOST_IF.to_string()]);

        // The container's ARP for its gateway is answered by the host end.
        let mac = end
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap()
            .to_string();
        let _ = ctr.run("ping", &["-c", "1", "-W", "1", "198.19.1.1"], LIMIT);
        let deadline = Instant::now() + Duration::from_secs(3);
        let neigh = loop {
            let n = out(ctr, "ip", &["neigh", "show", "198.19.1.1"]);
            if n.contains(&mac) || Instant::now() >= deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(neigh.contains(&mac), "proxy ARP answers with {mac}: {neigh}");

        let text = std::fs::read_to_string(&resolv).unwrap();
        assert!(lines(&text).contains(&"nameserver 198.19.1.1".to_string()), "{text}");

        // Attaching again re-creates: still one pair, one rule, one route.
        h.apply(&HostOp::Attach(Box::new(a.clone()))).unwrap();
        let veths = out(host, "ip", &["-o", "link", "show", "type", "veth"]);
        assert_eq!(veths.lines().count(), 1, "{veths}");
        let inside = out(ctr, "ip", &["-o", "link", "show"]);
        assert_eq!(inside.lines().filter(|l| l.contains("eth")).count(), 1, "{inside}");
        assert!(inside.contains("eth0"), "{inside}");
        let rules = out(host, "ip", &["rule", "show"]);
        assert_eq!(
            lines(&rules).iter().filter(|l| l.contains("lookup 6783")).count(),
            1,
            "{rules}"
        );
        let t6784 = out(host, "ip", &["route", "show", "table", "6784"]);
        assert_eq!(t6784.lines().filter(|l| l.contains(" dev ")).count(), 1, "{t6784}");
        // The network's route into the TUN brought its `unreachable` in 6784.
        assert!(has_line(&t6784, "unreachable 198.19.1.0/24 proto static"), "{t6784}");

        // Detach removes everything; again is fine.
        h.apply(&HostOp::Detach(Box::new(a.clone()))).unwrap();
        assert!(!ok(host, "ip", &["link", "show", HOST_IF]));
        assert!(!ok(ctr, "ip", &["link", "show", "eth0"]));
        let rules = out(host, "ip", &["rule", "show"]);
        assert!(!rules.contains(HOST_IF), "{rules}");
        assert!(!out(host, "ip", &["route", "show", "table", "6784"]).contains(HOST_IF));
        assert!(!resolv.exists());
        assert!(!resolv.parent().unwrap().exists(), "the empty directory goes too");
        h.apply(&HostOp::Detach(Box::new(a.clone())))
            .expect("detaching twice is fine");
        assert!(h.host_links().unwrap().is_empty());

        // Routes in main: removed, and removing again is fine.
        h.apply(&HostOp::DelRoute("198.19.1.0/24".parse().unwrap())).unwrap();
        h.apply(&HostOp::DelRoute("198.19.1.0/24".parse().unwrap()))
            .expect("removing a missing route is fine");
        assert!(out(host, "ip", &["route", "show", "198.19.1.0/24"]).trim().is_empty());
        assert!(out(host, "ip", &["route", "show", "table", "6784"]).trim().is_empty());

        h.cleanup();
        let rules = out(host, "ip", &["rule", "show"]);
        assert!(!rules.contains("6784"), "{rules}");
        assert!(out(host, "ip", &["route", "show", "table", "6783"]).trim().is_empty());
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| common::in_ns(&hn, checks)));
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ctr.name));
    drop((host, ctr));
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn attaching_fails_clearly_and_leaves_nothing() {
    let (host, ctr) = namespaces("b");
    let mut missing = attachment(&ctr);
    missing.netns = PathBuf::from("/run/netns/tlat-no-such-namespace");
    missing.netns_name = None;
    // A peer name already taken inside the container: the veth cannot be made.
    ctr.ip(&["link", "add", "eth7", "type", "veth", "peer", "name", "eth8"])
        .unwrap();
    let mut taken = attachment(&ctr);
    taken.ifname = Some("eth7".into());
    taken.netns_name = None;
    let mut named = attachment(&ctr);
    named.netns_name = None;
    let hn = host.name.clone();
    let (host2, ctr2) = (handle(&host), handle(&ctr));
    let checks = move || {
        let h = link_host();
        h.prepare().unwrap();
        let e = h.apply(&HostOp::Attach(Box::new(missing))).unwrap_err().to_string();
        eprintln!("refused as it should be: {e}");
        assert!(e.contains("/run/netns/tlat-no-such-namespace"), "{e}");
        assert!(e.contains(HOST_IF), "{e}");
        let e = h.apply(&HostOp::Attach(Box::new(taken))).unwrap_err().to_string();
        eprintln!("refused as it should be: {e}");
        assert!(e.contains("creating the veth pair") && e.contains("eth7"), "{e}");
        assert!(!ok(&host2, "ip", &["link", "show", HOST_IF]), "nothing is left behind");
        let rules = out(&host2, "ip", &["rule", "show"]);
        assert!(!rules.contains(HOST_IF), "{rules}");
        // The name asked for is the name given.
        named.ifname = Some("eth9".into());
        h.apply(&HostOp::Attach(Box::new(named.clone()))).unwrap();
        let eth9 = out(&ctr2, "ip", &["addr", "show", "dev", "eth9"]);
        assert!(eth9.contains("inet 198.19.1.5/24"), "{eth9}");
        h.apply(&HostOp::Detach(Box::new(named))).unwrap();
        assert!(!ok(&ctr2, "ip", &["link", "show", "eth9"]));
        h.cleanup();
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| common::in_ns(&hn, checks)));
    drop((host, ctr));
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn egress_masquerade_with_nft() {
    let (host, ctr) = namespaces("c");
    let hn = host.name.clone();
    let host2 = handle(&host);
    let checks = move || {
        let host = &host2;
        // Strict reverse-path filtering everywhere would drop what tunloom writes
        // back into the TUN: prepare lowers it to loose.
        out(host, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter"]);
        let h = link_host();
        h.prepare().unwrap();
        assert_eq!(sysctl(host, "conf/all/rp_filter"), "2");
        let net = "198.19.3.0/24".parse().unwrap();
        h.apply(&HostOp::DelEgress(net))
            .expect("no table yet: nothing to remove is fine");
        assert!(!ok(host, "nft", &["list", "table", "ip", "tunloom"]), "created lazily");
        h.apply(&HostOp::AddEgress(net)).unwrap();
        h.apply(&HostOp::AddEgress(net)).expect("adding twice is fine");
        h.apply(&HostOp::AddEgress("198.19.4.0/24".parse().unwrap())).unwrap();
        let t = out(host, "nft", &["list", "table", "ip", "tunloom"]);
        assert!(t.contains("198.19.3.0/24") && t.contains("198.19.4.0/24"), "{t}");
        assert!(t.contains("ip saddr @egress oifname != \"tl0\" masquerade"), "{t}");
        assert_eq!(t.matches("masquerade").count(), 1, "one rule: {t}");
        h.apply(&HostOp::DelEgress(net)).unwrap();
        h.apply(&HostOp::DelEgress(net)).expect("removing twice is fine");
        let t = out(host, "nft", &["list", "table", "ip", "tunloom"]);
        assert!(!t.contains("198.19.3.0/24") && t.contains("198.19.4.0/24"), "{t}");
        h.cleanup();
        assert!(
            !ok(host, "nft", &["list", "table", "ip", "tunloom"]),
            "cleanup deletes the table"
        );
        let rules = out(host, "ip", &["rule", "show"]);
        assert!(!rules.contains("lookup 6784"), "{rules}");
        h.cleanup();
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| common::in_ns(&hn, checks)));
    drop((host, ctr));
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "attach_configures_both_ends_and_detach_removes_everything",
            Needs::NetnsWith(&["ping"]),
            attach_configures_both_ends_and_detach_removes_everything,
        ),
        (
            "attaching_fails_clearly_and_leaves_nothing",
            Needs::Netns,
            attaching_fails_clearly_and_leaves_nothing,
        ),
        (
            "egress_masquerade_with_nft",
            Needs::NetnsWith(&["nft"]),
            egress_masquerade_with_nft,
        ),
    ])
}
