//! Dual-stack networks: the IPv6 subnet from the host's ULA prefix or the
//! user's, addresses in order, and requests that must change nothing.

use super::*;

#[tokio::test]
async fn ipv6_networks_take_64s_of_the_hosts_ula_prefix_and_hand_out_addresses_in_order() {
    let f = Fixture::new("ipv6-pool");
    let mut engine = f.engine().await;
    assert_eq!(engine.state().networks["bridge"].ipv6, None, "as Docker's");
    let a = engine
        .network_create(NetworkSpec {
            ipv6: true,
            ..NetworkSpec::named("a")
        })
        .await
        .unwrap();
    let b = engine
        .network_create(NetworkSpec {
            ipv6: true,
            ..NetworkSpec::named("b")
        })
        .await
        .unwrap();
    let host_id = engine.state().host_id.clone().expect("made with the first");
    let pool = crate::ipam::ula_prefix(&host_id);
    let (a6, b6) = (a.ipv6.unwrap(), b.ipv6.unwrap());
    assert!(pool.overlaps(&a6.subnet) && pool.overlaps(&b6.subnet));
    assert_eq!(a6.subnet.prefix_len(), 64);
    assert!(!a6.subnet.overlaps(&b6.subnet));
    assert_eq!(u128::from(a6.gateway), u128::from(a6.subnet.network()) + 1);
    let first = engine
        .container_create(&container("c1", "a", &[]))
        .await
        .unwrap();
    let second = engine
        .container_create(&ContainerSpec {
            ip6: Some(
                format!("{}", Ipv6Addr::from(u128::from(a6.gateway) + 7))
                    .parse()
                    .unwrap(),
            ),
            ..container("c2", "a", &[])
        })
        .await
        .unwrap();
    assert_eq!(
        first.attachments[0].ip6,
        Some(Ipv6Addr::from(u128::from(a6.gateway) + 1))
    );
    assert_eq!(
        second.attachments[0].ip6,
        Some(Ipv6Addr::from(u128::from(a6.gateway) + 7))
    );
    // The same host ID after a restart: the pool does not move.
    drop(engine);
    let engine = f.engine().await;
    assert_eq!(engine.state().host_id.as_deref(), Some(host_id.as_str()));
}

#[tokio::test]
async fn bad_ipv6_requests_are_refused_and_change_nothing() {
    let f = Fixture::new("ipv6-bad");
    let mut engine = f.engine().await;
    engine
        .network_create(NetworkSpec {
            subnet6: Some("fd00:1::/64".parse().unwrap()),
            ..NetworkSpec::named("v6")
        })
        .await
        .unwrap();
    let before = engine.state().clone();
    let refusals: Vec<(NetworkSpec, &str)> = vec![
        (
            NetworkSpec {
                subnet6: Some("fd00::/16".parse().unwrap()),
                ..NetworkSpec::named("x")
            },
            "overlaps network \"v6\"",
        ),
        (
            NetworkSpec {
                subnet6: Some("fd00:2::/126".parse().unwrap()),
                ..NetworkSpec::named("x")
            },
            "too small",
        ),
        (
            NetworkSpec {
                subnet6: Some("10.9.0.0/16".parse().unwrap()),
                ..NetworkSpec::named("x")
            },
            "IPv4 prefix where an IPv6 prefix is expected",
        ),
        (
            NetworkSpec {
                subnet6: Some("fd00:3::/64".parse().unwrap()),
                gateway6: Some("fd00:4::1".parse().unwrap()),
                ..NetworkSpec::named("x")
            },
            "gateway fd00:4::1 is not a usable address of subnet fd00:3::/64",
        ),
        (
            NetworkSpec {
                ipv6: true,
                gateway: Some("fd00:4::1".parse().unwrap()),
                ..NetworkSpec::named("x")
            },
            "IPv6 address where an IPv4 address is expected",
        ),
    ];
    for (spec, expected) in refusals {
        let err = format!("{:#}", engine.network_create(spec).await.unwrap_err());
        assert!(err.contains(expected), "{err}");
    }
    for (spec, expected) in [
        (
            ContainerSpec {
                ip6: Some("fd00:1::5".parse().unwrap()),
                ..container("c", "bridge", &[])
            },
            "--ip6 fd00:1::5: network \"bridge\" has no IPv6",
        ),
        (
            ContainerSpec {
                ip6: Some("fd00:1::1".parse().unwrap()),
                ..container("c", "v6", &[])
            },
            "address fd00:1::1 is already in use",
        ),
        (
            ContainerSpec {
                ip6: Some("10.0.0.5".parse().unwrap()),
                ..container("c", "v6", &[])
            },
            "IPv4 address where an IPv6 address is expected",
        ),
        (
            ContainerSpec {
                ip6: Some("fd00:9::5".parse().unwrap()),
                ..container("c", "v6", &[])
            },
            "not a usable address of subnet fd00:1::/64",
        ),
    ] {
        let err = format!("{:#}", engine.container_create(&spec).await.unwrap_err());
        assert!(err.contains(expected), "{err}");
    }
    assert_eq!(engine.state(), &before);
}
