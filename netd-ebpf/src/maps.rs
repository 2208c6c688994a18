//! Declares a map's static from its one declaration in `netd_common::maps`
//! (name, key, value, size): the static takes the map's name, and a
//! compile-time check makes its kind the declared one.

/// `bpf_map!(NAME: Kind)`, where `NAME` is a `netd_common::maps` map and
/// `Kind` the aya-ebpf type its declaration names.
macro_rules! bpf_map {
    ($name:ident: RingBuf) => {
        #[aya_ebpf::macros::map]
        static $name: aya_ebpf::maps::RingBuf = aya_ebpf::maps::RingBuf::with_byte_size(
            <netd_common::maps::$name as netd_common::maps::MapDef>::MAX_ENTRIES,
            0,
        );
        $crate::maps::check_kind!($name: RingBuf);
    };
    ($name:ident: $kind:ident, value only) => {
        #[aya_ebpf::macros::map]
        static $name: aya_ebpf::maps::$kind<
            <netd_common::maps::$name as netd_common::maps::MapDef>::Value,
        > = aya_ebpf::maps::$kind::with_max_entries(
            <netd_common::maps::$name as netd_common::maps::MapDef>::MAX_ENTRIES,
            0,
        );
        $crate::maps::check_kind!($name: $kind);
    };
    ($name:ident: Queue) => {
        $crate::maps::bpf_map!($name: Queue, value only);
    };
    ($name:ident: Array) => {
        $crate::maps::bpf_map!($name: Array, value only);
    };
    ($name:ident: PerCpuArray) => {
        $crate::maps::bpf_map!($name: PerCpuArray, value only);
    };
    ($name:ident: $kind:ident) => {
        $crate::maps::bpf_map!($name: $kind, flags 0);
    };
    ($name:ident: $kind:ident, flags $flags:expr) => {
        #[aya_ebpf::macros::map]
        static $name: aya_ebpf::maps::$kind<
            <netd_common::maps::$name as netd_common::maps::MapDef>::Key,
            <netd_common::maps::$name as netd_common::maps::MapDef>::Value,
        > = aya_ebpf::maps::$kind::with_max_entries(
            <netd_common::maps::$name as netd_common::maps::MapDef>::MAX_ENTRIES,
            $flags,
        );
        $crate::maps::check_kind!($name: $kind);
    };
}

macro_rules! check_kind {
    ($name:ident: $kind:ident) => {
        const _: () = assert!(
            <netd_common::maps::$name as netd_common::maps::MapDef>::KIND
                .is(netd_common::maps::MapKind::$kind),
            concat!(stringify!($name), " is not declared a ", stringify!($kind)),
        );
    };
}

pub(crate) use {bpf_map, check_kind};
