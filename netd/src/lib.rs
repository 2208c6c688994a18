//! netd: a container-network daemon whose datapath is eBPF.
//!
//! `datapath` owns the embedded BPF object (load, attach, typed maps).

pub mod api;
pub mod cidr;
pub mod client;
pub mod cni;
pub mod daemon;
pub mod datapath;
pub mod dns;
pub mod driver;
pub mod engine;
pub mod error;
pub mod features;
pub mod frontend;
pub mod host;
pub mod ipam;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod portspec;
pub mod rule;
pub mod state;
