//! `netd-bench --dns` (issue #28): queries per second and latency of
//! netd's resolver against Docker's embedded DNS on a user-defined network,
//! in the same run, alternating round by round. From a client container to
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
use netd_testbed::{
    daemon_host::{DaemonHost, OUTSIDE_IP},
    dns::StubResolver,
    docker::{DockerHost, Networking},
    topology::Netns,
};

use crate::statistics::Summary;

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

pub fn run(netd: &str, quick: bool) -> Result<()> {
    let (rounds, duration) = match quick {
        true => (2, Duration::from_millis(700)),
        false => (5, Duration::from_secs(3)),
    };
    let upstream: SocketAddr = format!("{OUTSIDE_IP}:53").parse()?;
    eprintln!("bench: dns: netd");
    let netd_host = DaemonHost::start(netd, &["--dns-upstream", &upstream.to_string()]);
    let _netd_stub =
        StubResolver::start(&netd_host.outside, upstream, &[(FORWARDED, FORWARDED_IP)])?;
    netd_host.ok(&["network", "create", "dnsbench", "--subnet", "10.93.0.0/24"]);
    let netd_target = netd_host.name("target");
    netd_host.ok(&["container", "create", &netd_target, "--network", "dnsbench"]);
    let netd_client = netd_host.name("client");
    netd_host.ok(&["container", "create", &netd_client, "--network", "dnsbench"]);
    let netd_client = netd_host.ctr("client");

    eprintln!("bench: dns: Docker's own bridge driver and embedded DNS");
    let docker = DockerHost::start_with(netd, &[], Networking::RuntimeBridge);
    let _docker_stub =
        StubResolver::start(&docker.h.outside, upstream, &[(FORWARDED, FORWARDED_IP)])?;
    docker.network("dnsbench", &["--subnet", "10.94.0.0/24"]);
    let _target = docker.run("target", &["--network", "dnsbench"]);
    let docker_target = docker.h.name("target");
    let docker_client = docker.run("client", &["--network", "dnsbench", "--dns", OUTSIDE_IP]);

    let systems = [
        ("netd", &netd_client, netd_target.as_str()),
        ("Docker 20.10", &docker_client, docker_target.as_str()),
    ];
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
    print_table(&results, rounds, duration);
    Ok(())
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
    println!("### Name resolution: netd's resolver against Docker's embedded DNS\n");
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
        if let (Some(n), Some(d)) = (of("netd"), of("Docker")) {
            println!(
                "- {kind}: netd / Docker queries/s {:.2}×, p99 {:.0} µs against {:.0} µs",
                n.2 / d.2,
                n.3,
                d.3
            );
        }
    }
}
