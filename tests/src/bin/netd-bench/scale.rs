//! Many containers on one host (issue #30): containers created one after
//! another on the default network, each with one published port, then on a
//! second network past one bridge's 1,023 ports. At each count: the create
//! latency of the containers made since the last count, rm latency (extra
//! containers made and removed), the daemon's memory, the first, middle and
//! last container answering through their published ports from outside,
//! and TCP_CRR to the last one. At the end, a kill -9 restart timed until
//! the daemon answers, with a connection kept open across it.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netd::{api::ContainerSpec, client::Client, portspec::PortSpec};
use netd_testbed::daemon_host::{DaemonHost, HOST_IP};

use crate::{
    report::output_dir,
    statistics::Summary,
    topology::Servers,
    workloads::{rss_kib, tcp_crr_counted},
};

/// Container `k` publishes this port + `k` to its port 80.
const FIRST_PORT: u16 = 20000;
/// The second network, for the containers past the first bridge's ports.
const SECOND_SUBNET: &str = "10.60.0.0/21";

/// Counts to measure at; those past the first network's ports go on the
/// second network.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) counts: Vec<usize>,
    pub(crate) per_network: usize,
    pub(crate) rm_samples: usize,
    pub(crate) crr: Duration,
}

impl Plan {
    pub(crate) fn quick() -> Self {
        Self {
            counts: vec![10, 100],
            per_network: 1000,
            rm_samples: 5,
            crr: Duration::from_millis(500),
        }
    }

    pub(crate) fn full() -> Self {
        Self {
            counts: vec![10, 100, 1000, 2000],
            per_network: 1000,
            rm_samples: 20,
            crr: Duration::from_secs(2),
        }
    }
}

/// One count's figures.
#[derive(serde::Serialize)]
pub(crate) struct Point {
    pub(crate) containers: usize,
    /// Creates since the previous count (ms): median, extremes.
    pub(crate) create_ms: Option<Summary>,
    pub(crate) create_p99_ms: f64,
    /// Remove latency of extra containers made at this count (ms).
    pub(crate) rm_ms: Option<Summary>,
    /// Create latency right after such a remove (ms): the kernel may still
    /// be deleting the removed container's veth, whose address IPAM picks
    /// again (the create waits for it).
    pub(crate) create_after_rm_ms: Option<Summary>,
    pub(crate) daemon_rss_kib: u64,
    /// First, middle and last container, through their published ports.
    pub(crate) probes: usize,
    pub(crate) probes_answered: usize,
    pub(crate) tcp_crr_per_s: f64,
    pub(crate) tcp_crr_failed: u64,
}

/// One datapath's run.
#[derive(serde::Serialize)]
pub(crate) struct ScaleResult {
    pub(crate) datapath: String,
    pub(crate) points: Vec<Point>,
    /// The refusal of a container past one bridge's ports, as the user sees it.
    pub(crate) bridge_full_refusal: Option<String>,
    pub(crate) kill_9_restart_ms: f64,
    pub(crate) connection_kept_across_restart: bool,
}

fn p99(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len() * 99 / 100)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Which containers get an echo server: the first, and the middle and
/// last of every count.
fn served(plan: &Plan) -> Vec<usize> {
    let mut ks = vec![0];
    for &n in &plan.counts {
        ks.extend([n / 2, n - 1]);
    }
    ks.sort();
    ks.dedup();
    ks
}

struct Run<'a> {
    h: DaemonHost,
    client: Client,
    plan: &'a Plan,
    servers: BTreeMap<usize, Servers>,
    made: usize,
}

impl Run<'_> {
    fn name(&self, k: usize) -> String {
        self.h.name(&format!("s{k}"))
    }

    fn network_of(&self, k: usize) -> &'static str {
        if k < self.plan.per_network {
            "bridge"
        } else {
            "scale2"
        }
    }

    fn create(&self, name: &str, network: &str, port: u16) -> Result<f64> {
        let started = Instant::now();
        self.client.container_create(ContainerSpec {
            name: name.to_owned(),
            network: network.to_owned(),
            ip: None,
            ip6: None,
            publish: vec![PortSpec::parse(&format!("{port}:80"))?],
            aliases: Vec::new(),
            gw_priority: 0,
        })?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    }

    /// Containers `made..n`, timed; echo servers where `served` says.
    fn grow_to(&mut self, n: usize, served: &[usize]) -> Result<Vec<f64>> {
        let mut times = Vec::new();
        while self.made < n {
            let k = self.made;
            if k == self.plan.per_network {
                self.h
                    .ok(&["network", "create", "scale2", "--subnet", SECOND_SUBNET]);
            }
            let name = self.name(k);
            times.push(
                self.create(&name, self.network_of(k), FIRST_PORT + k as u16)
                    .with_context(|| format!("creating container {k}"))?,
            );
            if served.contains(&k) {
                let ip = self.client.container_inspect(&name)?.attachments[0].ip;
                let server = Servers::start(&self.h.ctr(&format!("s{k}")), &ip.to_string())?;
                self.servers.insert(k, server);
            }
            self.made += 1;
        }
        Ok(times)
    }

    fn published(&self, k: usize) -> SocketAddr {
        SocketAddr::new(HOST_IP.parse().unwrap(), FIRST_PORT + k as u16)
    }

    /// One byte each way through container `k`'s published port.
    fn answers(&self, k: usize) -> bool {
        self.exchange(k, None).is_ok()
    }

    /// Connects to container `k`'s published port (or uses `conn`) and
    /// exchanges one byte, as TCP_CRR does.
    fn exchange(&self, k: usize, conn: Option<&mut TcpStream>) -> Result<()> {
        use std::io::{Read as _, Write as _};
        let mut fresh;
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let addr = self.published(k);
                fresh = self
                    .h
                    .outside
                    .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
                &mut fresh
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut byte = [7u8];
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
        Ok(())
    }

    /// Extra containers made and removed one after another at this count:
    /// their rm times, and the times of the creates that followed an rm.
    fn rm_times(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut rms, mut creates) = (Vec::new(), Vec::new());
        for i in 0..self.plan.rm_samples {
            let name = self.h.name(&format!("rm{i}"));
            let network = self.network_of(self.made.saturating_sub(1));
            let created = self.create(&name, network, 19000 + i as u16)?;
            if i > 0 {
                creates.push(created);
            }
            let started = Instant::now();
            self.client.container_rm(&name)?;
            rms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok((rms, creates))
    }
}

/// The plan on one datapath.
fn run_one(netd: &str, datapath: &str, plan: &Plan) -> Result<ScaleResult> {
    let h = DaemonHost::start(netd, &["--datapath", datapath]);
    let client = Client::new(h.socket()).with_timeout(Duration::from_secs(120));
    let mut run = Run {
        h,
        client,
        plan,
        servers: BTreeMap::new(),
        made: 0,
    };
    let served = served(plan);
    let mut points = Vec::new();
    let mut bridge_full_refusal = None;
    for &n in &plan.counts {
        eprintln!("bench: scale {datapath}: {n} containers");
        if n > plan.per_network && bridge_full_refusal.is_none() {
            bridge_full_refusal = Some(fill_the_first_bridge(&mut run)?);
        }
        let create = run.grow_to(n, &served)?;
        let (rm, create_after_rm) = run.rm_times()?;
        let pid = run.h.daemon.as_ref().context("no daemon")?.id();
        let probed = [0, n / 2, n - 1];
        let answered = probed.iter().filter(|&&k| run.answers(k)).count();
        let last = crate::topology::side(&run.h.outside, HOST_IP, FIRST_PORT + (n - 1) as u16, 0)?;
        let (done, failed) = tcp_crr_counted(&last, plan.crr);
        points.push(Point {
            containers: n,
            create_p99_ms: p99(&create),
            create_ms: Summary::of(&create),
            rm_ms: Summary::of(&rm),
            create_after_rm_ms: Summary::of(&create_after_rm),
            daemon_rss_kib: rss_kib(pid)?,
            probes: probed.len(),
            probes_answered: answered,
            tcp_crr_per_s: done as f64 / plan.crr.as_secs_f64(),
            tcp_crr_failed: failed,
        });
    }
    let addr = run.published(0);
    let mut kept = run
        .h
        .outside
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
    run.exchange(0, Some(&mut kept))?;
    run.h.kill_daemon(libc::SIGKILL);
    let started = Instant::now();
    run.h.spawn_daemon();
    let restart_ms = started.elapsed().as_secs_f64() * 1e3;
    let kept_ok = run.exchange(0, Some(&mut kept)).is_ok();
    drop(kept);
    run.servers.clear();
    run.h.ok(&["down"]);
    Ok(ScaleResult {
        datapath: datapath.to_owned(),
        points,
        bridge_full_refusal,
        kill_9_restart_ms: restart_ms,
        connection_kept_across_restart: kept_ok,
    })
}

/// Fills the default network up to the bridge's limit with containers
/// without ports, then asks for one more: the refusal the user sees.
fn fill_the_first_bridge(run: &mut Run<'_>) -> Result<String> {
    let mut k = 0;
    loop {
        let name = run.h.name(&format!("fill{k}"));
        let spec = ContainerSpec {
            name: name.clone(),
            network: "bridge".into(),
            ip: None,
            ip6: None,
            publish: Vec::new(),
            aliases: Vec::new(),
            gw_priority: 0,
        };
        match run.client.container_create(spec) {
            Ok(_) => k += 1,
            Err(err) => return Ok(format!("{err:#}")),
        }
        anyhow::ensure!(
            k < 2000,
            "the bridge took 2,000 more ports and never refused"
        );
    }
}

pub(crate) fn run(netd: &str, plan: &Plan) -> Result<Vec<ScaleResult>> {
    let mut results = vec![run_one(netd, "ebpf", plan).context("scale on ebpf")?];
    // iptables reloads its whole rule set for every container (as Docker's
    // rules change the whole table): ~0.7 s a create at 1,500, so the
    // comparison stops at one network's worth.
    let one_network = Plan {
        counts: plan
            .counts
            .iter()
            .copied()
            .filter(|&n| n <= plan.per_network)
            .collect(),
        ..*plan
    };
    results.push(run_one(netd, "iptables", &one_network).context("scale on iptables")?);
    let dir = output_dir()?;
    std::fs::write(
        dir.join("scale.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = markdown(&results);
    std::fs::write(dir.join("scale.md"), &md)?;
    println!("{md}");
    Ok(results)
}

fn markdown(results: &[ScaleResult]) -> String {
    let mut md = String::from(
        "### Many containers (one published port each)\n\n\
         | datapath | containers | create ms p50 | create ms p99 | rm ms p50 | rm ms max | create after rm ms p50 | daemon RSS MiB | ports answering | TCP_CRR/s (last container) | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let med = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| s.median);
    let max = |s: &Option<Summary>| s.as_ref().map_or(f64::NAN, |s| s.max);
    for r in results {
        for p in &r.points {
            md.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {}/{} | {:.0} | {} |\n",
                r.datapath,
                p.containers,
                med(&p.create_ms),
                p.create_p99_ms,
                med(&p.rm_ms),
                max(&p.rm_ms),
                med(&p.create_after_rm_ms),
                p.daemon_rss_kib as f64 / 1024.0,
                p.probes_answered,
                p.probes,
                p.tcp_crr_per_s,
                p.tcp_crr_failed,
            ));
        }
    }
    md.push_str("\n| datapath | kill -9 restart ms | open connection kept | past the bridge's ports |\n|---|---|---|---|\n");
    for r in results {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} |\n",
            r.datapath,
            r.kill_9_restart_ms,
            r.connection_kept_across_restart,
            r.bridge_full_refusal.as_deref().unwrap_or("–")
        ));
    }
    md
}
