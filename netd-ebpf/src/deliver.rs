//! Handing packets straight to a container, skipping the bridge and the
//! host's routing and netfilter (the fast path).

use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use netd_common::Ipv4;

use crate::policy;

/// Redirects a packet already addressed to container `dst` into that
/// container's namespace (bpf_redirect_peer: TC ingress only), with the L2
/// header the gateway would have written. None when `dst` is not a local
/// container: the caller lets the stack route it.
#[inline(always)]
pub fn to_container(ctx: &TcContext, dst: Ipv4) -> Option<i32> {
    let endpoint = policy::endpoint(dst)?;
    let network = policy::network_of(dst)?;
    let (ifindex, mac, gateway_mac) = (endpoint.ifindex, endpoint.mac, network.gateway_mac);
    ctx.store(0, &mac, 0).ok()?;
    ctx.store(6, &gateway_mac, 0).ok()?;
    // SAFETY: plain helper call; it returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    Some(unsafe { bpf_redirect_peer(ifindex, 0) } as i32)
}
