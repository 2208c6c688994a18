//! Attaching the programs: TC (TCX links, or clsact filters before 6.6)
//! on container veths and uplinks, XDP on uplinks, and the cgroup socket
//! hooks. With a pin directory every link is pinned and outlives the
//! daemon; a restart swaps the program inside the pinned link (no gap).

use std::{ffi::CString, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::{
    CgroupAttachMode, LinkOrder, TcAttachType,
    cgroup_sock_addr::CgroupSockAddrLink,
    links::{FdLink, Link as _, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttach, TcHandle},
    xdp::XdpMode as XdpAttachMode,
};
use netd_common::programs;

use super::{Datapath, pins::remove_pin, sock_hook, sys, xdp_program};
use crate::features::TcAttachMode;

/// How the XDP program runs on an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before any skb exists (veth, most physical NICs).
    Native,
    /// In the core, after the skb is built (any interface).
    Generic,
}

/// Which XDP mode to use (`auto`, `native`, `generic`, `off`): `auto` is
/// native on NICs whose driver has it, and none on virtual links (the
/// driver decides which, see `EbpfDriver::attach_xdp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpSetting {
    Auto,
    Native,
    Generic,
    /// No XDP program: `from_uplink` alone decides (the bench's TC-only).
    Off,
}

impl std::str::FromStr for XdpSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Self::Auto,
            "native" => Self::Native,
            "generic" => Self::Generic,
            "off" => Self::Off,
            _ => return Err(format!("{s:?}: expected auto, native, generic or off")),
        })
    }
}

/// Where netd's cls_bpf filters sit in a clsact qdisc (fallback attach):
/// fixed, so a restarted daemon finds its filters and swaps the program in
/// place. Priority 1 runs them before filters others may add.
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0x4e44); // "ND"

impl Datapath {
    /// Attaches `from_container` (ingress) to the host side of a container
    /// veth. `iface` is resolved in the calling thread's network namespace.
    ///
    /// A clsact filter on every kernel, not a TCX link: attaching a TCX link
    /// waits for two RCU grace periods and its removal with the device for
    /// one more, each holding the RTNL lock that every other link change
    /// then waits for (a container's create took ~25 ms instead of ~10, and
    /// a create right after a remove ~40). TCX's gains (ordering among
    /// several owners' programs) are for shared interfaces: these veths are
    /// netd's alone. Uplinks keep TCX where the kernel has it.
    pub fn attach_from_container(&mut self, iface: &str) -> Result<()> {
        // A TCX link an earlier version pinned goes first: both would run.
        if let Some(dir) = &self.pin_dir {
            remove_pin(&dir.join("links").join(iface))?;
        }
        if let Some(id) =
            self.attach_clsact(programs::FROM_CONTAINER, iface, TcAttachType::Ingress)?
        {
            self.container_links.insert(iface.to_owned(), id);
        }
        Ok(())
    }

    /// Detaches `from_container` from `iface` (a no-op if the device is gone).
    pub fn detach_from_container(&mut self, iface: &str) -> Result<()> {
        if let Some(id) = self.container_links.remove(iface) {
            let _ = self.classifier(programs::FROM_CONTAINER)?.detach(id);
        } else if self.pin_dir.is_some() {
            delete_clsact_filter(iface, TcAttachType::Ingress)?;
        }
        if let Some(dir) = &self.pin_dir {
            remove_pin(&dir.join("links").join(iface))?;
        }
        Ok(())
    }

    /// [`detach_from_container`](Self::detach_from_container) for a veth
    /// about to be deleted: its filter goes with it (deleting the filter
    /// first would be one more netlink change). Returns what is left to
    /// run: unpinning a TCX link an earlier version pinned, if any.
    pub fn detach_from_container_later(&mut self, iface: &str) -> Box<dyn FnOnce() + Send + Sync> {
        if let Some(id) = self.container_links.remove(iface)
            && let Ok(prog) = self.classifier(programs::FROM_CONTAINER)
        {
            let _ = prog.detach(id);
        }
        let Some(dir) = &self.pin_dir else {
            return Box::new(|| ());
        };
        let pin = dir.join("links").join(iface);
        Box::new(move || {
            if let Err(err) = remove_pin(&pin) {
                tracing::warn!(
                    err = format!("{err:#}"),
                    "unpinning a container's program link"
                );
            }
        })
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
            sys::detach_pinned_link(&pin)
                .with_context(|| format!("detaching {} from {iface}", programs::UPLINK_XDP))?;
            remove_pin(&pin)?;
        }
        Ok(())
    }

    /// Takes the programs off an interface that is no longer an uplink (or
    /// is gone): its pins (TCX) or its filters (clsact).
    pub fn detach_uplink(&mut self, iface: &str) -> Result<()> {
        self.detach_xdp(iface)?;
        if let Some(dir) = &self.pin_dir {
            for pin in [format!("uplink-in-{iface}"), format!("uplink-out-{iface}")] {
                remove_pin(&dir.join("links").join(pin))?;
            }
        }
        self.detach_clsact(iface, TcAttachType::Ingress)?;
        self.detach_clsact(iface, TcAttachType::Egress)
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
        // Replacing first: a restart does it on every container veth, with
        // one netlink request each.
        let id = match prog.attach_to_link(existing) {
            Ok(id) => id,
            // No filter of ours there yet (nor, on a new interface, a qdisc).
            Err(_) => {
                match tc::qdisc_add_clsact(name.as_c_str()) {
                    Err(tc::TcError::NetlinkError(err))
                        if err.raw_os_error() == Some(libc::EEXIST) => {}
                    other => other.with_context(|| format!("adding a clsact qdisc to {iface}"))?,
                }
                prog.attach(
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
                .with_context(context)?
            }
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

    /// Attaches the socket hooks (connect4, sendmsg4, recvmsg4, getpeername4)
    /// to the root of the cgroup v2 hierarchy, so they see every process.
    /// They act only on sockets of the namespace in `Config::netns_cookie`.
    pub fn attach_host_sockets(&mut self) -> Result<()> {
        let root = sys::cgroup2_root()?;
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
