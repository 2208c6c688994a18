//! `netd-bench --quick` runs end to end and writes its results (a smoke
//! test: no speed is asserted here; see `cargo xtask bench`).

use std::process::Command;

#[test]
fn quick_bench_runs_and_reports_every_datapath() {
    let out = Command::new(env!("CARGO_BIN_EXE_netd-bench"))
        .arg("--quick")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench/results.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let datapaths: Vec<&str> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["datapath"].as_str().unwrap())
        .collect();
    for datapath in ["none", "ebpf", "iptables"] {
        assert!(
            datapaths.contains(&datapath),
            "{datapath} missing from {datapaths:?}"
        );
    }
    for row in results["results"].as_array().unwrap() {
        assert!(
            row["figures"]["tcp_crr_per_s"]["median"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
}
