//! Two tunloom hosts in network namespaces, joined by a veth pair: what `tunloom lab`
//! measures and what the integration tests drive.
//!
//! ```text
//!  ns tl-<tag>-<pid>-a                              ns tl-<tag>-<pid>-b
//!  tunloom "a": tl0 198.19.1.1, announces           tunloom "b": tl0 198.19.2.1, announces
//!  198.19.1.0/24, routes 198.19.0.0/17 ──VXLAN──▶   198.19.2.0/24, routes 198.19.0.0/17
//!                       tlva 198.18.0.1/24 ═══veth═══ tlvb 198.18.0.2/24
//! ```
//!
//! Everything is removed by name or pid when the value drops (daemons first, then the
//! namespaces, which takes every device in them), also when a test panics.

use crate::netns::{self, Netns};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Overlay addresses of hosts a and b (on their TUN devices).
pub const OVERLAY: [&str; 2] = ["198.19.1.1", "198.19.2.1"];
/// Underlay addresses of hosts a and b (on the veth).
pub const UNDERLAY: [&str; 2] = ["198.18.0.1", "198.18.0.2"];
const PREFIX: [&str; 2] = ["198.19.1.0/24", "198.19.2.0/24"];
/// IPAM blocks of hosts a and b (the range is 198.19.0.0/16, its gateway 198.19.0.1).
pub const BLOCK: [&str; 2] = ["198.19.64.0/19", "198.19.96.0/19"];
/// Gateway addresses of hosts a and b, with [`HostSpec::gateways`].
pub const GATEWAY: [&str; 2] = ["198.19.1.254", "198.19.2.254"];
const NAMES: [&str; 2] = ["a", "b"];

/// How the two daemons are configured.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub workers: usize,
    /// CPUs of host a's and host b's workers (empty: all).
    pub cpus: [Vec<usize>; 2],
    /// Serve gateway address 198.19.<host>.254 on each host's service thread.
    pub gateways: bool,
    /// List the other host as a static peer (else they meet through `POST /connect`).
    pub static_peers: bool,
    /// Expose 198.19.<host>.1 on each host's TUN by configuration.
    pub expose: bool,
    pub offload: bool,
    pub hello_interval_ms: u64,
    /// The cluster secret both hosts sign their control messages with.
    pub secret: Option<String>,
    /// Keys added to both configurations' `[control]` section.
    pub control: String,
    /// Keys added to both configurations' `[dataplane]` section (`key = value` lines).
    pub dataplane: String,
    /// TOML appended to both configurations.
    pub extra: String,
    /// `ipam.range` of both (the blocks stay [`BLOCK`]); "198.19.0.0/16" by default.
    pub ipam_range: String,
    /// A command host a's and host b's daemon run under (e.g. `setpriv` with fewer
    /// capabilities); empty: none.
    pub wrappers: [Vec<String>; 2],
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec {
            workers: 0,
            cpus: [Vec::new(), Vec::new()],
            gateways: false,
            static_peers: true,
            expose: true,
            offload: true,
            hello_interval_ms: 200,
            secret: None,
            control: String::new(),
            dataplane: String::new(),
            extra: String::new(),
            ipam_range: "198.19.0.0/16".into(),
            wrappers: [Vec::new(), Vec::new()],
        }
    }
}

/// A process this testbed started; stopped by its pid when dropped.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn new(child: Child, what: impl Into<String>) -> Proc {
        Proc {
            child,
            what: what.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `limit` for it to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = netns::signal(self.child.id(), netns::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        log::warn!("{} did not stop in {grace:?}; killed", self.what);
    }

    /// SIGKILL at once: a crash, as far as peers can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> io::Result<TempDir> {
        let p = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The two hosts.
pub struct TwoHosts {
    // Field order is drop order: daemons stop before their namespaces go.
    daemons: [Option<Proc>; 2],
    pub a: Netns,
    pub b: Netns,
    pub dir: TempDir,
    exe: PathBuf,
    wrappers: [Vec<String>; 2],
    stop: Arc<AtomicBool>,
}

/// The configuration file of host `i` (0 = a, 1 = b) for `spec`.
pub fn host_config(i: usize, spec: &HostSpec) -> String {
    format!(
        r#"# written by the tunloom testbed
[node]
name = "tb-{name}"
[dataplane]
workers = {workers}
cpus = {cpus:?}
bind = "{underlay}"
offload = {off}
udp_gso = {off}
udp_gro = {off}
{dataplane}
[overlay]
routes = ["198.19.0.0/17"]
announce = ["{prefix}"]
expose = {expose}
gateways = {gateways}
[ipam]
range = "{range}"
blocks = ["{block}"]
[control]
hello_interval_ms = {hello}
{control}
{secret}
{peers}
{extra}
"#,
        name = NAMES[i],
        workers = spec.workers,
        cpus = spec.cpus[i],
        underlay = UNDERLAY[i],
        off = spec.offload,
        prefix = PREFIX[i],
        gateways = if spec.gateways {
            format!("[\"{}\"]", GATEWAY[i])
        } else {
            "[]".into()
        },
        hello = spec.hello_interval_ms,
        control = spec.control,
        dataplane = spec.dataplane,
        secret = spec
            .secret
            .as_ref()
            .map_or(String::new(), |s| format!("secret = {s:?}")),
        block = BLOCK[i],
        range = spec.ipam_range,
        peers = if spec.static_peers {
            format!("[[peers]]\naddress = \"{}\"", UNDERLAY[1 - i])
        } else {
            String::new()
        },
        expose = if spec.expose {
            format!("[\"{}/32\"]", OVERLAY[i])
        } else {
            "[]".into()
        },
        extra = spec.extra,
    )
}

/// A request to the Weave API (127.0.0.1:6784) in namespace `ns`, the body sent as a
/// form; status and body text.
pub fn weave_request(ns: &str, method: &str, path: &str, form: Option<&str>) -> io::Result<(u16, String)> {
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) = api_request(ns, 6784, method, path, form.map(|f| f.as_bytes().to_vec()), &headers)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Starts `tunloom run -c <config> --state-dir <state>` in `ns`, its log appended
/// to `log`.
pub fn spawn_daemon(ns: &Netns, exe: &Path, config: &Path, state: &Path, log: &Path) -> io::Result<Proc> {
    spawn_daemon_under(ns, &[], exe, config, state, log)
}

/// [`spawn_daemon`], the daemon run by `wrapper` (a command and its arguments,
/// followed by the daemon's) when it is not empty.
pub fn spawn_daemon_under(
    ns: &Netns,
    wrapper: &[String],
    exe: &Path,
    config: &Path,
    state: &Path,
    log: &Path,
) -> io::Result<Proc> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let exe = exe.to_str().unwrap_or("tunloom");
    let mut argv: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    argv.extend([
        exe,
        "run",
        "-c",
        config.to_str().unwrap_or_default(),
        "--state-dir",
        state.to_str().unwrap_or_default(),
    ]);
    credentials(&ns.name, exe, state);
    let child = ns
        .command(argv[0], &argv[1..])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {exe}: {e}")))?;
    Ok(Proc::new(child, format!("tunloom in {}", ns.name)))
}

/// How to get an admin token for the daemon in a namespace: its binary and state
/// directory (`tunloom auth token mint` reads only the signing key there), and the
/// token once minted.
struct Credentials {
    exe: String,
    state: PathBuf,
    token: Option<String>,
    /// Minting was tried (a binary without the command is asked only once).
    tried: bool,
}

static CREDENTIALS: std::sync::Mutex<Vec<(String, Credentials)>> = std::sync::Mutex::new(Vec::new());

/// Remembers how to mint a token for the daemon in namespace `ns` (a new daemon there
/// replaces the old one's entry).
fn credentials(ns: &str, exe: &str, state: &Path) {
    let mut all = CREDENTIALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.retain(|(n, _)| n != ns);
    all.push((
        ns.to_string(),
        Credentials {
            exe: exe.to_string(),
            state: state.to_path_buf(),
            token: None,
            tried: false,
        },
    ));
}

/// An admin token for the management API of the daemon in `ns`, minted on first use
/// with the daemon's own binary (`tunloom auth token mint`); `None` when that binary
/// has no such command or no daemon was started there through this testbed.
pub fn admin_token(ns: &str) -> Option<String> {
    let mut all = CREDENTIALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = &mut all.iter_mut().find(|(n, _)| n == ns)?.1;
    if c.token.is_none() && !c.tried {
        c.tried = true;
        let out = std::process::Command::new(&c.exe)
            .args([
                "auth",
                "token",
                "mint",
                "--sub",
                "testbed",
                "--role",
                "admin",
                "--ttl",
                "24h",
                "--state-dir",
            ])
            .arg(&c.state)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let token = String::from_utf8(out.stdout).ok()?.trim().to_string();
        if !out.status.success() || token.is_empty() {
            return None;
        }
        c.token = Some(token);
    }
    c.token.clone()
}

/// Waits until the daemon `p` in `ns` answers on its management API; fails with its
/// log (`log()`) when it exits or does not come up in time, and then forgets it.
fn wait_api(ns: &Netns, p: &mut Option<Proc>, timeout: Duration, log: impl Fn() -> String) -> io::Result<()> {
    wait_until(ns, p, timeout, log, || api_get(&ns.name, "/health").is_ok())
}

/// [`wait_api`] with the question asked by `up`.
fn wait_until(
    ns: &Netns,
    p: &mut Option<Proc>,
    timeout: Duration,
    log: impl Fn() -> String,
    up: impl Fn() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !up() {
        if let Some(status) = p.as_mut().and_then(Proc::exited) {
            *p = None;
            return Err(io::Error::other(format!(
                "tunloom in {} exited ({status}):\n{}",
                ns.name,
                log()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("tunloom in {} did not come up:\n{}", ns.name, log()),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Fetches `path` from the management API of the daemon in namespace `ns`.
pub fn api_get(ns: &str, path: &str) -> io::Result<serde_json::Value> {
    let (status, body) = api_request(ns, 6786, "GET", path, None, &[])?;
    if status != 200 {
        return Err(io::Error::other(format!(
            "GET {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(io::Error::other)
}

/// Sends one HTTP request to 127.0.0.1:`port` inside namespace `ns`, from a thread
/// that enters it. Returns status and body, whatever the status.
pub fn api_request(
    ns: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> io::Result<(u16, Vec<u8>)> {
    let ns = ns.to_string();
    let url = format!("http://127.0.0.1:{port}{path}");
    let method = method.to_string();
    let mut headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // The management API wants a token: the testbed's own admin one, unless the
    // caller brings credentials (or deliberately none: an empty Authorization).
    let brings = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("cookie"));
    if port == 6786 && !brings {
        if let Some(t) = admin_token(&ns) {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
    }
    headers.retain(|(k, v)| !(k.eq_ignore_ascii_case("authorization") && v.is_empty()));
    std::thread::spawn(move || -> io::Result<(u16, Vec<u8>)> {
        netns::enter(&ns)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .build()
            .into();
        let mut req = ureq::http::Request::builder().method(method.as_str()).uri(url.as_str());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(body.unwrap_or_default()).map_err(io::Error::other)?;
        let mut resp = agent.run(req).map_err(io::Error::other)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(io::Error::other)?;
        Ok((status, bytes))
    })
    .join()
    .map_err(|_| io::Error::other("API client thread panicked"))?
}

impl TwoHosts {
    /// Creates the namespaces, the veth and both configurations; starts nothing.
    pub fn create(tag: &str, exe: &Path, spec: &HostSpec, stop: Arc<AtomicBool>) -> io::Result<TwoHosts> {
        let pid = std::process::id();
        let dir = TempDir::new(&format!("tunloom-{tag}-{pid}"))?;
        let a = Netns::create(&format!("tl-{tag}-{pid}-a"))?;
        let b = Netns::create(&format!("tl-{tag}-{pid}-b"))?;
        netns::veth(&a, "tlva", "198.18.0.1/24", &b, "tlvb", "198.18.0.2/24")?;
        for (i, name) in NAMES.iter().enumerate() {
            std::fs::write(dir.0.join(format!("{name}.toml")), host_config(i, spec))?;
        }
        Ok(TwoHosts {
            daemons: [None, None],
            a,
            b,
            dir,
            exe: exe.to_owned(),
            wrappers: spec.wrappers.clone(),
            stop,
        })
    }

    pub fn ns(&self, i: usize) -> &Netns {
        if i == 0 {
            &self.a
        } else {
            &self.b
        }
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.0.join(format!("{}.toml", NAMES[i]))
    }

    pub fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// What Ctrl-C sets (for the free functions that take it).
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// Starts daemon `i` (its log goes to `<dir>/<name>.log`, appended).
    pub fn start(&mut self, i: usize) -> io::Result<()> {
        let log = self.dir.0.join(format!("{}.log", NAMES[i]));
        let state = self.dir.0.join(format!("state-{}", NAMES[i]));
        self.daemons[i] = Some(spawn_daemon_under(
            self.ns(i),
            &self.wrappers[i],
            &self.exe,
            &self.config_path(i),
            &state,
            &log,
        )?);
        Ok(())
    }

    /// Stops daemon `i`: cleanly (SIGTERM) or as a crash (SIGKILL).
    pub fn stop(&mut self, i: usize, crash: bool) {
        if let Some(mut p) = self.daemons[i].take() {
            if crash {
                p.kill();
            } else {
                p.stop(Duration::from_secs(5));
            }
        }
    }

    /// The pid of daemon `i`, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.daemons[i].as_ref().map(Proc::pid)
    }

    /// The last lines of daemon `i`'s log.
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.dir.0.join(format!("{}.log", NAMES[i]))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A Weave API request to host `i` (body sent as a form); status and body text.
    pub fn weave(&self, i: usize, method: &str, path: &str, form: Option<&str>) -> io::Result<(u16, String)> {
        weave_request(&self.ns(i).name, method, path, form)
    }

    /// Waits until daemon `i` answers on its management API.
    pub fn wait_up(&mut self, i: usize, timeout: Duration) -> io::Result<()> {
        let ns = if i == 0 { &self.a } else { &self.b };
        let dir = &self.dir.0;
        wait_api(ns, &mut self.daemons[i], timeout, || {
            std::fs::read_to_string(dir.join(format!("{}.log", NAMES[i]))).unwrap_or_default()
        })
    }

    pub fn stats(&self, i: usize) -> io::Result<serde_json::Value> {
        api_get(&self.ns(i).name, "/api/v1/stats")
    }

    /// Waits until every running daemon sees its peer in `state` ("up"/"down").
    pub fn wait_peers(&mut self, state: &str, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.interrupted() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
            }
            for (i, name) in NAMES.iter().enumerate() {
                if let Some(status) = self.daemons[i].as_mut().and_then(Proc::exited) {
                    self.daemons[i] = None;
                    return Err(io::Error::other(format!(
                        "tunloom {name} exited ({status}):\n{}",
                        self.log(i)
                    )));
                }
            }
            let ok = (0..2).filter(|i| self.daemons[*i].is_some()).all(|i| {
                self.stats(i).ok().is_some_and(|s| {
                    s["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["state"] == state))
                })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "peers not {state} within {timeout:?}\n--- a:\n{}\n--- b:\n{}",
                        self.log(0),
                        self.log(1)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pings `dst` from host `from`: RTTs (µs) of the replies that came back.
    pub fn ping(&self, from: usize, dst: &str, count: u32, interval: &str) -> io::Result<Vec<f64>> {
        ping_from(self.ns(from), dst, count, interval)
    }

    /// Runs iperf3 TCP from host `client` to `dst` (a server is started on the other
    /// host for the run) and returns iperf3's JSON result.
    pub fn iperf(
        &self,
        client: usize,
        dst: &str,
        secs: u32,
        parallel: u32,
        reverse: bool,
    ) -> io::Result<serde_json::Value> {
        let p = parallel.to_string();
        let mut extra = vec!["-P", &p];
        if reverse {
            extra.push("-R");
        }
        self.iperf_with(client, dst, secs, &extra)
    }

    /// Runs iperf3 UDP from host `client` to `dst` as fast as the sender can
    /// (`-b 0`), with `len`-byte datagrams.
    pub fn iperf_udp(&self, client: usize, dst: &str, secs: u32, len: u32) -> io::Result<serde_json::Value> {
        let l = len.to_string();
        self.iperf_with(client, dst, secs, &["-u", "-b", "0", "-l", &l])
    }

    /// Runs iperf3 from host `client` to `dst` with `extra` client arguments.
    pub fn iperf_with(&self, client: usize, dst: &str, secs: u32, extra: &[&str]) -> io::Result<serde_json::Value> {
        iperf_between(self.ns(client), self.ns(1 - client), dst, secs, extra, &self.stop)
    }
}

/// Pings `dst` from namespace `from`: RTTs (µs) of the replies that came back.
pub fn ping_from(from: &Netns, dst: &str, count: u32, interval: &str) -> io::Result<Vec<f64>> {
    let n = count.to_string();
    let limit = Duration::from_secs(10 + u64::from(count) / 10);
    let child = from
        .command("ping", &["-n", "-c", &n, "-i", interval, "-W", "1", dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = netns::wait_limited(child, limit)?;
    Ok(parse_ping(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs iperf3 from namespace `client` to `dst`, an address of namespace `server`,
/// where a one-off server is started for the run; iperf3's JSON result. Retries while
/// the server is not listening yet; `stop` (Ctrl-C) ends the retries.
pub fn iperf_between(
    client: &Netns,
    server: &Netns,
    dst: &str,
    secs: u32,
    extra: &[&str],
    stop: &AtomicBool,
) -> io::Result<serde_json::Value> {
    let mut server = Proc::new(
        server
            .command("iperf3", &["-s", "-1", "-B", dst, "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run iperf3: {e}")))?,
        "iperf3 server",
    );
    let t = secs.to_string();
    let mut args = vec!["-c", dst, "-p", "5201", "-t", &t, "-J", "--connect-timeout", "2000"];
    args.extend_from_slice(extra);
    let limit = Duration::from_secs(u64::from(secs) + 20);
    let mut last = String::new();
    for _ in 0..10 {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let child = client
            .command("iperf3", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = netns::wait_limited(child, limit)?;
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v["end"]["sum_received"]["bytes"].is_u64() => {
                server.stop(Duration::from_secs(3));
                return Ok(v);
            }
            // iperf3 -J reports "unable to connect" with exit status 0; the
            // server may not be listening yet.
            Ok(v) => last = v["error"].as_str().unwrap_or("no result").to_string(),
            Err(_) => {
                last = format!(
                    "{} {}",
                    text.chars().take(200).collect::<String>(),
                    String::from_utf8_lossy(&out.stderr)
                )
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(io::Error::other(format!("iperf3 to {dst} failed: {last}")))
}

/// One tunloom host in its own namespace, with a configuration given as text, that
/// can be stopped, crashed and restarted on the same state directory.
pub struct OneHost {
    daemon: Option<Proc>,
    pub ns: Netns,
    pub dir: TempDir,
    exe: PathBuf,
}

impl OneHost {
    pub fn create(tag: &str, exe: &Path, config: &str) -> io::Result<OneHost> {
        let pid = std::process::id();
        let dir = TempDir::new(&format!("tunloom-{tag}-{pid}"))?;
        let ns = Netns::create(&format!("tl-{tag}-{pid}"))?;
        std::fs::write(dir.0.join("tunloom.toml"), config)?;
        Ok(OneHost {
            daemon: None,
            ns,
            dir,
            exe: exe.to_owned(),
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("tunloom.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    /// Starts the daemon, its log appended to `<dir>/tunloom.log`.
    fn spawn(&mut self) -> io::Result<()> {
        let log = self.dir.0.join("tunloom.log");
        self.daemon = Some(spawn_daemon(
            &self.ns,
            &self.exe,
            &self.config_path(),
            &self.state_dir(),
            &log,
        )?);
        Ok(())
    }

    /// Starts the daemon and waits until its management API answers.
    pub fn start(&mut self) -> io::Result<()> {
        self.spawn()?;
        let dir = &self.dir.0;
        wait_api(&self.ns, &mut self.daemon, Duration::from_secs(15), || {
            std::fs::read_to_string(dir.join("tunloom.log")).unwrap_or_default()
        })
    }

    /// Starts the daemon with TLS on its management API (`api.tls`) and waits until
    /// it answers `https://127.0.0.1:6786/health` (curl, certificate not checked).
    pub fn start_tls(&mut self) -> io::Result<()> {
        self.spawn()?;
        let (dir, ns) = (&self.dir.0, &self.ns);
        let up = || {
            ns.command(
                "curl",
                &[
                    "-sfk",
                    "--max-time",
                    "2",
                    "-o",
                    "/dev/null",
                    "https://127.0.0.1:6786/health",
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        };
        wait_until(
            &self.ns,
            &mut self.daemon,
            Duration::from_secs(15),
            || std::fs::read_to_string(dir.join("tunloom.log")).unwrap_or_default(),
            up,
        )
    }

    /// Stops the daemon: cleanly (SIGTERM) or as a crash (SIGKILL).
    pub fn stop(&mut self, crash: bool) {
        if let Some(mut p) = self.daemon.take() {
            if crash {
                p.kill();
            } else {
                p.stop(Duration::from_secs(5));
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Proc::pid)
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.0.join("tunloom.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A Weave API request (body sent as a form): status and body text.
    pub fn weave(&self, method: &str, path: &str, form: Option<&str>) -> io::Result<(u16, String)> {
        weave_request(&self.ns.name, method, path, form)
    }

    /// A management API request: status and body.
    pub fn api(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> io::Result<(u16, Vec<u8>)> {
        api_request(&self.ns.name, 6786, method, path, body, &[])
    }
}

impl Drop for OneHost {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// RTTs in microseconds from ping's per-reply lines (`time=0.052 ms`).
pub fn parse_ping(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect()
}

/// Resident memory in KiB from the text of `/proc/<pid>/status` (its `VmRSS:` line).
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut f = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = f.next()?.parse().ok()?;
    (f.next() == Some("kB")).then_some(n)
}

/// The resident memory of process `pid` in KiB (`VmRSS`), if it runs.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Received throughput in Gbit/s from iperf3's `-J` output.
pub fn iperf_gbps(v: &serde_json::Value) -> Option<f64> {
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64()?;
    Some((bps / 1e9 * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_lines_are_read_in_microseconds() {
        let out = "PING 198.19.2.1 (198.19.2.1) 56(84) bytes of data.\n64 bytes from 198.19.2.1: icmp_seq=1 ttl=63 time=0.052 ms\n64 bytes from 198.19.2.1: icmp_seq=2 ttl=63 time=1.10 ms\n\n--- 198.19.2.1 ping statistics ---\nrtt min/avg/max/mdev = 0.052/0.576/1.100/0.524 ms\n";
        assert_eq!(parse_ping(out), vec![52.0, 1100.0]);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status =
            "Name:\ttunloom\nVmPeak:\t  812344 kB\nVmHWM:\t   21104 kB\nVmRSS:\t   20736 kB\nRssAnon:\t    9000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(20736));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None, "kernel threads have none");
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None, "only kB is known");
        assert!(vm_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[test]
    fn iperf_json_is_read_in_gbps() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"end":{"sum_received":{"bits_per_second":5234000000.0}}}"#).unwrap();
        assert_eq!(iperf_gbps(&j), Some(5.234));
        assert_eq!(iperf_gbps(&serde_json::json!({})), None);
    }
}
