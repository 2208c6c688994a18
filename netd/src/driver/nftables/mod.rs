//! The nftables datapath: the table Docker 29's nftables backend makes for
//! the same topology (`ip docker-bridges`: base chains that dispatch
//! through verdict maps to four chains per bridge), as netd's own table
//! `ip netd-bridges`, rewritten whole in one `nft -f` transaction per
//! change (as Docker 29 applies its scripts). docs/nftables-path.md lists
//! every difference from Docker's ruleset. The table is rendered in
//! `render` (a pure function, snapshot-tested in `golden`).

#[cfg(test)]
mod golden;
mod render;

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result};

use super::{
    BoxFuture, ConntrackRow, DatapathMetrics, FirewallDriver, HostInfo, Observability,
    netfilter::Declared, nf_conntrack,
};
use crate::api::{DatapathStatus, RuleSetStatus};

/// netd's table (Docker 29's is `docker-bridges`: both can live side by side).
pub const TABLE: &str = "netd-bridges";

/// Packet mark bit for connections to published ports that come from a
/// container (set in nat prerouting, read in postrouting), as on the
/// iptables datapath.
const HAIRPIN_MARK: &str = "0x02000000";

#[derive(Default)]
pub struct NftablesDriver {
    decl: Declared,
    /// True from start until the daemon has re-declared everything: the
    /// previous run's table keeps forwarding until the new one replaces it
    /// in one transaction (no gap on restart).
    deferred: bool,
}

impl NftablesDriver {
    pub fn start(_host: &HostInfo) -> Result<Self> {
        super::set_bridge_netfilter(true)?;
        Ok(Self {
            deferred: true,
            ..Self::default()
        })
    }

    /// Applies `decl`'s table (nothing while `deferred`).
    fn applier(deferred: bool) -> impl Fn(&Declared) -> Result<()> {
        move |decl| match deferred {
            true => Ok(()),
            false => nft(&render(decl)),
        }
    }

    fn apply(&self) -> Result<()> {
        Self::applier(self.deferred)(&self.decl)
    }
}

use render::render;

/// Runs an `nft` script: one transaction, all of it or none.
fn nft(script: &str) -> Result<()> {
    super::netfilter::run_script("nft", &["-f", "-"], "nftables", script)
}

impl FirewallDriver for NftablesDriver {
    fn name(&self) -> &'static str {
        "nftables"
    }

    super::netfilter::delegate_to_declared!();

    /// The table gone behind netd's back (`nft flush ruleset`, a firewall
    /// reload) is said here and made again whole by `reconciled`, which
    /// follows: nothing watches nftables, as with Docker 29.
    fn repair(&mut self) -> Result<Vec<String>> {
        // At start the table is made as a matter of course (a first start
        // has none): only a running daemon's table can have gone.
        if self.deferred {
            return Ok(Vec::new());
        }
        let listed = Command::new("nft")
            .args(["list", "table", "ip", TABLE])
            .output()
            .context("running nft (package nftables)")?;
        Ok(match listed.status.success() {
            true => Vec::new(),
            false => vec![format!("nftables table ip {TABLE} (it was gone)")],
        })
    }

    /// Replaces the previous run's table with the declared one, in one
    /// transaction.
    fn reconciled(&mut self) -> Result<Vec<String>> {
        self.deferred = false;
        self.apply()?;
        Ok(Vec::new())
    }

    fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        nf_conntrack::rows()
    }

    fn gc(&mut self) -> Result<usize> {
        Ok(0) // the kernel's conntrack expires its own entries
    }

    fn status(&self) -> Result<DatapathStatus> {
        // The table applied last, counted per chain.
        let mut rules: BTreeMap<String, usize> = BTreeMap::new();
        let mut chain = None;
        for line in render(&self.decl).lines() {
            let line = line.trim();
            if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|l| l.strip_suffix(" {"))
            {
                chain = Some(name.to_owned());
                rules.entry(name.to_owned()).or_default();
            } else if line == "}" {
                chain = None;
            } else if let Some(chain) = &chain
                && !line.starts_with("type ")
            {
                *rules.entry(chain.clone()).or_default() += 1;
            }
        }
        Ok(DatapathStatus::Nftables(RuleSetStatus {
            rules,
            ports: self.decl.ports.len(),
        }))
    }

    fn begin_teardown(&mut self) {
        // One rewrite per container removed would make `down` quadratic;
        // the table goes at the end.
        self.deferred = true;
    }

    fn remove_all(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            nft(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"))?;
            self.decl.clear();
            Ok(())
        })
    }
}

impl Observability for NftablesDriver {
    fn metrics(&self) -> Result<DatapathMetrics> {
        nf_conntrack::metrics()
    }
}
