//! Crafted Ethernet/IPv4 frames for `BPF_PROG_TEST_RUN`, and an independent
//! RFC 1071 checksum routine to verify what the programs emit. Nothing here
//! shares code with the datapath under test.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Builder for one IPv4 frame. Defaults give a well-formed packet; tests
/// change one field at a time to make it unusual or broken.
#[derive(Clone, Debug)]
pub struct Ipv4Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub ident: u16,
    /// Flags + fragment offset, host order (0x4000 = DF).
    pub frag: u16,
    pub options: Vec<u8>,
    pub l4: L4,
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: Vec<u8>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
    },
    IcmpEcho {
        request: bool,
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    /// Any other ICMP message (type, code, rest of header + body).
    Icmp {
        icmp_type: u8,
        code: u8,
        rest: Vec<u8>,
    },
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

impl Ipv4Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            ttl: 64,
            ident: 0x1234,
            frag: 0x4000,
            options: Vec::new(),
            l4,
        }
    }

    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        let l4 = L4::Tcp {
            src_port: sport,
            dst_port: dport,
            flags,
            seq: 1000,
            ack: 0,
            payload: Vec::new(),
        };
        Self::new(ip(src), ip(dst), l4)
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Self {
        let l4 = L4::Udp {
            src_port: sport,
            dst_port: dport,
            payload: payload.to_vec(),
        };
        Self::new(ip(src), ip(dst), l4)
    }

    pub fn icmp_echo(src: &str, dst: &str, id: u16, seq: u16) -> Self {
        let l4 = L4::IcmpEcho {
            request: true,
            id,
            seq,
            payload: b"netd-ping".to_vec(),
        };
        Self::new(ip(src), ip(dst), l4)
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::IcmpEcho { .. } | L4::Icmp { .. } => PROTO_ICMP,
            L4::Raw { proto, .. } => proto,
        }
    }

    /// The L4 segment with a correct checksum.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let (src, dst) = (self.src.octets(), self.dst.octets());
        match &self.l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
                seq,
                ack,
                payload,
            } => {
                let mut seg = Vec::with_capacity(20 + payload.len());
                seg.extend_from_slice(&src_port.to_be_bytes());
                seg.extend_from_slice(&dst_port.to_be_bytes());
                seg.extend_from_slice(&seq.to_be_bytes());
                seg.extend_from_slice(&ack.to_be_bytes());
                seg.extend_from_slice(&[5 << 4, *flags, 0xff, 0xff, 0, 0, 0, 0]);
                seg.extend_from_slice(payload);
                let sum = checksum(&[&pseudo_header(src, dst, PROTO_TCP, seg.len()), &seg]);
                seg[16..18].copy_from_slice(&sum.to_be_bytes());
                seg
            }
            L4::Udp {
                src_port,
                dst_port,
                payload,
            } => {
                let len = (8 + payload.len()) as u16;
                let mut seg = Vec::with_capacity(len as usize);
                seg.extend_from_slice(&src_port.to_be_bytes());
                seg.extend_from_slice(&dst_port.to_be_bytes());
                seg.extend_from_slice(&len.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(payload);
                let mut sum = checksum(&[&pseudo_header(src, dst, PROTO_UDP, seg.len()), &seg]);
                if sum == 0 {
                    sum = 0xffff;
                }
                seg[6..8].copy_from_slice(&sum.to_be_bytes());
                seg
            }
            L4::IcmpEcho {
                request,
                id,
                seq,
                payload,
            } => {
                let mut rest = Vec::new();
                rest.extend_from_slice(&id.to_be_bytes());
                rest.extend_from_slice(&seq.to_be_bytes());
                rest.extend_from_slice(payload);
                icmp_message(if *request { 8 } else { 0 }, 0, &rest)
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
            } => icmp_message(*icmp_type, *code, rest),
            L4::Raw { payload, .. } => payload.clone(),
        }
    }

    /// The IPv4 packet (header with correct checksum + L4).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let header_len = IPV4_LEN + self.options.len();
        assert!(
            header_len.is_multiple_of(4) && header_len <= 60,
            "IP options must pad to 4 bytes"
        );
        let total = (header_len + l4.len()) as u16;
        let mut ip = Vec::with_capacity(total as usize);
        ip.push(0x40 | (header_len / 4) as u8);
        ip.push(0);
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&self.ident.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = ethernet_header(self.dst_mac, self.src_mac, ETHERTYPE_IPV4);
        frame.extend_from_slice(&self.ip_bytes());
        frame
    }
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|_| panic!("bad IPv4 address {s}"))
}

pub fn ethernet_header(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut hdr = Vec::with_capacity(ETH_LEN);
    hdr.extend_from_slice(&dst);
    hdr.extend_from_slice(&src);
    hdr.extend_from_slice(&ethertype.to_be_bytes());
    hdr
}

/// An ARP request for `target` from `sender`.
pub fn arp_request(src_mac: [u8; 6], sender: &str, target: &str) -> Vec<u8> {
    let mut frame = ethernet_header([0xff; 6], src_mac, ETHERTYPE_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ip(sender).octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip(target).octets());
    frame
}

fn icmp_message(icmp_type: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut msg = vec![icmp_type, code, 0, 0];
    msg.extend_from_slice(rest);
    let sum = checksum(&[&msg]);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> Vec<u8> {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&src);
    ph.extend_from_slice(&dst);
    ph.extend_from_slice(&[0, proto]);
    ph.extend_from_slice(&(len as u16).to_be_bytes());
    ph
}

/// RFC 1071 Internet checksum over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for byte in parts.iter().flat_map(|p| p.iter().copied()) {
        match odd.take() {
            Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(high) = odd {
        sum += u32::from(high) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Verifies the IPv4 header checksum and the TCP/UDP/ICMP checksum of an
/// Ethernet frame. Returns a description of the first wrong one.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let ip = frame.get(ETH_LEN..).ok_or("no IPv4 header")?;
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if checksum(&[&ip[..header_len]]) != 0 {
        return Err("IPv4 header checksum wrong".into());
    }
    let l4 = &ip[header_len..total];
    let (src, dst) = (&ip[12..16], &ip[16..20]);
    let pseudo = |proto| {
        pseudo_header(
            src.try_into().unwrap(),
            dst.try_into().unwrap(),
            proto,
            l4.len(),
        )
    };
    let ok = match ip[9] {
        PROTO_TCP => checksum(&[&pseudo(PROTO_TCP), l4]) == 0,
        PROTO_UDP => l4[6..8] == [0, 0] || checksum(&[&pseudo(PROTO_UDP), l4]) == 0,
        PROTO_ICMP => checksum(&[l4]) == 0,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("L4 checksum wrong (protocol {})", ip[9]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example: the one's complement sum is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
    }

    #[test]
    fn built_frames_verify_and_corruption_is_caught() {
        for frame in [
            Ipv4Frame::tcp("10.0.0.1", 1234, "10.0.0.2", 80, TCP_SYN).build(),
            Ipv4Frame::udp("10.0.0.1", 1234, "10.0.0.2", 53, b"odd").build(),
            Ipv4Frame::icmp_echo("10.0.0.1", "10.0.0.2", 7, 1).build(),
        ] {
            verify_checksums(&frame).unwrap();
            let mut broken = frame.clone();
            *broken.last_mut().unwrap() ^= 0x40;
            assert!(verify_checksums(&broken).is_err());
            let mut broken = frame;
            broken[ETH_LEN + 8] ^= 1; // TTL
            assert!(verify_checksums(&broken).is_err());
        }
    }
}

/// An IPv6 frame as a container or a neighbour sends it: addresses, the
/// next header and its bytes (checksums are not the programs' concern on
/// the IPv6 path, which only reads addresses).
#[derive(Clone, Debug)]
pub struct Ipv6Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: std::net::Ipv6Addr,
    pub dst: std::net::Ipv6Addr,
    pub next_hdr: u8,
    pub payload: Vec<u8>,
}

pub const PROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NEIGHBOUR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;

impl Ipv6Frame {
    /// A TCP SYN from `src`:40000 to `dst`:80.
    pub fn tcp_syn(src: &str, dst: &str) -> Self {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = TCP_SYN;
        Self::new(src, dst, PROTO_TCP, tcp)
    }

    /// A neighbour solicitation or advertisement (`kind`) for `target`.
    pub fn neighbour(kind: u8, src: &str, dst: &str, target: &str) -> Self {
        let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target.parse::<std::net::Ipv6Addr>().unwrap().octets());
        Self::new(src, dst, PROTO_ICMPV6, icmp)
    }

    pub fn new(src: &str, dst: &str, next_hdr: u8, payload: Vec<u8>) -> Self {
        Self {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            next_hdr,
            payload,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut frame = ethernet_header(self.dst_mac, self.src_mac, ETHERTYPE_IPV6);
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[self.next_hdr, 64]);
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(&self.payload);
        frame
    }
}
