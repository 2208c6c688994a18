//! Many containers on one host (issue #30), eBPF datapath: 1,000 on the
//! default network and 1,000 on a second one, each with a published port;
//! the first, middle and last of each network answer from outside, a
//! bridge's 1,023-port limit is a clear refusal that changes nothing,
//! `netd status` warns at it, and a kill -9 restart keeps an open
//! connection and every port. (Latencies and memory: `cargo xtask bench
//! --scale`, docs/benchmarks.md.)

use std::{net::SocketAddr, time::Duration};

use netd::{api::ContainerSpec, client::Client, error::ErrorKind, portspec::PortSpec};
use netd_testbed::{
    bin_under_test::netd,
    daemon_host::{DaemonHost, HOST_IP},
    probe::{self, EchoServer},
};

const PER_NETWORK: usize = 1000;
const FIRST_PORT: u16 = 20000;

fn create(client: &Client, name: String, network: &str, port: Option<u16>) {
    let publish = port
        .map(|p| vec![PortSpec::parse(&format!("{p}:80")).unwrap()])
        .unwrap_or_default();
    client
        .container_create(ContainerSpec {
            name: name.clone(),
            network: network.to_owned(),
            ip: None,
            ip6: None,
            publish,
            aliases: Vec::new(),
            gw_priority: 0,
        })
        .unwrap_or_else(|err| panic!("creating {name}: {err:#}"));
}

#[test]
fn two_thousand_containers_answer_on_their_published_ports() {
    let mut h = DaemonHost::start(netd(), &["--datapath", "ebpf"]);
    let client = Client::new(h.socket()).with_timeout(Duration::from_secs(120));
    h.ok(&["network", "create", "more", "--subnet", "10.60.0.0/21"]);
    let probed = [0, PER_NETWORK / 2, PER_NETWORK - 1];
    let mut servers = Vec::new();
    for k in 0..2 * PER_NETWORK {
        let network = if k < PER_NETWORK { "bridge" } else { "more" };
        let short = format!("c{k}");
        create(
            &client,
            h.name(&short),
            network,
            Some(FIRST_PORT + k as u16),
        );
        if probed.contains(&(k % PER_NETWORK)) {
            let ip = client
                .container_inspect(&h.name(&short))
                .unwrap()
                .attachments[0]
                .ip;
            let addr = SocketAddr::new(ip.into(), 80);
            servers.push((
                k,
                EchoServer::tcp_stream_echo(&h.ctr(&short), addr).unwrap(),
            ));
        }
    }
    let published = |k: usize| SocketAddr::new(HOST_IP.parse().unwrap(), FIRST_PORT + k as u16);
    let answers = |h: &DaemonHost, k: usize| {
        let mut conn = probe::tcp_connect(&h.outside, published(k))
            .unwrap_or_else(|err| panic!("container {k}'s port: {err:#}"));
        probe::echo_roundtrip(&mut conn, b"hello").unwrap();
    };
    for &(k, _) in &servers {
        answers(&h, k);
    }

    // The default network's bridge up to its limit, then one more.
    for i in PER_NETWORK..netd::netlink::BRIDGE_MAX_PORTS {
        create(&client, h.name(&format!("fill{i}")), "bridge", None);
    }
    let status = h.json(&["status", "--format", "json"]);
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("network bridge: 1023 of the 1023 ports"),
        "{warnings}"
    );
    h.refused(
        &["container", "create", &h.name("one-more")],
        ErrorKind::Conflict,
        "a Linux bridge takes at most 1023 ports",
    );
    // The other network still takes containers.
    create(&client, h.name("on-more"), "more", None);

    let mut kept = probe::tcp_connect(&h.outside, published(0)).unwrap();
    probe::echo_roundtrip(&mut kept, b"before").unwrap();
    h.kill_daemon(libc::SIGKILL);
    h.spawn_daemon();
    probe::echo_roundtrip(&mut kept, b"after a kill -9 restart").unwrap();
    for &(k, _) in &servers {
        answers(&h, k);
    }
    drop((kept, servers));
    h.ok(&["down"]);
}
