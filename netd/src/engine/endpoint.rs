//! Endpoints of containers whose namespace a runtime owns (Docker): netd
//! makes the veth on the network's bridge and registers it with the
//! datapath; the runtime moves the container end into its sandbox and
//! configures it there. Each endpoint is one netd container record.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, anyhow};

use super::{Engine, check_name, container::Veths, format_mac, mac_for, new_veth_name};
use crate::{
    host::{Host, peer_name},
    portspec::PortSpec,
    state::{Attachment, Container, NetworkMode, Pending, PublishedPort, Sandbox},
};

/// An endpoint to create: `name` (the netd record), on `network`, with the
/// address the runtime's IPAM gave it.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// The runtime's IPv6 address for it, on a network with IPv6.
    pub ip6: Option<Ipv6Addr>,
    /// The runtime's choice, if it made one; else netd's (02:42 + address).
    pub mac: Option<[u8; 6]>,
    pub sandbox: Sandbox,
}

/// What the runtime needs to put the endpoint in its sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInterface {
    /// The container end, in the host namespace until the runtime moves it.
    pub peer: String,
    pub mac: [u8; 6],
    /// The default gateway (None on internal networks).
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 default gateway (None on internal networks and networks
    /// without IPv6).
    pub gateway6: Option<Ipv6Addr>,
}

impl<H: Host> Engine<H> {
    pub async fn endpoint_create(&mut self, spec: EndpointSpec) -> Result<EndpointInterface> {
        check_name("endpoint", &spec.name)?;
        // Endpoints whose sandbox is gone hold addresses and ports nobody
        // uses (dockerd restarted without deleting them): they go first.
        for removed in self.prune_stale_endpoints().await {
            tracing::warn!(%removed, "stale endpoint removed");
        }
        if self.state.containers.contains_key(&spec.name) {
            return Err(crate::conflict!(
                "an endpoint named {:?} already exists",
                spec.name
            ));
        }
        let net = self.network(&spec.network)?.clone();
        self.settle_dying_for(&net, Some(spec.ip.into())).await;
        let address = self.pick_address(&net, Some(spec.ip.into()))?;
        let address6 = self.pick_address6(&net, spec.ip6.map(Into::into))?;
        let mac = spec.mac.unwrap_or_else(|| mac_for(address));
        let host_veth = new_veth_name();
        // Intent first, as for containers: a crash from here is rolled back.
        self.state.containers.insert(
            spec.name.clone(),
            Container {
                name: spec.name.clone(),
                mode: NetworkMode::Bridge,
                attachments: Vec::new(),
                ports: Vec::new(),
                pending: Some(Pending::Creating),
                pending_links: vec![host_veth.clone()],
                sandbox: spec.sandbox.clone(),
            },
        );
        self.save()?;
        let attachment = Attachment {
            network: net.name.clone(),
            ip: address,
            ip6: address6,
            mac: format_mac(mac),
            ifname: peer_name(&host_veth),
            host_veth: host_veth.clone(),
            aliases: Vec::new(),
            gw_priority: 0,
        };
        let result = async {
            let index = self
                .host
                .create_runtime_veth(&net.bridge, &host_veth, net.mtu, mac)
                .await?;
            self.driver.add_endpoint(&net, &attachment, index, mac)?;
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = result {
            let _ = self.driver.remove_endpoint(&attachment);
            let _ = self.host.delete_link(&host_veth).await;
            self.state.containers.remove(&spec.name);
            self.save()?;
            return Err(err);
        }
        let entry = self.state.containers.get_mut(&spec.name).expect("inserted");
        entry.attachments.push(attachment);
        entry.pending = None;
        entry.pending_links.clear();
        self.save()?;
        Ok(EndpointInterface {
            peer: peer_name(&host_veth),
            mac,
            gateway: (!net.internal).then_some(net.gateway),
            gateway6: net.ipv6.filter(|_| !net.internal).map(|v6| v6.gateway),
        })
    }

    /// The runtime put the endpoint in its sandbox at `sandbox_key`.
    pub fn endpoint_join(&mut self, name: &str, sandbox_key: &str) -> Result<EndpointInterface> {
        let container = self.endpoint(name)?;
        let att = container
            .attachments
            .first()
            .ok_or_else(|| anyhow!("endpoint {name:?} has no interface"))?
            .clone();
        let net = self.network(&att.network)?;
        let gateway = (!net.internal).then_some(net.gateway);
        let gateway6 = net.ipv6.filter(|_| !net.internal).map(|v6| v6.gateway);
        let entry = self.state.containers.get_mut(name).expect("checked");
        if let Sandbox::Docker {
            sandbox_key: key, ..
        } = &mut entry.sandbox
        {
            *key = Some(sandbox_key.to_owned());
        }
        self.save()?;
        Ok(EndpointInterface {
            peer: att.ifname,
            mac: super::parse_mac(&att.mac)?,
            gateway,
            gateway6,
        })
    }

    /// Publishes `specs` to the endpoint's address, all or none.
    pub fn endpoint_publish(
        &mut self,
        name: &str,
        specs: &[PortSpec],
    ) -> Result<Vec<PublishedPort>> {
        let container = self.endpoint(name)?.clone();
        let att = container
            .attachments
            .first()
            .ok_or_else(|| anyhow!("endpoint {name:?} has no interface"))?;
        let net = self.network(&att.network)?.clone();
        if net.internal && !specs.is_empty() {
            return Err(crate::invalid!(
                "network {:?} is internal: its containers cannot publish ports",
                net.name
            ));
        }
        let ports = self.resolve_ports(&net, specs, att.ip, att.ip6)?;
        self.driver.publish(&ports)?;
        let entry = self.state.containers.get_mut(name).expect("checked");
        entry.ports.extend(ports.iter().cloned());
        if let Err(err) = self.save() {
            let _ = self.driver.unpublish(&ports);
            if let Some(entry) = self.state.containers.get_mut(name) {
                entry.ports.retain(|p| !ports.contains(p));
            }
            return Err(err);
        }
        Ok(ports)
    }

    /// Unpublishes every port of the endpoint.
    pub fn endpoint_unpublish(&mut self, name: &str) -> Result<()> {
        let ports = self.endpoint(name)?.ports.clone();
        self.driver.unpublish(&ports)?;
        self.state
            .containers
            .get_mut(name)
            .expect("checked")
            .ports
            .clear();
        self.save()
    }

    /// Removes the runtime endpoints whose sandbox (the namespace path the
    /// runtime gave at Join) no longer exists; returns what it removed.
    pub async fn prune_stale_endpoints(&mut self) -> Vec<String> {
        let stale: Vec<Container> = self
            .state
            .containers
            .values()
            .filter(|c| {
                c.sandbox
                    .runtime_netns()
                    .is_some_and(|ns| !self.host.is_live_netns(std::path::Path::new(ns)))
            })
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for container in stale {
            let errors = self.remove_container_objects(&container, Veths::Now).await;
            self.state.containers.remove(&container.name);
            removed.push(format!(
                "endpoint {}: its sandbox is gone; removed ({} freed{})",
                container.name,
                container
                    .attachments
                    .iter()
                    .map(|a| a.ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; {}", errors.join("; "))
                }
            ));
        }
        if !removed.is_empty()
            && let Err(err) = self.save()
        {
            removed.push(format!("saving the state: {err:#}"));
        }
        removed
    }

    /// A runtime's endpoint (not one of netd's own containers).
    pub fn endpoint(&self, name: &str) -> Result<&Container> {
        self.state
            .containers
            .get(name)
            .filter(|c| c.pending.is_none() && !c.sandbox.is_netd())
            .ok_or_else(|| crate::not_found!("netd has no endpoint {name:?}"))
    }
}
