//! IPv6 on the interfaces netd configures: on where a network has it
//! (without duplicate address detection or router advertisements), off
//! where it has none.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result};

use crate::netlink::Address6;

/// A container interface's IPv6 address and its network's IPv6 gateway
/// (on the bridge, whose MAC is the IPv4 gateway's).
#[derive(Clone, Copy, Debug)]
pub struct VethIpv6 {
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Ipv6Addr,
}

/// Where a container's default routes go, per family (none: no route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultRoutes {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// IPv6 on interface `ifname` of this namespace (a host whose default
/// turns it off), with no duplicate address detection (netd's addresses
/// are its own to hand out, and usable at once) and no router
/// advertisements taken from it (the datapath drops containers' anyway).
pub(super) fn enable_ipv6_here(ifname: &str) -> Result<()> {
    enable_forwarding6()?;
    for (key, value) in [
        ("accept_dad", "0"),
        ("accept_ra", "0"),
        ("disable_ipv6", "0"),
    ] {
        let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
        std::fs::write(&path, value).with_context(|| format!("setting {path}"))?;
    }
    Ok(())
}

/// IPv6 forwarding in this namespace, which a network with IPv6 needs to
/// reach beyond the host (as IPv4's `ip_forward`). A host turns router
/// advertisements off on interfaces with `accept_ra=1` once it forwards;
/// those are set to 2 first (as Docker 27 does), so a host configured by
/// router advertisements keeps its default route.
fn enable_forwarding6() -> Result<()> {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    let all = conf.join("all/forwarding");
    if std::fs::read_to_string(&all).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    for dir in std::fs::read_dir(conf).context("listing IPv6 interfaces")? {
        let path = dir
            .context("listing IPv6 interfaces")?
            .path()
            .join("accept_ra");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
            std::fs::write(&path, "2").with_context(|| format!("setting {}", path.display()))?;
            tracing::info!(path = %path.display(), "accept_ra 1 -> 2: router advertisements stay accepted with IPv6 forwarding on");
        }
    }
    std::fs::write(&all, "1").context("enabling IPv6 forwarding")
}

/// No IPv6 on a bridge whose network has none (as Docker): not even a
/// link-local address for its containers to reach the host at. Nothing
/// to do on a kernel without IPv6.
pub(super) fn disable_ipv6_here(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if !Path::new(&path).exists() {
        return Ok(());
    }
    std::fs::write(&path, "1").with_context(|| format!("setting {path}"))
}

/// IPv6 on `ifname` and loopback inside a container's namespace, which
/// [`Host::create_netns`] made with IPv6 off (as Docker: only containers
/// on a network with IPv6 have it).
pub(super) fn enable_ipv6_in(netns: &Path, ifname: &str) -> Result<()> {
    crate::netns::run_in(netns, || {
        for (dev, key, value) in [
            (ifname, "accept_dad", "0"),
            (ifname, "accept_ra", "0"),
            // An unsolicited advertisement when the address comes up, so
            // neighbours drop a stale MAC (IPv6's arp_notify).
            (ifname, "ndisc_notify", "1"),
            (ifname, "disable_ipv6", "0"),
            ("lo", "disable_ipv6", "0"),
        ] {
            let path = format!("/proc/sys/net/ipv6/conf/{dev}/{key}");
            std::fs::write(&path, value).with_context(|| format!("setting {path}"))?;
        }
        Ok(())
    })
}

/// Each address once, in order (one address may sit on several links).
pub(super) fn unique(addrs: Vec<Address6>) -> Vec<Ipv6Addr> {
    let mut all: Vec<Ipv6Addr> = addrs.into_iter().map(|a| a.addr).collect();
    all.sort();
    all.dedup();
    all
}

/// Link `index`'s addresses that may source new connections, the best
/// first (what NAT66 takes).
pub(super) fn sources_of(addrs: &[Address6], index: u32) -> Vec<Ipv6Addr> {
    let mut fit: Vec<&Address6> = addrs
        .iter()
        .filter(|a| a.index == index && a.rank != Address6::NO_SOURCE)
        .collect();
    fit.sort_by_key(|a| a.rank);
    fit.into_iter().map(|a| a.addr).collect()
}
