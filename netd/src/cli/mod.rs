//! The command line: one file per command group; each turns its arguments
//! into typed client calls and prints the typed replies.

mod check;
mod cni;
mod container;
mod daemon;
mod network;
mod output;
mod rule;
mod status;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use netd::{api::DEFAULT_SOCKET, client::Client, features::KernelFeatures};

/// netd: container networking for one Linux host, with an eBPF datapath.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "NETD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground, managing the network namespace it
    /// is started in.
    Daemon(daemon::DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage containers (network namespaces wired to networks).
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// The user's firewall rules for traffic from outside to containers
    /// (netd's DOCKER-USER).
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// Datapath, attached programs, table fill, counters, drops and repairs.
    Status {
        /// `table`: sections for people; `json`: the whole status, for scripts.
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
    },
    /// Compare the saved state with the kernel and repair what differs
    /// (as at every start); prints what was repaired.
    Repair {
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
    },
    /// Tracked connections.
    #[command(subcommand)]
    Conntrack(status::ConntrackCommand),
    /// Stream drop events (reason, interface, 5-tuple) until interrupted.
    Monitor {
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
    },
    /// Remove every container and network netd created, then stop the daemon.
    Down,
    /// Use a netd network from Podman, containerd or a Kubernetes node (CNI).
    #[command(subcommand)]
    Cni(cni::CniCommand),
    /// Probe the kernel, load every BPF program through its verifier
    /// (attaching nothing), and list what was chosen, programs, map sizes
    /// and drop reasons.
    Check {
        #[arg(long, value_enum, default_value = "auto")]
        kernel_features: KernelFeatures,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Daemon(args) => daemon::run(args, cli.socket),
        Command::Check { kernel_features } => check::run(kernel_features),
        Command::Network(command) => network::run(&client, command),
        Command::Container(command) => container::run(&client, command),
        Command::Rule(command) => rule::run(&client, command),
        Command::Status { format } => status::status(&client, format),
        Command::Repair { format } => status::repair(&client, format),
        Command::Conntrack(command) => status::conntrack(&client, command),
        Command::Monitor { format } => status::monitor(&client, format),
        Command::Down => status::down(&client),
        Command::Cni(command) => cni::run(&client, command),
    }
}
