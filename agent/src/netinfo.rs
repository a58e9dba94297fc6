//! This node's identity: hostname and the IP address to publish.

use std::net::IpAddr;

use serde::Serialize;

/// Hostname and primary IP of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub hostname: String,
    pub ip: Option<IpAddr>,
}

/// Discovers the node identity; `ip_override` (`--node-ip`, `AMLX_NODE_IP`) wins.
pub fn discover(ip_override: Option<IpAddr>) -> NodeInfo {
    NodeInfo {
        hostname: String::new(),
        ip: ip_override,
    }
}
