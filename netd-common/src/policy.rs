//! Networks, endpoints, routed CIDRs and user rules.

use bytemuck::{Pod, Zeroable};

use crate::{Ipv4, Port};

/// Network flags.
pub const NET_ICC: u32 = 1 << 0;
pub const NET_INTERNAL: u32 = 1 << 1;
pub const NET_MASQUERADE: u32 = 1 << 2;
/// The network has routed CIDRs (`ROUTED_CIDRS`): only then is that map read.
pub const NET_ROUTED: u32 = 1 << 3;
/// Gateway mode `nat-unprotected`: every container address and port open to
/// direct access from outside.
pub const NET_UNPROTECTED: u32 = 1 << 4;
/// Gateway mode `routed`: published container ports (keyed in
/// `PUBLISHED_PORTS` by the container's own address and port) and ICMP
/// open to direct access from outside.
pub const NET_GATEWAY_ROUTED: u32 = 1 << 5;
/// Docker 28.2's trusted host interfaces (gateway mode `nat` only): what
/// arrives on one of them (`TRUSTED_INTERFACES`) may reach the network's
/// published container ports at the container's address.
pub const NET_TRUSTS_INTERFACES: u32 = 1 << 6;
/// `--dns-via cgroup-hooks`: the network's gateway port 53 is netd's
/// resolver, which the socket hooks steer its containers' 127.0.0.11:53 to
/// (a port published on every host address does not take it, as with
/// aardvark-dns on the gateway).
pub const NET_RESOLVER_ON_GATEWAY: u32 = 1 << 7;

/// Key of `TRUSTED_INTERFACES`: a network and an interface it trusts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TrustKey {
    pub network_id: u32,
    pub ifindex: u32,
}

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

/// Value of the `NETWORKS6` LPM trie (keyed by a network's IPv6 subnet):
/// what the IPv6 path decides on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Network6Info {
    pub id: u32,
    pub flags: u32,
    /// The IPv6 gateway on the bridge (a host address).
    pub gateway: crate::Ipv6,
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
