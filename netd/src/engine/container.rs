//! Containers: create (namespace, veths, endpoints, ports), connect to and
//! disconnect from networks, remove. Every create records its intent first
//! and rolls back on failure.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{Engine, check_name, fault_point, format_mac, mac_for, new_veth_name};
use crate::{
    api::ContainerSpec,
    host::{DefaultRoutes, Host, VethIpv6, VethPlan},
    portspec::PortSpec,
    state::{Attachment, Container, Network, NetworkMode, Pending, PublishedPort, Sandbox},
};

/// A container interface's addresses: IPv4 always, IPv6 on a network with
/// IPv6.
#[derive(Clone, Copy, Debug)]
pub(super) struct Addresses {
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

/// The default routes a container gets from `net` (none on an internal
/// network, as Docker).
fn default_routes(net: &Network) -> DefaultRoutes {
    if net.internal {
        return DefaultRoutes::default();
    }
    DefaultRoutes {
        v4: Some(net.gateway),
        v6: net.ipv6.map(|v6| v6.gateway),
    }
}

/// When a removed container's veths are deleted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Veths {
    /// Before the call returns (a rollback, a repair).
    Now,
    /// In the background (`container rm`): see `dying`.
    InBackground,
}

impl<H: Host> Engine<H> {
    pub async fn container_create(&mut self, spec: &ContainerSpec) -> Result<Container> {
        let name = spec.name.as_str();
        check_name("container", name)?;
        if self.state.containers.contains_key(name) {
            return Err(crate::conflict!(
                "a container named {name:?} already exists"
            ));
        }
        if self.host.netns_exists(name) {
            return Err(crate::conflict!(
                "a network namespace named {name:?} already exists on this host"
            ));
        }
        let specs = &spec.publish;
        let mode = match spec.network.as_str() {
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            _ => NetworkMode::Bridge,
        };
        if mode != NetworkMode::Bridge
            && (!specs.is_empty() || spec.ip.is_some() || spec.ip6.is_some())
        {
            return Err(crate::invalid!(
                "--network {} takes neither -p nor --ip/--ip6 (the container has no address of its own)",
                spec.network
            ));
        }
        if mode != NetworkMode::Bridge && !spec.aliases.is_empty() {
            return Err(crate::invalid!(
                "--network {} takes no --alias (the container is on no network of netd's)",
                spec.network
            ));
        }
        // Intent first: the name, the namespace and every veth are recorded
        // before they exist, so a crash from here on is rolled back at start.
        let host_veth = new_veth_name();
        self.state.containers.insert(
            name.to_owned(),
            Container {
                name: name.to_owned(),
                mode: mode.clone(),
                attachments: Vec::new(),
                ports: Vec::new(),
                pending: Some(Pending::Creating),
                pending_links: vec![host_veth.clone()],
                sandbox: Sandbox::Netd,
            },
        );
        self.save()?;
        fault_point("container-create:intent");
        let result = self
            .container_create_inner(spec, mode, specs, &host_veth)
            .await;
        match result {
            Ok((container, publish_time)) => {
                self.state
                    .containers
                    .insert(name.to_owned(), container.clone());
                self.save()?;
                if !container.ports.is_empty() {
                    self.metrics.published(publish_time.as_secs_f64());
                }
                Ok(container)
            }
            Err(err) => {
                let partial = self.state.containers.get(name).cloned();
                if let Some(partial) = partial {
                    self.remove_container_objects(&partial, Veths::Now).await;
                }
                self.state.containers.remove(name);
                self.save()?;
                Err(err)
            }
        }
    }

    async fn container_create_inner(
        &mut self,
        spec: &ContainerSpec,
        mode: NetworkMode,
        specs: &[PortSpec],
        host_veth: &str,
    ) -> Result<(Container, Duration)> {
        let name = spec.name.as_str();
        let mut container = Container {
            name: name.to_owned(),
            mode: mode.clone(),
            attachments: Vec::new(),
            ports: Vec::new(),
            pending: None,
            pending_links: Vec::new(),
            sandbox: Sandbox::Netd,
        };
        if mode == NetworkMode::Host {
            self.host.name_current_netns(name)?;
            return Ok((container, Duration::ZERO));
        }
        // Validate everything before touching the kernel.
        let net = if mode == NetworkMode::Bridge {
            Some(self.network(&spec.network)?.clone())
        } else {
            None
        };
        if let Some(net) = &net {
            self.check_aliases(net, name, &spec.aliases)?;
            self.settle_dying_for(net, spec.ip).await;
        }
        let address = match &net {
            Some(net) => Some(Addresses {
                v4: self.pick_address(net, spec.ip)?,
                v6: self.pick_address6(net, spec.ip6)?,
            }),
            None => None,
        };
        if let (Some(net), Some(address)) = (&net, address) {
            if net.internal && !specs.is_empty() {
                return Err(crate::invalid!(
                    "network {:?} is internal: its containers cannot publish ports",
                    net.name
                ));
            }
            container.ports = self.resolve_ports(net, specs, address.v4, address.v6)?;
        }

        self.host.create_netns(name).await?;
        let (Some(net), Some(address)) = (net, address) else {
            return Ok((container, Duration::ZERO));
        };

        let netns = self.host.netns_path(name);
        let mut attachment = self
            .wire(&netns, &net, address, "eth0", host_veth, true)
            .await?;
        attachment.aliases = spec.aliases.clone();
        attachment.gw_priority = spec.gw_priority;
        // From here the rollback must also undo the endpoint and the ports.
        if let Some(c) = self.state.containers.get_mut(name) {
            c.attachments.push(attachment.clone());
            c.ports = container.ports.clone();
        }
        let started = Instant::now();
        self.driver.publish(&container.ports)?;
        let publish_time = started.elapsed();
        fault_point("container-create:published");
        container.attachments.push(attachment);
        Ok((container, publish_time))
    }

    /// Undoes a container in the driver and the kernel, whatever is left of
    /// it: ports, endpoints, veths (made or only planned), the namespace.
    /// Each step is done already when its object is gone; the errors of the
    /// others are returned, after every step was tried. `veths`: whether
    /// the veths of a namespace netd made may go in the background.
    pub(super) async fn remove_container_objects(
        &mut self,
        container: &Container,
        veths: Veths,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let mut leftovers = Vec::new();
        match self
            .driver
            .retire_container(&container.ports, &container.attachments)
        {
            Ok(after) => leftovers.push(after),
            Err(err) => errors.push(format!("{err:#}")),
        }
        fault_point("container-rm:unpublished");
        for att in &container.attachments {
            if let Ok(net) = self.network(&att.network)
                && !self.tearing_down
            {
                for ip in std::iter::once(IpAddr::from(att.ip)).chain(att.ip6.map(IpAddr::from)) {
                    if let Err(err) = self.host.forget_neighbour(&net.bridge, ip).await {
                        errors.push(format!("{err:#}"));
                    }
                }
            }
        }
        let links: Vec<String> = container
            .attachments
            .iter()
            .map(|a| &a.host_veth)
            .chain(&container.pending_links)
            .cloned()
            .collect();
        // A runtime's sandbox is the runtime's to remove: its veths go
        // before the runtime deletes the namespace.
        let netd_sandbox = container.sandbox.is_netd();
        if netd_sandbox && let Err(err) = self.host.delete_netns(&container.name) {
            errors.push(format!("{err:#}"));
        }
        if netd_sandbox && veths == Veths::InBackground {
            self.delete_links_in_background(container, links, leftovers);
            return errors;
        }
        for link in &links {
            if let Err(err) = self.host.delete_link(link).await {
                errors.push(format!("{err:#}"));
            }
        }
        leftovers.into_iter().for_each(|after| after());
        errors
    }

    /// Records in the container's intent a veth about to be created.
    pub(super) fn plan_link(&mut self, name: &str, link: &str) -> Result<()> {
        if let Some(c) = self.state.containers.get_mut(name) {
            c.pending_links.push(link.to_owned());
        }
        self.save()
    }

    /// A veth `host_veth` from `net`'s bridge into container `name` as
    /// `ifname`, with `address`, registered with the driver. The caller has
    /// recorded `host_veth` in the container's intent; on failure, deleting
    /// it removes the peer too.
    pub(super) async fn wire(
        &mut self,
        netns: &Path,
        net: &Network,
        addresses: Addresses,
        ifname: &str,
        host_veth: &str,
        default_route: bool,
    ) -> Result<Attachment> {
        let address = addresses.v4;
        let mac = mac_for(address);
        let host_index = self
            .host
            .create_veth(&VethPlan {
                netns,
                bridge: &net.bridge,
                gateway: net.gateway,
                host_veth,
                ifname,
                address,
                prefix_len: net.subnet.prefix_len(),
                mac,
                mtu: net.mtu,
                ipv6: net.ipv6.zip(addresses.v6).map(|(v6, address)| VethIpv6 {
                    address,
                    prefix_len: v6.subnet.prefix_len(),
                    gateway: v6.gateway,
                }),
            })
            .await?;
        let attachment = Attachment {
            network: net.name.clone(),
            ip: address,
            ip6: addresses.v6,
            mac: format_mac(mac),
            ifname: ifname.to_owned(),
            host_veth: host_veth.to_owned(),
            aliases: Vec::new(),
            gw_priority: 0,
        };
        self.driver
            .add_endpoint(net, &attachment, host_index, mac)?;
        fault_point("container-create:endpoint");
        // Up last: its gratuitous ARP (arp_notify) must find the host side
        // bridged and the datapath ready, or neighbours keep a stale MAC.
        // As Docker: no default route on an internal network.
        let routes = match default_route {
            true => default_routes(net),
            false => DefaultRoutes::default(),
        };
        if let Err(err) = self.host.finish_veth(netns, ifname, routes).await {
            // The caller deletes the veth; the endpoint is ours to undo.
            let _ = self.driver.remove_endpoint(&attachment);
            return Err(err);
        }
        Ok(attachment)
    }

    /// The attachment whose network gives the default route: of those with
    /// a gateway (not internal), the highest `--gw-priority`, the first
    /// attached among equals.
    fn default_gateway<'a>(&self, attachments: &'a [Attachment]) -> Option<&'a Attachment> {
        attachments
            .iter()
            .filter(|a| self.network(&a.network).is_ok_and(|n| !n.internal))
            .rev()
            .max_by_key(|a| a.gw_priority)
    }

    /// The default routes `attachments` give, per family: IPv4 from
    /// [`default_gateway`](Self::default_gateway), IPv6 the same way among
    /// the networks with IPv6 (Docker chooses each family's gateway apart).
    pub(super) fn routes_of(&self, attachments: &[Attachment]) -> DefaultRoutes {
        let v6_networks: Vec<Attachment> = attachments
            .iter()
            .filter(|a| self.network(&a.network).is_ok_and(|n| n.ipv6.is_some()))
            .cloned()
            .collect();
        let gateway_of = |a: Option<&Attachment>| a.and_then(|a| self.network(&a.network).ok());
        DefaultRoutes {
            v4: gateway_of(self.default_gateway(attachments)).map(|n| n.gateway),
            v6: gateway_of(self.default_gateway(&v6_networks))
                .and_then(|n| n.ipv6.map(|v6| v6.gateway)),
        }
    }

    /// The routes that change from `before` to `after` (each family's new
    /// gateway, where it has one and it is another).
    fn routes_moved(&self, before: &[Attachment], after: &[Attachment]) -> DefaultRoutes {
        let (was, now) = (self.routes_of(before), self.routes_of(after));
        DefaultRoutes {
            v4: now.v4.filter(|gw| was.v4 != Some(*gw)),
            v6: now.v6.filter(|gw| was.v6 != Some(*gw)),
        }
    }

    /// Refuses aliases the resolver could not serve: on the default
    /// network (no names there, as Docker's), malformed, or already a name
    /// or alias of another container on `net`.
    fn check_aliases(&self, net: &Network, container: &str, aliases: &[String]) -> Result<()> {
        if aliases.is_empty() {
            return Ok(());
        }
        if net.name == super::DEFAULT_NETWORK {
            return Err(crate::invalid!(
                "--alias: network {:?} has no name resolution (as Docker's default bridge); \
                 use a network you create",
                net.name
            ));
        }
        for (i, alias) in aliases.iter().enumerate() {
            if !crate::dns::is_host_name(alias) {
                return Err(crate::invalid!(
                    "--alias {alias:?} is not a host name (letters, digits, '-', '_', dot-separated labels)"
                ));
            }
            if aliases[..i].iter().any(|a| a.eq_ignore_ascii_case(alias)) {
                return Err(crate::invalid!("--alias {alias:?} is given twice"));
            }
            let taken_by = self.state.live_containers().find(|c| {
                c.name != container
                    && c.attachments.iter().any(|a| {
                        a.network == net.name
                            && (c.name.eq_ignore_ascii_case(alias)
                                || a.aliases.iter().any(|x| x.eq_ignore_ascii_case(alias)))
                    })
            });
            if let Some(other) = taken_by {
                return Err(crate::conflict!(
                    "alias {alias:?} is taken on network {:?} (by container {:?})",
                    net.name,
                    other.name
                ));
            }
        }
        Ok(())
    }

    /// `netd network connect NET CONTAINER`: one more interface (ethN).
    pub async fn network_connect(
        &mut self,
        network: &str,
        name: &str,
        ip: Option<IpAddr>,
        ip6: Option<IpAddr>,
        aliases: &[String],
        gw_priority: i32,
    ) -> Result<Attachment> {
        let container = self.container(name)?.clone();
        if container.mode != NetworkMode::Bridge {
            return Err(crate::invalid!(
                "container {name:?} uses --network {:?}: it cannot join other networks",
                container.mode
            ));
        }
        if container.attachments.iter().any(|a| a.network == network) {
            return Err(crate::conflict!(
                "container {name:?} is already connected to network {network:?}"
            ));
        }
        let net = self.network(network)?.clone();
        self.check_aliases(&net, name, aliases)?;
        self.settle_dying_for(&net, ip).await;
        let address = Addresses {
            v4: self.pick_address(&net, ip)?,
            v6: self.pick_address6(&net, ip6)?,
        };
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !container.attachments.iter().any(|a| &a.ifname == n))
            .expect("an unused ethN exists");
        let host_veth = new_veth_name();
        self.plan_link(name, &host_veth)?;
        fault_point("network-connect:planned");
        let netns = self.host.netns_path(name);
        // The default route is set below, once the interface is there.
        let mut result = self
            .wire(&netns, &net, address, &ifname, &host_veth, false)
            .await;
        if let Ok(attachment) = &mut result {
            attachment.aliases = aliases.to_vec();
            attachment.gw_priority = gw_priority;
            let mut all = container.attachments.clone();
            all.push(attachment.clone());
            let moved = self.routes_moved(&container.attachments, &all);
            if moved != DefaultRoutes::default()
                && let Err(err) = self.host.set_default_route(&netns, moved).await
            {
                let _ = self.driver.remove_endpoint(attachment);
                result = Err(err);
            }
        }
        let entry = self.state.containers.get_mut(name).expect("checked above");
        entry.pending_links.retain(|l| l != &host_veth);
        match result {
            Ok(attachment) => {
                fault_point("network-connect:wired");
                entry.attachments.push(attachment.clone());
                self.save()?;
                Ok(attachment)
            }
            Err(err) => {
                // A driver that failed half-way in add_endpoint keeps nothing.
                let partial = Attachment {
                    network: net.name.clone(),
                    ip: address.v4,
                    ip6: address.v6,
                    mac: String::new(),
                    ifname,
                    host_veth: host_veth.clone(),
                    aliases: Vec::new(),
                    gw_priority: 0,
                };
                let _ = self.driver.remove_endpoint(&partial);
                let _ = self.host.delete_link(&host_veth).await;
                // A default route replaced before the failure went with
                // the interface: the ones before the connect come back.
                let before = self.routes_of(&container.attachments);
                let _ = self.host.set_default_route(&netns, before).await;
                self.save()?;
                Err(err)
            }
        }
    }

    /// `netd network disconnect NET CONTAINER`: the interface goes, and with
    /// it the ports published to that address.
    pub async fn network_disconnect(&mut self, network: &str, name: &str) -> Result<()> {
        let container = self.container(name)?.clone();
        let Some(att) = container
            .attachments
            .iter()
            .find(|a| a.network == network)
            .cloned()
        else {
            return Err(crate::not_found!(
                "container {name:?} is not connected to network {network:?}"
            ));
        };
        let (gone, kept): (Vec<PublishedPort>, Vec<PublishedPort>) = container
            .ports
            .iter()
            .cloned()
            .partition(|p| p.container_ip == att.ip);
        self.driver.unpublish(&gone)?;
        self.driver.remove_endpoint(&att)?;
        self.host.delete_link(&att.host_veth).await?;
        let bridge = self.network(network)?.bridge.clone();
        self.host.forget_neighbour(&bridge, att.ip.into()).await?;
        if let Some(ip6) = att.ip6 {
            self.host.forget_neighbour(&bridge, ip6.into()).await?;
        }
        let remaining: Vec<Attachment> = container
            .attachments
            .iter()
            .filter(|a| a.network != network)
            .cloned()
            .collect();
        // A default route that went with the interface: the next network
        // by priority gives it.
        let moved = self.routes_moved(&container.attachments, &remaining);
        if moved != DefaultRoutes::default() {
            let netns = self.host.netns_path(name);
            let _ = self.host.set_default_route(&netns, moved).await;
        }
        let entry = self.state.containers.get_mut(name).expect("checked above");
        entry.attachments = remaining;
        entry.ports = kept;
        self.save()
    }

    pub async fn container_rm(&mut self, name: &str) -> Result<()> {
        let container = self.container(name)?.clone();
        // Marked first: whatever fails below, the next `rm`, `netd repair`,
        // start or `down` finishes the job.
        if let Some(c) = self.state.containers.get_mut(name) {
            c.pending = Some(Pending::Removing);
        }
        self.save()?;
        fault_point("container-rm:marked");
        let errors = self
            .remove_container_objects(&container, Veths::InBackground)
            .await;
        if !errors.is_empty() {
            self.start_deletions();
            bail!("removing container {name:?}: {}", errors.join("; "));
        }
        self.state.containers.remove(name);
        let saved = self.save();
        // Once the state names the veths: a crash while they go is
        // finished at the next start.
        self.start_deletions();
        saved
    }
}
