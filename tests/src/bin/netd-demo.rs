//! `cargo xtask demo`: the classic story on the eBPF datapath, told through
//! the real `netd` CLI, then the verdict matrix of both datapaths side by
//! side. Everything runs in network namespaces of its own and is removed at
//! the end (on errors too).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use netd_testbed::{
    daemon_host::{DAEMON_LOG_ENV, DaemonHost, HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
    scenarios,
};

fn main() -> Result<()> {
    let netd = netd_binary()?;
    // The daemons' own log lines would bury the story: they go to a file.
    let log = std::env::temp_dir().join(format!("netd-demo-{}.log", std::process::id()));
    std::fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    // SAFETY: set before any thread starts; the harness reads it when it
    // starts a daemon.
    unsafe { std::env::set_var(DAEMON_LOG_ENV, &log) };
    println!("netd demo: a host namespace runs `netd daemon` (eBPF datapath); an outside");
    println!(
        "client sits on its uplink ({HOST_IP} <-> {OUTSIDE_IP}). All addresses live in this demo's namespaces.\n"
    );
    println!("(the daemons' logs: {})\n", log.display());
    story(&netd)?;
    side_by_side(&netd);
    println!("\ncleaned up: containers, networks, namespaces, BPF pins");
    println!("the daemons' logs are in {}", log.display());
    Ok(())
}

fn netd_binary() -> Result<String> {
    let exe = std::env::current_exe()?;
    let netd: PathBuf = exe
        .parent()
        .context("demo binary has no directory")?
        .join("netd");
    anyhow::ensure!(
        netd.exists(),
        "{} not built (run `cargo xtask demo`)",
        netd.display()
    );
    Ok(netd.to_string_lossy().into_owned())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid address")
}

fn story(netd: &str) -> Result<()> {
    let h = DaemonHost::start(netd, &[]);
    let (web, db) = (h.name("web"), h.name("db"));
    let run = |args: &[&str]| {
        println!("$ netd {}", args.join(" "));
        let out = h.ok(args);
        for line in out.lines().take(12) {
            println!("  {line}");
        }
    };
    run(&["network", "ls"]);
    run(&["network", "create", "backend", "--subnet", "10.60.0.0/24"]);
    run(&["container", "create", &web, "-p", "8080:80"]);
    run(&["container", "create", &db, "--network", "backend"]);
    run(&["container", "ls"]);

    let _web_server = EchoServer::tcp(&h.ctr("web"), addr("172.17.0.2:80"), "web saw {peer}")?;
    let _outside_server = EchoServer::tcp(
        &h.outside,
        addr(&format!("{OUTSIDE_IP}:7000")),
        "outside saw {peer}",
    )?;
    let show = |what: &str, result: Result<Vec<u8>>| match result {
        Ok(reply) => println!("  {what:<58} -> {}", String::from_utf8_lossy(&reply)),
        Err(_) => println!("  {what:<58} -> blocked"),
    };
    println!("\nreal traffic:");
    show(
        "outside -> host:8080 (published port, DNAT)",
        probe::tcp_request(&h.outside, addr(&format!("{HOST_IP}:8080")), b""),
    );
    show(
        "web -> outside:7000 (masquerade)",
        probe::tcp_request(&h.ctr("web"), addr(&format!("{OUTSIDE_IP}:7000")), b""),
    );
    show(
        "db -> web:80 (another network: isolated)",
        probe::tcp_request(&h.ctr("db"), addr("172.17.0.2:80"), b""),
    );
    show(
        "db -> host:8080 (hairpin from another network)",
        probe::tcp_request(&h.ctr("db"), addr(&format!("{HOST_IP}:8080")), b""),
    );
    show(
        "host -> 127.0.0.1:8080 (cgroup connect hook)",
        probe::tcp_request(&h.host, addr("127.0.0.1:8080"), b""),
    );
    h.outside
        .ip(&["route", "add", "172.17.0.0/16", "via", HOST_IP])?;
    show(
        "outside -> 172.17.0.2:80 directly (unsolicited)",
        probe::tcp_request(&h.outside, addr("172.17.0.2:80"), b""),
    );
    println!();
    run(&["conntrack", "ls"]);
    println!("$ netd status");
    for line in h.ok(&["status"]).lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The scenario suite on both datapaths (in parallel), one table.
fn side_by_side(netd: &str) {
    println!(
        "\nthe scenario suite on both datapaths (real ICMP/TCP/UDP; what the server saw, or blocked):"
    );
    let (ebpf, iptables) = std::thread::scope(|s| {
        let ebpf = s.spawn(|| scenarios::run(netd, "ebpf", &[], scenarios::Frontend::Cli));
        let iptables = s.spawn(|| scenarios::run(netd, "iptables", &[], scenarios::Frontend::Cli));
        (
            ebpf.join().expect("ebpf suite"),
            iptables.join().expect("iptables suite"),
        )
    });
    println!(
        "  {:<48} {:<8} {:<20} {:<14} {:<14}",
        "scenario", "from", "to", "ebpf", "iptables"
    );
    let mut differences = 0;
    for (e, i) in ebpf.iter().zip(&iptables) {
        let mark = if e.got == e.want && i.got == i.want {
            " "
        } else {
            "!"
        };
        if mark == "!" {
            differences += 1;
        }
        println!(
            "{mark} {:<48} {:<8} {:<20} {:<14} {:<14}",
            e.what, e.from, e.to, e.got, i.got
        );
    }
    println!(
        "{} scenarios, {differences} differing from the expectation",
        ebpf.len()
    );
}
