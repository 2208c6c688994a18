//! NAT under BPF_PROG_TEST_RUN: masquerade (port choice, UDP checksums), published
//! ports both ways and their scopes, hairpin, a network's own source address,
//! fragments that would need NAT, and the fast path's mark.

use netd::{
    datapath::{BpfLog, Datapath, monotonic_ns},
    features::{Features, KernelFeatures},
};
use netd_common::{
    CT_DNAT, CT_REPLY, CT_SEEN_REPLY, CT_SNAT, DropReason, Endpoint, FASTPATH_MARK, NET_ICC,
    NET_INTERNAL, NET_MASQUERADE, NetworkInfo, PUBLISHED_ON_ADDRESS, PUBLISHED_ON_ALL,
    maps::{self, MapDef as _},
    programs, timeouts,
};
use netd_testbed::unit::*;
use netd_testbed::{
    packet::{self, Ipv4Frame, PROTO_TCP, TCP_ACK, TCP_SYN, ip},
    testrun::{TC_ACT_OK, TEST_RUN_IFINDEX, run_classifier, run_classifier_with_mark},
};

#[test]
fn masquerade_keeps_a_free_source_port_and_translates_replies() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let syn = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &syn,
        &with_addrs(&syn, (HOST, 40000), (REMOTE, 80)),
    );

    let forward = entry(&dp, key((C1, 40000), (REMOTE, 80), PROTO_TCP));
    assert_eq!(forward.xlat, key((HOST, 40000), (REMOTE, 80), PROTO_TCP));
    assert_eq!(forward.flags, CT_SNAT);
    let reply_key = key((REMOTE, 80), (HOST, 40000), PROTO_TCP);
    let reply = entry(&dp, reply_key);
    assert_eq!(reply.xlat, key((REMOTE, 80), (C1, 40000), PROTO_TCP));
    assert_eq!(reply.flags, CT_SNAT | CT_REPLY);
    assert_eq!(dp.maps.conntrack.entries().unwrap().len(), 2);
    let now = monotonic_ns();
    assert!(forward.expires_ns > now && forward.expires_ns <= now + timeouts::TCP_SYN);

    let syn_ack = Ipv4Frame::tcp(REMOTE, 80, HOST, 40000, TCP_SYN | TCP_ACK);
    expect_into_container(
        &mut dp,
        &syn_ack,
        &with_addrs(&syn_ack, (REMOTE, 80), (C1, 40000)),
        C1_MAC,
    );
    // The reply made the connection established, in both entries.
    let forward = entry(&dp, key((C1, 40000), (REMOTE, 80), PROTO_TCP));
    assert_ne!(forward.flags & CT_SEEN_REPLY, 0);
    assert!(forward.expires_ns > monotonic_ns() + timeouts::TCP_SYN);
    assert_ne!(entry(&dp, reply_key).flags & CT_SEEN_REPLY, 0);
}

#[test]
fn masquerade_picks_another_port_when_the_source_port_is_taken() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let first = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    let (verdict, _) = run(&mut dp, programs::TO_UPLINK, &first);
    assert_eq!(verdict, TC_ACT_OK);
    // Same source port, same destination, another container: must not collide.
    let second = Ipv4Frame::tcp(C2, 40000, REMOTE, 80, TCP_SYN);
    let (verdict, out) = run(&mut dp, programs::TO_UPLINK, &second);
    assert_eq!(verdict, TC_ACT_OK);
    packet::verify_checksums(&out).unwrap();
    let l4 = packet::ETH_LEN + packet::IPV4_LEN;
    let port = u16::from_be_bytes([out[l4], out[l4 + 1]]);
    assert_ne!(port, 40000);
    assert!((netd_common::NAT_PORT_MIN..=netd_common::NAT_PORT_MAX).contains(&port));
    assert_eq!(out, with_addrs(&second, (HOST, port), (REMOTE, 80)).build());
    // Replies to each port reach their own container.
    for (port, ctr, mac) in [(40000, C1, C1_MAC), (port, C2, [2, 0, 0, 0, 0, 3])] {
        let reply = Ipv4Frame::tcp(REMOTE, 80, HOST, port, TCP_SYN | TCP_ACK);
        expect_into_container(
            &mut dp,
            &reply,
            &with_addrs(&reply, (REMOTE, 80), (ctr, 40000)),
            mac,
        );
    }
}

#[test]
fn masquerade_handles_udp_with_and_without_checksum() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let udp = Ipv4Frame::udp(C1, 5000, REMOTE, 53, b"query");
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &udp,
        &with_addrs(&udp, (HOST, 5000), (REMOTE, 53)),
    );
    let answer = Ipv4Frame::udp(REMOTE, 53, HOST, 5000, b"answer!");
    expect_into_container(
        &mut dp,
        &answer,
        &with_addrs(&answer, (REMOTE, 53), (C1, 5000)),
        C1_MAC,
    );

    // A zero UDP checksum means "none" and must stay zero.
    let mut bytes = Ipv4Frame::udp(C1, 5001, REMOTE, 53, b"q").build();
    let csum = packet::ETH_LEN + packet::IPV4_LEN + 6;
    bytes[csum..csum + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = run_classifier(&mut dp, programs::TO_UPLINK, &bytes).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out[csum..csum + 2], [0, 0]);
    assert_eq!(
        out[packet::ETH_LEN + 12..packet::ETH_LEN + 16],
        ip(HOST).octets()
    );
    packet::verify_checksums(&out).unwrap();
}

#[test]
fn published_port_translates_both_ways_and_keeps_the_client_address() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let port = publish_tcp_8080(&mut dp, C1);

    expect_syn_into_c1(&mut dp, 5555, HOST, 8080, 80);
    assert_eq!(
        entry(&dp, key((CLIENT, 5555), (HOST, 8080), PROTO_TCP)).flags,
        CT_DNAT
    );
    let reply = Ipv4Frame::tcp(C1, 80, CLIENT, 5555, TCP_SYN | TCP_ACK);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &reply,
        &with_addrs(&reply, (HOST, 8080), (CLIENT, 5555)),
    );

    // Unpublishing forgets the connection.
    dp.maps.unpublish(&[port]).unwrap();
    assert!(dp.maps.conntrack.entries().unwrap().is_empty());
}

/// A port published on one address answers there only; one published on
/// every address answers on all of them. `PUBLISHED_SCOPES` follows the
/// ports, so the programs skip the kind of lookup that cannot hit, and
/// never the one that can.
#[test]
fn published_scopes_follow_the_ports_and_every_port_is_found() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    assert_eq!(dp.maps.ports.scopes(), 0);
    let on_host = publish_tcp(&mut dp, ip(HOST).octets(), 8081, (C1, 81));
    assert_eq!(dp.maps.ports.scopes(), PUBLISHED_ON_ADDRESS);
    let other = "198.51.100.50"; // another of the host's addresses
    dp.maps.networks.insert_local_addr(ip(other)).unwrap();
    let to_8081 = |dst: &str, sport: u16| Ipv4Frame::tcp(CLIENT, sport, dst, 8081, TCP_SYN);
    expect_syn_into_c1(&mut dp, 5000, HOST, 8081, 81);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &to_8081(other, 5001));

    let everywhere = publish_tcp_8080(&mut dp, C1);
    assert_eq!(
        dp.maps.ports.scopes(),
        PUBLISHED_ON_ADDRESS | PUBLISHED_ON_ALL
    );
    dp.maps.unpublish(&[on_host]).unwrap();
    assert_eq!(dp.maps.ports.scopes(), PUBLISHED_ON_ALL);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &to_8081(HOST, 5002));
    expect_syn_into_c1(&mut dp, 5003, HOST, 8080, 80);
    expect_syn_into_c1(&mut dp, 5004, other, 8080, 80);
    dp.maps.unpublish(&[everywhere]).unwrap();
    assert_eq!(dp.maps.ports.scopes(), 0);
    expect_untouched(
        &mut dp,
        programs::FROM_UPLINK,
        &Ipv4Frame::tcp(CLIENT, 5005, HOST, 8080, TCP_SYN),
    );
}

/// Pinned maps from a version without `PUBLISHED_SCOPES`: loading fills
/// the new map from the pinned ports at once, so the new programs find
/// every port before the daemon has republished anything.
#[test]
fn published_scopes_are_filled_at_load_from_pinned_ports() {
    /// The pins go on every path, a failed assertion's too.
    struct RemovePins(std::path::PathBuf);
    impl Drop for RemovePins {
        fn drop(&mut self) {
            let _ = Datapath::remove_pins(&self.0);
        }
    }
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/netd-test-{}-scopes",
        std::process::id()
    ));
    let _pins = RemovePins(dir.clone());
    let features = Features::probe(KernelFeatures::Auto).unwrap();
    {
        let mut old =
            Datapath::load_pinned(&dir, &features, BpfLog::Off, &Default::default()).unwrap();
        configure(&mut old, NET_ICC | NET_MASQUERADE);
        publish_tcp_8080(&mut old, C1);
    }
    std::fs::remove_file(dir.join("maps").join(maps::PUBLISHED_SCOPES::NAME)).unwrap();
    let mut dp = Datapath::load_pinned(&dir, &features, BpfLog::Off, &Default::default()).unwrap();
    assert_eq!(dp.maps.ports.scopes(), PUBLISHED_ON_ALL);
    expect_syn_into_c1(&mut dp, 5555, HOST, 8080, 80);
}

#[test]
fn hairpin_translates_both_ends_and_redirects_into_the_backend() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    publish_tcp_8080(&mut dp, C2);
    // Hairpin always takes a port of the NAT range (one here, to know it).
    set_nat_ports(&mut dp, 20000, 20000);
    let gateway = "172.18.0.1";
    let gateway_mac = [2, 0, 0, 0, 0xee, 1];

    // C1 -> host:8080 becomes gateway:20000 -> C2:80, delivered straight to C2.
    let syn = Ipv4Frame::tcp(C1, 40000, HOST, 8080, TCP_SYN);
    let mut expected = with_addrs(&syn, (gateway, 20000), (C2, 80));
    expected.dst_mac = [2, 0, 0, 0, 0, 3];
    expected.src_mac = gateway_mac;
    let (verdict, out) = run(&mut dp, programs::FROM_CONTAINER, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    packet::verify_checksums(&out).unwrap();
    assert_eq!(out, expected.build());

    // C2's reply to the gateway goes back to C1 as host:8080 -> C1. C2 sends
    // from interface 99, so give the test run a datapath where C2 is "us".
    let reply_key = key((C2, 80), (gateway, 20000), PROTO_TCP);
    let reply_entry = entry(&dp, reply_key);
    assert_eq!(reply_entry.xlat, key((HOST, 8080), (C1, 40000), PROTO_TCP));
    assert_eq!(reply_entry.flags, CT_DNAT | CT_SNAT | CT_REPLY);
    let c2_as_sender = Endpoint {
        ifindex: TEST_RUN_IFINDEX,
        network_id: 1,
        network_flags: NET_ICC | NET_MASQUERADE,
        mac: [2, 0, 0, 0, 0, 3],
        _pad: [0; 2],
    };
    dp.maps
        .endpoints
        .insert(C2.parse().unwrap(), c2_as_sender)
        .unwrap();
    let mut syn_ack = Ipv4Frame::tcp(C2, 80, gateway, 20000, TCP_SYN | TCP_ACK);
    syn_ack.src_mac = [2, 0, 0, 0, 0, 3];
    let mut expected = with_addrs(&syn_ack, (HOST, 8080), (C1, 40000));
    expected.dst_mac = C1_MAC;
    expected.src_mac = gateway_mac;
    let (verdict, out) = run(&mut dp, programs::FROM_CONTAINER, &syn_ack);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, expected.build());

    // Internal networks do not hairpin out to other containers.
    let mut dp = datapath(NET_ICC | NET_INTERNAL);
    publish_tcp_8080(&mut dp, OTHER_NET_CTR);
    expect_drop(
        &mut dp,
        programs::FROM_CONTAINER,
        &syn,
        DropReason::InternalNetwork,
    );
}

#[test]
fn masquerade_uses_the_networks_own_host_ip_when_it_has_one() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let own_ip = "198.51.100.7";
    let info = NetworkInfo {
        id: 1,
        flags: NET_ICC | NET_MASQUERADE,
        gateway: ip("172.18.0.1").octets(),
        host_ip: ip(own_ip).octets(),
        gateway_mac: [2, 0, 0, 0, 0xee, 1],
        _pad: [0; 2],
    };
    dp.maps
        .networks
        .insert("172.18.0.0".parse().unwrap(), 16, info)
        .unwrap();
    let syn = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &syn,
        &with_addrs(&syn, (own_ip, 40000), (REMOTE, 80)),
    );
}

#[test]
fn fragments_of_masqueraded_flows_are_dropped_not_leaked() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let mut first = Ipv4Frame::udp(C1, 5000, REMOTE, 53, b"first part");
    first.frag = 0x2000; // MF
    expect_drop(
        &mut dp,
        programs::TO_UPLINK,
        &first,
        DropReason::FragmentNeedsNat,
    );
    let mut later = Ipv4Frame::udp(C1, 5000, REMOTE, 53, b"xxxxxxxx");
    later.frag = 0x0002;
    expect_drop(
        &mut dp,
        programs::TO_UPLINK,
        &later,
        DropReason::FragmentNeedsNat,
    );
    // Without masquerade, fragments go out untouched.
    let mut dp = datapath(NET_ICC);
    expect_untouched(&mut dp, programs::TO_UPLINK, &later);
}

#[test]
fn to_uplink_lets_fast_path_packets_go_untouched_and_clears_the_mark() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let syn = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN).build();
    // Redirected by from_container: translated already, so nothing to do.
    let (verdict, out, mark) =
        run_classifier_with_mark(&mut dp, programs::TO_UPLINK, &syn, FASTPATH_MARK).unwrap();
    assert_eq!((verdict, mark), (TC_ACT_OK, 0));
    assert_eq!(out, syn);
    assert!(dp.maps.conntrack.entries().unwrap().is_empty());
    // Any other mark is someone else's: the packet is masqueraded as usual
    // and keeps its mark.
    let (verdict, out, mark) =
        run_classifier_with_mark(&mut dp, programs::TO_UPLINK, &syn, 0x1).unwrap();
    assert_eq!((verdict, mark), (TC_ACT_OK, 0x1));
    let masqueraded = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    assert_eq!(
        out,
        with_addrs(&masqueraded, (HOST, 40000), (REMOTE, 80)).build()
    );
    assert_eq!(dp.maps.conntrack.entries().unwrap().len(), 2);
}
