use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use netd::{
    api::{DEFAULT_SOCKET, NetworkSpec, Request, Response},
    bpf::Datapath,
    daemon,
    features::{Features, KernelFeatures},
};
use netd_common::{DropReason, programs, sizes};
use serde_json::Value;

/// netd: container networking for one Linux host, with an eBPF datapath.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
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
    Daemon {
        /// An interface to the outside (repeat for several). Default: every
        /// interface that is not loopback, a bridge or a bridge port, kept
        /// current as interfaces come and go.
        #[arg(long = "uplink")]
        uplinks: Vec<String>,
        /// Which datapath makes the packet decisions.
        #[arg(long, value_enum, default_value = "ebpf")]
        datapath: daemon::DatapathKind,
        #[arg(long, default_value = "/var/lib/netd")]
        state_dir: PathBuf,
        /// Group (numeric gid) allowed to use the socket besides root.
        #[arg(long)]
        socket_group: Option<u32>,
        /// Remove everything netd created when the daemon stops.
        #[arg(long)]
        cleanup: bool,
        /// bpffs directory where maps and links are pinned (they keep the
        /// datapath running while the daemon is stopped or restarting).
        #[arg(long, default_value = "/sys/fs/bpf/netd")]
        bpffs: PathBuf,
        /// Kernel mechanisms the eBPF datapath may use: `auto` (the best
        /// this kernel has) or `legacy` (only Linux 5.10's: clsact filters
        /// instead of TCX, a length check instead of bpf_check_mtu).
        #[arg(long, value_enum, default_value = "auto")]
        kernel_features: KernelFeatures,
        /// More log detail: -v debug, -vv trace (RUST_LOG overrides).
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Log lines as text or as JSON objects (for log shippers).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage containers (network namespaces wired to networks).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Datapath, attached programs and map fill levels.
    Status,
    /// Compare the saved state with the kernel and repair what differs
    /// (as at every start); prints what was repaired.
    Repair,
    /// Tracked connections.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Stream drop events (reason, interface, 5-tuple) until interrupted.
    Monitor {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Remove every container and network netd created, then stop the daemon.
    Down,
    /// Probe the kernel, load every BPF program through its verifier
    /// (attaching nothing), and list what was chosen, programs, map sizes
    /// and drop reasons.
    Check {
        #[arg(long, value_enum, default_value = "auto")]
        kernel_features: KernelFeatures,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Structured logs on stderr: level from RUST_LOG, else from -v.
fn init_logging(verbose: u8, format: LogFormat) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("netd={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Create a bridge network.
    Create(NetworkSpec),
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
        #[arg(long)]
        ip: Option<String>,
    },
    /// Disconnect a container from a network (ports published to that
    /// address go with it).
    Disconnect { network: String, container: String },
}

#[derive(Subcommand)]
enum ContainerCommand {
    /// Create a container namespace NAME (enter it with `ip netns exec NAME`).
    Create {
        name: String,
        /// A network name, `host` or `none`.
        #[arg(long, default_value = "bridge")]
        network: String,
        #[arg(long)]
        ip: Option<String>,
        /// Publish: [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp]
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
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

#[derive(Subcommand)]
enum ConntrackCommand {
    /// List tracked connections (both directions of each).
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket;
    let call = |request: Request| request_daemon(&socket, &request);
    match cli.command {
        Command::Daemon {
            uplinks,
            datapath,
            state_dir,
            socket_group,
            cleanup,
            bpffs,
            kernel_features,
            verbose,
            log_format,
            metrics,
        } => {
            init_logging(verbose, log_format);
            let opts = daemon::Options {
                uplinks,
                datapath,
                state_dir,
                socket: socket.clone(),
                socket_group,
                cleanup,
                bpffs,
                kernel_features,
                metrics,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(opts))
        }
        Command::Check { kernel_features } => check(kernel_features),
        Command::Network(cmd) => match cmd {
            NetworkCommand::Create(spec) => {
                let data = call(Request::NetworkCreate(spec))?;
                println!("{}", data["name"].as_str().unwrap_or_default());
                Ok(())
            }
            NetworkCommand::Ls { format } => {
                let data = call(Request::NetworkLs)?;
                print_list(
                    &data,
                    format,
                    &[
                        "name",
                        "subnet",
                        "gateway",
                        "bridge",
                        "internal",
                        "icc",
                        "masquerade",
                    ],
                )
            }
            NetworkCommand::Connect {
                network,
                container,
                ip,
            } => {
                let data = call(Request::NetworkConnect {
                    network,
                    container,
                    ip,
                })?;
                println!("{}", data["ip"].as_str().unwrap_or_default());
                Ok(())
            }
            NetworkCommand::Disconnect { network, container } => call(Request::NetworkDisconnect {
                network,
                container: container.clone(),
            })
            .map(|_| println!("{container}")),
            NetworkCommand::Inspect { name } => {
                print_json(&call(Request::NetworkInspect { name })?)
            }
            NetworkCommand::Rm { name } => {
                call(Request::NetworkRm { name: name.clone() }).map(|_| println!("{name}"))
            }
        },
        Command::Container(cmd) => match cmd {
            ContainerCommand::Create {
                name,
                network,
                ip,
                publish,
            } => {
                call(Request::ContainerCreate {
                    name: name.clone(),
                    network,
                    ip,
                    publish,
                })?;
                println!("{name}");
                Ok(())
            }
            ContainerCommand::Rm { name } => {
                call(Request::ContainerRm { name: name.clone() }).map(|_| println!("{name}"))
            }
            ContainerCommand::Ls { format } => {
                let data = call(Request::ContainerLs)?;
                let rows: Vec<Value> = data
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let ips: Vec<String> = c["attachments"].as_array().into_iter().flatten().map(|a| format!("{}={}", a["network"].as_str().unwrap_or(""), a["ip"].as_str().unwrap_or(""))).collect();
                        let ports: Vec<String> = c["ports"].as_array().into_iter().flatten().map(|p| format!("{}:{}->{}/{}", p["host_ip"].as_str().unwrap_or(""), p["host_port"], p["container_port"], p["proto"].as_str().unwrap_or(""))).collect();
                        serde_json::json!({"name": c["name"], "mode": c["mode"], "addresses": ips.join(","), "ports": ports.join(",")})
                    })
                    .collect();
                match format {
                    Format::Json => print_json(&data),
                    Format::Table => print_list(
                        &Value::Array(rows),
                        format,
                        &["name", "mode", "addresses", "ports"],
                    ),
                }
            }
            ContainerCommand::Inspect { name } => {
                print_json(&call(Request::ContainerInspect { name })?)
            }
        },
        Command::Status => print_json(&call(Request::Status)?),
        Command::Repair => print_json(&call(Request::Repair)?),
        Command::Conntrack(ConntrackCommand::Ls { format }) => {
            let data = call(Request::ConntrackLs)?;
            print_list(
                &data,
                format,
                &[
                    "proto",
                    "src",
                    "dst",
                    "translated_src",
                    "translated_dst",
                    "direction",
                    "nat",
                    "expires_in_s",
                ],
            )
        }
        Command::Monitor { format } => monitor(&socket, format),
        Command::Down => {
            call(Request::Down).map(|_| println!("netd: everything removed, daemon stopped"))
        }
    }
}

fn request_daemon(socket: &PathBuf, request: &Request) -> Result<Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the daemon at {} (is `netd daemon` running? NETD_SOCKET / --socket)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    let response: Response =
        serde_json::from_str(&reply).context("malformed reply from the daemon")?;
    if !response.ok {
        bail!(
            "{}",
            response.error.unwrap_or_else(|| "request failed".into())
        );
    }
    Ok(response.data)
}

fn monitor(socket: &PathBuf, format: Format) -> Result<()> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the daemon at {}", socket.display()))?;
    stream.write_all(b"{\"op\":\"monitor\"}\n")?;
    let mut lines = BufReader::new(stream).lines();
    let hello: Response =
        serde_json::from_str(&lines.next().context("daemon closed the connection")??)?;
    if !hello.ok {
        bail!("{}", hello.error.unwrap_or_default());
    }
    if let Format::Table = format {
        println!(
            "{:<22} {:<14} {:<5} {:<22} DESTINATION",
            "REASON", "INTERFACE", "PROTO", "SOURCE"
        );
    }
    for line in lines {
        let line = line?;
        match format {
            Format::Json => println!("{line}"),
            Format::Table => {
                let e: Value = serde_json::from_str(&line)?;
                let s = |k: &str| {
                    e[k].as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e[k].to_string())
                };
                println!(
                    "{:<22} {:<14} {:<5} {:<22} {}",
                    s("reason"),
                    s("interface"),
                    s("proto"),
                    s("src"),
                    s("dst")
                );
            }
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_list(data: &Value, format: Format, columns: &[&str]) -> Result<()> {
    if let Format::Json = format {
        return print_json(data);
    }
    let rows: Vec<Vec<String>> = data
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            columns
                .iter()
                .map(|c| match &row[*c] {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
    Ok(())
}

fn check(wanted: KernelFeatures) -> Result<()> {
    let features = Features::probe(wanted)?;
    println!("{features}");
    features.require_minimum()?;
    Datapath::load_with(&features)?;
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
