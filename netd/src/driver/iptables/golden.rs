//! Golden snapshots of the rendered rule set, one per topology of
//! `driver::topologies`. A change to a rule shows in review as a change to
//! its snapshot (`cargo insta review`, or INSTA_UPDATE=always to accept).

use crate::driver::{
    netfilter::{Declared, Family},
    topologies::{Topology, golden_tests},
};

/// Both families' rule sets, as `iptables-restore` and
/// `ip6tables-restore` take them.
fn render(t: Topology) -> String {
    let decl = Declared {
        networks: t.networks,
        endpoints: t.endpoints,
        ports: t.ports,
        rules: t.rules,
    };
    Family::BOTH
        .into_iter()
        .map(|family| {
            let program = match family {
                Family::V4 => "iptables-restore",
                Family::V6 => "ip6tables-restore",
            };
            format!("# {program}\n{}", super::render::render(&decl, family))
        })
        .collect()
}

golden_tests!();
