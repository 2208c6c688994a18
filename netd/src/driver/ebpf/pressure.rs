//! Conntrack pressure: a full table is logged once when a burst of
//! evictions or refusals starts and once when it ends.

use anyhow::Result;

use crate::datapath::Datapath;

/// A full conntrack table, logged once when a burst of evictions or
/// refusals starts and once when it ends.
#[derive(Default)]
pub(super) struct Pressure {
    evicted: u64,
    refused: u64,
    /// (evicted, refused) when the burst started.
    burst: Option<(u64, u64)>,
}

impl Pressure {
    /// No burst, the counters at `(evicted, refused)`.
    pub(super) fn from((evicted, refused): (u64, u64)) -> Self {
        Self {
            evicted,
            refused,
            burst: None,
        }
    }

    pub(super) fn read(datapath: &Datapath) -> Result<(u64, u64)> {
        let counters = &datapath.maps.counters;
        Ok((
            counters.conntrack_evictions()?,
            counters.drops_of(netd_common::DropReason::ConntrackFull)?,
        ))
    }

    pub(super) fn update(&mut self, (evicted, refused): (u64, u64), connections: u32) {
        let (new_evictions, new_refusals) = (evicted - self.evicted, refused - self.refused);
        let full = new_evictions + new_refusals > 0;
        match self.burst {
            None if full => {
                tracing::warn!(
                    connections,
                    evicted = new_evictions,
                    refused = new_refusals,
                    "conntrack table full: evicting connections not yet answered or \
                     closing, refusing new ones when none may go (--conntrack-max)"
                );
                self.burst = Some((self.evicted, self.refused));
            }
            Some((evicted_before, refused_before)) if !full => {
                tracing::info!(
                    evicted = evicted - evicted_before,
                    refused = refused - refused_before,
                    "conntrack table has room again"
                );
                self.burst = None;
            }
            _ => {}
        }
        (self.evicted, self.refused) = (evicted, refused);
    }
}
