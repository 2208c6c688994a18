//! The tables whose size the user sets (`netd daemon --conntrack-max`,
//! `--max-published-ports`, `--max-endpoints`), and carrying a pinned
//! table's entries over when a restart changes its size or kind: the old
//! map is set aside before the load, its entries are copied into the new
//! one after the load and again once every program uses the new one (the
//! old programs keep using the old map until they are replaced), then the
//! old pin goes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::{HashMap, Map, MapData, MapInfo, MapType},
};
use netd_common::maps::{self as defs, MapDef, MapKind};

/// User-set table sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// Connections conntrack holds (two entries each), as `nf_conntrack_max`.
    pub connections: u32,
    /// (host address, port, protocol) triples published; a range counts one
    /// per port.
    pub published_ports: u32,
    /// Container interfaces (containers × networks).
    pub endpoints: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            connections: defs::CONNTRACK::MAX_ENTRIES / 2,
            published_ports: defs::PUBLISHED_PORTS::MAX_ENTRIES,
            endpoints: defs::ENDPOINTS::MAX_ENTRIES,
        }
    }
}

/// The smallest a table may be set to (tests use small tables; a
/// table of one entry is a mistake).
const MIN_ENTRIES: u32 = 8;
/// The largest: kernel memory is charged per entry (~100 bytes for
/// conntrack), so this caps one mistyped flag at a few GiB.
const MAX_ENTRIES: u32 = 1 << 25;

impl TableSizes {
    /// The entries map `name` gets, when the user sets it.
    pub fn entries_of(&self, name: &str) -> Option<u32> {
        Some(match name {
            defs::CONNTRACK::NAME | defs::CONNTRACK6::NAME => self.connections * 2,
            defs::CONNTRACK_CANDIDATES::NAME | defs::CONNTRACK6_CANDIDATES::NAME => {
                self.connections
            }
            defs::PUBLISHED_PORTS::NAME | defs::PUBLISHED_PORTS6::NAME => self.published_ports,
            defs::ENDPOINTS::NAME | defs::ENDPOINTS6::NAME => self.endpoints,
            _ => return None,
        })
    }

    /// Refuses sizes out of bounds, naming the flag.
    pub fn check(&self) -> Result<()> {
        for (flag, value) in [
            ("--conntrack-max", self.connections),
            ("--max-published-ports", self.published_ports),
            ("--max-endpoints", self.endpoints),
        ] {
            if !(MIN_ENTRIES..=MAX_ENTRIES).contains(&value) {
                bail!("{flag} {value}: must be between {MIN_ENTRIES} and {MAX_ENTRIES}");
            }
        }
        Ok(())
    }

    pub(super) fn apply(&self, loader: &mut EbpfLoader<'static>) {
        for map in defs::ALL {
            if let Some(entries) = self.entries_of(map.name) {
                loader.map_max_entries(map.name, entries);
            }
        }
    }

    /// The size map `map` has in this run.
    fn wanted(&self, map: &defs::MapInfo) -> u32 {
        self.entries_of(map.name).unwrap_or(map.max_entries)
    }
}

/// Insert only where the key is absent.
const BPF_NOEXIST: u64 = 1;

/// A pinned map set aside because this run wants it another size or kind.
pub(super) struct Migration {
    name: &'static str,
    old_pin: PathBuf,
}

/// Maps whose entries can be carried over (hash maps of plain data).
fn migratable(name: &str) -> bool {
    [
        defs::CONNTRACK::NAME,
        defs::CONNTRACK6::NAME,
        defs::PUBLISHED_PORTS::NAME,
        defs::PUBLISHED_PORTS6::NAME,
        defs::ENDPOINTS::NAME,
        defs::ENDPOINTS6::NAME,
    ]
    .contains(&name)
}

fn map_type(kind: MapKind) -> Option<MapType> {
    match kind {
        MapKind::HashMap => Some(MapType::Hash),
        MapKind::LruHashMap => Some(MapType::LruHash),
        _ => None,
    }
}

/// Before the load: moves the pin of every pinned map this run wants with
/// another size or kind (aya would refuse to reuse it) to
/// `<name>_BEFORE_RESIZE` (bpffs allows no dot in a name, and no rename),
/// and picks up such pins a run that stopped mid-migration left.
pub(super) fn set_aside(map_dir: &Path, sizes: &TableSizes) -> Result<Vec<Migration>> {
    reset_counters_of_another_layout(map_dir)?;
    let mut migrations = Vec::new();
    for map in defs::pinned().filter(|m| migratable(m.name)) {
        let pin = map_dir.join(map.name);
        let old_pin = map_dir.join(format!("{}_BEFORE_RESIZE", map.name));
        if pin.exists() {
            let info = MapInfo::from_pin(&pin)
                .with_context(|| format!("reading pinned map {}", pin.display()))?;
            let same_kind = info.map_type().ok() == map_type(map.kind);
            if same_kind && info.max_entries() == sizes.wanted(map) {
                if old_pin.exists() {
                    migrations.push(Migration {
                        name: map.name,
                        old_pin,
                    });
                }
                continue;
            }
            tracing::info!(
                map = map.name,
                from = info.max_entries(),
                to = sizes.wanted(map),
                "table resized: carrying its entries over"
            );
            // bpffs has no rename: pin the map again under the new name,
            // then unpin the old name.
            let old = MapData::from_pin(&pin)
                .with_context(|| format!("opening pinned map {}", pin.display()))?;
            old.pin(&old_pin)
                .with_context(|| format!("pinning {} as {}", pin.display(), old_pin.display()))?;
            super::pins::remove_pin(&pin)?;
        } else if !old_pin.exists() {
            continue;
        }
        migrations.push(Migration {
            name: map.name,
            old_pin,
        });
    }
    Ok(migrations)
}

/// Unpins the pinned counter arrays an earlier netd made with another
/// layout (a drop reason or traffic class added since): aya would refuse
/// them and the daemon would not start. They are made anew; their counts
/// start over, and the daemon says so. (Settings arrays are not counters:
/// a layout change of theirs needs its own migration.)
fn reset_counters_of_another_layout(map_dir: &Path) -> Result<()> {
    let counters = [
        defs::TRAFFIC_COUNTERS::NAME,
        defs::DROP_COUNTERS::NAME,
        defs::UPLINK_DROPS::NAME,
    ];
    for map in defs::pinned().filter(|m| counters.contains(&m.name)) {
        let pin = map_dir.join(map.name);
        if !pin.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&pin)
            .with_context(|| format!("reading pinned map {}", pin.display()))?;
        if info.max_entries() != map.max_entries || info.value_size() != map.value_size {
            tracing::warn!(
                map = map.name,
                "pinned by a netd with another layout of it: made anew, its counts start over"
            );
            super::pins::remove_pin(&pin)?;
        }
    }
    Ok(())
}

/// What one copy carried over.
#[derive(Debug, Default)]
pub struct Carried {
    pub copied: usize,
    /// Entries the new map had no room for.
    pub left_out: usize,
}

impl Migration {
    /// Copies the old map's entries the new one lacks into it.
    pub(super) fn copy(&self, map_dir: &Path) -> Result<Carried> {
        let new_pin = map_dir.join(self.name);
        match self.name {
            defs::CONNTRACK::NAME => copy::<defs::CONNTRACK>(&self.old_pin, &new_pin),
            defs::CONNTRACK6::NAME => copy::<defs::CONNTRACK6>(&self.old_pin, &new_pin),
            defs::PUBLISHED_PORTS::NAME => copy::<defs::PUBLISHED_PORTS>(&self.old_pin, &new_pin),
            defs::PUBLISHED_PORTS6::NAME => copy::<defs::PUBLISHED_PORTS6>(&self.old_pin, &new_pin),
            defs::ENDPOINTS::NAME => copy::<defs::ENDPOINTS>(&self.old_pin, &new_pin),
            defs::ENDPOINTS6::NAME => copy::<defs::ENDPOINTS6>(&self.old_pin, &new_pin),
            other => bail!("no migration for map {other}"),
        }
    }

    /// Drops the old map's pin (the map goes with its last program).
    pub(super) fn finish(self) -> Result<()> {
        super::pins::remove_pin(&self.old_pin)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn open_hash<D: MapDef>(pin: &Path) -> Result<HashMap<MapData, D::Key, D::Value>>
where
    D::Key: aya::Pod,
    D::Value: aya::Pod,
{
    let data =
        MapData::from_pin(pin).with_context(|| format!("opening pinned map {}", pin.display()))?;
    HashMap::try_from(Map::HashMap(data)).with_context(|| {
        format!(
            "{} is not a hash map of {}'s entries",
            pin.display(),
            D::NAME
        )
    })
}

fn copy<D: MapDef>(old_pin: &Path, new_pin: &Path) -> Result<Carried>
where
    D::Key: aya::Pod,
    D::Value: aya::Pod,
{
    let old = open_hash::<D>(old_pin)?;
    let mut new = open_hash::<D>(new_pin)?;
    let mut carried = Carried::default();
    for item in old.iter() {
        let Ok((key, value)) = item else {
            continue; // deleted while we walked
        };
        match new.insert(&key, &value, BPF_NOEXIST) {
            Ok(()) => carried.copied += 1,
            Err(err) if super::maps::is_full(&err) => carried.left_out += 1,
            // Already there: the new programs made or moved it.
            Err(_) => {}
        }
    }
    Ok(carried)
}
