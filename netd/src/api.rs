//! The CLI ↔ daemon protocol: one JSON request per line, one JSON reply.

use serde::{Deserialize, Serialize};

/// Requests larger than this are refused (and the connection closed).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";

/// `netd network create` options (also its command line); unset ones take
/// Docker's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct NetworkSpec {
    pub name: String,
    /// Subnet in CIDR form (default: next free Docker pool).
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway address (default: the subnet's first address).
    #[arg(long)]
    pub gateway: Option<String>,
    /// No traffic to or from outside the network.
    #[arg(long)]
    pub internal: bool,
    /// Inter-container communication on this network.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub icc: bool,
    /// Masquerade outbound traffic behind the host's address.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Source address for this network's masquerade.
    #[arg(long)]
    pub host_ip: Option<String>,
    #[arg(long)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    NetworkCreate(NetworkSpec),
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
    /// Compare the state with the kernel and repair what differs.
    Repair,
    /// Remove everything netd created, then stop.
    Down,
    /// Stream drop events (one JSON object per line) until the client goes.
    Monitor,
}

impl Request {
    /// The request's kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NetworkCreate(_) => "network_create",
            Self::NetworkLs => "network_ls",
            Self::NetworkInspect { .. } => "network_inspect",
            Self::NetworkConnect { .. } => "network_connect",
            Self::NetworkDisconnect { .. } => "network_disconnect",
            Self::NetworkRm { .. } => "network_rm",
            Self::ContainerCreate { .. } => "container_create",
            Self::ContainerRm { .. } => "container_rm",
            Self::ContainerLs => "container_ls",
            Self::ContainerInspect { .. } => "container_inspect",
            Self::Status => "status",
            Self::ConntrackLs => "conntrack_ls",
            Self::Repair => "repair",
            Self::Down => "down",
            Self::Monitor => "monitor",
        }
    }

    /// Whether it changes anything (logged at info; reads at debug).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Self::NetworkCreate(_)
                | Self::NetworkConnect { .. }
                | Self::NetworkDisconnect { .. }
                | Self::NetworkRm { .. }
                | Self::ContainerCreate { .. }
                | Self::ContainerRm { .. }
                | Self::Repair
                | Self::Down
        )
    }
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
