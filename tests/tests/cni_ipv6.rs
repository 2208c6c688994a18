//! netd's CNI plugin on a dual-stack network, as a runtime runs it.

use netd_testbed::bin_under_test::{netd, netd_cni as plugin};
use netd_testbed::{
    cni::{Attachment, CniTool, container_count, net_conf, runtime_netns},
    daemon_host::DaemonHost,
    probe::{self, EchoServer},
};
use serde_json::json;

/// host-local's dual-stack ranges: the network is made with both families
/// on first use, the result lists both addresses and default routes, the
/// `ips` capability picks an IPv6 address too, and the pods talk over IPv6
/// (on the eBPF datapath, which polices it).
#[test]
fn dual_stack_ranges_give_both_families() {
    let h = DaemonHost::start(netd(), &[]);
    let cni = CniTool::new(plugin());
    let ipam = json!({"ipam": {"type": "netd", "ranges": [
        [{"subnet": "10.89.0.0/24"}],
        [{"subnet": "fd00:89::/64", "gateway": "fd00:89::1"}],
    ]}});
    let mut results = Vec::new();
    let mut namespaces = Vec::new();
    for (i, ips) in [json!([]), json!(["fd00:89::50/64"])]
        .into_iter()
        .enumerate()
    {
        let ns = runtime_netns(&h, &format!("d{i}"));
        let id = format!("dual{i}{}", "0".repeat(56));
        let att = Attachment {
            container_id: &id,
            netns: &ns.path(),
            ifname: "eth0",
        };
        let mut extra = ipam.clone();
        extra["runtimeConfig"] = json!({"ips": ips});
        let conf = net_conf("1.1.0", "dual", &h.socket(), extra);
        let result = cni.ok("ADD", Some(&att), &conf);
        let check = net_conf(
            "1.1.0",
            "dual",
            &h.socket(),
            json!({"ipam": ipam["ipam"].clone(), "prevResult": result.clone()}),
        );
        cni.ok("CHECK", Some(&att), &check);
        results.push(result);
        namespaces.push(ns);
    }
    let first = &results[0];
    assert_eq!(first["ips"][0]["address"], "10.89.0.2/24", "{first}");
    assert_eq!(first["ips"][1]["address"], "fd00:89::2/64", "{first}");
    assert_eq!(first["ips"][1]["gateway"], "fd00:89::1");
    assert_eq!(
        first["routes"][1],
        json!({"dst": "::/0", "gw": "fd00:89::1"})
    );
    assert_eq!(
        results[1]["ips"][1]["address"], "fd00:89::50/64",
        "the ips capability"
    );
    let net = h.json(&["network", "inspect", "dual"]);
    assert_eq!(net["ipv6"]["subnet"], "fd00:89::/64");

    let _server = EchoServer::tcp(
        &namespaces[1],
        "[fd00:89::50]:80".parse().unwrap(),
        "pod saw {peer}:",
    )
    .unwrap();
    let reply =
        probe::tcp_request(&namespaces[0], "[fd00:89::50]:80".parse().unwrap(), b"x").unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "pod saw fd00:89::2:x");

    // Two IPv6 addresses for one interface: refused, nothing made.
    let ns = runtime_netns(&h, "d9");
    let id = format!("dual9{}", "0".repeat(56));
    let att = Attachment {
        container_id: &id,
        netns: &ns.path(),
        ifname: "eth0",
    };
    let mut extra = ipam.clone();
    extra["runtimeConfig"] = json!({"ips": ["fd00:89::60", "fd00:89::61"]});
    let before = container_count(&h);
    let run = cni.exec(
        "ADD",
        Some(&att),
        &net_conf("1.1.0", "dual", &h.socket(), extra),
    );
    CniTool::expect_error(&run, 7, "one per interface and address family");
    assert_eq!(container_count(&h), before);
}
