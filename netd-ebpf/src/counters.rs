//! Per-CPU counters: traffic by class and drops by reason. Per-CPU so the
//! hot path never contends on a shared cache line; user space sums the CPUs.

use crate::maps::bpf_map;
use aya_ebpf::EbpfContext;
use netd_common::{DropEvent, DropKey, DropReason, TrafficClass, sizes};

use network_types::ip::Ipv4Hdr;

use crate::{
    offsets::{ETH_LEN, L4_SRC_PORT},
    parse::{Frame, Ipv4Packet, L4},
};

bpf_map!(TRAFFIC_COUNTERS: PerCpuArray);

bpf_map!(DROP_COUNTERS: PerCpuArray);

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

// Drop events for `netd monitor` (only dropped packets pay for this).
bpf_map!(DROP_EVENTS: RingBuf);

// Each CPU's drop-event budget (one slot per CPU).
bpf_map!(EVENT_BUDGET: PerCpuArray);

/// Whether this drop may send an event; counts the ones that may not.
/// Returns the drops left out since the last event sent.
#[inline(always)]
fn take_event_budget() -> Option<u32> {
    let budget = EVENT_BUDGET.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let budget = unsafe { &mut *budget };
    let now = crate::clock::now_ns();
    if now.wrapping_sub(budget.window_start_ns) > sizes::DROP_EVENTS_WINDOW_NS {
        budget.window_start_ns = now;
        budget.sent = 0;
    }
    if budget.sent >= sizes::DROP_EVENTS_PER_WINDOW {
        budget.suppressed += 1;
        return None;
    }
    budget.sent += 1;
    let suppressed = budget.suppressed;
    budget.suppressed = 0;
    Some(suppressed)
}

bpf_map!(DROPS_BY_INTERFACE: LruPerCpuHashMap);

bpf_map!(UPLINK_DROPS: PerCpuArray);

/// Counts a drop by reason and by (interface, reason); within the event
/// budget, also reports it to `netd monitor` and returns the event. Dropped
/// packets only: the forwarding path never pays for this; and past the
/// budget (a flood) a drop does not read its headers for an event.
/// `on_uplink`: the uplinks' drops count in `UPLINK_DROPS` where they can.
#[inline(always)]
pub fn count_drop<F: Frame>(ctx: &F, reason: DropReason, on_uplink: bool) -> Option<DropEvent> {
    if let Some(slot) = DROP_COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: as above.
        unsafe { *slot += 1 };
    }
    let ifindex = ctx.ifindex();
    if !(on_uplink && count_in_uplink_slot(ifindex, reason)) {
        let key = DropKey {
            ifindex,
            reason: reason as u32,
        };
        match DROPS_BY_INTERFACE.get_ptr_mut(&key) {
            // SAFETY: a per-CPU value, only this CPU writes it now.
            Some(slot) => unsafe { *slot += 1 },
            None => {
                let _ = DROPS_BY_INTERFACE.insert(&key, &1, 0);
            }
        }
    }
    let suppressed = take_event_budget()?;
    let mut event = drop_event(ctx, reason);
    event.suppressed = suppressed;
    let _ = DROP_EVENTS.output(&event, 0);
    Some(event)
}

/// Counts the drop in the uplink's slot of `UPLINK_DROPS`, taking the slot
/// if it is free; false if another interface owns it.
#[inline(always)]
fn count_in_uplink_slot(ifindex: u32, reason: DropReason) -> bool {
    let Some(slot) = UPLINK_DROPS.get_ptr_mut(ifindex % sizes::UPLINK_DROP_SLOTS) else {
        return false;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let slot = unsafe { &mut *slot };
    if slot.ifindex == 0 {
        slot.ifindex = ifindex;
    }
    if slot.ifindex != ifindex {
        return false;
    }
    match slot.by_reason.get_mut(reason as usize) {
        Some(count) => {
            *count += 1;
            true
        }
        None => false,
    }
}

/// A log line per reported drop (past the event budget, none: a flood
/// would flood the log too). Pruned by the verifier unless `netd daemon
/// --bpf-log debug` (or trace).
#[inline(always)]
pub fn log_drop<C: EbpfContext>(ctx: &C, event: Option<&DropEvent>) {
    let Some(event) = event else { return };
    aya_log_ebpf::debug!(
        ctx,
        "drop reason {} on if{}: proto {} {:i} -> {:i}",
        event.reason,
        event.ifindex,
        event.proto,
        u32::from_be_bytes(event.src),
        u32::from_be_bytes(event.dst)
    );
}

/// Best-effort 5-tuple of a dropped frame (IPv4 without options assumed;
/// fields stay zero where the frame is too short).
#[inline(always)]
fn drop_event<F: Frame>(ctx: &F, reason: DropReason) -> DropEvent {
    let mut event = DropEvent {
        reason: reason as u32,
        ifindex: ctx.ifindex(),
        hook: F::HOOK,
        ..DropEvent::default()
    };
    if let Some(ip) = ctx.load::<Ipv4Hdr>(ETH_LEN)
        && ip.vihl >> 4 == 4
    {
        event.proto = ip.proto;
        event.src = ip.src_addr;
        event.dst = ip.dst_addr;
        let l4 = ETH_LEN + usize::from(ip.vihl & 0x0f) * 4;
        if let Some(ports) = ctx.load::<[[u8; 2]; 2]>(l4 + L4_SRC_PORT) {
            event.src_port = ports[0];
            event.dst_port = ports[1];
        }
    }
    event
}

/// The traffic class an IPv4 packet is counted under.
#[inline(always)]
pub fn traffic_class(ip: &Ipv4Packet) -> TrafficClass {
    match ip.l4 {
        L4::Tcp { .. } => TrafficClass::Tcp,
        L4::Udp { .. } => TrafficClass::Udp,
        L4::Icmp { .. } => TrafficClass::Icmp,
        L4::Other => TrafficClass::OtherIpv4,
    }
}
