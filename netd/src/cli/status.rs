//! `netd status`, `netd repair`, `netd conntrack ls`, `netd monitor`, `netd down`.

use std::io::Write as _;

use anyhow::Result;
use clap::Subcommand;
use netd::{api::MonitorEvent, client::Client};

use super::output::{Format, print_json, print_rows};

#[derive(Subcommand)]
pub enum ConntrackCommand {
    /// List tracked connections (both directions of each).
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub fn status(client: &Client) -> Result<()> {
    print_json(&client.status()?)
}

pub fn repair(client: &Client) -> Result<()> {
    print_json(&client.repair()?)
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
            r.proto.clone(),
            r.src.clone(),
            r.dst.clone(),
            r.translated_src.clone(),
            r.translated_dst.clone(),
            r.direction.clone(),
            r.nat.clone(),
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
