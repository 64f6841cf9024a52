//! `[node]`: who this node is.

use super::{Env, Invalid};
use crate::names::printable;
use crate::wire::{control, ether};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique name of this node in the cluster; default: a MAC-style name derived
    /// from the host name (as Weave Net names peers).
    pub name: Option<String>,
    /// Human-readable name; default: the host name.
    pub nickname: Option<String>,
}

/// This node, as the rest of tunloom knows it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub nickname: String,
    /// The MAC its VXLAN frames come from, derived from the name.
    pub mac: ether::Address,
}

impl NodeSection {
    pub fn validate(&self, env: &dyn Env) -> Result<Node, Invalid> {
        let host = env.hostname();
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| ether::Address::for_node(&host).to_string());
        if name.is_empty() || name.len() > control::MAX_NAME_LEN || !printable(&name) {
            return Err(Invalid::new(
                "node.name",
                format!("must be 1 to {} printable bytes", control::MAX_NAME_LEN),
            ));
        }
        if self.nickname.as_deref().is_some_and(|n| !printable(n)) {
            return Err(Invalid::new(
                "node.nickname",
                "must be printable (no control characters)".into(),
            ));
        }
        let nickname = self.nickname.clone().unwrap_or(host);
        let nickname: String = nickname.chars().take(control::MAX_NAME_LEN).collect();
        Ok(Node {
            mac: ether::Address::for_node(&name),
            name,
            nickname,
        })
    }
}
