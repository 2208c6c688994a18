use std::{thread, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use netd::bpf::Datapath;

/// netd: container networking for one Linux host, with an eBPF datapath.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the container-side counting program to IFACE and print its
    /// counters once a second until SECONDS have passed; detaches on exit.
    Watch {
        /// Host side of a container veth (in the current network namespace).
        iface: String,
        /// How long to watch.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Watch { iface, seconds } => watch(&iface, seconds),
    }
}

fn watch(iface: &str, seconds: u64) -> Result<()> {
    let mut datapath = Datapath::load()?;
    datapath.attach_from_container(iface)?;
    for second in 1..=seconds {
        thread::sleep(Duration::from_secs(1));
        let traffic = datapath.traffic_counters()?;
        let line: Vec<String> = traffic
            .iter()
            .map(|(class, c)| format!("{}={}p/{}B", class.label(), c.packets, c.bytes))
            .collect();
        let drops: Vec<String> = datapath
            .drop_counters()?
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| format!("{}={n}", reason.label()))
            .collect();
        println!(
            "[{second:>3}s] {iface}: {} drops: {}",
            line.join(" "),
            drops.join(" ")
        );
    }
    Ok(())
}
