//! CNI attachments (Podman, containerd, a kubelet): one interface of one
//! container on one network, in a namespace the runtime owns. netd makes
//! the veth, moves and configures its container end, and publishes the
//! runtime's port mappings; ADD, CHECK, DEL and GC are the CNI verbs.

use std::{collections::BTreeSet, path::Path};

use anyhow::Result;

use super::{
    Engine, check_name,
    container::{Addresses, Veths},
    network::check_interface_name,
    new_veth_name,
};
use crate::{
    api::{CniAttach, CniAttachment, CniDetach, CniNetwork, CniReady},
    cni::code,
    host::Host,
    state::{Container, Network, NetworkMode, Pending, Sandbox},
};

impl<H: Host> Engine<H> {
    /// ADD: the interface, its address, default route and ports. An ADD
    /// repeated for an attachment that exists in the same namespace answers
    /// what the first made.
    pub async fn cni_add(&mut self, req: &CniAttach) -> Result<CniAttachment> {
        check_name("CNI container ID", &req.container_id)?;
        check_interface_name(&req.ifname)?;
        let net = self.cni_network(&req.network, true).await?;
        for removed in self.prune_stale_endpoints().await {
            tracing::warn!(%removed, "stale endpoint removed");
        }
        if let Some(existing) = self.cni_record(&net.name, &req.container_id, &req.ifname) {
            if existing.sandbox.runtime_netns() == Some(req.netns.as_str()) {
                return self.cni_attachment(existing);
            }
            return Err(crate::conflict!(
                "container {} already has interface {} on network {} (in another namespace)",
                req.container_id,
                req.ifname,
                net.name
            ));
        }
        if !self.host.is_live_netns(Path::new(&req.netns)) {
            return Err(crate::error::coded(
                code::INVALID_ENVIRONMENT,
                format!("CNI_NETNS {} is not a network namespace", req.netns),
            ));
        }
        let name = record_name(&req.container_id, &req.ifname);
        if self.state.containers.contains_key(&name) {
            return Err(crate::conflict!(
                "netd already has a container named {name:?} (another container ID with the same first 12 characters)"
            ));
        }
        self.settle_dying_for(&net, req.ip).await;
        let address = self.pick_address(&net, req.ip)?;
        let address6 = self.pick_address6(&net, req.ip6)?;
        if net.internal && !req.ports.is_empty() {
            return Err(crate::invalid!(
                "network {:?} is internal: its containers cannot publish ports",
                net.name
            ));
        }
        let ports = self.resolve_ports(&net, &req.ports, address, address6)?;
        let host_veth = new_veth_name();
        // Intent first, as for containers: a crash from here is rolled back.
        self.state.containers.insert(
            name.clone(),
            Container {
                name: name.clone(),
                mode: NetworkMode::Bridge,
                attachments: Vec::new(),
                ports: Vec::new(),
                pending: Some(Pending::Creating),
                pending_links: vec![host_veth.clone()],
                sandbox: Sandbox::Cni {
                    container_id: req.container_id.clone(),
                    ifname: req.ifname.clone(),
                    netns: req.netns.clone(),
                },
            },
        );
        self.save()?;
        let netns = Path::new(&req.netns);
        let result = async {
            // Whatever a crashed ADD left under this name goes first.
            self.host.delete_container_link(netns, &req.ifname).await?;
            let mut attachment = self
                .wire(
                    netns,
                    &net,
                    Addresses {
                        v4: address,
                        v6: address6,
                    },
                    &req.ifname,
                    &host_veth,
                    true,
                )
                .await?;
            attachment.aliases = resolver_names(&net.name, &req.names);
            let entry = self.state.containers.get_mut(&name).expect("inserted");
            entry.attachments.push(attachment);
            entry.ports = ports.clone();
            self.driver.publish(&ports)
        }
        .await;
        if let Err(err) = result {
            let partial = self.state.containers.get(&name).cloned();
            if let Some(partial) = partial {
                self.remove_container_objects(&partial, Veths::Now).await;
            }
            self.state.containers.remove(&name);
            self.save()?;
            return Err(err);
        }
        let entry = self.state.containers.get_mut(&name).expect("inserted");
        entry.pending = None;
        entry.pending_links.clear();
        let entry = entry.clone();
        self.save()?;
        self.cni_attachment(&entry)
    }

    /// CHECK: the record, the host's veth on its bridge, the interface in
    /// the namespace with its address; an error names what differs.
    pub async fn cni_check(&mut self, req: &CniAttach) -> Result<CniAttachment> {
        let net = self.cni_network(&req.network, false).await?;
        let Some(record) = self
            .cni_record(&net.name, &req.container_id, &req.ifname)
            .cloned()
        else {
            return Err(crate::error::coded(
                code::UNKNOWN_CONTAINER,
                format!(
                    "netd has no interface {} of container {} on network {}",
                    req.ifname, req.container_id, net.name
                ),
            ));
        };
        let found = self.cni_attachment(&record)?;
        if found.netns != req.netns {
            return Err(crate::conflict!(
                "the interface is in namespace {}, not {}",
                found.netns,
                req.netns
            ));
        }
        if let Some(expected) = req.expect_ip
            && expected != found.ip
        {
            return Err(crate::conflict!(
                "the runtime holds address {expected}, netd gave {}",
                found.ip
            ));
        }
        if self.host.link_index(&found.host_veth).await?.is_none() {
            return Err(crate::not_found!(
                "the host side of the interface ({}) is gone; `netd repair` makes it again",
                found.host_veth
            ));
        }
        match self
            .host
            .container_addresses(Path::new(&found.netns), &found.ifname)
            .await?
        {
            None => Err(crate::not_found!(
                "interface {} is missing in namespace {}",
                found.ifname,
                found.netns
            )),
            Some(addrs) if !addrs.contains(&found.ip) => Err(crate::not_found!(
                "interface {} has lost its address {}",
                found.ifname,
                found.ip
            )),
            Some(_) => Ok(found),
        }
    }

    /// DEL: removes the attachment if netd has it; nothing to do is done.
    pub async fn cni_del(&mut self, req: &CniDetach) -> Result<()> {
        let Some(record) = self
            .cni_record(&req.network, &req.container_id, &req.ifname)
            .cloned()
        else {
            return Ok(());
        };
        self.container_rm(&record.name).await
    }

    /// GC: every attachment of `network` not in `valid` goes.
    pub async fn cni_gc(&mut self, network: &str, valid: &[CniDetach]) -> Result<Vec<String>> {
        let keep: BTreeSet<(&str, &str)> = valid
            .iter()
            .map(|v| (v.container_id.as_str(), v.ifname.as_str()))
            .collect();
        let stale: Vec<(String, String)> = self
            .state
            .containers
            .values()
            .filter(|c| c.attachments.iter().any(|a| a.network == network))
            .filter_map(|c| match &c.sandbox {
                Sandbox::Cni {
                    container_id,
                    ifname,
                    ..
                } if !keep.contains(&(container_id.as_str(), ifname.as_str())) => {
                    Some((c.name.clone(), format!("{container_id}/{ifname}")))
                }
                _ => None,
            })
            .collect();
        let mut removed = Vec::new();
        for (name, label) in stale {
            self.container_rm(&name).await?;
            removed.push(label);
        }
        Ok(removed)
    }

    /// STATUS: ADD can work when the network exists or may be made.
    pub async fn cni_status(&mut self, req: &CniNetwork) -> Result<CniReady> {
        let net = self.cni_network(req, false).await;
        match (net, &req.create) {
            (Ok(net), _) => Ok(CniReady { network: net.name }),
            (Err(_), Some(_)) => Ok(CniReady {
                network: req.network.clone(),
            }),
            (Err(err), None) => Err(err),
        }
    }

    /// The network a CNI request names: made from the conflist's options on
    /// first use when `create` is allowed and the conflist has them; if it
    /// exists, a subnet the conflist names must be its subnet.
    async fn cni_network(&mut self, req: &CniNetwork, create: bool) -> Result<Network> {
        match (self.network(&req.network), &req.create) {
            (Ok(net), Some(spec)) => {
                if let Some(subnet) = &spec.subnet
                    && crate::cidr::Cidr::from_net("subnet", *subnet).ok() != Some(net.subnet)
                {
                    return Err(crate::error::coded(
                        code::INVALID_NETWORK_CONFIG,
                        format!(
                            "the conflist gives network {} subnet {subnet}, netd has it as {}",
                            net.name, net.subnet
                        ),
                    ));
                }
                let has = net.ipv6.map(|v6| v6.subnet);
                if let Some(subnet6) = &spec.subnet6
                    && crate::cidr::Cidr6::from_net("subnet", *subnet6).ok() != has
                {
                    return Err(crate::error::coded(
                        code::INVALID_NETWORK_CONFIG,
                        format!(
                            "the conflist gives network {} IPv6 subnet {subnet6}, netd has {}",
                            net.name,
                            has.map_or("none".to_owned(), |s| s.to_string())
                        ),
                    ));
                }
                Ok(net.clone())
            }
            (Ok(net), None) => Ok(net.clone()),
            (Err(_), Some(spec)) if create => self.network_create(spec.clone()).await,
            (Err(err), _) => Err(crate::error::coded(
                code::INVALID_NETWORK_CONFIG,
                format!(
                    "{err:#}; create it with `netd network create {}`, or give a subnet in the conflist's ipam",
                    req.network
                ),
            )),
        }
    }

    fn cni_record(&self, network: &str, container_id: &str, ifname: &str) -> Option<&Container> {
        self.state.containers.values().find(|c| {
            c.pending.is_none()
                && c.attachments.iter().any(|a| a.network == network)
                && matches!(&c.sandbox, Sandbox::Cni { container_id: id, ifname: i, .. }
                    if id == container_id && i == ifname)
        })
    }

    fn cni_attachment(&self, record: &Container) -> Result<CniAttachment> {
        let Sandbox::Cni {
            container_id,
            ifname,
            netns,
        } = &record.sandbox
        else {
            return Err(crate::invalid!("{} is not a CNI attachment", record.name));
        };
        let att = record
            .attachments
            .first()
            .ok_or_else(|| anyhow::anyhow!("{} has no interface", record.name))?;
        let net = self.network(&att.network)?;
        Ok(CniAttachment {
            network: net.name.clone(),
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            netns: netns.clone(),
            bridge: net.bridge.clone(),
            host_veth: att.host_veth.clone(),
            mac: att.mac.clone(),
            ip: att.ip,
            prefix_len: net.subnet.prefix_len(),
            gateway: (!net.internal).then_some(net.gateway),
            ipv6: net.ipv6.zip(att.ip6).map(|(v6, ip)| crate::api::CniIpv6 {
                ip,
                prefix_len: v6.subnet.prefix_len(),
                gateway: (!net.internal).then_some(v6.gateway),
            }),
            mtu: net.mtu,
            ports: record.ports.clone(),
            nameserver: crate::dns::has_resolver(&net.name).then_some(crate::dns::RESOLVER_ADDR),
        })
    }
}

/// The names a runtime gave that the network's resolver answers to: host
/// names only (a runtime's odd name costs the container no more than that
/// name), each once.
fn resolver_names(network: &str, names: &[String]) -> Vec<String> {
    if !crate::dns::has_resolver(network) {
        return Vec::new();
    }
    let mut kept: Vec<String> = Vec::new();
    for name in names {
        if !crate::dns::is_host_name(name) {
            tracing::info!(%name, "CNI: not a host name, not resolvable");
        } else if !kept.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            kept.push(name.clone());
        }
    }
    kept
}

/// netd's record of a CNI attachment: `cni-` + the container ID's first 12
/// characters (as Docker shortens IDs) + the interface name.
fn record_name(container_id: &str, ifname: &str) -> String {
    let short: String = container_id.chars().take(12).collect();
    format!("cni-{short}-{ifname}")
}
