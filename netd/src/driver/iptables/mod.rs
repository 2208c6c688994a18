//! The iptables datapath: the rules Docker's bridge driver installs for the
//! same topology (without its userland proxy), in netd's own chains, applied
//! with `iptables-restore --noflush`. It is the reference the eBPF datapath
//! is compared against; docs/iptables-path.md maps each rule to Docker's.
//! The rule set is rendered in `render` (a pure function, snapshot-tested
//! in `tests`).

#[cfg(test)]
mod golden;
mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    BoxFuture, ConntrackRow, DatapathMetrics, FirewallDriver, HostInfo, Observability, TableFill,
};
use crate::{
    api::{DatapathStatus, FlowDirection, IpProto, IptablesStatus, NatKind},
    rule::ActiveRule,
    state::{Attachment, Network, PublishedPort},
};

/// Jumps from the built-in chains into netd's: (table, chain, rule).
const JUMPS: &[(&str, &str, &str)] = &[
    ("filter", "FORWARD", "-j NETD-FORWARD"),
    ("nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j NETD"),
    ("nat", "OUTPUT", "-m addrtype --dst-type LOCAL -j NETD"),
    ("nat", "POSTROUTING", "-j NETD-POSTROUTING"),
    ("raw", "PREROUTING", "-j NETD-RAW"),
];

/// Packet mark bit for connections to published ports that come from a
/// container (set in nat PREROUTING, read in POSTROUTING).
const HAIRPIN_MARK: &str = "0x2000000";

/// Chains netd owns and rewrites on every change (NETD-USER holds the
/// user's rules from `netd rule`, netd's DOCKER-USER).
const CHAINS: &[(&str, &[&str])] = &[
    ("raw", &["NETD-RAW"]),
    ("nat", &["NETD", "NETD-POSTROUTING"]),
    (
        "filter",
        &[
            "NETD-FORWARD",
            "NETD-USER",
            "NETD-ISOLATION-STAGE-1",
            "NETD-ISOLATION-STAGE-2",
            "NETD",
        ],
    ),
];

#[derive(Default)]
pub struct IptablesDriver {
    /// In creation order: Docker inserts a new bridge's rules at the top of
    /// FORWARD, the isolation stages and POSTROUTING, so they are rendered
    /// newest first and every packet walks the rules of newer bridges first.
    networks: Vec<Network>,
    /// Container address -> network name.
    endpoints: BTreeMap<Ipv4Addr, String>,
    /// In publishing order: like Docker, a new port's rules go last.
    ports: Vec<(Ipv4Addr, u16, u8, Ipv4Addr, u16)>,
    /// The user's rules, in order.
    rules: Vec<ActiveRule>,
    /// True from start until the daemon has re-declared everything: the
    /// rules of the previous run keep forwarding until the whole new set
    /// replaces them in one transaction per table (no gap on restart).
    deferred: bool,
}

impl IptablesDriver {
    pub fn start(_host: &HostInfo) -> Result<Self> {
        super::set_bridge_netfilter(true)?;
        Ok(Self {
            deferred: true,
            ..Self::default()
        })
    }

    /// The jumps from the built-in chains, each once (the chains exist by now).
    fn ensure_jumps() -> Result<()> {
        for (table, chain, rule) in JUMPS {
            let rule: Vec<&str> = rule.split(' ').collect();
            let present = run_ok(
                Command::new("iptables")
                    .args(["-t", table, "-C", chain])
                    .args(&rule),
            )?;
            if !present {
                run(Command::new("iptables")
                    .args(["-t", table, "-I", chain, "1"])
                    .args(&rule))?;
            }
        }
        Ok(())
    }

    fn apply(&self) -> Result<()> {
        if self.deferred {
            return Ok(());
        }
        let rules = self.render();
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running iptables-restore (package iptables)")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "iptables-restore refused netd's rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn bridge_of(&self, ip: Ipv4Addr) -> Option<&Network> {
        self.endpoints.get(&ip).and_then(|n| self.network(n))
    }

    fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// Forgets conntrack entries (the kernel's) matching `args`.
    fn flush_conntrack(args: &[&str]) {
        // Exit status 1 means nothing matched.
        let _ = Command::new("conntrack").arg("-D").args(args).output();
    }
}

fn port_tuple(p: &PublishedPort) -> (Ipv4Addr, u16, u8, Ipv4Addr, u16) {
    (
        p.host_ip,
        p.host_port,
        p.proto.number(),
        p.container_ip,
        p.container_port,
    )
}

impl FirewallDriver for IptablesDriver {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn set_rules(&mut self, rules: &[ActiveRule]) -> Result<()> {
        let before = std::mem::replace(&mut self.rules, rules.to_vec());
        if let Err(err) = self.apply() {
            self.rules = before;
            return Err(err);
        }
        Ok(())
    }

    fn add_network(&mut self, net: &Network, _bridge_mac: [u8; 6]) -> Result<()> {
        // DNAT of 127.0.0.1 to a container needs route_localnet on the way out.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", net.bridge),
            "1",
        )
        .with_context(|| format!("enabling route_localnet on {}", net.bridge))?;
        self.networks.retain(|n| n.name != net.name);
        self.networks.push(net.clone());
        self.apply()
    }

    fn remove_network(&mut self, net: &Network) -> Result<()> {
        self.networks.retain(|n| n.name != net.name);
        self.apply()
    }

    fn add_endpoint(
        &mut self,
        net: &Network,
        att: &Attachment,
        _host_ifindex: u32,
        _mac: [u8; 6],
    ) -> Result<()> {
        self.endpoints.insert(att.ip, net.name.clone());
        self.apply()
    }

    fn remove_endpoint(&mut self, att: &Attachment) -> Result<()> {
        self.endpoints.remove(&att.ip);
        self.apply()?;
        let ip = att.ip.to_string();
        Self::flush_conntrack(&["-s", &ip]);
        Self::flush_conntrack(&["-d", &ip]);
        Self::flush_conntrack(&["--reply-src", &ip]);
        Ok(())
    }

    fn publish(&mut self, ports: &[PublishedPort]) -> Result<()> {
        let before = self.ports.len();
        for key in ports.iter().map(port_tuple) {
            if !self.ports.contains(&key) {
                self.ports.push(key);
            }
        }
        if let Err(err) = self.apply() {
            self.ports.truncate(before);
            return Err(err);
        }
        Ok(())
    }

    fn unpublish(&mut self, ports: &[PublishedPort]) -> Result<()> {
        let gone: BTreeSet<_> = ports.iter().map(port_tuple).collect();
        self.ports.retain(|p| !gone.contains(p));
        self.apply()?;
        // Connections through these ports are the ones the backends answer.
        let backends: BTreeSet<String> = ports.iter().map(|p| p.container_ip.to_string()).collect();
        for ip in &backends {
            Self::flush_conntrack(&["--reply-src", ip]);
        }
        Ok(())
    }

    /// Replaces every netd chain with the declared set: `iptables-restore
    /// --noflush` declares each chain (which empties it) and fills it again
    /// in one commit per table, so packets see the old rules or the new.
    fn reconciled(&mut self) -> Result<Vec<String>> {
        self.deferred = false;
        self.apply()?;
        Self::ensure_jumps()?;
        Ok(Vec::new())
    }

    fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        let out = Command::new("conntrack")
            .arg("-L")
            .output()
            .context("running conntrack (package conntrack)")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_conntrack_line)
            .collect())
    }

    fn gc(&mut self) -> Result<usize> {
        Ok(0) // the kernel's conntrack expires its own entries
    }

    fn status(&self) -> Result<DatapathStatus> {
        // The rule set applied last, counted per table (reconciliation puts
        // back any that were removed behind netd's back).
        let mut rules: BTreeMap<String, usize> = BTreeMap::new();
        let mut table = String::new();
        for line in self.render().lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.to_owned();
                rules.entry(table.clone()).or_default();
            } else if line.starts_with("-A ") {
                *rules.entry(table.clone()).or_default() += 1;
            }
        }
        Ok(DatapathStatus::Iptables(IptablesStatus {
            rules,
            ports: self.ports.len(),
        }))
    }

    fn begin_teardown(&mut self) {
        // One reload per container removed would make `down` quadratic
        // (a minute per 100 containers at 2,000); the rules go at the end.
        self.deferred = true;
    }

    fn remove_all(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.remove_rules() })
    }
}

impl Observability for IptablesDriver {
    /// The kernel's conntrack table: its fill, and its entries by protocol
    /// and direction (the kernel keeps one entry per connection).
    fn metrics(&self) -> Result<DatapathMetrics> {
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let tables = match (read("nf_conntrack_count"), read("nf_conntrack_max")) {
            (Some(entries), Some(capacity)) => vec![TableFill {
                name: "nf_conntrack".to_owned(),
                entries: entries as usize,
                capacity: capacity as u32,
                evicted: None,
            }],
            _ => Vec::new(),
        };
        let mut conntrack: BTreeMap<(String, String), u64> = BTreeMap::new();
        for row in self.conntrack().unwrap_or_default() {
            let key = (row.proto.to_string(), row.direction.label().to_owned());
            *conntrack.entry(key).or_default() += 1;
        }
        Ok(DatapathMetrics {
            tables,
            conntrack: conntrack.into_iter().map(|((p, d), n)| (p, d, n)).collect(),
            ..Default::default()
        })
    }
}

impl IptablesDriver {
    /// The jumps into netd's chains, then the chains.
    fn remove_rules(&mut self) -> Result<()> {
        for (table, chain, rule) in JUMPS {
            let rule: Vec<&str> = rule.split(' ').collect();
            while run_ok(
                Command::new("iptables")
                    .args(["-t", table, "-D", chain])
                    .args(&rule),
            )? {}
        }
        let mut script = String::new();
        for (table, chains) in CHAINS {
            let _ = writeln!(script, "*{table}");
            for chain in *chains {
                let _ = writeln!(script, ":{chain} - [0:0]");
            }
            for chain in *chains {
                let _ = writeln!(script, "-X {chain}");
            }
            let _ = writeln!(script, "COMMIT");
        }
        let mut child = Command::new("iptables-restore")
            .arg("--noflush")
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())?;
        child.wait()?;
        self.networks.clear();
        self.endpoints.clear();
        self.ports.clear();
        Ok(())
    }
}

/// One line of `conntrack -L`: original tuple, then reply tuple.
fn parse_conntrack_line(line: &str) -> Option<ConntrackRow> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let proto = words.get(1)?.parse().ok().map(IpProto::from_number)?;
    let expires: i64 = words.get(2)?.parse().ok()?;
    let field = |key: &str, nth: usize| {
        words
            .iter()
            .filter_map(|w| w.strip_prefix(key))
            .nth(nth)
            .unwrap_or("0")
    };
    let tuple = |nth: usize| -> Option<(SocketAddr, SocketAddr)> {
        let (sport, dport) = if proto == IpProto::Icmp {
            (field("id=", nth), field("id=", nth))
        } else {
            (field("sport=", nth), field("dport=", nth))
        };
        let addr =
            |ip: &str, port: &str| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?));
        Some((
            addr(field("src=", nth), sport)?,
            addr(field("dst=", nth), dport)?,
        ))
    };
    let (src, dst) = tuple(0)?;
    let (reply_src, reply_dst) = tuple(1)?;
    Some(ConntrackRow {
        proto,
        src,
        dst,
        translated_src: reply_dst,
        translated_dst: reply_src,
        direction: FlowDirection::Original,
        nat: NatKind::of(reply_dst != src, reply_src != dst),
        expires_in_s: expires,
    })
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_ok(cmd: &mut Command) -> Result<bool> {
    Ok(cmd
        .output()
        .with_context(|| format!("running {cmd:?}"))?
        .status
        .success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrack_lines() {
        let line = "tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=198.51.100.1 sport=41248 dport=8080 src=172.17.0.2 dst=198.51.100.2 sport=80 dport=41248 [ASSURED] mark=0 use=1";
        let row = parse_conntrack_line(line).unwrap();
        assert_eq!(row.proto, IpProto::Tcp);
        assert_eq!(
            (row.src.to_string(), row.dst.to_string()),
            ("198.51.100.2:41248".into(), "198.51.100.1:8080".into())
        );
        assert_eq!(row.translated_dst.to_string(), "172.17.0.2:80");
        assert_eq!(row.nat, NatKind::Dnat);
        assert_eq!(row.expires_in_s, 431999);
    }
}
