//! A real dockerd (Debian's docker.io) with netd as its network driver:
//! `docker network create -d netd`, `docker run -p`, isolation, and bad
//! input refused with Docker showing netd's message.

use std::net::SocketAddr;

use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::{HOST_IP, OUTSIDE_IP},
    docker::DockerHost,
    probe::{self, EchoServer},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn docker_runs_containers_on_netd_networks() {
    let d = DockerHost::start(netd(), &[]);
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
    // `-p 80` and `-P`: netd picks free host ports (Docker's ephemeral range).
    let eph = d.run(
        "eph",
        &["--network", "web", "-p", "80", "--expose", "81", "-P"],
    );
    let _eph80 = EchoServer::tcp(&eph, addr("10.80.0.3:80"), "eph80:").unwrap();
    let _eph81 = EchoServer::tcp(&eph, addr("10.80.0.3:81"), "eph81:").unwrap();
    let containers = d.h.json(&["container", "ls", "--format", "json"]);
    let eph_ports: Vec<(u64, u64)> = containers
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["attachments"][0]["ip"] == "10.80.0.3")
        .flat_map(|c| c["ports"].as_array().unwrap().clone())
        .map(|p| {
            (
                p["container_port"].as_u64().unwrap(),
                p["host_port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(eph_ports.len(), 2, "{containers}");
    for (container_port, host_port) in eph_ports {
        assert!((49153..=60999).contains(&host_port), "{host_port}");
        let reply = probe::tcp_request(&d.h.outside, addr(&format!("{HOST_IP}:{host_port}")), b"x")
            .unwrap();
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            format!("eph{container_port}:x")
        );
    }
    d.docker_ok(&["rm", "-f", &d.h.name("eph")]);

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

    // `--ip-range`: Docker's IPAM hands out the addresses (the gateway
    // first, from the range), netd wires them.
    d.network(
        "ranged",
        &["--subnet", "10.84.0.0/24", "--ip-range", "10.84.0.128/25"],
    );
    let ranged = d.run("ranged", &["--network", "ranged", "-p", "8081:80"]);
    let _ranged = EchoServer::tcp(&ranged, addr("10.84.0.129:80"), "ranged:").unwrap();
    let reply = probe::tcp_request(&d.h.outside, addr(&format!("{HOST_IP}:8081")), b"x").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "ranged:x");
    let networks = d.h.json(&["network", "ls", "--format", "json"]).to_string();
    assert!(
        networks.contains("\"gateway\":\"10.84.0.128\""),
        "{networks}"
    );
    d.docker_ok(&["rm", "-f", &d.h.name("ranged")]);
    d.docker_ok(&["network", "rm", "ranged"]);

    // `--ipv6`: Docker's IPAM hands out both families, netd wires and
    // polices them; the containers talk over IPv6.
    d.network(
        "dual",
        &[
            "--ipv6",
            "--subnet",
            "10.86.0.0/24",
            "--subnet",
            "fd00:86::/64",
        ],
    );
    let server = d.run("six1", &["--network", "dual", "-p", "8090:80"]);
    let client = d.run("six2", &["--network", "dual"]);
    let _six = EchoServer::tcp(&server, addr("[fd00:86::2]:80"), "six1 saw {peer}:").unwrap();
    let reply = probe::tcp_request(&client, addr("[fd00:86::2]:80"), b"x").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "six1 saw fd00:86::3:x");
    // With IPv6 on the uplink: Docker's `-p` answers on the host's IPv6
    // address too, and the containers reach the outside through NAT66.
    let (host, outside) = (&d.h.host, &d.h.outside);
    host.ip(&[
        "-6",
        "addr",
        "add",
        "fd99::1/64",
        "dev",
        &d.h.uplink,
        "nodad",
    ])
    .unwrap();
    outside
        .ip(&["-6", "addr", "add", "fd99::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    probe::eventually("Docker's -p answers over IPv6", || {
        probe::tcp_request(outside, addr("[fd99::1]:8090"), b"v6")
            .is_ok_and(|r| r == b"six1 saw fd99::2:v6")
    });
    let _outside = EchoServer::tcp(outside, addr("[fd99::2]:80"), "outside saw {peer}:").unwrap();
    let reply = probe::tcp_request(&client, addr("[fd99::2]:80"), b"out").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "outside saw fd99::1:out");
    let dual = d.h.json(&["network", "ls", "--format", "json"]).to_string();
    assert!(dual.contains("\"subnet\":\"fd00:86::/64\""), "{dual}");
    let containers =
        d.h.json(&["container", "ls", "--format", "json"])
            .to_string();
    assert!(
        containers.contains("\"ip6\":\"fd00:86::3\""),
        "{containers}"
    );
    let routes = client
        .run("ip", &["-6", "route", "show", "default"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("via fd00:86::1"),
        "Docker sets the IPv6 default route netd gave"
    );
    for name in ["six1", "six2"] {
        d.docker_ok(&["rm", "-f", &d.h.name(name)]);
    }
    d.docker_ok(&["network", "rm", "dual"]);
}

/// Bad input through Docker: Docker shows netd's reason, and netd's state
/// does not change.
#[test]
fn docker_shows_netds_refusals_and_nothing_changes() {
    let d = DockerHost::start(netd(), &[]);
    d.network("one", &["--subnet", "10.81.0.0/24"]);
    d.run("web", &["--network", "one", "-p", "8080:80"]);
    let state = || {
        (
            d.h.ok(&["network", "ls", "--format", "json"]),
            d.h.ok(&["container", "ls", "--format", "json"]),
        )
    };
    let before = state();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "network",
                "create",
                "-d",
                &d.driver,
                "--subnet",
                // netd's own default network, which Docker's IPAM does not know.
                "172.17.5.0/24",
                "two",
            ],
            "subnet 172.17.5.0/24 overlaps network \"bridge\" (172.17.0.0/16)",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                &d.driver,
                "-o",
                "com.example.color=blue",
                "three",
            ],
            "unknown option -o com.example.color",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                &d.driver,
                "-o",
                "com.docker.network.driver.mtu=12",
                "four",
            ],
            "--mtu 12 is outside 576..65535",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                &d.driver,
                "--ipv6",
                "--subnet",
                "fd00::/64",
                "-o",
                "com.docker.network.bridge.gateway_mode_ipv4=routed",
                "five",
            ],
            "an IPv6 network in gateway mode routed is not supported yet",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                &d.driver,
                "--ipv6",
                "--subnet",
                "fd00:5::/64",
                "-o",
                "com.docker.network.bridge.gateway_mode_ipv6=routed",
                "six",
            ],
            "gateway_mode_ipv6=routed: netd carries IPv6 in nat mode only so far",
        ),
    ];
    for (args, message) in cases {
        let stderr = d.docker_refused(args);
        assert!(stderr.contains(message), "docker {args:?}: {stderr}");
        assert_eq!(state(), before, "docker {args:?} changed netd's state");
    }
    // A host port netd has published already: the container does not start.
    let taken = d.h.name("taken");
    let stderr = d.docker_refused(&[
        "run",
        "-d",
        "--name",
        &taken,
        "--network",
        "one",
        "-p",
        "8080:80",
        netd_testbed::docker::IMAGE,
        "sleep",
        "60",
    ]);
    assert!(
        stderr.contains("host port 0.0.0.0:8080/tcp is already published"),
        "{stderr}"
    );
    let _ = d.docker(&["rm", "-f", &taken]);
    assert_eq!(state(), before, "the refused run changed netd's state");
}

/// How many Docker endpoints netd has.
fn endpoints(d: &DockerHost) -> usize {
    d.h.json(&["container", "ls", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sandbox"]["kind"] == "docker")
        .count()
}

/// The whole lifecycle with connections kept where they can be: stop and
/// start, several networks, a netd kill -9 with a connection open through
/// a published port, a dockerd restart, and Docker's embedded DNS.
#[test]
fn docker_lifecycle_with_restarts_of_both_daemons() {
    let mut d = DockerHost::start(netd(), &[]);
    d.network("front", &["--subnet", "10.82.0.0/24"]);
    d.network("back", &["--subnet", "10.83.0.0/24"]);
    let web = d.run("web", &["--network", "front", "-p", "8080:80"]);
    let _server = EchoServer::tcp_stream_echo(&web, addr("10.82.0.2:80")).unwrap();
    let published = addr(&format!("{HOST_IP}:8080"));
    let mut conn = probe::tcp_connect(&d.h.outside, published).unwrap();
    probe::echo_roundtrip(&mut conn, b"before").unwrap();

    // netd dies mid-flight and comes back: the connection carries on.
    d.h.kill_daemon(libc::SIGKILL);
    probe::echo_roundtrip(&mut conn, b"netd is down").unwrap();
    d.h.spawn_daemon();
    probe::echo_roundtrip(&mut conn, b"netd is back").unwrap();
    drop(conn);

    // A second network, and Docker's DNS between the containers on it.
    let web_name = d.h.name("web");
    d.docker_ok(&["network", "connect", "back", &web_name]);
    let db = d.run("db", &["--network", "back"]);
    let resolved = d.docker_ok(&["exec", &d.h.name("db"), "nslookup", &web_name]);
    assert!(resolved.contains("10.83.0.2"), "{resolved}");
    let _db_server = EchoServer::tcp(&db, addr("10.83.0.3:5432"), "db saw {peer}:").unwrap();
    let reply = probe::tcp_request(&web, addr("10.83.0.3:5432"), b"q").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "db saw 10.83.0.2:q");
    d.docker_ok(&["network", "disconnect", "back", &web_name]);
    assert!(probe::tcp_request(&web, addr("10.83.0.3:5432"), b"q").is_err());

    // Stop and start: the endpoint goes with the stop, comes back with the
    // start (a new namespace), and the port answers again.
    d.docker_ok(&["stop", "-t", "1", &web_name]);
    assert!(probe::tcp_request(&d.h.outside, published, b"x").is_err());
    assert_eq!(endpoints(&d), 1, "only db's endpoint while web is stopped");
    d.docker_ok(&["start", &web_name]);
    let web = d.attach_netns("web");
    let _server = EchoServer::tcp(&web, addr("10.82.0.2:80"), "web saw {peer}:").unwrap();
    let reply = probe::tcp_request(&d.h.outside, published, b"again").unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("web saw {OUTSIDE_IP}:again")
    );

    // dockerd restarts: Docker stops the containers, deletes their stale
    // endpoints when it comes back, its networks stay, and a started
    // container gets its address and port again.
    d.stop_dockerd();
    d.start_dockerd();
    d.docker_ok(&["start", &web_name]);
    assert_eq!(endpoints(&d), 1, "only web's new endpoint");
    let web = d.attach_netns("web");
    let _server = EchoServer::tcp(&web, addr("10.82.0.2:80"), "web saw {peer}:").unwrap();
    let reply = probe::tcp_request(&d.h.outside, published, b"third").unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("web saw {OUTSIDE_IP}:third")
    );
}

/// dockerd up first, netd after: Docker's plugin lookup retries until
/// netd's socket answers, and the network is made then.
#[test]
fn docker_waits_for_a_netd_that_starts_after_it() {
    let mut d = DockerHost::start(netd(), &[]);
    d.h.kill_daemon(libc::SIGTERM);
    let create = {
        let docker = d.docker_command(&[
            "network",
            "create",
            "-d",
            &d.driver,
            "--subnet",
            "10.84.0.0/24",
            "late",
        ]);
        std::thread::spawn(move || {
            let mut docker = docker;
            docker.output().unwrap()
        })
    };
    // dockerd says it is retrying the plugin: only then does netd start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.dockerd_log().contains("retrying in") {
        assert!(
            std::time::Instant::now() < deadline,
            "dockerd never looked for the plugin: {}",
            d.dockerd_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.h.spawn_daemon();
    let out = create.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nets = d.h.json(&["network", "ls", "--format", "json"]).to_string();
    assert!(nets.contains("10.84.0.0/24"), "{nets}");
}
