//! The pin directory in bpffs: `maps/` (state that survives a restart)
//! and `links/` (one pin per attachment, named after its interface).

use std::path::Path;

use anyhow::{Context as _, Result};
use netd_common::programs;

use super::Datapath;
use crate::features::TcAttachMode;

impl Datapath {
    /// Unpins everything under `dir`: links detach, maps go with the last user.
    pub fn remove_pins(dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Names of the pinned links (TCX), from this run or before.
    fn link_pins(&self) -> Vec<String> {
        let Some(dir) = &self.pin_dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir.join("links")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Interfaces with pinned uplink links.
    pub fn pinned_uplinks(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .link_pins()
            .iter()
            .filter_map(|name| {
                name.strip_prefix("uplink-in-")
                    .or_else(|| name.strip_prefix("uplink-out-"))
                    .or_else(|| name.strip_prefix("uplink-xdp-"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Container veths with a pinned `from_container` link.
    pub fn pinned_container_links(&self) -> Vec<String> {
        self.link_pins()
            .into_iter()
            .filter(|n| !n.starts_with("uplink-") && !programs::SOCK_HOOKS.contains(&n.as_str()))
            .collect()
    }

    /// Removes pins of an older layout (`uplink-ingress`, `uplink-egress`).
    pub fn remove_legacy_uplink_pins(&mut self) -> Result<()> {
        if let Some(dir) = &self.pin_dir {
            for pin in ["uplink-ingress", "uplink-egress"] {
                remove_pin(&dir.join("links").join(pin))?;
            }
        }
        Ok(())
    }

    /// Puts back pins someone removed while the daemon runs (a removed link
    /// pin detaches its program): maps are pinned again, links attached
    /// again. `uplinks` are the interfaces that should carry the uplink
    /// programs (a container veth gets its program back from
    /// `attach_from_container`, which attaches where the pin is missing).
    /// Returns what it restored; nothing to do without pins.
    pub fn repair_pins(&mut self, uplinks: &[String]) -> Result<Vec<String>> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(Vec::new());
        };
        let mut restored = Vec::new();
        std::fs::create_dir_all(dir.join("maps"))?;
        std::fs::create_dir_all(dir.join("links"))?;
        // The families' maps, and the drop-event ring until the monitor
        // takes it (the monitor's own handle keeps it alive after that).
        let unopened = self.ebpf.maps().map(|(name, map)| {
            let data: Option<&aya::maps::MapData> = match map {
                aya::maps::Map::RingBuf(data) => Some(data),
                _ => None,
            };
            (name, data)
        });
        let mut maps: Vec<(&str, &aya::maps::MapData)> = unopened
            .filter_map(|(name, data)| Some((name, data?)))
            .filter(|(name, _)| netd_common::maps::pinned().any(|m| m.name == *name))
            .collect();
        maps.extend(self.maps.pinned());
        let mut pinned = Vec::new();
        for (name, map) in maps {
            let path = dir.join("maps").join(name);
            if !path.exists() {
                map.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
                pinned.push(name.to_owned());
            }
        }
        restored.extend(pinned.into_iter().map(|name| format!("map pin {name}")));
        let links = dir.join("links");
        if programs::SOCK_HOOKS.iter().any(|h| !links.join(h).exists()) {
            self.attach_host_sockets()?;
            restored.push("socket hooks".to_owned());
        }
        if self.tc_mode == TcAttachMode::Tcx {
            for iface in uplinks {
                if !links.join(format!("uplink-in-{iface}")).exists()
                    || !links.join(format!("uplink-out-{iface}")).exists()
                {
                    self.attach_uplink(iface)?;
                    restored.push(format!("uplink programs on {iface}"));
                }
            }
        }
        Ok(restored)
    }
}

/// Removes one pin; a pin already gone is no error.
pub(super) fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
