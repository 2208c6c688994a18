//! The scenario suite, run against every datapath through the real daemon
//! (by `netd/tests/scenarios.rs` and by the demo): each probe is real ICMP,
//! TCP or UDP between namespaces, and must give the verdict written here.

use std::net::SocketAddr;

use crate::{
    Netns,
    daemon_host::{DaemonHost, HOST_IP, HOST_SECOND_IP, OUTSIDE_IP},
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
    /// None = must not get through; Some(addr) = must, and the server must
    /// see `addr` as the client ("-" for ICMP, where nothing reports it).
    pub expect: Option<&'static str>,
}

const fn probe(
    what: &'static str,
    from: Client,
    proto: Proto,
    to: &'static str,
    expect: Option<&'static str>,
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
        Some("172.17.0.2"),
    ),
    probe(
        "same network, ping",
        Ctr("c1"),
        Icmp,
        "172.17.0.3",
        Some("-"),
    ),
    probe("other network", Ctr("c1"), Tcp, "10.60.0.2:80", None),
    probe(
        "other network, other way",
        Ctr("c3"),
        Tcp,
        "172.17.0.2:80",
        None,
    ),
    probe("other network, ping", Ctr("c3"), Icmp, "172.17.0.2", None),
    probe(
        "to the outside (masquerade)",
        Ctr("c1"),
        Tcp,
        "198.51.100.2:7000",
        Some(HOST_IP),
    ),
    probe(
        "to the outside, UDP",
        Ctr("c2"),
        Udp,
        "198.51.100.2:7001",
        Some(HOST_IP),
    ),
    probe(
        "to the outside, ping",
        Ctr("c3"),
        Icmp,
        OUTSIDE_IP,
        Some("-"),
    ),
    probe("to the gateway", Ctr("c1"), Icmp, "172.17.0.1", Some("-")),
    probe(
        "published port from outside",
        Outside,
        Tcp,
        "198.51.100.1:8080",
        Some(OUTSIDE_IP),
    ),
    probe(
        "published UDP port from outside",
        Outside,
        Udp,
        "198.51.100.1:5353",
        Some(OUTSIDE_IP),
    ),
    probe(
        "published on all addresses, second address",
        Outside,
        Tcp,
        "198.51.100.3:8080",
        Some(OUTSIDE_IP),
    ),
    probe(
        "published on one host IP, that IP",
        Outside,
        Tcp,
        "198.51.100.3:7070",
        Some(OUTSIDE_IP),
    ),
    probe(
        "published on one host IP, another IP",
        Outside,
        Tcp,
        "198.51.100.1:7070",
        None,
    ),
    probe(
        "port range, second port",
        Outside,
        Tcp,
        "198.51.100.1:9101",
        Some(OUTSIDE_IP),
    ),
    probe(
        "published on 127.0.0.1, from outside",
        Outside,
        Tcp,
        "198.51.100.1:9090",
        None,
    ),
    probe(
        "unpublished port of a container",
        Outside,
        Tcp,
        "198.51.100.1:8081",
        None,
    ),
    probe(
        "container address directly from outside",
        Outside,
        Tcp,
        "172.17.0.2:80",
        None,
    ),
    probe(
        "container address directly, ping",
        Outside,
        Icmp,
        "172.17.0.2",
        None,
    ),
    probe(
        "hairpin, same network",
        Ctr("c2"),
        Tcp,
        "198.51.100.1:8080",
        Some("172.17.0.1"),
    ),
    probe(
        "hairpin, another network",
        Ctr("c3"),
        Tcp,
        "198.51.100.1:8080",
        Some("172.17.0.1"),
    ),
    probe(
        "hairpin, the backend itself",
        Ctr("c1"),
        Tcp,
        "198.51.100.1:8080",
        Some("172.17.0.1"),
    ),
    probe(
        "hairpin via the gateway address",
        Ctr("c2"),
        Tcp,
        "172.17.0.1:8080",
        Some("172.17.0.1"),
    ),
    probe(
        "host to a published port",
        Host,
        Tcp,
        "198.51.100.1:8080",
        Some("172.17.0.1"),
    ),
    probe(
        "host to 127.0.0.1, published on all",
        Host,
        Tcp,
        "127.0.0.1:8080",
        Some("172.17.0.1"),
    ),
    probe(
        "host to 127.0.0.1, published on 127.0.0.1",
        Host,
        Tcp,
        "127.0.0.1:9090",
        Some("172.17.0.1"),
    ),
    probe(
        "host to a container address",
        Host,
        Tcp,
        "172.17.0.2:80",
        Some("172.17.0.1"),
    ),
    probe(
        "host-mode container to a container",
        Ctr("hostc"),
        Tcp,
        "10.60.0.2:80",
        Some("10.60.0.1"),
    ),
    probe(
        "none-mode container to anything",
        Ctr("nonec"),
        Tcp,
        "172.17.0.2:80",
        None,
    ),
    probe(
        "internal network, inside",
        Ctr("i1"),
        Tcp,
        "10.61.0.3:80",
        Some("10.61.0.2"),
    ),
    probe(
        "internal network, out",
        Ctr("i1"),
        Tcp,
        "198.51.100.2:7000",
        None,
    ),
    probe(
        "internal network, in from outside",
        Outside,
        Icmp,
        "10.61.0.2",
        None,
    ),
    probe("icc=false, neighbour", Ctr("n1"), Tcp, "10.62.0.3:80", None),
    probe(
        "icc=false, neighbour ping",
        Ctr("n1"),
        Icmp,
        "10.62.0.3",
        None,
    ),
    probe(
        "icc=false, out",
        Ctr("n1"),
        Tcp,
        "198.51.100.2:7000",
        Some(HOST_IP),
    ),
    probe(
        "masquerade off: the outside sees the container",
        Ctr("m1"),
        Tcp,
        "198.51.100.2:7000",
        Some("10.63.0.2"),
    ),
    probe(
        "1 MiB upload over a 1280-MTU hop (PMTU via NAT)",
        Ctr("c1"),
        TcpUpload,
        "203.0.113.2:7002",
        Some("1048576"),
    ),
];

pub struct Suite {
    pub h: DaemonHost,
    _servers: Vec<EchoServer>,
}

impl Suite {
    fn ns(&self, from: Client) -> Netns {
        match from {
            Ctr(name) => self.h.ctr(name),
            Host => self.h.host.clone(),
            Outside => self.h.outside.clone(),
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Networks, containers and servers of the classic story, on `datapath`
/// (`daemon_flags` are added to the daemon's command line).
pub fn build(netd: &str, datapath: &str, daemon_flags: &[&str]) -> Suite {
    let flags: Vec<&str> = ["--datapath", datapath]
        .into_iter()
        .chain(daemon_flags.iter().copied())
        .collect();
    let mut h = DaemonHost::start(netd, &flags);
    let far = h.add_far_host("203.0.113.2", 1280);
    h.ok(&["network", "create", "second", "--subnet", "10.60.0.0/24"]);
    h.ok(&[
        "network",
        "create",
        "intern",
        "--subnet",
        "10.61.0.0/24",
        "--internal",
    ]);
    h.ok(&[
        "network",
        "create",
        "noicc",
        "--subnet",
        "10.62.0.0/24",
        "--icc=false",
    ]);
    h.ok(&[
        "network",
        "create",
        "nomasq",
        "--subnet",
        "10.63.0.0/24",
        "--masquerade=false",
    ]);
    let create = |short: &str, args: &[&str]| {
        let name = h.name(short);
        let mut all = vec!["container", "create", name.as_str()];
        all.extend_from_slice(args);
        h.ok(&all);
    };
    create(
        "c1",
        &[
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "-p",
            "127.0.0.1:9090:80",
            "-p",
            &format!("{HOST_SECOND_IP}:7070:80"),
            "-p",
            "9100-9101:80-81",
        ],
    );
    create("c2", &[]);
    create("c3", &["--network", "second"]);
    create("i1", &["--network", "intern"]);
    create("i2", &["--network", "intern"]);
    create("n1", &["--network", "noicc"]);
    create("n2", &["--network", "noicc"]);
    create("m1", &["--network", "nomasq"]);
    create("hostc", &["--network", "host"]);
    create("nonec", &["--network", "none"]);
    // The outside can route to every container subnet through the host, as an
    // L2 neighbour could: only netd's rules stand in the way.
    for subnet in [
        "172.17.0.0/16",
        "10.60.0.0/24",
        "10.61.0.0/24",
        "10.62.0.0/24",
        "10.63.0.0/24",
    ] {
        h.outside
            .ip(&["route", "add", subnet, "via", HOST_IP])
            .unwrap();
    }
    let mut servers = Vec::new();
    for (short, ip) in [
        ("c1", "172.17.0.2"),
        ("c2", "172.17.0.3"),
        ("c3", "10.60.0.2"),
        ("i1", "10.61.0.2"),
        ("i2", "10.61.0.3"),
        ("n1", "10.62.0.2"),
        ("n2", "10.62.0.3"),
        ("m1", "10.63.0.2"),
    ] {
        servers.push(EchoServer::tcp(&h.ctr(short), addr(&format!("{ip}:80")), "{peer}").unwrap());
    }
    servers.push(EchoServer::tcp(&h.ctr("c1"), addr("172.17.0.2:81"), "{peer}").unwrap());
    servers.push(EchoServer::udp(&h.ctr("c1"), addr("172.17.0.2:53"), "{peer}").unwrap());
    servers
        .push(EchoServer::tcp(&h.outside, addr(&format!("{OUTSIDE_IP}:7000")), "{peer}").unwrap());
    servers
        .push(EchoServer::udp(&h.outside, addr(&format!("{OUTSIDE_IP}:7001")), "{peer}").unwrap());
    servers.push(EchoServer::tcp_sink(&far, addr("203.0.113.2:7002")).unwrap());
    Suite {
        h,
        _servers: servers,
    }
}

/// What actually happened: "blocked", or the client address the server saw.
pub fn verdict(suite: &Suite, p: &Probe) -> String {
    let ns = suite.ns(p.from);
    match p.proto {
        Icmp => {
            if probe::ping(&ns, p.to, 1).unwrap() {
                "-".into()
            } else {
                "blocked".into()
            }
        }
        Tcp => match probe::tcp_request(&ns, addr(p.to), b"") {
            Ok(reply) if !reply.is_empty() => String::from_utf8_lossy(&reply).into_owned(),
            _ => "blocked".into(),
        },
        TcpUpload => match probe::tcp_upload(&ns, addr(p.to), 1 << 20) {
            Ok(bytes) => bytes.to_string(),
            Err(_) => "blocked".into(),
        },
        Udp => match probe::udp_request(&ns, addr(p.to), b"") {
            Ok(reply) => String::from_utf8_lossy(&reply).into_owned(),
            Err(_) => "blocked".into(),
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

/// Runs every probe (and disconnect/reconnect) on `datapath`.
pub fn run(netd: &str, datapath: &str, daemon_flags: &[&str]) -> Vec<Row> {
    let suite = build(netd, datapath, daemon_flags);
    let mut rows: Vec<Row> = PROBES
        .iter()
        .map(|p| Row {
            what: p.what.to_owned(),
            from: describe(p.from),
            to: p.to.to_owned(),
            want: p.expect.unwrap_or("blocked").to_owned(),
            got: verdict(&suite, p),
        })
        .collect();
    // Disconnect and reconnect: gone while disconnected, back at once after.
    let c2 = suite.h.name("c2");
    let c2_port = probe("", Ctr("c1"), Tcp, "172.17.0.3:80", None);
    suite.h.ok(&["network", "disconnect", "bridge", &c2]);
    let gone = verdict(&suite, &c2_port);
    suite
        .h
        .ok(&["network", "connect", "bridge", &c2, "--ip", "172.17.0.3"]);
    // c2's echo server stayed bound to 172.17.0.3 and answers again.
    let back = verdict(&suite, &c2_port);
    for (what, want, got) in [
        ("c2 disconnected", "blocked", gone),
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
    rows
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
