//! A network's flags in `NETWORKS` (and copied into each of its
//! `ENDPOINTS`): what the programs enforce for it, from its settings.

use netd_common::{
    NET_GATEWAY_ROUTED, NET_ICC, NET_INTERNAL, NET_MASQUERADE, NET_RESOLVER_ON_GATEWAY, NET_ROUTED,
    NET_TRUSTS_INTERFACES, NET_UNPROTECTED,
};

use super::trusted;
use crate::state::{GatewayMode, Network};

pub(super) fn network_flags(net: &Network, resolver_on_gateways: bool) -> u32 {
    let mut flags = 0;
    if resolver_on_gateways && crate::dns::has_resolver(&net.name) && net.gateway_on_bridge() {
        flags |= NET_RESOLVER_ON_GATEWAY;
    }
    if net.icc {
        flags |= NET_ICC;
    }
    if net.internal {
        flags |= NET_INTERNAL;
    }
    if net.masquerade && !net.internal {
        flags |= NET_MASQUERADE;
    }
    if !net.routed_cidrs.is_empty() {
        flags |= NET_ROUTED;
    }
    // An internal network's mode changes nothing but its bridge address.
    match net.gateway_mode_ipv4 {
        GatewayMode::NatUnprotected if !net.internal => flags |= NET_UNPROTECTED,
        GatewayMode::Routed if !net.internal => flags |= NET_GATEWAY_ROUTED,
        _ => {}
    }
    if trusted::Trusting::of(net).is_some() {
        flags |= NET_TRUSTS_INTERFACES;
    }
    flags
}
