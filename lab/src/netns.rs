//! Network namespaces for `tunloom lab` and the integration tests: created by name,
//! used through `ip netns exec`, and deleted by name when their guard drops, also on
//! failure and on panic. Nothing here touches the root namespace's devices, addresses
//! or routes: veth pairs are created inside a namespace with their peer end placed
//! directly into the other one.

pub use nix::sys::signal::Signal;
use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Moves the calling thread into the network namespace `name` (as created by
/// `ip netns add`). Sockets the thread creates afterwards live in that namespace.
pub fn enter(name: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Sends `signal` to process `pid` (one this process started).
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(io::Error::from)
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|i| set.is_set(*i).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Runs `ip` with `args` and fails with its stderr when it fails.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run ip (iproute2): {e}")))?;
    check("ip", args, out).map(drop)
}

fn check(prog: &str, args: &[&str], out: Output) -> io::Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A network namespace that is deleted when this value drops.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up. An old namespace of the same
    /// name (from a run that was killed) is deleted first.
    pub fn create(name: &str) -> io::Result<Netns> {
        if std::path::Path::new("/run/netns").join(name).exists() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args…`
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `prog args…` inside the namespace.
    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `prog args…` inside the namespace to completion, failing on a non-zero
    /// exit, with a time limit.
    pub fn run(&self, prog: &str, args: &[&str], limit: Duration) -> io::Result<Output> {
        let child = self
            .command(prog, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {prog}: {e}")))?;
        let out = wait_limited(child, limit)?;
        check(prog, args, out)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete network namespace {}: {e}", self.name);
        }
        remove_tunloom_etc(&self.name);
    }
}

/// Removes the `resolv.conf` tunloom wrote for namespace `name` under
/// `/etc/netns/<name>/` (an attachment whose daemon never detached it: killed, or
/// still holding it at exit) and the directory if nothing else is in it. A file
/// tunloom did not write is left alone.
pub fn remove_tunloom_etc(name: &str) {
    let dir = std::path::Path::new("/etc/netns").join(name);
    let resolv = dir.join("resolv.conf");
    if std::fs::read_to_string(&resolv).is_ok_and(|t| t.starts_with(TUNLOOM_MARK)) {
        let _ = std::fs::remove_file(&resolv);
    }
    // Only succeeds when empty.
    let _ = std::fs::remove_dir(&dir);
}

/// What starts every file tunloom writes under `/etc/netns/` (`host::attach`).
const TUNLOOM_MARK: &str = "# written by tunloom";

/// Waits for `child` at most `limit`, killing it (by its pid) when time runs out.
pub fn wait_limited(mut child: Child, limit: Duration) -> io::Result<Output> {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects two namespaces with a veth pair (`a_if` in `a`, `b_if` in `b`), gives
/// each end its address and brings both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) -> io::Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", a_addr, "dev", a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Puts namespace `inner` behind `outer`, as a workload behind its host: a veth pair
/// (`outer_addr` and `inner_addr` in CIDR form), `inner`'s default route through
/// `outer`, and `outer` forwarding IPv4.
pub fn behind(
    outer: &Netns,
    outer_if: &str,
    outer_addr: &str,
    inner: &Netns,
    inner_if: &str,
    inner_addr: &str,
) -> io::Result<()> {
    veth(outer, outer_if, outer_addr, inner, inner_if, inner_addr)?;
    let via = outer_addr.split('/').next().unwrap_or(outer_addr);
    inner.ip(&["route", "add", "default", "via", via])?;
    outer.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"], Duration::from_secs(5))?;
    Ok(())
}

/// Does this process have what namespace tests and the lab need?
pub fn available() -> Result<(), String> {
    // Root and a working `ip netns`.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2).unwrap_or("1").to_string())
        })
        .unwrap_or_else(|| "1".into());
    if uid != "0" {
        return Err("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("needs iproute2 (`ip`)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("needs /dev/net/tun".into());
    }
    Ok(())
}
