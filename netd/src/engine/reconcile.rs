//! Reconciliation with the kernel (at start and on `netd repair`), host
//! changes, and `netd down`.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Result;

use super::{
    Engine,
    container::{Addresses, Veths},
    new_veth_name, parse_mac,
};
use crate::{
    host::Host,
    state::{Container, Network, Pending, Sandbox},
};

impl<H: Host> Engine<H> {
    /// Re-reads the host's links and addresses and tells the driver when
    /// they changed (an address added or renumbered, an uplink new or gone).
    pub async fn sync_host(&mut self) -> Result<()> {
        let host = self
            .host
            .host_info(&self.state, &self.uplink_names, false)
            .await?;
        if host != self.host_info {
            // Remembered only once applied: a failure is retried next time.
            self.driver.host_changed(&host)?;
            self.host_info = host;
        }
        Ok(())
    }

    /// Compares the state with the kernel and repairs what differs, at start
    /// and on `netd repair`. Never gives up on the first missing object:
    /// - operations a crash interrupted are rolled back (creates) or
    ///   finished (removes), with every veth they had planned;
    /// - a missing bridge is made again (with its gateway), and veths are
    ///   put back on it;
    /// - a container whose namespace is gone is removed, its addresses and
    ///   ports freed; one whose veth is gone gets it again;
    /// - the driver is told everything and drops what nobody declared.
    ///
    /// Returns what it changed, one line each (kept for `netd status`).
    pub async fn reconcile(&mut self) -> Result<Vec<String>> {
        // The driver's own objects first (e.g. pins removed behind its back),
        // so re-adoption below finds them in place.
        let mut report = self.driver.repair()?;
        // Veths of removed containers a crash left undeleted (this run's
        // finish first).
        self.settle_dying(None).await;
        for link in std::mem::take(&mut self.state.dying_links) {
            if self.host.link_index(&link).await?.is_some() {
                self.host.delete_link(&link).await?;
                report.push(format!("deleted {link}, the veth of a removed container"));
            }
        }
        let forgotten = std::mem::take(&mut self.state.dying_addresses);
        let entries = self.driver.forget_connections(&forgotten)?;
        if entries > 0 {
            let list: Vec<String> = forgotten.iter().map(Ipv4Addr::to_string).collect();
            report.push(format!(
                "forgot {entries} conntrack entries of removed containers ({})",
                list.join(", ")
            ));
        }
        for container in self.state.containers.clone().into_values() {
            let what = match container.pending {
                Some(Pending::Creating) => "an interrupted create was rolled back",
                Some(Pending::Removing) => "an interrupted remove was finished",
                None if !container.pending_links.is_empty() => {
                    let c = self
                        .state
                        .containers
                        .get_mut(&container.name)
                        .expect("listed");
                    let links = std::mem::take(&mut c.pending_links);
                    for link in &links {
                        if let Err(err) = self.host.delete_link(link).await {
                            report.push(format!("container {}: {err:#}", container.name));
                        }
                    }
                    report.push(format!(
                        "container {}: removed the veth of an interrupted connect ({})",
                        container.name,
                        links.join(", ")
                    ));
                    continue;
                }
                None => continue,
            };
            let errors = self.remove_container_objects(&container, Veths::Now).await;
            self.state.containers.remove(&container.name);
            report.push(format!("container {}: {what}", container.name));
            report.extend(
                errors
                    .into_iter()
                    .map(|e| format!("container {}: {e}", container.name)),
            );
        }
        for net in self.state.networks.clone().into_values() {
            if net.pending.is_some() {
                let errors = self.remove_network_objects(&net).await;
                self.state.networks.remove(&net.name);
                report.push(format!(
                    "network {}: an interrupted operation was settled (removed)",
                    net.name
                ));
                report.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("network {}: {e}", net.name)),
                );
                continue;
            }
            if let Err(err) = self.readopt_network(&net, &mut report).await {
                report.push(format!(
                    "network {}: could not be repaired ({err:#}); kept, retry with `netd repair`",
                    net.name
                ));
            }
        }
        report.extend(self.prune_stale_endpoints().await);
        // Bridges are in place (readopted above): one snapshot of the links
        // spares a request per veth already where it belongs.
        if let Err(err) = self.host.snapshot_links(true).await {
            report.push(format!("listing links: {err:#}"));
        }
        for container in self.state.containers.clone().into_values() {
            if let Err(err) = self.readopt_container(&container, &mut report).await {
                // Reported and kept (the user's container is not ours to
                // delete over one failure); `netd repair` tries again and
                // `container rm` always works.
                report.push(format!(
                    "container {}: could not be repaired ({err:#}); kept, retry with `netd repair`",
                    container.name
                ));
            }
        }
        let _ = self.host.snapshot_links(false).await;
        if let Err(err) = self.sync_rules() {
            report.push(format!("user rules: {err:#}"));
        }
        report.extend(self.driver.reconciled()?);
        self.metrics.repaired(report.len());
        self.save()?;
        self.repairs = report.clone();
        Ok(report)
    }

    /// One network after a restart or on `netd repair`: its bridge (made
    /// again if it is gone), gateway address, and the driver's entry.
    async fn readopt_network(&mut self, net: &Network, report: &mut Vec<String>) -> Result<()> {
        let (mac, remade) = self
            .host
            .ensure_bridge(
                &net.bridge,
                net.mtu,
                net.gateway,
                net.bridge_prefix(),
                net.bridge_ipv6(),
            )
            .await?;
        if remade {
            report.push(format!(
                "network {}: bridge {} was gone; made again",
                net.name, net.bridge
            ));
        }
        self.driver.add_network(net, mac)
    }

    /// One container after a restart or on `netd repair`: its namespace,
    /// every attachment's veth on its bridge, endpoints and ports in the
    /// driver. A vanished namespace removes it (reported). A CNI
    /// attachment is re-adopted the same way, in the runtime's namespace
    /// (netd configured its interface there too; dead ones were pruned).
    async fn readopt_container(
        &mut self,
        container: &Container,
        report: &mut Vec<String>,
    ) -> Result<()> {
        let name = &container.name;
        let netns = match &container.sandbox {
            Sandbox::Cni { netns, .. } => PathBuf::from(netns),
            Sandbox::Docker { .. } => return self.readopt_endpoint(container, report).await,
            Sandbox::Netd => self.host.netns_path(name),
        };
        if container.sandbox.is_netd() && !self.host.netns_exists(name) {
            let errors = self.remove_container_objects(container, Veths::Now).await;
            self.state.containers.remove(name);
            let ports: Vec<String> = container
                .ports
                .iter()
                .map(|p| format!("{}:{}/{}", p.host_ip, p.host_port, p.proto))
                .collect();
            let addrs: Vec<String> = container
                .attachments
                .iter()
                .map(|a| a.ip.to_string())
                .collect();
            report.push(format!(
                "container {name}: its namespace is gone; removed (addresses [{}] and ports [{}] freed)",
                addrs.join(", "),
                ports.join(", ")
            ));
            report.extend(errors.into_iter().map(|e| format!("container {name}: {e}")));
            return Ok(());
        }
        let mut attachments = Vec::new();
        let mut rewired = false;
        for att in &container.attachments {
            let net = self.network(&att.network)?.clone();
            let att = match self.host.reattach_veth(&att.host_veth, &net.bridge).await? {
                Some(index) => {
                    self.driver
                        .add_endpoint(&net, att, index, parse_mac(&att.mac)?)?;
                    att.clone()
                }
                None => {
                    // Deleted behind our back: the same address on a new veth
                    // (the old one's endpoint and program link go first).
                    self.driver.remove_endpoint(att)?;
                    self.host.delete_container_link(&netns, &att.ifname).await?;
                    let host_veth = new_veth_name();
                    self.plan_link(name, &host_veth)?;
                    let mut new = self
                        .wire(
                            &netns,
                            &net,
                            Addresses {
                                v4: att.ip,
                                v6: att.ip6,
                            },
                            &att.ifname,
                            &host_veth,
                            false,
                        )
                        .await?;
                    new.aliases = att.aliases.clone();
                    new.gw_priority = att.gw_priority;
                    rewired = true;
                    report.push(format!(
                        "container {name}: its interface {} on network {} was gone; made again",
                        att.ifname, net.name
                    ));
                    new
                }
            };
            attachments.push(att);
        }
        // The default routes that went with a remade interface, each
        // family's from the network that gives it.
        if rewired {
            let routes = self.routes_of(&attachments);
            self.host.set_default_route(&netns, routes).await?;
        }
        self.driver.publish(&container.ports)?;
        if let Some(c) = self.state.containers.get_mut(name) {
            c.attachments = attachments;
            c.pending_links.clear();
        }
        Ok(())
    }

    /// A runtime's endpoint after a restart or on `netd repair`: its veth
    /// back on the bridge, endpoint and ports in the driver. The container
    /// end lives in the runtime's sandbox, so a vanished veth cannot be made
    /// again by netd: it is reported, and the record kept for the runtime
    /// to delete.
    async fn readopt_endpoint(
        &mut self,
        container: &Container,
        report: &mut Vec<String>,
    ) -> Result<()> {
        let name = &container.name;
        for att in &container.attachments {
            let net = self.network(&att.network)?.clone();
            match self.host.reattach_veth(&att.host_veth, &net.bridge).await? {
                Some(index) => {
                    self.driver
                        .add_endpoint(&net, att, index, parse_mac(&att.mac)?)?;
                    self.driver.publish(&container.ports)?;
                }
                None => {
                    self.driver.unpublish(&container.ports)?;
                    self.driver.remove_endpoint(att)?;
                    report.push(format!(
                        "endpoint {name}: its veth {} is gone, and the container's interface \
                         with it; reconnect the container to network {} in its runtime",
                        att.host_veth, net.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// `netd down`: every container, every network, the state file, and
    /// the driver's own objects.
    pub async fn teardown(&mut self) -> Result<()> {
        self.driver.begin_teardown();
        self.tearing_down = true;
        // Namespaces first: the kernel destroys them, and the veth pairs in
        // them, in batches (one RCU grace period for many, where deleting
        // each veth waits for its own, ~15-40 ms: 95 s for 2,000).
        let veths: Vec<String> = self
            .state
            .containers
            .values()
            .filter(|c| c.sandbox.is_netd())
            .flat_map(|c| c.attachments.iter().map(|a| a.host_veth.clone()))
            .collect();
        for container in self.state.containers.values() {
            if container.sandbox.is_netd() && container.mode == crate::state::NetworkMode::Bridge {
                let _ = self.host.delete_netns(&container.name);
            }
        }
        self.host
            .wait_links_gone(&veths, std::time::Duration::from_secs(20))
            .await;
        for name in self.state.containers.keys().cloned().collect::<Vec<_>>() {
            self.container_rm(&name).await?;
        }
        self.settle_dying(None).await;
        for name in self.state.networks.keys().cloned().collect::<Vec<_>>() {
            self.network_rm(&name).await?;
        }
        let _ = std::fs::remove_file(self.state_dir.join("state.json"));
        self.driver.remove_all().await
    }
}
