//! netd: a container-network daemon whose datapath is eBPF.
//!
//! `bpf` owns the embedded BPF object (load, attach, read counters).

pub mod bpf;
