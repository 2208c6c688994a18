//! `netd check`: what this kernel offers, and every program through the verifier.

use anyhow::Result;
use netd::{
    bpf::Datapath,
    features::{Features, KernelFeatures},
};
use netd_common::{DropReason, programs, sizes};

pub fn run(wanted: KernelFeatures) -> Result<()> {
    let features = Features::probe(wanted)?;
    println!("{features}");
    features.require_minimum()?;
    Datapath::load_with(&features)?;
    println!("all BPF programs passed the verifier:");
    for name in programs::CLASSIFIERS {
        println!("  tc       {name}");
    }
    println!("  xdp      {}", programs::UPLINK_XDP);
    for name in programs::SOCK_HOOKS {
        println!("  cgroup   {name}");
    }
    println!("map sizes (entries):");
    for (name, size) in [
        ("NETWORKS", sizes::NETWORKS),
        ("ENDPOINTS", sizes::ENDPOINTS),
        ("LOCAL_ADDRS", sizes::LOCAL_ADDRS),
        ("PUBLISHED_PORTS", sizes::PUBLISHED_PORTS),
        ("CONNTRACK", sizes::CONNTRACK),
        ("SOCK_REVNAT", sizes::SOCK_REVNAT),
        ("ROUTED_CIDRS", sizes::ROUTED_CIDRS),
        ("USER_RULES", sizes::USER_RULES),
    ] {
        println!("  {name:<16} {size}");
    }
    let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    println!("drop reasons: {}", reasons.join(", "));
    Ok(())
}
