//! What netd shows of itself: `netd status` (the datapath's own view and
//! the engine's counts) and `netd conntrack ls` rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RuleEntry;

/// `netd status`: the datapath's own view, then the engine's counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(flatten)]
    pub datapath: DatapathStatus,
    pub networks: usize,
    pub containers: usize,
    pub published_ports: usize,
    /// The user's firewall rules, in order.
    #[serde(default)]
    pub user_rules: Vec<RuleEntry>,
    /// What the last reconciliation (start or `netd repair`) changed.
    pub repairs: Vec<String>,
    /// Limits this host is close to (90 % or more): a bridge's ports, a
    /// table of the datapath, the kernel's neighbour table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Veths of removed containers the kernel is still deleting (in the
    /// background: `container rm` does not wait for them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub veths_being_deleted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "datapath", rename_all = "lowercase")]
pub enum DatapathStatus {
    Ebpf(Box<EbpfStatus>),
    Iptables(RuleSetStatus),
    Nftables(RuleSetStatus),
    /// The engine's test driver: enforces nothing.
    Noop {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EbpfStatus {
    /// What the kernel offers and what netd chose.
    pub kernel: crate::features::Features,
    pub uplinks: Vec<String>,
    pub programs: Programs,
    pub maps: BTreeMap<String, MapUse>,
    /// Packets and bytes per traffic class.
    pub traffic: BTreeMap<String, Traffic>,
    /// Drops per reason (reasons with none left out).
    pub drops: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Programs {
    /// `tcx` or `clsact`, on the uplinks.
    pub attach: crate::features::TcAttachMode,
    /// On container veths: `clsact` (see `Datapath::attach_from_container`).
    #[serde(default = "clsact")]
    pub container_attach: crate::features::TcAttachMode,
    pub tc: Vec<String>,
    /// `uplink_xdp` on each uplink: `native`, `generic`, or `off (why)`.
    #[serde(default)]
    pub xdp: BTreeMap<String, String>,
    pub cgroup: Vec<String>,
    pub container_links: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapUse {
    pub entries: usize,
    pub capacity: u32,
    /// Entries evicted to make room (conntrack), since the table was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSetStatus {
    /// netd's rules per table (iptables) or per chain (nftables).
    pub rules: BTreeMap<String, usize>,
    pub ports: usize,
    /// nftables: drops per reason (the eBPF datapath's names), from the
    /// drop rules' named counters; reasons with none left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, u64>,
}

/// One direction of a tracked connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackRow {
    pub proto: IpProto,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    /// What the packets of this direction are rewritten to.
    pub translated_src: std::net::SocketAddr,
    pub translated_dst: std::net::SocketAddr,
    pub direction: FlowDirection,
    pub nat: NatKind,
    pub expires_in_s: i64,
}

/// A packet's transport protocol (`tcp`, `udp`, `icmp`, else its number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpProto {
    Tcp,
    Udp,
    Icmp,
    #[serde(untagged)]
    Other(u8),
}

impl IpProto {
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            1 => Self::Icmp,
            n => Self::Other(n),
        }
    }
}

impl std::fmt::Display for IpProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmp => f.write_str("icmp"),
            Self::Other(n) => write!(f, "{n}"),
        }
    }
}

/// Which direction of a connection a conntrack entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDirection {
    Original,
    Reply,
}

impl FlowDirection {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Reply => "reply",
        }
    }
}

/// The translation a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatKind {
    #[serde(rename = "")]
    None,
    #[serde(rename = "snat")]
    Snat,
    #[serde(rename = "dnat")]
    Dnat,
    #[serde(rename = "snat+dnat")]
    Both,
}

impl NatKind {
    pub const fn of(snat: bool, dnat: bool) -> Self {
        match (snat, dnat) {
            (false, false) => Self::None,
            (true, false) => Self::Snat,
            (false, true) => Self::Dnat,
            (true, true) => Self::Both,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Snat => "snat",
            Self::Dnat => "dnat",
            Self::Both => "snat+dnat",
        }
    }
}

fn clsact() -> crate::features::TcAttachMode {
    crate::features::TcAttachMode::Clsact
}
