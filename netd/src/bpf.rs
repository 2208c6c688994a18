//! The embedded BPF object: loading it, attaching its programs and reading
//! the counters it keeps.

use std::{
    ffi::CString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::features::{Features, KernelFeatures, NetnsCookieSource, TcAttachMode};
use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttach, TcHandle},
        xdp::XdpMode as XdpAttachMode,
    },
};
use netd_common::{
    Backend, Config, CtEntry, CtKey, DropReason, Endpoint, NETNS_PROBE_IP, NETNS_PROBE_PORT,
    NetworkInfo, PacketCounter, PortKey, RoutedKey, RuleKey, RuleVerdict, TrafficClass, UplinkInfo,
    maps, programs, routed_key, sizes,
};

/// How the XDP program runs on an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before any skb exists (veth, most physical NICs).
    Native,
    /// In the core, after the skb is built (any interface).
    Generic,
}

/// Which XDP mode to use: `auto` is native on NICs whose driver has it,
/// and none on virtual links (the driver decides which, see
/// `EbpfDriver::attach_xdp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpSetting {
    Auto,
    Native,
    Generic,
    /// No XDP program: `from_uplink` alone decides (the bench's TC-only).
    Off,
}

/// The object built from `netd-ebpf` by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netd"));

/// How full one map is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// The datapath's drop events as they are written (one reader).
pub struct DropEvents {
    ring: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
}

impl DropEvents {
    /// Waits for events, then returns every one waiting; `None` once the
    /// ring can no longer be polled.
    pub async fn next_batch(&mut self) -> Option<Vec<netd_common::DropEvent>> {
        let mut guard = self.ring.readable_mut().await.ok()?;
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if let Some(bytes) = item.get(..std::mem::size_of::<netd_common::DropEvent>()) {
                batch.push(bytemuck::pod_read_unaligned(bytes));
            }
        }
        guard.clear_ready();
        Some(batch)
    }
}

/// A loaded copy of netd's BPF programs and maps.
pub struct Datapath {
    ebpf: Ebpf,
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
    /// What `PUBLISHED_SCOPES` holds (this process is its only writer).
    published_scopes: u32,
}

/// Where netd's cls_bpf filters sit in a clsact qdisc (fallback attach):
/// fixed, so a restarted daemon finds its filters and swaps the program in
/// place. Priority 1 runs them before filters others may add.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0x4e44); // "ND"

/// Maps pinned under `<bpffs dir>/maps/`: the state that must survive a
/// daemon restart (connections included) and the counters.
const PINNED_MAPS: &[&str] = &[
    maps::CONFIG,
    maps::NETWORKS,
    maps::ENDPOINTS,
    maps::LOCAL_ADDRS,
    maps::PUBLISHED_PORTS,
    maps::PUBLISHED_SCOPES,
    maps::CONNTRACK,
    maps::SOCK_REVNAT,
    maps::UPLINKS,
    maps::DROP_EVENTS,
    maps::TRAFFIC_COUNTERS,
    maps::DROP_COUNTERS,
    maps::DROPS_BY_INTERFACE,
    maps::UPLINK_DROPS,
    maps::ROUTED_CIDRS,
    maps::USER_RULES,
];

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
        let ebpf = loader(features, log)
            .load(BPF_OBJECT)
            .context("loading netd's BPF object")?;
        Self::load_programs(ebpf, None, features, log)
    }

    /// Loads with maps pinned under `dir/maps` (reusing pins a previous run
    /// left, so conntrack and all state carry over) and links pinned under
    /// `dir/links`. `dir` must be on a bpffs.
    pub fn load_pinned(dir: &Path, features: &Features, log: BpfLog) -> Result<Self> {
        let map_dir = dir.join("maps");
        std::fs::create_dir_all(&map_dir)
            .with_context(|| format!("creating {} (is bpffs mounted?)", map_dir.display()))?;
        std::fs::create_dir_all(dir.join("links"))?;
        let paths: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|&name| (name, map_dir.join(name)))
            .collect();
        let mut loader = loader(features, log);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(BPF_OBJECT).with_context(|| {
            format!(
                "loading netd's BPF object with maps pinned in {}",
                map_dir.display()
            )
        })?;
        Self::load_programs(ebpf, Some(dir.to_owned()), features, log)
    }

    /// Unpins everything under `dir`: links detach, maps go with the last user.
    pub fn remove_pins(dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    fn load_programs(
        mut ebpf: Ebpf,
        pin_dir: Option<PathBuf>,
        features: &Features,
        log: BpfLog,
    ) -> Result<Self> {
        for &name in programs::CLASSIFIERS {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifier rejected BPF program {name}"))?;
        }
        for &name in programs::SOCK_HOOKS {
            sock_hook(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifier rejected BPF program {name}"))?;
        }
        xdp_program(&mut ebpf)?
            .load()
            .with_context(|| format!("verifier rejected BPF program {}", programs::UPLINK_XDP))?;
        let logger = match log {
            BpfLog::Off => None,
            _ => Some(BpfLogs(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing)
                    .context("reading the BPF programs' logs")?,
            )),
        };
        let mut datapath = Self {
            ebpf,
            pin_dir,
            tc_mode: features.tc_attach.uses,
            container_links: Default::default(),
            xdp_links: Default::default(),
            logger,
            published_scopes: 0,
        };
        // Before any program is attached: pinned ports from a previous run
        // (or from a version without the map) must be found at once.
        datapath.sync_published_scopes(true)?;
        Ok(datapath)
    }

    /// The BPF programs' log records, if `--bpf-log` enabled them (once).
    pub fn take_logs(&mut self) -> Option<BpfLogs> {
        self.logger.take()
    }

    /// A loaded TC program, e.g. to run it through `BPF_PROG_TEST_RUN`.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, name)
    }

    /// The loaded XDP program, e.g. to run it through `BPF_PROG_TEST_RUN`.
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf)
    }

    /// Attaches `from_container` (ingress) to the host side of a container
    /// veth. `iface` is resolved in the calling thread's network namespace.
    pub fn attach_from_container(&mut self, iface: &str) -> Result<()> {
        if let Some(id) = self.attach_tc(
            programs::FROM_CONTAINER,
            iface,
            TcAttachType::Ingress,
            iface,
        )? {
            self.container_links.insert(iface.to_owned(), id);
        }
        Ok(())
    }

    /// Detaches `from_container` from `iface` (a no-op if the device is gone).
    pub fn detach_from_container(&mut self, iface: &str) -> Result<()> {
        if let Some(id) = self.container_links.remove(iface) {
            let _ = self.classifier(programs::FROM_CONTAINER)?.detach(id);
        } else if self.pin_dir.is_some() {
            self.detach_clsact(iface, TcAttachType::Ingress)?;
        }
        if let Some(dir) = &self.pin_dir {
            match std::fs::remove_file(dir.join("links").join(iface)) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Attaches `from_uplink` (ingress) and `to_uplink` (egress) to an
    /// interface to the outside.
    pub fn attach_uplink(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(
            programs::FROM_UPLINK,
            iface,
            TcAttachType::Ingress,
            &format!("uplink-in-{iface}"),
        )?;
        self.attach_tc(
            programs::TO_UPLINK,
            iface,
            TcAttachType::Egress,
            &format!("uplink-out-{iface}"),
        )?;
        Ok(())
    }

    /// Attaches the XDP program to an uplink in the mode `setting` asks
    /// (auto: native); returns the mode. A previous run's link is replaced: XDP only drops early what
    /// `from_uplink` drops anyway, so the moment without it changes no
    /// verdict.
    pub fn attach_xdp(&mut self, iface: &str, setting: XdpSetting) -> Result<XdpMode> {
        self.detach_xdp(iface)?;
        let pin = self
            .pin_dir
            .as_ref()
            .map(|d| d.join("links").join(format!("uplink-xdp-{iface}")));
        let name = CString::new(iface).context("interface name contains NUL")?;
        let name = name.as_c_str();
        let prog = xdp_program(&mut self.ebpf)?;
        let context = || format!("attaching {} to {iface}", programs::UPLINK_XDP);
        let (id, mode) = match setting {
            XdpSetting::Generic => (prog.attach(name, XdpAttachMode::Skb), XdpMode::Generic),
            _ => (prog.attach(name, XdpAttachMode::Driver), XdpMode::Native),
        };
        let id = id.with_context(context)?;
        match pin {
            Some(pin) => FdLink::try_from(prog.take_link(id)?)
                .with_context(context)?
                .pin(pin)
                .map(drop)
                .with_context(context)?,
            None => {
                self.xdp_links.insert(iface.to_owned(), id);
            }
        }
        Ok(mode)
    }

    /// Whether the XDP link of `iface` is pinned (true without pins: the
    /// link is ours while we run).
    pub fn xdp_pinned(&self, iface: &str) -> bool {
        self.pin_dir
            .as_ref()
            .is_none_or(|d| d.join("links").join(format!("uplink-xdp-{iface}")).exists())
    }

    /// Takes the XDP program off `iface` (nothing to do where it is not).
    pub fn detach_xdp(&mut self, iface: &str) -> Result<()> {
        if let Some(id) = self.xdp_links.remove(iface) {
            let _ = xdp_program(&mut self.ebpf)?.detach(id);
        }
        if let Some(dir) = &self.pin_dir {
            let pin = dir.join("links").join(format!("uplink-xdp-{iface}"));
            // Unpinned, the link would leave the device only after an RCU
            // grace period and a work item, and a link attached meanwhile
            // (a restart, a mode change) would find the device busy.
            detach_pinned_link(&pin)
                .with_context(|| format!("detaching {} from {iface}", programs::UPLINK_XDP))?;
            match std::fs::remove_file(&pin) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Takes the programs off an interface that is no longer an uplink (or
    /// is gone): its pins (TCX) or its filters (clsact).
    pub fn detach_uplink(&mut self, iface: &str) -> Result<()> {
        self.detach_xdp(iface)?;
        if let Some(dir) = &self.pin_dir {
            for pin in [format!("uplink-in-{iface}"), format!("uplink-out-{iface}")] {
                match std::fs::remove_file(dir.join("links").join(pin)) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(err.into());
                    }
                    _ => {}
                }
            }
        }
        self.detach_clsact(iface, TcAttachType::Ingress)?;
        self.detach_clsact(iface, TcAttachType::Egress)
    }

    /// Names of the pinned links (TCX), from this run or before.
    fn link_pins(&self) -> Vec<String> {
        let Some(dir) = &self.pin_dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir.join("links")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Interfaces with pinned uplink links.
    pub fn pinned_uplinks(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .link_pins()
            .iter()
            .filter_map(|name| {
                name.strip_prefix("uplink-in-")
                    .or_else(|| name.strip_prefix("uplink-out-"))
                    .or_else(|| name.strip_prefix("uplink-xdp-"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Container veths with a pinned `from_container` link.
    pub fn pinned_container_links(&self) -> Vec<String> {
        self.link_pins()
            .into_iter()
            .filter(|n| !n.starts_with("uplink-") && !programs::SOCK_HOOKS.contains(&n.as_str()))
            .collect()
    }

    /// Removes pins of an older layout (`uplink-ingress`, `uplink-egress`).
    pub fn remove_legacy_uplink_pins(&mut self) -> Result<()> {
        if let Some(dir) = &self.pin_dir {
            for pin in ["uplink-ingress", "uplink-egress"] {
                match std::fs::remove_file(dir.join("links").join(pin)) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(err.into());
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn set_uplink(&mut self, ifindex: u32, info: UplinkInfo) -> Result<()> {
        self.hash_map::<u32, UplinkInfo>(maps::UPLINKS)?
            .insert(&ifindex, &info, 0)
            .with_context(|| format!("adding uplink {ifindex}"))
    }

    pub fn remove_uplink(&mut self, ifindex: u32) -> Result<()> {
        done_if_missing(
            self.hash_map::<u32, UplinkInfo>(maps::UPLINKS)?
                .remove(&ifindex),
        )
        .with_context(|| format!("removing uplink {ifindex}"))
    }

    pub fn uplinks(&self) -> Result<Vec<u32>> {
        self.keys::<u32, UplinkInfo>(maps::UPLINKS)
    }

    /// Attaches `program` through TCX or, without it, a clsact filter.
    /// Returns the link to detach later when this `Datapath` owns it (no
    /// pins), else None.
    fn attach_tc(
        &mut self,
        program: &str,
        iface: &str,
        direction: TcAttachType,
        pin_name: &str,
    ) -> Result<Option<SchedClassifierLinkId>> {
        // A daemon restarted in the other mode (--kernel-features changed)
        // first removes that mode's attachment: both would run otherwise.
        let pin = self
            .pin_dir
            .as_ref()
            .map(|d| d.join("links").join(pin_name));
        match self.tc_mode {
            TcAttachMode::Tcx => {
                if pin.as_ref().is_some_and(|p| !p.exists()) {
                    delete_clsact_filter(iface, direction)?;
                }
                self.attach_tcx(program, iface, direction, pin)
            }
            TcAttachMode::Clsact => {
                if let Some(pin) = pin.filter(|p| p.exists()) {
                    std::fs::remove_file(&pin)
                        .with_context(|| format!("removing {}", pin.display()))?;
                }
                self.attach_clsact(program, iface, direction)
            }
        }
    }

    /// TCX attach. With pins: replaces the program in a link a previous run
    /// pinned (atomically, no gap in traffic), or pins a new link; returns
    /// None. Without: the link stays owned by this `Datapath`.
    fn attach_tcx(
        &mut self,
        program: &str,
        iface: &str,
        direction: TcAttachType,
        pin: Option<PathBuf>,
    ) -> Result<Option<SchedClassifierLinkId>> {
        let prog = self.classifier(program)?;
        let context = || format!("attaching {program} to {iface} (tcx)");
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(pin).with_context(context)?;
            let link = SchedClassifierLink::try_from(FdLink::from(link)).with_context(context)?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    drop(prog.take_link(id)?); // closes our fd; the pin keeps the link
                    return Ok(None);
                }
                // The link's device is gone (an interface of the same name
                // was made again while netd was down): a fresh link below.
                Err(_) => std::fs::remove_file(pin).with_context(context)?,
            }
        }
        if let Some(dir) = pin.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir).with_context(context)?;
        }
        let name = CString::new(iface).context("interface name contains NUL")?;
        let id = prog
            .attach(
                name.as_c_str(),
                TcAttach::Tcx {
                    attach_type: direction,
                    order: LinkOrder::default(),
                },
            )
            .with_context(context)?;
        let Some(pin) = pin else { return Ok(Some(id)) };
        let link = FdLink::try_from(prog.take_link(id)?).with_context(context)?;
        link.pin(pin).with_context(context)?;
        Ok(None)
    }

    /// clsact attach (kernels without TCX). A filter a previous run left at
    /// netd's priority and handle gets the new program in place (one netlink
    /// change, no gap in traffic); else a new filter is created. The kernel
    /// keeps filters without pins, so with a pin directory the link is
    /// forgotten rather than detached when this `Datapath` goes.
    fn attach_clsact(
        &mut self,
        program: &str,
        iface: &str,
        direction: TcAttachType,
    ) -> Result<Option<SchedClassifierLinkId>> {
        let context = || format!("attaching {program} to {iface} (clsact)");
        let name = CString::new(iface).context("interface name contains NUL")?;
        match tc::qdisc_add_clsact(name.as_c_str()) {
            Err(tc::TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {}
            other => other.with_context(|| format!("adding a clsact qdisc to {iface}"))?,
        }
        let parent = TcHandle::from(direction);
        let pinned = self.pin_dir.is_some();
        let prog = self.classifier(program)?;
        let existing = SchedClassifierLink::attached(
            name.as_c_str(),
            parent,
            CLSACT_PRIORITY,
            CLSACT_HANDLE,
            None,
        )
        .with_context(context)?;
        let id = match prog.attach_to_link(existing) {
            Ok(id) => id,
            // No filter of ours there yet.
            Err(_) => prog
                .attach(
                    name.as_c_str(),
                    TcAttach::Netlink {
                        parent,
                        options: NlOptions {
                            priority: CLSACT_PRIORITY,
                            handle: CLSACT_HANDLE,
                            classid: None,
                        },
                    },
                )
                .with_context(context)?,
        };
        if !pinned {
            return Ok(Some(id));
        }
        // Dropping the link would delete the filter; it must outlive us.
        std::mem::forget(prog.take_link(id)?);
        Ok(None)
    }

    /// Deletes netd's clsact filter for `direction` on `iface`, if there is
    /// one (nothing to do on TCX, where unpinning detaches).
    fn detach_clsact(&mut self, iface: &str, direction: TcAttachType) -> Result<()> {
        if self.tc_mode != TcAttachMode::Clsact {
            return Ok(());
        }
        delete_clsact_filter(iface, direction)
    }

    pub fn tc_mode(&self) -> TcAttachMode {
        self.tc_mode
    }

    /// Puts back pins someone removed while the daemon runs (a removed link
    /// pin detaches its program): maps are pinned again, links attached
    /// again. `uplinks` are the interfaces that should carry the uplink
    /// programs (a container veth gets its program back from
    /// `attach_from_container`, which attaches where the pin is missing).
    /// Returns what it restored; nothing to do without pins.
    pub fn repair_pins(&mut self, uplinks: &[String]) -> Result<Vec<String>> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(Vec::new());
        };
        let mut restored = Vec::new();
        std::fs::create_dir_all(dir.join("maps"))?;
        std::fs::create_dir_all(dir.join("links"))?;
        for &name in PINNED_MAPS {
            let path = dir.join("maps").join(name);
            // The drop-event ring is the monitor's now; it has no Map here.
            if let (false, Some(map)) = (path.exists(), self.ebpf.map(name)) {
                map.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
                restored.push(format!("map pin {name}"));
            }
        }
        let links = dir.join("links");
        if programs::SOCK_HOOKS.iter().any(|h| !links.join(h).exists()) {
            self.attach_host_sockets()?;
            restored.push("socket hooks".to_owned());
        }
        if self.tc_mode == TcAttachMode::Tcx {
            for iface in uplinks {
                if !links.join(format!("uplink-in-{iface}")).exists()
                    || !links.join(format!("uplink-out-{iface}")).exists()
                {
                    self.attach_uplink(iface)?;
                    restored.push(format!("uplink programs on {iface}"));
                }
            }
        }
        Ok(restored)
    }

    /// Attaches the socket hooks (connect4, sendmsg4, recvmsg4, getpeername4)
    /// to the root of the cgroup v2 hierarchy, so they see every process.
    /// They act only on sockets of the namespace in `Config::netns_cookie`.
    pub fn attach_host_sockets(&mut self) -> Result<()> {
        let root = cgroup2_root()?;
        let cgroup =
            std::fs::File::open(&root).with_context(|| format!("opening cgroup {root}"))?;
        let pin_dir = self.pin_dir.clone();
        for &name in programs::SOCK_HOOKS {
            let prog = sock_hook(&mut self.ebpf, name)?;
            let context = || format!("attaching {name} to cgroup {root}");
            let pin = pin_dir.as_ref().map(|d| d.join("links").join(name));
            if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
                let link = PinnedLink::from_pin(pin).with_context(context)?;
                let link =
                    CgroupSockAddrLink::try_from(FdLink::from(link)).with_context(context)?;
                let id = prog.attach_to_link(link).with_context(context)?;
                drop(prog.take_link(id)?);
                continue;
            }
            // bpf_link attachments are always multi-attach; flags must be 0.
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(context)?;
            if let Some(pin) = pin {
                FdLink::try_from(prog.take_link(id)?)
                    .with_context(context)?
                    .pin(pin)
                    .with_context(context)?;
            }
        }
        Ok(())
    }

    /// The calling thread's network namespace cookie, by the means
    /// `features` chose: SO_NETNS_COOKIE (5.14+), or through the connect4
    /// hook, which must be attached (`attach_host_sockets`): a UDP connect()
    /// to the probe address makes it record the cookie for our socket.
    pub fn netns_cookie(&mut self, features: &Features) -> Result<u64> {
        if features.netns_cookie.uses == NetnsCookieSource::Sockopt {
            return current_netns_cookie();
        }
        let socket =
            std::net::UdpSocket::bind("0.0.0.0:0").context("socket for the netns probe")?;
        let socket_cookie =
            getsockopt_u64(&socket, libc::SO_COOKIE).context("getsockopt(SO_COOKIE)")?;
        let probe = std::net::SocketAddr::from((NETNS_PROBE_IP, NETNS_PROBE_PORT));
        // Fails without a route to TEST-NET-1; the hook has run by then.
        let _ = socket.connect(probe);
        let mut map = self.hash_map::<u64, u64>(maps::NETNS_PROBE)?;
        let cookie = map.get(&socket_cookie, 0).with_context(|| {
            format!(
                "no network namespace cookie recorded for the probe connect to {probe} \
                 (is host_connect4 attached?)"
            )
        })?;
        let _ = map.remove(&socket_cookie);
        Ok(cookie)
    }

    pub fn set_config(&mut self, config: Config) -> Result<()> {
        let mut map: Array<_, Config> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        map.set(0, &config, 0).context("writing CONFIG")
    }

    /// The configuration in the map (a previous run's, after a restart).
    pub fn config(&self) -> Result<Config> {
        let map = self
            .ebpf
            .map(maps::CONFIG)
            .ok_or_else(|| anyhow!("CONFIG missing"))?;
        let map: Array<_, Config> = Array::try_from(map)?;
        map.get(&0, 0).context("reading CONFIG")
    }

    /// Makes `USER_RULES` hold exactly `entries` (changed and new entries
    /// first, then the ones no longer wanted).
    pub fn sync_user_rules(
        &mut self,
        entries: &std::collections::BTreeMap<(RuleKey, u32), RuleVerdict>,
    ) -> Result<()> {
        let mut map: LpmTrie<_, RuleKey, RuleVerdict> =
            LpmTrie::try_from(self.map_mut(maps::USER_RULES)?)?;
        let present: Vec<(RuleKey, u32)> = map
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.data(), k.prefix_len()))
            .collect();
        for (&(data, len), verdict) in entries {
            let key = Key::new(len, data);
            if map.get(&key, 0).ok().as_ref() != Some(verdict) {
                map.insert(&key, verdict, 0)
                    .context("writing a user rule (USER_RULES full?)")?;
            }
        }
        for (data, len) in present {
            if !entries.contains_key(&(data, len)) {
                done_if_missing(map.remove(&Key::new(len, data)))
                    .context("removing a user rule")?;
            }
        }
        Ok(())
    }

    /// Registers a network's subnet (`prefix_len` bits of `subnet`).
    pub fn insert_network(
        &mut self,
        subnet: Ipv4Addr,
        prefix_len: u8,
        info: NetworkInfo,
    ) -> Result<()> {
        let mut map: LpmTrie<_, [u8; 4], NetworkInfo> =
            LpmTrie::try_from(self.map_mut(maps::NETWORKS)?)?;
        map.insert(&Key::new(u32::from(prefix_len), subnet.octets()), &info, 0)
            .with_context(|| format!("adding network {subnet}/{prefix_len}"))
    }

    pub fn remove_network(&mut self, subnet: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let mut map: LpmTrie<_, [u8; 4], NetworkInfo> =
            LpmTrie::try_from(self.map_mut(maps::NETWORKS)?)?;
        done_if_missing(map.remove(&Key::new(u32::from(prefix_len), subnet.octets())))
            .with_context(|| format!("removing network {subnet}/{prefix_len}"))
    }

    pub fn insert_endpoint(&mut self, ip: Ipv4Addr, endpoint: Endpoint) -> Result<()> {
        self.hash_map::<[u8; 4], Endpoint>(maps::ENDPOINTS)?
            .insert(&ip.octets(), &endpoint, 0)
            .with_context(|| format!("adding endpoint {ip}"))
    }

    /// Removes an endpoint and every connection it took part in, so a
    /// container re-created on the same address starts clean.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        done_if_missing(
            self.hash_map::<[u8; 4], Endpoint>(maps::ENDPOINTS)?
                .remove(&ip.octets()),
        )
        .with_context(|| format!("removing endpoint {ip}"))?;
        let ip = ip.octets();
        self.conntrack_flush(|key, entry| {
            [key.src, key.dst, entry.xlat.src, entry.xlat.dst].contains(&ip)
        })?;
        Ok(())
    }

    pub fn insert_local_addr(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.hash_map::<[u8; 4], u32>(maps::LOCAL_ADDRS)?
            .insert(&ip.octets(), &1, 0)
            .with_context(|| format!("adding local address {ip}"))
    }

    pub fn remove_local_addr(&mut self, ip: Ipv4Addr) -> Result<()> {
        done_if_missing(
            self.hash_map::<[u8; 4], u32>(maps::LOCAL_ADDRS)?
                .remove(&ip.octets()),
        )
        .with_context(|| format!("removing local address {ip}"))
    }

    pub fn publish(&mut self, key: PortKey, backend: Backend) -> Result<()> {
        // The scope first: the programs must look for the key once it is in.
        if self.published_scopes & key.scope() == 0 {
            self.write_published_scopes(self.published_scopes | key.scope())?;
        }
        self.hash_map::<PortKey, Backend>(maps::PUBLISHED_PORTS)?
            .insert(&key, &backend, 0)
            .context("publishing port")
    }

    /// The scopes of the published ports (`PUBLISHED_ON_*` bits), as the
    /// programs see them.
    pub fn published_scopes(&self) -> u32 {
        self.published_scopes
    }

    /// Sets `PUBLISHED_SCOPES` from the ports published now: after ports
    /// went, a scope with none left is no longer looked up.
    fn sync_published_scopes(&mut self, force: bool) -> Result<()> {
        let map = self
            .ebpf
            .map(maps::PUBLISHED_PORTS)
            .ok_or_else(|| anyhow!("BPF map {} missing", maps::PUBLISHED_PORTS))?;
        let ports: HashMap<_, PortKey, Backend> = HashMap::try_from(map)?;
        let mut scopes = 0;
        // Every key, or an error: a key missed would clear a scope in use.
        for key in ports.keys() {
            scopes |= key.context("reading the published ports")?.scope();
        }
        if force || scopes != self.published_scopes {
            self.write_published_scopes(scopes)?;
        }
        Ok(())
    }

    fn write_published_scopes(&mut self, scopes: u32) -> Result<()> {
        let map = self.map_mut(maps::PUBLISHED_SCOPES)?;
        aya::maps::Array::<_, u32>::try_from(map)?
            .set(0, &scopes, 0)
            .context("writing the published ports' scopes")?;
        self.published_scopes = scopes;
        Ok(())
    }

    /// Unpublishes ports and forgets the connections made through them
    /// (one conntrack walk for all of them).
    pub fn unpublish_all(&mut self, keys: &[PortKey]) -> Result<()> {
        let mut published = self.hash_map::<PortKey, Backend>(maps::PUBLISHED_PORTS)?;
        for key in keys {
            done_if_missing(published.remove(key)).context("unpublishing port")?;
        }
        self.sync_published_scopes(false)?;
        let keys: std::collections::HashSet<PortKey> = keys.iter().copied().collect();
        self.conntrack_flush(|k, entry| {
            let through_port = |t: &CtKey| {
                let exact = PortKey {
                    host_ip: t.dst,
                    port: t.dst_port,
                    proto: t.proto,
                    _pad: 0,
                };
                keys.contains(&exact)
                    || keys.contains(&PortKey {
                        host_ip: [0; 4],
                        ..exact
                    })
            };
            (entry.flags & netd_common::CT_DNAT != 0)
                && (through_port(k) || through_port(&entry.xlat.reversed()))
        })?;
        Ok(())
    }

    /// Unpublishes a port and forgets the connections made through it.
    pub fn unpublish(&mut self, key: PortKey) -> Result<()> {
        self.unpublish_all(&[key])
    }

    /// Keys of the user-filled maps, for reconciling them with the state.
    pub fn networks(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        let map = self
            .ebpf
            .map(maps::NETWORKS)
            .ok_or_else(|| anyhow!("NETWORKS missing"))?;
        let map: LpmTrie<_, [u8; 4], NetworkInfo> = LpmTrie::try_from(map)?;
        Ok(map
            .keys()
            .filter_map(Result::ok)
            .map(|k| (Ipv4Addr::from(k.data()), k.prefix_len() as u8))
            .collect())
    }

    /// `(network ID, CIDR)` of every routed CIDR in the map.
    pub fn routed_cidrs(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let map = self
            .ebpf
            .map(maps::ROUTED_CIDRS)
            .ok_or_else(|| anyhow!("ROUTED_CIDRS missing"))?;
        let map: LpmTrie<_, RoutedKey, u8> = LpmTrie::try_from(map)?;
        Ok(map
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                let d = k.data();
                (
                    u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                    Ipv4Addr::new(d[4], d[5], d[6], d[7]),
                    (k.prefix_len() - 32) as u8,
                )
            })
            .collect())
    }

    /// Routes `cidr` without NAT for network `network_id` (both ways).
    pub fn insert_routed_cidr(
        &mut self,
        network_id: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        let mut map: LpmTrie<_, RoutedKey, u8> =
            LpmTrie::try_from(self.map_mut(maps::ROUTED_CIDRS)?)?;
        map.insert(&routed_trie_key(network_id, addr, prefix_len), &1, 0)
            .with_context(|| format!("adding routed CIDR {addr}/{prefix_len}"))
    }

    pub fn remove_routed_cidr(
        &mut self,
        network_id: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        let mut map: LpmTrie<_, RoutedKey, u8> =
            LpmTrie::try_from(self.map_mut(maps::ROUTED_CIDRS)?)?;
        done_if_missing(map.remove(&routed_trie_key(network_id, addr, prefix_len)))
            .with_context(|| format!("removing routed CIDR {addr}/{prefix_len}"))
    }

    pub fn endpoint_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        self.keys::<[u8; 4], Endpoint>(maps::ENDPOINTS)
            .map(|keys| keys.into_iter().map(Ipv4Addr::from).collect())
    }

    pub fn local_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        self.keys::<[u8; 4], u32>(maps::LOCAL_ADDRS)
            .map(|keys| keys.into_iter().map(Ipv4Addr::from).collect())
    }

    pub fn published_ports(&self) -> Result<Vec<PortKey>> {
        self.keys::<PortKey, Backend>(maps::PUBLISHED_PORTS)
    }

    fn keys<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<Vec<K>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("BPF map {name} missing"))?;
        let map: HashMap<_, K, V> = HashMap::try_from(map)?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }

    /// Every conntrack entry (both directions of each connection).
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let map = self
            .ebpf
            .map(maps::CONNTRACK)
            .ok_or_else(|| anyhow!("CONNTRACK missing"))?;
        let map: HashMap<_, CtKey, CtEntry> = HashMap::try_from(map)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Deletes both entries of every connection one of whose entries matches.
    /// Returns how many entries were deleted.
    pub fn conntrack_flush(&mut self, matches: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
        let doomed: Vec<CtKey> = self
            .conntrack_entries()?
            .into_iter()
            .filter(|(key, entry)| matches(key, entry))
            .flat_map(|(key, entry)| [key, entry.xlat.reversed()])
            .collect();
        let mut map: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK)?)?;
        Ok(doomed.iter().filter(|key| map.remove(key).is_ok()).count())
    }

    /// Removes connections whose entries have both expired at `now_ns`
    /// (CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns).
    pub fn conntrack_gc(&mut self, now_ns: u64) -> Result<usize> {
        let expired = self.expired_connections(now_ns)?;
        self.remove_if_expired(&expired, now_ns)
    }

    /// The connections (entry key, peer entry key) whose entries have both
    /// expired at `now_ns`, each once: the first half of a GC pass.
    pub fn expired_connections(&self, now_ns: u64) -> Result<Vec<(CtKey, CtKey)>> {
        let entries: std::collections::HashMap<CtKey, CtEntry> =
            self.conntrack_entries()?.into_iter().collect();
        let expired = |key: &CtKey| entries.get(key).is_none_or(|e| e.expires_ns <= now_ns);
        let mut seen = std::collections::HashSet::new();
        Ok(entries
            .iter()
            .map(|(key, entry)| (*key, entry.xlat.reversed()))
            .filter(|(key, peer)| expired(key) && expired(peer))
            .filter(|(key, peer)| seen.insert(*key) && seen.insert(*peer))
            .collect())
    }

    /// The second half of a GC pass: deletes each connection whose entries
    /// are still expired now. The re-read matters: between the snapshot and
    /// the delete, a new connection may have reused the tuple (a client
    /// reusing a port from TIME_WAIT), and its fresh entries must stay.
    pub fn remove_if_expired(
        &mut self,
        connections: &[(CtKey, CtKey)],
        now_ns: u64,
    ) -> Result<usize> {
        let mut map: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK)?)?;
        let mut removed = 0;
        for (key, peer) in connections {
            let expired = |k: &CtKey| map.get(k, 0).map_or(true, |e| e.expires_ns <= now_ns);
            if expired(key) && expired(peer) {
                removed += [key, peer].iter().filter(|k| map.remove(k).is_ok()).count();
            }
        }
        Ok(removed)
    }

    /// The drop-event ring buffer, for one reader (the daemon's monitor).
    pub fn take_drop_events(&mut self) -> Result<DropEvents> {
        let map = self
            .ebpf
            .take_map(maps::DROP_EVENTS)
            .ok_or_else(|| anyhow!("DROP_EVENTS already taken"))?;
        let ring = RingBuf::try_from(map).context("DROP_EVENTS is not a ring buffer")?;
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd lives.
        let ring =
            unsafe { tokio::io::unix::AsyncFd::register(ring) }.context("polling DROP_EVENTS")?;
        Ok(DropEvents { ring })
    }

    /// Entries in use / capacity for each user-filled map and conntrack.
    pub fn fill_levels(&self) -> Result<Vec<MapFill>> {
        let count = |name: &str| -> Result<usize> {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| anyhow!("BPF map {name} missing"))?;
            Ok(match name {
                maps::NETWORKS => LpmTrie::<_, [u8; 4], NetworkInfo>::try_from(map)?
                    .keys()
                    .count(),
                maps::ENDPOINTS => HashMap::<_, [u8; 4], Endpoint>::try_from(map)?
                    .keys()
                    .count(),
                maps::LOCAL_ADDRS => HashMap::<_, [u8; 4], u32>::try_from(map)?.keys().count(),
                maps::PUBLISHED_PORTS => HashMap::<_, PortKey, Backend>::try_from(map)?
                    .keys()
                    .count(),
                _ => HashMap::<_, CtKey, CtEntry>::try_from(map)?.keys().count(),
            })
        };
        [
            (maps::NETWORKS, sizes::NETWORKS),
            (maps::ENDPOINTS, sizes::ENDPOINTS),
            (maps::LOCAL_ADDRS, sizes::LOCAL_ADDRS),
            (maps::PUBLISHED_PORTS, sizes::PUBLISHED_PORTS),
            (maps::CONNTRACK, sizes::CONNTRACK),
        ]
        .into_iter()
        .map(|(name, capacity)| {
            Ok(MapFill {
                name,
                entries: count(name)?,
                capacity,
            })
        })
        .collect()
    }

    /// Packets and bytes per traffic class, summed over CPUs.
    pub fn traffic_counters(&self) -> Result<Vec<(TrafficClass, PacketCounter)>> {
        TrafficClass::ALL
            .iter()
            .map(|&class| Ok((class, self.traffic_count(class)?)))
            .collect()
    }

    /// Packets and bytes of one traffic class, summed over CPUs.
    pub fn traffic_count(&self, class: TrafficClass) -> Result<PacketCounter> {
        let map: PerCpuArray<_, PacketCounter> = self.per_cpu_array(maps::TRAFFIC_COUNTERS)?;
        let mut total = PacketCounter::default();
        for cpu in map.get(&(class as u32), 0)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Dropped packets for one reason, summed over CPUs.
    pub fn drop_count(&self, reason: DropReason) -> Result<u64> {
        let map: PerCpuArray<_, u64> = self.per_cpu_array(maps::DROP_COUNTERS)?;
        Ok(map.get(&(reason as u32), 0)?.iter().sum())
    }

    /// Dropped packets per reason, summed over CPUs.
    pub fn drop_counters(&self) -> Result<Vec<(DropReason, u64)>> {
        let map: PerCpuArray<_, u64> = self.per_cpu_array(maps::DROP_COUNTERS)?;
        DropReason::ALL
            .iter()
            .map(|&reason| Ok((reason, map.get(&(reason as u32), 0)?.iter().sum())))
            .collect()
    }

    /// Drops by (interface index, reason), summed over the CPUs and over
    /// the two maps that count them (the uplinks' slots and the hash).
    pub fn drops_by_interface(&self) -> Result<Vec<(u32, DropReason, u64)>> {
        let map = self
            .ebpf
            .map(maps::DROPS_BY_INTERFACE)
            .ok_or_else(|| anyhow!("BPF map {} missing", maps::DROPS_BY_INTERFACE))?;
        let map: aya::maps::PerCpuHashMap<_, netd_common::DropKey, u64> =
            aya::maps::PerCpuHashMap::try_from(map)?;
        let mut counts: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
        for entry in map.iter() {
            let (key, values) = entry?;
            *counts.entry((key.ifindex, key.reason)).or_default() += values.iter().sum::<u64>();
        }
        let slots: PerCpuArray<_, netd_common::InterfaceDrops> =
            self.per_cpu_array(maps::UPLINK_DROPS)?;
        for slot in 0..sizes::UPLINK_DROP_SLOTS {
            for cpu in slots.get(&slot, 0)?.iter() {
                if cpu.ifindex == 0 {
                    continue;
                }
                for (reason, &n) in cpu.by_reason.iter().enumerate() {
                    if n > 0 {
                        *counts.entry((cpu.ifindex, reason as u32)).or_default() += n;
                    }
                }
            }
        }
        Ok(counts
            .into_iter()
            .filter_map(|((ifindex, reason), n)| {
                DropReason::from_u32(reason).map(|reason| (ifindex, reason, n))
            })
            .collect())
    }

    /// Frees the slots of `UPLINK_DROPS` held by interfaces not in
    /// `uplinks` (an uplink that went, or whose index changed), so the next
    /// uplink that maps there counts in the array, not in the hash. Their
    /// counts move to `DROPS_BY_INTERFACE` first: the interface's totals
    /// stay. Returns how many (slot, CPU) entries were freed.
    ///
    /// A slot is written for every CPU at once: a drop counted on another
    /// CPU by another uplink sharing the slot, between the read and the
    /// write, is lost (counts only, never a verdict).
    pub fn free_uplink_drop_slots(&mut self, uplinks: &[u32]) -> Result<usize> {
        let stale =
            |cpu: &netd_common::InterfaceDrops| cpu.ifindex != 0 && !uplinks.contains(&cpu.ifindex);
        let mut freed = 0;
        for slot in 0..sizes::UPLINK_DROP_SLOTS {
            let per_cpu: Vec<netd_common::InterfaceDrops> = self
                .per_cpu_array(maps::UPLINK_DROPS)?
                .get(&slot, 0)?
                .to_vec();
            if !per_cpu.iter().any(stale) {
                continue;
            }
            self.add_to_drops_by_interface(&per_cpu, stale)?;
            let kept: Vec<_> = per_cpu
                .iter()
                .map(|cpu| if stale(cpu) { Default::default() } else { *cpu })
                .collect();
            freed += per_cpu.iter().filter(|cpu| stale(cpu)).count();
            let mut slots: PerCpuArray<_, netd_common::InterfaceDrops> =
                PerCpuArray::try_from(self.map_mut(maps::UPLINK_DROPS)?)?;
            slots
                .set(slot, aya::maps::PerCpuValues::try_from(kept)?, 0)
                .with_context(|| format!("freeing slot {slot} of {}", maps::UPLINK_DROPS))?;
        }
        Ok(freed)
    }

    /// Adds the counts of the per-CPU entries of one `UPLINK_DROPS` slot
    /// that `moved` selects to `DROPS_BY_INTERFACE`, CPU by CPU.
    fn add_to_drops_by_interface(
        &mut self,
        per_cpu: &[netd_common::InterfaceDrops],
        moved: impl Fn(&netd_common::InterfaceDrops) -> bool,
    ) -> Result<()> {
        let mut hash: aya::maps::PerCpuHashMap<_, netd_common::DropKey, u64> =
            aya::maps::PerCpuHashMap::try_from(self.map_mut(maps::DROPS_BY_INTERFACE)?)?;
        let mut additions: std::collections::BTreeMap<(u32, u32), Vec<u64>> = Default::default();
        for (cpu, entry) in per_cpu.iter().enumerate() {
            if !moved(entry) {
                continue;
            }
            for (reason, &n) in entry.by_reason.iter().enumerate() {
                if n > 0 {
                    additions
                        .entry((entry.ifindex, reason as u32))
                        .or_insert_with(|| vec![0; per_cpu.len()])[cpu] += n;
                }
            }
        }
        for ((ifindex, reason), added) in additions {
            let key = netd_common::DropKey { ifindex, reason };
            let mut total = match hash.get(&key, 0) {
                Ok(values) => values.to_vec(),
                Err(aya::maps::MapError::KeyNotFound) => vec![0; added.len()],
                Err(err) => return Err(err).context("reading DROPS_BY_INTERFACE"),
            };
            for (sum, n) in total.iter_mut().zip(&added) {
                *sum += n;
            }
            hash.insert(&key, aya::maps::PerCpuValues::try_from(total)?, 0)
                .with_context(|| format!("moving if{ifindex}'s drops to DROPS_BY_INTERFACE"))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("BPF map {name} missing"))
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        HashMap::try_from(self.map_mut(name)?)
            .with_context(|| format!("BPF map {name} has an unexpected type"))
    }

    fn per_cpu_array<V: aya::Pod>(
        &self,
        name: &str,
    ) -> Result<PerCpuArray<&aya::maps::MapData, V>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("BPF map {name} missing"))?;
        PerCpuArray::try_from(map).with_context(|| format!("BPF map {name} has an unexpected type"))
    }
}

/// A loader with the constants the programs read to pick their mechanisms
/// (dead branches are pruned by the verifier, so absent helpers never load).
fn loader(features: &Features, log: BpfLog) -> EbpfLoader<'static> {
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
    loader
}

/// Which of the BPF programs' log statements run (`netd daemon --bpf-log`);
/// each level includes those before it. Off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfLog {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    /// One line per dropped packet.
    Debug = 4,
    /// And one per packet sent by the fast path.
    Trace = 5,
}

/// The BPF programs' log records as they come, for the daemon to forward.
pub struct BpfLogs(aya_log::EbpfLogger<ToTracing>);

impl BpfLogs {
    /// Forwards every record to the daemon's log until the task is dropped.
    pub async fn forward(self) {
        // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
        let Ok(mut fd) = (unsafe { tokio::io::unix::AsyncFd::register(self.0) }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

/// aya-log's records as tracing events under `netd::bpf`, at the daemon's
/// info level: the BPF side already filtered them by `--bpf-log`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(
            target: "netd::bpf",
            bpf_level = %record.level(),
            program = record.module_path().unwrap_or(""),
            "{}",
            record.args()
        );
    }

    fn flush(&self) {}
}

fn sock_hook<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("BPF program {name} is not a cgroup sock_addr program"))
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on unified
/// systems, /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_root() -> Result<String> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| dir.to_owned())
        })
        .ok_or_else(|| {
            anyhow!(
                "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)"
            )
        })
}

/// The calling thread's network namespace cookie (SO_NETNS_COOKIE, 5.14+).
pub fn current_netns_cookie() -> Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("socket for SO_NETNS_COOKIE")?;
    getsockopt_u64(&socket, libc::SO_NETNS_COOKIE).context("getsockopt(SO_NETNS_COOKIE)")
}

fn getsockopt_u64(socket: &impl std::os::fd::AsRawFd, option: libc::c_int) -> std::io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket and buffer of the advertised length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

/// Detaches the link pinned at `pin` from its hook now (`BPF_LINK_DETACH`,
/// Linux 5.9, as old as XDP links); nothing to do if there is no pin.
fn detach_pinned_link(pin: &Path) -> Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = match CString::new(pin.as_os_str().as_encoded_bytes()) {
        Ok(path) => path,
        Err(_) => anyhow::bail!("{} contains NUL", pin.display()),
    };
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut attr = [0u64; 4];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr outlives the call and is as large as the kernel reads.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 32usize) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::NotFound {
            return Ok(());
        }
        return Err(err).with_context(|| format!("opening {}", pin.display()));
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // union bpf_attr for BPF_LINK_DETACH: link_fd.
    let mut attr = [0u64; 4];
    attr[0] = std::os::fd::AsRawFd::as_raw_fd(&link) as u64;
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 32usize) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("BPF_LINK_DETACH of {}", pin.display()));
    }
    Ok(())
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

/// CLOCK_MONOTONIC in nanoseconds: the clock conntrack expiry is kept in.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux.
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// A map delete that finds the key gone has nothing left to do: removals
/// must be repeatable after a crash or a partial failure.
fn done_if_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(err))
            if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Deletes netd's cls_bpf filter for `direction` on `iface`; done already
/// when the filter, its clsact qdisc or the device is gone.
fn delete_clsact_filter(iface: &str, direction: TcAttachType) -> Result<()> {
    let name = CString::new(iface).context("interface name contains NUL")?;
    let Ok(link) = SchedClassifierLink::attached(
        name.as_c_str(),
        TcHandle::from(direction),
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    ) else {
        return Ok(()); // the interface is gone, and its filters with it
    };
    match link.detach() {
        Ok(()) => Ok(()),
        Err(err) if is_gone(&err) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("detaching netd's filter from {iface}")),
    }
}

/// ENOENT/ENODEV from netlink: the filter or its device is already gone
/// (EINVAL: there is no clsact qdisc to hold it).
fn is_gone(err: &aya::programs::ProgramError) -> bool {
    use aya::programs::ProgramError;
    let errno = match err {
        ProgramError::NetlinkError(err) => err.raw_os_error(),
        ProgramError::TcError(tc::TcError::NetlinkError(err)) => err.raw_os_error(),
        _ => None,
    };
    matches!(errno, Some(libc::ENOENT | libc::ENODEV | libc::EINVAL))
}

/// The `ROUTED_CIDRS` key of `addr/prefix_len` for network `network_id`:
/// the network's 32 bits always match, then the CIDR's.
fn routed_trie_key(network_id: u32, addr: Ipv4Addr, prefix_len: u8) -> Key<RoutedKey> {
    Key::new(
        32 + u32::from(prefix_len),
        routed_key(network_id, addr.octets()),
    )
}
