//! netd's BPF programs. Entry points stay thin: each parses the packet, then
//! hands it to the logic modules (policy, conntrack, nat), which are shared
//! between hooks. See docs/datapath.md for the packet walk of every path.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod nat;
mod parse;
mod policy;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use netd_common::{DropReason, NET_INTERNAL, TrafficClass};

use crate::{
    conntrack::Lookup,
    parse::{Ipv4Packet, L4, Packet},
};

/// Host side of a container veth, ingress: everything the container sends.
/// Anti-spoofing and Docker's forwarding policy; NAT happens on the uplink.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    verdict(&ctx, from_container_inner(&ctx))
}

/// Uplink ingress: replies to masqueraded connections, published ports,
/// and the guard against unsolicited traffic to container addresses.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    verdict(&ctx, from_uplink_inner(&ctx))
}

/// Uplink egress: masquerade for new container connections, and the
/// reverse translation of replies from published ports.
#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    verdict(&ctx, to_uplink_inner(&ctx))
}

/// Pass or drop, counting either way.
#[inline(always)]
fn verdict(ctx: &TcContext, result: Result<TrafficClass, DropReason>) -> i32 {
    match result {
        Ok(class) => {
            counters::count_traffic(class, ctx.len());
            TC_ACT_OK as i32
        }
        Err(reason) => {
            counters::count_drop(reason);
            TC_ACT_SHOT as i32
        }
    }
}

#[inline(always)]
fn from_container_inner(ctx: &TcContext) -> Result<TrafficClass, DropReason> {
    // SAFETY: the context is the program's __sk_buff.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    let src_mac = parse::src_mac(ctx)?;
    match parse::parse_frame(ctx)? {
        Packet::Arp { sender_ip } => {
            // Address probes announce 0.0.0.0; anything else must be our own.
            if sender_ip != [0; 4] {
                policy::check_source(sender_ip, src_mac, ifindex)?;
            }
            Ok(TrafficClass::Arp)
        }
        Packet::Ipv4(ip) => {
            let endpoint = policy::check_source(ip.src, src_mac, ifindex)?;
            policy::check_from_container(endpoint, ip.dst)?;
            Ok(traffic_class(&ip))
        }
    }
}

#[inline(always)]
fn from_uplink_inner(ctx: &TcContext) -> Result<TrafficClass, DropReason> {
    let ip = match parse::parse_frame(ctx) {
        Ok(Packet::Ipv4(ip)) => ip,
        // ARP, IPv6 and the rest belong to the host: not ours to judge.
        Ok(Packet::Arp { .. }) | Err(DropReason::UnsupportedEthertype) => {
            return Ok(TrafficClass::Arp);
        }
        Err(reason) => return Err(reason),
    };
    if ip.dst[0] == 127 {
        return Err(DropReason::LoopbackFromOutside);
    }
    let class = traffic_class(&ip);
    if let Some(key) = ip.tuple() {
        if let Lookup::Hit(xlat) = conntrack::lookup(&key, ip.tcp_flags()) {
            return translate(ctx, &ip, &key, &xlat).map(|()| class);
        }
        if policy::is_local(ip.dst) {
            if let Some(backend) = nat::published_backend(ip.dst, key.dst_port, key.proto) {
                if ip.fragment {
                    return Err(DropReason::FragmentNeedsNat);
                }
                let xlat = nat::dnat_create(&key, &backend)?;
                return nat::rewrite(ctx, &ip, &key, &xlat).map(|()| class);
            }
        }
    }
    if policy::network_of(ip.dst).is_some() {
        return Err(DropReason::UnsolicitedInbound);
    }
    Ok(class)
}

#[inline(always)]
fn to_uplink_inner(ctx: &TcContext) -> Result<TrafficClass, DropReason> {
    let ip = match parse::parse_frame(ctx) {
        Ok(Packet::Ipv4(ip)) => ip,
        Ok(Packet::Arp { .. }) | Err(DropReason::UnsupportedEthertype) => {
            return Ok(TrafficClass::Arp);
        }
        Err(reason) => return Err(reason),
    };
    let class = traffic_class(&ip);
    let Some(key) = ip.tuple() else {
        // Untracked protocol or a later fragment: fine from the host itself,
        // but a container's would leave untranslated.
        return match policy::network_of(ip.src) {
            Some(net) if net.flags & netd_common::NET_MASQUERADE != 0 => {
                Err(DropReason::FragmentNeedsNat)
            }
            _ => Ok(class),
        };
    };
    if let Lookup::Hit(xlat) = conntrack::lookup(&key, ip.tcp_flags()) {
        return translate(ctx, &ip, &key, &xlat).map(|()| class);
    }
    let Some(net) = policy::network_of(ip.src) else {
        return Ok(class); // the host's own traffic
    };
    if net.flags & NET_INTERNAL != 0 {
        return Err(DropReason::InternalNetwork);
    }
    if ip.fragment && net.flags & netd_common::NET_MASQUERADE != 0 {
        return Err(DropReason::FragmentNeedsNat);
    }
    let xlat = nat::snat_create(&key, net)?;
    nat::rewrite(ctx, &ip, &key, &xlat).map(|()| class)
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

fn traffic_class(ip: &Ipv4Packet) -> TrafficClass {
    match ip.l4 {
        L4::Tcp { .. } => TrafficClass::Tcp,
        L4::Udp { .. } => TrafficClass::Udp,
        L4::Icmp { .. } => TrafficClass::Icmp,
        L4::Other => TrafficClass::OtherIpv4,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
