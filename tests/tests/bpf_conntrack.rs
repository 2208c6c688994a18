//! Conntrack under BPF_PROG_TEST_RUN: TCP lifetimes and garbage collection.

use netd::datapath::monotonic_ns;
use netd_common::{
    CT_CLOSING, CT_REPLY, CT_SEEN_REPLY, CT_SNAT, NET_ICC, NET_MASQUERADE, programs, timeouts,
};
use netd_testbed::packet::{Ipv4Frame, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_SYN};
use netd_testbed::unit::*;

#[test]
fn tcp_close_shortens_lifetime_and_a_new_syn_starts_over() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let fwd = key((C1, 40000), (REMOTE, 80), PROTO_TCP);
    run(
        &mut dp,
        programs::TO_UPLINK,
        &Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN),
    );
    run(
        &mut dp,
        programs::FROM_UPLINK,
        &Ipv4Frame::tcp(REMOTE, 80, HOST, 40000, TCP_SYN | TCP_ACK),
    );
    run(
        &mut dp,
        programs::TO_UPLINK,
        &Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_FIN | TCP_ACK),
    );
    let now = monotonic_ns();
    for k in [fwd, key((REMOTE, 80), (HOST, 40000), PROTO_TCP)] {
        let e = entry(&dp, k);
        assert_ne!(e.flags & CT_CLOSING, 0);
        assert!(e.expires_ns <= now + timeouts::TCP_CLOSING);
    }
    // The same tuple reused for a new connection is tracked afresh, with
    // the same translation: both entries back to a just-opened connection.
    let syn = Ipv4Frame::tcp(C1, 40000, REMOTE, 80, TCP_SYN);
    expect_rewrite(
        &mut dp,
        programs::TO_UPLINK,
        &syn,
        &with_addrs(&syn, (HOST, 40000), (REMOTE, 80)),
    );
    let now = monotonic_ns();
    let reply = key((REMOTE, 80), (HOST, 40000), PROTO_TCP);
    for (k, flags) in [(fwd, CT_SNAT), (reply, CT_SNAT | CT_REPLY)] {
        let e = entry(&dp, k);
        assert_eq!(e.flags, flags);
        assert!(e.expires_ns > now + timeouts::TCP_CLOSING);
        assert!(e.expires_ns <= now + timeouts::TCP_SYN);
    }
    assert_eq!(dp.maps.conntrack.entries().unwrap().len(), 2);
    // ... and the answer establishes it again.
    run(
        &mut dp,
        programs::FROM_UPLINK,
        &Ipv4Frame::tcp(REMOTE, 80, HOST, 40000, TCP_SYN | TCP_ACK),
    );
    assert_ne!(entry(&dp, fwd).flags & CT_SEEN_REPLY, 0);
}

#[test]
fn garbage_collection_removes_connections_once_both_sides_expired() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    run(
        &mut dp,
        programs::TO_UPLINK,
        &Ipv4Frame::udp(C1, 5000, REMOTE, 53, b"q"),
    );
    assert_eq!(dp.maps.conntrack.gc(monotonic_ns()).unwrap(), 0);
    assert_eq!(dp.maps.conntrack.entries().unwrap().len(), 2);
    assert_eq!(
        dp.maps
            .conntrack
            .gc(monotonic_ns() + timeouts::UDP + 1_000_000_000)
            .unwrap(),
        2
    );
    assert!(dp.maps.conntrack.entries().unwrap().is_empty());
}

#[test]
fn garbage_collection_spares_a_tuple_reused_since_its_snapshot() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    publish_tcp_8080(&mut dp, C1);
    let syn = Ipv4Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_SYN);
    let fin = Ipv4Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_FIN | TCP_ACK);
    run(&mut dp, programs::FROM_UPLINK, &syn);
    run(&mut dp, programs::FROM_UPLINK, &fin);
    // Closing: expired once TCP_CLOSING has passed, not yet TCP_SYN.
    let later = monotonic_ns() + timeouts::TCP_CLOSING + 1_000_000_000;
    let expired = dp.maps.conntrack.expired(later).unwrap();
    assert_eq!(expired.len(), 1);
    // The client reuses the port (as from TIME_WAIT) before the delete.
    run(&mut dp, programs::FROM_UPLINK, &syn);
    assert_eq!(
        dp.maps
            .conntrack
            .remove_if_expired(&expired, later)
            .unwrap(),
        0
    );
    let forward = entry(&dp, key((CLIENT, 40000), (HOST, 8080), PROTO_TCP));
    assert_eq!(forward.flags & CT_CLOSING, 0);
    assert_eq!(dp.maps.conntrack.entries().unwrap().len(), 2);
    // Left alone, the new connection expires too and goes.
    let much_later = monotonic_ns() + timeouts::TCP_SYN + 1_000_000_000;
    assert_eq!(dp.maps.conntrack.gc(much_later).unwrap(), 2);
    assert!(dp.maps.conntrack.entries().unwrap().is_empty());
}
