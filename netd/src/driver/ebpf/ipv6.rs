//! The IPv6 side of networks and endpoints in the maps: a network with
//! IPv6 is in `NETWORKS6` beside `NETWORKS`, a container with an IPv6
//! address in `ENDPOINTS6` beside `ENDPOINTS`.

use std::{collections::HashSet, net::Ipv6Addr};

use anyhow::Result;
use netd_common::{Backend6, Endpoint, Network6Info, PortKey6};

use super::{EbpfDriver, flags};
use crate::state::{Attachment, Network, PublishedPort};

/// What the daemon declared of IPv6 since start (see `Declared`).
#[derive(Default)]
pub(super) struct Declared6 {
    networks: HashSet<(Ipv6Addr, u8)>,
    endpoints: HashSet<Ipv6Addr>,
    /// The host's global IPv6 addresses (`LOCAL_ADDRS6`).
    local_addrs: HashSet<Ipv6Addr>,
    /// Host-side veths allowed to send IPv6 (`IPV6_PORTS`).
    ports: HashSet<u32>,
    /// Ports published on IPv6 (`PUBLISHED_PORTS6`).
    published: HashSet<PortKey6>,
}

/// The IPv6 key of a port published on all addresses of a network with
/// IPv6 (`[::]`, the IPv4 port's host port), and its backend.
fn port6(p: &PublishedPort) -> Option<(PortKey6, Backend6)> {
    let ip6 = p.container_ip6?;
    let key = PortKey6 {
        host_ip: [0; 4],
        port: p.host_port.to_be_bytes(),
        proto: p.proto.number(),
        _pad: 0,
    };
    let backend = Backend6 {
        ip: netd_common::ipv6_from_octets(ip6.octets()),
        port: p.container_port.to_be_bytes(),
        _pad: [0; 2],
    };
    Some((key, backend))
}

impl EbpfDriver {
    pub(super) fn add_network6(&mut self, net: &Network) -> Result<()> {
        let Some(v6) = net.ipv6 else {
            return Ok(());
        };
        let info = Network6Info {
            id: net.id,
            flags: flags::network_flags(net, self.resolver_on_gateways),
            gateway: netd_common::ipv6_from_octets(v6.gateway.octets()),
        };
        let (addr, len) = (v6.subnet.network(), v6.subnet.prefix_len());
        self.datapath.maps.ipv6.insert_network(addr, len, info)?;
        self.declared6.networks.insert((addr, len));
        Ok(())
    }

    pub(super) fn remove_network6(&mut self, net: &Network) -> Result<()> {
        let Some(v6) = net.ipv6 else {
            return Ok(());
        };
        let (addr, len) = (v6.subnet.network(), v6.subnet.prefix_len());
        self.declared6.networks.remove(&(addr, len));
        self.datapath.maps.ipv6.remove_network(addr, len)
    }

    /// The endpoint's IPv6 address, and its host-side veth allowed to send
    /// IPv6 (a container on a network without IPv6 may send none).
    pub(super) fn add_endpoint6(&mut self, att: &Attachment, endpoint: Endpoint) -> Result<()> {
        let Some(ip6) = att.ip6 else {
            return Ok(());
        };
        self.datapath
            .maps
            .ipv6
            .insert_port(endpoint.ifindex, endpoint.network_flags)?;
        self.declared6.ports.insert(endpoint.ifindex);
        self.datapath.maps.ipv6.insert_endpoint(ip6, endpoint)?;
        self.declared6.endpoints.insert(ip6);
        Ok(())
    }

    /// Forgets the endpoint's IPv6 address and port in `declared6`;
    /// `in_maps`: in the maps too (not while tearing down, when the maps go
    /// whole). Its connections are the caller's to forget.
    pub(super) fn remove_endpoint6(&mut self, att: &Attachment, in_maps: bool) -> Result<()> {
        let Some(ip6) = att.ip6 else {
            return Ok(());
        };
        self.declared6.endpoints.remove(&ip6);
        let port = self.datapath.maps.ipv6.endpoint(ip6).map(|ep| ep.ifindex);
        if let Some(ifindex) = port {
            self.declared6.ports.remove(&ifindex);
        }
        if !in_maps {
            return Ok(());
        }
        if let Some(ifindex) = port {
            self.datapath.maps.ipv6.remove_port(ifindex)?;
        }
        self.datapath.maps.ipv6.remove_endpoint(ip6)
    }

    /// `LOCAL_ADDRS6`: the host's global IPv6 addresses as last read.
    pub(super) fn sync_local_addrs6(&mut self, host: &crate::driver::HostInfo) -> Result<()> {
        let wanted: HashSet<Ipv6Addr> = host.local_addrs6.iter().copied().collect();
        for ip in &wanted {
            self.datapath.maps.ipv6.insert_local_addr(*ip)?;
        }
        for ip in self.declared6.local_addrs.difference(&wanted) {
            self.datapath.maps.ipv6.remove_local_addr(*ip)?;
        }
        self.declared6.local_addrs = wanted;
        Ok(())
    }

    /// The ports' IPv6 halves (those published on all addresses of a
    /// network with IPv6); on an error, none of them.
    pub(super) fn publish6(&mut self, ports: &[PublishedPort]) -> Result<()> {
        let mut done = Vec::new();
        for (key, backend) in ports.iter().filter_map(port6) {
            if let Err(err) = self.datapath.maps.ports.publish6(key, backend) {
                for key in &done {
                    self.declared6.published.remove(key);
                }
                let _ = self.datapath.maps.unpublish6(&done);
                return Err(err);
            }
            self.declared6.published.insert(key);
            done.push(key);
        }
        Ok(())
    }

    /// A removed container's IPv6: its ports, its addresses and their
    /// connections (at once, not in the background as IPv4's: IPv6
    /// addresses are not held back while that runs, so one handed out
    /// again must find nothing left of them).
    pub(super) fn retire6(&mut self, ports: &[PublishedPort], atts: &[Attachment]) -> Result<()> {
        let keys: Vec<PortKey6> = ports.iter().filter_map(port6).map(|(k, _)| k).collect();
        for key in &keys {
            self.declared6.published.remove(key);
        }
        let mut result = Ok(());
        for att in atts {
            result = result.and(self.remove_endpoint6(att, !self.tearing_down));
        }
        if self.tearing_down {
            return result;
        }
        // The address walk below forgets the ports' connections too.
        self.datapath.maps.ports.remove6(&keys)?;
        let ips6: Vec<_> = atts.iter().filter_map(|a| a.ip6).collect();
        result.and(self.datapath.maps.forget_connections6(&ips6).map(drop))
    }

    /// The ports' IPv6 halves and the connections through them (in the
    /// maps unless tearing down, when the maps go whole).
    pub(super) fn unpublish6(&mut self, ports: &[PublishedPort]) -> Result<()> {
        let keys: Vec<PortKey6> = ports.iter().filter_map(port6).map(|(k, _)| k).collect();
        for key in &keys {
            self.declared6.published.remove(key);
        }
        if keys.is_empty() || self.tearing_down {
            return Ok(());
        }
        self.datapath.maps.unpublish6(&keys)
    }

    /// Removes the IPv6 entries nobody declared since start.
    pub(super) fn reconcile6(&mut self, removed: &mut Vec<String>) -> Result<()> {
        let stale: Vec<PortKey6> = (self.datapath.maps.ports.keys6()?.into_iter())
            .filter(|k| !self.declared6.published.contains(k))
            .collect();
        if !stale.is_empty() {
            removed.push(format!("{} stale IPv6 published ports", stale.len()));
            self.datapath.maps.unpublish6(&stale)?;
        }
        for ifindex in self.datapath.maps.ipv6.ports()? {
            if !self.declared6.ports.contains(&ifindex) {
                removed.push(format!("stale IPv6 port {ifindex}"));
                self.datapath.maps.ipv6.remove_port(ifindex)?;
            }
        }
        for ip in self.datapath.maps.ipv6.local_addrs()? {
            if !self.declared6.local_addrs.contains(&ip) {
                removed.push(format!("stale local address {ip}"));
                self.datapath.maps.ipv6.remove_local_addr(ip)?;
            }
        }
        for ip in self.datapath.maps.ipv6.endpoints()? {
            if !self.declared6.endpoints.contains(&ip) {
                removed.push(format!("stale endpoint {ip}"));
                self.datapath.maps.ipv6.remove_endpoint(ip)?;
            }
        }
        for (addr, len) in self.datapath.maps.ipv6.networks()? {
            if !self.declared6.networks.contains(&(addr, len)) {
                removed.push(format!("stale network {addr}/{len}"));
                self.datapath.maps.ipv6.remove_network(addr, len)?;
            }
        }
        Ok(())
    }
}
