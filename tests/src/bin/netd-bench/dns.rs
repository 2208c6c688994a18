//! `netd-bench --dns` (issue #28): queries per second and latency of
//! netd's resolver, served both ways (sockets in each namespace, or
//! `--dns-via cgroup-hooks`), against Docker's embedded DNS on a
//! user-defined network, in the same run, alternating round by round; and
//! what each way of netd's costs a container create, in daemon memory and
//! in descriptors. From a client container to
//! 127.0.0.11: a container's name (answered locally) and a name only a stub
//! upstream in the test topology knows (forwarded: netd with
//! `--dns-upstream`, Docker with `docker run --dns`). Closed loop, a few
//! sockets at once; a query unanswered within a second, or answered with an
//! error or no address, counts as failed.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use netd::{api::ContainerSpec, client::Client};
use netd_testbed::{
    daemon_host::{DaemonHost, OUTSIDE_IP},
    dns::StubResolver,
    docker::{DockerHost, Networking},
    topology::Netns,
};

use crate::{statistics::Summary, workloads::rss_kib};

const FORWARDED: &str = "svc.outside.test";
const FORWARDED_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
/// Sockets asking at once from the client container.
const CONCURRENCY: usize = 4;
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// One closed-loop run's figures.
struct Load {
    qps: f64,
    latencies_us: Vec<f64>,
    failed: usize,
}

/// The two ways netd serves 127.0.0.11, as `--dns-via` names them.
const NETD_WAYS: [(&str, &str, &str); 2] = [
    (
        "netd, namespace sockets",
        "namespace-sockets",
        "10.93.0.0/24",
    ),
    ("netd, cgroup hooks", "cgroup-hooks", "10.95.0.0/24"),
];

pub fn run(netd: &str, quick: bool) -> Result<()> {
    let (rounds, duration, creates) = match quick {
        true => (2, Duration::from_millis(700), 20),
        false => (5, Duration::from_secs(3), 200),
    };
    let upstream: SocketAddr = format!("{OUTSIDE_IP}:53").parse()?;
    let mut netd_hosts = Vec::new();
    for (system, via, subnet) in NETD_WAYS {
        eprintln!("bench: dns: {system}");
        let host = DaemonHost::start(
            netd,
            &["--dns-upstream", &upstream.to_string(), "--dns-via", via],
        );
        let stub = StubResolver::start(&host.outside, upstream, &[(FORWARDED, FORWARDED_IP)])?;
        host.ok(&["network", "create", "dnsbench", "--subnet", subnet]);
        let target = host.name("target");
        host.ok(&["container", "create", &target, "--network", "dnsbench"]);
        let client = host.name("client");
        host.ok(&["container", "create", &client, "--network", "dnsbench"]);
        netd_hosts.push((system, host, stub, target));
    }

    eprintln!("bench: dns: Docker's own bridge driver and embedded DNS");
    let docker = DockerHost::start_with(netd, &[], Networking::RuntimeBridge);
    let _docker_stub =
        StubResolver::start(&docker.h.outside, upstream, &[(FORWARDED, FORWARDED_IP)])?;
    docker.network("dnsbench", &["--subnet", "10.94.0.0/24"]);
    let _target = docker.run("target", &["--network", "dnsbench"]);
    let docker_target = docker.h.name("target");
    let docker_client = docker.run("client", &["--network", "dnsbench", "--dns", OUTSIDE_IP]);

    let mut systems: Vec<(&str, Netns, &str)> = netd_hosts
        .iter()
        .map(|(system, host, _, target)| (*system, host.ctr("client"), target.as_str()))
        .collect();
    systems.push(("Docker 20.10", docker_client, docker_target.as_str()));
    let mut results: Vec<(String, &str, Vec<Load>)> = Vec::new();
    for (system, _, _) in &systems {
        for kind in ["container name", "forwarded name"] {
            results.push(((*system).to_owned(), kind, Vec::new()));
        }
    }
    for round in 0..rounds {
        eprintln!("bench: dns: round {}", round + 1);
        for (i, (_, client, target)) in systems.iter().enumerate() {
            for (j, name) in [*target, FORWARDED].into_iter().enumerate() {
                let load = closed_loop(client, name, duration)
                    .with_context(|| format!("asking for {name}"))?;
                results[i * 2 + j].2.push(load);
            }
        }
    }
    drop(docker);
    print_table(&results, rounds, duration);
    let hosts: Vec<(&str, &DaemonHost)> = netd_hosts
        .iter()
        .map(|(system, host, _, _)| (*system, host))
        .collect();
    print_costs(&serving_costs(&hosts, creates)?, creates);
    Ok(())
}

/// What serving names costs one netd: creates on its user network, and on
/// the default bridge (no resolver) for comparison.
struct Costs {
    system: String,
    create_ms: Vec<f64>,
    create_unserved_ms: Vec<f64>,
    rm_ms: Vec<f64>,
    /// Daemon memory and open descriptors before and after the creates.
    rss_kib: (u64, u64),
    fds: (usize, usize),
}

/// `creates` containers on each netd's user network and as many on its
/// default bridge, interleaved over the daemons so that noise falls on
/// every column alike; then each removed, timed too.
fn serving_costs(hosts: &[(&str, &DaemonHost)], creates: usize) -> Result<Vec<Costs>> {
    let mut costs = Vec::new();
    let mut clients = Vec::new();
    for (system, host) in hosts {
        let pid = host.daemon.as_ref().context("no daemon")?.id();
        clients.push((
            Client::new(host.socket()).with_timeout(Duration::from_secs(60)),
            pid,
        ));
        costs.push(Costs {
            system: (*system).to_owned(),
            create_ms: Vec::new(),
            create_unserved_ms: Vec::new(),
            rm_ms: Vec::new(),
            rss_kib: (rss_kib(pid)?, 0),
            fds: (open_fds(pid)?, 0),
        });
    }
    eprintln!("bench: dns: {creates} creates with and without a resolver on each netd");
    let timed = |client: &Client, name: &str, network: &str| -> Result<f64> {
        let started = Instant::now();
        client.container_create(ContainerSpec {
            name: name.to_owned(),
            network: network.to_owned(),
            ip: None,
            ip6: None,
            publish: Vec::new(),
            aliases: Vec::new(),
            gw_priority: 0,
        })?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    for k in 0..creates {
        for (i, (_, host)) in hosts.iter().enumerate() {
            let client = &clients[i].0;
            let served = timed(client, &host.name(&format!("n{k}")), "dnsbench")?;
            costs[i].create_ms.push(served);
            let unserved = timed(client, &host.name(&format!("b{k}")), "bridge")?;
            costs[i].create_unserved_ms.push(unserved);
        }
    }
    for (i, (_, pid)) in clients.iter().enumerate() {
        costs[i].rss_kib.1 = rss_kib(*pid)?;
        costs[i].fds.1 = open_fds(*pid)?;
    }
    for k in 0..creates {
        for (i, (_, host)) in hosts.iter().enumerate() {
            let started = Instant::now();
            clients[i].0.container_rm(&host.name(&format!("n{k}")))?;
            costs[i].rm_ms.push(started.elapsed().as_secs_f64() * 1e3);
            clients[i].0.container_rm(&host.name(&format!("b{k}")))?;
        }
    }
    Ok(costs)
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn print_costs(costs: &[Costs], creates: usize) {
    println!(
        "### What serving names costs a container, each way
"
    );
    println!(
        "{creates} containers on a user network (resolver) and {creates} on the default bridge \
         (none) per daemon, interleaved over both daemons; p50 (p99) ms through a kept client.\n"
    );
    println!(
        "| netd | create, user network | create, default bridge | difference (p50) | rm, user network \
         | daemon memory growth, all containers | descriptors per served container |"
    );
    println!("|---|---|---|---|---|---|---|");
    for c in costs {
        let (served, unserved, rm) = (
            Summary::of(&c.create_ms),
            Summary::of(&c.create_unserved_ms),
            Summary::of(&c.rm_ms),
        );
        let (Some(served), Some(unserved), Some(rm)) = (served, unserved, rm) else {
            continue;
        };
        let mut sorted = c.create_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let mut sorted_unserved = c.create_unserved_ms.clone();
        sorted_unserved.sort_by(f64::total_cmp);
        // Both kinds of container add memory: the growth is shown whole.
        println!(
            "| {} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:+.2} | {:.2} | {} KiB ({} containers) | {:.1} |",
            c.system,
            served.median,
            percentile(&sorted, 0.99),
            unserved.median,
            percentile(&sorted_unserved, 0.99),
            served.median - unserved.median,
            rm.median,
            c.rss_kib.1 as i64 - c.rss_kib.0 as i64,
            2 * creates,
            (c.fds.1 as f64 - c.fds.0 as f64) / creates as f64,
        );
    }
    println!();
}

/// `CONCURRENCY` sockets in `client` asking 127.0.0.11 for `name` (A)
/// back to back for `duration`.
fn closed_loop(client: &Netns, name: &str, duration: Duration) -> Result<Load> {
    let mut query = Message::new();
    query
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let query = query.to_vec()?;
    let next_id = AtomicU16::new(1);
    let resolver: SocketAddr = "127.0.0.11:53".parse()?;
    let per_socket = client.enter(|| {
        thread::scope(|s| {
            let workers: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    s.spawn(|| -> Result<(Vec<f64>, usize, usize)> {
                        let socket = UdpSocket::bind("0.0.0.0:0")?;
                        socket.set_read_timeout(Some(QUERY_TIMEOUT))?;
                        socket.connect(resolver)?;
                        let mut buf = vec![0u8; 4096];
                        let mut ask = query.clone();
                        let (mut latencies, mut answered, mut failed) = (Vec::new(), 0, 0);
                        let end = Instant::now() + duration;
                        while Instant::now() < end {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            ask[..2].copy_from_slice(&id.to_be_bytes());
                            let sent = Instant::now();
                            socket.send(&ask)?;
                            // Answers to earlier, timed-out queries are skipped.
                            let ok = loop {
                                match socket.recv(&mut buf) {
                                    Ok(len) if len >= 12 && buf[..2] == id.to_be_bytes() => {
                                        let rcode = buf[3] & 0x0f;
                                        let answers = u16::from_be_bytes([buf[6], buf[7]]);
                                        break rcode == 0 && answers > 0;
                                    }
                                    Ok(_) => continue,
                                    Err(_) => break false,
                                }
                            };
                            if ok {
                                latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                                answered += 1;
                            } else {
                                failed += 1;
                            }
                        }
                        Ok((latencies, answered, failed))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| anyhow::anyhow!("a query thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })
    })??;
    let mut load = Load {
        qps: 0.0,
        latencies_us: Vec::new(),
        failed: 0,
    };
    let mut answered = 0;
    for (latencies, ok, failed) in per_socket {
        load.latencies_us.extend(latencies);
        answered += ok;
        load.failed += failed;
    }
    load.qps = answered as f64 / duration.as_secs_f64();
    Ok(load)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_table(results: &[(String, &str, Vec<Load>)], rounds: usize, duration: Duration) {
    println!("### Name resolution: netd's resolver (both ways) against Docker's embedded DNS\n");
    println!(
        "{rounds} alternating rounds of {:.1} s each, {CONCURRENCY} sockets in a client container \
         asking 127.0.0.11 back to back; queries/s is the median of the rounds (min–max), \
         latencies over every answered query.\n",
        duration.as_secs_f64()
    );
    println!("| resolver | name | queries/s | p50 µs | p99 µs | failed |");
    println!("|---|---|---|---|---|---|");
    let mut medians = Vec::new();
    for (system, kind, loads) in results {
        let qps: Vec<f64> = loads.iter().map(|l| l.qps).collect();
        let summary = Summary::of(&qps);
        let mut latencies: Vec<f64> = loads.iter().flat_map(|l| l.latencies_us.clone()).collect();
        latencies.sort_by(f64::total_cmp);
        let failed: usize = loads.iter().map(|l| l.failed).sum();
        let (median, min, max) =
            summary.map_or((f64::NAN, f64::NAN, f64::NAN), |s| (s.median, s.min, s.max));
        medians.push((system.clone(), *kind, median, percentile(&latencies, 0.99)));
        println!(
            "| {system} | {kind} | {median:.0} ({min:.0}–{max:.0}) | {:.0} | {:.0} | {failed} |",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        );
    }
    println!();
    for kind in ["container name", "forwarded name"] {
        let of = |system: &str| {
            medians
                .iter()
                .find(|m| m.0.starts_with(system) && m.1 == kind)
        };
        let Some(d) = of("Docker") else {
            continue;
        };
        for (system, _, _) in NETD_WAYS {
            if let Some(n) = of(system) {
                println!(
                    "- {kind}: {system} / Docker queries/s {:.2}×, p99 {:.0} µs against {:.0} µs",
                    n.2 / d.2,
                    n.3,
                    d.3
                );
            }
        }
    }
}
