//! Docker 28.2's trusted host interfaces on the eBPF datapath: what arrives
//! on one of a `nat` network's trusted interfaces may reach its published
//! container ports at the container's address (Docker's raw-table ACCEPT
//! ahead of its per-container DROP, then its per-port ACCEPT).
//!
//! `TRUSTED_INTERFACES` holds (network, ifindex) for each trusted interface
//! that is an uplink now (only uplinks run `from_uplink`; names resolve to
//! new indexes as links come and go). Each published port of a container on
//! such a network also gets a key of its container side in
//! `PUBLISHED_PORTS` (address and port of the container, its backend
//! itself), counted: two host ports may lead to one container port.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::Result;
use netd_common::{Backend, PortKey, TrustKey};

use super::EbpfDriver;
use crate::{
    cidr::Cidr,
    state::{GatewayMode, Network, PublishedPort},
};

/// A network that trusts interfaces: its subnet and their names.
pub(super) struct Trusting {
    pub(super) subnet: Cidr,
    pub(super) interfaces: Vec<String>,
}

impl Trusting {
    pub(super) fn of(net: &Network) -> Option<Self> {
        let trusts = net.gateway_mode_ipv4 == GatewayMode::Nat
            && !net.internal
            && !net.trusted_host_interfaces.is_empty();
        trusts.then(|| Self {
            subnet: net.subnet,
            interfaces: net.trusted_host_interfaces.clone(),
        })
    }
}

/// The key of a published port's container side.
fn container_side(p: &PublishedPort) -> PortKey {
    PortKey {
        host_ip: p.container_ip.octets(),
        port: p.container_port.to_be_bytes(),
        proto: p.proto.number(),
        _pad: 0,
    }
}

impl EbpfDriver {
    /// `TRUSTED_INTERFACES` as the trusting networks and the current
    /// uplinks say.
    pub(super) fn sync_trusted(&mut self) -> Result<()> {
        let uplinks = &self.host.uplinks;
        let want: HashSet<TrustKey> = self
            .trusting
            .iter()
            .flat_map(|(&network_id, t)| {
                t.interfaces.iter().filter_map(move |name| {
                    let uplink = uplinks.iter().find(|u| &u.name == name)?;
                    Some(TrustKey {
                        network_id,
                        ifindex: uplink.ifindex,
                    })
                })
            })
            .collect();
        for &key in self.declared.trusted.difference(&want) {
            self.datapath.maps.networks.remove_trusted(key)?;
        }
        for &key in want.difference(&self.declared.trusted) {
            self.datapath.maps.networks.insert_trusted(key)?;
        }
        self.declared.trusted = want;
        Ok(())
    }

    fn trusted_container(&self, ip: Ipv4Addr) -> bool {
        self.trusting.values().any(|t| t.subnet.contains(ip))
    }

    /// The container sides to add for `ports` being published (the first
    /// publisher of each adds it).
    pub(super) fn open_container_sides(&mut self, ports: &[PublishedPort]) -> Result<()> {
        for p in ports.iter().filter(|p| !p.is_direct()) {
            if !self.trusted_container(p.container_ip) {
                continue;
            }
            let key = container_side(p);
            let count = self.container_sides.entry(key).or_default();
            *count += 1;
            if *count == 1 {
                let backend = Backend {
                    ip: key.host_ip,
                    port: key.port,
                    _pad: [0; 2],
                };
                self.datapath.maps.ports.publish(key, backend)?;
                self.declared.ports.insert(key);
            }
        }
        Ok(())
    }

    /// The container sides whose last publisher is among `ports`: to remove
    /// with them.
    pub(super) fn close_container_sides(&mut self, ports: &[PublishedPort]) -> Vec<PortKey> {
        let mut closed = Vec::new();
        for p in ports.iter().filter(|p| !p.is_direct()) {
            let key = container_side(p);
            let Some(count) = self.container_sides.get_mut(&key) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                self.container_sides.remove(&key);
                self.declared.ports.remove(&key);
                closed.push(key);
            }
        }
        closed
    }
}
