//! Counters and drop reporting: traffic classes, drop reasons, events.

use bytemuck::{Pod, Zeroable};

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
        /// EtherType is neither IPv4, IPv6 nor ARP.
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
        /// IPv6 header cut short, or its version or payload length wrong.
        BadIpv6Header = 16 => "bad-ipv6-header",
        /// IPv6 from a container of a routed network (gateway mode
        /// `routed`) to an address beyond the host: netd does not route
        /// IPv6 without NAT66 yet.
        Ipv6OutboundUnsupported = 17 => "ipv6-outbound-unsupported",
        /// IPv6 from a container whose network has no IPv6.
        Ipv6Off = 18 => "ipv6-off",
        /// IPv6 from a container with more extension headers before its
        /// upper layer than netd walks (its message cannot be judged).
        Ipv6HeaderChain = 19 => "ipv6-header-chain",
        /// IPv6 to be masqueraded (NAT66) out of an uplink that has no
        /// global IPv6 address to give it.
        NoIpv6Address = 20 => "no-ipv6-address",
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
        /// IPv6 with a protocol other than TCP, UDP and ICMPv6 right after
        /// its header (extension headers included).
        OtherIpv6 = 5 => "other-ipv6",
        Tcp6 = 6 => "tcp6",
        Udp6 = 7 => "udp6",
        Icmp6 = 8 => "icmp6",
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
