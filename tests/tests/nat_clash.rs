//! NAT clashes on real traffic (eBPF datapath): two connections never share
//! a tuple, whichever came first. Each test fails on a datapath that keeps
//! ports without looking (the connection opened second stalls, or steals
//! the first one's replies). BPF_PROG_TEST_RUN proofs: `bpf_nat_clash.rs`.

use std::net::{SocketAddr, TcpStream, UdpSocket};

use anyhow::{Context as _, Result, bail};
use netd_common::{NET_ICC, NET_MASQUERADE};
use netd_testbed::{
    Netns,
    datapath_host::{DatapathHost, HOST_SECOND_IP, HOST_UPLINK_IP, OUTSIDE_IP},
    packet::{PROTO_TCP, PROTO_UDP},
    probe::{EchoServer, PROBE_TIMEOUT, echo_roundtrip},
};
use socket2::{Domain, Socket, Type};

const DEFAULT: u32 = NET_ICC | NET_MASQUERADE;
const BACKEND: &str = "172.18.0.2";
const CLIENT_CTR: &str = "172.18.0.3";
const GATEWAY: &str = "172.18.0.1";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn bound_socket(kind: Type, local: SocketAddr) -> Result<Socket> {
    let socket = Socket::new(Domain::IPV4, kind, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// A TCP connection from exactly `local` (port given) to `remote`.
fn tcp_from(ns: &Netns, local: SocketAddr, remote: SocketAddr) -> Result<TcpStream> {
    let stream = ns.enter(|| -> Result<TcpStream> {
        let socket = bound_socket(Type::STREAM, local)?;
        socket.connect_timeout(&remote.into(), PROBE_TIMEOUT)?;
        Ok(socket.into())
    })?;
    let stream = stream.with_context(|| format!("{}: TCP {local} -> {remote}", ns.name()))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    Ok(stream)
}

/// A UDP socket in `ns` connected to `remote`, bound to `local` (port 0:
/// the kernel picks).
fn udp_from(ns: &Netns, local: SocketAddr, remote: SocketAddr) -> Result<UdpSocket> {
    let socket = ns.enter(|| -> Result<UdpSocket> {
        let socket = bound_socket(Type::DGRAM, local)?;
        socket.connect(&remote.into())?;
        Ok(socket.into())
    })??;
    socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
    Ok(socket)
}

/// One datagram out and the echo server's answer back, on this socket.
fn udp_roundtrip(socket: &UdpSocket, message: &[u8]) -> Result<()> {
    socket.send(message)?;
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .with_context(|| format!("no answer to {:?}", String::from_utf8_lossy(message)))?;
    if !buf[..n].ends_with(message) {
        bail!("answer {:?} is not for {message:?}", &buf[..n]);
    }
    Ok(())
}

/// Every connection still carries its own traffic, twice over.
fn all_answer(tcp: &mut [&mut TcpStream], udp: &[&UdpSocket]) -> Result<()> {
    for round in 0..2 {
        for (i, conn) in tcp.iter_mut().enumerate() {
            echo_roundtrip(conn, format!("tcp {i} round {round}").as_bytes())
                .with_context(|| format!("TCP connection {i}, round {round}"))?;
        }
        for (i, socket) in udp.iter().enumerate() {
            udp_roundtrip(socket, format!("udp {i} round {round}").as_bytes())
                .with_context(|| format!("UDP socket {i}, round {round}"))?;
        }
    }
    Ok(())
}

/// Lets the host's kernel pick only `port` for its own connections.
fn host_picks_only(h: &DatapathHost, port: u16) -> Result<()> {
    h.host
        .sysctl("net.ipv4.ip_local_port_range", &format!("{port} {port}"))
}

/// The case measured in issue #30: one client port reaches the same
/// published port (hence the same container port) on two host addresses.
#[test]
fn one_client_port_reaches_a_published_port_on_two_host_addresses() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let backend = h.add_container(&net, BACKEND, DEFAULT)?;
    let _tcp = EchoServer::tcp_stream_echo(&backend, addr(BACKEND, 80))?;
    let _udp = EchoServer::udp(&backend, addr(BACKEND, 53), "")?;
    h.publish("0.0.0.0", 8080, PROTO_TCP, BACKEND, 80)?;
    h.publish("0.0.0.0", 5353, PROTO_UDP, BACKEND, 53)?;

    let client = addr(OUTSIDE_IP, 45000);
    let mut first = tcp_from(&h.outside, client, addr(HOST_UPLINK_IP, 8080))?;
    echo_roundtrip(&mut first, b"first")?;
    let mut second = tcp_from(&h.outside, client, addr(HOST_SECOND_IP, 8080))?;
    let udp_first = udp_from(&h.outside, client, addr(HOST_UPLINK_IP, 5353))?;
    udp_roundtrip(&udp_first, b"first")?;
    let udp_second = udp_from(&h.outside, client, addr(HOST_SECOND_IP, 5353))?;
    all_answer(&mut [&mut first, &mut second], &[&udp_first, &udp_second])
}

/// Masquerade, host first: the host talks from its uplink address and port
/// 41000 to a server; a container then talks from port 41000 to the same
/// server. Masquerade must not keep 41000.
#[test]
fn masquerade_leaves_a_tuple_to_the_host_connection_that_had_it_first() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let ctr = h.add_container(&net, BACKEND, DEFAULT)?;
    let _tcp = EchoServer::tcp_stream_echo(&h.outside, addr(OUTSIDE_IP, 7000))?;
    let _udp = EchoServer::udp(&h.outside, addr(OUTSIDE_IP, 7001), "")?;

    let mut host = tcp_from(&h.host, addr(HOST_UPLINK_IP, 41000), addr(OUTSIDE_IP, 7000))?;
    let host_udp = udp_from(&h.host, addr(HOST_UPLINK_IP, 41001), addr(OUTSIDE_IP, 7001))?;
    all_answer(&mut [&mut host], &[&host_udp])?;
    let mut container = tcp_from(&ctr, addr(BACKEND, 41000), addr(OUTSIDE_IP, 7000))?;
    let ctr_udp = udp_from(&ctr, addr(BACKEND, 41001), addr(OUTSIDE_IP, 7001))?;
    all_answer(&mut [&mut host, &mut container], &[&host_udp, &ctr_udp])
}

/// Masquerade, NAT first: a container's connection kept its port 41000;
/// then the host's kernel (allowed only that port) picks 41000 for a host
/// connection to the same server. The host's connection moves.
#[test]
fn a_host_connection_on_a_tuple_masquerade_holds_is_moved_not_stalled() -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let ctr = h.add_container(&net, BACKEND, DEFAULT)?;
    let _tcp = EchoServer::tcp_stream_echo(&h.outside, addr(OUTSIDE_IP, 7000))?;
    let _udp = EchoServer::udp(&h.outside, addr(OUTSIDE_IP, 7001), "")?;

    let mut container = tcp_from(&ctr, addr(BACKEND, 41000), addr(OUTSIDE_IP, 7000))?;
    let ctr_udp = udp_from(&ctr, addr(BACKEND, 41001), addr(OUTSIDE_IP, 7001))?;
    all_answer(&mut [&mut container], &[&ctr_udp])?;
    host_picks_only(&h, 41000)?;
    let mut host = tcp_from(&h.host, addr("0.0.0.0", 0), addr(OUTSIDE_IP, 7000))?;
    assert_eq!(host.local_addr()?.port(), 41000, "the clash is forced");
    host_picks_only(&h, 41001)?;
    let host_udp = udp_from(&h.host, addr("0.0.0.0", 0), addr(OUTSIDE_IP, 7001))?;
    assert_eq!(host_udp.local_addr()?.port(), 41001, "the clash is forced");
    all_answer(&mut [&mut container, &mut host], &[&ctr_udp, &host_udp])
}

/// Hairpin puts the gateway's address on a container's connection to a
/// published port; the host talks to the backend from that address too.
/// `host_first`: the host's connection exists before the hairpinned one
/// (else after, its port picked by the host's kernel).
fn hairpin_and_host_share_the_backend(host_first: bool) -> Result<()> {
    let mut h = DatapathHost::new()?;
    let net = h.add_network("172.18.0.0/16", DEFAULT)?;
    let backend = h.add_container(&net, BACKEND, DEFAULT)?;
    let client = h.add_container(&net, CLIENT_CTR, DEFAULT)?;
    let _tcp = EchoServer::tcp_stream_echo(&backend, addr(BACKEND, 80))?;
    h.publish("0.0.0.0", 8080, PROTO_TCP, BACKEND, 80)?;

    let published = addr(HOST_UPLINK_IP, 8080);
    let mut conns = Vec::new();
    if host_first {
        conns.push(tcp_from(&h.host, addr(GATEWAY, 41000), addr(BACKEND, 80))?);
        conns.push(tcp_from(&client, addr(CLIENT_CTR, 41000), published)?);
    } else {
        conns.push(tcp_from(&client, addr(CLIENT_CTR, 41000), published)?);
        echo_roundtrip(&mut conns[0], b"hairpin")?;
        host_picks_only(&h, 41000)?;
        let host = tcp_from(&h.host, addr("0.0.0.0", 0), addr(BACKEND, 80))?;
        assert_eq!(
            host.local_addr()?,
            addr(GATEWAY, 41000),
            "the clash is forced"
        );
        conns.push(host);
    }
    let [a, b] = &mut conns[..] else {
        unreachable!()
    };
    all_answer(&mut [a, b], &[])
}

#[test]
fn hairpin_leaves_a_tuple_to_the_host_connection_that_had_it_first() -> Result<()> {
    hairpin_and_host_share_the_backend(true)
}

#[test]
fn a_host_connection_after_a_hairpinned_one_gets_its_own_tuple() -> Result<()> {
    hairpin_and_host_share_the_backend(false)
}
