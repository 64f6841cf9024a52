//! `[api]`: where the HTTP faces listen, and the limits every listener keeps.

use super::Invalid;
use crate::control::Limits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// `"off"` (plain HTTP) or `"self-signed"` (a CA and certificate made in
    /// `<state-dir>/tls/`); unset: TLS exactly when the two files below are set.
    pub tls: Option<String>,
    /// PEM certificate (chain, leaf first) and key for the management listener.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Performance mode (seed 003) as configured: unset, the built-in default (on)
    /// holds; a value written through the API wins over both.
    pub performance_mode: Option<bool>,
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
            tls: None,
            tls_cert_file: None,
            tls_key_file: None,
            performance_mode: None,
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
    /// What the management listener (`listen`) serves TLS with; every other
    /// listener is plain HTTP.
    pub tls: Tls,
    /// `api.performance_mode` when set explicitly.
    pub performance_mode: Option<bool>,
}

pub use crate::control::tls::Tls;

impl Api {
    /// Whether the management listener speaks TLS (so its cookies may be `Secure`).
    pub fn tls_enabled(&self) -> bool {
        self.tls != Tls::Off
    }
}

/// Whether two listeners would claim the same port: the same port on the same
/// address, or on any address when either is the wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl ApiSection {
    pub fn validate(&self) -> Result<Api, Invalid> {
        // The management listener authenticates every route but a few public ones;
        // these two have no authentication, as their originals have none.
        let open = [
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
        let tls = self.tls()?;
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
            tls,
            performance_mode: self.performance_mode,
        })
    }

    fn tls(&self) -> Result<Tls, Invalid> {
        for (key, path) in [
            ("api.tls_cert_file", &self.tls_cert_file),
            ("api.tls_key_file", &self.tls_key_file),
        ] {
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(Invalid::new(key, format!("{} is not an absolute path", p.display())));
                }
            }
        }
        let files = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Invalid::new(
                    "api.tls_key_file",
                    "is missing: api.tls_cert_file is set, and the two go together".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Invalid::new(
                    "api.tls_cert_file",
                    "is missing: api.tls_key_file is set, and the two go together".into(),
                ))
            }
        };
        match (self.tls.as_deref(), files) {
            (None, None) | (Some("off"), None) => Ok(Tls::Off),
            (None, Some(f)) => Ok(f),
            (Some("self-signed"), None) => Ok(Tls::SelfSigned),
            (Some(mode @ ("off" | "self-signed")), Some(_)) => Err(Invalid::new(
                "api.tls",
                format!("is \"{mode}\" but api.tls_cert_file and api.tls_key_file are set; remove one or the other"),
            )),
            (Some(other), _) => Err(Invalid::new(
                "api.tls",
                format!(
                    "{other:?} is neither \"off\" nor \"self-signed\" (for a certificate of your own, set api.tls_cert_file and api.tls_key_file)"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(text: &str) -> Result<Api, Invalid> {
        let s: ApiSection = toml::from_str(text).unwrap();
        s.validate()
    }

    #[test]
    fn tls_is_off_unless_asked_for() {
        let a = api("").unwrap();
        assert_eq!(a.tls, Tls::Off);
        assert!(!a.tls_enabled());
        assert_eq!(api("tls = \"off\"").unwrap().tls, Tls::Off);
    }

    #[test]
    fn tls_self_signed_or_from_files() {
        let a = api("tls = \"self-signed\"").unwrap();
        assert_eq!(a.tls, Tls::SelfSigned);
        assert!(a.tls_enabled());
        let a = api("tls_cert_file = \"/etc/t/c.pem\"\ntls_key_file = \"/etc/t/k.pem\"").unwrap();
        assert_eq!(
            a.tls,
            Tls::Files {
                cert: "/etc/t/c.pem".into(),
                key: "/etc/t/k.pem".into()
            }
        );
        assert!(a.tls_enabled());
    }

    #[test]
    fn tls_errors_name_their_key() {
        let key = |t: &str| api(t).unwrap_err();
        let e = key("tls_cert_file = \"/c.pem\"");
        assert_eq!(e.key, "api.tls_key_file", "{e:?}");
        let e = key("tls_key_file = \"/k.pem\"");
        assert_eq!(e.key, "api.tls_cert_file", "{e:?}");
        let e = key("tls_cert_file = \"c.pem\"\ntls_key_file = \"/k.pem\"");
        assert_eq!(e.key, "api.tls_cert_file", "{e:?}");
        assert!(e.message.contains("absolute"));
        let e = key("tls = \"on\"");
        assert_eq!(e.key, "api.tls");
        assert!(
            e.message.contains("\"on\"") && e.message.contains("self-signed"),
            "{e:?}"
        );
        for mode in ["off", "self-signed"] {
            let e = key(&format!(
                "tls = \"{mode}\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\""
            ));
            assert_eq!(e.key, "api.tls");
            assert!(e.message.contains("remove one"), "{e:?}");
        }
    }
}
