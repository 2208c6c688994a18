//! Process-wide settings (`CONFIG`), the uplinks (`UPLINKS`) and the socket
//! hooks' maps (`SOCK_REVNAT`, `NETNS_PROBE`, `RESOLVER_STEERING`).

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::MapData};
use netd_common::{
    UplinkInfo, UplinkInfo6,
    maps::{
        CONFIG, MapDef, NETNS_PROBE, RESOLVER_STEERING, SOCK_REVNAT, SOCK_REVNAT6, UPLINKS,
        UPLINKS6,
    },
};

use super::{Hash, Slots, data, done_if_missing, open};

pub struct Config {
    config: Slots<CONFIG>,
    uplinks: Hash<UPLINKS>,
    uplinks6: Hash<UPLINKS6>,
}

impl Config {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: open::<CONFIG, _>(ebpf)?,
            uplinks: open::<UPLINKS, _>(ebpf)?,
            uplinks6: open::<UPLINKS6, _>(ebpf)?,
        })
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((CONFIG::NAME, data(&self.config)));
        maps.push((UPLINKS::NAME, data(&self.uplinks)));
        maps.push((UPLINKS6::NAME, data(&self.uplinks6)));
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

    /// The uplink's IPv6 address for NAT66; `None`: it has none.
    pub fn set_uplink6(&mut self, ifindex: u32, addr: Option<std::net::Ipv6Addr>) -> Result<()> {
        match addr {
            Some(addr) => {
                let info = UplinkInfo6 {
                    masquerade_ip: netd_common::ipv6_from_octets(addr.octets()),
                };
                self.uplinks6
                    .insert(&ifindex, &info, 0)
                    .with_context(|| format!("adding uplink {ifindex}'s IPv6 address"))
            }
            None => done_if_missing(self.uplinks6.remove(&ifindex))
                .with_context(|| format!("removing uplink {ifindex}'s IPv6 address")),
        }
    }

    pub fn uplinks6(&self) -> Result<Vec<u32>> {
        Ok(self.uplinks6.keys().filter_map(Result::ok).collect())
    }
}

/// The socket hooks' maps: user space reads only the netns probe, and
/// writes the resolver steering.
pub struct Sockets {
    revnat: Hash<SOCK_REVNAT>,
    revnat6: Hash<SOCK_REVNAT6>,
    netns_probe: Hash<NETNS_PROBE>,
    steering: Hash<RESOLVER_STEERING>,
}

impl Sockets {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            revnat: open::<SOCK_REVNAT, _>(ebpf)?,
            revnat6: open::<SOCK_REVNAT6, _>(ebpf)?,
            netns_probe: open::<NETNS_PROBE, _>(ebpf)?,
            steering: open::<RESOLVER_STEERING, _>(ebpf)?,
        })
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((SOCK_REVNAT::NAME, data(&self.revnat)));
        maps.push((SOCK_REVNAT6::NAME, data(&self.revnat6)));
        maps.push((NETNS_PROBE::NAME, data(&self.netns_probe)));
        maps.push((RESOLVER_STEERING::NAME, data(&self.steering)));
    }

    /// Another handle on `RESOLVER_STEERING`, for the resolver, which keeps
    /// it filled on its own (away from the datapath's owner).
    pub fn resolver_steering(&self) -> Result<ResolverSteering> {
        use std::os::fd::AsFd as _;
        let fd = data(&self.steering)
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating RESOLVER_STEERING's descriptor")?;
        let map = MapData::from_fd(fd).context("opening RESOLVER_STEERING again")?;
        let map = aya::maps::Map::HashMap(map)
            .try_into()
            .context("RESOLVER_STEERING is not a hash map")?;
        Ok(ResolverSteering::new(map))
    }

    /// The namespace cookie the connect4 hook recorded for the socket with
    /// cookie `socket`, taken out of the map.
    pub fn take_netns_probe(&mut self, socket: u64) -> Result<u64> {
        let cookie = self.netns_probe.get(&socket, 0)?;
        let _ = self.netns_probe.remove(&socket);
        Ok(cookie)
    }
}

/// Which container namespaces' 127.0.0.11:53 the socket hooks steer, and to
/// which gateway (`--dns-via cgroup-hooks`). A namespace can be steered for
/// several served records (a CNI container on two networks is two): it
/// stays steered, to the first of them still there, until the last goes.
pub struct ResolverSteering(std::sync::Mutex<SteeringState>);

struct SteeringState {
    map: Hash<RESOLVER_STEERING>,
    /// The gateways each namespace is steered for, first in the map.
    holders: std::collections::HashMap<u64, Vec<std::net::Ipv4Addr>>,
}

impl ResolverSteering {
    fn new(map: Hash<RESOLVER_STEERING>) -> Self {
        Self(std::sync::Mutex::new(SteeringState {
            map,
            holders: std::collections::HashMap::new(),
        }))
    }
}

impl crate::dns::Steering for ResolverSteering {
    fn steer(&self, netns_cookie: u64, gateway: std::net::Ipv4Addr) -> Result<()> {
        let mut state = self.0.lock().expect("steering lock");
        let holders = state
            .holders
            .get(&netns_cookie)
            .cloned()
            .unwrap_or_default();
        if holders.is_empty() {
            state
                .map
                .insert(&netns_cookie, &gateway.octets(), 0)
                .with_context(|| format!("steering namespace {netns_cookie:#x} to {gateway}"))?;
        }
        state.holders.entry(netns_cookie).or_default().push(gateway);
        Ok(())
    }

    fn unsteer(&self, netns_cookie: u64, gateway: std::net::Ipv4Addr) -> Result<()> {
        let mut state = self.0.lock().expect("steering lock");
        let Some(holders) = state.holders.get_mut(&netns_cookie) else {
            return Ok(());
        };
        if let Some(at) = holders.iter().position(|g| *g == gateway) {
            holders.remove(at);
        }
        match holders.first().copied() {
            Some(next) => state
                .map
                .insert(&netns_cookie, &next.octets(), 0)
                .with_context(|| format!("steering namespace {netns_cookie:#x} to {next}")),
            None => {
                state.holders.remove(&netns_cookie);
                done_if_missing(state.map.remove(&netns_cookie))
                    .with_context(|| format!("no longer steering namespace {netns_cookie:#x}"))
            }
        }
    }
}
