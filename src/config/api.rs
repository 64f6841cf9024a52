//! `[api]`: where the HTTP faces listen.

use super::Invalid;
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub listen: SocketAddr,
    /// The Weave Net API (no authentication: loopback only).
    pub weave_listen: SocketAddr,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: "127.0.0.1:6786".parse().expect("static address"),
            weave_listen: "127.0.0.1:6784".parse().expect("static address"),
        }
    }
}

/// Where each face listens.
#[derive(Debug, Clone)]
pub struct Api {
    pub listen: SocketAddr,
    pub weave_listen: SocketAddr,
}

impl ApiSection {
    pub fn validate(&self) -> Result<Api, Invalid> {
        if !self.weave_listen.ip().is_loopback() {
            return Err(Invalid::new(
                "api.weave_listen",
                format!(
                    "{} is not a loopback address; the Weave API has no authentication",
                    self.weave_listen
                ),
            ));
        }
        if self.weave_listen == self.listen {
            return Err(Invalid::new("api.weave_listen", "must differ from api.listen".into()));
        }
        Ok(Api {
            listen: self.listen,
            weave_listen: self.weave_listen,
        })
    }
}
