//! A real dockerd (Debian's docker.io) using netd as its network driver,
//! inside a test host namespace: netd serves the plugin socket
//! `/run/docker/plugins/netd-<id>.sock` (driver `netd-<id>`, unique per
//! test), dockerd runs with its own socket, data root and exec root, and a
//! busybox image is imported from busybox-static (no registry here).
//! Everything goes on drop: containers, networks, the image, dockerd and
//! its directories.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{Netns, daemon_host::DaemonHost, topology::Background};

/// Debian's docker CLI (another `docker` may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";
pub const IMAGE: &str = "netd-busybox:test";

/// Who networks a runtime's containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Networking {
    /// netd, through the runtime's plugin interface (Docker's remote
    /// driver, CNI); the runtime keeps out of the firewall.
    Netd,
    /// The runtime's own bridge networking with its iptables rules (Docker's
    /// bridge driver; Podman's CNI bridge and portmap plugins), no netd
    /// running: the reference netd is measured against.
    RuntimeBridge,
}

pub struct DockerHost {
    pub h: DaemonHost,
    networking: Networking,
    /// The driver name: `docker network create -d <driver>`.
    pub driver: String,
    dockerd: Option<Background>,
    dir: PathBuf,
    plugin_socket: PathBuf,
}

impl DockerHost {
    /// netd (with `daemon_args`) serving the plugin, then dockerd.
    pub fn start(netd: &str, daemon_args: &[&str]) -> Self {
        Self::start_with(netd, daemon_args, Networking::Netd)
    }

    /// As `start`; with `RuntimeBridge`, netd is taken down again and dockerd
    /// runs its own bridge driver and iptables rules.
    pub fn start_with(netd: &str, daemon_args: &[&str], networking: Networking) -> Self {
        let mut h = DaemonHost::start(netd, daemon_args);
        // Now that the test has its id: the plugin socket named after it.
        let driver = format!("netd-{}", h.name("docker"));
        let plugin = format!("/run/docker/plugins/{driver}.sock");
        match networking {
            Networking::Netd => {
                h.kill_daemon(libc::SIGTERM);
                h.add_daemon_args(&["--docker-plugin", "--docker-plugin-socket", &plugin]);
                h.spawn_daemon();
            }
            Networking::RuntimeBridge => {
                h.ok(&["down"]);
                h.wait_daemon_exit();
            }
        }
        let dir = PathBuf::from(format!("/var/tmp/netd-docker-{}", h.name("d")));
        std::fs::create_dir_all(&dir).unwrap();
        let driver = match networking {
            Networking::Netd => driver,
            Networking::RuntimeBridge => "bridge".to_owned(),
        };
        let mut me = Self {
            networking,
            driver,
            h,
            dockerd: None,
            dir,
            plugin_socket: PathBuf::from(plugin),
        };
        me.start_dockerd();
        me.import_image();
        me
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Starts dockerd in the host namespace and waits until it answers.
    pub fn start_dockerd(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let host = format!("unix://{}", self.socket().display());
        let data = self.dir.join("data").display().to_string();
        let exec = self.dir.join("exec").display().to_string();
        let pidfile = self.dir.join("dockerd.pid").display().to_string();
        let mut args: Vec<&str> = match self.networking {
            Networking::Netd => vec!["--iptables=false", "--ip-masq=false", "--bridge=none"],
            // Docker's defaults, without a docker-proxy per published port.
            Networking::RuntimeBridge => vec!["--userland-proxy=false"],
        };
        args.extend([
            "--host",
            &host,
            "--data-root",
            &data,
            "--exec-root",
            &exec,
            "--pidfile",
            &pidfile,
        ]);
        self.dockerd = Some(
            self.h
                .host
                .spawn_with_env("dockerd", &args, &[], Some(log))
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["version"]).status.success() {
            assert!(
                !self.dockerd.as_mut().unwrap().exited(),
                "dockerd exited at start: {}",
                self.dockerd_log()
            );
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                self.dockerd_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops dockerd (SIGTERM) and waits for it; containers stay as they are
    /// (`--live-restore` is not used: Docker stops them, as on a host).
    pub fn stop_dockerd(&mut self) {
        if let Some(dockerd) = self.dockerd.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(dockerd.id() as i32, libc::SIGTERM) };
            dockerd.wait();
        }
        // Its containerd and shims stop after it: wait for them (a new
        // dockerd would start a second containerd on the same socket),
        // killing what is left after a while.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for pid in left {
                    // SAFETY: processes of this test's dockerd.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Processes whose command line names this dockerd's directory.
    fn processes(&self) -> Vec<i32> {
        let dir = self.dir.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
            })
            .collect()
    }

    pub fn dockerd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_command(args).output().unwrap()
    }

    /// `docker ARGS…` against this dockerd, to run as the caller likes.
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(DOCKER);
        command
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args);
        command
    }

    /// `docker ARGS…`, which must succeed: its stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.dockerd_log()
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `docker ARGS…`, which must fail: its stderr.
    pub fn docker_refused(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(!out.status.success(), "docker {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    /// The busybox image, imported.
    fn import_image(&self) {
        let tar = busybox_rootfs_tar(&self.dir);
        self.docker_ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// A Docker network on netd (`extra` are `docker network create` flags).
    pub fn network(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["network", "create", "-d", &self.driver];
        args.extend_from_slice(extra);
        args.push(name);
        self.docker_ok(&args)
    }

    /// `docker run -d --name <id>-<short> ARGS… IMAGE sleep 3600`, its
    /// namespace named like the container's in /run/netns (so the harness
    /// can enter it). Returns the namespace.
    pub fn run(&self, short: &str, args: &[&str]) -> Netns {
        let name = self.h.name(short);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        all.extend_from_slice(&[IMAGE, "sleep", "3600"]);
        self.docker_ok(&all);
        self.attach_netns(short)
    }

    /// Names the running container's namespace `<id>-<short>` (again after
    /// a restart: the old name goes first).
    pub fn attach_netns(&self, short: &str) -> Netns {
        let name = self.h.name(short);
        let pid = self.docker_ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
        Netns::of_process(&name, &pid).unwrap()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A root filesystem of busybox-static and its applets, as a tar in `dir`
/// (for `docker import` / `podman import`: no registry is reachable).
pub fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let out = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the busybox root");
    tar
}

/// Mount points at or below `dir`, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            // -f: also containers a bench left running.
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            let nets = self.docker(&[
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("driver={}", self.driver),
            ]);
            for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
                let _ = self.docker(&["network", "rm", id]);
            }
            let _ = self.docker(&["image", "rm", "-f", IMAGE]);
            self.stop_dockerd();
        }
        // dockerd leaves mounts under its directories (the host namespace
        // bound at exec/netns/default, which would keep it alive): every
        // one goes, deepest first, then the directories.
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&mount).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.plugin_socket);
    }
}
