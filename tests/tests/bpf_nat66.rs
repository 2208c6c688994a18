//! NAT66 under BPF_PROG_TEST_RUN: masquerade of TCP, UDP and ICMPv6 echo
//! behind the uplink's IPv6 address and the replies translated back (every
//! checksum right), the source port remapped on a clash, packet too big
//! about a masqueraded connection, networks without masquerade (tracked,
//! not translated), and what is dropped: no uplink address, internal
//! networks, fragments; XDP lets tracked replies through.

use netd::datapath::{Datapath, monotonic_ns};
use netd_common::{
    CT_REPLY, CT_SEEN_REPLY, CT_SNAT, DropReason, NET_ICC, NET_INTERNAL, NET_MASQUERADE, programs,
    timeouts,
};
use netd_testbed::unit::*;
use netd_testbed::unit6::*;
use netd_testbed::{
    packet::{Ipv6Frame, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN},
    packet6::{ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, verify_checksums6},
    testrun::{TC_ACT_OK, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS, run_classifier, run_xdp},
};

/// The uplink's IPv6 address (also the host's own, `LOCAL_ADDRS6`).
const UPLINK_6: &str = HOST_6;
const ROUTER_6: &str = "2001:db8::fe";

/// [`datapath6`] with the test-run interface an uplink whose IPv6 address
/// is UPLINK_6.
fn nat66(flags: u32) -> Datapath {
    let mut dp = datapath6(flags);
    let uplink = Some(UPLINK_6.parse().unwrap());
    dp.maps
        .config
        .set_uplink6(TEST_RUN_IFINDEX, uplink)
        .unwrap();
    dp.maps
        .ipv6
        .insert_local_addr(UPLINK_6.parse().unwrap())
        .unwrap();
    dp
}

/// Expects `program` to pass `input` as exactly `expected`, its checksum right.
fn expect_rewrite6(dp: &mut Datapath, program: &str, input: &Ipv6Frame, expected: &Ipv6Frame) {
    verify_checksums6(&input.build()).unwrap();
    let (verdict, out) = run_classifier(dp, program, &input.build()).unwrap();
    assert_eq!(verdict, TC_ACT_OK, "{program} verdict for {input:?}");
    verify_checksums6(&out).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert_eq!(out, expected.build(), "{program} output for {input:?}");
}

fn entries6(dp: &Datapath) -> usize {
    dp.maps.conntrack6.entries().unwrap().len()
}

#[test]
fn masquerade_translates_tcp_both_ways_and_gc_forgets_it() {
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    let syn = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_SYN);
    let out = syn.translated((UPLINK_6, 40000), (OUTSIDE_6, 80));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &syn, &out);
    let rows = dp.maps.conntrack6.entries().unwrap();
    assert_eq!(rows.len(), 2, "both directions tracked: {rows:?}");
    let forward = rows
        .iter()
        .find(|(_, e)| e.flags & CT_REPLY == 0)
        .unwrap()
        .1;
    assert_eq!(forward.flags, CT_SNAT);
    let now = monotonic_ns();
    assert!(forward.expires_ns > now && forward.expires_ns <= now + timeouts::TCP_SYN);

    let syn_ack = Ipv6Frame::tcp(OUTSIDE_6, 80, UPLINK_6, 40000, TCP_SYN | TCP_ACK);
    // XDP leaves a tracked reply to from_uplink.
    assert_eq!(run_xdp(&mut dp, &syn_ack.build()).unwrap().0, XDP_PASS);
    let back = syn_ack.translated((OUTSIDE_6, 80), (C1_6, 40000));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &syn_ack, &back);
    let established = dp.maps.conntrack6.entries().unwrap();
    assert!(
        established
            .iter()
            .all(|(_, e)| e.flags & CT_SEEN_REPLY != 0)
    );

    // Established: the container's next segment takes the tracked path.
    let ack = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_ACK);
    let out = ack.translated((UPLINK_6, 40000), (OUTSIDE_6, 80));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &ack, &out);

    // Nothing expired yet; far in the future both entries go.
    assert_eq!(dp.maps.conntrack6.gc(monotonic_ns()).unwrap(), 0);
    let later = monotonic_ns() + 2 * timeouts::TCP_ESTABLISHED;
    assert_eq!(dp.maps.conntrack6.gc(later).unwrap(), 2);
    assert_eq!(entries6(&dp), 0);
}

#[test]
fn masquerade_translates_udp_and_echo_and_keeps_unsolicited_out() {
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    let query = Ipv6Frame::udp(C1_6, 5353, OUTSIDE_6, 53, b"query");
    let out = query.translated((UPLINK_6, 5353), (OUTSIDE_6, 53));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &query, &out);
    let answer = Ipv6Frame::udp(OUTSIDE_6, 53, UPLINK_6, 5353, b"answer!");
    let back = answer.translated((OUTSIDE_6, 53), (C1_6, 5353));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &answer, &back);

    let ping = Ipv6Frame::echo(ICMPV6_ECHO_REQUEST, C1_6, OUTSIDE_6, 7);
    let out = ping.translated((UPLINK_6, 7), (OUTSIDE_6, 7));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &ping, &out);
    let pong = Ipv6Frame::echo(ICMPV6_ECHO_REPLY, OUTSIDE_6, UPLINK_6, 7);
    let back = pong.translated((OUTSIDE_6, 7), (C1_6, 7));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &pong, &back);
    assert_eq!(entries6(&dp), 4);

    // C2 pings the same server with the same identifier: it gets another
    // (the one port of the range), and the reply its own back.
    set_nat_ports(&mut dp, 61000, 61000);
    let ping = Ipv6Frame::echo(ICMPV6_ECHO_REQUEST, C2_6, OUTSIDE_6, 7);
    let out = ping.translated((UPLINK_6, 61000), (OUTSIDE_6, 61000));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &ping, &out);
    let pong = Ipv6Frame::echo(ICMPV6_ECHO_REPLY, OUTSIDE_6, UPLINK_6, 61000);
    let back = pong.translated((OUTSIDE_6, 7), (C2_6, 7));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &pong, &back);
    assert_eq!(entries6(&dp), 6);

    // Straight to the container from outside: nobody asked for it, on TC
    // and XDP alike; to the uplink's own address untracked: the host's.
    let probe = Ipv6Frame::udp(OUTSIDE_6, 53, C1_6, 5353, b"x");
    expect_drop6(
        &mut dp,
        programs::FROM_UPLINK,
        &probe,
        DropReason::UnsolicitedInbound,
    );
    assert_eq!(run_xdp(&mut dp, &probe.build()).unwrap().0, XDP_DROP);
    let to_host = Ipv6Frame::udp(OUTSIDE_6, 53, UPLINK_6, 9999, b"x");
    expect_pass6(&mut dp, programs::FROM_UPLINK, &to_host);
    // The host's own connections leave as they are, untracked.
    let own = Ipv6Frame::tcp(UPLINK_6, 33000, OUTSIDE_6, 80, TCP_SYN);
    expect_pass6(&mut dp, programs::TO_UPLINK, &own);
    assert_eq!(entries6(&dp), 6);
}

#[test]
fn a_taken_source_port_is_remapped_into_the_nat_range() {
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    set_nat_ports(&mut dp, 61000, 61000);
    let first = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_SYN);
    let out = first.translated((UPLINK_6, 40000), (OUTSIDE_6, 80));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &first, &out);
    // C2 with the same source port to the same server: the translated
    // tuple is taken, so it gets the one port of the range.
    let second = Ipv6Frame::tcp(C2_6, 40000, OUTSIDE_6, 80, TCP_SYN);
    let out = second.translated((UPLINK_6, 61000), (OUTSIDE_6, 80));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &second, &out);
    let reply = Ipv6Frame::tcp(OUTSIDE_6, 80, UPLINK_6, 61000, TCP_SYN | TCP_ACK);
    let back = reply.translated((OUTSIDE_6, 80), (C2_6, 40000));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &reply, &back);
    // Port 81: the range is one port, which C2 takes first; C1 finds its
    // own port and the range taken.
    set_nat_ports(&mut dp, 40000, 40000);
    let taken = Ipv6Frame::tcp(C2_6, 40000, OUTSIDE_6, 81, TCP_SYN);
    let out = taken.translated((UPLINK_6, 40000), (OUTSIDE_6, 81));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &taken, &out);
    let clash = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 81, TCP_SYN);
    expect_drop6(
        &mut dp,
        programs::TO_UPLINK,
        &clash,
        DropReason::NatPortsExhausted,
    );
}

#[test]
fn packet_too_big_about_a_masqueraded_connection_reaches_the_container() {
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    let syn = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_SYN);
    let sent = syn.translated((UPLINK_6, 40000), (OUTSIDE_6, 80));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &syn, &sent);

    let too_big = Ipv6Frame::packet_too_big(ROUTER_6, UPLINK_6, &sent);
    let (verdict, out) = run_classifier(&mut dp, programs::FROM_UPLINK, &too_big.build()).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums6(&out).unwrap();
    let ip6 =
        |at: usize| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&out[at..at + 16]).unwrap());
    let (outer, quote) = (14, 14 + 40 + 8);
    assert_eq!(
        ip6(outer + 8),
        ROUTER_6.parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(
        ip6(outer + 24),
        C1_6.parse::<std::net::Ipv6Addr>().unwrap(),
        "to the container"
    );
    assert_eq!(
        ip6(quote + 8),
        C1_6.parse::<std::net::Ipv6Addr>().unwrap(),
        "quote as it left C1"
    );
    assert_eq!(
        ip6(quote + 24),
        OUTSIDE_6.parse::<std::net::Ipv6Addr>().unwrap()
    );
    assert_eq!(out[quote + 40..quote + 42], 40000u16.to_be_bytes());

    // The other way: C1's UDP socket closed, it answers the server's late
    // datagram with port unreachable, which leaves as the uplink's.
    let query = Ipv6Frame::udp(C1_6, 5353, OUTSIDE_6, 53, b"query");
    let out = query.translated((UPLINK_6, 5353), (OUTSIDE_6, 53));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &query, &out);
    let late = Ipv6Frame::udp(OUTSIDE_6, 53, C1_6, 5353, b"late");
    let error = Ipv6Frame::port_unreachable(C1_6, OUTSIDE_6, &late);
    let (verdict, out) = run_classifier(&mut dp, programs::TO_UPLINK, &error.build()).unwrap();
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums6(&out).unwrap();
    let ip6 = |at: usize| {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&out[at..at + 16]).unwrap()).to_string()
    };
    assert_eq!(ip6(outer + 8), UPLINK_6, "from the uplink's address");
    assert_eq!(ip6(quote + 8), OUTSIDE_6);
    assert_eq!(ip6(quote + 24), UPLINK_6, "the quote as the server sent it");
    assert_eq!(out[quote + 42..quote + 44], 5353u16.to_be_bytes());

    // About no connection of ours: the host's business, untouched.
    let unknown = Ipv6Frame::tcp(UPLINK_6, 1, OUTSIDE_6, 2, TCP_SYN);
    let stray = Ipv6Frame::packet_too_big(ROUTER_6, UPLINK_6, &unknown);
    expect_pass6(&mut dp, programs::FROM_UPLINK, &stray);
}

#[test]
fn without_masquerade_connections_are_tracked_untranslated() {
    let mut dp = nat66(NET_ICC);
    let syn = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_SYN);
    expect_pass6(&mut dp, programs::TO_UPLINK, &syn);
    assert_eq!(entries6(&dp), 2);
    // The reply to the container's own address is part of its connection.
    let syn_ack = Ipv6Frame::tcp(OUTSIDE_6, 80, C1_6, 40000, TCP_SYN | TCP_ACK);
    assert_eq!(run_xdp(&mut dp, &syn_ack.build()).unwrap().0, XDP_PASS);
    expect_pass6(&mut dp, programs::FROM_UPLINK, &syn_ack);
    // An error about it (packet too big on the way) reaches it as it is:
    // path MTU discovery needs it.
    let syn = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_ACK);
    let too_big = Ipv6Frame::packet_too_big(ROUTER_6, C1_6, &syn);
    expect_pass6(&mut dp, programs::FROM_UPLINK, &too_big);
    // The same error sent to another container is none of its business.
    let misdirected = Ipv6Frame::packet_too_big(ROUTER_6, C2_6, &syn);
    expect_drop6(
        &mut dp,
        programs::FROM_UPLINK,
        &misdirected,
        DropReason::UnsolicitedInbound,
    );
    // Anything else to it is not.
    let other = Ipv6Frame::tcp(OUTSIDE_6, 80, C1_6, 40001, TCP_SYN);
    expect_drop6(
        &mut dp,
        programs::FROM_UPLINK,
        &other,
        DropReason::UnsolicitedInbound,
    );
    // Removing the container's address forgets its connections.
    let c1: std::net::Ipv6Addr = C1_6.parse().unwrap();
    assert_eq!(dp.maps.forget_connections6(&[c1]).unwrap(), 2);
}

#[test]
fn what_cannot_be_masqueraded_is_dropped_with_its_reason() {
    // No IPv6 address on the uplink.
    let mut dp = datapath6(NET_ICC | NET_MASQUERADE);
    let syn = Ipv6Frame::tcp(C1_6, 40000, OUTSIDE_6, 80, TCP_SYN);
    expect_drop6(
        &mut dp,
        programs::TO_UPLINK,
        &syn,
        DropReason::NoIpv6Address,
    );
    assert_eq!(entries6(&dp), 0);

    let mut dp = nat66(NET_ICC | NET_INTERNAL);
    expect_drop6(
        &mut dp,
        programs::TO_UPLINK,
        &syn,
        DropReason::InternalNetwork,
    );

    // A fragment: netd does not reassemble, and it cannot leave untranslated.
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    let mut fragment = vec![PROTO_UDP, 0, 0, 1, 0, 0, 0, 9];
    fragment.extend_from_slice(&[0; 16]);
    let fragment = Ipv6Frame::new(C1_6, OUTSIDE_6, 44, fragment);
    expect_drop6(
        &mut dp,
        programs::TO_UPLINK,
        &fragment,
        DropReason::FragmentNeedsNat,
    );
    // A TCP header cut short.
    let cut = Ipv6Frame::new(C1_6, OUTSIDE_6, PROTO_TCP, vec![0; 6]);
    expect_drop6(&mut dp, programs::TO_UPLINK, &cut, DropReason::TruncatedL4);
}

/// Both orders of a NAT clash, as for IPv4 (bpf_nat_clash.rs): a host
/// socket already on the tuple masquerade would take (host first: the
/// container's connection gets a port of the range), and a host connection
/// opened on a tuple masquerade holds (NAT first: the host's moves).
#[test]
fn nat_clashes_with_host_sockets_are_settled_in_both_orders() {
    use std::net::{SocketAddr, TcpListener};
    const NAT_PORT: u16 = 20000;
    let addr = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let segment = |proto: u8, src: (&str, u16), dst: (&str, u16)| match proto {
        PROTO_TCP => Ipv6Frame::tcp(src.0, src.1, dst.0, dst.1, TCP_SYN),
        _ => Ipv6Frame::udp(src.0, src.1, dst.0, dst.1, b"datagram"),
    };
    for proto in [PROTO_TCP, PROTO_UDP] {
        // Host first, in a namespace whose loopback holds both addresses:
        // the test run's packets see its sockets as the host's.
        let mut dp = nat66(NET_ICC | NET_MASQUERADE);
        set_nat_ports(&mut dp, NAT_PORT, NAT_PORT);
        let mut bed = netd_testbed::Testbed::new().unwrap();
        let ns = bed.add_netns("sockets6").unwrap();
        for ip in [UPLINK_6, OUTSIDE_6] {
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip}/128"),
                "dev",
                "lo",
                "nodad",
            ])
            .unwrap();
        }
        ns.enter(|| {
            let _server = TcpListener::bind(addr(OUTSIDE_6, 80)).unwrap();
            let kind = match proto {
                PROTO_TCP => socket2::Type::STREAM,
                _ => socket2::Type::DGRAM,
            };
            let host = socket2::Socket::new(socket2::Domain::IPV6, kind, None).unwrap();
            host.bind(&addr(UPLINK_6, 40000).into()).unwrap();
            host.connect(&addr(OUTSIDE_6, 80).into()).unwrap();
            let from_c1 = segment(proto, (C1_6, 40000), (OUTSIDE_6, 80));
            let out = from_c1.translated((UPLINK_6, NAT_PORT), (OUTSIDE_6, 80));
            expect_rewrite6(&mut dp, programs::TO_UPLINK, &from_c1, &out);
        })
        .unwrap();

        // NAT first: C1 kept port 40000; the host's kernel then picks it.
        let mut dp = nat66(NET_ICC | NET_MASQUERADE);
        set_nat_ports(&mut dp, NAT_PORT, NAT_PORT);
        let from_c1 = segment(proto, (C1_6, 40000), (OUTSIDE_6, 80));
        let out = from_c1.translated((UPLINK_6, 40000), (OUTSIDE_6, 80));
        expect_rewrite6(&mut dp, programs::TO_UPLINK, &from_c1, &out);
        let from_host = segment(proto, (UPLINK_6, 40000), (OUTSIDE_6, 80));
        let moved = from_host.translated((UPLINK_6, NAT_PORT), (OUTSIDE_6, 80));
        expect_rewrite6(&mut dp, programs::TO_UPLINK, &from_host, &moved);
        // Each side gets its own replies.
        let to_c1 = segment(proto, (OUTSIDE_6, 80), (UPLINK_6, 40000));
        let back = to_c1.translated((OUTSIDE_6, 80), (C1_6, 40000));
        expect_rewrite6(&mut dp, programs::FROM_UPLINK, &to_c1, &back);
        let to_host = segment(proto, (OUTSIDE_6, 80), (UPLINK_6, NAT_PORT));
        let back = to_host.translated((OUTSIDE_6, 80), (UPLINK_6, 40000));
        expect_rewrite6(&mut dp, programs::FROM_UPLINK, &to_host, &back);
    }
}

const CLIENT_6: &str = "2001:db8::77";

#[test]
fn a_port_published_on_ipv6_reaches_its_container_and_its_replies_go_back() {
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    let key = publish6_8080(&mut dp, C1_6);
    let syn = Ipv6Frame::tcp(CLIENT_6, 5555, UPLINK_6, 8080, TCP_SYN);
    assert_eq!(run_xdp(&mut dp, &syn.build()).unwrap().0, XDP_PASS);
    let into_c1 = syn.translated((CLIENT_6, 5555), (C1_6, 80));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &syn, &into_c1);
    let rows = dp.maps.conntrack6.entries().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|(_, e)| e.flags & netd_common::CT_DNAT != 0)
    );
    // The client's address is kept; the reply leaves from the host's port.
    let syn_ack = Ipv6Frame::tcp(C1_6, 80, CLIENT_6, 5555, TCP_SYN | TCP_ACK);
    let out = syn_ack.translated((UPLINK_6, 8080), (CLIENT_6, 5555));
    expect_rewrite6(&mut dp, programs::TO_UPLINK, &syn_ack, &out);

    // A container's own address as the source, from outside: forged, on
    // TC and XDP alike, published port or not.
    let forged = Ipv6Frame::tcp(C2_6, 5555, UPLINK_6, 8080, TCP_SYN);
    assert_eq!(run_xdp(&mut dp, &forged.build()).unwrap().0, XDP_DROP);
    expect_drop6(
        &mut dp,
        programs::FROM_UPLINK,
        &forged,
        DropReason::SpoofedSource,
    );
    // Not a SYN: opens nothing (the host's own business, untouched).
    let stray = Ipv6Frame::tcp(CLIENT_6, 6666, UPLINK_6, 8080, TCP_ACK);
    expect_pass6(&mut dp, programs::FROM_UPLINK, &stray);
    // Another port of the host: its own.
    let other = Ipv6Frame::tcp(CLIENT_6, 5555, UPLINK_6, 9090, TCP_SYN);
    expect_pass6(&mut dp, programs::FROM_UPLINK, &other);
    assert_eq!(entries6(&dp), 2);

    // Unpublishing forgets the connections made through the port.
    dp.maps.unpublish6(&[key]).unwrap();
    assert_eq!(entries6(&dp), 0);
    let again = Ipv6Frame::tcp(CLIENT_6, 5556, UPLINK_6, 8080, TCP_SYN);
    expect_pass6(&mut dp, programs::FROM_UPLINK, &again);
}

/// User rules that name no source apply to IPv6 clients of published ports;
/// a rule naming an IPv4 source never matches an IPv6 client.
#[test]
fn user_rules_without_a_source_decide_ipv6_connections_too() {
    let mut dp = nat66(NET_ICC | NET_MASQUERADE);
    publish6_8080(&mut dp, C1_6);
    let syn = |port| Ipv6Frame::tcp(CLIENT_6, port, UPLINK_6, 8080, TCP_SYN);
    set_rules(&mut dp, &[("deny 198.51.100.0/24 tcp 8080", None)]);
    let into_c1 = syn(5555).translated((CLIENT_6, 5555), (C1_6, 80));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &syn(5555), &into_c1);
    set_rules(&mut dp, &[("deny 0.0.0.0/0 tcp 8080", None)]);
    expect_drop6(
        &mut dp,
        programs::FROM_UPLINK,
        &syn(5556),
        DropReason::UserRule,
    );
    set_rules(&mut dp, &[("deny 0.0.0.0/0", Some(2))]);
    let into_c1 = syn(5557).translated((CLIENT_6, 5557), (C1_6, 80));
    expect_rewrite6(&mut dp, programs::FROM_UPLINK, &syn(5557), &into_c1);
    set_rules(&mut dp, &[("deny 0.0.0.0/0", Some(1))]);
    expect_drop6(
        &mut dp,
        programs::FROM_UPLINK,
        &syn(5558),
        DropReason::UserRule,
    );
}
