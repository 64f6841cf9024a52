//! `[control]` and `[[peers]]`: the peer control protocol, its cluster secret, its
//! timers, and the peers to say hello to from the start.

use super::{Env, Invalid};
use crate::peers::{PeerAddr, Timing};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    pub port: u16,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub hello_interval_ms: u64,
    pub dead_after: u32,
    /// How long a write that involves peers (`POST /connect`, `POST /expose`) waits
    /// for them to apply it before answering.
    pub sync_timeout_ms: u64,
    /// How long a write waits for every worker to apply it before answering 503.
    pub apply_timeout_ms: u64,
    /// The most peers this node knows at once.
    pub max_peers: usize,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            port: 6783,
            secret: None,
            secret_file: None,
            hello_interval_ms: 1000,
            dead_after: 3,
            sync_timeout_ms: 3000,
            apply_timeout_ms: 2000,
            max_peers: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's underlay address, optionally with its control port.
    pub address: String,
}

/// The control section, validated.
pub struct Control {
    pub secret: Option<Vec<u8>>,
    pub timing: Timing,
    pub sync_timeout: Duration,
    pub apply_timeout: Duration,
    pub max_peers: usize,
}

impl ControlSection {
    pub fn validate(&self, env: &dyn Env) -> Result<Control, Invalid> {
        Invalid::within("control.hello_interval_ms", self.hello_interval_ms, 50, 60_000)?;
        Invalid::within("control.dead_after", self.dead_after, 1, 100)?;
        let secret = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "control.secret",
                    "set either secret or secret_file, not both".into(),
                ))
            }
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(f)) => Some(env.read_secret(f).map_err(|m| Invalid::new("control.secret_file", m))?),
            (None, None) => None,
        };
        if secret.as_ref().is_some_and(|s| s.len() < 8) {
            return Err(Invalid::new("control.secret", "must be at least 8 bytes".into()));
        }
        for (key, v) in [
            ("control.sync_timeout_ms", self.sync_timeout_ms),
            ("control.apply_timeout_ms", self.apply_timeout_ms),
        ] {
            Invalid::within(key, v, 100, 60_000)?;
        }
        Invalid::within("control.max_peers", self.max_peers, 1, 65_536)?;
        Ok(Control {
            max_peers: self.max_peers,
            secret,
            timing: Timing {
                hello_interval: Duration::from_millis(self.hello_interval_ms),
                dead_after: self.dead_after,
            },
            sync_timeout: Duration::from_millis(self.sync_timeout_ms),
            apply_timeout: Duration::from_millis(self.apply_timeout_ms),
        })
    }
}

/// The static peers' control addresses (`port` for those given without one).
pub fn static_peers(peers: &[PeerSection], port: u16) -> Result<Vec<SocketAddr>, Invalid> {
    peers
        .iter()
        .map(|p| match PeerAddr::parse(&p.address, port) {
            Ok(PeerAddr::Addr(a)) if a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast() => Ok(a),
            _ => Err(Invalid::new(
                "peers.address",
                format!(
                    "{:?} is not an IP address or address:port (a unicast address, a port from 1 to 65535)",
                    p.address
                ),
            )),
        })
        .collect()
}
