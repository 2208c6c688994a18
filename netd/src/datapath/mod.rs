//! The embedded BPF object: loading it ([`Datapath`]), attaching its
//! programs (`attach`), its pins in bpffs (`pins`), and typed handles on
//! its maps (`maps`, one module per family).

mod attach;
mod logs;
pub mod maps;
mod pins;
mod sizes;
pub mod sys;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, Program, SchedClassifier, Xdp, tc::SchedClassifierLinkId},
};
use netd_common::{maps as defs, programs};

pub use attach::{XdpMode, XdpSetting};
pub use logs::{BpfLog, BpfLogs};
pub use maps::{DropEvents, MapFill, Maps};
pub use sizes::TableSizes;
pub use sys::monotonic_ns;

use crate::features::{Features, KernelFeatures, NetnsCookieSource, TcAttachMode};

/// The object built from `netd-ebpf` by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netd"));

/// A loaded copy of netd's BPF programs and maps.
pub struct Datapath {
    /// The programs, and the maps no family opened (the programs' own,
    /// the drop-event ring until its reader takes it).
    ebpf: Ebpf,
    /// Typed handles on the maps, by family.
    pub maps: Maps,
    /// With pins (the daemon), maps and links live in bpffs and outlive the
    /// process; without (tests), everything goes when `Datapath` drops.
    pin_dir: Option<PathBuf>,
    /// TCX links, or clsact filters where the kernel has no TCX.
    tc_mode: TcAttachMode,
    /// Unpinned `from_container` links by interface, for detaching.
    container_links: std::collections::HashMap<String, SchedClassifierLinkId>,
    /// Unpinned XDP links by interface (without a pin directory).
    xdp_links: std::collections::HashMap<String, aya::programs::xdp::XdpLinkId>,
    /// The BPF programs' log records, when `--bpf-log` enabled them.
    logger: Option<BpfLogs>,
    /// Pinned maps this run resized: their old copies, until every program
    /// uses the new ones.
    migrations: Vec<sizes::Migration>,
}

impl Datapath {
    /// Loads every program into the kernel (verifier included) with the best
    /// mechanisms this kernel has; attaches nothing.
    pub fn load() -> Result<Self> {
        Self::load_with(&Features::probe(KernelFeatures::Auto)?)
    }

    /// As `load`, with the mechanisms `features` chose.
    pub fn load_with(features: &Features) -> Result<Self> {
        Self::load_with_log(features, BpfLog::Off)
    }

    /// As `load_with`, with the BPF log statements up to `log` enabled.
    pub fn load_with_log(features: &Features, log: BpfLog) -> Result<Self> {
        Self::load_sized(features, log, &TableSizes::default())
    }

    /// As `load_with_log`, with the tables sized as `sizes` says.
    pub fn load_sized(features: &Features, log: BpfLog, sizes: &TableSizes) -> Result<Self> {
        sizes.check()?;
        let ebpf = loader(features, log, sizes)
            .load(BPF_OBJECT)
            .context("loading netd's BPF object")?;
        Self::load_programs(ebpf, None, features, log)
    }

    /// Loads with maps pinned under `dir/maps` (reusing pins a previous run
    /// left, so conntrack and all state carry over) and links pinned under
    /// `dir/links`. `dir` must be on a bpffs. A pinned table this run
    /// wants with another size (or kind) is replaced by a new one its
    /// entries are copied into (see `finish_migrations`).
    pub fn load_pinned(
        dir: &Path,
        features: &Features,
        log: BpfLog,
        sizes: &TableSizes,
    ) -> Result<Self> {
        sizes.check()?;
        let map_dir = dir.join("maps");
        std::fs::create_dir_all(&map_dir)
            .with_context(|| format!("creating {} (is bpffs mounted?)", map_dir.display()))?;
        std::fs::create_dir_all(dir.join("links"))?;
        let migrations = sizes::set_aside(&map_dir, sizes)?;
        let paths: Vec<(&str, PathBuf)> = defs::pinned()
            .map(|map| (map.name, map_dir.join(map.name)))
            .collect();
        let mut loader = loader(features, log, sizes);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(BPF_OBJECT).with_context(|| {
            format!(
                "loading netd's BPF object with maps pinned in {}",
                map_dir.display()
            )
        })?;
        let mut datapath = Self::load_programs(ebpf, Some(dir.to_owned()), features, log)?;
        // Before any new program runs: they start with every entry.
        for migration in &migrations {
            let carried = migration.copy(&map_dir)?;
            tracing::info!(
                map = migration.name(),
                copied = carried.copied,
                left_out = carried.left_out,
                "entries carried over to the resized table"
            );
        }
        datapath.migrations = migrations;
        Ok(datapath)
    }

    /// Once every program uses the resized tables: copies what the old
    /// programs added meanwhile and lets the old tables go. Returns what it
    /// finished, for the report.
    pub fn finish_migrations(&mut self) -> Result<Vec<String>> {
        let Some(dir) = self.pin_dir.as_ref().map(|d| d.join("maps")) else {
            return Ok(Vec::new());
        };
        let mut done = Vec::new();
        for migration in std::mem::take(&mut self.migrations) {
            let carried = migration.copy(&dir)?;
            let name = migration.name();
            migration.finish()?;
            let mut line = format!("table {name} resized");
            if carried.left_out > 0 {
                line += &format!(
                    " ({} entries did not fit and were dropped)",
                    carried.left_out
                );
            }
            done.push(line);
        }
        Ok(done)
    }

    fn load_programs(
        mut ebpf: Ebpf,
        pin_dir: Option<PathBuf>,
        features: &Features,
        log: BpfLog,
    ) -> Result<Self> {
        load_all(&mut ebpf)?;
        let logger = match log {
            BpfLog::Off => None,
            _ => Some(BpfLogs(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, logs::ToTracing)
                    .context("reading the BPF programs' logs")?,
            )),
        };
        let maps = Maps::open(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir,
            tc_mode: features.tc_attach.uses,
            container_links: Default::default(),
            xdp_links: Default::default(),
            logger,
            migrations: Vec::new(),
        })
    }

    /// The BPF programs' log records, if `--bpf-log` enabled them (once).
    pub fn take_logs(&mut self) -> Option<BpfLogs> {
        self.logger.take()
    }

    /// The drop-event ring buffer, for one reader (the daemon's monitor).
    pub fn take_drop_events(&mut self) -> Result<DropEvents> {
        DropEvents::take(&mut self.ebpf)
    }

    /// A loaded TC program, e.g. to run it through `BPF_PROG_TEST_RUN`.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, name)
    }

    /// The loaded XDP program, e.g. to run it through `BPF_PROG_TEST_RUN`.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf)
    }

    pub fn tc_mode(&self) -> TcAttachMode {
        self.tc_mode
    }

    /// The calling thread's network namespace cookie, by the means
    /// `features` chose: SO_NETNS_COOKIE (5.14+), or through the connect4
    /// hook, which must be attached (`attach_host_sockets`): a UDP connect()
    /// to the probe address makes it record the cookie for our socket.
    pub fn netns_cookie(&mut self, features: &Features) -> Result<u64> {
        if features.netns_cookie.uses == NetnsCookieSource::Sockopt {
            return sys::current_netns_cookie();
        }
        let socket =
            std::net::UdpSocket::bind("0.0.0.0:0").context("socket for the netns probe")?;
        let socket_cookie = sys::socket_cookie(&socket)?;
        let probe = std::net::SocketAddr::from((
            netd_common::NETNS_PROBE_IP,
            netd_common::NETNS_PROBE_PORT,
        ));
        // Fails without a route to TEST-NET-1; the hook has run by then.
        let _ = socket.connect(probe);
        self.maps
            .sockets
            .take_netns_probe(socket_cookie)
            .with_context(|| {
                format!(
                    "no network namespace cookie recorded for the probe connect to {probe} \
                     (is host_connect4 attached?)"
                )
            })
    }
}

/// A loader with the constants the programs read to pick their mechanisms
/// (dead branches are pruned by the verifier, so absent helpers never load).
fn loader(features: &Features, log: BpfLog, sizes: &TableSizes) -> EbpfLoader<'static> {
    static FLAG: [u8; 2] = [0, 1];
    static LEVELS: [u8; 6] = [0, 1, 2, 3, 4, 5];
    let mut loader = EbpfLoader::new();
    loader.override_global(
        "HAS_CHECK_MTU",
        &FLAG[usize::from(features.has_check_mtu())],
        true,
    );
    loader.override_global(
        "HAS_COARSE_CLOCK",
        &FLAG[usize::from(features.has_coarse_clock())],
        true,
    );
    // Frozen in .rodata: log statements above the level are pruned by the
    // verifier, so with logging off they cost nothing at all.
    loader.override_global(aya_log::LEVEL, &LEVELS[log as usize], true);
    sizes.apply(&mut loader);
    loader
}

/// Loads (the kernel verifies) every program netd attaches, each on its own
/// thread: privileged loads are verified in parallel, and verification is
/// most of a start (~450 ms one after another here for the three
/// classifiers).
fn load_all(ebpf: &mut Ebpf) -> Result<()> {
    // Missing programs and wrong types are reported first, by name.
    for &name in programs::CLASSIFIERS {
        classifier(ebpf, name)?;
    }
    for &name in programs::SOCK_HOOKS {
        sock_hook(ebpf, name)?;
    }
    xdp_program(ebpf)?;
    let used = |name: &str| {
        programs::CLASSIFIERS.contains(&name)
            || programs::SOCK_HOOKS.contains(&name)
            || name == programs::UPLINK_XDP
    };
    std::thread::scope(|scope| {
        let loads: Vec<_> = ebpf
            .programs_mut()
            .filter(|(name, _)| used(name))
            .map(|(name, program)| {
                scope.spawn(move || {
                    let loaded = match program {
                        Program::SchedClassifier(p) => p.load(),
                        Program::CgroupSockAddr(p) => p.load(),
                        Program::Xdp(p) => p.load(),
                        other => {
                            return Err(anyhow!(
                                "BPF program {name} has an unexpected type {:?}",
                                other.prog_type()
                            ));
                        }
                    };
                    loaded.with_context(|| format!("verifier rejected BPF program {name}"))
                })
            })
            .collect();
        loads.into_iter().try_for_each(|load| {
            load.join()
                .unwrap_or_else(|_| Err(anyhow!("loading the BPF programs: a thread panicked")))
        })
    })
}

fn sock_hook<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("BPF program {name} is not a cgroup sock_addr program"))
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let name = programs::UPLINK_XDP;
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("BPF program {name} is not an XDP program"))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("BPF program {name} is not a TC classifier"))
}
