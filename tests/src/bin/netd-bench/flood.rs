//! The user rules' and the XDP program's part of the bench, with the same
//! paired method as the rest:
//! - rule scaling: TCP_CRR through the published port with 100 and 10,000
//!   rules that do not match, over the same host with none (eBPF: one trie
//!   lookup whatever their number; iptables: a linear walk per new
//!   connection);
//! - a flood: a bounded flooder in the outside namespace sends 64-byte
//!   packets that must be dropped (SYNs from a denied source to the
//!   published port, SYNs to a container address) as fast as it can, while
//!   a legitimate client runs TCP_CRR; for eBPF with XDP, eBPF with TC only
//!   (`--xdp off`) and iptables with the same rule: the legitimate rate
//!   kept (paired, flood on / off), the three compared under flood, drops
//!   per second, the whole CPU's time per flood packet, and the BPF
//!   programs' own time per packet from BPF stats.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netd_testbed::{
    Netns,
    daemon_host::{DaemonHost, HOST_IP},
    packet::{Ipv4Frame, TCP_SYN},
};
use serde_json::{Value, json};

use super::{
    BpfStats, Config, Extras, SERVER_CPU, SERVER_IP, Side, Target, bpf_fdinfo, daemon_target,
    paired::{self, Comparison, Direction, PairedRatio, Workload},
    pin_to_cpu, tcp_crr, tcp_crr_counted, tcp_stream, timed_build,
};

/// The flooder never sends more than this many packets in one go, and
/// never for longer than asked plus [`FLOOD_GRACE`].
const MAX_FLOOD_PACKETS: u64 = 200_000_000;
const FLOOD_GRACE: Duration = Duration::from_secs(1);
/// The source the flood targets' one rule denies.
const DENIED: &str = "203.0.113.0/24";

/// Frames that every datapath must drop, and where to send them.
pub struct FloodSpec {
    ns: Netns,
    ifname: String,
    frames: Vec<Vec<u8>>,
}

impl FloodSpec {
    /// 64-byte frames (60 and the FCS) from `h`'s outside namespace to its
    /// uplink: SYNs from the denied range to the published port 8080 and
    /// SYNs to the server container's address, alternating, from many
    /// source addresses and ports.
    fn new(h: &DaemonHost) -> Result<Self> {
        let host_mac = h.host.mac(&h.uplink)?;
        let outside_mac = h.outside.mac("eth0")?;
        let mut frames = Vec::new();
        for i in 0..128u16 {
            let denied_src = format!("203.0.113.{}", 1 + i % 250);
            let denied = Ipv4Frame::tcp(&denied_src, 10000 + i, HOST_IP, 8080, TCP_SYN);
            let unsolicited = Ipv4Frame::tcp("198.51.100.77", 10000 + i, SERVER_IP, 80, TCP_SYN);
            for mut frame in [denied, unsolicited] {
                frame.src_mac = outside_mac;
                frame.dst_mac = host_mac;
                let mut bytes = frame.build();
                bytes.resize(bytes.len().max(60), 0);
                frames.push(bytes);
            }
        }
        Ok(Self {
            ns: h.outside.clone(),
            ifname: "eth0".into(),
            frames,
        })
    }

    /// Floods in the background, on the server's CPU (where the host's
    /// receive work for the outside veth runs), until stopped, for at most
    /// `limit` + [`FLOOD_GRACE`] and [`MAX_FLOOD_PACKETS`].
    fn start(self: &Arc<Self>, limit: Duration) -> Flooding {
        let stop = Arc::new(AtomicBool::new(false));
        let (spec, halt) = (self.clone(), stop.clone());
        let started = Instant::now();
        let thread = thread::spawn(move || -> Result<u64> {
            spec.ns
                .enter(|| spec.send_until(&halt, started + limit + FLOOD_GRACE))?
        });
        Flooding {
            stop,
            thread,
            started,
        }
    }

    fn send_until(&self, stop: &AtomicBool, deadline: Instant) -> Result<u64> {
        pin_to_cpu(SERVER_CPU);
        let socket = RawSocket::bound_to(&self.ifname)?;
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && sent < MAX_FLOOD_PACKETS && Instant::now() < deadline
        {
            for frame in &self.frames {
                sent += u64::from(socket.send(frame));
            }
        }
        Ok(sent)
    }
}

/// An AF_PACKET socket that sends frames out of one interface (its qdisc
/// bypassed: the flooder measures the receiver, not its own queue).
struct RawSocket(libc::c_int);

impl RawSocket {
    fn bound_to(ifname: &str) -> Result<Self> {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: plain libc calls with checked results; the fd is owned by
        // the returned value and closed on drop.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            anyhow::ensure!(ifindex != 0, "no interface {ifname}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            anyhow::ensure!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let socket = Self(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            let bound = libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            anyhow::ensure!(bound == 0, "bind: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            Ok(socket)
        }
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: the buffer outlives the call.
        unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) > 0 }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.0) };
    }
}

/// A flood under way.
struct Flooding {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<u64>>,
    started: Instant,
}

impl Flooding {
    /// Stops the flood; returns the packets sent and for how long.
    fn stop(self) -> Result<(u64, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the flooder panicked"))??;
        Ok((sent, self.started.elapsed()))
    }
}

/// TCP_CRR on `side` while its flood runs: (connections per second,
/// connections that failed). Failures are the flood's effect: counted, and
/// the rate is what got through.
pub fn crr_under_flood(side: &Side, slice: Duration) -> Result<(f64, u64)> {
    let spec = side.flood.as_ref().context("this side has no flood")?;
    let flooding = spec.start(slice);
    let (done, failed) = tcp_crr_counted(side, slice);
    flooding.stop()?;
    Ok((done as f64 / slice.as_secs_f64(), failed))
}

/// Loads `rules` (lines of a `netd rule load` file) into `h`.
pub fn load_rules(h: &DaemonHost, rules: &[String]) -> Result<()> {
    let file = std::env::temp_dir().join(format!("{}-bench-rules", h.name("rules")));
    std::fs::write(&file, rules.join("\n"))?;
    let out = h.netd(&["rule", "load", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "netd rule load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `count` deny rules for the published port that the bench's client
/// (198.51.100.2) never matches: /32s and /24s across 10.0.0.0/8.
fn non_matching_rules(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
            match i % 4 {
                3 => format!("deny -s 10.{a}.{b}.0/24 --proto tcp --port 8080"),
                _ => format!("deny -s 10.{a}.{b}.{c} --proto tcp --port 8080"),
            }
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Builds the rule-scaling and flood targets, measures them, and returns
/// the markdown and JSON of both parts.
pub fn run(
    netd: &str,
    targets: &[Target],
    config: &Config,
    quick: bool,
) -> Result<(String, Value)> {
    let (rules, rules_json) = rule_scaling(netd, targets, config, quick)?;
    let (flood, flood_json) = flood(netd, config)?;
    Ok((
        format!("{rules}\n{flood}"),
        json!({"rule_scaling": rules_json, "flood": flood_json}),
    ))
}

fn rule_scaling(
    netd: &str,
    targets: &[Target],
    config: &Config,
    quick: bool,
) -> Result<(String, Value)> {
    let counts: &[usize] = if quick { &[100, 1000] } else { &[100, 10000] };
    let mut results = Vec::new();
    for datapath in ["ebpf", "iptables"] {
        let base = targets
            .iter()
            .find(|t| t.datapath == datapath && t.ports == 1 && t.networks == 1)
            .context("the 1-port targets")?;
        for &count in counts {
            let with_rules = timed_build(|| {
                let extras = Extras {
                    rules: non_matching_rules(count),
                    variant: format!(", {count} rules"),
                    ..Extras::default()
                };
                daemon_target(netd, datapath, 1, 1, config, extras)
            })?;
            let what = format!("{datapath}: {count} non-matching rules / none");
            eprintln!("bench: paired {what}");
            results.push(paired::compare(
                &Comparison {
                    what,
                    a: &with_rules,
                    b: base,
                    workload: Workload::TcpCrr,
                    direction: Direction::Dnat,
                },
                config.pairs,
                config.slice,
            )?);
        }
    }
    let md = format!(
        "### User rules that do not match (TCP_CRR through the published port; paired)\n\n{}",
        paired::table(&results)
    );
    Ok((md, results.iter().map(PairedRatio::to_json).collect()))
}

/// The flood's contenders: (label, datapath, daemon flags).
const FLOOD_PATHS: [(&str, &str, &[&str]); 4] = [
    ("ebpf, native XDP", "ebpf", &["--xdp", "native"]),
    ("ebpf, generic XDP", "ebpf", &["--xdp", "generic"]),
    ("ebpf, TC only", "ebpf", &["--xdp", "off"]),
    ("iptables", "iptables", &[]),
];

fn flood(netd: &str, config: &Config) -> Result<(String, Value)> {
    let mut built = Vec::new();
    for (label, datapath, flags) in FLOOD_PATHS {
        let mut target = timed_build(|| {
            let extras = Extras {
                flags,
                rules: vec![format!("deny -s {DENIED}")],
                variant: format!(" ({label}, {DENIED} denied)"),
            };
            daemon_target(netd, datapath, 1, 1, config, extras)
        })?;
        let h = target._keep._daemon.as_deref().context("a daemon target")?;
        target.dnat.flood = Some(Arc::new(FloodSpec::new(h)?));
        built.push((label, target));
    }
    let mut rows = Vec::new();
    let mut kept = Vec::new();
    for (label, target) in &built {
        eprintln!("bench: flood {label}");
        let side = &target.dnat;
        let ratios = paired::pair_ratios(
            |d| crr_under_flood(side, d).map(|(rate, _)| rate),
            |d| tcp_crr(side, d).map(|(rate, _)| rate),
            config.pairs,
            config.slice,
        )?;
        let retained = PairedRatio::new(
            format!("{label}: flood / no flood"),
            Workload::TcpCrrUnderFlood,
            Direction::Dnat,
            ratios,
        );
        let (_, failed) = crr_under_flood(side, config.duration)?;
        let alone = flood_alone(target, config.duration)?;
        // What the hook costs legitimate traffic when nobody floods.
        let (crr, _) = tcp_crr(side, config.duration)?;
        let stream = tcp_stream(side, &target.container_servers, config.duration)?;
        rows.push(json!({
            "path": label,
            "legitimate_crr_failed_in_one_run": failed,
            "flood": alone,
            "retained": retained.to_json(),
            "no_flood_tcp_crr_per_s": crr,
            "no_flood_tcp_stream_gbit_s": stream,
        }));
        kept.push(retained);
    }
    let find = |label: &str| built.iter().find(|(l, _)| *l == label).map(|(_, t)| t);
    let (Some(native), Some(generic), Some(tc), Some(iptables)) = (
        find("ebpf, native XDP"),
        find("ebpf, generic XDP"),
        find("ebpf, TC only"),
        find("iptables"),
    ) else {
        anyhow::bail!("the flood targets");
    };
    let mut across = Vec::new();
    for (a, b, what) in [
        (native, iptables, "native XDP / iptables"),
        (native, tc, "native XDP / TC only"),
        (generic, tc, "generic XDP / TC only"),
        (tc, iptables, "TC only / iptables"),
    ] {
        let what = format!("under flood: ebpf {what}");
        eprintln!("bench: paired {what}");
        across.push(paired::compare(
            &Comparison {
                what,
                a,
                b,
                workload: Workload::TcpCrrUnderFlood,
                direction: Direction::Dnat,
            },
            config.pairs,
            config.slice,
        )?);
    }
    let mut md = String::from(
        "### Flood: 64-byte packets that must be dropped, as fast as one core sends them, while a client runs TCP_CRR\n\n\
         | path | legitimate TCP_CRR kept (flood / none) | 95 % interval | flood packets sent /s | dropped /s | whole-CPU ns per flood packet | BPF ns per flood packet | TCP_CRR /s, no flood | TCP_STREAM Gbit/s, no flood |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (row, retained) in rows.iter().zip(&kept) {
        let f = &row["flood"];
        md.push_str(&format!(
            "| {} | {:.2}× | [{:.2}, {:.2}] | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.1} |\n",
            row["path"].as_str().unwrap_or(""),
            retained.median,
            retained.low,
            retained.high,
            f["sent_per_s"].as_f64().unwrap_or(f64::NAN),
            f["dropped_per_s"].as_f64().unwrap_or(f64::NAN),
            f["cpu_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            f["bpf_ns_per_packet"]
                .as_f64()
                .map_or("–".into(), |ns| format!("{ns:.0}")),
            row["no_flood_tcp_crr_per_s"].as_f64().unwrap_or(f64::NAN),
            row["no_flood_tcp_stream_gbit_s"]
                .as_f64()
                .unwrap_or(f64::NAN),
        ));
    }
    md.push_str("\nThe paths under the same flood (paired):\n\n");
    md.push_str(&paired::table(&across));
    Ok((
        md,
        json!({
            "paths": rows,
            "under_flood": across.iter().map(PairedRatio::to_json).collect::<Vec<_>>(),
        }),
    ))
}

/// The flood on its own for `duration`: packets sent and dropped per
/// second, the flooder's core's time per packet (sending and the host's
/// receive work both run there), and, on eBPF, the uplink programs' own
/// time per packet from BPF stats.
fn flood_alone(target: &Target, duration: Duration) -> Result<Value> {
    let h = target._keep._daemon.as_deref().context("a daemon target")?;
    let spec = target.dnat.flood.as_ref().context("a flood")?;
    let ebpf = target.datapath == "ebpf";
    let stats = ebpf.then(BpfStats::enable).transpose()?;
    let pid = target.daemon_pid.context("a daemon")?;
    let programs = || -> Result<BTreeMap<String, (u64, u64)>> {
        if stats.is_none() {
            return Ok(BTreeMap::new());
        }
        program_stats(pid)
    };
    let (drops_before, runs_before) = (dropped(h, ebpf)?, programs()?);
    let flooding = spec.start(duration);
    thread::sleep(duration);
    let (sent, took) = flooding.stop()?;
    let (drops_after, runs_after) = (dropped(h, ebpf)?, programs()?);
    drop(stats);
    let secs = took.as_secs_f64();
    // Every flood packet meets one uplink program first: the XDP one when
    // attached, else from_uplink; its runs beyond the flood are a few.
    let mut bpf_ns = None;
    for program in ["uplink_xdp", "from_uplink"] {
        let (runs, ns) = runs_after.get(program).copied().unwrap_or_default();
        let (runs0, ns0) = runs_before.get(program).copied().unwrap_or_default();
        if runs > runs0 {
            bpf_ns = Some((ns - ns0) as f64 / (runs - runs0) as f64);
            break;
        }
    }
    Ok(json!({
        "seconds": secs,
        "sent": sent,
        "sent_per_s": sent as f64 / secs,
        "dropped_per_s": drops_after.saturating_sub(drops_before) as f64 / secs,
        "cpu_ns_per_packet": took.as_nanos() as f64 / sent.max(1) as f64,
        "bpf_ns_per_packet": bpf_ns,
    }))
}

/// (runs, ns) per program name of the daemon's BPF programs.
fn program_stats(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let names: BTreeMap<u64, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (u64::from(p.id()), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (id, fields) in bpf_fdinfo(pid, "prog_id")? {
        let name = names.get(&id).cloned().unwrap_or_default();
        let entry = by_name.entry(name).or_default();
        entry.0 += fields.get("run_cnt").copied().unwrap_or(0);
        entry.1 += fields.get("run_time_ns").copied().unwrap_or(0);
    }
    Ok(by_name)
}

/// Packets the datapath has dropped: the drop counters on eBPF; netd's
/// DROP rules' counters on iptables.
fn dropped(h: &DaemonHost, ebpf: bool) -> Result<u64> {
    if ebpf {
        let status = h.json(&["status"]);
        return Ok(status["drops"]
            .as_object()
            .context("status has drops")?
            .values()
            .filter_map(Value::as_u64)
            .sum());
    }
    let out = h.host.run("iptables-save", &["-c"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" -A NETD") && l.ends_with("-j DROP"))
        .filter_map(|l| {
            let counters = l.strip_prefix('[')?.split(']').next()?;
            counters.split(':').next()?.parse::<u64>().ok()
        })
        .sum())
}
