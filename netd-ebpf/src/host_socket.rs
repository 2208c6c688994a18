//! Whether one of the host's own sockets already owns a 4-tuple, so NAT
//! never hands a container connection a tuple the host is using (the
//! host-first order of a NAT clash; docs/datapath.md, "NAT clashes").

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    cty::c_void,
    helpers::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
};
use netd_common::CtKey;

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP};

/// `BPF_TCP_LISTEN`: a listener owns no connection, only a port to accept on.
const TCP_LISTEN: u32 = 10;
/// The IPv4 member of `bpf_sock_tuple`.
const TUPLE_V4_LEN: u32 = 12;

/// True when a host socket in the packet's namespace would receive the
/// replies of `xlat` (a translated connection whose source is a host
/// address): an established, connecting or TIME_WAIT TCP socket on exactly
/// that tuple, or any UDP socket bound to its local end. A TCP listener on
/// the port does not count (the kernel's NAT ignores it too).
#[inline(always)]
pub fn owns(ctx: *mut c_void, xlat: &CtKey) -> bool {
    // SAFETY: an all-zero tuple is valid; the IPv4 member is filled below.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // As an arriving reply would carry it: source = the far end.
    // SAFETY: writes to the IPv4 member of a union on the stack.
    unsafe {
        let v4 = &mut tuple.__bindgen_anon_1.ipv4;
        v4.saddr = u32::from_ne_bytes(xlat.dst);
        v4.daddr = u32::from_ne_bytes(xlat.src);
        v4.sport = u16::from_ne_bytes(xlat.dst_port);
        v4.dport = u16::from_ne_bytes(xlat.src_port);
    }
    let netns = BPF_F_CURRENT_NETNS as u64;
    let ctx_ptr = ctx;
    // SAFETY: helper calls with a stack tuple; a socket found is released
    // on every path below.
    let sk: *mut bpf_sock = unsafe {
        match xlat.proto {
            IPPROTO_TCP => bpf_skc_lookup_tcp(ctx_ptr, &mut tuple, TUPLE_V4_LEN, netns, 0),
            IPPROTO_UDP => bpf_sk_lookup_udp(ctx_ptr, &mut tuple, TUPLE_V4_LEN, netns, 0),
            _ => return false,
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket from the lookup; `state` is readable on
    // every socket kind the lookups return.
    let listening = xlat.proto == IPPROTO_TCP && unsafe { (*sk).state } == TCP_LISTEN;
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut _) };
    !listening
}
