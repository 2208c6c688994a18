//! The embedded BPF object: loading it, attaching its programs and reading
//! the counters it keeps.

use std::ffi::CString;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use netd_common::{DropReason, PacketCounter, TrafficClass, maps, programs};

/// The object built from `netd-ebpf` by `build.rs`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netd"));

/// A loaded copy of netd's BPF programs and maps.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads every program into the kernel (verifier included); attaches nothing.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(BPF_OBJECT).context("loading netd's BPF object")?;
        for &name in programs::CLASSIFIERS {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifier rejected BPF program {name}"))?;
        }
        Ok(Self { ebpf })
    }

    /// A loaded TC program, e.g. to run it through `BPF_PROG_TEST_RUN`.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, name)
    }

    /// Attaches `from_container` (TCX ingress) to the host side of a container
    /// veth. `iface` is resolved in the calling thread's network namespace.
    /// The link lives as long as this `Datapath`.
    pub fn attach_from_container(&mut self, iface: &str) -> Result<SchedClassifierLinkId> {
        let name = CString::new(iface).context("interface name contains NUL")?;
        self.classifier(programs::FROM_CONTAINER)?
            .attach(name.as_c_str(), TcAttachType::Ingress)
            .with_context(|| format!("attaching {} to {iface}", programs::FROM_CONTAINER))
    }

    /// Packets and bytes per traffic class, summed over CPUs.
    pub fn traffic_counters(&self) -> Result<Vec<(TrafficClass, PacketCounter)>> {
        let map: PerCpuArray<_, PacketCounter> = self.per_cpu_array(maps::TRAFFIC_COUNTERS)?;
        TrafficClass::ALL
            .iter()
            .map(|&class| {
                let mut total = PacketCounter::default();
                for cpu in map.get(&(class as u32), 0)?.iter() {
                    total.add(cpu);
                }
                Ok((class, total))
            })
            .collect()
    }

    /// Dropped packets per reason, summed over CPUs.
    pub fn drop_counters(&self) -> Result<Vec<(DropReason, u64)>> {
        let map: PerCpuArray<_, u64> = self.per_cpu_array(maps::DROP_COUNTERS)?;
        DropReason::ALL
            .iter()
            .map(|&reason| Ok((reason, map.get(&(reason as u32), 0)?.iter().sum())))
            .collect()
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

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("BPF program {name} is not a TC classifier"))
}
