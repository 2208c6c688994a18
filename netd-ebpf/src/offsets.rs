//! Byte offsets of the header fields netd reads and rewrites, taken from
//! network-types' header layouts instead of written as numbers.

use core::mem::offset_of;

use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const ETH_LEN: usize = EthHdr::LEN;

// Relative to an IPv4 header (the packet's own, or one quoted in an ICMP error).
pub const IPV4_LEN: usize = Ipv4Hdr::LEN;
pub const IPV4_TTL: usize = offset_of!(Ipv4Hdr, ttl);
pub const IPV4_PROTO: usize = offset_of!(Ipv4Hdr, proto);
pub const IPV4_CHECK: usize = offset_of!(Ipv4Hdr, check);
pub const IPV4_SRC: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IPV4_DST: usize = offset_of!(Ipv4Hdr, dst_addr);

// In the frame: the packet's IPv4 header follows Ethernet.
pub const IP_TTL: usize = ETH_LEN + IPV4_TTL;
pub const IP_CHECK: usize = ETH_LEN + IPV4_CHECK;
pub const IP_SRC: usize = ETH_LEN + IPV4_SRC;
pub const IP_DST: usize = ETH_LEN + IPV4_DST;

// Relative to the L4 header. TCP and UDP both start with the two ports.
pub const L4_SRC_PORT: usize = offset_of!(TcpHdr, source);
pub const L4_DST_PORT: usize = offset_of!(TcpHdr, dest);
const _: () = assert!(L4_SRC_PORT == offset_of!(UdpHdr, src));
const _: () = assert!(L4_DST_PORT == offset_of!(UdpHdr, dst));
pub const TCP_LEN: usize = TcpHdr::LEN;
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
pub const ICMP_LEN: usize = Icmpv4Hdr::LEN;
pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);
/// An echo request's or reply's identifier: the first half of its data.
pub const ICMP_ECHO_ID: usize = offset_of!(Icmpv4Hdr, data);
