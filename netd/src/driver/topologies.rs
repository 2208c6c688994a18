//! The topologies the netfilter datapaths' golden snapshots render (as
//! moby's iptabler and nftabler tests keep theirs): one per feature of
//! Docker's bridge driver netd renders, the same for iptables and nftables.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    portspec::Proto,
    rule::{ActiveRule, RuleAction, UserRule},
    state::{GatewayMode, Network, NetworkIpv6},
};

/// Networks, endpoints (address -> network), ports (host address, host
/// port, protocol, container address and port) and user rules, as a
/// netfilter driver holds them.
pub struct Topology {
    pub networks: Vec<Network>,
    pub endpoints: BTreeMap<IpAddr, String>,
    pub ports: Vec<(IpAddr, u16, u8, IpAddr, u16)>,
    pub rules: Vec<ActiveRule>,
}

impl Topology {
    fn new(
        networks: Vec<Network>,
        endpoints: &[(&str, &str)],
        ports: &[(&str, u16, Proto, &str, u16)],
    ) -> Self {
        Self {
            networks,
            endpoints: endpoints
                .iter()
                .map(|(addr, net)| (ip(addr), (*net).to_owned()))
                .collect(),
            ports: ports
                .iter()
                .map(|(host, port, proto, ctr, ctr_port)| {
                    (ip(host), *port, proto.number(), ip(ctr), *ctr_port)
                })
                .collect(),
            rules: Vec::new(),
        }
    }
}

fn network(name: &str, id: u32, subnet: &str, bridge: &str) -> Network {
    Network::for_tests(name, id, subnet, bridge)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn default_bridge_with_a_published_port() -> Topology {
    Topology::new(
        vec![network("bridge", 1, "172.17.0.0/16", "netd0")],
        &[("172.17.0.2", "bridge")],
        &[
            ("0.0.0.0", 8080, Proto::Tcp, "172.17.0.2", 80),
            ("0.0.0.0", 5353, Proto::Udp, "172.17.0.2", 53),
        ],
    )
}

pub fn icc_off_internal_and_unmasqueraded_networks() -> Topology {
    let no_icc = Network {
        icc: false,
        ..network("quiet", 2, "10.10.0.0/24", "br-quiet")
    };
    let internal = Network {
        internal: true,
        ..network("backend", 3, "10.20.0.0/24", "br-backend")
    };
    let routed = Network {
        masquerade: false,
        ..network("plain", 4, "10.30.0.0/24", "br-plain")
    };
    Topology::new(
        vec![no_icc, internal, routed],
        &[
            ("10.10.0.2", "quiet"),
            ("10.20.0.2", "backend"),
            ("10.30.0.2", "plain"),
        ],
        &[],
    )
}

pub fn hairpin_host_ip_bindings_and_a_networks_own_source_address() -> Topology {
    let own_source = Network {
        host_ip: Some("198.51.100.7".parse().unwrap()),
        binding_ip: Some("198.51.100.7".parse().unwrap()),
        ..network("web", 2, "10.40.0.0/24", "br-web")
    };
    Topology::new(
        vec![network("bridge", 1, "172.17.0.0/16", "netd0"), own_source],
        &[("172.17.0.2", "bridge"), ("10.40.0.2", "web")],
        &[
            ("127.0.0.1", 9090, Proto::Tcp, "172.17.0.2", 80),
            ("198.51.100.7", 8443, Proto::Tcp, "10.40.0.2", 443),
            ("0.0.0.0", 8080, Proto::Tcp, "172.17.0.2", 80),
        ],
    )
}

pub fn routed_cidrs_skip_masquerade() -> Topology {
    let pods = Network {
        routed_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..network("pods", 2, "10.244.1.0/24", "br-pods")
    };
    Topology::new(vec![pods], &[("10.244.1.2", "pods")], &[])
}

/// Docker 28's gateway modes: nat-unprotected (no raw drop, the bridge's
/// last rule accepts), routed (no masquerade, no DNAT, the container port
/// and ICMP accepted), isolated (internal rules only); and a nat network's
/// trusted host interfaces (past the raw drop).
pub fn gateway_modes() -> Topology {
    let trusting = Network {
        trusted_host_interfaces: vec!["eth1".into(), "wg0".into()],
        ..network("trusting", 5, "10.67.0.0/24", "br-trusting")
    };
    let unprotected = Network {
        gateway_mode_ipv4: GatewayMode::NatUnprotected,
        ..network("unprot", 2, "10.64.0.0/24", "br-unprot")
    };
    let routed = Network {
        gateway_mode_ipv4: GatewayMode::Routed,
        masquerade: false,
        ..network("routed", 3, "10.65.0.0/24", "br-routed")
    };
    let isolated = Network {
        gateway_mode_ipv4: GatewayMode::Isolated,
        internal: true,
        ..network("isol", 4, "10.66.0.0/24", "br-isol")
    };
    Topology::new(
        vec![unprotected, routed, isolated, trusting],
        &[
            ("10.67.0.2", "trusting"),
            ("10.64.0.2", "unprot"),
            ("10.65.0.2", "routed"),
            ("10.66.0.2", "isol"),
        ],
        &[
            ("0.0.0.0", 8080, Proto::Tcp, "10.64.0.2", 80),
            // `-p 8083:80` on the routed network: no host port.
            ("0.0.0.0", 0, Proto::Tcp, "10.65.0.2", 80),
            ("0.0.0.0", 8084, Proto::Tcp, "10.67.0.2", 80),
        ],
    )
}

/// Networks with IPv6 beside v4-only ones: the IPv6 rule set holds the
/// dual-stack networks alone, ports published on `[::]` too, no `::1`
/// twin of a 127.0.0.1 port, no routed pod CIDR, and no user rule naming
/// an IPv4 source.
pub fn dual_stack_networks() -> Topology {
    let dual = |net: Network, subnet: &str| {
        let subnet = crate::cidr::Cidr6::new(subnet.parse().unwrap(), 64).unwrap();
        let gateway = std::net::Ipv6Addr::from(u128::from(subnet.network()) + 1);
        Network {
            ipv6: Some(NetworkIpv6 { subnet, gateway }),
            ..net
        }
    };
    // Routed pod CIDRs are IPv4's: none of their rules in the IPv6 set.
    let web = dual(
        Network {
            routed_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..network("web", 2, "172.18.0.0/24", "br-web")
        },
        "fd00:18::",
    );
    let back = dual(
        Network {
            internal: true,
            ..network("back", 3, "172.19.0.0/24", "br-back")
        },
        "fd00:19::",
    );
    let quiet = dual(
        Network {
            icc: false,
            ..network("quiet", 4, "172.20.0.0/24", "br-quiet")
        },
        "fd00:20::",
    );
    let mut t = Topology::new(
        vec![
            network("bridge", 1, "172.17.0.0/16", "netd0"),
            web,
            back,
            quiet,
        ],
        &[
            ("172.17.0.2", "bridge"),
            ("172.18.0.2", "web"),
            ("fd00:18::2", "web"),
            ("172.19.0.2", "back"),
            ("fd00:19::2", "back"),
            ("172.20.0.2", "quiet"),
            ("fd00:20::2", "quiet"),
        ],
        &[
            ("0.0.0.0", 8080, Proto::Tcp, "172.18.0.2", 80),
            ("::", 8080, Proto::Tcp, "fd00:18::2", 80),
            ("127.0.0.1", 9090, Proto::Tcp, "172.18.0.2", 80),
            ("0.0.0.0", 5353, Proto::Udp, "172.20.0.2", 53),
            ("::", 5353, Proto::Udp, "fd00:20::2", 53),
        ],
    );
    t.rules = user_rules_in_order().rules;
    t
}

pub fn user_rules_in_order() -> Topology {
    let mut t = Topology::new(
        vec![network("bridge", 1, "172.17.0.0/16", "netd0")],
        &[("172.17.0.2", "bridge")],
        &[("0.0.0.0", 5432, Proto::Tcp, "172.17.0.2", 5432)],
    );
    let rule =
        |action, source: Option<&str>, proto, ports, network: bool, iface: Option<&str>| UserRule {
            action,
            source: source.map(|s| s.parse().unwrap()),
            proto,
            ports,
            network: network.then(|| "bridge".to_owned()),
            in_interface: iface.map(str::to_owned),
        };
    t.rules = [
        rule(
            RuleAction::Allow,
            Some("203.0.113.0/24"),
            Some(Proto::Tcp),
            Some((5432, 5432)),
            false,
            None,
        ),
        rule(
            RuleAction::Deny,
            None,
            Some(Proto::Tcp),
            Some((5432, 5432)),
            false,
            None,
        ),
        rule(
            RuleAction::Deny,
            Some("192.0.2.0/24"),
            None,
            None,
            true,
            Some("eth1"),
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(order, rule)| ActiveRule {
        order: order as u32,
        network: rule.network.as_ref().map(|_| (1, "netd0".to_owned())),
        rule,
    })
    .collect();
    t
}

/// One golden test per topology, rendered by the `render(Topology) ->
/// String` in scope: the snapshots keep the test names.
macro_rules! golden_tests {
    () => {
        golden_tests!(
            default_bridge_with_a_published_port,
            icc_off_internal_and_unmasqueraded_networks,
            hairpin_host_ip_bindings_and_a_networks_own_source_address,
            routed_cidrs_skip_masquerade,
            gateway_modes,
            user_rules_in_order,
            dual_stack_networks,
        );
    };
    ($($name:ident),+ $(,)?) => {$(
        #[test]
        fn $name() {
            insta::assert_snapshot!(render(crate::driver::topologies::$name()));
        }
    )+};
}
pub(crate) use golden_tests;
