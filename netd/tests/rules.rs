//! The user's firewall rules through the real daemon and CLI, on both
//! datapaths: refusals that change nothing, the drop seen where it was
//! decided, and rules in force without a gap across kill -9 and restart.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
};

const NETD: &str = env!("CARGO_BIN_EXE_netd");

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Packets the user's rules dropped: the `user-rule` drop counter on ebpf
/// (pinned, so it counts across restarts too), NETD-USER's DROP rules'
/// counters on iptables.
fn rule_drops(h: &DaemonHost, datapath: &str) -> u64 {
    if datapath == "ebpf" {
        return h.json(&["status"])["drops"]["user-rule"]
            .as_u64()
            .unwrap_or(0);
    }
    let out = h
        .host
        .run("iptables-save", &["-c", "-t", "filter"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("-A NETD-USER") && l.ends_with("-j DROP"))
        .map(|l| {
            let counters = l.trim_start_matches('[').split(']').next().unwrap();
            counters.split(':').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// Waits for the monitor's first drop with `reason`; returns its hook.
fn hook_of_next_drop(
    events: &std::sync::mpsc::Receiver<netd::api::MonitorEvent>,
    reason: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let event = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a drop event");
        if let netd::api::MonitorEvent::Drop(drop) = event
            && drop.reason == reason
        {
            return drop.hook;
        }
    }
}

/// `xdp`: the mode the uplink's XDP program must be in, None for no XDP.
fn check(datapath: &str, flags: &[&str], xdp: Option<&str>) {
    let args: Vec<&str> = ["--datapath", datapath]
        .iter()
        .chain(flags)
        .copied()
        .collect();
    let mut h = DaemonHost::start(NETD, &args);
    let web = h.name("web");
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let _server = EchoServer::tcp(&h.ctr("web"), addr("172.17.0.2:80"), "{peer}").unwrap();
    let published = addr(&format!("{HOST_IP}:8080"));
    assert!(probe::tcp_request(&h.outside, published, b"").is_ok());

    // Bad rules: each refused with its reason, nothing changed.
    for (args, message) in [
        (&["--source", "10.0.0.1/8"][..], "did you mean 10.0.0.0/8"),
        (&["--source", "300.1.1.1"], "is not an IPv4 address or CIDR"),
        (
            &["--proto", "tcp", "--port", "0"],
            "port 0 cannot be matched",
        ),
        (&["--port", "80"], "a port needs a protocol"),
        (
            &["--proto", "tcp", "--port", "90-80"],
            "ends before it starts",
        ),
        (&["--network", "nope"], "no network named \"nope\""),
        (&["--in-interface", "a/b"], "not a valid interface name"),
        (
            &["--position", "2"],
            "position 2 is outside the list (1 to 1)",
        ),
    ] {
        let cmd: Vec<&str> = ["rule", "add", "deny"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        h.refused(&cmd, message);
    }

    let uplink = h.uplink.clone();
    let deny = [
        "rule",
        "add",
        "deny",
        "--source",
        OUTSIDE_IP,
        "--proto",
        "tcp",
        "--port",
        "8080",
        "--in-interface",
        &uplink,
    ];
    let id = h.ok(&deny).trim().to_owned();
    h.refused(&deny, "already matches exactly this traffic");
    let status = h.json(&["status"]);
    assert_eq!(
        status["user_rules"][0]["text"],
        format!("deny from {OUTSIDE_IP}/32 tcp port 8080 in {uplink}")
    );
    let listed = h.ok(&["rule", "ls"]);
    assert!(listed.contains(&format!("1  {id}   deny from")), "{listed}");

    let before = rule_drops(&h, datapath);
    assert!(probe::tcp_request(&h.outside, published, b"").is_err());
    assert!(
        rule_drops(&h, datapath) > before,
        "the rule's drop is counted"
    );

    // Killed: the rules stay in force while no daemon runs, and after.
    h.kill_daemon(libc::SIGKILL);
    assert!(probe::tcp_request(&h.outside, published, b"").is_err());
    h.spawn_daemon();
    let after_restart = rule_drops(&h, datapath);
    assert!(
        datapath != "ebpf" || after_restart >= before + 2,
        "the drop while netd was down was the rule's: {before} -> {after_restart}"
    );
    assert!(probe::tcp_request(&h.outside, published, b"").is_err());
    assert!(rule_drops(&h, datapath) > after_restart);
    assert_eq!(
        h.json(&["rule", "ls", "--format", "json"])[0]["id"],
        id.parse::<u64>().unwrap()
    );

    // Another interface's rule does not match; removing the rule reopens.
    h.ok(&["rule", "rm", &id]);
    h.ok(&["rule", "add", "deny", "--in-interface", "nosuchif0"]);
    let reply = probe::tcp_request(&h.outside, published, b"").unwrap();
    assert_eq!(reply, OUTSIDE_IP.as_bytes());
    h.refused(&["rule", "rm", "999"], "no rule with ID 999");
}

/// With XDP in its default mode (native, on veth) the rule's drops come
/// before any skb; with `--xdp off`, from the TC program; both alike.
#[test]
fn ebpf_rules_refuse_bad_input_and_stay_in_force_across_kill_and_restart() {
    check("ebpf", &[], Some("native"));
}

#[test]
fn ebpf_rules_without_xdp_drop_in_tc() {
    check("ebpf", &["--xdp", "off"], None);
}

#[test]
fn ebpf_rules_with_generic_xdp() {
    check("ebpf", &["--xdp", "generic"], Some("generic"));
}

#[test]
fn iptables_rules_refuse_bad_input_and_stay_in_force_across_kill_and_restart() {
    check("iptables", &[], None);
}
