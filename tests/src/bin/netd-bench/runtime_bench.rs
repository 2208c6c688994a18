//! `netd-bench --docker` / `--podman`: a real runtime's setups side by
//! side in one run — the runtime with netd (ebpf), with netd (iptables),
//! and with its own networking (Docker's bridge driver; Podman's CNI
//! bridge and portmap plugins) — at 1 and 1,000 published ports: TCP_CRR
//! and 64-byte UDP from the outside through a published port (a CNI
//! hostPort under Podman), and the time from `run -p` until the port
//! answers.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netd_testbed::{
    Netns,
    daemon_host::{DaemonHost, HOST_IP, OUTSIDE_IP},
    docker::{DockerHost, IMAGE, Networking},
    podman::PodmanHost,
};

use super::{
    Config, FILLER_FIRST_PORT, Keep, Servers, Summary, Target, median, run_rounds, side, tcp_crr,
    timed_build, tune_client, udp_flood,
};

const SUBNET: &str = "10.90.0.0/16";
const SERVER: &str = "10.90.0.2";
const FILLER: &str = "10.90.0.9";

/// The runtime whose containers are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
}

impl Runtime {
    fn command(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    /// (label, networking, netd datapath); the reference last.
    fn setups(self) -> [(&'static str, Networking, &'static str); 3] {
        match self {
            Self::Docker => [
                ("docker+netd ebpf", Networking::Netd, "ebpf"),
                ("docker+netd iptables", Networking::Netd, "iptables"),
                ("docker bridge", Networking::RuntimeBridge, "ebpf"),
            ],
            Self::Podman => [
                ("podman+netd ebpf", Networking::Netd, "ebpf"),
                ("podman+netd iptables", Networking::Netd, "iptables"),
                (
                    "podman cni bridge+portmap",
                    Networking::RuntimeBridge,
                    "ebpf",
                ),
            ],
        }
    }

    fn reference_title(self) -> &'static str {
        match self {
            Self::Docker => "Docker's own bridge driver",
            Self::Podman => "Podman's own CNI bridge and portmap plugins",
        }
    }
}

/// A runtime in a test host, networked by netd or by itself.
pub enum RuntimeHost {
    Docker(Box<DockerHost>),
    Podman(Box<PodmanHost>),
}

impl RuntimeHost {
    fn start(runtime: Runtime, netd: &str, datapath: &str, networking: Networking) -> Self {
        let flags = ["--datapath", datapath];
        match runtime {
            Runtime::Docker => {
                Self::Docker(Box::new(DockerHost::start_with(netd, &flags, networking)))
            }
            Runtime::Podman => {
                let plugin = std::path::Path::new(netd).with_file_name("netd-cni");
                let plugin = plugin.display().to_string();
                Self::Podman(Box::new(PodmanHost::start_with(
                    netd, &plugin, &flags, networking,
                )))
            }
        }
    }

    fn h(&self) -> &DaemonHost {
        match self {
            Self::Docker(d) => &d.h,
            Self::Podman(p) => &p.h,
        }
    }

    /// The network on SUBNET, made the way this setup makes them, named
    /// after the test (host-local keeps Podman's leases by network name,
    /// host-wide); returns its name.
    fn network(&self, networking: Networking) -> String {
        let name = self.h().name("bench");
        match (self, networking) {
            (Self::Docker(d), _) => {
                d.network(&name, &["--subnet", SUBNET]);
            }
            (Self::Podman(p), Networking::Netd) => p.network(&name, &["--subnet", SUBNET]),
            (Self::Podman(p), Networking::RuntimeBridge) => {
                p.podman_ok(&["network", "create", "--subnet", SUBNET, &name]);
            }
        }
        name
    }

    fn run(&self, short: &str, args: &[&str]) -> Netns {
        match self {
            Self::Docker(d) => d.run(short, args),
            Self::Podman(p) => p.run(short, args),
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        match self {
            Self::Docker(d) => d.docker(args),
            Self::Podman(p) => p.podman(args),
        }
    }
}

pub fn run(runtime: Runtime, netd: &str, config: &Config, quick: bool) -> Result<()> {
    let mut targets = Vec::new();
    for ports in [1, 1000] {
        for (label, networking, datapath) in runtime.setups() {
            targets.push(timed_build(|| {
                runtime_target(runtime, netd, label, networking, datapath, ports)
                    .with_context(|| format!("building {label} with {ports} ports"))
            })?);
        }
    }
    let samples = run_rounds(&targets, config, measure)?;
    // run -p -> the port answers, interleaved between the setups.
    let mut start_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let runs = if quick { 2 } else { 7 };
    for k in 0..runs {
        for target in targets.iter().filter(|t| t.ports == 1) {
            let host = target._keep.runtime.as_ref().context("a runtime target")?;
            let ms = run_to_answer(host, 31000 + k as u16)
                .with_context(|| format!("{}: run until the port answers", target.label()))?;
            start_ms.entry(target.datapath).or_default().push(ms);
        }
    }
    report(runtime, &targets, &samples, &start_ms, config)
}

fn measure(target: &Target, duration: Duration) -> Result<Vec<(String, f64)>> {
    let (crr, failed) = tcp_crr(&target.dnat, duration).context("TCP_CRR")?;
    let (udp, loss) =
        udp_flood(&target.dnat, &target.container_servers, duration).context("UDP")?;
    Ok(vec![
        ("tcp_crr_per_s".into(), crr),
        ("tcp_crr_failed".into(), failed as f64),
        ("udp64_pps".into(), udp),
        ("udp64_loss_pct".into(), loss),
    ])
}

/// A runtime with one network, a server container publishing 8080/tcp
/// and 5353/udp (added last), and before it a container publishing
/// `ports - 1` more.
fn runtime_target(
    runtime: Runtime,
    netd: &str,
    label: &'static str,
    networking: Networking,
    datapath: &str,
    ports: usize,
) -> Result<Target> {
    let host = RuntimeHost::start(runtime, netd, datapath, networking);
    let net = host.network(networking);
    if ports > 1 {
        let last = FILLER_FIRST_PORT + ports - 2;
        let range = format!("{FILLER_FIRST_PORT}-{last}:{FILLER_FIRST_PORT}-{last}");
        host.run("fill", &["--network", &net, "--ip", FILLER, "-p", &range]);
    }
    let server = host.run(
        "srv",
        &[
            "--network",
            &net,
            "--ip",
            SERVER,
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
        ],
    );
    let outside = host.h().outside.clone();
    let target = Target {
        datapath: label,
        ports,
        networks: 1,
        variant: String::new(),
        dnat: side(&outside, HOST_IP, 8080, 5353)?,
        snat: side(&server, OUTSIDE_IP, 80, 53)?.with_echo(54),
        container_servers: Servers::start(&server, SERVER)?,
        outside_servers: Servers::start(&outside, OUTSIDE_IP)?,
        daemon_pid: None,
        control: None,
        _keep: Keep {
            _daemon: None,
            _bed: None,
            runtime: Some(Box::new(host)),
        },
    };
    tune_client(&target.dnat.client)?;
    Ok(target)
}

/// Milliseconds from `docker|podman run -d -p PORT:80 … httpd` until the
/// outside gets an HTTP answer on the published port; the container goes
/// after.
fn run_to_answer(host: &RuntimeHost, port: u16) -> Result<f64> {
    let name = host.h().name(&format!("start{port}"));
    let net = host.h().name("bench");
    let publish = format!("{port}:80");
    let started = Instant::now();
    let out = host.cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &net,
        "-p",
        &publish,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/",
    ]);
    if !out.status.success() {
        bail!("run: {}", String::from_utf8_lossy(&out.stderr));
    }
    let target = format!("{HOST_IP}:{port}").parse()?;
    let deadline = started + Duration::from_secs(30);
    let answered = loop {
        let got = host.h().outside.enter(|| -> bool {
            let Ok(mut conn) = TcpStream::connect_timeout(&target, Duration::from_millis(200))
            else {
                return false;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            let mut byte = [0u8; 1];
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                && conn.read(&mut byte).is_ok_and(|n| n == 1)
        })?;
        if got {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("port {port} did not answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = host.cli(&["rm", "-f", "-t", "0", &name]);
    Ok(answered.as_secs_f64() * 1e3)
}

fn report(
    runtime: Runtime,
    targets: &[Target],
    samples: &[BTreeMap<String, Vec<f64>>],
    start_ms: &BTreeMap<&str, Vec<f64>>,
    config: &Config,
) -> Result<()> {
    let reference = runtime.setups()[2].0;
    let mut md = format!(
        "### {}: outside client → published port\n\n\
         | setup | ports | TCP_CRR /s | CRR failed | UDP 64 B pps | UDP loss % |\n\
         |---|---|---|---|---|---|\n",
        match runtime {
            Runtime::Docker => "Docker",
            Runtime::Podman => "Podman",
        }
    );
    for (t, target) in targets.iter().enumerate() {
        let m = |f: &str| median(&samples[t], f);
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            target.datapath,
            target.ports,
            m("tcp_crr_per_s"),
            m("tcp_crr_failed"),
            m("udp64_pps"),
            m("udp64_loss_pct"),
        ));
    }
    md.push_str(&format!(
        "\n### Over {} (medians)\n\n| setup | ports | TCP_CRR | UDP |\n|---|---|---|---|\n",
        runtime.reference_title()
    ));
    for (t, target) in targets.iter().enumerate() {
        let Some(bridge) = targets
            .iter()
            .position(|o| o.datapath == reference && o.ports == target.ports)
        else {
            continue;
        };
        if t == bridge {
            continue;
        }
        let ratio = |f: &str| median(&samples[t], f) / median(&samples[bridge], f);
        md.push_str(&format!(
            "| {} | {} | {:.2}× | {:.2}× |\n",
            target.datapath,
            target.ports,
            ratio("tcp_crr_per_s"),
            ratio("udp64_pps")
        ));
    }
    md.push_str(&format!(
        "\n### `{} run -p` until the port answers (ms)\n\n| setup | median | min–max |\n|---|---|---|\n",
        runtime.command()
    ));
    for (setup, ms) in start_ms {
        let (median, min, max) =
            Summary::of(ms).map_or((f64::NAN, f64::NAN, f64::NAN), |s| (s.median, s.min, s.max));
        md.push_str(&format!("| {setup} | {median:.0} | {min:.0}–{max:.0} |\n"));
    }
    let results = RuntimeResults {
        duration_s: config.duration.as_secs_f64(),
        repeats: config.repeats,
        results: targets
            .iter()
            .zip(samples)
            .map(|(target, figures)| RuntimeRow {
                figures: figures
                    .iter()
                    .map(|(k, v)| (k.clone(), Summary::of(v)))
                    .collect(),
                published_ports: target.ports,
                setup: target.datapath,
            })
            .collect(),
        run_to_answer_ms: start_ms
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Summary::of(v)))
            .collect(),
    };
    let dir = crate::report::output_dir()?;
    let file = runtime.command();
    std::fs::write(
        dir.join(format!("{file}.json")),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(dir.join(format!("{file}.md")), &md)?;
    println!("{md}");
    Ok(())
}

/// `docker.json` / `podman.json` (fields in alphabetical order, as the
/// file's keys always were).
#[derive(serde::Serialize)]
struct RuntimeResults<'a> {
    duration_s: f64,
    repeats: usize,
    results: Vec<RuntimeRow<'a>>,
    run_to_answer_ms: BTreeMap<String, Option<Summary>>,
}

#[derive(serde::Serialize)]
struct RuntimeRow<'a> {
    figures: BTreeMap<String, Option<Summary>>,
    published_ports: usize,
    setup: &'a str,
}
