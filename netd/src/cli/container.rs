//! `netd container …`

use anyhow::Result;
use clap::Subcommand;
use netd::{api::ContainerSpec, client::Client, state::Sandbox};

use super::output::{self, Format, print_json, print_rows};

#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Create a container namespace NAME (enter it with `ip netns exec NAME`).
    Create {
        name: String,
        /// A network name, `host` or `none`.
        #[arg(long, default_value = "bridge")]
        network: String,
        #[arg(long, value_parser = output::address)]
        ip: Option<std::net::IpAddr>,
        /// A static IPv6 address, on a network with IPv6.
        #[arg(long, value_parser = output::address)]
        ip6: Option<std::net::IpAddr>,
        /// Publish: [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp]
        #[arg(short = 'p', long = "publish", value_parser = output::publish)]
        publish: Vec<netd::portspec::PortSpec>,
        #[command(flatten)]
        endpoint: output::EndpointOptions,
    },
    /// Remove a container and its namespace.
    Rm { name: String },
    /// List containers.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one container (JSON: addresses, MACs, networks, published ports).
    Inspect { name: String },
}

pub fn run(client: &Client, command: ContainerCommand) -> Result<()> {
    match command {
        ContainerCommand::Create {
            name,
            network,
            ip,
            ip6,
            publish,
            endpoint,
        } => {
            let created = client.container_create(ContainerSpec {
                name,
                network,
                ip,
                ip6,
                publish,
                aliases: endpoint.aliases,
                gw_priority: endpoint.gw_priority,
            })?;
            println!("{}", created.name);
        }
        ContainerCommand::Rm { name } => println!("{}", client.container_rm(&name)?.removed),
        ContainerCommand::Ls { format } => {
            let containers = client.container_ls()?;
            let headers = ["name", "runtime", "mode", "addresses", "ports"];
            print_rows(format, &containers, &headers, |c| {
                let addresses: Vec<String> = c
                    .attachments
                    .iter()
                    .map(|a| match a.ip6 {
                        Some(ip6) => format!("{}={},{ip6}", a.network, a.ip),
                        None => format!("{}={}", a.network, a.ip),
                    })
                    .collect();
                let ports: Vec<String> = c
                    .ports
                    .iter()
                    .flat_map(|p| match p.is_direct() {
                        // A routed network's: open at the container's address.
                        true => vec![format!(
                            "{}:{}/{}",
                            p.container_ip, p.container_port, p.proto
                        )],
                        false => {
                            let on = |host: String| {
                                format!("{host}:{}->{}/{}", p.host_port, p.container_port, p.proto)
                            };
                            let v6 = p.container_ip6.map(|_| on("[::]".to_owned()));
                            std::iter::once(on(p.host_ip.to_string()))
                                .chain(v6)
                                .collect()
                        }
                    })
                    .collect();
                let runtime = match &c.sandbox {
                    Sandbox::Netd => "netd".to_owned(),
                    Sandbox::Docker {
                        endpoint_id,
                        sandbox_key,
                    } => {
                        let short = |id: &str| id.get(..12).unwrap_or(id).to_owned();
                        let sandbox = sandbox_key
                            .as_deref()
                            .and_then(|k| k.rsplit('/').next())
                            .map(|id| format!(", sandbox {}", short(id)))
                            .unwrap_or_default();
                        format!("docker (endpoint {}{sandbox})", short(endpoint_id))
                    }
                    Sandbox::Cni {
                        container_id,
                        ifname,
                        netns,
                    } => format!("cni (container {container_id}, {ifname} in {netns})"),
                };
                vec![
                    c.name.clone(),
                    runtime,
                    c.mode.to_string(),
                    addresses.join(","),
                    ports.join(","),
                ]
            })?;
        }
        ContainerCommand::Inspect { name } => print_json(&client.container_inspect(&name)?)?,
    }
    Ok(())
}
