//! `netd daemon`: its flags and its logging.

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use netd::{daemon, datapath::TableSizes, features::KernelFeatures};

#[derive(clap::Args)]
pub struct DaemonArgs {
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
    /// Log statements of the BPF programs to run and forward to the log
    /// (`debug`: each dropped packet; `trace`: also each fast-path packet).
    /// Off by default, and then free: the verifier removes them.
    /// One of off, error, warn, info, debug, trace.
    #[arg(long, default_value = "off")]
    bpf_log: netd::datapath::BpfLog,
    /// Serve Docker's network-driver protocol, so that `docker network
    /// create -d netd` makes netd networks.
    #[arg(long)]
    docker_plugin: bool,
    /// The plugin's socket; dockerd finds plugins in /run/docker/plugins,
    /// and the driver is named after the file (netd.sock: `-d netd`).
    #[arg(long, value_name = "PATH", default_value = netd::frontend::docker::DEFAULT_SOCKET)]
    docker_plugin_socket: PathBuf,
    /// eBPF: forward containers' packets to the outside straight to the
    /// uplink, past the host's netfilter. `false` sends them through the
    /// stack, where the host's own iptables rules see them (kube-proxy's
    /// Service DNAT on a Kubernetes node).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fast_path: bool,
    /// eBPF: the XDP program on the uplinks, dropping before any skb is
    /// built what the TC programs would drop: `auto` (native where the
    /// driver has it, else generic), `native`, `generic`, or `off`.
    #[arg(long, default_value = "auto")]
    xdp: netd::datapath::XdpSetting,
    /// eBPF: the source ports NAT may give a connection when it cannot keep
    /// the container's (masquerade), always for hairpin, and to a client
    /// whose port another connection to the same container already uses.
    /// The part Linux could pick for the host's own connections
    /// (ip_local_port_range) is reserved (ip_local_reserved_ports).
    #[arg(long, value_name = "MIN-MAX", default_value_t = Default::default())]
    nat_ports: netd::driver::NatPorts,
    /// eBPF: connections conntrack holds (as nf_conntrack_max). When it is
    /// full, a new connection evicts one not yet answered or closing, or is
    /// refused; established ones are never evicted. ~200 bytes of kernel
    /// memory each. A new size takes effect at restart, keeping the flows.
    #[arg(long, value_name = "N", default_value_t = TableSizes::default().connections)]
    conntrack_max: u32,
    /// Where containers' resolvers forward names that are not containers'
    /// (repeatable; IP or IP:PORT). Default: the host's nameservers
    /// (systemd-resolved's upstreams when resolv.conf names its stub).
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = dns_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// How containers reach the resolver at 127.0.0.11:53: sockets bound
    /// inside each container's namespace (any datapath), or the eBPF
    /// datapath's socket hooks steering them to a socket on each network's
    /// gateway (Linux 5.14+). docs/dns.md compares the two.
    #[arg(long, value_enum, default_value_t = netd::dns::DnsVia::NamespaceSockets)]
    dns_via: netd::dns::DnsVia,
    /// eBPF: (host address, port, protocol) triples that can be published
    /// (a range counts one per port); a publish past it is refused.
    #[arg(long, value_name = "N", default_value_t = TableSizes::default().published_ports)]
    max_published_ports: u32,
    /// eBPF: container interfaces (containers × networks); a container
    /// past it is refused.
    #[arg(long, value_name = "N", default_value_t = TableSizes::default().endpoints)]
    max_endpoints: u32,
    /// Log lines as text or as JSON objects (for log shippers).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: DaemonArgs, socket: PathBuf) -> Result<()> {
    init_logging(args.verbose, args.log_format);
    let table_sizes = TableSizes {
        connections: args.conntrack_max,
        published_ports: args.max_published_ports,
        endpoints: args.max_endpoints,
    };
    // Before anything is touched.
    table_sizes
        .check()
        .map_err(|err| netd::invalid!("{err:#}"))?;
    let opts = daemon::Options {
        uplinks: args.uplinks,
        datapath: args.datapath,
        state_dir: args.state_dir,
        socket,
        socket_group: args.socket_group,
        cleanup: args.cleanup,
        bpffs: args.bpffs,
        kernel_features: args.kernel_features,
        metrics: args.metrics,
        bpf_log: args.bpf_log,
        docker_plugin: args.docker_plugin.then_some(args.docker_plugin_socket),
        fast_path: args.fast_path,
        xdp: args.xdp,
        nat_ports: args.nat_ports,
        table_sizes,
        dns_upstreams: args.dns_upstreams,
        dns_via: args.dns_via,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(daemon::run(opts))
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

/// `--dns-upstream`: an address, port 53 unless given.
fn dns_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{s:?} is neither an IP address nor IP:PORT"))
}
