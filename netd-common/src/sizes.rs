//! Map sizes (entries). Kernel memory is charged per entry; see docs/datapath.md.

/// Networks (bridges) per host: Docker's default pools give ~31 + 256.
pub const NETWORKS: u32 = 1024;
/// Container interfaces (one per container per network).
pub const ENDPOINTS: u32 = 16384;
/// Host addresses (uplink addresses, bridge gateways, 127.0.0.1).
pub const LOCAL_ADDRS: u32 = 4096;
/// Published (host IP, port, protocol) triples; a range counts one per port.
pub const PUBLISHED_PORTS: u32 = 65536;
/// Conntrack entries: two per connection (original and reply direction).
/// 262,144 connections: the kernel's own `nf_conntrack_max` on a host with
/// 4 GiB or more; `--conntrack-max` sets it.
pub const CONNTRACK: u32 = 2 * 262144;
/// Container namespaces whose resolver queries the socket hooks steer
/// (`--dns-via cgroup-hooks`).
pub const RESOLVER_STEERING: u32 = 16384;
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
/// (network, interface) pairs of trusted host interfaces.
pub const TRUSTED_INTERFACES: u32 = 4096;
