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
//!   programs' own time per packet from BPF stats;
//! - what a drop costs the host beyond receiving the frame, per path;
//! - the flood paced to fixed rates, the same on every path (an attacker's
//!   rate does not depend on the victim), up to the rate that fills a core
//!   on the costliest path: the legitimate rate kept, and the paths compared.
//!
//! The XDP-frame floods reach a two-queue uplink with a queue per core, as
//! a NIC's RSS gives: the flood on the server's core, the client's packets
//! on the client's.

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
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpMode},
};
use netd_testbed::{
    Netns,
    daemon_host::{DaemonHost, HOST_IP},
    packet::{Ipv4Frame, TCP_SYN},
};

use super::{
    BpfStats, CLIENT_CPU, Config, Extras, SERVER_CPU, SERVER_IP, Side, Target, daemon_target,
    paired::{self, Comparison, Direction, PairedRatio, Workload},
    pin_to_cpu, program_stats, tcp_crr, tcp_crr_counted, tcp_stream, timed_build,
};

/// The flooder never sends more than this many packets in one go, and
/// never for longer than asked plus [`FLOOD_GRACE`].
const MAX_FLOOD_PACKETS: u64 = 200_000_000;
const FLOOD_GRACE: Duration = Duration::from_secs(1);
/// A paced flood sends a batch this often: a live-frames run has a fixed
/// cost of ~20 ms asleep (its page pool's teardown waits for RCU), so
/// batches are large and the pacing coarse.
const PACING_TICK: Duration = Duration::from_millis(100);
/// How far a paced flood may fall behind before it stops trying to catch up.
const MAX_PACING_LAG: Duration = Duration::from_millis(200);
/// The source the flood targets' one rule denies.
const DENIED: &str = "203.0.113.0/24";

/// How flood packets reach the host's uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Generator {
    /// Sent on an AF_PACKET socket: the host's veth receives skbs its peer
    /// built, as a veth uplink always does.
    Socket,
    /// XDP frames sent into the veth (BPF_PROG_TEST_RUN in live-frames
    /// mode, an XDP_TX program): no skb exists until the receiving side
    /// builds one, as with packets from a NIC. The host's veth needs NAPI
    /// (an XDP program, or GRO on) to take them.
    Frames,
}

impl Generator {
    /// Queues on the uplink veth: a NIC-like uplink has one per core.
    fn uplink_queues(self) -> u32 {
        match self {
            Self::Socket => 1,
            Self::Frames => 2,
        }
    }
}

/// Gives each core its own queue of `h`'s two-queue uplink, as a NIC's RSS
/// spreads flows: the client's packets (sent on its core) go to receive
/// queue 0, and the flooder's frames (on the server's core) to queue 1 (a
/// veth puts an XDP frame on the queue of the sending CPU). Each queue's
/// NAPI runs on the core that fills it, so the client's packets are not
/// received in the flood's ring.
fn queue_per_core(h: &DaemonHost) -> Result<()> {
    let masks = [(0, 1usize << CLIENT_CPU), (1, 1usize << SERVER_CPU)];
    for (queue, mask) in masks {
        // XPS is set through sysfs, which shows the namespace's devices only
        // under `ip netns exec`.
        let path = format!("/sys/class/net/eth0/queues/tx-{queue}/xps_cpus");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", h.outside.name(), "sh", "-c"])
            .arg(format!("echo {mask:x} > {path}"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "setting {path} in {}: {}",
            h.outside.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Frames that every datapath must drop, and where to send them.
#[derive(Clone)]
pub struct FloodSpec {
    ns: Netns,
    ifname: String,
    frames: Vec<Vec<u8>>,
    generator: Generator,
    /// Frames per second to offer, or `None`: as fast as one core sends.
    rate: Option<f64>,
}

impl FloodSpec {
    /// 64-byte frames (60 and the FCS) from `h`'s outside namespace to its
    /// uplink: SYNs from the denied range to the published port 8080 and
    /// SYNs to the server container's address, alternating, from many
    /// source addresses and ports.
    fn new(h: &DaemonHost, generator: Generator) -> Result<Self> {
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
            generator,
            rate: None,
        })
    }

    /// The same flood offered at `rate` frames per second.
    fn paced(&self, rate: f64) -> Self {
        Self {
            rate: Some(rate),
            ..self.clone()
        }
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
        let more = |sent: u64| {
            !stop.load(Ordering::Relaxed) && sent < MAX_FLOOD_PACKETS && Instant::now() < deadline
        };
        let mut sent = 0u64;
        match self.generator {
            Generator::Socket => {
                let socket = RawSocket::bound_to(&self.ifname)?;
                while more(sent) {
                    for frame in &self.frames {
                        sent += u64::from(socket.send(frame));
                    }
                }
            }
            Generator::Frames => {
                let mut sender = FrameSender::on(&self.ifname, &self.frames[0])?;
                // One frame per run, repeated: the two kinds take turns.
                let mut kinds = self.frames.iter().take(2).cycle();
                let Some(rate) = self.rate else {
                    while more(sent) {
                        let frame = kinds.next().expect("two frames");
                        sent += sender.send(frame, FRAMES_PER_RUN)?;
                    }
                    return Ok(sent);
                };
                // A batch every tick, asleep in between: the core's time
                // left is what the host's receive and drop work did not take.
                let batch = ((rate * PACING_TICK.as_secs_f64()).round() as u32).max(1);
                let period = Duration::from_secs_f64(f64::from(batch) / rate);
                let mut next = Instant::now();
                while more(sent) {
                    let frame = kinds.next().expect("two frames");
                    sent += sender.send(frame, batch)?;
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    } else if now - next > MAX_PACING_LAG {
                        // Behind (the core is saturated): no burst to catch up.
                        next = now;
                    }
                }
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

/// Frames per BPF_PROG_TEST_RUN of the frame generator: each run sets up
/// a page pool first, so runs are long (tens of milliseconds: the stop
/// flag is seen that often).
const FRAMES_PER_RUN: u32 = 1 << 16;

/// The bench's own XDP programs (`tests/ebpf`), built by `build.rs`.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netd-bench"));

/// Loads one XDP program of the bench's object.
fn bench_program(name: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(BENCH_OBJECT).context("loading the bench's BPF object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the bench's object"))?
        .try_into()?;
    prog.load().with_context(|| format!("loading {name}"))?;
    Ok(ebpf)
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the bench's object"))?
        .try_into()?)
}

/// Sends XDP frames out of one interface through `BPF_PROG_TEST_RUN` in
/// live-frames mode (5.18): `bench_transmit` returns XDP_TX, which the
/// kernel turns into a redirect out of the run's interface. A kernel that
/// refuses live-frames runs (some builds answer EPERM even to root) gets
/// the frames from an AF_PACKET socket instead, and the report says so.
enum FrameSender {
    Live { ebpf: Ebpf, ifindex: u32 },
    Socket(RawSocket),
}

/// Why the `frames:` paths were sent from a socket, once a sender found
/// that the kernel refuses live-frames runs.
static LIVE_FRAMES_REFUSED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The report's words for how the `frames:` rows were sent.
fn frames_generator() -> String {
    match LIVE_FRAMES_REFUSED.get() {
        None => "XDP frames (BPF_PROG_TEST_RUN, live frames)".into(),
        Some(why) => format!(
            "AF_PACKET, as the plain rows: this kernel refuses live-frames test runs ({why}); \
             the host's veth still runs native XDP on them in its NAPI poll"
        ),
    }
}

/// `bench_drop` (XDP_DROP) in an interface's driver: the least receiving a
/// frame can cost (the floor the flood's drop costs are taken from).
/// Detached when dropped (aya detaches a program's links with it).
struct FloorDrop {
    _ebpf: Ebpf,
}

impl FloorDrop {
    /// Attaches to `ifname` in the calling thread's namespace.
    fn attach(ifname: &str) -> Result<Self> {
        let mut ebpf = bench_program("bench_drop")?;
        let name = std::ffi::CString::new(ifname)?;
        xdp(&mut ebpf, "bench_drop")?
            .attach(name.as_c_str(), XdpMode::Driver)
            .with_context(|| format!("attaching XDP_DROP to {ifname}"))?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// The index of `ifname` in the calling thread's namespace.
fn ifindex_of(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a plain libc call on a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "no interface {ifname}");
    Ok(ifindex)
}

impl FrameSender {
    /// A sender on `ifname`, tried with `probe` (one frame of the flood).
    fn on(ifname: &str, probe: &[u8]) -> Result<Self> {
        let ifindex = ifindex_of(ifname)?;
        let ebpf = bench_program("bench_transmit").context("the XDP_TX generator")?;
        let mut live = Self::Live { ebpf, ifindex };
        match live.send(probe, 1) {
            Ok(_) => Ok(live),
            Err(err) if refused(&err) => {
                let _ = LIVE_FRAMES_REFUSED.set(format!("{:#}", err.root_cause()));
                Ok(Self::Socket(RawSocket::bound_to(ifname)?))
            }
            Err(err) => Err(err),
        }
    }

    /// Sends `frame` `count` times; returns how many went.
    fn send(&mut self, frame: &[u8], count: u32) -> Result<u64> {
        let (ebpf, ifindex) = match self {
            Self::Live { ebpf, ifindex } => (ebpf, *ifindex),
            Self::Socket(socket) => {
                return Ok((0..count).map(|_| u64::from(socket.send(frame))).sum());
            }
        };
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
        xdp(ebpf, "bench_transmit")?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: count,
                // Batch 0: the kernel's default.
                attrs: TestRunAttrs::new().xdp_live_frames(0),
                ..TestRunOptions::new()
            })
            .context("sending XDP frames (live-frames test run)")?;
        Ok(u64::from(count))
    }
}

/// Whether a live-frames run failed because the kernel refuses the mode.
fn refused(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::EPERM))
}

/// Turns GRO on for `ifname` in the calling thread's namespace (ethtool's
/// ETHTOOL_SGRO): a veth then runs NAPI and takes XDP frames even without
/// an XDP program of its own, building skbs from them as a NIC's driver does.
fn enable_gro(ifname: &str) -> Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _rest: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: 1,
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _rest: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: plain libc calls on our own socket; `req` and `value` outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        anyhow::ensure!(rc == 0, "ETHTOOL_SGRO on {ifname}: {err}");
    }
    Ok(())
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
) -> Result<(String, RulesAndFlood)> {
    let (rules, rule_scaling) = rule_scaling(netd, targets, config, quick)?;
    let (md, flood) = flood(netd, config)?;
    Ok((
        format!("{rules}\n{md}"),
        RulesAndFlood {
            flood,
            rule_scaling,
        },
    ))
}

/// What results.json holds of the rules and floods (fields in
/// alphabetical order, as the file's keys always were).
#[derive(serde::Serialize)]
pub struct RulesAndFlood {
    pub flood: Flood,
    pub rule_scaling: Vec<PairedRatio>,
}

#[derive(serde::Serialize)]
pub struct Flood {
    /// How the `frames:` paths' floods were sent.
    pub frames_generator: String,
    pub drop_cost: DropCost,
    pub paced: Paced,
    pub paths: Vec<FloodPath>,
    pub under_flood: Vec<PairedRatio>,
}

/// One path under the unpaced flood.
#[derive(serde::Serialize)]
pub struct FloodPath {
    pub flood: FloodAlone,
    pub legitimate_crr_failed_in_one_run: u64,
    pub no_flood_tcp_crr_per_s: f64,
    pub no_flood_tcp_stream_gbit_s: f64,
    pub path: String,
    pub retained: PairedRatio,
}

/// The flood on its own: what was sent and dropped, at what cost.
#[derive(Clone, serde::Serialize)]
pub struct FloodAlone {
    /// The uplink programs' own time per packet (eBPF).
    pub bpf_ns_per_packet: Option<f64>,
    pub cpu_ns_per_packet: f64,
    pub dropped_per_s: f64,
    pub seconds: f64,
    pub sent: u64,
    pub sent_per_s: f64,
}

#[derive(serde::Serialize)]
pub struct DropCost {
    pub floor_ns_per_frame: f64,
    pub floors: Vec<f64>,
    pub paths: Vec<DropCostPath>,
    pub ratios: Vec<DropCostRatio>,
}

#[derive(serde::Serialize)]
pub struct DropCostPath {
    pub ci95: [f64; 2],
    pub ns_beyond_floor: f64,
    pub path: String,
    pub rounds: Vec<f64>,
}

#[derive(serde::Serialize)]
pub struct DropCostRatio {
    pub ci95: [f64; 2],
    pub median_ratio: f64,
    pub pair_ratios: Vec<f64>,
    pub what: String,
}

#[derive(serde::Serialize)]
pub struct Paced {
    pub capacity_frames_per_s: f64,
    pub paths: Vec<PacedPath>,
    pub under_flood: Vec<PairedRatio>,
}

#[derive(serde::Serialize)]
pub struct PacedPath {
    pub flood: FloodAlone,
    pub fraction: f64,
    pub offered_per_s: f64,
    pub path: String,
    pub retained: PairedRatio,
}

fn rule_scaling(
    netd: &str,
    targets: &[Target],
    config: &Config,
    quick: bool,
) -> Result<(String, Vec<PairedRatio>)> {
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
    Ok((md, results))
}

/// The flood's contenders: (label, datapath, daemon flags, generator).
const FLOOD_PATHS: [(&str, &str, &[&str], Generator); 7] = [
    (
        "ebpf, native XDP",
        "ebpf",
        &["--xdp", "native"],
        Generator::Socket,
    ),
    (
        "ebpf, generic XDP",
        "ebpf",
        &["--xdp", "generic"],
        Generator::Socket,
    ),
    (
        "ebpf, TC only",
        "ebpf",
        &["--xdp", "off"],
        Generator::Socket,
    ),
    ("iptables", "iptables", &[], Generator::Socket),
    (
        "frames: ebpf, native XDP",
        "ebpf",
        &["--xdp", "native"],
        Generator::Frames,
    ),
    (
        "frames: ebpf, TC only",
        "ebpf",
        &["--xdp", "off"],
        Generator::Frames,
    ),
    ("frames: iptables", "iptables", &[], Generator::Frames),
];

fn flood(netd: &str, config: &Config) -> Result<(String, Flood)> {
    let mut built = Vec::new();
    for (label, datapath, flags, generator) in FLOOD_PATHS {
        let mut target = timed_build(|| {
            let extras = Extras {
                flags,
                rules: vec![format!("deny -s {DENIED}")],
                variant: format!(" ({label}, {DENIED} denied)"),
                uplink_queues: generator.uplink_queues(),
            };
            daemon_target(netd, datapath, 1, 1, config, extras)
        })?;
        let h = target._keep._daemon.as_deref().context("a daemon target")?;
        if generator == Generator::Frames {
            queue_per_core(h)?;
        }
        if generator == Generator::Frames && !flags.contains(&"native") {
            h.host.enter(|| enable_gro(&h.uplink))??;
        }
        target.dnat.flood = Some(Arc::new(FloodSpec::new(h, generator)?));
        built.push((label, target));
    }
    let mut rows = Vec::new();
    for (label, target) in &built {
        eprintln!("bench: flood {label}");
        let side = &target.dnat;
        let retained = retained_under_flood(format!("{label}: flood / no flood"), side, config)?;
        let (_, failed) = crr_under_flood(side, config.duration)?;
        let alone = flood_alone(target, config.duration)?;
        // What the hook costs legitimate traffic when nobody floods.
        let (crr, _) = tcp_crr(side, config.duration)?;
        let stream = tcp_stream(side, &target.container_servers, config.duration)?;
        rows.push(FloodPath {
            flood: alone,
            legitimate_crr_failed_in_one_run: failed,
            no_flood_tcp_crr_per_s: crr,
            no_flood_tcp_stream_gbit_s: stream,
            path: (*label).to_owned(),
            retained,
        });
    }
    let find = |label: &str| built.iter().find(|(l, _)| *l == label).map(|(_, t)| t);
    let found = |label: &str| find(label).with_context(|| format!("flood target {label}"));
    let (native, generic, tc, iptables) = (
        found("ebpf, native XDP")?,
        found("ebpf, generic XDP")?,
        found("ebpf, TC only")?,
        found("iptables")?,
    );
    let (frames_native, frames_tc, frames_iptables) = (
        found("frames: ebpf, native XDP")?,
        found("frames: ebpf, TC only")?,
        found("frames: iptables")?,
    );
    let mut across = Vec::new();
    for (a, b, what) in [
        (native, iptables, "ebpf native XDP / iptables"),
        (native, tc, "ebpf native XDP / TC only"),
        (generic, tc, "ebpf generic XDP / TC only"),
        (tc, iptables, "ebpf TC only / iptables"),
        (
            frames_native,
            frames_iptables,
            "frames: ebpf native XDP / iptables",
        ),
        (
            frames_native,
            frames_tc,
            "frames: ebpf native XDP / TC only",
        ),
        (
            frames_tc,
            frames_iptables,
            "frames: ebpf TC only / iptables",
        ),
    ] {
        across.push(compare_under_flood(
            format!("under flood: {what}"),
            a,
            b,
            config,
        )?);
    }
    let mut md = format!(
        "### Flood: 64-byte packets that must be dropped, as fast as one core sends them, while a client runs TCP_CRR\n\n\
         Plain rows: sent from an AF_PACKET socket (the host's veth receives skbs, as a veth uplink always does). \
         `frames:` rows: sent as XDP frames into the veth (no skb until the host builds one, as with a NIC); \
         on this run: {}.\n\n\
         | path | legitimate TCP_CRR kept (flood / none) | 95 % interval | flood packets sent /s | dropped /s | whole-CPU ns per flood packet | BPF ns per flood packet | TCP_CRR /s, no flood | TCP_STREAM Gbit/s, no flood |\n|---|---|---|---|---|---|---|---|---|\n",
        frames_generator()
    );
    for row in &rows {
        let (f, retained) = (&row.flood, &row.retained);
        md.push_str(&format!(
            "| {} | {:.2}× | [{:.2}, {:.2}] | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.1} |\n",
            row.path,
            retained.median,
            retained.low,
            retained.high,
            f.sent_per_s,
            f.dropped_per_s,
            f.cpu_ns_per_packet,
            f.bpf_ns_per_packet
                .map_or("–".into(), |ns| format!("{ns:.0}")),
            row.no_flood_tcp_crr_per_s,
            row.no_flood_tcp_stream_gbit_s,
        ));
    }
    md.push_str("\nThe paths under the same flood (paired):\n\n");
    md.push_str(&paired::table(&across));
    let (cost_md, cost_json) = drop_cost(
        netd,
        config,
        &[
            ("native XDP", frames_native),
            ("TC only", frames_tc),
            ("iptables", frames_iptables),
        ],
    )?;
    md.push_str(&cost_md);
    let (paced_md, paced_json) = paced_flood(config, &mut built)?;
    md.push_str(&paced_md);
    Ok((
        md,
        Flood {
            frames_generator: frames_generator(),
            drop_cost: cost_json,
            paced: paced_json,
            paths: rows,
            under_flood: across,
        },
    ))
}

/// The offered rates of the paced flood, as fractions of the costliest
/// path's capacity on one core.
const PACED_FRACTIONS: [f64; 3] = [0.5, 0.8, 0.95];
/// The paths of the paced flood: frames, as from a NIC.
const PACED_PATHS: [&str; 3] = [
    "frames: ebpf, native XDP",
    "frames: ebpf, TC only",
    "frames: iptables",
];

/// Legitimate TCP_CRR under a flood offered at a fixed rate, the same on
/// every path, as an attacker's is whatever the victim does. Flooding "as
/// fast as one core sends" on the same machine takes that core whatever a
/// drop costs (the sender waits for the receiver); at a fixed rate a
/// cheaper drop leaves the core's remaining time to the legitimate
/// traffic. The rates are fractions of the rate at which the costliest
/// path's flood fills one core (sending, receiving and dropping).
fn paced_flood(config: &Config, built: &mut [(&str, Target)]) -> Result<(String, Paced)> {
    let mut at = Vec::new();
    for label in PACED_PATHS {
        let index = built
            .iter()
            .position(|(l, _)| *l == label)
            .with_context(|| format!("flood target {label}"))?;
        at.push(index);
    }
    let unpaced: Vec<Arc<FloodSpec>> = at
        .iter()
        .map(|&i| built[i].1.dnat.flood.clone().context("a flood"))
        .collect::<Result<_>>()?;
    eprintln!("bench: paced flood: each path's capacity");
    let mut costliest = 0.0f64;
    for spec in &unpaced {
        costliest = costliest.max(ns_per_frame(spec, config.duration)?);
    }
    let capacity = 1e9 / costliest;
    let mut md = format!(
        "\n### Flood at a fixed offered rate, while a client runs TCP_CRR\n\n\
         `frames:` floods paced to the same rate on every path, as an attacker's rate is his own; \
         the rates are fractions of {capacity:.0} frames/s, what fills one core on the costliest \
         path (the flooder's core also does the host's receive work).\n\n\
         | offered frames/s | path | legitimate TCP_CRR kept (flood / none) | 95 % interval | sent /s | dropped /s |\n|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    let mut across = Vec::new();
    for fraction in PACED_FRACTIONS {
        let rate = fraction * capacity;
        for (&i, spec) in at.iter().zip(&unpaced) {
            built[i].1.dnat.flood = Some(Arc::new(spec.paced(rate)));
        }
        for &i in &at {
            let (label, target) = &built[i];
            eprintln!("bench: paced flood at {rate:.0}/s: {label}");
            let side = &target.dnat;
            let what = format!("{label} at {rate:.0} frames/s: flood / no flood");
            let retained = retained_under_flood(what, side, config)?;
            let alone = flood_alone(target, config.duration)?;
            md.push_str(&format!(
                "| {rate:.0} ({fraction}) | {label} | {:.2}× | [{:.2}, {:.2}] | {:.0} | {:.0} |\n",
                retained.median, retained.low, retained.high, alone.sent_per_s, alone.dropped_per_s,
            ));
            rows.push(PacedPath {
                flood: alone,
                fraction,
                offered_per_s: rate,
                path: (*label).to_owned(),
                retained,
            });
        }
        let (native, tc, iptables) = (&built[at[0]].1, &built[at[1]].1, &built[at[2]].1);
        for (a, b, what) in [
            (native, iptables, "native XDP / iptables"),
            (native, tc, "native XDP / TC only"),
            (tc, iptables, "TC only / iptables"),
        ] {
            let what = format!("paced flood at {rate:.0} frames/s: ebpf {what}");
            across.push(compare_under_flood(what, a, b, config)?);
        }
    }
    for (&i, spec) in at.iter().zip(unpaced) {
        built[i].1.dnat.flood = Some(spec);
    }
    md.push_str("\nThe paths under the same paced flood (paired):\n\n");
    md.push_str(&paired::table(&across));
    Ok((
        md,
        Paced {
            capacity_frames_per_s: capacity,
            paths: rows,
            under_flood: across,
        },
    ))
}

/// Legitimate TCP_CRR on `side` under its flood over the same without it,
/// paired.
fn retained_under_flood(what: String, side: &Side, config: &Config) -> Result<PairedRatio> {
    let ratios = paired::pair_ratios(
        |d| crr_under_flood(side, d).map(|(crr, _)| crr),
        |d| tcp_crr(side, d).map(|(crr, _)| crr),
        config.pairs,
        config.slice,
    )?;
    Ok(PairedRatio::new(
        what,
        Workload::TcpCrrUnderFlood,
        Direction::Dnat,
        ratios,
    ))
}

/// Legitimate TCP_CRR under the same flood on `a` over `b`, paired.
fn compare_under_flood(
    what: String,
    a: &Target,
    b: &Target,
    config: &Config,
) -> Result<PairedRatio> {
    eprintln!("bench: paired {what}");
    paired::compare(
        &Comparison {
            what,
            a,
            b,
            workload: Workload::TcpCrrUnderFlood,
            direction: Direction::Dnat,
        },
        config.pairs,
        config.slice,
    )
}

/// The flooder's core's time per frame over `slice` (sending, and the
/// host's receive work, which the veth runs on the sender's CPU).
fn ns_per_frame(spec: &Arc<FloodSpec>, slice: Duration) -> Result<f64> {
    let flooding = spec.start(slice);
    thread::sleep(slice);
    let (sent, took) = flooding.stop()?;
    anyhow::ensure!(sent > 0, "the flooder sent nothing");
    Ok(took.as_nanos() as f64 / sent as f64)
}

/// What dropping one flood frame costs the host beyond receiving it, per
/// path: the flooder's time per frame on the path, less its time per frame
/// into a one-instruction XDP_DROP on a host of the same shape (the floor:
/// sending, the veth's ring and NAPI, one program run). Paired: every round
/// measures the floor and each path in a rotating order, and the costs and
/// their ratios are taken within the round.
fn drop_cost(netd: &str, config: &Config, paths: &[(&str, &Target)]) -> Result<(String, DropCost)> {
    let floor_target = timed_build(|| {
        let extras = Extras {
            flags: &["--xdp", "off"],
            variant: " (frames into XDP_DROP)".into(),
            uplink_queues: Generator::Frames.uplink_queues(),
            ..Extras::default()
        };
        daemon_target(netd, "ebpf", 1, 1, config, extras)
    })?;
    let h = floor_target
        ._keep
        ._daemon
        .as_deref()
        .context("a daemon target")?;
    queue_per_core(h)?;
    let floor = Arc::new(FloodSpec::new(h, Generator::Frames)?);
    let _attached = h.host.enter(|| FloorDrop::attach(&h.uplink))??;
    let mut floods = vec![floor];
    for (label, target) in paths {
        floods.push(
            target
                .dnat
                .flood
                .clone()
                .with_context(|| format!("{label} has no flood"))?,
        );
    }
    eprintln!("bench: drop cost beyond the floor");
    for flood in &floods {
        ns_per_frame(flood, config.slice / 2)?;
    }
    let mut floors = Vec::new();
    let mut beyond = vec![Vec::new(); paths.len()];
    for round in 0..config.pairs {
        let mut ns = vec![0.0; floods.len()];
        for i in 0..floods.len() {
            let at = (i + round) % floods.len();
            ns[at] = ns_per_frame(&floods[at], config.slice)?;
        }
        floors.push(ns[0]);
        for (path, cost) in beyond.iter_mut().enumerate() {
            cost.push(ns[path + 1] - ns[0]);
        }
    }
    let (floor_ns, ..) = paired::median_with_interval(&floors);
    let mut md = format!(
        "\nThe host's time per dropped frame beyond receiving it (`frames:` flood; the flooder's \
         ns per frame less the floor, {floor_ns:.0} ns per frame into a one-instruction XDP_DROP \
         on a host of the same shape; {} rounds, each path and the floor in turn):\n\n\
         | path | ns per drop beyond the floor | 95 % interval |\n|---|---|---|\n",
        config.pairs
    );
    let mut costs = Vec::new();
    for ((label, _), cost) in paths.iter().zip(&beyond) {
        let (median, low, high) = paired::median_with_interval(cost);
        md.push_str(&format!(
            "| {label} | {median:.0} | [{low:.0}, {high:.0}] |\n"
        ));
        costs.push(DropCostPath {
            ci95: [low, high],
            ns_beyond_floor: median,
            path: (*label).to_owned(),
            rounds: cost.clone(),
        });
    }
    let mut ratios = Vec::new();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let per_round: Vec<f64> = beyond[a]
            .iter()
            .zip(&beyond[b])
            .map(|(x, y)| x / y)
            .collect();
        let (median, low, high) = paired::median_with_interval(&per_round);
        let what = format!("{} / {}", paths[a].0, paths[b].0);
        md.push_str(&format!(
            "\n{what}: **{median:.2}×** [{low:.2}, {high:.2}] of the cost per drop"
        ));
        ratios.push(DropCostRatio {
            ci95: [low, high],
            median_ratio: median,
            pair_ratios: per_round,
            what,
        });
    }
    md.push('\n');
    Ok((
        md,
        DropCost {
            floor_ns_per_frame: floor_ns,
            floors,
            paths: costs,
            ratios,
        },
    ))
}

/// The flood on its own for `duration`: packets sent and dropped per
/// second, the flooder's core's time per packet (sending and the host's
/// receive work both run there), and, on eBPF, the uplink programs' own
/// time per packet from BPF stats.
fn flood_alone(target: &Target, duration: Duration) -> Result<FloodAlone> {
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
    Ok(FloodAlone {
        bpf_ns_per_packet: bpf_ns,
        cpu_ns_per_packet: took.as_nanos() as f64 / sent.max(1) as f64,
        dropped_per_s: drops_after.saturating_sub(drops_before) as f64 / secs,
        seconds: secs,
        sent,
        sent_per_s: sent as f64 / secs,
    })
}

/// Packets the datapath has dropped: the drop counters on eBPF; netd's
/// DROP rules' counters on iptables.
fn dropped(h: &DaemonHost, ebpf: bool) -> Result<u64> {
    if ebpf {
        let status = netd::client::Client::new(h.socket()).status()?;
        let netd::api::DatapathStatus::Ebpf(ebpf) = status.datapath else {
            anyhow::bail!("the daemon is not on the eBPF datapath");
        };
        return Ok(ebpf.drops.values().sum());
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
