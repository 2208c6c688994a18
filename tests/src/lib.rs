//! The one test harness every netd test, the demo and the benchmark use.
//!
//! - [`bin_under_test`]: netd's binaries, built on first use;
//! - [`topology`]: uniquely named network namespaces, veths, bridges, torn
//!   down in `Drop` even when a test panics;
//! - [`probe`]: bounded TCP/UDP/ICMP probes and small echo servers that run
//!   inside those namespaces;
//! - [`cni`]: runs a CNI plugin as a runtime does (cnitool-like);
//! - [`daemon_host`]: a host namespace running the real `netd daemon`;
//! - [`datapath_host`]: a host namespace driven through `netd::datapath::Datapath`;
//! - [`docker`]: a real dockerd using netd as its network driver;
//! - [`podman`]: a real Podman using netd through its CNI plugin;
//! - [`containerd`]: a real containerd attaching containers with `ctr run --cni`;
//! - [`scenarios`]: the verdict suite both datapaths must pass;
//! - [`testrun`]: one crafted frame through BPF_PROG_TEST_RUN;
//! - [`unit`]: the set-up and checks of the BPF_PROG_TEST_RUN tests;
//! - [`packet`]: crafted frames and an independent checksum routine for
//!   `BPF_PROG_TEST_RUN` tests; [`packet6`]: IPv6 ones with checksums;
//! - [`unit6`]: the IPv6 set-up of the BPF_PROG_TEST_RUN tests.

pub mod bin_under_test;
pub mod cni;
pub mod containerd;
pub mod daemon_host;
pub mod datapath_host;
pub mod dns;
pub mod docker;
pub mod packet;
pub mod packet6;
pub mod podman;
pub mod probe;
pub mod scenarios;
pub mod testrun;
pub mod topology;
pub mod unit;
pub mod unit6;
pub mod uplink;

pub use topology::{Netns, Testbed};
