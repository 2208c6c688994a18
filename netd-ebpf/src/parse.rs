//! Header parsing with the bounds checks the verifier needs.
//!
//! Outcomes are deterministic: a frame is either parsed into a [`Packet`] or
//! rejected with the [`DropReason`] that names the first broken header.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, xdp_md},
    programs::{TcContext, XdpContext},
};
use netd_common::{CtKey, DropReason, Ipv6};
use network_types::{
    arp::ArpHdr,
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub use crate::offsets::ETH_LEN;
use crate::offsets::{IPV4_LEN, TCP_LEN};
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 neighbour advertisement: its target is the sender's address.
pub const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;
/// ICMPv6 router advertisement and redirect: a router's messages.
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_REDIRECT: u8 = 137;
/// The fixed IPv6 header, its addresses read as words (see `Ipv6`).
#[repr(C)]
struct Ipv6Header {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_hdr: u8,
    hop_limit: u8,
    src: Ipv6,
    dst: Ipv6,
}
pub const IPV6_LEN: usize = core::mem::size_of::<Ipv6Header>();

/// Where a neighbour message's target address starts in it.
const ND_TARGET_OFFSET: usize = 8;

/// The start of an ICMPv6 neighbour message, up to its target address.
#[repr(C)]
struct NeighbourMessage {
    icmp_type: u8,
    code: u8,
    checksum: [u8; 2],
    flags: [u8; 4],
    target: Ipv6,
}
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// More-fragments flag and fragment offset bits of `frag_off`.
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

pub enum Packet {
    /// ARP, with the sender protocol address.
    Arp {
        sender_ip: [u8; 4],
    },
    Ipv4(Ipv4Packet),
    /// IPv6, its header not read yet: [`ipv6_header`] reads what the
    /// uplinks judge, [`parse_ipv6`] what a container's packets need. (An
    /// `Ipv6Packet` here would grow every hook's stack, IPv4's too, past
    /// what older kernels allow across their calls.)
    Ipv6,
}

/// The fixed IPv6 header's fields the uplinks judge by.
pub struct Ipv6Header6 {
    pub src: Ipv6,
    pub dst: Ipv6,
    pub next_hdr: u8,
}

/// What the IPv6 path decides on: addresses, and the ICMPv6 message (after
/// up to [`MAX_EXT_HEADERS`] hop-by-hop, routing and destination options
/// headers, where neighbour discovery may hide). It neither translates nor
/// tracks, so fragments need no reassembly (the kernel ignores fragmented
/// neighbour discovery, RFC 6980).
pub struct Ipv6Packet {
    /// The addresses where they lie in the packet (not copies: 32 bytes of
    /// stack would not fit older kernels). Nothing on the container path
    /// changes or moves the packet after parsing, so this stays valid.
    addrs: *const [Ipv6; 2],
    /// The upper-layer header after the extension headers walked; still an
    /// extension header when the chain is longer than netd walks.
    pub upper: u8,
    /// The ICMPv6 type when the upper layer is ICMPv6 (0 otherwise, a type
    /// ICMPv6 does not use).
    pub icmp_type: u8,
    /// A neighbour advertisement's target (the address its sender claims):
    /// its offset in the frame, 0 when this is none. (An offset, not the
    /// address: 16 more bytes of stack would not fit older kernels.)
    pub advertised_at: u16,
}

/// Extension headers walked to find the upper layer.
pub const MAX_EXT_HEADERS: usize = 3;
/// Hop-by-hop options, routing and destination options: the extension
/// headers with the common (next header, length) start.
#[inline(always)]
pub fn is_walked_ext_header(next_hdr: u8) -> bool {
    matches!(next_hdr, 0 | 43 | 60)
}

impl Ipv6Packet {
    #[inline(always)]
    pub fn src(&self) -> &Ipv6 {
        // SAFETY: bounds checked when parsed; the packet has not moved.
        unsafe { &(*self.addrs)[0] }
    }

    #[inline(always)]
    pub fn dst(&self) -> &Ipv6 {
        // SAFETY: as above.
        unsafe { &(*self.addrs)[1] }
    }

    /// Neighbour discovery and multicast listener messages: what a link
    /// needs to work, whatever else its policy forbids.
    #[inline(always)]
    pub fn is_link_control(&self) -> bool {
        self.upper == IPPROTO_ICMPV6 && matches!(self.icmp_type, 130..=137 | 143)
    }

    #[inline(always)]
    pub fn is_link_scoped(addr: &Ipv6) -> bool {
        // fe80::/10 link-local, ff00::/8 multicast.
        let [first, second, ..] = addr[0].to_ne_bytes();
        (first == 0xfe && second & 0xc0 == 0x80) || first == 0xff
    }

    #[inline(always)]
    pub fn is_unspecified(addr: &Ipv6) -> bool {
        addr[0] | addr[1] | addr[2] | addr[3] == 0
    }
}

/// The fields later stages decide on. Addresses and ports stay in network
/// byte order, as they sit in the packet and in the maps.
pub struct Ipv4Packet {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Offset of the L4 header (after IP options, if any).
    pub l4_offset: usize,
    /// True for any fragment, first or not.
    pub fragment: bool,
    pub ttl: u8,
    pub proto: u8,
    pub l4: L4,
}

pub enum L4 {
    Tcp {
        src_port: [u8; 2],
        dst_port: [u8; 2],
        flags: u8,
    },
    Udp {
        src_port: [u8; 2],
        dst_port: [u8; 2],
    },
    /// `ident` is the echo identifier (meaningful for echo request/reply).
    Icmp { icmp_type: u8, ident: [u8; 2] },
    /// Other protocols and non-first fragments (no L4 header to read).
    Other,
}

/// What parsing needs of a hook's context: the TC programs' skb and the XDP
/// program's frame are parsed by the same code, so both judge a packet alike.
pub trait Frame {
    /// The hook, as drop events name it (`netd_common::HOOK_*`).
    const HOOK: u8;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length (an skb's payload may sit beyond the
    /// linear part; an XDP frame is all linear).
    fn len(&self) -> u32;
    /// Makes the first `len` bytes directly readable, where the hook can.
    fn pull(&self, len: u32) -> bool;
    /// The interface the packet is on.
    fn ifindex(&self) -> u32;
    /// A copy of the `T` at `offset`, wherever in the packet it lies.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl Frame for TcContext {
    const HOOK: u8 = netd_common::HOOK_TC;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
    #[inline(always)]
    fn pull(&self, len: u32) -> bool {
        self.pull_data(len).is_ok()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context is the program's __sk_buff.
        unsafe { (*(self.as_ptr() as *const __sk_buff)).ifindex }
    }
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        TcContext::load(self, offset).ok()
    }
}

impl Frame for XdpContext {
    const HOOK: u8 = netd_common::HOOK_XDP;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn pull(&self, _len: u32) -> bool {
        false
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context is the program's xdp_md.
        unsafe { (*(self.as_ptr() as *const xdp_md)).ingress_ifindex }
    }
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        // SAFETY: bounds checked by ptr_at; unaligned, as packets are.
        ptr_at::<T, Self>(self, offset).map(|p| unsafe { p.read_unaligned() })
    }
}

/// Pointer to a `T` at `offset`, if the whole `T` lies inside the linear
/// (directly readable) part of the packet.
#[inline(always)]
pub fn ptr_at<T, F: Frame>(ctx: &F, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Like [`ptr_at`], but when the header exists in the packet and only sits
/// beyond the linear part (e.g. paged skbs from local TCP sockets), pulls it
/// into the linear part first. Pulling invalidates earlier pointers.
#[inline(always)]
pub fn header_at<T, F: Frame>(ctx: &F, offset: usize) -> Option<*const T> {
    if let Some(ptr) = ptr_at(ctx, offset) {
        return Some(ptr);
    }
    let needed = offset + core::mem::size_of::<T>();
    if needed > ctx.len() as usize || !ctx.pull(needed as u32) {
        return None;
    }
    ptr_at(ctx, offset)
}

/// Source MAC of the frame.
#[inline(always)]
pub fn src_mac<F: Frame>(ctx: &F) -> Result<[u8; 6], DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DropReason::TruncatedEthernet)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { (*eth).src_addr })
}

/// Whether the frame is IPv6, by its EtherType alone: the uplink entries
/// pick their family's subprogram with it, which then parses the frame
/// (a full parse here would be done twice for every IPv4 packet).
#[inline(always)]
pub fn is_ipv6<F: Frame>(ctx: &F) -> bool {
    // SAFETY: bounds checked by ptr_at.
    ptr_at::<EthHdr, F>(ctx, 0)
        .is_some_and(|eth| unsafe { (*eth).ether_type } == EtherType::Ipv6 as u16)
}

#[inline(always)]
pub fn parse_frame<F: Frame>(ctx: &F) -> Result<Packet, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(DropReason::TruncatedEthernet)?;
    // SAFETY: bounds checked by ptr_at/header_at.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Arp as u16 {
        let arp: *const ArpHdr = header_at(ctx, ETH_LEN).ok_or(DropReason::TruncatedL4)?;
        // SAFETY: bounds checked by header_at.
        let arp = unsafe { &*arp };
        return Ok(Packet::Arp { sender_ip: arp.spa });
    }
    if ether_type == EtherType::Ipv6 as u16 {
        return Ok(Packet::Ipv6);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return Err(DropReason::UnsupportedEthertype);
    }
    parse_ipv4(ctx).map(Packet::Ipv4)
}

/// The fixed IPv6 header of a [`Packet::Ipv6`], checked.
#[inline(always)]
pub fn ipv6_header<F: Frame>(ctx: &F) -> Result<Ipv6Header6, DropReason> {
    let ip: *const Ipv6Header = header_at(ctx, ETH_LEN).ok_or(DropReason::BadIpv6Header)?;
    // SAFETY: bounds checked by header_at.
    let ip = unsafe { &*ip };
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    // A jumbogram (payload length 0) never crosses a veth or an Ethernet.
    if ip.version_class_flow[0] >> 4 != 6 || ETH_LEN + IPV6_LEN + payload_len > ctx.len() as usize {
        return Err(DropReason::BadIpv6Header);
    }
    Ok(Ipv6Header6 {
        src: ip.src,
        dst: ip.dst,
        next_hdr: ip.next_hdr,
    })
}

/// A [`Packet::Ipv6`] as a container's packets are judged: the header,
/// and the ICMPv6 message behind the extension headers walked.
#[inline(always)]
pub fn parse_ipv6<F: Frame>(ctx: &F) -> Result<Ipv6Packet, DropReason> {
    let next_hdr = ipv6_header(ctx)?.next_hdr;
    let mut packet = Ipv6Packet {
        addrs: core::ptr::null(),
        upper: next_hdr,
        icmp_type: 0,
        advertised_at: 0,
    };
    let mut offset = ETH_LEN + IPV6_LEN;
    for _ in 0..MAX_EXT_HEADERS {
        if !is_walked_ext_header(packet.upper) {
            break;
        }
        let ext: *const [u8; 2] = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
        // SAFETY: bounds checked by header_at.
        let [next, len] = unsafe { *ext };
        packet.upper = next;
        offset += (usize::from(len) + 1) * 8;
    }
    if packet.upper != IPPROTO_ICMPV6 {
        return with_addrs(ctx, packet);
    }
    let icmp: *const [u8; 4] = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
    // SAFETY: bounds checked by header_at.
    packet.icmp_type = unsafe { (*icmp)[0] };
    if packet.icmp_type == ICMPV6_NEIGHBOUR_ADVERT {
        // Present in full (pulled if need be), for the policy to read.
        let _: *const NeighbourMessage = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
        packet.advertised_at = (offset + ND_TARGET_OFFSET) as u16;
    }
    with_addrs(ctx, packet)
}

/// `packet` with its addresses' place in the frame, taken last: the walk
/// before may have pulled and moved the packet.
#[inline(always)]
fn with_addrs<F: Frame>(ctx: &F, mut packet: Ipv6Packet) -> Result<Ipv6Packet, DropReason> {
    packet.addrs = ptr_at(ctx, ETH_LEN + 8).ok_or(DropReason::BadIpv6Header)?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv4<F: Frame>(ctx: &F) -> Result<Ipv4Packet, DropReason> {
    let ip: *const Ipv4Hdr = header_at(ctx, ETH_LEN).ok_or(DropReason::TruncatedIpv4)?;
    // SAFETY: bounds checked by ptr_at/header_at.
    let ip = unsafe { &*ip };
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    // skb->len, not data_end - data: payload may sit in paged fragments.
    let frame_len = ctx.len() as usize;
    if ip.vihl >> 4 != 4
        || header_len < IPV4_LEN
        || total_len < header_len
        || ETH_LEN + total_len > frame_len
    {
        return Err(DropReason::BadIpv4Header);
    }
    let frag_off = u16::from_be_bytes(ip.frags);
    let fragment = frag_off & (IP_MF | IP_OFFSET_MASK) != 0;
    let first_fragment = frag_off & IP_OFFSET_MASK == 0;
    let l4_offset = ETH_LEN + header_len;
    // L4 headers must fit inside the IP datagram, not just the frame.
    let l4_room = total_len - header_len;
    let (src, dst, proto, ttl) = (ip.src_addr, ip.dst_addr, ip.proto, ip.ttl);
    // `ip` must not be used below: parse_l4 may pull data and move the packet.
    let l4 = if !first_fragment {
        L4::Other
    } else {
        parse_l4(ctx, proto, l4_offset, l4_room)?
    };
    Ok(Ipv4Packet {
        src,
        dst,
        l4_offset,
        fragment,
        ttl,
        proto,
        l4,
    })
}

#[inline(always)]
fn parse_l4<F: Frame>(ctx: &F, proto: u8, offset: usize, room: usize) -> Result<L4, DropReason> {
    match proto {
        IPPROTO_TCP => {
            let hdr: *const TcpHdr = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
            // SAFETY: bounds checked by ptr_at/header_at.
            let hdr = unsafe { &*hdr };
            let data_offset = usize::from(hdr.doff()) * 4;
            if data_offset < TCP_LEN || data_offset > room {
                return Err(DropReason::TruncatedL4);
            }
            Ok(L4::Tcp {
                src_port: hdr.source,
                dst_port: hdr.dest,
                flags: tcp_flags(hdr),
            })
        }
        IPPROTO_UDP => {
            let hdr: *const UdpHdr = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
            if room < UdpHdr::LEN {
                return Err(DropReason::TruncatedL4);
            }
            // SAFETY: bounds checked by ptr_at/header_at.
            let hdr = unsafe { &*hdr };
            Ok(L4::Udp {
                src_port: hdr.src,
                dst_port: hdr.dst,
            })
        }
        IPPROTO_ICMP => {
            let hdr: *const Icmpv4Hdr = header_at(ctx, offset).ok_or(DropReason::TruncatedL4)?;
            if room < Icmpv4Hdr::LEN {
                return Err(DropReason::TruncatedL4);
            }
            // SAFETY: bounds checked by ptr_at/header_at.
            let hdr = unsafe { &*hdr };
            Ok(L4::Icmp {
                icmp_type: hdr.type_,
                ident: [hdr.data[0], hdr.data[1]],
            })
        }
        _ => Ok(L4::Other),
    }
}

/// The FIN, SYN, RST and ACK bits, at their places in the flags byte
/// (the only ones netd decides on).
#[inline(always)]
fn tcp_flags(hdr: &TcpHdr) -> u8 {
    (hdr.fin() | hdr.syn() << 1 | hdr.rst() << 2 | hdr.ack() << 4) as u8
}

impl Ipv4Packet {
    /// The conntrack tuple, for protocols netd tracks: TCP, UDP, ICMP echo.
    #[inline(always)]
    pub fn tuple(&self) -> Option<CtKey> {
        let (proto, src_port, dst_port) = match self.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            } => (IPPROTO_TCP, src_port, dst_port),
            L4::Udp { src_port, dst_port } => (IPPROTO_UDP, src_port, dst_port),
            L4::Icmp {
                icmp_type: ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY,
                ident,
            } => (IPPROTO_ICMP, ident, ident),
            _ => return None,
        };
        Some(CtKey {
            src: self.src,
            dst: self.dst,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        })
    }

    pub fn tcp_flags(&self) -> u8 {
        match self.l4 {
            L4::Tcp { flags, .. } => flags,
            _ => 0,
        }
    }
}
