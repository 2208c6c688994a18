//! The CLI socket: one JSON request per connection, one JSON reply (or, for
//! `monitor`, a stream of events). Malformed, truncated or oversized input
//! gets an error reply, never a crash, and changes nothing.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{Mutex, Notify, broadcast},
};
use tracing::Instrument as _;

use crate::{
    api::{MAX_REQUEST_BYTES, MONITOR_HELLO, MonitorEvent, Request, Response},
    engine::Engine,
    host::Host,
    metrics::Metrics,
};

/// Root-owned socket, mode 0660 (group configurable), in a directory that is
/// not world-writable.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("socket path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o002 != 0 {
        bail!(
            "socket directory {} is world-writable; use a private directory",
            dir.display()
        );
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
        _ => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    }
    Ok(listener)
}

/// What every connection shares.
pub struct Shared<H: Host> {
    pub engine: Arc<Mutex<Engine<H>>>,
    /// Notified after a `down` was answered: the daemon stops.
    pub shutdown: Arc<Notify>,
    pub events: broadcast::Sender<MonitorEvent>,
    pub metrics: Arc<Metrics>,
    /// The containers' resolver, told of every change.
    pub dns: Arc<crate::dns::Dns>,
}

/// One connection: one request line (bounded), one reply.
pub async fn serve<H: Host + 'static>(stream: UnixStream, shared: Arc<Shared<H>>) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read =
        tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => Err("timed out waiting for a request".to_owned()),
        Ok(Err(err)) => Err(format!("reading request: {err}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            Err(format!("request larger than {MAX_REQUEST_BYTES} bytes"))
        }
        Ok(Ok(_)) => serde_json::from_slice::<Request>(&line)
            .map_err(|err| format!("malformed request: {err}")),
    };
    let request = match request {
        Ok(request) => request,
        Err(message) => {
            reply(
                &mut write,
                &Response::<()>::refusal(&crate::invalid!("{message}")),
            )
            .await;
            return;
        }
    };
    if request == Request::Monitor {
        stream_events(write, shared.events.subscribe()).await;
        return;
    }
    let down = request == Request::Down;
    let (kind, mutates) = (request.kind(), request.mutates());
    let span = tracing::info_span!("request", kind);
    let started = Instant::now();
    let result = async {
        let mut engine = shared.engine.lock().await;
        // Resolver sockets hold the namespaces going away.
        match &request {
            Request::ContainerRm { name } => shared.dns.forget(name),
            Request::Down => shared.dns.stop(true),
            _ => {}
        }
        let result = engine.handle(request).await;
        // Before the answer: a container made is resolvable, and resolves,
        // at once; one removed lets its namespace go.
        if mutates {
            for problem in shared.dns.sync(engine.state()) {
                tracing::warn!(%problem, "resolver");
            }
        }
        result
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.elapsed();
    let micros = elapsed.as_micros() as u64;
    shared.metrics.request(kind, elapsed.as_secs_f64());
    let _entered = span.enter();
    match result {
        Ok(data) => {
            if mutates {
                tracing::info!(micros, "done");
            } else {
                tracing::debug!(micros, "done");
            }
            reply(&mut write, &Response::ok(data)).await;
            if down {
                shared.shutdown.notify_one();
            }
        }
        Err(err) => {
            tracing::info!(micros, err = format!("{err:#}"), "refused");
            reply(&mut write, &Response::<()>::refusal(&err)).await;
        }
    }
}

async fn reply<T: Serialize>(write: &mut OwnedWriteHalf, response: &Response<T>) {
    let mut bytes = serde_json::to_vec(response).unwrap_or_default();
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    let _ = write.shutdown().await;
}

/// `netd monitor`: the hello line (the stream is live from here), then one
/// JSON line per dropped packet until the client leaves.
async fn stream_events(mut write: OwnedWriteHalf, mut events: broadcast::Receiver<MonitorEvent>) {
    let hello = serde_json::to_string(&Response::ok(MONITOR_HELLO)).unwrap_or_default();
    if write
        .write_all(format!("{hello}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(n)) => MonitorEvent::Lost { lost_events: n },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let line = serde_json::to_string(&event).unwrap_or_default();
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
