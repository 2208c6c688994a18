//! NAT66: masquerade of IPv6 container connections behind the uplink's
//! address, the rewrite of a packet to a conntrack tuple, and ICMPv6 errors
//! about translated connections. IPv6 has no header checksum; every
//! upper-layer checksum (ICMPv6's too, unlike ICMP's) covers the addresses
//! through the pseudo-header.

use crate::maps::bpf_map;
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_csum_update},
    programs::TcContext,
};
use netd_common::{Backend6, CtKey6, DropReason, Flow6, Ipv6, PortKey6};

use crate::{
    conntrack,
    nat::rewrite_port,
    offsets::{ETH_LEN, L4_DST_PORT, L4_SRC_PORT, TCP_CHECK, UDP_CHECK},
    parse::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_LEN, header_at},
};

bpf_map!(UPLINKS6: HashMap);

/// The addresses' places in the fixed IPv6 header.
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
const IPV6_NEXT_HDR: usize = 6;
const ICMPV6_CHECK: usize = 2;
/// An echo request's or reply's identifier; an error's quote starts after
/// this many bytes of ICMPv6 header.
const ICMPV6_ECHO_ID: usize = 4;
const ICMPV6_HEADER_LEN: usize = 8;
/// The quoted IPv6 header and the 8 bytes of its upper layer translated.
const ICMPV6_QUOTE: usize = IPV6_LEN + 8;

bpf_map!(PUBLISHED_PORTS6: HashMap);

/// The container behind `dst`:`port` when a port is published there on
/// IPv6: on exactly this address, or on all (`[::]`).
#[inline(always)]
pub fn published_backend6(dst: &Ipv6, port: [u8; 2], proto: u8) -> Option<Backend6> {
    let mut key = PortKey6 {
        host_ip: *dst,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: read-only map values, copied out.
    if let Some(backend) = unsafe { PUBLISHED_PORTS6.get(&key) } {
        return Some(*backend);
    }
    key.host_ip = [0; 4];
    // SAFETY: as above.
    unsafe { PUBLISHED_PORTS6.get(&key) }.copied()
}

/// The source a new container connection leaving by `egress` is
/// masqueraded to: the uplink's IPv6 address.
#[inline(always)]
pub fn masquerade_ip6(egress: u32) -> Result<Ipv6, DropReason> {
    // SAFETY: read-only use of a map value.
    match unsafe { UPLINKS6.get(&egress) } {
        Some(uplink) => Ok(uplink.masquerade_ip),
        None => Err(DropReason::NoIpv6Address),
    }
}

/// Rewrites the packet from tuple `from` to tuple `to` (addresses, ports or
/// the echo identifier) and its upper-layer checksum.
#[inline(always)]
pub fn rewrite6(
    ctx: &TcContext,
    l4_offset: usize,
    from: &CtKey6,
    to: &CtKey6,
) -> Result<(), DropReason> {
    let (csum_offset, csum_flags) = match from.proto {
        IPPROTO_TCP => (l4_offset + TCP_CHECK, 0),
        IPPROTO_UDP => (l4_offset + UDP_CHECK, BPF_F_MARK_MANGLED_0 as u64),
        _ => (l4_offset + ICMPV6_CHECK, 0),
    };
    let pseudo = csum_flags | BPF_F_PSEUDO_HDR as u64;
    if from.src != to.src {
        rewrite_addr6(
            ctx,
            ETH_LEN + IPV6_SRC,
            &from.src,
            &to.src,
            csum_offset,
            pseudo,
        )?;
    }
    if from.dst != to.dst {
        rewrite_addr6(
            ctx,
            ETH_LEN + IPV6_DST,
            &from.dst,
            &to.dst,
            csum_offset,
            pseudo,
        )?;
    }
    if from.proto == IPPROTO_ICMPV6 {
        // The echo identifier: src_port and dst_port carry the same value.
        let new_id = if from.src_port != to.src_port {
            to.src_port
        } else {
            to.dst_port
        };
        if new_id != from.src_port {
            let id_offset = l4_offset + ICMPV6_ECHO_ID;
            rewrite_port(ctx, id_offset, from.src_port, new_id, csum_offset, 0)?;
        }
        return Ok(());
    }
    for (offset, old, new) in [
        (L4_SRC_PORT, from.src_port, to.src_port),
        (L4_DST_PORT, from.dst_port, to.dst_port),
    ] {
        if old != new {
            rewrite_port(ctx, l4_offset + offset, old, new, csum_offset, csum_flags)?;
        }
    }
    Ok(())
}

/// Stores `new` over the address `old` at `offset` and folds the change
/// into the checksum at `csum_offset` (`csum_flags` with BPF_F_PSEUDO_HDR
/// where the address is part of the pseudo-header).
#[inline(always)]
fn rewrite_addr6(
    ctx: &TcContext,
    offset: usize,
    old: &Ipv6,
    new: &Ipv6,
    csum_offset: usize,
    csum_flags: u64,
) -> Result<(), DropReason> {
    // SAFETY: two 16-byte arrays on the stack, read only by the helper.
    let diff = unsafe {
        bpf_csum_diff(
            old.as_ptr() as *mut u32,
            16,
            new.as_ptr() as *mut u32,
            16,
            0,
        )
    };
    if diff < 0 {
        return Err(DropReason::RewriteFailed);
    }
    ctx.l4_csum_replace(csum_offset, 0, diff as u64, csum_flags)
        .map_err(|_| DropReason::RewriteFailed)?;
    if csum_flags & BPF_F_PSEUDO_HDR as u64 != 0 {
        // On a CHECKSUM_COMPLETE skb (a NIC's receive checksum) the helper
        // also takes the pseudo-header change out of skb->csum, right for
        // IPv4 (its header checksum moves too) but not for IPv6, whose
        // packet sum this rewrite leaves as it was (the address and the L4
        // checksum change by opposite amounts). Put it back; the helper
        // does nothing on any other skb. (Linux 6.16's BPF_F_IPV6 flag
        // does the same, on 6.16 only.)
        // SAFETY: the program's own skb.
        let _ = unsafe { bpf_csum_update(ctx.as_ptr().cast(), diff as u32) };
    }
    ctx.store(offset, new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

/// Translates an ICMPv6 error (packet too big, unreachable, time exceeded,
/// parameter problem) about a translated connection: the quoted packet's
/// addresses and ports are rewritten as its connection's, and the outer
/// address that pointed at the translated side follows. The quoted
/// upper-layer checksum is left as it was (no stack checks it). True when
/// the error is about a tracked connection (translated or not); false when
/// it is about none (the packet is untouched either way then).
#[inline(always)]
pub fn translate_icmp_error6(ctx: &TcContext, flow: &Flow6) -> Result<bool, DropReason> {
    // Bounded for the verifier (it came through a map): the largest offset
    // `flow6` reaches is 14 + 40 + 3 * 2048.
    let l4_offset = (flow.l4_offset & 0x1fff) as usize;
    let inner_off = l4_offset + ICMPV6_HEADER_LEN;
    let Some(quote) = header_at::<[u32; ICMPV6_QUOTE / 4], _>(ctx, inner_off) else {
        return Ok(false);
    };
    // SAFETY: bounds checked by header_at; read before any store moves it.
    let q = unsafe { &*quote };
    let proto = q[IPV6_NEXT_HDR / 4].to_ne_bytes()[IPV6_NEXT_HDR % 4];
    let [p0, p1, p2, p3] = q[IPV6_LEN / 4].to_ne_bytes();
    let (src_port, dst_port, ports_at) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => ([p0, p1], [p2, p3], L4_SRC_PORT),
        IPPROTO_ICMPV6 => {
            let [i0, i1, ..] = q[IPV6_LEN / 4 + 1].to_ne_bytes();
            ([i0, i1], [i0, i1], ICMPV6_ECHO_ID)
        }
        _ => return Ok(false),
    };
    let inner = CtKey6 {
        src: [q[2], q[3], q[4], q[5]],
        dst: [q[6], q[7], q[8], q[9]],
        src_port,
        dst_port,
        proto,
        _pad: [0; 3],
    };
    let Some(peer_xlat) = conntrack::peek(&inner.reversed()) else {
        return Ok(false);
    };
    let new_inner = peer_xlat.reversed();
    // An error goes to the quoted packet's sender or comes from its
    // destination; any other is no error of this connection's.
    if flow.key.dst != inner.src && flow.key.src != inner.dst {
        return Ok(false);
    }
    if new_inner == inner {
        // About a tracked connection that is not translated (a network
        // without masquerade): it passes as it is. Path MTU discovery
        // needs it; IPv6 routers never fragment.
        return Ok(true);
    }
    let icmp_csum = l4_offset + ICMPV6_CHECK;
    let pseudo = BPF_F_PSEUDO_HDR as u64;

    // Outer header: whichever address pointed at the translated side.
    let (outer_src, outer_dst) = (ETH_LEN + IPV6_SRC, ETH_LEN + IPV6_DST);
    if flow.key.dst == inner.src && inner.src != new_inner.src {
        rewrite_addr6(
            ctx,
            outer_dst,
            &flow.key.dst,
            &new_inner.src,
            icmp_csum,
            pseudo,
        )?;
    } else if flow.key.src == inner.dst && inner.dst != new_inner.dst {
        rewrite_addr6(
            ctx,
            outer_src,
            &flow.key.src,
            &new_inner.dst,
            icmp_csum,
            pseudo,
        )?;
    }
    // The quote: part of the ICMPv6 payload, not of its pseudo-header.
    if inner.src != new_inner.src {
        rewrite_addr6(
            ctx,
            inner_off + IPV6_SRC,
            &inner.src,
            &new_inner.src,
            icmp_csum,
            0,
        )?;
    }
    if inner.dst != new_inner.dst {
        rewrite_addr6(
            ctx,
            inner_off + IPV6_DST,
            &inner.dst,
            &new_inner.dst,
            icmp_csum,
            0,
        )?;
    }
    let ports = inner_off + IPV6_LEN + ports_at;
    if inner.src_port != new_inner.src_port {
        rewrite_port(ctx, ports, inner.src_port, new_inner.src_port, icmp_csum, 0)?;
    }
    if proto != IPPROTO_ICMPV6 && inner.dst_port != new_inner.dst_port {
        let at = ports + L4_DST_PORT;
        rewrite_port(ctx, at, inner.dst_port, new_inner.dst_port, icmp_csum, 0)?;
    }
    Ok(true)
}
