//! IPv6 frames whose upper layer carries a correct checksum (TCP, UDP,
//! ICMPv6 echo and errors), and the independent check of those checksums,
//! for the NAT66 tests: a rewrite must leave every checksum right.

use std::net::Ipv6Addr;

use crate::packet::{ETH_LEN, Ipv6Frame, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, checksum};

pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
const IPV6_LEN: usize = 40;

impl Ipv6Frame {
    /// A TCP segment with `flags`, checksummed.
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        Self::new(src, dst, PROTO_TCP, tcp).checksummed()
    }

    /// A UDP datagram carrying `payload`, checksummed.
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Self {
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(payload);
        Self::new(src, dst, PROTO_UDP, udp).checksummed()
    }

    /// An ICMPv6 echo request or reply (`kind`) with identifier `id`.
    pub fn echo(kind: u8, src: &str, dst: &str, id: u16) -> Self {
        let mut icmp = vec![kind, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&[0, 1, b'p', b'i', b'n', b'g']);
        Self::new(src, dst, PROTO_ICMPV6, icmp).checksummed()
    }

    /// A packet-too-big error from `src` to `dst` quoting `about` (its IPv6
    /// header and first 8 bytes of upper layer), MTU 1280.
    pub fn packet_too_big(src: &str, dst: &str, about: &Ipv6Frame) -> Self {
        Self::icmp6_error(ICMPV6_PACKET_TOO_BIG, 0, 1280, src, dst, about)
    }

    /// A port-unreachable error (destination unreachable, code 4) about
    /// `about`, as a host with no socket on its port sends it.
    pub fn port_unreachable(src: &str, dst: &str, about: &Ipv6Frame) -> Self {
        Self::icmp6_error(ICMPV6_DEST_UNREACH, 4, 0, src, dst, about)
    }

    fn icmp6_error(kind: u8, code: u8, word: u32, src: &str, dst: &str, about: &Ipv6Frame) -> Self {
        let mut icmp = vec![kind, code, 0, 0];
        icmp.extend_from_slice(&word.to_be_bytes());
        icmp.extend_from_slice(&about.build()[ETH_LEN..ETH_LEN + IPV6_LEN + 8]);
        Self::new(src, dst, PROTO_ICMPV6, icmp).checksummed()
    }

    /// The frame with addresses and ports as given (its checksum made
    /// again: what a correct rewrite must produce).
    pub fn translated(&self, src: (&str, u16), dst: (&str, u16)) -> Self {
        let mut frame = self.clone();
        frame.src = src.0.parse().unwrap();
        frame.dst = dst.0.parse().unwrap();
        match frame.next_hdr {
            PROTO_TCP | PROTO_UDP => {
                frame.payload[0..2].copy_from_slice(&src.1.to_be_bytes());
                frame.payload[2..4].copy_from_slice(&dst.1.to_be_bytes());
            }
            // Echo: the identifier, which `src.1` carries.
            _ => frame.payload[4..6].copy_from_slice(&src.1.to_be_bytes()),
        }
        frame.checksummed()
    }

    fn checksummed(mut self) -> Self {
        let at = csum_offset(self.next_hdr);
        self.payload[at..at + 2].copy_from_slice(&[0, 0]);
        let mut sum = checksum(&[
            &pseudo_header6(self.src, self.dst, self.next_hdr, self.payload.len()),
            &self.payload,
        ]);
        if sum == 0 && self.next_hdr == PROTO_UDP {
            sum = 0xffff; // UDP's zero means none, which IPv6 forbids
        }
        self.payload[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        self
    }
}

fn csum_offset(next_hdr: u8) -> usize {
    match next_hdr {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => 2,
    }
}

fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next_hdr: u8, len: usize) -> Vec<u8> {
    let mut ph = Vec::with_capacity(40);
    ph.extend_from_slice(&src.octets());
    ph.extend_from_slice(&dst.octets());
    ph.extend_from_slice(&(len as u32).to_be_bytes());
    ph.extend_from_slice(&[0, 0, 0, next_hdr]);
    ph
}

/// Verifies the TCP/UDP/ICMPv6 checksum of an IPv6 frame (no extension
/// headers). Returns a description of a wrong one.
pub fn verify_checksums6(frame: &[u8]) -> Result<(), String> {
    let ip = frame.get(ETH_LEN..).ok_or("no IPv6 header")?;
    let next_hdr = ip[6];
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let payload = &ip[IPV6_LEN..IPV6_LEN + len];
    let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).unwrap());
    if !matches!(next_hdr, PROTO_TCP | PROTO_UDP | PROTO_ICMPV6) {
        return Ok(());
    }
    match checksum(&[&pseudo_header6(addr(8), addr(24), next_hdr, len), payload]) {
        0 => Ok(()),
        _ => Err(format!("checksum wrong (next header {next_hdr})")),
    }
}
