//! `cargo xtask <command>`: the entry point for people and CI.
//!
//! Runs on the machine's default toolchain. Every command first makes sure
//! what it needs is installed (see `setup.rs`), then drives cargo with the
//! pinned toolchain.

mod kernels;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup          install what is missing (apt packages, Rust toolchain, bpf-linker, bpffs)
  build          build netd (user space and the embedded BPF programs)
  run -- ARGS    build, then run `netd ARGS` as root
  run --docker [-- DAEMON-ARGS]
                 build, then run `netd daemon --docker-plugin DAEMON-ARGS` and a dockerd
                 using it (own socket and directories under /run/netd-dev and
                 /var/lib/netd-dev); Ctrl-C stops both
  demo           show netd on real traffic between network namespaces
  bench [--quick] eBPF vs iptables vs plain routing (release build); --quick in about 5 minutes
  bench --docker | --podman [--quick]
                 the runtime with netd (ebpf, iptables) vs its own networking, side by side
  bench --scale | --dns [--quick]
                 many containers; netd's resolver vs Docker's embedded DNS
  kernels        netd on this kernel (both attach modes) and on Debian's 5.10, 6.1 and
                 6.12 kernels booted under QEMU: check, daemon, ports, masquerade, restart
  test           run every test (BPF unit tests through BPF_PROG_TEST_RUN, namespace
                 integration tests), the kernel matrix, then rustfmt and clippy checks
  lint           rustfmt and clippy checks only (the BPF crates included)
";

fn main() -> ExitCode {
    match run(env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "setup" => setup::ensure_all(),
        "build" => {
            setup::ensure_all()?;
            cargo(&["build", "-p", "netd"])
        }
        "run" => {
            setup::ensure_all()?;
            cargo(&["build", "-p", "netd"])?;
            if let Some(rest) = rest.strip_prefix(&["--docker".to_owned()]) {
                let args = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
                return run_with_docker(args);
            }
            let args = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
            run_command(Command::new(target_dir().join("debug/netd")).args(args))
        }
        "demo" => {
            setup::ensure_all()?;
            cargo(&["build", "-p", "netd"])?;
            cargo(&["run", "-p", "netd-testbed", "--bin", "netd-demo"])
        }
        "bench" => {
            setup::ensure_all()?;
            cargo(&["build", "--release", "-p", "netd", "-p", "netd-testbed"])?;
            run_command(Command::new(target_dir().join("release/netd-bench")).args(rest))
        }
        "kernels" => {
            setup::ensure_all()?;
            kernel_matrix()
        }
        "test" => {
            setup::ensure_all()?;
            cargo(&[
                "test",
                "--workspace",
                "--exclude",
                "netd-ebpf",
                "--exclude",
                "netd-bench-ebpf",
            ])?;
            kernel_matrix()?;
            lint()
        }
        "lint" => {
            setup::ensure_all()?;
            lint()
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// netd serving the Docker plugin, and a dockerd of its own using it, in
/// this network namespace, until Ctrl-C (which both get).
fn run_with_docker(daemon_args: &[String]) -> Result<()> {
    const PLUGIN: &str = "/run/docker/plugins/netd-dev.sock";
    const RUN: &str = "/run/netd-dev";
    const DATA: &str = "/var/lib/netd-dev";
    std::fs::create_dir_all(RUN)?;
    std::fs::create_dir_all(DATA)?;
    let mut netd = Command::new(target_dir().join("debug/netd"))
        .args(["--socket", &format!("{RUN}/netd.sock"), "daemon"])
        .args(["--state-dir", &format!("{DATA}/netd")])
        .args(["--docker-plugin", "--docker-plugin-socket", PLUGIN])
        .args(daemon_args)
        .spawn()
        .context("starting netd")?;
    let mut dockerd = Command::new("dockerd")
        .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
        .args(["--host", &format!("unix://{RUN}/docker.sock")])
        .args(["--data-root", &format!("{DATA}/docker")])
        .args(["--exec-root", &format!("{RUN}/docker")])
        .args(["--pidfile", &format!("{RUN}/docker.pid")])
        .spawn()
        .context("starting dockerd (package docker.io)")?;
    eprintln!(
        "xtask: netd and dockerd are running; in another shell:\n\
         \x20 export DOCKER_HOST=unix://{RUN}/docker.sock NETD_SOCKET={RUN}/netd.sock\n\
         \x20 docker network create -d netd-dev --subnet 10.1.0.0/24 web\n\
         Ctrl-C stops both (`netd down` first removes netd's networks)."
    );
    let netd_status = netd.wait()?;
    let _ = dockerd.wait();
    if !netd_status.success() {
        bail!("netd exited with {netd_status}");
    }
    Ok(())
}

fn kernel_matrix() -> Result<()> {
    cargo(&[
        "build",
        "-p",
        "netd",
        "-p",
        "netd-testbed",
        "--bin",
        "netd",
        "--bin",
        "netd-kernel-check",
    ])?;
    kernels::run(&target_dir().join("debug"), &target_dir().join("kernels"))
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    // The BPF crates build only for their own target, with core from source.
    for crate_dir in ["netd-ebpf", "tests/ebpf"] {
        let mut bpf = Command::new("cargo");
        bpf.arg(format!("+{}", setup::PINNED_TOOLCHAIN))
            .args(["clippy", "--release", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            .current_dir(workspace_root().join(crate_dir))
            .env("RUSTC_BOOTSTRAP", "1");
        for var in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "RUSTDOC"] {
            bpf.env_remove(var);
        }
        run_command(&mut bpf)?;
    }
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "netd-ebpf",
        "--exclude",
        "netd-bench-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// Runs `cargo +PINNED args…` from the workspace root.
fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", setup::PINNED_TOOLCHAIN))
        .args(args)
        .current_dir(workspace_root());
    // Set by the outer `cargo run` for the default toolchain; must not leak in.
    for var in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "RUSTDOC"] {
        cmd.env_remove(var);
    }
    run_command(&mut cmd)
}

fn run_command(cmd: &mut Command) -> Result<()> {
    cmd.env("PATH", setup::path_with_cargo_bin());
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
