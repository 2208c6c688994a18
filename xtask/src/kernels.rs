//! `cargo xtask kernels`: netd on the kernels container hosts run.
//!
//! Runs `netd-kernel-check` natively (this kernel, both attach modes), then
//! boots Debian's own kernel packages under `qemu-system-x86_64` (software
//! emulation where there is no KVM) with an initramfs holding busybox,
//! iproute2, netd and the check, and runs it there. Kernel packages come
//! from the machine's configured Debian mirror with only the suite changed;
//! they are cached under `target/kernels/`.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

/// Debian suites whose kernels are checked, and the modes each runs in
/// (5.10 has none of the newer mechanisms, so legacy would repeat auto).
const SUITES: &[(&str, &str)] = &[
    ("bullseye", "auto"),
    ("bookworm", "auto,legacy"),
    ("trixie", "auto,legacy"),
];

/// Modules netd needs that Debian builds as modules, in dependency order.
const MODULES: &[&str] = &["llc", "stp", "bridge", "veth", "sch_ingress", "cls_bpf"];

/// Programs the check runs inside the guest (beside busybox's applets).
const GUEST_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "usr/sbin/ip"),
    ("tc", "usr/sbin/tc"),
    ("nsenter", "usr/bin/nsenter"),
    ("sysctl", "sbin/sysctl"),
];

/// What the guest runs as PID 1: mounts, modules, the check in each mode
/// named on the kernel command line, power off.
const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "netd-kernel-check: FAIL insmod $m"
done
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ip link set lo up
for mode in $(sed -n 's/.*netd.modes=\([a-z,]*\).*/\1/p' /proc/cmdline | tr , ' '); do
  netd-kernel-check --netd /usr/local/bin/netd --kernel-features $mode
done
echo "netd-kernel-check: guest done"
poweroff -f
"#;

/// One kernel and mode's outcome.
struct Outcome {
    kernel: String,
    mode: String,
    passed: u32,
    failed: u32,
    seconds: f64,
}

pub fn run(bin_dir: &Path, work_dir: &Path) -> Result<()> {
    let netd = bin_dir.join("netd");
    let check = bin_dir.join("netd-kernel-check");
    let mut outcomes = Vec::new();

    let native = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    for mode in ["auto", "legacy"] {
        println!(
            "\n== kernels: this machine's {}, {mode} mode",
            native.trim()
        );
        let started = Instant::now();
        let out = Command::new(&check)
            .args(["--netd".as_ref(), netd.as_os_str()])
            .args(["--kernel-features", mode])
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", check.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        outcomes.extend(outcomes_of(
            &format!("{} (native)", native.trim()),
            &[mode],
            &text,
            started.elapsed().as_secs_f64(),
        ));
    }

    let mirror = debian_mirror()?;
    for (suite, modes) in SUITES {
        println!("\n== kernels: Debian {suite} under QEMU ({modes})");
        let started = Instant::now();
        let kernel = fetch_kernel(&mirror, suite, &work_dir.join(suite))?;
        let initrd = build_initramfs(&kernel, &netd, &check, &work_dir.join(suite))?;
        let text = boot(&kernel, &initrd, modes)?;
        let modes: Vec<&str> = modes.split(',').collect();
        outcomes.extend(outcomes_of(
            &kernel.release,
            &modes,
            &text,
            started.elapsed().as_secs_f64(),
        ));
    }

    let mut table =
        String::from("\n| kernel | mode | passed | failed | seconds |\n|---|---|---|---|---|\n");
    for o in &outcomes {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {:.0} |",
            o.kernel, o.mode, o.passed, o.failed, o.seconds
        );
    }
    print!("{table}");
    let runs = outcomes.len();
    let bad = outcomes
        .iter()
        .filter(|o| o.failed > 0 || o.passed == 0)
        .count();
    println!("kernels: {} passed, {bad} failed", runs - bad);
    ensure!(
        bad == 0,
        "{bad} of {runs} kernel checks failed (details above)"
    );
    Ok(())
}

/// One outcome per mode, from the check's summary line for that mode in
/// `text` (`netd-kernel-check: MODE: N passed, M failed`); a mode without
/// one counts as failed: the check crashed or hung.
fn outcomes_of(kernel: &str, modes: &[&str], text: &str, seconds: f64) -> Vec<Outcome> {
    let summary = |mode: &str| -> Option<(u32, u32)> {
        text.lines().find_map(|line| {
            let at = line.find("netd-kernel-check: ")?;
            let rest = line[at..]
                .strip_prefix("netd-kernel-check: ")?
                .strip_prefix(mode)?
                .strip_prefix(": ")?;
            let (passed, failed) = rest.split_once(" passed, ")?;
            Some((
                passed.parse().ok()?,
                failed.trim().strip_suffix(" failed")?.parse().ok()?,
            ))
        })
    };
    modes
        .iter()
        .map(|mode| {
            let (passed, failed) = summary(mode).unwrap_or((0, 1));
            Outcome {
                kernel: kernel.to_owned(),
                mode: (*mode).to_owned(),
                passed,
                failed,
                seconds: seconds / modes.len() as f64,
            }
        })
        .collect()
}

/// The machine's Debian mirror, from its apt sources (deb822 or one-line).
fn debian_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sources") || name.ends_with(".list") {
                texts.push(fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    for text in &texts {
        for line in text.lines().map(str::trim) {
            let uri = if let Some(uris) = line.strip_prefix("URIs:") {
                uris.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri.filter(|u| u.trim_end_matches('/').ends_with("/debian")) {
                return Ok(uri.trim_end_matches('/').to_owned());
            }
        }
    }
    bail!("no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list or sources.list.d")
}

/// An unpacked kernel package: the image and the modules netd needs.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    modules: Vec<PathBuf>,
}

/// Downloads `suite`'s default amd64 kernel (cached) and unpacks what the
/// initramfs needs, modules decompressed (busybox's insmod takes plain .ko).
fn fetch_kernel(mirror: &str, suite: &str, dir: &Path) -> Result<Kernel> {
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    let list = dir.join("sources.list");
    fs::write(
        &list,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"
        ),
    )?;
    // apt with its own lists and cache: the machine's apt state is untouched.
    let apt_options = |cmd: &mut Command| {
        for option in [
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "Dir::State::status=/dev/null".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
        ] {
            cmd.args(["-o", &option]);
        }
    };
    let mut update = Command::new("apt-get");
    update.args(["-q", "update"]);
    apt_options(&mut update);
    run_quiet(&mut update)?;
    let mut depends = Command::new("apt-cache");
    depends.args(["depends", "linux-image-amd64"]);
    apt_options(&mut depends);
    let depends = output(&mut depends)?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(|p| format!("linux-image-{p}"))
        .with_context(|| format!("no linux-image package in {suite}: {depends}"))?;
    let release = package.trim_start_matches("linux-image-").to_owned();
    let unpacked = dir.join(format!("unpacked-{release}"));
    if !unpacked.join("done").exists() {
        let mut download = Command::new("apt-get");
        download.args(["-q", "download", &package]).current_dir(dir);
        apt_options(&mut download);
        run_quiet(&mut download)?;
        let deb = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("{package} was not downloaded"))?;
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(&unpacked)?;
        let wanted: Vec<String> = std::iter::once("./boot/vmlinuz-*".to_owned())
            .chain(MODULES.iter().map(|m| format!("*/{m}.ko*")))
            .collect();
        run_quiet(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards {}",
            deb.display(),
            unpacked.display(),
            wanted.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ")
        )))?;
        fs::remove_file(&deb)?;
        fs::write(unpacked.join("done"), "")?;
    }
    let mut files = Vec::new();
    walk(&unpacked, &mut files)?;
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "xz"))
    {
        run_quiet(Command::new("xz").args(["-d", "-f"]).arg(file))?;
    }
    files.clear();
    walk(&unpacked, &mut files)?;
    let vmlinuz = files
        .iter()
        .find(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .cloned()
        .context("no vmlinuz in the kernel package")?;
    let modules = MODULES
        .iter()
        .map(|m| {
            files
                .iter()
                .find(|f| {
                    f.file_name()
                        .is_some_and(|n| n.to_string_lossy() == format!("{m}.ko"))
                })
                .cloned()
                .with_context(|| format!("no {m}.ko in {package}"))
        })
        .collect::<Result<_>>()?;
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

/// A gzip'd newc cpio: busybox and its applets, iproute2, nsenter, sysctl,
/// netd, the check, their shared libraries, the modules and `/init`.
fn build_initramfs(kernel: &Kernel, netd: &Path, check: &Path, dir: &Path) -> Result<PathBuf> {
    let root = dir.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
    ] {
        fs::create_dir_all(root.join(sub))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    let busybox = which("busybox")?;
    fs::copy(&busybox, root.join("bin/busybox"))?;
    // Every applet but the ones iproute2, util-linux and procps provide: the
    // check must get the real ones.
    for applet in output(Command::new(&busybox).arg("--list"))?.lines() {
        if !GUEST_PROGRAMS.iter().any(|(p, _)| *p == applet) && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    let mut binaries = Vec::new();
    for (program, place) in GUEST_PROGRAMS {
        let dest = root.join(place);
        fs::copy(which(program)?, &dest)?;
        binaries.push(dest);
    }
    for binary in [netd, check] {
        let dest = root
            .join("usr/local/bin")
            .join(binary.file_name().unwrap_or_default());
        fs::copy(binary, &dest)?;
        // Debug info is most of a debug build's size.
        run_quiet(Command::new("strip").arg(&dest))?;
        binaries.push(dest);
    }
    let mut ldd = Command::new("ldd");
    ldd.args(&binaries);
    for lib in output(&mut ldd)?
        .split_whitespace()
        .filter(|w| w.starts_with('/') && w.contains(".so"))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let dest = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap_or(&root))?;
        fs::copy(lib, &dest).with_context(|| format!("copying {lib}"))?;
    }
    for module in &kernel.modules {
        fs::copy(
            module,
            root.join("lib/modules")
                .join(module.file_name().unwrap_or_default()),
        )?;
    }
    fs::write(root.join("lib/modules/order"), MODULES.join("\n"))?;
    fs::write(root.join("init"), INIT)?;
    run_quiet(Command::new("chmod").arg("+x").arg(root.join("init")))?;
    let initrd = dir.join("initrd.gz");
    run_quiet(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        initrd.display()
    )))?;
    fs::remove_dir_all(&root)?;
    Ok(initrd)
}

/// Boots the kernel with the initramfs under software emulation (KVM, where
/// a machine has it, may reject `-cpu max`), bounded in time; returns what
/// the guest printed (also echoed, the check's lines only).
fn boot(kernel: &Kernel, initrd: &Path, modes: &str) -> Result<String> {
    let out = Command::new("timeout")
        .args(["--kill-after=10", "900", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet netd.modes={modes}"))
        .stdin(Stdio::null())
        .output()
        .context("running qemu-system-x86_64")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    if !out.status.success() {
        // qemu's own errors (the guest powers off cleanly when it is done).
        println!(
            "qemu: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for line in text.lines() {
        // The console also carries BIOS escape sequences and kernel noise.
        if let Some(at) = line.find("netd-kernel-check: ") {
            println!("{}", &line[at..]);
        } else if line.contains("panicked") || line.contains("Kernel panic") {
            println!("{line}");
        }
    }
    Ok(text)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn which(program: &str) -> Result<PathBuf> {
    let path = output(Command::new("sh").args(["-c", &format!("command -v {program}")]))?;
    let path = PathBuf::from(path.trim());
    fs::canonicalize(&path).with_context(|| format!("{program} not found"))
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
