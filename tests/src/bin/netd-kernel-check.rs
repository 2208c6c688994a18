//! `netd-kernel-check [--netd PATH] [--kernel-features auto|legacy]`: what
//! `cargo xtask kernels` runs on each kernel (natively, and as the program
//! of a QEMU guest's initramfs). Each check prints one line, `ok NAME` or
//! `FAIL NAME: why`, and the last line counts them; it exits non-zero when
//! one failed. Everything runs in namespaces it creates and removes.

use std::{
    net::SocketAddr,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail, ensure};
use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let netd = value("--netd").unwrap_or_else(|| sibling("netd"));
    let mode = value("--kernel-features").unwrap_or_else(|| "auto".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("netd-kernel-check: kernel {}, {mode} mode", kernel.trim());

    let mut passed = 0;
    let mut failed = 0;
    let mut report = |name: &str, result: Result<()>| match result {
        Ok(()) => {
            passed += 1;
            println!("netd-kernel-check: ok {name}");
        }
        Err(err) => {
            failed += 1;
            println!("netd-kernel-check: FAIL {name}: {err:#}");
        }
    };
    report("netd check", netd_check(&netd, &mode));
    // The daemon checks share one host; a panic inside the harness is a
    // failure of the check that was running, not a crash of the program.
    // With the XDP program in the veth's driver, so this kernel's verifier,
    // XDP links and XDP's verdicts are checked by the same traffic.
    let host = catch(|| DaemonHost::start(&netd, &["--kernel-features", &mode, "--xdp", "native"]));
    match host {
        Ok(mut h) => {
            report("daemon starts on a veth uplink", attach_mode(&h, &mode));
            let checks = catch(|| traffic_and_restart(&mut h)).and_then(|r| r);
            match checks {
                Ok(steps) => {
                    for step in steps {
                        report(step, Ok(()));
                    }
                }
                Err(err) => report("traffic and restart", Err(err)),
            }
        }
        Err(err) => report("daemon starts on a veth uplink", Err(err)),
    }
    println!("netd-kernel-check: {mode}: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `netd check`: the probes and every program through this verifier.
fn netd_check(netd: &str, mode: &str) -> Result<()> {
    let out = Command::new(netd)
        .args(["check", "--kernel-features", mode])
        .output()
        .with_context(|| format!("running {netd}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "netd check failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// What the daemon chose, as `netd status` reports it, against what this
/// kernel and mode call for.
fn attach_mode(h: &DaemonHost, mode: &str) -> Result<()> {
    let status = h.json(&["status", "--format", "json"]);
    let attach = status["programs"]["attach"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mtu_check = status["kernel"]["mtu_check"]["uses"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let clock = status["kernel"]["clock"]["uses"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let xdp = status["programs"]["xdp"][&h.uplink]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("netd-kernel-check: attach {attach}, mtu check {mtu_check}, clock {clock}, XDP {xdp}");
    ensure!(xdp == "native", "XDP on the uplink is {xdp:?}, not native");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let (want_attach, want_mtu, want_clock) = match mode {
        "legacy" => ("clsact", "uplink_mtu_length", "exact"),
        _ if version >= (6, 6) => ("tcx", "check_mtu_helper", "coarse"),
        _ if version >= (5, 12) => ("clsact", "check_mtu_helper", "coarse"),
        _ if version >= (5, 11) => ("clsact", "uplink_mtu_length", "coarse"),
        _ => ("clsact", "uplink_mtu_length", "exact"),
    };
    ensure!(
        (attach.as_str(), mtu_check.as_str(), clock.as_str())
            == (want_attach, want_mtu, want_clock),
        "kernel {} in {mode} mode chose {attach}, {mtu_check} and {clock}, not {want_attach}, \
         {want_mtu} and {want_clock}",
        release.trim()
    );
    Ok(())
}

/// A published port answering an outside client and the host itself, masquerade to the
/// outside, and a kill -9 restart that keeps a connection through the
/// published port. Returns the names of the steps that passed (a failing
/// step ends it with its error).
fn traffic_and_restart(h: &mut DaemonHost) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
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
    let _server = EchoServer::tcp_stream_echo(&h.ctr("web"), addr("10.40.0.2:80"))?;
    let mut kept = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080")))?;
    probe::echo_roundtrip(&mut kept, b"hello").context("through the published port")?;
    done.push("published port answers an outside client");
    // The host's own sockets go through the cgroup hooks, which act only in
    // netd's namespace: its cookie had to be right.
    let mut local = probe::tcp_connect(&h.host, addr("127.0.0.1:8080"))?;
    probe::echo_roundtrip(&mut local, b"local").context("from the host to 127.0.0.1:8080")?;
    done.push("published port answers the host on 127.0.0.1");
    // Hairpin: a container to the host's published port (the backend
    // itself here), redirected into it by the datapath.
    let mut hairpin = probe::tcp_connect(&h.ctr("web"), addr(&format!("{HOST_IP}:8080")))?;
    probe::echo_roundtrip(&mut hairpin, b"hairpin").context("hairpin to the published port")?;
    done.push("published port answers its own container (hairpin)");

    let _outside = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7000")),
        "saw {peer}:",
    )?;
    let reply = probe::tcp_request(&h.ctr("web"), addr(&format!("{OUTSIDE_IP}:7000")), b"hi")?;
    let want = format!("saw {HOST_IP}:hi");
    if reply != want.as_bytes() {
        bail!(
            "masquerade: the outside saw {:?}, not {want:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    done.push("masquerade to the outside");
    ipv6_within_and_between_networks(h)?;
    done.push(
        "IPv6 within a network, isolation, NAT66 out, a published port in, hairpin, the host to [::1], unsolicited inbound",
    );

    // A user rule's drop and an unsolicited packet to a container address:
    // dropped (by XDP, which sees them first) and counted under their reasons.
    let drops = |h: &DaemonHost, reason: &str| {
        h.json(&["status", "--format", "json"])["drops"][reason].as_u64()
    };
    h.ok(&[
        "rule", "add", "deny", "--source", OUTSIDE_IP, "--proto", "tcp", "--port", "8080",
    ]);
    let denied_before = drops(h, "user-rule").unwrap_or(0);
    ensure!(
        probe::tcp_request(&h.outside, addr(&format!("{HOST_IP}:8080")), b"x").is_err(),
        "a denied source reached the published port"
    );
    ensure!(
        drops(h, "user-rule").unwrap_or(0) > denied_before,
        "the rule's drop was not counted"
    );
    h.outside
        .ip(&["route", "add", "10.40.0.0/24", "via", HOST_IP])
        .context("routing to the container subnet")?;
    let unsolicited_before = drops(h, "unsolicited-inbound").unwrap_or(0);
    ensure!(
        probe::tcp_request(&h.outside, addr("10.40.0.2:80"), b"x").is_err(),
        "the outside reached a container address"
    );
    ensure!(
        drops(h, "unsolicited-inbound").unwrap_or(0) > unsolicited_before,
        "the unsolicited packet's drop was not counted"
    );
    let rules = h.json(&["rule", "ls", "--format", "json"]);
    let id = rules[0]["id"].to_string();
    h.ok(&["rule", "rm", &id]);
    done.push("a user rule and unsolicited packets dropped early");

    h.kill_daemon(libc::SIGKILL);
    probe::echo_roundtrip(&mut kept, b"daemon dead").context("while the daemon is dead")?;
    h.spawn_daemon();
    probe::echo_roundtrip(&mut kept, b"after restart").context("after the restart")?;
    let mut fresh = probe::tcp_connect(&h.outside, addr(&format!("{HOST_IP}:8080")))?;
    probe::echo_roundtrip(&mut fresh, b"new").context("a new connection after restart")?;
    done.push("kill -9 restart keeps a connection");
    Ok(done)
}

/// Dual-stack networks on this kernel's verifier and datapath: TCP over
/// IPv6 between two containers of a network, another network's container
/// out of reach, TCP out through NAT66, and the outside kept off a
/// container's IPv6 address (by XDP, which sees it first), each drop
/// counted under its reason. (netd turns IPv6 forwarding on itself.)
fn ipv6_within_and_between_networks(h: &DaemonHost) -> Result<()> {
    let drops = |reason: &str| {
        h.json(&["status", "--format", "json"])["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    };
    h.ok(&["network", "create", "six", "--subnet", "fd00:6::/64"]);
    h.ok(&["network", "create", "seven", "--subnet", "fd00:7::/64"]);
    for (name, net) in [("s1", "six"), ("s2", "six"), ("t1", "seven")] {
        h.ok(&["container", "create", &h.name(name), "--network", net]);
    }
    h.ok(&[
        "container",
        "create",
        &h.name("p6"),
        "--network",
        "six",
        "-p",
        "8086:80",
    ]);
    let _server = EchoServer::tcp(&h.ctr("s2"), addr("[fd00:6::3]:80"), "s2 saw {peer}:")?;
    let reply = probe::tcp_request(&h.ctr("s1"), addr("[fd00:6::3]:80"), b"hi")
        .context("TCP over IPv6 within a network")?;
    ensure!(
        reply == b"s2 saw fd00:6::2:hi",
        "s2 answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    let before = drops("network-isolation");
    ensure!(
        !probe::ping(&h.ctr("s1"), "fd00:7::2", 1)?,
        "IPv6 crossed from one network to another"
    );
    ensure!(
        drops("network-isolation") > before,
        "the isolation drop was not counted"
    );
    h.host
        .ip(&["-6", "addr", "add", "fd99::1/64", "dev", &h.uplink, "nodad"])
        .context("an IPv6 address on the uplink")?;
    h.outside
        .ip(&["-6", "addr", "add", "fd99::2/64", "dev", "eth0", "nodad"])
        .context("an IPv6 address outside")?;
    h.outside
        .ip(&["-6", "route", "add", "fd00::/8", "via", "fd99::1"])
        .context("routing the containers' prefix to the host")?;
    // NAT66 out of the host: the masquerade path's subprograms loaded
    // and within this kernel's stack.
    let _outside = EchoServer::tcp(&h.outside, addr("[fd99::2]:80"), "outside saw {peer}:")?;
    let reply = probe::tcp_request(&h.ctr("s1"), addr("[fd99::2]:80"), b"out")
        .context("TCP over IPv6 through NAT66")?;
    ensure!(
        reply == b"outside saw fd99::1:out",
        "the outside answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    // A port published on both families, reached over IPv6.
    let _p6 = EchoServer::tcp(&h.ctr("p6"), addr("[::]:80"), "p6 saw {peer}:")?;
    let reply = probe::tcp_request(&h.outside, addr("[fd99::1]:8086"), b"in")
        .context("a published port over IPv6")?;
    ensure!(
        reply == b"p6 saw fd99::2:in",
        "the published port answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    // Hairpin (a container to the host's port) and the host to [::1]'s
    // (the connect6 hook): the backend sees its gateway.
    for (from, what) in [(h.ctr("s1"), "hairpin"), (h.host.clone(), "the host")] {
        let to = if what == "hairpin" {
            "[fd99::1]:8086"
        } else {
            "[::1]:8086"
        };
        let reply = probe::tcp_request(&from, addr(to), b"x")
            .with_context(|| format!("{what} to a port published on IPv6"))?;
        ensure!(
            reply == b"p6 saw fd00:6::1:x",
            "{what}: the published port answered {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    let before = drops("unsolicited-inbound");
    ensure!(
        !probe::ping(&h.outside, "fd00:6::2", 1)?,
        "the outside reached a container's IPv6 address"
    );
    ensure!(
        drops("unsolicited-inbound") > before,
        "the unsolicited IPv6 packet's drop was not counted"
    );
    Ok(())
}

fn catch<T>(f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned());
        anyhow::anyhow!(text)
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// A binary next to this one (xtask builds them together).
fn sibling(name: &str) -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let path: PathBuf = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    path.to_string_lossy().into_owned()
}
