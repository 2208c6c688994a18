//! Incremental Internet checksum update (RFC 1624) for checksums the kernel
//! helpers cannot reach: those inside the packet embedded in an ICMP error.

/// The checksum `check` (as stored, big-endian) after the bytes `old` were
/// replaced by `new` (both of even length, 2 or 4 here).
#[inline(always)]
pub fn update(check: [u8; 2], old: &[u8; 4], new: &[u8; 4], len: usize) -> [u8; 2] {
    // HC' = ~(~HC + ~m + m')
    let mut sum = u32::from(!u16::from_be_bytes(check));
    let mut i = 0;
    while i < 4 && i < len {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
