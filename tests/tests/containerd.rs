//! A real containerd 1.6 attaching containers through netd's CNI plugin
//! (`ctr run --cni`): the container gets netd's address and route, is
//! masqueraded towards the outside, and goes with DEL (`--rm`) or, when
//! ctr leaves it, with its namespace.

use std::process::Command;

use netd_testbed::bin_under_test::{netd, netd_cni as plugin};
use netd_testbed::{
    Netns,
    containerd::ContainerdHost,
    daemon_host::{HOST_IP, OUTSIDE_IP},
    probe::{self, EchoServer},
};

fn records(c: &ContainerdHost) -> Vec<serde_json::Value> {
    c.h.json(&["container", "ls", "--format", "json"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn ctr_run_cni_attaches_through_netd() {
    let c = ContainerdHost::start(netd(), plugin(), "bridge");
    let _server = EchoServer::tcp(
        &c.h.outside,
        format!("{OUTSIDE_IP}:7000").parse().unwrap(),
        "{peer}",
    )
    .unwrap();
    let rootfs = c.rootfs().display().to_string();
    let id = c.h.name("fg");
    // Foreground with --rm: ctr calls DEL when the task ends.
    let out = c.ctr_with_cni(&[
        "run",
        "--rm",
        "--cni",
        "--env",
        "PATH=/bin",
        "--rootfs",
        &rootfs,
        &id,
        "sh",
        "-c",
        "ip -4 -o addr show eth0; ip route show default",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctr run: {out:?}\n{}", c.log());
    assert!(stdout.contains("inet 172.17.0.2/16"), "{stdout}");
    assert!(stdout.contains("default via 172.17.0.1"), "{stdout}");
    assert!(records(&c).is_empty(), "DEL left {:?}", records(&c));

    // Detached: masqueraded towards the outside. ctr never calls DEL for
    // it; when its task (and namespace) is gone, netd frees the address.
    let id = c.h.name("bg");
    let out = c.ctr_with_cni(&[
        "run",
        "-d",
        "--cni",
        "--env",
        "PATH=/bin",
        "--rootfs",
        &rootfs,
        &id,
        "sleep",
        "3600",
    ]);
    assert!(out.status.success(), "ctr run -d: {out:?}");
    let pid = String::from_utf8_lossy(&c.ctr(&["task", "ls"]).stdout)
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .expect("the task's pid");
    let ns = Netns::of_process(&id, &pid).unwrap();
    let seen = probe::tcp_request(&ns, format!("{OUTSIDE_IP}:7000").parse().unwrap(), b"");
    let _ = Command::new("ip").args(["netns", "del", &id]).output();
    let seen = String::from_utf8(seen.unwrap()).unwrap();
    assert_eq!(seen, HOST_IP, "masqueraded behind the host");
    let recs = records(&c);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["sandbox"]["container_id"], format!("default-{id}"));
    assert_eq!(recs[0]["attachments"][0]["ip"], "172.17.0.2");
    let ok = |args: &[&str]| {
        let out = c.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {out:?}");
    };
    ok(&["task", "kill", "-s", "9", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.ctr(&["task", "rm", &id]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(&["container", "rm", &id]);
    let repairs = c.h.ok(&["repair"]);
    assert!(
        repairs.contains("its sandbox is gone; removed (172.17.0.2 freed"),
        "{repairs}"
    );
    assert!(records(&c).is_empty());
}
