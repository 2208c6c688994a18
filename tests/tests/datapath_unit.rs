//! Packet-level proof of the datapath through BPF_PROG_TEST_RUN: crafted
//! frames in, verdict and exact bytes out (the expected frame is built by
//! the harness with its own checksum code), conntrack state checked.

use std::net::Ipv4Addr;

use netd::{
    datapath::{BpfLog, Datapath, monotonic_ns},
    features::{Features, KernelFeatures},
};
use netd_common::{
    Backend, CT_CLOSING, CT_DNAT, CT_REPLY, CT_SEEN_REPLY, CT_SNAT, Config, CtEntry, CtKey,
    DropReason, Endpoint, FASTPATH_MARK, NET_ICC, NET_INTERNAL, NET_MASQUERADE, NET_ROUTED,
    NetworkInfo, PUBLISHED_ON_ADDRESS, PUBLISHED_ON_ALL, PortKey,
    maps::{self, MapDef as _},
    programs, timeouts,
};
use netd_testbed::{
    packet::{self, Ipv4Frame, L4, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_SYN, ip},
    testrun::{
        TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS, run_classifier,
        run_classifier_with_mark, run_xdp,
    },
};

const HOST: &str = "198.51.100.1";
const CLIENT: &str = "198.51.100.2";
const REMOTE: &str = "203.0.113.9";
const C1: &str = "172.18.0.2";
const C2: &str = "172.18.0.3";
const C1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const OTHER_NET_CTR: &str = "172.19.0.2";

fn network(dp: &mut Datapath, subnet: &str, id: u32, flags: u32) {
    let subnet: Ipv4Addr = subnet.parse().unwrap();
    let gateway = Ipv4Addr::from(u32::from(subnet) + 1);
    let gateway_mac = [2, 0, 0, 0, 0xee, id as u8];
    let info = NetworkInfo {
        id,
        flags,
        gateway: gateway.octets(),
        host_ip: [0; 4],
        gateway_mac,
        _pad: [0; 2],
    };
    dp.maps.networks.insert(subnet, 16, info).unwrap();
    dp.maps.networks.insert_local_addr(gateway).unwrap();
}

/// Network 1 = 172.18.0.0/16 with `flags`, network 2 = 172.19.0.0/16;
/// C1 and C2 on network 1 (C1 sends from TEST_RUN_IFINDEX with C1_MAC).
fn datapath(flags: u32) -> Datapath {
    let mut dp = Datapath::load().unwrap();
    configure(&mut dp, flags);
    dp
}

/// What [`datapath`] sets up, on a datapath loaded some other way.
fn configure(dp: &mut Datapath, flags: u32) {
    dp.maps
        .config
        .set(Config {
            masquerade_ip: ip(HOST).octets(),
            nat_port_min: 32768,
            nat_port_max: 65535,
            netns_cookie: 0,
            fast_path: 0, // test runs must never route
            rule_classes: 0,
        })
        .unwrap();
    dp.maps.networks.insert_local_addr(ip(HOST)).unwrap();
    network(dp, "172.18.0.0", 1, flags);
    network(dp, "172.19.0.0", 2, NET_ICC | NET_MASQUERADE);
    for (addr, mac, ifindex) in [(C1, C1_MAC, TEST_RUN_IFINDEX), (C2, [2, 0, 0, 0, 0, 3], 99)] {
        let ep = Endpoint {
            ifindex,
            network_id: 1,
            network_flags: flags,
            mac,
            _pad: [0; 2],
        };
        dp.maps.endpoints.insert(addr.parse().unwrap(), ep).unwrap();
    }
}

/// Publishes TCP port 8080 on every host address to `backend`:80.
fn publish_tcp_8080(dp: &mut Datapath, backend: &str) -> PortKey {
    publish_tcp(dp, [0; 4], 8080, (backend, 80))
}

/// Publishes TCP `host_ip`:`port` (all zero: every host address) to
/// `backend`.
fn publish_tcp(dp: &mut Datapath, host_ip: [u8; 4], port: u16, backend: (&str, u16)) -> PortKey {
    let key = PortKey {
        host_ip,
        port: port.to_be_bytes(),
        proto: PROTO_TCP,
        _pad: 0,
    };
    let backend = Backend {
        ip: ip(backend.0).octets(),
        port: backend.1.to_be_bytes(),
        _pad: [0; 2],
    };
    dp.maps.ports.publish(key, backend).unwrap();
    key
}

/// A SYN from CLIENT:`sport` to `dst`:`dport` goes into C1 at
/// `backend_port`, the client's address kept.
fn expect_syn_into_c1(dp: &mut Datapath, sport: u16, dst: &str, dport: u16, backend_port: u16) {
    let syn = Ipv4Frame::tcp(CLIENT, sport, dst, dport, TCP_SYN);
    expect_into_container(
        dp,
        &syn,
        &with_addrs(&syn, (CLIENT, sport), (C1, backend_port)),
        C1_MAC,
    );
}

fn drops(dp: &Datapath, reason: DropReason) -> u64 {
    dp.maps.counters.drops_of(reason).unwrap()
}

fn run(dp: &mut Datapath, program: &str, frame: &Ipv4Frame) -> (u32, Vec<u8>) {
    let bytes = frame.build();
    packet::verify_checksums(&bytes).unwrap();
    run_classifier(dp, program, &bytes).unwrap()
}

/// Expects `program` to pass `input` rewritten into exactly `expected`.
fn expect_rewrite(dp: &mut Datapath, program: &str, input: &Ipv4Frame, expected: &Ipv4Frame) {
    let (verdict, out) = run(dp, program, input);
    assert_eq!(verdict, TC_ACT_OK, "{program} verdict");
    packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert_eq!(out, expected.build(), "{program} output bytes");
}

const TC_ACT_REDIRECT: u32 = 7;

/// Expects `input` from the uplink to be translated into `translated` and
/// handed straight to the container with `ctr_mac` (gateway MAC as source,
/// one TTL less).
fn expect_into_container(
    dp: &mut Datapath,
    input: &Ipv4Frame,
    translated: &Ipv4Frame,
    ctr_mac: [u8; 6],
) {
    let mut expected = translated.clone();
    expected.dst_mac = ctr_mac;
    expected.src_mac = [2, 0, 0, 0, 0xee, 1];
    expected.ttl -= 1;
    let (verdict, out) = run(dp, programs::FROM_UPLINK, input);
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected into the container");
    packet::verify_checksums(&out).unwrap();
    assert_eq!(out, expected.build(), "from_uplink output bytes");
}

/// Expects `program` to let `input` go on, byte for byte as it came.
fn expect_untouched(dp: &mut Datapath, program: &str, input: &Ipv4Frame) {
    let (verdict, out) = run(dp, program, input);
    assert_eq!(verdict, TC_ACT_OK, "{program} verdict for {input:?}");
    assert_eq!(out, input.build(), "{program} output bytes for {input:?}");
}

fn expect_drop(dp: &mut Datapath, program: &str, input: &Ipv4Frame, reason: DropReason) {
    let before = drops(dp, reason);
    let (verdict, _) = run(dp, program, input);
    assert_eq!(verdict, TC_ACT_SHOT, "{program} verdict for {input:?}");
    assert_eq!(drops(dp, reason), before + 1, "{}", reason.label());
}

fn with_addrs(frame: &Ipv4Frame, src: (&str, u16), dst: (&str, u16)) -> Ipv4Frame {
    let mut f = frame.clone();
    f.src = ip(src.0);
    f.dst = ip(dst.0);
    match &mut f.l4 {
        L4::Tcp {
            src_port, dst_port, ..
        }
        | L4::Udp {
            src_port, dst_port, ..
        } => {
            (*src_port, *dst_port) = (src.1, dst.1);
        }
        // The echo identifier plays the source port's part.
        L4::IcmpEcho { id, .. } => *id = src.1,
        _ => {}
    }
    f
}

fn entry(dp: &Datapath, key: CtKey) -> CtEntry {
    dp.maps
        .conntrack
        .entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no entry {key:?}"))
}

fn key(src: (&str, u16), dst: (&str, u16), proto: u8) -> CtKey {
    CtKey {
        src: ip(src.0).octets(),
        dst: ip(dst.0).octets(),
        src_port: src.1.to_be_bytes(),
        dst_port: dst.1.to_be_bytes(),
        proto,
        _pad: [0; 3],
    }
}

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
    assert!((32768..=65535).contains(&port));
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
        let mut old = Datapath::load_pinned(&dir, &features, BpfLog::Off).unwrap();
        configure(&mut old, NET_ICC | NET_MASQUERADE);
        publish_tcp_8080(&mut old, C1);
    }
    std::fs::remove_file(dir.join("maps").join(maps::PUBLISHED_SCOPES::NAME)).unwrap();
    let mut dp = Datapath::load_pinned(&dir, &features, BpfLog::Off).unwrap();
    assert_eq!(dp.maps.ports.scopes(), PUBLISHED_ON_ALL);
    expect_syn_into_c1(&mut dp, 5555, HOST, 8080, 80);
}

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
fn hairpin_translates_both_ends_and_redirects_into_the_backend() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    publish_tcp_8080(&mut dp, C2);
    let gateway = "172.18.0.1";
    let gateway_mac = [2, 0, 0, 0, 0xee, 1];

    // C1 -> host:8080 becomes gateway -> C2:80, delivered straight to C2.
    let syn = Ipv4Frame::tcp(C1, 40000, HOST, 8080, TCP_SYN);
    let mut expected = with_addrs(&syn, (gateway, 40000), (C2, 80));
    expected.dst_mac = [2, 0, 0, 0, 0, 3];
    expected.src_mac = gateway_mac;
    let (verdict, out) = run(&mut dp, programs::FROM_CONTAINER, &syn);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    packet::verify_checksums(&out).unwrap();
    assert_eq!(out, expected.build());

    // C2's reply to the gateway goes back to C1 as host:8080 -> C1. C2 sends
    // from interface 99, so give the test run a datapath where C2 is "us".
    let reply_key = key((C2, 80), (gateway, 40000), PROTO_TCP);
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
    let mut syn_ack = Ipv4Frame::tcp(C2, 80, gateway, 40000, TCP_SYN | TCP_ACK);
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

/// An ICMP error quoting `quoted` (its IP header + first 8 L4 bytes).
fn icmp_error(src: &str, dst: &str, icmp_type: u8, code: u8, quoted: &Ipv4Frame) -> Ipv4Frame {
    let mut rest = vec![0, 0, 0x05, 0x00]; // next-hop MTU 1280 (frag needed)
    rest.extend_from_slice(&quoted.ip_bytes()[..28]);
    Ipv4Frame::new(
        ip(src),
        ip(dst),
        L4::Icmp {
            icmp_type,
            code,
            rest,
        },
    )
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

/// Expects a TCP packet from `src`:`sport` to the published 8080 to be
/// translated to C1:80 and handed straight to C1.
fn expect_published_to_c1(dp: &mut Datapath, src: &str, sport: u16, flags: u8) {
    let frame = Ipv4Frame::tcp(src, sport, HOST, 8080, flags);
    let translated = with_addrs(&frame, (src, sport), (C1, 80));
    expect_into_container(dp, &frame, &translated, C1_MAC);
}

/// Puts `rules` (in order; each with the ID of the network it names) in
/// force, as the daemon's driver does: compiled into USER_RULES, then
/// their classes turned on in the config.
fn set_rules(dp: &mut Datapath, rules: &[(&str, Option<u32>)]) {
    let active: Vec<netd::rule::ActiveRule> = rules
        .iter()
        .enumerate()
        .map(|(order, (text, network))| netd::rule::ActiveRule {
            order: order as u32,
            rule: parse_rule(text),
            network: network.map(|id| (id, format!("br{id}"))),
        })
        .collect();
    // TEST_RUN_IFINDEX is loopback's.
    let compiled = netd::rule::compile(&active, |name| (name == "lo").then_some(TEST_RUN_IFINDEX));
    dp.maps.rules.sync(&compiled.entries).unwrap();
    let config = Config {
        rule_classes: compiled.classes,
        ..dp.maps.config.get().unwrap()
    };
    dp.maps.config.set(config).unwrap();
}

/// `deny 10.0.0.0/8 tcp 22-23 in lo`: action, source, then optional
/// protocol, port (range) and `in IFACE`.
fn parse_rule(text: &str) -> netd::rule::UserRule {
    use netd::{portspec::Proto, rule::RuleAction};
    let words: Vec<&str> = text.split(' ').collect();
    let mut rule = netd::rule::UserRule {
        action: match words[0] {
            "allow" => RuleAction::Allow,
            _ => RuleAction::Deny,
        },
        source: Some(words[1].parse().unwrap()),
        proto: None,
        ports: None,
        network: None,
        in_interface: None,
    };
    let mut rest = words[2..].iter();
    while let Some(word) = rest.next() {
        match *word {
            "tcp" => rule.proto = Some(Proto::Tcp),
            "udp" => rule.proto = Some(Proto::Udp),
            "in" => rule.in_interface = Some(rest.next().unwrap().to_string()),
            ports => {
                let (a, b) = ports.split_once('-').unwrap_or((ports, ports));
                rule.ports = Some((a.parse().unwrap(), b.parse().unwrap()));
            }
        }
    }
    rule.check().unwrap();
    rule
}

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

/// Every drop reason's count, to see which one a run added.
fn drop_snapshot(dp: &Datapath) -> Vec<u64> {
    DropReason::ALL.iter().map(|r| drops(dp, *r)).collect()
}

/// The reason a run added to the counters (None: nothing dropped).
fn dropped_since(dp: &Datapath, before: &[u64]) -> Option<DropReason> {
    let after = drop_snapshot(dp);
    let grew: Vec<DropReason> = DropReason::ALL
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a > b)
        .map(|(r, _)| *r)
        .collect();
    assert!(grew.len() <= 1, "one run, one drop: {grew:?}");
    grew.first().copied()
}

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
    frames.push(("IPv6", ipv6));

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
