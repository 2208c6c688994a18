//! The iptables datapath: the rules Docker's bridge driver installs for the
//! same topology (without its userland proxy), in netd's own chains, applied
//! with `iptables-restore --noflush` (and `ip6tables-restore` for networks
//! with IPv6, as Docker 27 does). It is the reference the eBPF datapath
//! is compared against; docs/iptables-path.md maps each rule to Docker's.
//! The rule set is rendered in `render` (a pure function, snapshot-tested
//! in `tests`).

#[cfg(test)]
mod golden;
mod render;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, bail};

use super::{
    BoxFuture, ConntrackRow, DatapathMetrics, FirewallDriver, HostInfo, Observability,
    netfilter::{Declared, Family},
    nf_conntrack,
};
use crate::api::{DatapathStatus, RuleSetStatus};

use render::render;

/// Jumps from the built-in chains into netd's: (table, chain, rule).
const JUMPS: &[(&str, &str, &str)] = &[
    ("filter", "FORWARD", "-j NETD-FORWARD"),
    ("nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j NETD"),
    ("nat", "OUTPUT", "-m addrtype --dst-type LOCAL -j NETD"),
    ("nat", "POSTROUTING", "-j NETD-POSTROUTING"),
    ("raw", "PREROUTING", "-j NETD-RAW"),
];

/// IPv6's: as IPv4's but for `::1` (Docker 27's ip6tables rule: IPv6 has
/// no route_localnet, a packet from `::1` DNAT'd to a container is lost).
const JUMPS6: &[(&str, &str, &str)] = &[
    ("filter", "FORWARD", "-j NETD-FORWARD"),
    ("nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j NETD"),
    (
        "nat",
        "OUTPUT",
        "! -d ::1/128 -m addrtype --dst-type LOCAL -j NETD",
    ),
    ("nat", "POSTROUTING", "-j NETD-POSTROUTING"),
    ("raw", "PREROUTING", "-j NETD-RAW"),
];

/// The family's command (`iptables`, `ip6tables`) and jumps.
fn tool(
    family: Family,
) -> (
    &'static str,
    &'static [(&'static str, &'static str, &'static str)],
) {
    match family {
        Family::V4 => ("iptables", JUMPS),
        Family::V6 => ("ip6tables", JUMPS6),
    }
}

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
    decl: Declared,
    /// True from start until the daemon has re-declared everything: the
    /// rules of the previous run keep forwarding until the whole new set
    /// replaces them in one transaction per table (no gap on restart).
    deferred: bool,
    /// What ip6tables holds of netd's (shared with the appliers).
    ipv6: Arc<Mutex<Ipv6Rules>>,
}

/// IPv6's rule set as the kernel holds it. Most changes leave it as it is
/// (an IPv4-only host's always do): it is restored only when it changed.
/// Without an IPv6 network netd has no chains in ip6tables at all, so a
/// host without ip6tables (IPv6 off, no modules) works as before.
#[derive(Default)]
struct Ipv6Rules {
    /// The set applied last (empty: none of netd's chains); none: unknown
    /// (the start, a repair).
    applied: Option<String>,
    /// Whether the jumps into netd's ip6tables chains are in place.
    jumps: bool,
}

impl IptablesDriver {
    pub fn start(_host: &HostInfo) -> Result<Self> {
        super::set_bridge_netfilter(true)?;
        Ok(Self {
            deferred: true,
            ..Self::default()
        })
    }

    /// Applies `decl`'s rule sets (nothing while `deferred`): IPv4's, then
    /// IPv6's where it changed. If IPv6's is refused, both are put back as
    /// they were (ip6tables-restore commits table by table), so a refused
    /// change leaves the kernel as it was — except at the start, where the
    /// previous run's sets are not known.
    fn applier(&self) -> impl Fn(&Declared) -> Result<()> + 'static {
        let before = (!self.deferred).then(|| render(&self.decl, Family::V4));
        let ipv6 = self.ipv6.clone();
        let deferred = self.deferred;
        move |decl| {
            if deferred {
                return Ok(());
            }
            restore(Family::V4, &render(decl, Family::V4))?;
            let mut state = ipv6.lock().unwrap_or_else(|e| e.into_inner());
            let rules = render(decl, Family::V6);
            if state.applied.as_ref() == Some(&rules) {
                return Ok(());
            }
            let applied = match rules.is_empty() {
                true => {
                    remove_chains6();
                    Ok(())
                }
                false => restore(Family::V6, &rules).and_then(|()| match state.jumps {
                    true => Ok(()),
                    false => ensure_jumps(Family::V6),
                }),
            };
            if let Err(err) = applied {
                if let Some(before) = &before
                    && let Err(err) = restore(Family::V4, before)
                {
                    tracing::warn!("putting the previous IPv4 rules back: {err:#}");
                }
                match state.applied.as_deref() {
                    Some("") => remove_chains6(),
                    Some(previous) => {
                        if let Err(err) = restore(Family::V6, previous) {
                            tracing::warn!("putting the previous IPv6 rules back: {err:#}");
                        }
                    }
                    None => {} // the previous run's, left as they are
                }
                return Err(err);
            }
            state.jumps = !rules.is_empty();
            state.applied = Some(rules);
            Ok(())
        }
    }

    fn apply(&self) -> Result<()> {
        self.applier()(&self.decl)
    }
}

/// The jumps from the built-in chains of `family`, each once (the chains
/// exist by now).
fn ensure_jumps(family: Family) -> Result<()> {
    let (program, jumps) = tool(family);
    for (table, chain, rule) in jumps {
        let rule: Vec<&str> = rule.split(' ').collect();
        let present = run_ok(
            Command::new(program)
                .args(["-t", table, "-C", chain])
                .args(&rule),
        )?;
        if !present {
            run(Command::new(program)
                .args(["-t", table, "-I", chain, "1"])
                .args(&rule))?;
        }
    }
    Ok(())
}

/// `iptables-restore --noflush` (`ip6tables-restore`): each table's chains
/// replaced in one commit.
fn restore(family: Family, rules: &str) -> Result<()> {
    let program = format!("{}-restore", tool(family).0);
    super::netfilter::run_script(&program, &["--noflush"], "iptables", rules)
}

impl FirewallDriver for IptablesDriver {
    fn name(&self) -> &'static str {
        "iptables"
    }

    super::netfilter::delegate_to_declared!();

    /// Replaces every netd chain with the declared set: `iptables-restore
    /// --noflush` declares each chain (which empties it) and fills it again
    /// in one commit per table, so packets see the old rules or the new.
    fn reconciled(&mut self) -> Result<Vec<String>> {
        self.deferred = false;
        // The kernel's IPv6 set is not known here (a previous run's, or one
        // changed behind netd's back): applied whole again.
        *self.ipv6.lock().unwrap_or_else(|e| e.into_inner()) = Ipv6Rules::default();
        self.apply()?;
        ensure_jumps(Family::V4)?;
        Ok(Vec::new())
    }

    fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        nf_conntrack::rows()
    }

    fn gc(&mut self) -> Result<usize> {
        Ok(0) // the kernel's conntrack expires its own entries
    }

    fn status(&self) -> Result<DatapathStatus> {
        // The rule sets applied last, counted per table (reconciliation puts
        // back any that were removed behind netd's back): `nat`, … for
        // IPv4, `ip6 nat`, … for IPv6.
        let mut rules: BTreeMap<String, usize> = BTreeMap::new();
        for family in Family::BOTH {
            let prefix = if family == Family::V6 { "ip6 " } else { "" };
            let mut table = String::new();
            for line in render(&self.decl, family).lines() {
                if let Some(name) = line.strip_prefix('*') {
                    table = format!("{prefix}{name}");
                    rules.entry(table.clone()).or_default();
                } else if line.starts_with("-A ") {
                    *rules.entry(table.clone()).or_default() += 1;
                }
            }
        }
        Ok(DatapathStatus::Iptables(RuleSetStatus {
            rules,
            ports: self.decl.ports_of(Family::V4).count(),
            drops: BTreeMap::new(),
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
    fn metrics(&self) -> Result<DatapathMetrics> {
        nf_conntrack::metrics()
    }
}

impl IptablesDriver {
    /// The jumps into netd's chains, then the chains, of both families.
    fn remove_rules(&mut self) -> Result<()> {
        let v4 = remove_family(Family::V4);
        remove_chains6();
        self.decl.clear();
        *self.ipv6.lock().unwrap_or_else(|e| e.into_inner()) = Ipv6Rules::default();
        v4
    }
}

/// netd's ip6tables jumps and chains gone, where there are any (a host
/// without ip6tables has none: nothing to say).
fn remove_chains6() {
    if let Err(err) = remove_family(Family::V6) {
        tracing::debug!("removing netd's ip6tables chains: {err:#}");
    }
}

/// The jumps into netd's chains of `family`, then the chains.
fn remove_family(family: Family) -> Result<()> {
    let (program, jumps) = tool(family);
    for (table, chain, rule) in jumps {
        let rule: Vec<&str> = rule.split(' ').collect();
        while run_ok(
            Command::new(program)
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
    let mut child = Command::new(format!("{program}-restore"))
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    child.wait()?;
    Ok(())
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
