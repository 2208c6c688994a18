//! The nftables datapath: the tables Docker 29's nftables backend makes for
//! the same topology (`ip docker-bridges` and `ip6 docker-bridges`: base
//! chains that dispatch through verdict maps to four chains per bridge), as
//! netd's own tables `ip netd-bridges` and `ip6 netd-bridges`, both
//! rewritten whole in one `nft -f` transaction per change (as Docker 29
//! applies its scripts). docs/nftables-path.md lists
//! every difference from Docker's ruleset. The table is rendered in
//! `render` (a pure function, snapshot-tested in `golden`).

#[cfg(test)]
mod golden;
mod render;

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, anyhow};
use netd_common::DropReason;

use super::{
    BoxFuture, ConntrackRow, DatapathMetrics, FirewallDriver, HostInfo, Observability,
    netfilter::{Declared, Family},
    nf_conntrack,
};
use crate::api::{DatapathStatus, RuleSetStatus};

/// netd's table (Docker 29's is `docker-bridges`: both can live side by side).
pub const TABLE: &str = "netd-bridges";

/// Packet mark bit for connections to published ports that come from a
/// container (set in nat prerouting, read in postrouting), as on the
/// iptables datapath.
const HAIRPIN_MARK: &str = "0x02000000";

/// The named counters the drop rules count in, and the drop reason each
/// stands for (the eBPF datapath's names, so `/metrics` reads the same on
/// both). One per kind of drop rule: Docker 29 counts per rule.
pub const DROP_COUNTERS: [(&str, DropReason); 8] = [
    ("drops-direct-access", DropReason::UnsolicitedInbound),
    ("drops-remote-loopback", DropReason::LoopbackFromOutside),
    ("drops-internal-ingress", DropReason::InternalNetwork),
    ("drops-internal-egress", DropReason::InternalNetwork),
    ("drops-isolation", DropReason::NetworkIsolation),
    ("drops-icc", DropReason::IccDisabled),
    ("drops-unpublished-port", DropReason::UnsolicitedInbound),
    ("drops-user-rule", DropReason::UserRule),
];

/// (packets, bytes) per (table family, named drop counter).
pub type DropCounts = BTreeMap<(String, String), (u64, u64)>;

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

    /// Applies a declared table (nothing while `deferred`). The drop
    /// counters start where the table it replaces had them (read just
    /// before: a drop in the milliseconds between is not counted), so the
    /// kernel's table is their only store and they survive restarts.
    fn applier(&self) -> impl Fn(&Declared) -> Result<()> + 'static {
        let deferred = self.deferred;
        move |decl| match deferred {
            true => Ok(()),
            false => nft(&render::render_counting(decl, &counts_to_carry())),
        }
    }

    fn apply(&self) -> Result<()> {
        self.applier()(&self.decl)
    }

    /// Drops per reason (its label), as the table counts them.
    fn drops(&self) -> BTreeMap<&'static str, u64> {
        let mut drops = BTreeMap::new();
        for ((_, counter), (packets, _)) in counts_to_carry() {
            if let Some((_, reason)) = DROP_COUNTERS.iter().find(|(name, _)| *name == counter) {
                *drops.entry(reason.label()).or_default() += packets;
            }
        }
        drops
    }
}

/// The drop counters of the table in the kernel; none when there is no
/// table (a first start, or flushed behind netd's back: those counts are
/// gone).
fn counts_to_carry() -> DropCounts {
    drop_counters().unwrap_or_else(|err| {
        tracing::debug!("nftables drop counters: {err:#}");
        DropCounts::new()
    })
}

/// What each named drop counter of netd's tables has counted.
fn drop_counters() -> Result<DropCounts> {
    let listed = Command::new("nft")
        .args(["-j", "list", "counters"])
        .output()
        .context("running nft (package nftables)")?;
    if !listed.status.success() {
        return Err(anyhow!(
            "nft list counters: {}",
            String::from_utf8_lossy(&listed.stderr).trim()
        ));
    }
    parse_drop_counters(&listed.stdout)
}

/// `nft -j list counters` output: the family, name, packets and bytes of
/// each counter of netd's tables.
fn parse_drop_counters(json: &[u8]) -> Result<DropCounts> {
    let listed: serde_json::Value =
        serde_json::from_slice(json).context("parsing nft's JSON listing")?;
    Ok(listed["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|object| {
            let counter = object.get("counter")?;
            if counter["table"].as_str()? != TABLE {
                return None;
            }
            Some((
                (
                    counter["family"].as_str()?.to_owned(),
                    counter["name"].as_str()?.to_owned(),
                ),
                (counter["packets"].as_u64()?, counter["bytes"].as_u64()?),
            ))
        })
        .collect())
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
        let mut gone = Vec::new();
        let has_ipv6 = self.decl.networks_of(Family::V6).next().is_some();
        let families = Family::BOTH
            .into_iter()
            .filter(|f| *f == Family::V4 || has_ipv6);
        for family in families.map(render::family_name) {
            let listed = Command::new("nft")
                .args(["list", "table", family, TABLE])
                .output()
                .context("running nft (package nftables)")?;
            if !listed.status.success() {
                gone.push(format!("nftables table {family} {TABLE} (it was gone)"));
            }
        }
        Ok(gone)
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
        // The tables applied last, counted per chain (`ip6 …` for the
        // IPv6 table's).
        let mut rules: BTreeMap<String, usize> = BTreeMap::new();
        let (mut chain, mut prefix) = (None, "");
        for line in render(&self.decl).lines() {
            let line = line.trim();
            if line.starts_with("table ip6 ") {
                prefix = "ip6 ";
            }
            if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|l| l.strip_suffix(" {"))
            {
                let name = format!("{prefix}{name}");
                chain = Some(name.clone());
                rules.entry(name).or_default();
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
            ports: self.decl.ports_of(Family::V4).count(),
            drops: self
                .drops()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(reason, n)| (reason.to_owned(), n))
                .collect(),
        }))
    }

    fn begin_teardown(&mut self) {
        // One rewrite per container removed would make `down` quadratic;
        // the table goes at the end.
        self.deferred = true;
    }

    fn remove_all(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut script = String::new();
            for family in Family::BOTH.map(render::family_name) {
                script.push_str(&format!(
                    "table {family} {TABLE} {{}}\ndelete table {family} {TABLE}\n"
                ));
            }
            nft(&script)?;
            self.decl.clear();
            Ok(())
        })
    }
}

impl Observability for NftablesDriver {
    fn metrics(&self) -> Result<DatapathMetrics> {
        let mut metrics = nf_conntrack::metrics()?;
        let drops = self.drops();
        // Every reason the table can count, zeros included (a series that
        // appears only once it counts breaks rate()).
        let mut reasons: Vec<&'static str> = DROP_COUNTERS.iter().map(|(_, r)| r.label()).collect();
        reasons.sort();
        reasons.dedup();
        metrics.drops = reasons
            .into_iter()
            .map(|reason| (reason, drops.get(reason).copied().unwrap_or(0)))
            .collect();
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_are_read_from_nfts_listing() {
        let listed =
            br#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "ip", "name": "drops-isolation", "table": "netd-bridges",
                         "handle": 2, "packets": 7, "bytes": 420}},
            {"counter": {"family": "ip6", "name": "drops-icc", "table": "netd-bridges",
                         "handle": 3, "packets": 2, "bytes": 160}},
            {"counter": {"family": "ip", "name": "drops-icc", "table": "docker-bridges",
                         "handle": 3, "packets": 5, "bytes": 300}}]}"#;
        let counts = parse_drop_counters(listed).unwrap();
        let key = |family: &str, name: &str| (family.to_owned(), name.to_owned());
        assert_eq!(counts[&key("ip", "drops-isolation")], (7, 420));
        assert_eq!(counts[&key("ip6", "drops-icc")], (2, 160));
        assert_eq!(counts.len(), 2, "another table's counters are not netd's");
        assert!(parse_drop_counters(b"not json").is_err());
    }
}
