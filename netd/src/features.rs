//! What this kernel offers netd's datapath, probed at start, and what netd
//! uses for each mechanism: the modern one where the kernel has it, a
//! fallback where it does not. Verdicts are the same either way; only how
//! programs attach, how the fast path checks sizes and which clock the
//! programs read differ.
//!
//! | mechanism | modern (kernel) | fallback |
//! |---|---|---|
//! | TC attach | TCX links (6.6) | clsact qdisc + cls_bpf filters (netlink) |
//! | fast-path MTU check | `bpf_check_mtu` (5.12) | own length check against the uplink MTU; GSO packets take the stack |
//! | the namespace's cookie | `SO_NETNS_COOKIE` (5.14) | a UDP connect() the connect4 hook records |
//! | the programs' clock | `bpf_ktime_get_coarse_ns` (5.11) | `bpf_ktime_get_ns` |
//!
//! Everything else netd needs is in 5.10, the oldest kernel it supports
//! (ring buffer 5.8, cgroup sock_addr getpeername 5.8, bpf_redirect_peer
//! and bpf_redirect_neigh 5.10); the probes say clearly when one is missing.

use std::fmt;

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};
use serde::{Deserialize, Serialize};

/// Which mechanisms the daemon may use (`netd daemon --kernel-features`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelFeatures {
    /// The best this kernel offers.
    #[default]
    Auto,
    /// Only what Linux 5.10 has, even on a newer kernel: the fallbacks run
    /// (and are tested) on any machine.
    Legacy,
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttachMode {
    /// bpf_link based, ordered, pinnable (6.6+).
    Tcx,
    /// A clsact qdisc with cls_bpf filters in direct-action mode, through
    /// netlink; the filters outlive the daemon without pins.
    Clsact,
}

/// How the fast path keeps oversized packets on the kernel's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtuCheck {
    /// `bpf_check_mtu` (5.12+): exact, GSO packets checked per segment.
    CheckMtuHelper,
    /// The packet's length against the uplink's MTU; GSO packets take the
    /// stack.
    UplinkMtuLength,
}

/// How the daemon learns its network namespace's cookie (the socket hooks
/// act only on sockets of that namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetnsCookieSource {
    /// getsockopt(SO_NETNS_COOKIE) (5.14+).
    Sockopt,
    /// A UDP connect() the connect4 hook records (see `NETNS_PROBE_IP`).
    ConnectProbe,
}

/// Which clock the programs read for conntrack expiry and the drop-event
/// budget (CLOCK_MONOTONIC either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSource {
    /// `bpf_ktime_get_coarse_ns` (5.11+): tick resolution, no timer read.
    Coarse,
    /// `bpf_ktime_get_ns`: exact, reads the timer on every call.
    Exact,
}

/// One choice and the reason for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice<T> {
    pub uses: T,
    pub why: String,
}

impl<T> Choice<T> {
    /// `modern` where the probe said yes (and legacy mode did not forbid
    /// it), else `fallback`; with the probe's reason.
    fn of((modern_ok, why): (bool, String), modern: T, fallback: T) -> Self {
        let uses = if modern_ok { modern } else { fallback };
        Self { uses, why }
    }
}

/// The probe results and what netd chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub kernel: String,
    pub tc_attach: Choice<TcAttachMode>,
    pub mtu_check: Choice<MtuCheck>,
    pub netns_cookie: Choice<NetnsCookieSource>,
    pub clock: Choice<ClockSource>,
    /// Probed only to say clearly why a start fails: netd needs them all.
    pub ring_buffer: bool,
    pub sock_addr_hooks: bool,
}

impl Features {
    /// Probes this kernel; `wanted` may force the fallbacks.
    pub fn probe(wanted: KernelFeatures) -> Result<Self> {
        let version = KernelVersion::current().ok();
        let kernel = version.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
        // TCX has no cheap side-effect-free probe; aya attaches through it
        // from 6.6 on, and so do we.
        let has_tcx = version.is_some_and(|v| v >= KernelVersion::new(6, 6, 0));
        let has_check_mtu =
            is_helper_supported(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_check_mtu)
                .unwrap_or(false);
        let legacy = wanted == KernelFeatures::Legacy;
        let choose = |has: bool, what: &str, since: &str| -> (bool, String) {
            match (has, legacy) {
                (true, false) => (true, format!("the kernel has {what} ({since}+)")),
                (true, true) => (false, "forced by --kernel-features legacy".to_owned()),
                (false, _) => (
                    false,
                    format!("kernel {kernel} has no {what} (needs {since})"),
                ),
            }
        };
        let tc_attach = Choice::of(
            choose(has_tcx, "TCX", "6.6"),
            TcAttachMode::Tcx,
            TcAttachMode::Clsact,
        );
        let mtu_check = Choice::of(
            choose(has_check_mtu, "bpf_check_mtu", "5.12"),
            MtuCheck::CheckMtuHelper,
            MtuCheck::UplinkMtuLength,
        );
        let has_sockopt = crate::datapath::sys::current_netns_cookie().is_ok();
        let netns_cookie = Choice::of(
            choose(has_sockopt, "SO_NETNS_COOKIE", "5.14"),
            NetnsCookieSource::Sockopt,
            NetnsCookieSource::ConnectProbe,
        );
        let has_coarse_clock = is_helper_supported(
            ProgramType::SchedClassifier,
            BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
        )
        .unwrap_or(false);
        let clock = Choice::of(
            choose(has_coarse_clock, "bpf_ktime_get_coarse_ns", "5.11"),
            ClockSource::Coarse,
            ClockSource::Exact,
        );
        let sock_addr_hooks = is_program_supported(ProgramType::CgroupSockAddr).unwrap_or(false);
        Ok(Self {
            kernel,
            tc_attach,
            mtu_check,
            netns_cookie,
            clock,
            ring_buffer: is_map_supported(MapType::RingBuf).unwrap_or(false),
            sock_addr_hooks,
        })
    }

    /// Fails with what is missing when the kernel lacks something netd has
    /// no fallback for.
    pub fn require_minimum(&self) -> Result<()> {
        let mut missing = Vec::new();
        if !self.ring_buffer {
            missing.push("BPF ring buffer maps (5.8)");
        }
        if !self.sock_addr_hooks {
            missing.push("cgroup sock_addr programs (4.17)");
        }
        if !missing.is_empty() {
            bail!(
                "kernel {} lacks what netd needs (Linux 5.10 or later): {}",
                self.kernel,
                missing.join(", ")
            );
        }
        Ok(())
    }

    pub fn has_check_mtu(&self) -> bool {
        self.mtu_check.uses == MtuCheck::CheckMtuHelper
    }

    pub fn has_coarse_clock(&self) -> bool {
        self.clock.uses == ClockSource::Coarse
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "kernel {}:", self.kernel)?;
        writeln!(
            f,
            "  tc attach      {:<18} ({})",
            format!("{:?}", self.tc_attach.uses).to_lowercase(),
            self.tc_attach.why
        )?;
        let mtu = match self.mtu_check.uses {
            MtuCheck::CheckMtuHelper => "bpf_check_mtu",
            MtuCheck::UplinkMtuLength => "uplink MTU length",
        };
        writeln!(f, "  mtu check      {mtu:<18} ({})", self.mtu_check.why)?;
        let cookie = match self.netns_cookie.uses {
            NetnsCookieSource::Sockopt => "SO_NETNS_COOKIE",
            NetnsCookieSource::ConnectProbe => "connect4 probe",
        };
        writeln!(
            f,
            "  netns cookie   {cookie:<18} ({})",
            self.netns_cookie.why
        )?;
        let clock = match self.clock.uses {
            ClockSource::Coarse => "ktime coarse",
            ClockSource::Exact => "ktime",
        };
        writeln!(f, "  clock          {clock:<18} ({})", self.clock.why)?;
        writeln!(f, "  ring buffer    {}", yes(self.ring_buffer))?;
        write!(f, "  sock hooks     {}", yes(self.sock_addr_hooks))
    }
}
