//! Per-CPU counters: traffic by class and drops by reason. Per-CPU so the
//! hot path never contends on a shared cache line; user space sums the CPUs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use netd_common::{DropReason, PacketCounter, TrafficClass};

#[map(name = "TRAFFIC_COUNTERS")]
static TRAFFIC_COUNTERS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(TrafficClass::COUNT, 0);

#[map(name = "DROP_COUNTERS")]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

#[inline(always)]
pub fn count_traffic(class: TrafficClass, bytes: u32) {
    if let Some(slot) = TRAFFIC_COUNTERS.get_ptr_mut(class as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(slot) = DROP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: as above.
        unsafe { *slot += 1 };
    }
}
