//! `from_container` for IPv6: the policy (`policy.rs`: anti-spoofing,
//! neighbour discovery, isolation, icc, internal networks), then hairpin:
//! a container's connection to a port published on one of the host's IPv6
//! addresses (or its gateway) goes to the backend, from the backend
//! network's gateway so the replies come back here, as IPv4's `hairpin`.
//!
//! Stack: as the uplinks' IPv6 halves (see `ipv6.rs`), a subprogram beside
//! IPv4's, the packet in a scratch slot of its own, the policy and the new
//! connection's port search subprograms of their own.

use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use netd_common::{CT_DNAT, CT_SNAT, DropReason, FLOW6_TUPLE, Flow6, Ipv6, NET_INTERNAL};

use crate::{
    Forward, conntrack,
    flow6::flow6,
    forward,
    ipv6::{CONTAINER_SLOT, again, decode, encode, scratch, traffic_class6, translate6},
    nat::{Port, Source, create_with_free_port_in},
    nat6, opens_connection,
    parse::{self, Frame as _},
    policy, verdict,
};

/// The IPv6 half of `from_container`.
#[inline(never)]
pub fn from_container6(ctx: TcContext) -> i32 {
    let result = decode(check6(again(&ctx))).and_then(|to_host| {
        let class = traffic_class6(parse::ipv6_header(&ctx)?.next_hdr);
        if !to_host {
            return Ok(Forward::Pass(class));
        }
        let flow = scratch(CONTAINER_SLOT)?;
        flow6(&ctx, flow)?;
        if flow.kind != FLOW6_TUPLE {
            return Ok(Forward::Pass(class));
        }
        let tracked = conntrack::lookup_into(&flow.key, flow.tcp_flags, &mut flow.xlat);
        if (tracked && flow.xlat == flow.key)
            || (!tracked && !decode(new_hairpin6(again(&ctx), flow))?)
        {
            return Ok(Forward::Pass(class)); // the host's own, untranslated
        }
        translate6(&ctx, flow)?;
        Ok(match to_container6(&ctx, &flow.xlat.dst) {
            Some(action) => Forward::Redirect(class, action),
            None => Forward::Pass(class),
        })
    });
    verdict(&ctx, result, false)
}

/// The policy: Ok(true) when the packet is for the host (one of its
/// addresses or a gateway) from a container's global address, the
/// hairpin candidates. A subprogram: its frame is not under the hairpin's.
#[inline(never)]
fn check6(ctx: TcContext) -> u32 {
    encode(check6_inner(&ctx))
}

#[inline(always)]
fn check6_inner(ctx: &TcContext) -> Result<bool, DropReason> {
    let src_mac = parse::src_mac(ctx)?;
    let ip = parse::parse_ipv6(ctx)?;
    match policy::check_source6(ctx, &ip, src_mac, ctx.ifindex())? {
        Some(endpoint) => policy::check_from_container6(endpoint, &ip),
        None => Ok(false),
    }
}

/// A container's untracked packet to the host: a new connection to a port
/// published on IPv6 is tracked and translated (`flow.xlat`, true); else
/// it is the host's own (false). A subprogram, as `new_connection6`.
#[inline(never)]
fn new_hairpin6(ctx: TcContext, flow: &mut Flow6) -> u32 {
    encode(new_hairpin6_inner(&ctx, flow))
}

#[inline(always)]
fn new_hairpin6_inner(ctx: &TcContext, flow: &mut Flow6) -> Result<bool, DropReason> {
    let key = &flow.key;
    if !opens_connection(key, flow.tcp_flags) {
        return Ok(false);
    }
    let Some(backend) = nat6::published_backend6(&key.dst, key.dst_port, key.proto) else {
        return Ok(false);
    };
    if policy::network6_of(&key.src).is_some_and(|net| net.flags & NET_INTERNAL != 0) {
        return Err(DropReason::InternalNetwork);
    }
    let Some(backend_net) = policy::network6_of(&backend.ip) else {
        return Ok(false);
    };
    flow.xlat = flow.key;
    flow.xlat.src = backend_net.gateway;
    flow.xlat.dst = backend.ip;
    flow.xlat.dst_port = backend.port;
    let Flow6 { key, xlat, .. } = flow;
    // Always a port of the NAT range: the host picks none of those for a
    // connection of its own from the gateway to the backend.
    create_with_free_port_in(
        ctx,
        key,
        xlat,
        CT_DNAT | CT_SNAT,
        Source::Host,
        Port::FromRange,
    )?;
    Ok(true)
}

/// Redirects a translated packet into container `dst`'s namespace, as
/// IPv4's `forward::to_container`: the source MAC is the gateway's the
/// sender addressed (a bridge's; the receiver does not look at it).
#[inline(always)]
fn to_container6(ctx: &TcContext, dst: &Ipv6) -> Option<i32> {
    let endpoint = policy::endpoint6(dst)?;
    let (ifindex, mac) = (endpoint.ifindex, endpoint.mac);
    let gateway_mac: [u8; 6] = ctx.load(0).ok()?;
    forward::for_this_host(ctx)?;
    ctx.store(0, &mac, 0).ok()?;
    ctx.store(6, &gateway_mac, 0).ok()?;
    // SAFETY: plain helper call; it returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    Some(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}
