//! Named network namespaces as iproute2 keeps them (bind mounts under
//! /run/netns), and the short-lived threads that enter one.

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

pub const NETNS_DIR: &str = "/run/netns";

pub(crate) fn setns(fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")
}

/// Runs `f` on a short-lived thread that entered the namespace at `path`
/// (what it makes there, sockets included, stays there).
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(file.as_fd())?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("a thread in {} panicked", path.display()))?
    })
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates a named network namespace that `ip netns exec NAME` can enter:
/// a thread unshares a new one and bind-mounts it on /run/netns/NAME.
pub fn create_netns(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        bail!("{name:?} cannot name a network namespace");
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // Only this short-lived thread changes namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .context("unshare(CLONE_NEWNET)")?;
            bind_netns(name, "/proc/thread-self/ns/net")
        })
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
    })
}

/// Names the calling process's own namespace NAME (for `--network host`
/// containers: `ip netns exec NAME` then enters the host's namespace).
pub fn name_current_netns(name: &str) -> Result<()> {
    bind_netns(name, "/proc/self/ns/net")
}

/// Bind-mounts the namespace at `source` on /run/netns/NAME (as iproute2
/// does); nothing is left behind on failure.
fn bind_netns(name: &str, source: &str) -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let path = netns_path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| {
            format!(
                "creating {} (a namespace of that name exists?)",
                path.display()
            )
        })?;
    let mounted = nix::mount::mount(
        Some(source),
        &path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(err) = mounted {
        let _ = std::fs::remove_file(&path);
        return Err(err).context("bind-mounting the namespace");
    }
    Ok(())
}

/// Writes a sysctl inside the namespace at `path` (/proc/sys/net shows the
/// namespace of the thread that opens it).
pub fn sysctl_in(path: &Path, key: &str, value: &str) -> Result<()> {
    let proc_path = Path::new("/proc/sys").join(key.replace('.', "/"));
    run_in(path, || {
        std::fs::write(&proc_path, value).with_context(|| format!("setting {key}"))
    })
}

/// The cookie of the namespace at `path` (SO_NETNS_COOKIE, Linux 5.14+), as
/// the BPF programs see it: read from a socket made on a thread that
/// entered it.
pub fn netns_cookie_of(path: &Path) -> Result<u64> {
    run_in(path, crate::datapath::sys::current_netns_cookie)
        .with_context(|| format!("the network namespace cookie of {}", path.display()))
}

pub fn delete_netns(name: &str) -> Result<()> {
    let path = netns_path(name);
    // Not mounted (or gone) is fine: the file goes either way.
    let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).context("removing netns file")
        }
        _ => Ok(()),
    }
}
