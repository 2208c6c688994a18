//! A real dockerd (Debian's docker.io) with netd as its network driver:
//! `docker network create -d netd`, `docker run -p`, isolation, and bad
//! input refused with Docker showing netd's message.

use std::net::SocketAddr;

use netd_testbed::{
    daemon_host::{HOST_IP, OUTSIDE_IP},
    docker::DockerHost,
    probe::{self, EchoServer},
};

const NETD: &str = env!("CARGO_BIN_EXE_netd");

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn docker_runs_containers_on_netd_networks() {
    let d = DockerHost::start(NETD, &[]);
    d.network("web", &["--subnet", "10.80.0.0/24"]);
    let web = d.run("web", &["--network", "web", "-p", "8080:80"]);
    let _server = EchoServer::tcp(&web, addr("10.80.0.2:80"), "web saw {peer}:").unwrap();
    // The published port answers from outside, the client address kept.
    let reply = probe::tcp_request(&d.h.outside, addr(&format!("{HOST_IP}:8080")), b"hi").unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("web saw {OUTSIDE_IP}:hi")
    );
    // netd lists Docker's endpoint with its address and port.
    let containers = d.h.json(&["container", "ls", "--format", "json"]);
    let endpoint = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["sandbox"]["kind"] == "docker")
        .unwrap_or_else(|| panic!("no Docker endpoint in {containers}"));
    assert_eq!(endpoint["attachments"][0]["ip"], "10.80.0.2");
    assert_eq!(endpoint["ports"][0]["host_port"], 8080);
    // Removing the container unpublishes the port and frees the endpoint.
    d.docker_ok(&["rm", "-f", &d.h.name("web")]);
    assert!(probe::tcp_request(&d.h.outside, addr(&format!("{HOST_IP}:8080")), b"hi").is_err());
    let containers = d.h.json(&["container", "ls", "--format", "json"]);
    assert!(!containers.to_string().contains("docker"), "{containers}");
    d.docker_ok(&["network", "rm", "web"]);
    assert!(
        !d.h.json(&["network", "ls", "--format", "json"])
            .to_string()
            .contains("10.80.0.0/24")
    );
}
