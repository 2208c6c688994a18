//! What the netfilter datapaths (iptables, nftables) hold: the declared
//! networks, endpoints, ports and user rules they render their rules from,
//! each change applied whole and undone if the kernel refuses it.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv6Addr},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{
    rule::ActiveRule,
    state::{Attachment, GatewayMode, Network, PublishedPort},
};

/// (host address, host port, protocol, container address, container port),
/// both addresses of one family.
pub type PortTuple = (IpAddr, u16, u8, IpAddr, u16);

/// An address family: each has its own rule set (`iptables` and
/// `ip6tables`, nftables' `ip` and `ip6` tables), as with Docker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn holds(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }

    /// `ip/32` or `ip/128`: one address as a prefix.
    pub fn host(self, ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(ip) => format!("{ip}/32"),
            IpAddr::V6(ip) => format!("{ip}/128"),
        }
    }

    /// `--to-destination`'s and nft's `dnat to` address and port.
    pub fn socket(self, ip: IpAddr, port: u16) -> String {
        std::net::SocketAddr::new(ip, port).to_string()
    }

    /// The network's subnet in this family; none where it has none.
    pub fn subnet(self, net: &Network) -> Option<String> {
        match self {
            Family::V4 => Some(net.subnet.to_string()),
            Family::V6 => net.ipv6.map(|v6| v6.subnet.to_string()),
        }
    }

    /// How the network meets the outside in this family: IPv6 has nat
    /// only so far (routed IPv6 networks are refused unless internal).
    pub fn gateway_mode(self, net: &Network) -> GatewayMode {
        match (self, net.gateway_mode_ipv4) {
            (Family::V4, mode) | (Family::V6, mode @ GatewayMode::Isolated) => mode,
            (Family::V6, _) => GatewayMode::Nat,
        }
    }
}

#[derive(Default)]
pub struct Declared {
    /// In creation order: Docker inserts a new bridge's rules at the top of
    /// FORWARD, the isolation stages and POSTROUTING, so iptables renders
    /// them newest first.
    pub networks: Vec<Network>,
    /// Container address (either family) -> network name.
    pub endpoints: BTreeMap<IpAddr, String>,
    /// In publishing order: like Docker, a new port's rules go last.
    pub ports: Vec<PortTuple>,
    /// The user's rules, in order.
    pub rules: Vec<ActiveRule>,
}

/// Runs `program args…` with `script` on its stdin (one transaction:
/// `iptables-restore`, `nft -f -`); a refusal carries its stderr.
pub fn run_script(program: &str, args: &[&str], package: &str, script: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (package {package})"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} refused netd's rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A port's tuple, and its IPv6 twin where it is published on `[::]` too.
pub fn port_tuples(p: &PublishedPort) -> impl Iterator<Item = PortTuple> {
    let proto = p.proto.number();
    let v4 = (
        IpAddr::V4(p.host_ip),
        p.host_port,
        proto,
        IpAddr::V4(p.container_ip),
        p.container_port,
    );
    let v6 = p.container_ip6.map(|ip6| {
        (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            p.host_port,
            proto,
            IpAddr::V6(ip6),
            p.container_port,
        )
    });
    std::iter::once(v4).chain(v6)
}

impl Declared {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The network of container address `ip`.
    pub fn bridge_of(&self, ip: IpAddr) -> Option<&Network> {
        self.endpoints.get(&ip).and_then(|n| self.network(n))
    }

    /// The networks that have `family`, in creation order.
    pub fn networks_of(&self, family: Family) -> impl DoubleEndedIterator<Item = &Network> {
        self.networks
            .iter()
            .filter(move |n| family.subnet(n).is_some())
    }

    /// The endpoints of `family`'s addresses.
    pub fn endpoints_of(&self, family: Family) -> impl Iterator<Item = (&IpAddr, &String)> {
        self.endpoints
            .iter()
            .filter(move |(ip, _)| family.holds(**ip))
    }

    /// The ports of `family`, in publishing order.
    pub fn ports_of(&self, family: Family) -> impl Iterator<Item = &PortTuple> {
        self.ports.iter().filter(move |p| family.holds(p.3))
    }

    /// Runs `change`, then `apply`; undoes the change if `apply` fails.
    fn change(
        &mut self,
        change: impl FnOnce(&mut Self),
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        let before = (
            self.networks.clone(),
            self.endpoints.clone(),
            self.ports.clone(),
            self.rules.clone(),
        );
        change(self);
        if let Err(err) = apply(self) {
            (self.networks, self.endpoints, self.ports, self.rules) = before;
            return Err(err);
        }
        Ok(())
    }

    pub fn set_rules(
        &mut self,
        rules: &[ActiveRule],
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        self.change(|d| d.rules = rules.to_vec(), apply)
    }

    pub fn add_network(
        &mut self,
        net: &Network,
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        // DNAT of 127.0.0.1 to a container needs route_localnet on the way out.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge),
            "1",
        )
        .with_context(|| format!("enabling route_localnet on {}", net.bridge))?;
        self.change(
            |d| {
                d.networks.retain(|n| n.name != net.name);
                d.networks.push(net.clone());
            },
            apply,
        )
    }

    pub fn remove_network(
        &mut self,
        net: &Network,
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        self.change(|d| d.networks.retain(|n| n.name != net.name), apply)
    }

    pub fn add_endpoint(
        &mut self,
        net: &Network,
        att: &Attachment,
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        self.change(
            |d| {
                d.endpoints.insert(IpAddr::V4(att.ip), net.name.clone());
                if let Some(ip6) = att.ip6.filter(|_| net.ipv6.is_some()) {
                    d.endpoints.insert(IpAddr::V6(ip6), net.name.clone());
                }
            },
            apply,
        )
    }

    /// Also forgets the address's connections in the kernel's conntrack.
    pub fn remove_endpoint(
        &mut self,
        att: &Attachment,
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        self.change(
            |d| {
                d.endpoints.remove(&IpAddr::V4(att.ip));
                if let Some(ip6) = att.ip6 {
                    d.endpoints.remove(&IpAddr::V6(ip6));
                }
            },
            apply,
        )?;
        super::nf_conntrack::forget_address(IpAddr::V4(att.ip));
        if let Some(ip6) = att.ip6 {
            super::nf_conntrack::forget_address(IpAddr::V6(ip6));
        }
        Ok(())
    }

    pub fn publish(
        &mut self,
        ports: &[PublishedPort],
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        self.change(
            |d| {
                for key in ports.iter().flat_map(port_tuples) {
                    if !d.ports.contains(&key) {
                        d.ports.push(key);
                    }
                }
            },
            apply,
        )
    }

    /// Also forgets the connections through the ports.
    pub fn unpublish(
        &mut self,
        ports: &[PublishedPort],
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        let gone: std::collections::BTreeSet<_> = ports.iter().flat_map(port_tuples).collect();
        self.change(|d| d.ports.retain(|p| !gone.contains(p)), apply)?;
        super::nf_conntrack::forget_backends(ports);
        Ok(())
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The `FirewallDriver` methods a netfilter driver hands to its
/// [`Declared`] (`self.decl`), applied with `self.applier()` (a closure that borrows nothing).
macro_rules! delegate_to_declared {
    () => {
        fn set_rules(&mut self, rules: &[crate::rule::ActiveRule]) -> anyhow::Result<()> {
            self.decl.set_rules(rules, self.applier())
        }

        fn add_network(
            &mut self,
            net: &crate::state::Network,
            _bridge_mac: [u8; 6],
        ) -> anyhow::Result<()> {
            self.decl.add_network(net, self.applier())
        }

        fn remove_network(&mut self, net: &crate::state::Network) -> anyhow::Result<()> {
            self.decl.remove_network(net, self.applier())
        }

        fn add_endpoint(
            &mut self,
            net: &crate::state::Network,
            att: &crate::state::Attachment,
            _host_ifindex: u32,
            _mac: [u8; 6],
        ) -> anyhow::Result<()> {
            self.decl.add_endpoint(net, att, self.applier())
        }

        fn remove_endpoint(&mut self, att: &crate::state::Attachment) -> anyhow::Result<()> {
            self.decl.remove_endpoint(att, self.applier())
        }

        fn publish(&mut self, ports: &[crate::state::PublishedPort]) -> anyhow::Result<()> {
            self.decl.publish(ports, self.applier())
        }

        fn unpublish(&mut self, ports: &[crate::state::PublishedPort]) -> anyhow::Result<()> {
            self.decl.unpublish(ports, self.applier())
        }
    };
}
pub(crate) use delegate_to_declared;
