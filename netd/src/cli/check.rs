//! `netd check`: what this kernel offers, and every program through the verifier.

use anyhow::Result;
use netd::{
    datapath::Datapath,
    features::{Features, KernelFeatures},
};
use netd_common::{
    DropReason,
    maps::{self, MapKind},
    programs,
};

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
    println!("map sizes (entries; the ring buffer in bytes):");
    for map in maps::ALL {
        let kind = match map.kind {
            MapKind::RingBuf => "bytes",
            _ => "entries",
        };
        println!("  {:<20} {} {kind}", map.name, map.max_entries);
    }
    let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    println!("drop reasons: {}", reasons.join(", "));
    Ok(())
}
