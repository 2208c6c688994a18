//! netd: a container-network daemon whose datapath is eBPF.
//!
//! `bpf` owns the embedded BPF object (load, attach, read counters).

pub mod api;
pub mod bpf;
pub mod cidr;
pub mod daemon;
pub mod driver;
pub mod features;
pub mod ipam;
pub mod metrics;
pub mod netlink;
pub mod portspec;
pub mod state;
