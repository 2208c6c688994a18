//! `cargo xtask bench [--quick]`: eBPF vs iptables vs plain routing on the
//! same topology, in one run. Outside client namespace -> uplink -> host
//! namespace -> bridge -> server container, and back (container -> outside
//! through SNAT). Datapaths are measured interleaved, repeated, and reported
//! as medians with min/max; every figure goes to target/bench/results.json,
//! tables to target/bench/results.md and the scaling curves to
//! target/bench/scaling.svg.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};

mod chart;
mod dns;
mod flood;
mod ipv6;
mod paired;
mod report;
mod runtime_bench;
mod scale;
mod statistics;
mod topology;
mod workloads;

use crate::{report::*, statistics::*, topology::*, workloads::*};

/// `cargo xtask bench [--quick] [--docker | --podman | --scale | --dns]`
#[derive(clap::Parser)]
#[command(
    name = "netd-bench",
    about = "eBPF vs iptables vs plain routing, paired, in one run"
)]
struct Args {
    /// About 5 minutes: fewer repeats, shorter runs, 1 and 1,000 ports.
    #[arg(long)]
    quick: bool,
    /// The Docker runtime on netd (both datapaths) against its own networking.
    #[arg(long, conflicts_with = "podman")]
    docker: bool,
    /// The Podman runtime on netd (CNI) against its own networking.
    #[arg(long, conflicts_with = "scale")]
    podman: bool,
    /// Only the many-containers run: 10, 100, 1,000 containers on one
    /// network and 2,000 on the host (10 and 100 with --quick).
    #[arg(long, conflicts_with = "docker")]
    scale: bool,
    /// Only the name-resolution run: netd's resolver against Docker's
    /// embedded DNS (queries/s, p50/p99).
    #[arg(long, conflicts_with_all = ["docker", "podman", "scale"])]
    dns: bool,
}

pub(crate) struct Config {
    pub(crate) duration: Duration,
    pub(crate) repeats: usize,
    pub(crate) port_counts: Vec<usize>,
    /// Publish-one-more-port samples per daemon target.
    pub(crate) publish_samples: usize,
    /// Paired A/B: pairs per comparison, and each half's length.
    pub(crate) pairs: usize,
    pub(crate) slice: Duration,
}

impl Config {
    fn quick() -> Self {
        Self {
            duration: Duration::from_millis(500),
            repeats: 1,
            port_counts: vec![1, 1000],
            publish_samples: 2,
            pairs: 3,
            slice: Duration::from_millis(200),
        }
    }

    fn full() -> Self {
        Self {
            duration: Duration::from_secs(2),
            repeats: 5,
            port_counts: vec![1, 1000, 10000],
            publish_samples: 5,
            pairs: 15,
            slice: Duration::from_millis(500),
        }
    }
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let quick = args.quick;
    let config = if quick {
        Config::quick()
    } else {
        Config::full()
    };
    let netd = sibling("netd")?;
    if args.dns {
        return dns::run(&netd, quick);
    }
    if args.docker {
        return runtime_bench::run(runtime_bench::Runtime::Docker, &netd, &config, quick);
    }
    if args.podman {
        return runtime_bench::run(runtime_bench::Runtime::Podman, &netd, &config, quick);
    }
    let scale_plan = if quick {
        scale::Plan::quick()
    } else {
        scale::Plan::full()
    };
    if args.scale {
        return scale::run(&netd, &scale_plan).map(drop);
    }
    let mut targets = Vec::new();
    eprintln!("bench: building topologies");
    targets.push(plain_target()?);
    targets.push(direct_target()?);
    let mut shapes: Vec<(usize, usize)> = config.port_counts.iter().map(|&p| (p, 1)).collect();
    shapes.push((1, MANY_NETWORKS));
    for &(ports, networks) in &shapes {
        for datapath in ["ebpf", "iptables", "nftables"] {
            targets.push(timed_build(|| {
                daemon_target(&netd, datapath, ports, networks, &config, Extras::default())
                    .with_context(|| format!("building {datapath} with {ports} ports"))
            })?);
        }
    }
    let samples = run_rounds(&targets, &config, measure_all)?;
    let profile = profile_ebpf(&targets, config.duration)?;
    let typical: Vec<Target> = ["ebpf", "iptables", "nftables"]
        .into_iter()
        .map(|datapath| {
            timed_build(|| {
                typical_target(&netd, datapath)
                    .with_context(|| format!("building the typical host on {datapath}"))
            })
        })
        .collect::<Result<_>>()?;
    let mut targets6 = vec![timed_build(ipv6::plain_target6)?];
    for &ports in &config.port_counts {
        for datapath in ["ebpf", "iptables", "nftables"] {
            targets6.push(timed_build(|| {
                ipv6::daemon_target6(&netd, datapath, ports)
                    .with_context(|| format!("building {datapath} with {ports} ports over IPv6"))
            })?);
        }
    }
    let paired = paired_comparisons(&targets, &typical, &targets6, &config)?;
    drop(targets6);
    let rules_and_flood = flood::run(&netd, &targets, &config, quick)?;
    report(
        &targets,
        &samples,
        &profile,
        &paired,
        &rules_and_flood,
        &config,
        quick,
    )?;
    drop(targets);
    scale::run(&netd, &scale_plan).map(drop)
}

/// The paired A/B comparisons: the noise floor, the sanity ordering, eBPF
/// over iptables at every shape, 10,000 ports over 1, and the typical host
/// over iptables and over plain routing in both directions; then IPv6's
/// (`ipv6::comparisons`).
pub(crate) fn paired_comparisons(
    targets: &[Target],
    typical: &[Target],
    targets6: &[Target],
    config: &Config,
) -> Result<(String, paired::Paired)> {
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
        // Docker 29's nftables ruleset: the peer to beat (issue #29).
        if let Some(nftables) = find("nftables", ebpf.ports, ebpf.networks) {
            let what = format!(
                "ebpf / nftables, {} ports, {} network(s)",
                ebpf.ports, ebpf.networks
            );
            for (workload, direction) in [(TcpCrr, Dnat), (UdpRr, Dnat), (TcpCrr, Snat)] {
                results.push(run(Comparison {
                    what: what.clone(),
                    a: ebpf,
                    b: nftables,
                    workload,
                    direction,
                })?);
            }
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
    if let [ebpf, iptables, nftables] = typical {
        for (b, name) in [
            (iptables, "iptables"),
            (nftables, "nftables"),
            (plain, "plain routing"),
        ] {
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
    results.extend(ipv6::comparisons(targets6, ebpf1, run)?);
    Ok(paired::report(&results, Some(&sanity), Some(&noise)))
}

pub(crate) fn sibling(name: &str) -> Result<String> {
    let exe = std::env::current_exe()?;
    let path: PathBuf = exe.parent().context("no directory")?.join(name);
    anyhow::ensure!(path.exists(), "{} not built", path.display());
    Ok(path.to_string_lossy().into_owned())
}
