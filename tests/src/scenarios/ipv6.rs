//! The scenario suite's IPv6 story: dual-stack networks, each probe real
//! ICMPv6, TCP or UDP over IPv6 between namespaces, with the verdicts the
//! IPv4 story has for the same situation, on every datapath.
//!
//! Not here yet, because netd does not do them over IPv6 (see
//! docs/ipv6.md): ports on one IPv6 host address, routed networks, user
//! rules with IPv6 sources. The host to `[::1]` differs by design (the eBPF
//! datapath's socket hooks reach the port, as Docker's userland proxy
//! does; the netfilter datapaths, as Docker without it, cannot DNAT `::1`):
//! `tests/tests/ipv6.rs` checks it on ebpf.

use super::{
    Client::{Ctr, Host, Outside},
    Expect::{Dropped, Reach, Refused, Unreachable},
    Frontend, Hosts, Probe,
    Proto::{Icmp, Tcp, TcpUpload, Udp},
    Row, Suite, addr, probe, row,
};
use crate::{
    daemon_host::{DaemonHost, FAR_IP6, HOST_IP6, OUTSIDE_IP, OUTSIDE_IP6},
    docker::DockerHost,
    podman::PodmanHost,
    probe::EchoServer,
};

/// The IPv6 probes. Echo servers in every container answer with the client
/// address they saw.
pub const PROBES: &[Probe] = &[
    probe(
        "same network",
        Ctr("w1"),
        Tcp,
        "[fd00:70::3]:80",
        Reach("fd00:70::2"),
    ),
    probe(
        "same network, ping",
        Ctr("w1"),
        Icmp,
        "fd00:70::3",
        Reach("-"),
    ),
    probe(
        "other network",
        Ctr("w1"),
        Tcp,
        "[fd00:71::2]:80",
        Dropped("network-isolation", "NETD-RAW"),
    ),
    probe(
        "other network, ping",
        Ctr("s1"),
        Icmp,
        "fd00:70::2",
        Dropped("network-isolation", "NETD-RAW"),
    ),
    probe(
        "to the outside (NAT66)",
        Ctr("w1"),
        Tcp,
        "[fd99::2]:7000",
        Reach(HOST_IP6),
    ),
    probe(
        "to the outside, UDP",
        Ctr("w2"),
        Udp,
        "[fd99::2]:7001",
        Reach(HOST_IP6),
    ),
    probe(
        "to the outside, ping",
        Ctr("s1"),
        Icmp,
        OUTSIDE_IP6,
        Reach("-"),
    ),
    probe("to the gateway", Ctr("w1"), Icmp, "fd00:70::1", Reach("-")),
    probe(
        "published port from outside",
        Outside,
        Tcp,
        "[fd99::1]:8080",
        Reach(OUTSIDE_IP6),
    ),
    probe(
        "published UDP port from outside",
        Outside,
        Udp,
        "[fd99::1]:5353",
        Reach(OUTSIDE_IP6),
    ),
    probe(
        "the same port over IPv4",
        Outside,
        Tcp,
        "198.51.100.1:8080",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "published on 127.0.0.1, not on IPv6",
        Outside,
        Tcp,
        "[fd99::1]:9090",
        Refused,
    ),
    probe(
        "unpublished port of a container",
        Outside,
        Tcp,
        "[fd99::1]:8081",
        Refused,
    ),
    probe(
        "container address directly from outside",
        Outside,
        Tcp,
        "[fd00:70::2]:80",
        Dropped("unsolicited-inbound", "NETD-RAW"),
    ),
    probe(
        "container address directly, ping",
        Outside,
        Icmp,
        "fd00:70::2",
        Dropped("unsolicited-inbound", "NETD-RAW"),
    ),
    probe(
        "hairpin, same network",
        Ctr("w2"),
        Tcp,
        "[fd99::1]:8080",
        Reach("fd00:70::1"),
    ),
    probe(
        "hairpin, another network",
        Ctr("s1"),
        Tcp,
        "[fd99::1]:8080",
        Reach("fd00:70::1"),
    ),
    probe(
        "hairpin, the backend itself",
        Ctr("w1"),
        Tcp,
        "[fd99::1]:8080",
        Reach("fd00:70::1"),
    ),
    probe(
        "hairpin via the gateway address",
        Ctr("w2"),
        Tcp,
        "[fd00:70::1]:8080",
        Reach("fd00:70::1"),
    ),
    probe(
        "hairpin, UDP",
        Ctr("s1"),
        Udp,
        "[fd99::1]:5353",
        Reach("fd00:70::1"),
    ),
    probe(
        "host to a container address",
        Host,
        Tcp,
        "[fd00:70::2]:80",
        Reach("fd00:70::1"),
    ),
    // The backend sees its gateway, as for IPv4 (eBPF: the socket hooks;
    // netfilter: DNAT in OUTPUT, then MASQUERADE FROM HOST).
    probe(
        "host to a published port",
        Host,
        Tcp,
        "[fd99::1]:8080",
        Reach("fd00:70::1"),
    ),
    probe(
        "host to a published UDP port",
        Host,
        Udp,
        "[fd99::1]:5353",
        Reach("fd00:70::1"),
    ),
    probe(
        "internal network, inside",
        Ctr("i1"),
        Tcp,
        "[fd00:72::3]:80",
        Reach("fd00:72::2"),
    ),
    // As Docker: no default route on an internal network.
    probe(
        "internal network, out",
        Ctr("i1"),
        Tcp,
        "[fd99::2]:7000",
        Unreachable,
    ),
    // i2 added a default route via the gateway itself: the datapath stops it.
    probe(
        "internal network, out by its own route",
        Ctr("i2"),
        Tcp,
        "[fd99::2]:7000",
        Dropped("internal-network", "NETD-ISOLATION-STAGE-1"),
    ),
    probe(
        "internal network, in from outside",
        Outside,
        Icmp,
        "fd00:72::2",
        Dropped("unsolicited-inbound", "NETD-ISOLATION-STAGE-1"),
    ),
    probe(
        "icc=false, neighbour",
        Ctr("n1"),
        Tcp,
        "[fd00:73::3]:80",
        Dropped("icc-disabled", "NETD-FORWARD"),
    ),
    probe(
        "icc=false, neighbour ping",
        Ctr("n1"),
        Icmp,
        "fd00:73::3",
        Dropped("icc-disabled", "NETD-FORWARD"),
    ),
    probe(
        "icc=false, out",
        Ctr("n1"),
        Tcp,
        "[fd99::2]:7000",
        Reach(HOST_IP6),
    ),
    probe(
        "masquerade off: the outside sees the container",
        Ctr("m1"),
        Tcp,
        "[fd99::2]:7000",
        Reach("fd00:74::2"),
    ),
    probe(
        "1 MiB upload over a 1280-MTU hop (packet too big via NAT66)",
        Ctr("w1"),
        TcpUpload,
        "[fd98::2]:7002",
        Reach("1048576"),
    ),
];

/// The story's networks, each dual-stack: (name, IPv4 subnet, IPv6
/// subnet, netd flags, Docker flags).
const NETWORKS: &[(&str, &str, &str, &str, &str)] = &[
    ("web", "10.70.0.0/24", "fd00:70::/64", "", ""),
    ("second", "10.71.0.0/24", "fd00:71::/64", "", ""),
    (
        "intern",
        "10.72.0.0/24",
        "fd00:72::/64",
        "--internal",
        "--internal",
    ),
    (
        "noicc",
        "10.73.0.0/24",
        "fd00:73::/64",
        "--icc=false",
        "-o=com.docker.network.bridge.enable_icc=false",
    ),
    (
        "nomasq",
        "10.74.0.0/24",
        "fd00:74::/64",
        "--masquerade=false",
        "-o=com.docker.network.bridge.enable_ip_masquerade=false",
    ),
];

/// The containers: (short name, network, IPv4 and IPv6 address, ports).
const CONTAINERS: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "w1",
        "web",
        "10.70.0.2",
        "fd00:70::2",
        &["8080:80", "5353:53/udp", "127.0.0.1:9090:80"],
    ),
    ("w2", "web", "10.70.0.3", "fd00:70::3", &[]),
    ("s1", "second", "10.71.0.2", "fd00:71::2", &[]),
    ("i1", "intern", "10.72.0.2", "fd00:72::2", &[]),
    ("i2", "intern", "10.72.0.3", "fd00:72::3", &[]),
    ("n1", "noicc", "10.73.0.2", "fd00:73::2", &[]),
    ("n2", "noicc", "10.73.0.3", "fd00:73::3", &[]),
    ("m1", "nomasq", "10.74.0.2", "fd00:74::2", &[]),
];

/// The dual-stack story made through `frontend` (netd's CLI, a real
/// dockerd with netd as its network driver, a real Podman with netd's CNI
/// plugin), with its echo servers, on `datapath`.
pub fn build(netd: &str, datapath: &str, daemon_flags: &[&str], frontend: Frontend) -> Suite {
    let flags: Vec<&str> = ["--datapath", datapath]
        .into_iter()
        .chain(daemon_flags.iter().copied())
        .collect();
    let mut hosts = match frontend {
        Frontend::Cli => {
            let h = DaemonHost::start(netd, &flags);
            for (name, subnet, subnet6, netd_flag, _) in NETWORKS {
                let mut args = vec!["network", "create", name, "--subnet", subnet];
                args.extend(["--subnet", subnet6]);
                args.extend(netd_flag.split_whitespace());
                h.ok(&args);
            }
            for (short, network, ip, ip6, ports) in CONTAINERS {
                let name = h.name(short);
                let mut args = vec!["container", "create", name.as_str(), "--network", network];
                args.extend(["--ip", ip, "--ip6", ip6]);
                for port in *ports {
                    args.extend(["-p", port]);
                }
                h.ok(&args);
            }
            Hosts::Cli(Box::new(h))
        }
        Frontend::Docker => {
            let d = DockerHost::start(netd, &flags);
            for (name, subnet, subnet6, _, docker_flag) in NETWORKS {
                let mut args = vec!["--ipv6", "--subnet", subnet, "--subnet", subnet6];
                args.extend(docker_flag.split_whitespace());
                d.network(&d.h.name(name), &args);
            }
            run_containers(&d.h, |short, args| {
                d.run(short, args);
            });
            Hosts::Docker(Box::new(d))
        }
        Frontend::Podman => {
            let plugin = std::path::Path::new(netd).with_file_name("netd-cni");
            let p = PodmanHost::start(netd, &plugin.display().to_string(), &flags);
            for (name, subnet, subnet6, netd_flag, _) in NETWORKS {
                let mut args = vec!["--subnet", subnet, "--subnet", subnet6];
                args.extend(netd_flag.split_whitespace());
                p.network(&p.h.name(name), &args);
            }
            run_containers(&p.h, |short, args| {
                p.run(short, args);
            });
            Hosts::Podman(Box::new(p))
        }
    };
    let h: &mut DaemonHost = match &mut hosts {
        Hosts::Cli(h) => h,
        Hosts::Docker(d) => &mut d.h,
        Hosts::Podman(p) => &mut p.h,
    };
    h.add_uplink_ipv6();
    let far = h.add_far_host6(1280);
    h.ctr("i2")
        .ip(&["-6", "route", "add", "default", "via", "fd00:72::1"])
        .unwrap();
    // icc=false also stops neighbour discovery between n1 and n2 on the
    // netfilter datapaths (it is bridged through their FORWARD rules), so
    // n1 would never send the probes' packets: it knows n2's MAC, and the
    // probes' own packets meet the icc rule (on every datapath).
    let n2_mac = h.ctr("n2").mac("eth0").unwrap();
    let n2_mac: Vec<String> = n2_mac.iter().map(|b| format!("{b:02x}")).collect();
    h.ctr("n1")
        .ip(&[
            "-6",
            "neigh",
            "replace",
            "fd00:73::3",
            "lladdr",
            &n2_mac.join(":"),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .unwrap();
    let mut servers = Vec::new();
    for (short, _, ip, ip6, _) in CONTAINERS {
        for at in [format!("[{ip6}]:80"), format!("{ip}:80")] {
            servers.push(EchoServer::tcp(&h.ctr(short), addr(&at), "{peer}").unwrap());
        }
    }
    servers.push(EchoServer::udp(&h.ctr("w1"), addr("[fd00:70::2]:53"), "{peer}").unwrap());
    let outside = |port: u16| addr(&format!("[{OUTSIDE_IP6}]:{port}"));
    servers.push(EchoServer::tcp(&h.outside, outside(7000), "{peer}").unwrap());
    servers.push(EchoServer::udp(&h.outside, outside(7001), "{peer}").unwrap());
    servers.push(EchoServer::tcp_sink(&far, addr(&format!("[{FAR_IP6}]:7002"))).unwrap());
    Suite {
        hosts,
        datapath: datapath.to_owned(),
        _servers: servers,
    }
}

/// The containers made by a runtime: `run(short, args)` with the runtime's
/// `--network`, `--ip`, `--ip6` and `-p`.
fn run_containers(h: &DaemonHost, run: impl Fn(&str, &[&str])) {
    for (short, network, ip, ip6, ports) in CONTAINERS {
        let network = h.name(network);
        let mut args = vec!["--network", network.as_str(), "--ip", ip, "--ip6", ip6];
        for port in *ports {
            args.extend(["-p", port]);
        }
        run(short, &args);
    }
}

/// Every IPv6 probe on `datapath`, the story made through `frontend`.
pub fn run(netd: &str, datapath: &str, daemon_flags: &[&str], frontend: Frontend) -> Vec<Row> {
    let suite = build(netd, datapath, daemon_flags, frontend);
    PROBES.iter().map(|p| row(&suite, p)).collect()
}
