//! The scenario suite, run against every datapath through the real daemon
//! (by `tests/tests/scenarios.rs` and by the demo): each probe is real ICMP,
//! TCP or UDP between namespaces, and must give the verdict written here.

pub mod ipv6;

use std::net::SocketAddr;

use crate::{
    Netns,
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    docker::DockerHost,
    podman::PodmanHost,
    probe::{self, EchoServer},
};

#[derive(Clone, Copy)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    /// 1 MiB over TCP: the verdict is the byte count the server received.
    TcpUpload,
}

/// Who probes: a container (short name), the host itself, or the outside client.
#[derive(Clone, Copy)]
pub enum Client {
    Ctr(&'static str),
    Host,
    Outside,
}

pub struct Probe {
    pub what: &'static str,
    pub from: Client,
    pub proto: Proto,
    pub to: &'static str,
    pub expect: Expect,
}

/// What a probe must observe. A negative names how the traffic is stopped,
/// and the harness checks that very thing, so a broken harness (a server
/// that never started, a probe that cannot send) fails instead of passing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Gets through, and the server sees this client address ("-" for
    /// ICMP, where nothing reports it).
    Reach(&'static str),
    /// No answer, and the datapath counted the drop: on ebpf under this
    /// drop reason, on iptables in a DROP rule of this chain of netd's
    /// (Docker's raw-table rule stops some traffic before its isolation
    /// chains would), on nftables in a drop rule standing for that chain.
    Dropped(&'static str, &'static str),
    /// The host itself answers "connection refused": nothing is published
    /// there, and netd passed the packet to the host's stack.
    Refused,
    /// The sender has no route ("network is unreachable").
    Unreachable,
    /// No reply, and no container has the address (netd lists none).
    NoHost,
}

impl Expect {
    /// The verdict text a probe meeting this expectation gets.
    pub fn verdict(self) -> String {
        match self {
            Reach(seen) => seen.to_owned(),
            Dropped(reason, _) => format!("dropped ({reason})"),
            Refused => "refused".into(),
            Unreachable => "unreachable".into(),
            NoHost => "no host".into(),
        }
    }
}

use Expect::{Dropped, NoHost, Reach, Refused, Unreachable};

const fn probe(
    what: &'static str,
    from: Client,
    proto: Proto,
    to: &'static str,
    expect: Expect,
) -> Probe {
    Probe {
        what,
        from,
        proto,
        to,
        expect,
    }
}

use Client::{Ctr, Host, Outside};
use Proto::{Icmp, Tcp, TcpUpload, Udp};

/// The classic story and its variations. Echo servers in every container
/// answer with the client address they saw.
pub const PROBES: &[Probe] = &[
    probe(
        "same network",
        Ctr("c1"),
        Tcp,
        "172.17.0.3:80",
        Reach("172.17.0.2"),
    ),
    probe(
        "same network, ping",
        Ctr("c1"),
        Icmp,
        "172.17.0.3",
        Reach("-"),
    ),
    probe(
        "other network",
        Ctr("c1"),
        Tcp,
        "10.60.0.2:80",
        Dropped("network-isolation", "NETD-RAW"),
    ),
    probe(
        "other network, other way",
        Ctr("c3"),
        Tcp,
        "172.17.0.2:80",
        Dropped("network-isolation", "NETD-RAW"),
    ),
    probe(
        "other network, ping",
        Ctr("c3"),
        Icmp,
        "172.17.0.2",
        Dropped("network-isolation", "NETD-RAW"),
    ),
    probe(
        "to the outside (masquerade)",
        Ctr("c1"),
        Tcp,
        "198.51.100.2:7000",
        Reach(HOST_IP),
    ),
    probe(
        "to the outside, UDP",
        Ctr("c2"),
        Udp,
        "198.51.100.2:7001",
        Reach(HOST_IP),
    ),
    probe(
        "to the outside, ping",
        Ctr("c3"),
        Icmp,
        OUTSIDE_IP,
        Reach("-"),
    ),
    probe("to the gateway", Ctr("c1"), Icmp, "172.17.0.1", Reach("-")),
    probe(
        "published port from outside",
        Outside,
        Tcp,
        "198.51.100.1:8080",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "published UDP port from outside",
        Outside,
        Udp,
        "198.51.100.1:5353",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "published on all addresses, second address",
        Outside,
        Tcp,
        "198.51.100.3:8080",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "published on one host IP, that IP",
        Outside,
        Tcp,
        "198.51.100.3:7070",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "published on one host IP, another IP",
        Outside,
        Tcp,
        "198.51.100.1:7070",
        Refused,
    ),
    probe(
        "port range, second port",
        Outside,
        Tcp,
        "198.51.100.1:9101",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "published on 127.0.0.1, from outside",
        Outside,
        Tcp,
        "198.51.100.1:9090",
        Refused,
    ),
    probe(
        "unpublished port of a container",
        Outside,
        Tcp,
        "198.51.100.1:8081",
        Refused,
    ),
    probe(
        "container address directly from outside",
        Outside,
        Tcp,
        "172.17.0.2:80",
        Dropped("unsolicited-inbound", "NETD-RAW"),
    ),
    probe(
        "container address directly, ping",
        Outside,
        Icmp,
        "172.17.0.2",
        Dropped("unsolicited-inbound", "NETD-RAW"),
    ),
    probe(
        "hairpin, same network",
        Ctr("c2"),
        Tcp,
        "198.51.100.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "hairpin, another network",
        Ctr("c3"),
        Tcp,
        "198.51.100.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "hairpin, the backend itself",
        Ctr("c1"),
        Tcp,
        "198.51.100.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "hairpin via the gateway address",
        Ctr("c2"),
        Tcp,
        "172.17.0.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "host to a published port",
        Host,
        Tcp,
        "198.51.100.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "host to 127.0.0.1, published on all",
        Host,
        Tcp,
        "127.0.0.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "host to 127.0.0.1, published on 127.0.0.1",
        Host,
        Tcp,
        "127.0.0.1:9090",
        Reach("172.17.0.1"),
    ),
    probe(
        "host to a container address",
        Host,
        Tcp,
        "172.17.0.2:80",
        Reach("172.17.0.1"),
    ),
    probe(
        "host-mode container to a container",
        Ctr("hostc"),
        Tcp,
        "10.60.0.2:80",
        Reach("10.60.0.1"),
    ),
    probe(
        "none-mode container to anything",
        Ctr("nonec"),
        Tcp,
        "172.17.0.2:80",
        Unreachable,
    ),
    probe(
        "internal network, inside",
        Ctr("i1"),
        Tcp,
        "10.61.0.3:80",
        Reach("10.61.0.2"),
    ),
    // As Docker: no default route on an internal network.
    probe(
        "internal network, out",
        Ctr("i1"),
        Tcp,
        "198.51.100.2:7000",
        Unreachable,
    ),
    // i2 added a default route via the gateway itself: the datapath stops it.
    probe(
        "internal network, out by its own route",
        Ctr("i2"),
        Tcp,
        "198.51.100.2:7000",
        Dropped("internal-network", "NETD-ISOLATION-STAGE-1"),
    ),
    probe(
        "internal network, in from outside",
        Outside,
        Icmp,
        "10.61.0.2",
        Dropped("unsolicited-inbound", "NETD-ISOLATION-STAGE-1"),
    ),
    probe(
        "icc=false, neighbour",
        Ctr("n1"),
        Tcp,
        "10.62.0.3:80",
        Dropped("icc-disabled", "NETD-FORWARD"),
    ),
    probe(
        "icc=false, neighbour ping",
        Ctr("n1"),
        Icmp,
        "10.62.0.3",
        Dropped("icc-disabled", "NETD-FORWARD"),
    ),
    probe(
        "icc=false, out",
        Ctr("n1"),
        Tcp,
        "198.51.100.2:7000",
        Reach(HOST_IP),
    ),
    probe(
        "masquerade off: the outside sees the container",
        Ctr("m1"),
        Tcp,
        "198.51.100.2:7000",
        Reach("10.63.0.2"),
    ),
    // Docker 28's gateway modes.
    probe(
        "nat-unprotected: container address directly",
        Outside,
        Tcp,
        "10.64.0.2:80",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "nat-unprotected: ping directly",
        Outside,
        Icmp,
        "10.64.0.2",
        Reach("-"),
    ),
    probe(
        "nat-unprotected: out (masquerade)",
        Ctr("u1"),
        Tcp,
        "198.51.100.2:7000",
        Reach(HOST_IP),
    ),
    probe(
        "routed: published container port directly",
        Outside,
        Tcp,
        "10.65.0.2:80",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "routed: unpublished port directly",
        Outside,
        Tcp,
        "10.65.0.2:81",
        Dropped("unsolicited-inbound", "NETD-FORWARD"),
    ),
    probe(
        "routed: ping directly",
        Outside,
        Icmp,
        "10.65.0.2",
        Reach("-"),
    ),
    probe(
        "routed: no host port",
        Outside,
        Tcp,
        "198.51.100.1:8083",
        Refused,
    ),
    probe(
        "routed: out keeps the container's address",
        Ctr("r1"),
        Tcp,
        "198.51.100.2:7000",
        Reach("10.65.0.2"),
    ),
    // Docker 28 would let other networks reach a routed network's open
    // ports; netd keeps networks apart in every mode (docs/datapath.md).
    probe(
        "routed: from another network",
        Ctr("c3"),
        Tcp,
        "10.65.0.2:80",
        Dropped("network-isolation", "NETD-ISOLATION-STAGE-2"),
    ),
    probe(
        "isolated: inside",
        Ctr("s1"),
        Tcp,
        "10.66.0.3:80",
        Reach("10.66.0.2"),
    ),
    probe("isolated: no gateway", Ctr("s1"), Icmp, "10.66.0.1", NoHost),
    probe(
        "isolated: out",
        Ctr("s1"),
        Tcp,
        "198.51.100.2:7000",
        Unreachable,
    ),
    probe(
        "1 MiB upload over a 1280-MTU hop (PMTU via NAT)",
        Ctr("c1"),
        TcpUpload,
        "203.0.113.2:7002",
        Reach("1048576"),
    ),
];

/// The suite's second act: these user rules (`netd rule add`, in order),
/// then [`RULE_PROBES`]; then the first rule is removed again.
const RULES: &[&[&str]] = &[
    &[
        "deny", "--source", OUTSIDE_IP, "--proto", "tcp", "--port", "8080",
    ],
    &[
        "allow",
        "--source",
        "198.51.100.0/24",
        "--proto",
        "udp",
        "--port",
        "5353",
    ],
    &["deny", "--proto", "udp", "--port", "5300-5400"],
    &["deny", "--source", "203.0.113.0/24"],
    &["allow", "--proto", "tcp", "--port", "80"],
];

/// What the rules decide, and what is not theirs to decide.
pub const RULE_PROBES: &[Probe] = &[
    probe(
        "rule: a denied source, published port",
        Outside,
        Tcp,
        "198.51.100.1:8080",
        Dropped("user-rule", "NETD-USER"),
    ),
    probe(
        "rule: an allow before a deny (first match wins)",
        Outside,
        Udp,
        "198.51.100.1:5353",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "rule: no rule matches this port",
        Outside,
        Tcp,
        "198.51.100.1:9101",
        Reach(OUTSIDE_IP),
    ),
    probe(
        "rule: not for a container's hairpin",
        Ctr("c2"),
        Tcp,
        "198.51.100.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "rule: not for the host's own connections",
        Host,
        Tcp,
        "198.51.100.1:8080",
        Reach("172.17.0.1"),
    ),
    probe(
        "rule: an allow opens no container address",
        Outside,
        Tcp,
        "172.17.0.2:80",
        Dropped("unsolicited-inbound", "NETD-RAW"),
    ),
];

/// How the suite's networks and containers are made: through netd's own
/// CLI, by a real dockerd using netd as its network driver, or by a real
/// Podman using netd's CNI plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    Cli,
    Docker,
    Podman,
}

enum Hosts {
    Cli(Box<DaemonHost>),
    Docker(Box<DockerHost>),
    Podman(Box<PodmanHost>),
}

pub struct Suite {
    hosts: Hosts,
    /// `ebpf`, `iptables` or `nftables`: where drops are counted.
    pub datapath: String,
    _servers: Vec<EchoServer>,
}

impl Suite {
    /// The netd host (under Docker too: dockerd runs in its namespace).
    pub fn h(&self) -> &DaemonHost {
        match &self.hosts {
            Hosts::Cli(h) => h,
            Hosts::Docker(d) => &d.h,
            Hosts::Podman(p) => &p.h,
        }
    }

    fn ns(&self, from: Client) -> Netns {
        match from {
            Ctr(name) => self.h().ctr(name),
            Host => self.h().host.clone(),
            Outside => self.h().outside.clone(),
        }
    }

    /// Takes container `short` off the default network, then puts it back
    /// on `ip`: `netd network disconnect/connect`, or Docker's.
    fn disconnect_and_reconnect(&self, short: &str, ip: &str, between: impl FnOnce()) {
        let name = self.h().name(short);
        match &self.hosts {
            Hosts::Cli(h) => {
                h.ok(&["network", "disconnect", "bridge", &name]);
                between();
                h.ok(&["network", "connect", "bridge", &name, "--ip", ip]);
            }
            Hosts::Docker(d) => {
                let bridge = d.h.name("bridge");
                d.docker_ok(&["network", "disconnect", &bridge, &name]);
                between();
                d.docker_ok(&["network", "connect", "--ip", ip, &bridge, &name]);
            }
            Hosts::Podman(p) => {
                let bridge = p.h.name("bridge");
                p.podman_ok(&["network", "disconnect", &bridge, &name]);
                between();
                p.podman_ok(&["network", "connect", "--ip", ip, &bridge, &name]);
            }
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The networks of the classic story besides the default one: (name,
/// subnet, netd flags, Docker flags).
const NETWORKS: &[StoryNetwork] = &[
    ("second", "10.60.0.0/24", "", ""),
    ("intern", "10.61.0.0/24", "--internal", "--internal"),
    (
        "noicc",
        "10.62.0.0/24",
        "--icc=false",
        "-o=com.docker.network.bridge.enable_icc=false",
    ),
    (
        "nomasq",
        "10.63.0.0/24",
        "--masquerade=false",
        "-o=com.docker.network.bridge.enable_ip_masquerade=false",
    ),
    (
        "unprot",
        "10.64.0.0/24",
        "--gateway-mode-ipv4=nat-unprotected",
        "-o=com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected",
    ),
    (
        "routed",
        "10.65.0.0/24",
        "--gateway-mode-ipv4=routed",
        "-o=com.docker.network.bridge.gateway_mode_ipv4=routed",
    ),
    (
        "isol",
        "10.66.0.0/24",
        "--internal --gateway-mode-ipv4=isolated",
        "--internal -o=com.docker.network.bridge.gateway_mode_ipv4=isolated",
    ),
];

/// The containers: (short name, network, address, published ports).
const CONTAINERS: &[(&str, &str, &str, &[&str])] = &[
    (
        "c1",
        "bridge",
        "172.17.0.2",
        &[
            "8080:80",
            "5353:53/udp",
            "127.0.0.1:9090:80",
            "198.51.100.3:7070:80",
            "9100-9101:80-81",
        ],
    ),
    ("c2", "bridge", "172.17.0.3", &[]),
    ("c3", "second", "10.60.0.2", &[]),
    ("i1", "intern", "10.61.0.2", &[]),
    ("i2", "intern", "10.61.0.3", &[]),
    ("n1", "noicc", "10.62.0.2", &[]),
    ("n2", "noicc", "10.62.0.3", &[]),
    ("m1", "nomasq", "10.63.0.2", &[]),
    ("u1", "unprot", "10.64.0.2", &[]),
    // On 127.0.0.1: Podman holds the host ports of `-p` open itself (on
    // that address only, here), where netd's routed network ignores the
    // address and the port, as Docker does.
    ("r1", "routed", "10.65.0.2", &["127.0.0.1:8083:80"]),
    ("s1", "isol", "10.66.0.2", &[]),
    ("s2", "isol", "10.66.0.3", &[]),
    ("hostc", "host", "", &[]),
    ("nonec", "none", "", &[]),
];

/// Networks and containers of the classic story, made through `frontend`,
/// with the echo servers, on `datapath` (`daemon_flags` are added to the
/// daemon's command line).
pub fn build(netd: &str, datapath: &str, daemon_flags: &[&str], frontend: Frontend) -> Suite {
    let flags: Vec<&str> = ["--datapath", datapath]
        .into_iter()
        .chain(daemon_flags.iter().copied())
        .collect();
    let (mut hosts, far) = match frontend {
        Frontend::Cli => {
            let mut h = DaemonHost::start(netd, &flags);
            let far = h.add_far_host("203.0.113.2", 1280);
            for (name, subnet, netd_flag, _) in NETWORKS {
                let mut args = vec!["network", "create", name, "--subnet", subnet];
                args.extend(netd_flag.split_whitespace());
                h.ok(&args);
            }
            for (short, network, ip, ports) in CONTAINERS {
                let name = h.name(short);
                let mut args = vec!["container", "create", name.as_str(), "--network", network];
                if !ip.is_empty() {
                    args.extend(["--ip", ip]);
                }
                for port in *ports {
                    args.extend(["-p", port]);
                }
                h.ok(&args);
            }
            (Hosts::Cli(Box::new(h)), far)
        }
        Frontend::Docker => {
            let mut d = DockerHost::start(netd, &flags);
            let far = d.h.add_far_host("203.0.113.2", 1280);
            build_through_runtime(
                &d.h,
                |name, args| {
                    d.network(name, args);
                },
                |short, args| {
                    d.run(short, args);
                },
                |(_, _, _, docker_flag)| docker_flag,
            );
            (Hosts::Docker(Box::new(d)), far)
        }
        Frontend::Podman => {
            let plugin = std::path::Path::new(netd).with_file_name("netd-cni");
            let mut p = PodmanHost::start(netd, &plugin.display().to_string(), &flags);
            let far = p.h.add_far_host("203.0.113.2", 1280);
            build_through_runtime(
                &p.h,
                |name, args| p.network(name, args),
                |short, args| {
                    p.run(short, args);
                },
                |(_, _, netd_flag, _)| netd_flag,
            );
            (Hosts::Podman(Box::new(p)), far)
        }
    };
    let h: &mut DaemonHost = match &mut hosts {
        Hosts::Cli(h) => h,
        Hosts::Docker(d) => &mut d.h,
        Hosts::Podman(p) => &mut p.h,
    };
    // A container on the internal network routes out by itself.
    h.ctr("i2")
        .ip(&["route", "add", "default", "via", "10.61.0.1"])
        .unwrap();
    // The outside can route to every container subnet through the host, as an
    // L2 neighbour could: only netd's rules stand in the way.
    for subnet in [
        "172.17.0.0/16",
        "10.60.0.0/24",
        "10.61.0.0/24",
        "10.62.0.0/24",
        "10.63.0.0/24",
        "10.64.0.0/24",
        "10.65.0.0/24",
    ] {
        h.outside
            .ip(&["route", "add", subnet, "via", HOST_IP])
            .unwrap();
    }
    let mut servers = Vec::new();
    for (short, _, ip, _) in CONTAINERS.iter().filter(|c| !c.2.is_empty()) {
        servers.push(EchoServer::tcp(&h.ctr(short), addr(&format!("{ip}:80")), "{peer}").unwrap());
    }
    servers.push(EchoServer::tcp(&h.ctr("c1"), addr("172.17.0.2:81"), "{peer}").unwrap());
    // Unpublished on a routed network: stopped, not refused by the container.
    servers.push(EchoServer::tcp(&h.ctr("r1"), addr("10.65.0.2:81"), "{peer}").unwrap());
    servers.push(EchoServer::udp(&h.ctr("c1"), addr("172.17.0.2:53"), "{peer}").unwrap());
    servers
        .push(EchoServer::tcp(&h.outside, addr(&format!("{OUTSIDE_IP}:7000")), "{peer}").unwrap());
    servers
        .push(EchoServer::udp(&h.outside, addr(&format!("{OUTSIDE_IP}:7001")), "{peer}").unwrap());
    servers.push(EchoServer::tcp_sink(&far, addr("203.0.113.2:7002")).unwrap());
    Suite {
        hosts,
        datapath: datapath.to_owned(),
        _servers: servers,
    }
}

/// The story's networks and containers made by a runtime (Docker, Podman):
/// `network(name, args)` makes a network from `--subnet …` and the flag
/// `flag` picks for it (the runtime's or netd's spelling), `run(short,
/// args)` a container. The runtime's `bridge` means its own default
/// network, so netd's plays under the test's name, on the same subnet.
/// A network of the story: (name, subnet, netd flag, Docker flag).
type StoryNetwork = (&'static str, &'static str, &'static str, &'static str);

fn build_through_runtime(
    h: &DaemonHost,
    network: impl Fn(&str, &[&str]),
    run: impl Fn(&str, &[&str]),
    flag: impl Fn(&'static StoryNetwork) -> &'static str,
) {
    h.ok(&["network", "rm", "bridge"]);
    let bridge = h.name("bridge");
    network(
        &bridge,
        &["--subnet", "172.17.0.0/16", "--gateway", "172.17.0.1"],
    );
    let named = |n: &str| match n {
        "bridge" => bridge.clone(),
        "host" | "none" => n.to_owned(),
        other => h.name(other),
    };
    for net in NETWORKS {
        let mut args = vec!["--subnet", net.1];
        args.extend(flag(net).split_whitespace());
        network(&named(net.0), &args);
    }
    for (short, network, ip, ports) in CONTAINERS {
        let network = named(network);
        let mut args = vec!["--network", network.as_str()];
        if !ip.is_empty() {
            args.extend(["--ip", ip]);
        }
        for port in *ports {
            args.extend(["-p", port]);
        }
        run(short, &args);
    }
}

/// How a probe ended, before any evidence is looked at.
enum Outcome {
    /// The server answered (what it saw, or "-" for ICMP).
    Answer(String),
    /// Nothing came back: what timed out (the connect, the read), for a
    /// failure's message.
    NoReply(String),
    Refused,
    /// No route to the network, or (EHOSTUNREACH) to the host.
    Unreachable,
    Other(String),
}

fn classify(err: &anyhow::Error) -> Outcome {
    let Some(io) = err.chain().find_map(|e| e.downcast_ref::<std::io::Error>()) else {
        return Outcome::Other(format!("{err:#}"));
    };
    match (io.kind(), io.raw_os_error()) {
        (std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock, _) => {
            Outcome::NoReply(format!("{err:#}"))
        }
        (std::io::ErrorKind::ConnectionRefused, _) => Outcome::Refused,
        (_, Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => Outcome::Unreachable,
        _ => Outcome::Other(format!("{err:#}")),
    }
}

fn outcome(ns: &Netns, p: &Probe) -> Outcome {
    match p.proto {
        Icmp => match probe::ping_status(ns, p.to, 1) {
            Ok(0) => Outcome::Answer("-".into()),
            Ok(1) => Outcome::NoReply("no echo reply".into()),
            Ok(_) => Outcome::Unreachable,
            Err(err) => Outcome::Other(format!("{err:#}")),
        },
        Tcp => match probe::tcp_request(ns, addr(p.to), b"") {
            Ok(reply) if !reply.is_empty() => {
                Outcome::Answer(String::from_utf8_lossy(&reply).into_owned())
            }
            Ok(_) => Outcome::Other("connected, but an empty reply".into()),
            Err(err) => classify(&err),
        },
        TcpUpload => match probe::tcp_upload(ns, addr(p.to), 1 << 20) {
            Ok(bytes) => Outcome::Answer(bytes.to_string()),
            Err(err) => classify(&err),
        },
        Udp => match probe::udp_request(ns, addr(p.to), b"") {
            Ok(reply) => Outcome::Answer(String::from_utf8_lossy(&reply).into_owned()),
            Err(err) => classify(&err),
        },
    }
}

fn drop_counts(suite: &Suite) -> std::collections::BTreeMap<String, u64> {
    datapath_drops(suite.h(), &suite.datapath)
}

/// The datapath's drop counts: per drop reason on ebpf, per chain of netd's
/// DROP rules on iptables, and on nftables per the iptables chain its drop
/// counter stands for (see [`iptables_chain_of`]); IPv6's chains as `ip6
/// CHAIN` (ip6tables, the `ip6` table).
pub fn datapath_drops(h: &DaemonHost, datapath: &str) -> std::collections::BTreeMap<String, u64> {
    if datapath == "nftables" {
        nftables_drops(h)
    } else if datapath == "iptables" {
        let mut counts = iptables_drops(h, "iptables-save", "");
        counts.extend(iptables_drops(h, "ip6tables-save", "ip6 "));
        counts
    } else {
        status_drops(h)
    }
}

/// `save -c`'s counts of netd's DROP rules per chain, `prefix`ed.
fn iptables_drops(
    h: &DaemonHost,
    save: &str,
    prefix: &str,
) -> std::collections::BTreeMap<String, u64> {
    {
        let saved = h.host.run(save, &["-c"]).unwrap().stdout;
        let mut counts = std::collections::BTreeMap::new();
        for line in String::from_utf8_lossy(&saved).lines() {
            let Some((counters, rule)) = line.strip_prefix('[').and_then(|l| l.split_once("] "))
            else {
                continue;
            };
            let Some(chain) = rule
                .strip_prefix("-A ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            if chain.starts_with("NETD") && rule.ends_with("-j DROP") {
                let packets: u64 = counters.split(':').next().unwrap().parse().unwrap();
                *counts.entry(format!("{prefix}{chain}")).or_default() += packets;
            }
        }
        counts
    }
}

/// Drops per reason, as `netd status` reports them.
fn status_drops(h: &DaemonHost) -> std::collections::BTreeMap<String, u64> {
    let status = h.json(&["status", "--format", "json"]);
    status["drops"]
        .as_object()
        .map(|drops| {
            drops
                .iter()
                .map(|(reason, n)| (reason.clone(), n.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The named drop counters of netd's nftables tables, `ip` and `ip6`
/// (each kind of drop rule counts in its own), summed per the iptables
/// chain each stands for.
fn nftables_drops(h: &DaemonHost) -> std::collections::BTreeMap<String, u64> {
    let table = netd::driver::NFTABLES_TABLE;
    let out = h.host.run("nft", &["-j", "list", "counters"]).unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for object in listed["nftables"].as_array().into_iter().flatten() {
        let Some(counter) = object.get("counter").filter(|c| c["table"] == table) else {
            continue;
        };
        let name = counter["name"].as_str().unwrap_or_default();
        let chain = iptables_chain_of(name)
            .unwrap_or_else(|| panic!("a drop counter the suite does not know: {counter}"));
        let prefix = if counter["family"] == "ip6" {
            "ip6 "
        } else {
            ""
        };
        *counts.entry(format!("{prefix}{chain}")).or_default() +=
            counter["packets"].as_u64().unwrap();
    }
    counts
}

/// The chain of netd's iptables datapath that drops what an nftables drop
/// counter (one per kind of drop rule; the rules carry Docker 29's
/// comments) counts: one suite, one expectation for both.
pub fn iptables_chain_of(counter: &str) -> Option<&'static str> {
    Some(match counter {
        "drops-direct-access" | "drops-remote-loopback" => "NETD-RAW",
        "drops-internal-ingress" | "drops-internal-egress" => "NETD-ISOLATION-STAGE-1",
        "drops-isolation" => "NETD-ISOLATION-STAGE-2",
        "drops-icc" | "drops-unpublished-port" => "NETD-FORWARD",
        "drops-user-rule" => "NETD-USER",
        _ => return None,
    })
}

/// What actually happened, in the words of [`Expect::verdict`] when it is
/// what the probe expects. A probe that got no answer is "dropped" only if
/// the datapath counted the drop where the expectation says.
pub fn verdict(suite: &Suite, p: &Probe) -> String {
    let ns = suite.ns(p.from);
    let before = matches!(p.expect, Dropped(..)).then(|| drop_counts(suite));
    match outcome(&ns, p) {
        Outcome::Answer(seen) => seen,
        Outcome::Refused => "refused".into(),
        Outcome::Unreachable => "unreachable".into(),
        Outcome::Other(what) => what,
        Outcome::NoReply(what) => match (p.expect, before) {
            (Dropped(reason, chain), Some(before)) => {
                let after = drop_counts(suite);
                let grew: Vec<&String> = after
                    .iter()
                    .filter(|(k, n)| before.get(*k).copied().unwrap_or(0) < **n)
                    .map(|(k, _)| k)
                    .collect();
                // Not netd's per-reason reading on nftables: the rule that
                // fires names the reason there, and Docker's rules drop
                // some traffic in another rule than the eBPF datapath's
                // reason would say (docs/nftables-path.md).
                let key = match suite.datapath.as_str() {
                    "ebpf" => reason.to_owned(),
                    _ if p.to.starts_with('[') || p.to.contains("::") => format!("ip6 {chain}"),
                    _ => chain.to_owned(),
                };
                if grew.iter().any(|k| **k == key) {
                    format!("dropped ({reason})")
                } else {
                    format!("no reply, and the drops counted were {grew:?}, not {key}")
                }
            }
            (NoHost, _) => {
                let ip = p.to.split(':').next().unwrap();
                let containers = suite.h().json(&["container", "ls", "--format", "json"]);
                let holder = containers.as_array().unwrap().iter().find(|c| {
                    c["attachments"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["ip"] == ip)
                });
                match holder {
                    None => "no host".into(),
                    Some(c) => format!("no reply, but {} has {ip}", c["name"]),
                }
            }
            _ => format!("no reply ({what})"),
        },
    }
}

/// One row of the verdict matrix.
pub struct Row {
    pub what: String,
    pub from: String,
    pub to: String,
    pub want: String,
    pub got: String,
}

/// Runs every probe (and disconnect/reconnect) on `datapath`, with the
/// networks and containers made through `frontend`.
pub fn run(netd: &str, datapath: &str, daemon_flags: &[&str], frontend: Frontend) -> Vec<Row> {
    let suite = build(netd, datapath, daemon_flags, frontend);
    let mut rows: Vec<Row> = PROBES.iter().map(|p| row(&suite, p)).collect();
    // Disconnect and reconnect: gone while disconnected, back at once after.
    let c2_port = probe("", Ctr("c1"), Tcp, "172.17.0.3:80", NoHost);
    let mut gone = String::new();
    suite.disconnect_and_reconnect("c2", "172.17.0.3", || gone = verdict(&suite, &c2_port));
    // c2's echo server stayed bound to 172.17.0.3 and answers again.
    let back = verdict(&suite, &c2_port);
    for (what, want, got) in [
        ("c2 disconnected", "no host", gone),
        ("c2 reconnected", "172.17.0.2", back),
    ] {
        rows.push(Row {
            what: what.into(),
            from: "c1".into(),
            to: c2_port.to.into(),
            want: want.into(),
            got,
        });
    }
    rows.extend(rule_rows(&suite));
    rows
}

/// The user rules' act: added, probed, the first one removed again.
fn rule_rows(suite: &Suite) -> Vec<Row> {
    let ids: Vec<String> = RULES
        .iter()
        .map(|rule| {
            let args: Vec<&str> = ["rule", "add"].iter().chain(rule.iter()).copied().collect();
            suite.h().ok(&args).trim().to_owned()
        })
        .collect();
    let mut rows: Vec<Row> = RULE_PROBES.iter().map(|p| row(suite, p)).collect();
    suite.h().ok(&["rule", "rm", &ids[0]]);
    let reopened = probe(
        "rule removed: the published port again",
        Outside,
        Tcp,
        "198.51.100.1:8080",
        Reach(OUTSIDE_IP),
    );
    rows.push(row(suite, &reopened));
    for id in &ids[1..] {
        suite.h().ok(&["rule", "rm", id]);
    }
    rows
}

fn row(suite: &Suite, p: &Probe) -> Row {
    Row {
        what: p.what.to_owned(),
        from: describe(p.from),
        to: p.to.to_owned(),
        want: p.expect.verdict(),
        got: verdict(suite, p),
    }
}

/// The matrix as text; `BAD` marks a verdict that differs from the expectation.
pub fn matrix(datapath: &str, rows: &[Row]) -> String {
    let mut out = format!("verdict matrix, {datapath} datapath:\n");
    for r in rows {
        let mark = if r.got == r.want { "ok " } else { "BAD" };
        out.push_str(&format!(
            "  {mark} {:<48} {:<8} -> {:<20} {}\n",
            r.what, r.from, r.to, r.got
        ));
    }
    out
}

pub fn describe(from: Client) -> String {
    match from {
        Ctr(name) => name.to_owned(),
        Host => "host".into(),
        Outside => "outside".into(),
    }
}
