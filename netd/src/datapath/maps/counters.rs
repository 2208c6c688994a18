//! The counters the programs keep (traffic by class, drops by reason and
//! by interface) and the drop-event ring `netd monitor` reads.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuValues, RingBuf},
};
use netd_common::{
    DropEvent, DropKey, DropReason, InterfaceDrops, PacketCounter, TrafficClass,
    maps::{
        CONNTRACK_EVICTIONS, DROP_COUNTERS, DROP_EVENTS, DROPS_BY_INTERFACE, MapDef,
        TRAFFIC_COUNTERS, UPLINK_DROPS,
    },
};

use super::{PerCpuHash, PerCpuSlots, data, open};

pub struct Counters {
    traffic: PerCpuSlots<TRAFFIC_COUNTERS>,
    drops: PerCpuSlots<DROP_COUNTERS>,
    by_interface: PerCpuHash<DROPS_BY_INTERFACE>,
    uplink_drops: PerCpuSlots<UPLINK_DROPS>,
    evictions: PerCpuSlots<CONNTRACK_EVICTIONS>,
}

impl Counters {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            traffic: open::<TRAFFIC_COUNTERS, _>(ebpf)?,
            drops: open::<DROP_COUNTERS, _>(ebpf)?,
            by_interface: open::<DROPS_BY_INTERFACE, _>(ebpf)?,
            uplink_drops: open::<UPLINK_DROPS, _>(ebpf)?,
            evictions: open::<CONNTRACK_EVICTIONS, _>(ebpf)?,
        })
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((TRAFFIC_COUNTERS::NAME, data(&self.traffic)));
        maps.push((DROP_COUNTERS::NAME, data(&self.drops)));
        maps.push((DROPS_BY_INTERFACE::NAME, data(&self.by_interface)));
        maps.push((UPLINK_DROPS::NAME, data(&self.uplink_drops)));
        maps.push((CONNTRACK_EVICTIONS::NAME, data(&self.evictions)));
    }

    /// Packets and bytes per traffic class, summed over CPUs.
    pub fn traffic(&self) -> Result<Vec<(TrafficClass, PacketCounter)>> {
        TrafficClass::ALL
            .iter()
            .map(|&class| Ok((class, self.traffic_of(class)?)))
            .collect()
    }

    /// Packets and bytes of one traffic class, summed over CPUs.
    pub fn traffic_of(&self, class: TrafficClass) -> Result<PacketCounter> {
        let mut total = PacketCounter::default();
        for cpu in self.traffic.get(&(class as u32), 0)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Connections evicted to make room in a full conntrack table.
    pub fn conntrack_evictions(&self) -> Result<u64> {
        Ok(self.evictions.get(&0, 0)?.iter().sum())
    }

    /// Dropped packets for one reason, summed over CPUs.
    pub fn drops_of(&self, reason: DropReason) -> Result<u64> {
        Ok(self.drops.get(&(reason as u32), 0)?.iter().sum())
    }

    /// Dropped packets per reason, summed over CPUs.
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>> {
        DropReason::ALL
            .iter()
            .map(|&reason| Ok((reason, self.drops_of(reason)?)))
            .collect()
    }

    /// Drops by (interface index, reason), summed over the CPUs and over
    /// the two maps that count them (the uplinks' slots and the hash).
    pub fn drops_by_interface(&self) -> Result<Vec<(u32, DropReason, u64)>> {
        let mut counts: BTreeMap<(u32, u32), u64> = Default::default();
        for entry in self.by_interface.iter() {
            let (key, values) = entry?;
            *counts.entry((key.ifindex, key.reason)).or_default() += values.iter().sum::<u64>();
        }
        for slot in 0..UPLINK_DROPS::MAX_ENTRIES {
            for cpu in self.uplink_drops.get(&slot, 0)?.iter() {
                if cpu.ifindex == 0 {
                    continue;
                }
                for (reason, &n) in cpu.by_reason.iter().enumerate() {
                    if n > 0 {
                        *counts.entry((cpu.ifindex, reason as u32)).or_default() += n;
                    }
                }
            }
        }
        Ok(counts
            .into_iter()
            .filter_map(|((ifindex, reason), n)| {
                DropReason::from_u32(reason).map(|reason| (ifindex, reason, n))
            })
            .collect())
    }

    /// Frees the slots of `UPLINK_DROPS` held by interfaces not in
    /// `uplinks` (an uplink that went, or whose index changed), so the next
    /// uplink that maps there counts in the array, not in the hash. Their
    /// counts move to `DROPS_BY_INTERFACE` first: the interface's totals
    /// stay. Returns how many (slot, CPU) entries were freed.
    ///
    /// A slot is written for every CPU at once: a drop counted on another
    /// CPU by another uplink sharing the slot, between the read and the
    /// write, is lost (counts only, never a verdict).
    pub fn free_uplink_drop_slots(&mut self, uplinks: &[u32]) -> Result<usize> {
        let stale = |cpu: &InterfaceDrops| cpu.ifindex != 0 && !uplinks.contains(&cpu.ifindex);
        let mut freed = 0;
        for slot in 0..UPLINK_DROPS::MAX_ENTRIES {
            let per_cpu: Vec<InterfaceDrops> = self.uplink_drops.get(&slot, 0)?.to_vec();
            if !per_cpu.iter().any(stale) {
                continue;
            }
            self.add_to_drops_by_interface(&per_cpu, stale)?;
            let kept: Vec<_> = per_cpu
                .iter()
                .map(|cpu| if stale(cpu) { Default::default() } else { *cpu })
                .collect();
            freed += per_cpu.iter().filter(|cpu| stale(cpu)).count();
            self.uplink_drops
                .set(slot, PerCpuValues::try_from(kept)?, 0)
                .with_context(|| format!("freeing slot {slot} of {}", UPLINK_DROPS::NAME))?;
        }
        Ok(freed)
    }

    /// Adds the counts of the per-CPU entries of one `UPLINK_DROPS` slot
    /// that `moved` selects to `DROPS_BY_INTERFACE`, CPU by CPU.
    fn add_to_drops_by_interface(
        &mut self,
        per_cpu: &[InterfaceDrops],
        moved: impl Fn(&InterfaceDrops) -> bool,
    ) -> Result<()> {
        let mut additions: BTreeMap<(u32, u32), Vec<u64>> = Default::default();
        for (cpu, entry) in per_cpu.iter().enumerate() {
            if !moved(entry) {
                continue;
            }
            for (reason, &n) in entry.by_reason.iter().enumerate() {
                if n > 0 {
                    additions
                        .entry((entry.ifindex, reason as u32))
                        .or_insert_with(|| vec![0; per_cpu.len()])[cpu] += n;
                }
            }
        }
        for ((ifindex, reason), added) in additions {
            let key = DropKey { ifindex, reason };
            let mut total = match self.by_interface.get(&key, 0) {
                Ok(values) => values.to_vec(),
                Err(MapError::KeyNotFound) => vec![0; added.len()],
                Err(err) => return Err(err).context("reading DROPS_BY_INTERFACE"),
            };
            for (sum, n) in total.iter_mut().zip(&added) {
                *sum += n;
            }
            self.by_interface
                .insert(&key, PerCpuValues::try_from(total)?, 0)
                .with_context(|| format!("moving if{ifindex}'s drops to DROPS_BY_INTERFACE"))?;
        }
        Ok(())
    }
}

/// The datapath's drop events as they are written (one reader).
pub struct DropEvents {
    ring: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
}

impl DropEvents {
    /// Takes the ring out of the object: it has one reader.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(DROP_EVENTS::NAME)
            .ok_or_else(|| anyhow!("{} already taken", DROP_EVENTS::NAME))?;
        let ring = RingBuf::try_from(map).context("DROP_EVENTS is not a ring buffer")?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd lives.
        let ring =
            unsafe { tokio::io::unix::AsyncFd::register(ring) }.context("polling DROP_EVENTS")?;
        Ok(Self { ring })
    }

    /// Waits for events, then returns every one waiting; `None` once the
    /// ring can no longer be polled.
    pub async fn next_batch(&mut self) -> Option<Vec<DropEvent>> {
        let mut guard = self.ring.readable_mut().await.ok()?;
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if let Some(bytes) = item.get(..std::mem::size_of::<DropEvent>()) {
                batch.push(bytemuck::pod_read_unaligned(bytes));
            }
        }
        guard.clear_ready();
        Some(batch)
    }
}
