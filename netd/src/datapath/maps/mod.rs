//! Typed handles on the BPF maps, opened once at load from their one
//! declaration in `netd_common::maps`, one module per family. A family
//! owns its maps' handles; what spans families (an endpoint removed with
//! its connections) is here.

mod config;
mod conntrack;
mod counters;
mod endpoints;
mod ipv6;
mod networks;
mod ports;
mod rules;

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use netd_common::{
    CT_DNAT, CtKey, Ipv6, PortKey, PortKey6,
    maps::{self as defs, MapDef},
};

pub use config::{Config, ResolverSteering, Sockets};
pub use conntrack::{Conntrack, Family as ConntrackFamily, Row as ConntrackRow};
pub use counters::{Counters, DropEvents};
pub use endpoints::Endpoints;
pub use ipv6::Ipv6Tables;
pub use networks::Networks;
pub use ports::Ports;
pub use rules::Rules;

/// A hash (or LRU hash) map, typed by its declaration.
pub type Hash<D> = HashMap<MapData, <D as MapDef>::Key, <D as MapDef>::Value>;
/// An LPM trie keyed by its declaration's key data.
pub type Trie<D> = LpmTrie<MapData, <D as MapDef>::Key, <D as MapDef>::Value>;
/// An array of its declaration's values.
pub type Slots<D> = Array<MapData, <D as MapDef>::Value>;
/// A per-CPU array of its declaration's values.
pub type PerCpuSlots<D> = PerCpuArray<MapData, <D as MapDef>::Value>;
/// A per-CPU hash map.
pub type PerCpuHash<D> = PerCpuHashMap<MapData, <D as MapDef>::Key, <D as MapDef>::Value>;

/// Takes map `D` out of the object as the handle `M` (aya checks the map
/// type and the key and value sizes against the object's).
pub(crate) fn open<D: MapDef, M>(ebpf: &mut Ebpf) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(D::NAME)
        .ok_or_else(|| anyhow!("BPF map {} missing from the object", D::NAME))?;
    M::try_from(map).with_context(|| format!("BPF map {} is not a {:?}", D::NAME, D::KIND))
}

/// How full one map is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: u32,
    /// Entries evicted to make room (conntrack), since the table was made.
    pub evicted: Option<u64>,
}

impl MapFill {
    /// `map` is `D`'s handle: its size is this run's (the user may set it).
    fn of<D: MapDef>(entries: usize, map: &MapData) -> Self {
        Self {
            name: D::NAME,
            entries,
            capacity: map.info().map_or(D::MAX_ENTRIES, |info| info.max_entries()),
            evicted: None,
        }
    }
}

/// Every map user space reads or writes, by family.
pub struct Maps {
    pub config: Config,
    pub sockets: Sockets,
    pub networks: Networks,
    pub endpoints: Endpoints,
    pub ipv6: Ipv6Tables,
    pub ports: Ports,
    pub conntrack: Conntrack,
    pub conntrack6: Conntrack<Ipv6>,
    pub counters: Counters,
    pub rules: Rules,
}

impl Maps {
    /// Opens every family's handles (once, at load). `ebpf` keeps the maps
    /// no family reads (the programs' own) and the drop-event ring, which
    /// its one reader takes later.
    pub(crate) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: Config::open(ebpf)?,
            sockets: Sockets::open(ebpf)?,
            networks: Networks::open(ebpf)?,
            endpoints: Endpoints::open(ebpf)?,
            ipv6: Ipv6Tables::open(ebpf)?,
            ports: Ports::open(ebpf)?,
            conntrack: Conntrack::open(ebpf)?,
            conntrack6: Conntrack::open(ebpf)?,
            counters: Counters::open(ebpf)?,
            rules: Rules::open(ebpf)?,
        })
    }

    /// Each pinned map this holds, for putting back a pin someone removed.
    pub(crate) fn pinned(&self) -> Vec<(&'static str, &MapData)> {
        let mut maps = Vec::new();
        self.config.each(&mut maps);
        self.sockets.each(&mut maps);
        self.networks.each(&mut maps);
        maps.push((defs::ENDPOINTS::NAME, self.endpoints.map()));
        self.ipv6.each(&mut maps);
        self.ports.each(&mut maps);
        maps.push((defs::CONNTRACK::NAME, self.conntrack.map()));
        maps.push((defs::CONNTRACK6::NAME, self.conntrack6.map()));
        self.counters.each(&mut maps);
        maps.push((defs::USER_RULES::NAME, self.rules.map()));
        maps.retain(|(name, _)| defs::pinned().any(|m| m.name == *name));
        maps
    }

    /// Removes an endpoint and every connection it took part in, so a
    /// container re-created on the same address starts clean.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.endpoints.remove(ip)?;
        flush_addresses(&mut self.conntrack, &[ip]).map(drop)
    }

    /// Removes a container's published ports and endpoints; returns what
    /// forgets their connections (one walk of the table, which may run
    /// later, on its own handle: until then the connections' entries lead
    /// nowhere, as nothing routes to the addresses).
    pub fn retire_container(
        &mut self,
        ports: &[PortKey],
        ips: &[Ipv4Addr],
    ) -> Result<impl FnOnce() -> Result<()> + Send + Sync + use<>> {
        self.ports.remove(ports)?;
        for &ip in ips {
            self.endpoints.remove(ip)?;
        }
        let mut conntrack = self.conntrack.handle()?;
        let ips = ips.to_vec();
        Ok(move || flush_addresses(&mut conntrack, &ips).map(drop))
    }

    /// Forgets every connection one of `ips` took part in; returns how many
    /// entries went.
    pub fn forget_connections(&mut self, ips: &[Ipv4Addr]) -> Result<usize> {
        flush_addresses(&mut self.conntrack, ips)
    }

    /// Forgets every IPv6 connection one of `ips` took part in.
    pub fn forget_connections6(&mut self, ips: &[Ipv6Addr]) -> Result<usize> {
        match ips.is_empty() {
            true => Ok(0),
            false => flush_addresses6(&mut self.conntrack6, ips),
        }
    }

    /// Unpublishes IPv6 ports and forgets the connections made through them.
    pub fn unpublish6(&mut self, keys: &[PortKey6]) -> Result<()> {
        self.ports.remove6(keys)?;
        let keys: std::collections::HashSet<PortKey6> = keys.iter().copied().collect();
        self.conntrack6.flush(|k, entry| {
            let exact = PortKey6 {
                host_ip: k.dst,
                port: k.dst_port,
                proto: k.proto,
                _pad: 0,
            };
            let any = PortKey6 {
                host_ip: [0; 4],
                ..exact
            };
            entry.flags & CT_DNAT != 0 && (keys.contains(&exact) || keys.contains(&any))
        })?;
        Ok(())
    }

    /// Unpublishes ports and forgets the connections made through them
    /// (one conntrack walk for all of them).
    pub fn unpublish(&mut self, keys: &[PortKey]) -> Result<()> {
        self.ports.remove(keys)?;
        let keys: std::collections::HashSet<PortKey> = keys.iter().copied().collect();
        self.conntrack.flush(|k, entry| {
            let through_port = |t: &CtKey| {
                let exact = PortKey {
                    host_ip: t.dst,
                    port: t.dst_port,
                    proto: t.proto,
                    _pad: 0,
                };
                keys.contains(&exact)
                    || keys.contains(&PortKey {
                        host_ip: [0; 4],
                        ..exact
                    })
            };
            (entry.flags & CT_DNAT != 0)
                && (through_port(k) || through_port(&entry.xlat.reversed()))
        })?;
        Ok(())
    }

    /// Entries in use / capacity for each user-filled map and conntrack.
    pub fn fill_levels(&self) -> Result<Vec<MapFill>> {
        Ok(vec![
            MapFill::of::<defs::NETWORKS>(self.networks.networks()?.len(), self.networks.map()),
            MapFill::of::<defs::ENDPOINTS>(self.endpoints.addrs()?.len(), self.endpoints.map()),
            MapFill::of::<defs::NETWORKS6>(self.ipv6.networks()?.len(), self.ipv6.networks_map()),
            MapFill::of::<defs::ENDPOINTS6>(
                self.ipv6.endpoints()?.len(),
                self.ipv6.endpoints_map(),
            ),
            MapFill::of::<defs::LOCAL_ADDRS>(
                self.networks.local_addrs()?.len(),
                self.networks.local_addrs_map(),
            ),
            MapFill::of::<defs::PUBLISHED_PORTS>(self.ports.keys()?.len(), self.ports.map()),
            MapFill::of::<defs::PUBLISHED_PORTS6>(self.ports.keys6()?.len(), self.ports.map6()),
            MapFill {
                // Two entries per connection are evicted at a time.
                evicted: Some(self.counters.conntrack_evictions()? * 2),
                ..MapFill::of::<defs::CONNTRACK>(self.conntrack.len(), self.conntrack.map())
            },
            MapFill::of::<defs::CONNTRACK6>(self.conntrack6.len(), self.conntrack6.map()),
        ])
    }
}

/// A map delete that finds the key gone has nothing left to do: removals
/// must be repeatable after a crash or a partial failure.
pub(crate) fn done_if_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

/// Whether a map update failed because the map has no free entry.
pub(crate) fn is_full(err: &MapError) -> bool {
    matches!(err, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG))
}

/// The entries a map holds at most in this run.
pub(crate) fn capacity<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> u32 {
    map.map().info().map_or(0, |info| info.max_entries())
}

/// The handle's map, for pinning.
pub(crate) fn data<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> &MapData {
    map.map()
}

/// Forgets every connection one of `ips` took part in (a connection through
/// a published port to one of them included: its translated destination).
fn flush_addresses(conntrack: &mut Conntrack, ips: &[Ipv4Addr]) -> Result<usize> {
    let ips: Vec<[u8; 4]> = ips.iter().map(|ip| ip.octets()).collect();
    conntrack.flush(|key, entry| {
        [key.src, key.dst, entry.xlat.src, entry.xlat.dst]
            .iter()
            .any(|a| ips.contains(a))
    })
}

/// [`flush_addresses`] for IPv6's table.
fn flush_addresses6(conntrack: &mut Conntrack<Ipv6>, ips: &[Ipv6Addr]) -> Result<usize> {
    let ips: Vec<Ipv6> = ips
        .iter()
        .map(|ip| netd_common::ipv6_from_octets(ip.octets()))
        .collect();
    conntrack.flush(|key, entry| {
        [key.src, key.dst, entry.xlat.src, entry.xlat.dst]
            .iter()
            .any(|a| ips.contains(a))
    })
}
