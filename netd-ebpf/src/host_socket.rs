//! Whether one of the host's own sockets already owns a 4-tuple, so NAT
//! never hands a container connection a tuple the host is using (the
//! host-first order of a NAT clash; docs/datapath.md, "NAT clashes").

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    cty::c_void,
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
};
use netd_common::{CtKey, CtKey6, Ipv4, Ipv6};

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP};

/// `BPF_TCP_LISTEN`: a listener owns no connection, only a port to accept on.
const TCP_LISTEN: u32 = 10;
/// The IPv4 and IPv6 members of `bpf_sock_tuple`.
const TUPLE_V4_LEN: u32 = 12;
const TUPLE_V6_LEN: u32 = 36;

/// How a family's translated tuple becomes the `bpf_sock_tuple` an arriving
/// reply would carry (source = the far end).
pub trait SockTuple: Copy {
    /// Fills `tuple`; returns the length of the member used.
    fn fill(xlat: &CtKey<Self>, tuple: &mut bpf_sock_tuple) -> u32;
}

impl SockTuple for Ipv4 {
    #[inline(always)]
    fn fill(xlat: &CtKey, tuple: &mut bpf_sock_tuple) -> u32 {
        // SAFETY: writes to the IPv4 member of a union on the stack.
        unsafe {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = u32::from_ne_bytes(xlat.dst);
            v4.daddr = u32::from_ne_bytes(xlat.src);
            v4.sport = u16::from_ne_bytes(xlat.dst_port);
            v4.dport = u16::from_ne_bytes(xlat.src_port);
        }
        TUPLE_V4_LEN
    }
}

impl SockTuple for Ipv6 {
    #[inline(always)]
    fn fill(xlat: &CtKey6, tuple: &mut bpf_sock_tuple) -> u32 {
        // SAFETY: writes to the IPv6 member of a union on the stack.
        unsafe {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            v6.saddr = xlat.dst;
            v6.daddr = xlat.src;
            v6.sport = u16::from_ne_bytes(xlat.dst_port);
            v6.dport = u16::from_ne_bytes(xlat.src_port);
        }
        TUPLE_V6_LEN
    }
}

/// True when a host socket in the packet's namespace would receive the
/// replies of `xlat` (a translated connection whose source is a host
/// address): an established, connecting or TIME_WAIT TCP socket on exactly
/// that tuple, or any UDP socket bound to its local end. A TCP listener on
/// the port does not count (the kernel's NAT ignores it too).
#[inline(always)]
pub fn owns<A: SockTuple>(ctx: *mut c_void, xlat: &CtKey<A>) -> bool {
    // SAFETY: an all-zero tuple is valid; one member is filled below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let len = A::fill(xlat, &mut tuple);
    let netns = BPF_F_CURRENT_NETNS as u64;
    // One path per protocol, each reading only its own socket kind: the
    // verifier refuses one instruction reading two kinds of socket (which
    // a shared tail would be, once the protocol is re-read from memory).
    match xlat.proto {
        IPPROTO_TCP => {
            // SAFETY: helper call with a stack tuple; a socket found is
            // released below.
            let sk = unsafe { bpf_skc_lookup_tcp(ctx, &mut tuple, len, netns, 0) };
            if sk.is_null() {
                return false;
            }
            // SAFETY: a non-null socket from the lookup: `state` is
            // readable on every kind it returns.
            let listening = unsafe { (*sk).state } == TCP_LISTEN;
            // SAFETY: releases the reference the lookup took.
            unsafe { bpf_sk_release(sk as *mut _) };
            !listening
        }
        IPPROTO_UDP => {
            // SAFETY: as above.
            let sk: *mut bpf_sock = unsafe { bpf_sk_lookup_udp(ctx, &mut tuple, len, netns, 0) };
            if sk.is_null() {
                return false;
            }
            // SAFETY: releases the reference the lookup took.
            unsafe { bpf_sk_release(sk as *mut _) };
            true
        }
        _ => false,
    }
}
