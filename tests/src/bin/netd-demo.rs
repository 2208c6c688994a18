//! `cargo xtask demo`: netd's BPF datapath on real traffic.
//!
//! Builds a host namespace with a bridge and two container namespaces,
//! attaches netd's `from_container` program to the host side of both veths,
//! sends ICMP, TCP, UDP and malformed frames, and shows the counters move.
//! Everything is torn down on exit, on errors too.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use netd::bpf::Datapath;
use netd_common::{DropReason, Endpoint, NET_ICC, NET_MASQUERADE, TrafficClass};
use netd_testbed::{
    Testbed,
    packet::{self, Ipv4Frame, TCP_SYN},
    probe::{self, EchoServer},
};

fn main() -> Result<()> {
    let mut bed = Testbed::new()?;
    let host = bed.add_netns("host")?;
    let bridge = bed.ifname("netd");
    host.ip(&["link", "add", &bridge, "type", "bridge"])?;
    host.ip(&["addr", "add", "172.17.0.1/16", "dev", &bridge])?;
    host.ip(&["link", "set", &bridge, "up"])?;
    let (veth1, veth2) = (bed.ifname("veth1"), bed.ifname("veth2"));
    let c1 = bed.add_container("c1", &host, &bridge, &veth1, "172.17.0.2/16", "172.17.0.1")?;
    let c2 = bed.add_container("c2", &host, &bridge, &veth2, "172.17.0.3/16", "172.17.0.1")?;
    println!("topology (all inside network namespaces of this demo):");
    println!("  {}: bridge {bridge} 172.17.0.1/16", host.name());
    println!("  {}: eth0 172.17.0.2 <-> {veth1} on {bridge}", c1.name());
    println!("  {}: eth0 172.17.0.3 <-> {veth2} on {bridge}", c2.name());

    let mut datapath = Datapath::load().context("loading netd's BPF programs")?;
    for (ctr, veth, ip) in [(&c1, &veth1, "172.17.0.2"), (&c2, &veth2, "172.17.0.3")] {
        let endpoint = Endpoint {
            ifindex: host.ifindex(veth)?,
            network_id: 1,
            network_flags: NET_ICC | NET_MASQUERADE,
            mac: ctr.mac("eth0")?,
            _pad: [0; 2],
        };
        datapath.insert_endpoint(ip.parse()?, endpoint)?;
    }
    host.enter(|| -> Result<()> {
        datapath.attach_from_container(&veth1)?;
        datapath.attach_from_container(&veth2)?;
        Ok(())
    })??;
    println!("attached from_container (TCX ingress) to {veth1} and {veth2}\n");
    show(&datapath, "before any traffic")?;

    probe::ping(&c1, "172.17.0.1", 3)?;
    probe::ping(&c1, "172.17.0.3", 2)?;
    show(&datapath, "c1 pings the gateway 3x and c2 2x")?;
    println!("   (unsupported-ethertype: the containers' IPv6 neighbour discovery;");
    println!("    netd networks are IPv4-only, so such frames are dropped and counted)\n");

    let tcp_addr: SocketAddr = "172.17.0.1:8080".parse()?;
    let udp_addr: SocketAddr = "172.17.0.1:5353".parse()?;
    let _tcp = EchoServer::tcp(&host, tcp_addr, "ok:")?;
    let _udp = EchoServer::udp(&host, udp_addr, "ok:")?;
    for i in 0..10 {
        probe::tcp_request(&c2, tcp_addr, format!("request {i}").as_bytes())?;
        probe::udp_request(&c2, udp_addr, format!("datagram {i}").as_bytes())?;
    }
    show(
        &datapath,
        "c2 makes 10 TCP requests and 10 UDP exchanges with the host",
    )?;

    let mut bad = Ipv4Frame::tcp("172.17.0.2", 1, "172.17.0.1", 8080, TCP_SYN).build();
    bad[packet::ETH_LEN] = 0x43; // IHL 3: shorter than any IPv4 header
    probe::send_raw_frame(&c1, "eth0", &bad)?;
    probe::send_raw_frame(&c1, "eth0", &bad[..packet::ETH_LEN + 8])?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    show(&datapath, "c1 puts two malformed IPv4 frames on the wire")?;
    println!("cleaning up: namespaces, veths and BPF links are removed");
    Ok(())
}

fn show(datapath: &Datapath, step: &str) -> Result<()> {
    println!("== {step}");
    println!("   {:<12} {:>9} {:>10}", "class", "packets", "bytes");
    for (class, counter) in datapath.traffic_counters()? {
        if counter.packets > 0 || class != TrafficClass::OtherIpv4 {
            println!(
                "   {:<12} {:>9} {:>10}",
                class.label(),
                counter.packets,
                counter.bytes
            );
        }
    }
    let drops: Vec<(DropReason, u64)> = datapath
        .drop_counters()?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    if drops.is_empty() {
        println!("   drops: none");
    } else {
        for (reason, n) in drops {
            println!("   dropped {:<22} {n:>5}", reason.label());
        }
    }
    println!();
    Ok(())
}
