//! Name resolution for netd's containers on user-defined networks (issue
//! #28), on both datapaths: names and aliases across a shared network,
//! nothing across networks or on the default bridge, forwarding to a stub
//! upstream in the test topology (and none for an internal-only
//! container), PTR, TCP, bad queries, and records that follow rm,
//! connect, disconnect and a kill -9 restart; on the eBPF datapath also
//! served through the socket hooks (`--dns-via cgroup-hooks`).

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::{op::ResponseCode, rr::RecordType};
use netd::error::ErrorKind;
use netd_testbed::{
    bin_under_test::netd,
    daemon_host::{DaemonHost, OUTSIDE_IP},
    dns::{StubResolver, addresses, ask, ask_raw, getent_hosts, udp_port_53_sockets},
};

const VARIANTS: [(&str, &[&str]); 3] = [
    ("ebpf", &["--datapath", "ebpf"]),
    ("iptables", &["--datapath", "iptables"]),
    // The other way to serve 127.0.0.11: the socket hooks steer each
    // container's queries to a socket on its network's gateway.
    (
        "ebpf, cgroup hooks",
        &["--datapath", "ebpf", "--dns-via", "cgroup-hooks"],
    ),
];

/// What the stub upstream knows: a name outside every container network.
const OUTSIDE_NAME: &str = "svc.outside.test";
const OUTSIDE_NAME_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

fn resolver() -> SocketAddr {
    "127.0.0.11:53".parse().unwrap()
}

#[test]
fn containers_resolve_each_other_on_shared_networks_only() {
    for (variant, flags) in VARIANTS {
        println!("== {variant}");
        let upstream = format!("{OUTSIDE_IP}:53");
        let mut args = flags.to_vec();
        args.extend(["--dns-upstream", &upstream]);
        let mut h = DaemonHost::start(netd(), &args);
        let stub = StubResolver::start(
            &h.outside,
            upstream.parse().unwrap(),
            &[(OUTSIDE_NAME, OUTSIDE_NAME_IP)],
        )
        .unwrap();
        let [web, db, worker, plain] = ["web", "db", "worker", "plain"].map(|n| h.name(n));
        h.ok(&["network", "create", "front", "--subnet", "10.91.0.0/24"]);
        h.ok(&[
            "network",
            "create",
            "back",
            "--subnet",
            "10.92.0.0/24",
            "--internal",
        ]);
        h.ok(&["container", "create", &web, "--network", "front"]);
        h.ok(&[
            "container",
            "create",
            &db,
            "--network",
            "front",
            "--alias",
            "database",
        ]);
        h.ok(&["network", "connect", "back", &db]);
        h.ok(&["container", "create", &worker, "--network", "back"]);
        h.ok(&["container", "create", &plain]);

        // Served the way asked: a socket in each container's namespace, or
        // one on each network's gateway and none in the containers.
        let ctx = |what: &str| format!("{variant}: {what}");
        let steered = args.contains(&"cgroup-hooks");
        let in_web = udp_port_53_sockets(&h.ctr("web")).unwrap();
        let on_gateways: Vec<String> = udp_port_53_sockets(&h.host)
            .unwrap()
            .into_iter()
            .filter(|addr| addr.starts_with("10.9"))
            .collect();
        if steered {
            assert_eq!(in_web, Vec::<String>::new(), "{}", ctx("in web"));
            assert_eq!(on_gateways, ["10.91.0.1:53", "10.92.0.1:53"]);
        } else {
            assert_eq!(in_web, ["127.0.0.11:53"], "{}", ctx("in web"));
            assert_eq!(on_gateways, Vec::<String>::new(), "{}", ctx("host"));
        }

        // The libc resolver through the resolv.conf `ip netns exec` mounts.
        assert_eq!(
            getent_hosts(&h.ctr("web"), &db).unwrap(),
            format!("10.91.0.3 {db}"),
            "{}",
            ctx("name")
        );
        assert_eq!(
            getent_hosts(&h.ctr("web"), "database").unwrap(),
            "10.91.0.3 database",
            "{}",
            ctx("alias")
        );
        assert_eq!(
            getent_hosts(&h.ctr("web"), "10.91.0.3").unwrap(),
            format!("10.91.0.3 {db}.front"),
            "{}",
            ctx("PTR")
        );
        // Another container publishing port 53 on every host address does
        // not take the resolver's place (with the hooks, the gateway's port
        // 53 is the resolver's).
        let dns_server = h.name("dns-server");
        h.ok(&[
            "container",
            "create",
            &dns_server,
            "-p",
            "53:53/udp",
            "-p",
            "53:53/tcp",
        ]);
        for tcp in [false, true] {
            let reply = ask(&h.ctr("web"), resolver(), &db, RecordType::A, tcp).unwrap();
            assert_eq!(
                addresses(&reply),
                [Ipv4Addr::new(10, 91, 0, 3)],
                "{}",
                ctx("with port 53 published")
            );
        }
        h.ok(&["container", "rm", &dns_server]);

        // The worker shares only `back` with db, and nothing with web.
        assert_eq!(
            getent_hosts(&h.ctr("worker"), &db).unwrap(),
            format!("10.92.0.2 {db}")
        );
        let web_from_worker =
            ask(&h.ctr("worker"), resolver(), &web, RecordType::A, false).unwrap();
        assert_eq!(
            web_from_worker.response_code(),
            ResponseCode::ServFail,
            "{}",
            ctx("an internal-only container gets no forwarding")
        );
        let worker_from_web =
            ask(&h.ctr("web"), resolver(), &worker, RecordType::A, false).unwrap();
        assert_eq!(
            worker_from_web.response_code(),
            ResponseCode::NXDomain,
            "{}",
            ctx("a name on another network is not netd's to answer: the upstream says NXDOMAIN")
        );
        assert_eq!(stub.asked(&worker), 1, "{}", ctx("forwarded once"));

        // Forwarding to the upstream, over UDP and TCP; none for the worker.
        assert_eq!(
            getent_hosts(&h.ctr("web"), OUTSIDE_NAME).unwrap(),
            format!("{OUTSIDE_NAME_IP} {OUTSIDE_NAME}")
        );
        for tcp in [false, true] {
            let reply = ask(&h.ctr("db"), resolver(), OUTSIDE_NAME, RecordType::A, tcp).unwrap();
            assert_eq!(
                addresses(&reply),
                [OUTSIDE_NAME_IP],
                "{}: {reply:?}",
                ctx("forwarded")
            );
            let reply = ask(&h.ctr("db"), resolver(), &web, RecordType::A, tcp).unwrap();
            assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 91, 0, 2)]);
        }
        let asked = stub.asked(OUTSIDE_NAME);
        let reply = ask(
            &h.ctr("worker"),
            resolver(),
            OUTSIDE_NAME,
            RecordType::A,
            false,
        )
        .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::ServFail);
        assert_eq!(
            stub.asked(OUTSIDE_NAME),
            asked,
            "{}",
            ctx("worker's query left")
        );

        // The default bridge: no resolver, no resolv.conf of netd's.
        assert!(
            ask(&h.ctr("plain"), resolver(), &web, RecordType::A, false).is_err(),
            "{}",
            ctx("something answers on the default bridge")
        );
        assert!(!std::path::Path::new(&format!("/etc/netns/{plain}")).exists());

        // Bad queries: an error code with the asker's ID, or nothing; the
        // resolver keeps answering.
        let mut garbage = vec![0xab, 0xcd];
        garbage.extend([0xff; 18]);
        let reply = ask_raw(&h.ctr("web"), resolver(), &garbage, false).unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(
            reply[3] & 0x0f,
            u8::try_from(u16::from(ResponseCode::FormErr)).unwrap()
        );
        assert!(ask_raw(&h.ctr("web"), resolver(), &[1, 2, 3], false).is_err());
        let mut oversized = vec![0x12, 0x34];
        oversized.extend(std::iter::repeat_n(0u8, 6000));
        for tcp in [false, true] {
            let reply = ask_raw(&h.ctr("web"), resolver(), &oversized, tcp).unwrap();
            assert_eq!(&reply[..2], &[0x12, 0x34], "{}", ctx("oversized"));
            assert_eq!(reply[3] & 0x0f, 1, "{}", ctx("oversized: FORMERR"));
        }
        assert_eq!(
            getent_hosts(&h.ctr("web"), &db).unwrap(),
            format!("10.91.0.3 {db}")
        );

        // Aliases are checked.
        let other = h.name("other");
        h.refused(
            &[
                "container",
                "create",
                &other,
                "--network",
                "front",
                "--alias",
                "database",
            ],
            ErrorKind::Conflict,
            &format!("alias \"database\" is taken on network \"front\" (by container \"{db}\")"),
        );
        h.refused(
            &["container", "create", &other, "--alias", "x"],
            ErrorKind::Invalid,
            "--alias: network \"bridge\" has no name resolution",
        );

        // Records follow connect, disconnect, rm and a kill -9 restart.
        h.ok(&["network", "connect", "front", &worker]);
        assert_eq!(
            getent_hosts(&h.ctr("web"), &worker).unwrap(),
            format!("10.91.0.4 {worker}")
        );
        h.ok(&["network", "disconnect", "front", &worker]);
        assert!(getent_hosts(&h.ctr("web"), &worker).is_err());
        h.kill_daemon(libc::SIGKILL);
        h.spawn_daemon();
        assert_eq!(
            getent_hosts(&h.ctr("web"), &db).unwrap(),
            format!("10.91.0.3 {db}"),
            "{}",
            ctx("after a restart")
        );
        h.ok(&["container", "rm", &db]);
        let gone = ask(&h.ctr("web"), resolver(), &db, RecordType::A, false).unwrap();
        assert_eq!(
            gone.response_code(),
            ResponseCode::NXDomain,
            "{}",
            ctx("rm")
        );
        assert!(!std::path::Path::new(&format!("/etc/netns/{db}")).exists());

        h.ok(&["down"]);
        h.wait_daemon_exit();
        for c in [&web, &worker] {
            assert!(
                !std::path::Path::new(&format!("/etc/netns/{c}")).exists(),
                "{}",
                ctx("down leaves resolv.conf files")
            );
        }
    }
}

/// `--dns-via cgroup-hooks` on a datapath without socket hooks is refused
/// at start, before anything is touched: the running setup stays.
#[test]
fn cgroup_hooks_are_refused_without_the_ebpf_datapath() {
    let mut h = DaemonHost::start(netd(), &["--datapath", "iptables"]);
    h.ok(&["network", "create", "front", "--subnet", "10.96.0.0/24"]);
    h.ok(&["container", "create", &h.name("web"), "--network", "front"]);
    h.kill_daemon(libc::SIGTERM);
    let (status, stderr) = h.daemon_refusal_with(&["--dns-via", "cgroup-hooks"]);
    assert_eq!(status.and_then(|s| s.code()), Some(5), "{stderr}");
    assert!(
        stderr.contains(
            "--dns-via cgroup-hooks needs the eBPF datapath's socket hooks (--datapath ebpf); \
             with --datapath iptables use --dns-via namespace-sockets"
        ),
        "{stderr}"
    );
    h.spawn_daemon();
    assert_eq!(
        getent_hosts(&h.ctr("web"), &h.name("web")).unwrap(),
        format!("10.96.0.2 {}", h.name("web")),
        "the container still resolves after the refusal"
    );
    h.ok(&["down"]);
    h.wait_daemon_exit();
}
