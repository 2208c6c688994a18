//! ICMP under BPF_PROG_TEST_RUN: echo through masquerade, errors about
//! translated connections rewritten inside and out.

use netd_common::{NET_ICC, NET_MASQUERADE, programs};
use netd_testbed::unit::*;
use netd_testbed::{
    packet::{self, Ipv4Frame, L4, TCP_SYN},
    testrun::TC_ACT_OK,
};

#[test]
fn masquerade_translates_icmp_echo_by_identifier() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let ping = Ipv4Frame::icmp_echo(C1, REMOTE, 77, 1);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &ping,
        &with_addrs(&ping, (HOST, 77), (REMOTE, 0)),
    );
    let mut pong = Ipv4Frame::icmp_echo(REMOTE, HOST, 77, 1);
    pong.l4 = L4::IcmpEcho {
        request: false,
        id: 77,
        seq: 1,
        payload: b"netd-ping".to_vec(),
    };
    expect_into_container(
        &mut dp,
        &pong,
        &with_addrs(&pong, (REMOTE, 77), (C1, 77)),
        C1_MAC,
    );

    // The same identifier from another container gets a new one.
    let (verdict, out) = run(
        &mut dp,
        programs::TO_UPLINK,
        &Ipv4Frame::icmp_echo(C2, REMOTE, 77, 1),
    );
    assert_eq!(verdict, TC_ACT_OK);
    packet::verify_checksums(&out).unwrap();
    let l4 = packet::ETH_LEN + packet::IPV4_LEN;
    assert_ne!(u16::from_be_bytes([out[l4 + 4], out[l4 + 5]]), 77);
}

#[test]
fn icmp_errors_about_translated_connections_are_translated_inside_and_out() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    // UDP so the quote carries an L4 checksum that must follow the rewrite.
    let udp = Ipv4Frame::udp(C1, 5000, REMOTE, 53, b"query");
    run(&mut dp, programs::TO_UPLINK, &udp);
    let sent = with_addrs(&udp, (HOST, 5000), (REMOTE, 53));
    let router = "198.51.100.254";
    for (icmp_type, code) in [(3, 4), (11, 0)] {
        let error = icmp_error(router, HOST, icmp_type, code, &sent);
        let expected = icmp_error(router, C1, icmp_type, code, &udp);
        expect_rewrite(&mut dp, programs::FROM_UPLINK, &error, &expected);
    }
    // TCP (the quote ends before the TCP checksum) through a published port:
    // the container's own error about a reply it sent.
    publish_tcp_8080(&mut dp, C1);
    let syn = Ipv4Frame::tcp(CLIENT, 5555, HOST, 8080, TCP_SYN);
    run(&mut dp, programs::FROM_UPLINK, &syn);
    let arrived = with_addrs(&syn, (CLIENT, 5555), (C1, 80));
    let error = icmp_error(C1, CLIENT, 3, 3, &arrived);
    let expected = icmp_error(HOST, CLIENT, 3, 3, &syn);
    expect_rewrite(&mut dp, programs::TO_UPLINK, &error, &expected);

    // An error about a connection netd does not know passes untouched.
    let stray = icmp_error(router, HOST, 3, 1, &Ipv4Frame::udp(HOST, 1, REMOTE, 2, b""));
    expect_untouched(&mut dp, programs::FROM_UPLINK, &stray);
}
