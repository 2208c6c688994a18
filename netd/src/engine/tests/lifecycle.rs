//! Networks and containers: pools, addresses, ports, rollback at every
//! step, the state across restarts, bad requests.

use super::*;

#[tokio::test]
async fn networks_get_docker_pools_in_order_skipping_routed_ones() {
    let f = Fixture::new("pools");
    f.host
        .kernel()
        .routes
        .push("172.18.0.0/16".parse().unwrap());
    let mut engine = f.engine().await;
    // The default network took 172.17.0.0/16; 172.18/16 is routed elsewhere.
    assert_eq!(
        engine.state().networks["bridge"].subnet.to_string(),
        "172.17.0.0/16"
    );
    let web = engine
        .network_create(NetworkSpec::named("web"))
        .await
        .unwrap();
    assert_eq!(web.subnet.to_string(), "172.19.0.0/16");
    assert_eq!(web.gateway, ip("172.19.0.1"));
    let err = engine
        .network_create(NetworkSpec {
            subnet: Some("172.19.128.0/17".parse().unwrap()),
            ..NetworkSpec::named("db")
        })
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("overlaps"),
        "unexpected error: {err:#}"
    );
    assert!(!engine.state().networks.contains_key("db"));
    assert!(f.driver.record.lock().unwrap().networks.contains("web"));
}

#[tokio::test]
async fn addresses_are_unique_across_restarts() {
    let f = Fixture::new("addresses");
    let mut first = Vec::new();
    {
        let mut engine = f.engine().await;
        for name in ["a", "b"] {
            let c = engine
                .container_create(&container(name, "bridge", &[]))
                .await
                .unwrap();
            first.push(c.attachments[0].ip);
        }
    }
    assert_eq!(first, [ip("172.17.0.2"), ip("172.17.0.3")]);
    // A new daemon on the saved state: the next container gets a new address.
    let mut engine = f.engine().await;
    let c = engine
        .container_create(&container("c", "bridge", &[]))
        .await
        .unwrap();
    assert_eq!(c.attachments[0].ip, ip("172.17.0.4"));
    // An explicit address already taken is refused.
    let err = engine
        .container_create(&ContainerSpec {
            ip: Some("172.17.0.3".parse().unwrap()),
            ..container("d", "bridge", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "address 172.17.0.3 is already in use on network \"bridge\""
    );
}

#[tokio::test]
async fn an_ip_range_gives_dynamic_addresses_and_static_ones_go_anywhere() {
    let f = Fixture::new("ip-range");
    let mut engine = f.engine().await;
    let ranged = |name: &str, range: &str, subnet: Option<&str>| NetworkSpec {
        subnet: subnet.map(|s| s.parse().unwrap()),
        ip_range: Some(range.parse().unwrap()),
        ..NetworkSpec::named(name)
    };
    // Bad ranges are refused in Docker's words, and nothing is made.
    for (spec, expected) in [
        (
            ranged("r", "10.9.0.0/24", Some("10.8.0.0/16")),
            "invalid ip-range 10.9.0.0/24: parent subnet 10.8.0.0/16 doesn't contain ip-range",
        ),
        (
            ranged("r", "10.8.5.1/24", Some("10.8.0.0/16")),
            "invalid ip-range 10.8.5.1/24: it should be 10.8.5.0/24",
        ),
        (
            ranged("r", "10.8.5.0/24", None),
            "no matching subnet for range 10.8.5.0/24: pass --subnet with --ip-range",
        ),
    ] {
        let err = engine.network_create(spec).await.unwrap_err();
        assert_eq!(format!("{err:#}"), expected);
        assert!(!engine.state().networks.contains_key("r"));
    }
    // The gateway comes from the range, as Docker's IPAM picks it.
    let net = engine
        .network_create(ranged("r", "10.8.5.0/30", Some("10.8.0.0/16")))
        .await
        .unwrap();
    assert_eq!(net.gateway, ip("10.8.5.0"));
    let mut got = Vec::new();
    for name in ["a", "b", "c"] {
        let c = engine
            .container_create(&container(name, "r", &[]))
            .await
            .unwrap();
        got.push(c.attachments[0].ip);
    }
    assert_eq!(got, [ip("10.8.5.1"), ip("10.8.5.2"), ip("10.8.5.3")]);
    let err = engine
        .container_create(&container("d", "r", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "no free address left in ip-range 10.8.5.0/30"
    );
    // A static address outside the range, inside the subnet.
    let e = engine
        .container_create(&ContainerSpec {
            ip: Some("10.8.200.7".parse().unwrap()),
            ..container("e", "r", &[])
        })
        .await
        .unwrap();
    assert_eq!(e.attachments[0].ip, ip("10.8.200.7"));
    // Kept across a restart.
    drop(engine);
    let engine = f.engine().await;
    assert_eq!(
        engine.state().networks["r"].ip_range,
        Some("10.8.5.0/30".parse().unwrap())
    );
}

#[tokio::test]
async fn gateway_modes_are_checked_and_routed_ports_have_no_host_port() {
    let f = Fixture::new("gateway-modes");
    let mut engine = f.engine().await;
    let moded = |name: &str, mode: GatewayMode| NetworkSpec {
        gateway_mode_ipv4: mode,
        ..NetworkSpec::named(name)
    };
    let err = engine
        .network_create(moded("i", GatewayMode::Isolated))
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "gateway mode 'isolated' can only be used for an internal network"
    );
    assert!(!engine.state().networks.contains_key("i"));
    let isolated = engine
        .network_create(NetworkSpec {
            internal: true,
            ..moded("i", GatewayMode::Isolated)
        })
        .await
        .unwrap();
    assert!(!isolated.gateway_on_bridge());
    // Routed: no masquerade, and `-p` opens the container port alone, the
    // host port ignored (as Docker); two containers may open the same port.
    let routed = engine
        .network_create(moded("r", GatewayMode::Routed))
        .await
        .unwrap();
    assert!(!routed.masquerade);
    for name in ["a", "b"] {
        let c = engine
            .container_create(&container(name, "r", &["8083:80", "127.0.0.1:9000:80"]))
            .await
            .unwrap();
        assert_eq!(c.ports.len(), 1, "{:?}", c.ports);
        let p = &c.ports[0];
        assert!(p.is_direct());
        assert_eq!(
            (p.host_ip, p.container_ip, p.container_port),
            (Ipv4Addr::UNSPECIFIED, c.attachments[0].ip, 80)
        );
    }
    // The host port stays free for a nat network's container.
    engine
        .container_create(&container("n", "bridge", &["8083:80"]))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_taken_host_port_is_refused_and_changes_nothing() {
    let f = Fixture::new("ports");
    let mut engine = f.engine().await;
    engine
        .container_create(&container("web", "bridge", &["8080:80", "53:53/udp"]))
        .await
        .unwrap();
    let before = f.saved();
    for publish in ["8080:80", "127.0.0.1:8080:80", "8079-8081:80-82"] {
        let err = engine
            .container_create(&container("other", "bridge", &[publish]))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("host port ")
                && format!("{err:#}").contains(":8080/tcp is already published (by 172.17.0.2:80)"),
            "{publish}: {err:#}"
        );
        assert_eq!(f.saved(), before, "{publish} changed the state");
        assert!(!f.host.kernel().namespaces.contains_key("other"));
    }
    // Another protocol, or another host address than a specific one, is free.
    engine
        .container_create(&container("dns", "bridge", &["8080:80/udp"]))
        .await
        .unwrap();
    // Ephemeral host ports never collide.
    let a = engine
        .container_create(&container("e1", "bridge", &["80"]))
        .await
        .unwrap();
    let b = engine
        .container_create(&container("e2", "bridge", &["80"]))
        .await
        .unwrap();
    assert_eq!(a.ports[0].host_port, 49153);
    assert_eq!(b.ports[0].host_port, 49154);
    assert_eq!(f.driver.record.lock().unwrap().ports.len(), 5);
}

/// A failure at any step of a create leaves nothing behind: no state
/// entry, no namespace, no veth, no endpoint, no port.
#[tokio::test]
async fn a_failed_create_is_rolled_back_at_every_step() {
    for (place, step) in [
        ("host", "create_netns"),
        ("host", "create_veth"),
        ("driver", "add_endpoint"),
        ("host", "finish_veth"),
        ("driver", "publish"),
    ] {
        let f = Fixture::new(&format!("rollback-{step}"));
        let mut engine = f.engine().await;
        let before = f.saved();
        match place {
            "host" => f.host.kernel().fail_next = Some(step),
            _ => f.driver.record.lock().unwrap().fail_next = Some(step),
        }
        let err = engine
            .container_create(&container("web", "bridge", &["8080:80"]))
            .await
            .unwrap_err();
        assert_eq!(format!("{err:#}"), format!("{step} failed (injected)"));
        assert_eq!(f.saved(), before, "{step}: state changed");
        {
            let kernel = f.host.kernel();
            assert!(kernel.namespaces.is_empty(), "{step}: {kernel:?}");
            assert!(kernel.veths.is_empty(), "{step}: {kernel:?}");
            let record = f.driver.record.lock().unwrap();
            assert!(record.endpoints.is_empty(), "{step}: {record:?}");
            assert!(record.ports.is_empty(), "{step}: {record:?}");
        }
        // The name, address and port are free again.
        let c = engine
            .container_create(&container("web", "bridge", &["8080:80"]))
            .await
            .unwrap();
        assert_eq!(c.attachments[0].ip, ip("172.17.0.2"));
    }
}

#[tokio::test]
async fn a_failed_network_create_is_rolled_back() {
    let f = Fixture::new("net-rollback");
    let mut engine = f.engine().await;
    for (place, step) in [("host", "create_bridge"), ("driver", "add_network")] {
        match place {
            "host" => f.host.kernel().fail_next = Some(step),
            _ => f.driver.record.lock().unwrap().fail_next = Some(step),
        }
        let err = engine
            .network_create(NetworkSpec::named("web"))
            .await
            .unwrap_err();
        assert_eq!(format!("{err:#}"), format!("{step} failed (injected)"));
        assert!(!f.saved().networks.contains_key("web"));
        assert_eq!(f.host.kernel().bridges.len(), 1, "only the default bridge");
        assert!(!f.driver.record.lock().unwrap().networks.contains("web"));
    }
}

#[tokio::test]
async fn state_round_trips_and_an_interrupted_create_is_rolled_back_at_start() {
    let f = Fixture::new("restart");
    {
        let mut engine = f.engine().await;
        engine
            .network_create(NetworkSpec {
                internal: true,
                icc: false,
                mtu: Some(1400),
                ..NetworkSpec::named("db")
            })
            .await
            .unwrap();
        engine
            .container_create(&container("web", "bridge", &["8080:80"]))
            .await
            .unwrap();
    }
    let saved = f.saved();
    // What a crash after the intent record leaves: a container marked
    // creating, its veth planned and made, its namespace made.
    let mut crashed = saved.clone();
    let mut half = crashed.containers["web"].clone();
    half.name = "half".into();
    half.pending = Some(Pending::Creating);
    half.pending_links = vec!["vethdead".into()];
    half.attachments.clear();
    half.ports.clear();
    crashed.containers.insert("half".into(), half);
    crashed.save(&f.dir).unwrap();
    f.host
        .kernel()
        .namespaces
        .insert("half".into(), BTreeSet::new());
    f.host
        .kernel()
        .veths
        .insert("vethdead".into(), "netd0".into());

    let mut engine = f.engine().await;
    assert_eq!(
        f.saved(),
        saved,
        "the state after the roll-back is the one before"
    );
    assert!(!f.host.kernel().namespaces.contains_key("half"));
    assert!(!f.host.kernel().veths.contains_key("vethdead"));
    let Reply::Status(status) = engine.handle(Request::Status).await.unwrap() else {
        panic!("status is not a status reply");
    };
    assert_eq!(
        status.repairs,
        ["container half: an interrupted create was rolled back"]
    );
    assert_eq!((status.networks, status.containers), (2, 1));
    assert_eq!(status.published_ports, 1);
}

#[tokio::test]
async fn a_vanished_namespace_frees_its_address_and_ports_on_repair() {
    let f = Fixture::new("vanished");
    let mut engine = f.engine().await;
    engine
        .container_create(&container("web", "bridge", &["8080:80"]))
        .await
        .unwrap();
    f.host.kernel().namespaces.remove("web");
    let repairs = engine.reconcile().await.unwrap();
    assert_eq!(
        repairs,
        [
            "container web: its namespace is gone; removed (addresses [172.17.0.2] and ports [0.0.0.0:8080/tcp] freed)"
        ]
    );
    assert!(f.driver.record.lock().unwrap().ports.is_empty());
    let c = engine
        .container_create(&container("web2", "bridge", &["8080:80"]))
        .await
        .unwrap();
    assert_eq!(c.attachments[0].ip, ip("172.17.0.2"));
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let f = Fixture::new("bad");
    let mut engine = f.engine().await;
    let before = f.saved();
    let cases: Vec<(Request, &str)> = vec![
        (
            Request::NetworkCreate(NetworkSpec::named("bad name")),
            "invalid network name \"bad name\"",
        ),
        (
            Request::NetworkCreate(NetworkSpec::named("host")),
            "\"host\" is a reserved network mode",
        ),
        (
            Request::NetworkCreate(NetworkSpec {
                subnet: Some("10.1.2.3/16".parse().unwrap()),
                ..NetworkSpec::named("x")
            }),
            "10.1.2.3/16 is not a network address; did you mean 10.1.0.0/16?",
        ),
        (
            Request::NetworkCreate(NetworkSpec {
                mtu: Some(100),
                ..NetworkSpec::named("x")
            }),
            "--mtu 100 is outside 576..65535",
        ),
        (
            Request::ContainerCreate(container("c", "nope", &[])),
            "no network named \"nope\"",
        ),
        (
            // As a client could send it, past the CLI's parsing.
            Request::ContainerCreate(ContainerSpec {
                publish: vec![PortSpec {
                    host_ports: Some((0, 0)),
                    ..PortSpec::parse("80").unwrap()
                }],
                ..container("c", "bridge", &[])
            }),
            "port range 0-0 is not in 1-65535 or ends before it starts",
        ),
        (
            Request::ContainerCreate(container("c", "host", &["80:80"])),
            "--network host takes neither -p nor --ip",
        ),
        (
            Request::NetworkRm {
                name: "bridge".into(),
            },
            "",
        ),
    ];
    engine
        .container_create(&container("user", "bridge", &[]))
        .await
        .unwrap();
    let before_with_user = f.saved();
    for (request, expected) in cases {
        let err = engine.handle(request.clone()).await.unwrap_err();
        let err = format!("{err:#}");
        let expected = if expected.is_empty() {
            "network \"bridge\" has containers attached (user); remove them first"
        } else {
            expected
        };
        assert!(err.contains(expected), "{request:?}: {err}");
        assert_eq!(f.saved(), before_with_user, "{request:?} changed the state");
    }
    assert_ne!(before, before_with_user);
}
