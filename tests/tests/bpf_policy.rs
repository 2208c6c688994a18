//! Policy under BPF_PROG_TEST_RUN: anti-spoofing, isolation, icc, internal
//! networks, unsolicited inbound, routed CIDRs, gateway modes.

use netd_common::{
    DropReason, NET_GATEWAY_ROUTED, NET_ICC, NET_INTERNAL, NET_MASQUERADE, NET_ROUTED,
    NET_TRUSTS_INTERFACES, NET_UNPROTECTED, TrustKey, programs,
};
use netd_testbed::unit::*;
use netd_testbed::{
    packet::{Ipv4Frame, TCP_ACK, TCP_SYN, ip},
    testrun::{TC_ACT_OK, TEST_RUN_IFINDEX},
};

#[test]
fn unsolicited_inbound_is_dropped_and_host_traffic_passes() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let direct = Ipv4Frame::tcp(CLIENT, 5555, C1, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &direct,
        DropReason::UnsolicitedInbound,
    );
    let to_host = Ipv4Frame::tcp(CLIENT, 5555, HOST, 22, TCP_SYN);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &to_host);
    let loopback = Ipv4Frame::tcp(CLIENT, 5555, "127.0.0.1", 8080, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &loopback,
        DropReason::LoopbackFromOutside,
    );
    assert!(dp.maps.conntrack.entries().unwrap().is_empty());
}

#[test]
fn container_policy_decisions() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let from_c1 = |dst: &str| Ipv4Frame::tcp(C1, 40000, dst, 80, TCP_SYN);
    for dst in [C2, "172.18.0.1", "172.19.0.1", HOST, REMOTE] {
        let (verdict, out) = run(&mut dp, programs::FROM_CONTAINER, &from_c1(dst));
        assert_eq!(
            (verdict, out),
            (TC_ACT_OK, from_c1(dst).build()),
            "to {dst}"
        );
    }
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &from_c1(OTHER_NET_CTR),
        DropReason::NetworkIsolation,
    );
    let mut spoofed_ip = from_c1(C2);
    spoofed_ip.src = ip("172.18.0.50");
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &spoofed_ip,
        DropReason::SpoofedSource,
    );
    let mut spoofed_mac = from_c1(C2);
    spoofed_mac.src_mac = [2, 0, 0, 0, 0, 0x66];
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &spoofed_mac,
        DropReason::SpoofedSource,
    );
    // C2 is registered on another interface: C1's port cannot send as C2.
    let mut as_c2 = from_c1(REMOTE);
    as_c2.src = ip(C2);
    as_c2.src_mac = [2, 0, 0, 0, 0, 3];
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &as_c2,
        DropReason::SpoofedSource,
    );

    let mut dp = datapath(NET_MASQUERADE);
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &from_c1(C2),
        DropReason::IccDisabled,
    );
    let mut dp = datapath(NET_ICC | NET_INTERNAL);
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &from_c1(REMOTE),
        DropReason::InternalNetwork,
    );
    let (verdict, _) = run(&mut dp, programs::FROM_CONTAINER, &from_c1(C2));
    assert_eq!(verdict, TC_ACT_OK);
}

/// A network with a routed CIDR (a cluster's pod range, 10.244.0.0/16):
/// to it, no masquerade and no conntrack entry; from it, the container is
/// reached as sent. Anything else keeps the normal verdicts.
#[test]
fn routed_cidrs_skip_masquerade_and_admit_their_sources() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE | NET_ROUTED);
    dp.maps
        .networks
        .insert_routed(1, ip("10.244.0.0"), 16)
        .unwrap();
    // Another network's routed CIDR says nothing about network 1.
    dp.maps
        .networks
        .insert_routed(2, ip("10.245.0.0"), 16)
        .unwrap();

    let to_pod = Ipv4Frame::tcp(C1, 40000, "10.244.2.7", 80, TCP_SYN);
    let (verdict, out) = run(&mut dp, programs::TO_UPLINK, &to_pod);
    assert_eq!(
        (verdict, out),
        (TC_ACT_OK, to_pod.build()),
        "kept its source"
    );
    assert!(
        dp.maps.conntrack.entries().unwrap().is_empty(),
        "nothing to track"
    );

    let from_pod = Ipv4Frame::tcp("10.244.2.7", 80, C1, 40000, TCP_SYN | TCP_ACK);
    let (verdict, out) = run(&mut dp, programs::FROM_UPLINK, &from_pod);
    assert_eq!(
        (verdict, out),
        (TC_ACT_OK, from_pod.build()),
        "a routed pod reaches C1"
    );

    // Outside the routed CIDR: masqueraded out, unsolicited in.
    let out_of_range = Ipv4Frame::tcp(C1, 40001, "10.245.0.9", 80, TCP_SYN);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &out_of_range,
        &with_addrs(&out_of_range, (HOST, 40001), ("10.245.0.9", 80)),
    );
    let stranger = Ipv4Frame::tcp("10.245.0.9", 5555, C1, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &stranger,
        DropReason::UnsolicitedInbound,
    );

    // Without the flag the map is not consulted: network 2's containers
    // stay unreachable from its own routed CIDR's addresses too.
    let to_other = Ipv4Frame::tcp("10.245.0.9", 5555, OTHER_NET_CTR, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &to_other,
        DropReason::UnsolicitedInbound,
    );
}

#[test]
fn nat_unprotected_opens_every_container_port_to_direct_access() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE | NET_UNPROTECTED);
    for port in [80, 81, 22] {
        let direct = Ipv4Frame::tcp(CLIENT, 5555, C1, port, TCP_SYN);
        expect_untouched(&mut dp, programs::FROM_UPLINK, &direct);
    }
    let ping = Ipv4Frame::icmp_echo(CLIENT, C1, 7, 1);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &ping);
    // The container's answer to such a connection leaves untranslated: the
    // connection was tracked on its way in.
    let answer = Ipv4Frame::tcp(C1, 80, CLIENT, 5555, TCP_SYN | TCP_ACK);
    let (verdict, bytes) = run(&mut dp, programs::TO_UPLINK, &answer);
    assert_eq!(
        (verdict, bytes),
        (TC_ACT_OK, answer.build()),
        "not masqueraded"
    );
    // Its own connections out are still masqueraded.
    let out = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &out,
        &with_addrs(&out, (HOST, 40000), (REMOTE, 80)),
    );
    // Another network (plain nat) stays closed.
    let other = Ipv4Frame::tcp(CLIENT, 5555, OTHER_NET_CTR, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &other,
        DropReason::UnsolicitedInbound,
    );
}

#[test]
fn routed_opens_published_container_ports_and_icmp_without_nat() {
    // No NET_MASQUERADE: a routed network never masquerades.
    let mut dp = datapath(NET_ICC | NET_GATEWAY_ROUTED);
    // `-p 8083:80` on a routed network: C1:80 keyed by itself.
    publish_tcp(&mut dp, ip(C1).octets(), 80, (C1, 80));
    let published = Ipv4Frame::tcp(CLIENT, 5555, C1, 80, TCP_SYN);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &published);
    // Tracked from its SYN: the rest goes straight into the container.
    let later = Ipv4Frame::tcp(CLIENT, 5555, C1, 80, TCP_ACK);
    expect_into_container(&mut dp, &later, &later, C1_MAC);
    let ping = Ipv4Frame::icmp_echo(CLIENT, C1, 7, 1);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &ping);
    for (dst, port) in [(C1, 81), (C2, 80)] {
        let unpublished = Ipv4Frame::tcp(CLIENT, 5555, dst, port, TCP_SYN);
        expect_drop(
            &mut dp,
            programs::FROM_UPLINK,
            &unpublished,
            DropReason::UnsolicitedInbound,
        );
    }
    // A port published on every host address to C1 opens nothing at C1's
    // own address.
    publish_tcp(&mut dp, [0; 4], 81, (C1, 81));
    let through_wildcard = Ipv4Frame::tcp(CLIENT, 5555, C1, 81, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &through_wildcard,
        DropReason::UnsolicitedInbound,
    );
    // Out with its own address, tracked so the replies come back.
    let out = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    let (verdict, bytes) = run(&mut dp, programs::TO_UPLINK, &out);
    assert_eq!(
        (verdict, bytes),
        (TC_ACT_OK, out.build()),
        "kept its source"
    );
    let reply = Ipv4Frame::tcp(REMOTE, 80, C1, 40000, TCP_SYN | TCP_ACK);
    expect_into_container(&mut dp, &reply, &reply, C1_MAC);
    // The host's address answers for nothing of it: no DNAT.
    let to_host = Ipv4Frame::tcp(CLIENT, 5555, HOST, 80, TCP_SYN);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &to_host);
    assert!(
        dp.maps
            .conntrack
            .entries()
            .unwrap()
            .iter()
            .all(|(k, _)| k.dst_port != 80u16.to_be_bytes() || k.dst != ip(HOST).octets()),
        "nothing translated to the host's port"
    );
}

#[test]
fn a_trusted_interface_reaches_published_container_ports_only() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE | NET_TRUSTS_INTERFACES);
    // `-p 8080:80` to C1: the host side, and its container side as the
    // driver adds it for a network with trusted interfaces.
    publish_tcp_8080(&mut dp, C1);
    publish_tcp(&mut dp, ip(C1).octets(), 80, (C1, 80));
    let direct = Ipv4Frame::tcp(CLIENT, 5555, C1, 80, TCP_SYN);
    let unpublished = Ipv4Frame::tcp(CLIENT, 5556, C1, 81, TCP_SYN);
    let ping = Ipv4Frame::icmp_echo(CLIENT, C1, 7, 1);
    // Not trusted yet: closed, as on any nat network.
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &direct,
        DropReason::UnsolicitedInbound,
    );
    let key = TrustKey {
        network_id: 1,
        ifindex: TEST_RUN_IFINDEX,
    };
    dp.maps.networks.insert_trusted(key).unwrap();
    expect_untouched(&mut dp, programs::FROM_UPLINK, &direct);
    // Tracked: the container's answer is not masqueraded.
    let answer = Ipv4Frame::tcp(C1, 80, CLIENT, 5555, TCP_SYN | TCP_ACK);
    let (verdict, bytes) = run(&mut dp, programs::TO_UPLINK, &answer);
    assert_eq!(
        (verdict, bytes),
        (TC_ACT_OK, answer.build()),
        "not masqueraded"
    );
    for closed in [&unpublished, &ping] {
        expect_drop(
            &mut dp,
            programs::FROM_UPLINK,
            closed,
            DropReason::UnsolicitedInbound,
        );
    }
    // Another network's trust says nothing about network 1.
    dp.maps.networks.remove_trusted(key).unwrap();
    dp.maps
        .networks
        .insert_trusted(TrustKey {
            network_id: 2,
            ..key
        })
        .unwrap();
    let again = Ipv4Frame::tcp(CLIENT, 5557, C1, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &again,
        DropReason::UnsolicitedInbound,
    );
}
