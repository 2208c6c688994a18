//! Published ports: `PUBLISHED_PORTS` and the scopes in use
//! (`PUBLISHED_SCOPES`), which the programs read to skip a lookup.

use anyhow::{Context as _, Result};
use aya::{Ebpf, maps::MapData};
use netd_common::{
    Backend, Backend6, PortKey, PortKey6,
    maps::{MapDef, PUBLISHED_PORTS, PUBLISHED_PORTS6, PUBLISHED_SCOPES},
};

use super::{Hash, Slots, capacity, data, done_if_missing, open};

pub struct Ports {
    ports: Hash<PUBLISHED_PORTS>,
    /// The same ports on IPv6 (no scopes: a lookup that cannot hit
    /// costs only IPv6's new connections to the host).
    ports6: Hash<PUBLISHED_PORTS6>,
    scopes: Slots<PUBLISHED_SCOPES>,
    /// What `PUBLISHED_SCOPES` holds (this process is its only writer).
    scopes_written: u32,
}

impl Ports {
    /// Opens the maps and rebuilds the scopes from the ports found, before
    /// any program is attached: pinned ports from a previous run (or from
    /// a version without the scopes map) must be found at once.
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        let mut ports = Self {
            ports: open::<PUBLISHED_PORTS, _>(ebpf)?,
            ports6: open::<PUBLISHED_PORTS6, _>(ebpf)?,
            scopes: open::<PUBLISHED_SCOPES, _>(ebpf)?,
            scopes_written: 0,
        };
        ports.sync_scopes(true)?;
        Ok(ports)
    }

    pub(super) fn map(&self) -> &MapData {
        data(&self.ports)
    }

    pub(super) fn map6(&self) -> &MapData {
        data(&self.ports6)
    }

    pub(super) fn each<'a>(&'a self, maps: &mut Vec<(&'static str, &'a MapData)>) {
        maps.push((PUBLISHED_PORTS::NAME, data(&self.ports)));
        maps.push((PUBLISHED_PORTS6::NAME, data(&self.ports6)));
        maps.push((PUBLISHED_SCOPES::NAME, data(&self.scopes)));
    }

    pub fn publish(&mut self, key: PortKey, backend: Backend) -> Result<()> {
        // The scope first: the programs must look for the key once it is in.
        if self.scopes_written & key.scope() == 0 {
            self.write_scopes(self.scopes_written | key.scope())?;
        }
        match self.ports.insert(&key, &backend, 0) {
            Err(err) if super::is_full(&err) => Err(crate::conflict!(
                "the published-ports table is full ({} entries; a range counts one per \
                 port): unpublish ports or restart the daemon with a larger \
                 --max-published-ports",
                capacity(&self.ports)
            )),
            other => other.context("publishing port"),
        }
    }

    pub fn publish6(&mut self, key: PortKey6, backend: Backend6) -> Result<()> {
        match self.ports6.insert(&key, &backend, 0) {
            Err(err) if super::is_full(&err) => Err(crate::conflict!(
                "the IPv6 published-ports table is full ({} entries): unpublish ports or \
                 restart the daemon with a larger --max-published-ports",
                capacity(&self.ports6)
            )),
            other => other.context("publishing port on IPv6"),
        }
    }

    /// Removes IPv6 ports only; [`super::Maps::unpublish6`] also forgets
    /// their connections.
    pub fn remove6(&mut self, keys: &[PortKey6]) -> Result<()> {
        for key in keys {
            done_if_missing(self.ports6.remove(key)).context("unpublishing port on IPv6")?;
        }
        Ok(())
    }

    pub fn keys6(&self) -> Result<Vec<PortKey6>> {
        Ok(self.ports6.keys().filter_map(Result::ok).collect())
    }

    /// Removes the ports only; [`super::Maps::unpublish`] also forgets
    /// their connections.
    pub(super) fn remove(&mut self, keys: &[PortKey]) -> Result<()> {
        for key in keys {
            done_if_missing(self.ports.remove(key)).context("unpublishing port")?;
        }
        self.sync_scopes(false)
    }

    /// The scopes of the published ports (`PUBLISHED_ON_*` bits), as the
    /// programs see them.
    pub fn scopes(&self) -> u32 {
        self.scopes_written
    }

    pub fn keys(&self) -> Result<Vec<PortKey>> {
        Ok(self.ports.keys().filter_map(Result::ok).collect())
    }

    /// Sets `PUBLISHED_SCOPES` from the ports published now: after ports
    /// went, a scope with none left is no longer looked up.
    fn sync_scopes(&mut self, force: bool) -> Result<()> {
        let mut scopes = 0;
        // Every key, or an error: a key missed would clear a scope in use.
        for key in self.ports.keys() {
            scopes |= key.context("reading the published ports")?.scope();
        }
        if force || scopes != self.scopes_written {
            self.write_scopes(scopes)?;
        }
        Ok(())
    }

    fn write_scopes(&mut self, scopes: u32) -> Result<()> {
        self.scopes
            .set(0, &scopes, 0)
            .context("writing the published ports' scopes")?;
        self.scopes_written = scopes;
        Ok(())
    }
}
