//! The configuration file (`tunloom.toml`): its shape, defaults and validation.
//!
//! Every field has a default that works on a single host, so an empty file is a valid
//! configuration; `config/tunloom.toml` in the repository documents each one. Unknown
//! keys are errors, so a typo never silently falls back to a default. Validation
//! happens once, at load, and reports the first problem with the key it concerns.

use crate::wire::{control, ether};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub overlay: OverlayConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub ipam: IpamConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpamConfig {
    /// The whole allocation range (Weave's default).
    pub range: Ipv4Net,
    /// Where `POST /ip/{id}` allocates; default: the range.
    pub default_subnet: Option<Ipv4Net>,
    /// The blocks of the range this node allocates from; default: the whole range
    /// (a single node). Nodes sharing a range list disjoint blocks.
    pub blocks: Vec<Ipv4Net>,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            range: "10.32.0.0/12".parse().expect("static prefix"),
            default_subnet: None,
            blocks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The domain workload names live in.
    pub domain: String,
    /// Servers asked for names outside the domain.
    pub upstream: Vec<IpAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: "weave.local.".into(),
            upstream: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique name of this node in the cluster; default: a MAC-style name derived
    /// from the host name (as Weave Net names peers).
    pub name: Option<String>,
    /// Human-readable name; default: the host name.
    pub nickname: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    pub workers: usize,
    pub pin_workers: bool,
    pub cpus: Vec<usize>,
    pub tun_name: String,
    pub underlay_mtu: u16,
    pub data_port: u16,
    pub vni: u32,
    pub bind: IpAddr,
    pub advertise: Option<IpAddr>,
    pub offload: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
    pub tun_gso_max_size: u32,
    pub tx_ports: usize,
    pub socket_buffer: usize,
    pub tun_txqueuelen: u32,
    pub busy_poll_us: u64,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            workers: 0,
            pin_workers: true,
            cpus: Vec::new(),
            tun_name: "tl0".into(),
            underlay_mtu: 1500,
            data_port: 4789,
            vni: 1,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise: None,
            offload: true,
            udp_gso: true,
            udp_gro: true,
            tun_gso_max_size: 60_000,
            tx_ports: 4,
            socket_buffer: 8 << 20,
            tun_txqueuelen: 1000,
            busy_poll_us: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Prefixes the host routes into the TUN device.
    pub routes: Vec<IpNet>,
    /// Prefixes this node serves and announces to peers.
    pub announce: Vec<IpNet>,
    /// Addresses put on the TUN device (address/prefix-length), giving the host
    /// itself an address in the overlay. Each is announced as a /32 or /128.
    pub expose: Vec<IpNet>,
    /// Gateway addresses tunloom answers itself (ICMP echo) on its service thread.
    pub gateways: Vec<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub port: u16,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub hello_interval_ms: u64,
    pub dead_after: u32,
    /// How long a write that involves peers (`POST /connect`, `POST /expose`) waits
    /// for them to apply it before answering.
    pub sync_timeout_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            port: 6783,
            secret: None,
            secret_file: None,
            hello_interval_ms: 1000,
            dead_after: 3,
            sync_timeout_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// The Weave Net API (no authentication: loopback only).
    pub weave_listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:6786".parse().expect("static address"),
            weave_listen: "127.0.0.1:6784".parse().expect("static address"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's underlay address, optionally with its control port.
    pub address: String,
}

/// A validated configuration with everything derived that the daemon needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub node_name: String,
    pub nickname: String,
    pub node_mac: ether::Address,
    pub secret: Option<Vec<u8>>,
    /// Control addresses of the static peers.
    pub peers: Vec<SocketAddr>,
    /// The overlay MTU: the inner packet size that fits the underlay MTU.
    pub mtu: u16,
    /// Prefixes announced: `overlay.announce` plus the exposed host addresses.
    pub announced: Vec<IpNet>,
    /// The IPAM blocks this node owns by configuration.
    pub blocks: Vec<Ipv4Net>,
    pub default_subnet: Ipv4Net,
    /// Routes into the TUN device: `overlay.routes`, or the IPAM range.
    pub routes: Vec<IpNet>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(path)
    }

    fn validate(self, path: &Path) -> Result<Settings, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let d = &self.dataplane;
        if !crate::names::valid_ifname(&d.tun_name) {
            return Err(invalid(
                "dataplane.tun_name",
                format!(
                    "{:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)",
                    d.tun_name
                ),
            ));
        }
        if d.vni == 0 || d.vni > crate::wire::vxlan::MAX_VNI {
            return Err(invalid("dataplane.vni", format!("{} is outside 1..=16777215", d.vni)));
        }
        let outer = if d.bind.is_ipv6() || d.advertise.is_some_and(|a| a.is_ipv6()) {
            crate::pipeline::OUTER_V6_LEN
        } else {
            crate::pipeline::OUTER_V4_LEN
        };
        let overhead = outer + crate::pipeline::ENCAP_LEN;
        if usize::from(d.underlay_mtu) < 1280 + overhead || d.underlay_mtu > 9216 {
            return Err(invalid(
                "dataplane.underlay_mtu",
                format!("{} must leave room for a 1280-byte inner packet plus {overhead} bytes of headers, and be at most 9216", d.underlay_mtu),
            ));
        }
        if d.data_port == 0 {
            return Err(invalid("dataplane.data_port", "must not be 0".into()));
        }
        if d.tx_ports == 0 || d.tx_ports > 64 {
            return Err(invalid(
                "dataplane.tx_ports",
                format!("{} is outside 1..=64", d.tx_ports),
            ));
        }
        if d.workers > 1024 {
            return Err(invalid(
                "dataplane.workers",
                format!("{} workers is more than 1024", d.workers),
            ));
        }
        if !(1280..=65_536).contains(&d.tun_gso_max_size) {
            return Err(invalid(
                "dataplane.tun_gso_max_size",
                format!("{} is outside 1280..=65536", d.tun_gso_max_size),
            ));
        }
        let c = &self.control;
        let allowed = crate::sys::allowed_cpus();
        if let Some(c) = d.cpus.iter().find(|c| !allowed.contains(c)) {
            return Err(invalid(
                "dataplane.cpus",
                format!("CPU {c} is not one this process may run on ({allowed:?})"),
            ));
        }
        if d.busy_poll_us > 1_000_000 {
            return Err(invalid(
                "dataplane.busy_poll_us",
                format!("{} is more than one second", d.busy_poll_us),
            ));
        }
        if c.port == 0 || c.port == d.data_port {
            return Err(invalid(
                "control.port",
                format!("{} must be non-zero and differ from dataplane.data_port", c.port),
            ));
        }
        if !(50..=60_000).contains(&c.hello_interval_ms) {
            return Err(invalid(
                "control.hello_interval_ms",
                format!("{} is outside 50..=60000", c.hello_interval_ms),
            ));
        }
        if !(1..=100).contains(&c.dead_after) {
            return Err(invalid(
                "control.dead_after",
                format!("{} is outside 1..=100", c.dead_after),
            ));
        }
        let secret = match (&c.secret, &c.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "control.secret",
                    "set either secret or secret_file, not both".into(),
                ))
            }
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(f)) => Some(read_secret(f).map_err(|m| invalid("control.secret_file", m))?),
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.len() < 8) {
            return Err(invalid("control.secret", "must be at least 8 bytes".into()));
        }
        for g in &self.overlay.gateways {
            if self.overlay.expose.iter().any(|e| e.addr() == *g) {
                return Err(invalid(
                    "overlay.gateways",
                    format!("{g} is also in overlay.expose; an address is either the host's or tunloom's"),
                ));
            }
        }
        let ipam = &self.ipam;
        if !(8..=30).contains(&ipam.range.prefix_len()) {
            return Err(invalid(
                "ipam.range",
                format!("{} must be between a /8 and a /30", ipam.range),
            ));
        }
        let range = ipam.range.trunc();
        let default_subnet = ipam.default_subnet.map_or(range, |s| s.trunc());
        if !range.contains(&default_subnet) || default_subnet.prefix_len() > 30 {
            return Err(invalid(
                "ipam.default_subnet",
                format!("{default_subnet} must be inside ipam.range {range} and at most a /30"),
            ));
        }
        let blocks: Vec<Ipv4Net> = if ipam.blocks.is_empty() {
            vec![range]
        } else {
            ipam.blocks.iter().map(Ipv4Net::trunc).collect()
        };
        if let Some(b) = blocks.iter().find(|b| !range.contains(*b)) {
            return Err(invalid("ipam.blocks", format!("{b} is not inside ipam.range {range}")));
        }
        if !self.api.weave_listen.ip().is_loopback() {
            return Err(invalid(
                "api.weave_listen",
                format!(
                    "{} is not a loopback address; the Weave API has no authentication",
                    self.api.weave_listen
                ),
            ));
        }
        if self.api.weave_listen == self.api.listen {
            return Err(invalid("api.weave_listen", "must differ from api.listen".into()));
        }
        if !(100..=60_000).contains(&c.sync_timeout_ms) {
            return Err(invalid(
                "control.sync_timeout_ms",
                format!("{} is outside 100..=60000", c.sync_timeout_ms),
            ));
        }
        let domain = &self.dns.domain;
        if crate::names::normalize_fqdn(domain).is_none() {
            return Err(invalid("dns.domain", format!("{domain:?} is not a valid domain name")));
        }
        let mut peers = Vec::new();
        for p in &self.peers {
            let addr = parse_peer(&p.address, c.port).ok_or_else(|| {
                invalid(
                    "peers.address",
                    format!("{:?} is not an IP address or address:port", p.address),
                )
            })?;
            peers.push(addr);
        }
        let host = hostname();
        let node_name = self
            .node
            .name
            .clone()
            .unwrap_or_else(|| ether::Address::for_node(&host).to_string());
        if node_name.is_empty() || node_name.len() > control::MAX_NAME_LEN {
            return Err(invalid(
                "node.name",
                format!("must be 1 to {} bytes", control::MAX_NAME_LEN),
            ));
        }
        let nickname = self.node.nickname.clone().unwrap_or(host);
        let nickname: String = nickname.chars().take(control::MAX_NAME_LEN).collect();
        let mut announced: Vec<IpNet> = self.overlay.announce.iter().map(IpNet::trunc).collect();
        for e in &self.overlay.expose {
            let host_net = IpNet::new(e.addr(), e.max_prefix_len()).expect("max prefix length is valid");
            if !announced.iter().any(|a| a.contains(&e.addr())) {
                announced.push(host_net);
            }
        }
        let routes = if self.overlay.routes.is_empty() {
            vec![IpNet::V4(range)]
        } else {
            self.overlay.routes.clone()
        };
        Ok(Settings {
            blocks,
            default_subnet,
            routes,
            mtu: d.underlay_mtu - overhead as u16,
            node_mac: ether::Address::for_node(&node_name),
            node_name,
            nickname,
            secret,
            peers,
            announced,
            config: self,
        })
    }
}

/// Reads a secret file: a regular file of at most 4 KiB (never a device or pipe that
/// could block or never end), trimmed.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4097).read_to_end(&mut buf))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if buf.len() > 4096 {
        return Err(format!("{shown} is larger than 4 KiB"));
    }
    Ok(buf.trim_ascii().to_vec())
}

fn parse_peer(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, default_port))
}

/// This machine's host name, or "localhost" when it has none.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Settings, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    #[test]
    fn empty_file_is_a_working_single_host_config() {
        let s = parse("").unwrap();
        assert_eq!(s.mtu, 1450);
        assert_eq!(s.config.dataplane.tun_name, "tl0");
        assert_eq!(s.config.api.listen, "127.0.0.1:6786".parse().unwrap());
        assert!(s.node_name.parse::<ether::Address>().is_ok());
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../config/tunloom.toml");
        let s = parse(text).unwrap();
        assert_eq!(s.config.dataplane.data_port, 4789);
    }

    #[test]
    fn exposed_addresses_are_announced_as_host_routes_unless_covered() {
        let s = parse("[overlay]\nannounce = [\"198.19.1.0/24\"]\nexpose = [\"198.19.1.1/16\", \"198.19.9.1/16\"]\n")
            .unwrap();
        assert_eq!(
            s.announced,
            vec![
                "198.19.1.0/24".parse::<IpNet>().unwrap(),
                "198.19.9.1/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn peers_take_the_control_port_by_default() {
        let s = parse("[[peers]]\naddress = \"198.18.0.2\"\n[[peers]]\naddress = \"198.18.0.3:7000\"\n").unwrap();
        assert_eq!(
            s.peers,
            vec!["198.18.0.2:6783".parse().unwrap(), "198.18.0.3:7000".parse().unwrap()]
        );
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let cases = [
            ("[dataplane]\nvni = 0\n", "dataplane.vni"),
            ("[dataplane]\nunderlay_mtu = 1000\n", "dataplane.underlay_mtu"),
            ("[dataplane]\ntun_name = \"a/b\"\n", "dataplane.tun_name"),
            ("[control]\nport = 4789\n", "control.port"),
            ("[control]\nsecret = \"short\"\n", "control.secret"),
            ("[[peers]]\naddress = \"not-an-ip\"\n", "peers.address"),
            ("[control]\nsecret_file = \"/dev/zero\"\n", "not a regular file"),
            ("[control]\nsecret_file = \"/nonexistent/secret\"\n", "cannot read"),
            ("[dataplane]\nwrokers = 2\n", "unknown field `wrokers`"),
            ("[overlay]\nannounce = [\"10.0.0.0/33\"]\n", "announce"),
            ("[dataplane\n", "t.toml"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
