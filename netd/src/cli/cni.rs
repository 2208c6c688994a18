//! `netd cni install|uninstall`: a conflist naming a netd network, and the
//! plugin binary where runtimes look for it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use netd::{client::Client, cni::config::SUPPORTED_VERSIONS};

#[derive(clap::Subcommand)]
pub enum CniCommand {
    /// Write a conflist for NETWORK and place the netd-cni plugin (Podman
    /// and containerd read /etc/cni/net.d and /opt/cni/bin by default).
    Install(InstallArgs),
    /// Remove NETWORK's conflist (the plugin binary stays: others may use it).
    Uninstall {
        network: String,
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The netd network (also the CNI network name runtimes use).
    network: String,
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The conflist's cniVersion: 1.0.0 suits containerd 1.6/1.7 and Podman
    /// 4; 1.1.0 adds STATUS and GC (containerd 2, CRI-O).
    #[arg(long, default_value = "1.0.0")]
    cni_version: String,
    /// Let the plugin make the network on first use with this subnet (a
    /// Kubernetes node's pod CIDR); without it the network must exist.
    #[arg(long)]
    subnet: Option<String>,
    /// CIDRs routed without NAT both ways (the cluster's pod range); needs --subnet.
    #[arg(long = "routed-cidr", value_name = "CIDR", requires = "subnet")]
    routed_cidrs: Vec<String>,
    /// The plugin binary to install (default: netd-cni beside this netd).
    #[arg(long)]
    plugin: Option<PathBuf>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Conflist {
    cni_version: String,
    name: String,
    plugins: Vec<PluginConf>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PluginConf {
    #[serde(rename = "type")]
    kind: &'static str,
    socket: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipam: Option<Ipam>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routed_cidrs: Vec<String>,
    capabilities: Capabilities,
}

#[derive(Serialize)]
struct Ipam {
    subnet: String,
}

/// Both declared: the runtime passes port mappings and requested addresses
/// in `runtimeConfig`. (Declaring `ips` also keeps Podman 4 from replacing
/// the capabilities with `{"ips": true}` when a container asks for an
/// address, which loses its port mappings.)
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities {
    port_mappings: bool,
    ips: bool,
    /// Podman's names for the container on the network (its resolver's).
    aliases: bool,
}

pub const PLUGIN_NAME: &str = "netd-cni";

pub fn run(client: &Client, command: CniCommand) -> Result<()> {
    match command {
        CniCommand::Install(args) => install(client, args),
        CniCommand::Uninstall { network, conf_dir } => {
            let path = conflist_path(&conf_dir, &network);
            match fs::remove_file(&path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    bail!("{} does not exist", path.display())
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("removing {}", path.display()));
                }
            }
            Ok(())
        }
    }
}

fn install(client: &Client, args: InstallArgs) -> Result<()> {
    if !SUPPORTED_VERSIONS.contains(&args.cni_version.as_str()) {
        bail!(
            "--cni-version {}: netd speaks {}",
            args.cni_version,
            SUPPORTED_VERSIONS.join(", ")
        );
    }
    // Without a subnet the network must exist now (with one, the plugin
    // makes it): say so here rather than at the first container.
    if args.subnet.is_none() {
        client.network_inspect(&args.network).with_context(|| {
            format!(
                "network {:?}: create it first (`netd network create {0}`) or pass --subnet",
                args.network
            )
        })?;
    }
    let plugin = match args.plugin {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("netd's own path has no directory")?
            .join(PLUGIN_NAME),
    };
    if !plugin.is_file() {
        bail!(
            "plugin binary {} not found (--plugin PATH)",
            plugin.display()
        );
    }
    let conflist = Conflist {
        cni_version: args.cni_version,
        name: args.network.clone(),
        plugins: vec![PluginConf {
            kind: PLUGIN_NAME,
            socket: std::path::absolute(client.socket())?,
            ipam: args.subnet.map(|subnet| Ipam { subnet }),
            routed_cidrs: args.routed_cidrs,
            capabilities: Capabilities {
                port_mappings: true,
                ips: true,
                aliases: true,
            },
        }],
    };
    let installed = args.bin_dir.join(PLUGIN_NAME);
    write_atomically(&installed, &fs::read(&plugin)?, 0o755)?;
    let path = conflist_path(&args.conf_dir, &args.network);
    let mut text = serde_json::to_string_pretty(&conflist)?;
    text.push('\n');
    write_atomically(&path, text.as_bytes(), 0o644)?;
    println!("{}", path.display());
    println!("{}", installed.display());
    Ok(())
}

fn conflist_path(conf_dir: &Path, network: &str) -> PathBuf {
    conf_dir.join(format!("50-netd-{network}.conflist"))
}

/// Writes beside `path` and renames over it: a runtime never reads half a
/// conflist, and a plugin being run keeps its old binary (no ETXTBSY).
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
