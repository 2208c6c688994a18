//! Types shared by the BPF programs (`netd-ebpf`) and user space (`netd`).
//!
//! Everything here is `#[repr(C)]` or `#[repr(u32)]` with explicit padding,
//! because the same bytes are read on both sides of a BPF map.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Names of the maps, as declared in `netd-ebpf` and looked up by user space.
pub mod maps {
    pub const TRAFFIC_COUNTERS: &str = "TRAFFIC_COUNTERS";
    pub const DROP_COUNTERS: &str = "DROP_COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    pub const NETWORKS: &str = "NETWORKS";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const PUBLISHED_PORTS: &str = "PUBLISHED_PORTS";
    pub const PUBLISHED_SCOPES: &str = "PUBLISHED_SCOPES";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
    pub const NETNS_PROBE: &str = "NETNS_PROBE";
    pub const UPLINKS: &str = "UPLINKS";
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const DROPS_BY_INTERFACE: &str = "DROPS_BY_INTERFACE";
    pub const UPLINK_DROPS: &str = "UPLINK_DROPS";
    pub const ROUTED_CIDRS: &str = "ROUTED_CIDRS";
    pub const USER_RULES: &str = "USER_RULES";
}

/// Map sizes (entries). Kernel memory is charged per entry; see docs/datapath.md.
pub mod sizes {
    /// Networks (bridges) per host: Docker's default pools give ~31 + 256.
    pub const NETWORKS: u32 = 1024;
    /// Container interfaces (one per container per network).
    pub const ENDPOINTS: u32 = 16384;
    /// Host addresses (uplink addresses, bridge gateways, 127.0.0.1).
    pub const LOCAL_ADDRS: u32 = 4096;
    /// Published (host IP, port, protocol) triples; a range counts one per port.
    pub const PUBLISHED_PORTS: u32 = 65536;
    /// Conntrack entries: two per connection (original and reply direction).
    pub const CONNTRACK: u32 = 262144;
    /// Interfaces to the outside (every non-bridge interface by default).
    pub const UPLINKS: u32 = 256;
    /// Host sockets redirected to a published port's backend (LRU).
    pub const SOCK_REVNAT: u32 = 65536;
    /// Bytes of the drop-event ring buffer (`netd monitor`); when it is full,
    /// events are lost, the drop counters still count.
    pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
    /// Drop events each CPU may send per window (10 ms): 10,000 a second.
    pub const DROP_EVENTS_PER_WINDOW: u32 = 100;
    pub const DROP_EVENTS_WINDOW_NS: u64 = 10_000_000;
    /// (interface, drop reason) pairs counted (LRU: interfaces that are
    /// gone make room for new ones).
    pub const DROPS_BY_INTERFACE: u32 = 8192;
    /// Per-CPU slots of `UPLINK_DROPS` (slot = ifindex % this).
    pub const UPLINK_DROP_SLOTS: u32 = 64;
    /// (network, CIDR) pairs routed without NAT (a cluster's pod range).
    pub const ROUTED_CIDRS: u32 = 4096;
    /// Entries of the user rules' trie: one per (rule, port) of a rule
    /// naming ports (a range counts one per port), one for the others.
    pub const USER_RULES: u32 = 65536;
}

/// Names of the BPF programs in the object file.
pub mod programs {
    /// TC program on the host side of a container's veth, ingress direction
    /// (packets the container sends).
    pub const FROM_CONTAINER: &str = "from_container";
    /// TC program on the uplink, ingress: packets from outside the host.
    pub const FROM_UPLINK: &str = "from_uplink";
    /// TC program on the uplink, egress: packets leaving the host.
    pub const TO_UPLINK: &str = "to_uplink";

    /// XDP program on the uplinks: early drops, before an skb exists.
    pub const UPLINK_XDP: &str = "uplink_xdp";

    /// Every TC program in the object (user space loads them all).
    pub const CLASSIFIERS: &[&str] = &[FROM_CONTAINER, FROM_UPLINK, TO_UPLINK];

    /// cgroup socket hooks for connections the host itself makes to
    /// published ports (incl. 127.0.0.1): translated at connect()/sendmsg()
    /// time, no per-packet NAT.
    pub const HOST_CONNECT4: &str = "host_connect4";
    pub const HOST_SENDMSG4: &str = "host_sendmsg4";
    pub const HOST_RECVMSG4: &str = "host_recvmsg4";
    pub const HOST_GETPEERNAME4: &str = "host_getpeername4";
    pub const SOCK_HOOKS: &[&str] = &[
        HOST_CONNECT4,
        HOST_SENDMSG4,
        HOST_RECVMSG4,
        HOST_GETPEERNAME4,
    ];
}

macro_rules! counted_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal,)+ }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in map-index order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Number of slots a map indexed by this enum needs.
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// Stable, human-readable name (used by the CLI and in docs).
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            pub const fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

counted_enum! {
    /// Why a BPF program dropped a packet. The value is the index into
    /// `DROP_COUNTERS`; values are stable, new reasons are appended.
    DropReason {
        /// Shorter than an Ethernet header.
        TruncatedEthernet = 0 => "truncated-ethernet",
        /// EtherType is neither IPv4 nor ARP (netd networks are IPv4-only).
        UnsupportedEthertype = 1 => "unsupported-ethertype",
        /// Shorter than the minimal IPv4 header.
        TruncatedIpv4 = 2 => "truncated-ipv4",
        /// IPv4 header fields that cannot be right: version, IHL < 5,
        /// total length smaller than the header or larger than the frame.
        BadIpv4Header = 3 => "bad-ipv4-header",
        /// TCP, UDP, ICMP header or ARP body cut short (or a TCP data offset below 5).
        TruncatedL4 = 4 => "truncated-l4",
        /// A container sent with an IP or MAC that is not its own, or a
        /// packet from outside claims a container's or a loopback source.
        SpoofedSource = 5 => "spoofed-source",
        /// Between two different netd networks (Docker's isolation stages).
        NetworkIsolation = 6 => "network-isolation",
        /// Between two containers of a network created with icc=false.
        IccDisabled = 7 => "icc-disabled",
        /// Leaving or entering an internal network.
        InternalNetwork = 8 => "internal-network",
        /// From outside to a container address or unpublished port, not part
        /// of a connection the container opened.
        UnsolicitedInbound = 9 => "unsolicited-inbound",
        /// No free source port for masquerade after the bounded retries.
        NatPortsExhausted = 10 => "nat-ports-exhausted",
        /// The conntrack table refused an entry (full and nothing evictable).
        ConntrackFull = 11 => "conntrack-full",
        /// A fragment of a flow that needs NAT: netd does not reassemble.
        FragmentNeedsNat = 12 => "fragment-needs-nat",
        /// A rewrite helper failed; the packet is dropped rather than sent
        /// half-rewritten.
        RewriteFailed = 13 => "rewrite-failed",
        /// A loopback destination arriving from outside (e.g. a port
        /// published on 127.0.0.1 probed from an L2 neighbour).
        LoopbackFromOutside = 14 => "loopback-from-outside",
        /// A user rule (`netd rule add deny …`) refused the connection.
        UserRule = 15 => "user-rule",
    }
}

counted_enum! {
    /// What kind of packet a traffic counter slot counts. Index into `TRAFFIC_COUNTERS`.
    TrafficClass {
        Tcp = 0 => "tcp",
        Udp = 1 => "udp",
        Icmp = 2 => "icmp",
        /// IPv4 with another protocol, or a non-first fragment.
        OtherIpv4 = 3 => "other-ipv4",
        Arp = 4 => "arp",
    }
}

/// Packets and bytes seen (one slot per CPU in a per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketCounter {
    pub fn add(&mut self, other: &PacketCounter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// One dropped packet, for `netd monitor`. The tuple is read best-effort
/// (zero where the packet had no such header).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DropEvent {
    pub reason: u32,
    pub ifindex: u32,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    /// Which hook dropped it: [`HOOK_TC`] or [`HOOK_XDP`].
    pub hook: u8,
    pub _pad: [u8; 2],
    /// Drops on this CPU whose events were left out (over the budget,
    /// see `sizes::DROP_EVENTS_PER_WINDOW`) since the event before.
    pub suppressed: u32,
}

/// Per-CPU budget of drop events: a flood is counted in full, but its
/// events are sampled so the ring and its reader do not cost more than the
/// drops themselves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub sent: u32,
    pub suppressed: u32,
}

pub const HOOK_TC: u8 = 0;
pub const HOOK_XDP: u8 = 1;

/// Key of `DROPS_BY_INTERFACE`: drops of one reason on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct DropKey {
    pub ifindex: u32,
    pub reason: u32,
}

/// Value of `UPLINK_DROPS`: one uplink's drops by reason on one CPU. A
/// direct-mapped array in front of `DROPS_BY_INTERFACE` for the uplinks,
/// where floods land: an array slot costs a flood's every drop a few ns
/// where the hash costs ~40. The slot is `ifindex % UPLINK_DROP_SLOTS`,
/// owned by the first uplink that drops there (`ifindex`, 0 = free); an
/// uplink whose slot another owns counts in the hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct InterfaceDrops {
    pub ifindex: u32,
    pub _pad: u32,
    /// Indexed by `DropReason`.
    pub by_reason: [u64; DropReason::COUNT as usize],
}

/// Addresses and ports are kept in network byte order, as in the packet.
pub type Ipv4 = [u8; 4];
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

/// Network flags.
pub const NET_ICC: u32 = 1 << 0;
pub const NET_INTERNAL: u32 = 1 << 1;
pub const NET_MASQUERADE: u32 = 1 << 2;
/// The network has routed CIDRs (`ROUTED_CIDRS`): only then is that map read.
pub const NET_ROUTED: u32 = 1 << 3;

/// Data of a `ROUTED_CIDRS` key: the network's ID (big-endian, always
/// matched whole) then the address, so one trie serves every network. The
/// key's prefix length is 32 + the CIDR's.
pub type RoutedKey = [u8; 8];

pub const fn routed_key(network_id: u32, addr: Ipv4) -> RoutedKey {
    let id = network_id.to_be_bytes();
    [
        id[0], id[1], id[2], id[3], addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Data of a `USER_RULES` key: network ID, input interface, protocol and
/// destination port (each zero where the rule names none; all matched
/// whole), then the source address; the key's prefix length is
/// [`RULE_KEY_FIXED_BITS`] + the rule's source prefix length.
pub type RuleKey = [u8; 16];
pub const RULE_KEY_FIXED_BITS: u32 = 96;

pub const fn rule_key(network_id: u32, ifindex: u32, proto: u8, port: Port, src: Ipv4) -> RuleKey {
    let n = network_id.to_be_bytes();
    let i = ifindex.to_be_bytes();
    [
        n[0], n[1], n[2], n[3], i[0], i[1], i[2], i[3], proto, 0, port[0], port[1], src[0], src[1],
        src[2], src[3],
    ]
}

/// Which of (network, input interface, protocol, port) a rule names: a
/// packet is looked up once per class that has rules, with the fields the
/// class does not name zeroed, and the lowest `order` found wins.
pub const RULE_CLASSES: u32 = 12;

pub const fn rule_class(network: bool, interface: bool, proto: bool, port: bool) -> u32 {
    let fields = if port {
        2
    } else if proto {
        1
    } else {
        0
    };
    (network as u32) * 6 + (interface as u32) * 3 + fields
}

/// Actions of a user rule.
pub const RULE_ALLOW: u32 = 0;
pub const RULE_DENY: u32 = 1;

/// Value of `USER_RULES`: the first rule (lowest `order`) matching every
/// address under the key's prefix, among the rules of its class and fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RuleVerdict {
    pub order: u32,
    pub action: u32,
}

/// Key of the `NETWORKS` LPM trie: the network's subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NetworkInfo {
    pub id: u32,
    pub flags: u32,
    pub gateway: Ipv4,
    /// Source address for masquerade; all zero = `Config::masquerade_ip`.
    pub host_ip: Ipv4,
    /// The bridge's MAC: source of frames netd delivers straight to a
    /// container, as if the gateway had routed them.
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// A container's interface on one network, keyed by its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Endpoint {
    /// Host side of the container's veth.
    pub ifindex: u32,
    pub network_id: u32,
    /// Copy of the network's flags (fixed for a network's lifetime), so the
    /// hot path needs one lookup for the sender.
    pub network_flags: u32,
    pub mac: [u8; 6],
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

/// Every map type's exact size: the BPF programs and user space must agree
/// byte for byte (bytemuck's derive above has already refused padding).
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<PacketCounter>() == 16);
    assert!(size_of::<DropEvent>() == 28);
    assert!(size_of::<EventBudget>() == 16);
    assert!(size_of::<DropKey>() == 8);
    assert!(size_of::<InterfaceDrops>() == 8 + 8 * DropReason::COUNT as usize);
    assert!(size_of::<Config>() == 24);
    assert!(size_of::<UplinkInfo>() == 8);
    assert!(size_of::<SockRevKey>() == 16);
    assert!(size_of::<SockRevValue>() == 8);
    assert!(size_of::<NetworkInfo>() == 24);
    assert!(size_of::<Endpoint>() == 20);
    assert!(size_of::<PortKey>() == 8);
    assert!(size_of::<Backend>() == 8);
    assert!(size_of::<CtKey>() == 16);
    assert!(size_of::<CtEntry>() == 32);
    assert!(size_of::<RuleVerdict>() == 8);
};

/// aya's own `Pod` marker for the map types, granted only to types that
/// are `bytemuck::Pod` (no padding, any bit pattern valid).
#[cfg(feature = "user")]
mod pod {
    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => {$(
            const _: () = {
                const fn is_bytemuck_pod<T: bytemuck::Pod>() {}
                is_bytemuck_pod::<$t>()
            };
            // SAFETY: bytemuck::Pod (checked just above) is a stronger
            // promise than aya::Pod asks for.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    use super::*;
    aya_pod!(
        PacketCounter,
        Config,
        NetworkInfo,
        Endpoint,
        PortKey,
        Backend,
        CtKey,
        CtEntry,
        SockRevKey,
        DropEvent,
        DropKey,
        InterfaceDrops,
        SockRevValue,
        UplinkInfo,
        RuleVerdict,
    );
}
