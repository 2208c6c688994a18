//! Golden snapshots of the rendered table, one per topology of
//! `driver::topologies` (the iptables datapath's too). A change to a rule
//! shows in review as a change to its snapshot (`cargo insta review`, or
//! INSTA_UPDATE=always to accept); `tests/tests/nftables.rs` applies each
//! with nft.

use crate::driver::{
    netfilter::Declared,
    topologies::{Topology, golden_tests},
};

fn render(t: Topology) -> String {
    super::render::render(&Declared {
        networks: t.networks,
        endpoints: t.endpoints,
        ports: t.ports,
        rules: t.rules,
    })
}

golden_tests!();

/// Each drop rule counts in one of the named counters the table declares,
/// which `netd status` and `/metrics` read as drop reasons.
#[test]
fn every_drop_rule_counts_in_a_declared_counter() {
    use crate::driver::topologies::*;
    for topology in [
        default_bridge_with_a_published_port(),
        icc_off_internal_and_unmasqueraded_networks(),
        hairpin_host_ip_bindings_and_a_networks_own_source_address(),
        routed_cidrs_skip_masquerade(),
        gateway_modes(),
        user_rules_in_order(),
        dual_stack_networks(),
    ] {
        let rendered = render(topology);
        for line in rendered.lines().filter(|l| l.contains(" drop ")) {
            let named = super::DROP_COUNTERS
                .iter()
                .any(|(name, _)| line.contains(&format!("counter name \"{name}\" drop")));
            assert!(named, "a drop rule without a named counter: {line}");
        }
        for (name, _) in super::DROP_COUNTERS {
            assert!(
                rendered.contains(&format!("counter {name} {{ }}")),
                "{name}"
            );
        }
    }
}
