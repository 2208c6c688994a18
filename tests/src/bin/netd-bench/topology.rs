//! What the bench measures: the targets (plain routing, a direct veth, netd
//! on each datapath, the typical host), their client sides and servers.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netd_testbed::{
    Netns, Testbed,
    daemon_host::{DaemonHost, HOST_IP},
    uplink::OUTSIDE_IP,
};

use crate::{Config, flood, report::*, runtime_bench, workloads::*};

pub(crate) const SERVER_CPU: usize = 1;

pub(crate) const CLIENT_CPU: usize = 0;

pub(crate) const SERVER_IP: &str = "172.17.0.2";

/// Published ports the filler container takes (the measured ones come last).
pub(crate) const FILLER_FIRST_PORT: usize = 20000;

/// Networks in the "many networks" targets (the measured container is on
/// the first, oldest one, so the iptables path walks every newer bridge's
/// rules first, as with Docker).
pub(crate) const MANY_NETWORKS: usize = 50;

/// Where a workload's client runs and what it talks to.
pub(crate) struct Side {
    pub(crate) client: Netns,
    pub(crate) tcp: SocketAddr,
    pub(crate) udp: SocketAddr,
    /// A UDP server that answers each datagram (UDP request/response),
    /// where one is reachable.
    pub(crate) udp_echo: Option<SocketAddr>,
    /// What to flood the host with, for the flood workloads.
    pub(crate) flood: Option<Arc<flood::FloodSpec>>,
}

/// One topology under test.
pub(crate) struct Target {
    pub(crate) datapath: &'static str,
    pub(crate) ports: usize,
    pub(crate) networks: usize,
    /// What else sets it apart (user rules, no XDP), for its label.
    pub(crate) variant: String,
    /// Outside client -> published port (plain routing: the container).
    pub(crate) dnat: Side,
    /// Container -> server in the outside namespace.
    pub(crate) snat: Side,
    pub(crate) container_servers: Servers,
    pub(crate) outside_servers: Servers,
    pub(crate) daemon_pid: Option<u32>,
    /// Control-plane figures measured once the target is built.
    pub(crate) control: Option<ControlPlane>,
    pub(crate) _keep: Keep,
}

impl Target {
    pub(crate) fn label(&self) -> String {
        format!(
            "{} with {} ports, {} network(s){}",
            self.datapath, self.ports, self.networks, self.variant
        )
    }
}

/// Owns the namespaces (and daemon) of a target until the run ends.
pub(crate) struct Keep {
    pub(crate) _daemon: Option<Box<DaemonHost>>,
    pub(crate) _bed: Option<Box<Testbed>>,
    pub(crate) runtime: Option<Box<runtime_bench::RuntimeHost>>,
}

/// Builds one target, saying how long it took.
pub(crate) fn timed_build(build: impl FnOnce() -> Result<Target>) -> Result<Target> {
    let started = Instant::now();
    let target = build()?;
    eprintln!(
        "bench: {} ready in {:.1}s",
        target.label(),
        started.elapsed().as_secs_f64()
    );
    Ok(target)
}

/// Plain routing: the same bridge/veth shape, no NAT, no filtering, no
/// programs; the client talks to the container address directly and the
/// container to the outside with its own address.
pub(crate) fn plain_target() -> Result<Target> {
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
pub(crate) fn direct_target() -> Result<Target> {
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
pub(crate) fn reference_target(
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
        control: None,
        _keep: Keep {
            _daemon: None,
            _bed: Some(Box::new(bed)),
            runtime: None,
        },
    })
}

/// `ip`: an IPv4 or IPv6 address.
pub(crate) fn side(client: &Netns, ip: &str, tcp_port: u16, udp_port: u16) -> Result<Side> {
    let ip: IpAddr = ip.parse()?;
    Ok(Side {
        client: client.clone(),
        tcp: SocketAddr::new(ip, tcp_port),
        udp: SocketAddr::new(ip, udp_port),
        udp_echo: None,
        flood: None,
    })
}

impl Side {
    /// The side with UDP request/response to `port` of the same address.
    pub(crate) fn with_echo(mut self, port: u16) -> Self {
        self.udp_echo = Some(SocketAddr::new(self.udp.ip(), port));
        self
    }
}

/// Published ports of the typical host (one TCP and one UDP per container).
pub(crate) const TYPICAL_FIRST_PORT: u16 = 10000;

pub(crate) const TYPICAL_CONTAINERS: u16 = 20;

pub(crate) const TYPICAL_NETWORKS: u16 = 5;

/// A typical host: 5 networks, 20 containers (4 on each), 40 published
/// ports (each container one TCP port to 80 and one UDP port to 54, the
/// echo); traffic goes to the container in the middle of the set.
pub(crate) fn typical_target(netd: &str, datapath: &'static str) -> Result<Target> {
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
    host_target(h, datapath, shape, (&ctr, &ip), dnat, None)
}

/// The target of daemon host `h` (ports, networks) = `shape`, measured
/// against `server` (its namespace and address): `dnat` from the outside,
/// from the server to the outside's servers masqueraded.
pub(crate) fn host_target(
    h: DaemonHost,
    datapath: &'static str,
    shape: (usize, usize),
    server: (&Netns, &str),
    dnat: Side,
    control: Option<ControlPlane>,
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
pub(crate) struct Extras<'a> {
    /// More daemon flags (e.g. `--xdp off`).
    pub(crate) flags: &'a [&'a str],
    /// User rules loaded before measuring (`netd rule load` lines).
    pub(crate) rules: Vec<String>,
    /// Appended to the target's label.
    pub(crate) variant: String,
    /// Queues on each end of the uplink veth (0: one).
    pub(crate) uplink_queues: u32,
}

/// netd with `ports` published ports (the measured ones added last) and
/// `networks` networks (the measured container on the oldest).
pub(crate) fn daemon_target(
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
    let control = Some(control_plane(&mut h, datapath, config.publish_samples)?);
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

/// The client opens thousands of connections a second: let it reuse
/// TIME_WAIT ports, so the benchmark measures the path, not port exhaustion.
pub(crate) fn tune_client(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")
}

pub(crate) fn pin_to_cpu(cpu: usize) {
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
pub(crate) struct Servers {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) udp_received: Arc<AtomicU64>,
    pub(crate) tcp_bytes: Arc<AtomicU64>,
    pub(crate) threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    /// `ip`: an IPv4 or IPv6 address.
    pub(crate) fn start(ns: &Netns, ip: &str) -> Result<Self> {
        let ip: IpAddr = ip.parse()?;
        // One connection at a time, served inline until the client closes:
        // no thread per connection, so the server is not what is measured.
        let listener = ns.enter(|| TcpListener::bind(SocketAddr::new(ip, 80)))??;
        let udp = ns.enter(|| UdpSocket::bind(SocketAddr::new(ip, 53)))??;
        let echo = ns.enter(|| UdpSocket::bind(SocketAddr::new(ip, 54)))??;
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
pub(crate) fn readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
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
pub(crate) fn serve_connection(mut conn: TcpStream, stop: &AtomicBool, bytes: &AtomicU64) {
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
