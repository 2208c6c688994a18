use anyhow::Result;
use clap::{Parser, Subcommand};
use netd::bpf::Datapath;
use netd_common::{DropReason, programs, sizes};

/// netd: container networking for one Linux host, with an eBPF datapath.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every BPF program through this kernel's verifier (attaching
    /// nothing) and list programs, maps and drop reasons.
    Check,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Check => check(),
    }
}

fn check() -> Result<()> {
    Datapath::load()?;
    println!("all BPF programs passed the verifier:");
    for name in programs::CLASSIFIERS {
        println!("  tc       {name}");
    }
    for name in programs::SOCK_HOOKS {
        println!("  cgroup   {name}");
    }
    println!("map sizes (entries):");
    for (name, size) in [
        ("NETWORKS", sizes::NETWORKS),
        ("ENDPOINTS", sizes::ENDPOINTS),
        ("LOCAL_ADDRS", sizes::LOCAL_ADDRS),
        ("PUBLISHED_PORTS", sizes::PUBLISHED_PORTS),
        ("CONNTRACK", sizes::CONNTRACK),
        ("SOCK_REVNAT", sizes::SOCK_REVNAT),
    ] {
        println!("  {name:<16} {size}");
    }
    let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    println!("drop reasons: {}", reasons.join(", "));
    Ok(())
}
