//! Networks: create (subnet and gateway chosen or checked), remove.

use anyhow::{Result, bail};

use super::{DEFAULT_BRIDGE, DEFAULT_NETWORK, Engine, check_name, fault_point, random_u64};
use crate::{
    api::NetworkSpec,
    cidr::{Cidr, Cidr6},
    host::Host,
    ipam,
    state::{GatewayMode, Network, NetworkIpv6, Pending},
};

impl<H: Host> Engine<H> {
    pub async fn network_create(&mut self, spec: NetworkSpec) -> Result<Network> {
        if spec.wants_ipv6() && self.state.host_id.is_none() {
            self.state.host_id = Some(format!("{:016x}{:016x}", random_u64(), random_u64()));
        }
        let net = self.plan_network(&spec).await?;
        // Intent first: a crash from here on is rolled back at start.
        self.state.networks.insert(
            net.name.clone(),
            Network {
                pending: Some(Pending::Creating),
                ..net.clone()
            },
        );
        self.save()?;
        fault_point("network-create:intent");
        let result = async {
            let mac = self
                .host
                .create_bridge(
                    &net.bridge,
                    net.mtu,
                    net.gateway,
                    net.bridge_prefix(),
                    net.bridge_ipv6(),
                )
                .await?;
            self.driver.add_network(&net, mac)?;
            fault_point("network-create:driver");
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = result {
            self.remove_network_objects(&net).await;
            self.state.networks.remove(&net.name);
            self.save()?;
            return Err(err);
        }
        self.state.next_network_id = net.id + 1;
        self.state.networks.insert(net.name.clone(), net.clone());
        self.save()?;
        self.rules_after_network_change();
        Ok(net)
    }

    /// Checks `spec` and fills in what it leaves to netd; touches nothing.
    async fn plan_network(&self, spec: &NetworkSpec) -> Result<Network> {
        check_name("network", &spec.name)?;
        if self.state.networks.contains_key(&spec.name) {
            return Err(crate::conflict!(
                "a network named {:?} already exists",
                spec.name
            ));
        }
        if matches!(spec.name.as_str(), "host" | "none") {
            return Err(crate::invalid!(
                "{:?} is a reserved network mode, not a network name",
                spec.name
            ));
        }
        let named: Vec<(String, Cidr)> = self
            .state
            .networks
            .values()
            .map(|n| (n.name.clone(), n.subnet))
            .collect();
        let subnet = match &spec.subnet {
            Some(net) => {
                let subnet = Cidr::from_net("--subnet", *net)?;
                ipam::check_subnet_free(&subnet, &named)?;
                subnet
            }
            None => {
                let mut taken: Vec<Cidr> = named.iter().map(|(_, c)| *c).collect();
                taken.extend(self.host.routed_subnets().await?);
                ipam::allocate_subnet(&taken)?
            }
        };
        let ip_range = match (&spec.ip_range, &spec.subnet) {
            (Some(range), Some(_)) => Some(ipam::check_ip_range(*range, &subnet)?),
            // Docker's words: a range needs the subnet it belongs to.
            (Some(range), None) => {
                return Err(crate::invalid!(
                    "no matching subnet for range {range}: pass --subnet with --ip-range"
                ));
            }
            (None, _) => None,
        };
        let gateway = match &spec.gateway {
            Some(g) => {
                let gateway = crate::cidr::ipv4("--gateway", *g)?;
                ipam::check_in_subnet("gateway", gateway, &subnet)?;
                gateway
            }
            // From the range when there is one, as Docker's IPAM does.
            None => ipam::allocate_ip(&subnet, ip_range.as_ref(), &Default::default())
                .map_err(|_| crate::invalid!("subnet {subnet} has no host addresses"))?,
        };
        let host_ip = match &spec.host_ip {
            Some(ip) => Some(crate::cidr::ipv4("--host-ip", *ip)?),
            None => None,
        };
        let mtu = spec.mtu.unwrap_or(1500);
        if !(576..=65535).contains(&mtu) {
            return Err(crate::invalid!("--mtu {mtu} is outside 576..65535"));
        }
        let bridge = match &spec.bridge {
            Some(name) => {
                check_interface_name(name)?;
                if let Some(net) = self.state.networks.values().find(|n| &n.bridge == name) {
                    return Err(crate::conflict!(
                        "bridge {name} is network {:?}'s already",
                        net.name
                    ));
                }
                if self.host.link_index(name).await?.is_some() {
                    return Err(crate::conflict!(
                        "an interface named {name} already exists on this host"
                    ));
                }
                name.clone()
            }
            None if spec.name == DEFAULT_NETWORK => DEFAULT_BRIDGE.to_owned(),
            None => format!("br-{:012x}", random_u64() & 0xffff_ffff_ffff),
        };
        let binding_ip = match &spec.binding_ip {
            Some(ip) => Some(crate::cidr::ipv4("host binding address", *ip)?),
            None => None,
        };
        let mut routed_cidrs = Vec::new();
        for net in &spec.routed_cidrs {
            let cidr = Cidr::from_net("routed CIDR", *net)?;
            if spec.internal {
                return Err(crate::invalid!(
                    "an internal network has no routed CIDRs (it reaches nothing outside)"
                ));
            }
            if routed_cidrs.contains(&cidr) {
                return Err(crate::invalid!("routed CIDR {cidr} is given twice"));
            }
            routed_cidrs.push(cidr);
        }
        let mode = spec.gateway_mode_ipv4;
        if mode == GatewayMode::Isolated && !spec.internal {
            // Docker's words.
            return Err(crate::invalid!(
                "gateway mode 'isolated' can only be used for an internal network"
            ));
        }
        let mut trusted_host_interfaces = Vec::new();
        for iface in &spec.trusted_host_interfaces {
            check_interface_name(iface)
                .map_err(|err| crate::invalid!("trusted host interface: {err:#}"))?;
            if mode != GatewayMode::Nat || spec.internal {
                // Docker ignores it there; saying so beats a silent no-op.
                return Err(crate::invalid!(
                    "a trusted host interface opens published ports of a nat network; \
                     this network is {}",
                    if spec.internal {
                        "internal".to_owned()
                    } else {
                        mode.to_string()
                    }
                ));
            }
            if !trusted_host_interfaces.contains(iface) {
                trusted_host_interfaces.push(iface.clone());
            }
        }
        let ipv6 = self.plan_ipv6(spec, mode)?;
        if mode == GatewayMode::Routed && spec.host_ip.is_some() {
            return Err(crate::invalid!(
                "--host-ip is the source of masquerade, which a routed network does not do"
            ));
        }
        Ok(Network {
            name: spec.name.clone(),
            id: self.state.next_network_id.max(1),
            subnet,
            gateway,
            ip_range,
            bridge,
            internal: spec.internal,
            icc: spec.icc,
            // As Docker: routed means no masquerade, whatever else was asked.
            masquerade: spec.masquerade && mode != GatewayMode::Routed,
            host_ip,
            mtu,
            binding_ip,
            docker_id: spec.docker_id.clone(),
            routed_cidrs,
            gateway_mode_ipv4: mode,
            trusted_host_interfaces,
            ipv6,
            pending: None,
        })
    }

    /// The IPv6 side of a network `spec` asks for one: its subnet given
    /// (checked against every network's) or the next /64 of the host's ULA
    /// prefix, its gateway given or the subnet's first host address.
    fn plan_ipv6(&self, spec: &NetworkSpec, mode: GatewayMode) -> Result<Option<NetworkIpv6>> {
        if !spec.ipv4 {
            return Err(crate::invalid!(
                "--ipv4=false: IPv6-only networks are not supported yet; every netd network \
                 has an IPv4 subnet (add --ipv6 for IPv6 beside it)"
            ));
        }
        if !spec.wants_ipv6() {
            return Ok(None);
        }
        if mode == GatewayMode::Routed && !spec.internal {
            return Err(crate::invalid!(
                "an IPv6 network in gateway mode routed is not supported yet"
            ));
        }
        let named: Vec<(String, Cidr6)> = self
            .state
            .networks
            .values()
            .filter_map(|n| n.ipv6.map(|v6| (n.name.clone(), v6.subnet)))
            .collect();
        let subnet = match spec.subnet6 {
            Some(net) => {
                let subnet = Cidr6::from_net("--subnet", net)?;
                ipam::check_subnet6_free(&subnet, &named)?;
                // The host's own prefix would take its address from it.
                if let Some(own) = self
                    .host_info
                    .local_addrs6
                    .iter()
                    .find(|ip| subnet.contains(**ip))
                {
                    return Err(crate::conflict!(
                        "subnet {subnet} holds this host's address {own}; choose another --subnet"
                    ));
                }
                subnet
            }
            None => {
                let host_id = self.state.host_id.as_deref().unwrap_or_default();
                let taken: Vec<Cidr6> = named.iter().map(|(_, c)| *c).collect();
                ipam::allocate_subnet6(&ipam::ula_prefix(host_id), &taken)?
            }
        };
        let gateway = match spec.gateway6 {
            Some(ip) => {
                let gateway = crate::cidr::ipv6("--gateway", ip)?;
                ipam::check_in_subnet6("gateway", gateway, &subnet)?;
                gateway
            }
            None => ipam::allocate_ip6(&subnet, &Default::default())?,
        };
        Ok(Some(NetworkIpv6 { subnet, gateway }))
    }

    /// The network Docker knows by `docker_id`.
    pub fn docker_network(&self, docker_id: &str) -> Result<&Network> {
        self.state
            .networks
            .values()
            .find(|n| n.pending.is_none() && n.docker_id.as_deref() == Some(docker_id))
            .ok_or_else(|| crate::not_found!("netd has no network for Docker network {docker_id}"))
    }

    /// Undoes a network in the kernel and the driver, whatever is left of
    /// it (every step is done already when its object is gone).
    pub(super) async fn remove_network_objects(&mut self, net: &Network) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(err) = self.driver.remove_network(net) {
            errors.push(format!("{err:#}"));
        }
        if let Err(err) = self.host.delete_link(&net.bridge).await {
            errors.push(format!("{err:#}"));
        }
        errors
    }

    pub async fn network_rm(&mut self, name: &str) -> Result<()> {
        // A remove that failed half-way may be retried: pending ones count.
        let net = self.state.networks.get(name).cloned().ok_or_else(|| {
            crate::not_found!("no network named {name:?} (see `netd network ls`)")
        })?;
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.attachments.iter().any(|a| a.network == name))
            .map(|c| c.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(crate::conflict!(
                "network {name:?} has containers attached ({}); remove them first",
                users.join(", ")
            ));
        }
        // Its bridge goes with the last veth of its removed containers.
        self.settle_dying(Some(name)).await;
        if let Some(net) = self.state.networks.get_mut(name) {
            net.pending = Some(Pending::Removing);
        }
        self.save()?;
        fault_point("network-rm:marked");
        let errors = self.remove_network_objects(&net).await;
        if !errors.is_empty() {
            // Still marked: the next `rm`, `netd repair`, start or `down` finishes it.
            bail!("removing network {name:?}: {}", errors.join("; "));
        }
        self.state.networks.remove(name);
        self.save()?;
        self.rules_after_network_change();
        // The bridge's addresses went with it: the host's address list now,
        // not when the event comes (a new network may take the prefix at once).
        if let Err(err) = self.sync_host().await {
            tracing::warn!("re-reading the host's addresses: {err:#}");
        }
        Ok(())
    }

    /// Rules naming a network apply while it exists. The network change
    /// itself is done: a failure here is logged (`netd repair` retries).
    fn rules_after_network_change(&mut self) {
        if self.state.rules.iter().any(|r| r.rule.network.is_some())
            && let Err(err) = self.sync_rules()
        {
            tracing::warn!(
                err = format!("{err:#}"),
                "user rules after a network change"
            );
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace.
pub(crate) fn check_interface_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(crate::invalid!(
            "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}
