//! Address translation: published ports (DNAT), masquerade (SNAT) with
//! source-port allocation, and rewriting a packet to a conntrack tuple with
//! incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, HashMap},
    programs::TcContext,
};
use netd_common::{
    Backend, CT_DNAT, CT_SNAT, Config, CtKey, DropReason, Ipv4, NET_MASQUERADE, NetworkInfo,
    PortKey, sizes,
};

use crate::{
    conntrack,
    parse::{ETH_LEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Packet},
};

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "PUBLISHED_PORTS")]
static PUBLISHED_PORTS: HashMap<PortKey, Backend> =
    HashMap::with_max_entries(sizes::PUBLISHED_PORTS, 0);

/// Source ports tried for masquerade after the original one (bounded for
/// the verifier; Cilium uses 32 on older kernels).
const SNAT_PORT_RETRIES: u32 = 32;

const IP_CSUM_OFFSET: usize = ETH_LEN + 10;
const IP_SRC_OFFSET: usize = ETH_LEN + 12;
const IP_DST_OFFSET: usize = ETH_LEN + 16;

/// The backend for a packet to `dst:port` on the host: published on exactly
/// this address, or on all addresses.
#[inline(always)]
pub fn published_backend(dst: Ipv4, port: [u8; 2], proto: u8) -> Option<Backend> {
    let exact = PortKey {
        host_ip: dst,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: read-only map values, copied out.
    if let Some(b) = unsafe { PUBLISHED_PORTS.get(&exact) } {
        return Some(*b);
    }
    let any = PortKey {
        host_ip: [0; 4],
        ..exact
    };
    unsafe { PUBLISHED_PORTS.get(&any) }.copied()
}

/// Starts tracking a connection to a published port and returns the tuple
/// the packet becomes (destination = the container).
#[inline(always)]
pub fn dnat_create(orig: &CtKey, backend: &Backend) -> Result<CtKey, DropReason> {
    let xlat = CtKey {
        dst: backend.ip,
        dst_port: backend.port,
        ..*orig
    };
    match conntrack::create(orig, &xlat, CT_DNAT) {
        Ok(()) => Ok(xlat),
        Err(reason) => Err(reason.unwrap_or(DropReason::ConntrackFull)),
    }
}

/// Starts tracking a connection a container opens to the outside. With
/// masquerade the source becomes the host address and, only if the original
/// source port is taken, a port from the configured range.
#[inline(always)]
pub fn snat_create(orig: &CtKey, net: &NetworkInfo) -> Result<CtKey, DropReason> {
    if net.flags & NET_MASQUERADE == 0 {
        return match conntrack::create(orig, orig, 0) {
            Ok(()) => Ok(*orig),
            Err(reason) => Err(reason.unwrap_or(DropReason::ConntrackFull)),
        };
    }
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let snat_ip = if net.host_ip != [0; 4] {
        net.host_ip
    } else {
        config.masquerade_ip
    };
    let mut xlat = CtKey {
        src: snat_ip,
        ..*orig
    };
    match conntrack::create(orig, &xlat, CT_SNAT) {
        Ok(()) => return Ok(xlat),
        Err(Some(reason)) => return Err(reason),
        Err(None) => {}
    }
    let min = u32::from(config.nat_port_min);
    let span = u32::from(config.nat_port_max).saturating_sub(min) + 1;
    if min == 0 || span == 0 {
        return Err(DropReason::NatPortsExhausted);
    }
    // SAFETY: helper without arguments.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    for attempt in 0..SNAT_PORT_RETRIES {
        let port = (min + (start + attempt) % span) as u16;
        xlat.src_port = port.to_be_bytes();
        if orig.proto == IPPROTO_ICMP {
            // The echo identifier is both "ports".
            xlat.dst_port = xlat.src_port;
        }
        match conntrack::create(orig, &xlat, CT_SNAT) {
            Ok(()) => return Ok(xlat),
            Err(Some(reason)) => return Err(reason),
            Err(None) => {}
        }
    }
    Err(DropReason::NatPortsExhausted)
}

/// Rewrites the packet from tuple `from` to tuple `to`: addresses, ports (or
/// the ICMP echo identifier) and every checksum they are part of.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4Packet,
    from: &CtKey,
    to: &CtKey,
) -> Result<(), DropReason> {
    let (csum_offset, csum_flags) = match from.proto {
        IPPROTO_TCP => (ip.l4_offset + 16, 0),
        IPPROTO_UDP => (ip.l4_offset + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => (ip.l4_offset + 2, 0),
    };
    // ICMP has no pseudo-header: address changes leave its checksum alone.
    let pseudo = from.proto != IPPROTO_ICMP;
    if from.src != to.src {
        rewrite_addr(
            ctx,
            IP_SRC_OFFSET,
            from.src,
            to.src,
            pseudo,
            csum_offset,
            csum_flags,
        )?;
    }
    if from.dst != to.dst {
        rewrite_addr(
            ctx,
            IP_DST_OFFSET,
            from.dst,
            to.dst,
            pseudo,
            csum_offset,
            csum_flags,
        )?;
    }
    if from.proto == IPPROTO_ICMP {
        if from.src_port != to.src_port || from.dst_port != to.dst_port {
            // Echo identifier: src_port and dst_port carry the same value.
            let new_id = if from.src_port != to.src_port {
                to.src_port
            } else {
                to.dst_port
            };
            rewrite_port(ctx, ip.l4_offset + 4, from.src_port, new_id, csum_offset, 0)?;
        }
        return Ok(());
    }
    if from.src_port != to.src_port {
        rewrite_port(
            ctx,
            ip.l4_offset,
            from.src_port,
            to.src_port,
            csum_offset,
            csum_flags,
        )?;
    }
    if from.dst_port != to.dst_port {
        rewrite_port(
            ctx,
            ip.l4_offset + 2,
            from.dst_port,
            to.dst_port,
            csum_offset,
            csum_flags,
        )?;
    }
    Ok(())
}

#[inline(always)]
fn rewrite_addr(
    ctx: &TcContext,
    offset: usize,
    old: Ipv4,
    new: Ipv4,
    pseudo: bool,
    csum_offset: usize,
    csum_flags: u64,
) -> Result<(), DropReason> {
    let (old_v, new_v) = (
        u32::from_ne_bytes(old) as u64,
        u32::from_ne_bytes(new) as u64,
    );
    if pseudo {
        ctx.l4_csum_replace(
            csum_offset,
            old_v,
            new_v,
            csum_flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )
        .map_err(|_| DropReason::RewriteFailed)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFFSET, old_v, new_v, 4)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(offset, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

#[inline(always)]
fn rewrite_port(
    ctx: &TcContext,
    offset: usize,
    old: [u8; 2],
    new: [u8; 2],
    csum_offset: usize,
    csum_flags: u64,
) -> Result<(), DropReason> {
    let (old_v, new_v) = (
        u16::from_ne_bytes(old) as u64,
        u16::from_ne_bytes(new) as u64,
    );
    ctx.l4_csum_replace(csum_offset, old_v, new_v, csum_flags | 2)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(offset, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}
