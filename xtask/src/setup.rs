//! Idempotent installation of everything netd needs on a fresh machine.
//! Each step checks first and only acts (and says so) when something is missing.

use std::{
    env,
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Toolchain for every real crate (user space and BPF). Its LLVM (22) must
/// match the LLVM bpf-linker is built against; 1.99+ is on LLVM 23.
pub const PINNED_TOOLCHAIN: &str = "1.98.0";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

/// Debian packages: LLVM 22 for bpf-linker, and the tools tests, demo and
/// benchmarks drive (ip, iptables, ping, iperf3, busybox for small servers).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "iptables",
    "iputils-ping",
    "iperf3",
    "busybox-static",
    "util-linux",
    "procps",
    "nftables",
    "conntrack",
    // Real runtimes for the plugin tests (started only by the tests, each
    // with its own sockets and directories).
    "docker.io",
    "podman",
    "containerd",
    // The reference CNI plugins (bridge, host-local, portmap): the
    // comparison point for netd's CNI plugin.
    "containernetworking-plugins",
    // The kernel matrix: Debian kernels booted under QEMU with an initramfs.
    "qemu-system-x86",
    "cpio",
    "xz-utils",
    "binutils",
];

pub fn ensure_all() -> Result<()> {
    ensure_root()?;
    ensure_apt_packages()?;
    ensure_toolchain()?;
    ensure_bpf_linker()?;
    ensure_bpffs()
}

fn ensure_root() -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!(
            "netd's set-up, tests and demo need root (they install packages, load BPF \
             programs and create network namespaces); run this as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}

fn ensure_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    // No service may start on installation (dockerd would take over the
    // host's firewall): the tests start their own daemons.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn ensure_toolchain() -> Result<()> {
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        PINNED_TOOLCHAIN,
    ]))
    .unwrap_or_default();
    let have = |c: &str| components.lines().any(|l| l.starts_with(c));
    if have("rust-src") && have("clippy") && have("rustfmt") {
        return Ok(());
    }
    say(&format!(
        "installing Rust {PINNED_TOOLCHAIN} with rust-src, clippy and rustfmt"
    ));
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        PINNED_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy,rustfmt",
    ]))
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
    ));
    run(Command::new("cargo")
        .arg(format!("+{PINNED_TOOLCHAIN}"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", path_with_cargo_bin())
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but is not {BPF_LINKER_VERSION} linked against LLVM 22");
    }
    Ok(())
}

/// The right version, and linked against LLVM 22 (a build against the
/// system's LLVM 14 would fail later with confusing errors).
fn bpf_linker_ok() -> bool {
    let linker = cargo_bin().join("bpf-linker");
    let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    let libs = output(Command::new("ldd").arg(&linker)).unwrap_or_default();
    version.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") && libs.contains("libLLVM.so.22")
}

fn ensure_bpffs() -> Result<()> {
    if Command::new("mountpoint")
        .args(["-q", BPFFS])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    say(&format!("mounting bpffs on {BPFFS}"));
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with cargo's bin directory first, so rustc finds bpf-linker.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).expect("PATH entries contain no separator")
}

fn say(what: &str) {
    eprintln!("xtask setup: {what}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
