//! `cargo xtask bench [--quick]`: eBPF vs iptables vs plain routing on the
//! same topology, in one run. Outside client namespace -> uplink -> host
//! namespace -> bridge -> server container. Datapaths are measured
//! interleaved, repeated, and reported as medians with min/max; every figure
//! goes to target/bench/results.json and a table to target/bench/results.md.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
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
};
use serde_json::{Value, json};

const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;
const SERVER_IP: &str = "172.17.0.2";

struct Config {
    duration: Duration,
    repeats: usize,
    port_counts: Vec<usize>,
}

/// One topology under test: where the client connects for TCP and UDP.
struct Target {
    datapath: &'static str,
    ports: usize,
    client: Netns,
    /// The TCP server (TCP_CRR and TCP_RR).
    tcp: SocketAddr,
    udp: SocketAddr,
    _servers: Servers,
    _keep: Keep,
}

/// Owns the namespaces (and daemon) of a target until the run ends.
struct Keep {
    _daemon: Option<Box<DaemonHost>>,
    _bed: Option<Box<Testbed>>,
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let config = if quick {
        Config {
            duration: Duration::from_millis(1500),
            repeats: 1,
            port_counts: vec![1, 1000],
        }
    } else {
        Config {
            duration: Duration::from_secs(5),
            repeats: 3,
            port_counts: vec![1, 1000, 10000],
        }
    };
    let netd = sibling("netd")?;
    let mut targets = Vec::new();
    eprintln!("bench: building topologies");
    targets.push(plain_target()?);
    for &ports in &config.port_counts {
        for datapath in ["ebpf", "iptables"] {
            let started = Instant::now();
            targets.push(daemon_target(&netd, datapath, ports)?);
            eprintln!(
                "bench: {datapath} with {ports} published ports ready in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    // results[target][workload] = samples
    let workloads = [
        "tcp_crr_per_s",
        "tcp_rr_per_s",
        "tcp_rr_p50_us",
        "tcp_rr_p99_us",
        "udp64_pps",
    ];
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); workloads.len()]; targets.len()];
    for rep in 0..config.repeats {
        for (t, target) in targets.iter().enumerate() {
            eprintln!(
                "bench: round {} {} ports={}",
                rep + 1,
                target.datapath,
                target.ports
            );
            let what = |w: &str| format!("{w} on {} with {} ports", target.datapath, target.ports);
            let crr = tcp_crr(target, config.duration).with_context(|| what("TCP_CRR"))?;
            let (rr, p50, p99) = tcp_rr(target, config.duration).with_context(|| what("TCP_RR"))?;
            let udp = udp_flood(target, config.duration).with_context(|| what("UDP"))?;
            for (w, v) in [crr, rr, p50, p99, udp].into_iter().enumerate() {
                samples[t][w].push(v);
            }
        }
    }
    report(&targets, &workloads, &samples, &config, quick)
}

fn sibling(name: &str) -> Result<String> {
    let exe = std::env::current_exe()?;
    let path: PathBuf = exe.parent().context("no directory")?.join(name);
    anyhow::ensure!(path.exists(), "{} not built", path.display());
    Ok(path.to_string_lossy().into_owned())
}

/// Plain routing: the same bridge/veth shape, no NAT, no filtering, no
/// programs; the client talks to the container address directly.
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
    let servers = Servers::start(&ctr)?;
    tune_client(&outside)?;
    Ok(Target {
        datapath: "none",
        ports: 0,
        client: outside,
        tcp: format!("{SERVER_IP}:80").parse()?,
        udp: format!("{SERVER_IP}:53").parse()?,
        _servers: servers,
        _keep: Keep {
            _daemon: None,
            _bed: Some(Box::new(bed)),
        },
    })
}

/// netd with `ports` published ports; the measured one is the last added.
fn daemon_target(netd: &str, datapath: &'static str, ports: usize) -> Result<Target> {
    let h = DaemonHost::start(netd, &["--datapath", datapath]);
    if ports > 1 {
        let fill = h.name("fill");
        let range = format!("20000-{}:20000-{}", 20000 + ports - 2, 20000 + ports - 2);
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
    ]);
    let servers = Servers::start(&h.ctr("srv"))?;
    tune_client(&h.outside)?;
    Ok(Target {
        datapath,
        ports,
        client: h.outside.clone(),
        tcp: format!("{HOST_IP}:8080").parse()?,
        udp: format!("{HOST_IP}:5353").parse()?,
        _servers: servers,
        _keep: Keep {
            _daemon: Some(Box::new(h)),
            _bed: None,
        },
    })
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

/// TCP (1-byte request/response per connection, or per round trip) and UDP
/// (count datagrams) servers inside the container, pinned to one core.
struct Servers {
    stop: Arc<AtomicBool>,
    udp_received: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns) -> Result<Self> {
        // One connection at a time, served inline until the client closes:
        // TCP_CRR (one byte each way, then close) and TCP_RR (one long
        // connection) without a thread per connection, so the server is not
        // what is measured.
        let listener = ns.enter(|| TcpListener::bind(format!("{SERVER_IP}:80")))??;
        let udp = ns.enter(|| UdpSocket::bind(format!("{SERVER_IP}:53")))??;
        listener.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let udp_received = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let s = stop.clone();
        threads.push(thread::spawn(move || {
            pin_to_cpu(SERVER_CPU);
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve_connection(conn, &s),
                    Err(_) => thread::sleep(Duration::from_micros(100)),
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
        Ok(Self {
            stop,
            udp_received,
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

/// Answers every byte with one byte until the client closes.
fn serve_connection(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut byte) {
            Ok(1) => {
                if conn.write_all(&byte).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// New connections per second: connect, one request, one response, close.
fn tcp_crr(target: &Target, duration: Duration) -> Result<f64> {
    let done = AtomicU64::new(0);
    let deadline = Instant::now() + duration;
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let _ = target.client.enter(|| {
                    pin_to_cpu(CLIENT_CPU);
                    while Instant::now() < deadline {
                        let Ok(mut conn) =
                            TcpStream::connect_timeout(&target.tcp, Duration::from_secs(1))
                        else {
                            continue;
                        };
                        let _ = conn.set_nodelay(true);
                        let mut byte = [7u8; 1];
                        if conn.write_all(&byte).is_ok() && conn.read_exact(&mut byte).is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            });
        }
    });
    Ok(done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64())
}

/// Transactions per second on one connection, with latency p50/p99 (µs).
fn tcp_rr(target: &Target, duration: Duration) -> Result<(f64, f64, f64)> {
    target.client.enter(|| -> Result<(f64, f64, f64)> {
        pin_to_cpu(CLIENT_CPU);
        let mut conn = TcpStream::connect_timeout(&target.tcp, Duration::from_secs(1))
            .with_context(|| format!("connecting to {}", target.tcp))?;
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

/// 64-byte UDP datagrams per second that reach the server.
fn udp_flood(target: &Target, duration: Duration) -> Result<f64> {
    let before = target._servers.udp_received.load(Ordering::Relaxed);
    target.client.enter(|| -> Result<()> {
        pin_to_cpu(CLIENT_CPU);
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(target.udp)?;
        let payload = [0u8; 64];
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            for _ in 0..64 {
                let _ = socket.send(&payload);
            }
        }
        Ok(())
    })??;
    thread::sleep(Duration::from_millis(200)); // let the server drain
    let received = target._servers.udp_received.load(Ordering::Relaxed) - before;
    Ok(received as f64 / duration.as_secs_f64())
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"median": s[s.len() / 2], "min": s[0], "max": s[s.len() - 1], "samples": v})
}

fn report(
    targets: &[Target],
    workloads: &[&str],
    samples: &[Vec<Vec<f64>>],
    config: &Config,
    quick: bool,
) -> Result<()> {
    let median = |t: usize, w: usize| stats(&samples[t][w])["median"].as_f64().unwrap_or(0.0);
    let rows: Vec<Value> = targets
        .iter()
        .enumerate()
        .map(|(t, target)| {
            let figures: serde_json::Map<String, Value> =
                workloads.iter().enumerate().map(|(w, name)| ((*name).to_owned(), stats(&samples[t][w]))).collect();
            json!({"datapath": target.datapath, "published_ports": target.ports, "figures": figures})
        })
        .collect();
    let uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?;
    let results = json!({
        "quick": quick,
        "duration_s": config.duration.as_secs_f64(),
        "repeats": config.repeats,
        "machine": {"kernel": uname, "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "netd_version": env!("CARGO_PKG_VERSION"),
        "results": rows,
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;

    let none = targets
        .iter()
        .position(|t| t.datapath == "none")
        .unwrap_or(0);
    let mut md = String::from(
        "| datapath | ports | TCP_CRR /s | TCP_RR /s | RR p50 µs | RR p99 µs | UDP 64 B pps | CRR vs iptables | CRR vs none | UDP vs iptables | UDP vs none |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (t, target) in targets.iter().enumerate() {
        let peer = targets
            .iter()
            .position(|o| o.datapath == "iptables" && o.ports == target.ports);
        let ratio = |w: usize, other: Option<usize>| match other {
            Some(o) if target.datapath == "ebpf" => {
                format!("{:.2}×", median(t, w) / median(o, w).max(1e-9))
            }
            _ => "".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            target.datapath,
            target.ports,
            median(t, 0),
            median(t, 1),
            median(t, 2),
            median(t, 3),
            median(t, 4),
            ratio(0, peer),
            ratio(0, Some(none)),
            ratio(4, peer),
            ratio(4, Some(none)),
        ));
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    println!(
        "medians of {} run(s) of {:.1}s each; all figures in {}",
        config.repeats,
        config.duration.as_secs_f64(),
        dir.join("results.json").display()
    );
    Ok(())
}
