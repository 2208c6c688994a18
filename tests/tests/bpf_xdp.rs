//! XDP and drop reporting under BPF_PROG_TEST_RUN: the early drops change no
//! verdict, and drop events past the budget are counted, not sent.

use netd_common::{DropReason, NET_ICC, NET_MASQUERADE, NET_ROUTED, programs};
use netd_testbed::unit::*;
use netd_testbed::{
    packet::{self, Ipv4Frame, TCP_ACK, TCP_SYN, ip},
    testrun::{TC_ACT_SHOT, XDP_DROP, XDP_PASS, run_classifier, run_xdp},
};

/// The XDP program never drops what `from_uplink` would deliver: over the
/// same packets (malformed, spoofed, to published ports with and without
/// the user's rules, to container addresses routed and not, tracked flows,
/// ICMP errors, the host's own traffic) every XDP drop is a drop of
/// `from_uplink` with the same reason, XDP never changes a byte, and it
/// does drop each kind of packet it is meant to.
#[test]
fn xdp_drops_only_what_from_uplink_drops_and_changes_nothing() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE | NET_ROUTED);
    dp.maps
        .networks
        .insert_routed(1, ip("10.244.0.0"), 16)
        .unwrap();
    publish_tcp_8080(&mut dp, C1);
    set_rules(
        &mut dp,
        &[
            ("deny 192.0.2.0/24 tcp 8080", None),
            ("deny 10.244.9.0/24", Some(1)),
        ],
    );
    let syn = |src: &str, dst: &str, port: u16| Ipv4Frame::tcp(src, 5555, dst, port, TCP_SYN);
    let mut frames: Vec<(&str, Vec<u8>)> = vec![
        ("published port", syn(CLIENT, HOST, 8080).build()),
        (
            "its next segment",
            Ipv4Frame::tcp(CLIENT, 5555, HOST, 8080, TCP_ACK).build(),
        ),
        (
            "published port, denied source",
            syn("192.0.2.7", HOST, 8080).build(),
        ),
        (
            "published port, SYN-ACK opens nothing",
            Ipv4Frame::tcp("192.0.2.7", 1, HOST, 8080, TCP_SYN | TCP_ACK).build(),
        ),
        ("host's own port", syn("192.0.2.7", HOST, 22).build()),
        ("gateway address", syn(CLIENT, "172.18.0.1", 80).build()),
        ("forwarded elsewhere", syn(CLIENT, "192.0.2.99", 80).build()),
        ("container address", syn(CLIENT, C1, 80).build()),
        (
            "container address, UDP",
            Ipv4Frame::udp(CLIENT, 5, C1, 53, b"q").build(),
        ),
        (
            "container address, ping",
            Ipv4Frame::icmp_echo(CLIENT, C1, 7, 1).build(),
        ),
        ("routed pod", syn("10.244.2.7", C1, 80).build()),
        (
            "routed pod, denied by rule",
            syn("10.244.9.7", C1, 80).build(),
        ),
        (
            "routed pod, reply",
            Ipv4Frame::tcp("10.244.9.7", 80, C1, 4000, TCP_SYN | TCP_ACK).build(),
        ),
        ("spoofed container source", syn(C2, HOST, 8080).build()),
        (
            "spoofed loopback source",
            syn("127.0.0.9", HOST, 8080).build(),
        ),
        (
            "loopback destination",
            syn(CLIENT, "127.0.0.1", 8080).build(),
        ),
        (
            "ICMP error to a container",
            icmp_error(CLIENT, C1, 3, 4, &syn(C1, CLIENT, 80)).build(),
        ),
        ("ARP", packet::arp_request([2, 0, 0, 0, 0, 9], CLIENT, HOST)),
    ];
    let mut fragment = Ipv4Frame::tcp(CLIENT, 5556, HOST, 8080, TCP_SYN);
    fragment.frag = 0x2000;
    frames.push(("fragment to a published port", fragment.build()));
    let mut later = Ipv4Frame::udp(CLIENT, 5, C1, 53, b"xxxxxxxx");
    later.frag = 0x0002;
    frames.push(("later fragment to a container", later.build()));
    let tcp = syn(CLIENT, HOST, 8080).build();
    let mut bad_version = tcp.clone();
    bad_version[packet::ETH_LEN] = 0x65;
    frames.push(("IP version 6 in an IPv4 frame", bad_version));
    let mut short_ihl = tcp.clone();
    short_ihl[packet::ETH_LEN] = 0x44;
    frames.push(("IHL below 5", short_ihl));
    let mut total_too_long = tcp.clone();
    total_too_long[packet::ETH_LEN + 2..packet::ETH_LEN + 4]
        .copy_from_slice(&1500u16.to_be_bytes());
    frames.push(("total length past the frame", total_too_long));
    let mut tiny_data_offset = tcp.clone();
    tiny_data_offset[packet::ETH_LEN + packet::IPV4_LEN + 12] = 0x40;
    frames.push(("TCP data offset below 5", tiny_data_offset));
    let mut cut_tcp = tcp[..packet::ETH_LEN + packet::IPV4_LEN + 12].to_vec();
    cut_tcp[packet::ETH_LEN + 2..packet::ETH_LEN + 4].copy_from_slice(&32u16.to_be_bytes());
    frames.push(("TCP header cut short", cut_tcp));
    let mut ipv6 = packet::ethernet_header(
        [2, 0, 0, 0, 0, 2],
        [2, 0, 0, 0, 0, 1],
        packet::ETHERTYPE_IPV6,
    );
    ipv6.extend_from_slice(&[0x60; 40]);
    frames.push(("IPv6 payload length past the frame", ipv6));

    let mut xdp_dropped = std::collections::BTreeSet::new();
    for (what, frame) in &frames {
        let before = drop_snapshot(&dp);
        let (xdp_verdict, xdp_out) = run_xdp(&mut dp, frame).unwrap();
        let xdp_reason = dropped_since(&dp, &before);
        assert_eq!(&xdp_out, frame, "{what}: XDP changed the frame");
        let before = drop_snapshot(&dp);
        let (tc_verdict, _) = run_classifier(&mut dp, programs::FROM_UPLINK, frame).unwrap();
        let tc_reason = dropped_since(&dp, &before);
        match xdp_verdict {
            XDP_DROP => {
                assert_eq!(
                    tc_verdict, TC_ACT_SHOT,
                    "{what}: XDP dropped what TC passes"
                );
                assert_eq!(xdp_reason, tc_reason, "{what}: a drop for another reason");
                xdp_dropped.insert(xdp_reason.unwrap().label());
            }
            XDP_PASS => assert_eq!(xdp_reason, None, "{what}"),
            other => panic!("{what}: XDP verdict {other}"),
        }
    }
    let expected = [
        "bad-ipv4-header",
        "bad-ipv6-header",
        "fragment-needs-nat",
        "loopback-from-outside",
        "spoofed-source",
        "truncated-l4",
        "unsolicited-inbound",
        "user-rule",
    ];
    assert_eq!(
        xdp_dropped,
        expected.into_iter().collect(),
        "what XDP drops early"
    );
}

/// Drop events are budgeted per CPU (`DROP_EVENTS_PER_WINDOW` a window):
/// past the budget a drop is counted but sends no event, and the next event
/// sent says how many were left out. So every drop is an event or in some
/// event's `suppressed`.
#[test]
fn drop_events_past_the_budget_are_counted_not_sent() {
    use netd_common::{HOOK_TC, sizes};
    use std::time::{Duration, Instant};
    const BURST: u32 = 1000;
    // Both runs on one CPU: the budget is per CPU.
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    let mut events = dp.take_drop_events().unwrap();
    let mut next_batch = || {
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), events.next_batch()).await
            })
            .expect("drop events within 5 s")
            .expect("the ring is readable")
    };
    // Unsolicited from outside to a container address: dropped.
    let frame = Ipv4Frame::tcp(REMOTE, 40000, C1, 80, TCP_SYN).build();
    let reason = DropReason::UnsolicitedInbound;

    let started = Instant::now();
    let verdict = netd_testbed::testrun::run_classifier_repeated(
        &mut dp,
        programs::FROM_UPLINK,
        &frame,
        BURST,
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(drops(&dp, reason), u64::from(BURST), "every drop counted");
    let burst = next_batch();
    let window = Duration::from_nanos(sizes::DROP_EVENTS_WINDOW_NS);
    let windows = took.as_nanos() / window.as_nanos() + 2;
    let budget = sizes::DROP_EVENTS_PER_WINDOW as usize;
    assert!(
        burst.len() >= budget && burst.len() <= budget * windows as usize,
        "{} events for {BURST} drops in {took:?}",
        burst.len()
    );
    assert_eq!(burst[0].suppressed, 0, "a fresh budget left nothing out");
    for event in &burst {
        assert_eq!(
            (event.reason, event.hook, event.src, event.dst),
            (reason as u32, HOOK_TC, ip(REMOTE).octets(), ip(C1).octets())
        );
    }

    // The budget's time base: a window later, the next drop sends an event
    // that accounts for the ones left out.
    std::thread::sleep(window * 2);
    netd_testbed::testrun::run_classifier_repeated(&mut dp, programs::FROM_UPLINK, &frame, 1)
        .unwrap();
    let last = next_batch();
    assert_eq!(last.len(), 1, "{last:?}");
    let reported: u32 = burst.iter().chain(&last).map(|e| e.suppressed).sum();
    assert!(last[0].suppressed > 0, "the burst went past the budget");
    assert_eq!(
        burst.len() as u32 + reported,
        BURST,
        "each drop of the burst is an event or counted in a later one"
    );
}
