//! What the eBPF datapath shows: its status, its conntrack table as rows,
//! its counters and table fill, and its drops as they happen.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::{Context as _, Result};
use netd_common::{CtKey, programs};

use super::EbpfDriver;
use crate::{
    api::{
        ConntrackRow, DatapathStatus, EbpfStatus, FlowDirection, IpProto, MapUse, NatKind,
        Programs, Traffic,
    },
    datapath::{
        maps::{self, ConntrackFamily},
        monotonic_ns,
    },
    driver::{
        DatapathMetrics, DropStream, DroppedPacket, FirewallDriver as _, Observability, TableFill,
    },
};

impl EbpfDriver {
    /// Both directions of every tracked connection, as `netd conntrack ls`
    /// shows them.
    /// Both families' tables, as rows.
    pub(super) fn conntrack_rows(&self) -> Result<Vec<ConntrackRow>> {
        let maps = &self.datapath.maps;
        let mut rows = rows_of(maps.conntrack.entries()?);
        rows.extend(rows_of(maps.conntrack6.entries()?));
        Ok(rows)
    }

    pub(super) fn ebpf_status(&self) -> Result<DatapathStatus> {
        let traffic = self
            .datapath
            .maps
            .counters
            .traffic()?
            .into_iter()
            .map(|(class, c)| {
                let traffic = Traffic {
                    packets: c.packets,
                    bytes: c.bytes,
                };
                (class.label().to_owned(), traffic)
            })
            .collect();
        let drops = self
            .datapath
            .maps
            .counters
            .drops()?
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (reason.label().to_owned(), n))
            .collect();
        let maps = self
            .datapath
            .maps
            .fill_levels()
            .context("reading map fill levels")?
            .into_iter()
            .map(|m| {
                let used = MapUse {
                    entries: m.entries,
                    capacity: m.capacity,
                    evicted: m.evicted,
                };
                (m.name.to_owned(), used)
            })
            .collect();
        let mut uplinks: Vec<String> = self.uplinks.keys().cloned().collect();
        uplinks.sort();
        Ok(DatapathStatus::Ebpf(Box::new(EbpfStatus {
            kernel: self.features.clone(),
            uplinks,
            programs: Programs {
                attach: self.datapath.tc_mode(),
                container_attach: crate::features::TcAttachMode::Clsact,
                tc: programs::CLASSIFIERS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                xdp: self.xdp_modes.clone(),
                cgroup: programs::SOCK_HOOKS.iter().map(|p| p.to_string()).collect(),
                container_links: self.endpoints.len(),
            },
            maps,
            traffic,
            drops,
        })))
    }
}

impl Observability for EbpfDriver {
    fn metrics(&self) -> Result<DatapathMetrics> {
        let mut conntrack: BTreeMap<(String, String), u64> = BTreeMap::new();
        for row in self.conntrack()? {
            let key = (row.proto.to_string(), row.direction.label().to_owned());
            *conntrack.entry(key).or_default() += 1;
        }
        Ok(DatapathMetrics {
            traffic: self
                .datapath
                .maps
                .counters
                .traffic()?
                .into_iter()
                .map(|(class, c)| (class.label(), c.packets, c.bytes))
                .collect(),
            drops: self
                .datapath
                .maps
                .counters
                .drops()?
                .into_iter()
                .map(|(reason, n)| (reason.label(), n))
                .collect(),
            drops_by_interface: self
                .datapath
                .maps
                .counters
                .drops_by_interface()?
                .into_iter()
                .map(|(ifindex, reason, n)| (interface_name(ifindex), reason.label(), n))
                .collect(),
            tables: self
                .datapath
                .maps
                .fill_levels()?
                .into_iter()
                .map(|m| TableFill {
                    name: m.name.to_owned(),
                    entries: m.entries,
                    capacity: m.capacity,
                    evicted: m.evicted,
                })
                .collect(),
            conntrack: conntrack.into_iter().map(|((p, d), n)| (p, d, n)).collect(),
        })
    }

    fn drop_stream(&mut self) -> Result<Option<DropStream>> {
        let ring = self.datapath.take_drop_events()?;
        let batches = futures::stream::unfold(ring, |mut ring| async move {
            let batch = ring.next_batch().await?;
            Some((batch.iter().map(dropped_packet).collect(), ring))
        });
        Ok(Some(Box::pin(batches)))
    }
}

/// A drop event as the programs wrote it, for `netd monitor`.
fn dropped_packet(event: &netd_common::DropEvent) -> DroppedPacket {
    let addr = |ip: [u8; 4], port: [u8; 2]| {
        std::net::SocketAddr::from((Ipv4Addr::from(ip), u16::from_be_bytes(port)))
    };
    DroppedPacket {
        reason: netd_common::DropReason::from_u32(event.reason).map_or("unknown", |r| r.label()),
        ifindex: event.ifindex,
        hook: match event.hook {
            netd_common::HOOK_XDP => "xdp",
            _ => "tc",
        },
        proto: event.proto,
        src: addr(event.src, event.src_port),
        dst: addr(event.dst, event.dst_port),
        left_out: event.suppressed,
    }
}

/// An interface's name, or `if<index>` once it is gone.
fn interface_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| format!("if{ifindex}"))
}

/// One family's conntrack entries as rows.
fn rows_of<A: ConntrackFamily>(entries: Vec<maps::ConntrackRow<A>>) -> Vec<ConntrackRow> {
    let now = monotonic_ns() as i64;
    let addr = |ip: A, port: [u8; 2]| SocketAddr::new(A::ip(ip), u16::from_be_bytes(port));
    let tuple = |k: &CtKey<A>| (addr(k.src, k.src_port), addr(k.dst, k.dst_port));
    entries
        .into_iter()
        .map(|(key, entry)| {
            let (src, dst) = tuple(&key);
            let (translated_src, translated_dst) = tuple(&entry.xlat);
            let flag = |bit: u32| entry.flags & bit != 0;
            ConntrackRow {
                proto: IpProto::from_number(key.proto),
                src,
                dst,
                translated_src,
                translated_dst,
                direction: match flag(netd_common::CT_REPLY) {
                    true => FlowDirection::Reply,
                    false => FlowDirection::Original,
                },
                nat: NatKind::of(flag(netd_common::CT_SNAT), flag(netd_common::CT_DNAT)),
                expires_in_s: (entry.expires_ns as i64 - now) / 1_000_000_000,
            }
        })
        .collect()
}
