//! DELs the plugin could not hand over (the daemon was down): one file
//! each, beside the daemon's socket, drained by the daemon when it starts
//! and then periodically. A runtime's DEL must succeed even then (its
//! container is going away); the daemon does the work later.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::api::CniDetach;

/// `/run/netd/netd.sock` → `/run/netd/netd.cni-del/`: on the same tmpfs as
/// the socket, so a reboot (which takes the namespaces too) empties it.
pub fn dir(socket: &Path) -> PathBuf {
    socket.with_extension("cni-del")
}

/// Queues `detach`, atomically (a half-written file is never read).
pub fn push(socket: &Path, detach: &CniDetach) -> Result<PathBuf> {
    let dir = dir(socket);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!(
        "{}-{}-{}.json",
        detach.network, detach.container_id, detach.ifname
    );
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, serde_json::to_vec(detach)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The queued DELs, oldest name first, each with its file.
pub fn list(socket: &Path) -> Vec<(PathBuf, Result<CniDetach>)> {
    let Ok(entries) = fs::read_dir(dir(socket)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let detach = fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
                .with_context(|| format!("reading {}", path.display()));
            (path, detach)
        })
        .collect()
}
