//! Conntrack under BPF_PROG_TEST_RUN: TCP lifetimes and garbage collection.

use netd::datapath::monotonic_ns;
use netd_common::{
    CT_CLOSING, CT_REPLY, CT_SEEN_REPLY, CT_SNAT, NET_ICC, NET_MASQUERADE, programs, timeouts,
};
use netd_testbed::packet::{Ipv4Frame, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_SYN};
use netd_testbed::testrun::TC_ACT_OK;
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

/// A conntrack table of 8 connections (16 entries).
fn small_table() -> netd::datapath::Datapath {
    let sizes = netd::datapath::TableSizes {
        connections: 8,
        ..Default::default()
    };
    datapath_sized(NET_ICC | NET_MASQUERADE, &sizes)
}

/// C1 opens a connection from `port` to REMOTE:80 (masqueraded, port kept);
/// `answered`: REMOTE's SYN-ACK comes back, so it is established.
fn open(dp: &mut netd::datapath::Datapath, port: u16, answered: bool) -> u32 {
    let (verdict, _) = run(
        dp,
        programs::TO_UPLINK,
        &Ipv4Frame::tcp(C1, port, REMOTE, 80, TCP_SYN),
    );
    if answered && verdict == TC_ACT_OK {
        let syn_ack = Ipv4Frame::tcp(REMOTE, 80, HOST, port, TCP_SYN | TCP_ACK);
        let (verdict, _) = run(dp, programs::FROM_UPLINK, &syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT, "the answer reaches C1");
    }
    verdict
}

fn tracked(dp: &netd::datapath::Datapath, port: u16) -> bool {
    let fwd = key((C1, port), (REMOTE, 80), PROTO_TCP);
    dp.maps
        .conntrack
        .entries()
        .unwrap()
        .iter()
        .any(|(k, _)| *k == fwd)
}

/// A full table makes room the way the kernel's early_drop does: the
/// oldest connection not yet answered goes, established ones stay.
#[test]
fn a_full_table_evicts_an_unanswered_connection_not_an_established_one() {
    let mut dp = small_table();
    assert_eq!(open(&mut dp, 30000, true), TC_ACT_OK);
    for port in 30001..30008 {
        assert_eq!(open(&mut dp, port, false), TC_ACT_OK);
    }
    assert_eq!(dp.maps.conntrack.len(), 16, "full");
    assert_eq!(open(&mut dp, 30100, true), TC_ACT_OK);
    assert!(tracked(&dp, 30100), "the new connection is tracked");
    assert!(tracked(&dp, 30000), "the established connection stays");
    assert!(!tracked(&dp, 30001), "the oldest unanswered one went");
    assert_eq!(dp.maps.counters.conntrack_evictions().unwrap(), 1);
    assert_eq!(dp.maps.conntrack.len(), 16);
    let fill = dp.maps.fill_levels().unwrap();
    let conntrack = fill.iter().find(|m| m.name == "CONNTRACK").unwrap();
    assert_eq!((conntrack.capacity, conntrack.evicted), (16, Some(2)));
}

/// When every connection is established, a new one is refused (counted as
/// `conntrack-full`) and none is evicted; one that starts closing may go.
#[test]
fn a_table_full_of_established_connections_refuses_until_one_closes() {
    let mut dp = small_table();
    for port in 30000..30008 {
        assert_eq!(open(&mut dp, port, true), TC_ACT_OK);
    }
    let syn = Ipv4Frame::tcp(C1, 30100, REMOTE, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::TO_UPLINK,
        &syn,
        netd_common::DropReason::ConntrackFull,
    );
    assert!((30000..30008).all(|port| tracked(&dp, port)));
    assert_eq!(dp.maps.counters.conntrack_evictions().unwrap(), 0);

    let fin = Ipv4Frame::tcp(C1, 30003, REMOTE, 80, TCP_FIN | TCP_ACK);
    assert_eq!(run(&mut dp, programs::TO_UPLINK, &fin).0, TC_ACT_OK);
    assert_eq!(open(&mut dp, 30100, true), TC_ACT_OK);
    assert!(!tracked(&dp, 30003), "the closing connection made room");
    assert!(
        (30000..30008)
            .filter(|&p| p != 30003)
            .all(|port| tracked(&dp, port))
    );
}

/// The table is read in batches (one system call per 4,096 entries): a
/// read of 6,000 entries finds each of them once.
#[test]
fn the_table_is_read_whole_in_batches() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    for port in 20000..23000 {
        let syn = Ipv4Frame::tcp(C1, port, REMOTE, 80, TCP_SYN);
        assert_eq!(run(&mut dp, programs::TO_UPLINK, &syn).0, TC_ACT_OK);
    }
    let entries = dp.maps.conntrack.entries().unwrap();
    assert_eq!(entries.len(), 6000);
    let keys: std::collections::HashSet<_> = entries.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys.len(), 6000, "no entry twice");
    for port in [20000, 21234, 22999] {
        assert!(keys.contains(&key((C1, port), (REMOTE, 80), PROTO_TCP)));
    }
}
