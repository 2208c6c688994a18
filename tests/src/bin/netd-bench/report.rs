//! The results: JSON for machines, markdown tables for people.

use std::{collections::BTreeMap, path::PathBuf, thread};

use anyhow::Result;

use crate::{Config, chart::*, flood, paired, statistics::*, topology::*};

/// Figures per direction: (column title, figure suffix, decimals).
pub(crate) const COLUMNS: &[(&str, &str, usize)] = &[
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
pub(crate) const RATIOS: &[(&str, &str)] = &[
    ("CRR", "tcp_crr_per_s"),
    ("RR", "tcp_rr_per_s"),
    ("UDP RR", "udp_rr_per_s"),
    ("UDP", "udp64_pps"),
    ("STREAM", "tcp_stream_gbit_s"),
];

/// `results.json`. Fields are declared in alphabetical order: the file's
/// keys keep the order they always had.
#[derive(serde::Serialize)]
pub(crate) struct Results<'a> {
    pub(crate) duration_s: f64,
    pub(crate) ebpf_profile: &'a Option<Profile>,
    pub(crate) machine: Machine,
    pub(crate) paired: &'a paired::Paired,
    pub(crate) paired_pairs: usize,
    pub(crate) paired_slice_s: f64,
    pub(crate) quick: bool,
    pub(crate) repeats: usize,
    pub(crate) results: Vec<TargetResult<'a>>,
    pub(crate) rules_and_flood: &'a flood::RulesAndFlood,
    pub(crate) versions: Versions,
}

#[derive(serde::Serialize)]
pub(crate) struct Machine {
    pub(crate) client_cpu: usize,
    pub(crate) cpu_model: String,
    pub(crate) cpus: usize,
    pub(crate) kernel: String,
    pub(crate) server_cpu: usize,
}

#[derive(serde::Serialize)]
pub(crate) struct Versions {
    pub(crate) git_commit: String,
    pub(crate) iptables: String,
    pub(crate) netd: &'static str,
}

/// One target's figures.
#[derive(serde::Serialize)]
pub(crate) struct TargetResult<'a> {
    pub(crate) control_plane: &'a Option<ControlPlane>,
    pub(crate) datapath: &'a str,
    /// `<direction>_<figure>` (dnat_tcp_crr_per_s, …).
    pub(crate) figures: BTreeMap<String, Option<Summary>>,
    pub(crate) networks: usize,
    pub(crate) published_ports: usize,
}

/// A daemon target's control plane.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct ControlPlane {
    pub(crate) bpf_map_memlock_bytes: u64,
    pub(crate) create_container_request_ms: Option<Summary>,
    pub(crate) daemon_rss_kib: u64,
    pub(crate) datapath: String,
    pub(crate) iptables_rules: usize,
    pub(crate) kill_9_restart_ms: Option<Summary>,
    pub(crate) ports_already_published: usize,
    pub(crate) publish_one_port_us: Option<Summary>,
}

/// The eBPF programs' own cost under each workload (BPF stats).
#[derive(serde::Serialize)]
pub(crate) struct Profile {
    pub(crate) per_operation: BTreeMap<String, OperationCost>,
    pub(crate) target: String,
    /// Workload -> program -> its cost.
    pub(crate) workloads: BTreeMap<String, BTreeMap<String, ProgramCost>>,
}

#[derive(serde::Serialize)]
pub(crate) struct OperationCost {
    pub(crate) bpf_ns_per_operation: f64,
    /// What one operation is: a connection, an established packet, a datagram.
    pub(crate) operation: String,
    pub(crate) operations: f64,
}

#[derive(serde::Serialize)]
pub(crate) struct ProgramCost {
    pub(crate) ns_per_run: f64,
    pub(crate) runs: u64,
}

/// Where the results go: target/bench.
pub(crate) fn output_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// First line of a command's output ("" when it cannot run).
fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

pub(crate) fn report(
    targets: &[Target],
    samples: &[BTreeMap<String, Vec<f64>>],
    profile: &Option<Profile>,
    paired: &(String, paired::Paired),
    rules_and_flood: &(String, flood::RulesAndFlood),
    config: &Config,
    quick: bool,
) -> Result<()> {
    let results = Results {
        duration_s: config.duration.as_secs_f64(),
        ebpf_profile: profile,
        machine: Machine {
            client_cpu: CLIENT_CPU,
            cpu_model: cpu_model(),
            cpus: thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: first_line("uname", &["-r"]),
            server_cpu: SERVER_CPU,
        },
        paired: &paired.1,
        paired_pairs: config.pairs,
        paired_slice_s: config.slice.as_secs_f64(),
        quick,
        repeats: config.repeats,
        results: targets
            .iter()
            .zip(samples)
            .map(|(target, figures)| TargetResult {
                control_plane: &target.control,
                datapath: target.datapath,
                figures: figures
                    .iter()
                    .map(|(name, v)| (name.clone(), Summary::of(v)))
                    .collect(),
                networks: target.networks,
                published_ports: target.ports,
            })
            .collect(),
        rules_and_flood: &rules_and_flood.1,
        versions: Versions {
            git_commit: first_line("git", &["rev-parse", "HEAD"]),
            iptables: first_line("iptables", &["-V"]),
            netd: env!("CARGO_PKG_VERSION"),
        },
    };
    let dir = output_dir()?;
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
    let nan = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| s.median);
    for (target, c) in targets
        .iter()
        .filter_map(|t| Some((t, t.control.as_ref()?)))
    {
        let p = c.publish_one_port_us.as_ref();
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} ({:.0}–{:.0}) | {:.1} | {:.0} | {:.1} | {:.1} | {} |\n",
            target.datapath,
            c.ports_already_published,
            target.networks,
            p.map_or(f64::NAN, |p| p.median),
            p.map_or(f64::NAN, |p| p.min),
            p.map_or(f64::NAN, |p| p.max),
            nan(&c.create_container_request_ms),
            nan(&c.kill_9_restart_ms),
            c.daemon_rss_kib as f64 / 1024.0,
            c.bpf_map_memlock_bytes as f64 / 1048576.0,
            c.iptables_rules,
        ));
    }

    if let Some(profile) = profile {
        md.push_str(
            "\n### BPF time per operation (every program on the path, BPF stats)\n\n\
             | workload | per | BPF ns |\n|---|---|---|\n",
        );
        for (workload, cost) in &profile.per_operation {
            md.push_str(&format!(
                "| {workload} | {} | {:.0} |\n",
                cost.operation, cost.bpf_ns_per_operation
            ));
        }
        md.push_str(&format!(
            "\n### eBPF per-program cost ({}, BPF stats)\n\n| workload | program | runs | ns per run |\n|---|---|---|---|\n",
            profile.target
        ));
        for (workload, programs) in &profile.workloads {
            for (program, cost) in programs {
                md.push_str(&format!(
                    "| {workload} | {program} | {} | {:.0} |\n",
                    cost.runs, cost.ns_per_run
                ));
            }
        }
    }

    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(dir.join("scaling.svg"), scaling_chart(targets, samples)?)?;
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
