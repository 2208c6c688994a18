//! Networks and addresses: `NETWORKS` (subnet -> network), `ROUTED_CIDRS`
//! (what a network reaches without NAT), `LOCAL_ADDRS` (the host's own
//! addresses) and `TRUSTED_INTERFACES` (where a network may be reached
//! directly from).

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, lpm_trie::Key},
};
use netd_common::{
    NetworkInfo, RoutedKey, TrustKey,
    maps::{LOCAL_ADDRS, MapDef, NETWORKS, ROUTED_CIDRS, TRUSTED_INTERFACES},
    routed_key,
};

use super::{Hash, Trie, data, done_if_missing, open};

pub struct Networks {
    networks: Trie<NETWORKS>,
    routed: Trie<ROUTED_CIDRS>,
    local_addrs: Hash<LOCAL_ADDRS>,
    trusted: Hash<TRUSTED_INTERFACES>,
}

impl Networks {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            networks: open::<NETWORKS, _>(ebpf)?,
            routed: open::<ROUTED_CIDRS, _>(ebpf)?,
            local_addrs: open::<LOCAL_ADDRS, _>(ebpf)?,
            trusted: open::<TRUSTED_INTERFACES, _>(ebpf)?,
        })
    }

    pub(super) fn map(&self) -> &MapData {
        data(&self.networks)
    }

    pub(super) fn local_addrs_map(&self) -> &MapData {
        data(&self.local_addrs)
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((NETWORKS::NAME, data(&self.networks)));
        maps.push((ROUTED_CIDRS::NAME, data(&self.routed)));
        maps.push((LOCAL_ADDRS::NAME, data(&self.local_addrs)));
        maps.push((TRUSTED_INTERFACES::NAME, data(&self.trusted)));
    }

    /// Registers a network's subnet (`prefix_len` bits of `subnet`).
    pub fn insert(&mut self, subnet: Ipv4Addr, prefix_len: u8, info: NetworkInfo) -> Result<()> {
        self.networks
            .insert(&Key::new(u32::from(prefix_len), subnet.octets()), &info, 0)
            .with_context(|| format!("adding network {subnet}/{prefix_len}"))
    }

    pub fn remove(&mut self, subnet: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let key = Key::new(u32::from(prefix_len), subnet.octets());
        done_if_missing(self.networks.remove(&key))
            .with_context(|| format!("removing network {subnet}/{prefix_len}"))
    }

    /// Every network's subnet.
    pub fn networks(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .networks
            .keys()
            .filter_map(Result::ok)
            .map(|k| (Ipv4Addr::from(k.data()), k.prefix_len() as u8))
            .collect())
    }

    /// Routes `addr/prefix_len` without NAT for network `network_id` (both ways).
    pub fn insert_routed(&mut self, network_id: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.routed
            .insert(&routed_trie_key(network_id, addr, prefix_len), &1, 0)
            .with_context(|| format!("adding routed CIDR {addr}/{prefix_len}"))
    }

    pub fn remove_routed(&mut self, network_id: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        done_if_missing(
            self.routed
                .remove(&routed_trie_key(network_id, addr, prefix_len)),
        )
        .with_context(|| format!("removing routed CIDR {addr}/{prefix_len}"))
    }

    /// `(network ID, CIDR)` of every routed CIDR in the map.
    pub fn routed(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        Ok(self
            .routed
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                let d = k.data();
                (
                    u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                    Ipv4Addr::new(d[4], d[5], d[6], d[7]),
                    (k.prefix_len() - 32) as u8,
                )
            })
            .collect())
    }

    pub fn insert_local_addr(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.local_addrs
            .insert(&ip.octets(), &1, 0)
            .with_context(|| format!("adding local address {ip}"))
    }

    pub fn remove_local_addr(&mut self, ip: Ipv4Addr) -> Result<()> {
        done_if_missing(self.local_addrs.remove(&ip.octets()))
            .with_context(|| format!("removing local address {ip}"))
    }

    /// Lets what arrives on `key.ifindex` reach network `key.network_id`'s
    /// published container ports directly.
    pub fn insert_trusted(&mut self, key: TrustKey) -> Result<()> {
        self.trusted
            .insert(&key, &1, 0)
            .with_context(|| format!("trusting interface {}", key.ifindex))
    }

    pub fn remove_trusted(&mut self, key: TrustKey) -> Result<()> {
        done_if_missing(self.trusted.remove(&key))
            .with_context(|| format!("no longer trusting interface {}", key.ifindex))
    }

    pub fn trusted(&self) -> Result<Vec<TrustKey>> {
        Ok(self.trusted.keys().filter_map(Result::ok).collect())
    }

    pub fn local_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .local_addrs
            .keys()
            .filter_map(Result::ok)
            .map(Ipv4Addr::from)
            .collect())
    }
}

/// The `ROUTED_CIDRS` key of `addr/prefix_len` for network `network_id`:
/// the network's 32 bits always match, then the CIDR's.
fn routed_trie_key(network_id: u32, addr: Ipv4Addr, prefix_len: u8) -> Key<RoutedKey> {
    Key::new(
        32 + u32::from(prefix_len),
        routed_key(network_id, addr.octets()),
    )
}
