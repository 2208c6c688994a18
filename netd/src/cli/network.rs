//! `netd network …`

use anyhow::Result;
use clap::Subcommand;
use netd::{
    api::{GatewayMode, NetworkSpec},
    client::Client,
};

use super::output::{self, Format, print_json, print_rows};

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a bridge network.
    Create(CreateArgs),
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one network (JSON).
    Inspect { name: String },
    /// Remove a network (refused while containers are attached).
    Rm { name: String },
    /// Connect a container to one more network (a new ethN inside it).
    Connect {
        network: String,
        container: String,
        #[arg(long, value_parser = output::address)]
        ip: Option<std::net::IpAddr>,
        #[command(flatten)]
        endpoint: super::output::EndpointOptions,
    },
    /// Disconnect a container from a network (ports published to that
    /// address go with it).
    Disconnect { network: String, container: String },
}

/// `netd network create` options; unset ones take Docker's defaults.
#[derive(clap::Args)]
pub struct CreateArgs {
    name: String,
    /// Subnet in CIDR form (default: next free Docker pool).
    #[arg(long, value_parser = output::subnet)]
    subnet: Option<ipnet::IpNet>,
    /// Gateway address (default: the subnet's first address, or the
    /// range's with --ip-range).
    #[arg(long, value_parser = output::address)]
    gateway: Option<std::net::IpAddr>,
    /// Dynamic addresses only from this part of --subnet (a static --ip
    /// may be anywhere in the subnet).
    #[arg(long = "ip-range", value_name = "CIDR", value_parser = output::subnet)]
    ip_range: Option<ipnet::IpNet>,
    /// No traffic to or from outside the network.
    #[arg(long)]
    internal: bool,
    /// Inter-container communication on this network.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    icc: bool,
    /// Masquerade outbound traffic behind the host's address.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    masquerade: bool,
    /// Source address for this network's masquerade.
    #[arg(long, value_parser = output::address)]
    host_ip: Option<std::net::IpAddr>,
    #[arg(long)]
    mtu: Option<u32>,
    /// The bridge's name (default: br- and 12 hex digits).
    #[arg(long)]
    bridge: Option<String>,
    /// Host address ports are published on when -p names none (default: all).
    #[arg(long, value_parser = output::address)]
    binding_ip: Option<std::net::IpAddr>,
    /// A CIDR routed without NAT both ways, e.g. a cluster's pod range:
    /// containers keep their address towards it, and it may reach them
    /// (repeatable).
    #[arg(long = "routed-cidr", value_name = "CIDR", value_parser = output::subnet)]
    routed_cidrs: Vec<ipnet::IpNet>,
    /// How the network meets the outside, Docker 28's modes: nat (masquerade,
    /// ports published on the host), nat-unprotected (nat, and every
    /// container port open to direct access), routed (no NAT; published
    /// container ports and ICMP open at the container's address), isolated
    /// (with --internal: no address on the host's bridge).
    #[arg(long = "gateway-mode-ipv4", value_name = "MODE", default_value = "nat")]
    gateway_mode_ipv4: GatewayMode,
    /// What arrives on this interface may reach published container ports
    /// at the container's address (Docker 28.2; nat mode; repeatable).
    #[arg(long = "trusted-host-interface", value_name = "IFACE")]
    trusted_host_interfaces: Vec<String>,
}

impl From<CreateArgs> for NetworkSpec {
    fn from(args: CreateArgs) -> Self {
        Self {
            name: args.name,
            subnet: args.subnet,
            gateway: args.gateway,
            ip_range: args.ip_range,
            internal: args.internal,
            icc: args.icc,
            masquerade: args.masquerade,
            host_ip: args.host_ip,
            mtu: args.mtu,
            bridge: args.bridge,
            binding_ip: args.binding_ip,
            docker_id: None,
            routed_cidrs: args.routed_cidrs,
            gateway_mode_ipv4: args.gateway_mode_ipv4,
            trusted_host_interfaces: args.trusted_host_interfaces,
        }
    }
}

pub fn run(client: &Client, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create(args) => {
            println!("{}", client.network_create(args.into())?.name);
        }
        NetworkCommand::Ls { format } => {
            let networks = client.network_ls()?;
            let headers = [
                "name",
                "subnet",
                "gateway",
                "bridge",
                "internal",
                "icc",
                "masquerade",
                "gateway-mode",
            ];
            print_rows(format, &networks, &headers, |n| {
                vec![
                    n.name.clone(),
                    n.subnet.to_string(),
                    n.gateway.to_string(),
                    n.bridge.clone(),
                    n.internal.to_string(),
                    n.icc.to_string(),
                    n.masquerade.to_string(),
                    n.gateway_mode_ipv4.to_string(),
                ]
            })?;
        }
        NetworkCommand::Inspect { name } => print_json(&client.network_inspect(&name)?)?,
        NetworkCommand::Rm { name } => println!("{}", client.network_rm(&name)?.removed),
        NetworkCommand::Connect {
            network,
            container,
            ip,
            endpoint,
        } => println!(
            "{}",
            client
                .network_connect(
                    &network,
                    &container,
                    ip,
                    endpoint.aliases,
                    endpoint.gw_priority
                )?
                .ip
        ),
        NetworkCommand::Disconnect { network, container } => println!(
            "{}",
            client
                .network_disconnect(&network, &container)?
                .disconnected
        ),
    }
    Ok(())
}
