//! NAT never gives two connections one tuple, under BPF_PROG_TEST_RUN: a
//! published port's second connection from the same client port, a host
//! socket already on the tuple masquerade or hairpin would take (host first),
//! and a host connection opened on a tuple masquerade holds (NAT first).
//! docs/datapath.md, "NAT clashes"; real traffic in `nat_clash.rs`.

use std::net::{SocketAddr, TcpListener};

use netd_common::{
    Backend, CT_DNAT, CT_REPLY, CT_SNAT, NET_ICC, NET_MASQUERADE, PortKey, programs,
};
use netd_testbed::{
    Testbed,
    packet::{Ipv4Frame, PROTO_TCP, PROTO_UDP, TCP_SYN},
    unit::*,
};
use socket2::{Domain, Socket, Type};

/// A second address of the host's.
const HOST2: &str = "198.51.100.3";
/// The one port NAT may pick in these tests, so the output is known.
const NAT_PORT: u16 = 20000;

fn frame(proto: u8, src: (&str, u16), dst: (&str, u16), flags: u8) -> Ipv4Frame {
    match proto {
        PROTO_TCP => Ipv4Frame::tcp(src.0, src.1, dst.0, dst.1, flags),
        _ => Ipv4Frame::udp(src.0, src.1, dst.0, dst.1, b"datagram"),
    }
}

fn publish(dp: &mut netd::datapath::Datapath, proto: u8, port: u16, backend: (&str, u16)) {
    let key = PortKey {
        host_ip: [0; 4],
        port: port.to_be_bytes(),
        proto,
        _pad: 0,
    };
    let backend = Backend {
        ip: netd_testbed::packet::ip(backend.0).octets(),
        port: backend.1.to_be_bytes(),
        _pad: [0; 2],
    };
    dp.maps.ports.publish(key, backend).unwrap();
}

/// The measured case: after CLIENT:5555 -> HOST:8080 (-> C1:80), the same
/// client port to the same published port on another host address would
/// reach C1 on the very same tuple. Its client port is remapped instead,
/// and the replies of each connection go back the way it came.
#[test]
fn a_second_connection_to_a_published_port_on_a_taken_reply_tuple_is_remapped() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let mut dp = datapath(NET_ICC | NET_MASQUERADE);
        dp.maps
            .networks
            .insert_local_addr(HOST2.parse().unwrap())
            .unwrap();
        set_nat_ports(&mut dp, NAT_PORT, NAT_PORT);
        publish(&mut dp, proto, 8080, (C1, 80));

        let first = frame(proto, (CLIENT, 5555), (HOST, 8080), TCP_SYN);
        let into_c1 = with_addrs(&first, (CLIENT, 5555), (C1, 80));
        expect_into_container(&mut dp, &first, &into_c1, C1_MAC);
        let second = frame(proto, (CLIENT, 5555), (HOST2, 8080), TCP_SYN);
        let into_c1 = with_addrs(&second, (CLIENT, NAT_PORT), (C1, 80));
        expect_into_container(&mut dp, &second, &into_c1, C1_MAC);
        let orig = entry(&dp, key((CLIENT, 5555), (HOST2, 8080), proto));
        assert_eq!(orig.flags, CT_DNAT | CT_SNAT, "proto {proto}");

        for (client_port, host) in [(5555, HOST), (NAT_PORT, HOST2)] {
            let reply = frame(proto, (C1, 80), (CLIENT, client_port), TCP_SYN);
            let out = with_addrs(&reply, (host, 8080), (CLIENT, 5555));
            expect_rewrite(&mut dp, programs::TO_UPLINK, &reply, &out);
        }
    }
}

/// Runs `f` in a fresh namespace whose loopback holds `addrs`: the test
/// run's packets are seen from that namespace, so its sockets are the
/// host's sockets the programs look up.
fn in_namespace_with(addrs: &[&str], f: impl FnOnce() + Send) {
    let mut bed = Testbed::new().unwrap();
    let ns = bed.add_netns("sockets").unwrap();
    for addr in addrs {
        ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])
            .unwrap();
    }
    ns.enter(f).unwrap();
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// A connected socket from `local` to `remote` (a listener there for TCP).
fn host_socket(proto: u8, local: SocketAddr, remote: SocketAddr) -> Socket {
    let kind = if proto == PROTO_TCP {
        Type::STREAM
    } else {
        Type::DGRAM
    };
    let socket = Socket::new(Domain::IPV4, kind, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&remote.into()).unwrap();
    socket
}

/// Host first: the host already talks from HOST:40000 to REMOTE:80, so a
/// container connection from port 40000 to REMOTE:80 must not keep its port
/// (the replies would go to one of the two). A listener on the port owns no
/// connection and does not count.
#[test]
fn masquerade_leaves_a_tuple_a_host_socket_owns() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let mut dp = datapath(NET_ICC | NET_MASQUERADE);
        set_nat_ports(&mut dp, NAT_PORT, NAT_PORT);
        in_namespace_with(&[HOST, REMOTE], || {
            let _server = TcpListener::bind(addr(REMOTE, 80)).unwrap();
            let _listener = TcpListener::bind(addr(HOST, 40001)).unwrap();
            let _host = host_socket(proto, addr(HOST, 40000), addr(REMOTE, 80));

            let syn = frame(proto, (C1, 40000), (REMOTE, 80), TCP_SYN);
            let out = with_addrs(&syn, (HOST, NAT_PORT), (REMOTE, 80));
            expect_rewrite(&mut dp, programs::TO_UPLINK, &syn, &out);
            if proto == PROTO_TCP {
                let syn = frame(proto, (C1, 40001), (REMOTE, 80), TCP_SYN);
                let out = with_addrs(&syn, (HOST, 40001), (REMOTE, 80));
                expect_rewrite(&mut dp, programs::TO_UPLINK, &syn, &out);
            }
        });
    }
}

/// NAT first: C1's connection kept port 40000, then the host's kernel picks
/// 40000 for a connection of its own to the same server. The host's
/// connection moves to a NAT port (tracked like a container's) and each
/// side gets its own replies. Other host traffic stays untracked.
#[test]
fn a_host_connection_on_a_tuple_masquerade_holds_gets_another_port() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let mut dp = datapath(NET_ICC | NET_MASQUERADE);
        set_nat_ports(&mut dp, NAT_PORT, NAT_PORT);
        let container = frame(proto, (C1, 40000), (REMOTE, 80), TCP_SYN);
        let masqueraded = with_addrs(&container, (HOST, 40000), (REMOTE, 80));
        expect_rewrite(&mut dp, programs::TO_UPLINK, &container, &masqueraded);

        let host = frame(proto, (HOST, 40000), (REMOTE, 80), TCP_SYN);
        let moved = with_addrs(&host, (HOST, NAT_PORT), (REMOTE, 80));
        expect_rewrite(&mut dp, programs::TO_UPLINK, &host, &moved);
        let reply_key = key((REMOTE, 80), (HOST, NAT_PORT), proto);
        assert_eq!(entry(&dp, reply_key).flags, CT_SNAT | CT_REPLY);

        // The host's replies come back to its own port, to the host.
        let reply = frame(proto, (REMOTE, 80), (HOST, NAT_PORT), TCP_SYN);
        let out = with_addrs(&reply, (REMOTE, 80), (HOST, 40000));
        expect_rewrite(&mut dp, programs::FROM_UPLINK, &reply, &out);
        // C1's still go to C1.
        let reply = frame(proto, (REMOTE, 80), (HOST, 40000), TCP_SYN);
        let out = with_addrs(&reply, (REMOTE, 80), (C1, 40000));
        expect_into_container(&mut dp, &reply, &out, C1_MAC);

        let entries = dp.maps.conntrack.entries().unwrap().len();
        let other = frame(proto, (HOST, 40002), (REMOTE, 80), TCP_SYN);
        expect_untouched(&mut dp, programs::TO_UPLINK, &other);
        assert_eq!(dp.maps.conntrack.entries().unwrap().len(), entries);
    }
}

/// Hairpin takes its port from the NAT range, and never one a host socket
/// bound explicitly: with the range narrowed to the one port the gateway
/// already talks to the backend from, the hairpinned connection is refused
/// (`nat-ports-exhausted`) instead of sharing the host's tuple; once the
/// host's socket is gone, the port is taken.
#[test]
fn hairpin_never_takes_a_nat_port_a_host_socket_owns() {
    let mut dp = datapath(NET_ICC | NET_MASQUERADE);
    set_nat_ports(&mut dp, NAT_PORT, NAT_PORT);
    publish(&mut dp, PROTO_TCP, 8080, (C2, 80));
    let gateway = "172.18.0.1";
    let syn = Ipv4Frame::tcp(C1, 40000, HOST, 8080, TCP_SYN);
    in_namespace_with(&[gateway, C2], || {
        let _backend = TcpListener::bind(addr(C2, 80)).unwrap();
        let host = host_socket(PROTO_TCP, addr(gateway, NAT_PORT), addr(C2, 80));
        expect_drop(
            &mut dp,
            programs::FROM_CONTAINER,
            &syn,
            netd_common::DropReason::NatPortsExhausted,
        );
        // Closed with a reset: no TIME_WAIT socket stays on the tuple (one
        // would still own it).
        host.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(host);
        let (verdict, _) = run(&mut dp, programs::FROM_CONTAINER, &syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
    });
    let reply_key = key((C2, 80), (gateway, NAT_PORT), PROTO_TCP);
    assert_eq!(
        entry(&dp, reply_key).xlat,
        key((HOST, 8080), (C1, 40000), PROTO_TCP)
    );
}
