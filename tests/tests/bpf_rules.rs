//! User rules under BPF_PROG_TEST_RUN: first match wins, for published ports
//! and routed sources.

use netd_common::{DropReason, NET_ICC, NET_MASQUERADE, NET_ROUTED, programs};
use netd_testbed::packet::{Ipv4Frame, TCP_ACK, TCP_SYN, ip};
use netd_testbed::unit::*;

/// User rules decide connections opened from outside to a published port
/// before netd does (first match wins, the published port judged as the
/// client sent it); connections already open are not theirs to judge.
#[test]
fn user_rules_decide_new_connections_to_published_ports_first_match_wins() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    publish_tcp_8080(&mut dp, C1);
    let denied = "198.51.100.77";
    set_rules(
        &mut dp,
        &[
            ("allow 198.51.100.0/28 tcp 8080", None),
            ("deny 0.0.0.0/0 tcp 8000-8100", None),
        ],
    );
    expect_published_to_c1(&mut dp, CLIENT, 5555, TCP_SYN);
    let stranger = Ipv4Frame::tcp(denied, 5555, HOST, 8080, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &stranger,
        DropReason::UserRule,
    );
    assert_eq!(
        dp.maps.conntrack.entries().unwrap().len(),
        2,
        "only the allowed connection"
    );

    // A deny for everyone now: the open connection carries on, new ones stop.
    set_rules(&mut dp, &[("deny 0.0.0.0/0", None)]);
    expect_published_to_c1(&mut dp, CLIENT, 5555, TCP_ACK);
    let again = Ipv4Frame::tcp(CLIENT, 5556, HOST, 8080, TCP_SYN);
    expect_drop(&mut dp, programs::FROM_UPLINK, &again, DropReason::UserRule);

    // Scoped rules: another network's, another interface's, another
    // port's do not match; the host's own ports are not the rules' business.
    set_rules(
        &mut dp,
        &[
            ("deny 0.0.0.0/0", Some(2)),
            ("deny 0.0.0.0/0 in eth9", None),
            ("deny 0.0.0.0/0 tcp 9090", None),
            ("deny 0.0.0.0/0 udp 8080", None),
        ],
    );
    expect_published_to_c1(&mut dp, CLIENT, 5557, TCP_SYN);
    set_rules(
        &mut dp,
        &[
            ("deny 198.51.100.0/24 in lo", None),
            ("deny 0.0.0.0/0", Some(1)),
        ],
    );
    let scoped = Ipv4Frame::tcp(CLIENT, 5558, HOST, 8080, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &scoped,
        DropReason::UserRule,
    );
    let to_host = Ipv4Frame::tcp(CLIENT, 5559, HOST, 22, TCP_SYN);
    expect_untouched(&mut dp, programs::FROM_UPLINK, &to_host);

    // No rules: netd's own verdicts, nothing looked up.
    set_rules(&mut dp, &[]);
    assert_eq!(dp.maps.config.get().unwrap().rule_classes, 0);
    expect_published_to_c1(&mut dp, denied, 6000, TCP_SYN);
}

/// Routed sources (a cluster's other pods) are judged by what opens a
/// connection: a SYN or echo request, not the replies to a pod's own.
#[test]
fn user_rules_decide_what_routed_sources_open() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE | NET_ROUTED);
    dp.maps
        .networks
        .insert_routed(1, ip("10.244.0.0"), 16)
        .unwrap();
    set_rules(
        &mut dp,
        &[
            ("allow 10.244.3.0/24", None),
            ("deny 10.244.0.0/16 tcp 22", Some(1)),
        ],
    );
    let ssh = Ipv4Frame::tcp("10.244.2.7", 5555, C1, 22, TCP_SYN);
    expect_drop(&mut dp, programs::FROM_UPLINK, &ssh, DropReason::UserRule);
    for passes in [
        Ipv4Frame::tcp("10.244.3.7", 5555, C1, 22, TCP_SYN),
        Ipv4Frame::tcp("10.244.2.7", 5555, C1, 80, TCP_SYN),
        Ipv4Frame::tcp("10.244.2.7", 22, C1, 40000, TCP_SYN | TCP_ACK),
    ] {
        expect_untouched(&mut dp, programs::FROM_UPLINK, &passes);
    }
    // Unsolicited stays unsolicited: rules only narrow what netd admits.
    set_rules(&mut dp, &[("allow 0.0.0.0/0", None)]);
    let stranger = Ipv4Frame::tcp("10.245.0.9", 5555, C1, 80, TCP_SYN);
    expect_drop(
        &mut dp,
        programs::FROM_UPLINK,
        &stranger,
        DropReason::UnsolicitedInbound,
    );
}
