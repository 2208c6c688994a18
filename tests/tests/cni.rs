//! netd's CNI plugin run as a runtime runs it (the cnitool-like harness in
//! `netd_testbed::cni`), against a real daemon: every verb, every version,
//! the error cases, DEL while the daemon is down, restarts.

use std::{net::SocketAddr, path::Path, process::Command};

use netd_testbed::bin_under_test::{netd, netd_cni as plugin};
use netd_testbed::{
    Netns,
    cni::{Attachment, CniTool, VERSIONS, container_count, net_conf, runtime_netns},
    daemon_host::{DaemonHost, HOST_IP},
    probe::{self, EchoServer},
};
use serde_json::{Value, json};

fn addresses(ns: &Netns, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-4", "-o", "addr", "show", "dev", ifname])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ADD, CHECK, DEL (twice) and VERSION on every version, with the result
/// shaped for each: the port mapping (both key spellings) answers from
/// outside, DEL frees address and port.
#[test]
fn every_verb_on_every_version() {
    let h = DaemonHost::start(netd(), &[]);
    h.ok(&["network", "create", "pods", "--subnet", "10.88.0.0/24"]);
    let cni = CniTool::new(plugin());
    let version = cni.ok("VERSION", None, &json!({"cniVersion": "1.1.0"}));
    assert_eq!(version["supportedVersions"], json!(VERSIONS));

    for (i, v) in VERSIONS.iter().enumerate() {
        let ns = runtime_netns(&h, &format!("v{i}"));
        let id = format!("ctr{i}{}", "0".repeat(60));
        let att = Attachment {
            container_id: &id,
            netns: &ns.path(),
            ifname: "eth0",
        };
        let host_port = 8080 + i as u16;
        // Podman's camelCase and go-cni's Go field names, alternately.
        let mapping = if i % 2 == 0 {
            json!({"hostPort": host_port, "containerPort": 80, "protocol": "tcp", "hostIP": ""})
        } else {
            json!({"HostPort": host_port, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""})
        };
        let conf = net_conf(
            v,
            "pods",
            &h.socket(),
            json!({
                "runtimeConfig": {"portMappings": [mapping]},
            }),
        );
        let result = cni.ok("ADD", Some(&att), &conf);
        assert_eq!(result["cniVersion"], *v);
        let ip = &result["ips"][0];
        let address = ip["address"].as_str().unwrap();
        assert!(
            address.starts_with("10.88.0.") && address.ends_with("/24"),
            "{result}"
        );
        assert_eq!(ip["gateway"], "10.88.0.1");
        assert_eq!(
            ip.get("version").is_some(),
            v.starts_with("0."),
            "ips[].version on {v}: {result}"
        );
        let iface = &result["interfaces"][ip["interface"].as_u64().unwrap() as usize];
        assert_eq!(
            iface["name"], "eth0",
            "ips[].interface must point at the container's: {result}"
        );
        assert_eq!(iface["sandbox"], ns.path().to_string_lossy().as_ref());
        assert_eq!(
            iface.get("mtu").is_some(),
            *v == "1.1.0",
            "interfaces[].mtu on {v}: {result}"
        );
        assert_eq!(
            result["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.88.0.1"})
        );
        let bare = address.split('/').next().unwrap();
        assert!(
            addresses(&ns, "eth0").contains(address),
            "{}",
            addresses(&ns, "eth0")
        );

        // The mapping works through netd's datapath.
        let _server = EchoServer::tcp(&ns, "0.0.0.0:80".parse().unwrap(), "pod:").unwrap();
        let dst: SocketAddr = format!("{HOST_IP}:{host_port}").parse().unwrap();
        assert_eq!(
            probe::tcp_request(&h.outside, dst, b"hi").unwrap(),
            b"pod:hi"
        );

        let check_conf = net_conf(
            v,
            "pods",
            &h.socket(),
            json!({
                "prevResult": result.clone(),
            }),
        );
        if v.starts_with("0.3") {
            CniTool::expect_error(
                &cni.exec("CHECK", Some(&att), &check_conf),
                1,
                "CHECK needs CNI version 0.4.0",
            );
        } else {
            assert_eq!(cni.ok("CHECK", Some(&att), &check_conf), Value::Null);
        }
        // A repeated ADD answers what the first made.
        assert_eq!(
            cni.ok("ADD", Some(&att), &conf)["ips"][0]["address"],
            address
        );

        assert_eq!(cni.ok("DEL", Some(&att), &conf), Value::Null);
        assert!(addresses(&ns, "eth0").is_empty(), "eth0 left after DEL");
        assert!(
            probe::tcp_request(&h.outside, dst, b"hi").is_err(),
            "port {host_port} still answers after DEL"
        );
        // DEL is idempotent, with or without the namespace.
        assert_eq!(cni.ok("DEL", Some(&att), &conf), Value::Null);
        let gone = Attachment {
            netns: Path::new("/run/netns/none-such"),
            ..att.clone()
        };
        assert_eq!(cni.ok("DEL", Some(&gone), &conf), Value::Null);
        assert_eq!(container_count(&h), 0);
        // The address is free again: the next ADD may get it.
        let again = cni.ok("ADD", Some(&att), &conf);
        assert_eq!(again["ips"][0]["address"], address, "{bare} was not freed");
        cni.ok("DEL", Some(&att), &conf);
    }
}

/// Every refusal is CNI error JSON on stdout with the spec's code and a
/// message that says what is wrong, and changes nothing.
#[test]
fn bad_requests_get_cni_errors_and_change_nothing() {
    let h = DaemonHost::start(netd(), &[]);
    h.ok(&["network", "create", "tiny", "--subnet", "10.89.0.0/30"]);
    let cni = CniTool::new(plugin());
    let ns = runtime_netns(&h, "a");
    let att = Attachment {
        container_id: "aaaa",
        netns: &ns.path(),
        ifname: "eth0",
    };
    let conf = net_conf("1.0.0", "tiny", &h.socket(), json!({}));
    let before = h.ok(&["container", "ls", "--format", "json"]);

    CniTool::expect_error(
        &cni.exec_raw(&[], conf.to_string().as_bytes()),
        4,
        "CNI_COMMAND is not set",
    );
    let netns = ns.path().to_string_lossy().into_owned();
    CniTool::expect_error(
        &cni.exec_raw(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "aaaa"),
                ("CNI_IFNAME", "eth0"),
            ],
            conf.to_string().as_bytes(),
        ),
        4,
        "CNI_NETNS is not set",
    );
    CniTool::expect_error(
        &cni.exec_raw(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
            ],
            conf.to_string().as_bytes(),
        ),
        4,
        "CNI_CONTAINERID is not set",
    );
    CniTool::expect_error(
        &cni.exec_raw(&[("CNI_COMMAND", "FROB")], b"{}"),
        4,
        "\"FROB\" is not one of",
    );
    CniTool::expect_error(
        &cni.exec_raw(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "aaaa"),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
            ],
            b"{\"cniVersion\": \"1.0.0\", ",
        ),
        6,
        "not valid JSON",
    );
    CniTool::expect_error(
        &cni.exec(
            "ADD",
            Some(&att),
            &net_conf("0.2.0", "tiny", &h.socket(), json!({})),
        ),
        1,
        "CNI version 0.2.0 is not supported",
    );
    CniTool::expect_error(
        &cni.exec(
            "ADD",
            Some(&att),
            &net_conf("1.0.0", "nope", &h.socket(), json!({})),
        ),
        7,
        "no network named \"nope\"",
    );
    CniTool::expect_error(
        &cni.exec(
            "ADD",
            Some(&att),
            &net_conf(
                "1.0.0",
                "tiny",
                &h.socket(),
                json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 0}]}}),
            ),
        ),
        7,
        "container port 0 is not in 1-65535",
    );
    CniTool::expect_error(
        &cni.exec("ADD", Some(&att), &net_conf("1.0.0", "tiny", &h.socket(), json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]}}))),
        7,
        "protocol \"sctp\"",
    );
    let missing = Attachment {
        netns: Path::new("/run/netns/none-such"),
        ..att.clone()
    };
    CniTool::expect_error(
        &cni.exec("ADD", Some(&missing), &conf),
        4,
        "CNI_NETNS /run/netns/none-such is not a network namespace",
    );
    CniTool::expect_error(
        &cni.exec("CHECK", Some(&att), &conf),
        3,
        "netd has no interface eth0 of container aaaa",
    );
    CniTool::expect_error(
        &cni.exec(
            "STATUS",
            None,
            &net_conf("1.1.0", "nope", &h.socket(), json!({})),
        ),
        50,
        "no network named \"nope\"",
    );
    let no_daemon = net_conf(
        "1.0.0",
        "tiny",
        Path::new("/run/netd-none/netd.sock"),
        json!({}),
    );
    CniTool::expect_error(
        &cni.exec("ADD", Some(&att), &no_daemon),
        11,
        "netd is not reachable",
    );
    assert_eq!(
        h.ok(&["container", "ls", "--format", "json"]),
        before,
        "a refused request changed the state"
    );

    // A /30 has one address besides the gateway.
    cni.ok("ADD", Some(&att), &conf);
    let ns_b = runtime_netns(&h, "b");
    let att_b = Attachment {
        container_id: "bbbb",
        netns: &ns_b.path(),
        ifname: "eth0",
    };
    CniTool::expect_error(
        &cni.exec("ADD", Some(&att_b), &conf),
        100,
        "no free address",
    );
    assert!(addresses(&ns_b, "eth0").is_empty());

    // CHECK sees a veth deleted behind netd's back; `netd repair` makes it again.
    let record = h.json(&["container", "inspect", "cni-aaaa-eth0"]);
    let host_veth = record["attachments"][0]["host_veth"]
        .as_str()
        .unwrap()
        .to_owned();
    h.host.ip(&["link", "del", &host_veth]).unwrap();
    CniTool::expect_error(
        &cni.exec("CHECK", Some(&att), &conf),
        100,
        &format!("({host_veth}) is gone"),
    );
    let repairs = h.ok(&["repair"]);
    assert!(
        repairs.contains("its interface eth0 on network tiny was gone; made again"),
        "{repairs}"
    );
    assert_eq!(cni.ok("CHECK", Some(&att), &conf), Value::Null);
    cni.ok("DEL", Some(&att), &conf);
    assert_eq!(container_count(&h), 0);
}

/// DEL succeeds with the daemon down (queued on disk, done when it starts);
/// STATUS says unavailable (50) then; GC removes what the runtime no longer
/// lists; a network made from the conflist's subnet keeps addresses unique
/// across restarts.
#[test]
fn del_while_daemon_down_status_gc_and_restarts() {
    let mut h = DaemonHost::start(netd(), &[]);
    let cni = CniTool::new(plugin());
    let conf = net_conf(
        "1.1.0",
        "k8s",
        &h.socket(),
        json!({
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]},
            "routedCidrs": ["10.244.0.0/16"],
        }),
    );
    assert_eq!(cni.ok("STATUS", None, &conf), Value::Null);
    let (ns1, ns2, ns3) = (
        runtime_netns(&h, "p1"),
        runtime_netns(&h, "p2"),
        runtime_netns(&h, "p3"),
    );
    let att1 = Attachment {
        container_id: "pod1",
        netns: &ns1.path(),
        ifname: "eth0",
    };
    let att2 = Attachment {
        container_id: "pod2",
        netns: &ns2.path(),
        ifname: "eth0",
    };
    let att3 = Attachment {
        container_id: "pod3",
        netns: &ns3.path(),
        ifname: "eth0",
    };
    let ip1 = cni.ok("ADD", Some(&att1), &conf)["ips"][0]["address"].clone();
    assert_eq!(ip1, "10.244.1.2/24");
    let net = h.json(&["network", "inspect", "k8s"]);
    assert_eq!(net["routed_cidrs"], json!(["10.244.0.0/16"]));

    // Addresses stay unique across a restart.
    h.kill_daemon(libc::SIGKILL);
    CniTool::expect_error(
        &cni.exec("STATUS", None, &conf),
        50,
        "netd is not reachable",
    );
    h.spawn_daemon();
    let ip2 = cni.ok("ADD", Some(&att2), &conf)["ips"][0]["address"].clone();
    assert_eq!(ip2, "10.244.1.3/24");

    // DEL with the daemon gone: success now, done at the next start.
    h.kill_daemon(libc::SIGKILL);
    assert_eq!(cni.ok("DEL", Some(&att1), &conf), Value::Null);
    let queue = h.socket().with_extension("cni-del");
    assert_eq!(
        std::fs::read_dir(&queue).unwrap().count(),
        1,
        "DEL not queued"
    );
    h.spawn_daemon();
    assert_eq!(
        std::fs::read_dir(&queue).unwrap().count(),
        0,
        "queue not drained"
    );
    assert!(addresses(&ns1, "eth0").is_empty(), "pod1's interface left");
    assert_eq!(container_count(&h), 1);

    // GC: pod3 is added, then the runtime lists only pod3.
    cni.ok("ADD", Some(&att3), &conf);
    let gc = net_conf(
        "1.1.0",
        "k8s",
        &h.socket(),
        json!({
            "cni.dev/valid-attachments": [{"containerID": "pod3", "ifname": "eth0"}],
        }),
    );
    assert_eq!(cni.ok("GC", None, &gc), Value::Null);
    assert!(addresses(&ns2, "eth0").is_empty(), "GC left pod2");
    assert!(!addresses(&ns3, "eth0").is_empty(), "GC removed pod3");
    CniTool::expect_error(
        &cni.exec(
            "GC",
            None,
            &net_conf("1.0.0", "k8s", &h.socket(), json!({})),
        ),
        1,
        "GC needs CNI version 1.1.0",
    );

    // A namespace the runtime deleted without DEL frees its address.
    let record = "cni-pod3-eth0";
    assert!(h.ok(&["container", "ls"]).contains(record));
    Command::new("ip")
        .args(["netns", "del", ns3.name()])
        .output()
        .unwrap();
    let ip = cni.ok("ADD", Some(&att1), &conf)["ips"][0]["address"].clone();
    assert!(
        !h.ok(&["container", "ls"]).contains(record),
        "pod3 kept after its namespace went"
    );
    assert_eq!(ip, "10.244.1.2/24");
}

/// `netd cni install` writes a conflist runtimes accept and places the
/// plugin; a network that does not exist is refused unless a subnet is given.
#[test]
fn install_writes_conflist_and_plugin() {
    let h = DaemonHost::start(netd(), &[]);
    let dir = std::env::temp_dir().join(format!("netd-cni-install-{}", std::process::id()));
    let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
    let args = |network: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["cni", "install", network, "--bin-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(bin.to_string_lossy().into());
        a.push("--conf-dir".into());
        a.push(conf.to_string_lossy().into());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| h.netd(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args("missing", &[]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("create it first"),
        "{out:?}"
    );
    assert!(!conf.exists(), "a refused install wrote files");

    let out = run(args("bridge", &[]));
    assert!(out.status.success(), "{out:?}");
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(conf.join("50-netd-bridge.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["name"], "bridge");
    assert_eq!(conflist["cniVersion"], "1.0.0");
    assert_eq!(conflist["plugins"][0]["type"], "netd-cni");
    assert_eq!(
        conflist["plugins"][0]["capabilities"],
        json!({"portMappings": true, "ips": true, "aliases": true})
    );
    assert_eq!(
        conflist["plugins"][0]["socket"],
        h.socket().to_string_lossy().as_ref()
    );
    assert_eq!(
        std::fs::read(bin.join("netd-cni")).unwrap(),
        std::fs::read(plugin()).unwrap()
    );

    let out = run(args(
        "node",
        &[
            "--subnet",
            "10.244.2.0/24",
            "--routed-cidr",
            "10.244.0.0/16",
            "--cni-version",
            "1.1.0",
        ],
    ));
    assert!(out.status.success(), "{out:?}");
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(conf.join("50-netd-node.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["plugins"][0]["ipam"]["subnet"], "10.244.2.0/24");
    assert_eq!(
        conflist["plugins"][0]["routedCidrs"],
        json!(["10.244.0.0/16"])
    );

    // The conflist as written works with the installed plugin.
    let ns = runtime_netns(&h, "i");
    let att = Attachment {
        container_id: "inst",
        netns: &ns.path(),
        ifname: "eth0",
    };
    let mut plugin_conf = conflist["plugins"][0].clone();
    plugin_conf["cniVersion"] = conflist["cniVersion"].clone();
    plugin_conf["name"] = conflist["name"].clone();
    let installed = CniTool::new(bin.join("netd-cni"));
    assert_eq!(
        installed.ok("ADD", Some(&att), &plugin_conf)["ips"][0]["address"],
        "10.244.2.2/24"
    );
    installed.ok("DEL", Some(&att), &plugin_conf);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon killed in the middle of an ADD: the plugin reports "try again"
/// (11), the next start rolls the half-made attachment back (no record, no
/// veth, nothing in the namespace), and the retried ADD gets the address.
#[test]
fn kill_mid_add_rolls_back_and_the_retry_works() {
    let mut h = DaemonHost::start(netd(), &[]);
    let cni = CniTool::new(plugin());
    let conf = net_conf(
        "1.0.0",
        "bridge",
        &h.socket(),
        json!({
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]},
        }),
    );
    let ns = runtime_netns(&h, "k");
    let att = Attachment {
        container_id: "killed",
        netns: &ns.path(),
        ifname: "eth0",
    };
    for point in ["container-create:veth", "container-create:endpoint"] {
        h.kill_daemon(libc::SIGTERM);
        h.spawn_daemon_with_env(&[], &[("NETD_FAULT_POINT", point)]);
        CniTool::expect_error(
            &cni.exec("ADD", Some(&att), &conf),
            11,
            "netd is not reachable",
        );
        h.wait_daemon_exit();
        h.spawn_daemon();
        let status: Value = h.json(&["status", "--format", "json"]);
        let repairs = status["repairs"].to_string();
        assert!(
            repairs.contains("cni-killed-eth0: an interrupted create was rolled back"),
            "{point}: {repairs}"
        );
        assert_eq!(container_count(&h), 0, "{point}");
        assert!(
            addresses(&ns, "eth0").is_empty(),
            "{point}: eth0 left in the namespace"
        );
        let result = cni.ok("ADD", Some(&att), &conf);
        assert_eq!(result["ips"][0]["address"], "172.17.0.2/16", "{point}");
        cni.ok("DEL", Some(&att), &conf);
    }
}
