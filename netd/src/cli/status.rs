//! `netd status`, `netd repair`, `netd conntrack ls`, `netd monitor`, `netd down`.

use std::io::Write as _;

use anyhow::Result;
use clap::Subcommand;
use netd::{
    api::{DatapathStatus, EbpfStatus, MonitorEvent, RepairReport, RuleSetStatus, Status},
    client::Client,
};

use super::output::{Format, print_json, print_rows, table};

#[derive(Subcommand)]
pub enum ConntrackCommand {
    /// List tracked connections (both directions of each).
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub fn status(client: &Client, format: Format) -> Result<()> {
    let status = client.status()?;
    match format {
        Format::Json => print_json(&status),
        Format::Table => {
            print!("{}", status_text(&status));
            Ok(())
        }
    }
}

pub fn repair(client: &Client, format: Format) -> Result<()> {
    let report = client.repair()?;
    match format {
        Format::Json => print_json(&report),
        Format::Table => {
            print!("{}", repairs_text("repaired", &report));
            Ok(())
        }
    }
}

/// `netd status` for people: one section per concern, tables aligned.
fn status_text(status: &Status) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let datapath = match &status.datapath {
        DatapathStatus::Ebpf(_) => "ebpf",
        DatapathStatus::Iptables(_) => "iptables",
        DatapathStatus::Nftables(_) => "nftables",
        DatapathStatus::Noop {} => "noop (enforces nothing)",
    };
    for warning in &status.warnings {
        line(format!("WARNING      {warning}"));
    }
    line(format!("datapath     {datapath}"));
    line(format!(
        "objects      {} networks, {} containers, {} published ports, {} user rules",
        status.networks,
        status.containers,
        status.published_ports,
        status.user_rules.len()
    ));
    if !status.veths_being_deleted.is_empty() {
        line(format!(
            "removing     the veths of removed containers: {}",
            status.veths_being_deleted.join(", ")
        ));
    }
    match &status.datapath {
        DatapathStatus::Ebpf(ebpf) => ebpf_text(ebpf, &mut line),
        DatapathStatus::Iptables(iptables) => rule_set_text("table", iptables, &mut line),
        DatapathStatus::Nftables(nftables) => rule_set_text("chain", nftables, &mut line),
        DatapathStatus::Noop {} => {}
    }
    if !status.user_rules.is_empty() {
        line(String::new());
        line("user rules (the first that matches decides)".to_owned());
        let rows = status
            .user_rules
            .iter()
            .map(|r| {
                let state = if r.active { "" } else { "inactive" };
                vec![r.position.to_string(), r.text.clone(), state.to_owned()]
            })
            .collect();
        for row in table(&["#", "rule", "state"], rows) {
            line(format!("  {row}"));
        }
    }
    line(String::new());
    let report = RepairReport {
        repairs: status.repairs.clone(),
    };
    out.push_str(&repairs_text(
        "repaired at the last start or repair",
        &report,
    ));
    out
}

fn ebpf_text(ebpf: &EbpfStatus, line: &mut impl FnMut(String)) {
    line(format!("uplinks      {}", list_or_none(&ebpf.uplinks)));
    line(String::new());
    line(ebpf.kernel.to_string());
    line(String::new());
    line("programs".to_owned());
    let attach = format!("{:?}", ebpf.programs.attach).to_lowercase();
    let container_attach = format!("{:?}", ebpf.programs.container_attach).to_lowercase();
    line(format!(
        "  tc ({attach}; container veths: {container_attach})  {} ({} container links)",
        ebpf.programs.tc.join(", "),
        ebpf.programs.container_links
    ));
    for (iface, mode) in &ebpf.programs.xdp {
        line(format!("  xdp        {iface}: {mode}"));
    }
    line(format!("  cgroup     {}", ebpf.programs.cgroup.join(", ")));
    line(String::new());
    line("tables".to_owned());
    let rows = ebpf
        .maps
        .iter()
        .map(|(name, fill)| {
            let percent = 100.0 * fill.entries as f64 / f64::from(fill.capacity.max(1));
            vec![
                name.clone(),
                fill.entries.to_string(),
                fill.capacity.to_string(),
                format!("{percent:.1}%"),
                fill.evicted.map_or(String::new(), |n| n.to_string()),
            ]
        })
        .collect();
    for row in table(&["map", "entries", "capacity", "fill", "evicted"], rows) {
        line(format!("  {row}"));
    }
    line(String::new());
    line("traffic seen by the programs".to_owned());
    let rows = ebpf
        .traffic
        .iter()
        .map(|(class, t)| vec![class.clone(), t.packets.to_string(), t.bytes.to_string()])
        .collect();
    for row in table(&["class", "packets", "bytes"], rows) {
        line(format!("  {row}"));
    }
    line(String::new());
    if ebpf.drops.is_empty() {
        line("drops        none".to_owned());
    } else {
        drops_text("drops", &ebpf.drops, line);
    }
}

/// Drops per reason under `title`, a table row each.
fn drops_text(
    title: &str,
    drops: &std::collections::BTreeMap<String, u64>,
    line: &mut impl FnMut(String),
) {
    line(title.to_owned());
    let rows = drops
        .iter()
        .map(|(reason, n)| vec![reason.clone(), n.to_string()])
        .collect();
    for row in table(&["reason", "packets"], rows) {
        line(format!("  {row}"));
    }
}

/// netd's rules per table (iptables) or chain (nftables).
fn rule_set_text(unit: &str, rules: &RuleSetStatus, line: &mut impl FnMut(String)) {
    line(String::new());
    line("netd's rules".to_owned());
    let rows = rules
        .rules
        .iter()
        .map(|(name, n)| vec![name.clone(), n.to_string()])
        .collect();
    for row in table(&[unit, "rules"], rows) {
        line(format!("  {row}"));
    }
    line(format!("published ports with rules: {}", rules.ports));
    if !rules.drops.is_empty() {
        line(String::new());
        drops_text("drops (the drop rules' counters)", &rules.drops, line);
    }
}

/// What a reconciliation changed, one line each (`none` when nothing).
fn repairs_text(title: &str, report: &RepairReport) -> String {
    if report.repairs.is_empty() {
        return format!("{title}: nothing\n");
    }
    let mut out = format!("{title}:\n");
    for repair in &report.repairs {
        out.push_str(&format!("  - {repair}\n"));
    }
    out
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

pub fn down(client: &Client) -> Result<()> {
    client.down()?;
    println!("netd: everything removed, daemon stopped");
    Ok(())
}

pub fn conntrack(client: &Client, command: ConntrackCommand) -> Result<()> {
    let ConntrackCommand::Ls { format } = command;
    let rows = client.conntrack()?;
    let headers = [
        "proto",
        "src",
        "dst",
        "translated_src",
        "translated_dst",
        "direction",
        "nat",
        "expires_in_s",
    ];
    print_rows(format, &rows, &headers, |r| {
        vec![
            r.proto.to_string(),
            r.src.to_string(),
            r.dst.to_string(),
            r.translated_src.to_string(),
            r.translated_dst.to_string(),
            r.direction.label().to_owned(),
            r.nat.label().to_owned(),
            r.expires_in_s.to_string(),
        ]
    })
}

/// Prints drop events as they come, until interrupted.
pub fn monitor(client: &Client, format: Format) -> Result<()> {
    let events = client.monitor()?;
    if let Format::Table = format {
        println!(
            "{:<22} {:<14} {:<4} {:<5} {:<22} DESTINATION",
            "REASON", "INTERFACE", "HOOK", "PROTO", "SOURCE"
        );
    }
    for event in events {
        let event = event?;
        match (format, &event) {
            (Format::Json, _) => println!("{}", serde_json::to_string(&event)?),
            (Format::Table, MonitorEvent::Drop(e)) => println!(
                "{:<22} {:<14} {:<4} {:<5} {:<22} {}",
                e.reason, e.interface, e.hook, e.proto, e.src, e.dst
            ),
            (Format::Table, MonitorEvent::Lost { lost_events }) => {
                println!(
                    "({lost_events} drops not shown: over the event budget, or the monitor fell behind; the counters have them all)"
                )
            }
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(veths_being_deleted: Vec<String>) -> Status {
        Status {
            datapath: DatapathStatus::Noop {},
            networks: 1,
            containers: 0,
            published_ports: 0,
            user_rules: Vec::new(),
            repairs: Vec::new(),
            warnings: Vec::new(),
            veths_being_deleted,
        }
    }

    #[test]
    fn veths_still_going_are_shown_only_while_there_are_some() {
        let text = status_text(&status(vec!["veth0a1b2c3".into(), "veth4d5e6f7".into()]));
        assert!(
            text.contains("removing     the veths of removed containers: veth0a1b2c3, veth4d5e6f7"),
            "{text}"
        );
        assert!(!status_text(&status(Vec::new())).contains("removing"));
    }
}
