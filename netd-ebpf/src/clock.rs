//! The one clock the programs read: for conntrack expiry (seconds) and the
//! drop-event budget (10 ms windows). CLOCK_MONOTONIC either way, so user
//! space compares it with its own `clock_gettime`.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// 1 where the kernel has `bpf_ktime_get_coarse_ns` (5.11 and later), set by
/// the loader before verification, like `HAS_CHECK_MTU`: the verifier never
/// visits the call on a kernel without it.
#[unsafe(no_mangle)]
static HAS_COARSE_CLOCK: u8 = 1;

/// Now, in ns of CLOCK_MONOTONIC. The coarse clock lags by at most a tick
/// (1–10 ms), nothing against the timeouts it is used for, and it is read
/// without the timer hardware: ~25 ns less per read here (a flood's every
/// drop and every tracked packet read it).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a read of a constant the loader filled in; helpers without
    // arguments.
    unsafe {
        if core::ptr::read_volatile(&HAS_COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}
