//! The configuration file (`tunloom.toml`): its shape, defaults and validation into
//! the typed settings each part of tunloom takes.
//!
//! One file per section ([`node`], [`dataplane`], [`overlay`], [`control`], [`api`],
//! [`ipam`]), each of which validates itself into its part's settings
//! ([`crate::dataplane::Settings`], [`crate::peers::Settings`],
//! [`crate::model::Settings`], …); this file checks what spans sections and
//! assembles [`Settings`]. Every field has a default that works on a single host, so
//! an empty file is a valid configuration; `config/tunloom.toml` in the repository
//! documents each one. Unknown keys are errors, so a typo never silently falls back
//! to a default. Validation happens once, at load, and reports the first problem with
//! the key it concerns.
//!
//! Validation itself does no I/O: what it needs from the machine (host name, allowed
//! CPUs, secret files) comes through [`Env`], which [`System`] answers from the real
//! machine and tests and fuzz targets answer themselves.

pub mod api;
pub mod auth;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod ipam;
pub mod networks;
pub mod node;
pub mod overlay;

pub use node::Node;

use crate::model;
use crate::peers::{self, Identity};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// The largest configuration file read.
pub const MAX_FILE: usize = 1 << 20;

/// A value that is not acceptable, and the key it is under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(key: &'static str, message: String) -> Invalid {
        Invalid { key, message }
    }

    /// `value` if it lies in `lo..=hi`; else the error every range check gives.
    pub fn within<T: PartialOrd + std::fmt::Display>(key: &'static str, value: T, lo: T, hi: T) -> Result<T, Invalid> {
        if lo <= value && value <= hi {
            Ok(value)
        } else {
            Err(Invalid::new(key, format!("{value} is outside {lo}..={hi}")))
        }
    }
}

/// What validation needs to know about the machine.
pub trait Env {
    /// This machine's host name.
    fn hostname(&self) -> String;
    /// The CPUs this process may run on.
    fn allowed_cpus(&self) -> Vec<usize>;
    /// The contents of a secret file, or why it cannot be used.
    fn read_secret(&self, path: &Path) -> Result<Vec<u8>, String>;
    /// Whether an interface of this name exists and is not a TUN device.
    fn is_other_interface(&self, name: &str) -> bool;
    /// The host's resolver configuration (/etc/resolv.conf), empty if unreadable.
    fn resolv_conf(&self) -> String;
}

/// The real machine.
pub struct System;

impl Env for System {
    fn hostname(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    fn allowed_cpus(&self) -> Vec<usize> {
        crate::sys::allowed_cpus()
    }

    /// A regular file of at most 4 KiB (never a device or pipe that could block or
    /// never end), trimmed.
    fn read_secret(&self, path: &Path) -> Result<Vec<u8>, String> {
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

    fn is_other_interface(&self, name: &str) -> bool {
        // A TUN or TAP device has `tun_flags`; anything else (lo, eth0, a bridge) not.
        let dir = Path::new("/sys/class/net").join(name);
        crate::names::valid_ifname(name) && dir.exists() && !dir.join("tun_flags").exists()
    }

    fn resolv_conf(&self) -> String {
        use std::io::Read;
        let mut text = String::new();
        // Bounded like every file read at start: resolv.conf is a few lines.
        let _ = std::fs::File::open("/etc/resolv.conf").and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
        text
    }
}

/// The file as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: node::NodeSection,
    #[serde(default)]
    pub dataplane: dataplane::DataplaneSection,
    #[serde(default)]
    pub overlay: overlay::OverlaySection,
    #[serde(default)]
    pub control: control::ControlSection,
    #[serde(default)]
    pub api: api::ApiSection,
    #[serde(default)]
    pub ipam: ipam::IpamSection,
    #[serde(default)]
    pub dns: dns::DnsSection,
    #[serde(default)]
    pub auth: auth::AuthSection,
    #[serde(default)]
    pub networks: networks::NetworksSection,
    #[serde(default)]
    pub egress: networks::EgressSection,
    #[serde(default)]
    pub peers: Vec<control::PeerSection>,
}

/// A validated configuration: each part's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: Node,
    pub dataplane: crate::dataplane::Settings,
    pub peers: peers::Settings,
    pub api: api::Api,
    pub model: model::Settings,
    pub dns: crate::dns::Settings,
    pub auth: crate::auth::Settings,
    /// The file as loaded, as JSON with its secrets redacted ([`redacted`]): what a
    /// sysdump shows. `Null` until [`Config::parse_in`] sets it.
    pub file: serde_json::Value,
}

/// What a redacted value reads.
pub const REDACTED: &str = "<redacted>";

/// The configuration text as JSON, every secret replaced by [`REDACTED`]: the value of
/// any key whose name says secret, password, token or private key (`control.secret`),
/// but not of one naming a file (`control.secret_file`, `auth.admin_password_file`:
/// their paths are shown, their contents are never read for this). A text that is
/// not TOML gives `Null`.
pub fn redacted(text: &str) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    let k = k.to_ascii_lowercase();
                    let secret = ["secret", "password", "token", "private"].iter().any(|w| k.contains(w));
                    if secret && !k.ends_with("_file") {
                        *v = serde_json::Value::String(REDACTED.into());
                    } else {
                        walk(v);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(t) = toml::from_str::<toml::Table>(text) else {
        return serde_json::Value::Null;
    };
    let mut v = serde_json::to_value(t).unwrap_or_default();
    walk(&mut v);
    v
}

impl Config {
    /// Reads and validates `path` on this machine. The file is read up to
    /// [`MAX_FILE`] bytes: a device that never ends (`/dev/zero`) is an error, not a
    /// hang.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        use std::io::Read;
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE as u64 + 1).read_to_end(&mut bytes))
            .map_err(read)?;
        if bytes.len() > MAX_FILE {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("larger than {MAX_FILE} bytes; is it the configuration file?"),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8 text".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` (read from `path`) on this machine.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        Self::parse_in(text, path, &System)
    }

    /// Validates `text` (read from `path`) with what `env` says of the machine.
    pub fn parse_in(text: &str, path: &Path, env: &dyn Env) -> Result<Settings, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let mut settings = config.validate(env).map_err(|i| ConfigError::Invalid {
            path: path.to_owned(),
            key: i.key,
            message: i.message,
        })?;
        settings.file = redacted(text);
        Ok(settings)
    }

    fn validate(&self, env: &dyn Env) -> Result<Settings, Invalid> {
        let mut dataplane = self.dataplane.validate(env)?;
        let control = self.control.validate(env)?;
        let c = &self.control;
        if c.port == 0 || c.port == self.dataplane.data_port {
            return Err(Invalid::new(
                "control.port",
                format!("{} must be non-zero and differ from dataplane.data_port", c.port),
            ));
        }
        let o = &self.overlay;
        for r in &o.routes {
            ipam::network("overlay.routes", r)?;
        }
        for a in &o.announce {
            ipam::network("overlay.announce", a)?;
        }
        if let Some(g) = o.gateways.iter().find(|g| o.expose.iter().any(|e| e.addr() == **g)) {
            return Err(Invalid::new(
                "overlay.gateways",
                format!("{g} is also in overlay.expose; an address is either the host's or tunloom's"),
            ));
        }
        let ipam = self.ipam.validate()?;
        let networks = networks::validate(&self.networks, &self.egress, ipam.range)?;
        let api = self.api.validate()?;
        let auth = self.auth.validate()?;
        let dns = self.dns.validate(env)?;
        let static_peers = control::static_peers(&self.peers, c.port)?;
        let node = self.node.validate(env)?;
        dataplane.routes = if o.routes.is_empty() {
            vec![ipnet::IpNet::V4(ipam.range)]
        } else {
            o.routes.clone()
        };
        dataplane.expose = o.expose.clone();
        let d = &self.dataplane;
        let underlay = d.advertise.unwrap_or(if d.bind.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        let model = model::Settings {
            range: ipam.range,
            default_subnet: ipam.default_subnet,
            blocks: ipam.blocks,
            overlay: dataplane.routes.clone(),
            domain: dns.domain.clone(),
            announce: o.announce.clone(),
            expose: o.expose.clone(),
            gateways: o.gateways.clone(),
            snapshot: crate::snapshot::SnapshotBase {
                node_mac: node.mac,
                vni: dataplane.vni,
                mtu: dataplane.mtu,
            },
            sync_timeout: control.sync_timeout,
            apply_timeout: control.apply_timeout,
            max_peers: control.max_peers,
            networks,
        };
        let peers = peers::Settings {
            identity: Identity {
                name: node.name.clone(),
                nickname: node.nickname.clone(),
                underlay,
                data_port: d.data_port,
                secret: control.secret,
            },
            timing: control.timing,
            port: c.port,
            bind: d.bind,
            static_peers,
            bounds: peers::Bounds {
                max_peers: control.max_peers,
                overlay: dataplane.routes.clone(),
            },
        };
        Ok(Settings {
            node,
            dataplane,
            peers,
            api,
            model,
            dns,
            auth,
            file: serde_json::Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn parse(s: &str) -> Result<Settings, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    #[test]
    fn the_file_as_loaded_has_its_secrets_redacted() {
        let text =
            "[control]\nsecret = \"s3cret-s3cret\"\n[auth]\nadmin_password_file = \"/etc/pw\"\n[node]\nname = \"n1\"\n";
        let s = parse(text).unwrap();
        assert_eq!(s.file["control"]["secret"], REDACTED);
        assert_eq!(s.file["auth"]["admin_password_file"], "/etc/pw");
        assert_eq!(s.file["node"]["name"], "n1");
        assert!(!s.file.to_string().contains("s3cret"));
        assert_eq!(
            redacted("[control]\nsecret_file = \"/k\"\n")["control"]["secret_file"],
            "/k"
        );
        assert!(redacted("not toml [").is_null());
    }

    #[test]
    fn empty_file_is_a_working_single_host_config() {
        let s = parse("").unwrap();
        assert_eq!(s.dataplane.mtu, 1450);
        assert_eq!(s.dataplane.tun_name, "tl0");
        assert_eq!(s.api.listen, "127.0.0.1:6786".parse().unwrap());
        assert!(s.node.name.parse::<crate::wire::ether::Address>().is_ok());
        assert_eq!(s.model.apply_timeout, std::time::Duration::from_secs(2));
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../config/tunloom.toml");
        let s = parse(text).unwrap();
        assert_eq!(s.dataplane.data_port, 4789);
    }

    #[test]
    fn exposed_addresses_are_announced_as_host_routes_unless_covered() {
        let s = parse("[overlay]\nannounce = [\"198.19.1.0/24\"]\nexpose = [\"198.19.1.1/16\", \"198.19.9.1/16\"]\n")
            .unwrap();
        assert_eq!(
            model::announced_prefixes(&s.model.announce, &s.model.expose),
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
            s.peers.static_peers,
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
            ("[control]\napply_timeout_ms = 5\n", "control.apply_timeout_ms"),
            ("[[peers]]\naddress = \"not-an-ip\"\n", "peers.address"),
            ("[control]\nsecret_file = \"/dev/zero\"\n", "not a regular file"),
            ("[control]\nsecret_file = \"/nonexistent/secret\"\n", "cannot read"),
            ("[dataplane]\nwrokers = 2\n", "unknown field `wrokers`"),
            (
                "[dns]\nupstream = [\"dns.google\"]\n",
                "dns.upstream: \"dns.google\" is not a server address",
            ),
            ("[dns]\ntimeout_ms = 5\n", "dns.timeout_ms: 5 is outside 100..=60000"),
            ("[dns]\nttl = 99999999\n", "dns.ttl"),
            ("[dns]\ndomain = \"a..b\"\n", "dns.domain"),
            ("[overlay]\nannounce = [\"10.0.0.0/33\"]\n", "announce"),
            ("[dataplane\n", "t.toml"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    /// A machine that answers validation's questions without touching the real one.
    struct Fake;
    impl Env for Fake {
        fn hostname(&self) -> String {
            "fake-host".into()
        }
        fn allowed_cpus(&self) -> Vec<usize> {
            vec![0, 1, 2]
        }
        fn read_secret(&self, path: &Path) -> Result<Vec<u8>, String> {
            Ok(path.display().to_string().into_bytes())
        }
        fn is_other_interface(&self, name: &str) -> bool {
            name == "lo"
        }
        fn resolv_conf(&self) -> String {
            "nameserver 192.0.2.1\n".into()
        }
    }

    #[test]
    fn validation_asks_the_machine_only_through_env() {
        let text = "[control]\nsecret_file = \"/etc/a-long-secret\"\n[dataplane]\ncpus = [2]\n";
        let s = Config::parse_in(text, Path::new("t.toml"), &Fake).unwrap();
        assert_eq!(s.node.nickname, "fake-host");
        assert_eq!(s.peers.identity.secret.as_deref(), Some(&b"/etc/a-long-secret"[..]));
        assert_eq!((s.dataplane.cpus.clone(), s.dataplane.workers), (vec![2], 1));
        let e = Config::parse_in("[dataplane]\ncpus = [3]\n", Path::new("t.toml"), &Fake).unwrap_err();
        assert!(e.to_string().contains("dataplane.cpus"), "{e}");
    }

    #[test]
    fn an_unauthenticated_face_beyond_loopback_needs_the_opt_in() {
        let text = "[api]\nweave_listen = \"0.0.0.0:6784\"\n";
        let e = Config::parse_in(text, Path::new("t.toml"), &Fake).unwrap_err();
        assert!(e.to_string().contains("api.allow_unauthenticated = true"), "{e}");
        let text = "[api]\nweave_listen = \"0.0.0.0:6784\"\nallow_unauthenticated = true\n";
        let api = Config::parse_in(text, Path::new("t.toml"), &Fake).unwrap().api;
        assert!(api.unauthenticated_exposed);
        let api = Config::parse_in("", Path::new("t.toml"), &Fake).unwrap().api;
        assert!(!api.unauthenticated_exposed);
        assert_eq!(api.metrics_listen, Some("127.0.0.1:6782".parse().unwrap()));
        // No metrics listener: its address overlaps nothing then.
        let text = "[api]\nmetrics = false\nmetrics_listen = \"127.0.0.1:6786\"\n";
        let api = Config::parse_in(text, Path::new("t.toml"), &Fake).unwrap().api;
        assert_eq!(api.metrics_listen, None);
    }

    #[test]
    fn the_dataplane_tuning_keys_are_checked() {
        let d = Config::parse_in("", Path::new("t.toml"), &Fake).unwrap().dataplane;
        assert!(!d.steer_by_cpu && d.adaptive_poll.is_zero() && d.coalesce_udp);
        let text = "[dataplane]\nsteering = \"cpu\"\nadaptive_poll_us = 50\nflush_bytes = 65536\n";
        let d = Config::parse_in(text, Path::new("t.toml"), &Fake).unwrap().dataplane;
        assert!(d.steer_by_cpu);
        assert_eq!((d.adaptive_poll.as_micros(), d.flush_bytes), (50, 65536));
        for (line, key) in [
            ("steering = \"rss\"", "dataplane.steering"),
            ("adaptive_poll_us = 20000", "dataplane.adaptive_poll_us"),
            ("flush_bytes = 100", "dataplane.flush_bytes"),
        ] {
            let e = Config::parse_in(&format!("[dataplane]\n{line}\n"), Path::new("t.toml"), &Fake).unwrap_err();
            assert!(e.to_string().contains(key), "{line}: {e}");
        }
    }
}
