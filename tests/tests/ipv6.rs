//! IPv6 through the daemon and its CLI, with real traffic between
//! namespaces: dual-stack networks and containers, what reaches what over
//! IPv6 on the eBPF datapath (each refusal seen as its drop reason), and
//! bad input refused with nothing changed.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use hickory_proto::rr::RecordType;
use netd::error::ErrorKind;
use netd_testbed::bin_under_test::netd;
use netd_testbed::{
    daemon_host::DaemonHost,
    packet::{ICMPV6_NEIGHBOUR_ADVERT, Ipv6Frame},
    probe::{self, EchoServer},
};
use serde_json::Value;

fn drops(h: &DaemonHost, reason: &str) -> u64 {
    let status: Value = serde_json::from_str(&h.ok(&["status", "--format", "json"])).unwrap();
    status["drops"][reason].as_u64().unwrap_or(0)
}

/// Runs `probe` (which must fail) and expects `reason`'s count to grow.
fn expect_dropped(h: &DaemonHost, reason: &str, what: &str, probe: impl FnOnce() -> bool) {
    let before = drops(h, reason);
    assert!(!probe(), "{what}: got through");
    let after = drops(h, reason);
    assert!(
        after > before,
        "{what}: no {reason} drop counted ({before} -> {after})"
    );
}

/// What `ip ARGS` prints inside `ns`.
fn ip_output(ns: &netd_testbed::Netns, args: &[&str]) -> String {
    String::from_utf8(ns.run("ip", args).unwrap().stdout).unwrap()
}

/// A request from a host socket to `to`: the reply, and the peer address
/// the socket shows (taken while connected).
fn host_request(h: &DaemonHost, to: &str, payload: &str) -> (String, SocketAddr) {
    h.host
        .enter(|| {
            let mut conn = std::net::TcpStream::connect(to)?;
            let peer = conn.peer_addr()?;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            conn.write_all(payload.as_bytes())?;
            conn.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            std::io::Result::Ok((reply, peer))
        })
        .unwrap()
        .unwrap()
}

fn ping6(ns: &netd_testbed::Netns, dst: &str) -> bool {
    probe::ping(ns, dst, 1).unwrap()
}

#[test]
fn dual_stack_networks_carry_ipv6_within_a_network_and_keep_the_rest_out() {
    let mut h = DaemonHost::start(netd(), &[]);
    let create = |args: &[&str]| {
        let mut all = vec!["network", "create"];
        all.extend_from_slice(args);
        h.ok(&all);
    };
    create(&[
        "v6a",
        "--subnet",
        "172.30.0.0/24",
        "--subnet",
        "fd00:a::/64",
    ]);
    create(&["v6b", "--ipv6"]);
    create(&[
        "quiet",
        "--ipv6",
        "--icc",
        "false",
        "--subnet",
        "fd00:c::/64",
    ]);
    create(&["inner", "--ipv6", "--internal", "--subnet", "fd00:d::/64"]);

    let a = h.json(&["network", "inspect", "v6a"]);
    assert_eq!(a["subnet"], "172.30.0.0/24");
    assert_eq!(
        a["ipv6"]["subnet"], "fd00:a::/64",
        "an IPv6 --subnet turns IPv6 on"
    );
    assert_eq!(a["ipv6"]["gateway"], "fd00:a::1");
    let b = h.json(&["network", "inspect", "v6b"]);
    let pool = b["ipv6"]["subnet"].as_str().unwrap();
    assert!(
        pool.starts_with("fd") && pool.ends_with("::/64"),
        "{pool}: a /64 of the host's ULA prefix"
    );
    let listed = h.ok(&["network", "ls"]);
    assert!(listed.contains("172.30.0.0/24,fd00:a::/64"), "{listed}");
    assert!(
        h.json(&["network", "inspect", "bridge"])["ipv6"].is_null(),
        "bridge stays IPv4-only"
    );

    for (name, net, extra) in [
        ("a1", "v6a", None),
        ("a2", "v6a", Some("fd00:a::20")),
        ("b1", "v6b", None),
        ("q1", "quiet", None),
        ("q2", "quiet", None),
        ("i1", "inner", None),
        ("plain", "bridge", None),
    ] {
        let name = h.name(name);
        let mut args = vec!["container", "create", &name, "--network", net];
        if let Some(ip6) = extra {
            args.extend(["--ip6", ip6]);
        }
        h.ok(&args);
    }
    let a1 = h.json(&["container", "inspect", &h.name("a1")]);
    assert_eq!(
        a1["attachments"][0]["ip6"], "fd00:a::2",
        "the first free address"
    );
    assert!(
        h.ok(&["container", "ls"])
            .contains("v6a=172.30.0.3,fd00:a::20")
    );

    // Ready means usable: the address is not tentative, both default routes are there.
    let a1_ns = h.ctr("a1");
    let addrs = ip_output(&a1_ns, &["-6", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("fd00:a::2/64") && !addrs.contains("tentative"),
        "{addrs}"
    );
    let routes = ip_output(&a1_ns, &["-6", "route", "show", "default"]);
    assert!(routes.contains("via fd00:a::1"), "{routes}");
    // IPv6 only where a network has it, as Docker.
    let off = h
        .ctr("plain")
        .run("sysctl", &["-n", "net.ipv6.conf.eth0.disable_ipv6"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&off.stdout).trim(), "1");

    // A container on an IPv4-only network joins a dual-stack one: IPv6 on
    // that interface, and the IPv6 default route from the only network with
    // IPv6 (each family's gateway chosen apart, as Docker).
    let plain_ns = h.ctr("plain");
    let joined = h.ok(&[
        "network",
        "connect",
        "v6a",
        &h.name("plain"),
        "--ip6",
        "fd00:a::30",
    ]);
    assert_eq!(joined.trim(), "172.30.0.4 fd00:a::30");
    let routes = ip_output(&plain_ns, &["-6", "route", "show", "default"]);
    assert!(routes.contains("via fd00:a::1 dev eth1"), "{routes}");
    let routes4 = ip_output(&plain_ns, &["-4", "route", "show", "default"]);
    assert!(
        routes4.contains("dev eth0"),
        "the IPv4 route stays with bridge: {routes4}"
    );
    assert!(ping6(&plain_ns, "fd00:a::1"));
    h.ok(&["network", "disconnect", "v6a", &h.name("plain")]);

    // Within a network, and to its gateway (the host).
    let _server = EchoServer::tcp(
        &h.ctr("a2"),
        "[fd00:a::20]:80".parse().unwrap(),
        "a2 saw {peer}:",
    )
    .unwrap();
    let reply = probe::tcp_request(
        &a1_ns,
        "[fd00:a::20]:80".parse::<SocketAddr>().unwrap(),
        b"hi",
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        "a2 saw fd00:a::2:hi",
        "the sender's own address"
    );
    assert!(ping6(&a1_ns, "fd00:a::1"), "the gateway answers");
    // The resolver gives both families of a dual-stack container.
    let resolver: SocketAddr = "127.0.0.11:53".parse().unwrap();
    let aaaa =
        netd_testbed::dns::ask(&a1_ns, resolver, &h.name("a2"), RecordType::AAAA, false).unwrap();
    let found: Vec<String> = aaaa
        .answers()
        .iter()
        .map(|r| r.data().to_string())
        .collect();
    assert_eq!(found, ["fd00:a::20"]);
    let a_records =
        netd_testbed::dns::ask(&a1_ns, resolver, &h.name("a2"), RecordType::A, false).unwrap();
    assert_eq!(
        netd_testbed::dns::addresses(&a_records),
        ["172.30.0.3".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(
        ping6(&h.ctr("i1"), "fd00:d::1"),
        "an internal network's gateway answers"
    );

    // Everything else, each refusal by its reason.
    let b1 = h.json(&["container", "inspect", &h.name("b1")])["attachments"][0]["ip6"]
        .as_str()
        .unwrap()
        .to_owned();
    expect_dropped(&h, "network-isolation", "a1 to b1", || ping6(&a1_ns, &b1));
    expect_dropped(&h, "icc-disabled", "q1 to q2", || {
        ping6(&h.ctr("q1"), "fd00:c::3")
    });

    // The outside: an IPv6 uplink.
    h.host
        .ip(&["-6", "addr", "add", "fd99::1/64", "dev", &h.uplink, "nodad"])
        .unwrap();
    h.outside
        .ip(&["-6", "addr", "add", "fd99::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    h.outside
        .ip(&["-6", "route", "add", "fd00::/8", "via", "fd99::1"])
        .unwrap();
    // netd turned IPv6 forwarding on with its first IPv6 network.
    let forwarding = h
        .host
        .run("sysctl", &["-n", "net.ipv6.conf.all.forwarding"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");
    assert!(
        ping6(&h.outside, "fd99::1"),
        "the host answers on its uplink"
    );
    // A network cannot take the host's own prefix.
    h.refused(
        &["network", "create", "clash", "--subnet", "fd99::/64"],
        ErrorKind::Conflict,
        "holds this host's address fd99::1",
    );
    // The host's own addresses are open to containers (as Docker leaves
    // INPUT alone): the daemon follows the new address from its events.
    probe::eventually("a container reaches the host's uplink address", || {
        ping6(&a1_ns, "fd99::1")
    });
    // NAT66: a1 reaches the outside behind the uplink's address, TCP and
    // ICMPv6 echo alike, tracked in conntrack.
    let _outside = EchoServer::tcp(
        &h.outside,
        "[fd99::2]:80".parse().unwrap(),
        "outside saw {peer}:",
    )
    .unwrap();
    let reply = probe::tcp_request(&a1_ns, "[fd99::2]:80".parse().unwrap(), b"out").unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        "outside saw fd99::1:out",
        "masqueraded behind the uplink's address"
    );
    assert!(ping6(&a1_ns, "fd99::2"), "ICMPv6 echo through NAT66");
    let conntrack = h.json(&["conntrack", "ls", "--format", "json"]);
    assert!(
        conntrack.as_array().unwrap().iter().any(|row| {
            let starts = |field: &str, with: &str| row[field].as_str().unwrap().starts_with(with);
            starts("src", "[fd00:a::2]:") && starts("translated_src", "[fd99::1]:")
        }),
        "a1's connection tracked as masqueraded: {conntrack}"
    );

    // A port published without a host address: on both families, one host
    // port (Docker 27), the client's address kept on each.
    let web = h.name("web");
    h.ok(&[
        "container",
        "create",
        &web,
        "--network",
        "v6a",
        "-p",
        "8080:80",
    ]);
    let _web =
        EchoServer::tcp(&h.ctr("web"), "[::]:80".parse().unwrap(), "web saw {peer}:").unwrap();
    let reply = probe::tcp_request(&h.outside, "[fd99::1]:8080".parse().unwrap(), b"six").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "web saw fd99::2:six");
    let v4 = format!("{}:8080", netd_testbed::daemon_host::HOST_IP);
    let reply = probe::tcp_request(&h.outside, v4.parse().unwrap(), b"four").unwrap();
    let expected = format!(
        "web saw ::ffff:{}:four",
        netd_testbed::daemon_host::OUTSIDE_IP
    );
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
    let listing = h.ok(&["container", "ls"]);
    assert!(listing.contains("[::]:8080->80/tcp"), "{listing}");
    // The host's own connection to [::1]:8080 reaches the port (the
    // connect6 hook, where Docker has its userland proxy): the backend
    // sees its gateway, the socket its peer as [::1]:8080.
    let (reply, peer) = host_request(&h, "[::1]:8080", "lo");
    assert_eq!(reply, "web saw fd00:a::1:lo");
    assert_eq!(peer.to_string(), "[::1]:8080");
    // A dual-stack socket's IPv4-mapped address of the port (the connect4
    // hook does not see it): to the container's IPv4 address, mapped.
    let mapped = format!("[::ffff:{}]:8080", netd_testbed::daemon_host::HOST_IP);
    let (reply, peer) = host_request(&h, &mapped, "v4");
    assert_eq!(reply, "web saw ::ffff:172.30.0.1:v4");
    assert_eq!(peer.to_string(), mapped);
    expect_dropped(&h, "unsolicited-inbound", "the outside to a1", || {
        ping6(&h.outside, "fd00:a::2")
    });
    assert!(
        !ping6(&h.ctr("i1"), "fd99::2"),
        "an internal network has no route out"
    );

    // A forged neighbour advertisement: a1 claiming a2's address.
    let a1_mac: Vec<u8> = a1["attachments"][0]["mac"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mut forged =
        Ipv6Frame::neighbour(ICMPV6_NEIGHBOUR_ADVERT, "fe80::1", "ff02::1", "fd00:a::20");
    forged.src_mac = a1_mac.try_into().unwrap();
    forged.dst_mac = [0x33, 0x33, 0, 0, 0, 1];
    let before = drops(&h, "spoofed-source");
    probe::send_raw_frame(&a1_ns, "eth0", &forged.build()).unwrap();
    probe::eventually("the forged advertisement counted", || {
        drops(&h, "spoofed-source") > before
    });

    // A kill -9 restart and a gateway address removed behind netd's back.
    h.kill_daemon(libc::SIGKILL);
    h.spawn_daemon();
    let reply = probe::tcp_request(&a1_ns, "[fd00:a::20]:80".parse().unwrap(), b"again").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "a2 saw fd00:a::2:again");
    // The IPv6 half of the published port survived the restart.
    let reply = probe::tcp_request(&h.outside, "[fd99::1]:8080".parse().unwrap(), b"six").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "web saw fd99::2:six");
    let published6 =
        || h.json(&["status", "--format", "json"])["maps"]["PUBLISHED_PORTS6"]["entries"].clone();
    assert_eq!(published6(), 1);
    h.ok(&["container", "rm", &web]);
    assert_eq!(published6(), 0, "the IPv6 port went with its container");
    let bridge = a["bridge"].as_str().unwrap().to_owned();
    h.host
        .ip(&["-6", "addr", "del", "fd00:a::1/64", "dev", &bridge])
        .unwrap();
    assert!(!ping6(&a1_ns, "fd00:a::1"), "the gateway address is gone");
    h.ok(&["repair"]);
    assert!(
        ping6(&a1_ns, "fd00:a::1"),
        "repair puts the IPv6 gateway back"
    );

    // A removed container's IPv6 address leaves the datapath and is free again.
    let endpoints6 = |h: &DaemonHost| {
        let status: Value = serde_json::from_str(&h.ok(&["status", "--format", "json"])).unwrap();
        status["maps"]["ENDPOINTS6"]["entries"].as_u64().unwrap()
    };
    let before = endpoints6(&h);
    h.ok(&["container", "rm", &h.name("a2")]);
    assert_eq!(endpoints6(&h), before - 1);
    let again = h.name("a3");
    h.ok(&[
        "container",
        "create",
        &again,
        "--network",
        "v6a",
        "--ip6",
        "fd00:a::20",
    ]);
}

#[test]
fn bad_ipv6_input_is_refused_and_changes_nothing() {
    let h = DaemonHost::start(netd(), &[]);
    h.ok(&["network", "create", "v6", "--subnet", "fd00:1::/64"]);
    let name = h.name("c");
    for (args, kind, message) in [
        (
            vec!["network", "create", "x", "--subnet", "fd00::/16"],
            ErrorKind::Conflict,
            "overlaps network \"v6\"",
        ),
        (
            vec!["network", "create", "x", "--subnet", "fd00:2::/126"],
            ErrorKind::Invalid,
            "too small",
        ),
        (
            vec![
                "network",
                "create",
                "x",
                "--subnet",
                "fd00:2::/64",
                "--subnet",
                "fd00:3::/64",
            ],
            ErrorKind::Invalid,
            "at most once per address family",
        ),
        (
            vec![
                "network",
                "create",
                "x",
                "--subnet",
                "fd00:2::/64",
                "--gateway",
                "fd00:4::1",
            ],
            ErrorKind::Invalid,
            "gateway fd00:4::1 is not a usable address of subnet fd00:2::/64",
        ),
        (
            vec![
                "network",
                "create",
                "x",
                "--ipv4",
                "false",
                "--subnet",
                "fd00:2::/64",
            ],
            ErrorKind::Invalid,
            "IPv6-only networks are not supported yet",
        ),
        (
            vec![
                "container",
                "create",
                &name,
                "--network",
                "v6",
                "-p",
                "[::1]:8080:80",
            ],
            ErrorKind::Invalid,
            "cannot name an IPv6 host address such as [::1] yet",
        ),
        (
            vec!["network", "create", "x", "--subnet", "fe80::/64"],
            ErrorKind::Invalid,
            "is link-local",
        ),
        (
            vec!["container", "create", &name, "--ip6", "fd00:1::5"],
            ErrorKind::Invalid,
            "network \"bridge\" has no IPv6",
        ),
        (
            vec![
                "container",
                "create",
                &name,
                "--network",
                "v6",
                "--ip6",
                "10.0.0.5",
            ],
            ErrorKind::Invalid,
            "IPv4 address where an IPv6 address is expected",
        ),
        (
            vec![
                "container",
                "create",
                &name,
                "--network",
                "v6",
                "--ip",
                "fd00:1::5",
            ],
            ErrorKind::Invalid,
            "IPv6 address where an IPv4 address is expected",
        ),
    ] {
        h.refused(&args, kind, message);
    }
}

/// On the iptables datapath netd's chains are in ip6tables only while a
/// network has IPv6 (a host without ip6tables, or with IPv6 off, is not
/// asked for it), with their jumps; `netd down` removes them.
#[test]
fn ip6tables_chains_exist_only_with_ipv6_networks() {
    let mut h = DaemonHost::start(netd(), &["--datapath", "iptables"]);
    let ip6tables = |h: &DaemonHost| {
        let out = h.host.run("ip6tables-save", &[]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    h.ok(&["network", "create", "four", "--subnet", "10.46.0.0/24"]);
    assert!(!ip6tables(&h).contains("NETD"), "{}", ip6tables(&h));
    h.ok(&[
        "network",
        "create",
        "six",
        "--subnet",
        "10.47.0.0/24",
        "--subnet",
        "fd00:47::/64",
    ]);
    let saved = ip6tables(&h);
    for rule in [
        "-A FORWARD -j NETD-FORWARD",
        "-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j NETD",
        "-A NETD-POSTROUTING -s fd00:47::/64",
    ] {
        assert!(saved.contains(rule), "{rule} missing:\n{saved}");
    }
    assert!(!saved.contains("10.46.0.0"), "IPv4 in ip6tables:\n{saved}");
    h.ok(&["network", "rm", "six"]);
    assert!(!ip6tables(&h).contains("NETD"), "{}", ip6tables(&h));
    h.ok(&[
        "network",
        "create",
        "six",
        "--subnet",
        "10.47.0.0/24",
        "--subnet",
        "fd00:47::/64",
    ]);
    h.ok(&["down"]);
    h.daemon.take().unwrap().wait();
    assert!(!ip6tables(&h).contains("NETD"), "{}", ip6tables(&h));
}
