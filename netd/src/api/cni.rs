//! The requests the CNI plugin forwards and what the engine answers.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{NetworkSpec, PublishedPort};

/// The network a CNI request is for, as the conflist describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniNetwork {
    /// The netd network (the conflist's `network`, else its `name`).
    pub network: String,
    /// Made with these options on first use if netd has no such network
    /// (a conflist with a host-local-style `ipam.subnet`); else it must
    /// exist, and a subnet given must be its subnet.
    #[serde(default)]
    pub create: Option<NetworkSpec>,
}

/// CNI ADD or CHECK: one interface of one container on one network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniAttach {
    #[serde(flatten)]
    pub network: CniNetwork,
    pub container_id: String,
    pub ifname: String,
    /// The container's network namespace (a path).
    pub netns: String,
    /// The address asked for (`CNI_ARGS` `IP=`, or the `ips` capability).
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// The IPv6 address asked for (the `ips` capability), on a network
    /// with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
    /// From the `portMappings` capability.
    #[serde(default)]
    pub ports: Vec<crate::portspec::PortSpec>,
    /// CHECK: the address the runtime holds from ADD's result, if it sent one.
    #[serde(default)]
    pub expect_ip: Option<IpAddr>,
    /// Names the container answers to on the network's resolver: the
    /// runtime's `K8S_POD_NAME` and its `aliases` capability for this
    /// network (Podman sends the container's short ID and network aliases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// Which attachment a CNI DEL or GC names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDetach {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// What ADD made (and CHECK found): the plugin shapes the CNI result from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub bridge: String,
    pub host_veth: String,
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// None on internal networks (no default route).
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The interface's IPv6 side (address, prefix length, gateway), on a
    /// network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<CniIpv6>,
    pub mtu: u32,
    pub ports: Vec<PublishedPort>,
    /// The resolver the container asks (the result's `dns`), on networks
    /// with name resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniIpv6 {
    pub ip: std::net::Ipv6Addr,
    pub prefix_len: u8,
    /// None on internal networks (no default route).
    pub gateway: Option<std::net::Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniCollected {
    /// The attachments GC removed, as `CONTAINERID/IFNAME`.
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniReady {
    pub network: String,
}
