//! Addresses, process-wide settings, uplinks, published ports and the
//! socket hooks' reverse translation.

use bytemuck::{Pod, Zeroable};

/// Addresses and ports are kept in network byte order, as in the packet.
pub type Ipv4 = [u8; 4];
/// An IPv6 address: its 16 bytes as they sit in the packet, held as four
/// words (the BPF side copies words; byte arrays of 16 make its compiler
/// emit code the verifier refuses). Convert with [`ipv6_from_octets`].
pub type Ipv6 = [u32; 4];

pub const fn ipv6_from_octets(o: [u8; 16]) -> Ipv6 {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

pub const fn ipv6_octets(a: Ipv6) -> [u8; 16] {
    let (w0, w1, w2, w3) = (
        a[0].to_ne_bytes(),
        a[1].to_ne_bytes(),
        a[2].to_ne_bytes(),
        a[3].to_ne_bytes(),
    );
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}
pub type Port = [u8; 2];

/// Process-wide settings (one-slot array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Address masquerade uses when a network names no host IP of its own
    /// and the egress interface is not in `UPLINKS` (a fallback: the first
    /// uplink's).
    pub masquerade_ip: Ipv4,
    /// Source ports masquerade may allocate when the original one is taken
    /// (host byte order, inclusive).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Network namespace netd manages (SO_NETNS_COOKIE). The socket hooks
    /// run for every process in the cgroup; they act only on this namespace.
    pub netns_cookie: u64,
    /// 1: container packets leave by the fast path where they can; 0: the
    /// stack always routes them (the BPF_PROG_TEST_RUN tests).
    pub fast_path: u32,
    /// Bit `c` set: `USER_RULES` holds rules of class `c` (see
    /// [`rule_class`]); zero: no user rules, nothing looked up.
    pub rule_classes: u32,
}

/// Value of `UPLINKS` (key: ifindex): an interface to the outside, kept
/// current by the daemon from rtnetlink events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UplinkInfo {
    /// Its primary IPv4 address: what masquerade makes the source of
    /// container packets leaving by it (as iptables' MASQUERADE does).
    pub masquerade_ip: Ipv4,
    /// Its MTU, for the fast path's own length check on kernels without
    /// `bpf_check_mtu` (0 = unknown: such packets take the stack).
    pub mtu: u32,
}

/// Value of `UPLINKS6` (key: ifindex): an interface to the outside that has
/// a global IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UplinkInfo6 {
    /// The address NAT66 makes the source of container packets leaving by
    /// it (its first global address, as the kernel's source selection
    /// would pick for the default route).
    pub masquerade_ip: Ipv6,
}

/// The resolver's address in every container (Docker's embedded DNS) and
/// its port, which `--dns-via cgroup-hooks` steers to the daemon.
pub const RESOLVER_IP: Ipv4 = [127, 0, 0, 11];
pub const RESOLVER_PORT: u16 = 53;

/// Where user space sends a UDP connect() to learn its network namespace's
/// cookie on kernels without SO_NETNS_COOKIE (before 5.14): the connect4 hook
/// records the cookie in `NETNS_PROBE` under the socket's cookie. A
/// documentation address (TEST-NET-1) that no real traffic uses; a connect
/// to it only costs a map write.
pub const NETNS_PROBE_IP: Ipv4 = [192, 0, 2, 1];
pub const NETNS_PROBE_PORT: u16 = 0x4e44;

/// Key of `SOCK_REVNAT`: a socket (by cookie) and the backend its traffic was
/// redirected to, so replies can show the address the program asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevKey {
    pub cookie: u64,
    pub ip: Ipv4,
    pub port: Port,
    pub _pad: [u8; 2],
}

/// The address a socket originally asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevValue {
    pub ip: Ipv4,
    pub port: Port,
    pub _pad: [u8; 2],
}

/// Key of `SOCK_REVNAT6`: [`SockRevKey`] for IPv6 sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevKey6 {
    pub cookie: u64,
    pub ip: Ipv6,
    pub port: Port,
    pub _pad: [u8; 6],
}

/// The IPv6 address and port a socket originally asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevValue6 {
    pub ip: Ipv6,
    pub port: Port,
    pub _pad: [u8; 2],
}

/// Key of `PUBLISHED_PORTS`. `host_ip` all zero = published on every address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct PortKey {
    pub host_ip: Ipv4,
    pub port: Port,
    pub proto: u8,
    pub _pad: u8,
}

impl PortKey {
    /// Its bit in `PUBLISHED_SCOPES`.
    pub const fn scope(&self) -> u32 {
        if u32::from_ne_bytes(self.host_ip) == 0 {
            PUBLISHED_ON_ALL
        } else {
            PUBLISHED_ON_ADDRESS
        }
    }
}

/// Key of `PUBLISHED_PORTS6`: a port published on IPv6. `host_ip` all
/// zero = on every IPv6 address of the host (`[::]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct PortKey6 {
    pub host_ip: Ipv6,
    pub port: Port,
    pub proto: u8,
    pub _pad: u8,
}

/// The container behind a port published on IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend6 {
    pub ip: Ipv6,
    pub port: Port,
    pub _pad: [u8; 2],
}

/// Bits of `PUBLISHED_SCOPES` (one-slot array): which kinds of
/// `PUBLISHED_PORTS` keys exist, so a lookup skips the kind there is none
/// of (most hosts publish only on all addresses, as `docker run -p` does).
/// A set bit may be stale (one lookup too many); a clear one never is.
pub const PUBLISHED_ON_ADDRESS: u32 = 1;
pub const PUBLISHED_ON_ALL: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub ip: Ipv4,
    pub port: Port,
    pub _pad: [u8; 2],
}

/// The source ports NAT chooses from (inclusive) unless the daemon is told
/// otherwise (`--nat-ports`): below Linux's default ephemeral range
/// (32768–60999), so the host never picks one of them for a connection of
/// its own and a translated connection cannot clash with it later. The
/// daemon reserves (`ip_local_reserved_ports`) whatever part of the range
/// the host's ephemeral range overlaps.
pub const NAT_PORT_MIN: u16 = 1024;
pub const NAT_PORT_MAX: u16 = 32767;
