//! Process-wide settings (`CONFIG`), the uplinks (`UPLINKS`) and the socket
//! hooks' maps (`SOCK_REVNAT`, `NETNS_PROBE`).

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::MapData};
use netd_common::{
    UplinkInfo,
    maps::{CONFIG, MapDef, NETNS_PROBE, SOCK_REVNAT, UPLINKS},
};

use super::{Hash, Slots, data, done_if_missing, open};

pub struct Config {
    config: Slots<CONFIG>,
    uplinks: Hash<UPLINKS>,
}

impl Config {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: open::<CONFIG, _>(ebpf)?,
            uplinks: open::<UPLINKS, _>(ebpf)?,
        })
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((CONFIG::NAME, data(&self.config)));
        maps.push((UPLINKS::NAME, data(&self.uplinks)));
    }

    pub fn set(&mut self, config: netd_common::Config) -> Result<()> {
        self.config.set(0, &config, 0).context("writing CONFIG")
    }

    /// The configuration in the map (a previous run's, after a restart).
    pub fn get(&self) -> Result<netd_common::Config> {
        self.config.get(&0, 0).context("reading CONFIG")
    }

    pub fn set_uplink(&mut self, ifindex: u32, info: UplinkInfo) -> Result<()> {
        self.uplinks
            .insert(&ifindex, &info, 0)
            .with_context(|| format!("adding uplink {ifindex}"))
    }

    pub fn remove_uplink(&mut self, ifindex: u32) -> Result<()> {
        done_if_missing(self.uplinks.remove(&ifindex))
            .with_context(|| format!("removing uplink {ifindex}"))
    }

    pub fn uplinks(&self) -> Result<Vec<u32>> {
        Ok(self.uplinks.keys().filter_map(Result::ok).collect())
    }
}

/// The socket hooks' maps: user space reads only the netns probe.
pub struct Sockets {
    revnat: Hash<SOCK_REVNAT>,
    netns_probe: Hash<NETNS_PROBE>,
}

impl Sockets {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            revnat: open::<SOCK_REVNAT, _>(ebpf)?,
            netns_probe: open::<NETNS_PROBE, _>(ebpf)?,
        })
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((SOCK_REVNAT::NAME, data(&self.revnat)));
        maps.push((NETNS_PROBE::NAME, data(&self.netns_probe)));
    }

    /// The namespace cookie the connect4 hook recorded for the socket with
    /// cookie `socket`, taken out of the map.
    pub fn take_netns_probe(&mut self, socket: u64) -> Result<u64> {
        let cookie = self.netns_probe.get(&socket, 0)?;
        let _ = self.netns_probe.remove(&socket);
        Ok(cookie)
    }
}
