//! Golden snapshots of the rendered rule set, one per topology of
//! `driver::topologies`. A change to a rule shows in review as a change to
//! its snapshot (`cargo insta review`, or INSTA_UPDATE=always to accept).

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
