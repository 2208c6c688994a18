//! Addresses and published ports: picked or checked against the state,
//! never two containers on one address or two publishers of one port.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;

use super::Engine;
use crate::{
    host::Host,
    ipam,
    portspec::{PortSpec, Proto},
    state::{Network, PublishedPort},
};

/// Ports `-p 80` picks from (Docker uses the kernel's ephemeral range).
const AUTO_PORTS: std::ops::RangeInclusive<u16> = 49153..=60999;

impl<H: Host> Engine<H> {
    /// The addresses of `net`'s containers and its gateway.
    pub(super) fn live_addresses(&self, net: &Network) -> BTreeSet<Ipv4Addr> {
        let mut used: BTreeSet<Ipv4Addr> = self
            .state
            .containers
            .values()
            .flat_map(|c| c.attachments.iter())
            .filter(|a| a.network == net.name)
            .map(|a| a.ip)
            .collect();
        used.insert(net.gateway);
        used
    }

    /// [`live_addresses`](Self::live_addresses) and those whose removed
    /// container's veth is still being deleted.
    fn used_addresses(&self, net: &Network) -> BTreeSet<Ipv4Addr> {
        let mut used = self.live_addresses(net);
        used.extend(self.dying_addresses(&net.name));
        used
    }

    /// `ip6` if it is free on `net`, else the first free IPv6 address; none
    /// on a network without IPv6 (where asking for one is an error).
    pub(super) fn pick_address6(
        &self,
        net: &Network,
        ip6: Option<IpAddr>,
    ) -> Result<Option<Ipv6Addr>> {
        let Some(v6) = net.ipv6 else {
            return match ip6 {
                Some(ip) => Err(crate::invalid!(
                    "--ip6 {ip}: network {:?} has no IPv6 (create it with --ipv6)",
                    net.name
                )),
                None => Ok(None),
            };
        };
        let mut used: BTreeSet<Ipv6Addr> = self
            .state
            .containers
            .values()
            .flat_map(|c| c.attachments.iter())
            .filter(|a| a.network == net.name)
            .filter_map(|a| a.ip6)
            .collect();
        used.insert(v6.gateway);
        match ip6 {
            Some(ip) => {
                let ip = crate::cidr::ipv6("--ip6", ip)?;
                ipam::check_in_subnet6("--ip6", ip, &v6.subnet)?;
                if used.contains(&ip) {
                    return Err(crate::conflict!(
                        "address {ip} is already in use on network {:?}",
                        net.name
                    ));
                }
                Ok(Some(ip))
            }
            None => ipam::allocate_ip6(&v6.subnet, &used).map(Some),
        }
    }

    /// `ip` if it is free on `net`, else the first free address.
    pub(super) fn pick_address(&self, net: &Network, ip: Option<IpAddr>) -> Result<Ipv4Addr> {
        let used = self.used_addresses(net);
        match ip {
            Some(ip) => {
                let ip = crate::cidr::ipv4("--ip", ip)?;
                ipam::check_in_subnet("--ip", ip, &net.subnet)?;
                if used.contains(&ip) {
                    return Err(crate::conflict!(
                        "address {ip} is already in use on network {:?}",
                        net.name
                    ));
                }
                Ok(ip)
            }
            None => ipam::allocate_ip(&net.subnet, net.ip_range.as_ref(), &used),
        }
    }

    /// Expands `-p` specs into single ports, picking free host ports where
    /// none was given (or one of a host range for a single container port,
    /// as Docker does), and refuses ports already published. A spec naming
    /// no host address takes the network's binding address, if it has one;
    /// else, on a network with IPv6, it is published on both families with
    /// one host port (`container_ip6` behind `[::]`), as Docker 27's.
    pub(super) fn resolve_ports(
        &self,
        net: &Network,
        specs: &[PortSpec],
        container_ip: Ipv4Addr,
        container_ip6: Option<Ipv6Addr>,
    ) -> Result<Vec<PublishedPort>> {
        let mut out: Vec<PublishedPort> = Vec::new();
        if net.publishes_without_nat() {
            return open_container_ports(specs, container_ip);
        }
        for spec in specs {
            spec.check()?;
            let host_ip = match (spec.host_ip.is_unspecified(), net.binding_ip) {
                (true, Some(ip)) => ip,
                _ => spec.host_ip,
            };
            let container_ip6 =
                container_ip6.filter(|_| host_ip.is_unspecified() && !spec.ipv4_only);
            let count = spec.container_ports.1 - spec.container_ports.0;
            // `-p 8000-8010:80`: any one free port of the host range.
            let pick_from = match spec.host_ports {
                Some((start, end)) if count == 0 && end > start => Some(start..=end),
                Some(_) => None,
                None => Some(AUTO_PORTS),
            };
            for offset in 0..=count {
                let container_port = spec.container_ports.0 + offset;
                let host_port = match (&pick_from, spec.host_ports) {
                    (Some(range), _) => range
                        .clone()
                        .find(|&p| self.port_free(&out, host_ip, p, spec.proto).is_ok())
                        .ok_or_else(|| {
                            crate::conflict!(
                                "no free host port left in {}-{} for container port {container_port}/{}",
                                range.start(),
                                range.end(),
                                spec.proto
                            )
                        })?,
                    (None, Some((start, _))) => start + offset,
                    (None, None) => unreachable!("no host port means pick one"),
                };
                self.port_free(&out, host_ip, host_port, spec.proto)?;
                out.push(PublishedPort {
                    host_ip,
                    host_port,
                    container_ip,
                    container_port,
                    proto: spec.proto,
                    container_ip6,
                });
            }
        }
        Ok(out)
    }

    fn port_free(
        &self,
        pending: &[PublishedPort],
        host_ip: Ipv4Addr,
        port: u16,
        proto: Proto,
    ) -> Result<()> {
        let clash = |p: &PublishedPort| {
            p.host_port == port
                && p.proto == proto
                && (p.host_ip == host_ip || p.host_ip.is_unspecified() || host_ip.is_unspecified())
        };
        if let Some(p) = self
            .state
            .published()
            .chain(pending.iter())
            .find(|p| clash(p))
        {
            return Err(crate::conflict!(
                "host port {}:{port}/{proto} is already published (by {}:{}); pick another host port",
                p.host_ip,
                p.container_ip,
                p.container_port
            ));
        }
        Ok(())
    }
}

/// A routed network's `-p`: the container ports open at its address, no
/// host port and no DNAT; the host address and port are ignored, as Docker
/// ignores them ("Host port ignored, because NAT is disabled").
fn open_container_ports(specs: &[PortSpec], container_ip: Ipv4Addr) -> Result<Vec<PublishedPort>> {
    let mut out: Vec<PublishedPort> = Vec::new();
    for spec in specs {
        spec.check()?;
        for container_port in spec.container_ports.0..=spec.container_ports.1 {
            let port = PublishedPort {
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 0,
                container_ip,
                container_port,
                proto: spec.proto,
                container_ip6: None,
            };
            if !out.contains(&port) {
                out.push(port);
            }
        }
    }
    Ok(out)
}
