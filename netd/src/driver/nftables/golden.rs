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
