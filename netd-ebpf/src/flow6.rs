//! An IPv6 packet as conntrack and NAT66 see it: its tuple behind up to
//! [`MAX_EXT_HEADERS`] extension headers, or why it has none.

use netd_common::{
    DropReason, FLOW6_FRAGMENT, FLOW6_ICMP_ERROR, FLOW6_TUPLE, FLOW6_UNTRACKED, Flow6,
};

use crate::parse::{
    ETH_LEN, Frame, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_LEN, MAX_EXT_HEADERS, header_at,
    ipv6_header, is_walked_ext_header,
};

/// The IPv6 fragment header.
const IPPROTO_FRAGMENT: u8 = 44;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Destination unreachable, packet too big, time exceeded, parameter
/// problem: the errors that quote the packet they are about.
const ICMPV6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;

/// Reads the packet's flow into `flow` (in place: the caller's is a
/// per-CPU scratch slot or its own stack).
#[inline(always)]
pub fn flow6<F: Frame>(ctx: &F, flow: &mut Flow6) -> Result<(), DropReason> {
    let header = ipv6_header(ctx)?;
    flow.key.src = header.src;
    flow.key.dst = header.dst;
    flow.key.src_port = [0; 2];
    flow.key.dst_port = [0; 2];
    flow.key.proto = 0;
    flow.l4_offset = (ETH_LEN + IPV6_LEN) as u32;
    flow.next_hdr = header.next_hdr;
    flow.tcp_flags = 0;
    flow.kind = FLOW6_UNTRACKED;
    let mut offset = ETH_LEN + IPV6_LEN;
    let mut upper = header.next_hdr;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_walked_ext_header(upper) {
            break;
        }
        let ext: *const [u8; 2] = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
        // SAFETY: bounds checked by header_at.
        let [next, len] = unsafe { *ext };
        upper = next;
        offset += (usize::from(len) + 1) * 8;
    }
    flow.l4_offset = offset as u32;
    let (src_port, dst_port) = match upper {
        IPPROTO_TCP => {
            let tcp: *const [u8; 14] = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
            // SAFETY: bounds checked by header_at.
            let tcp = unsafe { &*tcp };
            flow.tcp_flags = tcp[13];
            ([tcp[0], tcp[1]], [tcp[2], tcp[3]])
        }
        IPPROTO_UDP => {
            let udp: *const [u8; 4] = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
            // SAFETY: bounds checked by header_at.
            let udp = unsafe { &*udp };
            ([udp[0], udp[1]], [udp[2], udp[3]])
        }
        IPPROTO_ICMPV6 => {
            let icmp: *const [u8; 8] = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
            // SAFETY: bounds checked by header_at.
            let icmp = unsafe { &*icmp };
            match icmp[0] {
                // The echo identifier is both "ports", as for ICMP.
                ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY => ([icmp[4], icmp[5]], [icmp[4], icmp[5]]),
                t if ICMPV6_ERRORS.contains(&t) => {
                    flow.kind = FLOW6_ICMP_ERROR;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        IPPROTO_FRAGMENT => {
            flow.kind = FLOW6_FRAGMENT;
            return Ok(());
        }
        _ => return Ok(()),
    };
    flow.key.src_port = src_port;
    flow.key.dst_port = dst_port;
    flow.key.proto = upper;
    flow.kind = FLOW6_TUPLE;
    Ok(())
}
