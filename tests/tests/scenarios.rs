//! The scenario suite on every datapath: identical verdicts, as written in
//! `netd_testbed::scenarios`. Adding a datapath is one more `#[test]`.

use netd_testbed::bin_under_test::netd;
use netd_testbed::scenarios::{self, Frontend};

fn check(datapath: &str, daemon_flags: &[&str]) {
    check_through(Frontend::Cli, datapath, daemon_flags);
}

fn check_through(frontend: Frontend, datapath: &str, daemon_flags: &[&str]) {
    let rows = scenarios::run(netd(), datapath, daemon_flags, frontend);
    expect_verdicts(&format!("{datapath} ({frontend:?})"), &rows);
}

/// The IPv6 story (dual-stack networks, every probe over IPv6).
fn check_ipv6(frontend: Frontend, datapath: &str) {
    let rows = scenarios::ipv6::run(netd(), datapath, &[], frontend);
    expect_verdicts(&format!("{datapath} ({frontend:?}), IPv6"), &rows);
}

fn expect_verdicts(title: &str, rows: &[scenarios::Row]) {
    let matrix = scenarios::matrix(title, rows);
    println!("{matrix}");
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.got != r.want)
        .map(|r| format!("{}: expected {}, got {}", r.what, r.want, r.got))
        .collect();
    assert!(
        bad.is_empty(),
        "{title}: {} probes differ:\n{}\n{matrix}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn ebpf_datapath_passes_the_ipv6_scenarios() {
    check_ipv6(Frontend::Cli, "ebpf");
}

#[test]
fn ebpf_datapath_passes_the_ipv6_scenarios_through_docker() {
    check_ipv6(Frontend::Docker, "ebpf");
}

#[test]
fn ebpf_datapath_passes_the_ipv6_scenarios_through_podman() {
    check_ipv6(Frontend::Podman, "ebpf");
}

#[test]
fn iptables_datapath_passes_the_ipv6_scenarios() {
    check_ipv6(Frontend::Cli, "iptables");
}

#[test]
fn iptables_datapath_passes_the_ipv6_scenarios_through_docker() {
    check_ipv6(Frontend::Docker, "iptables");
}

#[test]
fn iptables_datapath_passes_the_ipv6_scenarios_through_podman() {
    check_ipv6(Frontend::Podman, "iptables");
}

#[test]
fn nftables_datapath_passes_the_ipv6_scenarios() {
    check_ipv6(Frontend::Cli, "nftables");
}

#[test]
fn nftables_datapath_passes_the_ipv6_scenarios_through_docker() {
    check_ipv6(Frontend::Docker, "nftables");
}

#[test]
fn nftables_datapath_passes_the_ipv6_scenarios_through_podman() {
    check_ipv6(Frontend::Podman, "nftables");
}

#[test]
fn ebpf_datapath_passes_the_scenarios() {
    check("ebpf", &[]);
}

/// The fallbacks for kernels before 6.6 and 5.12 (clsact filters, the
/// length-based MTU check), forced on this kernel: the same verdicts.
#[test]
fn ebpf_datapath_in_legacy_kernel_mode_passes_the_scenarios() {
    check("ebpf", &["--kernel-features", "legacy"]);
}

/// With the XDP program in the uplink's driver (not the default on a veth
/// uplink): its early drops change no verdict.
#[test]
fn ebpf_datapath_with_native_xdp_passes_the_scenarios() {
    check("ebpf", &["--xdp", "native"]);
}

#[test]
fn iptables_datapath_passes_the_scenarios() {
    check("iptables", &[]);
}

#[test]
fn nftables_datapath_passes_the_scenarios() {
    check("nftables", &[]);
}

/// The same story made by a real dockerd with netd as its network driver:
/// the same verdicts, on both datapaths.
#[test]
fn ebpf_datapath_passes_the_scenarios_through_docker() {
    check_through(Frontend::Docker, "ebpf", &[]);
}

#[test]
fn iptables_datapath_passes_the_scenarios_through_docker() {
    check_through(Frontend::Docker, "iptables", &[]);
}

#[test]
fn nftables_datapath_passes_the_scenarios_through_docker() {
    check_through(Frontend::Docker, "nftables", &[]);
}

/// And made by a real Podman through netd's CNI plugin: the same verdicts.
#[test]
fn ebpf_datapath_passes_the_scenarios_through_podman() {
    check_through(Frontend::Podman, "ebpf", &[]);
}

#[test]
fn iptables_datapath_passes_the_scenarios_through_podman() {
    check_through(Frontend::Podman, "iptables", &[]);
}

#[test]
fn nftables_datapath_passes_the_scenarios_through_podman() {
    check_through(Frontend::Podman, "nftables", &[]);
}
