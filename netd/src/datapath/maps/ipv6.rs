//! The IPv6 side of networks and endpoints: `NETWORKS6` (subnet ->
//! network) and `ENDPOINTS6` (container address -> its interface).

use std::net::Ipv6Addr;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, lpm_trie::Key},
};
use netd_common::{
    Endpoint, Network6Info, ipv6_from_octets, ipv6_octets,
    maps::{ENDPOINTS6, IPV6_PORTS, LOCAL_ADDRS6, MapDef, NETWORKS6},
};

use super::{Hash, Trie, data, done_if_missing, open};

pub struct Ipv6Tables {
    networks: Trie<NETWORKS6>,
    endpoints: Hash<ENDPOINTS6>,
    local_addrs: Hash<LOCAL_ADDRS6>,
    ports: Hash<IPV6_PORTS>,
}

impl Ipv6Tables {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            networks: open::<NETWORKS6, _>(ebpf)?,
            endpoints: open::<ENDPOINTS6, _>(ebpf)?,
            local_addrs: open::<LOCAL_ADDRS6, _>(ebpf)?,
            ports: open::<IPV6_PORTS, _>(ebpf)?,
        })
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((NETWORKS6::NAME, data(&self.networks)));
        maps.push((ENDPOINTS6::NAME, data(&self.endpoints)));
        maps.push((LOCAL_ADDRS6::NAME, data(&self.local_addrs)));
        maps.push((IPV6_PORTS::NAME, data(&self.ports)));
    }

    pub(super) fn networks_map(&self) -> &MapData {
        data(&self.networks)
    }

    pub(super) fn endpoints_map(&self) -> &MapData {
        data(&self.endpoints)
    }

    pub fn insert_network(
        &mut self,
        subnet: Ipv6Addr,
        prefix_len: u8,
        info: Network6Info,
    ) -> Result<()> {
        self.networks
            .insert(
                &Key::new(u32::from(prefix_len), ipv6_from_octets(subnet.octets())),
                &info,
                0,
            )
            .with_context(|| format!("adding network {subnet}/{prefix_len}"))
    }

    pub fn remove_network(&mut self, subnet: Ipv6Addr, prefix_len: u8) -> Result<()> {
        let key = Key::new(u32::from(prefix_len), ipv6_from_octets(subnet.octets()));
        done_if_missing(self.networks.remove(&key))
            .with_context(|| format!("removing network {subnet}/{prefix_len}"))
    }

    pub fn networks(&self) -> Result<Vec<(Ipv6Addr, u8)>> {
        Ok(self
            .networks
            .keys()
            .filter_map(Result::ok)
            .map(|k| (Ipv6Addr::from(ipv6_octets(k.data())), k.prefix_len() as u8))
            .collect())
    }

    pub fn insert_endpoint(&mut self, ip: Ipv6Addr, endpoint: Endpoint) -> Result<()> {
        match self
            .endpoints
            .insert(&ipv6_from_octets(ip.octets()), &endpoint, 0)
        {
            Err(err) if super::is_full(&err) => Err(crate::conflict!(
                "the IPv6 endpoints table is full ({} container interfaces): remove \
                 containers or restart the daemon with a larger --max-endpoints",
                super::capacity(&self.endpoints)
            )),
            other => other.with_context(|| format!("adding endpoint {ip}")),
        }
    }

    /// The endpoint of `ip`, if the map has it.
    pub fn endpoint(&self, ip: Ipv6Addr) -> Option<Endpoint> {
        self.endpoints.get(&ipv6_from_octets(ip.octets()), 0).ok()
    }

    /// Lets the container behind host-side veth `ifindex` send IPv6 (its
    /// network, with `network_flags`, has IPv6).
    pub fn insert_port(&mut self, ifindex: u32, network_flags: u32) -> Result<()> {
        self.ports
            .insert(&ifindex, &network_flags, 0)
            .with_context(|| format!("letting interface {ifindex} send IPv6"))
    }

    pub fn remove_port(&mut self, ifindex: u32) -> Result<()> {
        done_if_missing(self.ports.remove(&ifindex))
            .with_context(|| format!("no longer letting interface {ifindex} send IPv6"))
    }

    pub fn ports(&self) -> Result<Vec<u32>> {
        Ok(self.ports.keys().filter_map(Result::ok).collect())
    }

    pub fn remove_endpoint(&mut self, ip: Ipv6Addr) -> Result<()> {
        done_if_missing(self.endpoints.remove(&ipv6_from_octets(ip.octets())))
            .with_context(|| format!("removing endpoint {ip}"))
    }

    pub fn endpoints(&self) -> Result<Vec<Ipv6Addr>> {
        Ok(self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .map(|k| Ipv6Addr::from(ipv6_octets(k)))
            .collect())
    }

    pub fn insert_local_addr(&mut self, ip: Ipv6Addr) -> Result<()> {
        self.local_addrs
            .insert(&ipv6_from_octets(ip.octets()), &1, 0)
            .with_context(|| format!("adding local address {ip}"))
    }

    pub fn remove_local_addr(&mut self, ip: Ipv6Addr) -> Result<()> {
        done_if_missing(self.local_addrs.remove(&ipv6_from_octets(ip.octets())))
            .with_context(|| format!("removing local address {ip}"))
    }

    pub fn local_addrs(&self) -> Result<Vec<Ipv6Addr>> {
        Ok(self
            .local_addrs
            .keys()
            .filter_map(Result::ok)
            .map(|k| Ipv6Addr::from(ipv6_octets(k)))
            .collect())
    }
}
