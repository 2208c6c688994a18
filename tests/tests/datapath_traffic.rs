//! Docker's bridge-network behaviour from netd's BPF programs, proven with
//! real TCP, UDP and ICMP between namespaces (no daemon, no netfilter rules).

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use netd::features::KernelFeatures;
use netd_common::{DropReason, NET_ICC, NET_INTERNAL, NET_MASQUERADE, TrafficClass};
use netd_testbed::{
    Netns,
    datapath_host::{DatapathHost, HOST_SECOND_IP, HOST_UPLINK_IP, OUTSIDE_IP},
    packet::{self, Ipv4Frame, PROTO_TCP, PROTO_UDP, TCP_SYN},
    probe::{self, EchoServer},
};

const DEFAULT: u32 = NET_ICC | NET_MASQUERADE;

fn drops(host: &DatapathHost, reason: DropReason) -> u64 {
    host.datapath.maps.counters.drops_of(reason).unwrap()
}

/// TCP and UDP echo servers on 172.18.0.2 (ports 80 and 53, answering
/// "c1 saw <client>:"), published on every host address as 8080 and 5353.
fn serve_and_publish(h: &mut DatapathHost, c1: &Netns) -> Result<[EchoServer; 2]> {
    let tcp = EchoServer::tcp(c1, addr("172.18.0.2:80"), "c1 saw {peer}:")?;
    let udp = EchoServer::udp(c1, addr("172.18.0.2:53"), "c1 saw {peer}:")?;
    h.publish("0.0.0.0", 8080, PROTO_TCP, "172.18.0.2", 80)?;
    h.publish("0.0.0.0", 5353, PROTO_UDP, "172.18.0.2", 53)?;
    Ok([tcp, udp])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn networks_are_isolated_but_reach_the_host() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let a = h.add_network("172.18.0.0/16", DEFAULT)?;
    let b = h.add_network("172.19.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&a, "172.18.0.2", DEFAULT)?;
    let c2 = h.add_container(&a, "172.18.0.3", DEFAULT)?;
    let c3 = h.add_container(&b, "172.19.0.2", DEFAULT)?;

    assert!(probe::ping(&c1, "172.18.0.3", 1)?, "same network");
    assert!(probe::ping(&c1, "172.18.0.1", 1)?, "own gateway");
    assert!(
        probe::ping(&c1, "172.19.0.1", 1)?,
        "the host on another bridge's address"
    );
    assert!(
        probe::ping(&c1, HOST_UPLINK_IP, 1)?,
        "the host's uplink address"
    );
    let before = drops(&h, DropReason::NetworkIsolation);
    assert!(!probe::ping(&c1, "172.19.0.2", 1)?, "other network");
    assert!(
        !probe::ping(&c3, "172.18.0.2", 1)?,
        "other network, other way"
    );
    let _server = EchoServer::tcp(&c2, addr("172.18.0.3:80"), "c2")?;
    assert!(probe::tcp_request(&c3, addr("172.18.0.3:80"), b"x").is_err());
    assert!(drops(&h, DropReason::NetworkIsolation) >= before + 3);
    Ok(())
}

#[test]
fn icc_false_blocks_neighbours_but_not_the_way_out() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let flags = NET_MASQUERADE; // icc off
    let net = h.add_network("172.18.0.0/16", flags)?;
    let c1 = h.add_container(&net, "172.18.0.2", flags)?;
    let c2 = h.add_container(&net, "172.18.0.3", flags)?;
    let before = drops(&h, DropReason::IccDisabled);
    assert!(!probe::ping(&c1, "172.18.0.3", 1)?);
    assert!(drops(&h, DropReason::IccDisabled) > before);
    assert!(probe::ping(&c1, "172.18.0.1", 1)?, "gateway");
    assert!(
        probe::ping(&c2, OUTSIDE_IP, 1)?,
        "outside through masquerade"
    );
    Ok(())
}

#[test]
fn internal_network_talks_inside_only() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let flags = NET_ICC | NET_INTERNAL;
    let net = h.add_network("172.18.0.0/16", flags)?;
    let c1 = h.add_container(&net, "172.18.0.2", flags)?;
    let _c2 = h.add_container(&net, "172.18.0.3", flags)?;
    h.route_from_outside("172.18.0.0/16")?;
    assert!(probe::ping(&c1, "172.18.0.3", 1)?);
    let before = drops(&h, DropReason::InternalNetwork);
    assert!(!probe::ping(&c1, OUTSIDE_IP, 1)?);
    assert!(drops(&h, DropReason::InternalNetwork) > before);
    assert!(
        !probe::ping(&h.outside, "172.18.0.2", 1)?,
        "nothing arrives from outside"
    );
    Ok(())
}

#[test]
fn masquerade_rewrites_tcp_udp_and_icmp_to_the_uplink_address() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _tcp = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7000")),
        "saw {peer}:",
    )?;
    let _udp = EchoServer::udp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7001")),
        "saw {peer}:",
    )?;
    let expect = format!("saw {HOST_UPLINK_IP}:hi").into_bytes();
    assert_eq!(
        probe::tcp_request(&c1, addr(&format!("{OUTSIDE_IP}:7000")), b"hi")?,
        expect
    );
    assert_eq!(
        probe::udp_request(&c1, addr(&format!("{OUTSIDE_IP}:7001")), b"hi")?,
        expect
    );
    let icmp_packets = |h: &DatapathHost| -> Result<u64> {
        Ok(h.datapath
            .maps
            .counters
            .traffic_of(TrafficClass::Icmp)?
            .packets)
    };
    let before = icmp_packets(&h)?;
    assert!(probe::ping(&c1, OUTSIDE_IP, 2)?);
    // Each packet is handled, and counted, once: requests by from_container
    // (the fast path marks them, so to_uplink lets them go), replies by
    // from_uplink.
    assert_eq!(icmp_packets(&h)? - before, 4);
    // Both directions of each connection are tracked, translated to the uplink address.
    let entries = h.datapath.maps.conntrack.entries()?;
    let ctr: [u8; 4] = [172, 18, 0, 2];
    let host: [u8; 4] = HOST_UPLINK_IP.parse::<std::net::Ipv4Addr>()?.octets();
    for proto in [PROTO_TCP, PROTO_UDP, packet::PROTO_ICMP] {
        assert!(
            entries
                .iter()
                .any(|(k, e)| k.proto == proto && k.src == ctr && e.xlat.src == host),
            "forward entry for protocol {proto}"
        );
        assert!(
            entries
                .iter()
                .any(|(k, e)| k.proto == proto && k.dst == host && e.xlat.dst == ctr),
            "reply entry for protocol {proto}"
        );
    }
    // Removing the container's endpoint flushes its connections.
    h.datapath.maps.remove_endpoint("172.18.0.2".parse()?)?;
    let left = h.datapath.maps.conntrack.entries()?;
    assert!(
        left.iter()
            .all(|(k, e)| ![k.src, k.dst, e.xlat.src, e.xlat.dst].contains(&ctr))
    );
    Ok(())
}

#[test]
fn without_masquerade_the_outside_sees_the_container_address() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let flags = NET_ICC;
    let net = h.add_network("172.18.0.0/16", flags)?;
    let c1 = h.add_container(&net, "172.18.0.2", flags)?;
    h.route_from_outside("172.18.0.0/16")?;
    let _tcp = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7000")),
        "saw {peer}:",
    )?;
    assert_eq!(
        probe::tcp_request(&c1, addr(&format!("{OUTSIDE_IP}:7000")), b"x")?,
        b"saw 172.18.0.2:x"
    );
    // Replies get in; a connection the outside starts does not.
    let _server = EchoServer::tcp(&c1, addr("172.18.0.2:80"), "c1")?;
    assert!(probe::tcp_request(&h.outside, addr("172.18.0.2:80"), b"x").is_err());
    Ok(())
}

#[test]
fn published_ports_reach_the_container_with_the_real_client_address() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _servers = serve_and_publish(&mut h, &c1)?;
    let expect = format!("c1 saw {OUTSIDE_IP}:q").into_bytes();
    for host_ip in [HOST_UPLINK_IP, HOST_SECOND_IP] {
        assert_eq!(
            probe::tcp_request(&h.outside, addr(&format!("{host_ip}:8080")), b"q")?,
            expect
        );
        assert_eq!(
            probe::udp_request(&h.outside, addr(&format!("{host_ip}:5353")), b"q")?,
            expect
        );
    }
    Ok(())
}

#[test]
fn a_port_published_on_one_host_address_is_not_on_another() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _tcp = EchoServer::tcp(&c1, addr("172.18.0.2:80"), "c1:")?;
    let key = h.publish(HOST_SECOND_IP, 8080, PROTO_TCP, "172.18.0.2", 80)?;
    assert_eq!(
        probe::tcp_request(&h.outside, addr(&format!("{HOST_SECOND_IP}:8080")), b"q")?,
        b"c1:q"
    );
    assert!(probe::tcp_request(&h.outside, addr(&format!("{HOST_UPLINK_IP}:8080")), b"q").is_err());
    // Unpublished: the port is gone and so are its connections.
    h.datapath.maps.unpublish(&[key])?;
    assert!(probe::tcp_request(&h.outside, addr(&format!("{HOST_SECOND_IP}:8080")), b"q").is_err());
    Ok(())
}

#[test]
fn unsolicited_inbound_to_containers_is_dropped() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _tcp = EchoServer::tcp(&c1, addr("172.18.0.2:80"), "c1:")?;
    h.route_from_outside("172.18.0.0/16")?;
    let before = drops(&h, DropReason::UnsolicitedInbound);
    assert!(probe::tcp_request(&h.outside, addr("172.18.0.2:80"), b"q").is_err());
    assert!(!probe::ping(&h.outside, "172.18.0.2", 1)?);
    assert!(drops(&h, DropReason::UnsolicitedInbound) >= before + 2);

    // A frame for 127.0.0.1 from an L2 neighbour (how ports published on
    // 127.0.0.1 leaked before Docker 28) is dropped too.
    let mut frame = Ipv4Frame::tcp(OUTSIDE_IP, 40000, "127.0.0.1", 8080, TCP_SYN);
    frame.dst_mac = h.host.mac(&h.uplink)?;
    frame.src_mac = h.outside.mac("eth0")?;
    let before = drops(&h, DropReason::LoopbackFromOutside);
    probe::send_raw_frame(&h.outside, "eth0", &frame.build())?;
    // The counter moves when the frame has been processed; then exactly one.
    let deadline = std::time::Instant::now() + probe::PROBE_TIMEOUT;
    while drops(&h, DropReason::LoopbackFromOutside) == before
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(drops(&h, DropReason::LoopbackFromOutside), before + 1);
    Ok(())
}

#[test]
fn spoofed_sources_are_dropped() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _c2 = h.add_container(&net, "172.18.0.3", DEFAULT)?;
    c1.ip(&["addr", "add", "172.18.0.99/16", "dev", "eth0"])?;
    let before = drops(&h, DropReason::SpoofedSource);
    let out = c1
        .command("ping")
        .args(["-c", "1", "-W", "1", "-I", "172.18.0.99", "172.18.0.3"])
        .output()?;
    assert!(!out.status.success());
    assert!(drops(&h, DropReason::SpoofedSource) > before);
    Ok(())
}

#[test]
fn flushing_the_host_firewall_changes_nothing() -> Result<()> {
    // Also proves the fast path: with FORWARD's policy at DROP, container
    // traffic only gets through because netd redirects it past netfilter.
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _tcp = EchoServer::tcp(&c1, addr("172.18.0.2:80"), "c1:")?;
    let _out = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7000")),
        "saw {peer}:",
    )?;
    h.publish("0.0.0.0", 8080, PROTO_TCP, "172.18.0.2", 80)?;
    h.host.run("iptables", &["-F"])?;
    h.host.run("iptables", &["-t", "nat", "-F"])?;
    h.host.run("nft", &["flush", "ruleset"])?;
    h.host.run("iptables", &["-P", "FORWARD", "DROP"])?;
    assert_eq!(
        probe::tcp_request(&h.outside, addr(&format!("{HOST_UPLINK_IP}:8080")), b"q")?,
        b"c1:q"
    );
    let expect = format!("saw {HOST_UPLINK_IP}:q").into_bytes();
    assert_eq!(
        probe::tcp_request(&c1, addr(&format!("{OUTSIDE_IP}:7000")), b"q")?,
        expect
    );
    Ok(())
}

#[test]
fn hairpin_reaches_published_ports_from_any_network() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let a = h.add_network("172.18.0.0/16", DEFAULT)?;
    let b = h.add_network("172.19.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&a, "172.18.0.2", DEFAULT)?;
    let c2 = h.add_container(&a, "172.18.0.3", DEFAULT)?;
    let c3 = h.add_container(&b, "172.19.0.2", DEFAULT)?;
    let _servers = serve_and_publish(&mut h, &c1)?;
    // Like Docker's proxy, the server sees its own network's gateway.
    let expect = b"c1 saw 172.18.0.1:q".to_vec();
    for client in [&c2, &c3, &c1] {
        for host_ip in [HOST_UPLINK_IP, "172.18.0.1"] {
            assert_eq!(
                probe::tcp_request(client, addr(&format!("{host_ip}:8080")), b"q")?,
                expect
            );
        }
        assert_eq!(
            probe::udp_request(client, addr(&format!("{HOST_UPLINK_IP}:5353")), b"q")?,
            expect
        );
    }
    Ok(())
}

#[test]
fn path_mtu_discovery_works_through_masquerade() -> Result<()> {
    let mut h = DatapathHost::new()?;
    // A far server behind the outside router, over a 1280-byte MTU hop.
    let far = h.bed.add_netns("far")?;
    h.bed.veth(&h.outside, "eth1", &far, "eth0")?;
    h.outside
        .ip(&["addr", "add", "203.0.113.1/24", "dev", "eth1"])?;
    h.outside.ip(&["link", "set", "eth1", "mtu", "1280"])?;
    h.outside.sysctl("net.ipv4.ip_forward", "1")?;
    far.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
    // The far end keeps MTU 1500, so it advertises a full-size MSS and only
    // ICMP "fragmentation needed" from the router can shrink the packets.
    far.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _sink = EchoServer::tcp_sink(&far, addr("203.0.113.2:7000"))?;
    let size = 1 << 20;
    assert_eq!(
        probe::tcp_upload(&c1, addr("203.0.113.2:7000"), size)?,
        size
    );
    // The router's "fragmentation needed" made it to the container, translated.
    let out = c1.run("ip", &["route", "get", "203.0.113.2"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mtu 1280"),
        "container learned the path MTU"
    );
    Ok(())
}

#[test]
fn the_host_reaches_published_ports_including_on_loopback() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
    let _servers = serve_and_publish(&mut h, &c1)?;
    h.publish("127.0.0.1", 9090, PROTO_TCP, "172.18.0.2", 80)?;
    let expect = b"c1 saw 172.18.0.1:q".to_vec();
    for target in [
        format!("{HOST_UPLINK_IP}:8080"),
        "127.0.0.1:8080".into(),
        "127.0.0.1:9090".into(),
    ] {
        assert_eq!(
            probe::tcp_request(&h.host, addr(&target), b"q")?,
            expect,
            "{target}"
        );
    }
    // The UDP reply shows the address the host sent to (recvmsg4).
    let socket = h.host.enter(|| std::net::UdpSocket::bind("0.0.0.0:0"))??;
    socket.set_read_timeout(Some(probe::PROBE_TIMEOUT))?;
    socket.send_to(b"q", "127.0.0.1:5353")?;
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf)?;
    assert_eq!((&buf[..n], from), (&expect[..], addr("127.0.0.1:5353")));
    // 127.0.0.1-only ports are not on the uplink, from the host or outside.
    assert!(probe::tcp_request(&h.host, addr(&format!("{HOST_UPLINK_IP}:9090")), b"q").is_err());
    assert!(probe::tcp_request(&h.outside, addr(&format!("{HOST_UPLINK_IP}:9090")), b"q").is_err());
    // Other namespaces' sockets are not touched by this host's hooks.
    assert!(probe::tcp_request(&h.outside, addr("127.0.0.1:8080"), b"q").is_err());
    Ok(())
}

/// The fast path out checks each packet against the uplink's MTU, with
/// `bpf_check_mtu` or, in legacy kernel mode, its own length check: a
/// packet that fits leaves by the fast path (counted once), one that does
/// not takes the kernel's path, which tells the container the MTU. The
/// uplink is smaller than the container's link, and the outside end is
/// not, so a wrongly fast-pathed packet would arrive.
#[test]
fn the_fast_path_out_keeps_to_the_uplink_mtu_in_both_kernel_modes() -> Result<()> {
    for wanted in [KernelFeatures::Auto, KernelFeatures::Legacy] {
        let mut h = DatapathHost::with_kernel_features(wanted, 1400)?;
        let net = h.add_network("172.18.0.0/16", DEFAULT)?;
        let c1 = h.add_container(&net, "172.18.0.2", DEFAULT)?;
        let icmp = |h: &DatapathHost| -> Result<u64> {
            Ok(h.datapath
                .maps
                .counters
                .traffic_of(TrafficClass::Icmp)?
                .packets)
        };
        let ping = |size: &str| {
            c1.command("ping")
                .args(["-n", "-q", "-c", "1", "-W", "1", "-M", "do", "-s", size])
                .arg(OUTSIDE_IP)
                .output()
        };
        let before = icmp(&h)?;
        // 1372 + 28 = 1400 bytes: fits.
        assert!(ping("1372")?.status.success(), "{wanted:?}: 1400 bytes");
        assert_eq!(icmp(&h)? - before, 2, "{wanted:?}: fast path both ways");
        // 1401 bytes with DF: the host answers "fragmentation needed".
        let too_big = ping("1373")?;
        assert!(
            !too_big.status.success(),
            "{wanted:?}: 1401 bytes got through"
        );
        let route = c1.run("ip", &["route", "get", OUTSIDE_IP])?;
        assert!(
            String::from_utf8_lossy(&route.stdout).contains("mtu 1400"),
            "{wanted:?}: the container learned the uplink MTU: {route:?}"
        );
    }
    Ok(())
}
