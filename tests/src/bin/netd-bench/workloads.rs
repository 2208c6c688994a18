//! The workloads run against a target (TCP_CRR, TCP_RR, UDP flood and
//! request/response, TCP_STREAM), the control plane's figures and the BPF
//! programs' own cost.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netd::{api::ContainerSpec, client::Client, portspec::PortSpec};
use netd_testbed::daemon_host::DaemonHost;

use crate::{Config, report::*, statistics::*, topology::*};

/// A short warm-up of every target, then `config.repeats` rounds, each
/// measuring every target in turn: samples[target][figure], one value per
/// round.
pub(crate) fn run_rounds(
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

/// Time to publish one more port (a new container with one `-p`), the
/// daemon's memory and the datapath's state size, and the time a kill -9
/// restart takes until the daemon answers again (re-adoption included).
pub(crate) fn control_plane(
    h: &mut DaemonHost,
    datapath: &str,
    samples: usize,
) -> Result<ControlPlane> {
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
            ip6: None,
            publish: vec![PortSpec::parse(&format!("{}:80", 40000 + k))?],
            aliases: Vec::new(),
            gw_priority: 0,
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
    Ok(ControlPlane {
        bpf_map_memlock_bytes: map_memlock(pid)?,
        create_container_request_ms: Summary::of(&request_ms),
        daemon_rss_kib: rss_kib(pid)?,
        datapath: datapath.to_owned(),
        iptables_rules: rules,
        kill_9_restart_ms: Summary::of(&restart_ms),
        ports_already_published: already,
        publish_one_port_us: Summary::of(&publish_us),
    })
}

/// Where the measured daemon serves its metrics (inside its namespace).
pub(crate) const METRICS_ADDR: &str = "127.0.0.1:9464";

/// The daemon's `netd_datapath_publish_seconds` (sum, count), scraped
/// from inside its namespace.
pub(crate) fn publish_seconds(h: &DaemonHost) -> Result<(f64, f64)> {
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

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The `key: value` lines of every fd of `pid` that has `kind` (e.g.
/// "map_id" or "prog_id"), one map per BPF object, deduplicated by id.
pub(crate) fn bpf_fdinfo(pid: u32, kind: &str) -> Result<BTreeMap<u64, BTreeMap<String, u64>>> {
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

pub(crate) fn map_memlock(pid: u32) -> Result<u64> {
    Ok(bpf_fdinfo(pid, "map_id")?
        .values()
        .filter_map(|f| f.get("memlock"))
        .sum())
}

/// Every workload once, in both directions: (figure name, value).
pub(crate) fn measure_all(target: &Target, duration: Duration) -> Result<Vec<(String, f64)>> {
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
pub(crate) fn tcp_crr(side: &Side, duration: Duration) -> Result<(f64, u64)> {
    let (done, failed) = tcp_crr_counted(side, duration);
    check_failures("TCP_CRR connections", done, failed)?;
    Ok((done as f64 / duration.as_secs_f64(), failed))
}

/// TCP_CRR's connections done and failed, whatever the share that failed.
pub(crate) fn tcp_crr_counted(side: &Side, duration: Duration) -> (u64, u64) {
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
pub(crate) fn check_failures(what: &str, done: u64, failed: u64) -> Result<()> {
    if failed > 10 && failed * 200 > done + failed {
        anyhow::bail!("{failed} of {} {what} failed", done + failed);
    }
    Ok(())
}

/// Transactions per second on one connection, with latency p50/p99 (µs).
pub(crate) fn tcp_rr(side: &Side, duration: Duration) -> Result<(f64, f64, f64)> {
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
pub(crate) fn udp_flood(side: &Side, servers: &Servers, duration: Duration) -> Result<(f64, f64)> {
    let before = servers.udp_received.load(Ordering::Relaxed);
    let sent = side.client.enter(|| -> Result<u64> {
        pin_to_cpu(CLIENT_CPU);
        let socket = UdpSocket::bind(any_port_for(side.udp))?;
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
pub(crate) fn udp_rr(side: &Side, duration: Duration) -> Result<f64> {
    let target = side
        .udp_echo
        .context("this target has no UDP echo server")?;
    let (done, lost) = side.client.enter(|| -> Result<(u64, u64)> {
        pin_to_cpu(CLIENT_CPU);
        let socket = UdpSocket::bind(any_port_for(target))?;
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
pub(crate) fn tcp_stream(side: &Side, servers: &Servers, duration: Duration) -> Result<f64> {
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
pub(crate) fn program_stats(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
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

/// BPF run-time statistics on while this lives (BPF_ENABLE_STATS through
/// aya: the kernel turns them off when the descriptor closes, even if the
/// bench is killed).
pub(crate) struct BpfStats {
    _enabled: std::os::fd::OwnedFd,
}

impl BpfStats {
    pub(crate) fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        Ok(Self { _enabled: fd })
    }
}

/// Per-program run time of the eBPF target with the most published ports,
/// workload by workload, from the kernel's BPF stats (enabled only for this
/// pass: they add two clock reads per program run).
pub(crate) fn profile_ebpf(targets: &[Target], duration: Duration) -> Result<Option<Profile>> {
    let Some(target) = targets
        .iter()
        .filter(|t| t.datapath == "ebpf" && t.networks == 1)
        .max_by_key(|t| t.ports)
    else {
        return Ok(None);
    };
    let pid = target.daemon_pid.context("no daemon")?;
    let snapshot = || program_stats(pid);
    eprintln!("bench: profiling {} with BPF stats", target.label());
    let _stats = BpfStats::enable()?;
    let mut workloads = BTreeMap::new();
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
    let mut per_operation = BTreeMap::new();
    for (name, operation, workload) in run {
        let before = snapshot()?;
        let operations = workload()?;
        let after = snapshot()?;
        let mut programs = BTreeMap::new();
        let mut total_ns = 0;
        for (prog, (runs, ns)) in &after {
            let (runs0, ns0) = before.get(prog).copied().unwrap_or_default();
            let runs = runs - runs0;
            if runs > 0 {
                total_ns += ns - ns0;
                let ns_per_run = (ns - ns0) as f64 / runs as f64;
                programs.insert(prog.clone(), ProgramCost { ns_per_run, runs });
            }
        }
        workloads.insert(name.to_owned(), programs);
        let bpf_ns_per_operation = total_ns as f64 / operations.max(1.0);
        let cost = OperationCost {
            bpf_ns_per_operation,
            operation: operation.to_owned(),
            operations,
        };
        per_operation.insert(name.to_owned(), cost);
    }
    Ok(Some(Profile {
        per_operation,
        target: target.label(),
        workloads,
    }))
}

/// Any address and port of the family of `to`, for a client socket.
fn any_port_for(to: std::net::SocketAddr) -> std::net::SocketAddr {
    let any: std::net::IpAddr = match to {
        std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    std::net::SocketAddr::new(any, 0)
}
