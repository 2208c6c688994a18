//! What the netfilter datapaths (iptables, nftables) hold: the declared
//! networks, endpoints, ports and user rules they render their rules from,
//! each change applied whole and undone if the kernel refuses it.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{
    rule::ActiveRule,
    state::{Attachment, Network, PublishedPort},
};

/// (host address, host port, protocol, container address, container port).
pub type PortTuple = (Ipv4Addr, u16, u8, Ipv4Addr, u16);

#[derive(Default)]
pub struct Declared {
    /// In creation order: Docker inserts a new bridge's rules at the top of
    /// FORWARD, the isolation stages and POSTROUTING, so iptables renders
    /// them newest first.
    pub networks: Vec<Network>,
    /// Container address -> network name.
    pub endpoints: BTreeMap<Ipv4Addr, String>,
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

pub fn port_tuple(p: &PublishedPort) -> PortTuple {
    (
        p.host_ip,
        p.host_port,
        p.proto.number(),
        p.container_ip,
        p.container_port,
    )
}

impl Declared {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The network of container address `ip`.
    pub fn bridge_of(&self, ip: Ipv4Addr) -> Option<&Network> {
        self.endpoints.get(&ip).and_then(|n| self.network(n))
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
                d.endpoints.insert(att.ip, net.name.clone());
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
                d.endpoints.remove(&att.ip);
            },
            apply,
        )?;
        super::nf_conntrack::forget_address(att.ip);
        Ok(())
    }

    pub fn publish(
        &mut self,
        ports: &[PublishedPort],
        apply: impl Fn(&Self) -> Result<()>,
    ) -> Result<()> {
        self.change(
            |d| {
                for key in ports.iter().map(port_tuple) {
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
        let gone: std::collections::BTreeSet<_> = ports.iter().map(port_tuple).collect();
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
