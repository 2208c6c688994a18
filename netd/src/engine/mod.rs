//! The engine: networks, containers, addresses and ports, with rollback on
//! failure and reconciliation at start. It owns the [`State`], calls the
//! firewall driver and the host layer, and answers typed requests; the
//! front-ends (the CLI socket, the Docker and CNI plugins) translate into
//! its calls. One request at a time (the daemon holds it behind a lock),
//! so address and port allocation is consistent.

mod cni;
mod container;
mod dying;
mod endpoint;
mod network;
mod ports;
mod reconcile;
mod rules;
#[cfg(test)]
mod tests;

use std::{path::PathBuf, sync::Arc};

use anyhow::Result;

use crate::{
    api::{NetworkDetails, NetworkMember, Reply, Request, Status},
    driver::{FirewallDriver, HostInfo},
    host::Host,
    metrics::Metrics,
    state::{Container, Network, State},
};

pub use endpoint::{EndpointInterface, EndpointSpec};
pub(crate) use network::check_interface_name;

pub const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_BRIDGE: &str = "netd0";

pub struct Engine<H: Host> {
    state: State,
    state_dir: PathBuf,
    host: H,
    driver: Box<dyn FirewallDriver>,
    metrics: Arc<Metrics>,
    /// `--uplink` names; empty: every interface that is not a bridge, a
    /// bridge port, loopback or netd's own.
    uplink_names: Vec<String>,
    /// The host as the driver was last told it.
    host_info: HostInfo,
    /// What the last reconciliation (start or `netd repair`) changed.
    repairs: Vec<String>,
    /// The kernel's neighbour-table overflows when the engine was made
    /// (`netd status` warns about new ones).
    neighbour_overflows_at_start: u64,
    /// `netd down` under way: no state writes, no per-object neighbour
    /// removal (the bridges take theirs with them).
    tearing_down: bool,
    /// Removed containers' veths the kernel is still deleting.
    dying: Vec<dying::Dying>,
    /// Those whose deletion starts once the state is saved.
    undeleted: Vec<dying::Undeleted>,
}

impl<H: Host> Engine<H> {
    /// An engine over `state` (saved in `state_dir`), not yet reconciled:
    /// call [`Engine::start`] before serving requests.
    pub fn new(
        state: State,
        state_dir: PathBuf,
        host: H,
        driver: Box<dyn FirewallDriver>,
        metrics: Arc<Metrics>,
        uplink_names: Vec<String>,
        host_info: HostInfo,
    ) -> Self {
        Self {
            state,
            state_dir,
            host,
            driver,
            metrics,
            uplink_names,
            host_info,
            repairs: Vec::new(),
            neighbour_overflows_at_start: crate::netlink::neighbour_table_overflows().unwrap_or(0),
            tearing_down: false,
            dying: Vec::new(),
            undeleted: Vec::new(),
        }
    }

    /// Reconciles the saved state with the kernel and makes the default
    /// network if there is none; returns what was repaired.
    pub async fn start(&mut self) -> Result<Vec<String>> {
        let repairs = self.reconcile().await.map_err(|err| {
            err.context("reconciling saved networks and containers with the kernel")
        })?;
        if !self.state.networks.contains_key(DEFAULT_NETWORK) {
            self.network_create(crate::api::NetworkSpec::named(DEFAULT_NETWORK))
                .await
                .map_err(|err| err.context("creating the default network"))?;
        }
        Ok(repairs)
    }

    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    pub fn host_info(&self) -> &HostInfo {
        &self.host_info
    }

    pub fn driver(&self) -> &dyn FirewallDriver {
        self.driver.as_ref()
    }

    pub fn driver_mut(&mut self) -> &mut dyn FirewallDriver {
        self.driver.as_mut()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// One socket request (every request but `monitor`, which streams).
    pub async fn handle(&mut self, request: Request) -> Result<Reply> {
        self.reap_dying();
        Ok(match request {
            Request::NetworkCreate(spec) => Reply::Network(self.network_create(spec).await?),
            Request::NetworkLs => Reply::Networks(self.state.live_networks().cloned().collect()),
            Request::NetworkInspect { name } => Reply::NetworkDetails(self.network_inspect(&name)?),
            Request::NetworkRm { name } => {
                self.network_rm(&name).await?;
                Reply::Removed(crate::api::Removed { removed: name })
            }
            Request::ContainerCreate(spec) => Reply::Container(self.container_create(&spec).await?),
            Request::NetworkConnect {
                network,
                container,
                ip,
                ip6,
                aliases,
                gw_priority,
            } => Reply::Attachment(
                self.network_connect(&network, &container, ip, ip6, &aliases, gw_priority)
                    .await?,
            ),
            Request::NetworkDisconnect { network, container } => {
                self.network_disconnect(&network, &container).await?;
                Reply::Disconnected(crate::api::Disconnected {
                    disconnected: container,
                })
            }
            Request::ContainerRm { name } => {
                self.container_rm(&name).await?;
                Reply::Removed(crate::api::Removed { removed: name })
            }
            Request::ContainerLs => {
                Reply::Containers(self.state.live_containers().cloned().collect())
            }
            Request::ContainerInspect { name } => Reply::Container(self.container(&name)?.clone()),
            Request::Status => Reply::Status(Box::new(self.status()?)),
            Request::Repair => Reply::Repair(crate::api::RepairReport {
                repairs: self.reconcile().await?,
            }),
            Request::ConntrackLs => Reply::Conntrack(self.driver.conntrack()?),
            Request::Down => {
                self.teardown().await?;
                Reply::Stopped(crate::api::Stopped { down: true })
            }
            Request::Monitor => {
                return Err(crate::invalid!(
                    "monitor streams; it is served by the connection handler"
                ));
            }
            Request::CniAdd(attach) => Reply::CniAttachment(Box::new(self.cni_add(&attach).await?)),
            Request::CniCheck(attach) => {
                Reply::CniAttachment(Box::new(self.cni_check(&attach).await?))
            }
            Request::CniDel(detach) => {
                self.cni_del(&detach).await?;
                Reply::Removed(crate::api::Removed {
                    removed: format!("{}/{}", detach.container_id, detach.ifname),
                })
            }
            Request::CniGc { network, valid } => Reply::CniCollected(crate::api::CniCollected {
                removed: self.cni_gc(&network, &valid).await?,
            }),
            Request::CniStatus(network) => Reply::CniReady(self.cni_status(&network).await?),
            Request::RuleAdd(add) => Reply::Rule(self.rule_add(add)?),
            Request::RuleRm { id } => Reply::Rule(self.rule_rm(id)?),
            Request::RuleLs => Reply::Rules(self.rule_ls()),
            Request::RuleLoad { rules } => Reply::Rules(self.rule_load(rules)?),
        })
    }

    pub fn status(&self) -> Result<Status> {
        let datapath = self.driver.status()?;
        let warnings = self.limit_warnings(&datapath);
        Ok(Status {
            datapath,
            networks: self.state.networks.len(),
            containers: self.state.containers.len(),
            published_ports: self.state.published().count(),
            user_rules: self.rule_ls(),
            repairs: self.repairs.clone(),
            warnings,
            veths_being_deleted: self.dying_links(),
        })
    }

    /// The ports containers hold on `network`'s bridge (one per attachment).
    fn bridge_ports(&self, network: &str) -> usize {
        self.state
            .containers
            .values()
            .flat_map(|c| &c.attachments)
            .filter(|a| a.network == network)
            .count()
    }

    /// The limits this host is at 90 % of or past, each with what to do.
    fn limit_warnings(&self, datapath: &crate::api::DatapathStatus) -> Vec<String> {
        let near = |used: u64, limit: u64| limit > 0 && used * 10 >= limit * 9;
        let mut warnings = Vec::new();
        for net in self.state.networks.values() {
            let ports = self.bridge_ports(&net.name);
            let limit = crate::netlink::BRIDGE_MAX_PORTS;
            if near(ports as u64, limit as u64) {
                warnings.push(format!(
                    "network {}: {ports} of the {limit} ports a Linux bridge takes are used; \
                     put further containers on another network",
                    net.name
                ));
            }
        }
        if let crate::api::DatapathStatus::Ebpf(ebpf) = datapath {
            for (map, fill) in &ebpf.maps {
                if near(fill.entries as u64, u64::from(fill.capacity)) {
                    let flag = match map.as_str() {
                        "CONNTRACK" => " (--conntrack-max)",
                        "PUBLISHED_PORTS" => " (--max-published-ports)",
                        "ENDPOINTS" => " (--max-endpoints)",
                        _ => "",
                    };
                    warnings.push(format!(
                        "table {map}: {} of {} entries used{flag}",
                        fill.entries, fill.capacity
                    ));
                }
            }
        }
        let overflows = crate::netlink::neighbour_table_overflows()
            .unwrap_or(0)
            .saturating_sub(self.neighbour_overflows_at_start);
        if overflows > 0 {
            warnings.push(format!(
                "the kernel's neighbour table (one for every namespace) was full {overflows} \
                 times since netd started: some neighbour could not be resolved; raise \
                 net.ipv4.neigh.default.gc_thresh3 (and gc_thresh2) in the host's first namespace"
            ));
        }
        warnings
    }

    pub fn network_inspect(&self, name: &str) -> Result<NetworkDetails> {
        let network = self.network(name)?.clone();
        let containers = self
            .state
            .containers
            .values()
            .flat_map(|c| {
                c.attachments
                    .iter()
                    .filter(|a| a.network == name)
                    .map(move |a| NetworkMember {
                        name: c.name.clone(),
                        ip: a.ip,
                        ip6: a.ip6,
                        mac: a.mac.clone(),
                    })
            })
            .collect();
        Ok(NetworkDetails {
            network,
            containers,
        })
    }

    /// Removes connections that expired; counted in the metrics.
    pub fn gc(&mut self) {
        match self.driver.gc() {
            Ok(removed) => self.metrics.gc_run(removed),
            Err(err) => tracing::warn!(err = format!("{err:#}"), "conntrack GC"),
        }
    }

    /// The Prometheus text for `/metrics`, the datapath read now.
    pub fn render_metrics(&self) -> String {
        let datapath = self.driver.metrics().unwrap_or_else(|err| {
            tracing::warn!(err = format!("{err:#}"), "reading datapath metrics");
            Default::default()
        });
        self.metrics
            .render(&datapath, self.state.published().count())
    }

    /// A network to use (never one being created or removed).
    fn network(&self, name: &str) -> Result<&Network> {
        self.state
            .networks
            .get(name)
            .filter(|n| n.pending.is_none())
            .ok_or_else(|| crate::not_found!("no network named {name:?} (see `netd network ls`)"))
    }

    fn container(&self, name: &str) -> Result<&Container> {
        self.state.containers.get(name).ok_or_else(|| {
            crate::not_found!("no container named {name:?} (see `netd container ls`)")
        })
    }

    fn save(&self) -> Result<()> {
        // `netd down` removes the file at the end; a crash in between
        // leaves the state before it, which the next start reconciles.
        if self.tearing_down {
            return Ok(());
        }
        self.state.save(&self.state_dir)
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(crate::invalid!(
            "invalid {what} name {name:?}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Named points inside mutating requests where the fault tests stop the
/// daemon dead (`NETD_FAULT_POINT=name`): abort() leaves everything exactly
/// as kill -9 would at that step. Unset, this is one comparison.
pub const FAULT_POINTS: &[&str] = &[
    "network-create:intent",
    "network-create:bridge",
    "network-create:driver",
    "network-rm:marked",
    "container-create:intent",
    "container-create:netns",
    "container-create:veth",
    "container-create:endpoint",
    "container-create:published",
    "container-rm:marked",
    "container-rm:unpublished",
    "network-connect:planned",
    "network-connect:wired",
];

/// A point after the request answered: the background deletion of a
/// removed container's veths (not in [`FAULT_POINTS`], whose requests fail).
pub const FAULT_POINT_DELETING_VETHS: &str = "container-rm:deleting-veths";

pub(crate) fn fault_point(name: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("NETD_FAULT_POINT").ok());
    if wanted.as_deref() == Some(name) {
        tracing::error!(point = name, "stopping dead at a fault point");
        std::process::abort();
    }
}

fn random_u64() -> u64 {
    // The kernel's random source; names only need to differ, not be secret.
    let mut buf = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut buf);
    }
    u64::from_ne_bytes(buf) ^ u64::from(std::process::id()) ^ crate::datapath::monotonic_ns()
}

/// A fresh name for a container veth's host side (Docker's scheme).
fn new_veth_name() -> String {
    format!("veth{:07x}", random_u64() & 0xfff_ffff)
}

use crate::host::mac_for;

pub(crate) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(crate::invalid!("bad MAC {s}"));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
