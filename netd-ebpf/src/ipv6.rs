//! The uplinks' IPv6: replies and masquerade (NAT66) through `CONNTRACK6`,
//! ICMPv6 errors about translated connections, and the guard against
//! unsolicited traffic to container addresses.
//!
//! Stack: older kernels allow 512 bytes across a program and the
//! subprograms it calls, each frame rounded up to 32. So each hook's
//! IPv6 half is a subprogram beside IPv4's (not on top of it), the packet
//! it works on sits in a per-CPU scratch slot (`Flow6`), and the two
//! deep paths (a new connection's port search, an ICMPv6 error's quote)
//! are subprograms of their own.

use crate::maps::bpf_map;
use aya_ebpf::{
    EbpfContext as _,
    programs::{TcContext, XdpContext},
};
use netd_common::{
    CT_DNAT, CT_SNAT, DropReason, FLOW6_ICMP_ERROR, FLOW6_TUPLE, Flow6, NET_GATEWAY_ROUTED,
    NET_INTERNAL, NET_MASQUERADE, TrafficClass,
};

use crate::{
    Forward, conntrack,
    flow6::flow6,
    nat::{Port, Source, create_with_free_port_in},
    nat6, opens_connection,
    parse::{self, Frame as _},
    policy, rules, verdict,
};

bpf_map!(FLOW6_SCRATCH: PerCpuArray);

/// Scratch slots, one per hook. The TC hooks run with bottom halves off
/// and redirects happen after a program returns, so no run of a hook
/// starts on a CPU while another is inside its slot (each hook keeps its
/// own all the same). A PREEMPT_RT kernel, whose bottom halves may be
/// preempted, would break that: netd is not built for one.
const EGRESS_SLOT: u32 = 0;
const INGRESS_SLOT: u32 = 1;
pub const CONTAINER_SLOT: u32 = 2;

/// This CPU's scratch flow for a hook.
#[inline(always)]
pub fn scratch(slot: u32) -> Result<&'static mut Flow6, DropReason> {
    let flow = FLOW6_SCRATCH
        .get_ptr_mut(slot)
        .ok_or(DropReason::RewriteFailed)?;
    // SAFETY: this CPU's slot, used by one hook at a time.
    Ok(unsafe { &mut *flow })
}

/// `to_uplink` for IPv6: established connections translated, new container
/// connections masqueraded.
#[inline(never)]
pub fn to_uplink6(ctx: TcContext) -> i32 {
    let result = scratch(EGRESS_SLOT).and_then(|flow| {
        flow6(&ctx, flow)?;
        egress_nat6(&ctx, flow, ctx.ifindex())?;
        Ok(Forward::Pass(traffic_class6(flow.next_hdr)))
    });
    verdict(&ctx, result, true)
}

/// `from_uplink` for IPv6: replies of tracked connections translated back;
/// anything else to a container address is unsolicited.
#[inline(never)]
pub fn from_uplink6(ctx: TcContext) -> i32 {
    let result = scratch(INGRESS_SLOT).and_then(|flow| {
        flow6(&ctx, flow)?;
        let pass = Forward::Pass(traffic_class6(flow.next_hdr));
        if flow.kind == FLOW6_TUPLE
            && conntrack::lookup_into(&flow.key, flow.tcp_flags, &mut flow.xlat)
        {
            translate6(&ctx, flow)?;
            return Ok(pass);
        }
        // A container's address from outside is forged, to a published
        // port too (as IPv4's check before its DNAT; XDP agrees).
        policy::check_outside_source6(&flow.key.src)?;
        if flow.kind == FLOW6_TUPLE
            && policy::is_local6(&flow.key.dst)
            && opens_connection(&flow.key, flow.tcp_flags)
            && decode(new_inbound6(again(&ctx), flow))?
        {
            translate6(&ctx, flow)?;
            return Ok(pass);
        }
        if flow.kind == FLOW6_ICMP_ERROR && decode(icmp_error6(again(&ctx), flow))? {
            return Ok(pass);
        }
        policy::check_from_outside6(&flow.key.src, &flow.key.dst)?;
        Ok(pass)
    });
    verdict(&ctx, result, true)
}

/// `from_uplink6`'s drops, decided on the XDP frame (read-only): tracked
/// flows and ICMPv6 errors pass on to it.
#[inline(always)]
pub fn early_drop6(ctx: &XdpContext) -> Result<(), DropReason> {
    let mut flow = Flow6::default();
    flow6(ctx, &mut flow)?;
    if (flow.kind == FLOW6_TUPLE && conntrack::is_tracked(&flow.key))
        || flow.kind == FLOW6_ICMP_ERROR
    {
        return Ok(());
    }
    policy::check_from_outside6(&flow.key.src, &flow.key.dst)
}

#[inline(always)]
fn egress_nat6(ctx: &TcContext, flow: &mut Flow6, egress: u32) -> Result<(), DropReason> {
    if flow.kind != FLOW6_TUPLE {
        if flow.kind == FLOW6_ICMP_ERROR && decode(icmp_error6(again(ctx), flow))? {
            return Ok(());
        }
        // No tuple (a fragment, another protocol): fine from the host, but
        // a masqueraded container's would leave untranslated.
        return match policy::network6_of(&flow.key.src) {
            Some(net) if net.flags & NET_MASQUERADE != 0 => Err(DropReason::FragmentNeedsNat),
            _ => Ok(()),
        };
    }
    if !conntrack::lookup_into(&flow.key, flow.tcp_flags, &mut flow.xlat) {
        decode(new_connection6(again(ctx), flow, egress))?;
    }
    translate6(ctx, flow)
}

/// A connection opened from outside to one of the host's IPv6 addresses:
/// to a port published on IPv6, tracked and translated to its container
/// (`flow.xlat`, true), the user's rules permitting; else the host's own
/// (false). A subprogram, as `new_connection6`.
#[inline(never)]
fn new_inbound6(ctx: TcContext, flow: &mut Flow6) -> u32 {
    encode(new_inbound6_inner(&ctx, flow))
}

#[inline(always)]
fn new_inbound6_inner(ctx: &TcContext, flow: &mut Flow6) -> Result<bool, DropReason> {
    let key = &flow.key;
    let Some(backend) = nat6::published_backend6(&key.dst, key.dst_port, key.proto) else {
        return Ok(false);
    };
    let conn = rules::Inbound {
        src: None,
        proto: key.proto,
        port: key.dst_port,
        ifindex: ctx.ifindex(),
    };
    rules::check(&conn, || {
        policy::network6_of(&backend.ip).map_or(0, |n| n.id)
    })?;
    flow.xlat = flow.key;
    flow.xlat.dst = backend.ip;
    flow.xlat.dst_port = backend.port;
    let Flow6 { key, xlat, .. } = flow;
    create_with_free_port_in(ctx, key, xlat, CT_DNAT, Source::Remote, Port::KeepIfFree)?;
    Ok(true)
}

/// An untracked packet leaving: a container's new connection (masqueraded
/// on a network that masquerades) or the host's own; sets `flow.xlat`. A
/// subprogram: the port search's tuples live in its own frame.
#[inline(never)]
fn new_connection6(ctx: TcContext, flow: &mut Flow6, egress: u32) -> u32 {
    encode(new_connection6_inner(&ctx, flow, egress).map(|()| true))
}

#[inline(always)]
fn new_connection6_inner(ctx: &TcContext, flow: &mut Flow6, egress: u32) -> Result<(), DropReason> {
    flow.xlat = flow.key;
    // One call of the port search for both cases below (each inlined
    // instance would take stack of its own), in the scratch slot.
    let port = match policy::network6_of(&flow.key.src) {
        Some(net) if net.flags & NET_INTERNAL != 0 => return Err(DropReason::InternalNetwork),
        Some(net) if net.flags & NET_GATEWAY_ROUTED != 0 => {
            return Err(DropReason::Ipv6OutboundUnsupported);
        }
        Some(net) if net.flags & NET_MASQUERADE == 0 => {
            return conntrack::create(&flow.key, &flow.key, 0)
                .map_err(|reason| reason.unwrap_or(DropReason::ConntrackFull));
        }
        Some(_) => {
            flow.xlat.src = nat6::masquerade_ip6(egress)?;
            Port::KeepIfFree
        }
        None if is_host_flow_clash(flow) => Port::FromRange,
        None => return Ok(()),
    };
    let Flow6 { key, xlat, .. } = flow;
    create_with_free_port_in(ctx, key, xlat, CT_SNAT, Source::Host, port)
}

/// The host's own untracked IPv6 leaving by an uplink, as IPv4's
/// `host_flow`: it passes as it is, unless it opens a connection whose
/// replies a masqueraded container connection already receives; then it
/// gets a port of the NAT range and is tracked.
#[inline(always)]
fn is_host_flow_clash(flow: &Flow6) -> bool {
    let key = &flow.key;
    let opens = match key.proto {
        parse::IPPROTO_TCP => opens_connection(key, flow.tcp_flags),
        parse::IPPROTO_UDP => true,
        _ => false,
    };
    opens && conntrack::is_reply_of_connection(&key.reversed())
}

/// `nat6::translate_icmp_error6` as a subprogram of its own frame (it
/// holds three tuples).
#[inline(never)]
fn icmp_error6(ctx: TcContext, flow: &Flow6) -> u32 {
    encode(nat6::translate_icmp_error6(&ctx, flow))
}

/// Rewrites the packet from `flow.key` to `flow.xlat` (nothing when equal).
#[inline(always)]
pub fn translate6(ctx: &TcContext, flow: &Flow6) -> Result<(), DropReason> {
    if flow.key == flow.xlat {
        return Ok(());
    }
    decode(rewrite6(again(ctx), flow)).map(drop)
}

/// `nat6::rewrite6` as a subprogram: its helper calls' temporaries stay
/// out of the hooks' frames (which sit under the deep subprograms).
#[inline(never)]
fn rewrite6(ctx: TcContext, flow: &Flow6) -> u32 {
    let result = nat6::rewrite6(&ctx, flow.l4_offset as usize, &flow.key, &flow.xlat);
    encode(result.map(|()| true))
}

/// The context by value, for a subprogram (one register, not a pointer to
/// the caller's stack).
#[inline(always)]
pub fn again(ctx: &TcContext) -> TcContext {
    // SAFETY: a program's context pointer is never null.
    TcContext::new(unsafe { core::ptr::NonNull::new_unchecked(ctx.as_ptr().cast()) })
}

/// A subprogram's result in the one register BPF returns (it cannot return
/// aggregates): 0 = Ok(false), 1 = Ok(true), 2 + reason = Err(reason).
#[inline(always)]
pub fn encode(result: Result<bool, DropReason>) -> u32 {
    match result {
        Ok(done) => u32::from(done),
        Err(reason) => 2 + reason as u32,
    }
}

#[inline(always)]
pub fn decode(value: u32) -> Result<bool, DropReason> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DropReason::from_u32(value - 2).unwrap_or(DropReason::RewriteFailed)),
    }
}

#[inline(always)]
pub fn traffic_class6(next_hdr: u8) -> TrafficClass {
    match next_hdr {
        parse::IPPROTO_TCP => TrafficClass::Tcp6,
        parse::IPPROTO_UDP => TrafficClass::Udp6,
        parse::IPPROTO_ICMPV6 => TrafficClass::Icmp6,
        _ => TrafficClass::OtherIpv6,
    }
}
