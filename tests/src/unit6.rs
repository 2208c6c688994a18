//! The IPv6 set-up of the BPF_PROG_TEST_RUN tests (tests/tests/bpf_ipv6.rs,
//! bpf_nat66.rs): the IPv4 datapath of [`crate::unit::datapath`] with two
//! IPv6 networks beside it, and the checks those tests make.

use netd_common::{DropReason, Endpoint, NET_ICC, NET_MASQUERADE, Network6Info, TrafficClass};

use crate::{
    packet::Ipv6Frame,
    testrun::{TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX, run_classifier},
    unit::{C1_MAC, datapath, drops},
};

pub const C1_6: &str = "fd00:a::2";
pub const C2_6: &str = "fd00:a::3";
pub const GATEWAY_6: &str = "fd00:a::1";
pub const OTHER_NET_6: &str = "fd00:b::2";
pub const OTHER_GATEWAY_6: &str = "fd00:b::1";
pub const OUTSIDE_6: &str = "2001:db8::9";
/// One of the host's own IPv6 addresses (`LOCAL_ADDRS6`).
pub const HOST_6: &str = "2001:db8::1";

pub fn traffic(dp: &netd::datapath::Datapath, class: TrafficClass) -> u64 {
    dp.maps.counters.traffic_of(class).unwrap().packets
}

/// The IPv4 datapath of [`datapath`], and beside it network 1 with IPv6
/// fd00:a::/64 (`flags`), network 2 with fd00:b::/64; C1 (from
/// TEST_RUN_IFINDEX with C1_MAC) and C2 on network 1.
pub fn datapath6(flags: u32) -> netd::datapath::Datapath {
    let mut dp = datapath(flags);
    for (id, subnet, gateway, flags) in [
        (1, "fd00:a::", GATEWAY_6, flags),
        (2, "fd00:b::", OTHER_GATEWAY_6, NET_ICC | NET_MASQUERADE),
    ] {
        let info = Network6Info {
            id,
            flags,
            gateway: netd_common::ipv6_from_octets(
                gateway.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            ),
        };
        dp.maps
            .ipv6
            .insert_network(subnet.parse().unwrap(), 64, info)
            .unwrap();
    }
    for (addr, mac, ifindex, network_id) in [
        (C1_6, C1_MAC, TEST_RUN_IFINDEX, 1),
        (C2_6, [2, 0, 0, 0, 0, 3], 99, 1),
        (OTHER_NET_6, [2, 0, 0, 0, 0, 4], 98, 2),
    ] {
        let ep = Endpoint {
            ifindex,
            network_id,
            network_flags: flags,
            mac,
            _pad: [0; 2],
        };
        dp.maps
            .ipv6
            .insert_endpoint(addr.parse().unwrap(), ep)
            .unwrap();
    }
    dp.maps.ipv6.insert_port(TEST_RUN_IFINDEX, flags).unwrap();
    dp
}

pub fn from_c1(mut frame: Ipv6Frame) -> Ipv6Frame {
    frame.src_mac = C1_MAC;
    frame
}

pub fn expect_pass6(dp: &mut netd::datapath::Datapath, program: &str, frame: &Ipv6Frame) {
    let (verdict, out) = run_classifier(dp, program, &frame.build()).unwrap();
    assert_eq!(verdict, TC_ACT_OK, "{program} verdict for {frame:?}");
    assert_eq!(out, frame.build(), "{program} changed {frame:?}");
}

pub fn expect_drop6(
    dp: &mut netd::datapath::Datapath,
    program: &str,
    frame: &Ipv6Frame,
    reason: DropReason,
) {
    let before = drops(dp, reason);
    let (verdict, _) = run_classifier(dp, program, &frame.build()).unwrap();
    assert_eq!(verdict, TC_ACT_SHOT, "{program} verdict for {frame:?}");
    assert_eq!(
        drops(dp, reason),
        before + 1,
        "{} for {frame:?}",
        reason.label()
    );
}

/// TCP 8080 published on every IPv6 address of the host (`[::]`) to
/// `backend`:80; returns the port's key.
pub fn publish6_8080(dp: &mut netd::datapath::Datapath, backend: &str) -> netd_common::PortKey6 {
    let key = netd_common::PortKey6 {
        host_ip: [0; 4],
        port: 8080u16.to_be_bytes(),
        proto: crate::packet::PROTO_TCP,
        _pad: 0,
    };
    let backend = netd_common::Backend6 {
        ip: netd_common::ipv6_from_octets(backend.parse::<std::net::Ipv6Addr>().unwrap().octets()),
        port: 80u16.to_be_bytes(),
        _pad: [0; 2],
    };
    dp.maps.ports.publish6(key, backend).unwrap();
    key
}
