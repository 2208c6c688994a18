//! Every map the BPF programs and user space share, declared once: its
//! name, kind, key, value, default size and whether it is pinned. The BPF
//! side declares its statics from these (`netd-ebpf/src/maps.rs`), user
//! space opens typed handles from them (`netd/src/datapath/maps/`).
//!
//! Each map is a unit type named as the map is in the object file, so the
//! name is written once, as an identifier.

use crate::{
    Backend, Backend6, Config, CtEntry, CtEntry6, CtKey, CtKey6, DropEvent, DropKey, DropReason,
    Endpoint, EventBudget, Flow6, InterfaceDrops, Ipv4, Ipv6, Network6Info, NetworkInfo,
    PacketCounter, PortKey, PortKey6, RoutedKey, RuleKey, RuleVerdict, SockRevKey, SockRevKey6,
    SockRevValue, SockRevValue6, TrafficClass, TrustKey, UplinkInfo, UplinkInfo6, sizes,
};

/// The BPF map types netd uses, named as aya's map types are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Array,
    PerCpuArray,
    HashMap,
    LruHashMap,
    LruPerCpuHashMap,
    LpmTrie,
    RingBuf,
    Queue,
}

impl MapKind {
    /// Const equality, for the BPF side's compile-time check that a static
    /// is of the kind declared here.
    pub const fn is(self, other: MapKind) -> bool {
        self as u8 == other as u8
    }
}

/// One map's declaration.
pub trait MapDef {
    /// Its name in the object file (and its pin's file name).
    const NAME: &'static str;
    const KIND: MapKind;
    /// The key (`u32` index for arrays; the data of an LPM trie's key; `()`
    /// for the ring buffer).
    type Key: Copy + 'static;
    /// The value (a ring buffer's record type).
    type Value: Copy + 'static;
    /// Entries (a ring buffer's bytes) compiled into the object: the
    /// default, which the loader may change.
    const MAX_ENTRIES: u32;
    /// Pinned under bpffs: its contents survive a daemon restart.
    const PINNED: bool;
}

/// A map's name and whether it is pinned, for code that walks every map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub name: &'static str,
    pub kind: MapKind,
    pub max_entries: u32,
    /// Bytes of one value (one CPU's, in a per-CPU map).
    pub value_size: u32,
    pub pinned: bool,
}

macro_rules! declare_maps {
    ($(
        $(#[$doc:meta])*
        $name:ident: $kind:ident<$key:ty, $value:ty>, $max:expr, $pinned:ident;
    )+) => {
        $(
            $(#[$doc])*
            #[allow(non_camel_case_types)]
            pub struct $name;

            impl MapDef for $name {
                const NAME: &'static str = stringify!($name);
                const KIND: MapKind = MapKind::$kind;
                type Key = $key;
                type Value = $value;
                const MAX_ENTRIES: u32 = $max;
                const PINNED: bool = declare_maps!(@pinned $pinned);
            }
        )+

        /// Every map, in declaration order.
        pub const ALL: &[MapInfo] = &[$(
            MapInfo {
                name: stringify!($name),
                kind: MapKind::$kind,
                max_entries: $max,
                value_size: core::mem::size_of::<$value>() as u32,
                pinned: declare_maps!(@pinned $pinned),
            },
        )+];
    };
    (@pinned pinned) => { true };
    (@pinned unpinned) => { false };
}

declare_maps! {
    /// Process-wide settings (one slot).
    CONFIG: Array<u32, Config>, 1, pinned;
    /// Subnet -> network. Subnets never overlap (user space refuses that).
    NETWORKS: LpmTrie<Ipv4, NetworkInfo>, sizes::NETWORKS, pinned;
    /// Container address -> its interface.
    ENDPOINTS: HashMap<Ipv4, Endpoint>, sizes::ENDPOINTS, pinned;
    /// IPv6 subnet -> network (networks with IPv6 only).
    NETWORKS6: LpmTrie<Ipv6, Network6Info>, sizes::NETWORKS, pinned;
    /// Container IPv6 address -> its interface.
    ENDPOINTS6: HashMap<Ipv6, Endpoint>, sizes::ENDPOINTS, pinned;
    /// Host-side veth (ifindex) of an interface whose network has IPv6 ->
    /// the network's flags: IPv6 from any other container is dropped.
    IPV6_PORTS: HashMap<u32, u32>, sizes::ENDPOINTS, pinned;
    /// The host's own global IPv6 addresses -> 1.
    LOCAL_ADDRS6: HashMap<Ipv6, u32>, sizes::LOCAL_ADDRS, pinned;
    /// The host's own addresses (Docker's `addrtype LOCAL`) -> 1.
    LOCAL_ADDRS: HashMap<Ipv4, u32>, sizes::LOCAL_ADDRS, pinned;
    /// (host address or any, port, protocol) -> the container behind it.
    PUBLISHED_PORTS: HashMap<PortKey, Backend>, sizes::PUBLISHED_PORTS, pinned;
    /// (host IPv6 address or any, port, protocol) -> the container's IPv6
    /// address and port: the same ports published on IPv6.
    PUBLISHED_PORTS6: HashMap<PortKey6, Backend6>, sizes::PUBLISHED_PORTS, pinned;
    /// Which kinds of `PUBLISHED_PORTS` keys exist (`PUBLISHED_ON_*` bits, one slot).
    PUBLISHED_SCOPES: Array<u32, u32>, 1, pinned;
    /// Both directions of every tracked connection. A plain hash, not an
    /// LRU: when it is full, the programs choose what goes (unreplied or
    /// closing connections, as the kernel's early_drop), never an
    /// established connection.
    CONNTRACK: HashMap<CtKey, CtEntry>, sizes::CONNTRACK, pinned;
    /// Original tuples of connections that may be evicted when `CONNTRACK`
    /// is full, oldest first: pushed when a connection opens and when it
    /// starts closing (a full queue forgets its oldest). Each is checked
    /// again when popped.
    CONNTRACK_CANDIDATES: Queue<(), CtKey>, sizes::CONNTRACK / 2, unpinned;
    /// IPv6's `CONNTRACK` (NAT66 and the connections of IPv6 containers).
    /// Not preallocated: kernel memory is charged only for the entries in
    /// use, so a host without IPv6 traffic pays nothing for it.
    CONNTRACK6: HashMap<CtKey6, CtEntry6>, sizes::CONNTRACK, pinned;
    /// IPv6's `CONNTRACK_CANDIDATES`.
    CONNTRACK6_CANDIDATES: Queue<(), CtKey6>, sizes::CONNTRACK / 2, unpinned;
    /// The IPv6 packet each hook works on (slot 0: `to_uplink`, 1:
    /// `from_uplink`, 2: `from_container`; per CPU).
    FLOW6_SCRATCH: PerCpuArray<u32, Flow6>, 3, unpinned;
    /// Connections evicted to make room (one slot per CPU).
    CONNTRACK_EVICTIONS: PerCpuArray<u32, u64>, 1, pinned;
    /// Host sockets redirected to a published port's backend -> the address
    /// they asked for.
    SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue>, sizes::SOCK_REVNAT, pinned;
    /// IPv6's `SOCK_REVNAT`.
    SOCK_REVNAT6: LruHashMap<SockRevKey6, SockRevValue6>, sizes::SOCK_REVNAT, pinned;
    /// Socket cookie -> its namespace's cookie, for the netns probe on
    /// kernels without SO_NETNS_COOKIE.
    NETNS_PROBE: LruHashMap<u64, u64>, 64, unpinned;
    /// A container's namespace cookie -> the gateway where the daemon's
    /// resolver listens for it (`--dns-via cgroup-hooks`); the daemon fills
    /// it again at every start.
    RESOLVER_STEERING: HashMap<u64, Ipv4>, sizes::RESOLVER_STEERING, unpinned;
    /// Interfaces to the outside (ifindex) -> masquerade address and MTU.
    UPLINKS: HashMap<u32, UplinkInfo>, sizes::UPLINKS, pinned;
    /// Interfaces to the outside that have a global IPv6 address (ifindex)
    /// -> the address NAT66 gives container packets leaving by them.
    UPLINKS6: HashMap<u32, UplinkInfo6>, sizes::UPLINKS, pinned;
    /// Drop events for `netd monitor` (bytes of ring).
    DROP_EVENTS: RingBuf<(), DropEvent>, sizes::DROP_EVENTS_BYTES, pinned;
    /// Each CPU's drop-event budget (one slot).
    EVENT_BUDGET: PerCpuArray<u32, EventBudget>, 1, unpinned;
    /// Packets and bytes per `TrafficClass`.
    TRAFFIC_COUNTERS: PerCpuArray<u32, PacketCounter>, TrafficClass::COUNT, pinned;
    /// Drops per `DropReason`.
    DROP_COUNTERS: PerCpuArray<u32, u64>, DropReason::COUNT, pinned;
    /// Drops per (interface, reason), for the interfaces without a slot in
    /// `UPLINK_DROPS`.
    DROPS_BY_INTERFACE: LruPerCpuHashMap<DropKey, u64>, sizes::DROPS_BY_INTERFACE, pinned;
    /// One slot per uplink (ifindex % slots): its drops by reason.
    UPLINK_DROPS: PerCpuArray<u32, InterfaceDrops>, sizes::UPLINK_DROP_SLOTS, pinned;
    /// (network, CIDR) -> 1: routed without NAT.
    ROUTED_CIDRS: LpmTrie<RoutedKey, u8>, sizes::ROUTED_CIDRS, pinned;
    /// The user's rules, compiled (see `RuleKey`).
    USER_RULES: LpmTrie<RuleKey, RuleVerdict>, sizes::USER_RULES, pinned;
    /// (network, ifindex) -> 1: the network's trusted host interfaces.
    TRUSTED_INTERFACES: HashMap<TrustKey, u8>, sizes::TRUSTED_INTERFACES, pinned;
}

/// The maps pinned under `<bpffs dir>/maps/`.
pub fn pinned() -> impl Iterator<Item = &'static MapInfo> {
    ALL.iter().filter(|m| m.pinned)
}
