//! The Kubernetes network model on two nodes, simulated with namespaces:
//! each node runs its own netd with its own pod CIDR (10.244.N.0/24, made
//! by the CNI plugin from the conflist, as a kubelet's node spec gives it),
//! and a router namespace routes each pod CIDR to its node, as a cluster's
//! fabric or BGP speaker would. The cluster range 10.244.0.0/16 is a routed
//! CIDR: pod to pod keeps its address, pod to outside is masqueraded,
//! hostPort answers on the node address, and netd's isolation between its
//! networks still holds. Both datapaths, one test each.

use std::{
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use netd_testbed::bin_under_test::{netd, netd_cni as plugin};
use netd_testbed::{
    Netns, Testbed,
    cni::{Attachment, CniTool, net_conf},
    probe::{self, EchoServer},
    topology::Background,
};
use serde_json::{Value, json};

const OUTSIDE: &str = "198.51.100.2";

/// One node: its namespace and the netd daemon running in it.
struct Node {
    ns: Netns,
    /// This node's address (its uplink, towards the router).
    ip: String,
    dir: PathBuf,
    bpffs: PathBuf,
    daemon: Option<Background>,
}

impl Node {
    fn start(ns: Netns, ip: &str, id: &str, datapath: &str, flags: &[&str]) -> Self {
        let dir = PathBuf::from(format!("/run/netd-test-{id}"));
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/netd-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut node = Self {
            ns,
            ip: ip.to_owned(),
            dir,
            bpffs,
            daemon: None,
        };
        let socket = node.socket().display().to_string();
        let state = node.dir.join("state").display().to_string();
        let bpffs = node.bpffs.display().to_string();
        let mut args = vec![
            "--socket",
            &socket,
            "daemon",
            "--state-dir",
            &state,
            "--bpffs",
            &bpffs,
            "--datapath",
            datapath,
        ];
        args.extend_from_slice(flags);
        node.daemon = Some(node.ns.spawn_with_env(netd(), &args, &[], None).unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(node.socket()).is_err() {
            assert!(
                !node.daemon.as_mut().unwrap().exited(),
                "netd exited at start"
            );
            assert!(Instant::now() < deadline, "netd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("netd.sock")
    }

    fn netd(&self, args: &[&str]) -> Output {
        Command::new(netd())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.netd(args);
        assert!(out.status.success(), "netd {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The plugin configuration a kubelet on this node passes: the node's
    /// pod CIDR, the cluster's range routed without NAT.
    fn conf(&self, pod_cidr: &str, extra: Value) -> Value {
        let mut conf = net_conf(
            "1.1.0",
            "k8s-pod-network",
            &self.socket(),
            json!({
                "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]]},
                "routedCidrs": ["10.244.0.0/16"],
            }),
        );
        if let (Some(base), Value::Object(extra)) = (conf.as_object_mut(), extra) {
            base.extend(extra);
        }
        conf
    }

    /// The drop counts the datapath reports (`netd status`): per reason on
    /// ebpf, per rule table on iptables.
    fn drops(&self, reason: &str) -> u64 {
        let status: Value =
            serde_json::from_str(&self.ok(&["status", "--format", "json"])).unwrap();
        status["drops"][reason].as_u64().unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let _ = self.netd(&["down"]);
        }
        if let Some(daemon) = self.daemon.take() {
            daemon.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Node N at 10.0.N.2 behind router 10.0.N.1, pod CIDR 10.244.N.0/24; the
/// outside at 198.51.100.2 behind the router's 198.51.100.1. With
/// `kube_proxy`, node 1 also has a Service rule as kube-proxy writes it
/// (DNAT of a ClusterIP to pod 2), which pods must pass through.
fn two_nodes(datapath: &str, flags: &[&str], kube_proxy: bool) {
    let mut bed = Testbed::new().unwrap();
    let router = bed.add_netns("router").unwrap();
    let outside = bed.add_netns("outside").unwrap();
    bed.veth(&router, "out", &outside, "eth0").unwrap();
    router
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "out"])
        .unwrap();
    outside
        .ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"])
        .unwrap();
    outside
        .ip(&["route", "add", "default", "via", "198.51.100.1"])
        .unwrap();
    router.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let mut nodes = Vec::new();
    for n in [1, 2] {
        let ns = bed.add_netns(&format!("node{n}")).unwrap();
        let uplink = bed.ifname(&format!("n{n}"));
        bed.veth(&router, &format!("node{n}"), &ns, &uplink)
            .unwrap();
        router
            .ip(&[
                "addr",
                "add",
                &format!("10.0.{n}.1/24"),
                "dev",
                &format!("node{n}"),
            ])
            .unwrap();
        ns.ip(&["addr", "add", &format!("10.0.{n}.2/24"), "dev", &uplink])
            .unwrap();
        ns.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")])
            .unwrap();
        // The fabric: each node's pod CIDR is routed to the node.
        router
            .ip(&[
                "route",
                "add",
                &format!("10.244.{n}.0/24"),
                "via",
                &format!("10.0.{n}.2"),
            ])
            .unwrap();
        let id = format!("{}-node{n}", bed.id());
        nodes.push(Node::start(
            ns,
            &format!("10.0.{n}.2"),
            &id,
            datapath,
            flags,
        ));
    }
    let cni = CniTool::new(plugin());

    // A pod on each node, as the kubelet adds them; pod2 has a hostPort.
    let pods: Vec<Netns> = (1..=2)
        .map(|n| bed.add_netns(&format!("pod{n}")).unwrap())
        .collect();
    let ids = ["pod-one", "pod-two"];
    for (i, node) in nodes.iter().enumerate() {
        let n = i + 1;
        let extra = if n == 2 {
            json!({"runtimeConfig": {"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""}]}})
        } else {
            json!({})
        };
        let path = pods[i].path();
        let att = Attachment {
            container_id: ids[i],
            netns: &path,
            ifname: "eth0",
        };
        let result = cni.ok(
            "ADD",
            Some(&att),
            &node.conf(&format!("10.244.{n}.0/24"), extra),
        );
        assert_eq!(result["ips"][0]["address"], format!("10.244.{n}.2/24"));
    }
    let _servers: Vec<EchoServer> = pods
        .iter()
        .map(|pod| EchoServer::tcp(pod, addr("0.0.0.0:80"), "{peer}").unwrap())
        .collect();
    let _outside_server =
        EchoServer::tcp(&outside, addr(&format!("{OUTSIDE}:7000")), "{peer}").unwrap();
    let seen = |from: &Netns, to: &str| -> String {
        String::from_utf8(probe::tcp_request(from, addr(to), b"").unwrap()).unwrap()
    };

    // Pod to pod across nodes: the source address is kept, both ways.
    assert_eq!(
        seen(&pods[0], "10.244.2.2:80"),
        "10.244.1.2",
        "pod1 -> pod2 was NATed"
    );
    assert_eq!(
        seen(&pods[1], "10.244.1.2:80"),
        "10.244.2.2",
        "pod2 -> pod1 was NATed"
    );
    assert!(
        probe::ping(&pods[0], "10.244.2.2", 1).unwrap(),
        "ping across nodes"
    );
    // Pod to outside: masqueraded behind its node.
    assert_eq!(seen(&pods[0], &format!("{OUTSIDE}:7000")), nodes[0].ip);
    assert_eq!(seen(&pods[1], &format!("{OUTSIDE}:7000")), nodes[1].ip);
    // hostPort on node2's address, from the outside and from a pod of node1.
    assert_eq!(seen(&outside, "10.0.2.2:8080"), OUTSIDE);
    assert_eq!(
        seen(&pods[0], "10.0.2.2:8080"),
        nodes[0].ip,
        "hostPort from another node's pod"
    );

    // A Service: kube-proxy's DNAT of a ClusterIP in node 1's netfilter;
    // the pod's source is kept (the target is a pod of the cluster).
    if kube_proxy {
        nodes[0]
            .ns
            .run(
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    "10.96.0.10/32",
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    "10.244.2.2:80",
                ],
            )
            .unwrap();
        assert_eq!(
            seen(&pods[0], "10.96.0.10:80"),
            "10.244.1.2",
            "through the Service"
        );
    }

    // The outside is not a pod: it cannot reach pods directly, though the
    // router would carry it.
    let key = if datapath == "ebpf" {
        "unsolicited-inbound"
    } else {
        ""
    };
    let before = nodes[0].drops(key);
    assert!(
        probe::tcp_request(&outside, addr("10.244.1.2:80"), b"").is_err(),
        "outside reached a pod"
    );
    if datapath == "ebpf" {
        assert!(
            nodes[0].drops(key) > before,
            "the drop was not counted as {key}"
        );
    }

    // netd's isolation still holds between its networks on a node.
    nodes[0].ok(&["network", "create", "other", "--subnet", "10.99.0.0/24"]);
    let other = bed.add_netns("other").unwrap();
    let path = other.path();
    let att = Attachment {
        container_id: "other-ctr",
        netns: &path,
        ifname: "eth0",
    };
    let other_conf = net_conf("1.1.0", "other", &nodes[0].socket(), json!({}));
    cni.ok("ADD", Some(&att), &other_conf);
    let _other_server = EchoServer::tcp(&other, addr("0.0.0.0:80"), "{peer}").unwrap();
    let before = nodes[0].drops("network-isolation");
    assert!(
        probe::tcp_request(&pods[0], addr("10.99.0.2:80"), b"").is_err(),
        "isolation broken"
    );
    if datapath == "ebpf" {
        assert!(
            nodes[0].drops("network-isolation") > before,
            "not counted as network-isolation"
        );
    }

    // DEL on both nodes; nothing is left in either netd.
    for (i, node) in nodes.iter().enumerate() {
        let path = pods[i].path();
        let att = Attachment {
            container_id: ids[i],
            netns: &path,
            ifname: "eth0",
        };
        cni.ok(
            "DEL",
            Some(&att),
            &node.conf(&format!("10.244.{}.0/24", i + 1), json!({})),
        );
    }
    cni.ok("DEL", Some(&att), &other_conf);
    for node in &nodes {
        let left: Value =
            serde_json::from_str(&node.ok(&["container", "ls", "--format", "json"])).unwrap();
        assert_eq!(left, json!([]));
    }
}

#[test]
fn two_nodes_on_ebpf() {
    two_nodes("ebpf", &[], false);
}

/// With the fast path off, pods' packets take the node's stack, where
/// kube-proxy's Service rules apply.
#[test]
fn two_nodes_on_ebpf_with_kube_proxy_rules() {
    two_nodes("ebpf", &["--fast-path=false"], true);
}

#[test]
fn two_nodes_on_iptables_with_kube_proxy_rules() {
    two_nodes("iptables", &[], true);
}
