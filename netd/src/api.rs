//! The CLI ↔ daemon protocol: one JSON request per line, one JSON reply.

use serde::{Deserialize, Serialize};

/// Requests larger than this are refused (and the connection closed).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    NetworkCreate {
        name: String,
        subnet: Option<String>,
        gateway: Option<String>,
        internal: bool,
        icc: bool,
        masquerade: bool,
        host_ip: Option<String>,
        mtu: Option<u32>,
    },
    NetworkLs,
    NetworkInspect {
        name: String,
    },
    NetworkConnect {
        network: String,
        container: String,
        ip: Option<String>,
    },
    NetworkDisconnect {
        network: String,
        container: String,
    },
    NetworkRm {
        name: String,
    },
    ContainerCreate {
        name: String,
        network: String,
        ip: Option<String>,
        publish: Vec<String>,
    },
    ContainerRm {
        name: String,
    },
    ContainerLs,
    ContainerInspect {
        name: String,
    },
    Status,
    ConntrackLs,
    /// Remove everything netd created, then stop.
    Down,
    /// Stream drop events (one JSON object per line) until the client goes.
    Monitor,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            data: serde_json::Value::Null,
        }
    }
}
