//! libnetwork's remote-driver protocol as netd reads and answers it: the
//! requests Docker sends (and their translation into netd's specs) and the
//! replies, typed (../shared/reference/docker-plugin.md).

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::network_name;
use crate::{
    api::{GatewayMode, NetworkSpec},
    portspec::{PortSpec, Proto},
};

/// The Docker options netd's networks take, as Docker's bridge driver
/// names them (`docker network create -o KEY=VALUE`).
pub const OPTION_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPTION_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPTION_BINDING_IP: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPTION_MTU: &str = "com.docker.network.driver.mtu";
pub const OPTION_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPTION_GATEWAY_MODE_IPV4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
pub const OPTION_GATEWAY_MODE_IPV6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
pub const OPTION_TRUSTED_INTERFACES: &str = "com.docker.network.bridge.trusted_host_interfaces";

/// A reply to one call; each serializes as Docker expects its method's.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum PluginReply {
    Activate {
        #[serde(rename = "Implements")]
        implements: [&'static str; 1],
    },
    Capabilities {
        #[serde(rename = "Scope")]
        scope: &'static str,
        #[serde(rename = "ConnectivityScope")]
        connectivity_scope: &'static str,
    },
    /// CreateEndpoint: only what Docker left empty may be filled in.
    CreatedEndpoint {
        #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
        interface: Option<CreatedInterface>,
    },
    OperInfo {
        #[serde(rename = "Value")]
        value: OperInfo,
    },
    Joined(Joined),
    /// `{}`: done, nothing to tell.
    Empty {},
}

#[derive(Serialize)]
pub(super) struct CreatedInterface {
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Serialize)]
pub(super) struct OperInfo {
    pub netd: String,
    pub ports: Vec<crate::state::PublishedPort>,
}

#[derive(Serialize)]
pub(super) struct Joined {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// The default route's gateway; none on internal networks.
    #[serde(rename = "Gateway", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 default route's gateway, on a network with IPv6.
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "Option::is_none")]
    pub gateway_ipv6: Option<std::net::Ipv6Addr>,
    /// Internal: no default route, and not Docker's gateway bridge either.
    #[serde(
        rename = "DisableGatewayService",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_gateway_service: bool,
}

#[derive(Serialize)]
pub(super) struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: &'static str,
}

/// The address of `172.18.0.2/16` (or a bare address).
pub(super) fn address_of(cidr: &str) -> Result<Ipv4Addr> {
    let address = cidr.split('/').next().unwrap_or_default();
    address
        .parse()
        .map_err(|_| crate::invalid!("{cidr:?} is not an IPv4 address"))
}

/// The IPv6 address of a Docker `fd00::2/64`.
pub(super) fn address6_of(cidr: &str) -> Result<std::net::Ipv6Addr> {
    let address = cidr.split('/').next().unwrap_or_default();
    address
        .parse()
        .map_err(|_| crate::invalid!("{cidr:?} is not an IPv6 address"))
}

/// strconv.ParseBool, which Docker's bridge driver uses for its options.
fn parse_bool(key: &str, value: &Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(crate::invalid!(
                "-o {key}={s}: not a boolean (true or false)"
            )),
        },
        other => Err(crate::invalid!("-o {key}: not a boolean: {other}")),
    }
}

fn option_string(key: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(crate::invalid!("-o {key}: expected a string, got {other}")),
    }
}

#[derive(Deserialize)]
pub(super) struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
}

#[derive(Deserialize)]
pub(super) struct EndpointRef {
    #[serde(rename = "EndpointID")]
    pub(super) endpoint_id: String,
}

#[derive(Deserialize)]
pub(super) struct IpamData {
    #[serde(rename = "Pool")]
    pub(super) pool: String,
    #[serde(rename = "Gateway", default)]
    pub(super) gateway: String,
}

#[derive(Deserialize)]
pub(super) struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
    #[serde(rename = "Options", default)]
    pub(super) options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<IpamData>>,
}

impl CreateNetwork {
    /// Docker's request as a netd network: Docker's subnet and gateway, the
    /// bridge driver's options; anything else refused by name.
    pub(super) fn network_spec(&self) -> Result<NetworkSpec> {
        let mut spec = NetworkSpec::named(network_name(&self.network_id));
        spec.docker_id = Some(self.network_id.clone());
        match self.ipv6_data.as_deref().unwrap_or_default() {
            [] => {}
            // Docker's IPAM gives the pool (and gateway) as it does for IPv4.
            [pool] => {
                spec.ipv6 = true;
                spec.subnet6 = Some(pool.pool.parse().map_err(|_| {
                    crate::invalid!("Docker's pool {:?} is not a subnet", pool.pool)
                })?);
                if !pool.gateway.is_empty() {
                    spec.gateway6 = Some(address6_of(&pool.gateway)?.into());
                }
            }
            pools => {
                return Err(crate::invalid!(
                    "netd takes one IPv6 subnet per network, Docker gave {}",
                    pools.len()
                ));
            }
        }
        for (key, value) in &self.options {
            match key.as_str() {
                "com.docker.network.generic" => {}
                "com.docker.network.internal" => spec.internal = parse_bool(key, value)?,
                "com.docker.network.enable_ipv6" => spec.ipv6 |= parse_bool(key, value)?,
                // Docker's own bookkeeping, not options of the driver.
                _ => {}
            }
        }
        let generic = match self.options.get("com.docker.network.generic") {
            Some(Value::Object(map)) => map.clone(),
            Some(Value::Null) | None => Default::default(),
            Some(other) => return Err(crate::invalid!("malformed network options: {other}")),
        };
        let mut gateway_mode6 = None;
        for (key, value) in &generic {
            match key.as_str() {
                OPTION_ICC => spec.icc = parse_bool(key, value)?,
                OPTION_MASQUERADE => spec.masquerade = parse_bool(key, value)?,
                OPTION_BINDING_IP => {
                    let ip = option_string(key, value)?;
                    let ip = ip
                        .parse()
                        .map_err(|_| crate::invalid!("-o {key}={ip}: not an IP address"))?;
                    spec.binding_ip = Some(ip);
                }
                OPTION_BRIDGE_NAME => spec.bridge = Some(option_string(key, value)?),
                OPTION_MTU => {
                    let mtu = option_string(key, value)?;
                    spec.mtu = Some(
                        mtu.parse()
                            .map_err(|_| crate::invalid!("-o {key}={mtu}: not a number"))?,
                    );
                }
                OPTION_GATEWAY_MODE_IPV4 => spec.gateway_mode_ipv4 = gateway_mode(key, value)?,
                // Checked as Docker checks it; without IPv6 it has no effect
                // (as in Docker, on a network without --ipv6).
                OPTION_GATEWAY_MODE_IPV6 => gateway_mode6 = Some(gateway_mode(key, value)?),
                // Colon-separated, as Docker splits it.
                OPTION_TRUSTED_INTERFACES => {
                    spec.trusted_host_interfaces = option_string(key, value)?
                        .split(':')
                        .filter(|name| !name.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                _ => {
                    return Err(crate::invalid!(
                        "unknown option -o {key}: netd takes {OPTION_ICC}, {OPTION_MASQUERADE}, \
                     {OPTION_BINDING_IP}, {OPTION_MTU}, {OPTION_BRIDGE_NAME}, \
                     {OPTION_GATEWAY_MODE_IPV4}, {OPTION_GATEWAY_MODE_IPV6} and \
                     {OPTION_TRUSTED_INTERFACES}"
                    ));
                }
            }
        }
        // IPv6 is masqueraded (NAT66) only so far: another mode must not
        // quietly become that.
        if let Some(mode) = gateway_mode6.filter(|m| *m != GatewayMode::Nat && spec.wants_ipv6()) {
            return Err(crate::invalid!(
                "-o {OPTION_GATEWAY_MODE_IPV6}={mode}: netd carries IPv6 in nat mode only so far"
            ));
        }
        let pools = self.ipv4_data.as_deref().unwrap_or_default();
        let [pool] = pools else {
            return Err(crate::invalid!(
                "netd takes one IPv4 subnet per network, Docker gave {}",
                pools.len()
            ));
        };
        let subnet = pool
            .pool
            .parse()
            .map_err(|_| crate::invalid!("Docker's pool {:?} is not a subnet", pool.pool))?;
        spec.subnet = Some(subnet);
        if !pool.gateway.is_empty() {
            spec.gateway = Some(address_of(&pool.gateway)?.into());
        }
        Ok(spec)
    }
}

/// A gateway mode option, refused in Docker's words when unknown.
fn gateway_mode(key: &str, value: &Value) -> Result<GatewayMode> {
    let text = option_string(key, value)?;
    text.parse()
        .map_err(|why| crate::invalid!("failed to parse {key} value: {text} ({why})"))
}

#[derive(Default, Deserialize)]
pub(super) struct EndpointInterface {
    #[serde(rename = "Address", default)]
    pub(super) address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub(super) address_ipv6: String,
    #[serde(rename = "MacAddress", default)]
    pub(super) mac_address: String,
}

#[derive(Deserialize)]
pub(super) struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID")]
    pub(super) endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub(super) interface: Option<EndpointInterface>,
}

#[derive(Deserialize)]
pub(super) struct Join {
    #[serde(rename = "EndpointID")]
    pub(super) endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub(super) sandbox_key: String,
}

/// One `-p` of `docker run`, as libnetwork passes it.
#[derive(Deserialize)]
pub(super) struct PortBinding {
    #[serde(rename = "Proto")]
    pub(super) proto: u8,
    #[serde(rename = "Port")]
    pub(super) port: u16,
    #[serde(rename = "HostIP", default)]
    pub(super) host_ip: String,
    #[serde(rename = "HostPort", default)]
    pub(super) host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    pub(super) host_port_end: u16,
}

#[derive(Deserialize)]
pub(super) struct ExternalConnectivity {
    #[serde(rename = "EndpointID")]
    pub(super) endpoint_id: String,
    #[serde(rename = "Options", default)]
    pub(super) options: BTreeMap<String, Value>,
}

impl ExternalConnectivity {
    pub(super) fn port_specs(&self) -> Result<Vec<PortSpec>> {
        let bindings: Vec<PortBinding> = match self.options.get("com.docker.network.portmap") {
            Some(Value::Null) | None => Vec::new(),
            Some(map) => serde_json::from_value(map.clone())
                .map_err(|err| crate::invalid!("malformed port map: {err}"))?,
        };
        bindings
            .iter()
            .map(|b| {
                let proto = match b.proto {
                    6 => Proto::Tcp,
                    17 => Proto::Udp,
                    132 => {
                        return Err(crate::invalid!(
                            "-p {}/sctp: netd publishes tcp and udp ports",
                            b.port
                        ));
                    }
                    other => {
                        return Err(crate::invalid!(
                            "-p {}: unknown protocol number {other}",
                            b.port
                        ));
                    }
                };
                let host_ip = match b.host_ip.as_str() {
                    "" => Ipv4Addr::UNSPECIFIED,
                    ip => ip.parse().map_err(|_| {
                        crate::invalid!(
                            "-p {ip}:…:{}: netd publishes on IPv4 addresses only",
                            b.port
                        )
                    })?,
                };
                if b.port == 0 {
                    return Err(crate::invalid!("-p with container port 0"));
                }
                let host_ports = match b.host_port {
                    0 => None,
                    start => Some((start, b.host_port_end.max(start))),
                };
                Ok(PortSpec {
                    host_ip,
                    host_ports,
                    container_ports: (b.port, b.port),
                    proto,
                    ipv4_only: !b.host_ip.is_empty(),
                })
            })
            .collect()
    }
}
