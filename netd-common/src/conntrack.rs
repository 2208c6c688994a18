//! Connection tracking: tuples, entries, flags, timeouts.

use bytemuck::{Pod, Zeroable};

use crate::{Ipv4, Port};

/// A packet's 5-tuple as it appears on the wire. ICMP echo uses the
/// identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    pub src: Ipv4,
    pub dst: Ipv4,
    pub src_port: Port,
    pub dst_port: Port,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The tuple of a packet travelling the other way.
    pub const fn reversed(&self) -> CtKey {
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    pub xlat: CtKey,
    pub expires_ns: u64,
    pub flags: u32,
    pub _pad: u32,
}
