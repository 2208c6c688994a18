//! A real Podman (Debian's 4.3, CNI backend) using netd through its CNI
//! plugin, inside a test host namespace: Podman's root, runroot, tmpdir,
//! CNI config and plugin directories are the test's own, and each netd
//! network gets a conflist from `netd cni install`. Everything goes on
//! drop: containers, the image, Podman's storage and mounts.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{
    Netns,
    daemon_host::DaemonHost,
    docker::{IMAGE, Networking, busybox_rootfs_tar, mounts_under},
};

pub struct PodmanHost {
    pub h: DaemonHost,
    dir: PathBuf,
    /// netd's CNI plugin binary.
    plugin: PathBuf,
}

impl PodmanHost {
    /// netd (with `daemon_args`) in a test host, Podman configured to use
    /// CNI from this test's directories, the busybox image imported.
    pub fn start(netd: &str, plugin: &str, daemon_args: &[&str]) -> Self {
        Self::start_with(netd, plugin, daemon_args, Networking::Netd)
    }

    /// As `start`; with `RuntimeBridge`, netd is taken down again and the
    /// networks are Podman's own (`podman network create`: the reference
    /// bridge, portmap, firewall and tuning plugins from /usr/lib/cni).
    pub fn start_with(
        netd: &str,
        plugin: &str,
        daemon_args: &[&str],
        networking: Networking,
    ) -> Self {
        let mut h = DaemonHost::start(netd, daemon_args);
        if networking == Networking::RuntimeBridge {
            h.ok(&["down"]);
            h.wait_daemon_exit();
        }
        let dir = PathBuf::from(format!("/var/tmp/netd-podman-{}", h.name("p")));
        for sub in ["bin", "net.d", "root", "runroot", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // CNI, not netavark; cgroupfs (no systemd here); ulimits this VM
        // allows; no journald.
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{bin}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{netd}\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{events}\"\n",
            bin = dir.join("bin").display(),
            netd = dir.join("net.d").display(),
            events = dir.join("events.log").display(),
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        let me = Self {
            h,
            dir,
            plugin: plugin.into(),
        };
        let tar = busybox_rootfs_tar(&me.dir);
        me.podman_ok(&["import", &tar.display().to_string(), IMAGE]);
        me
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `podman ARGS…` against this test's Podman, in the host namespace.
    pub fn podman_command(&self, args: &[&str]) -> Command {
        let path = |sub: &str| self.dir.join(sub).display().to_string();
        let mut command = self.h.host.command("podman");
        command
            .env("CONTAINERS_CONF", path("containers.conf"))
            .args(["--root", &path("root")])
            .args(["--runroot", &path("runroot")])
            .args(["--tmpdir", &path("tmp")])
            .args(args);
        command
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        self.podman_command(args).output().unwrap()
    }

    /// `podman ARGS…`, which must succeed: its stdout, trimmed.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `podman ARGS…`, which must fail: its stderr.
    pub fn podman_refused(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(!out.status.success(), "podman {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    /// A netd network (`netd network create NAME ARGS…`) Podman can use:
    /// its conflist installed by `netd cni install`.
    pub fn network(&self, name: &str, netd_args: &[&str]) {
        let mut args = vec!["network", "create", name];
        args.extend_from_slice(netd_args);
        self.h.ok(&args);
        self.install(name);
    }

    /// `netd cni install NAME` into this Podman's directories.
    pub fn install(&self, name: &str) {
        let path = |sub: &str| self.dir.join(sub).display().to_string();
        self.h.ok(&[
            "cni",
            "install",
            name,
            "--bin-dir",
            &path("bin"),
            "--conf-dir",
            &path("net.d"),
            "--plugin",
            &self.plugin.display().to_string(),
        ]);
    }

    /// `podman run -d --name <id>-<short> ARGS… IMAGE sleep 3600`, its
    /// namespace named `<id>-<short>` in /run/netns for the harness.
    pub fn run(&self, short: &str, args: &[&str]) -> Netns {
        let name = self.h.name(short);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        all.extend_from_slice(&[IMAGE, "sleep", "3600"]);
        self.podman_ok(&all);
        self.attach_netns(short)
    }

    /// Names the running container's namespace `<id>-<short>`.
    pub fn attach_netns(&self, short: &str) -> Netns {
        let name = self.h.name(short);
        let pid = self.podman_ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
        Netns::of_process(&name, &pid).unwrap()
    }

    /// `podman rm -f -t 0 <id>-<short>` (sleep ignores SIGTERM as PID 1).
    pub fn rm(&self, short: &str) {
        let name = self.h.name(short);
        self.podman_ok(&["rm", "-f", "-t", "0", &name]);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.podman(&["rmi", "-a", "-f"]);
        // Storage mounts (overlay, shm) under the test's root go too.
        let _ = self.podman(&["system", "reset", "-f"]);
        // host-local (Podman's own networks) keeps its leases by network
        // name; this test's networks carry its id.
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/networks") {
            let prefix = self.h.name("");
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&mount).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
