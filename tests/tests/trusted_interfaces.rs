//! Docker 28.2's trusted host interfaces, in real traffic on both
//! datapaths and through Docker: what arrives on the trusted uplink reaches
//! a published container port at the container's address; an unpublished
//! port, and the same port from an untrusted uplink, stay closed, each
//! stopped where the datapath says.

use std::net::SocketAddr;

use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    docker::DockerHost,
    probe::{self, EchoServer, eventually},
    scenarios::datapath_drops,
};

const SUBNET: &str = "10.68.0.0/24";
const CONTAINER: &str = "10.68.0.2";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The container on the trusting network publishes 8085:80 and listens on
/// 80 and 81; both outsides route the subnet to the host.
fn check(h: &mut DaemonHost, datapath: &str, container: &str) {
    let (outside2, _) = h.add_second_uplink();
    let _servers = [80, 81].map(|port| {
        EchoServer::tcp(
            &h.ctr(container),
            addr(&format!("{CONTAINER}:{port}")),
            "{peer}",
        )
        .unwrap()
    });
    h.outside
        .ip(&["route", "add", SUBNET, "via", HOST_IP])
        .unwrap();
    outside2
        .ip(&["route", "add", SUBNET, "via", "100.64.0.1"])
        .unwrap();
    let answer = |from: &netd_testbed::Netns, to: &str| {
        probe::tcp_request(from, addr(to), b"")
            .map(|seen| String::from_utf8_lossy(&seen).into_owned())
    };
    // The second uplink carries netd's programs once its published port answers.
    eventually("the published port on the second uplink", || {
        answer(&outside2, "100.64.0.1:8085").is_ok_and(|seen| seen == "100.64.0.2")
    });
    assert_eq!(
        answer(&h.outside, &format!("{CONTAINER}:80")).unwrap(),
        OUTSIDE_IP,
        "{datapath}: the published container port from the trusted uplink"
    );
    let (ebpf, iptables) = match datapath {
        "ebpf" => ("unsolicited-inbound", "unsolicited-inbound"),
        _ => ("NETD-FORWARD", "NETD-RAW"),
    };
    for (from, to, counted) in [
        (&h.outside, format!("{CONTAINER}:81"), ebpf),
        (&outside2, format!("{CONTAINER}:80"), iptables),
    ] {
        let before = datapath_drops(h, datapath);
        let err = answer(from, &to).expect_err("closed");
        let after = datapath_drops(h, datapath);
        let grew =
            |k: &str| after.get(k).copied().unwrap_or(0) > before.get(k).copied().unwrap_or(0);
        assert!(
            grew(counted),
            "{datapath}: {to} from {}: {err:#}, drops {before:?} -> {after:?}",
            from.name()
        );
    }
}

fn through_cli(datapath: &str) {
    let mut h = DaemonHost::start(netd(), &["--datapath", datapath]);
    let uplink = h.uplink.clone();
    h.ok(&[
        "network",
        "create",
        "trusting",
        "--subnet",
        SUBNET,
        "--trusted-host-interface",
        &uplink,
    ]);
    let c = h.name("t");
    h.ok(&[
        "container",
        "create",
        &c,
        "--network",
        "trusting",
        "--ip",
        CONTAINER,
        "-p",
        "8085:80",
    ]);
    check(&mut h, datapath, "t");
}

#[test]
fn ebpf_a_trusted_interface_reaches_published_container_ports() {
    through_cli("ebpf");
}

#[test]
fn iptables_a_trusted_interface_reaches_published_container_ports() {
    through_cli("iptables");
}

/// Docker's option, colon-separated: the same verdicts.
#[test]
fn docker_trusted_host_interfaces_option() {
    let mut d = DockerHost::start(netd(), &["--datapath", "ebpf"]);
    let net = d.h.name("trusting");
    let option = format!(
        "-o=com.docker.network.bridge.trusted_host_interfaces=wg9:{}",
        d.h.uplink
    );
    d.network(&net, &["--subnet", SUBNET, &option]);
    d.run(
        "t",
        &["--network", &net, "--ip", CONTAINER, "-p", "8085:80"],
    );
    check(&mut d.h, "ebpf", "t");
}
