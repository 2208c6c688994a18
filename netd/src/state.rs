//! What netd manages, saved atomically so a crash never leaves half a file.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    cidr::{Cidr, Cidr6},
    portspec::Proto,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub networks: BTreeMap<String, Network>,
    pub containers: BTreeMap<String, Container>,
    pub next_network_id: u32,
    /// The user's firewall rules, in order (first match wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::rule::RuleRecord>,
    #[serde(default)]
    pub next_rule_id: u32,
    /// Veths of removed containers the kernel was still deleting when this
    /// was saved (a restart deletes whatever a crash left of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dying_links: Vec<String>,
    /// Their addresses: a restart forgets the connections a crash left
    /// remembered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dying_addresses: Vec<Ipv4Addr>,
    /// This host's ID, made once (random): its IPv6 ULA pool derives from
    /// it, as Docker's derives from its engine ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: u32,
    pub subnet: Cidr,
    pub gateway: Ipv4Addr,
    /// Where dynamic addresses come from (`--ip-range`); unset: the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
    pub bridge: String,
    pub internal: bool,
    pub icc: bool,
    pub masquerade: bool,
    pub host_ip: Option<Ipv4Addr>,
    pub mtu: u32,
    /// Host address ports are published on when `-p` names none (Docker's
    /// `com.docker.network.bridge.host_binding_ipv4`); unset: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_ip: Option<Ipv4Addr>,
    /// Docker's network ID, for networks made through the Docker plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_id: Option<String>,
    /// Routed without NAT both ways (see `NetworkSpec::routed_cidrs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed_cidrs: Vec<Cidr>,
    /// Docker 28's `gateway_mode_ipv4`: how the network meets the outside.
    #[serde(default, skip_serializing_if = "GatewayMode::is_nat")]
    pub gateway_mode_ipv4: GatewayMode,
    /// Docker 28.2's trusted host interfaces: what arrives on them may
    /// reach published container ports at the container's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_host_interfaces: Vec<String>,
    /// The network's IPv6 side (`--ipv6`); none: IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<NetworkIpv6>,
    /// Set while a create or remove is under way (see [`Pending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// A dual-stack network's IPv6 subnet and gateway (on the bridge, beside
/// the IPv4 gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkIpv6 {
    pub subnet: Cidr6,
    pub gateway: Ipv6Addr,
}

/// Docker 28's gateway modes (`com.docker.network.bridge.gateway_mode_ipv4`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Masquerade out, published ports by DNAT on the host's addresses,
    /// container addresses closed to direct access.
    #[default]
    Nat,
    /// As `nat`, but every port of every container is open to direct
    /// access (no per-port filtering).
    NatUnprotected,
    /// No NAT: containers keep their address out, published container
    /// ports (and ICMP) are open at the container's address, no host port.
    Routed,
    /// An internal network with no address on the host's bridge.
    Isolated,
}

impl GatewayMode {
    pub fn is_nat(&self) -> bool {
        *self == Self::Nat
    }
}

impl std::fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nat => "nat",
            Self::NatUnprotected => "nat-unprotected",
            Self::Routed => "routed",
            Self::Isolated => "isolated",
        })
    }
}

impl std::str::FromStr for GatewayMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "nat" => Self::Nat,
            "nat-unprotected" => Self::NatUnprotected,
            "routed" => Self::Routed,
            "isolated" => Self::Isolated,
            // Docker's words (its modes are matched exactly, case and all).
            other => return Err(format!("unknown gateway mode {other}")),
        })
    }
}

impl Network {
    /// Whether the bridge carries the gateway address (not on `isolated`
    /// networks, whose containers reach nothing but each other).
    pub fn gateway_on_bridge(&self) -> bool {
        self.gateway_mode_ipv4 != GatewayMode::Isolated
    }

    /// The prefix length the gateway address takes on the bridge; `None`:
    /// the bridge has no address.
    pub fn bridge_prefix(&self) -> Option<u8> {
        self.gateway_on_bridge().then(|| self.subnet.prefix_len())
    }

    /// The IPv6 gateway and prefix length the bridge carries, on a network
    /// with IPv6 whose bridge has addresses.
    pub fn bridge_ipv6(&self) -> Option<(Ipv6Addr, u8)> {
        let v6 = self.ipv6?;
        self.gateway_on_bridge()
            .then(|| (v6.gateway, v6.subnet.prefix_len()))
    }

    /// Published ports open at the container's address, with no host port
    /// and no DNAT (`routed`, as Docker 27).
    pub fn publishes_without_nat(&self) -> bool {
        self.gateway_mode_ipv4 == GatewayMode::Routed && !self.internal
    }
}

/// An intent record: written before the kernel is touched, cleared when the
/// operation is done. A daemon killed in between finds it at start and rolls
/// the create back or finishes the remove, so no name stays half-made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    Creating,
    Removing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Bridge,
    Host,
    None,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bridge => "bridge",
            Self::Host => "host",
            Self::None => "none",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub mode: NetworkMode,
    pub attachments: Vec<Attachment>,
    pub ports: Vec<PublishedPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// Host-side veths an operation under way is creating (named before
    /// they exist): a daemon killed meanwhile deletes them at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_links: Vec<String>,
    /// Whose network namespace this is: netd's own, or a runtime's.
    #[serde(default, skip_serializing_if = "Sandbox::is_netd")]
    pub sandbox: Sandbox,
}

/// Who made a container's network namespace and moves its interface in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Sandbox {
    /// netd: `/run/netns/NAME`, made and removed with the container.
    #[default]
    Netd,
    /// Docker: one endpoint of a container on one network. netd makes the
    /// veth; Docker moves its container end into the sandbox at Join.
    Docker {
        endpoint_id: String,
        /// The sandbox's namespace path, once joined.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox_key: Option<String>,
    },
    /// A CNI runtime (Podman, containerd, a kubelet): one interface of one
    /// container on one network. netd makes the veth and moves and
    /// configures its container end in the runtime's namespace.
    Cni {
        container_id: String,
        ifname: String,
        /// The namespace path the runtime gave (`CNI_NETNS`).
        netns: String,
    },
}

impl Sandbox {
    pub fn is_netd(&self) -> bool {
        *self == Self::Netd
    }

    /// The runtime's namespace path, when netd knows it.
    pub fn runtime_netns(&self) -> Option<&str> {
        match self {
            Self::Netd => None,
            Self::Docker { sandbox_key, .. } => sandbox_key.as_deref(),
            Self::Cni { netns, .. } => Some(netns),
        }
    }
}

/// A container's interface on one network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    /// Name inside the container (eth0, eth1, ...).
    pub ifname: String,
    /// Host side of the veth.
    pub host_veth: String,
    /// Other names the container answers to on this network (`--alias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Docker 28's `--gw-priority`: of the networks with a gateway, the
    /// highest gives the default route (the first attached among equals).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gw_priority: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A published port; on a routed network `host_port` is 0 and `host_ip`
/// unspecified: the container port is open at the container's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub proto: Proto,
    /// Also published on the host's IPv6 addresses (`[::]`, the same host
    /// port) to this address: a port on all addresses of a network with
    /// IPv6 (Docker 27 publishes both families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip6: Option<std::net::Ipv6Addr>,
}

impl PublishedPort {
    /// Opened at the container's address (a routed network's), not
    /// translated from a host port.
    pub fn is_direct(&self) -> bool {
        self.host_port == 0
    }
}

impl State {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = state_file(dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes to a temporary file, fsyncs it, renames it over the old one and
    /// fsyncs the directory: after a crash the file is the old or the new state.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join("state.json.tmp");
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        // Compact: with 1,000 containers the file is ~40% smaller, and it is
        // written (and synced) twice per container create and remove.
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_data()?;
        fs::rename(&tmp, state_file(dir))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    pub fn published(&self) -> impl Iterator<Item = &PublishedPort> {
        self.containers.values().flat_map(|c| c.ports.iter())
    }

    /// Networks and containers as users see them: without operations under
    /// way (those exist only inside one request, or after a crash until the
    /// next start has settled them).
    pub fn live_networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values().filter(|n| n.pending.is_none())
    }

    pub fn live_containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values().filter(|c| c.pending.is_none())
    }
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

#[cfg(test)]
impl Network {
    /// A network with Docker's defaults on `subnet` (gateway its first
    /// address), for tests to change what they are about.
    pub(crate) fn for_tests(name: &str, id: u32, subnet: &str, bridge: &str) -> Self {
        let subnet: crate::cidr::Cidr = subnet.parse().unwrap();
        Network {
            name: name.into(),
            id,
            subnet,
            gateway: subnet.first_host().unwrap(),
            ip_range: None,
            bridge: bridge.into(),
            internal: false,
            icc: true,
            masquerade: true,
            host_ip: None,
            mtu: 1500,
            binding_ip: None,
            docker_id: None,
            routed_cidrs: Vec::new(),
            gateway_mode_ipv4: GatewayMode::Nat,
            trusted_host_interfaces: Vec::new(),
            ipv6: None,
            pending: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip_atomically() {
        let dir = std::env::temp_dir().join(format!("netd-state-{}", std::process::id()));
        let mut state = State::default();
        assert_eq!(State::load(&dir).unwrap(), state);
        state.networks.insert(
            "bridge".into(),
            Network {
                routed_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                gateway_mode_ipv4: GatewayMode::Routed,
                ..Network::for_tests("bridge", 1, "172.17.0.0/16", "netd0")
            },
        );
        state.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), state);
        assert!(!dir.join("state.json.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
