//! The socket hooks' IPv6 half: the host's own connections to a port
//! published on IPv6 — one of the host's addresses or `[::1]` — go to the
//! backend at connect()/sendmsg() time, as `sock.rs` does for IPv4 (what
//! Docker's userland proxy does for `[::1]`, without a proxy).

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use netd_common::{Backend6, Ipv6, SockRevKey6, SockRevValue6};

use crate::{maps::bpf_map, nat, nat6, policy, sock};

bpf_map!(SOCK_REVNAT6: LruHashMap);

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`).
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `::1`, as four words in network order.
const LOOPBACK6: Ipv6 =
    netd_common::ipv6_from_octets([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/// connect() of IPv6 sockets: ports published on IPv6, `[::1]` included.
#[cgroup_sock_addr(connect6)]
pub fn host_connect6(ctx: SockAddrContext) -> i32 {
    redirect_to_backend6(&ctx);
    1
}

/// sendmsg() on unconnected IPv6 UDP sockets, as connect6.
#[cgroup_sock_addr(sendmsg6)]
pub fn host_sendmsg6(ctx: SockAddrContext) -> i32 {
    redirect_to_backend6(&ctx);
    1
}

/// recvmsg() on IPv6 UDP sockets: replies from the published address.
#[cgroup_sock_addr(recvmsg6)]
pub fn host_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_published6(&ctx);
    1
}

/// getpeername() of IPv6 sockets: the published address connected to.
#[cgroup_sock_addr(getpeername6)]
pub fn host_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_published6(&ctx);
    1
}

/// connect6 / sendmsg6: a published host address (or `[::1]`) and port
/// becomes its backend.
#[inline(always)]
fn redirect_to_backend6(ctx: &SockAddrContext) {
    if !sock::in_our_netns(ctx, nat::config_map()) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = user_ip6(sa);
    let port = (sa.user_port as u16).to_ne_bytes();
    let Some(backend) = backend_of(&dst, port, sa.protocol as u8) else {
        return;
    };
    // Word by word: the context takes 4-byte stores only.
    sa.user_ip6[0] = backend.ip[0];
    sa.user_ip6[1] = backend.ip[1];
    sa.user_ip6[2] = backend.ip[2];
    sa.user_ip6[3] = backend.ip[3];
    sa.user_port = u32::from(u16::from_ne_bytes(backend.port));
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey6 {
        cookie,
        ip: backend.ip,
        port: backend.port,
        _pad: [0; 6],
    };
    let asked = SockRevValue6 {
        ip: dst,
        port,
        _pad: [0; 2],
    };
    let _ = SOCK_REVNAT6.insert(&key, &asked, 0);
}

/// The backend of a port published at `dst`: one of the host's IPv6
/// addresses or `[::1]`, or an IPv4-mapped one (`::ffff:a.b.c.d`, a
/// dual-stack socket's way to IPv4: the connect4 hook does not see it) of a
/// port published on IPv4, its backend mapped too.
#[inline(always)]
fn backend_of(dst: &Ipv6, port: [u8; 2], proto: u8) -> Option<Backend6> {
    if dst[0] == 0 && dst[1] == 0 && dst[2] == V4_MAPPED {
        let v4 = dst[3].to_ne_bytes();
        if !policy::is_local(v4) {
            return None;
        }
        let backend = nat::published_backend(v4, port, proto)?;
        return Some(Backend6 {
            ip: [0, 0, V4_MAPPED, u32::from_ne_bytes(backend.ip)],
            port: backend.port,
            _pad: [0; 2],
        });
    }
    if *dst != LOOPBACK6 && !policy::is_local6(dst) {
        return None;
    }
    nat6::published_backend6(dst, port, proto)
}

/// recvmsg6 / getpeername6: show the published address, not the backend.
#[inline(always)]
fn restore_published6(ctx: &SockAddrContext) {
    if !sock::in_our_netns(ctx, nat::config_map()) {
        return;
    }
    // SAFETY: the context pointer is valid for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey6 {
        cookie,
        ip: user_ip6(sa),
        port: (sa.user_port as u16).to_ne_bytes(),
        _pad: [0; 6],
    };
    // SAFETY: read-only copy of a map value.
    if let Some(asked) = unsafe { SOCK_REVNAT6.get(&key) } {
        sa.user_ip6[0] = asked.ip[0];
        sa.user_ip6[1] = asked.ip[1];
        sa.user_ip6[2] = asked.ip[2];
        sa.user_ip6[3] = asked.ip[3];
        sa.user_port = u32::from(u16::from_ne_bytes(asked.port));
    }
}

/// The socket's IPv6 address, word by word: the verifier takes only 4-byte
/// loads at fixed offsets of the context (a copy of the array would be one
/// 8-byte load through a moved pointer, refused).
#[inline(always)]
fn user_ip6(sa: &bpf_sock_addr) -> Ipv6 {
    // SAFETY: reads of fields of a valid context.
    unsafe {
        [
            core::ptr::read_volatile(&sa.user_ip6[0]),
            core::ptr::read_volatile(&sa.user_ip6[1]),
            core::ptr::read_volatile(&sa.user_ip6[2]),
            core::ptr::read_volatile(&sa.user_ip6[3]),
        ]
    }
}
