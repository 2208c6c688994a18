//! IPv6 in the paired A/B (#27): the 1-network shapes again on a dual-stack
//! network with every workload over IPv6 — the outside to a port published
//! on `[::]` (DNAT over IPv6), the container to the outside (NAT66;
//! `MASQUERADE` in ip6tables and the `ip6` table) — against the netfilter
//! datapaths' IPv6 rules and plain IPv6 routing.

use anyhow::Result;
use netd_testbed::{
    Netns, Testbed,
    daemon_host::{DaemonHost, HOST_IP6, OUTSIDE_IP6},
};

use crate::{
    paired::{self, Comparison, Direction::*, Workload::*},
    topology::*,
};

const SUBNET: &str = "10.99.0.0/24";
const SUBNET6: &str = "fd00:99::/64";
const SERVER_IP4: &str = "10.99.0.10";
const SERVER_IP6: &str = "fd00:99::10";
const VARIANT: &str = ", IPv6";

/// netd on `datapath` with `ports` published ports (both families), the
/// measured container on a dual-stack network.
pub(crate) fn daemon_target6(netd: &str, datapath: &'static str, ports: usize) -> Result<Target> {
    let h = DaemonHost::start(netd, &["--datapath", datapath]);
    h.add_uplink_ipv6();
    h.ok(&[
        "network", "create", "v6", "--subnet", SUBNET, "--subnet", SUBNET6,
    ]);
    if ports > 1 {
        let last = FILLER_FIRST_PORT + ports - 2;
        let range = format!("{FILLER_FIRST_PORT}-{last}:{FILLER_FIRST_PORT}-{last}");
        let fill = h.name("fill");
        h.ok(&[
            "container",
            "create",
            &fill,
            "--network",
            "v6",
            "--ip6",
            "fd00:99::9",
            "-p",
            &range,
        ]);
    }
    let srv = h.name("srv");
    h.ok(&[
        "container",
        "create",
        &srv,
        "--network",
        "v6",
        "--ip",
        SERVER_IP4,
        "--ip6",
        SERVER_IP6,
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "-p",
        "5454:54/udp",
    ]);
    let ctr = h.ctr("srv");
    let dnat = side(&h.outside, HOST_IP6, 8080, 5353)?.with_echo(5454);
    let outside = h.outside.clone();
    let daemon_pid = h.daemon.as_ref().map(|d| d.id());
    target6(
        datapath,
        ports,
        dnat,
        (&ctr, &outside),
        daemon_pid,
        Keep {
            _daemon: Some(Box::new(h)),
            _bed: None,
            runtime: None,
        },
    )
}

/// Plain IPv6 routing: a bridge and veth, no NAT, no filtering, no
/// programs; the client talks to the container's address directly.
pub(crate) fn plain_target6() -> Result<Target> {
    let mut bed = Testbed::new()?;
    let (host, outside, uplink) = bed.add_host_with_outside()?;
    let add6 = |ns: &Netns, addr: &str, dev: &str| {
        ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])
    };
    add6(&host, &format!("{HOST_IP6}/64"), &uplink)?;
    add6(&outside, &format!("{OUTSIDE_IP6}/64"), "eth0")?;
    outside.ip(&["-6", "route", "add", SUBNET6, "via", HOST_IP6])?;
    host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let bridge = bed.ifname("br");
    host.ip(&["link", "add", &bridge, "type", "bridge"])?;
    host.ip(&["addr", "add", "10.99.0.1/24", "dev", &bridge])?;
    add6(&host, "fd00:99::1/64", &bridge)?;
    host.ip(&["link", "set", &bridge, "up"])?;
    let ctr = bed.add_container(
        "srv",
        &host,
        &bridge,
        &bed.ifname("vs"),
        &format!("{SERVER_IP4}/24"),
        "10.99.0.1",
    )?;
    add6(&ctr, &format!("{SERVER_IP6}/64"), "eth0")?;
    ctr.ip(&["-6", "route", "add", "default", "via", "fd00:99::1"])?;
    let dnat = side(&outside, SERVER_IP6, 80, 53)?.with_echo(54);
    let keep = Keep {
        _daemon: None,
        _bed: Some(Box::new(bed)),
        runtime: None,
    };
    target6("none", 0, dnat, (&ctr, &outside), None, keep)
}

fn target6(
    datapath: &'static str,
    ports: usize,
    dnat: Side,
    (server, outside): (&Netns, &Netns),
    daemon_pid: Option<u32>,
    keep: Keep,
) -> Result<Target> {
    let target = Target {
        datapath,
        ports,
        networks: 1,
        variant: VARIANT.into(),
        dnat,
        snat: side(server, OUTSIDE_IP6, 80, 53)?.with_echo(54),
        container_servers: Servers::start(server, SERVER_IP6)?,
        outside_servers: Servers::start(outside, OUTSIDE_IP6)?,
        daemon_pid,
        control: None,
        _keep: keep,
    };
    tune_client(&target.dnat.client)?;
    tune_client(&target.snat.client)?;
    Ok(target)
}

/// The IPv6 comparisons: ebpf against ip6tables and nftables' `ip6` table
/// at each shape, against plain IPv6 routing, its most ports against one,
/// and its IPv6 against its IPv4 (`ebpf1`, the IPv4 1-port target).
pub(crate) fn comparisons(
    targets6: &[Target],
    ebpf1: &Target,
    run: impl Fn(Comparison<'_>) -> Result<paired::PairedRatio>,
) -> Result<Vec<paired::PairedRatio>> {
    let find = |datapath: &str, ports: usize| {
        targets6
            .iter()
            .find(|t| t.datapath == datapath && t.ports == ports)
    };
    let mut results = Vec::new();
    for ebpf in targets6.iter().filter(|t| t.datapath == "ebpf") {
        for (peer, name) in [("iptables", "ip6tables"), ("nftables", "nftables ip6")] {
            let Some(b) = find(peer, ebpf.ports) else {
                continue;
            };
            let what = format!("ebpf / {name}, {} ports{VARIANT}", ebpf.ports);
            for (workload, direction) in
                [(TcpCrr, Dnat), (TcpRr, Dnat), (UdpRr, Dnat), (TcpCrr, Snat)]
            {
                results.push(run(Comparison {
                    what: what.clone(),
                    a: ebpf,
                    b,
                    workload,
                    direction,
                })?);
            }
        }
    }
    let (Some(one), Some(plain)) = (find("ebpf", 1), find("none", 0)) else {
        anyhow::bail!("the IPv6 comparisons need the ebpf 1-port and plain targets");
    };
    for direction in [Dnat, Snat] {
        for workload in [TcpCrr, TcpRr, UdpRr] {
            results.push(run(Comparison {
                what: format!("ebpf / plain routing, 1 port{VARIANT}"),
                a: one,
                b: plain,
                workload,
                direction,
            })?);
        }
    }
    let most = targets6
        .iter()
        .filter(|t| t.datapath == "ebpf")
        .max_by_key(|t| t.ports);
    if let Some(most) = most.filter(|t| t.ports > 1) {
        results.push(run(Comparison {
            what: format!("ebpf {} ports / ebpf 1 port{VARIANT}", most.ports),
            a: most,
            b: one,
            workload: TcpCrr,
            direction: Dnat,
        })?);
    }
    for direction in [Dnat, Snat] {
        results.push(run(Comparison {
            what: "ebpf IPv6 / ebpf IPv4, 1 port".into(),
            a: one,
            b: ebpf1,
            workload: TcpCrr,
            direction,
        })?);
    }
    Ok(results)
}
