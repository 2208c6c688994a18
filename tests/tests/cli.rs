//! `netd daemon` and its CLI through the real binary, in isolated
//! namespaces: every command, bad input, restarts, parallel calls.

use netd::error::ErrorKind;
use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
};
use serde_json::Value;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn networks_containers_and_published_ports_end_to_end() {
    let h = DaemonHost::start(netd(), &[]);
    let nets = h.json(&["network", "ls", "--format", "json"]);
    assert_eq!(nets[0]["name"], "bridge");
    assert_eq!(nets[0]["subnet"], "172.17.0.0/16", "Docker's first pool");
    assert_eq!(h.ok(&["network", "create", "backend"]).trim(), "backend");
    let backend = h.json(&["network", "inspect", "backend"]);
    assert_eq!(
        (backend["subnet"].as_str(), backend["gateway"].as_str()),
        (Some("172.18.0.0/16"), Some("172.18.0.1"))
    );

    let (web, db) = (h.name("web"), h.name("db"));
    h.ok(&[
        "container",
        "create",
        &web,
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "-p",
        "90",
    ]);
    h.ok(&[
        "container",
        "create",
        &db,
        "--network",
        "backend",
        "--ip",
        "172.18.0.10",
    ]);
    let info = h.json(&["container", "inspect", &web]);
    assert_eq!(info["attachments"][0]["ip"], "172.17.0.2");
    assert_eq!(info["attachments"][0]["network"], "bridge");
    assert_eq!(
        info["ports"][2]["host_port"], 49153,
        "-p 90 picks a free host port"
    );
    assert!(h.ok(&["container", "ls"]).contains("0.0.0.0:8080->80/tcp"));

    // Real traffic: published ports with the client's address, isolation, masquerade.
    let web_ns = h.ctr("web");
    let _tcp = EchoServer::tcp(&web_ns, addr("172.17.0.2:80"), "web saw {peer}:").unwrap();
    let _udp = EchoServer::udp(&web_ns, addr("172.17.0.2:53"), "web saw {peer}:").unwrap();
    let expect = format!("web saw {OUTSIDE_IP}:hi").into_bytes();
    assert_eq!(
        probe::tcp_request(&h.outside, addr(&format!("{HOST_IP}:8080")), b"hi").unwrap(),
        expect
    );
    assert_eq!(
        probe::udp_request(&h.outside, addr(&format!("{HOST_IP}:5353")), b"hi").unwrap(),
        expect
    );
    assert!(
        !probe::ping(&h.ctr("db"), "172.17.0.2", 1).unwrap(),
        "networks are isolated"
    );
    let _out = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7000")),
        "saw {peer}:",
    )
    .unwrap();
    let expect = format!("saw {HOST_IP}:x").into_bytes();
    assert_eq!(
        probe::tcp_request(&h.ctr("db"), addr(&format!("{OUTSIDE_IP}:7000")), b"x").unwrap(),
        expect
    );
    assert_eq!(
        probe::tcp_request(&h.host, addr("127.0.0.1:8080"), b"hi").unwrap(),
        b"web saw 172.17.0.1:hi"
    );

    let conntrack = h.json(&["conntrack", "ls", "--format", "json"]);
    assert!(
        conntrack
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["nat"] == "dnat"
                && c["src"]
                    == format!(
                        "{OUTSIDE_IP}:{}",
                        c["src"].as_str().unwrap().rsplit(':').next().unwrap()
                    ))
    );
    let status = h.json(&["status", "--format", "json"]);
    assert_eq!(status["datapath"], "ebpf");
    assert_eq!(status["published_ports"], 3);
    assert_eq!(status["maps"]["ENDPOINTS"]["entries"], 2);
    // For people: sections and aligned tables, not JSON.
    let text = h.ok(&["status"]);
    assert!(text.starts_with("datapath     ebpf\n"), "{text}");
    assert!(
        text.contains("objects      2 networks, 2 containers, 3 published ports, 0 user rules"),
        "{text}"
    );
    let endpoints = text
        .lines()
        .find(|l| l.trim_start().starts_with("ENDPOINTS "))
        .unwrap_or_else(|| panic!("no ENDPOINTS row in:\n{text}"));
    let cells: Vec<&str> = endpoints.split_whitespace().collect();
    assert_eq!(cells[1], "2", "{endpoints}");
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());

    h.refused(
        &["network", "rm", "backend"],
        ErrorKind::Conflict,
        "has containers attached",
    );
    h.ok(&["container", "rm", &db]);
    h.ok(&["network", "rm", "backend"]);
    assert!(!PathBuf::from(format!("/run/netns/{db}")).exists());
    // A container re-created on the same address and port gets traffic at once.
    h.ok(&["container", "rm", &web]);
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let _tcp2 = EchoServer::tcp(&h.ctr("web"), addr("172.17.0.2:80"), "new:").unwrap();
    assert_eq!(
        probe::tcp_request(&h.outside, addr(&format!("{HOST_IP}:8080")), b"q").unwrap(),
        b"new:q"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let h = DaemonHost::start(netd(), &[]);
    h.ok(&["network", "create", "web", "--subnet", "10.10.0.0/16"]);
    let c1 = h.name("c1");
    h.ok(&[
        "container",
        "create",
        &c1,
        "--network",
        "web",
        "--ip",
        "10.10.0.5",
        "-p",
        "8080:80",
    ]);
    h.refused(
        &["network", "create", "web"],
        ErrorKind::Conflict,
        "already exists",
    );
    h.refused(
        &["network", "create", "other", "--subnet", "10.10.5.0/24"],
        ErrorKind::Conflict,
        "overlaps network \"web\"",
    );
    h.refused(
        &[
            "network",
            "create",
            "other",
            "--subnet",
            "10.20.0.0/16",
            "--gateway",
            "10.30.0.1",
        ],
        ErrorKind::Invalid,
        "not a usable address of subnet",
    );
    h.refused(
        &[
            "network",
            "create",
            "other",
            "--subnet",
            "10.20.0.0/16",
            "--ip-range",
            "10.21.0.0/24",
        ],
        ErrorKind::Invalid,
        "invalid ip-range 10.21.0.0/24: parent subnet 10.20.0.0/16 doesn't contain ip-range",
    );
    h.refused(
        &[
            "network",
            "create",
            "other",
            "--gateway-mode-ipv4",
            "Routed",
        ],
        ErrorKind::Invalid,
        "unknown gateway mode Routed",
    );
    h.refused(
        &[
            "network",
            "create",
            "other",
            "--gateway-mode-ipv4",
            "isolated",
        ],
        ErrorKind::Invalid,
        "gateway mode 'isolated' can only be used for an internal network",
    );
    h.refused(
        &["network", "create", "other", "--subnet", "10.20.0.5/16"],
        ErrorKind::Invalid,
        "did you mean 10.20.0.0/16",
    );
    h.refused(
        &["network", "create", "other", "--subnet", "banana"],
        ErrorKind::Invalid,
        "is not a subnet",
    );
    h.refused(
        &["network", "create", "bad/name"],
        ErrorKind::Invalid,
        "invalid network name",
    );
    h.refused(
        &["network", "create", "host"],
        ErrorKind::Invalid,
        "reserved",
    );
    h.refused(
        &[
            "container",
            "create",
            &h.name("c2"),
            "--network",
            "web",
            "--ip",
            "10.10.0.5",
        ],
        ErrorKind::Conflict,
        "already in use",
    );
    h.refused(
        &[
            "container",
            "create",
            &h.name("c2"),
            "--network",
            "web",
            "--ip",
            "10.99.0.5",
        ],
        ErrorKind::Invalid,
        "not a usable address",
    );
    h.refused(
        &["container", "create", &h.name("c2"), "-p", "8080:81"],
        ErrorKind::Conflict,
        "already published",
    );
    h.refused(
        &["container", "create", &h.name("c2"), "-p", "80:80/sctp"],
        ErrorKind::Invalid,
        "unknown protocol",
    );
    // (`-p 1-3:80` is Docker's "any one of 1-3": accepted.)
    h.refused(
        &["container", "create", &h.name("c2"), "-p", "1-3:80-81"],
        ErrorKind::Invalid,
        "differ in size",
    );
    h.refused(
        &["container", "create", &h.name("c2"), "--network", "nope"],
        ErrorKind::NotFound,
        "no network named \"nope\"",
    );
    h.refused(
        &["container", "create", &c1],
        ErrorKind::Conflict,
        "already exists",
    );
    h.refused(
        &["container", "rm", "nope"],
        ErrorKind::NotFound,
        "no container named",
    );
    h.refused(
        &["network", "inspect", "nope"],
        ErrorKind::NotFound,
        "no network named",
    );
    // Nothing half-made was left behind by the refusals.
    assert!(!PathBuf::from(format!("/run/netns/{}", h.name("c2"))).exists());
    let links = Command::new("ip")
        .args(["-n", h.host.name(), "-o", "link"])
        .output()
        .unwrap();
    let veths = String::from_utf8_lossy(&links.stdout)
        .matches("veth")
        .count();
    assert_eq!(veths, 1, "only c1's veth");
}

#[test]
fn malformed_requests_get_an_error_and_the_daemon_keeps_serving() {
    let h = DaemonHost::start(netd(), &[]);
    for garbage in [
        &b"not json\n"[..],
        b"{\"op\":\"network-rm\"}\n",
        b"{\"op\":\"launch-missiles\"}\n",
    ] {
        let mut s = UnixStream::connect(h.socket()).unwrap();
        s.write_all(garbage).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["kind"], "invalid", "{reply}");
    }
    let mut s = UnixStream::connect(h.socket()).unwrap();
    let _ = s.write_all(&vec![b'x'; netd::api::MAX_REQUEST_BYTES + 1000]);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("larger than"), "{reply}");
    // Truncated: the client goes away mid-request.
    drop(
        UnixStream::connect(h.socket())
            .unwrap()
            .write_all(b"{\"op\":"),
    );
    let mode = std::fs::metadata(h.socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o660);
    h.ok(&["network", "ls"]);
}

#[test]
fn parallel_creates_get_distinct_addresses() {
    let h = DaemonHost::start(netd(), &[]);
    let names: Vec<String> = (0..50).map(|i| h.name(&format!("p{i}"))).collect();
    std::thread::scope(|s| {
        for name in &names {
            let h = &h;
            s.spawn(move || h.ok(&["container", "create", name]));
        }
    });
    let list = h.json(&["container", "ls", "--format", "json"]);
    let mut ips: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["attachments"][0]["ip"].as_str().unwrap().to_owned())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), names.len());
}

/// Daemon flags for each way of attaching programs: TCX (this kernel's
/// best) and the clsact fallback older kernels use.
const ATTACH_MODES: [(&str, &[&str]); 2] =
    [("tcx", &[]), ("clsact", &["--kernel-features", "legacy"])];

/// netd's filters on the uplink in clsact mode: (ingress, egress) lines.
fn uplink_filters(h: &DaemonHost) -> (Vec<String>, Vec<String>) {
    let filters = |direction: &str| -> Vec<String> {
        h.tc(&["filter", "show", "dev", &h.uplink, direction])
            .lines()
            .filter(|l| l.contains("direct-action"))
            .map(str::to_owned)
            .collect()
    };
    (filters("ingress"), filters("egress"))
}

#[test]
fn connections_survive_a_kill_9_restart_and_a_stopped_daemon() {
    for (mode, flags) in ATTACH_MODES {
        println!("attach mode {mode}");
        restart_keeps_connections(mode, flags);
    }
}

fn restart_keeps_connections(mode: &str, flags: &[&str]) {
    let mut h = DaemonHost::start(netd(), flags);
    assert_eq!(
        h.json(&["status", "--format", "json"])["programs"]["attach"],
        mode
    );
    let web = h.name("web");
    h.ok(&[
        "network",
        "create",
        "apps",
        "--subnet",
        "10.40.0.0/24",
        "--icc=false",
    ]);
    h.ok(&[
        "container",
        "create",
        &web,
        "--network",
        "apps",
        "-p",
        "8080:80",
    ]);
    let before = h.ok(&["container", "ls", "--format", "json"]);
    let _inbound_server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("10.40.0.2:80")).unwrap();
    let _outbound_server =
        EchoServer::tcp_stream_echo(&h.outside, addr(&format!("{OUTSIDE_IP}:7000"))).unwrap();
    // Long-lived connections: through the published port, and through masquerade.
    let mut inbound = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    let mut outbound =
        probe::tcp_connect(&h.ctr("web"), addr(&format!("{OUTSIDE_IP}:7000"))).unwrap();
    probe::echo_roundtrip(&mut inbound, b"before").unwrap();
    probe::echo_roundtrip(&mut outbound, b"before").unwrap();

    // kill -9: no chance to clean up. Pinned programs keep forwarding.
    h.kill_daemon(libc::SIGKILL);
    probe::echo_roundtrip(&mut inbound, b"daemon dead").unwrap();
    probe::echo_roundtrip(&mut outbound, b"daemon dead").unwrap();
    h.spawn_daemon();
    probe::echo_roundtrip(&mut inbound, b"after restart").unwrap();
    probe::echo_roundtrip(&mut outbound, b"after restart").unwrap();
    if mode == "clsact" {
        // The restart swapped the programs inside netd's filters: one each.
        let (ingress, egress) = uplink_filters(&h);
        assert!(
            ingress.len() == 1 && ingress[0].contains("from_uplink"),
            "{ingress:?}"
        );
        assert!(
            egress.len() == 1 && egress[0].contains("to_uplink"),
            "{egress:?}"
        );
    }
    assert_eq!(h.ok(&["container", "ls", "--format", "json"]), before);
    assert_eq!(h.json(&["network", "inspect", "apps"])["icc"], false);
    // New connections too.
    let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    probe::echo_roundtrip(&mut fresh, b"new").unwrap();

    // A clean stop (SIGTERM without --cleanup) also leaves the datapath running.
    h.kill_daemon(libc::SIGTERM);
    probe::echo_roundtrip(&mut inbound, b"stopped").unwrap();
    let mut while_stopped =
        probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    probe::echo_roundtrip(&mut while_stopped, b"new while stopped").unwrap();
    h.spawn_daemon();
    drop((inbound, outbound, fresh, while_stopped));
}

/// Restarting in the other mode moves every program (uplink and container
/// veth) to the other mechanism, leaving none behind in the old one (both
/// would run), and keeps the connection.
#[test]
fn switching_kernel_modes_across_restarts_moves_every_program() {
    let mut h = DaemonHost::start(netd(), &[]);
    let web = h.name("web");
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let veth = h.json(&["container", "inspect", &web])["attachments"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
    let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    probe::echo_roundtrip(&mut conn, b"tcx").unwrap();
    let links = h.bpffs().join("links");
    // Container veths get a clsact filter in both modes (cheaper to attach
    // and remove than a TCX link); the uplinks follow the mode.
    let pins = [
        format!("uplink-in-{}", h.uplink),
        format!("uplink-out-{}", h.uplink),
    ];
    let tcx_pins = || pins.iter().filter(|p| links.join(p).exists()).count();
    let veth_filters = |h: &DaemonHost| {
        h.tc(&["filter", "show", "dev", &veth, "ingress"])
            .lines()
            .filter(|l| l.contains("direct-action"))
            .count()
    };
    assert_eq!(tcx_pins(), 2);
    assert_eq!(veth_filters(&h), 1);
    assert!(
        !links.join(&veth).exists(),
        "a TCX link pinned for the veth"
    );

    h.kill_daemon(libc::SIGTERM);
    h.spawn_daemon_with(&["--kernel-features", "legacy"]);
    assert_eq!(
        h.json(&["status", "--format", "json"])["programs"]["attach"],
        "clsact"
    );
    assert_eq!(tcx_pins(), 0, "TCX links left beside the clsact filters");
    let (ingress, egress) = uplink_filters(&h);
    assert_eq!((ingress.len(), egress.len(), veth_filters(&h)), (1, 1, 1));
    probe::echo_roundtrip(&mut conn, b"clsact").unwrap();

    h.kill_daemon(libc::SIGTERM);
    h.spawn_daemon();
    assert_eq!(
        h.json(&["status", "--format", "json"])["programs"]["attach"],
        "tcx"
    );
    assert_eq!(tcx_pins(), 2);
    let (ingress, egress) = uplink_filters(&h);
    assert_eq!((ingress.len(), egress.len(), veth_filters(&h)), (0, 0, 1));
    probe::echo_roundtrip(&mut conn, b"tcx again").unwrap();
}

#[test]
fn down_removes_everything() {
    for (mode, flags) in ATTACH_MODES {
        println!("attach mode {mode}");
        down_removes_everything_in(mode, flags);
    }
}

fn down_removes_everything_in(mode: &str, flags: &[&str]) {
    let mut h = DaemonHost::start(netd(), flags);
    let c = h.name("c");
    if mode == "clsact" {
        assert!(
            h.tc(&["qdisc", "show", "dev", &h.uplink])
                .contains("clsact")
        );
        assert_eq!(uplink_filters(&h).0.len(), 1);
    }
    h.ok(&["network", "create", "x"]);
    h.ok(&["container", "create", &c, "--network", "x"]);
    h.ok(&["down"]);
    h.daemon.take().unwrap().wait();
    assert!(!PathBuf::from(format!("/run/netns/{c}")).exists());
    assert!(!h.bpffs().exists(), "pins removed");
    let links = Command::new("ip")
        .args(["-n", h.host.name(), "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("veth") && !links.contains("netd0") && !links.contains("br-"),
        "{links}"
    );
    let qdiscs = h.tc(&["qdisc", "show", "dev", &h.uplink]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
}

#[test]
fn the_daemon_refuses_to_run_without_root_saying_why() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            netd(),
            "daemon",
            "--state-dir",
            "/tmp/netd-nobody",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
}

#[test]
fn connect_and_disconnect_move_a_container_between_networks() {
    let h = DaemonHost::start(netd(), &[]);
    let (a, b, host_mode) = (h.name("a"), h.name("b"), h.name("hm"));
    h.ok(&["network", "create", "apps", "--subnet", "10.50.0.0/24"]);
    h.ok(&["container", "create", &a]);
    h.ok(&["container", "create", &b, "--network", "apps"]);
    h.ok(&["container", "create", &host_mode, "--network", "host"]);
    let isolated = h.name("none");
    h.ok(&["container", "create", &isolated, "--network", "none"]);
    let links = Command::new("ip")
        .args(["-n", &isolated, "-o", "link"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&links.stdout).lines().count(),
        1,
        "--network none: loopback only"
    );
    // --network host: the namespace name enters the daemon's own namespace.
    let host_links = Command::new("ip")
        .args(["-n", &host_mode, "-o", "link"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&host_links.stdout).contains("netd0"));
    assert!(
        !probe::ping(&h.ctr("a"), "10.50.0.2", 1).unwrap(),
        "isolated before connect"
    );
    assert_eq!(
        h.ok(&["network", "connect", "apps", &a, "--ip", "10.50.0.9"])
            .trim(),
        "10.50.0.9"
    );
    let info = h.json(&["container", "inspect", &a]);
    assert_eq!(info["attachments"][1]["ifname"], "eth1");
    assert!(
        probe::ping(&h.ctr("a"), "10.50.0.2", 1).unwrap(),
        "same network after connect"
    );
    h.refused(
        &["network", "connect", "apps", &a],
        ErrorKind::Conflict,
        "already connected",
    );
    h.refused(
        &["network", "connect", "apps", &host_mode],
        ErrorKind::Invalid,
        "cannot join other networks",
    );
    h.refused(
        &["network", "connect", "nope", &a],
        ErrorKind::NotFound,
        "no network named",
    );
    h.ok(&["network", "disconnect", "apps", &a]);
    assert!(
        !probe::ping(&h.ctr("a"), "10.50.0.2", 1).unwrap(),
        "isolated after disconnect"
    );
    h.refused(
        &["network", "disconnect", "apps", &a],
        ErrorKind::NotFound,
        "is not connected",
    );
    assert_eq!(
        h.json(&["container", "inspect", &a])["attachments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn monitor_streams_drops_with_reason_interface_and_tuple() {
    let h = DaemonHost::start(netd(), &[]);
    let web = h.name("web");
    h.ok(&["container", "create", &web]);
    // Returns once the daemon's hello line says the stream is live.
    let rx = h.monitor();
    // An L2 neighbour goes straight for the container's address.
    h.outside
        .ip(&["route", "add", "172.17.0.0/16", "via", HOST_IP])
        .unwrap();
    assert!(probe::tcp_request(&h.outside, addr("172.17.0.2:80"), b"x").is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    let event = loop {
        let event = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a drop event");
        if let netd::api::MonitorEvent::Drop(drop) = event
            && drop.reason == "unsolicited-inbound"
        {
            break serde_json::to_value(drop).unwrap();
        }
    };
    assert_eq!(event["dst"], "172.17.0.2:80");
    assert!(event["src"].as_str().unwrap().starts_with(OUTSIDE_IP));
    assert!(
        event["interface"].as_str().unwrap().starts_with("up"),
        "{event}"
    );
    assert_eq!(event["proto"], 6);
}

/// `--bpf-log debug`: the BPF programs' log lines reach the daemon's log
/// (one per dropped packet, with its reason and addresses).
#[test]
fn bpf_log_lines_reach_the_daemon_log_when_enabled() {
    let mut h = DaemonHost::start(netd(), &[]);
    h.kill_daemon(libc::SIGTERM);
    let log = PathBuf::from(format!("/run/netd-log-{}.json", h.name("bpflog")));
    h.daemon_log = Some(log.clone());
    h.spawn_daemon_with(&["--log-format", "json", "--bpf-log", "debug"]);
    let web = h.name("web");
    h.ok(&["container", "create", &web]);
    h.outside
        .ip(&["route", "add", "172.17.0.0/16", "via", HOST_IP])
        .unwrap();
    assert!(probe::tcp_request(&h.outside, addr("172.17.0.2:80"), b"x").is_err());
    // unsolicited-inbound is drop reason 9.
    let wanted = "drop reason 9 on if";
    let tuple = format!("proto 6 {OUTSIDE_IP} -> 172.17.0.2");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let line: Value = serde_json::from_str(l).ok()?;
            let message = line["message"].as_str()?;
            (line["target"] == "netd::bpf" && message.contains(wanted) && message.contains(&tuple))
                .then_some(line)
        });
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no BPF drop line in:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["bpf_level"], "DEBUG", "{line}");
    h.kill_daemon(libc::SIGTERM);
    h.daemon_log = None;
    let _ = std::fs::remove_file(&log);
    h.spawn_daemon();
}

#[test]
fn cleanup_on_exit_and_subnets_that_skip_existing_routes() {
    let mut h = DaemonHost::start(netd(), &[]);
    h.kill_daemon(libc::SIGTERM);
    // A route the host already has: the next pool after 172.17 is skipped too.
    h.host
        .ip(&["route", "add", "172.18.0.0/16", "via", OUTSIDE_IP])
        .unwrap();
    h.spawn_daemon_with(&["--cleanup"]);
    h.ok(&["network", "create", "next"]);
    assert_eq!(
        h.json(&["network", "inspect", "next"])["subnet"],
        "172.19.0.0/16"
    );
    let c = h.name("c");
    h.ok(&["container", "create", &c, "--network", "next"]);
    h.kill_daemon(libc::SIGTERM);
    assert!(
        !PathBuf::from(format!("/run/netns/{c}")).exists(),
        "--cleanup removed the container"
    );
    assert!(!h.bpffs().exists(), "--cleanup removed the pins");
}

#[test]
fn gw_priority_picks_the_network_that_gives_the_default_route() {
    let h = DaemonHost::start(netd(), &[]);
    let c = h.name("gw");
    for (net, subnet) in [
        ("one", "10.51.0.0/24"),
        ("two", "10.52.0.0/24"),
        ("three", "10.53.0.0/24"),
    ] {
        h.ok(&["network", "create", net, "--subnet", subnet]);
    }
    h.ok(&["container", "create", &c, "--network", "one"]);
    let default_via = || {
        let out = Command::new("ip")
            .args(["-n", &c, "route", "show", "default"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text.lines().count(), 1, "one default route: {text}");
        text.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned()
    };
    let reaches_outside = || {
        let _server =
            EchoServer::tcp(&h.outside, addr(&format!("{OUTSIDE_IP}:7100")), "out:").unwrap();
        probe::tcp_request(&h.ctr("gw"), addr(&format!("{OUTSIDE_IP}:7100")), b"x").unwrap()
            == b"out:x"
    };
    assert_eq!(default_via(), "10.51.0.1");
    // A higher priority takes the default route; a lower one does not.
    h.ok(&["network", "connect", "two", &c, "--gw-priority", "10"]);
    assert_eq!(default_via(), "10.52.0.1");
    assert!(reaches_outside(), "through network two");
    h.ok(&["network", "connect", "three", &c, "--gw-priority", "-5"]);
    assert_eq!(default_via(), "10.52.0.1");
    let info = h.json(&["container", "inspect", &c]);
    assert_eq!(info["attachments"][1]["gw_priority"], 10);
    assert_eq!(info["attachments"][2]["gw_priority"], -5);
    // Its network gone, the next by priority gives it (one: 0 > three: -5).
    h.ok(&["network", "disconnect", "two", &c]);
    assert_eq!(default_via(), "10.51.0.1");
    assert!(reaches_outside(), "through network one");
    // Equal priorities: the network attached first keeps it.
    h.ok(&["network", "connect", "two", &c]);
    assert_eq!(default_via(), "10.51.0.1");
    // Removing a network that does not give the route leaves it alone.
    h.ok(&["network", "disconnect", "three", &c]);
    assert_eq!(default_via(), "10.51.0.1");
}

/// Gateway modes as the kernel and the listings show them: an isolated
/// network's bridge has no address, a routed network's `-p` is the
/// container port at its address, `network ls` names each mode.
#[test]
fn gateway_modes_show_in_the_kernel_and_the_listings() {
    let h = DaemonHost::start(netd(), &[]);
    let isolated = [
        "network",
        "create",
        "isol",
        "--subnet",
        "10.57.0.0/24",
        "--internal",
        "--gateway-mode-ipv4",
        "isolated",
    ];
    h.ok(&isolated);
    let routed = [
        "network",
        "create",
        "routed",
        "--subnet",
        "10.58.0.0/24",
        "--gateway-mode-ipv4",
        "routed",
    ];
    h.ok(&routed);
    let addresses = |net: &str| {
        let bridge = h.json(&["network", "inspect", net])["bridge"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = h
            .host
            .run("ip", &["-4", "-o", "addr", "show", "dev", &bridge])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !addresses("isol").contains("inet "),
        "{}",
        addresses("isol")
    );
    assert!(addresses("routed").contains("inet 10.58.0.1/24"));
    let info = h.json(&["network", "inspect", "routed"]);
    assert_eq!(info["gateway_mode_ipv4"], "routed");
    assert_eq!(info["masquerade"], false, "routed never masquerades");
    let listed = h.ok(&["network", "ls"]);
    for (name, mode) in [
        ("isol", "isolated"),
        ("routed", "routed"),
        ("bridge", "nat"),
    ] {
        let row = listed.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(row.trim_end().ends_with(mode), "{row}");
    }
    let c = h.name("r");
    h.ok(&[
        "container",
        "create",
        &c,
        "--network",
        "routed",
        "-p",
        "8083:80",
    ]);
    let containers = h.ok(&["container", "ls"]);
    assert!(containers.contains("10.58.0.2:80/tcp"), "{containers}");
    // No host port was taken: a nat network's container may have it.
    let n = h.name("n");
    h.ok(&["container", "create", &n, "-p", "8083:80"]);
}

#[test]
fn readme_documents_every_command() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let help = |args: &[&str]| {
        String::from_utf8(Command::new(netd()).args(args).output().unwrap().stdout).unwrap()
    };
    let commands = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let top_level = commands(&help(&["--help"]));
    assert!(
        top_level.len() >= 8 && top_level.contains(&"network".to_owned()),
        "{top_level:?}"
    );
    for top in top_level {
        let subs = commands(&help(&[&top, "--help"]));
        if subs.is_empty() {
            assert!(
                readme.contains(&format!("netd {top}")),
                "README lacks `netd {top}`"
            );
        }
        for sub in subs {
            assert!(
                readme.contains(&format!("netd {top} {sub}")),
                "README lacks `netd {top} {sub}`"
            );
        }
    }
}

/// `--log-format json`: one JSON object per line, a span per request with
/// its kind and duration; `-v` adds the reads.
#[test]
fn the_daemon_logs_json_lines_with_one_span_per_request() {
    let mut h = DaemonHost::start(netd(), &[]);
    h.kill_daemon(libc::SIGTERM);
    let log = PathBuf::from(format!("/run/netd-log-{}.json", h.name("log")));
    h.daemon_log = Some(log.clone());
    h.spawn_daemon_with(&["--log-format", "json", "-v"]);
    h.ok(&["network", "create", "logged", "--subnet", "10.47.0.0/24"]);
    h.netd(&["network", "rm", "nosuch"]);
    h.ok(&["status"]);
    h.kill_daemon(libc::SIGTERM);
    h.daemon_log = None;
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let of_kind = |kind: &str| {
        lines
            .iter()
            .find(|l| l["span"]["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} line in {text}"))
    };
    let created = of_kind("network_create");
    assert_eq!(created["level"], "INFO");
    assert!(created["micros"].as_u64().is_some(), "{created}");
    let refused = of_kind("network_rm");
    assert_eq!(refused["message"], "refused");
    assert!(
        refused["err"].as_str().unwrap().contains("nosuch"),
        "{refused}"
    );
    assert_eq!(of_kind("status")["level"], "DEBUG");
    assert!(lines.iter().any(|l| l["message"] == "netd is ready"));
    h.spawn_daemon();
}
