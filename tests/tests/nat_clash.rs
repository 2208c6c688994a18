//! NAT clashes on real traffic: two connections never share a tuple,
//! whichever came first. Each case runs on the eBPF datapath driven
//! directly, and through the daemon on both datapaths (the iptables one has
//! the kernel's NAT). Each fails on an eBPF datapath that keeps ports
//! without looking (the connection opened second stalls, or steals the
//! first one's replies). BPF_PROG_TEST_RUN proofs: `bpf_nat_clash.rs`.

use std::net::{SocketAddr, TcpStream, UdpSocket};

use anyhow::{Context as _, Result, bail};
use netd_common::{NET_ICC, NET_MASQUERADE};
use netd_testbed::{
    Netns,
    bin_under_test::netd,
    daemon_host::DaemonHost,
    datapath_host::{DatapathHost, HOST_SECOND_IP, HOST_UPLINK_IP, Network, OUTSIDE_IP},
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
fn host_picks_only(h: &dyn Bed, port: u16) -> Result<()> {
    h.host()
        .sysctl("net.ipv4.ip_local_port_range", &format!("{port} {port}"))
}

/// A host with an uplink to `outside` (its addresses HOST_UPLINK_IP and
/// HOST_SECOND_IP), where containers join 172.18.0.0/16 (gateway
/// 172.18.0.1) and publish ports on every host address.
trait Bed {
    fn host(&self) -> &Netns;
    fn outside(&self) -> &Netns;
    /// A container at `ip` publishing (host port, container port, protocol).
    fn container(&mut self, ip: &str, ports: &[(u16, u16, u8)]) -> Result<Netns>;
}

/// The eBPF datapath driven directly (no daemon).
struct Direct {
    h: DatapathHost,
    net: Option<Network>,
}

impl Direct {
    fn new() -> Result<Self> {
        Ok(Self {
            h: DatapathHost::new()?,
            net: None,
        })
    }
}

impl Bed for Direct {
    fn host(&self) -> &Netns {
        &self.h.host
    }

    fn outside(&self) -> &Netns {
        &self.h.outside
    }

    fn container(&mut self, ip: &str, ports: &[(u16, u16, u8)]) -> Result<Netns> {
        let net = match &self.net {
            Some(net) => net.clone(),
            None => self.h.add_network("172.18.0.0/16", DEFAULT)?,
        };
        self.net = Some(net.clone());
        let ctr = self.h.add_container(&net, ip, DEFAULT)?;
        for &(host_port, ctr_port, proto) in ports {
            self.h.publish("0.0.0.0", host_port, proto, ip, ctr_port)?;
        }
        Ok(ctr)
    }
}

/// The daemon (either datapath) behind the CLI.
struct Daemon {
    h: DaemonHost,
    containers: usize,
}

impl Daemon {
    fn start(datapath: &str) -> Self {
        let h = DaemonHost::start(netd(), &["--datapath", datapath]);
        h.ok(&["network", "create", "clash", "--subnet", "172.18.0.0/16"]);
        Self { h, containers: 0 }
    }
}

impl Bed for Daemon {
    fn host(&self) -> &Netns {
        &self.h.host
    }

    fn outside(&self) -> &Netns {
        &self.h.outside
    }

    fn container(&mut self, ip: &str, ports: &[(u16, u16, u8)]) -> Result<Netns> {
        self.containers += 1;
        let short = format!("c{}", self.containers);
        let name = self.h.name(&short);
        let mut args = vec![
            "container",
            "create",
            &name,
            "--network",
            "clash",
            "--ip",
            ip,
        ];
        let specs: Vec<String> = ports
            .iter()
            .map(|&(host, ctr, proto)| {
                let proto = if proto == PROTO_UDP { "udp" } else { "tcp" };
                format!("{host}:{ctr}/{proto}")
            })
            .collect();
        for spec in &specs {
            args.extend(["-p", spec.as_str()]);
        }
        self.h.ok(&args);
        Ok(self.h.ctr(&short))
    }
}

/// The case measured in issue #30: one client port reaches the same
/// published port (hence the same container port) on two host addresses.
fn one_client_port_to_two_host_addresses(bed: &mut dyn Bed) -> Result<()> {
    let backend = bed.container(BACKEND, &[(8080, 80, PROTO_TCP), (5353, 53, PROTO_UDP)])?;
    let _tcp = EchoServer::tcp_stream_echo(&backend, addr(BACKEND, 80))?;
    let _udp = EchoServer::udp(&backend, addr(BACKEND, 53), "")?;
    let client = addr(OUTSIDE_IP, 45000);
    let outside = bed.outside();
    let mut first = tcp_from(outside, client, addr(HOST_UPLINK_IP, 8080))?;
    echo_roundtrip(&mut first, b"first")?;
    let mut second = tcp_from(outside, client, addr(HOST_SECOND_IP, 8080))?;
    let udp_first = udp_from(outside, client, addr(HOST_UPLINK_IP, 5353))?;
    udp_roundtrip(&udp_first, b"first")?;
    let udp_second = udp_from(outside, client, addr(HOST_SECOND_IP, 5353))?;
    all_answer(&mut [&mut first, &mut second], &[&udp_first, &udp_second])
}

/// Masquerade, host first: the host talks from its uplink address and port
/// 41000 to a server; a container then talks from port 41000 to the same
/// server. Masquerade must not keep 41000.
fn masquerade_after_the_host(bed: &mut dyn Bed) -> Result<()> {
    let ctr = bed.container(BACKEND, &[])?;
    let _tcp = EchoServer::tcp_stream_echo(bed.outside(), addr(OUTSIDE_IP, 7000))?;
    let _udp = EchoServer::udp(bed.outside(), addr(OUTSIDE_IP, 7001), "")?;
    let host = bed.host();
    let mut host_tcp = tcp_from(host, addr(HOST_UPLINK_IP, 41000), addr(OUTSIDE_IP, 7000))?;
    let host_udp = udp_from(host, addr(HOST_UPLINK_IP, 41001), addr(OUTSIDE_IP, 7001))?;
    all_answer(&mut [&mut host_tcp], &[&host_udp])?;
    let mut ctr_tcp = tcp_from(&ctr, addr(BACKEND, 41000), addr(OUTSIDE_IP, 7000))?;
    let ctr_udp = udp_from(&ctr, addr(BACKEND, 41001), addr(OUTSIDE_IP, 7001))?;
    all_answer(&mut [&mut host_tcp, &mut ctr_tcp], &[&host_udp, &ctr_udp])
}

/// Masquerade, NAT first: a container's connection kept its port 41000;
/// then the host's kernel (allowed only that port) picks 41000 for a host
/// connection to the same server. The host's connection moves.
fn host_after_masquerade(bed: &mut dyn Bed) -> Result<()> {
    let ctr = bed.container(BACKEND, &[])?;
    let _tcp = EchoServer::tcp_stream_echo(bed.outside(), addr(OUTSIDE_IP, 7000))?;
    let _udp = EchoServer::udp(bed.outside(), addr(OUTSIDE_IP, 7001), "")?;
    let mut ctr_tcp = tcp_from(&ctr, addr(BACKEND, 41000), addr(OUTSIDE_IP, 7000))?;
    let ctr_udp = udp_from(&ctr, addr(BACKEND, 41001), addr(OUTSIDE_IP, 7001))?;
    all_answer(&mut [&mut ctr_tcp], &[&ctr_udp])?;
    host_picks_only(bed, 41000)?;
    let host = bed.host();
    let mut host_tcp = tcp_from(host, addr("0.0.0.0", 0), addr(OUTSIDE_IP, 7000))?;
    assert_eq!(host_tcp.local_addr()?.port(), 41000, "the clash is forced");
    host_picks_only(bed, 41001)?;
    let host_udp = udp_from(bed.host(), addr("0.0.0.0", 0), addr(OUTSIDE_IP, 7001))?;
    assert_eq!(host_udp.local_addr()?.port(), 41001, "the clash is forced");
    all_answer(&mut [&mut ctr_tcp, &mut host_tcp], &[&ctr_udp, &host_udp])
}

/// Hairpin puts the gateway's address on a container's connection to a
/// published port; the host talks to the backend from that address too.
/// `host_first`: the host's connection exists before the hairpinned one
/// (else after, its port picked by the host's kernel).
fn hairpin_and_host_share_the_backend(bed: &mut dyn Bed, host_first: bool) -> Result<()> {
    let backend = bed.container(BACKEND, &[(8080, 80, PROTO_TCP)])?;
    let client = bed.container(CLIENT_CTR, &[])?;
    let _tcp = EchoServer::tcp_stream_echo(&backend, addr(BACKEND, 80))?;
    let published = addr(HOST_UPLINK_IP, 8080);
    let mut conns = Vec::new();
    if host_first {
        conns.push(tcp_from(
            bed.host(),
            addr(GATEWAY, 41000),
            addr(BACKEND, 80),
        )?);
        conns.push(tcp_from(&client, addr(CLIENT_CTR, 41000), published)?);
    } else {
        conns.push(tcp_from(&client, addr(CLIENT_CTR, 41000), published)?);
        echo_roundtrip(&mut conns[0], b"hairpin")?;
        host_picks_only(bed, 41000)?;
        let host = tcp_from(bed.host(), addr("0.0.0.0", 0), addr(BACKEND, 80))?;
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

/// Each case on the eBPF datapath driven directly, and through the daemon
/// on each datapath.
macro_rules! on_every_datapath {
    ($($case:ident($($arg:expr),*);)+) => {
        mod direct {
            use super::*;
            $(#[test]
            fn $case() -> Result<()> {
                super::$case(&mut Direct::new()?, $($arg),*)
            })+
        }
        mod daemon_ebpf {
            use super::*;
            $(#[test]
            fn $case() -> Result<()> {
                super::$case(&mut Daemon::start("ebpf"), $($arg),*)
            })+
        }
        mod daemon_iptables {
            use super::*;
            $(#[test]
            fn $case() -> Result<()> {
                super::$case(&mut Daemon::start("iptables"), $($arg),*)
            })+
        }
    };
}

fn hairpin_after_the_host(bed: &mut dyn Bed) -> Result<()> {
    hairpin_and_host_share_the_backend(bed, true)
}

fn host_after_hairpin(bed: &mut dyn Bed) -> Result<()> {
    hairpin_and_host_share_the_backend(bed, false)
}

on_every_datapath! {
    one_client_port_to_two_host_addresses();
    masquerade_after_the_host();
    host_after_masquerade();
    hairpin_after_the_host();
    host_after_hairpin();
}
