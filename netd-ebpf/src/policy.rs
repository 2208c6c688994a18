//! Who may talk to whom: anti-spoofing and Docker's bridge-network rules
//! (isolation between networks, icc=false, internal networks), decided from
//! maps user space fills.

use crate::maps::bpf_map;
use aya_ebpf::maps::lpm_trie::Key;
use netd_common::{
    DropReason, Endpoint, Ipv4, NET_ICC, NET_INTERNAL, NET_ROUTED, NET_TRUSTS_INTERFACES,
    NetworkInfo, TrustKey, routed_key,
};

// Subnet -> network. Subnets never overlap (user space refuses that).
bpf_map!(NETWORKS: LpmTrie);

// Container address -> its interface.
bpf_map!(ENDPOINTS: HashMap);

// The host's own addresses (Docker's `addrtype LOCAL`).
bpf_map!(LOCAL_ADDRS: HashMap);

// (network, CIDR) -> 1: destinations a network reaches without masquerade,
// and sources that may reach its containers unsolicited (the pods of a
// cluster's other nodes, routed to this node's pod CIDR).
bpf_map!(ROUTED_CIDRS: LpmTrie);

// (network, interface) -> 1: Docker 28.2's trusted host interfaces.
bpf_map!(TRUSTED_INTERFACES: HashMap);

#[inline(always)]
pub fn network_of(addr: Ipv4) -> Option<&'static NetworkInfo> {
    NETWORKS.get(&Key::new(32, addr))
}

#[inline(always)]
pub fn endpoint(addr: Ipv4) -> Option<&'static Endpoint> {
    // SAFETY: read-only view of a map value; fields are plain data.
    unsafe { ENDPOINTS.get(&addr) }
}

#[inline(always)]
pub fn is_local(addr: Ipv4) -> bool {
    // SAFETY: as above.
    unsafe { LOCAL_ADDRS.get(&addr).is_some() }
}

/// The sender must be the endpoint registered for this address, on this
/// interface, with this MAC.
#[inline(always)]
pub fn check_source(
    src: Ipv4,
    src_mac: [u8; 6],
    ifindex: u32,
) -> Result<&'static Endpoint, DropReason> {
    match endpoint(src) {
        Some(ep) if ep.ifindex == ifindex && ep.mac == src_mac => Ok(ep),
        _ => Err(DropReason::SpoofedSource),
    }
}

/// A packet from outside cannot come from one of this host's containers or
/// from a loopback address: such a source is forged.
#[inline(always)]
pub fn check_outside_source(src: Ipv4) -> Result<(), DropReason> {
    if src[0] == 127 || endpoint(src).is_some() {
        return Err(DropReason::SpoofedSource);
    }
    Ok(())
}

/// Docker's FORWARD-chain decisions for a packet a container sends to `dst`
/// (`local`: a host address, as the caller found). Traffic to the host
/// itself is allowed, as Docker leaves INPUT alone. Returns `dst`'s network,
/// looked up once for the caller too.
#[inline(always)]
pub fn check_from_container(
    ep: &Endpoint,
    dst: Ipv4,
    local: bool,
) -> Result<Option<&'static NetworkInfo>, DropReason> {
    let net = network_of(dst);
    if local || is_broadcast_or_multicast(dst) {
        return Ok(net);
    }
    match net {
        Some(n) if n.id != ep.network_id => Err(DropReason::NetworkIsolation),
        Some(n) if n.flags & NET_ICC == 0 => Err(DropReason::IccDisabled),
        Some(_) => Ok(net),
        None if ep.network_flags & NET_INTERNAL != 0 => Err(DropReason::InternalNetwork),
        None => Ok(None),
    }
}

#[inline(always)]
fn is_broadcast_or_multicast(addr: Ipv4) -> bool {
    addr == [255; 4] || addr[0] & 0xf0 == 0xe0
}

/// Whether `addr` is in one of `net`'s routed CIDRs.
#[inline(always)]
pub fn is_routed(net: &NetworkInfo, addr: Ipv4) -> bool {
    net.flags & NET_ROUTED != 0
        && ROUTED_CIDRS
            .get(&Key::new(64, routed_key(net.id, addr)))
            .is_some()
}

/// Whether `net` trusts what arrives on interface `ifindex`.
#[inline(always)]
pub fn trusts(net: &NetworkInfo, ifindex: u32) -> bool {
    let key = TrustKey {
        network_id: net.id,
        ifindex,
    };
    // SAFETY: read-only view of a map value.
    net.flags & NET_TRUSTS_INTERFACES != 0 && unsafe { TRUSTED_INTERFACES.get(&key) }.is_some()
}
