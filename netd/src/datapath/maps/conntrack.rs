//! `CONNTRACK` and `CONNTRACK6`: both directions of every tracked
//! connection, one table per address family, and the garbage collection of
//! expired ones.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash as StdHash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::MapData};
use netd_common::{
    CtEntry, CtKey, Ipv4, Ipv6,
    maps::{CONNTRACK, CONNTRACK6, MapDef},
};

use super::{Hash, data, open};

/// An address family's conntrack table.
pub trait Family: Copy + Eq + StdHash + Send + Sync + 'static {
    type Map: MapDef<Key = CtKey<Self>, Value = CtEntry<CtKey<Self>>>;
    fn ip(addr: Self) -> IpAddr;
}

impl Family for Ipv4 {
    type Map = CONNTRACK;
    fn ip(addr: Ipv4) -> IpAddr {
        Ipv4Addr::from(addr).into()
    }
}

impl Family for Ipv6 {
    type Map = CONNTRACK6;
    fn ip(addr: Ipv6) -> IpAddr {
        Ipv6Addr::from(netd_common::ipv6_octets(addr)).into()
    }
}

/// One entry of a family's table, key and value.
pub type Row<A> = (CtKey<A>, CtEntry<CtKey<A>>);

pub struct Conntrack<A: Family = Ipv4> {
    entries: Hash<A::Map>,
}

impl<A: Family> Conntrack<A>
where
    CtKey<A>: aya::Pod + bytemuck::Pod + StdHash,
    CtEntry<CtKey<A>>: aya::Pod + bytemuck::Pod,
{
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            entries: open::<A::Map, _>(ebpf)?,
        })
    }

    pub(super) fn map(&self) -> &MapData {
        data(&self.entries)
    }

    /// Another handle on the same table, for a walk away from the datapath's
    /// owner (a removed container's connections go in the background).
    pub fn handle(&self) -> Result<Self> {
        use std::os::fd::AsFd as _;
        let fd = self
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the conntrack table's descriptor")?;
        let map = MapData::from_fd(fd).context("opening the conntrack table again")?;
        Ok(Self {
            entries: aya::maps::Map::HashMap(map)
                .try_into()
                .context("the conntrack table is not a hash map")?,
        })
    }

    pub fn len(&self) -> usize {
        self.entries()
            .map_or_else(|_| self.entries.keys().count(), |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.keys().next().is_none()
    }

    /// Every conntrack entry (both directions of each connection): in
    /// batches, or (a kernel without batch lookups) entry by entry.
    pub fn entries(&self) -> Result<Vec<Row<A>>> {
        use std::os::fd::AsFd as _;
        match crate::datapath::sys::lookup_batch(self.map().fd().as_fd(), 4096) {
            Ok(entries) => Ok(entries),
            // EINVAL: no such command (before 5.6); ENOTSUPP (524): not
            // for this map.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | 524)) => {
                Ok(self.entries.iter().filter_map(Result::ok).collect())
            }
            Err(err) => Err(err).context("reading the conntrack table"),
        }
    }

    /// Deletes both entries of every connection one of whose entries matches.
    /// Returns how many entries were deleted.
    pub fn flush(
        &mut self,
        matches: impl Fn(&CtKey<A>, &CtEntry<CtKey<A>>) -> bool,
    ) -> Result<usize> {
        let doomed: Vec<CtKey<A>> = self
            .entries()?
            .into_iter()
            .filter(|(key, entry)| matches(key, entry))
            .flat_map(|(key, entry)| [key, entry.xlat.reversed()])
            .collect();
        Ok(doomed
            .iter()
            .filter(|key| self.entries.remove(key).is_ok())
            .count())
    }

    /// Removes connections whose entries have both expired at `now_ns`
    /// (CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns).
    pub fn gc(&mut self, now_ns: u64) -> Result<usize> {
        let expired = self.expired(now_ns)?;
        self.remove_if_expired(&expired, now_ns)
    }

    /// The connections (entry key, peer entry key) whose entries have both
    /// expired at `now_ns`, each once: the first half of a GC pass.
    pub fn expired(&self, now_ns: u64) -> Result<Vec<(CtKey<A>, CtKey<A>)>> {
        let entries: HashMap<CtKey<A>, CtEntry<CtKey<A>>> = self.entries()?.into_iter().collect();
        let expired = |key: &CtKey<A>| entries.get(key).is_none_or(|e| e.expires_ns <= now_ns);
        let mut seen = HashSet::new();
        Ok(entries
            .iter()
            .map(|(key, entry)| (*key, entry.xlat.reversed()))
            .filter(|(key, peer)| expired(key) && expired(peer))
            .filter(|(key, peer)| seen.insert(*key) && seen.insert(*peer))
            .collect())
    }

    /// The second half of a GC pass: deletes each connection whose entries
    /// are still expired now. The re-read matters: between the snapshot and
    /// the delete, a new connection may have reused the tuple (a client
    /// reusing a port from TIME_WAIT), and its fresh entries must stay.
    pub fn remove_if_expired(
        &mut self,
        connections: &[(CtKey<A>, CtKey<A>)],
        now_ns: u64,
    ) -> Result<usize> {
        let mut removed = 0;
        for (key, peer) in connections {
            let expired = |k: &CtKey<A>| {
                self.entries
                    .get(k, 0)
                    .map_or(true, |e| e.expires_ns <= now_ns)
            };
            if expired(key) && expired(peer) {
                removed += [key, peer]
                    .iter()
                    .filter(|k| self.entries.remove(k).is_ok())
                    .count();
            }
        }
        Ok(removed)
    }
}
