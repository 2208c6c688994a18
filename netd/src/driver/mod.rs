//! One trait for the firewall drivers (netavark's shape): the daemon does
//! links and addresses itself and tells the driver what to enforce. One
//! module per driver.

mod ebpf;
mod iptables;
mod netfilter;
mod nf_conntrack;
mod nftables;
mod noop;
#[cfg(test)]
mod topologies;

pub use ebpf::{EbpfDriver, EbpfSettings, NatPorts};
pub use iptables::IptablesDriver;
pub use nftables::{NftablesDriver, TABLE as NFTABLES_TABLE};
pub use noop::NoopDriver;

use std::net::Ipv4Addr;

pub use crate::api::ConntrackRow;
use crate::{
    api::DatapathStatus,
    state::{Attachment, Network, PublishedPort},
};
use anyhow::Result;

/// Whether bridged (same-network) traffic passes through netfilter's IPv4
/// and IPv6 hooks, iptables' and nftables' tables alike (br_netfilter).
/// Docker's icc=false needs it; the eBPF datapath does not want it. A
/// kernel without br_netfilter has no such sysctl: nothing to do.
fn set_bridge_netfilter(on: bool) -> Result<()> {
    for family in ["iptables", "ip6tables"] {
        let path = format!("/proc/sys/net/bridge/bridge-nf-call-{family}");
        if std::path::Path::new(&path).exists() {
            std::fs::write(path, if on { "1" } else { "0" })?;
        }
    }
    Ok(())
}

/// An interface to the outside: container traffic leaving by it is
/// masqueraded behind its address, and published ports answer on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// Its IPv4 addresses, primary first.
    pub addrs: Vec<Ipv4Addr>,
    /// Its global IPv6 addresses, in the kernel's order (NAT66 takes the
    /// first).
    pub addrs6: Vec<std::net::Ipv6Addr>,
    /// The kind of a virtual link (`veth`, …); none for a NIC.
    pub kind: Option<String>,
}

/// What the drivers need to know of the host, kept current from rtnetlink
/// events (addresses added, removed, renumbered; links up, down, new).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub uplinks: Vec<Uplink>,
    /// Every IPv4 address of the namespace: published ports answer on all
    /// of them (Docker's `-m addrtype --dst-type LOCAL`).
    pub local_addrs: Vec<Ipv4Addr>,
    /// Every global IPv6 address of the namespace (the host, to containers).
    pub local_addrs6: Vec<std::net::Ipv6Addr>,
}

/// How full one of the datapath's tables is (a BPF map, the kernel's
/// conntrack table).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableFill {
    pub name: String,
    pub entries: usize,
    pub capacity: u32,
    /// Entries evicted to make room, where the table counts them.
    pub evicted: Option<u64>,
}

/// The datapath's counters and sizes, for `/metrics`.
#[derive(Debug, Default)]
pub struct DatapathMetrics {
    /// (class, packets, bytes)
    pub traffic: Vec<(&'static str, u64, u64)>,
    /// (reason, packets)
    pub drops: Vec<(&'static str, u64)>,
    /// (interface, reason, packets)
    pub drops_by_interface: Vec<(String, &'static str, u64)>,
    pub tables: Vec<TableFill>,
    /// (protocol, direction, entries)
    pub conntrack: Vec<(String, String, u64)>,
}

/// One dropped packet, as `netd monitor` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedPacket {
    pub reason: &'static str,
    pub ifindex: u32,
    /// The hook that dropped it (`tc`, `xdp`).
    pub hook: &'static str,
    pub proto: u8,
    pub src: std::net::SocketAddr,
    pub dst: std::net::SocketAddr,
    /// Drops left out of the stream before this one (a flood is sampled).
    pub left_out: u32,
}

/// Dropped packets as the datapath reports them, in batches.
pub type DropStream = std::pin::Pin<Box<dyn futures::Stream<Item = Vec<DroppedPacket>> + Send>>;

/// What a datapath shows of itself: counters, table fill, drops as they
/// happen. Every driver has one; what its kernel keeps for it is its own.
pub trait Observability {
    /// Counters and sizes for `/metrics`.
    fn metrics(&self) -> Result<DatapathMetrics>;
    /// The stream of dropped packets, for one reader; `None` where the
    /// datapath reports no single drops.
    fn drop_stream(&mut self) -> Result<Option<DropStream>> {
        Ok(None)
    }
}

/// What is left to do for a removed container while its veths go.
pub type Leftovers = Box<dyn FnOnce() + Send + Sync>;

/// A firewall driver: Docker's bridge-network semantics (isolation,
/// published ports, masquerade, the user's rules) enforced by one
/// mechanism. What that mechanism needs (programs, qdiscs, pins, chains)
/// is the driver's own business.
pub trait FirewallDriver: Observability + Send + Sync {
    fn name(&self) -> &'static str;

    // Networks and their endpoints.
    fn add_network(&mut self, net: &Network, bridge_mac: [u8; 6]) -> Result<()>;
    fn remove_network(&mut self, net: &Network) -> Result<()>;
    /// `host_ifindex`/`mac`: host side of the veth, container's MAC.
    fn add_endpoint(
        &mut self,
        net: &Network,
        att: &Attachment,
        host_ifindex: u32,
        mac: [u8; 6],
    ) -> Result<()>;
    fn remove_endpoint(&mut self, att: &Attachment) -> Result<()>;
    /// A container going: its ports unpublished and its endpoints removed,
    /// before the caller deletes its veths. What costs less once they are
    /// gone, or need not hold up the caller (forgetting its connections),
    /// is returned, for the caller to run then, from any thread.
    fn retire_container(
        &mut self,
        ports: &[PublishedPort],
        atts: &[Attachment],
    ) -> Result<Leftovers> {
        // Every step tried; the first error returned.
        let mut result = self.unpublish(ports);
        for att in atts {
            let removed = self.remove_endpoint(att);
            result = result.and(removed);
        }
        result.map(|()| Box::new(|| ()) as Leftovers)
    }

    /// Forgets the connections of `ips`, addresses of containers removed
    /// before a crash stopped what [`retire_container`](Self::retire_container)
    /// left to run (nothing to do where it leaves nothing). Returns how many
    /// entries went.
    fn forget_connections(&mut self, _ips: &[Ipv4Addr]) -> Result<usize> {
        Ok(0)
    }

    /// A handle that steers a container namespace's 127.0.0.11:53 to the
    /// resolver on its gateway (`--dns-via cgroup-hooks`): only a datapath
    /// with socket hooks has one.
    fn resolver_steering(&self) -> Result<std::sync::Arc<dyn crate::dns::Steering>> {
        anyhow::bail!(
            "--dns-via cgroup-hooks needs the eBPF datapath's socket hooks; the {} datapath has none \
             (use --dns-via namespace-sockets)",
            self.name()
        )
    }

    // Published ports and the user's rules.
    /// Publishes all of `ports`, or none of them (a range is one call, so a
    /// driver can apply it in one go).
    fn publish(&mut self, ports: &[PublishedPort]) -> Result<()>;
    /// Unpublishes `ports` and forgets the connections made through them.
    fn unpublish(&mut self, ports: &[PublishedPort]) -> Result<()>;
    /// The user's firewall rules now in force, in order (all of them: the
    /// driver replaces what it had).
    fn set_rules(&mut self, rules: &[crate::rule::ActiveRule]) -> Result<()>;

    // The host and the driver's lifecycle.
    /// The host's interfaces or addresses changed (and once at start).
    fn host_changed(&mut self, _host: &HostInfo) -> Result<()> {
        Ok(())
    }
    /// Restores the driver's own objects that vanished behind its back
    /// (before the daemon re-declares its networks and endpoints).
    fn repair(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Called when the daemon has declared everything it owns (after start
    /// or a repair): the driver applies what it deferred and removes what it
    /// holds that nobody declared. Returns what it removed, for the report.
    fn reconciled(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// `netd down` is removing every object, then calls
    /// [`remove_all`](Self::remove_all): what a driver would redo per
    /// object (a whole rule set, a conntrack walk) may wait for that.
    fn begin_teardown(&mut self) {}
    /// Removes everything the driver installed (for `netd down`).
    fn remove_all(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    // What it holds.
    fn conntrack(&self) -> Result<Vec<ConntrackRow>>;
    /// Removes expired connections; returns how many entries went.
    fn gc(&mut self) -> Result<usize>;
    fn status(&self) -> Result<DatapathStatus>;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;
