//! Published ports for the host's own sockets: a cgroup sock_addr hook
//! rewrites the destination at connect()/sendmsg() time (Cilium's
//! socket-level load balancing), so host-originated traffic, 127.0.0.1
//! included, needs no per-packet NAT. recvmsg()/getpeername() show the
//! address the program asked for.

use crate::maps::bpf_map;
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    maps::Array,
    programs::SockAddrContext,
};
use netd_common::{
    Config, NETNS_PROBE_IP, NETNS_PROBE_PORT, RESOLVER_IP, RESOLVER_PORT, SockRevKey, SockRevValue,
};

use crate::{nat, policy};

bpf_map!(SOCK_REVNAT: LruHashMap);

// Network namespace cookies by socket cookie, for user space on kernels
// without SO_NETNS_COOKIE (see `NETNS_PROBE_IP`).
bpf_map!(NETNS_PROBE: LruHashMap);

// Container namespaces whose 127.0.0.11:53 is the daemon's resolver on their
// gateway (`--dns-via cgroup-hooks`).
bpf_map!(RESOLVER_STEERING: HashMap);

/// connect4 to the probe address: records the caller's namespace cookie.
#[inline(always)]
pub fn record_netns_probe(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.user_ip4 != u32::from_ne_bytes(NETNS_PROBE_IP)
        || sa.user_port != u32::from(NETNS_PROBE_PORT.to_be())
    {
        return;
    }
    // SAFETY: helpers on the program's own context.
    let (socket, netns) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_get_netns_cookie(ctx.sock_addr.cast()),
        )
    };
    let _ = NETNS_PROBE.insert(&socket, &netns, 0);
}

/// The hooks are attached to a cgroup, which spans namespaces: act only on
/// sockets of the namespace this datapath manages.
#[inline(always)]
pub fn in_our_netns(ctx: &SockAddrContext, config: &Array<Config>) -> bool {
    // SAFETY: helper on the program's own context.
    is_our_netns(
        unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) },
        config,
    )
}

#[inline(always)]
fn is_our_netns(netns: u64, config: &Array<Config>) -> bool {
    config
        .get(0)
        .is_some_and(|config| config.netns_cookie != 0 && netns == config.netns_cookie)
}

/// connect4 / sendmsg4 in a container namespace the daemon serves through
/// these hooks: 127.0.0.11:53 becomes the resolver's socket on the
/// container's gateway (the packet leaves by the container's interface, so
/// the daemon knows the asker by its source address). Returns whether it
/// rewrote the address.
#[inline(always)]
pub fn steer_to_resolver(ctx: &SockAddrContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 != u32::from_ne_bytes(RESOLVER_IP)
        || sa.user_port != u32::from(RESOLVER_PORT.to_be())
    {
        return false;
    }
    // SAFETY: helper on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: read-only copy of a map value.
    let Some(gateway) = (unsafe { RESOLVER_STEERING.get(&netns) }).copied() else {
        return false;
    };
    sa.user_ip4 = u32::from_ne_bytes(gateway);
    true
}

/// recvmsg4 / getpeername4 in a steered namespace: its gateway's port 53
/// is the resolver, shown as 127.0.0.11:53 (no per-socket state: a lookup
/// never waits on an LRU entry that a burst of other lookups evicted).
#[inline(always)]
fn restore_resolver(ctx: &SockAddrContext, netns: u64) {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    // Every other socket of every namespace pays a compare, not a lookup.
    if sa.user_port != u32::from(RESOLVER_PORT.to_be()) {
        return;
    }
    // SAFETY: read-only copy of a map value.
    if let Some(gateway) = unsafe { RESOLVER_STEERING.get(&netns) }
        && sa.user_ip4 == u32::from_ne_bytes(*gateway)
    {
        sa.user_ip4 = u32::from_ne_bytes(RESOLVER_IP);
    }
}

/// connect4 / sendmsg4: a published host address and port becomes its backend.
#[inline(always)]
pub fn redirect_to_backend(ctx: &SockAddrContext) {
    if !in_our_netns(ctx, nat::config_map()) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = sa.user_ip4.to_ne_bytes();
    let port = (sa.user_port as u16).to_ne_bytes();
    if !policy::is_local(dst) {
        return;
    }
    let Some(backend) = nat::published_backend(dst, port, sa.protocol as u8) else {
        return;
    };
    sa.user_ip4 = u32::from_ne_bytes(backend.ip);
    sa.user_port = u32::from(u16::from_ne_bytes(backend.port));
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey {
        cookie,
        ip: backend.ip,
        port: backend.port,
        _pad: [0; 2],
    };
    let _ = SOCK_REVNAT.insert(
        &key,
        &SockRevValue {
            ip: dst,
            port,
            _pad: [0; 2],
        },
        0,
    );
}

/// recvmsg4 / getpeername4: show the published address, not the backend
/// (or 127.0.0.11, not the resolver's socket on the gateway).
#[inline(always)]
pub fn restore_published(ctx: &SockAddrContext) {
    // SAFETY: helper on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if !is_our_netns(netns, nat::config_map()) {
        restore_resolver(ctx, netns);
        return;
    }
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey {
        cookie,
        ip: sa.user_ip4.to_ne_bytes(),
        port: (sa.user_port as u16).to_ne_bytes(),
        _pad: [0; 2],
    };
    // SAFETY: read-only copy of a map value.
    if let Some(orig) = unsafe { SOCK_REVNAT.get(&key) } {
        sa.user_ip4 = u32::from_ne_bytes(orig.ip);
        sa.user_port = u32::from(u16::from_ne_bytes(orig.port));
    }
}
