//! `ENDPOINTS`: container address -> its interface.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::MapData};
use netd_common::{Endpoint, maps::ENDPOINTS};

use super::{Hash, data, done_if_missing, open};

pub struct Endpoints {
    endpoints: Hash<ENDPOINTS>,
}

impl Endpoints {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            endpoints: open::<ENDPOINTS, _>(ebpf)?,
        })
    }

    pub(super) fn map(&self) -> &MapData {
        data(&self.endpoints)
    }

    pub fn insert(&mut self, ip: Ipv4Addr, endpoint: Endpoint) -> Result<()> {
        match self.endpoints.insert(&ip.octets(), &endpoint, 0) {
            Err(err) if super::is_full(&err) => Err(crate::conflict!(
                "the endpoints table is full ({} container interfaces): remove containers \
                 or restart the daemon with a larger --max-endpoints",
                super::capacity(&self.endpoints)
            )),
            other => other.with_context(|| format!("adding endpoint {ip}")),
        }
    }

    /// Removes the endpoint only; [`super::Maps::remove_endpoint`] also
    /// forgets its connections.
    pub(super) fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        done_if_missing(self.endpoints.remove(&ip.octets()))
            .with_context(|| format!("removing endpoint {ip}"))
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<Endpoint> {
        self.endpoints.get(&ip.octets(), 0).ok()
    }

    pub fn addrs(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .map(Ipv4Addr::from)
            .collect())
    }
}
