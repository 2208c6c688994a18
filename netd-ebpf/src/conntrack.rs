//! Connection tracking in an LRU hash: two entries per connection (original
//! and reply direction), each holding the tuple its packets are rewritten to.
//!
//! Entries carry an absolute expiry refreshed by traffic. The datapath never
//! deletes on expiry by itself; user space's garbage collector removes a
//! connection when both entries have expired. When the table is full, a new
//! connection evicts an old one that is unreplied, closing or expired (the
//! kernel's early_drop), or is refused: an established connection is never
//! evicted.

use crate::maps::bpf_map;
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    maps::{HashMap, Queue},
};
use netd_common::{
    CT_CLOSING, CT_REPLY, CT_SEEN_REPLY, CtEntry, CtKey, CtKey6, DropReason, Ipv4, Ipv6, timeouts,
};

use crate::parse::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

bpf_map!(CONNTRACK: HashMap);
bpf_map!(CONNTRACK_CANDIDATES: Queue);
bpf_map!(CONNTRACK6: HashMap, flags BPF_F_NO_PREALLOC);
bpf_map!(CONNTRACK6_CANDIDATES: Queue);
bpf_map!(CONNTRACK_EVICTIONS: PerCpuArray);

/// An address family's conntrack: its tuple type and its two maps. Every
/// function here works on either (`CtKey` for IPv4, `CtKey6` for IPv6).
pub trait Family: Copy + PartialEq + 'static {
    fn table() -> &'static HashMap<CtKey<Self>, CtEntry<CtKey<Self>>>;
    fn candidates() -> &'static Queue<CtKey<Self>>;
}

impl Family for Ipv4 {
    #[inline(always)]
    fn table() -> &'static HashMap<CtKey, CtEntry> {
        &CONNTRACK
    }
    #[inline(always)]
    fn candidates() -> &'static Queue<CtKey> {
        &CONNTRACK_CANDIDATES
    }
}

impl Family for Ipv6 {
    #[inline(always)]
    fn table() -> &'static HashMap<CtKey6, CtEntry<CtKey6>> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn candidates() -> &'static Queue<CtKey6> {
        &CONNTRACK6_CANDIDATES
    }
}

/// `-E2BIG`: the hash map has no free entry.
const MAP_FULL: i32 = -7;
/// Candidates looked at per connection that finds the table full (bounded
/// for the verifier; established connections popped are simply dropped
/// from the queue, so later searches start past them).
const EVICTION_TRIES: u32 = 8;

/// Refreshing an entry writes a shared cache line: skip it while the expiry
/// would move by less than this.
const REFRESH_GRANULARITY_NS: u64 = 1_000_000_000;

pub enum Lookup<K = CtKey> {
    /// A tracked connection: rewrite the packet to this tuple.
    Hit(K),
    Miss,
}

/// Whether `key` has an entry (read-only: the XDP program's question).
#[inline(always)]
pub fn is_tracked<A: Family>(key: &CtKey<A>) -> bool {
    // SAFETY: only the presence of the value is read.
    unsafe { A::table().get(key).is_some() }
}

/// Whether `key` is the reply direction of a tracked connection (the tuple
/// a translated connection's replies arrive on).
#[inline(always)]
pub fn is_reply_of_connection<A: Family>(key: &CtKey<A>) -> bool {
    // SAFETY: read-only copy of a map value's flags.
    unsafe { A::table().get(key) }.is_some_and(|entry| entry.flags & CT_REPLY != 0)
}

/// Finds the entry for `key` and refreshes it for a packet with `tcp_flags`.
/// A SYN on a closing connection starts it over: in place, keeping the
/// translation, when it comes from the side that opened the connection (a
/// client reusing its port from TIME_WAIT); otherwise the old connection is
/// forgotten and the packet tracked as new.
#[inline(always)]
pub fn lookup<A: Family>(key: &CtKey<A>, tcp_flags: u8) -> Lookup<CtKey<A>> {
    match lookup_in_place(key, tcp_flags) {
        // SAFETY: a map value's field, copied out.
        Some(xlat) => Lookup::Hit(unsafe { *xlat }),
        None => Lookup::Miss,
    }
}

/// As [`lookup`], copying the translation into `xlat` (map memory to map
/// memory, where the caller's is a scratch slot: no stack). False: a miss.
#[inline(always)]
pub fn lookup_into<A: Family>(key: &CtKey<A>, tcp_flags: u8, xlat: &mut CtKey<A>) -> bool {
    match lookup_in_place(key, tcp_flags) {
        Some(found) => {
            // SAFETY: as above.
            *xlat = unsafe { *found };
            true
        }
        None => false,
    }
}

/// [`lookup`]'s work; the translation where it lies in the entry.
#[inline(always)]
fn lookup_in_place<A: Family>(key: &CtKey<A>, tcp_flags: u8) -> Option<*const CtKey<A>> {
    let entry = A::table().get_ptr_mut(key)?;
    // SAFETY: map value pointer from a successful lookup; racing writers only
    // touch expiry and flags, which are advisory.
    let entry = unsafe { &mut *entry };
    let now = crate::clock::now_ns();
    let mut flags = entry.flags;
    // The other direction's key, made once: each copy costs stack (an
    // IPv6 one 40 bytes), and the compiler keeps every one apart.
    let peer_key = entry.xlat.reversed();
    let is_tcp = key.proto == IPPROTO_TCP;
    if is_tcp && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && flags & CT_CLOSING != 0 {
        if flags & CT_REPLY != 0 {
            let _ = A::table().remove(&peer_key);
            let _ = A::table().remove(key);
            return None;
        }
        // Cheaper than deleting and re-inserting both entries, and just as
        // right: any change to a port, endpoint or network that could make
        // the old translation wrong flushes the entries first.
        let expires = now + timeouts::TCP_SYN;
        restart(entry, expires);
        if let Some(peer) = A::table().get_ptr_mut(&peer_key) {
            // SAFETY: as above.
            restart(unsafe { &mut *peer }, expires);
        }
        return Some(&entry.xlat);
    }
    if flags & CT_REPLY != 0 && flags & CT_SEEN_REPLY == 0 {
        // First packet of the reply direction: the connection is established.
        flags |= CT_SEEN_REPLY;
        set_flags(&peer_key, CT_SEEN_REPLY, None);
    }
    if is_tcp && tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        if flags & CT_CLOSING == 0 {
            // Closing connections may be evicted: queue the original tuple.
            add_candidate(match flags & CT_REPLY {
                0 => key,
                _ => &peer_key,
            });
        }
        flags |= CT_CLOSING;
        let expires = now + timeouts::TCP_CLOSING;
        set_flags(&peer_key, CT_CLOSING, Some(expires));
        entry.expires_ns = expires;
        entry.flags = flags;
        return Some(&entry.xlat);
    }
    let expires = now + timeout(key.proto, flags);
    if flags != entry.flags || expires > entry.expires_ns + REFRESH_GRANULARITY_NS {
        entry.flags = flags;
        if flags & CT_CLOSING == 0 {
            entry.expires_ns = expires;
        }
    }
    Some(&entry.xlat)
}

/// Back to the state of a just-opened connection.
#[inline(always)]
fn restart<K>(entry: &mut CtEntry<K>, expires_ns: u64) {
    entry.flags &= !(CT_CLOSING | CT_SEEN_REPLY);
    entry.expires_ns = expires_ns;
}

/// The translation for `key` without refreshing anything (ICMP errors
/// refer to a connection, they do not keep it alive).
#[inline(always)]
pub fn peek<A: Family>(key: &CtKey<A>) -> Option<CtKey<A>> {
    // SAFETY: read-only copy of a map value.
    unsafe { A::table().get(key) }.map(|entry| entry.xlat)
}

#[inline(always)]
fn timeout(proto: u8, flags: u32) -> u64 {
    match proto {
        IPPROTO_TCP if flags & CT_SEEN_REPLY != 0 => timeouts::TCP_ESTABLISHED,
        IPPROTO_TCP => timeouts::TCP_SYN,
        IPPROTO_UDP => timeouts::UDP,
        _ => timeouts::ICMP,
    }
}

#[inline(always)]
fn set_flags<A: Family>(key: &CtKey<A>, add: u32, expires: Option<u64>) {
    if let Some(peer) = A::table().get_ptr_mut(key) {
        // SAFETY: as in `lookup`.
        let peer = unsafe { &mut *peer };
        peer.flags |= add;
        if let Some(expires) = expires {
            peer.expires_ns = expires;
        }
        if add == CT_SEEN_REPLY && peer.flags & CT_CLOSING == 0 {
            peer.expires_ns = crate::clock::now_ns() + timeout(key.proto, peer.flags);
        }
    }
}

/// Removes both entries of the connection whose entry for `key` holds `xlat`.
#[inline(always)]
fn forget<A: Family>(key: &CtKey<A>, xlat: &CtKey<A>) {
    let _ = A::table().remove(&xlat.reversed());
    let _ = A::table().remove(key);
}

/// Why a connection could not be tracked as asked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another connection holds the reply tuple: try another port.
    Taken,
    /// The table is full: [`make_room`], then try again.
    Full,
}

/// Tracks a new connection: `orig` is the tuple of its first packet, `xlat`
/// what that packet becomes. Inserts the reply entry first, refusing to
/// overwrite (a taken reply tuple means the NAT port is in use), then the
/// original one. Never evicts anything itself: the caller makes room once
/// (outside any port search, which keeps the verifier's work linear).
#[inline(always)]
pub fn try_create<A: Family>(
    orig: &CtKey<A>,
    xlat: &CtKey<A>,
    nat_flags: u32,
) -> Result<(), Refused> {
    // One entry on the stack, rewritten for the second insert (IPv6's
    // are 56 bytes, and the hooks' stack is short).
    let mut entry = CtEntry {
        xlat: orig.reversed(),
        expires_ns: crate::clock::now_ns() + timeout(orig.proto, 0),
        flags: nat_flags | CT_REPLY,
        _pad: 0,
    };
    let reply_key = xlat.reversed();
    match A::table().insert(&reply_key, &entry, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(MAP_FULL) => return Err(Refused::Full),
        Err(_) => return Err(Refused::Taken),
    }
    entry.xlat = *xlat;
    entry.flags = nat_flags;
    if A::table().insert(orig, &entry, BPF_ANY as u64).is_err() {
        let _ = A::table().remove(&reply_key);
        return Err(Refused::Full);
    }
    add_candidate(orig);
    Ok(())
}

/// As [`try_create`], making room once when the table is full.
/// Err(None) = reply tuple taken; Err(Some) = the packet must be dropped.
#[inline(always)]
pub fn create<A: Family>(
    orig: &CtKey<A>,
    xlat: &CtKey<A>,
    nat_flags: u32,
) -> Result<(), Option<DropReason>> {
    match try_create(orig, xlat, nat_flags) {
        Ok(()) => Ok(()),
        Err(Refused::Taken) => Err(None),
        Err(Refused::Full) => retry_after_making_room(orig, xlat, nat_flags),
    }
}

/// The kernel's early_drop, then `xlat` once more.
#[inline(always)]
pub fn retry_after_making_room<A: Family>(
    orig: &CtKey<A>,
    xlat: &CtKey<A>,
    nat_flags: u32,
) -> Result<(), Option<DropReason>> {
    if !make_room::<A>(crate::clock::now_ns()) {
        return Err(Some(DropReason::ConntrackFull));
    }
    match try_create(orig, xlat, nat_flags) {
        Ok(()) => Ok(()),
        Err(Refused::Taken) => Err(None),
        Err(Refused::Full) => Err(Some(DropReason::ConntrackFull)),
    }
}

/// Queues the original tuple of a connection that may be evicted later.
/// A full queue forgets its oldest candidate.
#[inline(always)]
fn add_candidate<A: Family>(orig: &CtKey<A>) {
    let _ = A::candidates().push(orig, BPF_EXIST as u64);
}

/// The kernel's early_drop: frees one connection that has not been
/// answered, is closing, or has expired, oldest candidate first. False when
/// none of the candidates looked at may go (the new connection is refused).
#[inline(always)]
fn make_room<A: Family>(now: u64) -> bool {
    for _ in 0..EVICTION_TRIES {
        let Ok(Some(candidate)) = A::candidates().pop() else {
            return false;
        };
        let Some(entry) = A::table().get_ptr(&candidate) else {
            continue; // gone already
        };
        // SAFETY: a map value, read in place (a copy would cost stack).
        let entry = unsafe { &*entry };
        let may_go =
            entry.flags & (CT_SEEN_REPLY | CT_CLOSING) != CT_SEEN_REPLY || entry.expires_ns < now;
        if may_go {
            forget(&candidate, &entry.xlat);
            if let Some(count) = CONNTRACK_EVICTIONS.get_ptr_mut(0) {
                // SAFETY: this CPU's slot.
                unsafe { *count += 1 };
            }
            return true;
        }
    }
    false
}
