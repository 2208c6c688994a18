//! Network namespaces, veth pairs and bridges for tests, demo and benchmark.
//!
//! Everything lives inside namespaces this module creates: links are created
//! directly in their namespace (never in the root one), addresses are only
//! used inside them, and `Drop` kills what runs inside and deletes them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};

static NEXT_TESTBED: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces that belong together (one test, the demo, one bench
/// run). Names carry a per-process unique id, so testbeds can run in parallel.
pub struct Testbed {
    id: String,
    namespaces: Vec<Netns>,
}

impl Testbed {
    pub fn new() -> Result<Self> {
        remove_orphans();
        let n = NEXT_TESTBED.fetch_add(1, Ordering::Relaxed) & 0xfff;
        // pid (≤ 6 hex digits) + counter (3): short enough for 15-byte ifnames.
        let id = format!("{:x}{n:03x}", std::process::id());
        Ok(Self {
            id,
            namespaces: Vec::new(),
        })
    }

    /// Unique id of this testbed; use it in interface names (max 6 more bytes).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Interface name `tag` + id (≤ 15 bytes when `tag` has ≤ 6).
    pub fn ifname(&self, tag: &str) -> String {
        let name = format!("{tag}{}", self.id);
        assert!(
            name.len() <= 15,
            "interface name {name} longer than 15 bytes"
        );
        name
    }

    /// Creates namespace `netd-<id>-<role>` with loopback up.
    pub fn add_netns(&mut self, role: &str) -> Result<Netns> {
        let ns = Netns {
            name: format!("netd-{}-{role}", self.id),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]))
            .with_context(|| format!("creating network namespace {}", ns.name))?;
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a veth pair with one end in each namespace, both ends up.
    pub fn veth(&self, a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
        self.veth_with_queues(a, a_name, b, b_name, 1)
    }

    /// [`Self::veth`] with `queues` receive and transmit queues on each end.
    pub fn veth_with_queues(
        &self,
        a: &Netns,
        a_name: &str,
        b: &Netns,
        b_name: &str,
        queues: u32,
    ) -> Result<()> {
        let queues = queues.max(1).to_string();
        let each_end = ["numtxqueues", &queues, "numrxqueues", &queues];
        run(Command::new("ip")
            .args(["link", "add", a_name, "netns", &a.name])
            .args(each_end)
            .args(["type", "veth", "peer", "name", b_name, "netns", &b.name])
            .args(each_end))
        .with_context(|| format!("creating veth {a_name}@{} <-> {b_name}@{}", a.name, b.name))?;
        a.ip(&["link", "set", a_name, "up"])?;
        b.ip(&["link", "set", b_name, "up"])
    }

    /// A "host" namespace and an "outside" client joined by the uplink veth
    /// (`up<id>` in host, `eth0` outside), with the addresses in
    /// [`crate::uplink`] and the host's default route via the outside.
    /// Returns (host, outside, uplink name).
    pub fn add_host_with_outside(&mut self) -> Result<(Netns, Netns, String)> {
        self.add_host_with_outside_queues(1)
    }

    /// [`Self::add_host_with_outside`] with a `queues`-queue uplink veth.
    pub fn add_host_with_outside_queues(&mut self, queues: u32) -> Result<(Netns, Netns, String)> {
        use crate::uplink::{HOST_IP, HOST_SECOND_IP, OUTSIDE_IP};
        let host = self.add_netns("host")?;
        let outside = self.add_netns("outside")?;
        let uplink = self.ifname("up");
        self.veth_with_queues(&host, &uplink, &outside, "eth0", queues)?;
        for ip in [HOST_IP, HOST_SECOND_IP] {
            host.ip(&["addr", "add", &format!("{ip}/24"), "dev", &uplink])?;
        }
        host.ip(&["route", "add", "default", "via", OUTSIDE_IP])?;
        outside.ip(&["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"])?;
        Ok((host, outside, uplink))
    }

    /// Adds a container-like namespace `role` wired to `bridge` in `host`
    /// through veth `host_if` (host side) / `eth0` (container side), with
    /// `addr` (CIDR) on eth0 and a default route via `gateway`.
    pub fn add_container(
        &mut self,
        role: &str,
        host: &Netns,
        bridge: &str,
        host_if: &str,
        addr: &str,
        gateway: &str,
    ) -> Result<Netns> {
        let ns = self.add_netns(role)?;
        self.veth(host, host_if, &ns, "eth0")?;
        host.ip(&["link", "set", host_if, "master", bridge])?;
        ns.ip(&["addr", "add", addr, "dev", "eth0"])?;
        ns.ip(&["route", "add", "default", "via", gateway])?;
        Ok(ns)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Processes keep a namespace alive after its name is gone: end them first.
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &ns.name])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: plain syscall on a pid that lives in our namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            if let Err(err) = run(Command::new("ip").args(["netns", "del", &ns.name])) {
                eprintln!("testbed: could not delete {}: {err:#}", ns.name);
            }
        }
    }
}

/// Deletes namespaces of testbeds whose process died without running Drop
/// (an abort, SIGKILL): their names carry the owner's pid.
fn remove_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(id) = name
            .strip_prefix("netd-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        let Some(pid) = id
            .get(..id.len().saturating_sub(3))
            .and_then(|p| i32::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if pid > 0 && unsafe { libc::kill(pid, 0) } != 0 {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A named network namespace (`/run/netns/<name>`).
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A namespace someone else created (e.g. a container made by netd).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names process `pid`'s network namespace `name` in /run/netns (a
    /// runtime's container, so the harness can enter it); an old name goes
    /// first. `ip netns del` removes the name, not the namespace.
    pub fn of_process(name: &str, pid: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "attach", name, pid]))
            .with_context(|| format!("ip netns attach {name} {pid}"))?;
        Ok(Self::named(name))
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args…`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .with_context(|| format!("ip {} (in {})", args.join(" "), self.name))
    }

    /// Interface index of `iface` inside this namespace.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let line = self.link_line(iface)?;
        let index = line.split(':').next().unwrap_or_default().trim();
        index
            .parse()
            .with_context(|| format!("ifindex in {line:?}"))
    }

    /// MAC address of `iface` inside this namespace.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let line = self.link_line(iface)?;
        let text = line
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC in {line:?}"))?;
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(part, 16)?;
        }
        Ok(mac)
    }

    /// `ip -o link show dev IFACE` inside this namespace (/sys still shows
    /// the root namespace under nsenter, so it cannot be read there).
    fn link_line(&self, iface: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", "dev", iface])
            .output()?;
        if !out.status.success() {
            bail!("no interface {iface} in {}", self.name);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sysctl -w key=value` inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// A command that runs inside this namespace. `nsenter --net` rather
    /// than `ip netns exec`, which would remount /sys and hide bpffs.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args…` inside the namespace; fails unless it exits 0.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self.command(program).args(args).output()?;
        if !out.status.success() {
            bail!(
                "{program} {} in {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Starts `program args…` inside the namespace; killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Background> {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        Ok(Background { child })
    }

    /// As `spawn`, with extra environment variables, and stderr to `log`
    /// when given.
    pub fn spawn_with_env(
        &self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<File>,
    ) -> Result<Background> {
        let mut command = self.command(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some(log) = log {
            command.stderr(log);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))?;
        Ok(Background { child })
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets and
    /// links `f` creates belong to the namespace; interface names resolve there.
    pub fn enter<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> Result<R> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.name))?;
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on this (new, scoped) thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(anyhow!(
                            "setns into {}: {}",
                            self.name,
                            std::io::Error::last_os_error()
                        ));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("thread inside {} panicked", self.name))?
        })
    }
}

/// A process running inside a namespace; killed and reaped on drop.
pub struct Background {
    child: Child,
}

impl Background {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits (bounded) for the process to exit by itself, then lets Drop
    /// kill it if it has not.
    pub fn wait(mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
