//! The fast path: forwarding packets the way the host would route them,
//! without the bridge, the host's routing slow path and netfilter.
//!
//! - into a container: `bpf_redirect_peer` from a TC ingress hook moves the
//!   packet straight into the container's namespace;
//! - out of the uplink: a FIB lookup picks the next hop, `bpf_check_mtu`
//!   (or, before Linux 5.12, a length check against the uplink's MTU) keeps
//!   oversized packets on the slow path (so the kernel sends the container
//!   "fragmentation needed"), and `bpf_redirect` /
//!   `bpf_redirect_neigh` transmit on the uplink.
//!
//! Each returns None when the packet must take the normal path instead.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{
        bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer, bpf_skb_change_type,
    },
    programs::TcContext,
};
use netd_common::{FASTPATH_MARK, Ipv4};

use crate::{
    nat,
    offsets::{ETH_LEN, IP_CHECK, IP_TTL},
    parse::Ipv4Packet,
    policy,
};

const AF_INET: u8 = 2;

/// Redirects a packet already addressed to container `dst` into that
/// container's namespace (TC ingress only), with the L2 header the gateway
/// would have written. `routed` packets (from the uplink) lose one TTL.
#[inline(always)]
pub fn to_container(ctx: &TcContext, ip: &Ipv4Packet, dst: Ipv4, routed: bool) -> Option<i32> {
    let endpoint = policy::endpoint(dst)?;
    let network = policy::network_of(dst)?;
    let (ifindex, mac, gateway_mac) = (endpoint.ifindex, endpoint.mac, network.gateway_mac);
    if routed {
        decrement_ttl(ctx, ip)?;
    } else {
        for_this_host(ctx)?;
    }
    ctx.store(0, &mac, 0).ok()?;
    ctx.store(6, &gateway_mac, 0).ok()?;
    // SAFETY: plain helper call; it returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    Some(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}

/// A packet a container sent to its gateway's MAC arrived on the host side
/// of its veth as "for another host" (the veth has a MAC of its own);
/// redirected into another container as it is, that container's stack
/// would drop it. Newer kernels reset the type on a peer redirect (Debian's
/// 6.1 and later here), 5.10 does not: say it is for this host (the
/// hairpin paths).
#[inline(always)]
pub fn for_this_host(ctx: &TcContext) -> Option<()> {
    const PACKET_HOST: u32 = 0;
    // SAFETY: plain helper call on the program's own skb.
    let rc = unsafe { bpf_skb_change_type(ctx.as_ptr().cast::<__sk_buff>(), PACKET_HOST) };
    (rc == 0).then_some(())
}

/// Where the uplink fast path would send a packet: decided before any NAT,
/// so a packet that must take the slow path is still untranslated.
pub struct UplinkRoute {
    /// The uplink it leaves by.
    pub ifindex: u32,
    /// (destination MAC, source MAC) when the neighbour is known.
    macs: Option<([u8; 6], [u8; 6])>,
}

/// The uplink route for a container's packet, if the FIB sends it out of
/// an uplink, it fits that uplink's MTU and its TTL allows another hop.
#[inline(always)]
pub fn route_to_uplink(
    ctx: &TcContext,
    ip: &Ipv4Packet,
    ingress_ifindex: u32,
) -> Option<UplinkRoute> {
    if nat::config_map().get(0)?.fast_path == 0 || ip.ttl <= 1 {
        return None;
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ingress_ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    let size = core::mem::size_of::<bpf_fib_lookup>() as i32;
    // SAFETY: params lives on the stack for the call.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut params, size, 0) } as u32;
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return None;
    }
    // Only out of an interface to the outside (not into another bridge).
    let uplink = params.ifindex;
    if !fits_uplink_mtu(ctx, uplink, nat::uplink(uplink)?.mtu) {
        return None;
    }
    let macs = if rc == BPF_FIB_LKUP_RET_SUCCESS {
        // SAFETY: the lookup succeeded, so the MAC union holds addresses.
        let macs = unsafe { params.__bindgen_anon_6.__bindgen_anon_2 };
        Some((macs.dmac, macs.smac))
    } else {
        None
    };
    Some(UplinkRoute {
        ifindex: uplink,
        macs,
    })
}

/// 1 where the kernel has `bpf_check_mtu` (5.12 and later), set by the
/// loader before verification. `.rodata` is frozen, so the verifier knows the
/// value and never visits the call on a kernel that would reject it: one
/// object loads on 5.10 and on 6.x.
#[unsafe(no_mangle)]
static HAS_CHECK_MTU: u8 = 1;

/// Whether a packet may leave by the uplink as it is; otherwise the stack
/// takes it (and answers "fragmentation needed" or fragments it).
#[inline(always)]
fn fits_uplink_mtu(ctx: &TcContext, uplink: u32, uplink_mtu: u32) -> bool {
    // SAFETY: a read of a constant the loader filled in.
    if unsafe { core::ptr::read_volatile(&HAS_CHECK_MTU) } != 0 {
        let mut mtu_len = 0u32;
        // SAFETY: plain helper call; it checks GSO packets per segment.
        return unsafe { bpf_check_mtu(ctx.as_ptr(), uplink, &mut mtu_len, 0, 0) } == 0;
    }
    // Without the helper: our own length check against the uplink's MTU.
    // A GSO packet's segment size is not ours to judge, so it takes the stack.
    // SAFETY: the context is the program's __sk_buff.
    let gso_size = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).gso_size };
    gso_size == 0 && ctx.len() <= uplink_mtu.saturating_add(ETH_LEN as u32)
}

/// Transmits on the uplink along `route` (one hop: TTL minus one), marked
/// so `to_uplink` knows the packet is translated already.
#[inline(always)]
pub fn send_to_uplink(ctx: &TcContext, ip: &Ipv4Packet, route: &UplinkRoute) -> Option<i32> {
    decrement_ttl(ctx, ip)?;
    ctx.set_mark(FASTPATH_MARK);
    match route.macs {
        Some((dmac, smac)) => {
            ctx.store(0, &dmac, 0).ok()?;
            ctx.store(6, &smac, 0).ok()?;
            // SAFETY: plain helper call.
            Some(unsafe { bpf_redirect(route.ifindex, 0) } as i32)
        }
        // No neighbour entry yet: the kernel resolves it on the way out.
        // SAFETY: a null params pointer asks for the FIB's own next hop.
        None => {
            Some(unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
        }
    }
}

/// True (and the mark cleared, so it goes no further) for a packet
/// `send_to_uplink` redirected.
#[inline(always)]
pub fn take_fastpath_mark(ctx: &TcContext) -> bool {
    // SAFETY: the context is the program's __sk_buff.
    let mark = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark };
    if mark != FASTPATH_MARK {
        return false;
    }
    ctx.set_mark(0);
    true
}

/// One routing hop: TTL minus one, checksum updated. None when the TTL runs
/// out, so the kernel answers with ICMP time exceeded.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ip: &Ipv4Packet) -> Option<()> {
    if ip.ttl <= 1 {
        return None;
    }
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]);
    ctx.l3_csum_replace(IP_CHECK, u64::from(old.to_be()), u64::from(new.to_be()), 2)
        .ok()?;
    ctx.store(IP_TTL, &(ip.ttl - 1), 0).ok()
}
