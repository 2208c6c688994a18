//! The typed API of netd's engine, and its socket protocol: one JSON
//! [`Request`] per line, one JSON [`Response`] back. Every front-end (the
//! CLI socket, the Docker and CNI plugins) speaks these types; no untyped
//! JSON crosses the engine's boundary.

use std::net::IpAddr;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

mod cni;
mod status;

pub use cni::*;
pub use status::*;

pub use crate::state::{Attachment, Container, GatewayMode, Network, NetworkMode, PublishedPort};

/// Requests larger than this are refused (and the connection closed).
/// (Large enough for `netd rule load` with ten thousands of rules.)
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_SOCKET: &str = "/run/netd/netd.sock";

/// `netd network create` options; unset ones take Docker's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Subnet (default: next free Docker pool).
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Gateway address (default: the subnet's first address).
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The part of the subnet dynamic addresses come from (Docker's
    /// `--ip-range`); a static address may be anywhere in the subnet.
    #[serde(default)]
    pub ip_range: Option<IpNet>,
    /// No traffic to or from outside the network.
    #[serde(default)]
    pub internal: bool,
    /// Inter-container communication on this network.
    #[serde(default = "yes")]
    pub icc: bool,
    /// Masquerade outbound traffic behind the host's address.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Source address for this network's masquerade.
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The bridge's name (default: `br-` and 12 hex digits).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Host address `-p` publishes on when it names none (default: all).
    #[serde(default)]
    pub binding_ip: Option<IpAddr>,
    /// Set by the Docker plugin: the network's Docker ID.
    #[serde(default)]
    pub docker_id: Option<String>,
    /// CIDRs routed without NAT both ways (a cluster's pod range): traffic
    /// to them keeps its source address, traffic from them may reach the
    /// containers as if it came from inside.
    #[serde(default)]
    pub routed_cidrs: Vec<IpNet>,
    /// Docker 28's gateway mode for IPv4 (default `nat`).
    #[serde(default)]
    pub gateway_mode_ipv4: GatewayMode,
    /// Interfaces whose traffic may reach published container ports at the
    /// container's address (Docker 28.2; gateway mode `nat` only).
    #[serde(default)]
    pub trusted_host_interfaces: Vec<String>,
    /// IPv6 beside IPv4 (`--ipv6`; an IPv6 subnet or gateway implies it,
    /// as in Docker 25).
    #[serde(default)]
    pub ipv6: bool,
    /// IPv4 (Docker 28's `--ipv4=false` makes an IPv6-only network, which
    /// netd refuses for now).
    #[serde(default = "yes")]
    pub ipv4: bool,
    /// IPv6 subnet (default: the next /64 of the host's ULA prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<IpNet>,
    /// IPv6 gateway (default: the IPv6 subnet's first host address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<IpAddr>,
}

fn yes() -> bool {
    true
}

impl NetworkSpec {
    /// A network with Docker's defaults.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            subnet: None,
            gateway: None,
            ip_range: None,
            internal: false,
            icc: true,
            masquerade: true,
            host_ip: None,
            mtu: None,
            bridge: None,
            binding_ip: None,
            docker_id: None,
            routed_cidrs: Vec::new(),
            gateway_mode_ipv4: GatewayMode::Nat,
            trusted_host_interfaces: Vec::new(),
            ipv6: false,
            ipv4: true,
            subnet6: None,
            gateway6: None,
        }
    }

    /// Whether the network gets an IPv6 side.
    pub fn wants_ipv6(&self) -> bool {
        self.ipv6 || self.subnet6.is_some() || self.gateway6.is_some()
    }
}

/// `netd container create` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// A network name, `host` or `none`.
    pub network: String,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// A static IPv6 address (`--ip6`), on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// Ports to publish (`-p`, parsed).
    #[serde(default)]
    pub publish: Vec<crate::portspec::PortSpec>,
    /// Other names on its network, for the resolver (`--alias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Which network gives the default route once it is on several
    /// (`--gw-priority`, highest first).
    #[serde(default)]
    pub gw_priority: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip6: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        aliases: Vec<String>,
        #[serde(default)]
        gw_priority: i32,
    },
    NetworkDisconnect {
        network: String,
        container: String,
    },
    NetworkRm {
        name: String,
    },
    ContainerCreate(ContainerSpec),
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
    /// CNI ADD, forwarded by netd's CNI plugin.
    CniAdd(CniAttach),
    /// CNI CHECK: the attachment is as ADD left it.
    CniCheck(CniAttach),
    /// CNI DEL: done when the attachment is gone (also when it never was).
    CniDel(CniDetach),
    /// CNI GC: removes this network's attachments not in `valid`.
    CniGc {
        network: String,
        valid: Vec<CniDetach>,
    },
    /// CNI STATUS: whether ADD can work on this network now.
    CniStatus(CniNetwork),
    /// Adds a user firewall rule (at `position`, 1-based; default last).
    RuleAdd(RuleAdd),
    /// Removes the user rule with this ID.
    RuleRm {
        id: u32,
    },
    RuleLs,
    /// Replaces every user rule with `rules`, in one step (all or nothing).
    RuleLoad {
        rules: Vec<crate::rule::UserRule>,
    },
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
            Self::ContainerCreate(_) => "container_create",
            Self::ContainerRm { .. } => "container_rm",
            Self::ContainerLs => "container_ls",
            Self::ContainerInspect { .. } => "container_inspect",
            Self::Status => "status",
            Self::ConntrackLs => "conntrack_ls",
            Self::Repair => "repair",
            Self::Down => "down",
            Self::Monitor => "monitor",
            Self::CniAdd(_) => "cni_add",
            Self::CniCheck(_) => "cni_check",
            Self::CniDel(_) => "cni_del",
            Self::CniGc { .. } => "cni_gc",
            Self::CniStatus(_) => "cni_status",
            Self::RuleAdd(_) => "rule_add",
            Self::RuleRm { .. } => "rule_rm",
            Self::RuleLs => "rule_ls",
            Self::RuleLoad { .. } => "rule_load",
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
                | Self::ContainerCreate(_)
                | Self::ContainerRm { .. }
                | Self::Repair
                | Self::Down
                | Self::CniAdd(_)
                | Self::CniDel(_)
                | Self::CniGc { .. }
                | Self::RuleAdd(_)
                | Self::RuleRm { .. }
                | Self::RuleLoad { .. }
        )
    }
}

/// `netd rule add`: a rule and where it goes in the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAdd {
    #[serde(flatten)]
    pub rule: crate::rule::UserRule,
    /// 1-based place in the list (the rule there and after move down);
    /// default: last.
    #[serde(default)]
    pub position: Option<u32>,
}

/// A user rule as `netd rule ls` and `netd status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    /// 1-based place in the list: the first rule that matches decides.
    pub position: u32,
    pub id: u32,
    #[serde(flatten)]
    pub rule: crate::rule::UserRule,
    /// False while the network it names does not exist (it matches nothing).
    pub active: bool,
    /// The rule in words, e.g. `deny from 203.0.113.0/24 tcp port 5432`.
    pub text: String,
}

/// A container on a network, as `network inspect` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkMember {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkDetails {
    #[serde(flatten)]
    pub network: Network,
    pub containers: Vec<NetworkMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub disconnected: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    pub repairs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub down: bool,
}

/// One line of `netd monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MonitorEvent {
    Drop(DropRecord),
    /// This many drops were not shown: the datapath samples its events
    /// past a budget (10,000 a second per CPU), or the monitor fell behind.
    Lost {
        lost_events: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    pub reason: String,
    pub interface: String,
    /// `tc`, or `xdp` when dropped before the kernel built an skb.
    #[serde(default)]
    pub hook: String,
    pub proto: u8,
    pub src: String,
    pub dst: String,
}

/// What the engine answers, one variant per kind of reply, tagged with
/// its type on the wire (`{"type": "network", "data": {…}}`), so a client
/// decodes it without knowing which request it sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum Reply {
    Network(Network),
    Networks(Vec<Network>),
    NetworkDetails(NetworkDetails),
    Attachment(Attachment),
    Disconnected(Disconnected),
    Container(Container),
    Containers(Vec<Container>),
    Removed(Removed),
    Status(Box<Status>),
    Repair(RepairReport),
    Conntrack(Vec<ConntrackRow>),
    Stopped(Stopped),
    CniAttachment(Box<CniAttachment>),
    CniCollected(CniCollected),
    CniReady(CniReady),
    Rule(RuleEntry),
    Rules(Vec<RuleEntry>),
}

impl Reply {
    /// The type on the wire, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Network(_) => "network",
            Self::Networks(_) => "networks",
            Self::NetworkDetails(_) => "network-details",
            Self::Attachment(_) => "attachment",
            Self::Disconnected(_) => "disconnected",
            Self::Container(_) => "container",
            Self::Containers(_) => "containers",
            Self::Removed(_) => "removed",
            Self::Status(_) => "status",
            Self::Repair(_) => "repair",
            Self::Conntrack(_) => "conntrack",
            Self::Stopped(_) => "stopped",
            Self::CniAttachment(_) => "cni-attachment",
            Self::CniCollected(_) => "cni-collected",
            Self::CniReady(_) => "cni-ready",
            Self::Rule(_) => "rule",
            Self::Rules(_) => "rules",
        }
    }
}

/// The wire envelope: `{"ok":true,"data":…}` or `{"ok":false,"error":…}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The refusal's kind (`internal` for failures that are not refusals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::error::ErrorKind>,
    /// A CNI error code more precise than the kind's, when the engine gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[serde(default = "Option::default")]
    pub data: Option<T>,
}

impl<T> Response<T> {
    pub fn ok(data: T) -> Self {
        Self {
            ok: true,
            error: None,
            kind: None,
            code: None,
            data: Some(data),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            kind: None,
            code: None,
            data: None,
        }
    }

    /// A refusal (or a failure: kind `internal`), with its CNI code when
    /// the engine gave one.
    pub fn refusal(err: &anyhow::Error) -> Self {
        let refusal = crate::error::refusal_of(err);
        Self {
            kind: Some(crate::error::kind_of(err)),
            code: refusal.and_then(|r| r.cni_code),
            ..Self::error(format!("{err:#}"))
        }
    }
}

/// The monitor's first line, before any event: the stream is live.
pub const MONITOR_HELLO: &str = "monitoring drops";
