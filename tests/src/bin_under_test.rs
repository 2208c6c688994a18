//! The binaries under test, built on first use with the cargo that built
//! the tests (`cargo build -p netd --bins`: a no-op when they are current),
//! so the integration tests live here, apart from netd, with no dependency
//! cycle between the two crates.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// `netd` (daemon and CLI).
pub fn netd() -> &'static str {
    path("netd")
}

/// `netd-cni`, the CNI plugin.
pub fn netd_cni() -> &'static str {
    path("netd-cni")
}

fn path(name: &str) -> &'static str {
    static PATHS: OnceLock<(String, String)> = OnceLock::new();
    let (netd, cni) = PATHS.get_or_init(|| {
        let dir = build();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        (path("netd"), path("netd-cni"))
    });
    match name {
        "netd" => netd,
        _ => cni,
    }
}

/// Builds netd's binaries in the profile and target directory of the
/// running test; returns that directory.
fn build() -> PathBuf {
    // target/<profile>/deps/<test>: the binaries go to target/<profile>.
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps")
        .to_owned();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "-p", "netd", "--bins"])
        .current_dir(&workspace);
    if dir.file_name().is_some_and(|p| p == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo to build netd");
    assert!(status.success(), "building netd's binaries failed");
    dir
}
