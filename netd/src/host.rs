//! The host layer: what the engine asks of the kernel besides the datapath
//! (bridges, veths, addresses, routes, namespaces), as one trait. The
//! daemon uses [`NetlinkHost`]; the engine's unit tests use an in-memory
//! host, so allocation, rollback and persistence are tested without root.

use std::{
    collections::BTreeSet,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

mod ipv6;

pub use ipv6::{DefaultRoutes, VethIpv6};
use ipv6::{disable_ipv6_here, enable_ipv6_here, enable_ipv6_in};

use crate::{
    cidr::Cidr,
    driver::{HostInfo, Uplink},
    netlink::{self, Netlink},
    state::State,
};

/// The MAC of a netd interface with address `address` (Docker's scheme:
/// 02:42 then the address), for containers and bridges alike: a container
/// that comes back on the same IP has the same MAC, so no neighbour holds
/// a stale one.
pub fn mac_for(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x42, a, b, c, d]
}

/// One container interface to create: the host side `host_veth` on
/// `bridge`, the other side moved into the namespace at `netns` and named
/// `ifname`, with `address` and `mac`.
#[derive(Clone, Debug)]
pub struct VethPlan<'a> {
    pub netns: &'a Path,
    pub bridge: &'a str,
    /// The bridge's address (its MAC is [`mac_for`] it).
    pub gateway: Ipv4Addr,
    pub host_veth: &'a str,
    pub ifname: &'a str,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The interface's IPv6 side, on a network with IPv6.
    pub ipv6: Option<VethIpv6>,
}

/// Everything here is idempotent where it removes: an object already gone
/// counts as removed (a crash or a user may have gone first).
pub trait Host: Clone + Send + Sync + 'static {
    /// Destinations of the main table's routes other than the default route
    /// (a new network's subnet must not shadow them).
    fn routed_subnets(&self) -> impl Future<Output = Result<Vec<Cidr>>> + Send;
    /// The uplinks and local addresses (see [`NetlinkHost::host_info`]).
    fn host_info(
        &self,
        state: &State,
        configured: &[String],
        at_start: bool,
    ) -> impl Future<Output = Result<HostInfo>> + Send;
    /// A bridge, up, with `gateway` on it (`prefix_len` `None`: no address,
    /// the MAC still derived from `gateway`) and `ipv6`'s gateway and
    /// prefix length if given; returns its MAC.
    fn create_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateway: Ipv4Addr,
        prefix_len: Option<u8>,
        ipv6: Option<(Ipv6Addr, u8)>,
    ) -> impl Future<Output = Result<[u8; 6]>> + Send;
    /// The bridge as `create_bridge` leaves it, made again (`true`) if it is
    /// gone, its gateway put back if missing; returns its MAC.
    fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateway: Ipv4Addr,
        prefix_len: Option<u8>,
        ipv6: Option<(Ipv6Addr, u8)>,
    ) -> impl Future<Output = Result<([u8; 6], bool)>> + Send;
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// A link's index, if it exists.
    fn link_index(&self, name: &str) -> impl Future<Output = Result<Option<u32>>> + Send;

    fn netns_path(&self, name: &str) -> PathBuf;
    /// Whether `path` still holds a network namespace: a runtime
    /// bind-mounts its sandboxes and may leave the empty file behind once
    /// it is gone.
    fn is_live_netns(&self, path: &Path) -> bool {
        nix::sys::statfs::statfs(path)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }
    fn netns_exists(&self, name: &str) -> bool {
        self.netns_path(name).exists()
    }
    /// A new named namespace with loopback up (IPv6 off, gratuitous ARP on,
    /// as Docker sets them).
    fn create_netns(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Names the daemon's own namespace (`--network host`).
    fn name_current_netns(&self, name: &str) -> Result<()>;
    fn delete_netns(&self, name: &str) -> Result<()>;

    /// Creates the veth of `plan`, configured but down inside the
    /// container, its host side up on the bridge; returns the host side's
    /// index. On failure deleting `host_veth` removes whatever was made.
    fn create_veth(&self, plan: &VethPlan<'_>) -> impl Future<Output = Result<u32>> + Send;
    /// Removes the bridge's neighbour entry for a container address that
    /// went (nothing when there is none, or no bridge).
    fn forget_neighbour(&self, bridge: &str, ip: IpAddr)
    -> impl Future<Output = Result<()>> + Send;
    /// A veth for a runtime's sandbox: the host side `host_veth` up on
    /// `bridge`, the other side ([`peer_name`]) left down in this namespace
    /// with `mac`, for the runtime to move and configure. Returns the host
    /// side's index.
    fn create_runtime_veth(
        &self,
        bridge: &str,
        host_veth: &str,
        mtu: u32,
        mac: [u8; 6],
    ) -> impl Future<Output = Result<u32>> + Send;
    /// Brings the container side up (its gratuitous ARP goes out now) and
    /// adds the default routes given.
    fn finish_veth(
        &self,
        netns: &Path,
        ifname: &str,
        routes: DefaultRoutes,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Waits (up to `limit`) until none of `links` exists any more (they
    /// go with namespaces the kernel destroys in the background).
    fn wait_links_gone(
        &self,
        _links: &[String],
        _limit: std::time::Duration,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// While `on`, [`reattach_veth`](Self::reattach_veth) may answer from
    /// one snapshot of the host's links taken now (a reconciliation); off
    /// drops it.
    fn snapshot_links(&self, _on: bool) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Puts an existing host-side veth back on `bridge` (a bridge made again
    /// has no ports); `None` when the veth is gone.
    fn reattach_veth(
        &self,
        host_veth: &str,
        bridge: &str,
    ) -> impl Future<Output = Result<Option<u32>>> + Send;
    /// The IPv4 addresses of interface `ifname` inside the namespace;
    /// `None` when there is no such interface.
    fn container_addresses(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<Option<Vec<Ipv4Addr>>>> + Send;
    /// Deletes interface `ifname` inside the namespace, if it is there.
    fn delete_container_link(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The container's default routes as given, replacing any (a family
    /// not given is left as it is).
    fn set_default_route(
        &self,
        netns: &Path,
        routes: DefaultRoutes,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Links by name: (index, master, up).
type LinkSnapshot = std::collections::HashMap<String, (u32, Option<u32>, bool)>;

/// The real host, through rtnetlink and namespace syscalls.
#[derive(Clone)]
pub struct NetlinkHost {
    nl: Netlink,
    /// The host's links by name (index, master, up) while a reconciliation
    /// runs: one dump instead of five requests per container veth.
    links: std::sync::Arc<std::sync::Mutex<Option<LinkSnapshot>>>,
}

impl NetlinkHost {
    pub fn connect() -> Result<Self> {
        Ok(Self {
            nl: Netlink::connect()?,
            links: Default::default(),
        })
    }

    fn known_link(&self, name: &str) -> Option<(u32, Option<u32>, bool)> {
        let links = self.links.lock().expect("links lock");
        links.as_ref()?.get(name).copied()
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }
}

/// The veth's other side keeps this name until it is moved and renamed (a
/// crash can leave it in the host namespace).
pub fn peer_name(host_veth: &str) -> String {
    format!("tmp{}", host_veth.trim_start_matches("veth"))
}

/// Whether `name` is one netd gives a container veth (`veth` or `tmp` and
/// seven hex digits).
pub fn is_container_veth_name(name: &str) -> bool {
    let digits = name
        .strip_prefix("veth")
        .or_else(|| name.strip_prefix("tmp"));
    digits.is_some_and(|d| d.len() == 7 && d.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Host for NetlinkHost {
    async fn routed_subnets(&self) -> Result<Vec<Cidr>> {
        Ok(self
            .nl
            .routes()
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| c.prefix_len() > 0)
            .collect())
    }

    /// The uplinks (the `--uplink` names, or every interface that is not
    /// loopback, a bridge, a bridge port or one of netd's own veths, as
    /// Docker masquerades out of every non-bridge interface) and every
    /// local address.
    async fn host_info(
        &self,
        state: &State,
        configured: &[String],
        at_start: bool,
    ) -> Result<HostInfo> {
        let owned: BTreeSet<&str> = state
            .containers
            .values()
            .flat_map(|c| {
                c.attachments
                    .iter()
                    .map(|a| a.host_veth.as_str())
                    .chain(c.pending_links.iter().map(String::as_str))
            })
            .chain(state.networks.values().map(|n| n.bridge.as_str()))
            .collect();
        let peers: BTreeSet<String> = owned
            .iter()
            .filter(|n| n.starts_with("veth"))
            .map(|n| peer_name(n))
            .collect();
        let addrs = self.nl.all_addresses().await?;
        let addrs6 = self.nl.all_addresses6().await?;
        // Candidates one by one, not from a dump of every link: that dump
        // grows with the square of the veth count.
        let mut candidates = Vec::new();
        if configured.is_empty() {
            // With an IPv4 address: one waiting for DHCP joins when it gets one.
            let indices: BTreeSet<u32> = addrs.iter().map(|(i, _)| *i).collect();
            for index in indices {
                if let Some(link) = self.nl.link_details_of(index).await? {
                    candidates.push(link);
                }
            }
            candidates.retain(|link| {
                link.name != "lo"
                    && !link.bridge
                    && !link.enslaved
                    && !owned.contains(link.name.as_str())
                    && !peers.contains(&link.name)
            });
        } else {
            for name in configured {
                if let Some(link) = self.nl.link_details_named(name).await? {
                    candidates.push(link);
                }
            }
            candidates.sort_by_key(|link| link.index);
            candidates.dedup_by_key(|link| link.index);
        }
        let uplinks: Vec<Uplink> = candidates
            .into_iter()
            .map(|link| Uplink {
                addrs: (addrs.iter().filter(|(i, _)| *i == link.index))
                    .map(|(_, a)| *a)
                    .collect(),
                addrs6: ipv6::sources_of(&addrs6, link.index),
                name: link.name,
                ifindex: link.index,
                mtu: link.mtu,
                kind: link.kind,
            })
            .collect();
        for name in configured.iter().filter(|_| at_start) {
            if !uplinks.iter().any(|u| &u.name == name) {
                bail!("--uplink {name}: no such interface in this network namespace");
            }
        }
        Ok(HostInfo {
            uplinks,
            local_addrs: addrs.into_iter().map(|(_, a)| a).collect(),
            local_addrs6: ipv6::unique(addrs6),
        })
    }

    async fn create_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateway: Ipv4Addr,
        prefix_len: Option<u8>,
        ipv6: Option<(Ipv6Addr, u8)>,
    ) -> Result<[u8; 6]> {
        let index = self.nl.create_bridge(name, mtu, mac_for(gateway)).await?;
        crate::engine::fault_point("network-create:bridge");
        if let Some(prefix_len) = prefix_len {
            self.nl.add_address(index, gateway, prefix_len).await?;
        }
        match ipv6 {
            Some((gateway6, prefix_len)) => {
                enable_ipv6_here(name)?;
                self.nl.add_address6(index, gateway6, prefix_len).await?;
            }
            None => disable_ipv6_here(name)?,
        }
        self.nl.link_mac(index).await
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateway: Ipv4Addr,
        prefix_len: Option<u8>,
        ipv6: Option<(Ipv6Addr, u8)>,
    ) -> Result<([u8; 6], bool)> {
        let (index, remade) = match self.nl.link_index(name).await? {
            Some(index) => (index, false),
            None => (
                self.nl.create_bridge(name, mtu, mac_for(gateway)).await?,
                true,
            ),
        };
        // A bridge of an older netd has the MAC the kernel gave it.
        if self.nl.link_mac(index).await? != mac_for(gateway) {
            self.nl.set_mac(index, mac_for(gateway)).await?;
        }
        if let Some(prefix_len) = prefix_len
            && !self.nl.addresses(index).await?.contains(&gateway)
        {
            self.nl.add_address(index, gateway, prefix_len).await?;
        }
        match ipv6 {
            Some((gateway6, prefix_len)) => {
                enable_ipv6_here(name)?;
                if !self.nl.addresses6(index).await?.contains(&gateway6) {
                    self.nl.add_address6(index, gateway6, prefix_len).await?;
                }
            }
            None => disable_ipv6_here(name)?,
        }
        self.nl.set_up(index).await?;
        Ok((self.nl.link_mac(index).await?, remade))
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        self.nl.delete_link_named(name).await
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        self.nl.link_index(name).await
    }

    fn netns_path(&self, name: &str) -> PathBuf {
        netlink::netns_path(name)
    }

    async fn create_netns(&self, name: &str) -> Result<()> {
        netlink::create_netns(name)?;
        crate::engine::fault_point("container-create:netns");
        let ns_path = netlink::netns_path(name);
        // As Docker does for IPv4-only networks: no IPv6 chatter from containers.
        for scope in ["all", "default"] {
            netlink::sysctl_in(
                &ns_path,
                &format!("net.ipv6.conf.{scope}.disable_ipv6"),
                "1",
            )?;
            // Gratuitous ARP when an address comes up, so neighbours drop a
            // stale MAC at once when a container reconnects on the same IP.
            netlink::sysctl_in(&ns_path, &format!("net.ipv4.conf.{scope}.arp_notify"), "1")?;
        }
        let inner = Netlink::connect_in(&ns_path)?;
        inner.set_up(inner.require_index("lo").await?).await
    }

    fn name_current_netns(&self, name: &str) -> Result<()> {
        netlink::name_current_netns(name)
    }

    fn delete_netns(&self, name: &str) -> Result<()> {
        netlink::delete_netns(name)
    }

    async fn create_veth(&self, plan: &VethPlan<'_>) -> Result<u32> {
        let ns_file = std::fs::File::open(plan.netns)
            .map_err(|err| anyhow::anyhow!("opening {}: {err}", plan.netns.display()))?;
        let bridge = self.nl.require_index(plan.bridge).await?;
        let host_index = self
            .nl
            .create_veth_into(
                plan.host_veth,
                plan.mtu,
                bridge,
                &ns_file,
                plan.ifname,
                plan.mac,
            )
            .await?;
        crate::engine::fault_point("container-create:veth");
        // Permanent neighbour entries both ways: none of them counts
        // against the kernel's neighbour-table limit, shared by every
        // namespace, that ~1,000 containers' dynamic entries exhaust.
        let inside = async {
            let inner = Netlink::connect_in(plan.netns)?;
            let eth = inner.require_index(plan.ifname).await?;
            inner
                .add_address(eth, plan.address, plan.prefix_len)
                .await?;
            inner
                .set_permanent_neighbour(eth, plan.gateway, mac_for(plan.gateway))
                .await?;
            if let Some(v6) = plan.ipv6 {
                enable_ipv6_in(plan.netns, plan.ifname)?;
                inner.add_address6(eth, v6.address, v6.prefix_len).await?;
                inner
                    .set_permanent_neighbour(eth, v6.gateway, mac_for(plan.gateway))
                    .await?;
            }
            anyhow::Ok(())
        };
        let outside = async {
            self.nl
                .set_permanent_neighbour(bridge, plan.address, plan.mac)
                .await?;
            if let Some(v6) = plan.ipv6 {
                self.nl
                    .set_permanent_neighbour(bridge, v6.address, plan.mac)
                    .await?;
            }
            self.nl.set_hairpin(host_index).await?;
            self.nl.set_up(host_index).await
        };
        tokio::try_join!(inside, outside)?;
        Ok(host_index)
    }

    async fn forget_neighbour(&self, bridge: &str, ip: IpAddr) -> Result<()> {
        match self.nl.link_index(bridge).await? {
            Some(index) => self.nl.delete_neighbour(index, ip).await,
            None => Ok(()),
        }
    }

    async fn create_runtime_veth(
        &self,
        bridge: &str,
        host_veth: &str,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<u32> {
        let peer = peer_name(host_veth);
        let (host_index, peer_index) = self.nl.create_veth(host_veth, &peer, mtu).await?;
        self.nl.set_mac(peer_index, mac).await?;
        let bridge = self.nl.require_index(bridge).await?;
        self.nl.set_master(host_index, bridge).await?;
        self.nl.set_hairpin(host_index).await?;
        self.nl.set_up(host_index).await?;
        Ok(host_index)
    }

    async fn finish_veth(&self, netns: &Path, ifname: &str, routes: DefaultRoutes) -> Result<()> {
        let inner = Netlink::connect_in(netns)?;
        inner.set_up(inner.require_index(ifname).await?).await?;
        if let Some(gateway) = routes.v4 {
            inner.add_default_route(gateway).await?;
        }
        if let Some(gateway) = routes.v6 {
            inner.replace_default_route6(gateway).await?;
        }
        Ok(())
    }

    async fn wait_links_gone(&self, links: &[String], limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let Ok(present) = self.nl.link_details().await else {
                return;
            };
            let present: BTreeSet<String> = present.into_iter().map(|l| l.name).collect();
            if !links.iter().any(|l| present.contains(l)) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn snapshot_links(&self, on: bool) -> Result<()> {
        let links = match on {
            true => {
                // Bridge ports and their bridges: what re-adoption asks
                // about. A veth off its bridge is looked up by name.
                let ports = self.nl.bridge_ports().await?;
                let masters: BTreeSet<u32> = ports.iter().filter_map(|p| p.master).collect();
                let mut links: LinkSnapshot = ports
                    .into_iter()
                    .map(|l| (l.name, (l.index, l.master, l.up)))
                    .collect();
                for index in masters {
                    if let Some(l) = self.nl.link_details_of(index).await? {
                        links.insert(l.name, (l.index, l.master, l.up));
                    }
                }
                Some(links)
            }
            false => None,
        };
        *self.links.lock().expect("links lock") = links;
        Ok(())
    }

    async fn reattach_veth(&self, host_veth: &str, bridge: &str) -> Result<Option<u32>> {
        // Where the snapshot shows it up on its bridge, nothing to do (the
        // common case at a restart: one dump, no request per veth).
        if let (Some((index, Some(master), true)), Some((bridge_index, _, _))) =
            (self.known_link(host_veth), self.known_link(bridge))
            && master == bridge_index
        {
            return Ok(Some(index));
        }
        let Some(index) = self.nl.link_index(host_veth).await? else {
            return Ok(None);
        };
        let bridge = self.nl.require_index(bridge).await?;
        self.nl.set_master(index, bridge).await?;
        self.nl.set_hairpin(index).await?;
        self.nl.set_up(index).await?;
        Ok(Some(index))
    }

    async fn container_addresses(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<Vec<Ipv4Addr>>> {
        let inner = Netlink::connect_in(netns)?;
        match inner.link_index(ifname).await? {
            Some(index) => Ok(Some(inner.addresses(index).await?)),
            None => Ok(None),
        }
    }

    async fn delete_container_link(&self, netns: &Path, ifname: &str) -> Result<()> {
        let inner = Netlink::connect_in(netns)?;
        if let Some(stale) = inner.link_index(ifname).await? {
            inner.delete_link(stale).await?;
        }
        Ok(())
    }

    async fn set_default_route(&self, netns: &Path, routes: DefaultRoutes) -> Result<()> {
        let inner = Netlink::connect_in(netns)?;
        if let Some(gateway) = routes.v4 {
            inner.replace_default_route(gateway).await?;
        }
        if let Some(gateway) = routes.v6 {
            inner.replace_default_route6(gateway).await?;
        }
        Ok(())
    }
}
