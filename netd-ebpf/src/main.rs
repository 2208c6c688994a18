//! netd's BPF programs. Entry points stay thin: each parses the packet,
//! then hands it to the logic modules, which are shared between hooks.
#![no_std]
#![no_main]

mod counters;
mod parse;

use aya_ebpf::{
    bindings::TC_ACT_OK, bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext,
};
use netd_common::TrafficClass;

use crate::parse::Packet;

/// Host side of a container veth, ingress: everything the container sends.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    match parse::parse_frame(&ctx) {
        Ok(packet) => {
            counters::count_traffic(traffic_class(&packet), ctx.len());
            TC_ACT_OK as i32
        }
        Err(reason) => {
            counters::count_drop(reason);
            TC_ACT_SHOT as i32
        }
    }
}

fn traffic_class(packet: &Packet) -> TrafficClass {
    match packet {
        Packet::Arp => TrafficClass::Arp,
        Packet::Ipv4(ip) => match ip.l4 {
            parse::L4::Tcp { .. } => TrafficClass::Tcp,
            parse::L4::Udp { .. } => TrafficClass::Udp,
            parse::L4::Icmp { .. } => TrafficClass::Icmp,
            parse::L4::Other => TrafficClass::OtherIpv4,
        },
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
