//! The IPv6 path under BPF_PROG_TEST_RUN: anti-spoofing (sources and
//! neighbour advertisements), isolation, icc, internal networks, what may
//! leave the host, unsolicited inbound; XDP's verdicts equal TC's. NAT66
//! is bpf_nat66.rs's.

use netd_common::{
    DropReason, NET_GATEWAY_ROUTED, NET_ICC, NET_INTERNAL, NET_MASQUERADE, TrafficClass, programs,
};
use netd_testbed::unit::*;
use netd_testbed::unit6::*;
use netd_testbed::{
    packet::{ICMPV6_NEIGHBOUR_ADVERT, ICMPV6_NEIGHBOUR_SOLICIT, Ipv6Frame},
    testrun::{TC_ACT_SHOT, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS, run_classifier, run_xdp},
};

/// `payload` (ICMPv6) behind `count` hop-by-hop-style headers of `kind`.
fn behind_ext_headers(kind: u8, count: usize, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..count {
        let next = if i + 1 == count { 58 } else { kind };
        bytes.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn containers_reach_their_network_and_the_hosts_gateways_and_nothing_else() {
    let mut dp = datapath6(NET_ICC | NET_MASQUERADE);
    dp.maps
        .ipv6
        .insert_local_addr(HOST_6.parse().unwrap())
        .unwrap();
    let to = |dst: &str| from_c1(Ipv6Frame::tcp_syn(C1_6, dst));
    let tcp6 = traffic(&dp, TrafficClass::Tcp6);
    for dst in [C2_6, GATEWAY_6, OTHER_GATEWAY_6, HOST_6] {
        expect_pass6(&mut dp, programs::FROM_CONTAINER, &to(dst));
    }
    assert_eq!(
        traffic(&dp, TrafficClass::Tcp6),
        tcp6 + 4,
        "counted as tcp6"
    );
    expect_drop6(
        &mut dp,
        programs::FROM_CONTAINER,
        &to(OTHER_NET_6),
        DropReason::NetworkIsolation,
    );
    // Beyond the host: the kernel routes it, to_uplink translates it.
    expect_pass6(&mut dp, programs::FROM_CONTAINER, &to(OUTSIDE_6));
    // Not yet on a routed network (no NAT66 there, and IPv6 is not routed
    // without it yet).
    let mut routed = datapath6(NET_ICC | NET_GATEWAY_ROUTED);
    expect_drop6(
        &mut routed,
        programs::FROM_CONTAINER,
        &to(OUTSIDE_6),
        DropReason::Ipv6OutboundUnsupported,
    );

    let mut dp = datapath6(NET_MASQUERADE);
    expect_drop6(
        &mut dp,
        programs::FROM_CONTAINER,
        &to(C2_6),
        DropReason::IccDisabled,
    );
    expect_pass6(&mut dp, programs::FROM_CONTAINER, &to(GATEWAY_6));

    let mut dp = datapath6(NET_ICC | NET_INTERNAL);
    expect_drop6(
        &mut dp,
        programs::FROM_CONTAINER,
        &to(OUTSIDE_6),
        DropReason::InternalNetwork,
    );
    expect_pass6(&mut dp, programs::FROM_CONTAINER, &to(C2_6));
}

#[test]
fn a_container_sends_only_as_itself_and_advertises_only_its_own_address() {
    let mut dp = datapath6(NET_ICC | NET_MASQUERADE);
    // Another address of the network, C2's address, C1's address from another MAC.
    for (src, mac) in [
        ("fd00:a::50", C1_MAC),
        (C2_6, C1_MAC),
        (C1_6, [2, 0, 0, 0, 0, 0x66]),
    ] {
        let mut frame = Ipv6Frame::tcp_syn(src, GATEWAY_6);
        frame.src_mac = mac;
        expect_drop6(
            &mut dp,
            programs::FROM_CONTAINER,
            &frame,
            DropReason::SpoofedSource,
        );
    }
    // Neighbour discovery: from the link-local address and, for duplicate
    // address detection, from ::, to the link.
    let ll = "fe80::1";
    for frame in [
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_SOLICIT, ll, "ff02::1:ff00:3", C2_6),
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_SOLICIT, "::", "ff02::1:ff00:2", C1_6),
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, ll, "ff02::1", C1_6),
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, C1_6, ll, C1_6),
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, ll, "fe80::2", "fe80::1"),
    ] {
        expect_pass6(&mut dp, programs::FROM_CONTAINER, &from_c1(frame));
    }
    // The twin of a forged ARP reply: an advertisement claiming C2's address.
    for frame in [
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, ll, "ff02::1", C2_6),
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, C1_6, "fe80::2", C2_6),
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, ll, "ff02::1", GATEWAY_6),
    ] {
        expect_drop6(
            &mut dp,
            programs::FROM_CONTAINER,
            &from_c1(frame),
            DropReason::SpoofedSource,
        );
    }
    // A container is no router: no router advertisement, no redirect.
    for kind in [134u8, 137] {
        let frame = Ipv6Frame::new(
            ll,
            "ff02::1",
            58,
            vec![kind, 0, 0, 0, 64, 0, 0, 0x0e, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        expect_drop6(
            &mut dp,
            programs::FROM_CONTAINER,
            &from_c1(frame),
            DropReason::SpoofedSource,
        );
    }
    // A router solicitation is the container's to send.
    let solicit = Ipv6Frame::new(ll, "ff02::2", 58, vec![133, 0, 0, 0, 0, 0, 0, 0]);
    expect_pass6(&mut dp, programs::FROM_CONTAINER, &from_c1(solicit));
    // A link-local or unspecified source stays on the link.
    for src in [ll, "::"] {
        expect_drop6(
            &mut dp,
            programs::FROM_CONTAINER,
            &from_c1(Ipv6Frame::tcp_syn(src, C2_6)),
            DropReason::SpoofedSource,
        );
    }
}

#[test]
fn neighbour_discovery_behind_extension_headers_is_judged_the_same() {
    let mut dp = datapath6(NET_ICC | NET_MASQUERADE);
    let ll = "fe80::1";
    let na_for_c2 = Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, ll, "ff02::1", C2_6).payload;
    let router_advert = [134u8, 0, 0, 0, 64, 0, 0, 0x0e, 0, 0, 0, 0, 0, 0, 0, 0];
    for (kind, count) in [(0u8, 1), (60, 1), (0, 3), (43, 2)] {
        for payload in [&na_for_c2[..], &router_advert[..]] {
            let frame = Ipv6Frame::new(
                ll,
                "ff02::1",
                kind,
                behind_ext_headers(kind, count, payload),
            );
            expect_drop6(
                &mut dp,
                programs::FROM_CONTAINER,
                &from_c1(frame),
                DropReason::SpoofedSource,
            );
        }
    }
    // A multicast listener report behind its router-alert hop-by-hop header.
    let report = [143u8, 0, 0, 0, 0, 0, 0, 0];
    let mld = Ipv6Frame::new(ll, "ff02::16", 0, behind_ext_headers(0, 1, &report));
    expect_pass6(&mut dp, programs::FROM_CONTAINER, &from_c1(mld));
    // More headers than netd walks: the message cannot be judged.
    let long = Ipv6Frame::new(ll, "ff02::1", 60, behind_ext_headers(60, 4, &router_advert));
    expect_drop6(
        &mut dp,
        programs::FROM_CONTAINER,
        &from_c1(long),
        DropReason::Ipv6HeaderChain,
    );
}

#[test]
fn icc_false_holds_on_the_link_too_and_ipv6_only_where_the_network_has_it() {
    let mut dp = datapath6(NET_MASQUERADE);
    // Link-local unicast: only neighbour discovery between containers.
    for (src, dst) in [("fe80::1", "fe80::2"), (C1_6, "fe80::2")] {
        expect_drop6(
            &mut dp,
            programs::FROM_CONTAINER,
            &from_c1(Ipv6Frame::tcp_syn(src, dst)),
            DropReason::IccDisabled,
        );
    }
    let solicit = Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_SOLICIT, "fe80::1", "fe80::2", "fe80::2");
    expect_pass6(&mut dp, programs::FROM_CONTAINER, &from_c1(solicit));
    // A container whose network has no IPv6 sends none, link-local included.
    dp.maps.ipv6.remove_port(TEST_RUN_IFINDEX).unwrap();
    let solicit = Ipv6Frame::neighbour(
        ICMPV6_NEIGHBOUR_SOLICIT,
        "fe80::1",
        "ff02::1:ff00:2",
        "fe80::2",
    );
    expect_drop6(
        &mut dp,
        programs::FROM_CONTAINER,
        &from_c1(solicit),
        DropReason::Ipv6Off,
    );
}

#[test]
fn broken_ipv6_headers_are_dropped_with_their_reason() {
    let mut dp = datapath6(NET_ICC | NET_MASQUERADE);
    let good = from_c1(Ipv6Frame::tcp_syn(C1_6, C2_6)).build();
    let mut version_4 = good.clone();
    version_4[14] = 0x40;
    let mut too_long = good.clone();
    too_long[18..20].copy_from_slice(&1000u16.to_be_bytes());
    for frame in [version_4, too_long] {
        let before = drops(&dp, DropReason::BadIpv6Header);
        let (verdict, _) = run_classifier(&mut dp, programs::FROM_CONTAINER, &frame).unwrap();
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(drops(&dp, DropReason::BadIpv6Header), before + 1);
    }
}

#[test]
fn outside_reaches_the_hosts_ipv6_but_no_container_and_xdp_agrees() {
    let mut dp = datapath6(NET_ICC | NET_MASQUERADE);
    let cases = [
        (
            Ipv6Frame::tcp_syn(OUTSIDE_6, C1_6),
            Some(DropReason::UnsolicitedInbound),
        ),
        (
            Ipv6Frame::tcp_syn(C2_6, "2001:db8::1"),
            Some(DropReason::SpoofedSource),
        ),
        (Ipv6Frame::tcp_syn(OUTSIDE_6, GATEWAY_6), None),
        (Ipv6Frame::tcp_syn(OUTSIDE_6, "2001:db8::1"), None),
        // The LAN's router advertising itself: the host's business.
        (
            Ipv6Frame::new(
                "fe80::9",
                "ff02::1",
                58,
                vec![134, 0, 0, 0, 64, 0, 0, 0x0e, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            None,
        ),
        (
            Ipv6Frame::neighbour(
                ICMPV6_NEIGHBOUR_SOLICIT,
                "fe80::9",
                "ff02::1:ff00:1",
                "2001:db8::1",
            ),
            None,
        ),
    ];
    for (frame, reason) in cases {
        match reason {
            Some(reason) => expect_drop6(&mut dp, programs::FROM_UPLINK, &frame, reason),
            None => expect_pass6(&mut dp, programs::FROM_UPLINK, &frame),
        }
        let before = reason.map(|r| drops(&dp, r));
        let (verdict, out) = run_xdp(&mut dp, &frame.build()).unwrap();
        assert_eq!(out, frame.build(), "XDP changed {frame:?}");
        match reason {
            Some(reason) => {
                assert_eq!(verdict, XDP_DROP, "XDP passed what TC drops: {frame:?}");
                assert_eq!(Some(drops(&dp, reason)), before.map(|b| b + 1));
            }
            None => assert_eq!(verdict, XDP_PASS, "XDP dropped what TC passes: {frame:?}"),
        }
    }
}
