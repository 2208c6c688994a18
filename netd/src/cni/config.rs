//! What a runtime hands netd's CNI plugin: the environment (`CNI_*`) and
//! the network configuration on stdin, typed. Unknown keys are ignored (as
//! every CNI plugin does: conflists carry other plugins' options).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::Deserialize;

use super::{Failure, code};
use crate::{
    api::{CniNetwork, NetworkSpec},
    portspec::{PortSpec, Proto},
};

/// The spec versions netd speaks; results are shaped for the one asked for.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The plugin's entry of the conflist, with what the runtime adds.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The netd network (default: the conflist's `name`).
    #[serde(default)]
    pub network: Option<String>,
    /// The daemon's socket (default: /run/netd/netd.sock).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// A host-local-style subnet: the network is made with it on first use.
    #[serde(default)]
    pub ipam: Option<Ipam>,
    /// Options for the network made on first use (as `netd network create`).
    #[serde(default)]
    pub routed_cidrs: Vec<String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub icc: Option<bool>,
    #[serde(default)]
    pub masquerade: Option<bool>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// CHECK (and DEL): the result ADD returned.
    #[serde(default)]
    pub prev_result: Option<PrevResult>,
    /// GC: every attachment the runtime still uses.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Ipam {
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// host-local's form: `[[{"subnet": …, "gateway": …}]]`; netd takes one.
    #[serde(default)]
    pub ranges: Vec<Vec<Range>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Range {
    pub subnet: String,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The `ips` capability: addresses asked for (`10.88.0.5/24` or bare).
    #[serde(default)]
    pub ips: Vec<String>,
    /// The `aliases` capability: network name -> the container's names on it.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
}

/// One port mapping. Podman sends the documented camelCase keys; containerd
/// and nerdctl send go-cni's Go field names (`HostPort`…), untagged.
#[derive(Debug, Default, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort", alias = "HostPort", default)]
    pub host_port: i64,
    #[serde(rename = "containerPort", alias = "ContainerPort", default)]
    pub container_port: i64,
    #[serde(rename = "protocol", alias = "Protocol", default)]
    pub protocol: String,
    #[serde(rename = "hostIP", alias = "HostIP", alias = "hostIp", default)]
    pub host_ip: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub ips: Vec<PrevIp>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PrevIp {
    pub address: String,
}

#[derive(Debug, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, Failure> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|err| {
            Failure::new(
                code::DECODING,
                format!("the network configuration is not valid JSON: {err}"),
            )
        })?;
        if conf.cni_version.is_empty() {
            return Err(Failure::new(
                code::INVALID_NETWORK_CONFIG,
                "the network configuration has no cniVersion",
            ));
        }
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(Failure::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "CNI version {} is not supported (netd speaks {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.name.is_empty() {
            return Err(Failure::new(
                code::INVALID_NETWORK_CONFIG,
                "the network configuration has no name",
            ));
        }
        Ok(conf)
    }

    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| crate::api::DEFAULT_SOCKET.into())
    }

    /// The names the runtime gives the container on this network.
    pub fn aliases(&self) -> Vec<String> {
        self.runtime_config
            .aliases
            .get(&self.name)
            .cloned()
            .unwrap_or_default()
    }

    pub fn network_name(&self) -> String {
        self.network.clone().unwrap_or_else(|| self.name.clone())
    }

    /// The network the request is for, with the options to make it if the
    /// conflist gives a subnet.
    pub fn network(&self) -> Result<CniNetwork, Failure> {
        let network = self.network_name();
        // host-local's dual stack: one range set per family, netd takes
        // the first range of each.
        let ranges: Vec<(String, Option<String>)> = match &self.ipam {
            Some(ipam) => match &ipam.subnet {
                Some(subnet) => vec![(subnet.clone(), ipam.gateway.clone())],
                None => ipam
                    .ranges
                    .iter()
                    .filter_map(|set| set.first())
                    .map(|r| (r.subnet.clone(), r.gateway.clone()))
                    .collect(),
            },
            None => Vec::new(),
        };
        let is_v6 = |(subnet, _): &&(String, Option<String>)| subnet.contains(':');
        let v4: Vec<_> = ranges.iter().filter(|r| !is_v6(r)).collect();
        let v6: Vec<_> = ranges.iter().filter(is_v6).collect();
        if v4.len() > 1 || v6.len() > 1 {
            return Err(Failure::new(
                code::INVALID_NETWORK_CONFIG,
                "ipam.ranges: netd takes one range set per address family (one IPv4, one IPv6)",
            ));
        }
        let (subnet, gateway) = match v4.first() {
            Some((subnet, gateway)) => (Some(subnet.clone()), gateway.clone()),
            None => (None, None),
        };
        let (subnet6, gateway6) = match v6.first() {
            Some((subnet, gateway)) => (Some(subnet.clone()), gateway.clone()),
            None => (None, None),
        };
        if subnet.is_none() && subnet6.is_some() {
            return Err(Failure::new(
                code::INVALID_NETWORK_CONFIG,
                "ipam: an IPv6 range needs an IPv4 one beside it (netd has no IPv6-only \
                 networks yet)",
            ));
        }
        if subnet.is_none()
            && (!self.routed_cidrs.is_empty()
                || self.internal
                || self.icc.is_some()
                || self.masquerade.is_some()
                || self.mtu.is_some()
                || self.bridge.is_some())
        {
            return Err(Failure::new(
                code::INVALID_NETWORK_CONFIG,
                "network options (routedCidrs, internal, icc, masquerade, mtu, bridge) need \
                 ipam.subnet: they apply when netd makes the network on first use",
            ));
        }
        let invalid = |what: &str, text: &str| {
            Failure::new(
                code::INVALID_NETWORK_CONFIG,
                format!(
                    "{what} {text:?} is not {}",
                    if what.contains("gateway") {
                        "an address"
                    } else {
                        "a CIDR"
                    }
                ),
            )
        };
        let create = match subnet {
            Some(subnet) => Some(NetworkSpec {
                subnet: Some(
                    subnet
                        .parse()
                        .map_err(|_| invalid("ipam subnet", &subnet))?,
                ),
                gateway: match gateway {
                    Some(g) => Some(g.parse().map_err(|_| invalid("ipam gateway", &g))?),
                    None => None,
                },
                subnet6: match subnet6 {
                    Some(s) => Some(s.parse().map_err(|_| invalid("ipam subnet", &s))?),
                    None => None,
                },
                gateway6: match gateway6 {
                    Some(g) => Some(g.parse().map_err(|_| invalid("ipam gateway", &g))?),
                    None => None,
                },
                internal: self.internal,
                icc: self.icc.unwrap_or(true),
                masquerade: self.masquerade.unwrap_or(true),
                mtu: self.mtu,
                bridge: self.bridge.clone(),
                routed_cidrs: self
                    .routed_cidrs
                    .iter()
                    .map(|c| c.parse().map_err(|_| invalid("routedCidrs entry", c)))
                    .collect::<Result<_, _>>()?,
                ..NetworkSpec::named(network.clone())
            }),
            None => None,
        };
        Ok(CniNetwork { network, create })
    }

    /// The port mappings as netd's port specs; a bad one refuses the ADD.
    /// Runtimes list a range (`-p 8000-8999:8000-8999`) one port at a
    /// time: consecutive ones become one range again, so the request to
    /// the daemon stays small.
    pub fn ports(&self) -> Result<Vec<PortSpec>, Failure> {
        let mut specs: Vec<PortSpec> = Vec::new();
        for mapping in &self.runtime_config.port_mappings {
            let spec = mapping.to_spec()?;
            match specs.last_mut() {
                Some(last) if extends(last, &spec) => {
                    let (host, container) = (spec.host_ports.unwrap(), spec.container_ports);
                    last.host_ports = last.host_ports.map(|(start, _)| (start, host.1));
                    last.container_ports.1 = container.1;
                }
                _ => specs.push(spec),
            }
        }
        Ok(specs)
    }

    /// The addresses asked for through the `ips` capability, if any: one
    /// per family, (IPv4, IPv6).
    pub fn requested_ips(&self) -> Result<(Option<IpAddr>, Option<IpAddr>), Failure> {
        let mut v4 = None;
        let mut v6 = None;
        for ip in &self.runtime_config.ips {
            let bare = ip.split('/').next().unwrap_or(ip);
            let parsed = bare.parse::<IpAddr>().map_err(|_| {
                Failure::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!("runtimeConfig.ips: {ip:?} is not an IP address"),
                )
            })?;
            let slot = if parsed.is_ipv4() { &mut v4 } else { &mut v6 };
            if slot.replace(parsed).is_some() {
                return Err(Failure::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!(
                        "runtimeConfig.ips asks for {} addresses; a netd network gives one per \
                         interface and address family",
                        self.runtime_config.ips.len()
                    ),
                ));
            }
        }
        Ok((v4, v6))
    }

    /// CHECK: the address ADD's result gave, if the runtime sent it.
    pub fn prev_ip(&self) -> Option<IpAddr> {
        let prev = self.prev_result.as_ref()?.ips.first()?;
        // netd's networks are IPv4: an IPv6 first address is not netd's.
        let ip: IpAddr = prev.address.split('/').next()?.parse().ok()?;
        ip.is_ipv4().then_some(ip)
    }
}

/// Whether `next` maps the ports right after `last`'s, one to one.
fn extends(last: &PortSpec, next: &PortSpec) -> bool {
    let (Some(last_host), Some(next_host)) = (last.host_ports, next.host_ports) else {
        return false;
    };
    last.proto == next.proto
        && last.host_ip == next.host_ip
        && last_host.1.checked_add(1) == Some(next_host.0)
        && last.container_ports.1.checked_add(1) == Some(next.container_ports.0)
}

impl PortMapping {
    fn to_spec(&self) -> Result<PortSpec, Failure> {
        let bad = |what: String| {
            Failure::new(
                code::INVALID_NETWORK_CONFIG,
                format!("port mapping: {what}"),
            )
        };
        let container_port = u16::try_from(self.container_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                bad(format!(
                    "container port {} is not in 1-65535",
                    self.container_port
                ))
            })?;
        let host_port = u16::try_from(self.host_port)
            .map_err(|_| bad(format!("host port {} is not in 0-65535", self.host_port)))?;
        let proto = match self.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                return Err(bad(format!(
                    "protocol {other:?}: netd publishes tcp and udp"
                )));
            }
        };
        let host_ip = match self.host_ip.as_str() {
            "" => Ipv4Addr::UNSPECIFIED,
            ip => ip
                .parse()
                .map_err(|_| bad(format!("host IP {ip:?} is not an IPv4 address")))?,
        };
        Ok(PortSpec {
            host_ip,
            // 0: netd picks a free one, as for `-p 80`.
            host_ports: (host_port > 0).then_some((host_port, host_port)),
            container_ports: (container_port, container_port),
            proto,
            ipv4_only: !self.host_ip.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_key_spellings_and_consecutive_ports_become_ranges() {
        let conf = NetConf::parse(
            br#"{"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"portMappings": [
                {"hostPort": 8000, "containerPort": 80, "protocol": "tcp"},
                {"HostPort": 8001, "ContainerPort": 81, "Protocol": "TCP", "HostIP": ""},
                {"hostPort": 8002, "containerPort": 82, "protocol": "udp"},
                {"hostPort": 9000, "containerPort": 90, "protocol": "tcp", "hostIP": "127.0.0.1"},
                {"hostPort": 0, "containerPort": 53, "protocol": "UDP"}
            ]}}"#,
        )
        .unwrap();
        let spec = |host: Option<(u16, u16)>, container: (u16, u16), proto, ip: &str| PortSpec {
            host_ip: ip.parse().unwrap(),
            host_ports: host,
            container_ports: container,
            proto,
            ipv4_only: ip != "0.0.0.0",
        };
        assert_eq!(
            conf.ports().unwrap(),
            vec![
                spec(Some((8000, 8001)), (80, 81), Proto::Tcp, "0.0.0.0"),
                spec(Some((8002, 8002)), (82, 82), Proto::Udp, "0.0.0.0"),
                spec(Some((9000, 9000)), (90, 90), Proto::Tcp, "127.0.0.1"),
                spec(None, (53, 53), Proto::Udp, "0.0.0.0"),
            ]
        );
    }
}
