//! The user's rules (`netd rule add`), evaluated for connections opened from
//! outside before netd's own accept decisions: first match wins, no match
//! leaves netd's normal behaviour.
//!
//! User space compiles the ordered list into one LPM trie: per class of rule
//! (which of network, interface, protocol and port it names) and per value
//! of those fields, every source prefix holds the first rule matching all of
//! it. A packet costs one lookup per class in use, however many rules there
//! are that cannot match.

use crate::maps::bpf_map;
use aya_ebpf::maps::lpm_trie::Key;
use netd_common::{DropReason, Ipv4, Port, RULE_DENY, RULE_KEY_FIXED_BITS, rule_key};

use crate::nat;

bpf_map!(USER_RULES: LpmTrie);

/// Classes 6..12 name a network: only they need the destination's network.
const NETWORK_CLASSES: u32 = 0xfc0;

/// A connection from outside, as the rules see it: `port` is the original
/// destination port (the published host port, before DNAT).
pub struct Inbound {
    /// None: an IPv6 source, which only rules naming no source match.
    pub src: Option<Ipv4>,
    pub proto: u8,
    pub port: Port,
    pub ifindex: u32,
}

/// Refuses the connection when the first rule matching it denies it.
/// `network` gives the destination network's ID, asked only when a rule
/// names a network.
#[inline(always)]
pub fn check(conn: &Inbound, network: impl FnOnce() -> u32) -> Result<(), DropReason> {
    let classes = nat::config_map().get(0).map_or(0, |c| c.rule_classes);
    if classes == 0 {
        return Ok(());
    }
    let network_id = if classes & NETWORK_CLASSES != 0 {
        network()
    } else {
        0
    };
    // Unrolled, not a loop: kernels before 6.4 refuse a loop whose back
    // edge follows a helper call (the map lookup).
    let mut first = NO_RULE;
    macro_rules! each_class {
        ($($class:literal)*) => {$(
            first = first.min(first_in_class($class, classes, conn, network_id));
        )*};
    }
    each_class!(0 1 2 3 4 5 6 7 8 9 10 11);
    if first != NO_RULE && first & 1 == u64::from(RULE_DENY) {
        return Err(DropReason::UserRule);
    }
    Ok(())
}

const _: () = assert!(
    netd_common::RULE_CLASSES == 12,
    "each_class! lists every class"
);

/// What `first_in_class` returns when the class has no matching rule.
const NO_RULE: u64 = u64::MAX;

/// The first rule of `class` matching `conn`, as `order << 1 | action` (so
/// the lowest value is the first rule), or [`NO_RULE`].
#[inline(always)]
fn first_in_class(class: u32, classes: u32, conn: &Inbound, network_id: u32) -> u64 {
    if classes & (1 << class) == 0 {
        return NO_RULE;
    }
    let net = if class >= 6 { network_id } else { 0 };
    let ifindex = if class % 6 >= 3 { conn.ifindex } else { 0 };
    let (proto, port) = match class % 3 {
        0 => (0, [0; 2]),
        1 => (conn.proto, [0; 2]),
        _ => (conn.proto, conn.port),
    };
    let (src_bits, src) = match conn.src {
        Some(src) => (32, src),
        None => (0, [0; 4]),
    };
    let key = Key::new(
        RULE_KEY_FIXED_BITS + src_bits,
        rule_key(net, ifindex, proto, port, src),
    );
    match USER_RULES.get(&key) {
        Some(found) => (u64::from(found.order) << 1) | u64::from(found.action & 1),
        None => NO_RULE,
    }
}
