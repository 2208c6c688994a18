//! netd's BPF programs. Entry points stay thin: each parses the packet, then
//! hands it to the logic modules (policy, conntrack, nat), which are shared
//! between hooks. See docs/datapath.md for the packet walk of every path.
#![no_std]
#![no_main]
// aya's #[classifier] and #[cgroup_sock_addr] generate the exported
// `extern "C"` entry points that take the context pointer; they are not ours.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod checksum;
mod clock;
mod conntrack;
mod container6;
mod counters;
mod flow6;
mod forward;
mod host_socket;
mod ipv6;
mod maps;
mod nat;
mod nat6;
mod offsets;
mod parse;
mod policy;
mod rules;
mod sock;
mod sock6;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use netd_common::{
    CT_DNAT, CT_SNAT, CtKey, DropReason, NET_GATEWAY_ROUTED, NET_INTERNAL, NET_MASQUERADE,
    NET_RESOLVER_ON_GATEWAY, NET_TRUSTS_INTERFACES, NET_UNPROTECTED, TrafficClass,
};

use crate::{
    conntrack::Lookup,
    nat::{Port, Source},
    parse::{Frame as _, Ipv4Packet, L4, Packet},
};

/// Host side of a container veth, ingress: everything the container sends.
/// Anti-spoofing and Docker's forwarding policy; NAT happens on the uplink.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    if parse::is_ipv6(&ctx) {
        return container6::from_container6(ctx);
    }
    from_container4(ctx)
}

/// As the uplinks' halves: each family's frame beside the other's.
#[inline(never)]
fn from_container4(ctx: TcContext) -> i32 {
    // No drop log lines here: this program's own stack (~430 of the 512
    // bytes) leaves no room for a log record; its drops still reach the
    // counters and `netd monitor`.
    verdict(&ctx, from_container_inner(&ctx), false)
}

/// Uplink ingress: replies to masqueraded connections, published ports,
/// and the guard against unsolicited traffic to container addresses.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    if parse::is_ipv6(&ctx) {
        return ipv6::from_uplink6(ctx);
    }
    from_uplink4(ctx)
}

/// Each family's half of an uplink hook is a subprogram with its own stack
/// frame: together in one they would pass what older kernels allow.
#[inline(never)]
fn from_uplink4(ctx: TcContext) -> i32 {
    verdict(&ctx, from_uplink_inner(&ctx), true)
}

/// Uplink XDP: drops what `from_uplink` would surely drop, before the
/// kernel builds an skb for it (a flood's cheapest end); passes everything
/// else to `from_uplink` unchanged. Read-only: no rewrite, no conntrack
/// entry made or refreshed.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    match early_drop(&ctx) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(reason) => {
            let event = counters::count_drop(&ctx, reason, true);
            counters::log_drop(&ctx, event.as_ref());
            xdp_action::XDP_DROP
        }
    }
}

/// Uplink egress: masquerade for new container connections, and the
/// reverse translation of replies from published ports.
#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    // Translated and counted already by the fast path that sent it here.
    if forward::take_fastpath_mark(&ctx) {
        // Pruned by the verifier unless `netd daemon --bpf-log trace`.
        aya_log_ebpf::trace!(&ctx, "fast path: {} bytes out", ctx.len());
        return TC_ACT_OK;
    }
    if parse::is_ipv6(&ctx) {
        return ipv6::to_uplink6(ctx);
    }
    to_uplink4(ctx)
}

#[inline(never)]
fn to_uplink4(ctx: TcContext) -> i32 {
    verdict(&ctx, to_uplink_inner(&ctx), true)
}

/// connect() from the host: published ports go straight to their backend;
/// from a container served through these hooks: 127.0.0.11:53 to its resolver.
#[cgroup_sock_addr(connect4)]
pub fn host_connect4(ctx: SockAddrContext) -> i32 {
    sock::record_netns_probe(&ctx);
    if !sock::steer_to_resolver(&ctx) {
        sock::redirect_to_backend(&ctx);
    }
    1 // never refuse a connect: the hook only rewrites
}

/// sendmsg() on unconnected UDP sockets, as connect4.
#[cgroup_sock_addr(sendmsg4)]
pub fn host_sendmsg4(ctx: SockAddrContext) -> i32 {
    if !sock::steer_to_resolver(&ctx) {
        sock::redirect_to_backend(&ctx);
    }
    1
}

/// recvmsg() on UDP sockets: replies appear to come from the published address.
#[cgroup_sock_addr(recvmsg4)]
pub fn host_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore_published(&ctx);
    1
}

/// getpeername(): the published address the socket connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn host_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::restore_published(&ctx);
    1
}

/// A query to the sender's own gateway, port 53, on a network whose
/// resolver is there (`--dns-via cgroup-hooks`): the daemon's, not a port
/// published on every host address. One more lookup, for port 53 only.
#[inline(always)]
fn is_resolver_on_gateway(ip: &Ipv4Packet, key: &CtKey, sender_flags: u32) -> bool {
    sender_flags & NET_RESOLVER_ON_GATEWAY != 0
        && key.dst_port == netd_common::RESOLVER_PORT.to_be_bytes()
        && policy::network_of(ip.src).is_some_and(|net| net.gateway == ip.dst)
}

/// What a program does with a packet it accepted.
enum Forward {
    /// Let the kernel carry on (bridge, routing, local delivery).
    Pass(TrafficClass),
    /// A redirect helper's verdict (the fast path).
    Redirect(TrafficClass, i32),
}

/// Pass, redirect or drop, counting either way. `on_uplink`: the uplink
/// programs' drops are logged too and counted in the uplinks' slots.
#[inline(always)]
fn verdict(ctx: &TcContext, result: Result<Forward, DropReason>, on_uplink: bool) -> i32 {
    match result {
        Ok(Forward::Pass(class)) => {
            counters::count_traffic(class, ctx.len());
            TC_ACT_OK
        }
        Ok(Forward::Redirect(class, action)) => {
            counters::count_traffic(class, ctx.len());
            action
        }
        Err(reason) => {
            let event = counters::count_drop(ctx, reason, on_uplink);
            if on_uplink {
                counters::log_drop(ctx, event.as_ref());
            }
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn from_container_inner(ctx: &TcContext) -> Result<Forward, DropReason> {
    let ifindex = ctx.ifindex();
    let src_mac = parse::src_mac(ctx)?;
    match parse::parse_frame(ctx)? {
        Packet::Arp { sender_ip } => {
            // Address probes announce 0.0.0.0; anything else must be our own.
            if sender_ip != [0; 4] {
                policy::check_source(sender_ip, src_mac, ifindex)?;
            }
            Ok(Forward::Pass(TrafficClass::Arp))
        }
        Packet::Ipv6 => Err(DropReason::UnsupportedEthertype), // from_container6's
        Packet::Ipv4(ip) => {
            let endpoint = policy::check_source(ip.src, src_mac, ifindex)?;
            let class = counters::traffic_class(&ip);
            let local = policy::is_local(ip.dst);
            if local && let Some(key) = ip.tuple() {
                return hairpin(ctx, &ip, &key, endpoint.network_flags, class);
            }
            // One lookup of each of the destination's maps per packet.
            let dst_net = policy::check_from_container(endpoint, ip.dst, local)?;
            if dst_net.is_none()
                && let Some(route) = forward::route_to_uplink(ctx, &ip, ifindex)
            {
                egress_nat(ctx, &ip, route.ifindex)?;
                if let Some(action) = forward::send_to_uplink(ctx, &ip, &route) {
                    return Ok(Forward::Redirect(class, action));
                }
                // Translated already: the slow path would see a local
                // source address and drop it, so do it here, counted.
                return Err(DropReason::RewriteFailed);
            }
            Ok(Forward::Pass(class))
        }
    }
}

/// A container talking to a host address: either a published port (DNAT to
/// the backend, SNAT to the backend network's gateway so replies come back
/// here), a reply within such a connection, or plain host traffic.
#[inline(always)]
fn hairpin(
    ctx: &TcContext,
    ip: &Ipv4Packet,
    key: &CtKey,
    sender_flags: u32,
    class: TrafficClass,
) -> Result<Forward, DropReason> {
    let xlat = match conntrack::lookup(key, ip.tcp_flags()) {
        Lookup::Hit(xlat) if xlat == *key => return Ok(Forward::Pass(class)),
        Lookup::Hit(xlat) => xlat,
        Lookup::Miss => {
            if is_resolver_on_gateway(ip, key, sender_flags) {
                return Ok(Forward::Pass(class)); // the daemon's resolver
            }
            let published = match opens_connection(key, ip.tcp_flags()) {
                true => nat::published_backend(ip.dst, key.dst_port, key.proto),
                false => None,
            };
            let Some(backend) = published else {
                return Ok(Forward::Pass(class)); // the host's own service
            };
            if sender_flags & NET_INTERNAL != 0 {
                return Err(DropReason::InternalNetwork);
            }
            let Some(backend_net) = policy::network_of(backend.ip) else {
                return Ok(Forward::Pass(class));
            };
            let template = CtKey {
                src: backend_net.gateway,
                dst: backend.ip,
                dst_port: backend.port,
                ..*key
            };
            // Always a port of the NAT range: the host picks none of those
            // for a connection of its own from the gateway to the backend.
            let flags = CT_DNAT | CT_SNAT;
            nat::create_with_free_port(ctx, key, &template, flags, Source::Host, Port::FromRange)?
        }
    };
    if ip.fragment {
        return Err(DropReason::FragmentNeedsNat);
    }
    nat::rewrite(ctx, ip, key, &xlat)?;
    Ok(match forward::to_container(ctx, ip, xlat.dst, false) {
        Some(action) => Forward::Redirect(class, action),
        None => Forward::Pass(class),
    })
}

#[inline(always)]
fn from_uplink_inner(ctx: &TcContext) -> Result<Forward, DropReason> {
    let ip = match parse::parse_frame(ctx) {
        Ok(Packet::Ipv4(ip)) => ip,
        Ok(Packet::Ipv6) => return Err(DropReason::UnsupportedEthertype), // from_uplink6's
        // ARP and the rest belong to the host: not ours to judge.
        Ok(Packet::Arp { .. }) | Err(DropReason::UnsupportedEthertype) => {
            return Ok(Forward::Pass(TrafficClass::Arp));
        }
        Err(reason) => return Err(reason),
    };
    if ip.dst[0] == 127 {
        return Err(DropReason::LoopbackFromOutside);
    }
    let class = counters::traffic_class(&ip);
    let pass = Forward::Pass(class);
    let tuple = ip.tuple();
    if let Some(key) = tuple {
        if let Lookup::Hit(xlat) = conntrack::lookup(&key, ip.tcp_flags()) {
            translate(ctx, &ip, &key, &xlat)?;
            return Ok(into_container(ctx, &ip, xlat.dst, class));
        }
        policy::check_outside_source(ip.src)?;
        if let Some(backend) = published_target(&ip, &key) {
            check_published(&ip, &key, &backend, ctx.ifindex())?;
            let xlat = nat::dnat_create(ctx, &key, &backend)?;
            nat::rewrite(ctx, &ip, &key, &xlat)?;
            return Ok(into_container(ctx, &ip, xlat.dst, class));
        }
    } else if nat::translate_icmp_error(ctx, &ip)? {
        return Ok(pass);
    }
    check_container_destination(&ip, ctx.ifindex())?;
    if let Some(key) = tuple {
        track_direct_connection(&ip, &key)?;
    }
    Ok(pass)
}

/// A connection opened from outside straight to a container address that
/// the network's gateway mode opens: tracked untranslated, so the
/// container's replies are not taken for new connections of its own (and
/// masqueraded, on a nat-unprotected network) on their way out.
#[inline(always)]
fn track_direct_connection(ip: &Ipv4Packet, key: &CtKey) -> Result<(), DropReason> {
    let Some(net) = policy::network_of(ip.dst) else {
        return Ok(());
    };
    if net.flags & (NET_UNPROTECTED | NET_GATEWAY_ROUTED | NET_TRUSTS_INTERFACES) == 0
        || !opens_connection(key, ip.tcp_flags())
    {
        return Ok(());
    }
    match conntrack::create(key, key, 0) {
        // Err(None): another connection holds the reply tuple (the same
        // client port through a published port); that one keeps it.
        Ok(()) | Err(None) => Ok(()),
        Err(Some(reason)) => Err(reason),
    }
}

/// `from_uplink`'s drops, decided the same way on the XDP frame: every
/// verdict here is one `from_uplink` reaches for the same packet (proven
/// packet by packet in the BPF_PROG_TEST_RUN tests). Where `from_uplink`
/// would look further (ICMP errors it may translate, tracked flows it may
/// refresh), the packet passes.
#[inline(always)]
fn early_drop(ctx: &XdpContext) -> Result<(), DropReason> {
    let ip = match parse::parse_frame(ctx) {
        Ok(Packet::Ipv4(ip)) => ip,
        Ok(Packet::Ipv6) => return ipv6::early_drop6(ctx),
        Ok(Packet::Arp { .. }) | Err(DropReason::UnsupportedEthertype) => return Ok(()),
        Err(reason) => return Err(reason),
    };
    if ip.dst[0] == 127 {
        return Err(DropReason::LoopbackFromOutside);
    }
    if let Some(key) = ip.tuple() {
        if conntrack::is_tracked(&key) {
            return Ok(());
        }
        policy::check_outside_source(ip.src)?;
        if let Some(backend) = published_target(&ip, &key) {
            return check_published(&ip, &key, &backend, ctx.ifindex());
        }
    } else if ip.proto == parse::IPPROTO_ICMP {
        return Ok(()); // an ICMP error: from_uplink may translate it
    }
    check_container_destination(&ip, ctx.ifindex())
}

/// The backend of the published port a packet from outside opens a
/// connection to, if it does.
#[inline(always)]
fn published_target(ip: &Ipv4Packet, key: &CtKey) -> Option<netd_common::Backend> {
    if policy::is_local(ip.dst) && opens_connection(key, ip.tcp_flags()) {
        return nat::published_backend(ip.dst, key.dst_port, key.proto);
    }
    None
}

/// Before a connection to a published port is made: fragments cannot be
/// translated, and the user's rules may refuse it.
#[inline(always)]
fn check_published(
    ip: &Ipv4Packet,
    key: &CtKey,
    backend: &netd_common::Backend,
    ifindex: u32,
) -> Result<(), DropReason> {
    if ip.fragment {
        return Err(DropReason::FragmentNeedsNat);
    }
    let conn = rules::Inbound {
        src: Some(ip.src),
        proto: key.proto,
        port: key.dst_port,
        ifindex,
    };
    rules::check(&conn, || policy::network_of(backend.ip).map_or(0, |n| n.id))
}

/// A packet from outside, untracked, to a container address: only a routed
/// CIDR's sources may send it, or anyone where the network's gateway mode
/// opens the address (the user's rules permitting); the kernel forwards it.
/// Anything else to a container is unsolicited.
#[inline(always)]
fn check_container_destination(ip: &Ipv4Packet, ifindex: u32) -> Result<(), DropReason> {
    let Some(net) = policy::network_of(ip.dst) else {
        return Ok(());
    };
    if !policy::is_routed(net, ip.src) && !open_to_direct_access(net, ip, ifindex) {
        return Err(DropReason::UnsolicitedInbound);
    }
    if let Some(port) = routed_opening_port(ip) {
        let conn = rules::Inbound {
            src: Some(ip.src),
            proto: ip.proto,
            port,
            ifindex,
        };
        rules::check(&conn, || net.id)?;
    }
    Ok(())
}

/// Docker 28's gateway modes: `nat-unprotected` opens every port of every
/// container; `routed` opens ICMP and the published container ports (keyed
/// by the container's own address and port, their backend itself); `nat`
/// opens those ports only to what arrives on a trusted host interface
/// (Docker 28.2), else nothing.
#[inline(always)]
fn open_to_direct_access(net: &netd_common::NetworkInfo, ip: &Ipv4Packet, ifindex: u32) -> bool {
    if net.flags & NET_UNPROTECTED != 0 {
        return true;
    }
    let routed = net.flags & NET_GATEWAY_ROUTED != 0;
    if !routed && !policy::trusts(net, ifindex) {
        return false;
    }
    let dst_port = match ip.l4 {
        L4::Icmp { .. } => return routed,
        L4::Tcp { dst_port, .. } | L4::Udp { dst_port, .. } => dst_port,
        L4::Other => return false,
    };
    let key = netd_common::PortKey {
        host_ip: ip.dst,
        port: dst_port,
        proto: ip.proto,
        _pad: 0,
    };
    nat::published_on(&key).is_some_and(|b| b.ip == ip.dst && b.port == dst_port)
}

#[inline(always)]
fn to_uplink_inner(ctx: &TcContext) -> Result<Forward, DropReason> {
    match parse::parse_frame(ctx) {
        Ok(Packet::Ipv4(ip)) => {
            egress_nat(ctx, &ip, ctx.ifindex())?;
            Ok(Forward::Pass(counters::traffic_class(&ip)))
        }
        Ok(Packet::Ipv6) => Err(DropReason::UnsupportedEthertype), // to_uplink6's
        Ok(Packet::Arp { .. }) | Err(DropReason::UnsupportedEthertype) => {
            Ok(Forward::Pass(TrafficClass::Arp))
        }
        Err(reason) => Err(reason),
    }
}

/// NAT for a packet about to leave through uplink `egress` (from
/// `to_uplink`, or from the fast path before it redirects there): established connections
/// and ICMP errors are translated, new container connections masqueraded.
#[inline(always)]
fn egress_nat(ctx: &TcContext, ip: &Ipv4Packet, egress: u32) -> Result<(), DropReason> {
    let Some(key) = ip.tuple() else {
        if nat::translate_icmp_error(ctx, ip)? {
            return Ok(());
        }
        // Untracked protocol or a later fragment: fine from the host itself,
        // but a container's would leave untranslated.
        return match policy::network_of(ip.src) {
            Some(net) if net.flags & NET_MASQUERADE != 0 => Err(DropReason::FragmentNeedsNat),
            _ => Ok(()),
        };
    };
    if let Lookup::Hit(xlat) = conntrack::lookup(&key, ip.tcp_flags()) {
        return translate(ctx, ip, &key, &xlat);
    }
    let Some(net) = policy::network_of(ip.src) else {
        return host_flow(ctx, ip, &key);
    };
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    // To a routed CIDR (another node's pods): the source stays as it is.
    if policy::is_routed(net, ip.dst) {
        return Ok(());
    }
    if ip.fragment && net.flags & NET_MASQUERADE != 0 {
        return Err(DropReason::FragmentNeedsNat);
    }
    let xlat = nat::snat_create(ctx, &key, net, egress)?;
    nat::rewrite(ctx, ip, &key, &xlat)
}

/// The host's own untracked packet leaving by an uplink. It passes as it
/// is, unless it opens a connection whose replies a masqueraded container
/// connection already receives (the host's kernel picked a port netd's NAT
/// had kept for a container): then this host connection gets a port of the
/// NAT range and is tracked like a container's, so neither stalls.
#[inline(always)]
fn host_flow(ctx: &TcContext, ip: &Ipv4Packet, key: &CtKey) -> Result<(), DropReason> {
    let opens = match key.proto {
        parse::IPPROTO_TCP => opens_connection(key, ip.tcp_flags()),
        parse::IPPROTO_UDP => true,
        // Echo identifiers of the host and of containers share one space
        // on both ends anyway; the kernel's ping sockets pick their own.
        _ => false,
    };
    if !opens || !conntrack::is_reply_of_connection(&key.reversed()) {
        return Ok(());
    }
    if ip.fragment {
        return Err(DropReason::FragmentNeedsNat);
    }
    let xlat = nat::create_with_free_port(ctx, key, key, CT_SNAT, Source::Host, Port::FromRange)?;
    nat::rewrite(ctx, ip, key, &xlat)
}

/// After translation from the uplink: straight into the container when the
/// destination is one, else on through the stack.
#[inline(always)]
fn into_container(
    ctx: &TcContext,
    ip: &Ipv4Packet,
    dst: netd_common::Ipv4,
    class: TrafficClass,
) -> Forward {
    match forward::to_container(ctx, ip, dst, true) {
        Some(action) => Forward::Redirect(class, action),
        None => Forward::Pass(class),
    }
}

/// Only a TCP SYN (or any UDP/ICMP packet) may open a connection through a
/// published port; a stray mid-stream segment (say, a reply from a host
/// socket whose port number happens to be published) must not.
#[inline(always)]
fn opens_connection<A>(key: &CtKey<A>, tcp_flags: u8) -> bool {
    key.proto != parse::IPPROTO_TCP
        || tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN
}

/// Applies a tracked connection's translation (nothing when there is none).
#[inline(always)]
fn translate(
    ctx: &TcContext,
    ip: &Ipv4Packet,
    key: &netd_common::CtKey,
    xlat: &netd_common::CtKey,
) -> Result<(), DropReason> {
    if key == xlat {
        return Ok(());
    }
    if ip.fragment {
        return Err(DropReason::FragmentNeedsNat);
    }
    nat::rewrite(ctx, ip, key, xlat)
}

/// Routed traffic is not tracked, so what opens a connection is judged by
/// the packet alone: a TCP SYN, an ICMP echo request, any UDP packet (a UDP
/// reply to a pod's own flow included) or other protocol; ICMP errors and
/// replies are not. Returns the destination port (zero where none).
#[inline(always)]
fn routed_opening_port(ip: &Ipv4Packet) -> Option<[u8; 2]> {
    match ip.l4 {
        L4::Tcp {
            dst_port, flags, ..
        } => (flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN).then_some(dst_port),
        L4::Udp { dst_port, .. } => Some(dst_port),
        L4::Icmp { icmp_type, .. } => (icmp_type == parse::ICMP_ECHO_REQUEST).then_some([0; 2]),
        L4::Other => Some([0; 2]),
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
