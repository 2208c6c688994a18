//! The daemon's side of the CNI plugin: requests arrive on the CLI socket
//! (the plugin is a client like the CLI); here is what the daemon does on
//! its own — draining the DELs the plugin queued while it was down.

use std::path::Path;

use crate::{cni::queue, engine::Engine, host::Host};

/// Carries out every queued DEL; a DEL that fails stays queued (for the
/// next drain) and is reported. Returns what it did, one line each.
pub async fn drain_del_queue<H: Host>(engine: &mut Engine<H>, socket: &Path) -> Vec<String> {
    let mut report = Vec::new();
    for (path, detach) in queue::list(socket) {
        let detach = match detach {
            Ok(detach) => detach,
            Err(err) => {
                // Not netd's writing (it writes atomically): nothing to do with it.
                let _ = std::fs::remove_file(&path);
                report.push(format!("{err:#}; not a queued DEL, removed"));
                continue;
            }
        };
        let result = engine.cni_del(&detach).await.map(|()| {
            format!(
                "CNI DEL {}/{} on {}",
                detach.container_id, detach.ifname, detach.network
            )
        });
        match result {
            Ok(done) => {
                let _ = std::fs::remove_file(&path);
                report.push(format!("{done}: queued while netd was down; done"));
            }
            Err(err) => report.push(format!(
                "{}: {err:#}; kept for the next try",
                path.display()
            )),
        }
    }
    report
}
