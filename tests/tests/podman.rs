//! A real Podman 4.3 (CNI backend) on netd networks through netd's CNI
//! plugin: ports, stop/start, netd restarts, `podman rm -f`, and netd's
//! refusals shown by Podman. The scenario suite through Podman is in
//! `scenarios.rs`.

use std::net::SocketAddr;

use hickory_proto::rr::RecordType;
use netd_testbed::bin_under_test::{netd, netd_cni as plugin};
use netd_testbed::{
    daemon_host::{HOST_IP, OUTSIDE_IP},
    dns::{StubResolver, addresses, ask},
    podman::PodmanHost,
    probe::{self, EchoServer},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn records(p: &PodmanHost) -> Vec<serde_json::Value> {
    p.h.json(&["container", "ls", "--format", "json"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn podman_containers_live_and_go_on_netd_networks() {
    let p = PodmanHost::start(netd(), plugin(), &[]);
    p.network("web", &["--subnet", "10.70.0.0/24"]);
    let published = addr(&format!("{HOST_IP}:8080"));

    let ns = p.run("a", &["--network", "web", "-p", "8080:80"]);
    let server = EchoServer::tcp(&ns, addr("0.0.0.0:80"), "a:").unwrap();
    assert_eq!(
        probe::tcp_request(&p.h.outside, published, b"x").unwrap(),
        b"a:x"
    );
    // Podman reports the address netd gave.
    let name = p.h.name("a");
    let podman_ip = p.podman_ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"web\").IPAddress}}",
        &name,
    ]);
    let recs = records(&p);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["attachments"][0]["ip"], podman_ip.as_str());
    assert_eq!(recs[0]["sandbox"]["kind"], "cni");

    // A connection open across a netd kill -9 and restart keeps working.
    drop(server);
    let server = EchoServer::tcp_stream_echo(&ns, addr("0.0.0.0:80")).unwrap();
    let mut conn = probe::tcp_connect(&p.h.outside, published).unwrap();
    probe::echo_roundtrip(&mut conn, b"before").unwrap();
    let mut p = p;
    p.h.kill_daemon(libc::SIGKILL);
    p.h.spawn_daemon();
    probe::echo_roundtrip(&mut conn, b"after").unwrap();
    drop((conn, server));

    // stop: DEL frees the address and the port; start: ADD again.
    p.podman_ok(&["stop", "-t", "0", &name]);
    assert!(records(&p).is_empty(), "stop left {:?}", records(&p));
    let err = probe::tcp_request(&p.h.outside, published, b"x").unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    p.podman_ok(&["start", &name]);
    let ns = p.attach_netns("a");
    let _server = EchoServer::tcp(&ns, addr("0.0.0.0:80"), "again:").unwrap();
    assert_eq!(
        probe::tcp_request(&p.h.outside, published, b"x").unwrap(),
        b"again:x"
    );

    // A second container cannot take the port: Podman shows netd's refusal.
    let err = p.podman_refused(&[
        "run",
        "-d",
        "--name",
        &p.h.name("b"),
        "--network",
        "web",
        "-p",
        "8080:80",
        netd_testbed::docker::IMAGE,
        "sleep",
        "3600",
    ]);
    assert!(
        err.contains("host port 0.0.0.0:8080/tcp is already published"),
        "{err}"
    );
    let _ = p.podman(&["rm", "-f", "-t", "0", &p.h.name("b")]);
    assert_eq!(records(&p).len(), 1, "the refused container left a record");

    // rm -f frees everything: the record, the veth, the port.
    let veth = records(&p)[0]["attachments"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    p.rm("a");
    assert!(records(&p).is_empty());
    assert!(
        p.h.host.ip(&["link", "show", &veth]).is_err(),
        "{veth} left after podman rm -f"
    );
    p.run("b", &["--network", "web", "-p", "8080:80"]);
    p.rm("b");

    // A conflist whose netd network is gone: Podman shows why.
    p.h.ok(&["network", "rm", "web"]);
    let err = p.podman_refused(&[
        "run",
        "--rm",
        "--network",
        "web",
        netd_testbed::docker::IMAGE,
        "true",
    ]);
    assert!(err.contains("no network named \"web\""), "{err}");
    assert!(records(&p).is_empty());
}

/// Through CNI the result names netd's resolver, which Podman writes first
/// in the container's resolv.conf; the names Podman gives (the container's
/// name, its short ID, `--network-alias`) resolve on the network they share
/// and on no other.
#[test]
fn podman_containers_resolve_each_other_by_name() {
    // Forwarded names go to a stub upstream in the test's outside.
    let upstream = format!("{OUTSIDE_IP}:53");
    let p = PodmanHost::start(netd(), plugin(), &["--dns-upstream", &upstream]);
    let stub = StubResolver::start(&p.h.outside, addr(&upstream), &[]).unwrap();
    p.network("names", &["--subnet", "10.71.0.0/24"]);
    p.network("other", &["--subnet", "10.72.0.0/24"]);
    let web = p.run(
        "web",
        &["--network", "names", "--network-alias", "frontend"],
    );
    p.run("db", &["--network", "names"]);
    let far = p.run("far", &["--network", "other"]);
    let resolv_conf = p.podman_ok(&["inspect", "-f", "{{.ResolvConfPath}}", &p.h.name("web")]);
    let text = std::fs::read_to_string(resolv_conf.trim()).unwrap();
    let first = text.lines().find(|l| l.starts_with("nameserver"));
    assert_eq!(first, Some("nameserver 127.0.0.11"), "{text}");
    let ip_of = |short: &str, net: &str| -> std::net::Ipv4Addr {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        p.podman_ok(&["inspect", "-f", &format, &p.h.name(short)])
            .trim()
            .parse()
            .unwrap()
    };
    let resolver = addr("127.0.0.11:53");
    let lookup = |from: &netd_testbed::Netns, name: &str| {
        addresses(&ask(from, resolver, name, RecordType::A, false).unwrap())
    };
    let db_id = p.podman_ok(&["inspect", "-f", "{{.Id}}", &p.h.name("db")]);
    for name in [p.h.name("db"), db_id.trim()[..12].to_owned()] {
        assert_eq!(lookup(&web, &name), [ip_of("db", "names")], "{name}");
    }
    assert_eq!(lookup(&web, "frontend"), [ip_of("web", "names")]);
    // From another network: not netd's to answer; upstream knows nothing.
    let answer = ask(&far, resolver, "frontend", RecordType::A, false).unwrap();
    assert!(addresses(&answer).is_empty(), "{answer:?}");
    assert_eq!(stub.asked("frontend"), 1, "forwarded once, from far");
    // Gone with the container.
    p.rm("db");
    let answer = ask(&web, resolver, &p.h.name("db"), RecordType::A, false).unwrap();
    assert!(addresses(&answer).is_empty(), "{answer:?}");
}
