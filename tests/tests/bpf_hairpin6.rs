//! Hairpin over IPv6 under BPF_PROG_TEST_RUN: a container's connection to
//! a port published on one of the host's IPv6 addresses (or its gateway)
//! goes to the backend from the backend network's gateway and a port of
//! the NAT range, redirected into the backend; the reply goes back as the
//! published address; exact bytes and checksums. What is the host's own
//! passes untouched; an internal network's container does not hairpin.

use netd::datapath::Datapath;
use netd_common::{
    CT_DNAT, CT_SNAT, DropReason, Endpoint, NET_ICC, NET_INTERNAL, NET_MASQUERADE, programs,
};
use netd_testbed::unit::*;
use netd_testbed::unit6::*;
use netd_testbed::{
    packet::{Ipv6Frame, TCP_ACK, TCP_SYN},
    packet6::verify_checksums6,
    testrun::{TEST_RUN_IFINDEX, run_classifier},
};

const C2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];

/// [`datapath6`] with HOST_6 one of the host's addresses and TCP 8080
/// published on IPv6 to C2's port 80; hairpin ports fixed to 20000.
fn hairpin6(flags: u32) -> Datapath {
    let mut dp = datapath6(flags);
    dp.maps
        .ipv6
        .insert_local_addr(HOST_6.parse().unwrap())
        .unwrap();
    publish6_8080(&mut dp, C2_6);
    set_nat_ports(&mut dp, 20000, 20000);
    dp
}

/// Runs `from_container` on `input`: redirected, as exactly `expected`.
fn expect_redirect6(dp: &mut Datapath, input: &Ipv6Frame, expected: &Ipv6Frame) {
    verify_checksums6(&input.build()).unwrap();
    let (verdict, out) = run_classifier(dp, programs::FROM_CONTAINER, &input.build()).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT, "verdict for {input:?}");
    verify_checksums6(&out).unwrap();
    assert_eq!(out, expected.build(), "output for {input:?}");
}

#[test]
fn hairpin_over_ipv6_reaches_the_backend_from_its_gateway_and_comes_back() {
    for host_address in [HOST_6, GATEWAY_6] {
        let mut dp = hairpin6(NET_ICC | NET_MASQUERADE);
        // C1 -> [host]:8080 becomes [gateway]:20000 -> C2:80, into C2.
        let syn = from_c1(Ipv6Frame::tcp(C1_6, 40000, host_address, 8080, TCP_SYN));
        let mut into_c2 = syn.translated((GATEWAY_6, 20000), (C2_6, 80));
        into_c2.dst_mac = C2_MAC;
        into_c2.src_mac = syn.dst_mac;
        expect_redirect6(&mut dp, &syn, &into_c2);
        let rows = dp.maps.conntrack6.entries().unwrap();
        assert_eq!(rows.len(), 2, "{host_address}");
        assert!(
            rows.iter()
                .all(|(_, e)| e.flags & (CT_DNAT | CT_SNAT) == CT_DNAT | CT_SNAT)
        );

        // C2's reply to the gateway goes back to C1 as [host]:8080. C2
        // sends from interface 99: make it the test run's sender.
        let c2_as_sender = Endpoint {
            ifindex: TEST_RUN_IFINDEX,
            network_id: 1,
            network_flags: NET_ICC | NET_MASQUERADE,
            mac: C2_MAC,
            _pad: [0; 2],
        };
        dp.maps
            .ipv6
            .insert_endpoint(C2_6.parse().unwrap(), c2_as_sender)
            .unwrap();
        let mut syn_ack = Ipv6Frame::tcp(C2_6, 80, GATEWAY_6, 20000, TCP_SYN | TCP_ACK);
        syn_ack.src_mac = C2_MAC;
        let mut into_c1 = syn_ack.translated((host_address, 8080), (C1_6, 40000));
        into_c1.dst_mac = netd_testbed::unit::C1_MAC;
        into_c1.src_mac = syn_ack.dst_mac;
        expect_redirect6(&mut dp, &syn_ack, &into_c1);
    }
}

#[test]
fn what_is_not_hairpin_passes_and_internal_networks_do_not_hairpin() {
    let mut dp = hairpin6(NET_ICC | NET_MASQUERADE);
    // Another port of the host, and a segment that opens nothing: the
    // host's own, untouched and untracked.
    for frame in [
        Ipv6Frame::tcp(C1_6, 40000, HOST_6, 9090, TCP_SYN),
        Ipv6Frame::tcp(C1_6, 40001, HOST_6, 8080, TCP_ACK),
    ] {
        expect_pass6(&mut dp, programs::FROM_CONTAINER, &from_c1(frame));
    }
    assert!(dp.maps.conntrack6.entries().unwrap().is_empty());

    let mut dp = hairpin6(NET_ICC | NET_INTERNAL);
    let syn = from_c1(Ipv6Frame::tcp(C1_6, 40000, HOST_6, 8080, TCP_SYN));
    expect_drop6(
        &mut dp,
        programs::FROM_CONTAINER,
        &syn,
        DropReason::InternalNetwork,
    );
}
