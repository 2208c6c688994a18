//! Connection tracking: tuples, entries, flags, timeouts.

use bytemuck::{Pod, Zeroable};

use crate::{Ipv4, Ipv6, Port};

/// A packet's 5-tuple as it appears on the wire, for either address
/// family (`CtKey` is IPv4's, [`CtKey6`] IPv6's). ICMP echo uses the
/// identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey<A = Ipv4> {
    pub src: A,
    pub dst: A,
    pub src_port: Port,
    pub dst_port: Port,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// An IPv6 connection's tuple (`CONNTRACK6`).
pub type CtKey6 = CtKey<Ipv6>;

impl<A: Copy> CtKey<A> {
    /// The tuple of a packet travelling the other way.
    pub const fn reversed(&self) -> CtKey<A> {
        CtKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// skb mark of a packet `from_container` has already translated, counted and
/// redirected to the uplink: `to_uplink` clears it and lets the packet go
/// without a second conntrack lookup. A whole-word value (ASCII "netd"), so
/// a mark set by anyone else never matches.
pub const FASTPATH_MARK: u32 = 0x6e65_7464;

/// Conntrack entry flags.
pub const CT_REPLY: u32 = 1 << 0;
pub const CT_SNAT: u32 = 1 << 1;
pub const CT_DNAT: u32 = 1 << 2;
pub const CT_SEEN_REPLY: u32 = 1 << 3;
pub const CT_CLOSING: u32 = 1 << 4;

/// Timeouts (nanoseconds of CLOCK_MONOTONIC, as bpf_ktime_get_ns).
pub mod timeouts {
    const SEC: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 60 * SEC;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600 * SEC;
    pub const TCP_CLOSING: u64 = 10 * SEC;
    pub const UDP: u64 = 60 * SEC;
    pub const ICMP: u64 = 30 * SEC;
}

/// One direction of a tracked connection. Every connection has two entries:
/// the original direction and the reply direction, each holding the tuple
/// its packets are rewritten to (`xlat`; equal to the key when no NAT).
/// The other entry's key is always `xlat.reversed()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry<K = CtKey> {
    pub xlat: K,
    pub expires_ns: u64,
    pub flags: u32,
    pub _pad: u32,
}

/// An IPv6 connection's entry (`CONNTRACK6`).
pub type CtEntry6 = CtEntry<CtKey6>;

// SAFETY: repr(C), every field plain data, and no padding for either
// family (the sizes are asserted in lib.rs).
unsafe impl Zeroable for CtKey<Ipv4> {}
unsafe impl Pod for CtKey<Ipv4> {}
unsafe impl Zeroable for CtKey<Ipv6> {}
unsafe impl Pod for CtKey<Ipv6> {}
unsafe impl Zeroable for CtEntry<CtKey> {}
unsafe impl Pod for CtEntry<CtKey> {}
unsafe impl Zeroable for CtEntry<CtKey6> {}
unsafe impl Pod for CtEntry<CtKey6> {}

/// One IPv6 packet as an uplink hook works on it: its tuple, the tuple
/// conntrack translates it to, and where its upper layer starts. Held in
/// the per-CPU `FLOW6_SCRATCH`, not on the stack: the hooks' IPv6 half
/// and the subprograms it calls share 512 bytes on older kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Flow6 {
    /// Addresses always; ports and protocol when `kind` is `FLOW6_TUPLE`.
    pub key: CtKey6,
    pub xlat: CtKey6,
    /// Where the upper-layer header starts in the frame.
    pub l4_offset: u32,
    /// The header right after the fixed one (what the counters classify).
    pub next_hdr: u8,
    pub tcp_flags: u8,
    /// One of the `FLOW6_*` kinds.
    pub kind: u8,
    pub _pad: u8,
}

/// TCP, UDP or an ICMPv6 echo: `Flow6::key` is its tuple.
pub const FLOW6_TUPLE: u8 = 1;
/// An ICMPv6 error, which may quote a tracked connection's packet.
pub const FLOW6_ICMP_ERROR: u8 = 2;
/// A fragment (first or not): netd does not reassemble.
pub const FLOW6_FRAGMENT: u8 = 3;
/// Anything else (neighbour discovery, other protocols, chains longer than
/// netd walks): only the addresses are set.
pub const FLOW6_UNTRACKED: u8 = 0;
