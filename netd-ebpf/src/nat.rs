//! Address translation: published ports (DNAT), masquerade (SNAT) with
//! source-port allocation, and rewriting a packet to a conntrack tuple with
//! incremental checksum updates.

use crate::maps::bpf_map;
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    maps::Array,
    programs::TcContext,
};
use netd_common::{
    Backend, CT_DNAT, CT_SNAT, Config, CtKey, DropReason, Ipv4, NET_MASQUERADE, NetworkInfo,
    PUBLISHED_ON_ADDRESS, PUBLISHED_ON_ALL, PortKey, UplinkInfo,
};

use crate::{
    checksum,
    conntrack::{self, Family, Refused},
    host_socket::{self, SockTuple},
    offsets::{
        ICMP_CHECK, ICMP_ECHO_ID, ICMP_LEN, IP_CHECK, IP_DST, IP_SRC, IPV4_CHECK, IPV4_DST,
        IPV4_LEN, IPV4_PROTO, IPV4_SRC, L4_DST_PORT, L4_SRC_PORT, TCP_CHECK, UDP_CHECK,
    },
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4Packet, L4, header_at},
};

bpf_map!(CONFIG: Array);

bpf_map!(UPLINKS: HashMap);

/// The interface to the outside with this ifindex, if it is one.
#[inline(always)]
pub fn uplink(ifindex: u32) -> Option<&'static UplinkInfo> {
    // SAFETY: read-only use of a map value.
    unsafe { UPLINKS.get(&ifindex) }
}

/// The source address masquerade gives packets leaving by `ifindex`.
#[inline(always)]
pub fn masquerade_ip(ifindex: u32) -> Ipv4 {
    match uplink(ifindex) {
        // An uplink without an address yet (DHCP pending) has none to give.
        Some(uplink) if uplink.masquerade_ip != [0; 4] => uplink.masquerade_ip,
        _ => CONFIG.get(0).map_or([0; 4], |c| c.masquerade_ip),
    }
}

bpf_map!(PUBLISHED_PORTS: HashMap);

// Which kinds of `PUBLISHED_PORTS` keys exist (`PUBLISHED_ON_*` bits).
bpf_map!(PUBLISHED_SCOPES: Array);

pub fn config_map() -> &'static Array<Config> {
    &CONFIG
}

/// Ports of the NAT range tried, at random, after the original one. Each
/// try includes a host socket lookup, and the verifier walks every try of
/// every call site: 8 cost from_container ~160,000 verified instructions,
/// 32 ~800,000 (the limit is 1,000,000). With a range of 31,744 ports, 8
/// tries all miss only when most of the range is in use toward one
/// destination (half of it: 1 new connection in 250).
const SNAT_PORT_RETRIES: u32 = 8;

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
    if let Some(b) = published_on(&exact) {
        return Some(b);
    }
    if published_scopes() & PUBLISHED_ON_ALL == 0 {
        return None;
    }
    let any = PortKey {
        host_ip: [0; 4],
        ..exact
    };
    // SAFETY: as above.
    unsafe { PUBLISHED_PORTS.get(&any) }.copied()
}

/// The port published on exactly `key`'s address (a routed network's
/// container port is keyed by the container's address).
#[inline(always)]
pub fn published_on(key: &PortKey) -> Option<Backend> {
    if published_scopes() & PUBLISHED_ON_ADDRESS == 0 {
        return None;
    }
    // SAFETY: read-only map values, copied out.
    unsafe { PUBLISHED_PORTS.get(key) }.copied()
}

/// Which kinds of keys `PUBLISHED_PORTS` holds: a lookup that cannot hit
/// costs a new connection ~25 ns, so it is skipped.
#[inline(always)]
fn published_scopes() -> u32 {
    PUBLISHED_SCOPES
        .get(0)
        .copied()
        .unwrap_or(PUBLISHED_ON_ADDRESS | PUBLISHED_ON_ALL)
}

/// Starts tracking a connection to a published port and returns the tuple
/// the packet becomes (destination = the container). When another
/// connection already holds the reply tuple (the same client port reached
/// the same backend through another host address or port), the client's
/// source port is remapped for this one, as the kernel's NAT does.
#[inline(always)]
pub fn dnat_create(ctx: &TcContext, orig: &CtKey, backend: &Backend) -> Result<CtKey, DropReason> {
    let xlat = CtKey {
        dst: backend.ip,
        dst_port: backend.port,
        ..*orig
    };
    let source = Source::Remote;
    create_with_free_port(ctx, orig, &xlat, CT_DNAT, source, Port::KeepIfFree)
}

/// Tracks a new container connection leaving by the interface `egress`,
/// masqueraded behind its address (or the network's own host IP). The
/// container's source port is kept when nothing else uses the translated
/// tuple, as Docker's MASQUERADE keeps it.
#[inline(always)]
pub fn snat_create(
    ctx: &TcContext,
    orig: &CtKey,
    net: &NetworkInfo,
    egress: u32,
) -> Result<CtKey, DropReason> {
    if net.flags & NET_MASQUERADE == 0 {
        return match conntrack::create(orig, orig, 0) {
            Ok(()) => Ok(*orig),
            Err(reason) => Err(reason.unwrap_or(DropReason::ConntrackFull)),
        };
    }
    let snat_ip = if net.host_ip != [0; 4] {
        net.host_ip
    } else {
        masquerade_ip(egress)
    };
    let xlat = CtKey {
        src: snat_ip,
        ..*orig
    };
    create_with_free_port(ctx, orig, &xlat, CT_SNAT, Source::Host, Port::KeepIfFree)
}

/// Who owns the source address of a translated tuple.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The host (masquerade, hairpin): a host socket may use the tuple too.
    Host,
    /// The far end (a published port's client).
    Remote,
}

/// Which source ports a translation may take.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The template's own port when the tuple is free, else one of the NAT
    /// range.
    KeepIfFree,
    /// Only ports of the NAT range: ones the host never picks for its own
    /// connections (outside its ephemeral range, or reserved), so a host
    /// connection made later cannot clash with this one.
    FromRange,
}

/// Tracks `orig` as translated to `xlat`, keeping `xlat.src_port` when
/// allowed and free, otherwise trying ports of the configured range at
/// random (bounded). A tuple is free when conntrack has no
/// connection on it and, for a host source, no host socket owns it.
#[inline(always)]
pub fn create_with_free_port<A: Family + SockTuple>(
    ctx: &TcContext,
    orig: &CtKey<A>,
    xlat: &CtKey<A>,
    flags: u32,
    source: Source,
    port: Port,
) -> Result<CtKey<A>, DropReason> {
    let mut xlat = *xlat;
    create_with_free_port_in(ctx, orig, &mut xlat, flags, source, port)?;
    Ok(xlat)
}

/// As [`create_with_free_port`], searching in `xlat` itself (the template
/// in, the tuple tracked out): IPv6's is a scratch slot, not stack.
#[inline(always)]
pub fn create_with_free_port_in<A: Family + SockTuple>(
    ctx: &TcContext,
    orig: &CtKey<A>,
    xlat: &mut CtKey<A>,
    flags: u32,
    source: Source,
    port: Port,
) -> Result<(), DropReason> {
    // Set when the table is found full: the flags of the tuple then tried.
    let mut full: Option<u32> = None;
    let host = source == Source::Host;
    let ctx = ctx.as_ptr();
    if port == Port::KeepIfFree && !(host && host_socket::owns(ctx, xlat)) {
        match conntrack::try_create(orig, xlat, flags) {
            Ok(()) => return Ok(()),
            Err(Refused::Taken) => {}
            Err(Refused::Full) => full = Some(flags),
        }
    }
    // The source port changes from here on: that is a source NAT too.
    let flags = flags | CT_SNAT;
    if full.is_none() {
        let config = CONFIG.get(0).copied().unwrap_or_default();
        let min = u32::from(config.nat_port_min);
        let span = u32::from(config.nat_port_max).saturating_sub(min) + 1;
        if min == 0 || span == 0 {
            return Err(DropReason::NatPortsExhausted);
        }
        for _ in 0..SNAT_PORT_RETRIES {
            // Independent random picks: a linear probe from one random
            // start would walk the clusters taken ports form.
            // SAFETY: helper without arguments.
            let port = (min + unsafe { bpf_get_prandom_u32() } % span) as u16;
            xlat.src_port = port.to_be_bytes();
            if orig.proto == IPPROTO_ICMP || orig.proto == IPPROTO_ICMPV6 {
                // The echo identifier is both "ports".
                xlat.dst_port = xlat.src_port;
            }
            if host && host_socket::owns(ctx, xlat) {
                continue;
            }
            match conntrack::try_create(orig, xlat, flags) {
                Ok(()) => return Ok(()),
                Err(Refused::Taken) => {}
                Err(Refused::Full) => {
                    full = Some(flags);
                    break;
                }
            }
        }
    }
    let Some(flags) = full else {
        return Err(DropReason::NatPortsExhausted);
    };
    // A full table: room is made once, outside the search (one eviction
    // loop per program, not one per port tried).
    match conntrack::retry_after_making_room(orig, xlat, flags) {
        Ok(()) => Ok(()),
        Err(reason) => Err(reason.unwrap_or(DropReason::ConntrackFull)),
    }
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
        IPPROTO_TCP => (ip.l4_offset + TCP_CHECK, 0),
        IPPROTO_UDP => (ip.l4_offset + UDP_CHECK, BPF_F_MARK_MANGLED_0 as u64),
        _ => (ip.l4_offset + ICMP_CHECK, 0),
    };
    // ICMP has no pseudo-header: address changes leave its checksum alone.
    let pseudo = from.proto != IPPROTO_ICMP;
    if from.src != to.src {
        rewrite_addr(
            ctx,
            IP_SRC,
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
            IP_DST,
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
            let id_offset = ip.l4_offset + ICMP_ECHO_ID;
            rewrite_port(ctx, id_offset, from.src_port, new_id, csum_offset, 0)?;
        }
        return Ok(());
    }
    if from.src_port != to.src_port {
        rewrite_port(
            ctx,
            ip.l4_offset + L4_SRC_PORT,
            from.src_port,
            to.src_port,
            csum_offset,
            csum_flags,
        )?;
    }
    if from.dst_port != to.dst_port {
        rewrite_port(
            ctx,
            ip.l4_offset + L4_DST_PORT,
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
    ctx.l3_csum_replace(IP_CHECK, old_v, new_v, 4)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(offset, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

#[inline(always)]
pub(crate) fn rewrite_port(
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

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// Inner IPv4 header (without options) + the 8 bytes of L4 header every
/// ICMP error quotes.
const ICMP_ERROR_QUOTE: usize = IPV4_LEN + 8;
/// A quoted IPv4 header without options starts with this byte.
const IPV4_NO_OPTIONS: u8 = 0x45;

/// Translates an ICMP error (destination unreachable, including
/// fragmentation needed, or time exceeded) about a tracked connection: the
/// quoted packet is rewritten like its connection and the outer address that
/// pointed at it follows. Returns false when the error is not about a
/// translated connection (the packet is left alone).
#[inline(always)]
pub fn translate_icmp_error(ctx: &TcContext, ip: &Ipv4Packet) -> Result<bool, DropReason> {
    let L4::Icmp { icmp_type, .. } = ip.l4 else {
        return Ok(false);
    };
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return Ok(false);
    }
    let inner_off = ip.l4_offset + ICMP_LEN;
    let Some(quote) = header_at::<[u8; ICMP_ERROR_QUOTE], _>(ctx, inner_off) else {
        return Ok(false);
    };
    // SAFETY: bounds checked by header_at.
    let quote = unsafe { *quote };
    if quote[0] != IPV4_NO_OPTIONS {
        return Ok(false); // quoted header with options: not translated
    }
    let proto = quote[IPV4_PROTO];
    let two = |at: usize| [quote[at], quote[at + 1]];
    let four = |at: usize| [quote[at], quote[at + 1], quote[at + 2], quote[at + 3]];
    let (ports_off, src_port, dst_port) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            IPV4_LEN + L4_SRC_PORT,
            two(IPV4_LEN + L4_SRC_PORT),
            two(IPV4_LEN + L4_DST_PORT),
        ),
        IPPROTO_ICMP => {
            let id = two(IPV4_LEN + ICMP_ECHO_ID);
            (IPV4_LEN + ICMP_ECHO_ID, id, id)
        }
        _ => return Ok(false),
    };
    let inner = CtKey {
        src: four(IPV4_SRC),
        dst: four(IPV4_DST),
        src_port,
        dst_port,
        proto,
        _pad: [0; 3],
    };
    let Some(peer_xlat) = conntrack::peek(&inner.reversed()) else {
        return Ok(false);
    };
    let new_inner = peer_xlat.reversed();
    if new_inner == inner {
        return Ok(false);
    }
    let icmp_csum = ip.l4_offset + ICMP_CHECK;
    let fail = |_| DropReason::RewriteFailed;

    // Outer header: whichever address pointed at the translated side.
    if ip.dst == inner.src && inner.src != new_inner.src {
        rewrite_addr(ctx, IP_DST, ip.dst, new_inner.src, false, 0, 0)?;
    } else if ip.src == inner.dst && inner.dst != new_inner.dst {
        rewrite_addr(ctx, IP_SRC, ip.src, new_inner.dst, false, 0, 0)?;
    }

    // Quoted IPv4 header: addresses and its own checksum, each change also
    // folded into the ICMP checksum, which covers the quote.
    let mut inner_ip_csum = two(IPV4_CHECK);
    // Only a UDP checksum is quoted whole (TCP's lies past the 8 bytes).
    let udp_check = IPV4_LEN + UDP_CHECK;
    let mut l4_csum = two(udp_check);
    let udp_csum = proto == IPPROTO_UDP && l4_csum != [0, 0];
    for (field, old, new) in [
        (IPV4_SRC, inner.src, new_inner.src),
        (IPV4_DST, inner.dst, new_inner.dst),
    ] {
        if old == new {
            continue;
        }
        let before = inner_ip_csum;
        inner_ip_csum = checksum::update(inner_ip_csum, &old, &new, 4);
        ctx.store(inner_off + field, &new, 0).map_err(fail)?;
        csum_fold(ctx, icmp_csum, &old, &new, 4)?;
        csum_fold(
            ctx,
            icmp_csum,
            &[before[0], before[1], 0, 0],
            &[inner_ip_csum[0], inner_ip_csum[1], 0, 0],
            2,
        )?;
        if udp_csum {
            l4_csum = checksum::update(l4_csum, &old, &new, 4);
        }
    }
    ctx.store(inner_off + IPV4_CHECK, &inner_ip_csum, 0)
        .map_err(fail)?;

    // Quoted ports (or echo identifier).
    for (offset, old, new) in [
        (ports_off, inner.src_port, new_inner.src_port),
        (ports_off + L4_DST_PORT, inner.dst_port, new_inner.dst_port),
    ] {
        if old == new || (proto == IPPROTO_ICMP && offset != ports_off) {
            continue;
        }
        ctx.store(inner_off + offset, &new, 0).map_err(fail)?;
        let (old4, new4) = ([old[0], old[1], 0, 0], [new[0], new[1], 0, 0]);
        csum_fold(ctx, icmp_csum, &old4, &new4, 2)?;
        if udp_csum {
            l4_csum = checksum::update(l4_csum, &old4, &new4, 2);
        }
    }
    if udp_csum && l4_csum != two(udp_check) {
        let old = [quote[udp_check], quote[udp_check + 1], 0, 0];
        ctx.store(inner_off + udp_check, &l4_csum, 0)
            .map_err(fail)?;
        csum_fold(ctx, icmp_csum, &old, &[l4_csum[0], l4_csum[1], 0, 0], 2)?;
    }
    Ok(true)
}

/// Folds a change of `len` (2 or 4) bytes into the ICMP checksum.
#[inline(always)]
fn csum_fold(
    ctx: &TcContext,
    csum_offset: usize,
    old: &[u8; 4],
    new: &[u8; 4],
    len: u64,
) -> Result<(), DropReason> {
    let (old_v, new_v) = if len == 4 {
        (
            u32::from_ne_bytes(*old) as u64,
            u32::from_ne_bytes(*new) as u64,
        )
    } else {
        (
            u16::from_ne_bytes([old[0], old[1]]) as u64,
            u16::from_ne_bytes([new[0], new[1]]) as u64,
        )
    };
    ctx.l4_csum_replace(csum_offset, old_v, new_v, len)
        .map_err(|_| DropReason::RewriteFailed)
}
