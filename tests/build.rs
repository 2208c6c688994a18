//! Builds the bench's BPF programs (`tests/ebpf`) for the BPF target and
//! leaves the object in OUT_DIR, where `netd-bench` embeds it.

use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// As netd/build.rs: the pinned toolchain, whose LLVM matches bpf-linker's.
const FALLBACK_TOOLCHAIN: &str = "1.98.0";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .join("ebpf")
        .canonicalize()
        .context("netd-bench-ebpf crate")?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("netd-bench-ebpf path is not UTF-8")?;

    // Build the BPF crate with the same toolchain as user space: the one rustup
    // picked for this build (`cargo +1.98.0 ...`).
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| FALLBACK_TOOLCHAIN.to_owned());
    // A stable toolchain builds `core` for bpfel-unknown-none only with
    // build-std, which aya-build enables when RUSTC_BOOTSTRAP=1.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    let package = Package {
        name: "netd-bench-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
}
