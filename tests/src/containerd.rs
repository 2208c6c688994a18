//! A real containerd (Debian's 1.6) attaching containers through netd's
//! CNI plugin with `ctr run --cni`, inside a test host namespace. containerd
//! gets its own root, state, socket and opt directories; `ctr` reads the
//! CNI configuration only from /etc/cni/net.d and /opt/cni/bin, so each
//! `ctr` runs in a private mount namespace with tmpfs over those, filled
//! with this test's conflist and plugin. Containers run from a busybox
//! root filesystem directory (`--rootfs`, no image needed).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{
    daemon_host::DaemonHost,
    docker::{busybox_rootfs_tar, mounts_under},
    topology::Background,
};

pub struct ContainerdHost {
    pub h: DaemonHost,
    dir: PathBuf,
    containerd: Option<Background>,
}

impl ContainerdHost {
    /// netd in a test host, containerd beside it, `network` (a netd
    /// network) installed for CNI with `netd cni install`.
    pub fn start(netd: &str, plugin: &str, network: &str) -> Self {
        let h = DaemonHost::start(netd, &[]);
        let dir = PathBuf::from(format!("/var/tmp/netd-containerd-{}", h.name("c")));
        std::fs::create_dir_all(dir.join("cni/bin")).unwrap();
        std::fs::create_dir_all(dir.join("cni/net.d")).unwrap();
        busybox_rootfs_tar(&dir);
        let path = |sub: &str| dir.join(sub).display().to_string();
        // No CRI (no kubelet here); the opt plugin's directory is ours too.
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{socket}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = path("root"),
            state = path("state"),
            socket = path("containerd.sock"),
            opt = path("opt"),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = File::create(dir.join("containerd.log")).unwrap();
        let config = path("config.toml");
        let containerd = h
            .host
            .spawn_with_env("containerd", &["--config", &config], &[], Some(log))
            .unwrap();
        let mut me = Self {
            h,
            dir: dir.clone(),
            containerd: Some(containerd),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !me.ctr(&["version"]).status.success() {
            assert!(
                !me.containerd.as_mut().unwrap().exited(),
                "containerd exited at start: {}",
                me.log()
            );
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                me.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me.h.ok(&[
            "cni",
            "install",
            network,
            "--bin-dir",
            &path("cni/bin"),
            "--conf-dir",
            &path("cni/net.d"),
            "--plugin",
            plugin,
        ]);
        me
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// `ctr ARGS…` against this containerd (no CNI involved).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctr ARGS…` in the host namespace, in a private mount namespace
    /// whose /etc/cni/net.d and /opt/cni/bin hold this test's conflist and
    /// plugin (what `ctr run --cni` reads), and whose /var/lib/cni (libcni's
    /// result cache) is this test's. The mount points are made first: a
    /// fresh host may have neither (libcni makes /var/lib/cni itself on
    /// first use, so making it leaves nothing a runtime would not).
    pub fn ctr_with_cni(&self, args: &[&str]) -> Output {
        let cni = self.dir.join("cni");
        let script = format!(
            "set -e\n\
             mkdir -p /etc/cni /var/lib/cni\n\
             mount -t tmpfs netd-test /etc/cni\n\
             mkdir -p /etc/cni/net.d\n\
             cp {cni}/net.d/* /etc/cni/net.d/\n\
             mount -t tmpfs netd-test /opt\n\
             mkdir -p /opt/cni/bin\n\
             cp {cni}/bin/* /opt/cni/bin/\n\
             mkdir -p {cache}\n\
             mount --bind {cache} /var/lib/cni\n\
             exec ctr --address {socket} \"$@\"\n",
            cni = cni.display(),
            cache = self.dir.join("cni-cache").display(),
            socket = self.dir.join("containerd.sock").display(),
        );
        self.h
            .host
            .command("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "ctr",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ContainerdHost {
    fn drop(&mut self) {
        let tasks = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
            let _ = self.ctr(&["task", "kill", "-s", "9", id]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&self.ctr(&["task", "ls", "-q"]).stdout)
            .split_whitespace()
            .all(|id| self.ctr(&["task", "rm", id]).status.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let containers = self.ctr(&["container", "ls", "-q"]);
        for id in String::from_utf8_lossy(&containers.stdout).split_whitespace() {
            let _ = self.ctr(&["container", "rm", id]);
        }
        if let Some(containerd) = self.containerd.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(containerd.id() as i32, libc::SIGTERM) };
            containerd.wait();
        }
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&mount).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
