//! Runtimes' attachments (Docker endpoints, CNI) and the user's rules.

use super::*;

/// A runtime's endpoint (Docker): netd makes the veth and registers it;
/// the runtime's sandbox is never netd's to check or remove, so a restart
/// keeps the endpoint and its ports.
#[tokio::test]
async fn runtime_endpoints_publish_and_survive_a_restart() {
    use crate::{engine::EndpointSpec, portspec::PortSpec, state::Sandbox};
    let f = Fixture::new("endpoint");
    {
        let mut engine = f.engine().await;
        engine
            .network_create(NetworkSpec {
                subnet: Some("10.80.0.0/24".parse().unwrap()),
                binding_ip: Some("198.51.100.1".parse().unwrap()),
                docker_id: Some("d0c".into()),
                ..NetworkSpec::named("docker-d0c")
            })
            .await
            .unwrap();
        let interface = engine
            .endpoint_create(EndpointSpec {
                name: "docker-ep-e1".into(),
                network: "docker-d0c".into(),
                ip: ip("10.80.0.2"),
                ip6: None,
                mac: None,
                sandbox: Sandbox::Docker {
                    endpoint_id: "e1".into(),
                    sandbox_key: None,
                },
            })
            .await
            .unwrap();
        assert_eq!(interface.mac, [0x02, 0x42, 10, 80, 0, 2]);
        assert_eq!(interface.gateway, Some(ip("10.80.0.1")));
        assert!(interface.peer.starts_with("tmp"), "{interface:?}");
        // The address Docker's IPAM gave is taken now.
        let err = engine
            .endpoint_create(EndpointSpec {
                name: "docker-ep-e2".into(),
                network: "docker-d0c".into(),
                ip: ip("10.80.0.2"),
                ip6: None,
                mac: None,
                sandbox: Sandbox::Docker {
                    endpoint_id: "e2".into(),
                    sandbox_key: None,
                },
            })
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("already in use"), "{err:#}");
        // `-p 8000-8010:80`: one port of the range, on the binding address.
        let spec = PortSpec::parse("8000-8010:80").unwrap();
        let ports = engine.endpoint_publish("docker-ep-e1", &[spec]).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].host_ip, ports[0].host_port),
            (ip("198.51.100.1"), 8000)
        );
        // A live namespace (the test's own).
        engine
            .endpoint_join("docker-ep-e1", "/proc/self/ns/net")
            .unwrap();
    }
    // A new daemon: the endpoint (no netns of netd's) is kept, ports included.
    let mut engine = f.engine().await;
    assert_eq!(engine.state().containers["docker-ep-e1"].ports.len(), 1);
    assert_eq!(f.driver.record.lock().unwrap().ports.len(), 1);
    engine.endpoint_unpublish("docker-ep-e1").unwrap();
    assert!(f.driver.record.lock().unwrap().ports.is_empty());
    engine.container_rm("docker-ep-e1").await.unwrap();
    assert!(f.host.kernel().veths.is_empty());
    assert!(f.driver.record.lock().unwrap().endpoints.is_empty());
}

/// An endpoint whose sandbox is gone (dockerd restarted and never deleted
/// it) releases its address and ports when the next endpoint comes.
#[tokio::test]
async fn endpoints_of_vanished_sandboxes_are_pruned() {
    use crate::{engine::EndpointSpec, state::Sandbox};
    let f = Fixture::new("stale");
    let mut engine = f.engine().await;
    let endpoint = |name: &str| EndpointSpec {
        name: name.into(),
        network: "bridge".into(),
        ip: ip("172.17.0.2"),
        ip6: None,
        mac: None,
        sandbox: Sandbox::Docker {
            endpoint_id: name.into(),
            sandbox_key: None,
        },
    };
    engine.endpoint_create(endpoint("old")).await.unwrap();
    // Not a namespace (any more): a plain file.
    let gone = f.dir.join("gone-sandbox");
    std::fs::create_dir_all(&f.dir).unwrap();
    std::fs::write(&gone, "").unwrap();
    engine.endpoint_join("old", gone.to_str().unwrap()).unwrap();
    engine.endpoint_create(endpoint("new")).await.unwrap();
    assert!(!engine.state().containers.contains_key("old"));
    assert_eq!(f.host.kernel().veths.len(), 1);
}

fn cni_attach(id: &str, netns: &str, network: CniNetwork, publish: &[&str]) -> CniAttach {
    CniAttach {
        network,
        container_id: id.into(),
        ifname: "eth0".into(),
        netns: format!("/fake/netns/{netns}"),
        ip: None,
        ip6: None,
        ports: publish
            .iter()
            .map(|p| PortSpec::parse(p).unwrap())
            .collect(),
        expect_ip: None,
        names: vec![format!("{id}-name"), "bad name".into()],
    }
}

/// A conflist that gives the node's pod CIDR: the network is made on
/// first use, then must keep that subnet.
fn pod_network(subnet: &str) -> CniNetwork {
    CniNetwork {
        network: "pods".into(),
        create: Some(NetworkSpec {
            subnet: Some(subnet.parse().unwrap()),
            routed_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..NetworkSpec::named("pods")
        }),
    }
}

#[tokio::test]
async fn cni_attachments_add_check_del_gc_and_roll_back() {
    let f = Fixture::new("cni");
    for ns in ["p1", "p2", "p3"] {
        f.host.create_netns(ns).await.unwrap();
    }
    let mut engine = f.engine().await;
    let a = engine
        .cni_add(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &["8080:80"],
        ))
        .await
        .unwrap();
    assert_eq!(
        (a.ip, a.prefix_len, a.gateway),
        (ip("10.244.1.2"), 24, Some(ip("10.244.1.1")))
    );
    assert_eq!(
        engine.state().networks["pods"].routed_cidrs[0].to_string(),
        "10.244.0.0/16"
    );
    // The resolver: in the result, and the runtime's names that are host
    // names on the attachment.
    assert_eq!(a.nameserver, Some(ip("127.0.0.11")));
    let record = engine
        .state()
        .containers
        .values()
        .find(|c| c.attachments.iter().any(|att| att.ip == a.ip))
        .unwrap();
    assert_eq!(record.attachments[0].aliases, ["ctr-a-name"]);
    // The same ADD again answers the same; CHECK finds it as made.
    let again = engine
        .cni_add(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &["8080:80"],
        ))
        .await
        .unwrap();
    assert_eq!(again, a);
    engine
        .cni_check(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap();

    // Another subnet for the same network: refused with CNI code 7.
    let err = engine
        .cni_add(&cni_attach(
            "ctr-b",
            "p2",
            pod_network("10.244.9.0/24"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        crate::error::refusal_of(&err).and_then(|r| r.cni_code),
        Some(7),
        "{err:#}"
    );

    // A failure half-way leaves nothing: no record, no veth, port free.
    let saved = f.saved();
    f.host.kernel().fail_next = Some("create_veth");
    engine
        .cni_add(&cni_attach(
            "ctr-b",
            "p2",
            pod_network("10.244.1.0/24"),
            &["9090:80"],
        ))
        .await
        .unwrap_err();
    assert_eq!(f.saved(), saved);
    assert_eq!(f.host.kernel().veths.len(), 1);

    engine
        .cni_add(&cni_attach(
            "ctr-b",
            "p2",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap();
    engine
        .cni_add(&cni_attach(
            "ctr-c",
            "p3",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap();
    // GC keeps what the runtime lists; DEL is done when nothing is there.
    let keep = |id: &str| CniDetach {
        network: "pods".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
    };
    let removed = engine.cni_gc("pods", &[keep("ctr-a")]).await.unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    engine.cni_del(&keep("ctr-a")).await.unwrap();
    engine.cni_del(&keep("ctr-a")).await.unwrap();
    assert!(engine.state().containers.is_empty());
    assert!(f.host.kernel().veths.is_empty());
    assert!(engine.state().published().next().is_none());
    let err = engine
        .cni_check(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        crate::error::refusal_of(&err).and_then(|r| r.cni_code),
        Some(3),
        "{err:#}"
    );
}

fn deny_port(source: &str, port: u16) -> crate::api::RuleAdd {
    crate::api::RuleAdd {
        rule: crate::rule::UserRule {
            action: crate::rule::RuleAction::Deny,
            source: Some(source.parse().unwrap()),
            proto: Some(crate::portspec::Proto::Tcp),
            ports: Some((port, port)),
            network: None,
            in_interface: None,
        },
        position: None,
    }
}

#[tokio::test]
async fn user_rules_keep_their_order_persist_and_refuse_bad_ones() {
    let f = Fixture::new("rules");
    let mut engine = f.engine().await;
    let first = engine.rule_add(deny_port("10.0.0.0/8", 5432)).unwrap();
    let mut allow = deny_port("10.1.0.0/16", 5432);
    allow.rule.action = crate::rule::RuleAction::Allow;
    allow.position = Some(1);
    let second = engine.rule_add(allow).unwrap();
    assert_eq!((second.position, first.position), (1, 1));
    let listed: Vec<(u32, u32)> = engine
        .rule_ls()
        .iter()
        .map(|r| (r.position, r.id))
        .collect();
    assert_eq!(listed, [(1, second.id), (2, first.id)]);
    let enforced = f.driver.record.lock().unwrap().rules.clone();
    assert_eq!(enforced.len(), 2);
    assert_eq!(enforced[0].rule.action, crate::rule::RuleAction::Allow);

    // Refused, each with its own message, nothing changed.
    let saved = f.saved();
    let refusals = [
        (
            deny_port("10.0.0.0/8", 5432),
            "already matches exactly this traffic",
        ),
        (deny_port("10.0.0.1/8", 80), "did you mean 10.0.0.0/8"),
        (deny_port("10.0.0.0/8", 0), "port 0"),
        (
            crate::api::RuleAdd {
                position: Some(9),
                ..deny_port("10.9.0.0/16", 80)
            },
            "position 9 is outside the list (1 to 3)",
        ),
    ];
    for (add, expected) in refusals {
        let err = engine.rule_add(add).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    let mut unknown = deny_port("10.9.0.0/16", 80);
    unknown.rule.network = Some("nope".into());
    let err = format!("{:#}", engine.rule_add(unknown).unwrap_err());
    assert!(err.contains("no network named \"nope\""), "{err}");
    assert_eq!(
        engine.rule_rm(999).unwrap_err().to_string(),
        "no rule with ID 999 (see `netd rule ls`)"
    );
    // The driver refusing leaves state and driver as they were.
    f.driver.record.lock().unwrap().fail_next = Some("set_rules");
    assert!(engine.rule_add(deny_port("10.9.0.0/16", 80)).is_err());
    assert_eq!(f.saved(), saved);
    assert_eq!(f.driver.record.lock().unwrap().rules, enforced);

    // A rule naming a network applies while the network exists.
    engine
        .network_create(NetworkSpec::named("db"))
        .await
        .unwrap();
    let mut scoped = deny_port("0.0.0.0/0", 5432);
    scoped.rule.network = Some("db".into());
    let scoped = engine.rule_add(scoped).unwrap();
    assert_eq!(f.driver.record.lock().unwrap().rules.len(), 3);
    engine.network_rm("db").await.unwrap();
    assert_eq!(f.driver.record.lock().unwrap().rules.len(), 2);
    assert!(!engine.rule_ls()[2].active);
    engine.rule_rm(scoped.id).unwrap();
    drop(engine);

    // A restart puts the same rules in force, in the same order.
    f.driver.record.lock().unwrap().rules.clear();
    let engine = f.engine().await;
    assert_eq!(f.driver.record.lock().unwrap().rules, enforced);
    assert_eq!(engine.status().unwrap().user_rules.len(), 2);
}
