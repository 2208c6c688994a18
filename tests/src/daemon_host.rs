//! A host namespace running the real `netd daemon`, an outside client on its
//! uplink, and helpers to drive the CLI: used by the CLI tests and the
//! scenario suite (which runs it once per datapath).

use std::{
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, Testbed, topology::Background};

pub use crate::uplink::{HOST_IP, HOST_SECOND_IP, OUTSIDE_IP};

/// The uplink's IPv6 addresses, once [`DaemonHost::add_uplink_ipv6`] set
/// them, and the far IPv6 server's ([`DaemonHost::add_far_host6`]).
pub const HOST_IP6: &str = "fd99::1";
pub const OUTSIDE_IP6: &str = "fd99::2";
pub const FAR_IP6: &str = "fd98::2";

/// Where daemons started by this harness append their log (stdout and
/// stderr), when set; else they log to the test's own output.
pub const DAEMON_LOG_ENV: &str = "NETD_DAEMON_LOG";

/// A host namespace running `netd daemon`, with an outside client on its uplink.
pub struct DaemonHost {
    pub daemon: Option<Background>,
    dir: PathBuf,
    id: String,
    netd: String,
    daemon_args: Vec<String>,
    pub host: Netns,
    pub outside: Netns,
    /// The host's uplink (its end of the veth to `outside`).
    pub uplink: String,
    /// When set, daemons started from now on append their stderr here.
    pub daemon_log: Option<PathBuf>,
    /// Owns (and on drop deletes) host and outside; dropped last.
    _bed: Testbed,
}

impl DaemonHost {
    /// `netd` is the binary (tests pass `env!("CARGO_BIN_EXE_netd")`);
    /// `daemon_args` are added to every `netd daemon` start.
    pub fn start(netd: &str, daemon_args: &[&str]) -> Self {
        Self::start_with_uplink_queues(netd, daemon_args, 1)
    }

    /// [`Self::start`] with a `queues`-queue uplink veth.
    pub fn start_with_uplink_queues(netd: &str, daemon_args: &[&str], queues: u32) -> Self {
        let mut bed = Testbed::new().unwrap();
        let (host, outside, uplink) = bed.add_host_with_outside_queues(queues).unwrap();
        let dir = PathBuf::from(format!("/run/netd-test-{}", bed.id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = bed.id().to_owned();
        let mut me = Self {
            netd: netd.to_owned(),
            daemon_args: daemon_args.iter().map(|a| (*a).to_owned()).collect(),
            daemon: None,
            dir,
            id,
            host,
            outside,
            uplink,
            // The demo sends every daemon's log to one file it names.
            daemon_log: std::env::var_os(DAEMON_LOG_ENV).map(PathBuf::from),
            _bed: bed,
        };
        me.spawn_daemon();
        me
    }

    /// Flags every later `netd daemon` start gets too.
    pub fn add_daemon_args(&mut self, args: &[&str]) {
        self.daemon_args
            .extend(args.iter().map(|a| (*a).to_owned()));
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("netd.sock")
    }

    pub fn bpffs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/netd-test-{}", self.id))
    }

    /// `netd … daemon …` arguments: this host's socket, state and pins, the
    /// flags given at start, then `extra`.
    fn daemon_command(&self, extra: &[&str]) -> Vec<String> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut args = vec![
            "--socket".to_owned(),
            path(self.socket()),
            "daemon".to_owned(),
            "--state-dir".to_owned(),
            path(self.dir.join("state")),
            "--bpffs".to_owned(),
            path(self.bpffs()),
        ];
        args.extend(self.daemon_args.iter().cloned());
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    /// Runs `netd daemon` expecting it to refuse to start: its exit status
    /// (None if it was still running after 20 s, then killed) and stderr.
    pub fn daemon_refusal(&self) -> (Option<std::process::ExitStatus>, String) {
        self.daemon_refusal_with(&[])
    }

    /// As [`daemon_refusal`](Self::daemon_refusal), with `extra` flags.
    pub fn daemon_refusal_with(
        &self,
        extra: &[&str],
    ) -> (Option<std::process::ExitStatus>, String) {
        use std::io::Read as _;
        let mut child = self
            .host
            .command(&self.netd)
            .args(self.daemon_command(extra))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }

    /// Waits for a daemon that stops by itself (a fault point, a refusal).
    pub fn wait_daemon_exit(&mut self) {
        let mut daemon = self.daemon.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.exited() {
            assert!(Instant::now() < deadline, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_daemon(&mut self, signal: i32) {
        let daemon = self.daemon.take().expect("daemon running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(daemon.id() as i32, signal) };
        daemon.wait();
    }

    pub fn spawn_daemon(&mut self) {
        self.spawn_daemon_with(&[]);
    }

    pub fn spawn_daemon_with(&mut self, extra: &[&str]) {
        self.spawn_daemon_with_env(extra, &[]);
    }

    /// The state file the daemon keeps.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state").join("state.json")
    }

    /// Starts the daemon and waits for its socket; `env` is added to its
    /// environment (e.g. `NETD_FAULT_POINT`).
    pub fn spawn_daemon_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let socket = self.socket();
        let args = self.daemon_command(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.daemon_log.as_ref().map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
        });
        self.daemon = Some(
            self.host
                .spawn_with_env(&self.netd, &args, env, log)
                .unwrap(),
        );
        // A daemon that cannot start exits (caught below); one still
        // loading may take long: under QEMU's software emulation the 5.10
        // and 6.1 verifiers take ~30 s over netd's programs on this VM.
        let deadline = Instant::now() + Duration::from_secs(120);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                !self.daemon.as_mut().unwrap().exited(),
                "daemon exited at start (its stderr is above)"
            );
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One scrape of `/metrics` from inside the host namespace, for a
    /// daemon started with `--metrics 127.0.0.1:9464`: (content type, body).
    pub fn scrape_metrics(&self) -> (String, String) {
        use std::io::{Read as _, Write as _};
        let response = self
            .host
            .enter(|| -> std::io::Result<String> {
                let mut conn = std::net::TcpStream::connect("127.0.0.1:9464")?;
                conn.write_all(
                    b"GET /metrics HTTP/1.1\r\nHost: netd\r\nConnection: close\r\n\r\n",
                )?;
                let mut text = String::new();
                conn.read_to_string(&mut text)?;
                Ok(text)
            })
            .unwrap()
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (content_type, body.to_owned())
    }

    /// The daemon's drop events (`netd monitor`), live once this returns.
    pub fn monitor(&self) -> std::sync::mpsc::Receiver<netd::api::MonitorEvent> {
        let events = netd::client::Client::new(self.socket()).monitor().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in events.map_while(Result::ok) {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// A container name unique to this test (namespaces are global).
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.id)
    }

    pub fn netd(&self, args: &[&str]) -> Output {
        Command::new(&self.netd)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.netd(args);
        assert!(
            out.status.success(),
            "netd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Expects refusal of `kind` (the CLI's exit status) with a message
    /// containing `message`, and no change.
    pub fn refused(&self, args: &[&str], kind: netd::error::ErrorKind, message: &str) {
        let before = (
            self.ok(&["network", "ls", "--format", "json"]),
            self.ok(&["container", "ls", "--format", "json"]),
            self.ok(&["rule", "ls", "--format", "json"]),
        );
        let out = self.netd(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "netd {args:?} should fail");
        assert_eq!(
            out.status.code(),
            Some(i32::from(kind.exit_code())),
            "netd {args:?} should be refused as {} (stderr: {stderr:?})",
            kind.label()
        );
        assert!(
            stderr.contains(message),
            "netd {args:?}: {stderr:?} lacks {message:?}"
        );
        let after = (
            self.ok(&["network", "ls", "--format", "json"]),
            self.ok(&["container", "ls", "--format", "json"]),
            self.ok(&["rule", "ls", "--format", "json"]),
        );
        assert_eq!(before, after, "state changed after refused netd {args:?}");
    }

    /// A second interface to the outside: a veth `up2<id>` with 100.64.0.1/24
    /// to a second outside namespace at 100.64.0.2. Returns (namespace,
    /// host-side interface name).
    pub fn add_second_uplink(&mut self) -> (Netns, String) {
        let outside2 = self._bed.add_netns("out2").unwrap();
        let ifname = self._bed.ifname("up2");
        self._bed
            .veth(&self.host, &ifname, &outside2, "eth0")
            .unwrap();
        self.host
            .ip(&["addr", "add", "100.64.0.1/24", "dev", &ifname])
            .unwrap();
        self.host.ip(&["link", "set", &ifname, "up"]).unwrap();
        outside2
            .ip(&["addr", "add", "100.64.0.2/24", "dev", "eth0"])
            .unwrap();
        (outside2, ifname)
    }

    /// A far server behind the outside router, over a hop with a smaller
    /// MTU: the router answers big packets with "fragmentation needed".
    pub fn add_far_host(&mut self, far_ip: &str, hop_mtu: u32) -> Netns {
        let far = self._bed.add_netns("far").unwrap();
        self._bed.veth(&self.outside, "eth1", &far, "eth0").unwrap();
        self.outside
            .ip(&["addr", "add", "203.0.113.1/24", "dev", "eth1"])
            .unwrap();
        self.outside
            .ip(&["link", "set", "eth1", "mtu", &hop_mtu.to_string()])
            .unwrap();
        self.outside.sysctl("net.ipv4.ip_forward", "1").unwrap();
        // The far end keeps MTU 1500: it advertises a full-size MSS, so only
        // the router's ICMP can shrink the packets.
        far.ip(&["addr", "add", &format!("{far_ip}/24"), "dev", "eth0"])
            .unwrap();
        far.ip(&["route", "add", "default", "via", "203.0.113.1"])
            .unwrap();
        far
    }

    /// IPv6 on the uplink: the host at [`HOST_IP6`] with its default route
    /// via the outside at [`OUTSIDE_IP6`], which routes the containers' ULA
    /// prefixes (`fd00::/8`) through the host as an L2 neighbour could.
    pub fn add_uplink_ipv6(&self) {
        let add = |ns: &Netns, addr: &str, dev: &str| {
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])
                .unwrap();
        };
        add(&self.host, &format!("{HOST_IP6}/64"), &self.uplink);
        add(&self.outside, &format!("{OUTSIDE_IP6}/64"), "eth0");
        self.host
            .ip(&["-6", "route", "add", "default", "via", OUTSIDE_IP6])
            .unwrap();
        self.outside
            .ip(&["-6", "route", "add", "fd00::/8", "via", HOST_IP6])
            .unwrap();
    }

    /// [`add_far_host`](Self::add_far_host)'s IPv6 twin: a far server at
    /// [`FAR_IP6`] behind the outside router, over a hop of `hop_mtu`; the
    /// router answers big packets with "packet too big".
    pub fn add_far_host6(&mut self, hop_mtu: u32) -> Netns {
        let far = self._bed.add_netns("far6").unwrap();
        self._bed.veth(&self.outside, "eth6", &far, "eth0").unwrap();
        self.outside
            .ip(&["-6", "addr", "add", "fd98::1/64", "dev", "eth6", "nodad"])
            .unwrap();
        self.outside
            .ip(&["link", "set", "eth6", "mtu", &hop_mtu.to_string()])
            .unwrap();
        self.outside
            .sysctl("net.ipv6.conf.all.forwarding", "1")
            .unwrap();
        far.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{FAR_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
        far.ip(&["-6", "route", "add", "default", "via", "fd98::1"])
            .unwrap();
        far
    }

    /// `tc ARGS…` in the host namespace: its output.
    pub fn tc(&self, args: &[&str]) -> String {
        let out = Command::new("tc")
            .args(["-n", self.host.name()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tc {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn ctr(&self, short: &str) -> Netns {
        Netns::named(&self.name(short))
    }
}

impl Drop for DaemonHost {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let _ = self.netd(&["down"]);
        }
        self.daemon.take();
        // Belt and braces: namespaces of this test's containers.
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.id)) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.bpffs());
    }
}
