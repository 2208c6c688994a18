//! What the daemon declared to the eBPF driver since start: after
//! re-adoption, map entries beyond these are leftovers of state that no
//! longer exists.

use std::{collections::HashSet, net::Ipv4Addr};

use netd_common::{PortKey, TrustKey};

#[derive(Default)]
pub(super) struct Declared {
    pub(super) networks: HashSet<(Ipv4Addr, u8)>,
    pub(super) endpoints: HashSet<Ipv4Addr>,
    /// The host's addresses (all interfaces) and the networks' gateways.
    pub(super) host_addrs: HashSet<Ipv4Addr>,
    pub(super) gateways: HashSet<Ipv4Addr>,
    pub(super) ports: HashSet<PortKey>,
    /// (network ID, address, prefix length) of each routed CIDR.
    pub(super) routed: HashSet<(u32, Ipv4Addr, u8)>,
    pub(super) trusted: HashSet<TrustKey>,
}

impl Declared {
    /// What `LOCAL_ADDRS` must hold.
    pub(super) fn local_addrs(&self) -> HashSet<Ipv4Addr> {
        self.host_addrs
            .iter()
            .chain(&self.gateways)
            .copied()
            .chain([Ipv4Addr::LOCALHOST])
            .collect()
    }
}
