//! The user's firewall rules through the real daemon and CLI, on both
//! datapaths: refusals that change nothing, the drop seen where it was
//! decided, and rules in force without a gap across kill -9 and restart.

use netd::error::ErrorKind;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Packets the user's rules dropped: the `user-rule` drop counter on ebpf
/// (pinned, so it counts across restarts too), NETD-USER's DROP rules'
/// counters on iptables.
fn rule_drops(h: &DaemonHost, datapath: &str) -> u64 {
    if datapath == "ebpf" {
        return h.json(&["status", "--format", "json"])["drops"]["user-rule"]
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

/// `xdp`: what status must show for the uplink's XDP program.
fn check(datapath: &str, flags: &[&str], xdp: &str) {
    let args: Vec<&str> = ["--datapath", datapath]
        .iter()
        .chain(flags)
        .copied()
        .collect();
    let mut h = DaemonHost::start(netd(), &args);
    let web = h.name("web");
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let _server = EchoServer::tcp(&h.ctr("web"), addr("172.17.0.2:80"), "{peer}").unwrap();
    let published = addr(&format!("{HOST_IP}:8080"));
    assert!(probe::tcp_request(&h.outside, published, b"").is_ok());

    // Bad rules: each refused with its reason, nothing changed.
    for (args, kind, message) in [
        (
            &["--source", "10.0.0.1/8"][..],
            ErrorKind::Invalid,
            "did you mean 10.0.0.0/8",
        ),
        (
            &["--source", "300.1.1.1"],
            ErrorKind::Invalid,
            "is not an IPv4 address or CIDR",
        ),
        (
            &["--proto", "tcp", "--port", "0"],
            ErrorKind::Invalid,
            "port 0 cannot be matched",
        ),
        (
            &["--port", "80"],
            ErrorKind::Invalid,
            "a port needs a protocol",
        ),
        (
            &["--proto", "tcp", "--port", "90-80"],
            ErrorKind::Invalid,
            "ends before it starts",
        ),
        (
            &["--network", "nope"],
            ErrorKind::NotFound,
            "no network named \"nope\"",
        ),
        (
            &["--in-interface", "a/b"],
            ErrorKind::Invalid,
            "not a valid interface name",
        ),
        (
            &["--position", "2"],
            ErrorKind::Invalid,
            "position 2 is outside the list (1 to 1)",
        ),
    ] {
        let cmd: Vec<&str> = ["rule", "add", "deny"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        h.refused(&cmd, kind, message);
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
    h.refused(
        &deny,
        ErrorKind::Conflict,
        "already matches exactly this traffic",
    );
    let status = h.json(&["status", "--format", "json"]);
    assert_eq!(
        status["user_rules"][0]["text"],
        format!("deny from {OUTSIDE_IP}/32 tcp port 8080 in {uplink}")
    );
    let listed = h.ok(&["rule", "ls"]);
    assert!(listed.contains(&format!("1  {id}   deny from")), "{listed}");

    let before = rule_drops(&h, datapath);
    let events = (datapath == "ebpf").then(|| h.monitor());
    assert!(probe::tcp_request(&h.outside, published, b"").is_err());
    assert!(
        rule_drops(&h, datapath) > before,
        "the rule's drop is counted"
    );
    if let Some(events) = &events {
        // Where it was dropped: before the TC program when XDP is attached.
        let hook = hook_of_next_drop(events, "user-rule");
        let mode = status["programs"]["xdp"][&uplink]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(mode.starts_with(xdp), "{mode} is not {xdp}");
        let expected = if xdp.starts_with("off") { "tc" } else { "xdp" };
        assert_eq!(hook, expected, "status says XDP is {mode}");
    }

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
    h.refused(
        &["rule", "rm", "999"],
        ErrorKind::NotFound,
        "no rule with ID 999",
    );

    // A whole list at once, from a file; a bad line refuses all of it.
    let file = std::env::temp_dir().join(format!("{}-rules", h.name("load")));
    let good = "# the database, for the office only\nallow -s 203.0.113.0/24 --proto tcp --port 8080\n\ndeny --proto tcp --port 8080\n";
    std::fs::write(&file, good).unwrap();
    let path = file.display().to_string();
    assert_eq!(h.ok(&["rule", "load", &path]).trim(), "2 rules");
    assert!(probe::tcp_request(&h.outside, published, b"").is_err());
    std::fs::write(&file, "deny --proto tcp --port 22\ndeny --port 80\n").unwrap();
    h.refused(
        &["rule", "load", &path],
        ErrorKind::Invalid,
        "line 2: deny --port 80",
    );
    std::fs::write(
        &file,
        "deny --proto tcp --port 22\ndeny --proto tcp --port 22\n",
    )
    .unwrap();
    h.refused(
        &["rule", "load", &path],
        ErrorKind::Invalid,
        "matches exactly what rule 1 does",
    );
    let listed = h.json(&["rule", "ls", "--format", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    std::fs::write(&file, "# nothing\n").unwrap();
    assert_eq!(h.ok(&["rule", "load", &path]).trim(), "0 rules");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        probe::tcp_request(&h.outside, published, b"").unwrap(),
        OUTSIDE_IP.as_bytes()
    );
}

/// By default a veth uplink gets no XDP (the skb exists before it; TC
/// drops as early): the rule's drops come from the TC program.
#[test]
fn ebpf_rules_refuse_bad_input_and_stay_in_force_across_kill_and_restart() {
    check("ebpf", &[], "off (veth");
}

/// Native XDP asked for: the same rules, dropped before the TC program.
#[test]
fn ebpf_rules_with_native_xdp_drop_in_xdp() {
    check("ebpf", &["--xdp", "native"], "native");
}

#[test]
fn ebpf_rules_with_generic_xdp() {
    check("ebpf", &["--xdp", "generic"], "generic");
}

#[test]
fn iptables_rules_refuse_bad_input_and_stay_in_force_across_kill_and_restart() {
    check("iptables", &[], "");
}

/// The XDP attachment `ip link` shows on the uplink: `xdp` (native),
/// `xdpgeneric`, or none.
fn xdp_on_link(h: &DaemonHost) -> Option<String> {
    let out = h
        .host
        .run("ip", &["-o", "link", "show", "dev", &h.uplink])
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split_whitespace()
        .find(|word| word.starts_with("xdp"))
        .map(str::to_owned)
}

/// Restarts (kill -9, as a crash would) that keep or change the XDP mode:
/// each start replaces the previous run's link at once, in the mode asked
/// for, and the rule keeps dropping in the hook that mode gives.
#[test]
fn xdp_link_follows_the_flag_across_restarts() {
    let mut h = DaemonHost::start(netd(), &["--datapath", "ebpf"]);
    let web = h.name("web");
    h.ok(&["container", "create", &web, "-p", "8080:80"]);
    let _server = EchoServer::tcp(&h.ctr("web"), addr("172.17.0.2:80"), "{peer}").unwrap();
    let published = addr(&format!("{HOST_IP}:8080"));
    h.ok(&["rule", "add", "deny", "--source", OUTSIDE_IP]);
    assert_eq!(xdp_on_link(&h), None, "auto on a veth attaches nothing");
    for (flag, on_link, status) in [
        ("generic", Some("xdpgeneric"), "generic"),
        ("generic", Some("xdpgeneric"), "generic"),
        ("native", Some("xdp"), "native"),
        ("native", Some("xdp"), "native"),
        ("generic", Some("xdpgeneric"), "generic"),
        ("off", None, "off (--xdp off)"),
        ("native", Some("xdp"), "native"),
    ] {
        h.kill_daemon(libc::SIGKILL);
        h.spawn_daemon_with(&["--xdp", flag]);
        let shown = h.json(&["status", "--format", "json"])["programs"]["xdp"][&h.uplink].clone();
        assert_eq!(shown, status, "--xdp {flag}");
        assert_eq!(xdp_on_link(&h).as_deref(), on_link, "--xdp {flag}");
        let events = h.monitor();
        assert!(probe::tcp_request(&h.outside, published, b"").is_err());
        let expected = if on_link.is_some() { "xdp" } else { "tc" };
        assert_eq!(
            hook_of_next_drop(&events, "user-rule"),
            expected,
            "--xdp {flag}"
        );
    }
}

/// The bpffs directory of a test's pins, removed however the test ends.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a restart or a mode change does, back to back: each attach finds
/// the device free of the link the previous one pinned (unpinning alone
/// frees it only after an RCU grace period: EBUSY for an attach meanwhile).
#[test]
fn xdp_reattach_back_to_back_finds_the_device_free() {
    use netd::{
        datapath::{BpfLog, Datapath, XdpMode, XdpSetting},
        features::{Features, KernelFeatures},
    };
    let mut bed = netd_testbed::topology::Testbed::new().unwrap();
    let (host, _outside, uplink) = bed.add_host_with_outside().unwrap();
    let pins = PinDir(format!("/sys/fs/bpf/netd-test-{}", bed.id()).into());
    let features = Features::probe(KernelFeatures::Auto).unwrap();
    let mut datapath =
        Datapath::load_pinned(&pins.0, &features, BpfLog::Off, &Default::default()).unwrap();
    for (setting, mode) in [
        (XdpSetting::Generic, XdpMode::Generic),
        (XdpSetting::Generic, XdpMode::Generic),
        (XdpSetting::Native, XdpMode::Native),
        (XdpSetting::Native, XdpMode::Native),
        (XdpSetting::Generic, XdpMode::Generic),
        (XdpSetting::Native, XdpMode::Native),
    ] {
        let attached = host
            .enter(|| datapath.attach_xdp(&uplink, setting))
            .unwrap()
            .unwrap_or_else(|err| panic!("{setting:?}: {err:#}"));
        assert_eq!(attached, mode);
        assert!(datapath.xdp_pinned(&uplink));
    }
    host.enter(|| datapath.detach_xdp(&uplink))
        .unwrap()
        .unwrap();
    assert!(!datapath.xdp_pinned(&uplink));
    let out = host
        .run("ip", &["-o", "link", "show", "dev", &uplink])
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(!line.contains(" xdp"), "still attached: {line}");
}
