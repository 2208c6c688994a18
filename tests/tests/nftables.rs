//! The nftables datapath beyond the scenario suite: a kill -9 restart keeps
//! connections and swaps the table in one transaction; `nft flush ruleset`
//! behind netd's back (Docker 29 loses its table the same way) is found and
//! undone by `netd repair`; `netd down` leaves no table; drops are read from
//! the drop rules' named counters, by reason, and kept when a change
//! replaces the table and across restarts; every golden snapshot of the
//! rendered table is a script nft applies.

use std::net::SocketAddr;

use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    Testbed,
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn table_listed(h: &DaemonHost) -> bool {
    family_table_listed(h, "ip")
}

fn family_table_listed(h: &DaemonHost, family: &str) -> bool {
    h.host
        .command("nft")
        .args(["list", "table", family, netd::driver::NFTABLES_TABLE])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn restart_flush_repair_and_down_on_nftables() {
    let mut h = DaemonHost::start(netd(), &["--datapath", "nftables"]);
    let web = h.name("web");
    h.ok(&["network", "create", "apps", "--subnet", "10.40.0.0/24"]);
    h.ok(&[
        "container",
        "create",
        &web,
        "--network",
        "apps",
        "-p",
        "8080:80",
    ]);
    let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("10.40.0.2:80")).unwrap();
    let published = addr(&format!("{HOST_IP}:8080"));
    let mut conn = probe::tcp_connect(&h.outside, published).unwrap();
    probe::echo_roundtrip(&mut conn, b"before").unwrap();
    assert!(table_listed(&h));

    // kill -9 and a new daemon: the kernel's conntrack keeps the connection,
    // the table stays until the new one replaces it whole.
    h.kill_daemon(libc::SIGKILL);
    probe::echo_roundtrip(&mut conn, b"daemon dead").unwrap();
    h.spawn_daemon();
    probe::echo_roundtrip(&mut conn, b"after restart").unwrap();
    let status = h.json(&["status", "--format", "json"]);
    assert_eq!(status["datapath"], "nftables", "{status}");
    assert!(
        status["rules"]["filter-FORWARD"].as_u64().unwrap() >= 2,
        "{status}"
    );

    // The ip6 table only with an IPv6 network.
    assert!(
        !family_table_listed(&h, "ip6"),
        "no IPv6 network, no ip6 table"
    );
    h.ok(&[
        "network",
        "create",
        "six",
        "--subnet",
        "10.44.0.0/24",
        "--subnet",
        "fd00:44::/64",
    ]);
    assert!(family_table_listed(&h, "ip6"));

    // Everything flushed behind netd's back: new connections to the port
    // go unanswered (nothing translates them) until `netd repair`.
    h.host.run("nft", &["flush", "ruleset"]).unwrap();
    assert!(!table_listed(&h));
    let err = probe::tcp_request(&h.outside, published, b"x").unwrap_err();
    assert!(
        format!("{err:#}").contains("refused"),
        "nothing listens on the host's port: {err:#}"
    );
    let repaired = h.ok(&["repair"]);
    for family in ["ip", "ip6"] {
        let gone = format!("nftables table {family} netd-bridges (it was gone)");
        assert!(repaired.contains(&gone), "{repaired}");
    }
    assert!(
        family_table_listed(&h, "ip6"),
        "repair made the ip6 table again"
    );
    assert_eq!(
        probe::tcp_request(&h.outside, published, b"again").unwrap(),
        b"again"
    );
    // Out through masquerade again too.
    let _outside =
        EchoServer::tcp(&h.outside, addr(&format!("{OUTSIDE_IP}:7000")), "{peer}").unwrap();
    assert_eq!(
        probe::tcp_request(&h.ctr("web"), addr(&format!("{OUTSIDE_IP}:7000")), b"").unwrap(),
        HOST_IP.as_bytes()
    );
    drop(conn);

    h.ok(&["down"]);
    h.daemon.take().unwrap().wait();
    assert!(!table_listed(&h), "netd down leaves no table");
    assert!(
        !family_table_listed(&h, "ip6"),
        "netd down leaves no ip6 table"
    );
}

/// A drop counts in `netd status` and `/metrics` under the eBPF datapath's
/// reason, and the count stays when a change replaces the table (the new
/// table's counters start where the old one's were) and across a restart.
#[test]
fn drops_are_counted_by_reason_and_kept_across_table_changes() {
    let mut h = DaemonHost::start(
        netd(),
        &["--datapath", "nftables", "--metrics", "127.0.0.1:9464"],
    );
    h.ok(&["network", "create", "apps", "--subnet", "10.42.0.0/24"]);
    h.ok(&["container", "create", &h.name("web"), "--network", "apps"]);
    let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("10.42.0.2:80")).unwrap();
    h.outside
        .ip(&["route", "add", "10.42.0.0/24", "via", HOST_IP])
        .unwrap();
    let unsolicited = |h: &DaemonHost| {
        h.json(&["status", "--format", "json"])["drops"]["unsolicited-inbound"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(unsolicited(&h), 0);

    // Direct access from outside to a nat network's container.
    let err = probe::tcp_request(&h.outside, addr("10.42.0.2:80"), b"x").unwrap_err();
    let counted = unsolicited(&h);
    assert!(counted >= 1, "the direct access was not counted: {err:#}");

    // A change makes the table anew: the count is carried over.
    h.ok(&[
        "container",
        "create",
        &h.name("db"),
        "--network",
        "apps",
        "-p",
        "8081:80",
    ]);
    assert_eq!(
        unsolicited(&h),
        counted,
        "kept across the table's replacement"
    );
    // And across a kill -9 restart: the table holds the counts, before and
    // after the new daemon replaces it (a counter never goes back).
    h.kill_daemon(libc::SIGKILL);
    h.spawn_daemon();
    assert_eq!(unsolicited(&h), counted, "kept across a restart");
    h.ok(&["network", "create", "more", "--subnet", "10.43.0.0/24"]);
    assert_eq!(
        unsolicited(&h),
        counted,
        "kept by the restarted daemon's first change"
    );
    let (_, metrics) = h.scrape_metrics();
    let line = format!("netd_dropped_packets_total{{reason=\"unsolicited-inbound\"}} {counted}");
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} not in:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "netd_dropped_packets_total{reason=\"network-isolation\"} 0"),
        "every reason the table counts is a series, zeros too:\n{metrics}"
    );
    let text = h.ok(&["status"]);
    assert!(
        text.contains("drops (the drop rules' counters)") && text.contains("unsolicited-inbound"),
        "{text}"
    );

    h.ok(&["down"]);
    h.daemon.take().unwrap().wait();
}

/// The snapshots `netd/src/driver/nftables/golden.rs` keeps are what the
/// driver hands to `nft -f`: each one applies, in a namespace of its own.
#[test]
fn every_golden_table_applies() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../netd/src/driver/nftables/snapshots"
    );
    let mut applied = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // insta's header: `---`, its fields, `---`; the script follows.
        let script = text.splitn(3, "---\n").nth(2).unwrap();
        assert!(
            script.contains("table ip netd-bridges {"),
            "{}",
            path.display()
        );
        let mut bed = Testbed::new().unwrap();
        let ns = bed.add_netns("nft").unwrap();
        let mut nft = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = nft.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        applied += 1;
    }
    assert!(applied >= 6, "only {applied} snapshots");
}
