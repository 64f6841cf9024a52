//! `[api]`: where the HTTP faces listen, and the limits every listener keeps.

use super::Invalid;
use crate::control::Limits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub listen: SocketAddr,
    /// The Weave Net API (no authentication: loopback only).
    pub weave_listen: SocketAddr,
    /// The libnetwork API (no authentication: loopback only).
    pub libnetwork_listen: SocketAddr,
    /// Prometheus metrics (read-only counters).
    pub metrics_listen: SocketAddr,
    /// Serve the metrics at all.
    pub metrics: bool,
    /// Let the Weave API listen on a non-loopback address although it has no
    /// authentication (its original has none either).
    pub allow_unauthenticated: bool,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub handler_threads: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        let l = Limits::default();
        let ms = |d: Duration| d.as_millis() as u64;
        ApiSection {
            listen: "127.0.0.1:6786".parse().expect("static address"),
            weave_listen: "127.0.0.1:6784".parse().expect("static address"),
            libnetwork_listen: "127.0.0.1:6785".parse().expect("static address"),
            metrics_listen: "127.0.0.1:6782".parse().expect("static address"),
            metrics: true,
            allow_unauthenticated: false,
            max_connections: l.max_connections,
            max_connections_per_client: l.max_per_client,
            header_timeout_ms: ms(l.head_timeout),
            body_timeout_ms: ms(l.body_timeout),
            idle_timeout_ms: ms(l.idle_timeout),
            write_timeout_ms: ms(l.write_timeout),
            max_header_bytes: l.max_head,
            max_headers: l.max_headers,
            handler_threads: l.handlers,
        }
    }
}

/// Where each face listens, and what every listener bounds.
#[derive(Debug, Clone)]
pub struct Api {
    pub listen: SocketAddr,
    pub weave_listen: SocketAddr,
    pub libnetwork_listen: SocketAddr,
    /// Where the metrics listen; `None` when `api.metrics = false`.
    pub metrics_listen: Option<SocketAddr>,
    /// The Weave or libnetwork API listens beyond loopback, by
    /// `api.allow_unauthenticated`.
    pub unauthenticated_exposed: bool,
    pub limits: Limits,
}

/// Whether two listeners would claim the same port: the same port on the same
/// address, or on any address when either is the wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl ApiSection {
    pub fn validate(&self) -> Result<Api, Invalid> {
        // The management listener carries the Container Station face's writes, and
        // there is no authentication yet: it is held to loopback like the others.
        let open = [
            ("api.listen", "management", self.listen),
            ("api.weave_listen", "Weave", self.weave_listen),
            ("api.libnetwork_listen", "libnetwork", self.libnetwork_listen),
        ];
        let exposed = open.iter().any(|(_, _, a)| !a.ip().is_loopback());
        for (key, face, addr) in open {
            if !addr.ip().is_loopback() && !self.allow_unauthenticated {
                return Err(Invalid::new(
                    key,
                    format!(
                        "{addr} is not a loopback address; the {face} API has no authentication (set api.allow_unauthenticated = true to expose it anyway)"
                    ),
                ));
            }
        }
        if overlaps(self.weave_listen, self.listen) {
            return Err(Invalid::new(
                "api.weave_listen",
                format!("{} overlaps api.listen ({})", self.weave_listen, self.listen),
            ));
        }
        for (key, other) in [("api.listen", self.listen), ("api.weave_listen", self.weave_listen)] {
            if overlaps(self.libnetwork_listen, other) {
                return Err(Invalid::new(
                    "api.libnetwork_listen",
                    format!("{} overlaps {key} ({other})", self.libnetwork_listen),
                ));
            }
        }
        if self.metrics {
            for (key, other) in [
                ("api.listen", self.listen),
                ("api.weave_listen", self.weave_listen),
                ("api.libnetwork_listen", self.libnetwork_listen),
            ] {
                if overlaps(self.metrics_listen, other) {
                    return Err(Invalid::new(
                        "api.metrics_listen",
                        format!("{} overlaps {key} ({other})", self.metrics_listen),
                    ));
                }
            }
        }
        let within = Invalid::within::<u64>;
        let ms = |key, v| within(key, v, 100, 3_600_000).map(Duration::from_millis);
        Ok(Api {
            listen: self.listen,
            weave_listen: self.weave_listen,
            libnetwork_listen: self.libnetwork_listen,
            metrics_listen: self.metrics.then_some(self.metrics_listen),
            unauthenticated_exposed: exposed,
            limits: Limits {
                max_connections: within("api.max_connections", self.max_connections as u64, 1, 65_536)? as usize,
                max_per_client: within(
                    "api.max_connections_per_client",
                    self.max_connections_per_client as u64,
                    1,
                    65_536,
                )? as usize,
                head_timeout: ms("api.header_timeout_ms", self.header_timeout_ms)?,
                body_timeout: ms("api.body_timeout_ms", self.body_timeout_ms)?,
                idle_timeout: ms("api.idle_timeout_ms", self.idle_timeout_ms)?,
                write_timeout: ms("api.write_timeout_ms", self.write_timeout_ms)?,
                max_head: within("api.max_header_bytes", self.max_header_bytes as u64, 1024, 1 << 20)? as usize,
                max_headers: within("api.max_headers", self.max_headers as u64, 8, 1024)? as usize,
                handlers: within("api.handler_threads", self.handler_threads as u64, 1, 256)? as usize,
                ..Limits::default()
            },
        })
    }
}
