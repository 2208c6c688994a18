//! The bench's own XDP programs, loaded with aya by `netd-bench`'s flood:
//! not part of netd's datapath.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Run in live-frames mode (BPF_PROG_TEST_RUN), XDP_TX sends each frame out
/// of the run's interface: the flood's frame generator.
#[xdp]
pub fn bench_transmit(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// In an interface's driver, the least receiving a frame can cost: the
/// floor the flood's drop costs are measured from.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
