//! A host namespace driven directly through `netd::datapath::Datapath`: an uplink
//! to an "outside" namespace, bridges, containers, published ports. The
//! datapath tests use it to prove BPF behaviour on real traffic without the
//! daemon; scenario tests drive the real daemon instead.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use netd::{
    datapath::Datapath,
    features::{Features, KernelFeatures},
};
use netd_common::{Backend, Config, Endpoint, NetworkInfo, PortKey, UplinkInfo};

use crate::{Netns, Testbed};

/// Addresses of the uplink segment (inside the testbed's namespaces only).
pub use crate::uplink::{HOST_IP as HOST_UPLINK_IP, HOST_SECOND_IP, OUTSIDE_IP};
pub use netd_common::{NAT_PORT_MAX, NAT_PORT_MIN};

pub struct DatapathHost {
    pub datapath: Datapath,
    pub host: Netns,
    pub outside: Netns,
    pub uplink: String,
    next_network: u32,
    next_container: u32,
    // Last: namespaces go after the datapath (links die with their devices).
    pub bed: Testbed,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub id: u32,
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

impl DatapathHost {
    pub fn new() -> Result<Self> {
        Self::with_kernel_features(KernelFeatures::Auto, 1500)
    }

    /// A host whose datapath uses the mechanisms `wanted` allows, with an
    /// uplink of `uplink_mtu` (the outside end stays at 1500).
    pub fn with_kernel_features(wanted: KernelFeatures, uplink_mtu: u32) -> Result<Self> {
        let mut bed = Testbed::new()?;
        let (host, outside, uplink) = bed.add_host_with_outside()?;
        host.sysctl("net.ipv4.ip_forward", "1")?;
        host.ip(&["link", "set", &uplink, "mtu", &uplink_mtu.to_string()])?;

        let mut datapath = Datapath::load_with(&Features::probe(wanted)?)?;
        datapath.maps.config.set(Config {
            masquerade_ip: HOST_UPLINK_IP.parse::<Ipv4Addr>()?.octets(),
            nat_port_min: NAT_PORT_MIN,
            nat_port_max: NAT_PORT_MAX,
            netns_cookie: host.enter(netd::datapath::sys::current_netns_cookie)??,
            fast_path: 1,
            rule_classes: 0,
        })?;
        datapath.maps.config.set_uplink(
            host.ifindex(&uplink)?,
            UplinkInfo {
                masquerade_ip: HOST_UPLINK_IP.parse::<Ipv4Addr>()?.octets(),
                mtu: uplink_mtu,
            },
        )?;
        for ip in [HOST_UPLINK_IP, HOST_SECOND_IP, "127.0.0.1"] {
            datapath.maps.networks.insert_local_addr(ip.parse()?)?;
        }
        host.enter(|| datapath.attach_uplink(&uplink))??;
        datapath.attach_host_sockets()?;
        Ok(Self {
            datapath,
            host,
            outside,
            uplink,
            next_network: 1,
            next_container: 1,
            bed,
        })
    }

    /// A bridge with `gateway` (first address of `subnet`) and the map entry.
    pub fn add_network(&mut self, subnet: &str, flags: u32) -> Result<Network> {
        let (addr, prefix) = subnet.split_once('/').context("subnet needs /prefix")?;
        let subnet: Ipv4Addr = addr.parse()?;
        let prefix_len: u8 = prefix.parse()?;
        let gateway = Ipv4Addr::from(u32::from(subnet) + 1);
        let id = self.next_network;
        self.next_network += 1;
        let bridge = self.bed.ifname(&format!("br{id}"));
        self.host.ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.host.ip(&[
            "addr",
            "add",
            &format!("{gateway}/{prefix_len}"),
            "dev",
            &bridge,
        ])?;
        self.host.ip(&["link", "set", &bridge, "up"])?;
        let info = NetworkInfo {
            id,
            flags,
            gateway: gateway.octets(),
            host_ip: [0; 4],
            gateway_mac: self.host.mac(&bridge)?,
            _pad: [0; 2],
        };
        self.datapath
            .maps
            .networks
            .insert(subnet, prefix_len, info)?;
        self.datapath.maps.networks.insert_local_addr(gateway)?;
        Ok(Network {
            id,
            bridge,
            subnet,
            prefix_len,
            gateway,
        })
    }

    /// A container namespace on `net` with address `ip`, registered as an
    /// endpoint, `from_container` attached to its host-side veth.
    pub fn add_container(&mut self, net: &Network, ip: &str, flags: u32) -> Result<Netns> {
        let n = self.next_container;
        self.next_container += 1;
        let host_if = self.bed.ifname(&format!("ve{n}"));
        let cidr = format!("{ip}/{}", net.prefix_len);
        let gateway = net.gateway.to_string();
        let ctr = self.bed.add_container(
            &format!("c{n}"),
            &self.host,
            &net.bridge,
            &host_if,
            &cidr,
            &gateway,
        )?;
        let endpoint = Endpoint {
            ifindex: self.host.ifindex(&host_if)?,
            network_id: net.id,
            network_flags: flags,
            mac: ctr.mac("eth0")?,
            _pad: [0; 2],
        };
        self.datapath.maps.endpoints.insert(ip.parse()?, endpoint)?;
        let datapath = &mut self.datapath;
        self.host
            .enter(|| datapath.attach_from_container(&host_if))??;
        Ok(ctr)
    }

    /// Publishes `host_ip:host_port/proto` (host_ip "0.0.0.0" = every address).
    pub fn publish(
        &mut self,
        host_ip: &str,
        host_port: u16,
        proto: u8,
        ctr_ip: &str,
        ctr_port: u16,
    ) -> Result<PortKey> {
        let key = PortKey {
            host_ip: host_ip.parse::<Ipv4Addr>()?.octets(),
            port: host_port.to_be_bytes(),
            proto,
            _pad: 0,
        };
        let backend = Backend {
            ip: ctr_ip.parse::<Ipv4Addr>()?.octets(),
            port: ctr_port.to_be_bytes(),
            _pad: [0; 2],
        };
        self.datapath.maps.ports.publish(key, backend)?;
        Ok(key)
    }

    /// Gives the outside namespace a route to `subnet` through the host, as
    /// an L2 neighbour trying to reach containers directly would have.
    pub fn route_from_outside(&self, subnet: &str) -> Result<()> {
        self.outside
            .ip(&["route", "add", subnet, "via", HOST_UPLINK_IP])
    }
}
