//! The `from_container` program: verdicts and counters, first packet by
//! packet through BPF_PROG_TEST_RUN, then on real traffic between namespaces.

use std::net::SocketAddr;

use anyhow::Result;
use netd::datapath::Datapath;
use netd_common::{
    DropReason, Endpoint, NET_ICC, NET_MASQUERADE, PacketCounter, TrafficClass, programs,
};
use netd_testbed::{
    Testbed,
    packet::{self, ETHERTYPE_IPV6, Ipv4Frame, L4, TCP_SYN},
    probe::{self, EchoServer},
    testrun::{TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, XDP_DROP, run_classifier, run_xdp},
};

/// A datapath that knows the crafted frames' sender (172.17.0.2,
/// 02:00:00:00:00:01), so anti-spoofing lets them through.
fn datapath_with_sender() -> Datapath {
    let mut dp = Datapath::load().unwrap();
    let endpoint = Endpoint {
        ifindex: TEST_RUN_IFINDEX,
        network_id: 1,
        network_flags: NET_ICC | NET_MASQUERADE,
        mac: [2, 0, 0, 0, 0, 1],
        _pad: [0; 2],
    };
    dp.maps
        .endpoints
        .insert("172.17.0.2".parse().unwrap(), endpoint)
        .unwrap();
    dp
}

fn traffic(dp: &Datapath, class: TrafficClass) -> PacketCounter {
    dp.maps.counters.traffic_of(class).unwrap()
}

fn drops(dp: &Datapath, reason: DropReason) -> u64 {
    dp.maps.counters.drops_of(reason).unwrap()
}

/// Feeds `frame` and checks verdict, unchanged bytes and the counter deltas.
fn expect(
    dp: &mut Datapath,
    frame: &[u8],
    verdict: u32,
    class: Option<TrafficClass>,
    drop: Option<DropReason>,
) {
    let before_traffic = dp.maps.counters.traffic().unwrap();
    let before_drops = dp.maps.counters.drops().unwrap();
    let before_by_interface = dp.maps.counters.drops_by_interface().unwrap();
    let (got, out) = run_classifier(dp, programs::FROM_CONTAINER, frame)
        .unwrap_or_else(|e| panic!("test run of {} bytes: {e:#}", frame.len()));
    assert_eq!(got, verdict, "verdict for frame {frame:02x?}");
    assert_eq!(out, frame, "the counting program must not change a byte");
    for (i, (c, before)) in before_traffic.iter().enumerate() {
        let after = dp.maps.counters.traffic().unwrap()[i].1;
        let want = if Some(*c) == class {
            PacketCounter {
                packets: before.packets + 1,
                bytes: before.bytes + frame.len() as u64,
            }
        } else {
            *before
        };
        assert_eq!(after, want, "traffic counter {}", c.label());
    }
    for (i, (r, before)) in before_drops.iter().enumerate() {
        let after = dp.maps.counters.drops().unwrap()[i].1;
        let want = before + u64::from(Some(*r) == drop);
        assert_eq!(after, want, "drop counter {}", r.label());
    }
    // The same drop, counted once more on the interface it came in by.
    let on_interface = |counts: &[(u32, DropReason, u64)], reason| {
        counts
            .iter()
            .filter(|(ifindex, r, _)| *ifindex == TEST_RUN_IFINDEX && *r == reason)
            .map(|(_, _, n)| n)
            .sum::<u64>()
    };
    let after_by_interface = dp.maps.counters.drops_by_interface().unwrap();
    for reason in DropReason::ALL {
        let before = on_interface(&before_by_interface, *reason);
        let want = before + u64::from(Some(*reason) == drop);
        assert_eq!(
            on_interface(&after_by_interface, *reason),
            want,
            "drops on if{TEST_RUN_IFINDEX}, {}",
            reason.label()
        );
    }
}

#[test]
fn well_formed_packets_pass_and_are_counted_by_class() {
    let mut dp = datapath_with_sender();
    let tcp = Ipv4Frame::tcp("172.17.0.2", 40000, "192.0.2.1", 80, TCP_SYN).build();
    let udp = Ipv4Frame::udp("172.17.0.2", 40000, "192.0.2.1", 53, b"query").build();
    let icmp = Ipv4Frame::icmp_echo("172.17.0.2", "192.0.2.1", 1, 1).build();
    let gre = Ipv4Frame::new(
        packet::ip("172.17.0.2"),
        packet::ip("192.0.2.1"),
        L4::Raw {
            proto: 47,
            payload: vec![0; 8],
        },
    )
    .build();
    let arp = packet::arp_request([2, 0, 0, 0, 0, 1], "172.17.0.2", "172.17.0.1");
    for frame in [&tcp, &udp, &icmp] {
        packet::verify_checksums(frame).unwrap();
    }
    expect(&mut dp, &tcp, TC_ACT_OK, Some(TrafficClass::Tcp), None);
    expect(&mut dp, &udp, TC_ACT_OK, Some(TrafficClass::Udp), None);
    expect(&mut dp, &icmp, TC_ACT_OK, Some(TrafficClass::Icmp), None);
    expect(
        &mut dp,
        &gre,
        TC_ACT_OK,
        Some(TrafficClass::OtherIpv4),
        None,
    );
    expect(&mut dp, &arp, TC_ACT_OK, Some(TrafficClass::Arp), None);
}

/// The uplink programs count their drops by interface in a per-CPU slot
/// array, the other programs in a hash: the same interface and reason in
/// both read back as one row with the sum.
#[test]
fn drops_by_interface_add_up_across_the_uplink_slots_and_the_hash() {
    let mut dp = datapath_with_sender();
    // From outside with a container's source: forged, on either uplink hook.
    let forged = Ipv4Frame::tcp("172.17.0.2", 40000, "192.0.2.1", 80, TCP_SYN).build();
    for _ in 0..3 {
        let (verdict, _) = run_classifier(&mut dp, programs::FROM_UPLINK, &forged).unwrap();
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    for _ in 0..2 {
        assert_eq!(run_xdp(&mut dp, &forged).unwrap().0, XDP_DROP);
    }
    // From the container side with an address that is not the sender's.
    let spoofed = Ipv4Frame::tcp("172.17.0.99", 40000, "192.0.2.1", 80, TCP_SYN).build();
    let (verdict, _) = run_classifier(&mut dp, programs::FROM_CONTAINER, &spoofed).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT);

    let rows: Vec<_> = dp
        .maps
        .counters
        .drops_by_interface()
        .unwrap()
        .into_iter()
        .filter(|(ifindex, _, _)| *ifindex == TEST_RUN_IFINDEX)
        .collect();
    assert_eq!(
        rows,
        vec![(TEST_RUN_IFINDEX, DropReason::SpoofedSource, 6)],
        "one row per (interface, reason)"
    );
    assert_eq!(drops(&dp, DropReason::SpoofedSource), 6);
}

/// An uplink that goes frees its slot of the uplinks' drop array for the
/// next one, and its counts stay, moved to the hash.
#[test]
fn a_gone_uplinks_drop_slot_is_freed_and_its_counts_kept() {
    let mut dp = datapath_with_sender();
    let forged = Ipv4Frame::tcp("172.17.0.2", 40000, "192.0.2.1", 80, TCP_SYN).build();
    let drop_forged = |dp: &mut Datapath, times: usize| {
        for _ in 0..times {
            assert_eq!(run_xdp(dp, &forged).unwrap().0, XDP_DROP);
        }
    };
    let rows = |dp: &Datapath| -> Vec<_> {
        dp.maps
            .counters
            .drops_by_interface()
            .unwrap()
            .into_iter()
            .filter(|(ifindex, _, _)| *ifindex == TEST_RUN_IFINDEX)
            .collect()
    };
    drop_forged(&mut dp, 4);
    assert_eq!(
        dp.maps
            .counters
            .free_uplink_drop_slots(&[TEST_RUN_IFINDEX])
            .unwrap(),
        0,
        "a current uplink keeps its slot"
    );
    let freed = dp.maps.counters.free_uplink_drop_slots(&[]).unwrap();
    assert!(
        freed >= 1,
        "the gone uplink's slot freed on each CPU it used"
    );
    assert_eq!(
        rows(&dp),
        vec![(TEST_RUN_IFINDEX, DropReason::SpoofedSource, 4)],
        "its counts kept"
    );
    assert_eq!(
        dp.maps.counters.free_uplink_drop_slots(&[]).unwrap(),
        0,
        "freed once"
    );
    // The slot is taken again and the totals carry on from the hash.
    drop_forged(&mut dp, 3);
    assert_eq!(
        rows(&dp),
        vec![(TEST_RUN_IFINDEX, DropReason::SpoofedSource, 7)]
    );
    assert!(dp.maps.counters.free_uplink_drop_slots(&[]).unwrap() >= 1);
    assert_eq!(
        rows(&dp),
        vec![(TEST_RUN_IFINDEX, DropReason::SpoofedSource, 7)],
        "added to what the hash held"
    );
}

#[test]
fn ip_options_and_fragments_are_parsed_deterministically() {
    let mut dp = datapath_with_sender();
    // Header with 4 bytes of options (NOP x3 + EOL): L4 still found after them.
    let mut with_options = Ipv4Frame::udp("172.17.0.2", 1, "192.0.2.1", 2, b"x");
    with_options.options = vec![1, 1, 1, 0];
    expect(
        &mut dp,
        &with_options.build(),
        TC_ACT_OK,
        Some(TrafficClass::Udp),
        None,
    );
    // A non-first fragment has no L4 header: counted as other IPv4.
    let mut later_fragment = Ipv4Frame::udp("172.17.0.2", 1, "192.0.2.1", 2, b"xxxxxxxx");
    later_fragment.frag = 0x0001;
    expect(
        &mut dp,
        &later_fragment.build(),
        TC_ACT_OK,
        Some(TrafficClass::OtherIpv4),
        None,
    );
}

#[test]
fn malformed_frames_are_dropped_with_their_reason() {
    let mut dp = datapath_with_sender();
    let tcp = Ipv4Frame::tcp("172.17.0.2", 40000, "192.0.2.1", 80, TCP_SYN).build();

    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header and
    // IPv4 frames shorter than an IPv4 header (EINVAL), so TruncatedIpv4 is
    // proven on a real wire in `counts_real_traffic_between_namespaces`;
    // TC never sees a frame shorter than an Ethernet header.
    let mut lldp = packet::ethernet_header([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0x88cc);
    lldp.extend_from_slice(&[0x60; 40]);
    expect(
        &mut dp,
        &lldp,
        TC_ACT_SHOT,
        None,
        Some(DropReason::UnsupportedEthertype),
    );
    // An IPv6 header whose payload length runs past the frame.
    let mut ipv6 = packet::ethernet_header([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], ETHERTYPE_IPV6);
    ipv6.extend_from_slice(&[0x60; 40]);
    expect(
        &mut dp,
        &ipv6,
        TC_ACT_SHOT,
        None,
        Some(DropReason::BadIpv6Header),
    );

    let mut bad_version = tcp.clone();
    bad_version[packet::ETH_LEN] = 0x65;
    expect(
        &mut dp,
        &bad_version,
        TC_ACT_SHOT,
        None,
        Some(DropReason::BadIpv4Header),
    );

    let mut short_ihl = tcp.clone();
    short_ihl[packet::ETH_LEN] = 0x44;
    expect(
        &mut dp,
        &short_ihl,
        TC_ACT_SHOT,
        None,
        Some(DropReason::BadIpv4Header),
    );

    let mut total_too_long = tcp.clone();
    total_too_long[packet::ETH_LEN + 2..packet::ETH_LEN + 4]
        .copy_from_slice(&1500u16.to_be_bytes());
    expect(
        &mut dp,
        &total_too_long,
        TC_ACT_SHOT,
        None,
        Some(DropReason::BadIpv4Header),
    );

    let cut_tcp = tcp[..packet::ETH_LEN + packet::IPV4_LEN + 12].to_vec();
    let mut cut_tcp_fixed_len = cut_tcp.clone();
    cut_tcp_fixed_len[packet::ETH_LEN + 2..packet::ETH_LEN + 4]
        .copy_from_slice(&32u16.to_be_bytes());
    expect(
        &mut dp,
        &cut_tcp_fixed_len,
        TC_ACT_SHOT,
        None,
        Some(DropReason::TruncatedL4),
    );

    let mut tiny_data_offset = tcp.clone();
    tiny_data_offset[packet::ETH_LEN + packet::IPV4_LEN + 12] = 0x40;
    expect(
        &mut dp,
        &tiny_data_offset,
        TC_ACT_SHOT,
        None,
        Some(DropReason::TruncatedL4),
    );

    // UDP header longer than what the IP total length leaves for it.
    let udp = Ipv4Frame::udp("172.17.0.2", 1, "192.0.2.1", 2, b"").build();
    let mut udp_short_total = udp.clone();
    udp_short_total[packet::ETH_LEN + 2..packet::ETH_LEN + 4].copy_from_slice(&24u16.to_be_bytes());
    expect(
        &mut dp,
        &udp_short_total,
        TC_ACT_SHOT,
        None,
        Some(DropReason::TruncatedL4),
    );
}

/// Real packets: a container namespace on a bridge in a host namespace, the
/// program on the host side of its veth, traffic of every class.
#[test]
fn counts_real_traffic_between_namespaces() -> Result<()> {
    let mut bed = Testbed::new()?;
    let host = bed.add_netns("host")?;
    let bridge = bed.ifname("br");
    host.ip(&["link", "add", &bridge, "type", "bridge"])?;
    host.ip(&["addr", "add", "10.200.0.1/24", "dev", &bridge])?;
    host.ip(&["link", "set", &bridge, "up"])?;
    let host_if = bed.ifname("vc");
    let ctr = bed.add_container(
        "ctr",
        &host,
        &bridge,
        &host_if,
        "10.200.0.2/24",
        "10.200.0.1",
    )?;

    let mut dp = Datapath::load()?;
    let endpoint = Endpoint {
        ifindex: host.ifindex(&host_if)?,
        network_id: 1,
        network_flags: NET_ICC | NET_MASQUERADE,
        mac: ctr.mac("eth0")?,
        _pad: [0; 2],
    };
    dp.maps.endpoints.insert("10.200.0.2".parse()?, endpoint)?;
    host.enter(|| dp.attach_from_container(&host_if))??;

    let tcp_server = EchoServer::tcp(&host, "10.200.0.1:7000".parse()?, "tcp:")?;
    let udp_server = EchoServer::udp(&host, "10.200.0.1:7001".parse()?, "udp:")?;
    assert!(
        probe::ping(&ctr, "10.200.0.1", 3)?,
        "ping through the program"
    );
    let server: SocketAddr = "10.200.0.1:7000".parse()?;
    assert_eq!(probe::tcp_request(&ctr, server, b"hello")?, b"tcp:hello");
    assert_eq!(
        probe::udp_request(&ctr, "10.200.0.1:7001".parse()?, b"hi")?,
        b"udp:hi"
    );

    let icmp = traffic(&dp, TrafficClass::Icmp);
    assert!(icmp.packets >= 3 && icmp.bytes >= 3 * 98, "icmp: {icmp:?}");
    // SYN, ACK, data, FIN at least.
    assert!(traffic(&dp, TrafficClass::Tcp).packets >= 4);
    assert!(traffic(&dp, TrafficClass::Udp).packets >= 1);
    assert!(traffic(&dp, TrafficClass::Arp).packets >= 1);

    // Malformed frames on the real wire are dropped and counted.
    let frame = Ipv4Frame::tcp("10.200.0.2", 1, "10.200.0.1", 7000, TCP_SYN).build();
    let mut bad_header = frame.clone();
    bad_header[packet::ETH_LEN] = 0x43;
    let cut_in_ip_header = frame[..packet::ETH_LEN + 10].to_vec();
    for (broken, reason) in [
        (bad_header, DropReason::BadIpv4Header),
        (cut_in_ip_header, DropReason::TruncatedIpv4),
    ] {
        let before = drops(&dp, reason);
        probe::send_raw_frame(&ctr, "eth0", &broken)?;
        let deadline = std::time::Instant::now() + probe::PROBE_TIMEOUT;
        while drops(&dp, reason) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(drops(&dp, reason), before + 1, "{}", reason.label());
    }
    drop((tcp_server, udp_server));
    Ok(())
}

/// BPF log statements cost nothing when off: the loader freezes the log
/// level in .rodata and the verifier removes every statement above it, so
/// the programs netd runs by default are shorter than with `--bpf-log trace`.
#[test]
fn bpf_logs_are_removed_by_the_verifier_when_off() -> Result<()> {
    use netd::{
        datapath::BpfLog,
        features::{Features, KernelFeatures},
    };
    let features = Features::probe(KernelFeatures::Auto)?;
    let size = |log: BpfLog, program: &str| -> Result<u32> {
        let mut dp = Datapath::load_with_log(&features, log)?;
        let info = dp.classifier(program)?.info()?;
        Ok(info.size_translated().expect("a loaded program has a size"))
    };
    // The uplink programs log their drops at debug; to_uplink also logs
    // each fast-path packet at trace (from_container has no stack to spare).
    for program in [programs::FROM_UPLINK, programs::TO_UPLINK] {
        let (off, debug, trace) = (
            size(BpfLog::Off, program)?,
            size(BpfLog::Debug, program)?,
            size(BpfLog::Trace, program)?,
        );
        assert!(off < debug, "{program}: off {off} B, debug {debug} B");
        if program == programs::TO_UPLINK {
            assert!(debug < trace, "{program}: debug {debug} B, trace {trace} B");
        }
    }
    Ok(())
}
