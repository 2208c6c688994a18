//! The scenario suite on every datapath: identical verdicts, as written in
//! `netd_testbed::scenarios`. Adding a datapath is one more `#[test]`.

use netd_testbed::scenarios;

const NETD: &str = env!("CARGO_BIN_EXE_netd");

fn check(datapath: &str) {
    let rows = scenarios::run(NETD, datapath);
    let matrix = scenarios::matrix(datapath, &rows);
    println!("{matrix}");
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.got != r.want)
        .map(|r| format!("{}: expected {}, got {}", r.what, r.want, r.got))
        .collect();
    assert!(
        bad.is_empty(),
        "{datapath}: {} probes differ:\n{}\n{matrix}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn ebpf_datapath_passes_the_scenarios() {
    check("ebpf");
}

#[test]
fn iptables_datapath_passes_the_scenarios() {
    check("iptables");
}
