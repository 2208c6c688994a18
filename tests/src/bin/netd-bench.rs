//! `cargo xtask bench [--quick]`: eBPF vs iptables vs plain routing on the
//! same topology, in one run. Outside client namespace -> uplink -> host
//! namespace -> bridge -> server container, and back (container -> outside
//! through SNAT). Datapaths are measured interleaved, repeated, and reported
//! as medians with min/max; every figure goes to target/bench/results.json,
//! tables to target/bench/results.md and the scaling curves to
//! target/bench/scaling.svg.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

#[path = "netd-bench/flood.rs"]
mod flood;
#[path = "netd-bench/paired.rs"]
mod paired;
#[path = "netd-bench/runtime_bench.rs"]
mod runtime_bench;
use netd::{api::ContainerSpec, client::Client, portspec::PortSpec};
use netd_testbed::{
    Netns, Testbed,
    daemon_host::{DaemonHost, HOST_IP},
    uplink::OUTSIDE_IP,
};
use serde_json::{Value, json};

const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;
const SERVER_IP: &str = "172.17.0.2";
/// Published ports the filler container takes (the measured ones come last).
const FILLER_FIRST_PORT: usize = 20000;
/// Networks in the "many networks" targets (the measured container is on
/// the first, oldest one, so the iptables path walks every newer bridge's
/// rules first, as with Docker).
const MANY_NETWORKS: usize = 50;

struct Config {
    duration: Duration,
    repeats: usize,
    port_counts: Vec<usize>,
    /// Publish-one-more-port samples per daemon target.
    publish_samples: usize,
    /// Paired A/B: pairs per comparison, and each half's length.
    pairs: usize,
    slice: Duration,
}

/// Where a workload's client runs and what it talks to.
struct Side {
    client: Netns,
    tcp: SocketAddr,
    udp: SocketAddr,
    /// A UDP server that answers each datagram (UDP request/response),
    /// where one is reachable.
    udp_echo: Option<SocketAddr>,
    /// What to flood the host with, for the flood workloads.
    flood: Option<Arc<flood::FloodSpec>>,
}

/// One topology under test.
struct Target {
    datapath: &'static str,
    ports: usize,
    networks: usize,
    /// What else sets it apart (user rules, no XDP), for its label.
    variant: String,
    /// Outside client -> published port (plain routing: the container).
    dnat: Side,
    /// Container -> server in the outside namespace.
    snat: Side,
    container_servers: Servers,
    outside_servers: Servers,
    daemon_pid: Option<u32>,
    /// Control-plane figures measured once the target is built.
    control: Value,
    _keep: Keep,
}

impl Target {
    fn label(&self) -> String {
        format!(
            "{} with {} ports, {} network(s){}",
            self.datapath, self.ports, self.networks, self.variant
        )
    }
}

/// Owns the namespaces (and daemon) of a target until the run ends.
struct Keep {
    _daemon: Option<Box<DaemonHost>>,
    _bed: Option<Box<Testbed>>,
    runtime: Option<Box<runtime_bench::RuntimeHost>>,
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let config = if quick {
        Config {
            duration: Duration::from_millis(500),
            repeats: 1,
            port_counts: vec![1, 1000],
            publish_samples: 2,
            pairs: 3,
            slice: Duration::from_millis(200),
        }
    } else {
        Config {
            duration: Duration::from_secs(2),
            repeats: 5,
            port_counts: vec![1, 1000, 10000],
            publish_samples: 5,
            pairs: 15,
            slice: Duration::from_millis(500),
        }
    };
    let netd = sibling("netd")?;
    if std::env::args().any(|a| a == "--docker") {
        return runtime_bench::run(runtime_bench::Runtime::Docker, &netd, &config, quick);
    }
    if std::env::args().any(|a| a == "--podman") {
        return runtime_bench::run(runtime_bench::Runtime::Podman, &netd, &config, quick);
    }
    let mut targets = Vec::new();
    eprintln!("bench: building topologies");
    targets.push(plain_target()?);
    targets.push(direct_target()?);
    let mut shapes: Vec<(usize, usize)> = config.port_counts.iter().map(|&p| (p, 1)).collect();
    shapes.push((1, MANY_NETWORKS));
    for &(ports, networks) in &shapes {
        for datapath in ["ebpf", "iptables"] {
            targets.push(timed_build(|| {
                daemon_target(&netd, datapath, ports, networks, &config, Extras::default())
                    .with_context(|| format!("building {datapath} with {ports} ports"))
            })?);
        }
    }
    let samples = run_rounds(&targets, &config, measure_all)?;
    let profile = profile_ebpf(&targets, config.duration)?;
    let typical: Vec<Target> = ["ebpf", "iptables"]
        .into_iter()
        .map(|datapath| {
            timed_build(|| {
                typical_target(&netd, datapath)
                    .with_context(|| format!("building the typical host on {datapath}"))
            })
        })
        .collect::<Result<_>>()?;
    let paired = paired_comparisons(&targets, &typical, &config)?;
    let rules_and_flood = flood::run(&netd, &targets, &config, quick)?;
    report(
        &targets,
        &samples,
        &profile,
        &paired,
        &rules_and_flood,
        &config,
        quick,
    )
}

/// The paired A/B comparisons: the noise floor, the sanity ordering, eBPF
/// over iptables at every shape, 10,000 ports over 1, and the typical host
/// over iptables and over plain routing in both directions.
fn paired_comparisons(
    targets: &[Target],
    typical: &[Target],
    config: &Config,
) -> Result<(String, Value)> {
    use paired::{Comparison, Direction::*, Workload::*};
    let find = |datapath: &str, ports: usize, networks: usize| {
        targets
            .iter()
            .find(|t| t.datapath == datapath && t.ports == ports && t.networks == networks)
    };
    let run = |c: Comparison<'_>| -> Result<paired::PairedRatio> {
        eprintln!(
            "bench: paired {} {:?} {:?}",
            c.what, c.workload, c.direction
        );
        paired::compare(&c, config.pairs, config.slice)
    };
    let (Some(ebpf1), Some(plain), Some(direct)) =
        (find("ebpf", 1, 1), find("none", 0, 1), find("direct", 0, 1))
    else {
        anyhow::bail!("the paired comparisons need the 1-port, plain and direct targets");
    };
    let noise = run(Comparison {
        what: "ebpf 1 port / itself".into(),
        a: ebpf1,
        b: ebpf1,
        workload: TcpCrr,
        direction: Dnat,
    })?;
    let sanity = run(Comparison {
        what: "direct veth / plain routing".into(),
        a: direct,
        b: plain,
        workload: TcpCrr,
        direction: Dnat,
    })?;
    let mut results = Vec::new();
    for ebpf in targets.iter().filter(|t| t.datapath == "ebpf") {
        let Some(iptables) = find("iptables", ebpf.ports, ebpf.networks) else {
            continue;
        };
        let what = format!(
            "ebpf / iptables, {} ports, {} network(s)",
            ebpf.ports, ebpf.networks
        );
        for (workload, direction) in [(TcpCrr, Dnat), (TcpRr, Dnat), (UdpRr, Dnat), (TcpCrr, Snat)]
        {
            results.push(run(Comparison {
                what: what.clone(),
                a: ebpf,
                b: iptables,
                workload,
                direction,
            })?);
        }
    }
    let most = targets
        .iter()
        .filter(|t| t.datapath == "ebpf" && t.networks == 1)
        .max_by_key(|t| t.ports);
    if let Some(most) = most.filter(|t| t.ports > 1) {
        results.push(run(Comparison {
            what: format!("ebpf {} ports / ebpf 1 port", most.ports),
            a: most,
            b: ebpf1,
            workload: TcpCrr,
            direction: Dnat,
        })?);
    }
    if let [ebpf, iptables] = typical {
        for (b, name) in [(iptables, "iptables"), (plain, "plain routing")] {
            for direction in [Dnat, Snat] {
                for workload in [TcpCrr, TcpRr, UdpRr] {
                    results.push(run(Comparison {
                        what: format!("typical host: ebpf / {name}"),
                        a: ebpf,
                        b,
                        workload,
                        direction,
                    })?);
                }
            }
        }
    }
    Ok(paired::report(&results, Some(&sanity), Some(&noise)))
}

/// Builds one target, saying how long it took.
fn timed_build(build: impl FnOnce() -> Result<Target>) -> Result<Target> {
    let started = Instant::now();
    let target = build()?;
    eprintln!(
        "bench: {} ready in {:.1}s",
        target.label(),
        started.elapsed().as_secs_f64()
    );
    Ok(target)
}

/// A short warm-up of every target, then `config.repeats` rounds, each
/// measuring every target in turn: samples[target][figure], one value per
/// round.
fn run_rounds(
    targets: &[Target],
    config: &Config,
    measure: impl Fn(&Target, Duration) -> Result<Vec<(String, f64)>>,
) -> Result<Vec<BTreeMap<String, Vec<f64>>>> {
    eprintln!("bench: warming up");
    for target in targets {
        measure(target, config.duration / 5).with_context(|| target.label())?;
    }
    let mut samples: Vec<BTreeMap<String, Vec<f64>>> = vec![BTreeMap::new(); targets.len()];
    for round in 0..config.repeats {
        for (t, target) in targets.iter().enumerate() {
            eprintln!("bench: round {} {}", round + 1, target.label());
            for (name, value) in measure(target, config.duration).with_context(|| target.label())? {
                samples[t].entry(name).or_default().push(value);
            }
        }
    }
    Ok(samples)
}

fn sibling(name: &str) -> Result<String> {
    let exe = std::env::current_exe()?;
    let path: PathBuf = exe.parent().context("no directory")?.join(name);
    anyhow::ensure!(path.exists(), "{} not built", path.display());
    Ok(path.to_string_lossy().into_owned())
}

/// Plain routing: the same bridge/veth shape, no NAT, no filtering, no
/// programs; the client talks to the container address directly and the
/// container to the outside with its own address.
fn plain_target() -> Result<Target> {
    let mut bed = Testbed::new()?;
    let (host, outside, _uplink) = bed.add_host_with_outside()?;
    outside.ip(&["route", "add", "172.17.0.0/16", "via", HOST_IP])?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    let bridge = bed.ifname("br");
    host.ip(&["link", "add", &bridge, "type", "bridge"])?;
    host.ip(&["addr", "add", "172.17.0.1/16", "dev", &bridge])?;
    host.ip(&["link", "set", &bridge, "up"])?;
    let ctr = bed.add_container(
        "srv",
        &host,
        &bridge,
        &bed.ifname("vs"),
        &format!("{SERVER_IP}/16"),
        "172.17.0.1",
    )?;
    reference_target("none", bed, &outside, &ctr)
}

/// The fastest path this machine has: the client and the server namespace
/// joined by one veth pair, no host in between (the ceiling for the others).
fn direct_target() -> Result<Target> {
    let mut bed = Testbed::new()?;
    let outside = bed.add_netns("out")?;
    let server = bed.add_netns("srv")?;
    bed.veth(&outside, "eth0", &server, "eth0")?;
    outside.ip(&["addr", "add", &format!("{OUTSIDE_IP}/32"), "dev", "eth0"])?;
    outside.ip(&["route", "add", &format!("{SERVER_IP}/32"), "dev", "eth0"])?;
    server.ip(&["addr", "add", &format!("{SERVER_IP}/32"), "dev", "eth0"])?;
    server.ip(&["route", "add", &format!("{OUTSIDE_IP}/32"), "dev", "eth0"])?;
    reference_target("direct", bed, &outside, &server)
}

/// A target without netd: the client talks to the server's own address,
/// and the server to the client's.
fn reference_target(
    datapath: &'static str,
    bed: Testbed,
    outside: &Netns,
    server: &Netns,
) -> Result<Target> {
    tune_client(outside)?;
    tune_client(server)?;
    Ok(Target {
        datapath,
        ports: 0,
        networks: 1,
        variant: String::new(),
        dnat: side(outside, SERVER_IP, 80, 53)?.with_echo(54),
        snat: side(server, OUTSIDE_IP, 80, 53)?.with_echo(54),
        container_servers: Servers::start(server, SERVER_IP)?,
        outside_servers: Servers::start(outside, OUTSIDE_IP)?,
        daemon_pid: None,
        control: Value::Null,
        _keep: Keep {
            _daemon: None,
            _bed: Some(Box::new(bed)),
            runtime: None,
        },
    })
}

fn side(client: &Netns, ip: &str, tcp_port: u16, udp_port: u16) -> Result<Side> {
    Ok(Side {
        client: client.clone(),
        tcp: format!("{ip}:{tcp_port}").parse()?,
        udp: format!("{ip}:{udp_port}").parse()?,
        udp_echo: None,
        flood: None,
    })
}

impl Side {
    /// The side with UDP request/response to `port` of the same address.
    fn with_echo(mut self, port: u16) -> Self {
        self.udp_echo = Some(SocketAddr::new(self.udp.ip(), port));
        self
    }
}

/// Published ports of the typical host (one TCP and one UDP per container).
const TYPICAL_FIRST_PORT: u16 = 10000;
const TYPICAL_CONTAINERS: u16 = 20;
const TYPICAL_NETWORKS: u16 = 5;

/// A typical host: 5 networks, 20 containers (4 on each), 40 published
/// ports (each container one TCP port to 80 and one UDP port to 54, the
/// echo); traffic goes to the container in the middle of the set.
fn typical_target(netd: &str, datapath: &'static str) -> Result<Target> {
    let h = DaemonHost::start(netd, &["--datapath", datapath]);
    let mut networks = vec![("bridge".to_owned(), "172.17.0".to_owned())];
    for n in 1..TYPICAL_NETWORKS {
        let name = format!("n{n}");
        h.ok(&[
            "network",
            "create",
            &name,
            "--subnet",
            &format!("10.100.{n}.0/24"),
        ]);
        networks.push((name, format!("10.100.{n}")));
    }
    let measured = TYPICAL_CONTAINERS / 2;
    let mut server = None;
    for k in 0..TYPICAL_CONTAINERS {
        let (network, prefix) = &networks[usize::from(k / 4)];
        let ip = format!("{prefix}.{}", 10 + k);
        let port = TYPICAL_FIRST_PORT + k;
        let name = h.name(&format!("t{k}"));
        h.ok(&[
            "container",
            "create",
            &name,
            "--network",
            network,
            "--ip",
            &ip,
            "-p",
            &format!("{port}:80"),
            "-p",
            &format!("{port}:54/udp"),
        ]);
        if k == measured {
            server = Some((h.ctr(&format!("t{k}")), ip));
        }
    }
    let (ctr, ip) = server.context("the measured container")?;
    let port = TYPICAL_FIRST_PORT + measured;
    let dnat = side(&h.outside, HOST_IP, port, port)?.with_echo(port);
    let shape = (
        usize::from(2 * TYPICAL_CONTAINERS),
        usize::from(TYPICAL_NETWORKS),
    );
    host_target(h, datapath, shape, (&ctr, &ip), dnat, Value::Null)
}

/// The target of daemon host `h` (ports, networks) = `shape`, measured
/// against `server` (its namespace and address): `dnat` from the outside,
/// from the server to the outside's servers masqueraded.
fn host_target(
    h: DaemonHost,
    datapath: &'static str,
    shape: (usize, usize),
    server: (&Netns, &str),
    dnat: Side,
    control: Value,
) -> Result<Target> {
    let (ctr, ip) = server;
    let target = Target {
        datapath,
        ports: shape.0,
        networks: shape.1,
        variant: String::new(),
        dnat,
        snat: side(ctr, OUTSIDE_IP, 80, 53)?.with_echo(54),
        container_servers: Servers::start(ctr, ip)?,
        outside_servers: Servers::start(&h.outside, OUTSIDE_IP)?,
        daemon_pid: h.daemon.as_ref().map(|d| d.id()),
        control,
        _keep: Keep {
            _daemon: Some(Box::new(h)),
            _bed: None,
            runtime: None,
        },
    };
    tune_client(&target.dnat.client)?;
    tune_client(&target.snat.client)?;
    Ok(target)
}

/// What sets a daemon target apart beyond its shape.
#[derive(Default)]
struct Extras<'a> {
    /// More daemon flags (e.g. `--xdp off`).
    flags: &'a [&'a str],
    /// User rules loaded before measuring (`netd rule load` lines).
    rules: Vec<String>,
    /// Appended to the target's label.
    variant: String,
    /// Queues on each end of the uplink veth (0: one).
    uplink_queues: u32,
}

/// netd with `ports` published ports (the measured ones added last) and
/// `networks` networks (the measured container on the oldest).
fn daemon_target(
    netd: &str,
    datapath: &'static str,
    ports: usize,
    networks: usize,
    config: &Config,
    extras: Extras<'_>,
) -> Result<Target> {
    // Metrics for the control plane's figures (the publish time).
    let flags: Vec<&str> = ["--datapath", datapath, "--metrics", METRICS_ADDR]
        .into_iter()
        .chain(extras.flags.iter().copied())
        .collect();
    let mut h = DaemonHost::start_with_uplink_queues(netd, &flags, extras.uplink_queues);
    if ports > 1 {
        let fill = h.name("fill");
        let last = FILLER_FIRST_PORT + ports - 2;
        let range = format!("{FILLER_FIRST_PORT}-{last}:{FILLER_FIRST_PORT}-{last}");
        h.ok(&[
            "container",
            "create",
            &fill,
            "--ip",
            "172.17.0.9",
            "-p",
            &range,
        ]);
    }
    let srv = h.name("srv");
    h.ok(&[
        "container",
        "create",
        &srv,
        "--ip",
        SERVER_IP,
        "-p",
        "8080:80",
        "-p",
        "5353:53/udp",
        "-p",
        "5454:54/udp",
    ]);
    for n in 1..networks {
        let subnet = format!("10.{}.{}.0/24", 100 + n / 256, n % 256);
        h.ok(&["network", "create", &format!("n{n}"), "--subnet", &subnet]);
    }
    if !extras.rules.is_empty() {
        flood::load_rules(&h, &extras.rules)?;
    }
    let control = control_plane(&mut h, datapath, config.publish_samples)?;
    let ctr = h.ctr("srv");
    let dnat = side(&h.outside, HOST_IP, 8080, 5353)?.with_echo(5454);
    let mut target = host_target(
        h,
        datapath,
        (ports, networks),
        (&ctr, SERVER_IP),
        dnat,
        control,
    )?;
    target.variant = extras.variant;
    Ok(target)
}

/// Time to publish one more port (a new container with one `-p`), the
/// daemon's memory and the datapath's state size, and the time a kill -9
/// restart takes until the daemon answers again (re-adoption included).
fn control_plane(h: &mut DaemonHost, datapath: &str, samples: usize) -> Result<Value> {
    let mut publish_us = Vec::new();
    let mut request_ms = Vec::new();
    let client = Client::new(h.socket()).with_timeout(Duration::from_secs(120));
    let already = client.status()?.published_ports;
    for k in 0..samples {
        let name = h.name(&format!("extra{k}"));
        let (sum_before, _) = publish_seconds(h)?;
        let started = Instant::now();
        client.container_create(ContainerSpec {
            name: name.clone(),
            network: "bridge".into(),
            ip: None,
            publish: vec![PortSpec::parse(&format!("{}:80", 40000 + k))?],
        })?;
        request_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let (sum_after, _) = publish_seconds(h)?;
        publish_us.push((sum_after - sum_before) * 1e6);
        client.container_rm(&name)?;
    }
    let mut restart_ms = Vec::new();
    for _ in 0..samples.min(3) {
        h.kill_daemon(libc::SIGKILL);
        let started = Instant::now();
        h.spawn_daemon(); // returns once the socket answers
        restart_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let pid = h.daemon.as_ref().context("no daemon")?.id();
    let rules = h
        .host
        .run("iptables-save", &[])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
        .unwrap_or(0);
    Ok(json!({
        "datapath": datapath,
        "ports_already_published": already,
        "publish_one_port_us": stats(&publish_us),
        "create_container_request_ms": stats(&request_ms),
        "kill_9_restart_ms": stats(&restart_ms),
        "daemon_rss_kib": rss_kib(pid)?,
        "bpf_map_memlock_bytes": map_memlock(pid)?,
        "iptables_rules": rules,
    }))
}

/// Where the measured daemon serves its metrics (inside its namespace).
const METRICS_ADDR: &str = "127.0.0.1:9464";

/// The daemon's `netd_datapath_publish_seconds` (sum, count), scraped
/// from inside its namespace.
fn publish_seconds(h: &DaemonHost) -> Result<(f64, f64)> {
    use std::io::{Read as _, Write as _};
    let body = h.host.enter(|| -> Result<String> {
        let mut conn = std::net::TcpStream::connect(METRICS_ADDR)?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: netd\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok(text)
    })??;
    let sample = |name: &str| -> Result<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no {name} in the daemon's metrics"))?
            .split(' ')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{name} is not a number"))
    };
    Ok((
        sample("netd_datapath_publish_seconds_sum")?,
        sample("netd_datapath_publish_seconds_count")?,
    ))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The `key: value` lines of every fd of `pid` that has `kind` (e.g.
/// "map_id" or "prog_id"), one map per BPF object, deduplicated by id.
fn bpf_fdinfo(pid: u32, kind: &str) -> Result<BTreeMap<u64, BTreeMap<String, u64>>> {
    let mut objects = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let fields: BTreeMap<String, u64> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
            .collect();
        if let Some(&id) = fields.get(kind) {
            objects.insert(id, fields);
        }
    }
    Ok(objects)
}

fn map_memlock(pid: u32) -> Result<u64> {
    Ok(bpf_fdinfo(pid, "map_id")?
        .values()
        .filter_map(|f| f.get("memlock"))
        .sum())
}

/// The client opens thousands of connections a second: let it reuse
/// TIME_WAIT ports, so the benchmark measures the path, not port exhaustion.
fn tune_client(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; affinity of the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A TCP server on port 80 (answers a 1-byte read with one byte, counts the
/// bytes of bigger reads: TCP_CRR, TCP_RR and TCP_STREAM) and a UDP counter
/// on port 53, pinned to one core.
struct Servers {
    stop: Arc<AtomicBool>,
    udp_received: Arc<AtomicU64>,
    tcp_bytes: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, ip: &str) -> Result<Self> {
        // One connection at a time, served inline until the client closes:
        // no thread per connection, so the server is not what is measured.
        let listener = ns.enter(|| TcpListener::bind(format!("{ip}:80")))??;
        let udp = ns.enter(|| UdpSocket::bind(format!("{ip}:53")))??;
        let echo = ns.enter(|| UdpSocket::bind(format!("{ip}:54")))??;
        echo.set_read_timeout(Some(Duration::from_millis(50)))?;
        listener.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let udp_received = Arc::new(AtomicU64::new(0));
        let tcp_bytes = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (s, bytes) = (stop.clone(), tcp_bytes.clone());
        threads.push(thread::spawn(move || {
            pin_to_cpu(SERVER_CPU);
            while !s.load(Ordering::Relaxed) {
                // Sleep in poll(), not in a retry loop: the idle servers of
                // the other targets must not take CPU from the measured one.
                if !readable(&listener, Duration::from_millis(50)) {
                    continue;
                }
                if let Ok((conn, _)) = listener.accept() {
                    serve_connection(conn, &s, &bytes);
                }
            }
        }));
        let (s, counter) = (stop.clone(), udp_received.clone());
        threads.push(thread::spawn(move || {
            pin_to_cpu(SERVER_CPU);
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if udp.recv(&mut buf).is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        // UDP request/response: every datagram on 54 goes back to its sender.
        let s = stop.clone();
        threads.push(thread::spawn(move || {
            pin_to_cpu(SERVER_CPU);
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], peer);
                }
            }
        }));
        Ok(Self {
            stop,
            udp_received,
            tcp_bytes,
            threads,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack for the duration of the call.
    unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as libc::c_int) > 0 }
}

/// Answers a 1-byte read with one byte and counts everything, until the
/// client closes.
fn serve_connection(mut conn: TcpStream, stop: &AtomicBool, bytes: &AtomicU64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(1) => {
                bytes.fetch_add(1, Ordering::Relaxed);
                if conn.write_all(&buf[..1]).is_err() {
                    return;
                }
            }
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Every workload once, in both directions: (figure name, value).
fn measure_all(target: &Target, duration: Duration) -> Result<Vec<(String, f64)>> {
    let mut figures = Vec::new();
    for (dir, side, servers) in [
        ("dnat", &target.dnat, &target.container_servers),
        ("snat", &target.snat, &target.outside_servers),
    ] {
        let what = |w: &str| format!("{w} ({dir})");
        let (crr, crr_failed) = tcp_crr(side, duration).with_context(|| what("TCP_CRR"))?;
        let (rr, p50, p99) = tcp_rr(side, duration).with_context(|| what("TCP_RR"))?;
        let (udp, udp_loss) = udp_flood(side, servers, duration).with_context(|| what("UDP"))?;
        let stream = tcp_stream(side, servers, duration).with_context(|| what("TCP_STREAM"))?;
        if side.udp_echo.is_some() {
            let rate = udp_rr(side, duration).with_context(|| what("UDP_RR"))?;
            figures.push((format!("{dir}_udp_rr_per_s"), rate));
        }
        for (name, value) in [
            ("tcp_crr_per_s", crr),
            ("tcp_crr_failed", crr_failed as f64),
            ("tcp_rr_per_s", rr),
            ("tcp_rr_p50_us", p50),
            ("tcp_rr_p99_us", p99),
            ("udp64_pps", udp),
            ("udp64_loss_pct", udp_loss),
            ("tcp_stream_gbit_s", stream),
        ] {
            figures.push((format!("{dir}_{name}"), value));
        }
    }
    Ok(figures)
}

/// New connections per second: connect, one request, one response, close.
/// Returns the rate and how many connections failed (refused, timed out,
/// or cut before the response); past a small share the run fails.
fn tcp_crr(side: &Side, duration: Duration) -> Result<(f64, u64)> {
    let (done, failed) = tcp_crr_counted(side, duration);
    check_failures("TCP_CRR connections", done, failed)?;
    Ok((done as f64 / duration.as_secs_f64(), failed))
}

/// TCP_CRR's connections done and failed, whatever the share that failed.
fn tcp_crr_counted(side: &Side, duration: Duration) -> (u64, u64) {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let deadline = Instant::now() + duration;
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let _ = side.client.enter(|| {
                    pin_to_cpu(CLIENT_CPU);
                    while Instant::now() < deadline {
                        let Ok(mut conn) =
                            TcpStream::connect_timeout(&side.tcp, Duration::from_secs(1))
                        else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let _ = conn.set_nodelay(true);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut byte = [7u8; 1];
                        if conn.write_all(&byte).is_ok() && conn.read_exact(&mut byte).is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            });
        }
    });
    (done.into_inner(), failed.into_inner())
}

/// Fails the run when more than 0.5 % of the operations (and more than a
/// handful) failed: such a figure measures a fault, not a datapath.
fn check_failures(what: &str, done: u64, failed: u64) -> Result<()> {
    if failed > 10 && failed * 200 > done + failed {
        anyhow::bail!("{failed} of {} {what} failed", done + failed);
    }
    Ok(())
}

/// Transactions per second on one connection, with latency p50/p99 (µs).
fn tcp_rr(side: &Side, duration: Duration) -> Result<(f64, f64, f64)> {
    side.client.enter(|| -> Result<(f64, f64, f64)> {
        pin_to_cpu(CLIENT_CPU);
        let mut conn = TcpStream::connect_timeout(&side.tcp, Duration::from_secs(1))
            .with_context(|| format!("connecting to {}", side.tcp))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut latencies = Vec::new();
        let deadline = Instant::now() + duration;
        let mut byte = [1u8; 1];
        while Instant::now() < deadline {
            let t = Instant::now();
            conn.write_all(&byte)?;
            conn.read_exact(&mut byte)?;
            latencies.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        Ok((
            latencies.len() as f64 / duration.as_secs_f64(),
            pct(0.5),
            pct(0.99),
        ))
    })?
}

/// 64-byte UDP datagrams per second that reach the server, and the share
/// of those sent that did not (a flood overruns a receiver by design: the
/// loss is reported, not failed on).
fn udp_flood(side: &Side, servers: &Servers, duration: Duration) -> Result<(f64, f64)> {
    let before = servers.udp_received.load(Ordering::Relaxed);
    let sent = side.client.enter(|| -> Result<u64> {
        pin_to_cpu(CLIENT_CPU);
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(side.udp)?;
        let payload = [0u8; 64];
        let deadline = Instant::now() + duration;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            for _ in 0..64 {
                sent += u64::from(socket.send(&payload).is_ok());
            }
        }
        Ok(sent)
    })??;
    // The server has drained its socket when its count stops moving.
    let mut last = servers.udp_received.load(Ordering::Relaxed);
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(20));
        let now = servers.udp_received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let received = last - before;
    let loss = 100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64;
    Ok((received as f64 / duration.as_secs_f64(), loss))
}

/// UDP transactions per second on one socket: a 64-byte request, its reply.
/// A request unanswered within 200 ms counts as lost; past 0.5 % the run
/// fails.
fn udp_rr(side: &Side, duration: Duration) -> Result<f64> {
    let target = side
        .udp_echo
        .context("this target has no UDP echo server")?;
    let (done, lost) = side.client.enter(|| -> Result<(u64, u64)> {
        pin_to_cpu(CLIENT_CPU);
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let request = [0x42u8; 64];
        let mut reply = [0u8; 128];
        let (mut done, mut lost) = (0u64, 0u64);
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            socket.send(&request)?;
            match socket.recv(&mut reply) {
                Ok(64) => done += 1,
                _ => lost += 1,
            }
        }
        Ok((done, lost))
    })??;
    check_failures("UDP request/response", done, lost)?;
    Ok(done as f64 / duration.as_secs_f64())
}

/// Bulk TCP throughput on one connection (Gbit/s received by the server).
fn tcp_stream(side: &Side, servers: &Servers, duration: Duration) -> Result<f64> {
    let before = servers.tcp_bytes.load(Ordering::Relaxed);
    side.client.enter(|| -> Result<()> {
        pin_to_cpu(CLIENT_CPU);
        let mut conn = TcpStream::connect_timeout(&side.tcp, Duration::from_secs(1))
            .with_context(|| format!("connecting to {}", side.tcp))?;
        conn.set_write_timeout(Some(Duration::from_secs(1)))?;
        let chunk = vec![0x5au8; 128 * 1024];
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            conn.write_all(&chunk)?;
        }
        Ok(())
    })??;
    let received = servers.tcp_bytes.load(Ordering::Relaxed) - before;
    Ok(received as f64 * 8.0 / duration.as_secs_f64() / 1e9)
}

/// (runs, ns) per program name of daemon `pid`'s BPF programs (BPF
/// stats: zero unless enabled).
fn program_stats(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let names: BTreeMap<u64, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (u64::from(p.id()), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, fields) in bpf_fdinfo(pid, "prog_id")? {
        let name = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("prog{id}"));
        let entry = by_name.entry(name).or_default();
        entry.0 += fields.get("run_cnt").copied().unwrap_or(0);
        entry.1 += fields.get("run_time_ns").copied().unwrap_or(0);
    }
    Ok(by_name)
}

/// Restores kernel.bpf_stats_enabled on every path.
struct BpfStats;

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Result<Self> {
        std::fs::write(Self::SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, "0");
    }
}

/// Per-program run time of the eBPF target with the most published ports,
/// workload by workload, from the kernel's BPF stats (enabled only for this
/// pass: they add two clock reads per program run).
fn profile_ebpf(targets: &[Target], duration: Duration) -> Result<Value> {
    let Some(target) = targets
        .iter()
        .filter(|t| t.datapath == "ebpf" && t.networks == 1)
        .max_by_key(|t| t.ports)
    else {
        return Ok(Value::Null);
    };
    let pid = target.daemon_pid.context("no daemon")?;
    let snapshot = || program_stats(pid);
    eprintln!("bench: profiling {} with BPF stats", target.label());
    let _stats = BpfStats::enable()?;
    let mut workloads = serde_json::Map::new();
    let secs = duration.as_secs_f64();
    // Each workload returns how many operations it did, and what one is:
    // a connection (CRR), a packet of an established flow (RR: two per
    // transaction), a datagram received (UDP).
    type Workload<'a> = (&'a str, &'a str, &'a dyn Fn() -> Result<f64>);
    let run: [Workload<'_>; 6] = [
        ("dnat_tcp_crr", "connection", &|| {
            tcp_crr(&target.dnat, duration).map(|(rate, _)| rate * secs)
        }),
        ("dnat_tcp_rr", "established packet", &|| {
            tcp_rr(&target.dnat, duration).map(|(rate, _, _)| 2.0 * rate * secs)
        }),
        ("dnat_udp64", "datagram", &|| {
            udp_flood(&target.dnat, &target.container_servers, duration).map(|(pps, _)| pps * secs)
        }),
        ("snat_tcp_crr", "connection", &|| {
            tcp_crr(&target.snat, duration).map(|(rate, _)| rate * secs)
        }),
        ("snat_tcp_rr", "established packet", &|| {
            tcp_rr(&target.snat, duration).map(|(rate, _, _)| 2.0 * rate * secs)
        }),
        ("snat_udp64", "datagram", &|| {
            udp_flood(&target.snat, &target.outside_servers, duration).map(|(pps, _)| pps * secs)
        }),
    ];
    let mut per_operation = serde_json::Map::new();
    for (name, operation, workload) in run {
        let before = snapshot()?;
        let operations = workload()?;
        let after = snapshot()?;
        let mut programs = serde_json::Map::new();
        let mut total_ns = 0;
        for (prog, (runs, ns)) in &after {
            let (runs0, ns0) = before.get(prog).copied().unwrap_or_default();
            let runs = runs - runs0;
            if runs > 0 {
                total_ns += ns - ns0;
                programs.insert(
                    prog.clone(),
                    json!({"runs": runs, "ns_per_run": (ns - ns0) as f64 / runs as f64}),
                );
            }
        }
        workloads.insert(name.to_owned(), Value::Object(programs));
        per_operation.insert(
            name.to_owned(),
            json!({
                "operation": operation,
                "operations": operations,
                "bpf_ns_per_operation": total_ns as f64 / operations.max(1.0),
            }),
        );
    }
    Ok(json!({"target": target.label(), "workloads": workloads, "per_operation": per_operation}))
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return Value::Null;
    }
    json!({"median": s[s.len() / 2], "min": s[0], "max": s[s.len() - 1], "samples": v})
}

fn median(samples: &BTreeMap<String, Vec<f64>>, figure: &str) -> f64 {
    stats(samples.get(figure).map(Vec::as_slice).unwrap_or(&[]))["median"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Figures per direction: (column title, figure suffix, decimals).
const COLUMNS: &[(&str, &str, usize)] = &[
    ("TCP_CRR /s", "tcp_crr_per_s", 0),
    ("CRR failed", "tcp_crr_failed", 0),
    ("TCP_RR /s", "tcp_rr_per_s", 0),
    ("RR p50 µs", "tcp_rr_p50_us", 0),
    ("RR p99 µs", "tcp_rr_p99_us", 0),
    ("UDP RR /s", "udp_rr_per_s", 0),
    ("UDP 64 B pps", "udp64_pps", 0),
    ("UDP loss %", "udp64_loss_pct", 1),
    ("TCP_STREAM Gbit/s", "tcp_stream_gbit_s", 1),
];

/// Figures compared as ratios (higher is better for all of them).
const RATIOS: &[(&str, &str)] = &[
    ("CRR", "tcp_crr_per_s"),
    ("RR", "tcp_rr_per_s"),
    ("UDP RR", "udp_rr_per_s"),
    ("UDP", "udp64_pps"),
    ("STREAM", "tcp_stream_gbit_s"),
];

fn report(
    targets: &[Target],
    samples: &[BTreeMap<String, Vec<f64>>],
    profile: &Value,
    paired: &(String, Value),
    rules_and_flood: &(String, Value),
    config: &Config,
    quick: bool,
) -> Result<()> {
    let rows: Vec<Value> = targets
        .iter()
        .zip(samples)
        .map(|(target, figures)| {
            let figures: serde_json::Map<String, Value> = figures
                .iter()
                .map(|(name, v)| (name.clone(), stats(v)))
                .collect();
            json!({
                "datapath": target.datapath,
                "published_ports": target.ports,
                "networks": target.networks,
                "figures": figures,
                "control_plane": target.control,
            })
        })
        .collect();
    // First line of a command's output ("" when it cannot run).
    let first_line = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                text.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_default()
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let results = json!({
        "quick": quick,
        "duration_s": config.duration.as_secs_f64(),
        "repeats": config.repeats,
        "machine": {
            "kernel": first_line("uname", &["-r"]),
            "cpu_model": cpu_model,
            "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "client_cpu": CLIENT_CPU,
            "server_cpu": SERVER_CPU,
        },
        "versions": {
            "netd": env!("CARGO_PKG_VERSION"),
            "git_commit": first_line("git", &["rev-parse", "HEAD"]),
            "iptables": first_line("iptables", &["-V"]),
        },
        "results": rows,
        "ebpf_profile": profile,
        "paired": paired.1,
        "rules_and_flood": rules_and_flood.1,
        "paired_pairs": config.pairs,
        "paired_slice_s": config.slice.as_secs_f64(),
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;

    let none = targets.iter().position(|t| t.datapath == "none");
    let mut md = String::new();
    for (dir_name, title) in [
        ("dnat", "Outside client → published port (DNAT)"),
        ("snat", "Container → outside server (SNAT)"),
    ] {
        md.push_str(&format!("### {title}\n\n| datapath | ports | networks |"));
        for (col, _, _) in COLUMNS {
            md.push_str(&format!(" {col} |"));
        }
        md.push_str(&format!(
            "\n|---|---|---|{}\n",
            "---|".repeat(COLUMNS.len())
        ));
        for (t, target) in targets.iter().enumerate() {
            md.push_str(&format!(
                "| {} | {} | {} |",
                target.datapath, target.ports, target.networks
            ));
            for (_, figure, decimals) in COLUMNS {
                let value = median(&samples[t], &format!("{dir_name}_{figure}"));
                md.push_str(&format!(" {value:.decimals$} |"));
            }
            md.push('\n');
        }
        md.push('\n');
    }

    md.push_str(
        "### eBPF over iptables / eBPF over plain routing (medians)\n\n| ports | networks |",
    );
    for dir_name in ["dnat", "snat"] {
        for (title, _) in RATIOS {
            md.push_str(&format!(" {dir_name} {title} |"));
        }
    }
    md.push_str(&format!("\n|---|---|{}\n", "---|".repeat(2 * RATIOS.len())));
    for (t, target) in targets.iter().enumerate() {
        if target.datapath != "ebpf" {
            continue;
        }
        let peer = targets.iter().position(|o| {
            o.datapath == "iptables" && o.ports == target.ports && o.networks == target.networks
        });
        md.push_str(&format!("| {} | {} |", target.ports, target.networks));
        for dir_name in ["dnat", "snat"] {
            for (_, figure) in RATIOS {
                let figure = format!("{dir_name}_{figure}");
                let ours = median(&samples[t], &figure);
                let ratio = |o: Option<usize>| match o {
                    Some(o) => format!("{:.2}×", ours / median(&samples[o], &figure)),
                    None => "–".into(),
                };
                md.push_str(&format!(" {} / {} |", ratio(peer), ratio(none)));
            }
        }
        md.push('\n');
    }

    md.push('\n');
    md.push_str(&paired.0);
    md.push('\n');
    md.push_str(&rules_and_flood.0);
    md.push_str("\n### Control plane\n\n| datapath | ports already published | networks | publish one more port µs (median, min–max) | container create request ms | kill -9 restart ms | daemon RSS MiB | BPF map memory MiB | iptables rules |\n|---|---|---|---|---|---|---|---|---|\n");
    for target in targets.iter().filter(|t| !t.control.is_null()) {
        let c = &target.control;
        let p = &c["publish_one_port_us"];
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} ({:.0}–{:.0}) | {:.1} | {:.0} | {:.1} | {:.1} | {} |\n",
            target.datapath,
            c["ports_already_published"],
            target.networks,
            p["median"].as_f64().unwrap_or(f64::NAN),
            p["min"].as_f64().unwrap_or(f64::NAN),
            p["max"].as_f64().unwrap_or(f64::NAN),
            c["create_container_request_ms"]["median"]
                .as_f64()
                .unwrap_or(f64::NAN),
            c["kill_9_restart_ms"]["median"]
                .as_f64()
                .unwrap_or(f64::NAN),
            c["daemon_rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            c["bpf_map_memlock_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
            c["iptables_rules"],
        ));
    }

    if let Some(ops) = profile["per_operation"].as_object() {
        md.push_str(
            "\n### BPF time per operation (every program on the path, BPF stats)\n\n\
             | workload | per | BPF ns |\n|---|---|---|\n",
        );
        for (workload, figures) in ops {
            md.push_str(&format!(
                "| {workload} | {} | {:.0} |\n",
                figures["operation"].as_str().unwrap_or(""),
                figures["bpf_ns_per_operation"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    if let Some(workloads) = profile["workloads"].as_object() {
        md.push_str(&format!(
            "\n### eBPF per-program cost ({}, BPF stats)\n\n| workload | program | runs | ns per run |\n|---|---|---|---|\n",
            profile["target"].as_str().unwrap_or("")
        ));
        for (workload, programs) in workloads {
            for (program, figures) in programs.as_object().into_iter().flatten() {
                md.push_str(&format!(
                    "| {workload} | {program} | {} | {:.0} |\n",
                    figures["runs"],
                    figures["ns_per_run"].as_f64().unwrap_or(f64::NAN)
                ));
            }
        }
    }

    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(dir.join("scaling.svg"), scaling_chart(targets, samples))?;
    println!("{md}");
    println!(
        "medians of {} run(s) of {:.1}s each; all figures in {}, chart in {}",
        config.repeats,
        config.duration.as_secs_f64(),
        dir.join("results.json").display(),
        dir.join("scaling.svg").display()
    );
    Ok(())
}

/// A line chart: x is log10(published ports), one line per datapath.
struct Panel<'a> {
    title: &'a str,
    log_y: bool,
    series: Vec<Series<'a>>,
}

/// One datapath's line: (published ports, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// (datapath, colour, legend).
const DATAPATH_STYLES: &[(&str, &str, &str)] = &[
    ("ebpf", "#1f77b4", "ebpf"),
    ("iptables", "#d62728", "iptables"),
    ("none", "#7f7f7f", "plain routing"),
    ("direct", "#2ca02c", "direct veth"),
];

/// Paths without published ports, drawn as flat dashed references.
fn is_reference(datapath: &str) -> bool {
    matches!(datapath, "none" | "direct")
}

/// Two panels side by side: new connections per second through the
/// published port, and the time to publish one more port, against the
/// number of ports already published.
fn scaling_chart(targets: &[Target], samples: &[BTreeMap<String, Vec<f64>>]) -> String {
    let max_ports = targets.iter().map(|t| t.ports).max().unwrap_or(1).max(10) as f64;
    let series_of = |value: &dyn Fn(usize, &Target) -> Option<f64>| {
        DATAPATH_STYLES
            .iter()
            .filter_map(|&(datapath, colour, _)| {
                let mut points: Vec<(f64, f64)> = targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.datapath == datapath && t.networks == 1)
                    .filter_map(|(i, t)| Some((t.ports.max(1) as f64, value(i, t)?)))
                    .collect();
                if is_reference(datapath) && points.len() == 1 {
                    points.push((max_ports, points[0].1));
                }
                (!points.is_empty()).then_some((datapath, colour, points))
            })
            .collect::<Vec<_>>()
    };
    let crr = Panel {
        title: "TCP_CRR /s through the published port",
        log_y: false,
        series: series_of(&|i, _| Some(median(&samples[i], "dnat_tcp_crr_per_s"))),
    };
    let publish = Panel {
        title: "µs to publish one more port (log)",
        log_y: true,
        series: series_of(&|_, t| t.control["publish_one_port_us"]["median"].as_f64()),
    };
    let (w, h) = (440.0, 300.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#,
        2.0 * w
    );
    for (k, panel) in [crr, publish].iter().enumerate() {
        svg.push_str(&draw_panel(panel, k as f64 * w, w, h, max_ports));
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(panel: &Panel, x0: f64, w: f64, h: f64, max_ports: f64) -> String {
    let (left, right, top, bottom) = (x0 + 70.0, x0 + w - 20.0, 40.0, h - 60.0);
    let values = panel.series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
    let (mut lo, mut hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return String::new();
    }
    let scale = |v: f64| if panel.log_y { v.max(1e-3).log10() } else { v };
    if panel.log_y {
        (lo, hi) = (
            scale(lo).floor(),
            scale(hi).ceil().max(scale(lo).floor() + 1.0),
        );
    } else {
        (lo, hi) = (0.0, hi * 1.15);
    }
    let x_of = |ports: f64| left + (right - left) * ports.log10() / max_ports.log10();
    let y_of = |v: f64| bottom - (bottom - top) * (scale(v) - lo) / (hi - lo).max(1e-9);
    let mut out = format!(
        r#"<text x="{}" y="20" text-anchor="middle" font-weight="bold">{}</text>
<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>
"#,
        (left + right) / 2.0,
        panel.title
    );
    let mut ports = 1.0;
    while ports <= max_ports * 1.001 {
        out.push_str(&format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>
"#,
            x_of(ports),
            bottom + 16.0,
            ports as u64
        ));
        ports *= 10.0;
    }
    out.push_str(&format!(
        r#"<text x="{}" y="{}" text-anchor="middle">published ports</text>
"#,
        (left + right) / 2.0,
        bottom + 34.0
    ));
    // Ticks at decades (log) or at a round step giving 4-8 lines (linear).
    let ticks: Vec<f64> = if panel.log_y {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        let rough = hi / 5.0;
        let magnitude = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= rough)
            .unwrap_or(rough);
        (0..)
            .map(|k| k as f64 * step)
            .take_while(|v| *v <= hi)
            .collect()
    };
    for v in ticks {
        let y = y_of(v);
        let label = if v >= 1000.0 {
            format!("{}k", v / 1000.0)
        } else {
            format!("{v}")
        };
        out.push_str(&format!(
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>
"##,
            left - 6.0,
            y + 4.0,
        ));
    }
    for (k, (datapath, colour, points)) in panel.series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(p, v)| format!("{:.1},{:.1}", x_of(p), y_of(v)))
            .collect();
        let dash = if is_reference(datapath) {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        out.push_str(&format!(
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>
"#,
            path.join(" ")
        ));
        for &(p, v) in points.iter().filter(|_| !is_reference(datapath)) {
            out.push_str(&format!(
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>
"#,
                x_of(p),
                y_of(v)
            ));
        }
        let label = DATAPATH_STYLES
            .iter()
            .find(|style| style.0 == *datapath)
            .map_or(*datapath, |style| style.2);
        out.push_str(&format!(
            r#"<text x="{}" y="{}" fill="{colour}">{label}</text>
"#,
            left + 10.0 + 95.0 * k as f64,
            h - 8.0
        ));
    }
    out
}
