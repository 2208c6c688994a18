//! Who may talk to whom: anti-spoofing and Docker's bridge-network rules
//! (isolation between networks, icc=false, internal networks), decided from
//! maps user space fills.

use crate::maps::bpf_map;
use aya_ebpf::maps::lpm_trie::Key;
use netd_common::{
    DropReason, Endpoint, Ipv4, Ipv6, NET_GATEWAY_ROUTED, NET_ICC, NET_INTERNAL, NET_ROUTED,
    NET_TRUSTS_INTERFACES, Network6Info, NetworkInfo, TrustKey, routed_key,
};

use crate::parse::{
    Frame, ICMPV6_REDIRECT, ICMPV6_ROUTER_ADVERT, IPPROTO_ICMPV6, Ipv6Packet, is_walked_ext_header,
    ptr_at,
};

// Subnet -> network. Subnets never overlap (user space refuses that).
bpf_map!(NETWORKS: LpmTrie);

// Container address -> its interface.
bpf_map!(ENDPOINTS: HashMap);

// IPv6 subnet -> network; container IPv6 address -> its interface.
bpf_map!(NETWORKS6: LpmTrie);
bpf_map!(ENDPOINTS6: HashMap);
// Host-side veths whose network has IPv6 -> that network's flags.
bpf_map!(IPV6_PORTS: HashMap);
// The host's own global IPv6 addresses.
bpf_map!(LOCAL_ADDRS6: HashMap);

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

#[inline(always)]
pub fn network6_of(addr: &Ipv6) -> Option<&'static Network6Info> {
    NETWORKS6.get(&Key::new(128, *addr))
}

#[inline(always)]
pub fn endpoint6(addr: &Ipv6) -> Option<&'static Endpoint> {
    // SAFETY: read-only view of a map value; fields are plain data.
    unsafe { ENDPOINTS6.get(addr) }
}

/// Whether `addr` is one of the host's own global IPv6 addresses.
#[inline(always)]
pub fn is_local6(addr: &Ipv6) -> bool {
    // SAFETY: only the presence of the value is read.
    unsafe { LOCAL_ADDRS6.get(addr) }.is_some()
}

/// The IPv6 twin of [`check_source`] and of the ARP check: a global source
/// must be the sender's registered address (interface and MAC); a
/// link-local one (neighbour discovery, router solicitations) or the
/// unspecified one (duplicate address detection) stays on the link; a
/// neighbour advertisement may only claim the sender's own address; router
/// advertisements and redirects are a router's, never a container's.
/// Returns the sender's endpoint when the source is a global address.
#[inline(always)]
pub fn check_source6<F: Frame>(
    ctx: &F,
    ip: &Ipv6Packet,
    src_mac: [u8; 6],
    ifindex: u32,
) -> Result<Option<&'static Endpoint>, DropReason> {
    // SAFETY: read-only copy of a map value.
    let Some(&port_flags) = (unsafe { IPV6_PORTS.get(&ifindex) }) else {
        return Err(DropReason::Ipv6Off);
    };
    if is_walked_ext_header(ip.upper) {
        return Err(DropReason::Ipv6HeaderChain); // the message is out of sight
    }
    // A container is no router: its router advertisements and redirects
    // would give the other containers its own default route.
    if ip.upper == IPPROTO_ICMPV6
        && (ip.icmp_type == ICMPV6_ROUTER_ADVERT || ip.icmp_type == ICMPV6_REDIRECT)
    {
        return Err(DropReason::SpoofedSource);
    }
    if ip.advertised_at != 0 {
        // In the packet (parse pulled it in), looked up where it lies.
        let target: *const Ipv6 =
            ptr_at(ctx, usize::from(ip.advertised_at)).ok_or(DropReason::TruncatedL4)?;
        // SAFETY: bounds checked by ptr_at; the packet does not change
        // between here and the lookup.
        let target = unsafe { &*target };
        if !Ipv6Packet::is_link_scoped(target)
            && !endpoint6(target).is_some_and(|ep| ep.ifindex == ifindex && ep.mac == src_mac)
        {
            return Err(DropReason::SpoofedSource);
        }
    }
    if Ipv6Packet::is_unspecified(ip.src()) || Ipv6Packet::is_link_scoped(ip.src()) {
        return match Ipv6Packet::is_link_scoped(ip.dst()) {
            true => check_on_link(ip, port_flags).map(|()| None),
            false => Err(DropReason::SpoofedSource),
        };
    }
    match endpoint6(ip.src()) {
        Some(ep) if ep.ifindex == ifindex && ep.mac == src_mac => Ok(Some(ep)),
        _ => Err(DropReason::SpoofedSource),
    }
}

/// On the link (multicast, link-local unicast): icc=false leaves neighbour
/// discovery and multicast listener messages between containers, nothing
/// else, as Docker's ip6tables FORWARD drop does.
#[inline(always)]
fn check_on_link(ip: &Ipv6Packet, network_flags: u32) -> Result<(), DropReason> {
    let multicast = ip.dst()[0].to_ne_bytes()[0] == 0xff;
    if multicast || network_flags & NET_ICC != 0 || ip.is_link_control() {
        return Ok(());
    }
    Err(DropReason::IccDisabled)
}

/// Docker's FORWARD-chain decisions for IPv6 a container sends from its
/// global address: the link and the host (its addresses, the gateways)
/// are open; another
/// network is isolated; icc=false holds within the network; beyond the
/// host, an internal network reaches nothing and the others cannot go yet.
#[inline(always)]
/// Ok(true): for the host (one of its addresses, a gateway), where hairpin
/// may apply.
pub fn check_from_container6(ep: &Endpoint, ip: &Ipv6Packet) -> Result<bool, DropReason> {
    let dst = ip.dst();
    if Ipv6Packet::is_link_scoped(dst) {
        return check_on_link(ip, ep.network_flags).map(|()| false);
    }
    if is_local6(dst) {
        return Ok(true);
    }
    match network6_of(dst) {
        Some(n) if n.gateway == *dst => Ok(true),
        Some(n) if n.id != ep.network_id => Err(DropReason::NetworkIsolation),
        Some(n) if n.flags & NET_ICC == 0 => Err(DropReason::IccDisabled),
        Some(_) => Ok(false),
        None if ep.network_flags & NET_INTERNAL != 0 => Err(DropReason::InternalNetwork),
        None if ep.network_flags & NET_GATEWAY_ROUTED != 0 => {
            Err(DropReason::Ipv6OutboundUnsupported)
        }
        // Beyond the host: the kernel routes it, to_uplink translates it.
        None => Ok(false),
    }
}

/// From outside, a source that is one of this host's containers' IPv6
/// addresses is forged.
#[inline(always)]
pub fn check_outside_source6(src: &Ipv6) -> Result<(), DropReason> {
    match endpoint6(src) {
        Some(_) => Err(DropReason::SpoofedSource),
        None => Ok(()),
    }
}

/// IPv6 from outside, not part of a tracked connection: a container source
/// is forged, and no container address is open to it.
#[inline(always)]
pub fn check_from_outside6(src: &Ipv6, dst: &Ipv6) -> Result<(), DropReason> {
    check_outside_source6(src)?;
    match network6_of(dst) {
        Some(n) if n.gateway != *dst => Err(DropReason::UnsolicitedInbound),
        _ => Ok(()),
    }
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
