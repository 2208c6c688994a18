//! Types shared by the BPF programs (`netd-ebpf`) and user space (`netd`).
//!
//! Everything here is `#[repr(C)]` or `#[repr(u32)]` with explicit padding,
//! because the same bytes are read on both sides of a BPF map.
#![no_std]

/// Names of the maps, as declared in `netd-ebpf` and looked up by user space.
pub mod maps {
    pub const TRAFFIC_COUNTERS: &str = "TRAFFIC_COUNTERS";
    pub const DROP_COUNTERS: &str = "DROP_COUNTERS";
}

/// Names of the BPF programs in the object file.
pub mod programs {
    /// TC program on the host side of a container's veth, ingress direction
    /// (packets the container sends).
    pub const FROM_CONTAINER: &str = "from_container";

    /// Every TC program in the object (user space loads them all).
    pub const CLASSIFIERS: &[&str] = &[FROM_CONTAINER];
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
        /// TCP, UDP or ICMP header cut short (or a TCP data offset below 5).
        TruncatedL4 = 4 => "truncated-l4",
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers without padding.
    unsafe impl aya::Pod for super::PacketCounter {}
}
