//! `netd daemon`: owns the network namespace it starts in, applies requests
//! from the unix socket one at a time (consistent IPAM), and persists state.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Mutex, Notify},
};
use tracing::Instrument as _;

use crate::{
    api::{MAX_REQUEST_BYTES, NetworkSpec, Request, Response},
    cidr::Cidr,
    driver::{EbpfDriver, FirewallDriver, HostInfo, IptablesDriver, Uplink},
    features::{Features, KernelFeatures},
    ipam,
    metrics::Metrics,
    netlink::{self, Netlink},
    portspec::PortSpec,
    state::{Attachment, Container, Network, NetworkMode, Pending, PublishedPort, State},
};

/// Which firewall driver makes the packet decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathKind {
    Ebpf,
    Iptables,
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
}

/// Ports `-p 80` picks from (Docker uses the kernel's ephemeral range).
const AUTO_PORTS: std::ops::RangeInclusive<u16> = 49153..=60999;
const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_BRIDGE: &str = "netd0";
const CONNTRACK_GC_INTERVAL: Duration = Duration::from_secs(10);

pub async fn run(opts: Options) -> Result<()> {
    check_privileges()?;
    // Before anything is touched: a state file netd cannot read stops it
    // here, and both datapaths keep forwarding what they forwarded.
    let state = State::load(&opts.state_dir).map_err(|err| {
        anyhow!(
            "{err:#}\nnetd did not start and changed nothing (the datapath keeps forwarding); \
             repair or move that file away to start from an empty state"
        )
    })?;
    let nl = Netlink::connect()?;
    let host_events = subscribe_host_events()?;
    let host = host_info(&nl, &state, &opts.uplinks, true).await?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let driver: Box<dyn FirewallDriver> = match opts.datapath {
        DatapathKind::Ebpf => {
            let features = Features::probe(opts.kernel_features)?;
            Box::new(EbpfDriver::start(&host, &opts.bpffs, features)?)
        }
        DatapathKind::Iptables => Box::new(IptablesDriver::start(&host)?),
    };
    let metrics = Metrics::shared();
    let mut daemon = Daemon {
        state,
        metrics: metrics.clone(),
        uplink_names: opts.uplinks.clone(),
        host,
        state_dir: opts.state_dir.clone(),
        bpffs: opts.bpffs.clone(),
        nl,
        driver,
        repairs: Vec::new(),
    };
    let repairs = daemon
        .reconcile()
        .await
        .context("reconciling saved networks and containers with the kernel")?;
    for repair in &repairs {
        tracing::warn!(%repair, "repaired at start");
    }
    if !daemon.state.networks.contains_key(DEFAULT_NETWORK) {
        daemon
            .create_default_network()
            .await
            .context("creating the default network")?;
    }
    let listener = bind_socket(&opts.socket, opts.socket_group)?;
    tracing::info!(
        datapath = daemon.driver.name(),
        uplinks = %uplink_list(&daemon.host),
        socket = %opts.socket.display(),
        "netd is ready"
    );

    let events = tokio::sync::broadcast::channel::<String>(1024).0;
    let drop_reader = match daemon.driver.take_drop_events()? {
        Some(ring) => Some(tokio::spawn(read_drop_events(
            ring,
            daemon.nl.clone(),
            events.clone(),
        ))),
        None => None,
    };
    let daemon = Arc::new(Mutex::new(daemon));
    let watcher = tokio::spawn(follow_host(daemon.clone(), host_events));
    let metrics_server = match opts.metrics {
        Some(addr) => Some(serve_metrics(addr, daemon.clone()).await?),
        None => None,
    };
    let shutdown = Arc::new(Notify::new());
    let gc = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CONNTRACK_GC_INTERVAL).await;
                let mut daemon = daemon.lock().await;
                match daemon.driver.gc() {
                    Ok(removed) => daemon.metrics.gc_run(removed),
                    Err(err) => tracing::warn!(err = format!("{err:#}"), "conntrack GC"),
                }
            }
        })
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let down = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (daemon, shutdown, events) = (daemon.clone(), shutdown.clone(), events.clone());
                let metrics = metrics.clone();
                tokio::spawn(async move { serve(stream, daemon, shutdown, events, metrics).await });
            }
            _ = shutdown.notified() => break true,
            _ = tokio::signal::ctrl_c() => break false,
            _ = sigterm.recv() => break false,
        }
    };
    gc.abort();
    watcher.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    if let Some(reader) = drop_reader {
        reader.abort();
    }
    let _ = std::fs::remove_file(&opts.socket);
    if !down && opts.cleanup {
        daemon.lock().await.teardown().await?;
    }
    Ok(())
}

fn check_privileges() -> Result<()> {
    // SAFETY: plain syscall.
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "netd daemon needs root: CAP_NET_ADMIN (links, addresses), CAP_BPF and CAP_SYS_ADMIN (BPF programs, cgroup hooks, namespaces)"
        );
    }
    Ok(())
}

/// The host as the drivers need it: the uplinks (the `--uplink` names, or
/// every interface that is not loopback, a bridge, a bridge port or one of
/// netd's own veths, as Docker masquerades out of every non-bridge
/// interface) and every local address.
async fn host_info(
    nl: &Netlink,
    state: &State,
    configured: &[String],
    at_start: bool,
) -> Result<HostInfo> {
    let owned: BTreeSet<&str> = state
        .containers
        .values()
        .flat_map(|c| {
            c.attachments
                .iter()
                .map(|a| a.host_veth.as_str())
                .chain(c.pending_links.iter().map(String::as_str))
        })
        .chain(state.networks.values().map(|n| n.bridge.as_str()))
        .collect();
    // A veth's peer before it moves into the container (a crash can leave it).
    let peers: BTreeSet<String> = owned
        .iter()
        .filter_map(|n| n.strip_prefix("veth"))
        .map(|suffix| format!("tmp{suffix}"))
        .collect();
    let addrs = nl.all_addresses().await?;
    let mut uplinks = Vec::new();
    for link in nl.link_details().await? {
        let eligible = if configured.is_empty() {
            // With an IPv4 address: one waiting for DHCP joins when it gets one.
            link.name != "lo"
                && !link.bridge
                && !link.enslaved
                && !owned.contains(link.name.as_str())
                && !peers.contains(&link.name)
                && addrs.iter().any(|(i, _)| *i == link.index)
        } else {
            configured.contains(&link.name)
        };
        if eligible {
            uplinks.push(Uplink {
                addrs: addrs
                    .iter()
                    .filter(|(i, _)| *i == link.index)
                    .map(|(_, a)| *a)
                    .collect(),
                name: link.name,
                ifindex: link.index,
                mtu: link.mtu,
            });
        }
    }
    for name in configured.iter().filter(|_| at_start) {
        if !uplinks.iter().any(|u| &u.name == name) {
            bail!("--uplink {name}: no such interface in this network namespace");
        }
    }
    Ok(HostInfo {
        uplinks,
        local_addrs: addrs.into_iter().map(|(_, a)| a).collect(),
    })
}

fn uplink_list(host: &HostInfo) -> String {
    host.uplinks
        .iter()
        .map(|u| u.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /metrics` on `addr`: the Prometheus text format, the datapath's
/// figures read at scrape time.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    daemon: Arc<Mutex<Daemon>>,
) -> Result<tokio::task::JoinHandle<()>> {
    use axum::{extract::State as Shared, http::header, routing::get};
    async fn scrape(
        Shared(daemon): Shared<Arc<Mutex<Daemon>>>,
    ) -> impl axum::response::IntoResponse {
        let daemon = daemon.lock().await;
        let datapath = daemon.driver.metrics().unwrap_or_else(|err| {
            tracing::warn!(err = format!("{err:#}"), "reading datapath metrics");
            Default::default()
        });
        let body = daemon
            .metrics
            .render(&datapath, daemon.state.published().count());
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: binding"))?;
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(daemon);
    tracing::info!(%addr, "serving metrics");
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "metrics server");
        }
    }))
}

/// Follows the host: rtnetlink link and IPv4 address events make the
/// daemon re-read the host and update the datapath, without a restart.
/// rtnetlink link and IPv4 address events, subscribed before the host is
/// first read so no change falls between the two.
type HostEvents = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

fn subscribe_host_events() -> Result<HostEvents> {
    use rtnetlink::{
        constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK},
        sys::{AsyncSocket as _, SocketAddr},
    };
    let (mut connection, _handle, events) =
        rtnetlink::new_connection().context("opening rtnetlink for host events")?;
    let groups = SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR);
    connection
        .socket_mut()
        .socket_mut()
        .bind(&groups)
        .context("subscribing to link and address events")?;
    tokio::spawn(connection);
    Ok(events)
}

async fn follow_host(daemon: Arc<Mutex<Daemon>>, mut events: HostEvents) {
    use futures::StreamExt as _;
    // Whatever changed since the host was first read.
    if let Err(err) = daemon.lock().await.sync_host().await {
        tracing::warn!(err = format!("{err:#}"), "following the host");
    }
    while events.next().await.is_some() {
        // One pass for a burst (a veth pair, an address flush and re-add).
        tokio::time::sleep(Duration::from_millis(20)).await;
        while events.try_recv().is_ok() {}
        let mut daemon = daemon.lock().await;
        if let Err(err) = daemon.sync_host().await {
            tracing::warn!(err = format!("{err:#}"), "following the host");
        }
    }
    tracing::error!("host events stopped: interface and address changes are no longer followed");
}

/// Root-owned socket, mode 0660 (group configurable), in a directory that is
/// not world-writable.
fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("socket path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o002 != 0 {
        bail!(
            "socket directory {} is world-writable; use a private directory",
            dir.display()
        );
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
        _ => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    }
    Ok(listener)
}

/// One connection: one request line (bounded), one reply. Malformed,
/// truncated or oversized input gets an error reply, never a crash.
async fn serve(
    stream: UnixStream,
    daemon: Arc<Mutex<Daemon>>,
    shutdown: Arc<Notify>,
    events: tokio::sync::broadcast::Sender<String>,
    metrics: Arc<Metrics>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read =
        tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line)).await;
    let (response, down) = match read {
        Err(_) => (Response::error("timed out waiting for a request"), false),
        Ok(Err(err)) => (Response::error(format!("reading request: {err}")), false),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => (
            Response::error(format!("request larger than {MAX_REQUEST_BYTES} bytes")),
            false,
        ),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(err) => (Response::error(format!("malformed request: {err}")), false),
            Ok(Request::Monitor) => {
                stream_events(write, events.subscribe()).await;
                return;
            }
            Ok(request) => {
                let down = matches!(request, Request::Down);
                let (kind, mutates) = (request.kind(), request.mutates());
                let span = tracing::info_span!("request", kind);
                let started = Instant::now();
                let result = async {
                    let mut daemon = daemon.lock().await;
                    daemon.handle(request).await
                }
                .instrument(span.clone())
                .await;
                let elapsed = started.elapsed();
                let micros = elapsed.as_micros() as u64;
                metrics.request(kind, elapsed.as_secs_f64());
                let _entered = span.enter();
                match result {
                    Ok(data) => {
                        if mutates {
                            tracing::info!(micros, "done");
                        } else {
                            tracing::debug!(micros, "done");
                        }
                        (Response::ok(data), down)
                    }
                    Err(err) => {
                        let err = format!("{err:#}");
                        tracing::info!(micros, %err, "refused");
                        (Response::error(err), false)
                    }
                }
            }
        },
    };
    let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    let _ = write.shutdown().await;
    if down {
        shutdown.notify_one();
    }
}

/// `netd monitor`: one JSON line per dropped packet until the client leaves.
async fn stream_events(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut events: tokio::sync::broadcast::Receiver<String>,
) {
    let hello = serde_json::to_string(&Response::ok(json!("monitoring drops"))).unwrap_or_default();
    if write
        .write_all(format!("{hello}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let line = match events.recv().await {
            Ok(line) => line,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                json!({"lost_events": n}).to_string()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Drains the drop-event ring buffer into the monitor channel.
async fn read_drop_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    nl: Netlink,
    events: tokio::sync::broadcast::Sender<String>,
) {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd lives.
    let Ok(mut ring) = (unsafe { tokio::io::unix::AsyncFd::register(ring) }) else {
        return;
    };
    let mut names: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<netd_common::DropEvent>() {
                // SAFETY: the ring holds DropEvents written by the BPF side.
                batch.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<netd_common::DropEvent>())
                });
            }
        }
        guard.clear_ready();
        for event in batch {
            let name = match names.get(&event.ifindex) {
                Some(name) => name.clone(),
                None => {
                    let name = nl
                        .link_name(event.ifindex)
                        .await
                        .unwrap_or_else(|_| format!("if{}", event.ifindex));
                    names.insert(event.ifindex, name.clone());
                    name
                }
            };
            let reason =
                netd_common::DropReason::from_u32(event.reason).map_or("unknown", |r| r.label());
            let port = |p: [u8; 2]| u16::from_be_bytes(p);
            let line = json!({
                "reason": reason,
                "interface": name,
                "proto": event.proto,
                "src": format!("{}:{}", Ipv4Addr::from(event.src), port(event.src_port)),
                "dst": format!("{}:{}", Ipv4Addr::from(event.dst), port(event.dst_port)),
            });
            let _ = events.send(line.to_string());
        }
    }
}

struct Daemon {
    state: State,
    metrics: Arc<Metrics>,
    /// `--uplink` names; empty: every interface that is not a bridge, a
    /// bridge port, loopback or netd's own.
    uplink_names: Vec<String>,
    /// The host as the drivers were last told it.
    host: HostInfo,
    state_dir: PathBuf,
    bpffs: PathBuf,
    nl: Netlink,
    driver: Box<dyn FirewallDriver>,
    /// What the last reconciliation (start or `netd repair`) changed.
    repairs: Vec<String>,
}

impl Daemon {
    async fn handle(&mut self, request: Request) -> Result<serde_json::Value> {
        match request {
            Request::NetworkCreate(spec) => {
                let net = self.network_create(spec).await?;
                Ok(serde_json::to_value(net)?)
            }
            Request::NetworkLs => Ok(serde_json::to_value(
                self.state.live_networks().collect::<Vec<_>>(),
            )?),
            Request::NetworkInspect { name } => {
                let net = self.network(&name)?;
                let containers: Vec<serde_json::Value> = self
                    .state
                    .containers
                    .values()
                    .flat_map(|c| {
                        c.attachments
                            .iter()
                            .filter(|a| a.network == name)
                            .map(move |a| json!({"name": c.name, "ip": a.ip, "mac": a.mac}))
                    })
                    .collect();
                let mut value = serde_json::to_value(net)?;
                value["containers"] = json!(containers);
                Ok(value)
            }
            Request::NetworkRm { name } => self
                .network_rm(&name)
                .await
                .map(|()| json!({"removed": name})),
            Request::ContainerCreate {
                name,
                network,
                ip,
                publish,
            } => {
                let (container, publish_time) = self
                    .container_create(&name, &network, ip.as_deref(), &publish)
                    .await?;
                let mut data = serde_json::to_value(container)?;
                // How long the datapath took to install this container's
                // ports (the benchmark's control-plane figure).
                data["publish_us"] = json!(publish_time.as_secs_f64() * 1e6);
                Ok(data)
            }
            Request::NetworkConnect {
                network,
                container,
                ip,
            } => Ok(serde_json::to_value(
                self.network_connect(&network, &container, ip.as_deref())
                    .await?,
            )?),
            Request::NetworkDisconnect { network, container } => self
                .network_disconnect(&network, &container)
                .await
                .map(|()| json!({"disconnected": container})),
            Request::ContainerRm { name } => self
                .container_rm(&name)
                .await
                .map(|()| json!({"removed": name})),
            Request::ContainerLs => Ok(serde_json::to_value(
                self.state.live_containers().collect::<Vec<_>>(),
            )?),
            Request::ContainerInspect { name } => Ok(serde_json::to_value(self.container(&name)?)?),
            Request::Status => {
                let mut status = self.driver.status()?;
                status["networks"] = json!(self.state.networks.len());
                status["containers"] = json!(self.state.containers.len());
                status["published_ports"] = json!(self.state.published().count());
                status["repairs"] = json!(self.repairs);
                Ok(status)
            }
            Request::Repair => {
                let repairs = self.reconcile().await?;
                Ok(json!({"repairs": repairs}))
            }
            Request::ConntrackLs => Ok(serde_json::to_value(self.driver.conntrack()?)?),
            Request::Down => self.teardown().await.map(|()| json!({"down": true})),
            Request::Monitor => bail!("monitor streams; it is served by the connection handler"),
        }
    }

    /// A network to use (never one being created or removed).
    fn network(&self, name: &str) -> Result<&Network> {
        self.state
            .networks
            .get(name)
            .filter(|n| n.pending.is_none())
            .ok_or_else(|| anyhow!("no network named {name:?} (see `netd network ls`)"))
    }

    fn container(&self, name: &str) -> Result<&Container> {
        self.state
            .containers
            .get(name)
            .ok_or_else(|| anyhow!("no container named {name:?} (see `netd container ls`)"))
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.state_dir)
    }

    async fn create_default_network(&mut self) -> Result<()> {
        let spec = NetworkSpec {
            name: DEFAULT_NETWORK.into(),
            subnet: None,
            gateway: None,
            internal: false,
            icc: true,
            masquerade: true,
            host_ip: None,
            mtu: None,
        };
        self.network_create(spec).await.map(drop)
    }

    async fn network_create(&mut self, spec: NetworkSpec) -> Result<Network> {
        check_name("network", &spec.name)?;
        if self.state.networks.contains_key(&spec.name) {
            bail!("a network named {:?} already exists", spec.name);
        }
        if matches!(spec.name.as_str(), "host" | "none") {
            bail!(
                "{:?} is a reserved network mode, not a network name",
                spec.name
            );
        }
        let named: Vec<(String, Cidr)> = self
            .state
            .networks
            .values()
            .map(|n| (n.name.clone(), n.subnet))
            .collect();
        let subnet = match &spec.subnet {
            Some(s) => {
                let subnet: Cidr = s.parse()?;
                ipam::check_subnet_free(&subnet, &named)?;
                subnet
            }
            None => {
                let mut taken: Vec<Cidr> = named.iter().map(|(_, c)| *c).collect();
                taken.extend(
                    self.nl
                        .routes()
                        .await?
                        .into_iter()
                        .map(|(c, _)| c)
                        .filter(|c| c.prefix_len > 0),
                );
                ipam::allocate_subnet(&taken)?
            }
        };
        let gateway = match &spec.gateway {
            Some(g) => {
                let gateway: Ipv4Addr = g
                    .parse()
                    .map_err(|_| anyhow!("--gateway {g:?} is not an IPv4 address"))?;
                ipam::check_in_subnet("gateway", gateway, &subnet)?;
                gateway
            }
            None => subnet
                .first_host()
                .ok_or_else(|| anyhow!("subnet {subnet} has no host addresses"))?,
        };
        let host_ip = match &spec.host_ip {
            Some(ip) => Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| anyhow!("--host-ip {ip:?} is not an IPv4 address"))?,
            ),
            None => None,
        };
        let mtu = spec.mtu.unwrap_or(1500);
        if !(576..=65535).contains(&mtu) {
            bail!("--mtu {mtu} is outside 576..65535");
        }
        let id = self.state.next_network_id.max(1);
        let bridge = if spec.name == DEFAULT_NETWORK {
            DEFAULT_BRIDGE.to_owned()
        } else {
            format!("br-{:012x}", random_u64() & 0xffff_ffff_ffff)
        };
        let net = Network {
            name: spec.name.clone(),
            id,
            subnet,
            gateway,
            bridge,
            internal: spec.internal,
            icc: spec.icc,
            masquerade: spec.masquerade,
            host_ip,
            mtu,
            pending: None,
        };

        // Intent first: a crash from here on is rolled back at start.
        self.state.networks.insert(
            net.name.clone(),
            Network {
                pending: Some(Pending::Creating),
                ..net.clone()
            },
        );
        self.save()?;
        fault_point("network-create:intent");
        let result = async {
            let index = self.nl.create_bridge(&net.bridge, mtu).await?;
            fault_point("network-create:bridge");
            self.nl
                .add_address(index, gateway, subnet.prefix_len)
                .await?;
            let mac = self.nl.link_mac(index).await?;
            self.driver.add_network(&net, mac)?;
            fault_point("network-create:driver");
            Ok(())
        }
        .await;
        if let Err(err) = result {
            self.remove_network_objects(&net).await;
            self.state.networks.remove(&net.name);
            self.save()?;
            return Err(err);
        }
        self.state.next_network_id = id + 1;
        self.state.networks.insert(net.name.clone(), net.clone());
        self.save()?;
        Ok(net)
    }

    /// Undoes a network in the kernel and the driver, whatever is left of
    /// it (every step is done already when its object is gone).
    async fn remove_network_objects(&mut self, net: &Network) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(err) = self.driver.remove_network(net) {
            errors.push(format!("{err:#}"));
        }
        if let Err(err) = self.nl.delete_link_named(&net.bridge).await {
            errors.push(format!("{err:#}"));
        }
        errors
    }

    async fn network_rm(&mut self, name: &str) -> Result<()> {
        // A remove that failed half-way may be retried: pending ones count.
        let net = self
            .state
            .networks
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("no network named {name:?} (see `netd network ls`)"))?;
        let users: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.attachments.iter().any(|a| a.network == name))
            .map(|c| c.name.as_str())
            .collect();
        if !users.is_empty() {
            bail!(
                "network {name:?} has containers attached ({}); remove them first",
                users.join(", ")
            );
        }
        self.mark_network(name, Pending::Removing)?;
        fault_point("network-rm:marked");
        let errors = self.remove_network_objects(&net).await;
        if !errors.is_empty() {
            // Still marked: the next `rm`, `netd repair`, start or `down` finishes it.
            bail!("removing network {name:?}: {}", errors.join("; "));
        }
        self.state.networks.remove(name);
        self.save()
    }

    fn mark_network(&mut self, name: &str, pending: Pending) -> Result<()> {
        if let Some(net) = self.state.networks.get_mut(name) {
            net.pending = Some(pending);
        }
        self.save()
    }

    async fn container_create(
        &mut self,
        name: &str,
        network: &str,
        ip: Option<&str>,
        publish: &[String],
    ) -> Result<(Container, Duration)> {
        check_name("container", name)?;
        if self.state.containers.contains_key(name) {
            bail!("a container named {name:?} already exists");
        }
        if netlink::netns_path(name).exists() {
            bail!("a network namespace named {name:?} already exists on this host");
        }
        let specs = publish
            .iter()
            .map(|p| PortSpec::parse(p))
            .collect::<Result<Vec<_>>>()?;
        let mode = match network {
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            _ => NetworkMode::Bridge,
        };
        if mode != NetworkMode::Bridge && (!specs.is_empty() || ip.is_some()) {
            bail!(
                "--network {network} takes neither -p nor --ip (the container has no address of its own)"
            );
        }
        // Intent first: the name, the namespace and every veth are recorded
        // before they exist, so a crash from here on is rolled back at start.
        let host_veth = new_veth_name();
        self.state.containers.insert(
            name.to_owned(),
            Container {
                name: name.to_owned(),
                mode: mode.clone(),
                attachments: Vec::new(),
                ports: Vec::new(),
                pending: Some(Pending::Creating),
                pending_links: vec![host_veth.clone()],
            },
        );
        self.save()?;
        fault_point("container-create:intent");
        let result = self
            .container_create_inner(name, network, mode, ip, &specs, &host_veth)
            .await;
        match result {
            Ok((container, publish_time)) => {
                self.state
                    .containers
                    .insert(name.to_owned(), container.clone());
                self.save()?;
                Ok((container, publish_time))
            }
            Err(err) => {
                let partial = self.state.containers.get(name).cloned();
                if let Some(partial) = partial {
                    self.remove_container_objects(&partial).await;
                }
                self.state.containers.remove(name);
                self.save()?;
                Err(err)
            }
        }
    }

    /// Undoes a container in the driver and the kernel, whatever is left of
    /// it: ports, endpoints, veths (made or only planned), the namespace.
    /// Each step is done already when its object is gone; the errors of the
    /// others are returned, after every step was tried.
    async fn remove_container_objects(&mut self, container: &Container) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(err) = self.driver.unpublish(&container.ports) {
            errors.push(format!("{err:#}"));
        }
        fault_point("container-rm:unpublished");
        for att in &container.attachments {
            if let Err(err) = self.driver.remove_endpoint(att) {
                errors.push(format!("{err:#}"));
            }
        }
        let links = container
            .attachments
            .iter()
            .map(|a| &a.host_veth)
            .chain(&container.pending_links);
        for link in links {
            if let Err(err) = self.nl.delete_link_named(link).await {
                errors.push(format!("{err:#}"));
            }
        }
        if let Err(err) = netlink::delete_netns(&container.name) {
            errors.push(format!("{err:#}"));
        }
        errors
    }

    /// Records in the container's intent a veth about to be created.
    fn plan_link(&mut self, name: &str, link: &str) -> Result<()> {
        if let Some(c) = self.state.containers.get_mut(name) {
            c.pending_links.push(link.to_owned());
        }
        self.save()
    }

    async fn container_create_inner(
        &mut self,
        name: &str,
        network: &str,
        mode: NetworkMode,
        ip: Option<&str>,
        specs: &[PortSpec],
        host_veth: &str,
    ) -> Result<(Container, Duration)> {
        let mut container = Container {
            name: name.to_owned(),
            mode: mode.clone(),
            attachments: Vec::new(),
            ports: Vec::new(),
            pending: None,
            pending_links: Vec::new(),
        };
        if mode == NetworkMode::Host {
            netlink::name_current_netns(name)?;
            return Ok((container, Duration::ZERO));
        }
        // Validate everything before touching the kernel.
        let net = if mode == NetworkMode::Bridge {
            Some(self.network(network)?.clone())
        } else {
            None
        };
        let address = match &net {
            Some(net) => Some(self.pick_address(net, ip)?),
            None => None,
        };
        if let Some(net) = &net {
            if net.internal && !specs.is_empty() {
                bail!(
                    "network {:?} is internal: its containers cannot publish ports",
                    net.name
                );
            }
            container.ports = self.resolve_ports(specs, address.unwrap())?;
        }

        netlink::create_netns(name)?;
        fault_point("container-create:netns");
        let ns_path = netlink::netns_path(name);
        // As Docker does for IPv4-only networks: no IPv6 chatter from containers.
        for scope in ["all", "default"] {
            netlink::sysctl_in(
                &ns_path,
                &format!("net.ipv6.conf.{scope}.disable_ipv6"),
                "1",
            )?;
            // Gratuitous ARP when an address comes up, so neighbours drop a
            // stale MAC at once when a container reconnects on the same IP.
            netlink::sysctl_in(&ns_path, &format!("net.ipv4.conf.{scope}.arp_notify"), "1")?;
        }
        let inner = Netlink::connect_in(&ns_path)?;
        inner.set_up(inner.require_index("lo").await?).await?;
        let (Some(net), Some(address)) = (net, address) else {
            return Ok((container, Duration::ZERO));
        };

        let attachment = self
            .wire(name, &inner, &net, address, "eth0", host_veth, true)
            .await?;
        // From here the rollback must also undo the endpoint and the ports.
        if let Some(c) = self.state.containers.get_mut(name) {
            c.attachments.push(attachment.clone());
            c.ports = container.ports.clone();
        }
        let started = Instant::now();
        self.driver.publish(&container.ports)?;
        let publish_time = started.elapsed();
        fault_point("container-create:published");
        container.attachments.push(attachment);
        Ok((container, publish_time))
    }

    /// A veth `host_veth` from `net`'s bridge into container `name` as
    /// `ifname`, with `address`, registered with the driver. The caller has
    /// recorded `host_veth` in the container's intent; on failure, deleting
    /// it removes the peer too.
    #[allow(clippy::too_many_arguments)]
    async fn wire(
        &mut self,
        name: &str,
        inner: &Netlink,
        net: &Network,
        address: Ipv4Addr,
        ifname: &str,
        host_veth: &str,
        default_route: bool,
    ) -> Result<Attachment> {
        let peer = format!("tmp{}", host_veth.trim_start_matches("veth"));
        let (host_index, peer_index) = self.nl.create_veth(host_veth, &peer, net.mtu).await?;
        fault_point("container-create:veth");
        let ns_file = std::fs::File::open(netlink::netns_path(name))?;
        self.nl
            .move_to_netns(peer_index, ns_file.as_raw_fd())
            .await?;
        let eth = inner.require_index(&peer).await?;
        inner.rename(eth, ifname).await?;
        inner
            .add_address(eth, address, net.subnet.prefix_len)
            .await?;
        // Docker's scheme: the MAC follows from the address, so a container
        // that comes back on the same IP has the same MAC and no neighbour
        // holds a stale one.
        let [a, b, c, d] = address.octets();
        let mac = [0x02, 0x42, a, b, c, d];
        inner.set_mac(eth, mac).await?;
        let bridge = self.nl.require_index(&net.bridge).await?;
        self.nl.set_master(host_index, bridge).await?;
        self.nl.set_hairpin(host_index).await?;
        self.nl.set_up(host_index).await?;
        let attachment = Attachment {
            network: net.name.clone(),
            ip: address,
            mac: format_mac(mac),
            ifname: ifname.to_owned(),
            host_veth: host_veth.to_owned(),
        };
        self.driver
            .add_endpoint(net, &attachment, host_index, mac)?;
        fault_point("container-create:endpoint");
        // Up last: its gratuitous ARP (arp_notify) must find the host side
        // bridged and the datapath ready, or neighbours keep a stale MAC.
        let finish = async {
            inner.set_up(eth).await?;
            if default_route {
                inner.add_default_route(net.gateway).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = finish {
            // The caller deletes the veth; the endpoint is ours to undo.
            let _ = self.driver.remove_endpoint(&attachment);
            return Err(err);
        }
        Ok(attachment)
    }

    /// `netd network connect NET CONTAINER`: one more interface (ethN).
    async fn network_connect(
        &mut self,
        network: &str,
        name: &str,
        ip: Option<&str>,
    ) -> Result<Attachment> {
        let container = self.container(name)?.clone();
        if container.mode != NetworkMode::Bridge {
            bail!(
                "container {name:?} uses --network {:?}: it cannot join other networks",
                container.mode
            );
        }
        if container.attachments.iter().any(|a| a.network == network) {
            bail!("container {name:?} is already connected to network {network:?}");
        }
        let net = self.network(network)?.clone();
        let address = self.pick_address(&net, ip)?;
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !container.attachments.iter().any(|a| &a.ifname == n))
            .expect("an unused ethN exists");
        let inner = Netlink::connect_in(&netlink::netns_path(name))?;
        let default_route = container.attachments.is_empty();
        let host_veth = new_veth_name();
        self.plan_link(name, &host_veth)?;
        fault_point("network-connect:planned");
        let result = self
            .wire(
                name,
                &inner,
                &net,
                address,
                &ifname,
                &host_veth,
                default_route,
            )
            .await;
        let entry = self.state.containers.get_mut(name).expect("checked above");
        entry.pending_links.retain(|l| l != &host_veth);
        match result {
            Ok(attachment) => {
                fault_point("network-connect:wired");
                entry.attachments.push(attachment.clone());
                self.save()?;
                Ok(attachment)
            }
            Err(err) => {
                let partial = Attachment {
                    network: net.name.clone(),
                    ip: address,
                    mac: String::new(),
                    ifname,
                    host_veth: host_veth.clone(),
                };
                let _ = self.driver.remove_endpoint(&partial);
                let _ = self.nl.delete_link_named(&host_veth).await;
                self.save()?;
                Err(err)
            }
        }
    }

    /// `netd network disconnect NET CONTAINER`: the interface goes, and with
    /// it the ports published to that address.
    async fn network_disconnect(&mut self, network: &str, name: &str) -> Result<()> {
        let container = self.container(name)?.clone();
        let Some(att) = container
            .attachments
            .iter()
            .find(|a| a.network == network)
            .cloned()
        else {
            bail!("container {name:?} is not connected to network {network:?}");
        };
        let net = self.network(network)?.clone();
        let (gone, kept): (Vec<PublishedPort>, Vec<PublishedPort>) = container
            .ports
            .iter()
            .cloned()
            .partition(|p| p.container_ip == att.ip);
        self.driver.unpublish(&gone)?;
        self.driver.remove_endpoint(&att)?;
        self.nl.delete_link_named(&att.host_veth).await?;
        let remaining: Vec<Attachment> = container
            .attachments
            .iter()
            .filter(|a| a.network != network)
            .cloned()
            .collect();
        // The default route went with the interface: move it to the next network.
        if let Some(next) = remaining.first() {
            let gateway = self.network(&next.network)?.gateway;
            let inner = Netlink::connect_in(&netlink::netns_path(name))?;
            let _ = inner.add_default_route(gateway).await;
        }
        let _ = net;
        let entry = self.state.containers.get_mut(name).expect("checked above");
        entry.attachments = remaining;
        entry.ports = kept;
        self.save()
    }

    fn used_addresses(&self, net: &Network) -> BTreeSet<Ipv4Addr> {
        let mut used: BTreeSet<Ipv4Addr> = self
            .state
            .containers
            .values()
            .flat_map(|c| c.attachments.iter())
            .filter(|a| a.network == net.name)
            .map(|a| a.ip)
            .collect();
        used.insert(net.gateway);
        used
    }

    fn pick_address(&self, net: &Network, ip: Option<&str>) -> Result<Ipv4Addr> {
        let used = self.used_addresses(net);
        match ip {
            Some(ip) => {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| anyhow!("--ip {ip:?} is not an IPv4 address"))?;
                ipam::check_in_subnet("--ip", ip, &net.subnet)?;
                if used.contains(&ip) {
                    bail!("address {ip} is already in use on network {:?}", net.name);
                }
                Ok(ip)
            }
            None => ipam::allocate_ip(&net.subnet, &used),
        }
    }

    /// Expands `-p` specs into single ports, picking free host ports where
    /// none was given, and refuses ports already published.
    fn resolve_ports(
        &self,
        specs: &[PortSpec],
        container_ip: Ipv4Addr,
    ) -> Result<Vec<PublishedPort>> {
        let mut out: Vec<PublishedPort> = Vec::new();
        for spec in specs {
            let count = spec.container_ports.1 - spec.container_ports.0;
            for offset in 0..=count {
                let container_port = spec.container_ports.0 + offset;
                let host_port = match spec.host_ports {
                    Some((start, _)) => start + offset,
                    None => AUTO_PORTS
                        .clone()
                        .find(|&p| self.port_free(&out, spec.host_ip, p, spec.proto).is_ok())
                        .ok_or_else(|| anyhow!("no free host port left for -p {container_port}"))?,
                };
                self.port_free(&out, spec.host_ip, host_port, spec.proto)?;
                out.push(PublishedPort {
                    host_ip: spec.host_ip,
                    host_port,
                    container_ip,
                    container_port,
                    proto: spec.proto,
                });
            }
        }
        Ok(out)
    }

    fn port_free(
        &self,
        pending: &[PublishedPort],
        host_ip: Ipv4Addr,
        port: u16,
        proto: crate::portspec::Proto,
    ) -> Result<()> {
        let clash = |p: &PublishedPort| {
            p.host_port == port
                && p.proto == proto
                && (p.host_ip == host_ip || p.host_ip.is_unspecified() || host_ip.is_unspecified())
        };
        if let Some(p) = self
            .state
            .published()
            .chain(pending.iter())
            .find(|p| clash(p))
        {
            bail!(
                "host port {}:{port}/{proto} is already published (by {}:{}); pick another host port",
                p.host_ip,
                p.container_ip,
                p.container_port
            );
        }
        Ok(())
    }

    async fn container_rm(&mut self, name: &str) -> Result<()> {
        let container = self.container(name)?.clone();
        // Marked first: whatever fails below, the next `rm`, `netd repair`,
        // start or `down` finishes the job.
        if let Some(c) = self.state.containers.get_mut(name) {
            c.pending = Some(Pending::Removing);
        }
        self.save()?;
        fault_point("container-rm:marked");
        let errors = self.remove_container_objects(&container).await;
        if !errors.is_empty() {
            bail!("removing container {name:?}: {}", errors.join("; "));
        }
        self.state.containers.remove(name);
        self.save()
    }

    /// Re-reads the host's links and addresses and tells the driver when
    /// they changed (an address added or renumbered, an uplink new or gone).
    async fn sync_host(&mut self) -> Result<()> {
        let host = host_info(&self.nl, &self.state, &self.uplink_names, false).await?;
        if host != self.host {
            // Remembered only once applied: a failure is retried next time.
            self.driver.host_changed(&host)?;
            self.host = host;
        }
        Ok(())
    }

    /// Compares the state with the kernel and repairs what differs, at start
    /// and on `netd repair`. Never gives up on the first missing object:
    /// - operations a crash interrupted are rolled back (creates) or
    ///   finished (removes), with every veth they had planned;
    /// - a missing bridge is made again (with its gateway), and veths are
    ///   put back on it;
    /// - a container whose namespace is gone is removed, its addresses and
    ///   ports freed; one whose veth is gone gets it again;
    /// - the driver is told everything and drops what nobody declared.
    ///
    /// Returns what it changed, one line each (kept for `netd status`).
    async fn reconcile(&mut self) -> Result<Vec<String>> {
        // The driver's own objects first (e.g. pins removed behind its back),
        // so re-adoption below finds them in place.
        let mut report = self.driver.repair()?;
        for container in self.state.containers.clone().into_values() {
            let what = match container.pending {
                Some(Pending::Creating) => "an interrupted create was rolled back",
                Some(Pending::Removing) => "an interrupted remove was finished",
                None if !container.pending_links.is_empty() => {
                    let c = self
                        .state
                        .containers
                        .get_mut(&container.name)
                        .expect("listed");
                    let links = std::mem::take(&mut c.pending_links);
                    for link in &links {
                        if let Err(err) = self.nl.delete_link_named(link).await {
                            report.push(format!("container {}: {err:#}", container.name));
                        }
                    }
                    report.push(format!(
                        "container {}: removed the veth of an interrupted connect ({})",
                        container.name,
                        links.join(", ")
                    ));
                    continue;
                }
                None => continue,
            };
            let errors = self.remove_container_objects(&container).await;
            self.state.containers.remove(&container.name);
            report.push(format!("container {}: {what}", container.name));
            report.extend(
                errors
                    .into_iter()
                    .map(|e| format!("container {}: {e}", container.name)),
            );
        }
        for net in self.state.networks.clone().into_values() {
            if net.pending.is_some() {
                let errors = self.remove_network_objects(&net).await;
                self.state.networks.remove(&net.name);
                report.push(format!(
                    "network {}: an interrupted operation was settled (removed)",
                    net.name
                ));
                report.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("network {}: {e}", net.name)),
                );
                continue;
            }
            if let Err(err) = self.readopt_network(&net, &mut report).await {
                report.push(format!(
                    "network {}: could not be repaired ({err:#}); kept, retry with `netd repair`",
                    net.name
                ));
            }
        }
        for container in self.state.containers.clone().into_values() {
            if let Err(err) = self.readopt_container(&container, &mut report).await {
                // Reported and kept (the user's container is not ours to
                // delete over one failure); `netd repair` tries again and
                // `container rm` always works.
                report.push(format!(
                    "container {}: could not be repaired ({err:#}); kept, retry with `netd repair`",
                    container.name
                ));
            }
        }
        report.extend(self.driver.reconciled()?);
        self.metrics.repaired(report.len());
        self.save()?;
        self.repairs = report.clone();
        Ok(report)
    }

    /// One network after a restart or on `netd repair`: its bridge (made
    /// again if it is gone), gateway address, and the driver's entry.
    async fn readopt_network(&mut self, net: &Network, report: &mut Vec<String>) -> Result<()> {
        let index = match self.nl.link_index(&net.bridge).await? {
            Some(index) => index,
            None => {
                report.push(format!(
                    "network {}: bridge {} was gone; made again",
                    net.name, net.bridge
                ));
                self.nl.create_bridge(&net.bridge, net.mtu).await?
            }
        };
        if !self.nl.addresses(index).await?.contains(&net.gateway) {
            self.nl
                .add_address(index, net.gateway, net.subnet.prefix_len)
                .await?;
        }
        self.nl.set_up(index).await?;
        let mac = self.nl.link_mac(index).await?;
        self.driver.add_network(net, mac)
    }

    /// One container after a restart or on `netd repair`: its namespace,
    /// every attachment's veth on its bridge, endpoints and ports in the
    /// driver. A vanished namespace removes it (reported).
    async fn readopt_container(
        &mut self,
        container: &Container,
        report: &mut Vec<String>,
    ) -> Result<()> {
        let name = &container.name;
        if !netlink::netns_path(name).exists() {
            let errors = self.remove_container_objects(container).await;
            self.state.containers.remove(name);
            let ports: Vec<String> = container
                .ports
                .iter()
                .map(|p| format!("{}:{}/{}", p.host_ip, p.host_port, p.proto))
                .collect();
            let addrs: Vec<String> = container
                .attachments
                .iter()
                .map(|a| a.ip.to_string())
                .collect();
            report.push(format!(
                "container {name}: its namespace is gone; removed (addresses [{}] and ports [{}] freed)",
                addrs.join(", "),
                ports.join(", ")
            ));
            report.extend(errors.into_iter().map(|e| format!("container {name}: {e}")));
            return Ok(());
        }
        let mut attachments = Vec::new();
        for (i, att) in container.attachments.iter().enumerate() {
            let net = self.network(&att.network)?.clone();
            let bridge = self.nl.require_index(&net.bridge).await?;
            let att = match self.nl.link_index(&att.host_veth).await? {
                Some(index) => {
                    // A bridge made again has no ports: put the veth back.
                    self.nl.set_master(index, bridge).await?;
                    self.nl.set_hairpin(index).await?;
                    self.nl.set_up(index).await?;
                    self.driver
                        .add_endpoint(&net, att, index, parse_mac(&att.mac)?)?;
                    att.clone()
                }
                None => {
                    // Deleted behind our back: the same address on a new veth
                    // (the old one's endpoint and program link go first).
                    self.driver.remove_endpoint(att)?;
                    let inner = Netlink::connect_in(&netlink::netns_path(name))?;
                    if let Some(stale) = inner.link_index(&att.ifname).await? {
                        inner.delete_link(stale).await?;
                    }
                    let host_veth = new_veth_name();
                    self.plan_link(name, &host_veth)?;
                    let new = self
                        .wire(name, &inner, &net, att.ip, &att.ifname, &host_veth, i == 0)
                        .await?;
                    report.push(format!(
                        "container {name}: its interface {} on network {} was gone; made again",
                        att.ifname, net.name
                    ));
                    new
                }
            };
            attachments.push(att);
        }
        self.driver.publish(&container.ports)?;
        if let Some(c) = self.state.containers.get_mut(name) {
            c.attachments = attachments;
            c.pending_links.clear();
        }
        Ok(())
    }

    /// `netd down`: every container, every network, the state file.
    async fn teardown(&mut self) -> Result<()> {
        for name in self.state.containers.keys().cloned().collect::<Vec<_>>() {
            self.container_rm(&name).await?;
        }
        for name in self.state.networks.keys().cloned().collect::<Vec<_>>() {
            self.network_rm(&name).await?;
        }
        let _ = std::fs::remove_file(self.state_dir.join("state.json"));
        let clsact = self.driver.clsact_interfaces();
        self.driver.remove_all()?;
        for ifindex in clsact {
            self.nl.remove_clsact_if_unused(ifindex).await?;
        }
        // Unpinning detaches the uplink and socket hooks; maps go with us.
        crate::bpf::Datapath::remove_pins(&self.bpffs)
    }
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!(
            "invalid {what} name {name:?}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        );
    }
    Ok(())
}

/// Named points inside mutating requests where the fault tests stop the
/// daemon dead (`NETD_FAULT_POINT=name`): abort() leaves everything exactly
/// as kill -9 would at that step. Unset, this is one comparison.
pub const FAULT_POINTS: &[&str] = &[
    "network-create:intent",
    "network-create:bridge",
    "network-create:driver",
    "network-rm:marked",
    "container-create:intent",
    "container-create:netns",
    "container-create:veth",
    "container-create:endpoint",
    "container-create:published",
    "container-rm:marked",
    "container-rm:unpublished",
    "network-connect:planned",
    "network-connect:wired",
];

fn fault_point(name: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("NETD_FAULT_POINT").ok());
    if wanted.as_deref() == Some(name) {
        tracing::error!(point = name, "stopping dead at a fault point");
        std::process::abort();
    }
}

/// A fresh name for a container veth's host side (Docker's scheme).
fn new_veth_name() -> String {
    format!("veth{:07x}", random_u64() & 0xfff_ffff)
}

fn random_u64() -> u64 {
    // The kernel's random source; names only need to differ, not be secret.
    let mut buf = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut buf);
    }
    u64::from_ne_bytes(buf) ^ u64::from(std::process::id()) ^ monotonic_nanos()
}

fn monotonic_nanos() -> u64 {
    crate::bpf::monotonic_ns()
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
