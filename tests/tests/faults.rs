//! Faults a real host produces, through the real daemon and CLI, on every
//! datapath (and the eBPF one in both kernel modes): objects deleted behind
//! netd's back, kill -9 at every step of every mutating request and in the
//! middle of parallel requests, a reboot-like loss of kernel state, an
//! unreadable state file, restarts under connection load. After each the
//! daemon works, the state matches the kernel, and `netd down` leaves
//! nothing.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use netd::engine::{FAULT_POINT_DELETING_VETHS, FAULT_POINTS};
use netd_common::maps::{self, MapDef as _};
use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer, eventually},
};
use serde_json::Value;

/// Every datapath, and the eBPF one with the older kernels' mechanisms.
const VARIANTS: [(&str, &[&str]); 4] = [
    ("ebpf", &["--datapath", "ebpf"]),
    (
        "ebpf-legacy",
        &["--datapath", "ebpf", "--kernel-features", "legacy"],
    ),
    ("iptables", &["--datapath", "iptables"]),
    ("nftables", &["--datapath", "nftables"]),
];

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn names(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state matches the kernel: every listed container has its namespace
/// and addresses, no namespace of this test is unlisted, and the host has
/// no link that no listed network or container owns.
fn assert_consistent(h: &DaemonHost, context: &str) {
    let containers = h.json(&["container", "ls", "--format", "json"]);
    let networks = h.json(&["network", "ls", "--format", "json"]);
    let mut owned: BTreeSet<String> = ["lo".to_owned(), h.uplink.clone()].into();
    // The veths of removed containers the kernel is still deleting are
    // accounted for too (`container rm` does not wait for them).
    let status = h.json(&["status", "--format", "json"]);
    if let Some(dying) = status["veths_being_deleted"].as_array() {
        owned.extend(dying.iter().map(|v| v.as_str().unwrap().to_owned()));
    }
    for net in networks.as_array().unwrap() {
        owned.insert(net["bridge"].as_str().unwrap().to_owned());
    }
    let listed = names(&containers);
    for c in containers.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        assert!(
            std::path::Path::new(&format!("/run/netns/{name}")).exists(),
            "{context}: {name} is listed but has no namespace"
        );
        for att in c["attachments"].as_array().unwrap() {
            owned.insert(att["host_veth"].as_str().unwrap().to_owned());
            let inside = ip(&["-n", name, "-o", "-4", "addr", "show"]);
            let want = att["ip"].as_str().unwrap();
            assert!(
                inside.contains(&format!("{want}/")),
                "{context}: {name} lacks {want}: {inside}"
            );
        }
    }
    for entry in std::fs::read_dir("/run/netns").unwrap().flatten() {
        let ns = entry.file_name().to_string_lossy().into_owned();
        if ns.starts_with(&h.name("")) {
            assert!(
                listed.contains(&ns),
                "{context}: namespace {ns} is left but not listed"
            );
        }
    }
    for line in ip(&["-n", h.host.name(), "-o", "link"]).lines() {
        let name = line.split(": ").nth(1).unwrap().split('@').next().unwrap();
        assert!(
            owned.contains(name),
            "{context}: link {name} is owned by nothing netd lists"
        );
    }
    // TCX: a pinned program link for every listed veth, and no other.
    if let Ok(pins) = std::fs::read_dir(h.bpffs().join("links")) {
        for pin in pins.flatten() {
            let pin = pin.file_name().to_string_lossy().into_owned();
            if !pin.starts_with("uplink-") && !pin.starts_with("host_") {
                assert!(
                    owned.contains(&pin),
                    "{context}: pin {pin} for no listed veth"
                );
            }
        }
    }
}

/// A new container with a published port answers from outside, and
/// reaches the outside masqueraded; then it goes again.
fn assert_works(h: &DaemonHost, tag: &str, port: u16) {
    let name = h.name(tag);
    h.ok(&["container", "create", &name, "-p", &format!("{port}:80")]);
    let created = h.json(&["container", "inspect", &name]);
    let ip = created["attachments"][0]["ip"].as_str().unwrap().to_owned();
    let _server = EchoServer::tcp_stream_echo(&h.ctr(tag), addr(&format!("{ip}:80"))).unwrap();
    let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:{port}"))).unwrap();
    probe::echo_roundtrip(&mut conn, b"works").unwrap();
    let outside_port = port - 1000;
    let _outside = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:{outside_port}")),
        "saw {peer}:",
    )
    .unwrap();
    let reply = probe::tcp_request(
        &h.ctr(tag),
        addr(&format!("{OUTSIDE_IP}:{outside_port}")),
        b"hi",
    )
    .unwrap();
    assert_eq!(reply, format!("saw {HOST_IP}:hi").into_bytes());
    drop(conn);
    h.ok(&["container", "rm", &name]);
}

/// `netd down` leaves no namespace, link, pin or rule behind.
fn assert_down_leaves_nothing(mut h: DaemonHost) {
    h.ok(&["down"]);
    h.wait_daemon_exit();
    assert_consistent_empty(&h);
}

fn assert_consistent_empty(h: &DaemonHost) {
    let prefix = h.name("");
    for entry in std::fs::read_dir("/run/netns").unwrap().flatten() {
        let ns = entry.file_name().to_string_lossy().into_owned();
        assert!(!ns.starts_with(&prefix), "namespace {ns} left after down");
    }
    let links: Vec<String> = ip(&["-n", h.host.name(), "-o", "link"])
        .lines()
        .map(|l| {
            l.split(": ")
                .nth(1)
                .unwrap()
                .split('@')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(links.len(), 2, "links left after down: {links:?}");
    assert!(!h.bpffs().exists(), "pins left after down");
    let rules = h
        .host
        .run("iptables-save", &[])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(!rules.contains("NETD"), "rules left after down: {rules}");
    let tables = h
        .host
        .run("nft", &["list", "tables"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !tables.contains(netd::driver::NFTABLES_TABLE),
        "nftables table left after down: {tables}"
    );
    let qdiscs = h.tc(&["qdisc", "show", "dev", &h.uplink]);
    assert!(
        !qdiscs.contains("clsact"),
        "clsact left after down: {qdiscs}"
    );
}

#[test]
fn objects_deleted_behind_netds_back_are_repaired_or_released() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let web = h.name("web");
        // The runtime deletes the namespace first, then asks netd.
        h.ok(&["container", "create", &web, "-p", "8080:80"]);
        h.host.run("ip", &["netns", "del", &web]).unwrap();
        h.ok(&["container", "rm", &web]);
        assert_works(&h, "web", 8080);

        // The namespace goes while netd is down: the restart releases the
        // container (reported), its name and its port.
        h.ok(&["container", "create", &web, "-p", "8080:80"]);
        h.kill_daemon(libc::SIGKILL);
        h.host.run("ip", &["netns", "del", &web]).unwrap();
        h.spawn_daemon();
        let status = h.json(&["status", "--format", "json"]);
        let repairs = status["repairs"].to_string();
        assert!(
            repairs.contains(&web) && repairs.contains("namespace is gone"),
            "{variant}: {repairs}"
        );
        assert!(!names(&h.json(&["container", "ls", "--format", "json"])).contains(&web));
        assert_works(&h, "web", 8080);

        // A container's veth and a network's bridge deleted while netd runs:
        // `netd repair` makes them again, and traffic flows.
        h.ok(&["network", "create", "apps", "--subnet", "10.44.0.0/24"]);
        let db = h.name("db");
        h.ok(&[
            "container",
            "create",
            &db,
            "--network",
            "apps",
            "-p",
            "8081:80",
        ]);
        let bridge = h.json(&["network", "inspect", "apps"])["bridge"]
            .as_str()
            .unwrap()
            .to_owned();
        let veth = h.json(&["container", "inspect", &db])["attachments"][0]["host_veth"]
            .as_str()
            .unwrap()
            .to_owned();
        h.host.run("ip", &["link", "del", &veth]).unwrap();
        h.host.run("ip", &["link", "del", &bridge]).unwrap();
        let repaired = h.json(&["repair", "--format", "json"])["repairs"].to_string();
        assert!(
            repaired.contains("was gone; made again") && repaired.contains(&db),
            "{variant}: {repaired}"
        );
        assert_consistent(&h, variant);
        let _server = EchoServer::tcp_stream_echo(&h.ctr("db"), addr("10.44.0.2:80")).unwrap();
        let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8081"))).unwrap();
        probe::echo_roundtrip(&mut conn, b"repaired").unwrap();
        drop(conn);
        h.ok(&["container", "rm", &db]);
        assert_down_leaves_nothing(h);
    }
}

/// Container `web` on the default network with port 8080 published to an
/// echo server, and a connection through it that answered once.
fn published_web(h: &DaemonHost) -> (EchoServer, std::net::TcpStream) {
    let web = h.name("web");
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
    let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    probe::echo_roundtrip(&mut conn, b"before").unwrap();
    (server, conn)
}

/// The request that dies at `point`, and what must hold after the restart.
fn interrupted_request(h: &DaemonHost, point: &str, i: usize) -> Vec<String> {
    let c = h.name(&format!("c{i}"));
    let net = format!("n{i}");
    let subnet = format!("10.50.{i}.0/24");
    match point.split(':').next().unwrap() {
        "network-create" => vec![
            "network".into(),
            "create".into(),
            net,
            "--subnet".into(),
            subnet,
        ],
        "network-rm" => vec!["network".into(), "rm".into(), net],
        "container-create" => vec![
            "container".into(),
            "create".into(),
            c,
            "-p".into(),
            format!("{}:80", 9000 + i),
        ],
        "container-rm" => vec!["container".into(), "rm".into(), c],
        "network-connect" => vec!["network".into(), "connect".into(), net, c],
        other => panic!("no request for {other}"),
    }
}

/// `container rm` answers before the kernel has deleted the veth; a crash
/// then leaves it (here a process holds the namespace, so the kernel keeps
/// it), and the next start deletes it, says so, and the address is
/// handed out again.
#[test]
fn a_crash_while_a_removed_containers_veth_goes_is_finished_at_start() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let web = h.name("web");
        h.kill_daemon(libc::SIGTERM);
        h.spawn_daemon_with_env(&[], &[("NETD_FAULT_POINT", FAULT_POINT_DELETING_VETHS)]);
        h.ok(&["container", "create", &web, "-p", "8080:80"]);
        let veth = h.json(&["container", "inspect", &web])["attachments"][0]["host_veth"]
            .as_str()
            .unwrap()
            .to_owned();
        // A listening socket inside holds the namespace after netd unmounts it.
        let server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
        // An open connection through the port: its conntrack entries are
        // forgotten only after the veths go, which the crash stops.
        let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
        probe::echo_roundtrip(&mut conn, b"before").unwrap();
        let ebpf = variant.starts_with("ebpf");
        let mentions_web = |h: &DaemonHost| {
            h.json(&["conntrack", "ls", "--format", "json"])
                .to_string()
                .contains("172.17.0.2:80")
        };
        if ebpf {
            assert!(mentions_web(&h), "{variant}: no conntrack entry to forget");
        }
        // The daemon stops dead as the deletion starts, whether or not the
        // answer reached the CLI first.
        let _ = h.netd(&["container", "rm", &web]);
        h.wait_daemon_exit();
        let has_veth = |h: &DaemonHost| {
            ip(&["-n", h.host.name(), "-o", "link"]).contains(&format!(": {veth}@"))
        };
        assert!(has_veth(&h), "{variant}: the veth went before the crash");
        h.spawn_daemon();
        let repairs = h.json(&["status", "--format", "json"])["repairs"].to_string();
        assert!(
            repairs.contains(&format!("deleted {veth}, the veth of a removed container")),
            "{variant}: {repairs}"
        );
        assert!(!has_veth(&h), "{variant}: {veth} is still there");
        if ebpf {
            assert!(
                repairs.contains("conntrack entries of removed containers (172.17.0.2)"),
                "{variant}: {repairs}"
            );
            assert!(!mentions_web(&h), "{variant}: the connection is remembered");
        }
        drop(conn);
        drop(server);
        assert_consistent(&h, variant);
        assert_works(&h, "web", 8080);
        h.ok(&["down"]);
        h.wait_daemon_exit();
        assert_consistent_empty(&h);
    }
}

#[test]
fn kill_9_at_every_step_of_every_mutating_request_leaves_nothing_half_made() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        for (i, point) in FAULT_POINTS.iter().enumerate() {
            let c = h.name(&format!("c{i}"));
            let net = format!("n{i}");
            let subnet = format!("10.50.{i}.0/24");
            // What the request needs to exist first.
            if point.starts_with("network-rm") || point.starts_with("network-connect") {
                h.ok(&["network", "create", &net, "--subnet", &subnet]);
            }
            if point.starts_with("container-rm") || point.starts_with("network-connect") {
                h.ok(&["container", "create", &c, "-p", &format!("{}:80", 9000 + i)]);
            }
            h.kill_daemon(libc::SIGTERM);
            h.spawn_daemon_with_env(&[], &[("NETD_FAULT_POINT", point)]);
            let request = interrupted_request(&h, point, i);
            let args: Vec<&str> = request.iter().map(String::as_str).collect();
            let out = h.netd(&args);
            assert!(
                !out.status.success(),
                "{variant} {point}: request succeeded"
            );
            h.wait_daemon_exit();
            h.spawn_daemon();
            let context = format!("{variant} after a crash at {point}");
            assert_consistent(&h, &context);
            // Creates are rolled back (the name is free again), removes are
            // finished, a connect is undone: each request can be made again.
            let containers = names(&h.json(&["container", "ls", "--format", "json"]));
            let networks = h.json(&["network", "ls", "--format", "json"]).to_string();
            match point.split(':').next().unwrap() {
                "network-create" => assert!(!networks.contains(&format!("\"{net}\"")), "{context}"),
                "network-rm" => assert!(!networks.contains(&format!("\"{net}\"")), "{context}"),
                "container-create" => assert!(!containers.contains(&c), "{context}"),
                "container-rm" => assert!(!containers.contains(&c), "{context}"),
                _ => {
                    let inspect = h.json(&["container", "inspect", &c]);
                    assert_eq!(
                        inspect["attachments"].as_array().unwrap().len(),
                        1,
                        "{context}"
                    );
                }
            }
            if !point.starts_with("network-rm") && !point.starts_with("container-rm") {
                h.ok(&args);
            }
        }
        assert_consistent(&h, variant);
        assert_works(&h, "last", 8090);
        assert_down_leaves_nothing(h);
    }
}

#[test]
fn kill_9_during_parallel_creates_leaves_every_name_working_or_free() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let all: Vec<String> = (0..20).map(|i| h.name(&format!("p{i}"))).collect();
        let socket = h.socket();
        let clients: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (name, socket) = (name.clone(), socket.clone());
                std::thread::spawn(move || {
                    Command::new(netd())
                        .arg("--socket")
                        .arg(&socket)
                        .args(["container", "create", &name, "-p"])
                        .arg(format!("{}:80", 9100 + i))
                        .output()
                })
            })
            .collect();
        // Some done, some under way: then kill -9.
        let deadline = Instant::now() + Duration::from_secs(30);
        while h
            .json(&["container", "ls", "--format", "json"])
            .as_array()
            .unwrap()
            .len()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "{variant}: creates do not progress"
            );
        }
        h.kill_daemon(libc::SIGKILL);
        for client in clients {
            let _ = client.join();
        }
        h.spawn_daemon();
        assert_consistent(&h, variant);
        let listed = names(&h.json(&["container", "ls", "--format", "json"]));
        println!(
            "{variant}: {} of 20 creates had finished at the kill",
            listed.len()
        );
        assert!(listed.len() >= 2, "{variant}: {listed:?}");
        for (i, name) in all.iter().enumerate() {
            if !listed.contains(name) {
                h.ok(&[
                    "container",
                    "create",
                    name,
                    "-p",
                    &format!("{}:80", 9100 + i),
                ]);
            }
        }
        assert_consistent(&h, variant);
        assert_works(&h, "after", 8091);
        assert_down_leaves_nothing(h);
    }
}

#[test]
fn a_reboot_that_loses_all_kernel_state_keeps_the_networks() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        h.ok(&["network", "create", "apps", "--subnet", "10.45.0.0/24"]);
        let web = h.name("web");
        h.ok(&[
            "container",
            "create",
            &web,
            "--network",
            "apps",
            "-p",
            "8080:80",
        ]);
        h.kill_daemon(libc::SIGKILL);
        // What a reboot takes: namespaces, links, pins, rules, qdiscs.
        h.host.run("ip", &["netns", "del", &web]).unwrap();
        for line in ip(&["-n", h.host.name(), "-o", "link"]).lines() {
            let name = line.split(": ").nth(1).unwrap().split('@').next().unwrap();
            if name != "lo" && name != h.uplink {
                // A container's veth may be going already with its namespace.
                let _ = h.host.run("ip", &["link", "del", name]);
            }
        }
        if h.bpffs().exists() {
            std::fs::remove_dir_all(h.bpffs()).unwrap();
        }
        let _ = h
            .host
            .run("tc", &["qdisc", "del", "dev", &h.uplink, "clsact"]);
        for table in ["filter", "nat", "raw"] {
            h.host.run("iptables", &["-t", table, "-F"]).unwrap();
            h.host.run("iptables", &["-t", table, "-X"]).unwrap();
        }
        h.host.run("nft", &["flush", "ruleset"]).unwrap();
        h.spawn_daemon();
        let repairs = h.json(&["status", "--format", "json"])["repairs"].to_string();
        assert!(repairs.contains(&web), "{variant}: {repairs}");
        assert_consistent(&h, variant);
        assert_eq!(
            h.json(&["network", "inspect", "apps"])["subnet"],
            "10.45.0.0/24"
        );
        // The same container again, on the kept network, with its port.
        h.ok(&[
            "container",
            "create",
            &web,
            "--network",
            "apps",
            "-p",
            "8080:80",
        ]);
        let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("10.45.0.2:80")).unwrap();
        let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
        probe::echo_roundtrip(&mut conn, b"after reboot").unwrap();
        drop(conn);
        assert_works(&h, "more", 8082);
        assert_down_leaves_nothing(h);
    }
}

#[test]
fn an_unreadable_state_file_stops_the_daemon_and_changes_nothing() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let (_server, mut kept) = published_web(&h);
        h.kill_daemon(libc::SIGTERM);
        let good = std::fs::read(h.state_file()).unwrap();
        std::fs::write(h.state_file(), b"{\"networks\": [truncated").unwrap();
        let (status, stderr) = h.daemon_refusal();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{variant}: the daemon started on a corrupt state file"
        );
        assert!(
            stderr.contains(&h.state_file().display().to_string())
                && stderr.contains("changed nothing"),
            "{variant}: {stderr}"
        );
        // Forwarding goes on: the kept connection and a new one.
        probe::echo_roundtrip(&mut kept, b"refused start").unwrap();
        let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
        probe::echo_roundtrip(&mut fresh, b"new").unwrap();
        std::fs::write(h.state_file(), good).unwrap();
        h.spawn_daemon();
        probe::echo_roundtrip(&mut kept, b"after").unwrap();
        drop((kept, fresh));
        assert_down_leaves_nothing(h);
    }
}

#[test]
fn restarts_under_connection_load_refuse_no_connection() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let web = h.name("web");
        h.ok(&["container", "create", &web, "-p", "8080:80"]);
        let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let outside = h.outside.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let result = probe::tcp_connect(&outside, addr(&format!("{HOST_IP}:8080")))
                            .and_then(|mut c| probe::echo_roundtrip(&mut c, b"load"));
                        match result {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        let wait_for = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::Relaxed) < n {
                assert!(
                    Instant::now() < deadline,
                    "{variant}: the load does not progress"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_for(200);
        h.kill_daemon(libc::SIGKILL);
        h.spawn_daemon();
        wait_for(ok.load(Ordering::Relaxed) + 200);
        h.kill_daemon(libc::SIGTERM);
        h.spawn_daemon();
        wait_for(ok.load(Ordering::Relaxed) + 200);
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().unwrap();
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        println!("{variant}: {ok} connections, {failed} failed across two restarts");
        assert_eq!(failed, 0, "{variant}: connections failed during restarts");
        assert_down_leaves_nothing(h);
    }
}

/// What the outside at `server` saw as the container's source address.
fn source_seen(h: &DaemonHost, server: &str) -> Option<String> {
    let reply = probe::tcp_request(&h.ctr("web"), addr(server), b"hi").ok()?;
    let text = String::from_utf8(reply).ok()?;
    Some(text.strip_prefix("saw ")?.split(':').next()?.to_owned())
}

fn answers(ns: &netd_testbed::Netns, target: &str) -> bool {
    probe::tcp_connect(ns, addr(target))
        .and_then(|mut c| probe::echo_roundtrip(&mut c, b"ping"))
        .is_ok()
}

#[test]
fn the_host_changing_under_netd_is_followed_without_a_restart() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let web = h.name("web");
        h.ok(&["container", "create", &web, "-p", "8080:80"]);
        let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
        let _echo = EchoServer::tcp(
            &h.outside,
            addr(&format!("{OUTSIDE_IP}:7000")),
            "saw {peer}:",
        )
        .unwrap();
        let outside_server = format!("{OUTSIDE_IP}:7000");
        assert_eq!(source_seen(&h, &outside_server).as_deref(), Some(HOST_IP));

        // An address added after start: published ports answer on it.
        h.host
            .ip(&["addr", "add", "198.51.100.77/24", "dev", &h.uplink])
            .unwrap();
        eventually("a published port on an added address", || {
            answers(&h.outside, "198.51.100.77:8080")
        });

        // Renumbered: the old addresses flushed, a new one added.
        h.host.ip(&["addr", "flush", "dev", &h.uplink]).unwrap();
        h.host
            .ip(&["addr", "add", "198.51.100.9/24", "dev", &h.uplink])
            .unwrap();
        h.host
            .ip(&["route", "add", "default", "via", OUTSIDE_IP])
            .unwrap();
        eventually("a published port on the new address", || {
            answers(&h.outside, "198.51.100.9:8080")
        });
        eventually("masquerade behind the new address", || {
            source_seen(&h, &outside_server).as_deref() == Some("198.51.100.9")
        });
        assert!(
            !answers(&h.outside, &format!("{HOST_IP}:8080")),
            "{variant}: old address"
        );

        // A second uplink: masquerade behind its own address, ports on it.
        let (outside2, second) = h.add_second_uplink();
        let _echo2 = EchoServer::tcp(&outside2, addr("100.64.0.2:7000"), "saw {peer}:").unwrap();
        eventually("masquerade out of the second uplink", || {
            source_seen(&h, "100.64.0.2:7000").as_deref() == Some("100.64.0.1")
        });
        eventually("a published port on the second uplink", || {
            answers(&outside2, "100.64.0.1:8080")
        });
        assert_eq!(
            source_seen(&h, &outside_server).as_deref(),
            Some("198.51.100.9")
        );

        // The uplink down and up again: forwarding resumes.
        h.host.ip(&["link", "set", &h.uplink, "down"]).unwrap();
        h.host.ip(&["link", "set", &h.uplink, "up"]).unwrap();
        h.host
            .ip(&["route", "replace", "default", "via", OUTSIDE_IP])
            .unwrap();
        eventually("the published port after link down/up", || {
            answers(&h.outside, "198.51.100.9:8080")
        });
        eventually("masquerade after link down/up", || {
            source_seen(&h, &outside_server).as_deref() == Some("198.51.100.9")
        });

        // The second uplink goes: its programs go with it.
        h.host.ip(&["link", "del", &second]).unwrap();
        eventually("the second uplink forgotten", || {
            !h.json(&["status", "--format", "json"])
                .to_string()
                .contains(&second)
        });
        h.ok(&["container", "rm", &web]);
        assert_down_leaves_nothing(h);
    }
}

/// An upgrade from a version whose pinned maps lack the newer ones (here:
/// the published ports' scopes and the uplinks' drop slots): the restarted
/// daemon creates and pins them, and the kept connection and new ones to
/// the published port work. (That the scopes are filled at load, before any
/// program runs, is proven in tests/tests/bpf_nat.rs.)
#[test]
fn maps_an_upgrade_adds_are_filled_before_the_new_programs_run() {
    for (variant, flags) in &VARIANTS[..2] {
        println!("== {variant}");
        let mut h = DaemonHost::start(netd(), flags);
        let (_server, mut kept) = published_web(&h);
        h.kill_daemon(libc::SIGKILL);
        for map in [maps::PUBLISHED_SCOPES::NAME, maps::UPLINK_DROPS::NAME] {
            std::fs::remove_file(h.bpffs().join("maps").join(map)).unwrap();
        }
        h.spawn_daemon();
        for map in [maps::PUBLISHED_SCOPES::NAME, maps::UPLINK_DROPS::NAME] {
            assert!(
                h.bpffs().join("maps").join(map).exists(),
                "{variant}: {map} pinned again"
            );
        }
        probe::echo_roundtrip(&mut kept, b"after upgrade").unwrap();
        let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
        probe::echo_roundtrip(&mut fresh, b"new").unwrap();
        drop((kept, fresh));
        assert_down_leaves_nothing(h);
    }
}

/// bpffs pins removed while the daemon runs (a removed link pin detaches
/// its program): `netd repair` pins the maps again and re-attaches the
/// programs; the connections kept in the maps carry on.
#[test]
fn pins_removed_behind_netds_back_are_restored_by_repair() {
    for (variant, flags) in &VARIANTS[..2] {
        println!("== {variant}");
        let h = DaemonHost::start(netd(), flags);
        let (_server, mut kept) = published_web(&h);
        std::fs::remove_dir_all(h.bpffs()).unwrap();
        let repairs = h.json(&["repair", "--format", "json"])["repairs"].to_string();
        assert!(
            repairs.contains("restored map pin CONNTRACK"),
            "{variant}: {repairs}"
        );
        assert!(h.bpffs().join("maps/CONNTRACK").exists());
        probe::echo_roundtrip(&mut kept, b"after repair").unwrap();
        let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
        probe::echo_roundtrip(&mut fresh, b"new").unwrap();
        drop((kept, fresh));
        assert_down_leaves_nothing(h);
    }
}
