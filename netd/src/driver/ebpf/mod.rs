//! The eBPF datapath: every decision made by netd's BPF programs from maps.
//! The uplinks and XDP are in `uplinks`, what the datapath shows in
//! `observe`.

mod declared;
mod flags;
mod ipv6;
mod nat_ports;
mod observe;
mod pressure;
mod trusted;
mod uplinks;

use declared::Declared;
use pressure::Pressure;

pub use nat_ports::NatPorts;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use netd_common::{Backend, Config, Endpoint, NetworkInfo, PortKey};

use super::{BoxFuture, ConntrackRow, FirewallDriver, HostInfo, Leftovers};
use crate::{
    api::DatapathStatus,
    datapath::{Datapath, XdpSetting, monotonic_ns},
    features::{Features, TcAttachMode},
    netlink::Netlink,
    state::{Attachment, Network, PublishedPort},
};

pub struct EbpfDriver {
    datapath: Datapath,
    /// What the daemon declared since start: after re-adoption, map entries
    /// beyond these are leftovers of state that no longer exists.
    declared: Declared,
    declared6: ipv6::Declared6,
    features: Features,
    /// Interfaces with the uplink programs attached in this run, by name.
    uplinks: HashMap<String, u32>,
    netns_cookie: u64,
    /// Host-side veths with `from_container` attached.
    endpoints: HashSet<String>,
    /// Where the maps and links are pinned.
    bpffs: PathBuf,
    /// Whether containers' packets to the outside are redirected to the
    /// uplink by the programs (else they take the host's stack).
    fast_path: bool,
    /// The user rules declared (re-compiled when interfaces change), and the
    /// classes in `USER_RULES`: until the daemon declares its rules after a
    /// restart, the previous run's stay in force.
    rules: Vec<crate::rule::ActiveRule>,
    rule_classes: u32,
    /// The host as last told (for the config the rules rewrite).
    host: HostInfo,
    /// Which XDP mode the uplinks get, and what each one has (`native`,
    /// `generic`, or `off (why)`).
    xdp: XdpSetting,
    xdp_modes: BTreeMap<String, String>,
    /// For the clsact qdiscs this driver added (kernels before TCX).
    netlink: Netlink,
    /// The source ports NAT chooses from.
    nat_ports: NatPorts,
    /// Conntrack evictions and refusals as the last GC saw them.
    pressure: Pressure,
    /// Connections conntrack holds (`--conntrack-max`).
    connections: u32,
    /// `netd down` under way: objects go whole at the end.
    tearing_down: bool,
    /// Networks with trusted host interfaces, by ID (see `trusted`).
    trusting: HashMap<u32, trusted::Trusting>,
    /// Published container sides on those networks, by how many published
    /// ports lead to each.
    container_sides: HashMap<PortKey, usize>,
    /// `EbpfSettings::resolver_on_gateways`.
    resolver_on_gateways: bool,
}

/// How the eBPF datapath runs (`netd daemon` flags).
pub struct EbpfSettings {
    pub bpf_log: crate::datapath::BpfLog,
    /// Redirect containers' outbound packets to the uplink (past the
    /// host's netfilter), or let them take the stack.
    pub fast_path: bool,
    pub xdp: XdpSetting,
    pub nat_ports: NatPorts,
    pub sizes: crate::datapath::TableSizes,
    /// `--dns-via cgroup-hooks`: each user network's gateway port 53 is
    /// the daemon's resolver (not a port published on every address).
    pub resolver_on_gateways: bool,
}

impl EbpfDriver {
    /// Loads (or, after a restart, re-adopts) the datapath pinned under `bpffs`.
    pub fn start(
        host: &HostInfo,
        bpffs: &Path,
        features: Features,
        settings: EbpfSettings,
        netlink: Netlink,
    ) -> Result<Self> {
        features.require_minimum()?;
        super::set_bridge_netfilter(false)?;
        if let Some((first, last)) = settings.nat_ports.reserve()? {
            tracing::warn!(
                "NAT ports {first}-{last} overlap the host's ephemeral ports \
                 (ip_local_port_range): reserved them (ip_local_reserved_ports) so the \
                 host's own connections never take a translated tuple"
            );
        }
        let EbpfSettings {
            bpf_log: log,
            fast_path,
            xdp,
            nat_ports,
            sizes,
            resolver_on_gateways,
        } = settings;
        let mut datapath = Datapath::load_pinned(bpffs, &features, log, &sizes)?;
        if let Some(logs) = datapath.take_logs() {
            tokio::spawn(logs.forward());
        }
        // First the socket hooks: before 5.14 they tell us our namespace's
        // cookie (until the config has it, they leave every socket alone).
        datapath.attach_host_sockets()?;
        let netns_cookie = datapath.netns_cookie(&features)?;
        datapath.remove_legacy_uplink_pins()?;
        let rule_classes = datapath.maps.config.get().map_or(0, |c| c.rule_classes);
        // Interfaces an earlier run attached to that are no uplinks now.
        for name in datapath.pinned_uplinks() {
            if !host.uplinks.iter().any(|u| u.name == name) {
                datapath.detach_uplink(&name)?;
            }
        }
        let mut driver = Self {
            datapath,
            declared: Declared::default(),
            declared6: Default::default(),
            features,
            uplinks: HashMap::new(),
            netns_cookie,
            endpoints: HashSet::new(),
            bpffs: bpffs.to_owned(),
            fast_path,
            rules: Vec::new(),
            rule_classes,
            host: host.clone(),
            xdp,
            xdp_modes: BTreeMap::new(),
            netlink,
            nat_ports,
            pressure: Pressure::default(),
            connections: 0,
            tearing_down: false,
            trusting: HashMap::new(),
            container_sides: HashMap::new(),
            resolver_on_gateways,
        };
        // Counters outlive restarts: only what happens from now is news.
        driver.pressure = Pressure::from(Pressure::read(&driver.datapath)?);
        driver.connections = sizes.connections;
        // One uplink that cannot be attached is reported, not fatal.
        if let Err(err) = driver.host_changed(host) {
            tracing::warn!(err = format!("{err:#}"), "uplinks");
        }
        Ok(driver)
    }

    /// Compiles the rules (interface names resolved now) into `USER_RULES`,
    /// then turns on the classes in use.
    fn enforce_rules(&mut self, host: &HostInfo) -> Result<()> {
        let compiled =
            crate::rule::compile(&self.rules, |name| nix::net::if_::if_nametoindex(name).ok());
        // Classes that go away are turned off before their entries go,
        // new ones on only once their entries are in.
        self.rule_classes &= compiled.classes;
        self.write_config(host)?;
        self.datapath.maps.rules.sync(&compiled.entries)?;
        self.rule_classes = compiled.classes;
        self.write_config(host)
    }

    fn write_config(&mut self, host: &HostInfo) -> Result<()> {
        let masquerade_ip = host
            .uplinks
            .iter()
            .find_map(|u| u.addrs.first())
            .copied()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.datapath.maps.config.set(Config {
            masquerade_ip: masquerade_ip.octets(),
            nat_port_min: self.nat_ports.min,
            nat_port_max: self.nat_ports.max,
            netns_cookie: self.netns_cookie,
            fast_path: u8::from(self.fast_path).into(),
            rule_classes: self.rule_classes,
        })
    }
}

/// A published port's key; a routed network's port open at the container's
/// address is keyed by that address and port (its backend is itself), so
/// the programs find it with the lookup they already make.
fn port_key(p: &PublishedPort) -> PortKey {
    let (ip, port) = match p.is_direct() {
        true => (p.container_ip, p.container_port),
        false => (p.host_ip, p.host_port),
    };
    PortKey {
        host_ip: ip.octets(),
        port: port.to_be_bytes(),
        proto: p.proto.number(),
        _pad: 0,
    }
}

impl FirewallDriver for EbpfDriver {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn set_rules(&mut self, rules: &[crate::rule::ActiveRule]) -> Result<()> {
        self.rules = rules.to_vec();
        let host = self.host.clone();
        self.enforce_rules(&host)
    }

    fn add_network(&mut self, net: &Network, bridge_mac: [u8; 6]) -> Result<()> {
        let info = NetworkInfo {
            id: net.id,
            flags: flags::network_flags(net, self.resolver_on_gateways),
            gateway: net.gateway.octets(),
            host_ip: net.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
            gateway_mac: bridge_mac,
            _pad: [0; 2],
        };
        self.datapath
            .maps
            .networks
            .insert(net.subnet.addr(), net.subnet.prefix_len(), info)?;
        self.declared
            .networks
            .insert((net.subnet.addr(), net.subnet.prefix_len()));
        self.datapath.maps.networks.insert_local_addr(net.gateway)?;
        self.declared.gateways.insert(net.gateway);
        for cidr in &net.routed_cidrs {
            self.datapath
                .maps
                .networks
                .insert_routed(net.id, cidr.addr(), cidr.prefix_len())?;
            self.declared
                .routed
                .insert((net.id, cidr.addr(), cidr.prefix_len()));
        }
        if let Some(trusting) = trusted::Trusting::of(net) {
            self.trusting.insert(net.id, trusting);
            self.sync_trusted()?;
        }
        self.add_network6(net)
    }

    fn remove_network(&mut self, net: &Network) -> Result<()> {
        self.datapath
            .maps
            .networks
            .remove(net.subnet.addr(), net.subnet.prefix_len())?;
        self.declared
            .networks
            .remove(&(net.subnet.addr(), net.subnet.prefix_len()));
        self.declared.gateways.remove(&net.gateway);
        for cidr in &net.routed_cidrs {
            self.datapath
                .maps
                .networks
                .remove_routed(net.id, cidr.addr(), cidr.prefix_len())?;
            self.declared
                .routed
                .remove(&(net.id, cidr.addr(), cidr.prefix_len()));
        }
        if !self.declared.local_addrs().contains(&net.gateway) {
            self.datapath.maps.networks.remove_local_addr(net.gateway)?;
        }
        if self.trusting.remove(&net.id).is_some() {
            self.sync_trusted()?;
        }
        self.remove_network6(net)
    }

    fn add_endpoint(
        &mut self,
        net: &Network,
        att: &Attachment,
        host_ifindex: u32,
        mac: [u8; 6],
    ) -> Result<()> {
        let endpoint = Endpoint {
            ifindex: host_ifindex,
            network_id: net.id,
            network_flags: flags::network_flags(net, self.resolver_on_gateways),
            mac,
            _pad: [0; 2],
        };
        self.datapath.maps.endpoints.insert(att.ip, endpoint)?;
        let attached = self
            .add_endpoint6(att, endpoint)
            .and_then(|()| self.datapath.attach_from_container(&att.host_veth));
        match attached {
            Ok(()) => {
                self.endpoints.insert(att.host_veth.clone());
                self.declared.endpoints.insert(att.ip);
                Ok(())
            }
            Err(err) => {
                let _ = self.datapath.maps.remove_endpoint(att.ip);
                let _ = self.remove_endpoint6(att, true);
                Err(err)
            }
        }
    }

    fn remove_endpoint(&mut self, att: &Attachment) -> Result<()> {
        self.endpoints.remove(&att.host_veth);
        self.declared.endpoints.remove(&att.ip);
        // Every step is tried; the first error is returned.
        let ipv6 = self.remove_endpoint6(att, !self.tearing_down);
        if self.tearing_down {
            return ipv6; // the maps and links go whole in remove_all
        }
        self.datapath.detach_from_container(&att.host_veth)?;
        self.datapath.maps.remove_endpoint(att.ip)?;
        // A container connected later on the same address starts clean.
        let ips6: Vec<_> = att.ip6.into_iter().collect();
        ipv6.and(self.datapath.maps.forget_connections6(&ips6).map(drop))
    }

    fn forget_connections(&mut self, ips: &[Ipv4Addr]) -> Result<usize> {
        self.datapath.maps.forget_connections(ips)
    }

    fn resolver_steering(&self) -> Result<std::sync::Arc<dyn crate::dns::Steering>> {
        Ok(std::sync::Arc::new(
            self.datapath.maps.sockets.resolver_steering()?,
        ))
    }

    fn retire_container(
        &mut self,
        ports: &[PublishedPort],
        atts: &[Attachment],
    ) -> Result<Leftovers> {
        let mut keys: Vec<PortKey> = ports.iter().map(port_key).collect();
        for key in &keys {
            self.declared.ports.remove(key);
        }
        keys.extend(self.close_container_sides(ports));
        if let Err(err) = self.retire6(ports, atts) {
            // Not a reason to keep IPv4's: reconcile6 takes what stayed.
            tracing::warn!(err = format!("{err:#}"), "retiring a container's IPv6");
        }
        for att in atts {
            self.endpoints.remove(&att.host_veth);
            self.declared.endpoints.remove(&att.ip);
        }
        if self.tearing_down {
            return Ok(Box::new(|| ())); // the maps and links go whole in remove_all
        }
        let ips: Vec<_> = atts.iter().map(|a| a.ip).collect();
        let forget_connections = self.datapath.maps.retire_container(&keys, &ips)?;
        let unpin: Vec<_> = atts
            .iter()
            .map(|a| self.datapath.detach_from_container_later(&a.host_veth))
            .collect();
        Ok(Box::new(move || {
            unpin.into_iter().for_each(|unpin| unpin());
            // One walk of the table (~15 ms with 28,000 entries here) for
            // the connections of every address and port of the container.
            if let Err(err) = forget_connections() {
                tracing::warn!(
                    err = format!("{err:#}"),
                    "forgetting a removed container's connections"
                );
            }
        }))
    }

    fn publish(&mut self, ports: &[PublishedPort]) -> Result<()> {
        for (done, port) in ports.iter().enumerate() {
            let backend = Backend {
                ip: port.container_ip.octets(),
                port: port.container_port.to_be_bytes(),
                _pad: [0; 2],
            };
            if let Err(err) = self.datapath.maps.ports.publish(port_key(port), backend) {
                let _ = self.unpublish(&ports[..done]);
                return Err(err);
            }
            self.declared.ports.insert(port_key(port));
        }
        if let Err(err) = self
            .open_container_sides(ports)
            .and_then(|()| self.publish6(ports))
        {
            let _ = self.unpublish(ports);
            return Err(err);
        }
        Ok(())
    }

    fn unpublish(&mut self, ports: &[PublishedPort]) -> Result<()> {
        let mut keys: Vec<PortKey> = ports.iter().map(port_key).collect();
        for key in &keys {
            self.declared.ports.remove(key);
        }
        keys.extend(self.close_container_sides(ports));
        let ipv6 = self.unpublish6(ports);
        if self.tearing_down {
            return ipv6;
        }
        self.datapath.maps.unpublish(&keys).and(ipv6)
    }

    /// Pins removed behind netd's back: maps pinned again, uplink and socket
    /// programs attached again (container veths get theirs back when the
    /// daemon re-declares its endpoints).
    fn repair(&mut self) -> Result<Vec<String>> {
        let uplinks: Vec<String> = self.uplinks.keys().cloned().collect();
        let mut restored = self.datapath.repair_pins(&uplinks)?;
        let attached: Vec<String> = self
            .xdp_modes
            .iter()
            .filter(|(_, mode)| !mode.starts_with("off"))
            .map(|(iface, _)| iface.clone())
            .collect();
        for iface in attached {
            let uplink = self.host.uplinks.iter().find(|u| u.name == iface).cloned();
            if let Some(uplink) = uplink.filter(|_| !self.datapath.xdp_pinned(&iface)) {
                self.attach_xdp(&uplink)?;
                restored.push(format!("XDP program on {iface}"));
            }
        }
        Ok(restored
            .into_iter()
            .map(|what| format!("restored {what}"))
            .collect())
    }

    /// Removes map entries nobody declared since start: networks, endpoints
    /// (with their connections) and ports of state that is gone, e.g. a
    /// container dropped because its namespace vanished while netd was down.
    fn reconciled(&mut self) -> Result<Vec<String>> {
        // Every program is this run's now: resized tables take what the
        // old programs added meanwhile, and the old tables go.
        let mut removed = self.datapath.finish_migrations()?;
        // A veth's link left by a crash or a failed create (its veth is
        // gone or no longer netd's): the pin goes, the link with it.
        for veth in self.datapath.pinned_container_links() {
            if !self.endpoints.contains(&veth) {
                removed.push(format!("stale program link on {veth}"));
                self.datapath.detach_from_container(&veth)?;
            }
        }
        let ports: Vec<PortKey> = self
            .datapath
            .maps
            .ports
            .keys()?
            .into_iter()
            .filter(|k| !self.declared.ports.contains(k))
            .collect();
        if !ports.is_empty() {
            removed.push(format!("{} stale published ports", ports.len()));
            self.datapath.maps.unpublish(&ports)?;
        }
        for ip in self.datapath.maps.endpoints.addrs()? {
            if !self.declared.endpoints.contains(&ip) {
                removed.push(format!("stale endpoint {ip}"));
                self.datapath.maps.remove_endpoint(ip)?;
            }
        }
        self.reconcile6(&mut removed)?;
        for (id, addr, prefix_len) in self.datapath.maps.networks.routed()? {
            if !self.declared.routed.contains(&(id, addr, prefix_len)) {
                removed.push(format!(
                    "stale routed CIDR {addr}/{prefix_len} of network {id}"
                ));
                self.datapath
                    .maps
                    .networks
                    .remove_routed(id, addr, prefix_len)?;
            }
        }
        for key in self.datapath.maps.networks.trusted()? {
            if !self.declared.trusted.contains(&key) {
                removed.push(format!(
                    "stale trusted interface {} of network {}",
                    key.ifindex, key.network_id
                ));
                self.datapath.maps.networks.remove_trusted(key)?;
            }
        }
        for (addr, prefix_len) in self.datapath.maps.networks.networks()? {
            if !self.declared.networks.contains(&(addr, prefix_len)) {
                removed.push(format!("stale network {addr}/{prefix_len}"));
                self.datapath.maps.networks.remove(addr, prefix_len)?;
            }
        }
        let local = self.declared.local_addrs();
        for ip in local.iter().copied() {
            self.datapath.maps.networks.insert_local_addr(ip)?;
        }
        for ip in self.datapath.maps.networks.local_addrs()? {
            if !local.contains(&ip) {
                removed.push(format!("stale local address {ip}"));
                self.datapath.maps.networks.remove_local_addr(ip)?;
            }
        }
        Ok(removed)
    }

    fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        self.conntrack_rows()
    }

    fn gc(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let removed =
            self.datapath.maps.conntrack.gc(now)? + self.datapath.maps.conntrack6.gc(now)?;
        let counts = Pressure::read(&self.datapath)?;
        self.pressure.update(counts, self.connections);
        Ok(removed)
    }

    fn host_changed(&mut self, host: &HostInfo) -> Result<()> {
        // Both halves run whatever the other's outcome.
        self.host = host.clone();
        let uplinks = self.sync_uplinks(host);
        let addrs = self.sync_local_addrs(host);
        let config = self.write_config(host);
        // Interface names resolve to new indexes when links come and go.
        let rules = match self.rules.iter().any(|r| r.rule.in_interface.is_some()) {
            true => self.enforce_rules(host),
            false => Ok(()),
        };
        let trusted = self.sync_trusted();
        uplinks.and(addrs).and(config).and(rules).and(trusted)
    }

    fn begin_teardown(&mut self) {
        // Two conntrack walks per container removed, for maps unpinned at
        // the end anyway.
        self.tearing_down = true;
    }

    fn remove_all(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // TCX links go with their pins; clsact filters must be deleted,
            // and the qdiscs added for them with them.
            let clsact: Vec<u32> = match self.datapath.tc_mode() {
                TcAttachMode::Clsact => self.uplinks.values().copied().collect(),
                TcAttachMode::Tcx => Vec::new(),
            };
            for name in self.uplinks.keys().cloned().collect::<Vec<_>>() {
                self.datapath.detach_uplink(&name)?;
            }
            // Unpinning detaches the uplink and socket hooks; maps go with the daemon.
            Datapath::remove_pins(&self.bpffs)?;
            for ifindex in clsact {
                self.netlink.remove_clsact_if_unused(ifindex).await?;
            }
            self.nat_ports.release()
        })
    }

    fn status(&self) -> Result<DatapathStatus> {
        self.ebpf_status()
    }
}
