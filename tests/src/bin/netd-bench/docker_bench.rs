//! `netd-bench --docker`: real dockerd setups side by side in one run —
//! Docker with netd (ebpf), Docker with netd (iptables) and Docker's own
//! bridge driver with its iptables rules — at 1 and 1,000 published ports:
//! TCP_CRR and 64-byte UDP from the outside through a published port, and
//! the time from `docker run -p` until the port answers.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netd_testbed::{
    daemon_host::{HOST_IP, OUTSIDE_IP},
    docker::{DockerHost, IMAGE, Networking},
};
use serde_json::{Value, json};

use super::{
    Config, FILLER_FIRST_PORT, Keep, Servers, Target, median, run_rounds, side, stats, tcp_crr,
    timed_build, tune_client, udp_flood,
};

const SUBNET: &str = "10.90.0.0/16";
const SERVER: &str = "10.90.0.2";
const FILLER: &str = "10.90.0.9";

/// (label, driver, netd datapath)
const SETUPS: &[(&str, Networking, &str)] = &[
    ("docker+netd ebpf", Networking::Netd, "ebpf"),
    ("docker+netd iptables", Networking::Netd, "iptables"),
    ("docker bridge", Networking::DockerBridge, "ebpf"),
];

pub fn run(netd: &str, config: &Config, quick: bool) -> Result<()> {
    let mut targets = Vec::new();
    for ports in [1, 1000] {
        for &(label, networking, datapath) in SETUPS {
            targets.push(timed_build(|| {
                docker_target(netd, label, networking, datapath, ports)
                    .with_context(|| format!("building {label} with {ports} ports"))
            })?);
        }
    }
    let samples = run_rounds(&targets, config, measure)?;
    // docker run -p -> the port answers, interleaved between the setups.
    let mut start_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let runs = if quick { 2 } else { 7 };
    for k in 0..runs {
        for target in targets.iter().filter(|t| t.ports == 1) {
            let docker = target._keep.docker.as_ref().context("a Docker target")?;
            let ms = run_to_answer(docker, 31000 + k as u16).with_context(|| {
                format!("{}: docker run until the port answers", target.label())
            })?;
            start_ms.entry(target.datapath).or_default().push(ms);
        }
    }
    report(&targets, &samples, &start_ms, config)
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

/// A dockerd with one network, a server container publishing 8080/tcp
/// and 5353/udp (added last), and before it a container publishing
/// `ports - 1` more.
fn docker_target(
    netd: &str,
    label: &'static str,
    networking: Networking,
    datapath: &str,
    ports: usize,
) -> Result<Target> {
    let docker = DockerHost::start_with(netd, &["--datapath", datapath], networking);
    docker.network("bench", &["--subnet", SUBNET]);
    if ports > 1 {
        let last = FILLER_FIRST_PORT + ports - 2;
        let range = format!("{FILLER_FIRST_PORT}-{last}:{FILLER_FIRST_PORT}-{last}");
        docker.run(
            "fill",
            &["--network", "bench", "--ip", FILLER, "-p", &range],
        );
    }
    let server = docker.run(
        "srv",
        &[
            "--network",
            "bench",
            "--ip",
            SERVER,
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
        ],
    );
    let outside = docker.h.outside.clone();
    let target = Target {
        datapath: label,
        ports,
        networks: 1,
        dnat: side(&outside, HOST_IP, 8080, 5353)?,
        snat: side(&server, OUTSIDE_IP, 80, 53)?,
        container_servers: Servers::start(&server, SERVER)?,
        outside_servers: Servers::start(&outside, OUTSIDE_IP)?,
        daemon_pid: None,
        control: Value::Null,
        _keep: Keep {
            _daemon: None,
            _bed: None,
            docker: Some(Box::new(docker)),
        },
    };
    tune_client(&target.dnat.client)?;
    Ok(target)
}

/// Milliseconds from `docker run -d -p PORT:80 … httpd` until the outside
/// gets an HTTP answer on the published port; the container goes after.
fn run_to_answer(docker: &DockerHost, port: u16) -> Result<f64> {
    let name = docker.h.name(&format!("start{port}"));
    let publish = format!("{port}:80");
    let started = Instant::now();
    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "bench",
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
        bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
    }
    let target = format!("{HOST_IP}:{port}").parse()?;
    let deadline = started + Duration::from_secs(30);
    let answered = loop {
        let got = docker.h.outside.enter(|| -> bool {
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
    let _ = docker.docker(&["rm", "-f", &name]);
    Ok(answered.as_secs_f64() * 1e3)
}

fn report(
    targets: &[Target],
    samples: &[BTreeMap<String, Vec<f64>>],
    start_ms: &BTreeMap<&str, Vec<f64>>,
    config: &Config,
) -> Result<()> {
    let mut md = String::from(
        "### Docker: outside client → published port\n\n\
         | setup | ports | TCP_CRR /s | CRR failed | UDP 64 B pps | UDP loss % |\n\
         |---|---|---|---|---|---|\n",
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
    md.push_str("\n### Over Docker's own bridge driver (medians)\n\n| setup | ports | TCP_CRR | UDP |\n|---|---|---|---|\n");
    for (t, target) in targets.iter().enumerate() {
        let Some(bridge) = targets
            .iter()
            .position(|o| o.datapath == "docker bridge" && o.ports == target.ports)
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
    md.push_str("\n### `docker run -p` until the port answers (ms)\n\n| setup | median | min–max |\n|---|---|---|\n");
    for (setup, ms) in start_ms {
        let s = stats(ms);
        md.push_str(&format!(
            "| {setup} | {:.0} | {:.0}–{:.0} |\n",
            s["median"].as_f64().unwrap_or(f64::NAN),
            s["min"].as_f64().unwrap_or(f64::NAN),
            s["max"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    let rows: Vec<Value> = targets
        .iter()
        .zip(samples)
        .map(|(target, figures)| {
            let figures: serde_json::Map<String, Value> =
                figures.iter().map(|(k, v)| (k.clone(), stats(v))).collect();
            json!({"setup": target.datapath, "published_ports": target.ports, "figures": figures})
        })
        .collect();
    let starts: serde_json::Map<String, Value> = start_ms
        .iter()
        .map(|(k, v)| ((*k).to_owned(), stats(v)))
        .collect();
    let results = json!({
        "duration_s": config.duration.as_secs_f64(),
        "repeats": config.repeats,
        "results": rows,
        "docker_run_to_answer_ms": starts,
    });
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("docker.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(dir.join("docker.md"), &md)?;
    println!("{md}");
    Ok(())
}
