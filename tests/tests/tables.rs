//! The datapath's tables through the daemon: sizes the user sets
//! (`--conntrack-max`, `--max-published-ports`, `--max-endpoints`), what a
//! full table does, and a size changed across a restart keeping the flows.
//! BPF_PROG_TEST_RUN proofs of early drop: `bpf_conntrack.rs`.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use netd::error::ErrorKind;
use netd_testbed::{
    bin_under_test::netd,
    daemon_host::{DaemonHost, HOST_IP},
    probe::{self, EchoServer},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `netd status`'s line for one map: (entries, capacity, evicted).
fn table(h: &DaemonHost, map: &str) -> (u64, u64, Option<u64>) {
    let status = h.json(&["status", "--format", "json"]);
    let fill = &status["maps"][map];
    assert!(fill.is_object(), "no {map} in {status}");
    (
        fill["entries"].as_u64().unwrap(),
        fill["capacity"].as_u64().unwrap(),
        fill["evicted"].as_u64(),
    )
}

/// A container serving TCP echo on 80, published as 8080, and an open
/// connection to it from outside.
fn published_web(h: &DaemonHost) -> (EchoServer, std::net::TcpStream) {
    let web = h.name("web");
    h.ok(&[
        "container",
        "create",
        &web,
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
    ]);
    let server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("172.17.0.2:80")).unwrap();
    let mut conn = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    probe::echo_roundtrip(&mut conn, b"before").unwrap();
    (server, conn)
}

/// Restarted with a smaller conntrack table, then with the default again:
/// the open connection carries on each time, the table has its new size,
/// and the old table's pin is gone once the daemon is up.
#[test]
fn a_conntrack_size_changed_across_a_restart_keeps_the_connections() {
    let mut h = DaemonHost::start(netd(), &["--datapath", "ebpf"]);
    let (_server, mut kept) = published_web(&h);
    let default_capacity = table(&h, "CONNTRACK").1;
    for (args, capacity) in [
        (&["--conntrack-max", "64"][..], 128),
        (&[][..], default_capacity),
    ] {
        h.kill_daemon(libc::SIGKILL);
        h.spawn_daemon_with(args);
        probe::echo_roundtrip(&mut kept, b"after resize").unwrap();
        let (entries, now_capacity, _) = table(&h, "CONNTRACK");
        assert_eq!(now_capacity, capacity, "{args:?}");
        assert!(entries >= 2, "the kept connection's entries: {entries}");
        assert!(
            !h.bpffs()
                .join("maps")
                .join("CONNTRACK_BEFORE_RESIZE")
                .exists()
        );
        let repairs = h.json(&["status", "--format", "json"])["repairs"].to_string();
        assert!(repairs.contains("table CONNTRACK resized"), "{repairs}");
        let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
        probe::echo_roundtrip(&mut fresh, b"new").unwrap();
    }
    h.kill_daemon(libc::SIGTERM);
    let (status, stderr) = h.daemon_refusal_with(&["--conntrack-max", "3"]);
    assert_eq!(status.and_then(|s| s.code()), Some(5), "{stderr}");
    assert!(
        stderr.contains("--conntrack-max 3: must be between"),
        "{stderr}"
    );
    h.spawn_daemon();
    h.ok(&["down"]);
    h.wait_daemon_exit();
}

/// A publish past `--max-published-ports` and a container past
/// `--max-endpoints` are refused with the flag named, and nothing changes:
/// no container, no port, the others keep working.
#[test]
fn publishes_and_containers_that_do_not_fit_are_refused_and_change_nothing() {
    let h = DaemonHost::start(
        netd(),
        &[
            "--datapath",
            "ebpf",
            "--max-published-ports",
            "8",
            "--max-endpoints",
            "8",
        ],
    );
    let (_server, mut kept) = published_web(&h); // 2 ports, 1 endpoint
    h.ok(&[
        "container",
        "create",
        &h.name("range"),
        "-p",
        "9000-9005:9000-9005",
    ]);
    assert_eq!(table(&h, "PUBLISHED_PORTS").0, 8);
    let more = h.name("more");
    h.refused(
        &["container", "create", &more, "-p", "7000:80"],
        ErrorKind::Conflict,
        "published-ports table is full (8 entries",
    );
    assert!(h.netd(&["container", "inspect", &more]).status.code() == Some(3));
    assert_eq!(table(&h, "PUBLISHED_PORTS").0, 8);
    assert_eq!(table(&h, "ENDPOINTS").0, 2);

    for i in 0..6 {
        h.ok(&["container", "create", &h.name(&format!("c{i}"))]);
    }
    assert_eq!(table(&h, "ENDPOINTS").0, 8);
    h.refused(
        &["container", "create", &more],
        ErrorKind::Conflict,
        "--max-endpoints",
    );
    assert_eq!(table(&h, "ENDPOINTS").0, 8);
    probe::echo_roundtrip(&mut kept, b"still").unwrap();
    // Room again once a container goes.
    h.ok(&["container", "rm", &h.name("c0")]);
    h.ok(&["container", "create", &more]);
    h.ok(&["down"]);
}

/// A table of 16 connections flooded by 60 UDP "connections" nobody
/// answers: each new one evicts an unanswered one, the established TCP
/// connection is never evicted, a new TCP connection still gets in, the
/// evictions show in `netd status` and `/metrics`, and the daemon logs the
/// burst once.
#[test]
fn a_full_conntrack_table_evicts_unanswered_flows_and_keeps_established_ones() {
    let log = std::env::temp_dir().join(format!("netd-tables-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut h = DaemonHost::start(netd(), &["--datapath", "ebpf", "--conntrack-max", "16"]);
    h.kill_daemon(libc::SIGTERM);
    h.daemon_log = Some(log.clone());
    h.spawn_daemon_with(&["--metrics", "127.0.0.1:9464"]);
    let (_server, mut kept) = published_web(&h);
    let target = addr(&format!("{HOST_IP}:5353"));
    let sockets: Vec<UdpSocket> = (0..60)
        .map(|_| {
            let s = h
                .outside
                .enter(|| UdpSocket::bind("0.0.0.0:0"))
                .unwrap()
                .unwrap();
            s.send_to(b"nobody answers", target).unwrap();
            s
        })
        .collect();
    let (entries, capacity, evicted) = table(&h, "CONNTRACK");
    assert_eq!((entries, capacity), (32, 32), "full");
    assert!(evicted.unwrap() >= 2 * 40, "evicted {evicted:?}");
    probe::echo_roundtrip(&mut kept, b"established survives").unwrap();
    let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080"))).unwrap();
    probe::echo_roundtrip(&mut fresh, b"new gets in").unwrap();
    drop(sockets);
    let (_, metrics) = h.scrape_metrics();
    let series = "netd_map_evicted_entries_total{map=\"CONNTRACK\"} ";
    let line = metrics.lines().find(|l| l.starts_with(series));
    let count: u64 = line
        .and_then(|l| l[series.len()..].parse().ok())
        .unwrap_or(0);
    assert!(count >= 2 * 40, "{series}: {line:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let burst = "conntrack table full";
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(burst) {
            assert_eq!(text.matches(burst).count(), 1, "logged once:\n{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no '{burst}' in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    h.ok(&["down"]);
    let _ = std::fs::remove_file(&log);
}
