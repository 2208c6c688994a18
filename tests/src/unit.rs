//! Helpers of the BPF_PROG_TEST_RUN tests (tests/tests/bpf_*.rs): a loaded
//! datapath with two networks and their containers, crafted frames run
//! through one program, and the checks every such test makes (exact bytes
//! out, the verdict, the drop reason, the conntrack entry).

use std::net::Ipv4Addr;

use crate::{
    packet::{self, Ipv4Frame, L4, PROTO_TCP, TCP_SYN, ip},
    testrun::{TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, run_classifier},
};
use netd::datapath::Datapath;
use netd_common::{
    Backend, Config, CtEntry, CtKey, DropReason, Endpoint, NET_ICC, NET_MASQUERADE, NetworkInfo,
    PortKey, programs,
};

pub const HOST: &str = "198.51.100.1";

pub const CLIENT: &str = "198.51.100.2";

pub const REMOTE: &str = "203.0.113.9";

pub const C1: &str = "172.18.0.2";

pub const C2: &str = "172.18.0.3";

pub const C1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

pub const OTHER_NET_CTR: &str = "172.19.0.2";

pub fn network(dp: &mut Datapath, subnet: &str, id: u32, flags: u32) {
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
pub fn datapath(flags: u32) -> Datapath {
    let mut dp = Datapath::load().unwrap();
    configure(&mut dp, flags);
    dp
}

/// As [`datapath`], with tables of `sizes`.
pub fn datapath_sized(flags: u32, sizes: &netd::datapath::TableSizes) -> Datapath {
    let features = netd::features::Features::probe(netd::features::KernelFeatures::Auto).unwrap();
    let mut dp = Datapath::load_sized(&features, netd::datapath::BpfLog::Off, sizes).unwrap();
    configure(&mut dp, flags);
    dp
}

/// What [`datapath`] sets up, on a datapath loaded some other way.
pub fn configure(dp: &mut Datapath, flags: u32) {
    dp.maps
        .config
        .set(Config {
            masquerade_ip: ip(HOST).octets(),
            nat_port_min: netd_common::NAT_PORT_MIN,
            nat_port_max: netd_common::NAT_PORT_MAX,
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

/// Narrows the NAT port range (inclusive), so a test knows the port NAT
/// picks or can leave it none.
pub fn set_nat_ports(dp: &mut Datapath, min: u16, max: u16) {
    let mut config = dp.maps.config.get().unwrap();
    config.nat_port_min = min;
    config.nat_port_max = max;
    dp.maps.config.set(config).unwrap();
}

/// Publishes TCP port 8080 on every host address to `backend`:80.
pub fn publish_tcp_8080(dp: &mut Datapath, backend: &str) -> PortKey {
    publish_tcp(dp, [0; 4], 8080, (backend, 80))
}

/// Publishes TCP `host_ip`:`port` (all zero: every host address) to
/// `backend`.
pub fn publish_tcp(
    dp: &mut Datapath,
    host_ip: [u8; 4],
    port: u16,
    backend: (&str, u16),
) -> PortKey {
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
pub fn expect_syn_into_c1(dp: &mut Datapath, sport: u16, dst: &str, dport: u16, backend_port: u16) {
    let syn = Ipv4Frame::tcp(CLIENT, sport, dst, dport, TCP_SYN);
    expect_into_container(
        dp,
        &syn,
        &with_addrs(&syn, (CLIENT, sport), (C1, backend_port)),
        C1_MAC,
    );
}

pub fn drops(dp: &Datapath, reason: DropReason) -> u64 {
    dp.maps.counters.drops_of(reason).unwrap()
}

pub fn run(dp: &mut Datapath, program: &str, frame: &Ipv4Frame) -> (u32, Vec<u8>) {
    let bytes = frame.build();
    packet::verify_checksums(&bytes).unwrap();
    run_classifier(dp, program, &bytes).unwrap()
}

/// Expects `program` to pass `input` rewritten into exactly `expected`.
pub fn expect_rewrite(dp: &mut Datapath, program: &str, input: &Ipv4Frame, expected: &Ipv4Frame) {
    let (verdict, out) = run(dp, program, input);
    assert_eq!(verdict, TC_ACT_OK, "{program} verdict");
    packet::verify_checksums(&out).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert_eq!(out, expected.build(), "{program} output bytes");
}

pub const TC_ACT_REDIRECT: u32 = 7;

/// Expects `input` from the uplink to be translated into `translated` and
/// handed straight to the container with `ctr_mac` (gateway MAC as source,
/// one TTL less).
pub fn expect_into_container(
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
pub fn expect_untouched(dp: &mut Datapath, program: &str, input: &Ipv4Frame) {
    let (verdict, out) = run(dp, program, input);
    assert_eq!(verdict, TC_ACT_OK, "{program} verdict for {input:?}");
    assert_eq!(out, input.build(), "{program} output bytes for {input:?}");
}

pub fn expect_drop(dp: &mut Datapath, program: &str, input: &Ipv4Frame, reason: DropReason) {
    let before = drops(dp, reason);
    let (verdict, _) = run(dp, program, input);
    assert_eq!(verdict, TC_ACT_SHOT, "{program} verdict for {input:?}");
    assert_eq!(drops(dp, reason), before + 1, "{}", reason.label());
}

pub fn with_addrs(frame: &Ipv4Frame, src: (&str, u16), dst: (&str, u16)) -> Ipv4Frame {
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

pub fn entry(dp: &Datapath, key: CtKey) -> CtEntry {
    dp.maps
        .conntrack
        .entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no entry {key:?}"))
}

pub fn key(src: (&str, u16), dst: (&str, u16), proto: u8) -> CtKey {
    CtKey {
        src: ip(src.0).octets(),
        dst: ip(dst.0).octets(),
        src_port: src.1.to_be_bytes(),
        dst_port: dst.1.to_be_bytes(),
        proto,
        _pad: [0; 3],
    }
}

/// An ICMP error quoting `quoted` (its IP header + first 8 L4 bytes).
pub fn icmp_error(src: &str, dst: &str, icmp_type: u8, code: u8, quoted: &Ipv4Frame) -> Ipv4Frame {
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

/// Expects a TCP packet from `src`:`sport` to the published 8080 to be
/// translated to C1:80 and handed straight to C1.
pub fn expect_published_to_c1(dp: &mut Datapath, src: &str, sport: u16, flags: u8) {
    let frame = Ipv4Frame::tcp(src, sport, HOST, 8080, flags);
    let translated = with_addrs(&frame, (src, sport), (C1, 80));
    expect_into_container(dp, &frame, &translated, C1_MAC);
}

/// Puts `rules` (in order; each with the ID of the network it names) in
/// force, as the daemon's driver does: compiled into USER_RULES, then
/// their classes turned on in the config.
pub fn set_rules(dp: &mut Datapath, rules: &[(&str, Option<u32>)]) {
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
pub fn parse_rule(text: &str) -> netd::rule::UserRule {
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

/// Every drop reason's count, to see which one a run added.
pub fn drop_snapshot(dp: &Datapath) -> Vec<u64> {
    DropReason::ALL.iter().map(|r| drops(dp, *r)).collect()
}

/// The reason a run added to the counters (None: nothing dropped).
pub fn dropped_since(dp: &Datapath, before: &[u64]) -> Option<DropReason> {
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
