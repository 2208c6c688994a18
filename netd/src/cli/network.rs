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
        /// A static IPv6 address, on a network with IPv6.
        #[arg(long, value_parser = output::address)]
        ip6: Option<std::net::IpAddr>,
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
    /// Subnet in CIDR form (default: next free Docker pool); given twice,
    /// one IPv4 and one IPv6 subnet (an IPv6 one turns --ipv6 on).
    #[arg(long, value_parser = output::subnet)]
    subnet: Vec<ipnet::IpNet>,
    /// Gateway address (default: the subnet's first address, or the
    /// range's with --ip-range); given twice, one per family.
    #[arg(long, value_parser = output::address)]
    gateway: Vec<std::net::IpAddr>,
    /// IPv6 beside IPv4: an IPv6 subnet (--subnet, or the next /64 of the
    /// host's unique local prefix) and gateway on the bridge.
    #[arg(long)]
    ipv6: bool,
    /// IPv4 (Docker 28's --ipv4=false, an IPv6-only network, is refused:
    /// not supported yet).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ipv4: bool,
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

/// At most one of `values` per address family: (IPv4, IPv6).
fn per_family<T: Copy>(
    what: &str,
    values: &[T],
    is_ipv6: impl Fn(&T) -> bool,
) -> Result<(Option<T>, Option<T>)> {
    let (v6, v4): (Vec<T>, Vec<T>) = values.iter().partition(|v| is_ipv6(v));
    if v4.len() > 1 || v6.len() > 1 {
        return Err(netd::invalid!(
            "{what} is given at most once per address family (one IPv4, one IPv6)"
        ));
    }
    Ok((v4.first().copied(), v6.first().copied()))
}

impl TryFrom<CreateArgs> for NetworkSpec {
    type Error = anyhow::Error;

    fn try_from(args: CreateArgs) -> Result<Self> {
        let (subnet, subnet6) = per_family("--subnet", &args.subnet, |n| {
            matches!(n, ipnet::IpNet::V6(_))
        })?;
        let (gateway, gateway6) = per_family("--gateway", &args.gateway, |ip| ip.is_ipv6())?;
        Ok(Self {
            name: args.name,
            subnet,
            gateway,
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
            ipv6: args.ipv6,
            ipv4: args.ipv4,
            subnet6,
            gateway6,
        })
    }
}

pub fn run(client: &Client, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create(args) => {
            println!("{}", client.network_create(args.try_into()?)?.name);
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
                let with_v6 = |v4: String, v6: Option<String>| match v6 {
                    Some(v6) => format!("{v4},{v6}"),
                    None => v4,
                };
                vec![
                    n.name.clone(),
                    with_v6(n.subnet.to_string(), n.ipv6.map(|v6| v6.subnet.to_string())),
                    with_v6(
                        n.gateway.to_string(),
                        n.ipv6.map(|v6| v6.gateway.to_string()),
                    ),
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
            ip6,
            endpoint,
        } => {
            let attachment = client.network_connect(
                &network,
                &container,
                (ip, ip6),
                endpoint.aliases,
                endpoint.gw_priority,
            )?;
            match attachment.ip6 {
                Some(ip6) => println!("{} {ip6}", attachment.ip),
                None => println!("{}", attachment.ip),
            }
        }
        NetworkCommand::Disconnect { network, container } => println!(
            "{}",
            client
                .network_disconnect(&network, &container)?
                .disconnected
        ),
    }
    Ok(())
}
