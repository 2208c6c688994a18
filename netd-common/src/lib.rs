//! Types shared by the BPF programs (`netd-ebpf`) and user space (`netd`).
//!
//! Everything here is `#[repr(C)]` or `#[repr(u32)]` with explicit padding,
//! because the same bytes are read on both sides of a BPF map.
#![no_std]

mod conntrack;
mod counters;
pub mod maps;
mod nat;
mod policy;
pub mod programs;
pub mod sizes;

pub use conntrack::*;
pub use counters::*;
pub use nat::*;
pub use policy::*;

/// Every map type's exact size: the BPF programs and user space must agree
/// byte for byte (bytemuck's derive has already refused padding).
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<PacketCounter>() == 16);
    assert!(size_of::<DropEvent>() == 28);
    assert!(size_of::<EventBudget>() == 16);
    assert!(size_of::<DropKey>() == 8);
    assert!(size_of::<InterfaceDrops>() == 8 + 8 * DropReason::COUNT as usize);
    assert!(size_of::<Config>() == 24);
    assert!(size_of::<UplinkInfo>() == 8);
    assert!(size_of::<SockRevKey>() == 16);
    assert!(size_of::<SockRevValue>() == 8);
    assert!(size_of::<SockRevKey6>() == 32);
    assert!(size_of::<SockRevValue6>() == 20);
    assert!(size_of::<NetworkInfo>() == 24);
    assert!(size_of::<Endpoint>() == 20);
    assert!(size_of::<Network6Info>() == 24);
    assert!(size_of::<PortKey>() == 8);
    assert!(size_of::<Backend>() == 8);
    assert!(size_of::<CtKey>() == 16);
    assert!(size_of::<CtEntry>() == 32);
    assert!(size_of::<CtKey6>() == 40);
    assert!(size_of::<CtEntry6>() == 56);
    assert!(size_of::<Flow6>() == 88);
    assert!(size_of::<PortKey6>() == 20);
    assert!(size_of::<Backend6>() == 20);
    assert!(size_of::<UplinkInfo6>() == 16);
    assert!(size_of::<RuleVerdict>() == 8);
};

/// aya's own `Pod` marker for the map types, granted only to types that
/// are `bytemuck::Pod` (no padding, any bit pattern valid).
#[cfg(feature = "user")]
mod pod {
    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => {$(
            const _: () = {
                const fn is_bytemuck_pod<T: bytemuck::Pod>() {}
                is_bytemuck_pod::<$t>()
            };
            // SAFETY: bytemuck::Pod (checked just above) is a stronger
            // promise than aya::Pod asks for.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    use super::*;
    aya_pod!(
        PacketCounter,
        Config,
        NetworkInfo,
        Network6Info,
        Endpoint,
        PortKey,
        Backend,
        CtKey,
        CtEntry,
        CtKey6,
        CtEntry6,
        UplinkInfo6,
        PortKey6,
        Backend6,
        SockRevKey,
        DropEvent,
        DropKey,
        InterfaceDrops,
        SockRevValue,
        SockRevKey6,
        SockRevValue6,
        UplinkInfo,
        RuleVerdict,
        TrustKey,
    );
}
