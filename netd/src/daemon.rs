//! `netd daemon`: starts the engine on the network namespace it runs in,
//! then runs its tasks — the front-ends, the host watcher, conntrack GC,
//! the drop-event reader and the metrics server — until stopped.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::sync::{Mutex, Notify, broadcast};

use crate::{
    api::{DropRecord, MonitorEvent},
    driver::{
        DropStream, EbpfDriver, EbpfSettings, FirewallDriver, IptablesDriver, NftablesDriver,
    },
    engine::Engine,
    features::{Features, KernelFeatures},
    frontend::{self, socket},
    host::{Host as _, NetlinkHost},
    metrics::Metrics,
    netlink::Netlink,
    state::State,
};

/// Which firewall driver makes the packet decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathKind {
    Ebpf,
    Iptables,
    /// Docker 29's nftables ruleset, in netd's own table.
    Nftables,
}

pub struct Options {
    /// Interfaces to the outside; empty: every eligible interface.
    pub uplinks: Vec<String>,
    pub datapath: DatapathKind,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_group: Option<u32>,
    pub cleanup: bool,
    /// bpffs directory for pinned maps and links.
    pub bpffs: PathBuf,
    /// Which kernel mechanisms the eBPF datapath may use.
    pub kernel_features: KernelFeatures,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Which BPF-side log statements run (off: none, at no cost).
    pub bpf_log: crate::datapath::BpfLog,
    /// Where to serve Docker's remote network-driver protocol, if at all.
    pub docker_plugin: Option<PathBuf>,
    /// eBPF: redirect containers' outbound packets to the uplink (past the
    /// host's netfilter), or let them take the stack.
    pub fast_path: bool,
    pub xdp: crate::datapath::XdpSetting,
    /// eBPF: the source ports NAT chooses from.
    pub nat_ports: crate::driver::NatPorts,
    /// eBPF: how many connections, published ports and endpoints the
    /// tables hold.
    pub table_sizes: crate::datapath::TableSizes,
    /// `--dns-upstream`: where the resolver forwards (empty: the host's).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// `--dns-via`: how containers reach the resolver.
    pub dns_via: crate::dns::DnsVia,
}

const CONNTRACK_GC_INTERVAL: Duration = Duration::from_secs(10);

type SharedEngine = Arc<Mutex<Engine<NetlinkHost>>>;

/// `--dns-via cgroup-hooks` needs the eBPF datapath's socket hooks and
/// SO_NETNS_COOKIE: refused before anything is touched.
fn check_dns_via(opts: &Options) -> Result<()> {
    if opts.dns_via != crate::dns::DnsVia::CgroupHooks {
        return Ok(());
    }
    if opts.datapath != DatapathKind::Ebpf {
        return Err(crate::invalid!(
            "--dns-via cgroup-hooks needs the eBPF datapath's socket hooks (--datapath ebpf); \
             with --datapath {} use --dns-via namespace-sockets",
            format!("{:?}", opts.datapath).to_lowercase()
        ));
    }
    crate::datapath::sys::current_netns_cookie()
        .map(drop)
        .map_err(|err| {
            crate::unavailable!(
                "--dns-via cgroup-hooks needs SO_NETNS_COOKIE (Linux 5.14 or later) to know \
                 each container's namespace ({err:#}); use --dns-via namespace-sockets"
            )
        })
}

pub async fn run(opts: Options) -> Result<()> {
    check_privileges()?;
    check_dns_via(&opts)?;
    let started = std::time::Instant::now();
    // Before anything is touched: a state file netd cannot read stops it
    // here, and both datapaths keep forwarding what they forwarded.
    let state = State::load(&opts.state_dir).map_err(|err| {
        anyhow!(
            "{err:#}\nnetd did not start and changed nothing (the datapath keeps forwarding); \
             repair or move that file away to start from an empty state"
        )
    })?;
    let host = NetlinkHost::connect()?;
    let host_events = subscribe_host_events()?;
    let host_info = host.host_info(&state, &opts.uplinks, true).await?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let driver: Box<dyn FirewallDriver> = match opts.datapath {
        DatapathKind::Ebpf => {
            let features = Features::probe(opts.kernel_features)?;
            Box::new(EbpfDriver::start(
                &host_info,
                &opts.bpffs,
                features,
                EbpfSettings {
                    bpf_log: opts.bpf_log,
                    fast_path: opts.fast_path,
                    xdp: opts.xdp,
                    nat_ports: opts.nat_ports,
                    sizes: opts.table_sizes,
                    resolver_on_gateways: opts.dns_via == crate::dns::DnsVia::CgroupHooks,
                },
                host.netlink().clone(),
            )?)
        }
        DatapathKind::Iptables => Box::new(IptablesDriver::start(&host_info)?),
        DatapathKind::Nftables => Box::new(NftablesDriver::start(&host_info)?),
    };
    let metrics = Metrics::shared();
    let nl = host.netlink().clone();
    let mut engine = Engine::new(
        state,
        opts.state_dir.clone(),
        host,
        driver,
        metrics.clone(),
        opts.uplinks.clone(),
        host_info,
    );
    for repair in engine.start().await? {
        tracing::warn!(%repair, "repaired at start");
    }
    for done in frontend::cni::drain_del_queue(&mut engine, &opts.socket).await {
        tracing::warn!(%done, "CNI");
    }
    let steering = match opts.dns_via {
        crate::dns::DnsVia::NamespaceSockets => None,
        crate::dns::DnsVia::CgroupHooks => Some(engine.driver().resolver_steering()?),
    };
    let dns = crate::dns::Dns::new(
        crate::dns::Upstreams::discover(&opts.dns_upstreams),
        &opts.state_dir,
        steering,
    );
    dns.remove_stale_files(engine.state());
    dns.update(engine.state());
    // Bound before the control socket: a client that can connect there
    // can scrape too.
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics {addr}: binding"))?,
        ),
        None => None,
    };
    let listener = socket::bind(&opts.socket, opts.socket_group)?;
    tracing::info!(
        datapath = engine.driver_name(),
        uplinks = %engine
            .host_info()
            .uplinks
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        socket = %opts.socket.display(),
        startup_ms = started.elapsed().as_millis(),
        "netd is ready"
    );

    let events = broadcast::channel::<MonitorEvent>(1024).0;
    let drop_stream = engine.driver_mut().drop_stream()?;
    let engine: SharedEngine = Arc::new(Mutex::new(engine));
    let shared = Arc::new(socket::Shared {
        engine: engine.clone(),
        shutdown: Arc::new(Notify::new()),
        events: events.clone(),
        metrics,
        dns: dns.clone(),
    });
    // Every container's resolver again, once requests are answered (a
    // restart with thousands of them must not wait for their sockets).
    let serving = dns.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        for problem in serving.serve_missing() {
            tracing::warn!(%problem, "resolver");
        }
        tracing::info!(
            containers = serving.served(),
            millis = started.elapsed().as_millis(),
            "container resolvers serving"
        );
    });
    let mut tasks = vec![
        tokio::spawn(follow_host(engine.clone(), host_events)),
        tokio::spawn(collect_garbage(engine.clone(), opts.socket.clone())),
    ];
    if let Some(stream) = drop_stream {
        tasks.push(tokio::spawn(read_drop_events(stream, nl, events)));
    }
    if let Some(listener) = metrics_listener {
        tasks.push(serve_metrics(listener, engine.clone())?);
    }
    if let Some(path) = &opts.docker_plugin {
        tasks.push(frontend::docker::serve(
            path,
            engine.clone(),
            shared.metrics.clone(),
        )?);
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let down = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(socket::serve(stream, shared.clone()));
            }
            _ = shared.shutdown.notified() => break true,
            _ = tokio::signal::ctrl_c() => break false,
            _ = sigterm.recv() => break false,
        }
    };
    for task in tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(path) = &opts.docker_plugin {
        let _ = std::fs::remove_file(path);
    }
    // The resolver's sockets go first: they hold the namespaces. Its
    // files stay for the next start when the containers do.
    dns.stop(down || opts.cleanup);
    if !down && opts.cleanup {
        engine.lock().await.teardown().await?;
    } else if !down {
        engine.lock().await.settle().await?;
    }
    Ok(())
}

fn check_privileges() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "netd daemon needs root: CAP_NET_ADMIN (links, addresses), CAP_BPF and CAP_SYS_ADMIN (BPF programs, cgroup hooks, namespaces)"
        );
    }
    Ok(())
}

/// Expired connections, and DELs a CNI plugin queued meanwhile (it found
/// no daemon while this one was starting).
async fn collect_garbage(engine: SharedEngine, socket: std::path::PathBuf) {
    loop {
        tokio::time::sleep(CONNTRACK_GC_INTERVAL).await;
        let mut engine = engine.lock().await;
        engine.gc();
        for done in frontend::cni::drain_del_queue(&mut engine, &socket).await {
            tracing::warn!(%done, "CNI");
        }
    }
}

/// `GET /metrics` on `listener`: the Prometheus text format, the
/// datapath's figures read at scrape time.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    engine: SharedEngine,
) -> Result<tokio::task::JoinHandle<()>> {
    use axum::{extract::State as Shared, http::header, routing::get};
    async fn scrape(Shared(engine): Shared<SharedEngine>) -> impl axum::response::IntoResponse {
        let body = engine.lock().await.render_metrics();
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
    }
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(engine);
    tracing::info!(%addr, "serving metrics");
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "metrics server");
        }
    }))
}

/// rtnetlink link and IPv4 address events, subscribed before the host is
/// first read so no change falls between the two.
type HostEvents = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

fn subscribe_host_events() -> Result<HostEvents> {
    use rtnetlink::{
        constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK},
        sys::{AsyncSocket as _, SocketAddr},
    };
    let (mut connection, _handle, events) =
        rtnetlink::new_connection().context("opening rtnetlink for host events")?;
    let groups = SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR);
    connection
        .socket_mut()
        .socket_mut()
        .bind(&groups)
        .context("subscribing to link and address events")?;
    tokio::spawn(connection);
    Ok(events)
}

/// Follows the host: link and address events make the engine re-read the
/// host and update the datapath, without a restart.
async fn follow_host(engine: SharedEngine, mut events: HostEvents) {
    use futures::StreamExt as _;
    // Whatever changed since the host was first read.
    if let Err(err) = engine.lock().await.sync_host().await {
        tracing::warn!(err = format!("{err:#}"), "following the host");
    }
    while let Some((event, _)) = events.next().await {
        if needs_no_host_read(&event) {
            continue;
        }
        // One pass for a burst (a veth pair, an address flush and re-add).
        tokio::time::sleep(Duration::from_millis(20)).await;
        while events.try_recv().is_ok() {}
        if let Err(err) = engine.lock().await.sync_host().await {
            tracing::warn!(err = format!("{err:#}"), "following the host");
        }
    }
    tracing::error!("host events stopped: interface and address changes are no longer followed");
}

/// A link event about a container's veth (netd's `veth…`/`tmp…` names) or
/// a bridge (a bridge is never an uplink; adding a port changes its
/// features, and the kernel reports it), or an IPv6 link-local address
/// event: it changes no uplink and no host address the datapath keeps
/// (those come as other address events), so it needs no re-read of the
/// host, which costs a full link and address dump under the engine lock
/// (with 1,000 containers ~20 ms, after every create and remove).
fn needs_no_host_read(
    event: &rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> bool {
    use rtnetlink::{
        packet_core::NetlinkPayload,
        packet_route::{
            RouteNetlinkMessage as Msg, address::AddressAttribute, link::LinkAttribute,
        },
    };
    let link = match &event.payload {
        NetlinkPayload::InnerMessage(Msg::NewLink(link) | Msg::DelLink(link)) => link,
        // A link-local IPv6 address comes with every interface that goes
        // up (each container veth's host side): never a local address the
        // datapath keeps.
        NetlinkPayload::InnerMessage(Msg::NewAddress(addr) | Msg::DelAddress(addr)) => {
            return addr.attributes.iter().any(|attr| {
                matches!(attr, AddressAttribute::Address(std::net::IpAddr::V6(ip))
                    if ip.is_unicast_link_local())
            });
        }
        _ => return false,
    };
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::IfName(name) => crate::host::is_container_veth_name(name),
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|info| {
            matches!(
                info,
                rtnetlink::packet_route::link::LinkInfo::Kind(
                    rtnetlink::packet_route::link::InfoKind::Bridge
                )
            )
        }),
        _ => false,
    })
}

/// Drains the datapath's drop events into the monitor channel.
async fn read_drop_events(
    mut stream: DropStream,
    nl: Netlink,
    events: broadcast::Sender<MonitorEvent>,
) {
    use futures::StreamExt as _;
    let mut names: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    while let Some(batch) = stream.next().await {
        for dropped in batch {
            let interface = match names.get(&dropped.ifindex) {
                Some(name) => name.clone(),
                None => {
                    let name = nl
                        .link_name(dropped.ifindex)
                        .await
                        .unwrap_or_else(|_| format!("if{}", dropped.ifindex));
                    names.insert(dropped.ifindex, name.clone());
                    name
                }
            };
            if dropped.left_out > 0 {
                let lost_events = u64::from(dropped.left_out);
                let _ = events.send(MonitorEvent::Lost { lost_events });
            }
            let _ = events.send(MonitorEvent::Drop(DropRecord {
                reason: dropped.reason.to_owned(),
                interface,
                hook: dropped.hook.to_owned(),
                proto: dropped.proto,
                src: dropped.src.to_string(),
                dst: dropped.dst.to_string(),
            }));
        }
    }
}
