//! The BPF programs' log records (aya-log), forwarded to the daemon's log.

/// Which of the BPF programs' log statements run (`netd daemon --bpf-log`:
/// off, error, warn, info, debug, trace); each level includes those before
/// it. Off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BpfLog {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    /// One line per dropped packet.
    Debug = 4,
    /// And one per packet sent by the fast path.
    Trace = 5,
}

impl std::str::FromStr for BpfLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(format!(
                    "{s:?}: expected off, error, warn, info, debug or trace"
                ));
            }
        })
    }
}

/// The BPF programs' log records as they come, for the daemon to forward.
pub struct BpfLogs(pub(super) aya_log::EbpfLogger<ToTracing>);

impl BpfLogs {
    /// Forwards every record to the daemon's log until the task is dropped.
    pub async fn forward(self) {
        // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
        let Ok(mut fd) = (unsafe { tokio::io::unix::AsyncFd::register(self.0) }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

/// aya-log's records as tracing events under `netd::bpf`, at the daemon's
/// info level: the BPF side already filtered them by `--bpf-log`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(
            target: "netd::bpf",
            bpf_level = %record.level(),
            program = record.module_path().unwrap_or(""),
            "{}",
            record.args()
        );
    }

    fn flush(&self) {}
}
